from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from unittest import mock

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred

from airflow_provider_pacifica.operators.download import PacificaDownloadOperator
from airflow_provider_pacifica.sensors.cartd import CartSensor
from airflow_provider_pacifica.triggers.cartd import CartReadyTrigger
from tests.httpserver import Reply, cartd_head
from tests.tars import CONTENTS, build_tar, cart_files, hostile_tars
from tests.unit.test_extraction import EXPECTED_ERRORS, snapshot


def make_context(task_id="download", map_index=-1, run_id="manual__1"):
    ti = mock.MagicMock(dag_id="dag", run_id=run_id, task_id=task_id, map_index=map_index)
    return {"ti": ti}


def event_for(files):
    return {
        "cloudEventsVersion": "0.1",
        "eventID": "evt-1",
        "eventType": "org.pacifica.metadata.ingest",
        "source": "/pacifica/metadata/ingest",
        "data": [{"destinationTable": "Transactions._id", "value": 99}]
        + [
            {
                "destinationTable": "Files",
                "_id": f.id,
                "subdir": f.path.rpartition("/")[0],
                "name": f.path.rpartition("/")[2],
                "hashtype": f.hashtype,
                "hashsum": f.hashsum,
                "size": f.size,
            }
            for f in files
        ],
    }


# -- CartSensor -----------------------------------------------------------------------------


def test_sensor_defers_with_the_cart_trigger_and_its_timeout(http_server, cartd_conn):
    cartd_conn()
    http_server.sequence(cartd_head("staging"))
    sensor = CartSensor(task_id="wait", cart_uid="c1", deferrable=True, timeout=120, poke_interval=3)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(make_context())
    trigger = deferred.value.trigger
    assert isinstance(trigger, CartReadyTrigger)
    assert trigger.serialize()[1]["cart_uid"] == "c1"
    assert trigger.poll_interval == 3.0
    assert deferred.value.timeout == timedelta(seconds=120)
    assert deferred.value.method_name == "execute_complete"


def test_sensor_does_not_defer_when_the_cart_is_already_ready(http_server, cartd_conn):
    cartd_conn()
    http_server.sequence(cartd_head("ready"))
    CartSensor(task_id="wait", cart_uid="c1", deferrable=True).execute(make_context())


@pytest.mark.parametrize(("state", "words"), [("error", "failed: bad hash"), ("missing", "is missing")])
def test_sensor_fails_at_once_without_retries_for_error_and_missing(http_server, cartd_conn, state, words):
    cartd_conn()
    http_server.sequence(cartd_head(state, "bad hash"))
    with pytest.raises(AirflowFailException, match=words):
        CartSensor(task_id="wait", cart_uid="c1", deferrable=True).execute(make_context())


def test_sensor_poke_mode_waits_on_the_worker(http_server, cartd_conn):
    cartd_conn()
    http_server.sequence(cartd_head("staging"), cartd_head("ready"))
    sensor = CartSensor(task_id="wait", cart_uid="c1", deferrable=False, poke_interval=0.01, timeout=10)
    sensor.execute(make_context())
    assert len(http_server.requests) == 2


def test_sensor_templates_cart_and_connection():
    assert set(CartSensor.template_fields) == {"cart_uid", "pacifica_conn_id"}


def test_sensor_resumes_on_ready_and_fails_on_anything_else():
    sensor = CartSensor(task_id="wait", cart_uid="c1", deferrable=True)
    sensor.execute_complete(make_context(), {"status": "ready", "message": "", "cart_uid": "c1"})
    with pytest.raises(AirflowFailException, match="cart c1: cart c1 failed: hash"):
        sensor.execute_complete(make_context(), {"status": "error", "message": "cart c1 failed: hash"})


