from __future__ import annotations

import base64
import json

import pytest

from airflow_provider_pacifica.cloudevents import CartFile
from airflow_provider_pacifica.exceptions import (
    CartdError,
    CartdTransientError,
    CartNotFoundError,
    CartNotReadyError,
    InvalidInputError,
)
from airflow_provider_pacifica.hooks.cartd import PacificaCartdHook
from tests.httpserver import Reply, cartd_head

SHA1 = "4b5e3e59af149a058366bed86b05500c0acd34e0"
FILES = [CartFile(id=1, path="a/b.txt", hashtype="sha1", hashsum=SHA1)]


def test_create_cart_posts_json_fileids_and_returns_the_uid(http_server, cartd_conn):
    cartd_conn()
    http_server.sequence(Reply(201, {"Content-Type": "application/json"}, b'{"message": "Cart Processing has begun"}'))
    uid = PacificaCartdHook().create_cart(FILES, cart_uid="cart-1")
    assert uid == "cart-1"
    request = http_server.requests[0]
    assert (request.method, request.path) == ("POST", "/cart-1")
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.body) == {
        "fileids": [{"id": 1, "path": "a/b.txt", "hashtype": "sha1", "hashsum": SHA1}],
        "bundle": False,
    }


def test_create_cart_makes_a_random_uid_when_none_is_given(http_server, cartd_conn):
    cartd_conn()
    http_server.sequence(Reply(201))
    uid = PacificaCartdHook().create_cart([f.to_dict() for f in FILES], bundle=True)
    assert len(uid) == 32
    assert json.loads(http_server.requests[0].body)["bundle"] is True


def test_create_cart_refuses_unsafe_files_before_any_request(http_server, cartd_conn):
    cartd_conn()
    with pytest.raises(InvalidInputError, match=r"contains '\.\.'"):
        PacificaCartdHook().create_cart([{"id": 1, "path": "../x", "hashtype": "sha1", "hashsum": SHA1}])
    assert http_server.requests == []


@pytest.mark.parametrize("uid", ["", "a/b", "..", "a b", "é", "x" * 129])
def test_invalid_cart_uids_are_refused(cartd_conn, uid):
    cartd_conn()
    with pytest.raises(InvalidInputError, match="invalid cart uid"):
        PacificaCartdHook().cart_status(uid)


def test_create_cart_error_carries_cartds_message(http_server, cartd_conn):
    cartd_conn()
    body = json.dumps({"status": "500 Internal Server Error", "message": "The server encountered an error"})
    http_server.sequence(Reply(500, {"Content-Type": "application/json"}, body.encode()))
    with pytest.raises(CartdError, match="HTTP 500: The server encountered an error") as err:
        PacificaCartdHook().create_cart(FILES, cart_uid="c")
    assert err.value.status_code == 500
    assert len(http_server.requests) == 1  # a 500 is not transient


@pytest.mark.parametrize(
    ("reply", "state", "ready", "pending"),
    [
        (cartd_head("staging"), "staging", False, True),
        (cartd_head("waiting"), "waiting", False, True),
        (cartd_head("bundling"), "bundling", False, True),
        (cartd_head("ready"), "ready", True, False),
        (cartd_head("missing", "No cart with uid c found"), "missing", False, False),
        (cartd_head("error", "Failed to pull file(hash mismatch)"), "error", False, False),
    ],
)
def test_cart_status_maps_every_head_answer(http_server, cartd_conn, reply, state, ready, pending):
    cartd_conn()
    http_server.sequence(reply)
    status = PacificaCartdHook().cart_status("c")
    assert (status.state, status.ready, status.pending) == (state, ready, pending)
    assert status.message == reply.headers["X-Pacifica-Message"]
    request = http_server.requests[0]
    assert (request.method, request.path, request.query) == ("HEAD", "/c", {})


def test_a_long_cartd_message_is_shortened_to_one_line(http_server, cartd_conn):
    cartd_conn()
    http_server.sequence(cartd_head("error", "Failed to pull file(" + "trace\\n" * 1000 + ")"))
    status = PacificaCartdHook().cart_status("c")
    assert status.failed
    assert len(status.message) <= 1000
    assert "\n" not in status.message


def test_a_500_without_pacifica_headers_is_an_error_not_a_cart_state(http_server, cartd_conn):
    cartd_conn()
    http_server.sequence(Reply(500, {}, b"proxy exploded"))
    with pytest.raises(CartdError, match="HTTP 500"):
        PacificaCartdHook().cart_status("c")


@pytest.mark.parametrize("code", [429, 502, 503, 504])
def test_transient_status_codes_are_retried_then_succeed(http_server, cartd_conn, code):
    cartd_conn(max_retries=3)
    http_server.sequence(Reply(code), Reply(code), cartd_head("ready"))
    assert PacificaCartdHook().cart_status("c").ready
    assert len(http_server.requests) == 3


