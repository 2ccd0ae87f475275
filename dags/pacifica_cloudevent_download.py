"""
### Download a Pacifica ingest, then process it

Runs whenever a Pacifica ingest CloudEvent is recorded on the asset ``pacifica://metadata/ingest``
(by the provider's webhook, or by a POST to Airflow's REST API with the event in
``extra["cloudevent"]``). Triggered by hand or by ``airflow dags test``, it reads the event from
``dag_run.conf["cloudevent"]`` instead.

1. ``pick_cloudevent`` finds the CloudEvent (asset event ``extra``, or ``dag_run.conf``).
2. ``download`` (``PacificaDownloadOperator``) creates a Cartd cart of the event's files, waits for
   it **deferred** in the triggerer (no worker slot held while tape stages), streams the tar,
   verifies every file against the hash Pacifica gave, and publishes the files atomically under
   ``$PACIFICA_DOWNLOAD_ROOT/<run id>/<subdir>/<name>``. It returns a manifest.
3. ``summarize`` reads the files through the manifest and does real work on them: per-file size,
   line count for text, SHA-256; totals. Its summary is attached to the outlet asset
   ``pacifica://airflow/downloads`` so further DAGs can chain on finished downloads.

Needs the connection ``pacifica_cartd_default`` (type ``pacifica_cartd``) pointing at Cartd.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from airflow.sdk import Asset, dag, task

from airflow_provider_pacifica.operators.download import PacificaDownloadOperator

PACIFICA_INGEST = Asset(name="pacifica_ingest", uri="pacifica://metadata/ingest")
PACIFICA_DOWNLOADS = Asset(name="pacifica_downloads", uri="pacifica://airflow/downloads")
DOWNLOAD_ROOT = os.environ.get("PACIFICA_DOWNLOAD_ROOT", "/tmp/pacifica-downloads")


@dag(
    schedule=[PACIFICA_INGEST],
    catchup=False,
    doc_md=__doc__,
    tags=["pacifica", "example"],
    max_active_runs=4,
)
def pacifica_cloudevent_download():
    @task
    def pick_cloudevent(triggering_asset_events=None, dag_run=None) -> dict[str, Any]:
        """The CloudEvent of the triggering asset event, or of ``dag_run.conf`` for manual runs."""
        for event in (triggering_asset_events or {}).get(PACIFICA_INGEST, []):
            extra = event.extra or {}
            if "cloudevent" in extra:
                return extra["cloudevent"]
        conf = (dag_run.conf if dag_run else None) or {}
        if "cloudevent" in conf:
            cloudevent = conf["cloudevent"]
            return json.loads(cloudevent) if isinstance(cloudevent, str) else cloudevent
        raise ValueError("no CloudEvent: expected asset event extra['cloudevent'] or dag_run.conf['cloudevent']")

    download = PacificaDownloadOperator(
        task_id="download",
        cloudevent=pick_cloudevent(),
        destination=DOWNLOAD_ROOT + "/{{ run_id }}",
        deferrable=True,
        poll_interval=2.0,
        timeout=6 * 3600,
    )

    @task(outlets=[PACIFICA_DOWNLOADS])
    def summarize(manifest: dict[str, Any], outlet_events=None) -> dict[str, Any]:
        """Per-file size, lines (text files) and SHA-256, plus totals, read through the manifest."""
        root = Path(manifest["destination"])
        per_file = []
        for entry in manifest["files"]:
            data = (root / entry["path"]).read_bytes()
            try:
                lines: int | None = data.decode("utf-8").count("\n")
            except UnicodeDecodeError:
                lines = None  # binary
            per_file.append(
                {"path": entry["path"], "bytes": len(data), "lines": lines, "sha256": hashlib.sha256(data).hexdigest()}
            )
            print(f"{entry['path']}: {len(data)} bytes, {'binary' if lines is None else f'{lines} lines'}")
        summary = {
            "destination": manifest["destination"],
            "event_id": (manifest.get("event") or {}).get("id"),
            "transaction_id": (manifest.get("event") or {}).get("transaction_id"),
            "file_count": len(per_file),
            "total_bytes": sum(f["bytes"] for f in per_file),
            "text_lines": sum(f["lines"] or 0 for f in per_file),
        }
        print(f"Total: {summary['file_count']} files, {summary['total_bytes']} bytes, {summary['text_lines']} lines")
        if outlet_events is not None:
            outlet_events[PACIFICA_DOWNLOADS].extra = summary
        return {**summary, "files": per_file}

    summarize(download.output)


pacifica_cloudevent_download()
