"""Receive Pacifica Notifications webhooks on the Airflow api-server and record asset events.

Pacifica Notifications POSTs each matching CloudEvent (spec 0.1 JSON) to a subscription's
``target_url`` with basic auth or an ``Authorization: <type> <credentials>`` header, without a
timeout or a retry, and disables the subscription for good on any 4xx/5xx or connection error.
This plugin mounts ``POST /pacifica/events`` on the api-server (unless ``[pacifica]
webhook_enabled`` is false):

* the sender is authenticated against an Airflow connection (``[pacifica] webhook_conn_id``,
  default ``pacifica_webhook_default``): its login/password for basic auth and/or its extra
  ``token`` for ``Authorization: Bearer``. Without credentials configured, everything is refused.
  The connection is looked up once per ``[pacifica] webhook_credentials_cache_seconds`` (30 s),
  not on every request;
* CloudEvents 0.1 JSON (as Pacifica sends it), 1.0 structured JSON and 1.0 binary mode are
  accepted, up to ``[pacifica] webhook_max_body_bytes``. The JSON is parsed strictly and bounded
  (:mod:`~airflow_provider_pacifica.strictjson`: nesting depth, number length, no duplicate keys,
  valid UTF-8) and validated with the provider's parser in a worker thread, so a pathological
  body is a 400, never a 500 and never a blocked event loop;
* an asset event is recorded on the asset for the event's ``source`` (``[pacifica]
  webhook_asset_by_source``, else ``webhook_asset_uri``, default ``pacifica://metadata/ingest``).
  An ``asset`` query parameter may choose another one only among the configured ingest assets
  (those two options plus ``[pacifica] webhook_allowed_assets``). The compacted CloudEvent goes in
  ``extra["cloudevent"]``, and 201 is answered only after the database commit;
* each event is recorded as its own asset partition, keyed by its event id (``[pacifica]
  webhook_partition_events``, default true): a DAG scheduled with ``PartitionedAssetTimetable``
  gets exactly one run per event, however many arrive at once. (With a plain
  ``schedule=[asset]``, Airflow 3.3 batches a burst into one run and may leave the events that
  arrived while that run was created waiting for a later ingest, apache/airflow#56050.)
* a redelivered event (same event id and source on the same asset) records nothing and answers
  200, however many events came in between (:func:`record_event`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from airflow.configuration import conf
from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from airflow_provider_pacifica.assets import INGEST_ASSET_URI, sanitize_uri
from airflow_provider_pacifica.cloudevents import (
    CloudEventError,
    cloudevent_from_http,
    compact_cloudevent,
    parse_cloudevent,
)
from airflow_provider_pacifica.strictjson import MAX_JSON_DEPTH, json_depth, strict_json

__all__ = ["MAX_JSON_DEPTH", "PacificaWebhookPlugin", "create_app", "json_depth", "strict_json"]

log = logging.getLogger(__name__)

STRUCTURED_TYPES = ("application/json", "application/cloudevents+json")
CREDENTIALS_CACHE_SECONDS = 30.0  # default of [pacifica] webhook_credentials_cache_seconds
_RECORD_LOCK = threading.Lock()  # one check-then-insert at a time within this api-server process
PARTITION_KEY_MAX = 250  # Airflow's ID_LEN: the longest partition key an asset event can hold
_CONSUMER_CHECK_SECONDS = 300.0
_consumers_checked: dict[int, float] = {}  # asset id -> when its consumer DAGs were last checked

Credentials = tuple[str | None, str | None, str | None]  # (login, password, token)


def _error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"status": "refused", "reason": reason}, status_code=status)


# -- credentials -------------------------------------------------------------------------------

_credentials_lock = threading.Lock()
_credentials_cache: dict[str, tuple[float, Credentials | None]] = {}  # conn id -> (expiry, value)


def _lookup_credentials(conn_id: str) -> Credentials | None:
    """(login, password, token) from the webhook connection, or None when none is configured."""
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection

    try:
        conn = Connection.get_connection_from_secrets(conn_id)
    except AirflowNotFoundException:
        return None
    token = conn.extra_dejson.get("token") or None
    login, password = conn.login or None, conn.password or None
    if not (token or (login and password)):
        return None
    return login, password, token


def _credentials() -> Credentials | None:
    """The webhook's credentials, looked up at most once per ``webhook_credentials_cache_seconds``.

    A changed password (or a connection created after the first refusal) takes effect once the
    cached value expires. A failed lookup (secrets backend down) is not cached.
    """
    conn_id = conf.get("pacifica", "webhook_conn_id", fallback="pacifica_webhook_default")
    ttl = conf.getfloat("pacifica", "webhook_credentials_cache_seconds", fallback=CREDENTIALS_CACHE_SECONDS)
    with _credentials_lock:  # concurrent first requests share one lookup
        now = time.monotonic()
        cached = _credentials_cache.get(conn_id)
        if cached is not None and now < cached[0]:
            return cached[1]
        value = _lookup_credentials(conn_id)
        if ttl > 0:
            _credentials_cache[conn_id] = (now + ttl, value)
        return value


def clear_credentials_cache() -> None:
    """Forget the cached credentials: the next request looks the connection up again."""
    with _credentials_lock:
        _credentials_cache.clear()


def authenticate(authorization: str | None, configured: Credentials) -> bool:
    """Check an Authorization header against the configured credentials, in constant time."""
    login, password, token = configured
    if not authorization or " " not in authorization:
        return False
    scheme, _, credentials = authorization.partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and token:
        return hmac.compare_digest(credentials.encode(), token.encode())
    if scheme.lower() == "basic" and login and password:
        try:
            user, _, secret = base64.b64decode(credentials, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user_ok = hmac.compare_digest(user.encode(), login.encode())
        secret_ok = hmac.compare_digest(secret.encode(), password.encode())
        return user_ok and secret_ok
    return False


# -- the event -----------------------------------------------------------------------------------


def prepare_event(content_type: str, headers: dict[str, str], body: bytes) -> tuple[str | None, dict[str, Any]]:
    """Parse and validate a request body: (source, asset-event extra). Run in a worker thread.

    The body is read by :func:`~airflow_provider_pacifica.cloudevents.cloudevent_from_http`, whose
    JSON parsing is strict and bounded (:mod:`airflow_provider_pacifica.strictjson`).

    :raises CloudEventError: not a valid Pacifica ingest event (the message says why).
    """
    envelope = cloudevent_from_http(content_type, headers, body)
    parsed = parse_cloudevent(envelope)
    # Events without an id (a bare {"data": [...]}) are identified by their content.
    event_id = parsed.id or "sha256:" + hashlib.sha256(json.dumps(envelope, sort_keys=True).encode()).hexdigest()
    extra = {
        "cloudevent_id": event_id,
        "source": parsed.source,
        "summary": parsed.summary(),
        "cloudevent": compact_cloudevent(envelope),
    }
    return parsed.source, extra


def _prepare_or_refuse(content_type: str, headers: dict[str, str], body: bytes) -> tuple[str | None, dict] | str:
    """:func:`prepare_event`, or the reason for a 400: nothing in a body may cause a 500."""
    try:
        return prepare_event(content_type, headers, body)
    except CloudEventError as err:
        return str(err)
    except Exception as err:  # a validation bug must not disable the subscription either
        log.exception("Unexpected error while validating a Pacifica event")
        return f"the event cannot be validated: {type(err).__name__}: {str(err)[:200]}"


def partition_events() -> bool:
    """``[pacifica] webhook_partition_events`` (default true): one asset partition per event."""
    return conf.getboolean("pacifica", "webhook_partition_events", fallback=True)


def partition_key_for(event_id: str) -> str:
    """The event id as an asset partition key; one too long for Airflow's column is hashed."""
    if len(event_id) <= PARTITION_KEY_MAX and event_id.strip():
        return event_id
    return "sha256:" + hashlib.sha256(event_id.encode("utf-8", "surrogatepass")).hexdigest()


