"""Split one large download into several carts, and merge their manifests back.

Plain Python, no Airflow import. With dynamic task mapping, several workers then stage, download
and verify their share in parallel::

    batches = split_files(files_from_cloudevent(event), max_bytes=8 * 2**30)
    manifests = PacificaDownloadOperator.partial(task_id="download", destination=dest).expand(files=batches)
    merge_manifests(manifests)

Each batch is a list of file dicts (XCom- and JSON-safe), verified on its own.
"""

from __future__ import annotations

import json
from typing import IO, TYPE_CHECKING, Any

from airflow_provider_pacifica.exceptions import InvalidInputError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from airflow_provider_pacifica.cloudevents import CartFile


def split_files(
    files: Sequence[CartFile],
    *,
    parts: int | None = None,
    max_files: int | None = None,
    max_bytes: int | None = None,
) -> list[list[dict[str, Any]]]:
    """Split ``files`` into batches, one cart each, keeping the event's order within a batch.

    :param parts: make this many batches of about equal bytes (largest files placed first).
    :param max_files: at most this many files per batch.
    :param max_bytes: at most this many bytes per batch (a larger single file gets its own batch);
        files without a size count as 0 bytes.
    """
    if sum(option is not None for option in (parts, max_files, max_bytes)) != 1:
        raise InvalidInputError("give exactly one of parts, max_files, max_bytes")
    if any(option is not None and option < 1 for option in (parts, max_files, max_bytes)):
        raise InvalidInputError("parts, max_files and max_bytes must be at least 1")
    order = {file.path: index for index, file in enumerate(files)}
    batches: list[list[CartFile]] = []
    if parts is not None:
        batches = [[] for _ in range(min(parts, len(files)) or 1)]
        loads = [0] * len(batches)
        for file in sorted(files, key=lambda f: -(f.size or 0)):  # greedy: biggest into the lightest batch
            lightest = min(range(len(batches)), key=lambda i: (loads[i], len(batches[i])))
            batches[lightest].append(file)
            loads[lightest] += file.size or 0
    else:
        current: list[CartFile] = []
        current_bytes = 0
        for file in files:
            size = file.size or 0
            full = (max_files is not None and len(current) >= max_files) or (
                max_bytes is not None and current and current_bytes + size > max_bytes
            )
            if full:
                batches.append(current)
                current, current_bytes = [], 0
            current.append(file)
            current_bytes += size
        if current:
            batches.append(current)
    return [[f.to_dict() for f in sorted(batch, key=lambda f: order[f.path])] for batch in batches if batch]


def merge_manifests(manifests: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """One manifest for the whole download from the per-batch manifests of one destination."""
    manifests = list(manifests)
    if not manifests:
        raise InvalidInputError("no manifests to merge")
    destinations = {m["destination"] for m in manifests}
    if len(destinations) != 1:
        raise InvalidInputError(f"manifests of different destinations cannot be merged: {sorted(destinations)}")
    files = [entry for manifest in manifests for entry in manifest_files(manifest)]
    return {
        "destination": destinations.pop(),
        "cart_uids": [m["cart_uid"] for m in manifests],
        "file_count": len(files),
        "total_bytes": sum(entry["size"] for entry in files),
        "files": files,
        "event": next((m.get("event") for m in manifests if m.get("event")), None),
    }


def manifest_files(
    manifest: Mapping[str, Any], open_url: Callable[[str], IO[bytes]] | None = None
) -> list[dict[str, Any]]:
    """The file list of a download manifest: in it, in the file its ``files_path`` names
    (``PacificaDownloadOperator`` writes big lists beside the files to keep XComs small), or in
    the object-storage manifest its ``files_url`` names, opened with ``open_url`` (e.g.
    ``lambda url: ObjectStoragePath(url, conn_id=manifest["conn_id"]).open("rb")``)."""
    if "files" in manifest:
        return list(manifest["files"])
    if "files_url" in manifest:
        if open_url is None:
            raise InvalidInputError(f"the file list is in {manifest['files_url']}: pass open_url to read it")
        with open_url(manifest["files_url"]) as handle:
            return list(json.load(handle)["files"])
    with open(manifest["files_path"], encoding="utf-8") as handle:
        return list(json.load(handle))
