"""The defects a review of the core found (issue 13), each pinned by a test that failed before its fix."""

from __future__ import annotations

import asyncio
import gc
import glob
import io
import os
import subprocess
import weakref
from pathlib import Path

import jsonschema
import pytest
import requests
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_provider_pacifica import extraction
from airflow_provider_pacifica.carts import CartStatus, is_transient_cart_failure
from airflow_provider_pacifica.exceptions import CartdError, DestinationWriteError
from airflow_provider_pacifica.extraction import extract_cart, staging_prefix
from airflow_provider_pacifica.get_provider_info import CONN_FIELDS
from airflow_provider_pacifica.hooks.cartd import PacificaCartdHook
from airflow_provider_pacifica.operators.download import PacificaDownloadOperator
from airflow_provider_pacifica.sensors.cartd import CartSensor
from tests.httpserver import Reply, cartd_head
from tests.tars import build_tar, cart_files
from tests.unit.test_resume import BundleServer
from tests.unit.test_sensor_and_operator import make_context, serve_cart

# -- 1. a short write never publishes a truncated file ---------------------------------------------


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs: a write larger than what is left is short, the next one fails with ENOSPC."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


BIG = {"big.bin": os.urandom(100 * 1024)}  # written in one slice: the kernel takes 64 KiB of it and says so


def test_a_full_disk_fails_clearly_and_publishes_nothing(tiny_tmpfs):
    destination = tiny_tmpfs / "dest"
    with pytest.raises(DestinationWriteError, match=r"'big.bin'.*nothing was published"):
        extract_cart(io.BytesIO(build_tar(BIG)), cart_files(BIG), destination, "data")
    assert list(tiny_tmpfs.iterdir()) == []  # no destination, no staging left behind


def test_a_full_disk_fails_the_task_with_retries_naming_the_file(tiny_tmpfs, http_server, cartd_conn):
    cartd_conn()
    serve_cart(http_server, build_tar(BIG))
    op = PacificaDownloadOperator(
        task_id="d", destination=str(tiny_tmpfs / "dest"), files=[f.to_dict() for f in cart_files(BIG)]
    )
    with pytest.raises(AirflowException, match=r"'big\.bin'") as failure:
        op.execute(make_context())
    assert not isinstance(failure.value, AirflowFailException)  # once there is room, a retry can succeed
    assert list(tiny_tmpfs.iterdir()) == []


def test_short_writes_are_completed(tmp_path, monkeypatch):
    """A filesystem that takes a few bytes per write() still gets every byte."""
    real_write = os.write
    calls = []

    def dribbling_write(fd, data):  # POSIX lets write() take less than it was given
        calls.append(len(data))
        return real_write(fd, bytes(data[:1000]))

    monkeypatch.setattr(os, "write", dribbling_write)
    extract_cart(io.BytesIO(build_tar(BIG)), cart_files(BIG), tmp_path / "dest", "data")
    assert (tmp_path / "dest" / "big.bin").read_bytes() == BIG["big.bin"]
    assert len(calls) > len(BIG["big.bin"]) // 1000  # every write was short, and retried


# -- 2. a killed attempt's staging is found and removed by the next one -------------------------


def test_the_staging_of_a_killed_attempt_is_removed_by_the_next_one(tmp_path):
    destination = tmp_path / "dest"
    stale = tmp_path / (staging_prefix("dest", "cart-1") + "killed")  # SIGKILL leaves it behind
    (stale / "files" / "a").mkdir(parents=True)
    (stale / "files" / "a" / "half.bin").write_bytes(b"half")
    other = tmp_path / (staging_prefix("dest", "cart-2") + "running")  # another task's download
    other.mkdir()
    extract_cart(io.BytesIO(build_tar()), cart_files(), destination, "data", staging_key="cart-1")
    assert not stale.exists()
    assert other.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["dest"]


def test_a_staging_that_holds_replaced_files_is_never_removed(tmp_path):
    kept = tmp_path / (staging_prefix("dest", "cart-1") + "cut-mid-publish")
    (kept / extraction.REPLACED_DIR).mkdir(parents=True)
    (kept / extraction.REPLACED_DIR / "0").write_bytes(b"the only copy of a replaced file")
    extract_cart(io.BytesIO(build_tar()), cart_files(), tmp_path / "dest", "data", staging_key="cart-1")
    assert (kept / extraction.REPLACED_DIR / "0").exists()


