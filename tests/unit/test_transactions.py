"""The pull intake's plain-Python core: metadata's transaction info as the ingest CloudEvent, and the cursor."""

from __future__ import annotations

import collections
import copy
import datetime as dt
import json
import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_pacifica.cloudevents import parse_cloudevent
from airflow_provider_pacifica.exceptions import CloudEventError, InvalidInputError
from airflow_provider_pacifica.transactions import (
    FILES_RECORD_KEYS,
    IncompleteTransactionError,
    advance,
    event_id_for,
    format_time,
    ingest_cloudevent,
    initial_cursor,
    load_cursor,
    new_transactions,
    parse_time,
    query_since,
)
from tests.conftest import load_fixture

DELIVERED = load_fixture("notifications-delivered-event.json")


def info_for(event: dict) -> dict:
    """The ``GET /transactioninfo/by_id/<id>`` body metadata 0.13.0 gives for the transaction of ``event``
    (pacifica-live.md section 6): files keyed by id in no particular order, with the columns of the
    Files table, key values as strings."""
    txn = next(r["value"] for r in event["data"] if r["destinationTable"] == "Transactions._id")
    values = {r["destinationTable"]: r.get("value") for r in event["data"]}
    files = {}
    for record in reversed([r for r in event["data"] if r["destinationTable"] == "Files"]):
        files[str(record["_id"])] = {
            **{key: value for key, value in record.items() if key != "destinationTable"},
            "created": event["eventTime"],
            "updated": event["eventTime"],
            "deleted": None,
            "transaction": txn,
            "encoding": "UTF8",
            "suspense_date": None,
            "key_values": {},
        }
    return {
        "created": event["eventTime"],
        "updated": event["eventTime"],
        "deleted": None,
        "_id": txn,
        "transaction_id": txn,
        "submitter": values["Transactions.submitter"],
        "instrument": values["Transactions.instrument"],
        "project": values["Transactions.project"],
        "description": "None",
        "suspense_date": None,
        "file_ids": [int(file_id) for file_id in files],
        "submitted": event["eventTime"],
        "release_state": "not_released",
        "files": files,
        "key_values": {"User of Record": str(values["TransactionKeyValue"])},
    }


# -- the CloudEvent ----------------------------------------------------------------------------------


def test_the_rebuilt_event_parses_to_the_same_files_as_the_delivered_one():
    rebuilt = ingest_cloudevent(info_for(DELIVERED))
    ours, theirs = parse_cloudevent(rebuilt), parse_cloudevent(DELIVERED)
    assert ours.files == theirs.files
    assert (ours.id, ours.type, ours.source, ours.time, ours.transaction_id) == (
        theirs.id,
        theirs.type,
        theirs.source,
        theirs.time,
        theirs.transaction_id,
    )


def test_the_rebuilt_event_has_metadatas_envelope_and_records():
    rebuilt = ingest_cloudevent(info_for(DELIVERED))
    assert set(rebuilt) == set(DELIVERED)
    for key in ("cloudEventsVersion", "eventType", "source", "eventID", "eventTime", "extensions", "contentType"):
        assert rebuilt[key] == DELIVERED[key], key
    files = [r for r in rebuilt["data"] if r["destinationTable"] == "Files"]
    assert files == [r for r in DELIVERED["data"] if r["destinationTable"] == "Files"]  # sorted by _id, same keys
    assert all(tuple(sorted(r)) == tuple(sorted(FILES_RECORD_KEYS)) for r in files)
    assert rebuilt["data"][-1] == {"destinationTable": "Transactions._id", "value": 1}
    assert rebuilt["data"][:4] == [
        {"destinationTable": "Transactions.submitter", "value": 10},
        {"destinationTable": "Transactions.project", "value": "1234a"},
        {"destinationTable": "Transactions.instrument", "value": 54},
        {"destinationTable": "TransactionKeyValue", "key": "User of Record", "value": "10"},
    ]
    json.dumps(rebuilt)  # a trigger event's payload must be JSON


def test_the_event_id_and_source_are_metadatas_defaults():
    info = {**info_for(DELIVERED), "_id": 42, "transaction_id": 42}
    event = ingest_cloudevent(info)
    assert event["eventID"] == event_id_for(42) == "metadata.ingest.42"
    assert event["source"] == "http://metadata.pacifica.org/transactions?_id=42"
    assert event["data"][-1] == {"destinationTable": "Transactions._id", "value": 42}


