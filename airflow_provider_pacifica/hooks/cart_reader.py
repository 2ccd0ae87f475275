"""A cart's tar as a readable stream that resumes a dropped bundle-mode download with ``Range``."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING

from airflow_provider_pacifica.backoff import Backoff
from airflow_provider_pacifica.exceptions import CartdError, CartdTransientError

if TYPE_CHECKING:
    import requests

    from airflow_provider_pacifica.hooks.cartd import PacificaCartdHook


class CartReader:
    """A file-like ``read()`` over ``GET /<uid>``; see :meth:`PacificaCartdHook.read_cart`.

    When Cartd serves a sized tar with ``Accept-Ranges: bytes`` (bundle mode), a connection reset
    or read timeout is resumed from the last byte received, up to ``max_resumes`` times, after
    checking the tar is still the same one (size and ``Last-Modified``: Cartd ignores
    ``If-Range``). A streaming-mode tar cannot be resumed: its failures surface.

    ``read`` runs in the download's prefetch thread while ``close`` may come from the task's own
    thread: a lock makes sure that no response is opened after ``close``.

    :param hook: the hook whose session and connection are used.
    :param cart_uid: the cart.
    :param filename: the ``?filename=`` of the download.
    :param max_resumes: Range requests allowed before the broken download's error surfaces.
    """

    def __init__(self, hook: PacificaCartdHook, cart_uid: str, filename: str, max_resumes: int) -> None:
        self.hook = hook
        self.cart_uid = cart_uid
        self.filename = filename
        self.max_resumes = max_resumes
        self.offset = 0
        self.resumes = 0
        self.size: int | None = None
        self._identity: tuple[str | None, str | None] = (None, None)
        self._lock = threading.RLock()  # close() may come from a signal handler (on_kill) in any thread
        self._stack = contextlib.ExitStack()
        self._response: requests.Response | None = None
        self._closed = False

    @property
    def resumable(self) -> bool:
        return self.size is not None and self._identity[0] == "bytes"

    def open(self) -> None:
        stack = contextlib.ExitStack()
        response = stack.enter_context(self.hook.open_cart_stream(self.cart_uid, self.filename))
        length = response.headers.get("Content-Length")
        self.size = int(length) if length and length.isdigit() else None
        self._identity = (response.headers.get("Accept-Ranges"), response.headers.get("Last-Modified"))
        self._install(stack, response)

    def read(self, size: int = -1) -> bytes:
        while True:
            response = self._response
            if response is None:
                raise CartdError(f"cart {self.cart_uid}: the download is closed")
            try:
                data = response.raw.read(size)
            except Exception as err:  # urllib3 ProtocolError / ReadTimeoutError, OSError
                if not self._can_resume():
                    raise
                self._resume(err)
                continue
            if not data and size != 0 and self.size is not None and self.offset < self.size:
                if not self._can_resume():
                    raise CartdTransientError(
                        f"cart {self.cart_uid}: stream ended at byte {self.offset} of {self.size}"
                    )
                self._resume(EOFError(f"stream ended at byte {self.offset}"))
                continue
            self.offset += len(data)
            return data

    def close(self) -> None:
        with self._lock:
            self._closed = True
            stack, self._stack, self._response = self._stack, contextlib.ExitStack(), None
        stack.close()

    def _can_resume(self) -> bool:
        return self.resumable and self.resumes < self.max_resumes and not self._closed

    def _install(self, stack: contextlib.ExitStack, response: requests.Response) -> None:
        with self._lock:
            if self._closed:
                stack.close()
                raise CartdError(f"cart {self.cart_uid}: the download is closed")
            old, self._stack, self._response = self._stack, stack, response
        old.close()

    def _resume(self, error: BaseException) -> None:
        self.resumes += 1
        self.hook.log.warning(
            "Cart %s: download broke at byte %d of %s (%s); resuming (%d/%d)",
            self.cart_uid,
            self.offset,
            self.size,
            error,
            self.resumes,
            self.max_resumes,
        )
        with self._lock:
            old, self._stack, self._response = self._stack, contextlib.ExitStack(), None
        old.close()
        time.sleep(Backoff(self.hook.config.retry_backoff).delay(self.resumes - 1))
        stack = contextlib.ExitStack()
        response = stack.enter_context(self.hook.open_cart_stream(self.cart_uid, self.filename, offset=self.offset))
        expected_range = f"bytes {self.offset}-{(self.size or 0) - 1}/{self.size}"
        same_tar = response.headers.get("Last-Modified") == self._identity[1]
        if response.status_code != 206 or response.headers.get("Content-Range") != expected_range or not same_tar:
            stack.close()
            raise CartdTransientError(
                f"cart {self.cart_uid}: cannot resume at byte {self.offset} (HTTP {response.status_code}, "
                f"Content-Range {response.headers.get('Content-Range')!r}); the download must restart"
            )
        self._install(stack, response)