@pytest.mark.parametrize("setting", ["True", "False"])
def test_deferrable_defaults_follow_operators_default_deferrable(setting, tmp_path):
    code = (
        "from airflow_provider_pacifica.sensors.cartd import CartSensor;"
        "from airflow_provider_pacifica.operators.download import PacificaDownloadOperator;"
        "s = CartSensor(task_id='s', cart_uid='c');"
        "o = PacificaDownloadOperator(task_id='o', destination='/tmp/x', files=[]);"
        "print(s.deferrable, o.deferrable)"
    )
    env = {**os.environ, "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": setting, "AIRFLOW_HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip().splitlines()[-1].split() == [setting, setting]


# -- PacificaDownloadOperator ---------------------------------------------------------------


def test_operator_needs_exactly_one_input():
    with pytest.raises(ValueError, match="exactly one of cloudevent, files, transaction_info"):
        PacificaDownloadOperator(task_id="d", destination="/tmp/x")
    with pytest.raises(ValueError, match=r"got \['cloudevent', 'files'\]"):
        PacificaDownloadOperator(task_id="d", destination="/tmp/x", cloudevent={}, files=[])


def test_bad_input_fails_the_task_at_once_naming_the_record(http_server, cartd_conn, tmp_path):
    cartd_conn()
    event = {"data": [{"destinationTable": "Files", "_id": 1, "name": "x", "subdir": "../..", "hashtype": "sha1"}]}
    op = PacificaDownloadOperator(task_id="d", destination=str(tmp_path), cloudevent=event)
    with pytest.raises(AirflowFailException, match=r"Files record #0 .*lacks hashsum"):
        op.execute(make_context())
    assert http_server.requests == []


def test_operator_creates_the_cart_on_the_worker_and_defers(http_server, cartd_conn, tmp_path):
    cartd_conn()
    http_server.sequence(cartd_head("missing"), Reply(201), cartd_head("staging"))
    op = PacificaDownloadOperator(
        task_id="d",
        destination=str(tmp_path),
        cloudevent=json.dumps(event_for(cart_files())),
        deferrable=True,
        defer_after=0,
        timeout=600,
    )
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(make_context())
    assert [r.method for r in http_server.requests] == ["HEAD", "POST", "HEAD"]
    cart_uid = http_server.requests[1].path.lstrip("/")
    assert isinstance(deferred.value.trigger, CartReadyTrigger)
    assert deferred.value.trigger.cart_uid == cart_uid
    assert deferred.value.timeout == timedelta(seconds=600)
    body = json.loads(http_server.requests[1].body)
    assert [f["path"] for f in body["fileids"]] == list(CONTENTS)


def test_the_cart_uid_is_stable_per_task_instance_and_differs_between_them(tmp_path):
    op = PacificaDownloadOperator(task_id="d", destination=str(tmp_path), files=[f.to_dict() for f in cart_files()])
    files = cart_files()
    first = op.cart_uid_for(make_context(), files)
    assert first == op.cart_uid_for(make_context(), files)  # a retry finds its cart
    assert first != op.cart_uid_for(make_context(map_index=1), files)
    assert first != op.cart_uid_for(make_context(run_id="manual__2"), files)
    assert first != op.cart_uid_for(make_context(), files[:2])


def test_a_retried_task_reuses_its_staging_cart_instead_of_posting_again(http_server, cartd_conn, tmp_path):
    cartd_conn()
    http_server.sequence(cartd_head("staging"))
    op = PacificaDownloadOperator(
        task_id="d",
        destination=str(tmp_path),
        files=[f.to_dict() for f in cart_files()],
        deferrable=True,
        defer_after=0,
    )
    with pytest.raises(TaskDeferred):
        op.execute(make_context())
    assert [r.method for r in http_server.requests] == ["HEAD"]


def serve_cart(http_server, tar: bytes):
    """HEAD ready, GET the tar (chunked, like Cartd), DELETE ok."""

    def handler(request):
        if request.method == "HEAD":
            return cartd_head("ready")
        if request.method == "GET":
            return Reply(
                200,
                {"Content-Type": "application/octet-stream"},
                [tar[i : i + 4096] for i in range(0, len(tar), 4096)],
                chunked=True,
            )
        return Reply(200, {}, b'{"message": "Cart Deleted Successfully"}')

    http_server.handler = handler


def test_operator_downloads_verifies_publishes_and_returns_a_manifest(http_server, cartd_conn, tmp_path):
    cartd_conn()
    serve_cart(http_server, build_tar())
    destination = tmp_path / "dest"
    op = PacificaDownloadOperator(task_id="d", destination=str(destination), cloudevent=event_for(cart_files()))
    manifest = op.execute(make_context())
    for path, data in CONTENTS.items():
        assert (destination / path).read_bytes() == data
    assert manifest["destination"] == str(destination)
    assert manifest["file_count"] == len(CONTENTS)
    assert manifest["total_bytes"] == sum(len(d) for d in CONTENTS.values())
    assert manifest["files"][0] == {
        "id": 1000,
        "path": "a/b.txt",
        "size": 15,
        "hashtype": "sha1",
        "hashsum": cart_files()[0].hashsum,
    }
    assert manifest["event"]["id"] == "evt-1"
    assert manifest["event"]["transaction_id"] == 99
    assert json.loads(json.dumps(manifest)) == manifest  # XCom-safe
    # the cart is deleted, and its re-created twin in case an earlier attempt had made one
    assert [(r.method, r.path.rsplit("/", 1)[-1][-3:]) for r in http_server.requests][2:] == [
        ("DELETE", manifest["cart_uid"][-3:]),
        ("DELETE", "-r1"),
    ]
    assert [r.method for r in http_server.requests][:2] == ["HEAD", "GET"]
    assert http_server.requests[1].query == {"filename": ["data.tar"]}


def test_operator_keeps_the_cart_when_asked(http_server, cartd_conn, tmp_path):
    cartd_conn()
    serve_cart(http_server, build_tar())
    op = PacificaDownloadOperator(
        task_id="d", destination=str(tmp_path), files=[f.to_dict() for f in cart_files()], delete_cart=False
    )
    op.execute(make_context())
    assert "DELETE" not in [r.method for r in http_server.requests]


@pytest.mark.parametrize("case", sorted(hostile_tars()))
def test_hostile_tars_served_over_http_fail_the_task_and_touch_nothing(http_server, cartd_conn, tmp_path, case):
    cartd_conn()
    serve_cart(http_server, hostile_tars()[case])
    destination = tmp_path / "dest"
    destination.mkdir()
    (destination / "keep.txt").write_text("mine")
    before = snapshot(tmp_path)
    op = PacificaDownloadOperator(
        task_id="d", destination=str(destination), files=[f.to_dict() for f in cart_files()], download_attempts=2
    )
    error, message = EXPECTED_ERRORS[case]
    with pytest.raises(AirflowException, match=message) as failure:
        op.execute(make_context())
    # unsafe or unverifiable content fails at once; a broken stream may be retried
    assert isinstance(failure.value, AirflowFailException) == (error.__name__ != "StreamError")
    assert snapshot(tmp_path) == before
    # a cart that failed for good is deleted from Cartd; one that a retry may download is kept
    deleted = "DELETE" in [r.method for r in http_server.requests]
    assert deleted == isinstance(failure.value, AirflowFailException)


def _stalling(data: bytes):
    yield data[:3000]
    time.sleep(2)  # headers and the first bytes came: only the read timeout can notice this
    yield data[3000:]


@pytest.mark.parametrize(
    ("first_get", "extra"),
    [
        (lambda tar: Reply(200, {}, [tar], chunked=True, cut_after=3000), {}),
        (lambda tar: Reply(200, {}, _stalling(tar), chunked=True), {"read_timeout": 0.5}),
    ],
    ids=["cut", "stalled mid-body"],
)
def test_a_broken_download_is_restarted_then_succeeds(http_server, cartd_conn, tmp_path, first_get, extra):
    cartd_conn(**extra)
    tar = build_tar()
    gets = 0

    def handler(request):
        nonlocal gets
        if request.method == "HEAD":
            return cartd_head("ready")
        if request.method == "GET":
            gets += 1
            return first_get(tar) if gets == 1 else Reply(200, {}, [tar], chunked=True)
        return Reply(200)

    http_server.handler = handler
    destination = tmp_path / "d"
    op = PacificaDownloadOperator(task_id="d", destination=str(destination), files=[f.to_dict() for f in cart_files()])
    assert op.execute(make_context())["file_count"] == 4
    assert gets == 2  # a stall waited out would have completed on the first GET
    for path, data in CONTENTS.items():
        assert (destination / path).read_bytes() == data


def test_execute_complete_fails_with_cartds_message(tmp_path):
    op = PacificaDownloadOperator(
        task_id="d", destination=str(tmp_path), files=[f.to_dict() for f in cart_files()], diagnose_max_files=0
    )
    with pytest.raises(AirflowFailException, match="cart c failed: Failed to pull file; the cart held 4 files"):
        op.execute_complete(
            make_context(), {"status": "error", "message": "cart c failed: Failed to pull file", "cart_uid": "c"}
        )


def test_a_failed_cart_is_probed_file_by_file_to_name_the_culprit(http_server, cartd_conn, tmp_path):
    cartd_conn()
    files = cart_files()

    def handler(request):
        if request.method == "HEAD":
            if request.path.endswith("-probe-2"):
                return cartd_head("error", "Failed to pull file(File hash does not match provided hash)")
            return cartd_head("ready")
        return Reply(201 if request.method == "POST" else 200)

    http_server.handler = handler
    op = PacificaDownloadOperator(task_id="d", destination=str(tmp_path), files=[f.to_dict() for f in files])
    with pytest.raises(AirflowFailException) as failure:
        op.execute_complete(make_context(), {"status": "error", "message": "cart c failed: hash", "cart_uid": "c"})
    assert str(failure.value) == (
        f"cart c failed: hash; failing file(s): {files[2].path!r} (id {files[2].id!r}): "
        "Failed to pull file(File hash does not match provided hash)"
    )
    methods = [(r.method, r.path) for r in http_server.requests]
    assert [m for m in methods if m[0] == "POST"] == [("POST", f"/c-probe-{i}") for i in range(4)]
    assert sorted(m for m in methods if m[0] == "DELETE") == [
        ("DELETE", "/c"),
        *(("DELETE", f"/c-probe-{i}") for i in range(4)),
        ("DELETE", "/c-r1"),
    ]


def test_a_cart_purged_while_waiting_is_created_once_more(http_server, cartd_conn, tmp_path):
    cartd_conn()
    http_server.sequence(Reply(201))
    op = PacificaDownloadOperator(
        task_id="d",
        destination=str(tmp_path),
        files=[f.to_dict() for f in cart_files()],
        deferrable=True,
        defer_after=0,
    )
    with pytest.raises(TaskDeferred) as deferred:
        op.execute_complete(make_context(), {"status": "missing", "message": "gone", "cart_uid": "c"})
    assert deferred.value.trigger.cart_uid == "c-r1"
    assert [(r.method, r.path) for r in http_server.requests] == [("POST", "/c-r1")]
    with pytest.raises(AirflowFailException, match="gone"):
        op.execute_complete(make_context(), {"status": "missing", "message": "gone", "cart_uid": "c-r1"})


def test_a_retry_after_a_successful_publish_does_not_download_again(http_server, cartd_conn, tmp_path):
    cartd_conn()
    serve_cart(http_server, build_tar())
    op = PacificaDownloadOperator(
        task_id="d", destination=str(tmp_path / "dest"), files=[f.to_dict() for f in cart_files()]
    )
    first = op.execute(make_context())
    http_server.requests.clear()
    second = op.execute(make_context())
    assert second == first
    assert [r.method for r in http_server.requests] == ["DELETE", "DELETE"]  # the cart and its twin; no HEAD, POST, GET


def test_a_changed_file_in_the_destination_means_a_new_download(http_server, cartd_conn, tmp_path):
    cartd_conn()
    serve_cart(http_server, build_tar())
    op = PacificaDownloadOperator(
        task_id="d", destination=str(tmp_path / "dest"), files=[f.to_dict() for f in cart_files()]
    )
    op.execute(make_context())
    (tmp_path / "dest" / "a" / "b.txt").write_bytes(b"HELLO pacifica\n")  # same size, other bytes
    http_server.requests.clear()
    op.execute(make_context())
    assert "GET" in [r.method for r in http_server.requests]
    assert (tmp_path / "dest" / "a" / "b.txt").read_bytes() == CONTENTS["a/b.txt"]


def test_sensor_reschedule_mode_frees_the_slot_between_pokes(http_server, cartd_conn):
    from airflow.sdk.exceptions import AirflowRescheduleException

    cartd_conn()
    http_server.sequence(cartd_head("staging"))
    sensor = CartSensor(task_id="wait", cart_uid="c1", deferrable=False, mode="reschedule", poke_interval=60)
    context = make_context()
    context["ti"].get_first_reschedule_date.return_value = None  # the first poke
    with pytest.raises(AirflowRescheduleException):
        sensor.execute(context)


@pytest.mark.parametrize(("soft_fail", "outcome"), [(False, "AirflowSensorTimeout"), (True, "AirflowSkipException")])
def test_a_deferral_timeout_behaves_like_any_sensor_timeout(soft_fail, outcome):
    from airflow.sdk.exceptions import AirflowSensorTimeout, AirflowSkipException

    sensor = CartSensor(task_id="wait", cart_uid="c1", deferrable=True, soft_fail=soft_fail)
    expected = {"AirflowSensorTimeout": AirflowSensorTimeout, "AirflowSkipException": AirflowSkipException}[outcome]
    with pytest.raises(expected):
        sensor.resume_execution("__fail__", {"error": "Trigger timeout"}, make_context())


def test_cartd_unreachable_fails_with_retries_not_at_once(http_server, tmp_path):
    from airflow.sdk.exceptions import AirflowException

    event = {"status": "error", "message": "gave up after 10 failed polls in a row", "cart_uid": "c", "retryable": True}
    sensor = CartSensor(task_id="wait", cart_uid="c", deferrable=True)
    with pytest.raises(AirflowException) as sensor_failure:
        sensor.execute_complete(make_context(), event)
    assert not isinstance(sensor_failure.value, AirflowFailException)
    op = PacificaDownloadOperator(task_id="d", destination=str(tmp_path), files=[f.to_dict() for f in cart_files()])
    with pytest.raises(AirflowException, match="gave up after 10 failed polls") as op_failure:
        op.execute_complete(make_context(), event)
    assert not isinstance(op_failure.value, AirflowFailException)
    assert http_server.requests == []  # no probe carts staged against an unreachable Cartd


def test_without_deferral_a_purged_cart_is_staged_once_more(http_server, cartd_conn, tmp_path):
    cartd_conn()
    tar_for = {}
    files = cart_files()

    def handler(request):
        uid = request.path.lstrip("/")
        if request.method == "HEAD":
            return cartd_head("ready") if uid.endswith("-r1") and uid in tar_for else cartd_head("missing", "purged")
        if request.method == "POST":
            tar_for[uid] = True
            return Reply(201)
        if request.method == "GET":
            return Reply(200, {}, [build_tar()], chunked=True)
        return Reply(200)

    http_server.handler = handler
    op = PacificaDownloadOperator(
        task_id="d", destination=str(tmp_path / "dest"), files=[f.to_dict() for f in files], poll_interval=0.01
    )
    manifest = op.execute(make_context())
    assert manifest["cart_uid"].endswith("-r1")
    assert [r.path.endswith("-r1") for r in http_server.requests if r.method == "POST"] == [False, True]
    assert (tmp_path / "dest" / "a" / "b.txt").read_bytes() == CONTENTS["a/b.txt"]


def test_a_re_created_carts_download_is_committed_under_the_original_uid_and_found_by_a_retry(http_server, cartd_conn):
    from fsspec.implementations.memory import MemoryFileSystem

    from airflow_provider_pacifica.storage import StoreDestination

    cartd_conn()
    staged = set()

    def handler(request):  # the first cart is purged; its re-created twin (uid + "-r1") gets ready
        uid = request.path.lstrip("/")
        if request.method == "HEAD":
            return cartd_head("ready") if uid in staged and uid.endswith("-r1") else cartd_head("missing", "purged")
        if request.method == "POST":
            staged.add(uid)
            return Reply(201)
        if request.method == "GET":
            return Reply(200, {}, [build_tar()], chunked=True)
        return Reply(200)

    http_server.handler = handler
    fs = MemoryFileSystem()
    destination = StoreDestination(fs, "/operator-r1/dest", None)
    files = [f.to_dict() for f in cart_files()]
    try:
        manifest = PacificaDownloadOperator(
            task_id="d", destination=destination, files=files, poll_interval=0.01, manifest_max_files=0
        ).execute(make_context())
        assert manifest["cart_uid"].endswith("-r1")
        original = manifest["cart_uid"].removesuffix("-r1")
        # the commit marker is named after the uid every attempt derives, not the twin's
        assert manifest["files_url"] == f"memory:///operator-r1/dest/.pacifica-manifest-{original}.json"
        assert json.loads(fs.cat_file(manifest["files_url"]))["cart"] == original
        http_server.requests.clear()
        again = PacificaDownloadOperator(task_id="d", destination=destination, files=files).execute(make_context())
        assert [r.method for r in http_server.requests] == ["DELETE", "DELETE"]  # found: no HEAD, POST, GET
        assert again["file_count"] == len(files)
    finally:
        fs.rm("/operator-r1", recursive=True)


def test_a_cart_that_fails_between_ready_and_download_fails_the_task_at_once(http_server, cartd_conn, tmp_path):
    cartd_conn()
    heads = []

    def handler(request):
        if request.method == "HEAD":
            heads.append(request.path)
            return cartd_head("ready" if len(heads) == 1 else "error", "Failed to pull file(disk error)")
        return Reply(202, {"Content-Type": "text/plain"}, b"The cart is not ready for download.")

    http_server.handler = handler
    only = cart_files()[:1]
    op = PacificaDownloadOperator(task_id="d", destination=str(tmp_path / "dest"), files=[f.to_dict() for f in only])
    with pytest.raises(AirflowFailException, match=r"failed: Failed to pull file\(disk error\); failing file\(s\)"):
        op.execute(make_context())
    assert not (tmp_path / "dest").exists()


# -- no deferral for a cart that is ready within seconds (issue 10, point 4) --------------------


def serve_cart_ready_after(http_server, tar: bytes, staging_heads: int) -> None:
    """Cartd as it stages a small cart: missing, then ``staging_heads`` HEADs staging, then ready."""
    heads = [cartd_head("missing")] + [cartd_head("staging")] * staging_heads

    def handler(request):
        if request.method == "HEAD":
            return heads.pop(0) if heads else cartd_head("ready")
        if request.method == "POST":
            return Reply(201)
        if request.method == "GET":
            return Reply(200, {"Content-Type": "application/octet-stream"}, tar)
        return Reply(200, {}, b'{"message": "Cart Deleted Successfully"}')

    http_server.handler = handler


def test_a_cart_ready_within_defer_after_is_downloaded_without_deferral(http_server, cartd_conn, tmp_path):
    """Deferring a cart that is ready in ~2 s only races the deferral's report (apache/airflow#72716)."""
    cartd_conn()
    serve_cart_ready_after(http_server, build_tar(), staging_heads=2)
    op = PacificaDownloadOperator(
        task_id="d",
        destination=str(tmp_path / "dest"),
        files=[f.to_dict() for f in cart_files()],
        deferrable=True,
        defer_after=10,
        poll_interval=0.2,
    )
    manifest = op.execute(make_context())  # no TaskDeferred
    assert manifest["file_count"] == len(CONTENTS)
    assert [r.method for r in http_server.requests][:5] == ["HEAD", "POST", "HEAD", "HEAD", "HEAD"]
    assert "GET" in [r.method for r in http_server.requests]


def test_a_cart_still_staging_after_defer_after_is_waited_for_in_the_triggerer(http_server, cartd_conn, tmp_path):
    cartd_conn()
    serve_cart_ready_after(http_server, build_tar(), staging_heads=1000)
    op = PacificaDownloadOperator(
        task_id="d",
        destination=str(tmp_path / "dest"),
        files=[f.to_dict() for f in cart_files()],
        deferrable=True,
        defer_after=1.5,
        poll_interval=0.2,
    )
    started = time.monotonic()
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(make_context())
    assert time.monotonic() - started < 5
    assert isinstance(deferred.value.trigger, CartReadyTrigger)
    assert "GET" not in [r.method for r in http_server.requests]
    assert not (tmp_path / "dest").exists()
