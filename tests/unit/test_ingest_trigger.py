"""PacificaIngestEventTrigger and PacificaMetadataHook against a small fake of pacifica-metadata's REST API."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import importlib
import json
import subprocess
import sys
from typing import Any

import pytest
from airflow.triggers.base import BaseEventTrigger

from airflow_provider_pacifica import backoff as backoff_module
from airflow_provider_pacifica.cloudevents import parse_cloudevent
from airflow_provider_pacifica.connection import (
    CONN_TYPE,
    CartdConnectionConfig,
    MetadataConnectionConfig,
    PacificaConnectionConfig,
)
from airflow_provider_pacifica.exceptions import (
    InvalidInputError,
    MetadataError,
    MetadataTransientError,
    TransactionNotFoundError,
)
from airflow_provider_pacifica.hooks.metadata import PacificaMetadataHook
from airflow_provider_pacifica.transactions import (
    parse_time,
)
from airflow_provider_pacifica.triggers import ingest as trigger_module
from airflow_provider_pacifica.triggers.ingest import PacificaIngestEventTrigger
from tests.httpserver import Reply, Request

CLASSPATH = "airflow_provider_pacifica.triggers.ingest.PacificaIngestEventTrigger"
SINCE = "2026-12-02T20:00:00"
REAL_SLEEP = asyncio.sleep  # the fixture below replaces asyncio.sleep for everyone


def at(seconds: int) -> str:
    return (dt.datetime.fromisoformat(SINCE) + dt.timedelta(seconds=seconds)).isoformat()


def _json(status: int, body: Any) -> Reply:
    return Reply(status, {"Content-Type": "application/json"}, json.dumps(body).encode())


class FakeMetadata:
    """``GET /transactions`` (created gte filter, paging by _id), ``/transactioninfo/by_id/<id>`` and
    ``/transactioninfo/last``, as pacifica-metadata 0.13.0 answers them; ``faults`` are replies
    given first, one per request."""

    def __init__(self) -> None:
        self.infos: dict[int, dict] = {}
        self.faults: list[Reply] = []

    def add(
        self,
        txn: int,
        created: int,
        files: dict[str, bytes] | None = None,
        *,
        project: str = "1234a",
        instrument: int = 54,
        submitter: int = 10,
    ) -> dict:
        files = {"hello.txt": f"hello {txn}\n".encode()} if files is None else files
        records = {}
        for index, (path, data) in enumerate(files.items()):
            file_id = 100 * txn + index
            subdir, _, name = path.rpartition("/")
            records[str(file_id)] = {
                "_id": file_id,
                "name": name,
                "subdir": subdir,
                "size": len(data),
                "hashtype": "sha1",
                "hashsum": hashlib.sha1(data).hexdigest(),
                "mimetype": "text/plain",
                "ctime": at(created - 5),
                "mtime": at(created - 5),
                "transaction": txn,
                "encoding": "UTF8",
                "key_values": {},
            }
        info = {
            "_id": txn,
            "transaction_id": txn,
            "created": at(created),
            "updated": at(created),
            "deleted": None,
            "submitter": submitter,
            "project": project,
            "instrument": instrument,
            "files": records,
            "key_values": {"User of Record": str(submitter)},
        }
        self.infos[txn] = info
        return info

    def __call__(self, request: Request) -> Reply:
        if self.faults:
            return self.faults.pop(0)
        query = {key: values[0] for key, values in request.query.items()}
        if request.path == "/transactions":
            rows = sorted(self.infos.values(), key=lambda info: info["_id"])
            if query.get("created_operator") == "gte" and "created" in query:
                rows = [r for r in rows if parse_time(r["created"]) >= parse_time(query["created"])]
            if "page_number" in query and "items_per_page" in query:
                size, page = int(query["items_per_page"]), int(query["page_number"])
                rows = rows[(page - 1) * size : page * size]
            keys = ("_id", "created", "updated", "deleted")
            return _json(200, [{key: row[key] for key in keys} for row in rows])
        if request.path.startswith("/transactioninfo/by_id/"):
            txn = int(request.path.rsplit("/", 1)[1])
            if txn not in self.infos:
                return _json(
                    404, {"status": "404 Not Found", "message": f"No Transaction with an ID of {txn} was found"}
                )
            return _json(200, self.infos[txn])
        if request.path == "/transactioninfo/last":
            return _json(200, {"latest_transaction_id": max(self.infos, default=None)})
        return _json(404, {"message": "no such path"})

    @staticmethod
    def info_requests(server, txn: int) -> int:
        return sum(r.path == f"/transactioninfo/by_id/{txn}" for r in server.requests)


class FakeStateStore:
    """The part of Airflow 3.3's AssetStateStoreAccessors the trigger uses (one watched asset)."""

    def __init__(self, log: list | None = None, fail: int = 0) -> None:
        self.values: dict[str, Any] = {}
        self.log = log if log is not None else []
        self.fail = fail  # calls that raise first, as an unreachable API server

    async def aget(self, key: str, default: Any = None) -> Any:
        self._maybe_fail()
        return json.loads(json.dumps(self.values[key])) if key in self.values else default

    async def aset(self, key: str, value: Any) -> None:
        self._maybe_fail()
        self.values[key] = json.loads(json.dumps(value))
        self.log.append(("save", json.loads(json.dumps(value))))

    def _maybe_fail(self) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("the API server is restarting")