def test_retries_are_bounded(http_server, cartd_conn):
    cartd_conn(max_retries=2)
    http_server.sequence(Reply(503))
    with pytest.raises(CartdTransientError, match="HTTP 503"):
        PacificaCartdHook().cart_status("c")
    assert len(http_server.requests) == 3


def test_auth_failures_are_not_retried_and_say_so(http_server, cartd_conn):
    cartd_conn(max_retries=3)
    http_server.sequence(Reply(401, {}, b"no"))
    with pytest.raises(CartdError, match="check the connection's credentials"):
        PacificaCartdHook().cart_status("c")
    assert len(http_server.requests) == 1


def test_a_post_is_not_resent_after_a_502_because_cartd_may_have_created_the_cart(http_server, cartd_conn):
    cartd_conn(max_retries=3)
    http_server.sequence(Reply(502))
    with pytest.raises(CartdTransientError):
        PacificaCartdHook().create_cart(FILES, cart_uid="c")
    assert len(http_server.requests) == 1


def test_a_post_is_resent_after_a_503(http_server, cartd_conn):
    cartd_conn(max_retries=3)
    http_server.sequence(Reply(503), Reply(201))
    assert PacificaCartdHook().create_cart(FILES, cart_uid="c") == "c"
    assert len(http_server.requests) == 2


def test_a_read_timeout_is_retried_then_reported(http_server, cartd_conn):
    cartd_conn(read_timeout=0.2, max_retries=1)
    http_server.sequence(Reply(204, delay=1.0))
    with pytest.raises(CartdTransientError, match="ReadTimeout"):
        PacificaCartdHook().cart_status("c")
    assert len(http_server.requests) == 2


def test_connection_refused_is_transient(set_connection):
    set_connection(
        "pacifica_cartd_default",
        {
            "conn_type": "pacifica_cartd",
            "host": "127.0.0.1",
            "port": 9,
            "extra": {"max_retries": 1, "retry_backoff": 0},
        },
    )
    with pytest.raises(CartdTransientError, match="ConnectionError"):
        PacificaCartdHook().cart_status("c")


def test_open_cart_stream_streams_the_body(http_server, cartd_conn):
    cartd_conn()
    http_server.sequence(Reply(200, {"Content-Type": "application/octet-stream"}, [b"x" * 1000] * 5, chunked=True))
    with PacificaCartdHook().open_cart_stream("c", filename="data.tar") as response:
        assert response.raw.read() == b"x" * 5000
    request = http_server.requests[0]
    assert request.query == {"filename": ["data.tar"]}
    assert "Range" not in request.headers


def test_open_cart_stream_with_offset_asks_for_a_range(http_server, cartd_conn):
    cartd_conn()
    http_server.sequence(Reply(206, {"Content-Range": "bytes 10-19/20"}, b"y" * 10))
    with PacificaCartdHook().open_cart_stream("c", offset=10) as response:
        assert response.status_code == 206
    assert http_server.requests[0].headers["Range"] == "bytes=10-"


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (Reply(202, {}, b"The cart is not ready for download."), CartNotReadyError),
        (Reply(404, {}, b'{"message": "The cart does not exist or has already been deleted"}'), CartNotFoundError),
        (Reply(416, {}, b"{}"), CartdError),
    ],
)
def test_open_cart_stream_refuses_what_is_not_a_tar(http_server, cartd_conn, reply, error):
    cartd_conn()
    http_server.sequence(reply)
    with pytest.raises(error), PacificaCartdHook().open_cart_stream("c"):
        pass


def test_delete_cart_reports_whether_the_cart_existed(http_server, cartd_conn):
    cartd_conn()
    http_server.sequence(Reply(200, {}, b'{"message": "Cart Deleted Successfully"}'), Reply(404, {}, b"{}"))
    hook = PacificaCartdHook()
    assert hook.delete_cart("c") is True
    assert hook.delete_cart("c") is False
    assert [r.method for r in http_server.requests] == ["DELETE", "DELETE"]


def test_test_connection_reads_the_health_message(http_server, cartd_conn):
    cartd_conn()
    http_server.sequence(Reply(200, {}, b'{"message": "Pacifica Cartd Interface Up and Running"}'))
    assert PacificaCartdHook().test_connection() == (True, "Pacifica Cartd Interface Up and Running")
    http_server.sequence(Reply(503, {}, b"down"))
    ok, message = PacificaCartdHook().test_connection()
    assert not ok
    assert "503" in message


