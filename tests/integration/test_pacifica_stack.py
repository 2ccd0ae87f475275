"""The whole real Pacifica on loopback (scripts/pacifica-stack): upload -> ingest -> metadata -> event.

An upload goes through the real ingest (pacifica-uploader's bundle, pacifica-cli's metadata), the
transaction and its files with their hashes are then listed by the real metadata, the real
Notifications delivers metadata's ingest CloudEvent to a subscription pointing at a local receiver,
and the real Cartd gives back the bytes of the files that event names.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from pathlib import Path

import requests

from airflow_provider_pacifica.transactions import FILES_RECORD_KEYS as FILES_RECORD_KEYS_EMITTED
from tests.httpserver import Reply
from tests.integration.conftest import parse_env, run_pacifica_stack

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "notifications-delivered-event.json"

INGEST_JSONPATH = '$[?( @["cloudEventsVersion"] = "0.1" and @["eventType"] = "org.pacifica.metadata.ingest" )]'
ENVELOPE_KEYS = {
    "cloudEventsVersion",
    "eventType",
    "source",
    "eventID",
    "eventTime",
    "extensions",
    "contentType",
    "data",
}
FILES_RECORD_KEYS = set(FILES_RECORD_KEYS_EMITTED)  # metadata's, as the watcher rebuilds them


def make_tree(root: Path, tag: str) -> dict[str, bytes]:
    """Files to upload: top level, a subdirectory with a space, non-ASCII names, one binary MiB."""
    contents = {
        "hello.txt": f"hello from {tag}\n".encode(),
        "sub dir/table.csv": b"a,b\n1,2\n",
        "sub dir/café-ü.txt": f"non-ASCII ✓ {tag}\n".encode(),
        "bin/deeper/blob.bin": bytes(range(256)) * 4096,
    }
    for path, data in contents.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return contents


def by_path(records) -> dict[str, dict]:
    return {"/".join(p for p in (r["subdir"], r["name"]) if p): r for r in records}


def test_start_again_is_idempotent_and_status_sees_every_service(pacifica_stack):
    again = run_pacifica_stack("start", "--workdir", str(pacifica_stack.workdir), timeout=120)
    assert parse_env(again.stdout) == pacifica_stack.env
    assert all(
        value.startswith(("http://127.0.0.1:", "redis://127.0.0.1:", "postgres://postgres@127.0.0.1:"))
        for key, value in pacifica_stack.env.items()
        if key.endswith("_URL")
    )
    status = run_pacifica_stack("status", "--workdir", str(pacifica_stack.workdir), timeout=120)
    lines = status.stdout.splitlines()
    assert len(lines) == 12
    assert all(": running (pid " in line for line in lines), status.stdout


def test_an_upload_through_the_real_ingest_is_listed_by_metadata_with_its_files_and_hashes(pacifica_stack, tmp_path):
    contents = make_tree(tmp_path, "listing")
    txn = pacifica_stack.upload(tmp_path)

    files = requests.get(f"{pacifica_stack.metadata_url}/transactioninfo/files/{txn}", timeout=30)
    assert files.status_code == 200
    listed = by_path(files.json().values())
    assert set(listed) == set(contents)
    for path, data in contents.items():
        record = listed[path]
        assert record["transaction"] == txn
        assert record["size"] == len(data)
        assert record["hashtype"] == "sha1"
        assert record["hashsum"] == hashlib.sha1(data).hexdigest()
    assert listed["sub dir/café-ü.txt"]["subdir"] == "sub dir"
    assert listed["hello.txt"]["subdir"] == ""

    info = requests.get(f"{pacifica_stack.metadata_url}/transactioninfo/by_id/{txn}", timeout=30).json()
    assert info["submitter"] == int(pacifica_stack.env["PACIFICA_USER_ID"])
    assert info["project"] == pacifica_stack.env["PACIFICA_PROJECT"]
    assert info["instrument"] == int(pacifica_stack.env["PACIFICA_INSTRUMENT"])
    assert info["key_values"] == {"User of Record": pacifica_stack.env["PACIFICA_USER_ID"]}


def test_a_subscription_receives_the_real_ingest_cloudevent_once_and_cartd_serves_its_files(
    pacifica_stack, http_server, tmp_path
):
    http_server.handler = lambda request: Reply(200, body=b"{}")
    subscription = requests.post(
        f"{pacifica_stack.notifications_url}/eventmatch",
        json={
            "name": "test_pacifica_stack receiver",
            "jsonpath": INGEST_JSONPATH,
            "target_url": f"{http_server.url}/receive",
            "auth": {"type": "header", "header": {"type": "Bearer", "credentials": "test-token"}},
        },
        headers=pacifica_stack.user_header,
        timeout=30,
    )
    assert subscription.status_code == 200, subscription.text
    uuid = subscription.json()["uuid"]
    try:
        contents = make_tree(tmp_path, "event")
        txn = pacifica_stack.upload(tmp_path)

        def delivered() -> list:
            return [r for r in http_server.requests if json.loads(r.body).get("eventID") == f"metadata.ingest.{txn}"]

        deadline = time.monotonic() + 60
        while not delivered() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert delivered(), f"no event for transaction {txn}; received {[r.body[:200] for r in http_server.requests]}"
        time.sleep(2)  # long enough for a second delivery, were there one
        (request,) = delivered()
        if os.environ.get("PACIFICA_SAVE_DELIVERED_EVENT"):  # to refresh tests/fixtures from a real run
            FIXTURE.write_text(json.dumps(json.loads(request.body), indent=2, ensure_ascii=False) + "\n")
    finally:
        match_url = f"{pacifica_stack.notifications_url}/eventmatch/{uuid}"
        state = requests.get(match_url, headers=pacifica_stack.user_header, timeout=30)
        requests.delete(match_url, headers=pacifica_stack.user_header, timeout=30)

    assert state.json()["disabled"] is None  # a 200 answer keeps the subscription enabled
    assert state.json()["error"] is None
    assert request.method == "POST"
    assert request.path == "/receive"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Authorization"] == "Bearer test-token"

    event = json.loads(request.body)
    assert set(event) == ENVELOPE_KEYS
    assert event["cloudEventsVersion"] == "0.1"
    assert event["eventType"] == "org.pacifica.metadata.ingest"
    assert event["eventID"] == f"metadata.ingest.{txn}"
    assert event["source"] == f"http://metadata.pacifica.org/transactions?_id={txn}"
    assert event["contentType"] == "application/json"
    assert event["extensions"] == {}
    assert event["data"][-1] == {"destinationTable": "Transactions._id", "value": txn}  # ingest appends it
    values = {r["destinationTable"]: r.get("value") for r in event["data"] if r["destinationTable"] != "Files"}
    assert values["Transactions.project"] == pacifica_stack.env["PACIFICA_PROJECT"]
    assert values["Transactions.instrument"] == int(pacifica_stack.env["PACIFICA_INSTRUMENT"])
    assert values["Transactions.submitter"] == int(pacifica_stack.env["PACIFICA_USER_ID"])

    files = [r for r in event["data"] if r["destinationTable"] == "Files"]
    assert all(set(r) == FILES_RECORD_KEYS for r in files)
    named = by_path(files)
    assert {path: r["hashsum"] for path, r in named.items()} == {
        path: hashlib.sha1(data).hexdigest() for path, data in contents.items()
    }
    # The same records as metadata's listing of the transaction.
    listed = requests.get(f"{pacifica_stack.metadata_url}/transactioninfo/files/{txn}", timeout=30).json()
    assert {r["_id"] for r in files} == {int(file_id) for file_id in listed}

    # The real Cartd, reading the archive that ingest wrote to, gives back those bytes.
    cartd = pacifica_stack.env["CARTD_URL"]
    cart = f"{cartd}/pacifica-stack-test-{txn}"
    fileids = [
        {"id": r["_id"], "path": path, "hashtype": r["hashtype"], "hashsum": r["hashsum"]} for path, r in named.items()
    ]
    assert requests.post(cart, json={"fileids": fileids}, timeout=30).status_code == 201
    deadline = time.monotonic() + 60
    while (status := requests.head(cart, timeout=30).headers.get("X-Pacifica-Status")) != "ready":
        assert status in ("staging", "bundling"), status
        assert time.monotonic() < deadline, "the cart was not ready in 60 s"
        time.sleep(0.2)
    body = requests.get(cart, params={"filename": "data.tar"}, timeout=60).content
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    assert members == {f"data/{path}": data for path, data in contents.items()}
    requests.delete(cart, timeout=30)
