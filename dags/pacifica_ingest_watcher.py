"""
### Pull intake: download each new Pacifica transaction, found by polling metadata

For sites that Pacifica Notifications cannot reach, or as a safety net for the webhook. The asset
``pacifica://metadata/ingest-pulled`` is watched by ``PacificaIngestEventTrigger`` in the
triggerer: it polls pacifica-metadata (connection ``pacifica_metadata_default``, every 30 s) for
transactions newer than its cursor (kept in the asset's state store, so a triggerer restart or a
metadata outage is caught up after) and records one asset event per transaction, carrying the
CloudEvent metadata itself emits on ingest in ``extra["payload"]["cloudevent"]``. The events
start this DAG, which downloads like ``pacifica_cloudevent_download`` (``pacifica_cartd_default``,
``[pacifica] download_root``) and summarizes the files.

1. ``pick_cloudevents``: one download per transaction among the run's events (a burst of events
   is folded into one run: each is downloaded). With the webhook DAG on too, an ingest recorded by
   both intakes is downloaded once: by the run of the **earliest recorded** event of its id (on
   either asset; a transaction the watcher yielded twice counts too); the other run skips it and
   logs the event and the winner.
2. ``find_stranded`` / ``requeue_stranded``: with a plain asset schedule Airflow 3.3 can leave
   events of a burst without a run until the next ingest (apache/airflow#56050). A run that finds
   such events records a ``requeue`` event on the asset, which starts a run that takes them.
3. ``download`` and ``summarize``, as in ``pacifica_cloudevent_download``.

**Paused when created** (opt-in): unpause it to turn the pull intake on; a paused DAG's watcher
does not poll.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import dag, task
from pacifica_common import INTAKES, PACIFICA_PULLED, download_and_summarize, pick_downloads, read_events

from airflow_provider_pacifica.intake import UndecidedError, stranded

DAG_ID = "pacifica_ingest_watcher"


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
    # Undecided (an earlier event not readable yet, or its run not started): retried every 20 s for 4
    # minutes; the last try downloads an ingest whose earlier event started no run (its DAG paused).
    @task(inlets=list(INTAKES), retries=12, retry_delay=timedelta(seconds=20), retry_exponential_backoff=False)
    def pick_cloudevents(triggering_asset_events=None, inlet_events=None, run_id=None, ti=None) -> list[dict[str, Any]]:
        """One download per transaction of this run's events that no earlier event of its id claims."""
        events = (triggering_asset_events or {}).get(PACIFICA_PULLED, [])
        if not events:
            raise ValueError("no asset event: this DAG runs on the watcher's events (extra['payload']['cloudevent'])")
        last_try = ti is not None and ti.try_number > ti.max_tries
        return pick_downloads(PACIFICA_PULLED, triggering_asset_events, inlet_events, run_id, last_try=last_try)

    @task.short_circuit(inlets=[PACIFICA_PULLED], ignore_downstream_trigger_rules=False)
    def find_stranded(inlet_events=None, dag_run=None) -> list[str]:
        """The ingest events recorded after this run's window and before it started that no run took."""
        if dag_run is None or dag_run.start_date is None:
            return []
        try:
            own = read_events(inlet_events, PACIFICA_PULLED, dag_run.run_after, dag_run.start_date)
        except UndecidedError as err:  # an event of a run just queued is there: nothing stranded
            print(f"Not checked for stranded events: {err}")
            return []
        ids = sorted({event.event_id for event in stranded(own, dag_run.run_after, DAG_ID) if event.event_id})
        if ids:
            print(f"Events without a run after this one's (apache/airflow#56050): {', '.join(ids)}; requeueing")
        return ids

    @task(outlets=[PACIFICA_PULLED])
    def requeue_stranded(ids: list[str], outlet_events=None) -> None:
        """Record a ``requeue`` event: the asset is queued again, and the next run takes the stranded events."""
        if outlet_events is not None:
            outlet_events[PACIFICA_PULLED].extra = {"requeue": ids}

    download_and_summarize(pick_cloudevents())
    requeue_stranded(find_stranded())


pacifica_ingest_watcher()
