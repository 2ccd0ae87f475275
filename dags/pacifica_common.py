"""Steps the example DAGs share: choosing downloads from CloudEvents, and the downstream summary.

Imported by ``pacifica_cloudevent_download`` (push: the webhook) and ``pacifica_ingest_watcher``
(pull: the metadata watcher); it defines no DAG itself.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from airflow.sdk import Asset, ObjectStoragePath, task

from airflow_provider_pacifica.batching import manifest_files
from airflow_provider_pacifica.destinations import safe_name
from airflow_provider_pacifica.operators.download import PacificaDownloadOperator
from airflow_provider_pacifica.storage import download_destination

PACIFICA_DOWNLOADS = Asset(name="pacifica_downloads", uri="pacifica://airflow/downloads")


def event_id(cloudevent: Any) -> str:
    """The event's id (``eventID`` in CloudEvents 0.1, ``id`` in 1.0), or ``""``."""
    event = json.loads(cloudevent) if isinstance(cloudevent, str) else cloudevent
    return str((event.get("eventID") or event.get("id") or "") if isinstance(event, dict) else "")


def downloads_for(cloudevents: list[Any], run_id: str) -> list[dict[str, Any]]:
    """One ``{"cloudevent", "destination"}`` per distinct event, under ``<root>/<run id>/<event id>``.

    The root is ``[pacifica] download_root`` (a path or an object-storage URL), read here, on the
    worker (see :func:`airflow_provider_pacifica.storage.download_destination`).
    """
    downloads: dict[str, dict[str, Any]] = {}
    for index, cloudevent in enumerate(cloudevents):
        name = safe_name(event_id(cloudevent), fallback=f"event-{index}")
        if name in downloads:
            if downloads[name]["cloudevent"] == cloudevent:
                continue  # the same event delivered twice is downloaded once
            name = f"{name}-{index}"  # two events whose ids make the same name: both are kept
        downloads[name] = {"cloudevent": cloudevent, "destination": download_destination(run_id, name)}
    return list(downloads.values())


def summarize_file(path: Path | ObjectStoragePath) -> dict[str, Any]:
    """Bytes, lines and SHA-256 of one file (local or in object storage), read in 1 MiB pieces:
    memory stays flat for any size."""
    digest, size, lines, binary = hashlib.sha256(), 0, 0, False
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
            lines += chunk.count(b"\n")
            binary = binary or b"\0" in chunk
    return {"bytes": size, "lines": None if binary else lines, "sha256": digest.hexdigest()}


@task(outlets=[PACIFICA_DOWNLOADS])
def summarize(manifest: dict[str, Any], outlet_events=None) -> dict[str, Any]:
    """Per-file bytes, lines and SHA-256, streamed; returns (and emits) only the totals."""
    conn_id = manifest.get("conn_id")  # object storage: every file has its URL

    def open_url(url: str) -> Any:
        return ObjectStoragePath(url, conn_id=conn_id).open("rb")

    root = Path(manifest["destination"])
    file_count = total_bytes = text_lines = 0
    for entry in manifest_files(manifest, open_url=open_url):
        path = ObjectStoragePath(entry["url"], conn_id=conn_id) if "url" in entry else root / entry["path"]
        facts = summarize_file(path)
        kind = "binary" if facts["lines"] is None else f"{facts['lines']} lines"
        print(f"{entry['path']}: {facts['bytes']} bytes, {kind}, sha256 {facts['sha256']}")
        file_count += 1
        total_bytes += facts["bytes"]
        text_lines += facts["lines"] or 0
    event = manifest.get("event") or {}
    summary = {
        "destination": manifest["destination"],
        "event_id": event.get("id"),
        "transaction_id": event.get("transaction_id"),
        "file_count": file_count,
        "total_bytes": total_bytes,
        "text_lines": text_lines,
    }
    print(f"Total: {file_count} files, {total_bytes} bytes, {text_lines} lines")
    if outlet_events is not None:
        outlet_events[PACIFICA_DOWNLOADS].extra = summary
    return summary


def download_and_summarize(downloads: Any) -> None:
    """The steps after picking: one deferred download per ``{"cloudevent", "destination"}``, then
    one summary per manifest (mapped tasks, inside the calling DAG)."""
    download = PacificaDownloadOperator.partial(
        task_id="download",
        deferrable=True,
        poll_interval=2.0,
        timeout=6 * 3600,
    ).expand_kwargs(downloads)
    summarize.expand(manifest=download.output)
