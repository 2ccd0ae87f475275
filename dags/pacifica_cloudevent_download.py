"""
### Download a Pacifica ingest, then process it

Runs once for every Pacifica ingest CloudEvent recorded on the asset ``pacifica://metadata/ingest``
by the provider's webhook, which records each event as its own asset partition (keyed by the
event id). The schedule is a ``PartitionedAssetTimetable``, so a burst of 30 events is 30 runs,
each started at once: none waits for a later ingest (with a plain ``schedule=[asset]``, Airflow
3.3 folds a burst into one run and can leave events behind, apache/airflow#56050). An event
POSTed to Airflow's REST API needs ``extra["cloudevent"]`` and a ``partition_key``. Triggered by
hand or by ``airflow dags test``, it reads the event from ``dag_run.conf["cloudevent"]`` instead.

1. ``pick_cloudevents`` finds the CloudEvents: the asset events of this run's partition (one,
   unless an event id was reused), or ``dag_run.conf`` for manual runs. With the watcher DAG
   (``pacifica_ingest_watcher``) on too, an ingest both intakes recorded is downloaded once, by
   the run of the earliest recorded event of its id; the other run logs the skip and the winner.
2. ``download`` (``PacificaDownloadOperator``, mapped: one task per event) creates a Cartd cart of
   the event's files, waits for it **deferred** in the triggerer (no worker slot held while tape
   stages), streams the tar, verifies every file against the hash Pacifica gave, and publishes the
   files atomically under ``<download root>/<run id>/<event id>/<subdir>/<name>`` (run and
   event ids made safe as directory names). The download root is ``[pacifica] download_root``: an
   absolute path on storage every worker sees, or an object-storage URL such as
   ``s3://bucket/prefix`` (connection ``[pacifica] download_conn_id``); else
   ``$PACIFICA_DOWNLOAD_ROOT``, else ``$AIRFLOW_HOME/pacifica-downloads``; read on the worker.
   It returns a manifest. Failures a retry can mend
   (Cartd unreachable, an archive fault, a broken stream, a full disk) are retried, reusing the cart;
   a retry after the files were published returns their manifest without downloading again.
3. ``summarize`` (one per download) streams each file named by the manifest (1 MiB at a time,
   whatever its size): bytes, lines, SHA-256, printed per file; it returns only the totals (a
   small XCom) and attaches them to the outlet asset ``pacifica://airflow/downloads`` so further
   DAGs can chain on finished downloads.

Needs the connection ``pacifica_cartd_default`` (type ``pacifica_cartd``) pointing at Cartd.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from airflow.sdk import PartitionedAssetTimetable, dag, task
from pacifica_common import INTAKES, PACIFICA_INGEST, download_and_summarize, downloads_for, pick_downloads


@dag(
    schedule=PartitionedAssetTimetable(assets=PACIFICA_INGEST),  # one run per event
    catchup=False,
    doc_md=__doc__,
    tags=["pacifica", "example"],
    max_active_runs=8,  # runs beyond these wait queued, each with its own event
    default_args={"retries": 3, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True},
)
def pacifica_cloudevent_download():
    # Undecided (an earlier event not readable yet, or its run not started): retried every 20 s for 4
    # minutes; the last try downloads an ingest whose earlier event started no run (its DAG paused).
    @task(inlets=list(INTAKES), retries=12, retry_delay=timedelta(seconds=20), retry_exponential_backoff=False)
    def pick_cloudevents(
        triggering_asset_events=None, inlet_events=None, dag_run=None, run_id=None, ti=None
    ) -> list[dict[str, Any]]:
        """One download per CloudEvent: of the triggering asset events (unless the watcher recorded
        the ingest first), or of ``dag_run.conf``."""
        events = (triggering_asset_events or {}).get(PACIFICA_INGEST, [])
        if any("cloudevent" in (event.extra or {}) for event in events):
            last_try = ti is not None and ti.try_number > ti.max_tries
            return pick_downloads(PACIFICA_INGEST, triggering_asset_events, inlet_events, run_id, last_try=last_try)
        conf = (dag_run.conf if dag_run else None) or {}
        if "cloudevent" in conf:
            cloudevent = conf["cloudevent"]
            return downloads_for([json.loads(cloudevent) if isinstance(cloudevent, str) else cloudevent], run_id)
        raise ValueError("no CloudEvent: expected asset event extra['cloudevent'] or dag_run.conf['cloudevent']")

    download_and_summarize(pick_cloudevents())


pacifica_cloudevent_download()
