"""Hook for pacifica-metadata's REST API: list new transactions and read one transaction's info.

Used by the pull intake (:class:`~airflow_provider_pacifica.triggers.ingest.PacificaIngestEventTrigger`)
in the triggerer, so the reads are async (aiohttp, sessions shared per event loop with the Cartd
triggers' helpers in :mod:`.cartd_async`); only :meth:`PacificaMetadataHook.test_connection`, for the
connection form's Test button, is synchronous. The protocol facts (filters, paging, 404 body) are
those of pacifica-metadata 0.13.0 (pacifica-live.md section 6).
"""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any

import aiohttp
import requests
from urllib3.util.retry import Retry

from airflow_provider_pacifica.backoff import MAX_BACKOFF
from airflow_provider_pacifica.carts import TRANSIENT_STATUS_CODES, shorten
from airflow_provider_pacifica.connection import METADATA_CONN_TYPE, MetadataConnectionConfig
from airflow_provider_pacifica.exceptions import (
    InvalidInputError,
    MetadataError,
    MetadataTransientError,
    TransactionNotFoundError,
)
from airflow_provider_pacifica.hooks import cartd_async
from airflow_provider_pacifica.hooks.service import PacificaServiceHook

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping


MAX_ERROR_BODY = 64 * 1024  # bytes of an error page read for its message
MAX_PAGES = 100_000  # a listing longer than this is a server that ignores paging, not a backlog
USER_AGENT = cartd_async.USER_AGENT


