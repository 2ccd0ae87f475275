"""A fault-injecting HTTP proxy on 127.0.0.1 in front of the real Cartd.

Every request is forwarded to Cartd unless a fault is armed:

* ``fail(status, count)``: answer ``status`` (502, 503, ...) to the next ``count`` requests;
* ``cut_next_download(after)``: forward the next cart download but close the connection after
  ``after`` body bytes (a dropped connection in the middle of the tar);
* ``stall_next_download(seconds)``: hold the next download's answer (a read timeout);
* ``lose_next_downloads(count)``: answer 404 to the next ``count`` downloads (a purged cart);
* ``hold_next_download(after)``: forward the next download's first ``after`` body bytes, then
  hold the rest until :meth:`~FaultProxy.release` (a download caught in the middle, e.g. for a
  worker to be killed there); :attr:`~FaultProxy.holding` is set once the bytes went out.

It records what passed through (method, path, Range header) so tests can check the client's
behaviour, e.g. that a resume really asked for ``bytes=N-``.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import requests

from tests.httpserver import Reply, Request, ScriptedServer

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    status: int


HOLD_LIMIT = 600.0  # seconds a held download waits for release() at most


def _held(body: Iterator[bytes], after: int, reached: threading.Event, gate: threading.Event) -> Iterator[bytes]:
    """``body``, stopping after ``after`` bytes until ``gate`` is set (``reached`` says it stopped)."""
    sent, held = 0, False
    for chunk in body:
        if not held and sent + len(chunk) > after:
            cut = after - sent
            yield chunk[:cut]
            held = True
            reached.set()
            gate.wait(HOLD_LIMIT)
            chunk = chunk[cut:]
        sent += len(chunk)
        yield chunk


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.seen: list[Seen] = []
        self._failures: deque[int] = deque()
        self._cuts: deque[int] = deque()
        self._stalls: deque[float] = deque()
        self._lost = 0
        self._holds: deque[int] = deque()
        self.holding = threading.Event()  # a held download sent its first bytes and waits
        self._gate = threading.Event()
        self._lock = threading.Lock()
        self._server = ScriptedServer()
        self._server.handler = self._handle
        self.url = self._server.url
        self.port = self._server.port

    def fail(self, status: int, count: int) -> None:
        with self._lock:
            self._failures.extend([status] * count)

    def cut_next_download(self, after: int) -> None:
        with self._lock:
            self._cuts.append(after)

    def stall_next_download(self, seconds: float) -> None:
        with self._lock:
            self._stalls.append(seconds)

    def lose_next_downloads(self, count: int) -> None:
        with self._lock:
            self._lost += count

    def hold_next_download(self, after: int) -> None:
        with self._lock:
            self.holding.clear()
            self._gate.clear()
            self._holds.append(after)

    def release(self) -> None:
        """Let a held download go on (its client may be gone by then: the proxy then drops it)."""
        self._gate.set()

    def downloads(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "GET" and s.path != "/"]

    def posts(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST"]

    def close(self) -> None:
        self._server.close()

    def _handle(self, request: Request) -> Reply:
        download = request.method == "GET" and request.path != "/"
        with self._lock:
            injected = self._failures.popleft() if self._failures else None
            cut = self._cuts.popleft() if download and self._cuts else None
            stall = self._stalls.popleft() if download and self._stalls else 0.0
            hold = self._holds.popleft() if download and self._holds else None
            lost = download and self._lost > 0
            if lost:
                self._lost -= 1
        if injected is not None:
            self.seen.append(Seen(request.method, request.path, request.headers.get("Range"), injected))
            return Reply(injected, {"Content-Type": "text/plain"}, b"injected fault")
        if lost:
            self.seen.append(Seen(request.method, request.path, request.headers.get("Range"), 404))
            return Reply(404, {"Content-Type": "application/json"}, b'{"message": "gone (injected)"}')
        query = "&".join(f"{k}={v}" for k, values in request.query.items() for v in values)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP | {"host", "content-length"}}
        upstream = requests.request(
            request.method,
            f"{self.upstream}{request.path}" + (f"?{query}" if query else ""),
            headers=headers,
            data=request.body or None,
            stream=True,
            timeout=120,
            allow_redirects=False,
        )
        self.seen.append(Seen(request.method, request.path, request.headers.get("Range"), upstream.status_code))
        reply_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        sized = "Content-Length" in upstream.headers
        if request.method == "HEAD":
            upstream.close()
            reply_headers.pop("Content-Length", None)
            return Reply(upstream.status_code, reply_headers, b"")
        body = upstream.raw.stream(65536, decode_content=False)
        if hold is not None:
            body = _held(body, hold, self.holding, self._gate)
        return Reply(upstream.status_code, reply_headers, body, chunked=not sized, cut_after=cut, delay=stall)
