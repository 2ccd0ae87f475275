"""Receive Pacifica Notifications webhooks on the Airflow api-server and record asset events.

Pacifica Notifications POSTs each matching CloudEvent (spec 0.1 JSON) to a subscription's
``target_url`` with basic auth or an ``Authorization: <type> <credentials>`` header, without a
timeout or a retry, and disables the subscription for good on any 4xx/5xx or connection error.
This plugin mounts ``POST /pacifica/events`` on the api-server:

* the sender is authenticated against an Airflow connection (``[pacifica] webhook_conn_id``,
  default ``pacifica_webhook_default``): its login/password for basic auth and/or its extra
  ``token`` for ``Authorization: Bearer``. Without credentials configured, everything is refused;
* CloudEvents 0.1 JSON (as Pacifica sends it), 1.0 structured JSON and 1.0 binary mode are
  accepted, up to ``[pacifica] webhook_max_body_bytes``; the event is validated with the
  provider's parser;
* an asset event is recorded on the asset for the event's ``source`` (``[pacifica]
  webhook_asset_by_source``, else ``webhook_asset_uri``, default ``pacifica://metadata/ingest``;
  an ``asset`` query parameter overrides both) with the compacted CloudEvent in
  ``extra["cloudevent"]``, and 201 is answered only after the database commit;
* a redelivered event (same event id) records nothing and answers 200.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import threading
from typing import Any

from airflow.configuration import conf
from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from airflow_provider_pacifica.assets import INGEST_ASSET_URI
from airflow_provider_pacifica.cloudevents import (
    CloudEventError,
    cloudevent_from_http,
    compact_cloudevent,
    parse_cloudevent,
)

STRUCTURED_TYPES = ("application/json", "application/cloudevents+json")
DEDUPE_WINDOW = 10_000  # recent asset events searched for a redelivered event id
_RECORD_LOCK = threading.Lock()  # one check-then-insert at a time within this api-server process


def _error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"status": "refused", "reason": reason}, status_code=status)


def _credentials() -> tuple[str | None, str | None, str | None] | None:
    """(login, password, token) from the webhook connection, or None when none is configured."""
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection

    conn_id = conf.get("pacifica", "webhook_conn_id", fallback="pacifica_webhook_default")
    try:
        conn = Connection.get_connection_from_secrets(conn_id)
    except AirflowNotFoundException:
        return None
    token = conn.extra_dejson.get("token") or None
    login, password = conn.login or None, conn.password or None
    if not (token or (login and password)):
        return None
    return login, password, token


def authenticate(authorization: str | None, configured: tuple[str | None, str | None, str | None]) -> bool:
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


def record_event(asset_uri: str, event_id: str, extra: dict[str, Any]) -> tuple[str, int | None]:
    """Record an asset event unless one with this event id exists; ("recorded"|"duplicate"|"no-asset", id)."""
    from airflow.assets.manager import asset_manager
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with _RECORD_LOCK, create_session() as session:
        # FOR UPDATE (PostgreSQL, MySQL) holds the asset's row until the commit, so api-server
        # processes on other hosts check-then-insert one at a time as the lock above does within one.
        asset = session.scalar(select(AssetModel).where(AssetModel.uri == asset_uri).limit(1).with_for_update())
        if asset is None:
            return "no-asset", None
        recent = session.execute(
            select(AssetEvent.id, AssetEvent.extra)
            .where(AssetEvent.asset_id == asset.id)
            .order_by(AssetEvent.id.desc())
            .limit(DEDUPE_WINDOW)
        )
        for row_id, row_extra in recent:
            # CloudEvents ids are unique per source: two Pacifica deployments may both send id "1".
            same = isinstance(row_extra, dict) and row_extra.get("cloudevent_id") == event_id
            if same and row_extra.get("source") == extra.get("source"):
                return "duplicate", row_id
        recorded = asset_manager.register_asset_change(asset=asset, extra=extra, session=session)
        if recorded is None:
            return "no-asset", None
        session.flush()
        return "recorded", recorded.id
    # create_session commits on leaving the block: the answer is sent after the commit.


def asset_for_source(source: str | None) -> str:
    """The asset an event is recorded on: ``[pacifica] webhook_asset_by_source`` maps an event's
    ``source`` (one Pacifica deployment) to an asset URI; other sources use ``webhook_asset_uri``."""
    default = conf.get("pacifica", "webhook_asset_uri", fallback=INGEST_ASSET_URI)
    mapping_text = conf.get("pacifica", "webhook_asset_by_source", fallback="") or "{}"
    try:
        mapping = json.loads(mapping_text)
    except json.JSONDecodeError:
        raise ValueError("[pacifica] webhook_asset_by_source must be a JSON object {source: asset URI}") from None
    return str(mapping.get(source, default)) if isinstance(mapping, dict) else default


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
        configured = await run_in_threadpool(_credentials)
        if configured is None:
            return _error(503, "the webhook has no credentials configured; it refuses every event")
        if not authenticate(request.headers.get("authorization"), configured):
            return JSONResponse(
                {"status": "refused", "reason": "missing or wrong credentials"},
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="pacifica"'},
            )
        limit = conf.getint("pacifica", "webhook_max_body_bytes", fallback=4 * 1024 * 1024)
        body = await _read_body(request, limit)
        if body is None:
            return _error(413, f"the body is larger than {limit} bytes")
        content_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        binary_mode = "ce-specversion" in request.headers
        if content_type not in STRUCTURED_TYPES and not (binary_mode and content_type.endswith("json")):
            return _error(415, f"expected application/json or application/cloudevents+json, got {content_type!r}")
        try:
            cloudevent = cloudevent_from_http(content_type, dict(request.headers), body)
            parsed = parse_cloudevent(cloudevent)
        except CloudEventError as err:
            return _error(400, str(err))

        try:
            asset_uri = asset or asset_for_source(parsed.source)
        except ValueError as err:  # a misconfiguration, reported as such
            return _error(503, str(err))
        if not asset_uri.startswith("pacifica://"):
            return _error(400, f"asset must be a pacifica:// URI, got {asset_uri!r}")
        # Events without an id (a bare {"data": [...]}) are identified by their content.
        event_id = parsed.id or "sha256:" + hashlib.sha256(json.dumps(cloudevent, sort_keys=True).encode()).hexdigest()
        extra = {
            "cloudevent_id": event_id,
            "source": parsed.source,
            "summary": parsed.summary(),
            "cloudevent": compact_cloudevent(cloudevent),
        }
        outcome, asset_event_id = await run_in_threadpool(record_event, asset_uri, event_id, extra)
        if outcome == "no-asset":
            return _error(503, f"no asset {asset_uri!r} in Airflow yet: no DAG is scheduled on it")
        answer = {"status": outcome, "event_id": event_id, "asset_uri": asset_uri, "asset_event_id": asset_event_id}
        return JSONResponse(answer, status_code=201 if outcome == "recorded" else 200)

    return app


class PacificaWebhookPlugin(AirflowPlugin):
    """Mounts the Pacifica Notifications webhook at ``/pacifica`` on the Airflow api-server."""

    name = "pacifica_webhook"
    fastapi_apps = [{"app": create_app(), "url_prefix": "/pacifica", "name": "Pacifica Notifications webhook"}]
