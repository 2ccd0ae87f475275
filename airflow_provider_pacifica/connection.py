"""What a ``pacifica_cartd`` or ``pacifica_metadata`` connection means, as a validated, typed value.

Plain Python, no Airflow import: the hook reads an Airflow ``Connection`` and hands its fields
here. Both services take the same fields and extras (:class:`PacificaConnectionConfig`); each has
its own connection type and class (:class:`CartdConnectionConfig`, :class:`MetadataConnectionConfig`).
Both connection forms arrive: JSON keeps types, while URI query extras are strings, so every
extra is cast. An extra this module does not know is an error, never an HTTP header (HttpHook
would send it as one and leak whatever it holds).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import ssl
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import certifi

from airflow_provider_pacifica.exceptions import InvalidInputError

CONN_TYPE = "pacifica_cartd"
METADATA_CONN_TYPE = "pacifica_metadata"

_BOOL_TRUE = {"true", "1", "yes", "on"}
_BOOL_FALSE = {"false", "0", "no", "off"}


def _to_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _BOOL_TRUE:
        return True
    if text in _BOOL_FALSE:
        return False
    raise InvalidInputError(f"connection extra {name!r} must be true or false, got {value!r}")


def _to_number(name: str, value: Any, *, minimum: float = 0.0) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"connection extra {name!r} must be a number, got {value!r}") from None
    if not number >= minimum:  # also rejects NaN
        raise InvalidInputError(f"connection extra {name!r} must be >= {minimum}, got {value!r}")
    return number


def _to_int(name: str, value: Any) -> int:
    number = _to_number(name, value)
    if number != int(number):
        raise InvalidInputError(f"connection extra {name!r} must be a whole number, got {value!r}")
    return int(number)


def _to_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"connection extra {name!r} must be a string")
    return value


def _to_proxies(name: str, value: Any) -> dict[str, str]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise InvalidInputError(
                f'connection extra {name!r} must be a JSON object like {{"https": "http://proxy:3128"}}'
            ) from None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidInputError(f"connection extra {name!r} must map URL schemes to proxy URLs")
    return dict(value)


@functools.cache
def _proxy_for(base_url: str, proxies: tuple[tuple[str, str], ...]) -> str | None:
    # Looked up once: aiohttp's trust_env would read the environment in a thread on every request.
    scheme, _, rest = base_url.partition("://")
    if proxies:
        return dict(proxies).get(scheme)
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1].split(":", 1)[0]
    if urllib.request.proxy_bypass(host):
        return None
    return urllib.request.getproxies().get(scheme)


# Every extra the connection may carry, with the function that casts and checks its value.
EXTRA_FIELDS = {
    "token": _to_str,
    "client_cert": _to_str,
    "client_key": _to_str,
    "ca_bundle": _to_str,
    "verify": _to_bool,
    "connect_timeout": _to_number,
    "read_timeout": _to_number,
    "proxies": _to_proxies,
    "max_retries": _to_int,
    "retry_backoff": _to_number,
}
_LEGACY_PREFIX = f"extra__{CONN_TYPE}__"  # the Cartd connection's; see PacificaConnectionConfig.legacy_prefix


@dataclass(frozen=True)
class PacificaConnectionConfig:
    """Everything needed to talk to one Pacifica HTTP service, validated.

    The fields and the validation are shared by every service; a subclass names its connection
    type (``conn_type``, whose old-style ``extra__<type>__`` prefix is accepted on extras) and the
    service in messages (``service``).

    :param base_url: ``scheme://host[:port][/prefix]`` without a trailing slash.
    :param login: user for HTTP basic auth (with ``password``).
    :param password: password for HTTP basic auth.
    :param token: a bearer token, sent as ``Authorization: Bearer <token>``.
    :param client_cert: path of a PEM client certificate for TLS client auth.
    :param client_key: path of its private key (if not inside ``client_cert``).
    :param ca_bundle: path of a CA bundle to verify the server with.
    :param verify: ``False`` turns server certificate checks off (not recommended).
    :param connect_timeout: seconds to wait for a TCP/TLS connection.
    :param read_timeout: seconds to wait for each read from the server.
    :param proxies: ``{"http": url, "https": url}`` as for requests.
    :param max_retries: retries of a request after a transient fault.
    :param retry_backoff: urllib3's backoff factor: retry n waits ``retry_backoff * 2**(n-1)``
        seconds (the first at once), at most 30 s.
    """

    base_url: str
    login: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    client_cert: str | None = None
    client_key: str | None = field(default=None, repr=False)
    ca_bundle: str | None = None
    verify: bool = True
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    proxies: dict[str, str] = field(default_factory=dict)
    max_retries: int = 3
    retry_backoff: float = 1.0

    conn_type: ClassVar[str] = ""
    service: ClassVar[str] = "Pacifica"

    @classmethod
    def legacy_prefix(cls) -> str:
        """The prefix old UI forms gave extras (``extra__<conn type>__token``), removed when read."""
        return f"extra__{cls.conn_type}__"

    @classmethod
    def from_connection_fields(
        cls,
        *,
        host: str | None,
        port: int | None = None,
        schema: str | None = None,
        login: str | None = None,
        password: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Self:
        """Build the config from an Airflow connection's fields; raises ``InvalidInputError``."""
        what = f"the {cls.service} connection"
        if not host:
            raise InvalidInputError(f"{what} has no host")
        scheme = (schema or "http").strip().lower()
        if "://" in host:
            base_url = host.rstrip("/")
        elif scheme in ("http", "https"):
            base_url = f"{scheme}://{host.strip('/')}"
        else:
            raise InvalidInputError(f"{what} schema must be http or https, got {schema!r}")
        if port:
            scheme_end = base_url.index("://") + 3
            slash = base_url.find("/", scheme_end)
            authority = base_url[scheme_end:] if slash < 0 else base_url[scheme_end:slash]
            if ":" in authority.rsplit("@", 1)[-1].rsplit("]", 1)[-1]:
                raise InvalidInputError(f"{what} has a port both in host and in port")
            insert_at = len(base_url) if slash < 0 else slash
            base_url = f"{base_url[:insert_at]}:{int(port)}{base_url[insert_at:]}"

        options: dict[str, Any] = {}
        unknown = []
        prefix = cls.legacy_prefix()
        for key, value in (extra or {}).items():
            name = key.removeprefix(prefix)
            if name not in EXTRA_FIELDS:
                unknown.append(key)
            elif value is not None and value != "":  # UI forms store unset fields as null or ""
                options[name] = EXTRA_FIELDS[name](name, value)
        if unknown:
            raise InvalidInputError(
                f"unknown {cls.service} connection extra(s) {sorted(unknown)}; known: {sorted(EXTRA_FIELDS)}"
            )
        if options.get("token") and login:
            raise InvalidInputError(f"{what} has both a login and a token; use one")
        if options.get("client_key") and not options.get("client_cert"):
            raise InvalidInputError(f"{what} has client_key without client_cert")
        if options.get("connect_timeout") == 0 or options.get("read_timeout") == 0:
            raise InvalidInputError(f"{cls.service} connection timeouts must be greater than 0")
        return cls(base_url=base_url, login=login or None, password=password or None, **options)

    # -- what requests and aiohttp need ---------------------------------------------------

    @property
    def timeout(self) -> tuple[float, float]:
        """``(connect, read)`` as requests takes it."""
        return (self.connect_timeout, self.read_timeout)

    @property
    def cert(self) -> str | tuple[str, str] | None:
        """The client certificate as requests takes it."""
        if not self.client_cert:
            return None
        return (self.client_cert, self.client_key) if self.client_key else self.client_cert

    @property
    def ca_file(self) -> str:
        """The CA bundle both clients trust: the connection's ``ca_bundle``, else ``REQUESTS_CA_BUNDLE`` or
        ``CURL_CA_BUNDLE`` as requests reads them, else certifi's (so sync and async calls agree)."""
        return (
            self.ca_bundle
            or os.environ.get("REQUESTS_CA_BUNDLE")
            or os.environ.get("CURL_CA_BUNDLE")
            or certifi.where()
        )

    @property
    def verify_option(self) -> bool | str:
        """The ``verify`` value as requests takes it: False, or the CA bundle to trust."""
        return self.ca_file if self.verify else False

    def auth_headers(self) -> dict[str, str]:
        """Headers that authenticate a request (bearer token); basic auth is done by the client."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def check_files(self) -> None:
        """Fail clearly when a configured certificate, key or CA file is missing (the key's path stays secret)."""
        for name, path in (("client_cert", self.client_cert), ("ca_bundle", self.ca_bundle)):
            if path and not os.path.isfile(path):
                raise InvalidInputError(f"connection extra {name!r}: {path} is not a readable file")
        if self.client_key and not os.path.isfile(self.client_key):
            raise InvalidInputError("connection extra 'client_key' is not a readable file (its path is not shown)")

    def ssl_context(self) -> ssl.SSLContext | bool:
        """An SSL context for aiohttp that matches :attr:`verify_option` and :attr:`cert`."""
        if not self.base_url.startswith("https://"):
            return True
        context = ssl.create_default_context(cafile=self.ca_file)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.client_cert:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context

    def proxy_url(self) -> str | None:
        """The proxy for the service's URL: from ``proxies``, else from the environment as requests does."""
        return _proxy_for(self.base_url, tuple(sorted(self.proxies.items())))

    def cache_key(self) -> tuple[Any, ...]:
        """A hashable identity of these settings (to share HTTP sessions between equal configs)."""
        return (
            *(getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "proxies"),
            tuple(sorted(self.proxies.items())),
        )


@dataclass(frozen=True)
class CartdConnectionConfig(PacificaConnectionConfig):
    """Everything needed to talk to one Cartd (connection type ``pacifica_cartd``), validated.

    The fields are :class:`PacificaConnectionConfig`'s.
    """

    conn_type: ClassVar[str] = CONN_TYPE
    service: ClassVar[str] = "Cartd"

    def url(self, cart_uid: str) -> str:
        """The URL of one cart."""
        return f"{self.base_url}/{cart_uid}"


@dataclass(frozen=True)
class MetadataConnectionConfig(PacificaConnectionConfig):
    """Everything needed to talk to one pacifica-metadata (connection type ``pacifica_metadata``), validated.

    The fields are :class:`PacificaConnectionConfig`'s; metadata itself has no auth, so login,
    password, token and client certificates are for a reverse proxy in front of it.
    """

    conn_type: ClassVar[str] = METADATA_CONN_TYPE
    service: ClassVar[str] = "Pacifica metadata"

    def url(self, path: str) -> str:
        """The URL of ``path`` (``transactions``, ``transactioninfo/by_id/1``) on metadata."""
        return f"{self.base_url}/{path.lstrip('/')}"