class PacificaMetadataHook(PacificaServiceHook[MetadataConnectionConfig]):
    """Read pacifica-metadata through an Airflow connection of type ``pacifica_metadata``.

    The connection takes the same fields and extras as ``pacifica_cartd`` (host, port, scheme,
    basic auth or a bearer ``token`` for a proxy in front of metadata, ``client_cert``/``client_key``,
    ``ca_bundle``/``verify``, ``connect_timeout``/``read_timeout``, ``proxies``, ``max_retries``/
    ``retry_backoff``); unknown extras are refused, never sent as headers. The async reads do not
    retry: their caller (a trigger) owns the backoff; ``max_retries`` applies to
    :meth:`test_connection`.

    :param pacifica_metadata_conn_id: the Airflow connection id.
    """

    conn_name_attr = "pacifica_metadata_conn_id"
    default_conn_name = "pacifica_metadata_default"
    conn_type = METADATA_CONN_TYPE
    hook_name = "Pacifica Metadata"

    config_class = MetadataConnectionConfig

    def __init__(self, pacifica_metadata_conn_id: str = default_conn_name) -> None:
        super().__init__(pacifica_metadata_conn_id)
        self.pacifica_metadata_conn_id = pacifica_metadata_conn_id

    # -- async, for triggers --------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def async_session(self) -> AsyncIterator[aiohttp.ClientSession]:
        """An aiohttp session with the connection's auth, TLS and timeouts, shared within the event loop."""
        config = await self.aget_config()
        async with cartd_async.shared_session(config) as session:
            yield session

    async def list_transactions(
        self,
        since_iso: str,
        *,
        items_per_page: int = 100,
        session: aiohttp.ClientSession | None = None,
    ) -> list[dict[str, Any]]:
        """Every transaction created at or after ``since_iso``, all pages, without related lists.

        ``GET /transactions?recursion_depth=0&created_operator=gte&created=<since>&page_number=N
        &items_per_page=M`` for N = 1, 2, ... until a page is short. Metadata sorts by ``_id``, not
        by ``created``, and a page may repeat a record when a transaction commits meanwhile:
        :func:`~airflow_provider_pacifica.transactions.new_transactions` sorts and dedupes.

        :param since_iso: an ISO time, UTC (metadata compares it with its naive UTC ``created``).
        :param items_per_page: the page size.
        :raises MetadataTransientError: metadata unreachable, slow, or answering 429/5xx.
        :raises MetadataError: any other answer that is not a list of transaction records.
        """
        if items_per_page < 1:
            raise InvalidInputError(f"items_per_page must be at least 1, got {items_per_page}")
        listed: list[dict[str, Any]] = []
        async with self._session(session) as http:
            for page_number in range(1, MAX_PAGES + 1):
                params = {
                    "recursion_depth": "0",
                    "created_operator": "gte",
                    "created": since_iso,
                    "page_number": str(page_number),
                    "items_per_page": str(items_per_page),
                }
                page = await self._get_json(http, "transactions", params, f"list transactions since {since_iso}")
                if not isinstance(page, list) or not all(
                    isinstance(r, dict) and "_id" in r and "created" in r for r in page
                ):
                    got = shorten(repr(page), 200)
                    raise MetadataError(f"list transactions since {since_iso}: not a list of transactions: {got}")
                listed.extend(page)
                if len(page) != items_per_page:  # short: the last page; longer: paging was ignored
                    return listed
        raise MetadataError(f"list transactions since {since_iso}: more than {MAX_PAGES} pages")

    async def transaction_info(self, txn_id: int, *, session: aiohttp.ClientSession | None = None) -> dict[str, Any]:
        """``GET /transactioninfo/by_id/<id>``: the transaction with its files and key values.

        :raises TransactionNotFoundError: metadata has no such transaction (404).
        :raises MetadataTransientError: metadata unreachable, slow, or answering 429/5xx.
        :raises MetadataError: any other answer that is not an object.
        """
        if isinstance(txn_id, bool) or not isinstance(txn_id, int):
            raise InvalidInputError(f"a transaction id is an integer, got {txn_id!r}")
        action = f"transaction info {txn_id}"
        async with self._session(session) as http:
            info = await self._get_json(http, f"transactioninfo/by_id/{txn_id}", {}, action, not_found=True)
        if not isinstance(info, dict):
            raise MetadataError(f"{action}: expected an object, got {shorten(repr(info))}")
        return info

    @contextlib.asynccontextmanager
    async def _session(self, session: aiohttp.ClientSession | None) -> AsyncIterator[aiohttp.ClientSession]:
        if session is not None:
            yield session
        else:
            async with self.async_session() as own:
                yield own

    async def _get_json(
        self,
        session: aiohttp.ClientSession,
        path: str,
        params: Mapping[str, str],
        action: str,
        not_found: bool = False,
    ) -> Any:
        """One GET with the connection's timeouts (the session's); the body as JSON."""
        config = await self.aget_config()
        try:
            async with session.get(config.url(path), params=params, proxy=config.proxy_url()) as response:
                if response.status != 200:
                    text = (await response.content.read(MAX_ERROR_BODY)).decode("utf-8", errors="replace")
                    raise _error_for(response.status, action, _message_of(text), not_found=not_found)
                body = await response.read()
        except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as err:
            raise MetadataTransientError(f"{action}: {type(err).__name__}: {shorten(str(err))}") from err
        try:
            return json.loads(body)
        except ValueError:
            text = shorten(body[:200].decode(errors="replace"))
            raise MetadataError(f"{action}: the answer is not JSON: {text}") from None

    # -- sync, for the connection form's Test button -----------------------------------------

    def get_conn(self) -> requests.Session:
        """A new ``requests.Session`` with the connection's auth, TLS, proxies and retries (GETs only)."""
        config = self.config
        retry = Retry(
            total=config.max_retries,
            other=0,
            redirect=0,
            status_forcelist=TRANSIENT_STATUS_CODES,
            allowed_methods=frozenset({"GET"}),
            backoff_factor=config.retry_backoff,
            backoff_max=MAX_BACKOFF,
            raise_on_status=False,
        )
        return self.new_session(retry)

    def test_connection(self) -> tuple[bool, str]:
        """``GET /transactioninfo/last`` must answer ``{"latest_transaction_id": ...}``."""
        try:
            config = self.config
            with self.get_conn() as session:
                response = session.get(config.url("transactioninfo/last"), timeout=config.timeout)
            if response.status_code != 200:
                return False, f"Pacifica metadata answered HTTP {response.status_code}: {_message_of(response.text)}"
            latest = response.json().get("latest_transaction_id")
            return True, f"Pacifica metadata answered; latest transaction: {latest}"
        except requests.RequestException as err:
            return False, f"{type(err).__name__}: {shorten(str(err))}"
        except (InvalidInputError, ValueError, AttributeError) as err:
            return False, str(err)


def _message_of(text: str) -> str:
    """Metadata's error message from its JSON error page (it carries a traceback too), or the text."""
    try:
        body = json.loads(text)
    except ValueError:
        return shorten(text)
    if isinstance(body, dict) and body.get("message"):
        return shorten(str(body["message"]))
    return shorten(text)


def _error_for(status: int, action: str, message: str, *, not_found: bool) -> MetadataError:
    text = f"{action}: HTTP {status}: {message}" if message else f"{action}: HTTP {status}"
    if status == 404 and not_found:
        return TransactionNotFoundError(text, status)
    if status == 429 or status >= 500:
        return MetadataTransientError(text, status)
    if status in (401, 403):
        return MetadataError(text + " (check the connection's credentials)", status)
    return MetadataError(text, status)
