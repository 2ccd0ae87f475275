"""A small scripted HTTP server on 127.0.0.1 for unit tests.

Each test sets ``server.handler`` to a function ``(request) -> Reply``; every request is recorded
with its headers so tests can check what the client really sent. Replies can stream a body in
chunks, cut the connection after some bytes, or stall, which is how faults are simulated.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    target: str = ""  # the request line's target as sent: an absolute URL when it came through a proxy


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | Iterable[bytes] = b""
    delay: float = 0.0  # seconds to stall before answering
    cut_after: int | None = None  # close the socket after this many body bytes
    drop: bool = False  # close the socket without answering (the request was received)
    chunked: bool = False  # Transfer-Encoding: chunked, as Cartd streams carts


def cartd_head(state: str, message: str = "", status: int | None = None) -> Reply:
    """A Cartd-like HEAD answer."""
    code = status or {"missing": 404, "error": 500}.get(state, 204)
    header_state = "error" if state == "missing" else state
    return Reply(code, {"X-Pacifica-Status": header_state, "X-Pacifica-Message": message})


class ScriptedServer:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.handler: Callable[[Request], Reply] = lambda request: Reply(404)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                request = Request(
                    self.command, parts.path, parse_qs(parts.query), dict(self.headers.items()), body, self.path
                )
                server.requests.append(request)
                reply = server.handler(request)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.drop:
                    self.close_connection = True
                    return
                chunks = [reply.body] if isinstance(reply.body, bytes) else reply.body
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if reply.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                elif isinstance(reply.body, bytes) and "Content-Length" not in reply.headers:
                    self.send_header("Content-Length", str(len(reply.body)))
                if reply.cut_after is not None:
                    self.send_header("Connection", "close")
                self.end_headers()
                if self.command == "HEAD":
                    return
                sent = 0
                for chunk in chunks:
                    if reply.cut_after is not None and sent + len(chunk) >= reply.cut_after:
                        chunk = chunk[: reply.cut_after - sent]
                        self._write(chunk, reply.chunked)
                        self.close_connection = True
                        self.wfile.flush()
                        return  # no terminating chunk: the stream is cut
                    self._write(chunk, reply.chunked)
                    sent += len(chunk)
                if reply.chunked:
                    self.wfile.write(b"0\r\n\r\n")

            def _write(self, chunk: bytes, chunked: bool) -> None:
                if not chunk:
                    return
                if chunked:
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                else:
                    self.wfile.write(chunk)

            do_GET = do_HEAD = do_POST = do_DELETE = do_PUT = _serve

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()

    def sequence(self, *replies: Reply) -> None:
        """Answer with these replies in order, repeating the last one."""
        queue = list(replies)

        def handler(request: Request) -> Reply:
            return queue.pop(0) if len(queue) > 1 else queue[0]

        self.handler = handler

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
