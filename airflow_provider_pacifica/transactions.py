"""Pacifica transactions as the pull intake sees them: metadata's answers, the ingest CloudEvent, the cursor.

Plain Python, no Airflow import. The trigger
(:class:`~airflow_provider_pacifica.triggers.ingest.PacificaIngestEventTrigger`) lists transactions
through :class:`~airflow_provider_pacifica.hooks.metadata.PacificaMetadataHook` and uses this module to

* rebuild, from ``GET /transactioninfo/by_id/<id>``, the very CloudEvent that pacifica-metadata
  emits on ingest (:func:`ingest_cloudevent`), so that the webhook's consumers take it unchanged;
* decide which listed transactions are new and remember the ones emitted (:func:`new_transactions`,
  :func:`advance`).

**Why the cursor looks the way it does.** Metadata's ``GET /transactions`` can filter ``created``
with ``created_operator=gte`` (``between`` is silently ignored, ``_id`` is equality only) and pages
by ``_id``. ``created`` is UTC in whole seconds, and several transactions can share a second.
It is set when the ingest step builds the row, *before* the step inserts the files, POSTs the
CloudEvent to Notifications (no timeout) and commits: a transaction can become visible after one
created later (concurrent ingests). So the cursor is

``{"since": <floor>, "created": <newest created emitted>, "seen": [ids emitted with exactly that
created], "earlier": [[id, created], ...]}``

and each poll lists ``created >= max(since, created - overlap)``. ``earlier`` holds the ids emitted
within ``overlap`` seconds before ``created`` (a late commit in that window is emitted once, not
lost); with ``overlap=0`` it stays empty and the cursor is just ``created`` and ``seen``. Ids older
than the window are dropped: the next listing cannot return them. All times are ISO 8601, naive
UTC, whole seconds, as metadata writes them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from airflow_provider_pacifica.exceptions import InvalidInputError

EVENT_TYPE = "org.pacifica.metadata.ingest"
# metadata's [notifications] ingest_eventid and ingest_source defaults (pacifica-metadata 0.13.0 config.py)
EVENT_ID_TEMPLATE = "metadata.ingest.{_id}"
SOURCE_TEMPLATE = "http://metadata.pacifica.org/transactions?_id={_id}"
# The keys of a Files record in metadata's ingest CloudEvent, exactly (pacifica-live.md section 5).
FILES_RECORD_KEYS = (
    "_id",
    "ctime",
    "mtime",
    "destinationTable",
    "hashsum",
    "hashtype",
    "mimetype",
    "name",
    "size",
    "subdir",
)
_REQUIRED_FILE_KEYS = ("name", "hashtype", "hashsum")

Cursor = dict[str, Any]

__all__ = [
    "EVENT_TYPE",
    "Cursor",
    "IncompleteTransactionError",
    "advance",
    "event_id_for",
    "format_time",
    "ingest_cloudevent",
    "initial_cursor",
    "load_cursor",
    "new_transactions",
    "parse_time",
    "query_since",
    "transaction_id",
]


# -- errors --------------------------------------------------------------------------------------


class IncompleteTransactionError(InvalidInputError):
    """A transaction that cannot become an ingest event (no files, a file without a hash...); the
    message names what is missing."""


# -- times -----------------------------------------------------------------------------------------


def parse_time(value: Any, what: str = "time") -> dt.datetime:
    """An ISO 8601 time as naive UTC, whole seconds (a zone, if given, is converted to UTC)."""
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.strip().replace(" ", "T", 1))
        except ValueError:
            raise InvalidInputError(f"{what} {value!r} is not an ISO 8601 time") from None
    else:
        raise InvalidInputError(f"{what} must be an ISO 8601 string, got {value!r}")
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
    return parsed.replace(microsecond=0)


def format_time(value: dt.datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS``, as metadata writes ``created``."""
    return value.isoformat(timespec="seconds")


# -- the ingest CloudEvent -------------------------------------------------------------------------


def transaction_id(record: Mapping[str, Any]) -> int:
    """The id of a transaction record (``_id``, or transaction-info's ``transaction_id``)."""
    value = record.get("_id", record.get("transaction_id"))
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        raise InvalidInputError(f"transaction record has no integer _id: {value!r}")
    return value