@pytest.fixture
def sleeps(monkeypatch):
    """The trigger's sleeps, recorded instead of waited; a sleep past ``sleeps.allowed`` parks the
    trigger until the test lets it go on (see :class:`Run`)."""

    class Sleeps(list):
        allowed = 0

    waited = Sleeps()
    real_sleep = asyncio.sleep

    async def fake_sleep(seconds):
        waited.append(seconds)
        while len(waited) > waited.allowed:
            await real_sleep(0.001)

    monkeypatch.setattr(trigger_module.asyncio, "sleep", fake_sleep)
    monkeypatch.setattr(backoff_module.random, "random", lambda: 0.0)  # no jitter: exact intervals
    monkeypatch.setattr(trigger_module, "SAVE_DELAY", 0.0)
    return waited


@pytest.fixture
def metadata(http_server, set_connection):
    """A fake metadata on the scripted server, and the connection ``pacifica_metadata_default`` to it."""
    fake = FakeMetadata()
    http_server.handler = fake
    set_connection(
        "pacifica_metadata_default",
        {"conn_type": "pacifica_metadata", "host": "127.0.0.1", "port": http_server.port, "schema": "http"},
    )
    return fake


class Run:
    """One life of a trigger in the test's event loop, let on ``budget`` sleeps (polls) at a time."""

    def __init__(self, trigger: PacificaIngestEventTrigger, sleeps, log: list | None = None) -> None:
        self.sleeps = sleeps
        self.payloads: list[dict] = []
        self.generator = trigger.run()
        self.log = log
        self.task: asyncio.Task | None = None

    async def _consume(self) -> None:
        async for event in self.generator:
            self.payloads.append(event.payload)
            if self.log is not None:
                self.log.append(("event", event.payload["cloudevent_id"]))

    async def polls(self, budget: int) -> list[dict]:
        """Let the trigger sleep ``budget`` more times; the payloads it yielded meanwhile."""
        start = len(self.payloads)
        self.sleeps.allowed = len(self.sleeps) + budget
        if self.task is None:
            self.task = asyncio.ensure_future(self._consume())
        async with asyncio.timeout(10):
            while len(self.sleeps) <= self.sleeps.allowed:  # until it is parked at the next sleep
                if self.task.done():
                    self.task.result()  # the trigger ended or raised: a test failure
                    raise AssertionError("the trigger ended")
                await REAL_SLEEP(0.001)
        return self.payloads[start:]

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.generator.aclose()