def _warn_about_unpartitioned_consumers(session: Any, asset: Any) -> None:
    """Log (every few minutes) the DAGs on ``asset`` that partitioned events do not start.

    Airflow queues a partitioned asset event only for partition-aware DAGs: one scheduled with a
    plain ``schedule=[asset]`` silently gets no run, which is worth a line in the api-server log.
    """
    now = time.monotonic()
    if now - _consumers_checked.get(asset.id, -_CONSUMER_CHECK_SECONDS) < _CONSUMER_CHECK_SECONDS:
        return
    _consumers_checked[asset.id] = now
    plain = sorted(ref.dag_id for ref in asset.scheduled_dags if not ref.dag.timetable_partitioned)
    if plain:
        log.warning(
            "DAG(s) %s are scheduled on %s without PartitionedAssetTimetable: the webhook records each event as a "
            "partition ([pacifica] webhook_partition_events), which Airflow does not queue for them",
            ", ".join(plain),
            asset.uri,
        )


def record_event(asset_uri: str, event_id: str, extra: dict[str, Any]) -> tuple[str, int | None]:
    """Record an asset event unless one with this event id exists; ("recorded"|"duplicate"|"no-asset", id).

    **Dedupe.** One SQL query, run by the database, finds an earlier event of the same asset with
    the same ``extra["cloudevent_id"]`` and ``extra["source"]`` (CloudEvents ids are unique per
    source): ``WHERE asset_id = :asset AND extra->>'cloudevent_id' = :id AND extra->>'source' =
    :source LIMIT 1`` (``JSON_EXTRACT`` on SQLite/MySQL). It returns at most one row, so nothing
    but an id crosses to Python, and there is no window: a redelivery after any number of events
    is found. The database reads the rows of that asset (``idx_asset_id_timestamp`` selects them)
    and extracts two keys from each row's extra: linear in the asset's events, in the database.

    **Concurrency.** The asset's ``asset`` row is locked ``FOR UPDATE`` first and held until the
    commit, so on PostgreSQL and MySQL every check-then-insert for one asset runs one at a time
    across all api-server processes and hosts; in READ COMMITTED (PostgreSQL's default) the
    dedupe query, a new statement after the lock is granted, sees the row the previous holder
    committed (on MySQL's REPEATABLE READ too: the snapshot is taken by the first plain read,
    which comes after the lock). Two concurrent deliveries of one event therefore record it once.
    SQLite ignores ``FOR UPDATE``; there the process-wide lock gives the same guarantee within one
    api-server process only (SQLite is not for multi-process deployments).
    """
    from airflow.assets.manager import asset_manager
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with _RECORD_LOCK, create_session() as session:
        asset = session.scalar(select(AssetModel).where(AssetModel.uri == asset_uri).limit(1).with_for_update())
        if asset is None:
            return "no-asset", None
        source = AssetEvent.extra["source"].as_string()
        duplicate = session.scalar(
            select(AssetEvent.id)
            .where(
                AssetEvent.asset_id == asset.id,
                AssetEvent.extra["cloudevent_id"].as_string() == event_id,
                source.is_(None) if extra.get("source") is None else source == extra["source"],
            )
            .order_by(AssetEvent.id)
            .limit(1)
        )
        if duplicate is not None:
            return "duplicate", duplicate
        partition_key = partition_key_for(event_id) if partition_events() else None
        recorded = asset_manager.register_asset_change(
            asset=asset, extra=extra, partition_key=partition_key, session=session
        )
        if recorded is None:
            return "no-asset", None
        session.flush()
        if partition_key is not None:
            _warn_about_unpartitioned_consumers(session, asset)
        return "recorded", recorded.id
    # create_session commits on leaving the block: the answer is sent after the commit.


