"""Trigger that waits in the triggerer until a Cartd cart is ready."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_pacifica.backoff import Backoff
from airflow_provider_pacifica.exceptions import CartdTransientError, InvalidInputError, PacificaError
from airflow_provider_pacifica.hooks.cartd import PacificaCartdHook

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class CartReadyTrigger(BaseTrigger):
    """Poll ``HEAD /<cart_uid>`` until the cart is ready, failed or gone; yield one event.

    The event is ``{"status": "ready" | "error" | "missing", "message": ..., "cart_uid": ...}``;
    an error that a task retry may mend (Cartd unreachable, or a cart failed by a passing archive or
    disk fault: see :func:`~airflow_provider_pacifica.carts.is_transient_cart_failure`) adds
    ``"retryable": True``.
    Polling only reads, so the trigger is safe to run twice (triggerer restarts, HA). Transient
    faults (Cartd restarting, timeouts, 502/503) are ridden through with backoff; only
    ``max_consecutive_failures`` of them in a row end in an ``error`` event.

    :param cart_uid: the cart to wait for.
    :param pacifica_conn_id: the ``pacifica_cartd`` connection (no secret travels in the kwargs).
    :param poll_interval: seconds between the first polls.
    :param max_poll_interval: the cap of the interval, which grows by half each poll while the
        cart stages (tape staging can take hours).
    :param max_consecutive_failures: transient faults in a row before giving up.
    """

    def __init__(
        self,
        cart_uid: str,
        pacifica_conn_id: str = PacificaCartdHook.default_conn_name,
        poll_interval: float = 5.0,
        max_poll_interval: float = 60.0,
        max_consecutive_failures: int = 10,
    ) -> None:
        super().__init__()
        self.cart_uid = cart_uid
        self.pacifica_conn_id = pacifica_conn_id
        self.poll_interval = float(poll_interval)
        self.max_poll_interval = max(float(max_poll_interval), self.poll_interval)
        self.max_consecutive_failures = int(max_consecutive_failures)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "cart_uid": self.cart_uid,
                "pacifica_conn_id": self.pacifica_conn_id,
                "poll_interval": self.poll_interval,
                "max_poll_interval": self.max_poll_interval,
                "max_consecutive_failures": self.max_consecutive_failures,
            },
        )

    def _event(self, status: str, message: str, **extra: bool) -> TriggerEvent:
        return TriggerEvent({"status": status, "message": message, "cart_uid": self.cart_uid, **extra})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = PacificaCartdHook(pacifica_conn_id=self.pacifica_conn_id)
        # Jittered, so that many triggers started together do not poll Cartd in lockstep.
        polls = Backoff(self.poll_interval, cap=self.max_poll_interval, factor=1.5)
        faults = Backoff(self.poll_interval, cap=self.max_poll_interval)
        polled = failures = 0
        try:
            async with hook.async_session() as session:
                while True:
                    try:
                        status = await hook.async_cart_status(self.cart_uid, session)
                    except CartdTransientError as err:
                        failures += 1
                        if failures >= self.max_consecutive_failures:
                            # Cartd unreachable, not the cart failing: a task retry may well succeed.
                            message = f"cart {self.cart_uid}: gave up after {failures} failed polls in a row: {err}"
                            yield self._event("error", message, retryable=True)
                            return
                        delay = faults.delay(failures)
                        self.log.warning(
                            "Cart %s: %s (failure %d/%d); next poll in %.1fs",
                            self.cart_uid,
                            err,
                            failures,
                            self.max_consecutive_failures,
                            delay,
                        )
                        await asyncio.sleep(delay)
                        continue
                    failures = 0
                    if status.ready:
                        yield self._event("ready", f"cart {self.cart_uid} is ready")
                        return
                    if status.failed:
                        # An archive fault or a full cache may pass: then a task retry stages it again.
                        extra = {"retryable": True} if status.transient else {}
                        yield self._event("error", f"cart {self.cart_uid} failed: {status.message}", **extra)
                        return
                    if status.missing:
                        yield self._event("missing", status.message)
                        return
                    delay = polls.delay(polled)
                    polled += 1
                    self.log.debug("Cart %s is %s; next poll in %.1fs", self.cart_uid, status.state, delay)
                    await asyncio.sleep(delay)
        except InvalidInputError as err:  # bad connection settings: a retry cannot help
            yield self._event("error", str(err))
        except PacificaError as err:  # an unexpected answer (a proxy's 500, 401...), not the cart's state
            yield self._event("error", str(err), retryable=True)
        except Exception as err:  # e.g. the connection id does not exist (yet)
            yield self._event("error", f"{type(err).__name__}: {err}", retryable=True)