async def drive(trigger: PacificaIngestEventTrigger, sleeps, budget: int, log: list | None = None) -> list[dict]:
    """Run a new life of the trigger through ``budget`` sleeps; the payloads it yielded."""
    run = Run(trigger, sleeps, log)
    try:
        return await run.polls(budget)
    finally:
        await run.stop()


class Logs:
    """Stands in for the trigger's logger: what it logged, at which level."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []

    def _record(self, level: str, message: str, *args: Any) -> None:
        self.records.append((level, message % args if args else message))

    def debug(self, message: str, *args: Any) -> None:
        self._record("debug", message, *args)

    def info(self, message: str, *args: Any) -> None:
        self._record("info", message, *args)

    def warning(self, message: str, *args: Any) -> None:
        self._record("warning", message, *args)

    def error(self, message: str, *args: Any) -> None:
        self._record("error", message, *args)

    def text(self, *levels: str) -> str:
        return "\n".join(message for level, message in self.records if not levels or level in levels)


@pytest.fixture
def logs() -> Logs:
    return Logs()


def watcher(store: FakeStateStore | None = None, logs: Logs | None = None, **kwargs: Any) -> PacificaIngestEventTrigger:
    kwargs.setdefault("since", SINCE)
    kwargs.setdefault("poll_interval", 1.0)
    trigger = PacificaIngestEventTrigger(**kwargs)
    trigger.asset_state_store = store  # as the triggerer injects it
    if logs is not None:
        trigger._log = logs
    return trigger


def ids(payloads: list[dict]) -> list[str]:
    return [p["cloudevent_id"] for p in payloads]


# -- the trigger --------------------------------------------------------------------------------------


def test_serialize_round_trips_with_plain_json_kwargs():
    trigger = PacificaIngestEventTrigger(
        pacifica_metadata_conn_id="md", poll_interval=10, since=SINCE, project="1234a", instrument=54
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == CLASSPATH
    assert kwargs == {
        "pacifica_metadata_conn_id": "md",
        "poll_interval": 10.0,
        "since": SINCE,
        "project": "1234a",
        "instrument": "54",
        "submitter": None,
        "items_per_page": 100,
        "overlap": 300.0,
    }
    json.dumps(kwargs)
    module, name = classpath.rsplit(".", 1)
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)


def test_defaults_are_the_documented_ones():
    _, kwargs = PacificaIngestEventTrigger().serialize()
    assert kwargs["pacifica_metadata_conn_id"] == "pacifica_metadata_default"
    assert kwargs["poll_interval"] == 30.0
    assert kwargs["since"] is None
    assert kwargs["items_per_page"] == 100


def test_the_classpath_imports_in_a_fresh_interpreter():
    module, name = CLASSPATH.rsplit(".", 1)
    code = f"import importlib; getattr(importlib.import_module({module!r}), {name!r})"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_it_is_an_event_trigger_that_polls_on_its_own():
    trigger = PacificaIngestEventTrigger()
    assert isinstance(trigger, BaseEventTrigger)
    assert trigger.shared_stream_key() is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"since": "yesterday"}, "not an ISO 8601 time"),
        ({"items_per_page": 0}, "items_per_page"),
        ({"overlap": -1}, "overlap"),
    ],
)
def test_bad_arguments_fail_when_the_dag_is_parsed(kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        PacificaIngestEventTrigger(**kwargs)


async def test_new_transactions_yield_one_ingest_event_each_in_created_order(http_server, metadata, sleeps):
    metadata.add(3, created=1, files={"a.txt": b"a", "sub dir/café-ü.txt": "ü".encode()})
    metadata.add(1, created=2)
    metadata.add(2, created=1)
    metadata.add(9, created=-10)  # before since
    payloads = await drive(watcher(), sleeps, budget=2)
    assert ids(payloads) == ["metadata.ingest.2", "metadata.ingest.3", "metadata.ingest.1"]
    first = payloads[1]
    assert first["status"] == "ingest"
    assert first["message"] == f"transaction 3: 2 file(s), 3 bytes, created {at(1)}"
    assert first["source"] == first["cloudevent"]["source"] == "http://metadata.pacifica.org/transactions?_id=3"
    parsed = parse_cloudevent(first["cloudevent"])
    assert [(f.id, f.path, f.hashsum) for f in parsed.files] == [
        (300, "a.txt", hashlib.sha1(b"a").hexdigest()),
        (301, "sub dir/café-ü.txt", hashlib.sha1("ü".encode()).hexdigest()),
    ]
    json.dumps(payloads)
    listing = [r for r in http_server.requests if r.path == "/transactions"]
    assert len(listing) == 3  # the first poll, the second, and the one the budget stopped before sleeping
    assert {k: v[0] for k, v in listing[0].query.items()} == {
        "recursion_depth": "0",
        "created_operator": "gte",
        "created": SINCE,
        "page_number": "1",
        "items_per_page": "100",
    }
    assert all(FakeMetadata.info_requests(http_server, txn) == 1 for txn in (1, 2, 3))


async def test_a_later_poll_lists_overlap_seconds_back_and_yields_only_what_is_new(http_server, metadata, sleeps):
    metadata.add(1, created=100)
    run = Run(watcher(overlap=30), sleeps)
    try:
        assert ids(await run.polls(1)) == ["metadata.ingest.1"]
        metadata.add(2, created=90)  # created before 1, committed after it: within the overlap
        metadata.add(3, created=101)
        assert ids(await run.polls(1)) == ["metadata.ingest.2", "metadata.ingest.3"]
        assert ids(await run.polls(1)) == []
    finally:
        await run.stop()
    listing = [r.query["created"][0] for r in http_server.requests if r.path == "/transactions"]
    assert (listing[0], listing[1], listing[-1]) == (SINCE, at(70), at(71))  # 30 s before the newest seen


async def test_all_pages_are_read(http_server, metadata, sleeps):
    for txn in range(1, 6):
        metadata.add(txn, created=txn)
    payloads = await drive(watcher(items_per_page=2), sleeps, budget=0)
    assert ids(payloads) == [f"metadata.ingest.{txn}" for txn in range(1, 6)]
    pages = [r.query["page_number"][0] for r in http_server.requests if r.path == "/transactions"]
    assert pages == ["1", "2", "3"]


async def test_the_cursor_is_saved_after_the_yield_and_a_new_trigger_resumes_from_it(metadata, sleeps):
    log: list = []
    store = FakeStateStore(log)
    metadata.add(1, created=1)
    metadata.add(2, created=1)
    assert ids(await drive(watcher(store), sleeps, budget=1, log=log)) == ["metadata.ingest.1", "metadata.ingest.2"]
    assert log[0] == ("save", {"since": SINCE, "created": SINCE, "seen": [], "earlier": []})  # before any event
    assert [entry[0] for entry in log[1:]] == ["event", "event", "save"]  # saved only after the yields
    assert store.values["cursor"] == {"since": SINCE, "created": at(1), "seen": [1, 2], "earlier": []}

    metadata.add(3, created=1)  # the same second as 1 and 2, committed later
    metadata.add(4, created=2)
    assert ids(await drive(watcher(store), sleeps, budget=1)) == ["metadata.ingest.3", "metadata.ingest.4"]
    assert store.values["cursor"]["seen"] == [4]


async def test_a_restart_between_yield_and_save_yields_the_same_event_id_again(metadata, sleeps, monkeypatch):
    monkeypatch.setattr(trigger_module, "SAVE_DELAY", 3600.0)  # the triggerer dies before the save
    store = FakeStateStore()
    metadata.add(1, created=1)
    first = await drive(watcher(store), sleeps, budget=1)
    second = await drive(watcher(store), sleeps, budget=1)
    assert ids(first) == ids(second) == ["metadata.ingest.1"]  # at least once; consumers dedupe on the id
    assert first[0]["cloudevent"] == second[0]["cloudevent"]


async def test_the_save_waits_save_delay_after_the_last_yield(metadata, sleeps, monkeypatch):
    monkeypatch.setattr(trigger_module, "SAVE_DELAY", 0.5)
    store = FakeStateStore()
    metadata.add(1, created=1)
    await drive(watcher(store, poll_interval=10), sleeps, budget=2)
    assert sleeps[0] == pytest.approx(0.5, abs=0.2)  # waited for the save, then the rest of the interval
    assert sleeps[1] == pytest.approx(9.5, abs=0.2)
    assert store.values["cursor"]["seen"] == [1]


async def test_since_none_starts_at_the_first_run_and_keeps_that_time(metadata, sleeps):
    store = FakeStateStore()
    metadata.add(1, created=-3600)  # long before now
    before = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    assert await drive(watcher(store, since=None), sleeps, budget=1) == []
    stored = store.values["cursor"]
    assert before <= parse_time(stored["since"]) <= dt.datetime.now(dt.UTC).replace(tzinfo=None)
    assert await drive(watcher(store, since=None), sleeps, budget=1) == []
    assert store.values["cursor"]["since"] == stored["since"]  # a restart does not move it


async def test_a_new_since_starts_over_and_an_unchanged_one_resumes(metadata, sleeps):
    store = FakeStateStore()
    metadata.add(1, created=1)
    assert ids(await drive(watcher(store), sleeps, budget=1)) == ["metadata.ingest.1"]
    assert await drive(watcher(store), sleeps, budget=1) == []
    assert ids(await drive(watcher(store, since=at(-60)), sleeps, budget=1)) == ["metadata.ingest.1"]


async def test_without_a_state_store_the_cursor_is_kept_in_memory_with_a_warning(metadata, sleeps, logs):
    metadata.add(1, created=1)
    trigger = watcher(None, logs)
    assert ids(await drive(trigger, sleeps, budget=2)) == ["metadata.ingest.1"]
    assert "does not survive a restart" in logs.text("warning")


async def test_an_unreachable_state_store_is_waited_for_not_replaced_by_now(metadata, sleeps):
    store = FakeStateStore(fail=2)
    store.values["cursor"] = {"since": SINCE, "created": at(1), "seen": [1], "earlier": []}
    metadata.add(1, created=1)
    metadata.add(2, created=2)
    assert ids(await drive(watcher(store, poll_interval=5), sleeps, budget=3)) == ["metadata.ingest.2"]
    assert sleeps[:2] == [5.0, 10.0]  # backed off while the store failed


async def test_metadata_503_and_dropped_connections_are_ridden_through_with_backoff(metadata, sleeps, logs):
    dropped = [Reply(drop=True)] * 2  # aiohttp sends an idempotent request again once after a drop
    metadata.faults = [Reply(503), Reply(502), *dropped, _json(500, {"message": "database is gone"})]
    metadata.add(1, created=1)
    payloads = await drive(watcher(logs=logs, poll_interval=2), sleeps, budget=5)
    assert ids(payloads) == ["metadata.ingest.1"]
    assert sleeps[:5] == [2.0, 4.0, 8.0, 16.0, 2.0]  # backoff on faults, back to the interval after
    assert "HTTP 503" in logs.text("warning")
    assert "ServerDisconnectedError" in logs.text("warning")
    assert "database is gone" in logs.text("warning")
    assert not logs.text("error")


async def test_metadata_down_is_polled_forever_with_a_capped_backoff(set_connection, sleeps, monkeypatch):
    monkeypatch.setattr(trigger_module, "FAULT_BACKOFF_CAP", 20.0)
    set_connection("pacifica_metadata_default", {"conn_type": "pacifica_metadata", "host": "127.0.0.1", "port": 9})
    assert await drive(watcher(poll_interval=5), sleeps, budget=6) == []
    assert sleeps == [5.0, 10.0, 20.0, 20.0, 20.0, 20.0, 20.0]


async def test_a_bad_connection_is_logged_and_polled_again_not_raised(set_connection, sleeps, logs):
    set_connection(
        "pacifica_metadata_default",
        {"conn_type": "pacifica_metadata", "host": "127.0.0.1", "port": 9, "extra": {"api_key": "x"}},
    )
    assert await drive(watcher(logs=logs), sleeps, budget=2) == []
    assert logs.text("error").count("unknown Pacifica metadata connection extra(s) ['api_key']") == 3


async def test_a_transaction_without_files_is_skipped_with_a_warning_and_not_read_again(
    http_server, metadata, sleeps, logs
):
    metadata.add(1, created=1, files={})
    metadata.add(2, created=2)
    store = FakeStateStore()
    payloads = await drive(watcher(store, logs), sleeps, budget=3)
    assert ids(payloads) == ["metadata.ingest.2"]
    assert "Skipping transaction 1: it cannot be downloaded: transaction 1 has no files" in logs.text("warning")
    assert FakeMetadata.info_requests(http_server, 1) == 1
    assert store.values["cursor"]["seen"] == [2]


async def test_a_file_without_a_hash_or_with_a_hostile_path_is_skipped(http_server, metadata, sleeps, logs):
    metadata.add(1, created=1)["files"]["100"]["hashsum"] = None
    metadata.add(2, created=2, files={"../escape.txt": b"x"})
    metadata.add(3, created=3)
    payloads = await drive(watcher(logs=logs), sleeps, budget=2)
    assert ids(payloads) == ["metadata.ingest.3"]
    warnings = logs.text("warning")
    assert "Skipping transaction 1: it cannot be downloaded: transaction 1: file 100 has no hashsum" in warnings
    assert "Skipping transaction 2: it cannot be downloaded" in warnings
    assert "'../escape.txt'" in warnings
    assert FakeMetadata.info_requests(http_server, 1) == FakeMetadata.info_requests(http_server, 2) == 1


async def test_a_transaction_listed_then_gone_is_skipped(http_server, metadata, sleeps, logs):
    metadata.add(1, created=1)
    metadata.add(2, created=2)
    real = metadata.__call__

    def handler(request):
        if request.path == "/transactioninfo/by_id/1":
            return _json(404, {"message": "No Transaction with an ID of 1 was found"})
        return real(request)

    http_server.handler = handler
    assert ids(await drive(watcher(logs=logs), sleeps, budget=1)) == ["metadata.ingest.2"]
    assert "Skipping transaction 1: listed, then not found" in logs.text("warning")
    assert "No Transaction with an ID of 1 was found" in logs.text("warning")


async def test_a_transaction_whose_info_keeps_failing_is_skipped_after_a_few_tries(http_server, metadata, sleeps, logs):
    metadata.add(1, created=1)
    metadata.add(2, created=2)
    real = metadata.__call__

    def handler(request):
        if request.path == "/transactioninfo/by_id/1":
            return _json(500, {"message": "transactioninfo crashed"})
        return real(request)

    http_server.handler = handler
    payloads = await drive(watcher(logs=logs), sleeps, budget=trigger_module.MAX_TRANSACTION_FAILURES + 1)
    assert ids(payloads) == ["metadata.ingest.2"]
    assert FakeMetadata.info_requests(http_server, 1) == trigger_module.MAX_TRANSACTION_FAILURES
    assert "Skipping transaction 1: its info failed 5 times" in logs.text("error")


async def test_a_transaction_whose_info_is_unavailable_is_waited_for_not_skipped(http_server, metadata, sleeps, logs):
    metadata.add(1, created=1)
    real = metadata.__call__
    unavailable = 2 * trigger_module.MAX_TRANSACTION_FAILURES

    def handler(request):
        if request.path == "/transactioninfo/by_id/1" and FakeMetadata.info_requests(http_server, 1) <= unavailable:
            return Reply(503)
        return real(request)

    http_server.handler = handler
    payloads = await drive(watcher(logs=logs), sleeps, budget=unavailable + 1)
    assert ids(payloads) == ["metadata.ingest.1"]
    assert not logs.text("error")


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"project": "1234a"}, [1, 3]),
        ({"instrument": 54}, [1, 2]),  # an int compares as a string
        ({"submitter": "11"}, [3]),
        ({"project": "1234a", "instrument": "54"}, [1]),
    ],
)
async def test_filters_keep_only_matching_transactions_and_move_past_the_others(
    http_server, metadata, sleeps, filters, expected
):
    metadata.add(1, created=1)
    metadata.add(2, created=2, project="other")
    metadata.add(3, created=3, instrument=55, submitter=11)
    store = FakeStateStore()
    payloads = await drive(watcher(store, **filters), sleeps, budget=2)
    assert ids(payloads) == [f"metadata.ingest.{txn}" for txn in expected]
    assert all(FakeMetadata.info_requests(http_server, txn) == 1 for txn in (1, 2, 3))
    assert store.values["cursor"]["created"] == at(3)


async def test_one_trigger_never_yields_an_event_id_twice(metadata, sleeps):
    metadata.add(1, created=1)
    run = Run(watcher(), sleeps)
    try:
        assert ids(await run.polls(1)) == ["metadata.ingest.1"]
        metadata.infos[1]["created"] = at(500)  # edited: it is listed as new
        assert await run.polls(2) == []
    finally:
        await run.stop()


async def test_an_unusable_stored_cursor_is_logged_and_replaced(metadata, sleeps, logs):
    store = FakeStateStore()
    store.values["cursor"] = {"created": "not a time"}
    metadata.add(1, created=1)
    assert ids(await drive(watcher(store, logs), sleeps, budget=1)) == ["metadata.ingest.1"]
    assert "stored cursor is unusable" in logs.text("error")


# -- the hook -------------------------------------------------------------------------------------------


async def test_the_hook_lists_every_page_and_reads_transaction_info(http_server, metadata):
    for txn in range(1, 4):
        metadata.add(txn, created=txn)
    hook = PacificaMetadataHook()
    listed = await hook.list_transactions(at(2), items_per_page=1)
    assert [r["_id"] for r in listed] == [2, 3]
    info = await hook.transaction_info(2)
    assert info["files"]["200"]["name"] == "hello.txt"
    assert all(r.headers["User-Agent"].startswith("airflow-provider-pacifica/") for r in http_server.requests)


async def test_the_hook_raises_not_found_for_an_unknown_transaction(metadata):
    with pytest.raises(TransactionNotFoundError, match="No Transaction with an ID of 999 was found") as caught:
        await PacificaMetadataHook().transaction_info(999)
    assert caught.value.status_code == 404


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (Reply(503), MetadataTransientError),
        (_json(500, {"message": "boom"}), MetadataTransientError),
        (Reply(429), MetadataTransientError),
        (Reply(drop=True), MetadataTransientError),
        (Reply(401), MetadataError),
        (Reply(200, {}, b"<html>proxy</html>"), MetadataError),
        (_json(200, {"not": "a list"}), MetadataError),
    ],
)
async def test_the_hook_tells_transient_faults_from_others(metadata, reply, error):
    metadata.faults = [reply, reply]  # aiohttp sends an idempotent request again once after a drop
    with pytest.raises(error) as caught:
        await PacificaMetadataHook().list_transactions(SINCE)
    assert type(caught.value) is error


async def test_the_hook_times_out_as_a_transient_fault(http_server, set_connection):
    set_connection(
        "pacifica_metadata_default",
        {
            "conn_type": "pacifica_metadata",
            "host": "127.0.0.1",
            "port": http_server.port,
            "extra": {"read_timeout": 0.2},
        },
    )
    http_server.sequence(Reply(200, {}, b"[]", delay=1.0))
    with pytest.raises(MetadataTransientError, match="Timeout"):
        await PacificaMetadataHook().list_transactions(SINCE)


async def test_the_hook_sends_basic_auth_and_no_extra_as_a_header(http_server, set_connection, metadata):
    set_connection(
        "pacifica_metadata_default",
        {
            "conn_type": "pacifica_metadata",
            "host": "127.0.0.1",
            "port": http_server.port,
            "login": "svc",
            "password": "s3cret",
            "extra": {"connect_timeout": 5, "read_timeout": "30"},
        },
    )
    await PacificaMetadataHook().list_transactions(SINCE)
    headers = http_server.requests[0].headers
    assert headers["Authorization"].startswith("Basic ")
    assert not {"connect_timeout", "read_timeout"} & {name.lower() for name in headers}


def test_test_connection_reads_the_latest_transaction(http_server, metadata):
    metadata.add(7, created=1)
    ok, message = PacificaMetadataHook().test_connection()
    assert ok
    assert message == "Pacifica metadata answered; latest transaction: 7"
    assert http_server.requests[-1].path == "/transactioninfo/last"


def test_test_connection_reports_an_error_page(http_server, metadata):
    metadata.faults = [_json(404, {"message": "Not Found"})]
    ok, message = PacificaMetadataHook().test_connection()
    assert not ok
    assert message == "Pacifica metadata answered HTTP 404: Not Found"


def test_test_connection_reports_an_unreachable_metadata(set_connection):
    set_connection(
        "pacifica_metadata_default",
        {"conn_type": "pacifica_metadata", "host": "127.0.0.1", "port": 9, "extra": {"max_retries": 0}},
    )
    ok, message = PacificaMetadataHook().test_connection()
    assert not ok
    assert "ConnectionError" in message


def test_the_hook_declares_its_connection_type():
    assert PacificaMetadataHook.conn_type == "pacifica_metadata"
    assert PacificaMetadataHook.default_conn_name == "pacifica_metadata_default"
    assert PacificaMetadataHook.conn_name_attr == "pacifica_metadata_conn_id"
    assert PacificaMetadataHook.hook_name == "Pacifica Metadata"


# -- the connection ---------------------------------------------------------------------------------------


def test_both_services_share_the_connection_validation_with_their_own_names():
    fields = {
        "host": "md.example.org",
        "port": 443,
        "schema": "https",
        "extra": {"extra__pacifica_metadata__verify": "false"},
    }
    config = MetadataConnectionConfig.from_connection_fields(**fields)
    assert isinstance(config, PacificaConnectionConfig)
    assert not isinstance(config, CartdConnectionConfig)
    assert config.base_url == "https://md.example.org:443"
    assert config.verify is False
    assert config.url("/transactioninfo/by_id/1") == "https://md.example.org:443/transactioninfo/by_id/1"
    with pytest.raises(InvalidInputError, match=r"unknown Pacifica metadata connection extra\(s\)"):
        MetadataConnectionConfig.from_connection_fields(host="h", extra={"extra__pacifica_cartd__verify": "false"})
    with pytest.raises(InvalidInputError, match="the Pacifica metadata connection has no host"):
        MetadataConnectionConfig.from_connection_fields(host="")
    cartd = CartdConnectionConfig.from_connection_fields(host="h", extra={f"extra__{CONN_TYPE}__verify": "false"})
    assert type(cartd) is CartdConnectionConfig
    assert cartd.url("c1") == "http://h/c1"
    with pytest.raises(InvalidInputError, match="the Cartd connection has no host"):
        CartdConnectionConfig.from_connection_fields(host=None)


def test_the_password_and_token_are_masked(monkeypatch, http_server, set_connection):
    masked: list[str] = []
    monkeypatch.setattr("airflow.sdk.log.mask_secret", masked.append)
    set_connection(
        "pacifica_metadata_default",
        {"conn_type": "pacifica_metadata", "host": "127.0.0.1", "login": "u", "password": "pw-123"},
    )
    assert PacificaMetadataHook().config.password == "pw-123"
    assert "pw-123" in masked