# -- assets ----------------------------------------------------------------------------------------


def normalise_asset_uri(uri: str) -> str:
    """A ``pacifica://`` URI as Airflow stores it (lower-case service, no duplicate or trailing
    ``/``); other URIs unchanged. :raises ValueError: a malformed ``pacifica://`` URI."""
    parts = urlsplit(uri.strip())
    return sanitize_uri(parts).geturl() if parts.scheme == "pacifica" else uri.strip()


def _asset_config() -> tuple[str, dict[str, str], list[str]]:
    """(default asset, {source: asset}, every asset ``?asset=`` may choose), all normalised.

    :raises ValueError: a malformed option (reported as a 503: a misconfiguration).
    """
    default = normalise_asset_uri(conf.get("pacifica", "webhook_asset_uri", fallback=INGEST_ASSET_URI))
    mapping_text = conf.get("pacifica", "webhook_asset_by_source", fallback="") or "{}"
    try:
        mapping = json.loads(mapping_text)
    except json.JSONDecodeError:
        mapping = None
    if not isinstance(mapping, dict):
        raise ValueError("[pacifica] webhook_asset_by_source must be a JSON object {source: asset URI}")
    by_source = {str(source): normalise_asset_uri(str(uri)) for source, uri in mapping.items()}
    extra_text = conf.get("pacifica", "webhook_allowed_assets", fallback="") or ""
    extra = [normalise_asset_uri(uri) for uri in re.split(r"[\s,]+", extra_text) if uri]
    allowed = list(dict.fromkeys([default, *by_source.values(), *extra]))
    return default, by_source, allowed


def asset_for_source(source: str | None) -> str:
    """The asset an event is recorded on: ``[pacifica] webhook_asset_by_source`` maps an event's
    ``source`` (one Pacifica deployment) to an asset URI; other sources use ``webhook_asset_uri``."""
    default, by_source, _ = _asset_config()
    return by_source.get(source, default) if source is not None else default


def allowed_assets() -> list[str]:
    """The assets a ``?asset=`` query may choose: ``webhook_asset_uri``, the values of
    ``webhook_asset_by_source`` and ``webhook_allowed_assets``."""
    return _asset_config()[2]


