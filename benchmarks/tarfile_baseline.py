"""The provider's download path rebuilt on the standard library's ``tarfile``, for comparison.

The same end-to-end work as ``PacificaDownloadOperator``'s download: one GET of the cart, the tar
read as a stream, every member checked (``tarfile.data_filter``, plus: under the cart's top
directory, requested, a regular file, not seen before, the size Pacifica gave), each file hashed
while it is written into a staging directory beside the destination, the hash checked, every
requested file present, then the tree moved into place. What differs is the tar reader:
``tarfile.open(fileobj=response.raw, mode="r|", bufsize=...)`` instead of the provider's
``airflow_provider_pacifica.tarstream.TarStreamReader`` (and no prefetch thread, and none of the
provider's retries, resumes or rollback of replaced files: a fresh destination needs none).

Used by ``benchmarks/bench.py`` (``--no-tarfile`` skips it); needs Python 3.11.4+ for
``tarfile.data_filter``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import requests

CHUNK_SIZE = 1 << 20
DEFAULT_BUFSIZE = tarfile.RECORDSIZE  # what tarfile.open uses when bufsize is not given (10 KiB)


class BaselineError(RuntimeError):
    """A member that must not be extracted, or a file that is not what Pacifica said."""


def download_with_tarfile(
    url: str,
    files: list[dict[str, Any]],
    destination: str | os.PathLike[str],
    top_dir: str,
    bufsize: int = DEFAULT_BUFSIZE,
) -> int:
    """Download the cart tar at ``url``, verify it and publish it under ``destination``; return the bytes written."""
    expected = {f["path"]: f for f in files}
    dest = Path(destination).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tarfile-staging.", dir=dest.parent))
    try:
        with requests.get(url, stream=True, timeout=(10, 300)) as response:
            response.raise_for_status()
            response.raw.decode_content = False  # the tar bytes exactly as sent
            written = _stage(response.raw, expected, staging / "files", top_dir, bufsize)
        _publish(staging / "files", dest)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _stage(stream: Any, expected: dict[str, dict[str, Any]], staging: Path, top_dir: str, bufsize: int) -> int:
    staging.mkdir()
    done: set[str] = set()
    written = 0
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    with tarfile.open(fileobj=stream, mode="r|", bufsize=bufsize) as tar:
        for member in tar:
            try:
                member = tarfile.data_filter(member, str(staging))  # absolute, "..", links, devices ...
            except tarfile.FilterError as err:
                raise BaselineError(f"tar member {member.name!r} refused: {err}") from None
            top, _, relative = member.name.partition("/")
            if top != top_dir:
                raise BaselineError(f"tar member {member.name!r} is outside the top directory {top_dir!r}")
            if member.isdir():
                continue
            if not member.isreg():
                raise BaselineError(f"tar member {member.name!r} is not a regular file")
            wanted = expected.get(relative)
            if wanted is None:
                raise BaselineError(f"tar member {member.name!r} was not requested")
            if relative in done:
                raise BaselineError(f"tar member {member.name!r} appears twice")
            if member.size != wanted["size"]:
                raise BaselineError(f"{relative!r} is {member.size} bytes in the cart, Pacifica said {wanted['size']}")
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.new(wanted["hashtype"])
            source = tar.extractfile(member)
            assert source is not None  # a regular file
            with open(target, "xb", buffering=0) as out:
                while count := source.readinto(view):
                    digest.update(view[:count])
                    out.write(view[:count])
                    written += count
            if digest.hexdigest() != wanted["hashsum"]:
                raise BaselineError(
                    f"{relative!r} has {wanted['hashtype']} {digest.hexdigest()}, not {wanted['hashsum']}"
                )
            done.add(relative)
    missing = expected.keys() - done
    if missing:
        raise BaselineError(f"{len(missing)} requested file(s) did not arrive, e.g. {sorted(missing)[0]!r}")
    return written


def _publish(staging: Path, dest: Path) -> None:
    """Move the verified tree into ``dest``: whole subtrees where ``dest`` lacks them (as the provider does)."""
    for entry in os.scandir(staging):
        target = dest / entry.name
        if target.exists() and entry.is_dir(follow_symlinks=False):
            _publish(Path(entry.path), target)
        else:
            os.replace(entry.path, target)
