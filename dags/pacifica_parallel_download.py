"""
### Download a large Pacifica ingest as several carts in parallel

For events with many files: ``plan_batches`` splits the event's files into carts of at most
``dag_run.conf["max_files"]`` files (default 2000, ``split_files``). Cartd 0.7 stages a cart in
time quadratic in its file count, so carts of a few thousand files keep staging linear in the
event's size (see README, Performance). The mapped ``PacificaDownloadOperator`` tasks each stage,
wait for (**deferred**), stream and verify their own cart, publishing into the same destination
``$PACIFICA_DOWNLOAD_ROOT/<run id>/``; ``merge`` joins their manifests into one
(``merge_manifests``) and returns only its totals.

Trigger it with ``{"cloudevent": <Pacifica ingest CloudEvent>, "max_files": 2000}``. Needs the
connection ``pacifica_cartd_default`` (type ``pacifica_cartd``) pointing at Cartd.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import dag, task

from airflow_provider_pacifica.batching import merge_manifests, split_files
from airflow_provider_pacifica.cloudevents import files_from_cloudevent
from airflow_provider_pacifica.destinations import destination_for
from airflow_provider_pacifica.operators.download import PacificaDownloadOperator


@dag(
    schedule=None,
    catchup=False,
    doc_md=__doc__,
    tags=["pacifica", "example"],
    default_args={"retries": 3, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True},
)
def pacifica_parallel_download():
    @task
    def plan_batches(dag_run=None, run_id=None) -> list[dict[str, Any]]:
        conf = dag_run.conf or {}
        batches = split_files(files_from_cloudevent(conf["cloudevent"]), max_files=int(conf.get("max_files", 2000)))
        destination = destination_for(run_id)  # on the worker: the same root the downloads use
        return [{"files": batch, "destination": destination} for batch in batches]

    downloads = PacificaDownloadOperator.partial(
        task_id="download",
        deferrable=True,
        poll_interval=2.0,
        timeout=6 * 3600,
    ).expand_kwargs(plan_batches())

    @task
    def merge(manifests: list[dict[str, Any]]) -> dict[str, Any]:
        merged = merge_manifests(manifests)
        print(f"{merged['file_count']} files, {merged['total_bytes']} bytes from {len(merged['cart_uids'])} carts")
        return {key: value for key, value in merged.items() if key != "files"}  # a small XCom

    merge(downloads.output)


pacifica_parallel_download()
