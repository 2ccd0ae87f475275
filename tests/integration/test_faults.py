"""Fault injection on real components: a proxy in front of the real Cartd drops, stalls, fails.

Each case asserts the files on disk and their hashes, or that a failure left the destination
untouched.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import uuid
from urllib.parse import urlsplit

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_provider_pacifica.hooks.cartd import PacificaCartdHook
from airflow_provider_pacifica.operators.download import PacificaDownloadOperator
from airflow_provider_pacifica.triggers.cartd import CartReadyTrigger
from tests.faultproxy import FaultProxy
from tests.integration.test_hook_cartd import load, wait
from tests.unit.test_extraction import snapshot
from tests.unit.test_sensor_and_operator import make_context

CONTENTS = {f"run/part-{i}.bin": os.urandom(700_000 + i) for i in range(6)} | {"run/README.txt": b"six parts\n"}
TOTAL = sum(len(d) for d in CONTENTS.values())


@pytest.fixture
def proxy(cartd_stack):
    fault_proxy = FaultProxy(cartd_stack.cartd_url)
    yield fault_proxy
    fault_proxy.close()


@pytest.fixture
def via_proxy(proxy, set_connection):
    """Connection ``pacifica_cartd_default`` through the fault proxy, with quick retries."""

    def _set(**extra):
        extra = {"retry_backoff": 0.05, "read_timeout": 10, **extra}
        set_connection(
            "pacifica_cartd_default",
            {"conn_type": "pacifica_cartd", "host": "127.0.0.1", "port": proxy.port, "extra": extra},
        )

    _set()
    return _set


@pytest.fixture
def direct(cartd_stack, set_connection):
    url = urlsplit(cartd_stack.cartd_url)
    set_connection(
        "pacifica_cartd_direct",
        {"conn_type": "pacifica_cartd", "host": url.hostname, "port": url.port, "extra": {"retry_backoff": 0.05}},
    )
    return PacificaCartdHook(pacifica_conn_id="pacifica_cartd_direct")


def download_operator(tmp_path, files, **kwargs):
    return PacificaDownloadOperator(
        task_id=f"faults-{uuid.uuid4().hex[:8]}",
        destination=str(tmp_path / "dest"),
        files=[f.to_dict() for f in files],
        deferrable=False,
        poll_interval=0.2,
        **kwargs,
    )


def assert_published(tmp_path):
    for path, data in CONTENTS.items():
        on_disk = (tmp_path / "dest" / path).read_bytes()
        assert hashlib.sha256(on_disk).hexdigest() == hashlib.sha256(data).hexdigest(), path


def test_a_streaming_download_cut_midway_restarts_from_zero_and_verifies(cartd_stack, proxy, via_proxy, tmp_path):
    op = download_operator(tmp_path, load(cartd_stack, CONTENTS))
    proxy.cut_next_download(1_500_000)
    manifest = op.execute(make_context(task_id=op.task_id))
    assert [d.range for d in proxy.downloads()] == [None, None]  # Cartd's stream has no Range: restart
    assert manifest["total_bytes"] == TOTAL
    assert_published(tmp_path)


def test_a_bundle_download_cut_midway_resumes_with_range_and_is_identical(cartd_stack, proxy, via_proxy, tmp_path):
    op = download_operator(tmp_path, load(cartd_stack, CONTENTS), bundle=True)
    proxy.cut_next_download(1_500_000)
    op.execute(make_context(task_id=op.task_id))
    assert [d.range for d in proxy.downloads()] == [None, "bytes=1500000-"]
    assert [d.status for d in proxy.downloads()] == [200, 206]
    assert_published(tmp_path)


def test_a_stalled_download_times_out_and_is_retried(cartd_stack, proxy, via_proxy, tmp_path):
    via_proxy(read_timeout=1)
    op = download_operator(tmp_path, load(cartd_stack, CONTENTS), bundle=True)
    proxy.stall_next_download(3)
    op.execute(make_context(task_id=op.task_id))
    assert len(proxy.downloads()) == 2
    assert_published(tmp_path)


def test_a_download_that_keeps_breaking_fails_and_leaves_the_destination_untouched(
    cartd_stack, proxy, via_proxy, tmp_path
):
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "mine.txt").write_text("keep me")
    before = snapshot(tmp_path)
    op = download_operator(tmp_path, load(cartd_stack, CONTENTS), download_attempts=2)
    for _ in range(2):
        proxy.cut_next_download(1_000_000)
    with pytest.raises(AirflowException, match="download failed 2 times"):
        op.execute(make_context(task_id=op.task_id))
    assert snapshot(tmp_path) == before


def test_a_retried_task_reuses_its_cart_instead_of_staging_again(cartd_stack, proxy, via_proxy, tmp_path):
    op = download_operator(tmp_path, load(cartd_stack, CONTENTS), download_attempts=1)
    proxy.cut_next_download(500_000)
    with pytest.raises(AirflowException):
        op.execute(make_context(task_id=op.task_id))  # attempt 1: cart staged, download broken
    op.execute(make_context(task_id=op.task_id))  # attempt 2 (the retry)
    assert len(proxy.posts()) == 1  # staged once
    assert len(proxy.downloads()) == 2
    assert_published(tmp_path)


def test_a_cart_lost_after_it_was_ready_is_staged_once_more(cartd_stack, proxy, via_proxy, tmp_path):
    op = download_operator(tmp_path, load(cartd_stack, CONTENTS))
    proxy.lose_next_downloads(1)
    op.execute(make_context(task_id=op.task_id))
    posted = [p.path for p in proxy.posts()]
    assert len(posted) == 2
    assert posted[1] == posted[0] + "-r1"
    assert_published(tmp_path)


def test_a_cart_lost_twice_fails_with_a_clear_message(cartd_stack, proxy, via_proxy, tmp_path):
    op = download_operator(tmp_path, load(cartd_stack, CONTENTS))
    proxy.lose_next_downloads(2)
    with pytest.raises(AirflowFailException, match="vanished twice; giving up"):
        op.execute(make_context(task_id=op.task_id))
    assert not (tmp_path / "dest").exists()


async def test_502_and_503_while_waiting_are_ridden_through(cartd_stack, proxy, via_proxy, direct):
    cart_uid = direct.create_cart(load(cartd_stack, {"w/a.txt": b"wait for me"}))
    proxy.fail(503, 3)
    proxy.fail(502, 2)
    trigger = CartReadyTrigger(cart_uid=cart_uid, poll_interval=0.05, max_poll_interval=0.2)
    event = await asyncio.wait_for(trigger.run().__anext__(), 60)
    assert event.payload["status"] == "ready"
    assert [s.status for s in proxy.seen[:5]] == [503, 503, 503, 502, 502]


async def test_cartd_down_past_the_failure_budget_ends_in_a_clear_error(cartd_stack, proxy, via_proxy, direct):
    cart_uid = direct.create_cart(load(cartd_stack, {"w/b.txt": b"never seen"}))
    proxy.fail(503, 100)
    trigger = CartReadyTrigger(
        cart_uid=cart_uid, poll_interval=0.01, max_poll_interval=0.05, max_consecutive_failures=4
    )
    event = await asyncio.wait_for(trigger.run().__anext__(), 60)
    assert event.payload["status"] == "error"
    assert "gave up after 4 failed polls in a row" in event.payload["message"]
    assert "HTTP 503" in event.payload["message"]


async def test_a_cartd_restart_while_waiting_is_ridden_through(cartd_stack, direct, capfd):
    files = load(cartd_stack, {"r/one.bin": os.urandom(2_000_000)})
    cart_uid = direct.create_cart(files)
    restarted = threading.Thread(target=cartd_stack.restart, args=("cartd",))
    restarted.start()
    port = urlsplit(cartd_stack.cartd_url).port
    for _ in range(400):  # wait until Cartd is really down, then start waiting on the cart
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            break
        await asyncio.sleep(0.05)
    trigger = CartReadyTrigger(
        cart_uid=cart_uid,
        pacifica_conn_id="pacifica_cartd_direct",
        poll_interval=0.2,
        max_poll_interval=1.0,
        max_consecutive_failures=60,
    )
    event = await asyncio.wait_for(trigger.run().__anext__(), 120)
    await asyncio.to_thread(restarted.join)
    assert event.payload["status"] == "ready"
    assert "failure 1/60" in capfd.readouterr().out  # it really met Cartd down
    assert wait(direct, cart_uid).ready


async def test_a_duplicated_or_restarted_trigger_changes_nothing(cartd_stack, proxy, via_proxy, direct):
    cart_uid = direct.create_cart(load(cartd_stack, {"t/a.txt": b"twice"}))
    first, second = (CartReadyTrigger(cart_uid=cart_uid, poll_interval=0.05) for _ in range(2))
    events = await asyncio.gather(*(asyncio.wait_for(t.run().__anext__(), 60) for t in (first, second)))
    again = await asyncio.wait_for(CartReadyTrigger(cart_uid=cart_uid).run().__anext__(), 60)
    assert [e.payload["status"] for e in [*events, again]] == ["ready"] * 3
    assert {s.method for s in proxy.seen} == {"HEAD"}  # waiting never creates or changes anything
