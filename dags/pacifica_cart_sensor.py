"""
### Wait for a cart with CartSensor, then download it

The provider's building blocks one by one, for pipelines that manage carts themselves, written so
that any task can be retried without staging or downloading twice:

1. ``create_cart`` derives the cart uid from the run and the file list (``derive_cart_uid``) and
   calls ``PacificaCartdHook.ensure_cart``: a retry finds the cart its first attempt created.
   The files come from ``dag_run.conf["cloudevent"]`` (or ``dag_run.conf["files"]``).
2. ``wait_for_cart`` (``CartSensor``, **deferred**) waits in the triggerer until Cartd has staged it.
3. ``download_cart`` calls ``PacificaCartdHook.download_cart``: the tar is streamed, a broken
   stream restarted, every file verified and the files published atomically under
   ``<download root>/<run id>/``; a retry after a published download finds the verified files
   (``published_files``) and downloads nothing. Then the cart is deleted. The download root is
   ``[pacifica] download_root`` (a path or a URL such as ``s3://bucket/prefix``, with the
   connection ``[pacifica] download_conn_id``), else ``$PACIFICA_DOWNLOAD_ROOT``, read on the worker.

Needs the connection ``pacifica_cartd_default`` (type ``pacifica_cartd``) pointing at Cartd.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any

from airflow.sdk import dag, task

from airflow_provider_pacifica.carts import derive_cart_uid
from airflow_provider_pacifica.cloudevents import files_from_cloudevent, files_from_list
from airflow_provider_pacifica.hooks.cartd import PacificaCartdHook
from airflow_provider_pacifica.sensors.cartd import CartSensor
from airflow_provider_pacifica.storage import download_destination, published_files, resolve_destination


@dag(
    schedule=None,
    catchup=False,
    doc_md=__doc__,
    tags=["pacifica", "example"],
    default_args={"retries": 3, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True},
)
def pacifica_cart_sensor():
    @task
    def create_cart(dag_run=None) -> dict[str, Any]:
        conf = dag_run.conf or {}
        files = files_from_cloudevent(conf["cloudevent"]) if "cloudevent" in conf else files_from_list(conf["files"])
        records = [f.to_dict() for f in files]
        cart_uid = derive_cart_uid({"dag_id": dag_run.dag_id, "run_id": dag_run.run_id, "files": records})
        with contextlib.closing(PacificaCartdHook()) as hook:
            hook.ensure_cart(cart_uid, files)
        return {"cart_uid": cart_uid, "files": records}

    cart = create_cart()

    wait_for_cart = CartSensor(
        task_id="wait_for_cart",
        cart_uid="{{ ti.xcom_pull(task_ids='create_cart')['cart_uid'] }}",
        deferrable=True,
        poke_interval=2,
        timeout=6 * 3600,
    )

    @task
    def download_cart(cart: dict[str, Any], run_id=None) -> dict[str, Any]:
        files = files_from_list(cart["files"])
        destination = resolve_destination(download_destination(run_id))  # [pacifica] download_root
        with contextlib.closing(PacificaCartdHook()) as hook:
            extracted = published_files(destination, files, cart["cart_uid"])  # a retry after a published download
            if extracted is None:
                extracted = hook.download_cart(cart["cart_uid"], files, destination, attempts=3, on_progress=print)
            hook.delete_cart(cart["cart_uid"])
        total = sum(f.size for f in extracted)
        print(f"{len(extracted)} verified files, {total} bytes in {destination}")
        return {
            "destination": str(destination),
            "cart_uid": cart["cart_uid"],
            "file_count": len(extracted),
            "total_bytes": total,
        }

    cart >> wait_for_cart >> download_cart(cart)


pacifica_cart_sensor()
