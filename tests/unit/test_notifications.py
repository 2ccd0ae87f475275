"""The eventmatch repair tool against a small local server that behaves as pacifica.md §3.3 documents.

The fake keeps eventmatches per owner (``Http-Remote-User``), answers 403 for other users'
objects, for missing ones and for a list that would be empty, leaves soft-deleted ones out and
applies ``PUT /eventmatch/<uuid>`` as a partial update.
"""

from __future__ import annotations

import http.server
import json
import threading

import pytest
import requests

from airflow_provider_pacifica import notifications
from airflow_provider_pacifica.notifications import INGEST_JSONPATH, NotificationsClient, NotificationsError, main

WEBHOOK = "https://airflow.example.org/pacifica/events"
ERROR = "HTTPConnectionPool(host='127.0.0.1', port=36421): Max retries exceeded with url: /pacifica/events"


def eventmatch(uuid, name, target_url, *, user="svc-airflow", disabled=None, error=None, deleted=None):
    return {
        "uuid": uuid,
        "name": name,
        "jsonpath": '$[?( @["eventType"] = "org.pacifica.metadata.ingest" )]',
        "user": user,
        "disabled": disabled,
        "error": error,
        "target_url": target_url,
        "version": "v0.1",
        "extensions": {},
        "auth": {"type": "basic", "basic": {"username": "pacifica-notify", "password": "webhook-s3cret"}},
        "created": "2026-12-02T18:00:00",
        "updated": "2026-12-02T18:00:00",
        "deleted": deleted,
    }


