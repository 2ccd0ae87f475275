"""Trigger that waits in the triggerer until a Cartd cart is ready."""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_pacifica.exceptions import CartdTransientError, InvalidInputError, PacificaError
from airflow_provider_pacifica.hooks.cartd import PacificaCartdHook

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


def _jittered(seconds: float) -> float:
    """Up to 10 % less, so that many triggers started together do not poll Cartd in lockstep."""
    return seconds * (1 - 0.1 * random.random())


class CartReadyTrigger(BaseTrigger):
    """Poll ``HEAD /<cart_uid>`` until the cart is ready, failed or gone; yield one event.

    The event is ``{"status": "ready" | "error" | "missing", "message": ..., "cart_uid": ...}``;
    an error that came from Cartd being unreachable (not from the cart) adds ``"retryable": True``.
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
        # No requests adapter: the trigger only speaks aiohttp.
        hook = PacificaCartdHook(pacifica_conn_id=self.pacifica_conn_id, tcp_keep_alive=False)
        interval = self.poll_interval
        failures = 0
        try:
            async with hook.async_session() as session:
                while True:
                    try:
                        status = await hook.async_cart_status(self.cart_uid, session)
                    except CartdTransientError as err:
                        failures += 1
                        if failures >= self.max_consecutive_failures:
                            # Cartd unreachable, not the cart failing: a task retry may well succeed.
                            message = f"gave up after {failures} failed polls in a row: {err}"
                            yield self._event("error", message, retryable=True)
                            return
                        delay = min(self.poll_interval * 2**failures, self.max_poll_interval)
                        self.log.warning(
                            "Cart %s: %s (failure %d/%d); next poll in %.1fs",
                            self.cart_uid,
                            err,
                            failures,
                            self.max_consecutive_failures,
                            delay,
                        )
                        await asyncio.sleep(_jittered(delay))
                        continue
                    failures = 0
                    if status.ready:
                        yield self._event("ready", f"cart {self.cart_uid} is ready")
                        return
                    if status.failed:
                        yield self._event("error", f"cart {self.cart_uid} failed: {status.message}")
                        return
                    if status.missing:
                        yield self._event("missing", status.message)
                        return
                    self.log.debug("Cart %s is %s; next poll in %.1fs", self.cart_uid, status.state, interval)
                    await asyncio.sleep(_jittered(interval))
                    interval = min(interval * 1.5, self.max_poll_interval)
        except InvalidInputError as err:  # bad connection settings: a retry cannot help
            yield self._event("error", str(err))
        except PacificaError as err:  # an unexpected answer (a proxy's 500, 401...), not the cart's state
            yield self._event("error", str(err), retryable=True)
        except Exception as err:  # e.g. the connection id does not exist (yet)
            yield self._event("error", f"{type(err).__name__}: {err}", retryable=True)