def test_the_transaction_id_may_come_as_transaction_id_only():
    info = info_for(DELIVERED)
    del info["_id"]
    assert ingest_cloudevent(info)["eventID"] == "metadata.ingest.1"


@pytest.mark.parametrize(
    ("created", "expected"),
    [
        ("2026-12-02T23:12:29", "2026-12-02T23:12:29"),
        ("2026-12-02T23:12:29.987654", "2026-12-02T23:12:29"),
        ("2026-12-03T01:12:29+02:00", "2026-12-02T23:12:29"),
        ("2026-12-02 23:12:29", "2026-12-02T23:12:29"),
    ],
)
def test_the_event_time_is_the_transactions_created_in_whole_utc_seconds(created, expected):
    assert ingest_cloudevent({**info_for(DELIVERED), "created": created})["eventTime"] == expected


def test_a_transaction_without_files_is_incomplete():
    with pytest.raises(IncompleteTransactionError, match="transaction 1 has no files"):
        ingest_cloudevent({**info_for(DELIVERED), "files": {}})


@pytest.mark.parametrize("missing", ["hashsum", "hashtype"])
def test_a_file_without_a_hash_is_incomplete_and_named(missing):
    info = copy.deepcopy(info_for(DELIVERED))
    info["files"]["3"][missing] = ""
    with pytest.raises(IncompleteTransactionError, match=rf"transaction 1: file 3 has no {missing}"):
        ingest_cloudevent(info)
    del info["files"]["3"][missing]
    with pytest.raises(IncompleteTransactionError, match=rf"file 3 has no {missing}"):
        ingest_cloudevent(info)


def test_a_transaction_without_project_is_incomplete():
    info = {**info_for(DELIVERED), "project": None}
    with pytest.raises(IncompleteTransactionError, match="has no project"):
        ingest_cloudevent(info)


def test_incomplete_is_an_invalid_input():
    assert issubclass(IncompleteTransactionError, InvalidInputError)


def test_a_file_path_the_download_would_refuse_passes_the_builder_but_not_the_parser():
    info = copy.deepcopy(info_for(DELIVERED))
    info["files"]["2"]["subdir"] = "../../etc"
    with pytest.raises(CloudEventError, match=r"\.\."):
        parse_cloudevent(ingest_cloudevent(info))


def test_no_transaction_id_is_invalid():
    info = info_for(DELIVERED)
    del info["_id"], info["transaction_id"]
    with pytest.raises(InvalidInputError, match="no integer _id"):
        ingest_cloudevent(info)


# -- times and the cursor's shape ---------------------------------------------------------------------


def test_parse_time_refuses_what_is_not_a_time():
    with pytest.raises(InvalidInputError, match="not an ISO 8601 time"):
        parse_time("yesterday")
    with pytest.raises(InvalidInputError, match="must be an ISO 8601 string"):
        parse_time(1796237653)


def test_the_cursor_round_trips_through_json_and_load_cursor():
    cursor = initial_cursor("2026-12-02T20:00:00")
    for txn, created in ((5, "2026-12-02T20:00:03"), (4, "2026-12-02T20:00:03"), (3, "2026-12-02T20:00:01")):
        cursor = advance(cursor, {"_id": txn, "created": created}, overlap=60)
    assert cursor == {
        "since": "2026-12-02T20:00:00",
        "created": "2026-12-02T20:00:03",
        "seen": [5, 4],
        "earlier": [[3, "2026-12-02T20:00:01"]],
    }
    assert load_cursor(json.loads(json.dumps(cursor))) == cursor


def test_without_overlap_the_cursor_is_the_newest_created_and_its_ids():
    cursor = initial_cursor("2026-12-02T20:00:00")
    for txn, created in ((1, "2026-12-02T20:00:01"), (2, "2026-12-02T20:00:02"), (3, "2026-12-02T20:00:02")):
        cursor = advance(cursor, {"_id": txn, "created": created})
    assert cursor == {"since": "2026-12-02T20:00:00", "created": "2026-12-02T20:00:02", "seen": [2, 3], "earlier": []}


def test_load_cursor_accepts_the_minimal_form_and_refuses_garbage():
    assert load_cursor({"created": "2026-12-02T20:00:00", "seen": [1]}) == {
        "since": "2026-12-02T20:00:00",
        "created": "2026-12-02T20:00:00",
        "seen": [1],
        "earlier": [],
    }
    for bad in (None, "x", {"seen": []}, {"created": "never"}, {"created": "2026-12-02T20:00:00", "seen": ["1"]}):
        with pytest.raises(InvalidInputError):
            load_cursor(bad)