def test_staging_directories_are_hidden_from_downstream_globs(tmp_path, monkeypatch):
    seen = []
    real_stage = extraction.stage_files

    def spying_stage(stream, files, staging, *args, **kwargs):
        seen.extend(Path(p).name for p in glob.glob(str(tmp_path / "*")))  # what a shell glob shows meanwhile
        seen.append(staging.parent.name)
        return real_stage(stream, files, staging, *args, **kwargs)

    monkeypatch.setattr(extraction, "stage_files", spying_stage)
    extract_cart(io.BytesIO(build_tar()), cart_files(), tmp_path / "dest", "data", staging_key="k")
    assert seen[-1].startswith(".")
    assert not any(name.startswith(".") for name in seen[:-1])


def test_the_operator_keys_staging_by_its_cart_so_retries_clean_up(http_server, cartd_conn, tmp_path):
    cartd_conn()
    serve_cart(http_server, build_tar())
    op = PacificaDownloadOperator(
        task_id="d", destination=str(tmp_path / "dest"), files=[f.to_dict() for f in cart_files()]
    )
    cart_uid = op.cart_uid_for(make_context(), cart_files())
    stale = tmp_path / (staging_prefix("dest", cart_uid) + "attempt-1")
    stale.mkdir()
    op.execute(make_context())
    assert not stale.exists()


# -- 3. one hook per execution, closed --------------------------------------------------------------


def test_one_hook_per_execution_one_connection_lookup_and_its_session_closed(
    http_server, cartd_conn, tmp_path, monkeypatch
):
    cartd_conn()
    serve_cart(http_server, build_tar())
    lookups, closed = [], []
    real_get_connection = PacificaCartdHook.get_connection
    real_close = requests.Session.close
    monkeypatch.setattr(
        PacificaCartdHook, "get_connection", classmethod(lambda cls, c: lookups.append(c) or real_get_connection(c))
    )
    monkeypatch.setattr(requests.Session, "close", lambda self: closed.append(self) or real_close(self))
    op = PacificaDownloadOperator(
        task_id="d", destination=str(tmp_path / "d"), files=[f.to_dict() for f in cart_files()]
    )
    op.execute(make_context())
    assert lookups == ["pacifica_cartd_default"]  # HEAD, GET and DELETEs all on one hook
    assert len(closed) == 1
    assert op.hook._session is None


def test_the_sensor_uses_one_hook_for_all_its_pokes_and_closes_it(http_server, cartd_conn, monkeypatch):
    cartd_conn()
    http_server.sequence(cartd_head("staging"), cartd_head("staging"), cartd_head("ready"))
    lookups = []
    real_get_connection = PacificaCartdHook.get_connection
    monkeypatch.setattr(
        PacificaCartdHook, "get_connection", classmethod(lambda cls, c: lookups.append(c) or real_get_connection(c))
    )
    sensor = CartSensor(task_id="w", cart_uid="c", deferrable=False, poke_interval=0.01, mode="poke")
    sensor.execute(make_context())
    assert len(http_server.requests) == 3
    assert lookups == ["pacifica_cartd_default"]
    assert sensor.hook._session is None


# -- 5. Cartd's failures: transient ones are retried, probing is off when deferred ---------------

# Cartd 0.7's own texts (tasks.py, utils.py), wrapped as prepare_bundle wraps them.
TRANSIENT = [
    "Failed to pull file(Failed to stage with error: HTTPConnectionPool(host='127.0.0.1', port=8080): refused)",
    "Failed to pull file(Failed to status file with error: Read timed out.)",
    "Failed to pull file(Failed to pull with error: Status code is 500)",
    "Failed to pull file(Not enough space to download file)",
    "Failed to pull file(Failed to get available file\n            space with error: [Errno 2])",
    "Failed to pull file(Failed directory create with error: [Errno 13] Permission denied)",
]
PERMANENT = [
    "Failed to pull file(Failed to pull with error: File hash does not match provided hash)",
    "Error parsing file Ids with error: 'hashtype'",
    "Something Cartd has never said",
]


@pytest.mark.parametrize("message", TRANSIENT)
def test_archive_and_disk_faults_are_transient(message):
    assert is_transient_cart_failure(message)
    assert CartStatus("c", "error", message).transient


@pytest.mark.parametrize("message", PERMANENT)
def test_wrong_data_and_unknown_failures_are_permanent(message):
    assert not is_transient_cart_failure(message)


def test_a_cart_failed_by_an_archive_fault_fails_with_retries_and_is_kept(http_server, cartd_conn, tmp_path):
    cartd_conn()
    http_server.sequence(cartd_head("error", TRANSIENT[0], status=500))
    op = PacificaDownloadOperator(task_id="d", destination=str(tmp_path), files=[f.to_dict() for f in cart_files()])
    with pytest.raises(AirflowException, match="Failed to stage") as failure:
        op.execute_complete(make_context(), {"status": "error", "message": TRANSIENT[0], "retryable": True})
    assert not isinstance(failure.value, AirflowFailException)
    assert http_server.requests == []  # nothing probed, nothing deleted: the retry stages it again


