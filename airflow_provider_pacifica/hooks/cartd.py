"""Hook for Pacifica Cartd: create, watch, download and delete carts.

Cartd's REST protocol (pacifica.md §2): ``POST /<uid>`` creates a cart (201), ``HEAD /<uid>``
reports its state in ``X-Pacifica-Status`` / ``X-Pacifica-Message`` (204 alive, 404 unknown,
500 failed), ``GET /<uid>?filename=<name>`` streams the tar (202 while not ready), ``DELETE /<uid>``
removes it. Workers use the synchronous ``requests`` methods; triggers use :meth:`async_cart_status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import requests
from airflow.providers.http.hooks.http import HttpHook
from requests.auth import HTTPBasicAuth

from airflow_provider_pacifica import __version__
from airflow_provider_pacifica.cloudevents import CartFile, files_from_list
from airflow_provider_pacifica.connection import CONN_TYPE, CartdConnectionConfig
from airflow_provider_pacifica.exceptions import (
    CartdError,
    CartdTransientError,
    CartNotFoundError,
    CartNotReadyError,
    InvalidInputError,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Iterator, Mapping

    from airflow.sdk import Connection

TRANSIENT_STATUS_CODES = frozenset({429, 502, 503, 504})
# A POST that reached Cartd may have created the cart: re-send it only when the server says it
# did not process it (429, 503) or the connection never opened.
POST_RETRY_STATUS_CODES = frozenset({429, 503})
MAX_MESSAGE_LENGTH = 1000  # X-Pacifica-Message can hold a 3 KB remote traceback
MAX_BACKOFF = 30.0
USER_AGENT = f"airflow-provider-pacifica/{__version__}"


@dataclass(frozen=True)
class CartStatus:
    """What ``HEAD /<uid>`` said about a cart.

    :param cart_uid: the cart.
    :param state: ``ready``, ``error``, ``missing``, or what Cartd reported while it works
        (``staging``, ``waiting``, or any state it may add: unknown states count as pending).
    :param message: Cartd's ``X-Pacifica-Message``, shortened to 1000 characters.
    """

    cart_uid: str
    state: str
    message: str = ""

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def failed(self) -> bool:
        return self.state == "error"

    @property
    def missing(self) -> bool:
        return self.state == "missing"

    @property
    def pending(self) -> bool:
        return self.state not in ("ready", "error", "missing")


def shorten(message: str, limit: int = MAX_MESSAGE_LENGTH) -> str:
    """One line of at most ``limit`` characters (Cartd's messages carry tracebacks)."""
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 1] + "…"


def parse_head_response(cart_uid: str, status_code: int, headers: Mapping[str, str]) -> CartStatus:
    """Turn a ``HEAD /<uid>`` answer into a :class:`CartStatus`, or raise ``CartdError``."""
    state = (headers.get("X-Pacifica-Status") or "").strip().lower()
    message = shorten(headers.get("X-Pacifica-Message") or "")
    if status_code == 204 and state:
        if state in ("error", "missing"):  # a 204 never carries these; keep them distinct from 500/404
            state = "staging"
        return CartStatus(cart_uid, state, message)
    if status_code == 404:
        return CartStatus(cart_uid, "missing", message or f"No cart with uid {cart_uid} found")
    if status_code == 500 and state == "error":
        return CartStatus(cart_uid, "error", message or "Cartd reports the cart failed")
    raise error_for_status(status_code, f"HEAD cart {cart_uid}", message)


def error_for_status(status_code: int, action: str, detail: str = "") -> CartdError:
    """The exception type for an HTTP status that the protocol does not expect."""
    text = f"{action}: Cartd answered HTTP {status_code}" + (f": {shorten(detail)}" if detail else "")
    if status_code in TRANSIENT_STATUS_CODES:
        return CartdTransientError(text, status_code)
    if status_code in (401, 403):
        return CartdError(text + " (check the connection's credentials)", status_code)
    return CartdError(text, status_code)


