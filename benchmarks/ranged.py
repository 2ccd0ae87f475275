"""Prototype: a bundle-mode cart fetched with N parallel ranged GETs, then verified and published.

In bundle mode Cartd serves a pre-built tar with ``Content-Length`` and ``Accept-Ranges: bytes``
(see shared/reference/cartd-live.md). :class:`RangedTar` splits it into N byte ranges, one thread
and one connection each, and ``os.pwrite``s every range into one preallocated file beside the
destination. It is itself a readable stream: ``read`` hands the tar out in order, from that file,
as soon as the bytes are there (``pipelined``), or only once every range has arrived. The
provider's own verified extraction (``extract_cart``: per-file size and hash, staging, atomic
publish) reads it, so everything after the network is exactly the provider's work.

Every range is checked to be the same tar (``Content-Range`` and ``Last-Modified``; Cartd ignores
``If-Range``). Used by ``benchmarks/bench.py`` (``--ranged-parts``, ``--no-ranged``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import threading
from pathlib import Path
from typing import Any

import requests

CHUNK_SIZE = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


class RangedTar:
    """The tar at ``url`` fetched in ``parts`` parallel ranges into ``path``; read it like a stream.

    :param url: the bundle-mode cart (``GET /<uid>``).
    :param path: a file to create (on the destination's filesystem); removed by :meth:`close`.
    :param parts: how many ranges, threads and connections.
    :param pipelined: hand bytes out while later ranges still arrive (else wait for all of them).
    """

    def __init__(self, url: str, path: str | os.PathLike[str], parts: int, *, pipelined: bool = True) -> None:
        self.url = url
        self.path = Path(path)
        self.pipelined = pipelined
        self.size, self._last_modified = self._probe()
        bounds = [self.size * k // parts for k in range(parts + 1)]
        self._ranges = list(itertools.pairwise(bounds))
        self._written = [start for start, _ in self._ranges]  # per range: the end of its bytes on disk
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        self._closed = False
        self._pos = 0
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        if self.size:
            os.posix_fallocate(self._fd, 0, self.size)
        self._threads = [
            threading.Thread(target=self._fetch, args=(index,), name=f"ranged-{index}", daemon=True)
            for index in range(parts)
        ]
        for thread in self._threads:
            thread.start()

    def _probe(self) -> tuple[int, str | None]:
        with requests.get(self.url, headers={"Range": "bytes=0-0"}, stream=True, timeout=(10, 300)) as response:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            if response.status_code != 206 or match is None:
                raise RuntimeError(
                    f"{self.url} does not serve ranges (HTTP {response.status_code}): not a bundle cart?"
                )
            return int(match.group(3)), response.headers.get("Last-Modified")

    def _fetch(self, index: int) -> None:
        start, end = self._ranges[index]
        if start == end:
            return
        try:
            with requests.get(
                self.url, headers={"Range": f"bytes={start}-{end - 1}"}, stream=True, timeout=(10, 300)
            ) as response:
                expected = f"bytes {start}-{end - 1}/{self.size}"
                if response.status_code != 206 or response.headers.get("Content-Range") != expected:
                    raise RuntimeError(f"range {expected}: HTTP {response.status_code}, {response.headers}")
                if response.headers.get("Last-Modified") != self._last_modified:
                    raise RuntimeError("the bundle tar changed between ranges")
                response.raw.decode_content = False
                offset = start
                while offset < end and not self._closed:
                    data = response.raw.read(min(CHUNK_SIZE, end - offset))
                    if not data:
                        raise RuntimeError(f"range {expected} ended at byte {offset}")
                    view = memoryview(data)
                    while view:  # pwrite may write less than it was given
                        written = os.pwrite(self._fd, view, offset)
                        view = view[written:]
                        offset += written
                    with self._changed:
                        self._written[index] = offset
                        self._changed.notify_all()
        except BaseException as err:  # raised again by read()
            with self._changed:
                self._error = err
                self._changed.notify_all()

    def _available(self, index: int) -> int:
        """Bytes readable at the current position (0 while waiting); raises a thread's error."""
        if self._error is not None:
            raise RuntimeError(f"a ranged GET failed: {self._error}") from self._error
        if not self.pipelined and any(w != e for w, (_, e) in zip(self._written, self._ranges, strict=True)):
            return 0
        return self._written[index] - self._pos

    def read(self, size: int = -1) -> bytes:
        if self._pos >= self.size:
            return b""
        index = next(k for k, (start, end) in enumerate(self._ranges) if start <= self._pos < end)
        with self._changed:
            while not (available := self._available(index)):
                self._changed.wait()
        count = available if size < 0 else min(size, available)
        data = os.pread(self._fd, count, self._pos)
        self._pos += len(data)
        return data

    def close(self) -> None:
        self._closed = True
        for thread in self._threads:
            thread.join()
        os.close(self._fd)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __enter__(self) -> RangedTar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def download_ranged(
    url: str,
    files: list[dict[str, Any]],
    destination: str | os.PathLike[str],
    top_dir: str,
    parts: int,
    *,
    pipelined: bool,
) -> int:
    """Fetch the bundle cart in ``parts`` ranges and publish it verified under ``destination``; returns its size."""
    from airflow_provider_pacifica.cloudevents import files_from_list
    from airflow_provider_pacifica.extraction import extract_cart

    dest = Path(destination).resolve()
    tar_path = dest.parent / f".{dest.name}.ranged.tar"  # the destination's filesystem, like the staging
    with RangedTar(url, tar_path, parts, pipelined=pipelined) as tar:
        extract_cart(tar, files_from_list(files), dest, top_dir)
        return tar.size