def test_on_the_worker_an_archive_fault_fails_with_retries_without_probing(http_server, cartd_conn, tmp_path):
    cartd_conn()
    http_server.sequence(Reply(201), cartd_head("error", TRANSIENT[3], status=500))

    def handler(request):
        if request.method == "POST":
            return Reply(201)
        return cartd_head("error", TRANSIENT[3], status=500) if len(http_server.requests) > 2 else Reply(404)

    http_server.handler = handler
    op = PacificaDownloadOperator(task_id="d", destination=str(tmp_path), files=[f.to_dict() for f in cart_files()])
    with pytest.raises(AirflowException, match="Not enough space") as failure:
        op.execute(make_context())
    assert not isinstance(failure.value, AirflowFailException)
    assert [r.method for r in http_server.requests] == ["HEAD", "POST", "HEAD", "HEAD"]  # no probe POSTs


def test_a_deferrable_download_does_not_probe_by_default(http_server, cartd_conn, tmp_path):
    cartd_conn()
    http_server.sequence(Reply(200))
    op = PacificaDownloadOperator(
        task_id="d",
        destination=str(tmp_path),
        files=[f.to_dict() for f in cart_files()],
        deferrable=True,
        defer_after=0,
    )
    with pytest.raises(AirflowFailException, match="none was singled out"):
        op.execute_complete(make_context(), {"status": "error", "message": PERMANENT[0], "cart_uid": "c"})
    assert {r.method for r in http_server.requests} == {"DELETE"}  # no probe cart was created


# -- 6. small defects ------------------------------------------------------------------------------


def test_no_download_is_reopened_after_close(http_server, cartd_conn, monkeypatch):
    """close() from the task's thread while the prefetch thread resumes: the new response is closed too."""
    cartd_conn(retry_backoff=0)
    tar = build_tar(top="c")
    http_server.handler = BundleServer(tar, cuts=[3000])
    hook = PacificaCartdHook()
    opened = []
    real_open = hook.open_cart_stream

    def open_and_close_meanwhile(*args, **kwargs):
        stream = real_open(*args, **kwargs)
        response = stream.__enter__()
        opened.append(response)
        if len(opened) == 2:
            reader.close()  # the other thread closes while this one is opening the resumed stream
        return _Entered(stream, response)

    monkeypatch.setattr(hook, "open_cart_stream", open_and_close_meanwhile)
    with hook.read_cart("c", filename="c.tar") as reader, pytest.raises(CartdError, match="closed"):
        drain(reader)
    assert len(opened) == 2
    assert opened[1].raw.closed


def drain(reader) -> None:
    while reader.read(65536):
        pass


class _Entered:
    def __init__(self, stream, response):
        self.stream, self.response = stream, response

    def __enter__(self):
        return self.response

    def __exit__(self, *exc):
        return self.stream.__exit__(*exc)


def test_the_async_connection_cache_keeps_no_event_loop_alive(monkeypatch):
    from airflow_provider_pacifica.connection import CartdConnectionConfig

    async def fetch(self):  # Airflow's own Connection.async_get keeps its loop in asgiref's thread-local
        return CartdConnectionConfig(base_url="http://127.0.0.1:1")

    monkeypatch.setattr(PacificaCartdHook, "_fetch_config", fetch)
    loop = asyncio.new_event_loop()
    assert loop.run_until_complete(PacificaCartdHook().aget_config()).base_url == "http://127.0.0.1:1"
    loop.close()
    alive = weakref.ref(loop)
    del loop
    gc.collect()
    assert alive() is None


def test_a_post_is_not_resent_when_the_connection_breaks_after_sending(http_server, cartd_conn):
    cartd_conn(max_retries=3)
    http_server.sequence(Reply(201, drop=True))
    with pytest.raises(CartdError):
        PacificaCartdHook().create_cart([f.to_dict() for f in cart_files()], cart_uid="c")
    assert [r.method for r in http_server.requests] == ["POST"]  # it reached Cartd: re-sending could double it