def _backoff(attempt: int, base: float, retry_after: str | None = None) -> float:
    if retry_after and retry_after.strip().isdigit():
        return min(float(retry_after), 2 * MAX_BACKOFF)
    return min(base * 2**attempt, MAX_BACKOFF)


def _is_connect_failure(error: requests.RequestException) -> bool:
    """True when the request surely never reached the server (safe to re-send a POST)."""
    if isinstance(error, requests.ConnectTimeout):
        return True
    if isinstance(error, requests.ConnectionError) and not isinstance(error, requests.ReadTimeout):
        text = repr(error)
        return "NewConnectionError" in text or "Connection refused" in text
    return False


class PacificaCartdHook(HttpHook):
    """Talk to a Pacifica Cartd through an Airflow connection of type ``pacifica_cartd``.

    The connection holds everything: host, port and scheme (``http``/``https``), basic auth
    (login/password) or a bearer ``token``, ``client_cert``/``client_key`` for TLS client auth,
    ``ca_bundle`` or ``verify``, ``connect_timeout``/``read_timeout``, ``proxies``, and
    ``max_retries``/``retry_backoff`` for transient faults. Unknown extras are refused.

    :param pacifica_conn_id: the Airflow connection id.
    """

    conn_name_attr = "pacifica_conn_id"
    default_conn_name = "pacifica_cartd_default"
    conn_type = CONN_TYPE
    hook_name = "Pacifica Cartd"

    def __init__(self, pacifica_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(method="HEAD", http_conn_id=pacifica_conn_id, **kwargs)
        self.pacifica_conn_id = pacifica_conn_id
        self._config: CartdConnectionConfig | None = None
        self._session: requests.Session | None = None

    # -- configuration --------------------------------------------------------------------

    @staticmethod
    def config_from_connection(conn: Connection, extra: Mapping[str, Any]) -> CartdConnectionConfig:
        """Validate a connection; ``extra`` is passed in because sync and async code read it differently."""
        try:
            return CartdConnectionConfig.from_connection_fields(
                host=conn.host,
                port=conn.port,
                schema=conn.schema,
                login=conn.login,
                password=conn.password,
                extra=extra,
            )
        except InvalidInputError as err:
            raise InvalidInputError(f"connection {conn.conn_id!r}: {err}") from None

    @property
    def config(self) -> CartdConnectionConfig:
        """The validated connection (read once per hook)."""
        if self._config is None:
            conn = self.get_connection(self.pacifica_conn_id)
            self._config = self.config_from_connection(conn, conn.extra_dejson)
            self._mask(self._config)
        return self._config

    async def aget_config(self) -> CartdConnectionConfig:
        """The validated connection, fetched without blocking the event loop (for triggers).

        A triggerer may run a thousand cart waits on one connection: the validated config is
        shared for ``ASYNC_CONFIG_TTL`` seconds per connection id and event loop, so that each
        trigger does not fetch and parse the connection again.
        """
        if self._config is None:
            configs = _ASYNC_CONFIGS.setdefault(asyncio.get_running_loop(), {})
            cached = configs.get(self.pacifica_conn_id)
            if cached is None or cached[0] <= time.monotonic() or (cached[1].done() and cached[1].exception()):
                # One fetch for all the triggers that start together; they await the same task.
                cached = (time.monotonic() + ASYNC_CONFIG_TTL, asyncio.ensure_future(self._fetch_config()))
                configs[self.pacifica_conn_id] = cached
            self._config = await asyncio.shield(cached[1])
        return self._config

    async def _fetch_config(self) -> CartdConnectionConfig:
        conn = await self.aget_connection(self.pacifica_conn_id)
        config = self.config_from_connection(conn, await conn.aextra_dejson())
        self._mask(config)
        return config

    @staticmethod
    def _mask(config: CartdConnectionConfig) -> None:
        # The password and extras named like secrets are masked by Airflow already; a client
        # key's path says where the key lives, so it is kept out of logs too.
        from airflow.sdk.log import mask_secret

        for secret in (config.password, config.token, config.client_key):
            if secret:
                mask_secret(secret)

    def get_conn(
        self, headers: dict[Any, Any] | None = None, extra_options: dict[str, Any] | None = None
    ) -> requests.Session:
        """A ``requests.Session`` with the connection's auth, TLS and proxies (extras never become headers)."""
        config = self.config
        config.check_files()
        self.base_url = config.base_url
        session = requests.Session()
        # The connection decides: with trust_env, requests lets HTTPS_PROXY and REQUESTS_CA_BUNDLE
        # override the session's own settings (and reads ~/.netrc). Both are honoured, in their place,
        # by config.proxy_url() and config.ca_file when the connection does not say.
        session.trust_env = False
        session.headers["User-Agent"] = USER_AGENT
        session.headers.update(config.auth_headers())
        if config.login:
            session.auth = HTTPBasicAuth(config.login, config.password or "")
        session.verify = config.verify_option
        session.cert = config.cert
        if proxy := config.proxy_url():
            session.proxies = {"http": proxy, "https": proxy}
        session = self._configure_session_from_mount_adapters(session)
        if headers:
            session.headers.update(headers)
        return session

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            self._session = self.get_conn()
        return self._session

    def close(self) -> None:
        """Close pooled connections (the hook stays usable)."""
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
        response = self._request("POST", cart_uid, json=body, action=f"create cart {cart_uid}")
        with response:
            if response.status_code != 201:
                raise error_for_status(response.status_code, f"create cart {cart_uid}", _error_text(response))
        self.log.info("Created cart %s with %d file(s)%s", cart_uid, len(cart_files), " (bundle)" * bundle)
        return cart_uid

    def cart_status(self, cart_uid: str) -> CartStatus:
        """The cart's state: ready, error, missing, or pending (staging, waiting, ...)."""
        validate_cart_uid(cart_uid)
        # HEAD with any query string is a 404 without X-Pacifica headers in Cartd 0.7.
        response = self._request("HEAD", cart_uid, action=f"HEAD cart {cart_uid}")
        with response:
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
        response = self._request(
            "GET",
            cart_uid,
            params={"filename": filename},
            headers=headers,
            stream=True,
            action=f"download cart {cart_uid}",
        )
        try:
            if response.status_code == 202:
                raise CartNotReadyError(f"cart {cart_uid} is not ready for download", 202)
            if response.status_code == 404:
                raise CartNotFoundError(f"cart {cart_uid} does not exist or was deleted", 404)
            if response.status_code not in (200, 206):
                raise error_for_status(response.status_code, f"download cart {cart_uid}", _error_text(response))
            response.raw.decode_content = False  # the tar bytes exactly as sent
            yield response
        finally:
            response.close()

    @contextlib.contextmanager
    def read_cart(self, cart_uid: str, filename: str = "data.tar", max_resumes: int = 5) -> Iterator[CartReader]:
        """Open the cart's tar as a readable stream that resumes after a dropped connection.

        When Cartd serves a sized tar with ``Accept-Ranges: bytes`` (bundle mode), a connection
        reset or read timeout is resumed with ``Range`` from the last byte received, up to
        ``max_resumes`` times, after checking that the tar is still the same one (size and
        ``Last-Modified``; Cartd ignores ``If-Range``). A streaming-mode tar cannot be resumed:
        its failures surface so the caller can restart from the beginning.
        """
        reader = CartReader(self, cart_uid, filename, max_resumes)
        try:
            reader.open()
            yield reader
        finally:
            reader.close()

    def delete_cart(self, cart_uid: str) -> bool:
        """Delete the cart; ``False`` when Cartd had no such cart (already gone)."""
        validate_cart_uid(cart_uid)
        response = self._request("DELETE", cart_uid, action=f"delete cart {cart_uid}")
        with response:
            if response.status_code == 200:
                self.log.info("Deleted cart %s", cart_uid)
                return True
            if response.status_code == 404:
                return False
            raise error_for_status(response.status_code, f"delete cart {cart_uid}", _error_text(response))

    def test_connection(self) -> tuple[bool, str]:
        """``GET /`` must answer Cartd's health message."""
        try:
            response = self._request("GET", "", action="test connection")
            with response:
                if response.status_code != 200:
                    return False, f"Cartd answered HTTP {response.status_code}: {_error_text(response)}"
                message = str(response.json().get("message", ""))
            return True, message or "Cartd answered"
        except (CartdError, InvalidInputError, ValueError) as err:
            return False, str(err)

    def _request(self, method: str, cart_uid: str, *, action: str, **kwargs: Any) -> requests.Response:
        """One HTTP call with the connection's timeouts; transient faults are retried with backoff."""
        config = self.config
        url = config.url(cart_uid) if cart_uid else config.base_url + "/"
        retry_codes = POST_RETRY_STATUS_CODES if method == "POST" else TRANSIENT_STATUS_CODES
        attempt = 0
        while True:
            try:
                response = self.session.request(method, url, timeout=config.timeout, **kwargs)
            except requests.RequestException as err:
                retryable = isinstance(err, requests.ConnectionError | requests.Timeout)
                if method == "POST":
                    retryable = _is_connect_failure(err)
                if not retryable or attempt >= config.max_retries:
                    raise CartdTransientError(f"{action}: {type(err).__name__}: {shorten(str(err))}") from err
                delay = _backoff(attempt, config.retry_backoff)
                reason = f"{type(err).__name__}"
            else:
                if response.status_code not in retry_codes or attempt >= config.max_retries:
                    return response
                delay = _backoff(attempt, config.retry_backoff, response.headers.get("Retry-After"))
                reason = f"HTTP {response.status_code}"
                response.close()
            attempt += 1
            self.log.warning("%s: %s; retry %d/%d in %.1fs", action, reason, attempt, config.max_retries, delay)
            time.sleep(delay)

    # -- async, for triggers --------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def async_session(self) -> AsyncIterator[aiohttp.ClientSession]:
        """An aiohttp session with the connection's auth, TLS, timeouts and headers.

        Sessions are shared per event loop and connection settings, and closed when their last
        user leaves: a triggerer running a thousand cart waits keeps one connection pool per
        Cartd, not a thousand.
        """
        config = await self.aget_config()
        loop = asyncio.get_running_loop()
        sessions = _SHARED_SESSIONS.setdefault(loop, {})
        key = config.cache_key()
        shared = sessions.get(key)
        if shared is None or shared.session.closed:
            shared = _SharedSession(_new_async_session(config))
            sessions[key] = shared
        shared.users += 1
        try:
            yield shared.session
        finally:
            shared.users -= 1
            if shared.users == 0:
                if sessions.get(key) is shared:
                    del sessions[key]
                await shared.session.close()

    async def async_cart_status(self, cart_uid: str, session: aiohttp.ClientSession | None = None) -> CartStatus:
        """Like :meth:`cart_status`, without blocking; a transient fault raises ``CartdTransientError``.

        It does not retry: the caller (a trigger) owns the backoff and counts failures.
        """
        validate_cart_uid(cart_uid)
        config = await self.aget_config()
        if session is None:
            async with self.async_session() as own_session:
                return await self.async_cart_status(cart_uid, own_session)
        proxy = config.proxy_url()
        try:
            async with session.head(config.url(cart_uid), proxy=proxy) as response:
                return parse_head_response(cart_uid, response.status, response.headers)
        except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as err:
            raise CartdTransientError(f"HEAD cart {cart_uid}: {type(err).__name__}: {shorten(str(err))}") from err


class CartReader:
    """A cart's tar as a file-like ``read()`` stream; see :meth:`PacificaCartdHook.read_cart`."""

    def __init__(self, hook: PacificaCartdHook, cart_uid: str, filename: str, max_resumes: int) -> None:
        self.hook = hook
        self.cart_uid = cart_uid
        self.filename = filename
        self.max_resumes = max_resumes
        self.offset = 0
        self.resumes = 0
        self.size: int | None = None
        self._identity: tuple[str | None, str | None] = (None, None)
        self._stack = contextlib.ExitStack()
        self._response: requests.Response | None = None
        self._closed = False

    @property
    def resumable(self) -> bool:
        return self.size is not None and self._identity[0] == "bytes"

    def open(self) -> None:
        response = self._stack.enter_context(self.hook.open_cart_stream(self.cart_uid, self.filename))
        length = response.headers.get("Content-Length")
        self.size = int(length) if length and length.isdigit() else None
        self._identity = (response.headers.get("Accept-Ranges"), response.headers.get("Last-Modified"))
        self._response = response

    def read(self, size: int = -1) -> bytes:
        while True:
            if self._response is None:
                raise CartdError(f"cart {self.cart_uid}: the download is closed")
            try:
                data = self._response.raw.read(size)
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

    def _can_resume(self) -> bool:
        # Never reconnect once closed: a reader thread may still be in read() when the caller quits.
        return self.resumable and self.resumes < self.max_resumes and not self._closed

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
        self._stack.close()
        self._stack = contextlib.ExitStack()
        self._response = None
        time.sleep(_backoff(self.resumes - 1, self.hook.config.retry_backoff))
        if self._closed:
            raise CartdError(f"cart {self.cart_uid}: the download is closed")
        response = self._stack.enter_context(
            self.hook.open_cart_stream(self.cart_uid, self.filename, offset=self.offset)
        )
        expected_range = f"bytes {self.offset}-{(self.size or 0) - 1}/{self.size}"
        same_tar = response.headers.get("Last-Modified") == self._identity[1]
        if response.status_code != 206 or response.headers.get("Content-Range") != expected_range or not same_tar:
            raise CartdTransientError(
                f"cart {self.cart_uid}: cannot resume at byte {self.offset} (HTTP {response.status_code}, "
                f"Content-Range {response.headers.get('Content-Range')!r}); the download must restart"
            )
        self._response = response

    def close(self) -> None:
        self._closed = True
        self._stack.close()
        self._response = None


@dataclass
class _SharedSession:
    session: aiohttp.ClientSession
    users: int = 0


_SHARED_SESSIONS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], _SharedSession]] = (
    weakref.WeakKeyDictionary()
)
# Per event loop (weakly, so a closed loop's entries go with it): conn id -> (expiry, fetch).
_ASYNC_CONFIGS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[str, tuple[float, asyncio.Future[CartdConnectionConfig]]]
] = weakref.WeakKeyDictionary()
ASYNC_CONFIG_TTL = 60.0  # seconds a connection read by a trigger is reused by the others


