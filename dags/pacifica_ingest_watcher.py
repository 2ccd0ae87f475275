"""
### Pull intake: download each new Pacifica transaction, found by polling metadata

For sites that Pacifica Notifications cannot reach, or as a safety net for the webhook. The asset
``pacifica://metadata/ingest-pulled`` is watched by ``PacificaIngestEventTrigger`` in the
triggerer: it polls pacifica-metadata (connection ``pacifica_metadata_default``) for transactions
newer than its cursor (kept in the asset's state store, so a triggerer restart catches up) and
records one asset event per transaction, carrying the CloudEvent metadata itself emits on ingest
in ``extra["payload"]["cloudevent"]``. Each event starts this DAG, which downloads like
``pacifica_cloudevent_download`` (``pacifica_cartd_default``, ``[pacifica] download_root``) and
summarizes the files.

**Paused when created** (opt-in): unpause it to turn the pull intake on; a paused DAG's watcher
does not poll. With the webhook on too, an ingest is downloaded by both DAGs for now (their
deduplication is still to come, see docs/watcher.rst).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, AssetWatcher, dag, task
from pacifica_common import download_and_summarize, downloads_for

from airflow_provider_pacifica.triggers.ingest import PacificaIngestEventTrigger

PACIFICA_PULLED = Asset(
    name="pacifica_ingest_pulled",
    uri="pacifica://metadata/ingest-pulled",
    watchers=[AssetWatcher(name="pacifica_metadata_poll", trigger=PacificaIngestEventTrigger(poll_interval=10.0))],
)


@dag(
    schedule=[PACIFICA_PULLED],
    catchup=False,
    doc_md=__doc__,
    tags=["pacifica", "example"],
    is_paused_upon_creation=True,
    max_active_runs=8,
    default_args={"retries": 3, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True},
)
def pacifica_ingest_watcher():
    @task
    def pick_cloudevents(triggering_asset_events=None, run_id=None) -> list[dict[str, Any]]:
        """One download per CloudEvent of the transactions the watcher found."""
        events = [
            event.extra["payload"]["cloudevent"]
            for event in (triggering_asset_events or {}).get(PACIFICA_PULLED, [])
            if "cloudevent" in ((event.extra or {}).get("payload") or {})
        ]
        if not events:
            raise ValueError("no CloudEvent: expected asset event extra['payload']['cloudevent'] from the watcher")
        return downloads_for(events, run_id)

    download_and_summarize(pick_cloudevents())


pacifica_ingest_watcher()