def test_basic_auth_is_sent_and_no_extra_becomes_a_header(http_server, set_connection):
    set_connection(
        "pacifica_cartd_default",
        {
            "conn_type": "pacifica_cartd",
            "host": "127.0.0.1",
            "port": http_server.port,
            "login": "alice",
            "password": "s3cret-pw",
            "extra": {"connect_timeout": 5, "read_timeout": 5, "verify": False, "max_retries": 0},
        },
    )
    http_server.sequence(cartd_head("ready"))
    PacificaCartdHook().cart_status("c")
    headers = http_server.requests[0].headers
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"alice:s3cret-pw").decode()
    sent = " ".join(f"{k}: {v}" for k, v in headers.items()).lower()
    for leaked in ("connect_timeout", "read_timeout", "verify", "max_retries", "s3cret-pw"):
        assert leaked not in sent


def test_a_bearer_token_is_sent_as_authorization(http_server, cartd_conn):
    cartd_conn(token="tok-123")
    http_server.sequence(cartd_head("ready"))
    PacificaCartdHook().cart_status("c")
    assert http_server.requests[0].headers["Authorization"] == "Bearer tok-123"
    assert "token" not in {k.lower() for k in http_server.requests[0].headers}


def test_an_unknown_extra_is_refused_not_sent(http_server, cartd_conn):
    cartd_conn(api_key="leak-me")
    with pytest.raises(InvalidInputError, match=r"unknown Cartd connection extra\(s\) \['api_key'\]"):
        PacificaCartdHook().cart_status("c")
    assert http_server.requests == []


def test_uri_connections_work_with_string_extras(http_server, set_connection):
    set_connection(
        "pacifica_cartd_default",
        f"pacifica-cartd://bob:pw@127.0.0.1:{http_server.port}/http?read_timeout=7&verify=false&max_retries=0",
    )
    http_server.sequence(cartd_head("staging"))
    hook = PacificaCartdHook()
    assert hook.cart_status("c").pending
    assert hook.config.read_timeout == 7.0
    assert hook.config.verify is False
    assert hook.config.base_url == f"http://127.0.0.1:{http_server.port}"
    assert http_server.requests[0].headers["Authorization"].startswith("Basic ")


async def test_async_cart_status_reads_head(http_server, cartd_conn):
    cartd_conn(token="tok-async")
    http_server.sequence(cartd_head("ready"))
    status = await PacificaCartdHook().async_cart_status("c")
    assert status.ready
    assert http_server.requests[0].headers["Authorization"] == "Bearer tok-async"


async def test_async_cart_status_reports_transient_faults_without_retrying(http_server, cartd_conn):
    cartd_conn(read_timeout=0.2)
    http_server.sequence(Reply(503))
    with pytest.raises(CartdTransientError, match="503"):
        await PacificaCartdHook().async_cart_status("c")
    http_server.sequence(Reply(204, delay=1.0))
    with pytest.raises(CartdTransientError, match="Timeout"):
        await PacificaCartdHook().async_cart_status("c")


async def test_async_sessions_are_shared_within_a_loop(http_server, cartd_conn):
    cartd_conn()
    hook_a, hook_b = PacificaCartdHook(), PacificaCartdHook()
    async with hook_a.async_session() as first, hook_b.async_session() as second:
        assert first is second
    assert first.closed


def test_a_missing_client_key_is_reported_without_its_path(cartd_conn, tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    cartd_conn(client_cert=str(cert), client_key="/secret/place/key.pem")
    with pytest.raises(InvalidInputError, match="'client_key' is not a readable file") as err:
        PacificaCartdHook().cart_status("c")
    assert "/secret/place" not in str(err.value)


def test_a_missing_ca_bundle_is_reported(cartd_conn):
    cartd_conn(ca_bundle="/nowhere/ca.pem")
    with pytest.raises(InvalidInputError, match=r"/nowhere/ca\.pem is not a readable file"):
        PacificaCartdHook().cart_status("c")


def test_the_connections_proxy_wins_over_the_environment(http_server, cartd_conn, monkeypatch):
    # The scripted server plays the forward proxy the connection names; the environment names a dead one.
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    cartd_conn(proxies={"http": f"http://127.0.0.1:{http_server.port}"})
    http_server.sequence(cartd_head("ready"))
    assert PacificaCartdHook().cart_status("cart-1").ready
    assert http_server.requests[0].target == f"http://127.0.0.1:{http_server.port}/cart-1"  # a proxy request


def test_the_connections_ca_bundle_wins_over_requests_ca_bundle(cartd_conn, monkeypatch, tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/elsewhere.pem")
    cartd_conn(ca_bundle=str(bundle))
    session = PacificaCartdHook().get_conn()
    assert session.merge_environment_settings("https://127.0.0.1/", {}, None, None, None)["verify"] == str(bundle)


def test_requests_ca_bundle_applies_when_the_connection_names_none(cartd_conn, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/elsewhere.pem")
    cartd_conn()
    assert PacificaCartdHook().get_conn().verify == "/etc/elsewhere.pem"
    cartd_conn(verify=False)
    assert PacificaCartdHook().get_conn().verify is False