def _new_async_session(config: CartdConnectionConfig) -> aiohttp.ClientSession:
    config.check_files()
    auth = aiohttp.BasicAuth(config.login, config.password or "") if config.login else None
    timeout = aiohttp.ClientTimeout(
        total=config.connect_timeout + config.read_timeout,
        sock_connect=config.connect_timeout,
        sock_read=config.read_timeout,
    )
    return aiohttp.ClientSession(
        auth=auth,
        timeout=timeout,
        headers={"User-Agent": USER_AGENT, **config.auth_headers()},
        connector=aiohttp.TCPConnector(ssl=config.ssl_context(), limit_per_host=16),
        trust_env=False,  # proxies come from config.proxy_url(), looked up once
    )


def validate_cart_uid(cart_uid: str) -> None:
    """A cart uid is one URL path segment Cartd accepts: letters, digits, ``-``, ``_`` and ``.``."""
    if (
        not isinstance(cart_uid, str)
        or not cart_uid
        or len(cart_uid) > 128
        or cart_uid in (".", "..")
        or not all(ch.isascii() and (ch.isalnum() or ch in "-_.") for ch in cart_uid)
    ):
        raise InvalidInputError(f"invalid cart uid {cart_uid!r}: use 1-128 of A-Z a-z 0-9 - _ .")


def _error_text(response: requests.Response) -> str:
    """Cartd's error message from a JSON error page (padded with spaces), or the raw text."""
    try:
        text = response.text.strip()
    except (requests.RequestException, UnicodeDecodeError):
        return ""
    try:
        body = json.loads(text)
    except ValueError:
        return shorten(text)
    if isinstance(body, dict) and body.get("message"):
        return shorten(str(body["message"]))
    return shorten(text)