class FakeNotifications(http.server.ThreadingHTTPServer):
    """``/eventmatch`` of pacifica-notifications 0.5.2, in memory, on 127.0.0.1."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.matches: dict[str, dict] = {}
        self.requests: list[tuple[str, str, dict, object]] = []  # (method, path, headers, json body)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FakeNotifications

    def log_message(self, *args) -> None:
        pass

    def _answer(self, status: int, body) -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.server.requests.append((self.command, self.path, dict(self.headers), body))
        return self.headers.get("Http-Remote-User", "default_user"), body

    def _own(self, user: str):
        uuid = self.path.removeprefix("/eventmatch/")
        match = self.server.matches.get(uuid)
        if match is None or match["user"] != user or match["deleted"] is not None:
            return None
        return match

    def do_GET(self) -> None:
        user, _ = self._record()
        if self.path == "/eventmatch":
            mine = [m for m in self.server.matches.values() if m["user"] == user and m["deleted"] is None]
            self._answer(200, mine) if mine else self._answer(403, {"message": "Forbidden"})
        elif (match := self._own(user)) is not None:
            self._answer(200, match)
        else:
            self._answer(403, {"message": "Forbidden"})

    def do_POST(self) -> None:
        user, body = self._record()
        if self.path != "/eventmatch" or not body or not {"name", "jsonpath", "target_url"} <= set(body):
            self._answer(400, {"message": "bad eventmatch"})
            return
        uuid = f"u-new-{len(self.server.matches)}"
        self.server.matches[uuid] = {**eventmatch(uuid, body["name"], body["target_url"], user=user), **body}
        self._answer(200, self.server.matches[uuid])

    def do_PUT(self) -> None:
        user, body = self._record()
        match = self._own(user)
        if match is None:
            self._answer(403, {"message": "Forbidden"})
            return
        # As pacifica-notifications 0.5.2 does: what the body leaves out of auth/extensions becomes {}
        match.update({"auth": {}, "extensions": {}, **(body or {})})
        match["updated"] = "2026-12-02T20:30:00"
        self._answer(200, match)


@pytest.fixture
def fake():
    server = FakeNotifications()
    server.matches = {
        "u-1": eventmatch(
            "u-1", "Airflow ingest downloads", WEBHOOK, disabled="2026-12-02T20:19:45.186761", error=ERROR
        ),
        "u-2": eventmatch("u-2", "Airflow site B", WEBHOOK + "?asset=pacifica://site-b/ingest"),
        "u-3": eventmatch("u-3", "Someone else's receiver", "http://jupyter:8080/receive", disabled="2026-12-01T00:00"),
        "u-4": eventmatch("u-4", "Old, deleted", WEBHOOK, disabled="2026-11-01T00:00", deleted="2026-11-02T00:00"),
        "u-5": eventmatch("u-5", "Another user's", WEBHOOK, user="someone", disabled="2026-12-01T00:00"),
    }
    try:
        yield server
    finally:
        server.close()


def run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_list_shows_the_webhooks_eventmatches_and_which_are_disabled(fake, capsys):
    status, out, _ = run(capsys, "list", "--url", fake.url, "--user", "svc-airflow")
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == f"u-1  DISABLED since 2026-12-02T20:19:45.186761  'Airflow ingest downloads' -> {WEBHOOK}"
    assert lines[1] == f"    error: {ERROR}"
    assert lines[2].startswith("u-2  enabled  'Airflow site B' -> ")
    assert len(lines) == 3  # not the other target (u-3), the deleted one (u-4) or another user's (u-5)
    assert "webhook-s3cret" not in out  # the subscription's auth is never shown
    method, path, headers, _ = fake.requests[-1]
    assert (method, path, headers["Http-Remote-User"]) == ("GET", "/eventmatch", "svc-airflow")


def test_list_as_json_and_check_exit_status(fake, capsys):
    status, out, _ = run(capsys, "list", "--url", fake.url, "--user", "svc-airflow", "--json", "--check")
    assert status == 1  # one is disabled
    listed = json.loads(out)
    assert [(m["uuid"], m["state"]) for m in listed] == [("u-1", "disabled"), ("u-2", "enabled")]
    assert listed[0]["error"] == ERROR
    assert "auth" not in listed[0]
    assert "webhook-s3cret" not in out


def test_list_with_a_target_url_prefix_or_all(fake, capsys):
    _, out, _ = run(
        capsys, "list", "--url", fake.url, "--user", "svc-airflow", "--json", "--target-url-prefix", "http://jupyter"
    )
    assert [m["uuid"] for m in json.loads(out)] == ["u-3"]
    _, out, _ = run(capsys, "list", "--url", fake.url, "--user", "svc-airflow", "--json", "--all")
    assert [m["uuid"] for m in json.loads(out)] == ["u-1", "u-2", "u-3"]


def test_enable_re_enables_only_the_webhooks_disabled_eventmatches(fake, capsys):
    status, out, _ = run(capsys, "enable", "--url", fake.url, "--user", "svc-airflow")
    assert status == 0
    assert out.startswith("re-enabled u-1 'Airflow ingest downloads'")
    puts = [
        (path, body, headers["Http-Remote-User"]) for method, path, headers, body in fake.requests if method == "PUT"
    ]
    kept_auth = {"type": "basic", "basic": {"username": "pacifica-notify", "password": "webhook-s3cret"}}
    assert puts == [("/eventmatch/u-1", {"disabled": None, "error": None, "auth": kept_auth}, "svc-airflow")]
    assert fake.matches["u-1"]["disabled"] is None
    assert fake.matches["u-1"]["error"] is None
    assert fake.matches["u-1"]["target_url"] == WEBHOOK  # a partial update: the rest is kept
    assert fake.matches["u-3"]["disabled"] is not None  # another target: untouched
    assert fake.matches["u-5"]["disabled"] is not None  # another user's: untouched

    status, out, _ = run(capsys, "list", "--url", fake.url, "--user", "svc-airflow", "--check")
    assert status == 0
    status, out, _ = run(capsys, "enable", "--url", fake.url, "--user", "svc-airflow")
    assert (status, out.strip()) == (0, "nothing to re-enable: 2 eventmatch(es), none disabled")


def test_enable_dry_run_and_by_uuid(fake, capsys):
    status, out, _ = run(capsys, "enable", "--url", fake.url, "--user", "svc-airflow", "--dry-run")
    assert (status, out.split(" u-1 ")[0]) == (0, "would re-enable")
    assert not [r for r in fake.requests if r[0] == "PUT"]
    status, _, err = run(capsys, "enable", "--url", fake.url, "--user", "svc-airflow", "--uuid", "u-3")
    assert status == 2  # not one of the webhook's
    assert "no such eventmatch of 'svc-airflow' for this webhook: u-3" in err
    status, _, _ = run(capsys, "enable", "--url", fake.url, "--user", "svc-airflow", "--all", "--uuid", "u-3")
    assert status == 0
    assert fake.matches["u-3"]["disabled"] is None
    assert fake.matches["u-1"]["disabled"] is not None  # only the one named


def test_a_user_without_eventmatches_gets_an_empty_list_not_an_error(fake, capsys):
    # Notifications answers 403 for a list that would be empty.
    status, out, _ = run(capsys, "list", "--url", fake.url, "--user", "nobody")
    assert (status, out.strip()) == (0, "no eventmatches of 'nobody' for this webhook")


def test_an_unreachable_notifications_is_an_error_with_exit_status_2(capsys):
    with socket_closed_port() as port:
        status, _, err = run(capsys, "list", "--url", f"http://127.0.0.1:{port}", "--user", "svc-airflow")
    assert status == 2
    assert err.startswith(f"error: GET http://127.0.0.1:{port}/eventmatch: ")


def test_enabling_another_users_eventmatch_is_reported(fake):
    client = NotificationsClient(fake.url, "svc-airflow")
    with pytest.raises(NotificationsError, match="GET /eventmatch/u-5 answered 403"):
        client.enable("u-5")  # another user's


def test_every_request_has_a_timeout(fake, monkeypatch):
    seen = []
    real = requests.Session.request

    def spy(self, method, url, **kwargs):
        seen.append(kwargs.get("timeout"))
        return real(self, method, url, **kwargs)

    monkeypatch.setattr(requests.Session, "request", spy)
    client = NotificationsClient(fake.url, "svc-airflow")
    client.enable(client.eventmatches()[0].uuid)
    assert seen == [notifications.DEFAULT_TIMEOUT] * 3  # the list, the eventmatch read back, the PUT


def test_a_stalled_notifications_times_out(capsys):
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts the connection, never answers
    try:
        port = listener.getsockname()[1]
        client = NotificationsClient(f"http://127.0.0.1:{port}", "svc-airflow", timeout=(1, 0.3))
        with pytest.raises(NotificationsError, match="timed out"):
            client.eventmatches()
    finally:
        listener.close()


def test_the_module_imports_no_airflow():
    import subprocess
    import sys

    code = "import sys, airflow_provider_pacifica.notifications; print('airflow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == "False"


class socket_closed_port:
    """A 127.0.0.1 port with nothing listening on it."""

    def __enter__(self) -> int:
        import socket

        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        return self.port

    def __exit__(self, *exc) -> None:
        pass


def test_subscribe_creates_an_ingest_eventmatch_with_basic_auth_from_the_environment(fake, capsys, monkeypatch):
    monkeypatch.setenv("PACIFICA_WEBHOOK_PASSWORD", "s3cret-pw")
    status, out, _ = run(
        capsys,
        "subscribe",
        *("--url", fake.url, "--user", "svc-airflow", "--login", "pacifica-notify"),
        *("--target-url", WEBHOOK),
    )
    assert status == 0
    (post,) = [r for r in fake.requests if r[0] == "POST"]
    assert post[3]["jsonpath"] == INGEST_JSONPATH
    assert post[3]["target_url"] == WEBHOOK
    assert post[3]["auth"] == {"type": "basic", "basic": {"username": "pacifica-notify", "password": "s3cret-pw"}}
    assert post[2]["Http-Remote-User"] == "svc-airflow"
    assert out.startswith("subscribed u-new-")
    assert "s3cret-pw" not in out


def test_subscribe_without_login_sends_the_secret_as_a_bearer_token(fake, capsys, monkeypatch):
    monkeypatch.setenv("PACIFICA_WEBHOOK_PASSWORD", "tok-9")
    status, _, _ = run(capsys, "subscribe", "--url", fake.url, "--user", "svc-airflow", "--target-url", WEBHOOK)
    assert status == 0
    (post,) = [r for r in fake.requests if r[0] == "POST"]
    assert post[3]["auth"] == {"type": "header", "header": {"type": "Bearer", "credentials": "tok-9"}}


def test_subscribe_refuses_to_run_without_the_secret(fake, capsys, monkeypatch):
    monkeypatch.delenv("PACIFICA_WEBHOOK_PASSWORD", raising=False)
    status, _, err = run(capsys, "subscribe", "--url", fake.url, "--user", "svc-airflow", "--target-url", WEBHOOK)
    assert status == 2
    assert "PACIFICA_WEBHOOK_PASSWORD" in err
    assert [r for r in fake.requests if r[0] == "POST"] == []


def test_enable_keeps_the_subscriptions_credentials_that_notifications_put_would_reset(fake, capsys):
    """Found on the real stack: a PUT of only disabled/error stripped auth, so every later delivery was a 401."""
    basic = {"type": "basic", "basic": {"username": "pacifica-notify", "password": "pw-kept"}}
    fake.matches["u-1"]["auth"] = basic
    fake.matches["u-1"]["extensions"] = {"site": "a"}
    status, out, _ = run(capsys, "enable", "--url", fake.url, "--user", "svc-airflow", "--uuid", "u-1")
    assert status == 0
    assert fake.matches["u-1"]["auth"] == basic
    assert fake.matches["u-1"]["extensions"] == {"site": "a"}
    assert fake.matches["u-1"]["disabled"] is None
    assert "pw-kept" not in out
