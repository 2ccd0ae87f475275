"""Sensor that waits for an existing Cartd cart to be ready."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, conf
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_provider_pacifica.hooks.cartd import PacificaCartdHook
from airflow_provider_pacifica.triggers.cartd import CartReadyTrigger

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context


class CartSensor(BaseSensorOperator):
    """Wait until a Pacifica Cartd cart is ready for download.

    Deferred (the default when ``[operators] default_deferrable`` is on), the wait runs in the
    triggerer and holds no worker slot, however long tape staging takes; ``poke`` and
    ``reschedule`` modes work too. ``timeout`` and ``soft_fail`` behave as for any sensor. A cart
    in error, or one Cartd does not know, fails the task at once, without retries, with Cartd's
    message; Cartd unreachable for longer than the trigger's failure budget fails it with retries.

    :param cart_uid: the cart to wait for (templated).
    :param pacifica_conn_id: the ``pacifica_cartd`` connection (templated).
    :param deferrable: wait in the triggerer instead of a worker slot.
    :param poke_interval: seconds between pokes; deferred, the trigger's first ``poll_interval``.
    :param max_poll_interval: deferred only: the cap of the growing poll interval, in seconds.
    :param max_consecutive_failures: deferred only: transient faults in a row before failing.
    """

    template_fields: Sequence[str] = ("cart_uid", "pacifica_conn_id")
    ui_color = "#c9e4f2"

    def __init__(
        self,
        *,
        cart_uid: str,
        pacifica_conn_id: str = PacificaCartdHook.default_conn_name,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        max_poll_interval: float = 60.0,
        max_consecutive_failures: int = 10,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("poke_interval", 10.0)
        super().__init__(**kwargs)
        self.cart_uid = cart_uid
        self.pacifica_conn_id = pacifica_conn_id
        self.deferrable = deferrable
        self.max_poll_interval = max_poll_interval
        self.max_consecutive_failures = max_consecutive_failures

    @cached_property
    def hook(self) -> PacificaCartdHook:
        """One hook (one connection lookup, one HTTP session) per execution; closed when it ends."""
        return PacificaCartdHook(pacifica_conn_id=self.pacifica_conn_id)

    def poke(self, context: Context) -> bool:
        status = self.hook.cart_status(self.cart_uid)
        if status.failed:
            raise AirflowFailException(f"cart {self.cart_uid} failed: {status.message}")
        if status.missing:
            raise AirflowFailException(f"cart {self.cart_uid} is missing: {status.message}")
        self.log.info("Cart %s is %s", self.cart_uid, status.state)
        return status.ready

    def execute(self, context: Context) -> None:
        with contextlib.closing(self.hook):
            if not self.deferrable:
                super().execute(context)
                return
            if self.poke(context):  # already ready: no need to visit the triggerer
                return
        self.defer(
            trigger=CartReadyTrigger(
                cart_uid=self.cart_uid,
                pacifica_conn_id=self.pacifica_conn_id,
                poll_interval=self.poke_interval,
                max_poll_interval=max(self.max_poll_interval, self.poke_interval),
                max_consecutive_failures=self.max_consecutive_failures,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> None:
        """Resume after the trigger: succeed on ``ready``, fail at once otherwise."""
        if not event or event.get("status") != "ready":
            message = (event or {}).get("message", "the trigger sent no event")
            if (event or {}).get("retryable"):  # Cartd was unreachable: let the task's retries act
                raise AirflowException(f"cart {self.cart_uid}: {message}")
            raise AirflowFailException(f"cart {self.cart_uid}: {message}")
        self.log.info("Cart %s is ready", self.cart_uid)
