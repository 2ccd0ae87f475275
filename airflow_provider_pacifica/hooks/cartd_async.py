"""The async side of the hooks: aiohttp sessions and connection settings shared per event loop.

A triggerer may run a thousand cart waits against one Cartd. They share one aiohttp session (one
connection pool) per event loop and connection settings, and one read of the Airflow connection
every ``CONFIG_TTL`` seconds, instead of one each. The metadata watcher's reads use the same
sessions and cache (any :class:`~airflow_provider_pacifica.connection.PacificaConnectionConfig`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

import aiohttp

from airflow_provider_pacifica import __version__
from airflow_provider_pacifica.carts import parse_head_response, shorten, validate_cart_uid
from airflow_provider_pacifica.exceptions import CartdTransientError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from airflow_provider_pacifica.carts import CartStatus
    from airflow_provider_pacifica.connection import CartdConnectionConfig, PacificaConnectionConfig

ConfigT = TypeVar("ConfigT", bound="PacificaConnectionConfig")

USER_AGENT = f"airflow-provider-pacifica/{__version__}"
CONFIG_TTL = 60.0  # seconds a connection read by one trigger is reused by the others


@dataclass
class _CachedConfig:
    expires: float
    config: PacificaConnectionConfig | None = None
    fetch: asyncio.Future[Any] | None = None  # only while the fetch runs


@dataclass
class _SharedSession:
    session: aiohttp.ClientSession
    users: int = 0


# Keyed weakly by event loop, so that a closed loop's entries go with it. No value may refer to
# its loop, or the loop would never be collected: futures and sessions (which do) are dropped
# as soon as they are done or unused.
_CONFIGS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _CachedConfig]] = weakref.WeakKeyDictionary()
_SESSIONS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], _SharedSession]] = (
    weakref.WeakKeyDictionary()
)


async def shared_config(conn_id: str, fetch: Callable[[], Awaitable[ConfigT]]) -> ConfigT:
    """The validated connection ``conn_id`` (a key: the hooks prefix their connection type): fetched
    once for all the triggers that start together, then reused for ``CONFIG_TTL`` seconds. A failed
    fetch is not cached."""
    entries = _CONFIGS.setdefault(asyncio.get_running_loop(), {})
    entry = entries.get(conn_id)
    now = time.monotonic()
    if entry is not None and entry.config is not None and entry.expires > now:
        return cast("ConfigT", entry.config)
    if entry is None or entry.fetch is None:
        entry = _CachedConfig(expires=now + CONFIG_TTL)
        entries[conn_id] = entry
        fetching = asyncio.ensure_future(fetch())

        def done(future: asyncio.Future[ConfigT], entry: _CachedConfig = entry) -> None:
            entry.fetch = None  # the future refers to the loop
            if not future.cancelled() and future.exception() is None:
                entry.config = future.result()
            elif entries.get(conn_id) is entry:
                del entries[conn_id]

        entry.fetch = fetching
        fetching.add_done_callback(done)
        return await asyncio.shield(fetching)
    return cast("ConfigT", await asyncio.shield(entry.fetch))


@contextlib.asynccontextmanager
async def shared_session(config: PacificaConnectionConfig) -> AsyncIterator[aiohttp.ClientSession]:
    """An aiohttp session for ``config``, shared within the running loop, closed when its last user leaves."""
    sessions = _SESSIONS.setdefault(asyncio.get_running_loop(), {})
    key = config.cache_key()
    shared = sessions.get(key)
    if shared is None or shared.session.closed:
        shared = _SharedSession(new_session(config))
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


def new_session(config: PacificaConnectionConfig) -> aiohttp.ClientSession:
    """An aiohttp session with the connection's auth, TLS, timeouts and headers (proxies per request)."""
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


async def head_cart(session: aiohttp.ClientSession, config: CartdConnectionConfig, cart_uid: str) -> CartStatus:
    """``HEAD /<uid>`` once; a transient fault raises ``CartdTransientError`` (the caller owns the backoff)."""
    validate_cart_uid(cart_uid)
    try:
        async with session.head(config.url(cart_uid), proxy=config.proxy_url()) as response:
            return parse_head_response(cart_uid, response.status, response.headers)
    except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as err:
        raise CartdTransientError(f"HEAD cart {cart_uid}: {type(err).__name__}: {shorten(str(err))}") from err
