"""What the Cartd and metadata hooks share: their connection, validated once and masked, and a session.

Both connection types take the same fields (:class:`~airflow_provider_pacifica.connection.PacificaConnectionConfig`);
a hook reads its connection once, synchronously on a worker or without blocking the event loop in a
triggerer (then shared by the loop's triggers, :mod:`.cartd_async`), and builds its
``requests.Session`` from it with the retry policy of its service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast
from urllib.parse import urlsplit

import requests
from airflow.sdk import BaseHook
from requests.adapters import HTTPAdapter
from requests.auth import HTTPBasicAuth

from airflow_provider_pacifica.connection import PacificaConnectionConfig
from airflow_provider_pacifica.exceptions import InvalidInputError
from airflow_provider_pacifica.hooks import cartd_async

if TYPE_CHECKING:
    from collections.abc import Mapping

    from airflow.sdk import Connection
    from urllib3.util.retry import Retry

#: The connection settings class of a hook (``CartdConnectionConfig``, ``MetadataConnectionConfig``).
ConfigT = TypeVar("ConfigT", bound=PacificaConnectionConfig)


class PacificaServiceHook(BaseHook, Generic[ConfigT]):
    """A hook on one Pacifica service's connection (subclasses name the type and its config class).

    :param conn_id: the Airflow connection id.
    """

    conn_type: ClassVar[str]
    config_class: ClassVar[type[PacificaConnectionConfig]]

    def __init__(self, conn_id: str) -> None:
        super().__init__()
        self._conn_id = conn_id
        self._config: ConfigT | None = None

    @classmethod
    def config_from_connection(cls, conn: Connection, extra: Mapping[str, Any]) -> ConfigT:
        """Validate a connection; ``extra`` is passed in because sync and async code read it differently."""
        try:
            config = cls.config_class.from_connection_fields(
                host=conn.host,
                port=conn.port,
                schema=conn.schema,
                login=conn.login,
                password=conn.password,
                extra=extra,
            )
        except InvalidInputError as err:
            raise InvalidInputError(f"connection {conn.conn_id!r}: {err}") from None
        return cast("ConfigT", config)

    @property
    def config(self) -> ConfigT:
        """The validated connection (read once per hook)."""
        if self._config is None:
            conn = self.get_connection(self._conn_id)
            self._config = self.config_from_connection(conn, conn.extra_dejson)
            self._mask(self._config)
        return self._config

    async def aget_config(self) -> ConfigT:
        """The validated connection, fetched without blocking the event loop and shared with the
        other triggers of this loop for a minute (see :mod:`.cartd_async`)."""
        if self._config is None:
            self._config = await cartd_async.shared_config(f"{self.conn_type}:{self._conn_id}", self._fetch_config)
        return self._config

    async def _fetch_config(self) -> ConfigT:
        conn = await self.aget_connection(self._conn_id)
        config = self.config_from_connection(conn, await conn.aextra_dejson())
        self._mask(config)
        return config

    @staticmethod
    def _mask(config: PacificaConnectionConfig) -> None:
        # Airflow masks the password and extras named like secrets; a client key's path says where
        # the key lives, and a proxy URL may carry credentials of its own.
        from airflow.sdk.log import mask_secret

        proxy_passwords = [urlsplit(url).password for url in (*config.proxies.values(), config.proxy_url() or "")]
        for secret in (config.password, config.token, config.client_key, *proxy_passwords):
            if secret:
                mask_secret(secret)

    def new_session(self, retry: Retry) -> requests.Session:
        """A new ``requests.Session`` with the connection's auth, TLS, proxies and ``retry``."""
        config = self.config
        config.check_files()
        session = requests.Session()
        # The connection decides: with trust_env, requests lets HTTPS_PROXY and REQUESTS_CA_BUNDLE
        # override the session's own settings (and reads ~/.netrc). Both are honoured, in their place,
        # by config.proxy_url() and config.ca_file when the connection does not say.
        session.trust_env = False
        session.headers["User-Agent"] = cartd_async.USER_AGENT
        session.headers.update(config.auth_headers())
        if config.login:
            session.auth = HTTPBasicAuth(config.login, config.password or "")
        session.verify = config.verify_option
        session.cert = config.cert
        if proxy := config.proxy_url():
            session.proxies = {"http": proxy, "https": proxy}
        adapter = HTTPAdapter(max_retries=retry)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session
