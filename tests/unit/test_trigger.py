from __future__ import annotations

import asyncio
import importlib
import subprocess
import sys
import weakref

import pytest
from airflow.triggers.base import TriggerEvent

from airflow_provider_pacifica import backoff as backoff_module
from airflow_provider_pacifica.triggers import cartd as trigger_module
from airflow_provider_pacifica.triggers.cartd import CartReadyTrigger
from tests.httpserver import Reply, cartd_head

CLASSPATH = "airflow_provider_pacifica.triggers.cartd.CartReadyTrigger"


@pytest.fixture
def sleeps(monkeypatch):
    """Record the trigger's sleeps instead of waiting."""
    waited: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(seconds):
        waited.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(trigger_module.asyncio, "sleep", fake_sleep)
    monkeypatch.setattr(backoff_module.random, "random", lambda: 0.0)  # no jitter: exact intervals
    return waited


async def first_event(trigger: CartReadyTrigger) -> TriggerEvent:
    return await asyncio.wait_for(trigger.run().__anext__(), timeout=10)


def test_serialize_round_trips_with_plain_json_kwargs():
    trigger = CartReadyTrigger(cart_uid="c1", pacifica_conn_id="my_conn", poll_interval=2, max_poll_interval=30)
    classpath, kwargs = trigger.serialize()
    assert classpath == CLASSPATH
    assert kwargs == {
        "cart_uid": "c1",
        "pacifica_conn_id": "my_conn",
        "poll_interval": 2.0,
        "max_poll_interval": 30.0,
        "max_consecutive_failures": 10,
    }
    module, name = classpath.rsplit(".", 1)
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)


def test_the_classpath_imports_in_a_fresh_interpreter():
    """The triggerer imports the class from the installed package, not from a DAG file."""
    module, name = CLASSPATH.rsplit(".", 1)
    code = f"import importlib; getattr(importlib.import_module({module!r}), {name!r})"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


async def test_pending_then_ready_yields_one_ready_event(http_server, cartd_conn, sleeps):
    cartd_conn()
    http_server.sequence(cartd_head("staging"), cartd_head("waiting"), cartd_head("staging"), cartd_head("ready"))
    event = await first_event(CartReadyTrigger(cart_uid="c", poll_interval=2, max_poll_interval=4))
    assert event == TriggerEvent({"status": "ready", "message": "cart c is ready", "cart_uid": "c"})
    assert sleeps == [2.0, 3.0, 4.0]  # grows by half, capped
    assert [r.method for r in http_server.requests] == ["HEAD"] * 4


async def test_a_failed_cart_yields_error_with_cartds_message(http_server, cartd_conn, sleeps):
    cartd_conn()
    http_server.sequence(cartd_head("staging"), cartd_head("error", "Failed to pull file(File hash does not match)"))
    event = await first_event(CartReadyTrigger(cart_uid="c"))
    assert event.payload == {
        "status": "error",
        "message": "cart c failed: Failed to pull file(File hash does not match)",
        "cart_uid": "c",
    }


async def test_a_missing_cart_yields_missing(http_server, cartd_conn, sleeps):
    cartd_conn()
    http_server.sequence(cartd_head("missing", "No cart with uid c found"))
    event = await first_event(CartReadyTrigger(cart_uid="c"))
    assert event.payload == {"status": "missing", "message": "No cart with uid c found", "cart_uid": "c"}


async def test_transient_faults_are_ridden_through(http_server, cartd_conn, sleeps):
    cartd_conn()
    http_server.sequence(Reply(503), Reply(502), cartd_head("staging"), Reply(504), cartd_head("ready"))
    event = await first_event(CartReadyTrigger(cart_uid="c", poll_interval=1, max_poll_interval=60))
    assert event.payload["status"] == "ready"
    assert sleeps == [2.0, 4.0, 1.0, 2.0]  # backoff on faults, reset after a good answer


async def test_a_timeout_counts_as_a_transient_fault(http_server, cartd_conn, sleeps):
    cartd_conn(read_timeout=0.2)
    replies = iter([Reply(204, delay=1.0), cartd_head("ready")])
    http_server.handler = lambda request: next(replies)
    event = await first_event(CartReadyTrigger(cart_uid="c"))
    assert event.payload["status"] == "ready"


async def test_bounded_failures_end_in_an_error_event(http_server, cartd_conn, sleeps):
    cartd_conn()
    http_server.sequence(Reply(503))
    event = await first_event(CartReadyTrigger(cart_uid="c", max_consecutive_failures=4))
    assert event.payload["status"] == "error"
    assert "gave up after 4 failed polls in a row" in event.payload["message"]
    assert len(http_server.requests) == 4


