"""Steps the example DAGs share: the intakes' assets, choosing downloads from CloudEvents, the summary.

Imported by ``pacifica_cloudevent_download`` (push: the webhook) and ``pacifica_ingest_watcher``
(pull: the metadata watcher); it defines no DAG itself. Both DAGs declare the same two assets
(defined once here, so that every DAG file gives the watched asset the same watcher), and their
pick steps apply one rule when both intakes record an ingest: the earliest recorded event of its
id downloads it (:mod:`airflow_provider_pacifica.intake`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, AssetWatcher, ObjectStoragePath, task
from airflow.sdk.exceptions import AirflowRuntimeError

from airflow_provider_pacifica.batching import manifest_files
from airflow_provider_pacifica.destinations import safe_name
from airflow_provider_pacifica.intake import RecordedEvent, UndecidedError, decide, ingest_event_id, lookback_start
from airflow_provider_pacifica.operators.download import PacificaDownloadOperator
from airflow_provider_pacifica.storage import download_destination
from airflow_provider_pacifica.triggers.ingest import PacificaIngestEventTrigger

if TYPE_CHECKING:
    from collections.abc import Mapping

log = logging.getLogger(__name__)

PACIFICA_DOWNLOADS = Asset(name="pacifica_downloads", uri="pacifica://airflow/downloads")
# Push: the webhook records each ingest event here (extra["cloudevent"], partition key = event id).
PACIFICA_INGEST = Asset(name="pacifica_ingest", uri="pacifica://metadata/ingest")
# Pull: the watcher's trigger polls metadata; Airflow records its events here (extra["payload"]).
# PACIFICA_WATCHER_POLL_INTERVAL (seconds) is for tests and benchmarks; the trigger's default is 30.
_POLL = os.environ.get("PACIFICA_WATCHER_POLL_INTERVAL")
PACIFICA_PULLED = Asset(
    name="pacifica_ingest_pulled",
    uri="pacifica://metadata/ingest-pulled",
    watchers=[
        AssetWatcher(
            name="pacifica_metadata_poll",
            trigger=PacificaIngestEventTrigger(**({"poll_interval": float(_POLL)} if _POLL else {})),
        )
    ],
)
INTAKES = (PACIFICA_INGEST, PACIFICA_PULLED)


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


def _recorded(asset: Asset, event: Any) -> RecordedEvent:
    """An asset event of the Task SDK (a triggering event, or one read through ``inlet_events``)."""
    runs = tuple((run.dag_id, run.run_id) for run in getattr(event, "created_dagruns", None) or ())
    return RecordedEvent(asset.name, event.timestamp, ingest_event_id(event.extra), getattr(event, "id", None), runs)


def read_events(inlet_events: Any, asset: Asset, after: Any, before: Any) -> list[RecordedEvent]:
    """The events of ``asset`` recorded in ``[after, before]``, through the execution API."""
    accessor = inlet_events[asset].after(after.isoformat()).before(before.isoformat())
    try:
        return [_recorded(asset, event) for event in accessor]
    except AirflowRuntimeError as err:
        # Airflow 3.3.2 answers 500 for a window holding an event of a queued run (no start date
        # yet, apache/airflow#71360): the winner may be there; a retry reads it once it started.
        raise UndecidedError(f"the events of {asset.name} from {after} to {before} cannot be read yet: {err}") from err


def pick_downloads(
    own: Asset,
    triggering_asset_events: Mapping[Any, Any] | None,
    inlet_events: Any,
    run_id: str,
    *,
    last_try: bool = False,
) -> list[dict[str, Any]]:
    """The downloads of this run: one per ingest id among its triggering events on ``own`` that it wins.

    Reads both intakes' events from the ingest's time to this run's latest event and applies
    :func:`~airflow_provider_pacifica.intake.decide`; an id another event was recorded for first
    is skipped with a log line naming the event and the winner. ``last_try``: the pick's last
    attempt (an earlier event that started no run no longer wins).
    """
    cloudevents: dict[str, Any] = {}
    mine: list[RecordedEvent] = []
    after = before = None
    for event in (triggering_asset_events or {}).get(own, []):
        extra = event.extra or {}
        cloudevent = extra.get("cloudevent") or (extra.get("payload") or {}).get("cloudevent")
        if not cloudevent:
            continue  # not an ingest event (the watcher DAG's requeue events)
        recorded = _recorded(own, event)
        if recorded.event_id is None:  # an event without an id: nothing to dedupe on
            recorded = RecordedEvent(own.name, event.timestamp, "sha256:" + _digest(cloudevent))
        mine.append(recorded)
        if cloudevents.setdefault(recorded.event_id, cloudevent) != cloudevent:
            log.warning(
                "Skipping a second, different CloudEvent with the id %s: ids name one ingest", recorded.event_id
            )
        start = lookback_start(cloudevent, event.timestamp)
        after = start if after is None else min(after, start)
        before = event.timestamp if before is None else max(before, event.timestamp)
    if not mine:
        return []
    recorded_events = [event for asset in INTAKES for event in read_events(inlet_events, asset, after, before)]
    picked = []
    for decision in decide(mine, recorded_events, last_try=last_try):
        if decision.download:
            picked.append(cloudevents[decision.event_id])
        else:
            log.info("Skipping %s: %s", decision.event_id, decision.reason)
    log.info("%d of %d ingest event(s) to download", len(picked), len(cloudevents))
    return downloads_for(picked, run_id)


def _digest(cloudevent: Any) -> str:
    return hashlib.sha256(json.dumps(cloudevent, sort_keys=True).encode()).hexdigest()


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