def event_id_for(txn_id: int) -> str:
    """``metadata.ingest.<id>``: the id metadata gives the ingest event, which the webhook dedupes on."""
    return EVENT_ID_TEMPLATE.format(_id=txn_id)


def ingest_cloudevent(info: Mapping[str, Any]) -> dict[str, Any]:
    """The CloudEvent 0.1 that pacifica-metadata emits when it ingests this transaction.

    :param info: metadata's ``GET /transactioninfo/by_id/<id>`` body (``_id``/``transaction_id``,
        ``submitter``, ``project``, ``instrument``, ``created``, ``files`` keyed by file id,
        ``key_values``).
    :returns: ``cloudEventsVersion``, ``eventType``, ``source``, ``eventID``, ``eventTime`` (the
        transaction's ``created``, UTC; metadata's own is its server's local time when it sent the
        event, a moment later), ``extensions``, ``contentType`` and ``data``: the
        ``Transactions.submitter``/``project``/``instrument`` records, one ``TransactionKeyValue``
        per key value, one ``Files`` record per file (sorted by id, with exactly metadata's keys)
        and ``Transactions._id`` last. The uploader's UI fields of metadata's own event
        (``displayTitle``, ``query_results``...) are not in metadata's database and not rebuilt,
        and key values come back as the strings metadata stores.
    :raises IncompleteTransactionError: no files, a file without a name or hash, no submitter,
        project or instrument.
    :raises InvalidInputError: no transaction id, or ``created`` is not a time.
    """
    if not isinstance(info, Mapping):
        raise InvalidInputError(f"transaction info must be an object, got {type(info).__name__}")
    txn = transaction_id(info)
    where = f"transaction {txn}"
    created = format_time(parse_time(info.get("created"), f"{where}: created"))
    missing = [key for key in ("submitter", "project", "instrument") if info.get(key) in (None, "")]
    if missing:
        raise IncompleteTransactionError(f"{where} has no {', '.join(missing)}")

    data: list[dict[str, Any]] = [
        {"destinationTable": f"Transactions.{key}", "value": info[key]}
        for key in ("submitter", "project", "instrument")
    ]
    key_values = info.get("key_values") or {}
    if not isinstance(key_values, Mapping):
        raise InvalidInputError(f"{where}: key_values must be an object, got {type(key_values).__name__}")
    data.extend(
        {"destinationTable": "TransactionKeyValue", "key": key, "value": value} for key, value in key_values.items()
    )
    data.extend(_files_records(info.get("files"), where))
    data.append({"destinationTable": "Transactions._id", "value": txn})
    return {
        "cloudEventsVersion": "0.1",
        "eventType": EVENT_TYPE,
        "source": SOURCE_TEMPLATE.format(_id=txn),
        "eventID": event_id_for(txn),
        "eventTime": created,
        "extensions": {},
        "contentType": "application/json",
        "data": data,
    }


