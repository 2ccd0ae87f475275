"""Hook for Pacifica Cartd: create, wait for, download and delete carts.

The protocol itself (states, messages, uids) is in :mod:`airflow_provider_pacifica.carts`; the
async side shared by triggers in :mod:`.cartd_async`; the resumable tar stream in
:mod:`.cart_reader`. Workers use the synchronous ``requests`` methods, triggers
:meth:`PacificaCartdHook.async_cart_status`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import requests
from urllib3.util.retry import Retry

from airflow_provider_pacifica.backoff import MAX_BACKOFF, Backoff
from airflow_provider_pacifica.carts import (
    TRANSIENT_STATUS_CODES,
    CartStatus,
    error_for_status,
    parse_head_response,
    shorten,
    validate_cart_uid,
)
from airflow_provider_pacifica.cloudevents import CartFile, files_from_list
from airflow_provider_pacifica.connection import CONN_TYPE, CartdConnectionConfig
from airflow_provider_pacifica.exceptions import (
    CartdError,
    CartdTransientError,
    CartFailedError,
    CartLostError,
    CartNotFoundError,
    CartNotReadyError,
    CartWaitTimeoutError,
    DownloadCancelledError,
    InvalidInputError,
    StreamError,
)
from airflow_provider_pacifica.extraction import extract_cart
from airflow_provider_pacifica.hooks import cartd_async
from airflow_provider_pacifica.hooks.cart_reader import CartReader
from airflow_provider_pacifica.hooks.service import PacificaServiceHook
from airflow_provider_pacifica.objectstore import download_to_store
from airflow_provider_pacifica.storage import StoreDestination, resolve_destination

if TYPE_CHECKING:
    import os
    from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence

    import aiohttp
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_pacifica.extraction import ExtractedFile, Progress
    from airflow_provider_pacifica.storage import Destination

# A POST that reached Cartd may have created the cart: urllib3 re-sends it after a connect error
# (it never left) and, by this list, after an answer saying Cartd did not process it.
POST_RETRY_STATUS_CODES = frozenset({429, 503})
MAX_ERROR_BODY = 64 * 1024  # bytes of an error page read for its message
RECREATED_SUFFIX = "-r1"  # marks the one re-creation of a cart that Cartd lost
USER_AGENT = cartd_async.USER_AGENT

log = logging.getLogger(__name__)


class CartdRetry(Retry):
    """urllib3's retry policy, with Cartd's rule for POST and a warning for every retry.

    Idempotent requests are retried after connection errors, read timeouts and 429/502/503/504;
    a POST only when it never reached Cartd (connect errors) or on 429/503. Retry-After is
    honoured up to twice the backoff cap.
    """

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if method == "POST":
            return status_code in POST_RETRY_STATUS_CODES and bool(self.total)
        return super().is_retry(method, status_code, has_retry_after)

    def get_retry_after(self, response: Any) -> float | None:
        seconds = super().get_retry_after(response)
        return None if seconds is None else min(seconds, 2 * MAX_BACKOFF)

    def increment(  # type: ignore[override]  # the same parameters, passed through
        self, method: str | None = None, url: str | None = None, *args: Any, **kwargs: Any
    ) -> Retry:
        new = super().increment(method, url, *args, **kwargs)
        last = new.history[-1] if new.history else None
        reason = f"HTTP {last.status}" if last and last.status else type(last.error).__name__ if last else "?"
        log.warning("%s %s: %s; retrying (%d left)", method, url, reason, new.total or 0)
        return new


def retry_policy(config: CartdConnectionConfig) -> CartdRetry:
    """The HTTP retry policy of a connection: ``max_retries`` transient faults, backoff from ``retry_backoff``."""
    return CartdRetry(
        total=config.max_retries,
        connect=config.max_retries,
        read=config.max_retries,
        status=config.max_retries,
        other=0,  # TLS and proxy failures do not pass by waiting
        redirect=0,
        status_forcelist=TRANSIENT_STATUS_CODES,
        allowed_methods=frozenset({"GET", "HEAD", "DELETE"}),
        backoff_factor=config.retry_backoff,
        backoff_max=MAX_BACKOFF,
        raise_on_status=False,  # the last answer is returned and turned into an error here
        respect_retry_after_header=True,
    )


class PacificaCartdHook(PacificaServiceHook[CartdConnectionConfig]):
    """Talk to a Pacifica Cartd through an Airflow connection of type ``pacifica_cartd``.

    The connection holds everything: host, port and scheme (``http``/``https``), basic auth
    (login/password) or a bearer ``token``, ``client_cert``/``client_key`` for TLS client auth,
    ``ca_bundle`` or ``verify``, ``connect_timeout``/``read_timeout``, ``proxies``, and
    ``max_retries``/``retry_backoff`` for transient faults. Unknown extras are refused.

    The connection is read once per hook and the HTTP session opened once; :meth:`close` ends it.

    :param pacifica_conn_id: the Airflow connection id.
    """

    conn_name_attr = "pacifica_conn_id"
    default_conn_name = "pacifica_cartd_default"
    conn_type = CONN_TYPE
    hook_name = "Pacifica Cartd"

    config_class = CartdConnectionConfig

    def __init__(self, pacifica_conn_id: str = default_conn_name) -> None:
        super().__init__(pacifica_conn_id)
        self.pacifica_conn_id = pacifica_conn_id
        self._session: requests.Session | None = None
        self._cancelled = threading.Event()
        self._readers: set[CartReader] = set()

    def get_conn(self) -> requests.Session:
        """A new ``requests.Session`` with the connection's auth, TLS, proxies and retry policy."""
        return self.new_session(retry_policy(self.config))

    @property
    def session(self) -> requests.Session:
        """The hook's session, opened on first use."""
        if self._session is None:
            self._session = self.get_conn()
        return self._session

    def close(self) -> None:
        """Close pooled connections (the hook stays usable: a later call opens a new session)."""
        if self._session is not None:
            self._session.close()
            self._session = None

    # -- the Cartd protocol (sync, for workers) -------------------------------------------

    def create_cart(
        self,
        files: Iterable[CartFile | Mapping[str, Any]],
        cart_uid: str | None = None,
        bundle: bool = False,
    ) -> str:
        """Ask Cartd to stage ``files`` into a cart; returns the cart uid.

        :param files: :class:`CartFile` values or dicts with ``id``, ``path``, ``hashtype``,
            ``hashsum``; they are validated first (no ``..``, no absolute path, no duplicate).
        :param cart_uid: the uid to use; a new random one when not given. Re-posting an
            existing uid makes Cartd stage the cart again.
        :param bundle: ask Cartd to build the tar ahead of time (bundle mode): the download
            then has a Content-Length and supports Range, and its top directory is the uid.
        """
        cart_files = files_from_list(files)
        cart_uid = cart_uid or uuid.uuid4().hex
        validate_cart_uid(cart_uid)
        body = {"fileids": [f.to_fileid() for f in cart_files], "bundle": bool(bundle)}
        with self._request("POST", cart_uid, json=body, action=f"create cart {cart_uid}") as response:
            if response.status_code != 201:
                raise error_for_status(response.status_code, f"create cart {cart_uid}", _error_text(response))
        self.log.info("Created cart %s with %d file(s)%s", cart_uid, len(cart_files), " (bundle)" * bundle)
        return cart_uid

    def cart_status(self, cart_uid: str) -> CartStatus:
        """The cart's state: ready, error, missing, or pending (staging, waiting, ...)."""
        validate_cart_uid(cart_uid)
        # HEAD with any query string is a 404 without X-Pacifica headers in Cartd 0.7.
        with self._request("HEAD", cart_uid, action=f"HEAD cart {cart_uid}") as response:
            return parse_head_response(cart_uid, response.status_code, response.headers)

    @contextlib.contextmanager
    def open_cart_stream(
        self, cart_uid: str, filename: str = "data.tar", offset: int = 0
    ) -> Iterator[requests.Response]:
        """Open ``GET /<uid>?filename=<name>`` as a stream; the body is never read into memory.

        Read it from ``response.raw``. With ``offset`` a ``Range`` request is made: the status
        is then 206 when Cartd honoured it (bundle mode) and 200 when it sent the whole tar.

        :raises CartNotReadyError: Cartd answered 202 (staging, or in error: check the status).
        :raises CartNotFoundError: Cartd answered 404.
        """
        validate_cart_uid(cart_uid)
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        action = f"download cart {cart_uid}"
        with self._request("GET", cart_uid, params={"filename": filename}, headers=headers, action=action) as response:
            if response.status_code == 202:
                raise CartNotReadyError(f"cart {cart_uid} is not ready for download", 202)
            if response.status_code == 404:
                raise CartNotFoundError(f"cart {cart_uid} does not exist or was deleted", 404)
            if response.status_code not in (200, 206):
                raise error_for_status(response.status_code, action, _error_text(response))
            response.raw.decode_content = False  # the tar bytes exactly as sent
            yield response

    @contextlib.contextmanager
    def read_cart(self, cart_uid: str, filename: str = "data.tar", max_resumes: int = 5) -> Iterator[CartReader]:
        """Open the cart's tar as a readable stream that resumes after a dropped connection
        in bundle mode (see :class:`CartReader`)."""
        reader = CartReader(self, cart_uid, filename, max_resumes)
        self._readers.add(reader)
        try:
            if self._cancelled.is_set():
                raise DownloadCancelledError(f"the download of cart {cart_uid} was cancelled")
            reader.open()
            yield reader
        finally:
            self._readers.discard(reader)
            reader.close()

    def cancel(self) -> None:
        """Stop the downloads of this hook (from another thread, or a signal handler): their
        streams are closed, their staging removed, and ``download_cart`` raises
        ``DownloadCancelledError`` instead of starting again."""
        self._cancelled.set()
        for reader in list(self._readers):
            reader.close()

    def delete_cart(self, cart_uid: str) -> bool:
        """Delete the cart; ``False`` when Cartd had no such cart (already gone)."""
        validate_cart_uid(cart_uid)
        with self._request("DELETE", cart_uid, action=f"delete cart {cart_uid}") as response:
            if response.status_code == 200:
                self.log.info("Deleted cart %s", cart_uid)
                return True
            if response.status_code == 404:
                return False
            raise error_for_status(response.status_code, f"delete cart {cart_uid}", _error_text(response))

    def test_connection(self) -> tuple[bool, str]:
        """``GET /`` must answer Cartd's health message."""
        try:
            with self._request("GET", "", action="test connection") as response:
                text = _bounded_body(response)
                if response.status_code != 200:
                    return False, f"Cartd answered HTTP {response.status_code}: {shorten(text)}"
            message = str(json.loads(text).get("message", ""))
            return True, message or "Cartd answered"
        except (CartdError, InvalidInputError, ValueError, AttributeError) as err:
            return False, str(err)

    def _request(self, method: str, cart_uid: str, *, action: str, **kwargs: Any) -> requests.Response:
        """One HTTP call with the connection's timeouts and retry policy; the body is left unread."""
        config = self.config
        url = config.url(cart_uid) if cart_uid else config.base_url + "/"
        try:
            return self.session.request(method, url, timeout=config.timeout, stream=True, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as err:
            raise CartdTransientError(f"{action}: {type(err).__name__}: {shorten(str(err))}") from err
        except requests.RequestException as err:
            raise CartdError(f"{action}: {type(err).__name__}: {shorten(str(err))}") from err

    # -- async, for triggers --------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def async_session(self) -> AsyncIterator[aiohttp.ClientSession]:
        """An aiohttp session with the connection's settings, shared within the event loop."""
        async with cartd_async.shared_session(await self.aget_config()) as session:
            yield session

    async def async_cart_status(self, cart_uid: str, session: aiohttp.ClientSession | None = None) -> CartStatus:
        """Like :meth:`cart_status`, without blocking; a transient fault raises ``CartdTransientError``.

        It does not retry: the caller (a trigger) owns the backoff and counts failures.
        """
        config = await self.aget_config()
        if session is None:
            async with self.async_session() as own_session:
                return await cartd_async.head_cart(own_session, config, cart_uid)
        return await cartd_async.head_cart(session, config, cart_uid)

    # -- whole steps, for operators ---------------------------------------------------------

    def ensure_cart(self, cart_uid: str, files: Sequence[CartFile], *, bundle: bool = False) -> CartStatus:
        """The cart ``cart_uid`` of ``files``: reused when Cartd still has it (an earlier attempt
        of the same task), created when it has not or when it had failed."""
        status = self.cart_status(cart_uid)
        if status.ready or status.pending:
            self.log.info("Reusing cart %s (%s) from an earlier attempt", cart_uid, status.state)
            return status
        if status.failed:
            self.log.warning("Cart %s of an earlier attempt failed (%s); staging it again", cart_uid, status.message)
        self.create_cart(files, cart_uid=cart_uid, bundle=bundle)
        return self.cart_status(cart_uid)

    def recreate_cart(self, cart_uid: str, files: Sequence[CartFile], *, bundle: bool = False, reason: str = "") -> str:
        """Stage a cart that Cartd lost once more, under ``<uid>-r1``; returns that uid.

        :param reason: how it was lost, for the log and the error.
        :raises CartLostError: ``cart_uid`` is already the re-created one: it vanished twice.
        """
        if cart_uid.endswith(RECREATED_SUFFIX):
            raise CartLostError(f"cart {cart_uid} vanished twice; giving up ({reason or 'no reason given'})")
        self.log.warning("Cart %s vanished (%s); staging it once more", cart_uid, reason or "no reason given")
        return self.create_cart(files, cart_uid=cart_uid + RECREATED_SUFFIX, bundle=bundle)

    def wait_for_cart(
        self,
        cart_uid: str,
        *,
        timeout: float,
        poll_interval: float = 5.0,
        max_poll_interval: float = 60.0,
    ) -> CartStatus:
        """Poll until the cart is ready, on this worker, with a growing, capped interval.

        :raises CartFailedError: Cartd failed the cart (``transient`` says whether a retry may help).
        :raises CartNotFoundError: the cart vanished (purged by Cartd's LRU, or deleted).
        :raises CartWaitTimeoutError: not ready within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        polls = Backoff(poll_interval, cap=max_poll_interval, factor=1.5)
        attempt = 0
        while True:
            status = self.cart_status(cart_uid)
            if status.ready:
                self.log.info("Cart %s is ready", cart_uid)
                return status
            if status.failed:
                raise CartFailedError(f"cart {cart_uid} failed: {status.message}", transient=status.transient)
            if status.missing:
                raise CartNotFoundError(f"cart {cart_uid} vanished while waiting: {status.message}", 404)
            delay = polls.delay(attempt)
            if time.monotonic() + delay > deadline:
                raise CartWaitTimeoutError(f"cart {cart_uid} was not ready after {timeout:.0f}s ({status.state})")
            self.log.info("Cart %s is %s; next poll in %.1fs", cart_uid, status.state, delay)
            time.sleep(delay)
            attempt += 1

    def download_cart(
        self,
        cart_uid: str,
        files: Sequence[CartFile],
        destination: str | os.PathLike[str] | ObjectStoragePath | Destination,
        *,
        bundle: bool = False,
        attempts: int = 3,
        max_resumes: int = 5,
        on_progress: Callable[[Progress], None] | None = None,
        progress_interval: float = 5.0,
        durable: bool = False,
        staging_key: str | None = None,
    ) -> list[ExtractedFile]:
        """Stream the ready cart, verify every file and publish them under ``destination``.

        ``destination`` is an absolute local path or an ``ObjectStoragePath`` (see
        :func:`~airflow_provider_pacifica.storage.resolve_destination`; a relative path or a URL
        string raises ``InvalidInputError``). A broken stream is resumed (bundle mode, up to
        ``max_resumes``) or the download started again (up to ``attempts``); see
        :func:`~airflow_provider_pacifica.extraction.extract_cart` and
        :func:`~airflow_provider_pacifica.objectstore.download_to_store` for what is verified
        and how it is published. ``durable`` applies to local destinations (an object store
        acknowledges a write once it is stored).

        :raises CartFailedError: the cart turned to error before its download began.
        :raises CartNotFoundError: the cart vanished.
        :raises CartdTransientError: the download broke ``attempts`` times, or Cartd was unreachable.
        :raises ExtractionError: a hostile or wrong tar, or a destination that cannot take it.
        """
        target = resolve_destination(destination)
        top_dir = cart_uid if bundle else "data"  # Cartd's top directory: the uid, or ?filename= less .tar
        for attempt in range(1, attempts + 1):
            try:
                with self.read_cart(cart_uid, filename=f"{top_dir}.tar", max_resumes=max_resumes) as reader:
                    if isinstance(target, StoreDestination):
                        return download_to_store(
                            reader,
                            files,
                            target.fs,
                            target.root,
                            top_dir,
                            cart_key=staging_key or cart_uid,
                            conn_id=target.conn_id,
                            on_progress=on_progress,
                            progress_interval=progress_interval,
                        )
                    return extract_cart(
                        reader,
                        files,
                        target,
                        top_dir,
                        on_progress=on_progress,
                        progress_interval=progress_interval,
                        durable=durable,
                        staging_key=staging_key or cart_uid,
                    )
            except CartNotReadyError as err:
                status = self.cart_status(cart_uid)
                if status.failed:  # between the status check and the GET
                    raise CartFailedError(
                        f"cart {cart_uid} failed: {status.message}", transient=status.transient
                    ) from err
                raise CartdTransientError(
                    f"cart {cart_uid} is not downloadable ({status.state}: {status.message})"
                ) from err
            except (StreamError, CartdTransientError) as err:
                if self._cancelled.is_set():  # cancel() closed the stream under the download
                    raise DownloadCancelledError(f"the download of cart {cart_uid} was cancelled") from err
                if attempt == attempts:
                    raise CartdTransientError(f"cart {cart_uid}: download failed {attempt} times: {err}") from err
                self.log.warning("Cart %s: download broke (%s); restarting (%d/%d)", cart_uid, err, attempt, attempts)
            except CartdError as err:  # cancel() may close the stream while it is being opened
                if self._cancelled.is_set():
                    raise DownloadCancelledError(f"the download of cart {cart_uid} was cancelled") from err
                raise
        raise InvalidInputError(f"download attempts must be at least 1, got {attempts}")

    def find_failed_files(
        self, cart_uid: str, files: Sequence[CartFile], *, timeout: float = 300.0
    ) -> list[tuple[CartFile, str]]:
        """Stage each file in a probe cart of its own, to name the files that make a cart fail.

        Cartd's message says what failed ("File hash does not match provided hash") but not for
        which file. The probe carts are always deleted. Costly (every file staged once more and
        polled from this worker): meant for small carts.
        """
        probes = {f"{cart_uid}-probe-{index}": file for index, file in enumerate(files)}
        culprits: list[tuple[CartFile, str]] = []
        pending = dict(probes)
        deadline = time.monotonic() + timeout
        polls = Backoff(0.5, cap=5.0, factor=1.5)
        try:
            for probe_uid, file in probes.items():
                self.create_cart([file], cart_uid=probe_uid)
            attempt = 0
            while pending and time.monotonic() < deadline:
                for probe_uid, file in list(pending.items()):
                    status = self.cart_status(probe_uid)
                    if status.pending:
                        continue
                    del pending[probe_uid]
                    if not status.ready:
                        culprits.append((file, status.message or status.state))
                if pending:
                    time.sleep(polls.delay(attempt))
                    attempt += 1
        finally:
            self.delete_carts(*probes)
        return sorted(culprits, key=lambda culprit: files.index(culprit[0]))

    def delete_carts(self, *cart_uids: str) -> None:
        """Delete carts that are no longer needed; failures are logged (Cartd's LRU reclaims them)."""
        for cart_uid in cart_uids:
            try:
                self.delete_cart(cart_uid)
            except Exception as err:  # a clean-up must never hide the outcome it follows
                self.log.warning("Could not delete cart %s: %s", cart_uid, err)


def _bounded_body(response: requests.Response) -> str:
    """At most ``MAX_ERROR_BODY`` bytes of the body, as text: an error page may be anything."""
    try:
        data = response.raw.read(MAX_ERROR_BODY, decode_content=True)
    except Exception:  # urllib3's errors are not all RequestExceptions; the message is a courtesy
        return ""
    return data.decode(response.encoding or "utf-8", errors="replace")


def _error_text(response: requests.Response) -> str:
    """Cartd's error message from a JSON error page (padded with spaces), or the raw text."""
    text = _bounded_body(response).strip()
    try:
        body = json.loads(text)
    except ValueError:
        return shorten(text)
    if isinstance(body, dict) and body.get("message"):
        return shorten(str(body["message"]))
    return shorten(text)
