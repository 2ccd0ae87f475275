"""
### Wait for a cart with CartSensor, then download it

Shows the provider's building blocks one by one, for pipelines that manage carts themselves:

1. ``create_cart`` creates a Cartd cart of the files in ``dag_run.conf["cloudevent"]`` (or
   ``dag_run.conf["files"]``) through ``PacificaCartdHook.create_cart``.
2. ``wait_for_cart`` (``CartSensor``, **deferred**) waits in the triggerer until Cartd has staged it.
3. ``download_cart`` streams the tar with ``PacificaCartdHook.open_cart_stream`` into
   ``extract_cart``, which verifies every file and publishes them atomically, then deletes the cart.

Needs the connection ``pacifica_cartd_default`` (type ``pacifica_cartd``) pointing at Cartd.
"""

from __future__ import annotations

import os
from typing import Any

from airflow.sdk import dag, task

from airflow_provider_pacifica.cloudevents import files_from_cloudevent, files_from_list
from airflow_provider_pacifica.extraction import extract_cart
from airflow_provider_pacifica.hooks.cartd import PacificaCartdHook
from airflow_provider_pacifica.sensors.cartd import CartSensor

DOWNLOAD_ROOT = os.environ.get("PACIFICA_DOWNLOAD_ROOT", "/tmp/pacifica-downloads")


def _requested_files(conf: dict[str, Any]) -> list[dict[str, Any]]:
    files = files_from_cloudevent(conf["cloudevent"]) if "cloudevent" in conf else files_from_list(conf["files"])
    return [f.to_dict() for f in files]


@dag(schedule=None, catchup=False, doc_md=__doc__, tags=["pacifica", "example"])
def pacifica_cart_sensor():
    @task
    def create_cart(dag_run=None) -> dict[str, Any]:
        files = _requested_files(dag_run.conf or {})
        cart_uid = PacificaCartdHook().create_cart(files)
        return {"cart_uid": cart_uid, "files": files}

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
        hook = PacificaCartdHook()
        destination = f"{DOWNLOAD_ROOT}/{run_id}"
        with hook.open_cart_stream(cart["cart_uid"], filename="data.tar") as response:
            extracted = extract_cart(
                response.raw, files_from_list(cart["files"]), destination, "data", on_progress=print
            )
        hook.delete_cart(cart["cart_uid"])
        return {"destination": destination, "files": [f.to_dict() for f in extracted]}

    cart >> wait_for_cart >> download_cart(cart)


pacifica_cart_sensor()
