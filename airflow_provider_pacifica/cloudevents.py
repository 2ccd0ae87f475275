"""Turn what Pacifica sends into a validated list of files to put in a cart.

Plain Python, no Airflow import. Three inputs are understood:

* an ingest CloudEvent as Pacifica Metadata really emits it (CloudEvents **0.1** keys:
  ``cloudEventsVersion``, ``eventType``, ``eventID``), the same with CloudEvents 1.0 keys
  (``specversion``, ``type``, ``id``), or a bare ``{"data": [...]}``; each also as a JSON string;
* the Policy transaction-info JSON (``GET /status/transactions/by_id/<id>``);
* a plain list of file dicts (``id``, ``path``, ``hashtype``, ``hashsum``, optional ``size``).

Every file is checked before a cart is created, because Cartd does not: it writes a ``..`` path
outside its cart directory and accepts an absolute one (see pacifica.md).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_pacifica.exceptions import CloudEventError
from airflow_provider_pacifica.paths import parent_directories, path_parts
from airflow_provider_pacifica.strictjson import strict_json

__all__ = [  # CloudEventError lives in exceptions (imported here too, as before)
    "CartFile",
    "PacificaEvent",
    "cloudevent_from_http",
    "compact_cloudevent",
    "files_from_cloudevent",
    "files_from_list",
    "files_from_transaction_info",
    "parse_cloudevent",
]

_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class CartFile:
    """One file to put in a cart and to verify after download.

    :param id: the archive-interface file id (Pacifica's ``Files._id``).
    :param path: where the file goes, relative, ``/``-separated, normalised.
    :param hashtype: a :mod:`hashlib` algorithm name, lower case.
    :param hashsum: the expected digest, lower-case hex.
    :param size: the expected size in bytes, when the source gave one.
    """

    id: int | str
    path: str
    hashtype: str
    hashsum: str
    size: int | None = None

    def to_fileid(self) -> dict[str, Any]:
        """The entry of Cartd's ``fileids`` list for this file."""
        return {"id": self.id, "path": self.path, "hashtype": self.hashtype, "hashsum": self.hashsum}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict that :func:`files_from_list` reads back."""
        record = self.to_fileid()
        if self.size is not None:
            record["size"] = self.size
        return record


@dataclass(frozen=True)
class PacificaEvent:
    """The parts of an ingest CloudEvent a pipeline needs.

    :param id: ``eventID`` (0.1) or ``id`` (1.0); ``None`` for a bare ``{"data": [...]}``.
    :param type: ``eventType`` / ``type``.
    :param source: ``source``.
    :param time: ``eventTime`` / ``time``, as sent.
    :param transaction_id: the value of the ``Transactions._id`` record, if any.
    :param files: the validated files of the event.
    """

    id: str | None
    type: str | None
    source: str | None
    time: str | None
    transaction_id: int | str | None
    files: tuple[CartFile, ...] = field(default_factory=tuple)

    def summary(self) -> dict[str, Any]:
        """A small JSON-safe description (no file list), for logs and asset-event extras."""
        return {
            "id": self.id,
            "type": self.type,
            "source": self.source,
            "time": self.time,
            "transaction_id": self.transaction_id,
            "file_count": len(self.files),
            "total_bytes": sum(f.size or 0 for f in self.files),
        }


def parse_cloudevent(event: Mapping[str, Any] | str | bytes) -> PacificaEvent:
    """Parse a Pacifica ingest CloudEvent (0.1, 1.0, bare ``{"data": ...}``, or JSON text of one)."""
    envelope = _load_json(event, "CloudEvent")
    if not isinstance(envelope, Mapping):
        raise CloudEventError(f"CloudEvent must be a JSON object, got {type(envelope).__name__}")
    if "data" not in envelope:
        raise CloudEventError("CloudEvent has no 'data' member")
    data = envelope["data"]
    if isinstance(data, str | bytes):
        data = _load_json(data, "CloudEvent 'data'")
    if not isinstance(data, list):
        raise CloudEventError(f"CloudEvent 'data' must be a list of records, got {type(data).__name__}")

    files: list[CartFile] = []
    transaction_id: int | str | None = None
    for index, record in enumerate(data):
        if not isinstance(record, Mapping):
            raise CloudEventError(f"CloudEvent data record #{index} is not an object: {record!r:.80}")
        table = record.get("destinationTable")
        if table == "Transactions._id":
            transaction_id = record.get("value")
        elif table == "Files":
            files.append(_file_from_files_record(record, f"Files record #{index}"))
    _check_file_set(files, "CloudEvent")

    return PacificaEvent(
        id=_first_str(envelope, "eventID", "id"),
        type=_first_str(envelope, "eventType", "type"),
        source=_first_str(envelope, "source"),
        time=_first_str(envelope, "eventTime", "time"),
        transaction_id=transaction_id,
        files=tuple(files),
    )


def files_from_cloudevent(event: Mapping[str, Any] | str | bytes) -> list[CartFile]:
    """The validated ``Files`` of a Pacifica ingest CloudEvent, in event order."""
    return list(parse_cloudevent(event).files)


def files_from_transaction_info(info: Mapping[str, Any] | str | bytes) -> list[CartFile]:
    """The validated files of a Policy transaction-info document (``{"files": {id: record}}``)."""
    document = _load_json(info, "transaction info")
    if not isinstance(document, Mapping) or not isinstance(document.get("files"), Mapping):
        raise CloudEventError("transaction info must be an object with a 'files' object keyed by file id")
    files = []
    for file_id, record in document["files"].items():
        if not isinstance(record, Mapping):
            raise CloudEventError(f"transaction info file {file_id!r} is not an object")
        # The map key is the file id; a record may repeat it as '_id'.
        files.append(_file_from_files_record({"_id": file_id, **record}, f"transaction info file {file_id!r}"))
    _check_file_set(files, "transaction info")
    return files


def files_from_list(records: Iterable[Mapping[str, Any] | CartFile]) -> list[CartFile]:
    """Validate a plain file list: dicts with ``id``, ``path``, ``hashtype``, ``hashsum``, ``size``."""
    if isinstance(records, str | bytes):
        records = _load_json(records, "file list")
    if not isinstance(records, Iterable) or isinstance(records, Mapping):
        raise CloudEventError("files must be a list of file records")
    files = []
    for index, record in enumerate(records):
        if isinstance(record, CartFile):
            record = record.to_dict()
        where = f"file #{index}"
        if not isinstance(record, Mapping):
            raise CloudEventError(f"{where} is not an object: {record!r:.80}")
        missing = [key for key in ("id", "path", "hashtype", "hashsum") if _is_absent(record.get(key))]
        if missing:
            raise CloudEventError(f"{where} ({_describe(record)}) lacks {', '.join(missing)}")
        path = record["path"]
        if not isinstance(path, str):
            raise CloudEventError(f"{where}: path must be a string, got {path!r}")
        if path.startswith("/"):
            raise CloudEventError(f"{where}: path {path!r} is absolute")
        files.append(_make_file(record["id"], path, record, where))
    _check_file_set(files, "file list")
    return files


def cloudevent_from_http(content_type: str, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """The CloudEvent carried by an HTTP request, in any mode Pacifica or a CloudEvents SDK uses.

    * structured mode: ``application/json`` (what pacifica-notifications sends, spec 0.1) or
      ``application/cloudevents+json``: the body is the whole event;
    * binary mode (spec 1.0): attributes in ``ce-*`` headers, the body is ``data``.

    :param content_type: the request's media type, without parameters, lower case.
    :param headers: the request headers (any case).
    :raises CloudEventError: a body that is not JSON, or binary mode without ``ce-specversion``.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    if "ce-specversion" in lowered:
        envelope: dict[str, Any] = {
            name[3:]: value for name, value in lowered.items() if name.startswith("ce-") and len(name) > 3
        }
        envelope["datacontenttype"] = content_type
        envelope["data"] = _load_json(body, "CloudEvent data")
        return envelope
    event = _load_json(body, "CloudEvent")
    if not isinstance(event, dict):
        raise CloudEventError(f"CloudEvent must be a JSON object, got {type(event).__name__}")
    return event


_KEPT_FILE_FIELDS = ("destinationTable", "_id", "name", "subdir", "size", "hashtype", "hashsum")


def compact_cloudevent(event: Mapping[str, Any]) -> dict[str, Any]:
    """The event with only what a download needs: envelope, ``Transactions.*`` records, trimmed Files.

    Asset-event extras are stored on every event row and shown in the UI, so they are kept small.
    """
    data = event.get("data")
    if isinstance(data, str | bytes):
        data = _load_json(data, "CloudEvent 'data'")
    kept = []
    for record in data if isinstance(data, list) else []:
        table = record.get("destinationTable") if isinstance(record, Mapping) else None
        if table == "Files":
            kept.append({key: record[key] for key in _KEPT_FILE_FIELDS if key in record})
        elif isinstance(table, str) and table.startswith("Transactions."):
            kept.append(dict(record))
    return {**{key: value for key, value in event.items() if key != "data"}, "data": kept}


# -- helpers -------------------------------------------------------------------------------


def _load_json(value: Any, what: str) -> Any:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as err:
            raise CloudEventError(f"{what} is not UTF-8: {err}") from None
    if isinstance(value, str):
        return strict_json(value, what)  # bounded: input may come from anyone (the webhook)
    return value


def _first_str(envelope: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = envelope.get(key)
        if value is not None:
            return str(value)
    return None


def _is_absent(value: Any) -> bool:
    return value is None or value is False or value == ""


def _describe(record: Mapping[str, Any]) -> str:
    parts = [f"{key}={record[key]!r}" for key in ("_id", "id", "subdir", "name", "path") if key in record]
    return ", ".join(parts) or "no id or name"


def _file_from_files_record(record: Mapping[str, Any], where: str) -> CartFile:
    missing = [key for key in ("_id", "name", "hashtype", "hashsum") if _is_absent(record.get(key))]
    if missing:
        raise CloudEventError(f"{where} ({_describe(record)}) lacks {', '.join(missing)}")
    name, subdir = record["name"], record.get("subdir") or ""
    if not isinstance(name, str) or not isinstance(subdir, str):
        raise CloudEventError(f"{where} ({_describe(record)}): name and subdir must be strings")
    if "/" in name or name in (".", ".."):
        raise CloudEventError(f"{where} ({_describe(record)}): name must be a plain file name")
    # Pacifica's subdir comes as '', 'a/b' or 'a/b/'; its own client joined it as '/name'.
    # Slashes at either end are normalised; '..' is refused by _make_file.
    return _make_file(record["_id"], f"{subdir}/{name}", record, where)


def _make_file(file_id: Any, raw_path: str, record: Mapping[str, Any], where: str) -> CartFile:
    if isinstance(file_id, bool) or not isinstance(file_id, int | str):
        raise CloudEventError(f"{where} ({_describe(record)}): id must be an integer or a string")
    if isinstance(file_id, str) and ("/" in file_id or not file_id.strip()):
        raise CloudEventError(f"{where} ({_describe(record)}): id {file_id!r} is not a valid archive id")
    path = _normalise_path(raw_path, where, record)

    hashtype = record["hashtype"]
    if not isinstance(hashtype, str):
        raise CloudEventError(f"{where} ({_describe(record)}): hashtype must be a string")
    hashtype = hashtype.lower()
    try:
        digest_size = hashlib.new(hashtype).digest_size
    except (ValueError, TypeError):
        raise CloudEventError(f"{where} ({_describe(record)}): hashtype {hashtype!r} is not known to hashlib") from None
    if not digest_size:  # SHAKE digests have no fixed length: there is no hashsum to compare with
        raise CloudEventError(f"{where} ({_describe(record)}): hashtype {hashtype!r} has no fixed digest size")
    hashsum = record["hashsum"]
    if not isinstance(hashsum, str) or not _HEX.match(hashsum.lower()):
        raise CloudEventError(f"{where} ({_describe(record)}): hashsum {hashsum!r} is not hexadecimal")
    hashsum = hashsum.lower()
    if digest_size and len(hashsum) != 2 * digest_size:
        raise CloudEventError(
            f"{where} ({_describe(record)}): a {hashtype} hashsum has {2 * digest_size} hex digits, got {len(hashsum)}"
        )

    size = record.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise CloudEventError(f"{where} ({_describe(record)}): size {size!r} is not a byte count")
    return CartFile(id=file_id, path=path, hashtype=hashtype, hashsum=hashsum, size=size)


def _normalise_path(raw_path: str, where: str, record: Mapping[str, Any]) -> str:
    try:
        return "/".join(path_parts(raw_path))
    except ValueError as err:
        raise CloudEventError(f"{where} ({_describe(record)}): path {raw_path!r} {err}") from None


def _check_file_set(files: list[CartFile], what: str) -> None:
    if not files:
        raise CloudEventError(f"{what} has no Files to download")
    seen: dict[str, CartFile] = {}
    dirs = parent_directories(f.path for f in files)
    for file in files:
        if file.path in seen:
            raise CloudEventError(f"{what}: files {seen[file.path].id!r} and {file.id!r} both have path {file.path!r}")
        if file.path in dirs:
            raise CloudEventError(f"{what}: path {file.path!r} of file {file.id!r} is also a directory")
        seen[file.path] = file
