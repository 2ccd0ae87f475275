"""
### Download a Pacifica ingest, then process it

Runs whenever a Pacifica ingest CloudEvent is recorded on the asset ``pacifica://metadata/ingest``
(by the provider's webhook, or by a POST to Airflow's REST API with the event in
``extra["cloudevent"]``). Triggered by hand or by ``airflow dags test``, it reads the event from
``dag_run.conf["cloudevent"]`` instead.

1. ``pick_cloudevents`` finds the CloudEvents: every asset event that queued up for this run
   (several ingests can land while a run is pending), or ``dag_run.conf`` for manual runs.
2. ``download`` (``PacificaDownloadOperator``, mapped: one task per event) creates a Cartd cart of
   the event's files, waits for it **deferred** in the triggerer (no worker slot held while tape
   stages), streams the tar, verifies every file against the hash Pacifica gave, and publishes the
   files atomically under ``$PACIFICA_DOWNLOAD_ROOT/<run id>/<event id>/<subdir>/<name>``. It
   returns a manifest.
3. ``summarize`` (one per download) reads the files through the manifest and does real work on
   them: per-file size, line count for text, SHA-256; totals. Its summary is attached to the
   outlet asset ``pacifica://airflow/downloads`` so further DAGs can chain on finished downloads.

Needs the connection ``pacifica_cartd_default`` (type ``pacifica_cartd``) pointing at Cartd.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from airflow.sdk import Asset, dag, task

from airflow_provider_pacifica.operators.download import PacificaDownloadOperator


def _directory_name(cloudevent: Any, index: int) -> str:
    """A directory name from the event's id (``eventID`` in CloudEvents 0.1, ``id`` in 1.0)."""
    event = json.loads(cloudevent) if isinstance(cloudevent, str) else cloudevent
    raw = str((event.get("eventID") or event.get("id") or "") if isinstance(event, dict) else "")
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", raw).strip("._")[:100]
    return name or f"event-{index}"


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
    def pick_cloudevents(triggering_asset_events=None, dag_run=None, run_id=None) -> list[dict[str, Any]]:
        """One download per CloudEvent: of the triggering asset events, or of ``dag_run.conf``."""
        events = [
            (event.extra or {})["cloudevent"]
            for event in (triggering_asset_events or {}).get(PACIFICA_INGEST, [])
            if "cloudevent" in (event.extra or {})
        ]
        conf = (dag_run.conf if dag_run else None) or {}
        if not events and "cloudevent" in conf:
            cloudevent = conf["cloudevent"]
            events = [json.loads(cloudevent) if isinstance(cloudevent, str) else cloudevent]
        if not events:
            raise ValueError("no CloudEvent: expected asset event extra['cloudevent'] or dag_run.conf['cloudevent']")
        downloads: dict[str, dict[str, Any]] = {}
        for index, cloudevent in enumerate(events):
            name = _directory_name(cloudevent, index)
            if name in downloads:
                if downloads[name]["cloudevent"] == cloudevent:
                    continue  # the same event delivered twice is downloaded once
                name = f"{name}-{index}"  # two events whose ids make the same name: both are kept
            downloads[name] = {"cloudevent": cloudevent, "destination": f"{DOWNLOAD_ROOT}/{run_id}/{name}"}
        return list(downloads.values())

    download = PacificaDownloadOperator.partial(
        task_id="download",
        deferrable=True,
        poll_interval=2.0,
        timeout=6 * 3600,
    ).expand_kwargs(pick_cloudevents())

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

    summarize.expand(manifest=download.output)


pacifica_cloudevent_download()