def test_advance_returns_a_new_cursor_and_ignores_an_id_already_seen():
    cursor = initial_cursor("2026-12-02T20:00:00")
    moved = advance(cursor, {"_id": 1, "created": "2026-12-02T20:00:00"})
    assert cursor["seen"] == []
    assert advance(moved, {"_id": 1, "created": "2026-12-02T20:00:00"}) == moved


def test_query_since_goes_back_by_the_overlap_but_never_before_since():
    cursor = advance(initial_cursor("2026-12-02T20:00:00"), {"_id": 1, "created": "2026-12-02T20:10:00"})
    assert query_since(cursor) == "2026-12-02T20:10:00"
    assert query_since(cursor, overlap=60) == "2026-12-02T20:09:00"
    assert query_since(cursor, overlap=3600) == "2026-12-02T20:00:00"


def test_new_transactions_sorts_by_created_then_id_and_drops_repeats():
    cursor = initial_cursor("2026-12-02T20:00:00")
    listed = [
        {"_id": 3, "created": "2026-12-02T20:00:01"},
        {"_id": 1, "created": "2026-12-02T20:00:02"},
        {"_id": 2, "created": "2026-12-02T20:00:01"},
        {"_id": 3, "created": "2026-12-02T20:00:01"},
    ]
    assert [r["_id"] for r in new_transactions(cursor, listed)] == [2, 3, 1]


def test_without_overlap_a_commit_later_than_a_newer_transaction_is_missed_and_with_it_is_not():
    """Why the trigger lists ``overlap`` seconds back: metadata sets ``created`` before it commits."""
    since = "2026-12-02T20:00:00"
    late = {"_id": 7, "created": "2026-12-02T20:00:01"}  # created first, committed after 8 was listed
    newer = {"_id": 8, "created": "2026-12-02T20:00:02"}
    for overlap, expected in ((0, []), (60, [7])):
        cursor = initial_cursor(since)
        for record in new_transactions(cursor, [newer], overlap=overlap):
            cursor = advance(cursor, record, overlap=overlap)
        low = parse_time(query_since(cursor, overlap=overlap))
        listed = [r for r in (late, newer) if parse_time(r["created"]) >= low]  # what metadata answers
        assert [r["_id"] for r in new_transactions(cursor, listed, overlap=overlap)] == expected


# -- properties of the cursor ---------------------------------------------------------------------------

BASE = dt.datetime(2026, 12, 2, 20, 0, 0)


@dataclass(frozen=True)
class Txn:
    id: int
    created: int  # seconds after BASE (negative: before the watcher's since)
    visible: int  # tenths of a second after BASE at which its commit is seen

    def record(self) -> dict:
        return {"_id": self.id, "created": format_time(BASE + dt.timedelta(seconds=self.created))}


@st.composite
def histories(draw):
    """Transactions whose ids are allocated in any order, each visible up to ``overlap`` seconds
    (and a fraction) after the second it was created in; polls at any tenths of a second."""
    overlap = draw(st.integers(0, 3))
    count = draw(st.integers(0, 12))
    ids = draw(st.permutations(list(range(1, count + 1))))
    txns = []
    for txn in ids:
        created = draw(st.integers(-3, 12))
        lag = draw(st.integers(0, 10 * overlap + 9))  # < overlap + 1 s after the start of its second
        txns.append(Txn(txn, created, 10 * created + lag))
    polls = sorted(draw(st.lists(st.integers(0, 180), max_size=16)))
    return overlap, txns, polls


def metadata_listing(txns, now: int, since: str, rng: random.Random) -> list[dict]:
    """What ``GET /transactions?created_operator=gte&created=<since>`` answers at ``now``: the
    visible ones, in any order, a record repeated when pages shift."""
    low = parse_time(since)
    listed = [t.record() for t in txns if t.visible <= now and parse_time(t.record()["created"]) >= low]
    listed += [r for r in listed if rng.random() < 0.2]
    rng.shuffle(listed)
    return listed


