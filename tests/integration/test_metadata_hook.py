"""The pull intake on the whole real Pacifica (scripts/pacifica-stack): an upload through the real
ingest is listed by PacificaMetadataHook, and PacificaIngestEventTrigger yields for it the same
CloudEvent that the real Notifications delivers to a subscriber."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from airflow_provider_pacifica.cloudevents import parse_cloudevent
from airflow_provider_pacifica.exceptions import TransactionNotFoundError
from airflow_provider_pacifica.hooks.metadata import PacificaMetadataHook
from airflow_provider_pacifica.transactions import format_time, parse_time
from airflow_provider_pacifica.triggers import ingest as trigger_module
from airflow_provider_pacifica.triggers.ingest import PacificaIngestEventTrigger
from tests.httpserver import Reply
from tests.integration.test_pacifica_stack import ENVELOPE_KEYS, FILES_RECORD_KEYS, INGEST_JSONPATH, by_path, make_tree


class DictStateStore:
    """An asset state store kept in a dict (what the triggerer injects for one watched asset)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.saved = asyncio.Event()

    async def aget(self, key: str, default: Any = None) -> Any:
        return json.loads(json.dumps(self.values[key])) if key in self.values else default

    async def aset(self, key: str, value: Any) -> None:
        self.values[key] = json.loads(json.dumps(value))
        self.saved.set()

    async def wait_for_cursor_past(self, txn: int) -> None:
        while txn not in self.values.get("cursor", {}).get("seen", []):
            self.saved.clear()
            await self.saved.wait()


@pytest.fixture
def metadata_conn(pacifica_stack, set_connection):
    url = urlsplit(pacifica_stack.metadata_url)
    set_connection(
        "pacifica_metadata_default",
        {
            "conn_type": "pacifica_metadata",
            "host": url.hostname,
            "port": url.port,
            "schema": "http",
            "extra": {"read_timeout": 30},
        },
    )
    return "pacifica_metadata_default"


@contextlib.contextmanager
def subscription(pacifica_stack, http_server):
    """A Notifications subscription for ingest events, delivered to ``http_server``."""
    http_server.handler = lambda request: Reply(200, body=b"{}")
    answer = requests.post(
        f"{pacifica_stack.notifications_url}/eventmatch",
        json={"name": "test_metadata_hook receiver", "jsonpath": INGEST_JSONPATH, "target_url": f"{http_server.url}/"},
        headers=pacifica_stack.user_header,
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    uuid = answer.json()["uuid"]
    try:
        yield
    finally:
        requests.delete(
            f"{pacifica_stack.notifications_url}/eventmatch/{uuid}", headers=pacifica_stack.user_header, timeout=30
        )


def delivered_event(http_server, txn: int) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for request in list(http_server.requests):
            event = json.loads(request.body)
            if event.get("eventID") == f"metadata.ingest.{txn}":
                return event
        time.sleep(0.1)
    raise AssertionError(f"Notifications delivered no event for transaction {txn}")


async def test_the_watcher_yields_the_event_notifications_delivers_for_a_real_upload(
    pacifica_stack, metadata_conn, http_server, tmp_path, monkeypatch
):
    monkeypatch.setattr(trigger_module, "SAVE_DELAY", 0.0)
    since = format_time(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    contents = make_tree(tmp_path, "pull")
    with subscription(pacifica_stack, http_server):
        txn = await asyncio.to_thread(pacifica_stack.upload, tmp_path)
        pushed = await asyncio.to_thread(delivered_event, http_server, txn)

    # The hook: the transaction is listed since the cursor, and its info has the files' hashes.
    hook = PacificaMetadataHook()
    listed = await hook.list_transactions(since, items_per_page=2)
    assert txn in [record["_id"] for record in listed]
    assert all(parse_time(record["created"]) >= parse_time(since) for record in listed)
    info = await hook.transaction_info(txn)
    assert {path: r["hashsum"] for path, r in by_path(info["files"].values()).items()} == {
        path: hashlib.sha1(data).hexdigest() for path, data in contents.items()
    }
    with pytest.raises(TransactionNotFoundError, match="No Transaction with an ID of"):
        await hook.transaction_info(10**9)
    ok, message = await asyncio.to_thread(PacificaMetadataHook().test_connection)
    assert ok, message

    # The trigger, in this event loop, with a dict for the asset's state store.
    store = DictStateStore()
    trigger = PacificaIngestEventTrigger(since=since, poll_interval=0.5, project=pacifica_stack.env["PACIFICA_PROJECT"])
    trigger.asset_state_store = store
    events: list[dict] = []

    async def consume() -> None:
        async for event in trigger.run():
            events.append(event.payload)

    task = asyncio.ensure_future(consume())
    try:
        async with asyncio.timeout(60):
            await store.wait_for_cursor_past(txn)  # saved only after the event was yielded
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    ours = [p for p in events if p["cloudevent_id"] == f"metadata.ingest.{txn}"]
    assert len(ours) == 1
    pulled = ours[0]["cloudevent"]

    # The same event as the one Notifications delivered, but for the uploader's UI fields.
    assert set(pulled) == set(pushed) == ENVELOPE_KEYS
    for key in ("cloudEventsVersion", "eventType", "eventID", "source", "contentType", "extensions"):
        assert pulled[key] == pushed[key], key
    assert pulled["eventID"] == f"metadata.ingest.{txn}"
    assert pulled["source"] == f"http://metadata.pacifica.org/transactions?_id={txn}"
    assert pulled["data"][-1] == pushed["data"][-1] == {"destinationTable": "Transactions._id", "value": txn}

    def files(event: dict) -> list[dict]:
        return sorted((r for r in event["data"] if r["destinationTable"] == "Files"), key=lambda r: r["_id"])

    assert files(pulled) == files(pushed)
    assert all(set(r) == FILES_RECORD_KEYS for r in files(pulled))
    assert parse_cloudevent(pulled).files == parse_cloudevent(pushed).files

    def values(event: dict) -> dict:
        return {
            r["destinationTable"]: r["value"]
            for r in event["data"]
            if r["destinationTable"].startswith("Transactions.")
        }

    assert values(pulled) == values(pushed)
    assert {path: (r["size"], r["hashsum"]) for path, r in by_path(files(pulled)).items()} == {
        path: (len(data), hashlib.sha1(data).hexdigest()) for path, data in contents.items()
    }
    # metadata's own eventTime is its local time when it sent the event; ours is the transaction's created
    assert pulled["eventTime"] == format_time(parse_time(info["created"]))