def _files_records(files: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(files, Mapping):
        items: Iterable[tuple[Any, Any]] = files.items()
    elif isinstance(files, list):
        items = ((None, record) for record in files)
    else:
        items = ()
    records = []
    for key, record in items:
        if not isinstance(record, Mapping):
            raise IncompleteTransactionError(f"{where}: file {key!r} is not an object")
        file_id = record.get("_id", key)
        if isinstance(file_id, str) and file_id.strip().isdigit():
            file_id = int(file_id)  # a map key; metadata's ids are integers
        if file_id is None or isinstance(file_id, bool):
            raise IncompleteTransactionError(f"{where}: a file has no _id")
        lacking = [name for name in _REQUIRED_FILE_KEYS if record.get(name) in (None, "")]
        if lacking:
            raise IncompleteTransactionError(f"{where}: file {file_id!r} has no {', '.join(lacking)}")
        out = {name: record.get(name) for name in FILES_RECORD_KEYS}
        out.update({"_id": file_id, "destinationTable": "Files", "subdir": record.get("subdir") or ""})
        records.append(out)
    if not records:
        raise IncompleteTransactionError(f"{where} has no files")
    return sorted(records, key=lambda r: (isinstance(r["_id"], str), r["_id"]))


# -- the cursor --------------------------------------------------------------------------------


def initial_cursor(since: str | dt.datetime) -> Cursor:
    """A cursor that has emitted nothing: transactions created at or after ``since`` are new."""
    floor = format_time(parse_time(since, "since"))
    return {"since": floor, "created": floor, "seen": [], "earlier": []}


def load_cursor(value: Any) -> Cursor:
    """A cursor read back from a store, checked and normalised (``since`` defaults to ``created``).

    :raises InvalidInputError: not a cursor.
    """
    if not isinstance(value, Mapping) or "created" not in value:
        raise InvalidInputError(f"not a transaction cursor: {value!r:.200}")
    created = format_time(parse_time(value["created"], "cursor created"))
    since = format_time(parse_time(value.get("since", created), "cursor since"))
    seen = value.get("seen", [])
    earlier = value.get("earlier", [])
    if not isinstance(seen, list) or not isinstance(earlier, list):
        raise InvalidInputError(f"cursor seen and earlier must be lists: {value!r:.200}")
    try:
        return {
            "since": since,
            "created": created,
            "seen": [_int_id(i) for i in seen],
            "earlier": [[_int_id(i), format_time(parse_time(t, "cursor time"))] for i, t in earlier],
        }
    except (TypeError, ValueError):
        raise InvalidInputError(f"not a transaction cursor: {value!r:.200}") from None


def query_since(cursor: Cursor, *, overlap: float = 0.0) -> str:
    """The ``created`` to list from (``created_operator=gte``): ``overlap`` seconds before the
    newest created emitted, never before the cursor's ``since``."""
    low = parse_time(cursor["created"]) - dt.timedelta(seconds=overlap)
    return format_time(max(low, parse_time(cursor["since"])))


def new_transactions(
    cursor: Cursor, listed: Iterable[Mapping[str, Any]], *, overlap: float = 0.0
) -> list[Mapping[str, Any]]:
    """The listed transactions not emitted yet, each once, ordered by ``(created, _id)``.

    ``listed`` may come in any order and repeat records (pages shift while transactions commit);
    records created before :func:`query_since` are left out: the cursor cannot tell whether they
    were emitted.
    """
    low = parse_time(query_since(cursor, overlap=overlap))
    known = _known_ids(cursor)
    fresh: dict[int, tuple[dt.datetime, Mapping[str, Any]]] = {}
    for record in listed:
        txn = transaction_id(record)
        created = parse_time(record.get("created"), f"transaction {txn}: created")
        if txn in known or txn in fresh or created < low:
            continue
        fresh[txn] = (created, record)
    return [record for _, record in sorted(fresh.values(), key=lambda item: (item[0], transaction_id(item[1])))]


def advance(cursor: Cursor, transaction: Mapping[str, Any], *, overlap: float = 0.0) -> Cursor:
    """The cursor after ``transaction`` was emitted (or skipped for good); a new dict."""
    txn = transaction_id(transaction)
    created = parse_time(transaction.get("created"), f"transaction {txn}: created")
    newest = parse_time(cursor["created"])
    seen = list(cursor.get("seen", []))
    earlier = [list(entry) for entry in cursor.get("earlier", [])]
    if txn in _known_ids(cursor):
        return {**cursor, "seen": seen, "earlier": earlier}
    if created > newest:
        earlier.extend([i, cursor["created"]] for i in seen)
        seen, newest = [txn], created
    elif created == newest:
        seen.append(txn)
    else:
        earlier.append([txn, format_time(created)])
    floor = max(newest - dt.timedelta(seconds=overlap), parse_time(cursor["since"]))
    earlier = [entry for entry in earlier if parse_time(entry[1]) >= floor]
    return {"since": cursor["since"], "created": format_time(newest), "seen": seen, "earlier": earlier}


def _known_ids(cursor: Cursor) -> set[int]:
    return {*cursor.get("seen", []), *(entry[0] for entry in cursor.get("earlier", []))}


def _int_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(value)
    return value