@settings(max_examples=400, deadline=None)
@given(history=histories(), data=st.data())
def test_every_transaction_is_emitted_once_across_polls_restarts_and_late_commits(history, data):
    overlap, txns, polls = history
    rng = random.Random(data.draw(st.integers(0, 2**32), label="seed"))
    saved = initial_cursor(format_time(BASE))  # what the asset state store holds
    memory = copy.deepcopy(saved)  # the running trigger's cursor
    delivered: list[int] = []  # every yield, as the consumers see them
    unsaved: list[int] = []  # yielded since the last save
    lost_saves: collections.Counter[int] = collections.Counter()  # a restart came between yield and save

    def poll(now: int, *, faults: bool) -> list[int]:
        nonlocal memory, saved
        emitted = []
        listed = metadata_listing(txns, now, query_since(memory, overlap=overlap), rng)
        for record in new_transactions(memory, listed, overlap=overlap):
            emitted.append(record["_id"])
            delivered.append(record["_id"])
            unsaved.append(record["_id"])
            memory = advance(memory, record, overlap=overlap)
            if faults and data.draw(st.booleans(), label="restart before the save"):
                lost_saves.update(unsaved)
                unsaved.clear()
                memory = copy.deepcopy(saved)  # in-memory state lost, the stored cursor kept
                break
            if not faults or data.draw(st.booleans(), label="save now"):
                saved = json.loads(json.dumps(memory))  # through JSON, as the store keeps it
                unsaved.clear()
        if faults and data.draw(st.booleans(), label="restart after the poll"):
            lost_saves.update(unsaved)
            unsaved.clear()
            memory = copy.deepcopy(saved)
        return emitted

    for now in polls:
        emitted = poll(now, faults=True)
        created = {t.id: t.created for t in txns}
        assert emitted == sorted(emitted, key=lambda i: (created[i], i))  # in (created, _id) order
    poll(10_000, faults=False)  # everything has committed
    assert poll(10_001, faults=False) == []  # and nothing comes twice once the cursor is saved

    expected = {t.id for t in txns if t.created >= 0}
    assert set(delivered) == expected  # none lost, none from before since
    for txn, count in collections.Counter(delivered).items():
        assert count <= 1 + lost_saves[txn]  # a repeat only after a restart between its yield and save
    if not lost_saves:
        assert sorted(delivered) == sorted(expected)  # exactly once
    assert len({event_id_for(t) for t in delivered}) == len(expected)  # deduped on the event id: once


@settings(max_examples=200, deadline=None)
@given(
    txns=st.lists(st.tuples(st.integers(1, 50), st.integers(0, 5)), unique_by=lambda t: t[0], min_size=1, max_size=20),
    data=st.data(),
)
def test_without_overlap_late_commits_in_the_same_or_a_later_second_are_not_lost(txns, data):
    """Commits in any id order; each becomes visible within the second it was created in."""
    cursor = initial_cursor(format_time(BASE))
    order = data.draw(st.permutations(txns))  # commit order
    emitted = []
    for committed in range(1, len(order) + 1):
        visible = [Txn(i, c, 0).record() for i, c in order[:committed]]
        low = parse_time(query_since(cursor))
        # metadata answers what is visible and not older than the cursor, in any order
        listed = data.draw(st.permutations([r for r in visible if parse_time(r["created"]) >= low]))
        for record in new_transactions(cursor, listed):
            emitted.append(record["_id"])
            cursor = advance(cursor, record)
    # a commit in an earlier second than the cursor is the one case overlap covers; the rest arrive once
    late_in_earlier_second = {i for n, (i, c) in enumerate(order) if any(c2 > c for _, c2 in order[:n])}
    assert len(emitted) == len(set(emitted))
    assert set(emitted) == {i for i, _ in txns} - late_in_earlier_second


@settings(max_examples=200, deadline=None)
@given(
    cursor_records=st.lists(st.tuples(st.integers(1, 30), st.integers(0, 20)), unique_by=lambda t: t[0]),
    overlap=st.integers(0, 10),
)
def test_the_cursor_forgets_only_ids_that_no_listing_can_return(cursor_records, overlap):
    cursor = initial_cursor(format_time(BASE))
    for txn, created in cursor_records:
        cursor = advance(cursor, Txn(txn, created, 0).record(), overlap=overlap)
    low = parse_time(query_since(cursor, overlap=overlap))
    listable = {txn for txn, created in cursor_records if BASE + dt.timedelta(seconds=created) >= low}
    known = set(cursor["seen"]) | {entry[0] for entry in cursor["earlier"]}
    assert listable <= known
    assert new_transactions(cursor, [Txn(t, c, 0).record() for t, c in cursor_records], overlap=overlap) == []