def _chosen_asset(requested: str) -> str:
    """The configured asset ``?asset=`` names. :raises LookupError: not one of them (a 400)."""
    allowed = allowed_assets()
    try:
        uri = normalise_asset_uri(requested)
    except ValueError:
        uri = requested
    if uri not in allowed:
        raise LookupError(
            f"asset {requested[:200]!r} is not an ingest asset of this webhook; ?asset= may choose "
            f"{', '.join(allowed)} ([pacifica] webhook_asset_uri, webhook_asset_by_source, webhook_allowed_assets)"
        )
    return uri


# -- the app ------------------------------------------------------------------------------------


async def _read_body(request: Request, limit: int) -> bytes | None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def create_app() -> FastAPI:
    """The webhook app; mounted by :class:`PacificaWebhookPlugin` under ``/pacifica``."""
    app = FastAPI(
        title="Pacifica Notifications webhook",
        description="Records Pacifica ingest CloudEvents as Airflow asset events.",
    )

    @app.post("/events", status_code=201)
    async def receive_event(request: Request, asset: str | None = None) -> JSONResponse:
        try:
            configured = await run_in_threadpool(_credentials)
        except Exception:  # the secrets backend is down: say so, without details
            log.exception("Looking up the Pacifica webhook credentials failed")
            return _error(503, "the webhook credentials cannot be looked up")
        if configured is None:
            return _error(503, "the webhook has no credentials configured; it refuses every event")
        if not authenticate(request.headers.get("authorization"), configured):
            return JSONResponse(
                {"status": "refused", "reason": "missing or wrong credentials"},
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="pacifica"'},
            )
        try:
            chosen = _chosen_asset(asset) if asset is not None else None
        except LookupError as err:
            return _error(400, str(err.args[0]))
        except ValueError as err:  # a misconfiguration, reported as such
            return _error(503, str(err))
        limit = conf.getint("pacifica", "webhook_max_body_bytes", fallback=4 * 1024 * 1024)
        body = await _read_body(request, limit)
        if body is None:
            return _error(413, f"the body is larger than {limit} bytes")
        content_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        binary_mode = "ce-specversion" in request.headers
        if content_type not in STRUCTURED_TYPES and not (binary_mode and content_type.endswith("json")):
            return _error(415, f"expected application/json or application/cloudevents+json, got {content_type!r}")
        prepared = await run_in_threadpool(_prepare_or_refuse, content_type, dict(request.headers), body)
        if isinstance(prepared, str):
            return _error(400, prepared)
        source, extra = prepared

        try:
            asset_uri = chosen or asset_for_source(source)
        except ValueError as err:  # a misconfiguration, reported as such
            return _error(503, str(err))
        if not asset_uri.startswith("pacifica://"):
            return _error(400, f"asset must be a pacifica:// URI, got {asset_uri!r}")
        event_id = extra["cloudevent_id"]
        outcome, asset_event_id = await run_in_threadpool(record_event, asset_uri, event_id, extra)
        if outcome == "no-asset":
            return _error(503, f"no asset {asset_uri!r} in Airflow yet: no DAG is scheduled on it")
        answer = {"status": outcome, "event_id": event_id, "asset_uri": asset_uri, "asset_event_id": asset_event_id}
        return JSONResponse(answer, status_code=201 if outcome == "recorded" else 200)

    return app


def webhook_enabled() -> bool:
    """``[pacifica] webhook_enabled`` (default true): whether the plugin mounts the app."""
    return conf.getboolean("pacifica", "webhook_enabled", fallback=True)


def _fastapi_apps() -> list[dict[str, Any]]:
    if not webhook_enabled():
        return []
    return [{"app": create_app(), "url_prefix": "/pacifica", "name": "Pacifica Notifications webhook"}]


class PacificaWebhookPlugin(AirflowPlugin):
    """Mounts the Pacifica Notifications webhook at ``/pacifica`` on the Airflow api-server.

    Registered once, through the ``airflow.plugins`` entry point: Airflow 3.3 loads that group on
    every start, while provider-info ``plugins`` are loaded only with ``[core]
    lazy_discover_providers = False`` (and, listed in both, the second copy is skipped with an
    import error). With ``[pacifica] webhook_enabled = False`` nothing is mounted.
    """

    name = "pacifica_webhook"
    fastapi_apps = _fastapi_apps()

    @classmethod
    def on_load(cls, *args: Any, **kwargs: Any) -> None:
        """Re-read ``[pacifica] webhook_enabled`` when Airflow loads the plugin."""
        cls.fastapi_apps = _fastapi_apps()