def test_a_post_is_resent_when_the_connection_was_never_opened(set_connection):
    import socket

    with socket.socket() as probe:  # a port nothing listens on: the connection is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    set_connection(
        "pacifica_cartd_default",
        {
            "conn_type": "pacifica_cartd",
            "host": "127.0.0.1",
            "port": port,
            "extra": {"max_retries": 2, "retry_backoff": 0},
        },
    )
    attempts = []
    real_new_conn = __import__("urllib3").connection.HTTPConnection._new_conn

    def counting(self):
        attempts.append(self.port)
        return real_new_conn(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("urllib3.connection.HTTPConnection._new_conn", counting)
        with pytest.raises(CartdError, match="create cart"):
            PacificaCartdHook().create_cart([f.to_dict() for f in cart_files()], cart_uid="c")
    assert len(attempts) == 3  # the first try and two retries


def test_an_error_page_is_read_only_up_to_a_bound(http_server, cartd_conn):
    cartd_conn(max_retries=0)
    sent = []

    def huge_body():
        for _ in range(200):  # 200 MiB, were it all read
            sent.append(1)
            yield b"x" * (1 << 20)

    http_server.sequence(Reply(500, {"Content-Type": "text/plain"}, huge_body(), chunked=True))
    with pytest.raises(CartdError, match=r"HTTP 500: x+…$"):
        PacificaCartdHook().create_cart([f.to_dict() for f in cart_files()], cart_uid="c")
    assert len(sent) < 50  # what the socket buffers took, not the whole body


def test_credentials_in_a_proxy_url_are_masked(cartd_conn):
    from airflow.sdk.log import redact

    cartd_conn(proxies={"http": "http://proxyuser:pr0xy-s3cret@127.0.0.1:3128"})
    PacificaCartdHook().config  # noqa: B018  # reading the connection registers its secrets
    assert "pr0xy-s3cret" not in str(redact("via http://proxyuser:pr0xy-s3cret@127.0.0.1:3128"))


@pytest.mark.parametrize("field", ["connect_timeout", "read_timeout"])
def test_the_connection_form_refuses_a_zero_timeout_like_the_hook(field):
    schema = CONN_FIELDS[field]["schema"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(0, schema)
    jsonschema.validate(0.5, schema)


# -- operator conveniences (issue 14, point 5) --------------------------------------------------------


def test_on_kill_stops_the_download_cleans_its_staging_and_does_not_restart(http_server, cartd_conn, tmp_path):
    import threading
    import time

    cartd_conn()
    tar = build_tar()
    started = threading.Event()

    def slow_body():
        yield tar[:4096]
        started.set()
        for offset in range(4096, len(tar), 512):
            time.sleep(0.05)
            yield tar[offset : offset + 512]

    def handler(request):
        if request.method == "HEAD":
            return cartd_head("ready")
        if request.method == "GET":
            return Reply(200, {}, slow_body(), chunked=True)
        return Reply(200)

    http_server.handler = handler
    op = PacificaDownloadOperator(
        task_id="d", destination=str(tmp_path / "dest"), files=[f.to_dict() for f in cart_files()], download_attempts=3
    )
    outcome: list[BaseException] = []

    def run():
        try:
            op.execute(make_context())
        except BaseException as err:  # collected and asserted below
            outcome.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    assert started.wait(10)
    op.on_kill()
    thread.join(20)
    assert not thread.is_alive()
    assert len(outcome) == 1
    assert "cancelled" in str(outcome[0])
    assert not isinstance(outcome[0], AirflowFailException)  # the cart stays for a retry
    assert list(tmp_path.iterdir()) == []  # no destination, no staging
    assert [r.method for r in http_server.requests].count("GET") == 1  # no restart after the kill
    assert "DELETE" not in [r.method for r in http_server.requests]


def test_a_big_file_list_is_written_beside_the_files_and_the_xcom_stays_small(http_server, cartd_conn, tmp_path):
    import json

    from airflow_provider_pacifica.batching import manifest_files

    cartd_conn()
    serve_cart(http_server, build_tar())
    op = PacificaDownloadOperator(
        task_id="d", destination=str(tmp_path / "dest"), files=[f.to_dict() for f in cart_files()], manifest_max_files=2
    )
    manifest = op.execute(make_context())
    assert "files" not in manifest
    assert manifest["file_count"] == len(cart_files())
    assert len(json.dumps(manifest)) < 1000
    listed = manifest_files(manifest)
    assert [entry["path"] for entry in listed] == [f.path for f in cart_files()]
    assert manifest["files_path"].startswith(str(tmp_path / "dest" / ".pacifica-files-"))
    small = PacificaDownloadOperator(
        task_id="e", destination=str(tmp_path / "dest2"), files=[f.to_dict() for f in cart_files()]
    ).execute(make_context("e"))
    assert manifest_files(small) == small["files"]
