"""
### Download a large Pacifica ingest as several carts in parallel

For events too big for one worker: ``plan_batches`` splits the event's files into
``dag_run.conf["parts"]`` carts of about equal bytes (``split_files``); the mapped
``PacificaDownloadOperator`` tasks each stage, wait for (**deferred**), stream and verify their
own cart, publishing into the same destination; ``merge`` joins their manifests into one
(``merge_manifests``).

Trigger it with ``{"cloudevent": <Pacifica ingest CloudEvent>, "parts": 4}``. Needs the
connection ``pacifica_cartd_default`` (type ``pacifica_cartd``) pointing at Cartd.
"""

from __future__ import annotations

import os
from typing import Any

from airflow.sdk import dag, task

from airflow_provider_pacifica.batching import merge_manifests, split_files
from airflow_provider_pacifica.cloudevents import files_from_cloudevent
from airflow_provider_pacifica.operators.download import PacificaDownloadOperator

DOWNLOAD_ROOT = os.environ.get("PACIFICA_DOWNLOAD_ROOT", "/tmp/pacifica-downloads")


@dag(schedule=None, catchup=False, doc_md=__doc__, tags=["pacifica", "example"])
def pacifica_parallel_download():
    @task
    def plan_batches(dag_run=None) -> list[list[dict[str, Any]]]:
        conf = dag_run.conf or {}
        return split_files(files_from_cloudevent(conf["cloudevent"]), parts=int(conf.get("parts", 4)))

    downloads = PacificaDownloadOperator.partial(
        task_id="download",
        destination=DOWNLOAD_ROOT + "/{{ run_id }}",
        deferrable=True,
        poll_interval=2.0,
    ).expand(files=plan_batches())

    @task
    def merge(manifests: list[dict[str, Any]]) -> dict[str, Any]:
        merged = merge_manifests(manifests)
        print(f"{merged['file_count']} files, {merged['total_bytes']} bytes from {len(merged['cart_uids'])} carts")
        return merged

    merge(downloads.output)


pacifica_parallel_download()