async def test_cartd_down_ends_in_an_error_after_bounded_failures(set_connection, sleeps):
    set_connection("pacifica_cartd_default", {"conn_type": "pacifica_cartd", "host": "127.0.0.1", "port": 9})
    event = await first_event(CartReadyTrigger(cart_uid="c", max_consecutive_failures=3))
    assert event.payload["status"] == "error"
    assert "3 failed polls" in event.payload["message"]


async def test_a_bad_connection_yields_an_error_event(cartd_conn, sleeps):
    cartd_conn(api_key="x")
    event = await first_event(CartReadyTrigger(cart_uid="c"))
    assert event.payload["status"] == "error"
    assert "unknown Cartd connection extra" in event.payload["message"]


async def test_an_undefined_connection_yields_an_error_event(sleeps):
    event = await first_event(CartReadyTrigger(cart_uid="c", pacifica_conn_id="does_not_exist"))
    assert event.payload["status"] == "error"
    assert "does_not_exist" in event.payload["message"]


async def test_two_copies_of_the_trigger_agree_and_only_read(http_server, cartd_conn, sleeps):
    """A restarted or duplicated trigger is harmless: polling sends only HEADs."""
    cartd_conn()
    http_server.sequence(cartd_head("staging"), cartd_head("ready"))
    events = await asyncio.gather(
        first_event(CartReadyTrigger(cart_uid="c")), first_event(CartReadyTrigger(cart_uid="c"))
    )
    assert events[0] == events[1]
    assert {r.method for r in http_server.requests} == {"HEAD"}


async def test_the_event_loop_is_never_blocked(http_server, cartd_conn):
    """While the trigger waits on a slow Cartd, other coroutines keep running."""
    cartd_conn()
    http_server.sequence(Reply(204, {"X-Pacifica-Status": "ready", "X-Pacifica-Message": ""}, delay=0.5))
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    event = await first_event(CartReadyTrigger(cart_uid="c"))
    task.cancel()
    assert event.payload["status"] == "ready"
    assert ticks >= 20


def test_polls_are_jittered_by_at_most_a_tenth(monkeypatch):
    monkeypatch.setattr(backoff_module.random, "random", lambda: 0.999)
    assert 9.0 < backoff_module.Backoff(10.0).delay(0) <= 10.0
    monkeypatch.setattr(backoff_module.random, "random", lambda: 0.0)
    assert backoff_module.Backoff(10.0).delay(0) == 10.0


async def test_triggers_starting_together_read_the_connection_once(http_server, cartd_conn, sleeps, monkeypatch):
    from airflow_provider_pacifica.hooks import cartd as hook_module
    from airflow_provider_pacifica.hooks import cartd_async

    cartd_conn()
    http_server.sequence(cartd_head("ready"))
    fetches = []
    real_fetch = hook_module.PacificaCartdHook._fetch_config

    async def counting_fetch(self):
        fetches.append(self.pacifica_conn_id)
        return await real_fetch(self)

    monkeypatch.setattr(hook_module.PacificaCartdHook, "_fetch_config", counting_fetch)
    monkeypatch.setattr(cartd_async, "_CONFIGS", weakref.WeakKeyDictionary())
    events = await asyncio.gather(*(first_event(CartReadyTrigger(cart_uid=f"c{i}")) for i in range(20)))
    assert {e.payload["status"] for e in events} == {"ready"}
    assert fetches == ["pacifica_cartd_default"]


async def test_giving_up_on_an_unreachable_cartd_is_marked_retryable(http_server, cartd_conn, sleeps):
    cartd_conn()
    http_server.sequence(Reply(503))
    event = await first_event(CartReadyTrigger(cart_uid="c", max_consecutive_failures=2))
    assert event.payload["retryable"] is True
    http_server.sequence(cartd_head("error", "hash"))
    assert "retryable" not in (await first_event(CartReadyTrigger(cart_uid="c"))).payload


async def test_an_unexpected_answer_is_an_infrastructure_error_marked_retryable(http_server, cartd_conn, sleeps):
    cartd_conn(max_retries=0)
    http_server.sequence(Reply(500, {}, b"proxy error"))  # a 500 without X-Pacifica-Status: not the cart
    event = await first_event(CartReadyTrigger(cart_uid="c"))
    assert (event.payload["status"], event.payload.get("retryable")) == ("error", True)
