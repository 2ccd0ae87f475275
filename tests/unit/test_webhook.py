"""The Notifications webhook app, in process against Airflow's (sqlite) metadata DB."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from airflow_provider_pacifica.plugins import webhook as webhook_module
from airflow_provider_pacifica.plugins.webhook import authenticate, create_app
from tests.conftest import load_fixture

ASSET_URI = "pacifica://metadata/ingest"


@pytest.fixture(autouse=True)
def _fresh_credentials():
    """Each test starts (and ends) with no cached webhook credentials."""
    webhook_module.clear_credentials_cache()
    yield
    webhook_module.clear_credentials_cache()


@pytest.fixture
def webhook(airflow_db, set_connection):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import delete, select

    with create_session() as session:
        if session.scalar(select(AssetModel).where(AssetModel.uri == ASSET_URI)) is None:
            session.add(AssetModel(name="pacifica_ingest", uri=ASSET_URI, group="asset"))
        session.execute(delete(AssetEvent))
    set_connection(
        "pacifica_webhook_default",
        {"conn_type": "generic", "login": "notify", "password": "pw-1", "extra": {"token": "tok-1"}},
    )
    return TestClient(create_app())


def asset_events():
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        return [(event.extra, event.asset.uri) for event in session.query(AssetEvent).order_by(AssetEvent.id)]


def post(client, body, *, auth=("notify", "pw-1"), headers=None, **kwargs):
    """As pacifica-notifications does: requests.post(url, data=json.dumps(event), headers=..., auth=...)."""
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return client.post(
        "/events", content=data, headers={"Content-Type": "application/json", **(headers or {})}, auth=auth, **kwargs
    )


def test_a_pacifica_event_is_recorded_once_as_an_asset_event(webhook):
    event = load_fixture("dispatcher-example-event.json")
    first = post(webhook, event)
    assert first.status_code == 201
    assert first.json()["status"] == "recorded"
    (recorded,) = asset_events()
    extra, uri = recorded
    assert uri == ASSET_URI
    assert extra["cloudevent_id"] == "C234-1234-1234"
    assert extra["cloudevent"]["eventType"] == "org.pacifica.metadata.ingest"
    assert [r["destinationTable"] for r in extra["cloudevent"]["data"]] == [
        "Transactions._id",
        "Transactions.submitter",
        "Transactions.project",
        "Transactions.instrument",
        "Files",
    ]
    assert "mimetype" not in extra["cloudevent"]["data"][-1]  # kept small

    again = post(webhook, event)
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert again.json()["asset_event_id"] == first.json()["asset_event_id"]
    assert len(asset_events()) == 1


def test_a_bearer_token_is_accepted(webhook):
    event = load_fixture("dispatcher-example-event.json")
    response = post(webhook, event, auth=None, headers={"Authorization": "Bearer tok-1"})
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("auth", "headers"),
    [
        (None, {}),
        (("notify", "wrong"), {}),
        (("other", "pw-1"), {}),
        (None, {"Authorization": "Bearer wrong"}),
        (None, {"Authorization": "Basic !!!notbase64"}),
    ],
)
def test_bad_credentials_are_refused_and_record_nothing(webhook, auth, headers):
    response = post(webhook, load_fixture("dispatcher-example-event.json"), auth=auth, headers=headers)
    assert response.status_code == 401
    assert response.json()["reason"] == "missing or wrong credentials"
    assert asset_events() == []


def test_without_configured_credentials_everything_is_refused(webhook, set_connection):
    set_connection("pacifica_webhook_default", {"conn_type": "generic"})
    response = post(webhook, load_fixture("dispatcher-example-event.json"))
    assert response.status_code == 503
    assert "no credentials configured" in response.json()["reason"]
    assert asset_events() == []


def test_an_oversized_body_is_refused(webhook, monkeypatch):
    monkeypatch.setenv("AIRFLOW__PACIFICA__WEBHOOK_MAX_BODY_BYTES", "1000")
    event = load_fixture("dispatcher-example-event.json")
    event["extensions"] = {"padding": "x" * 2000}
    response = post(webhook, event)
    assert response.status_code == 413
    assert asset_events() == []


def test_a_chunked_body_is_measured_as_it_arrives(webhook, monkeypatch):
    # No Content-Length to refuse up front: the limit must hold while the chunks are read.
    monkeypatch.setenv("AIRFLOW__PACIFICA__WEBHOOK_MAX_BODY_BYTES", "1000")
    event = json.dumps(load_fixture("dispatcher-example-event.json")).encode()
    assert len(event) < 1000

    def post_chunked(data):
        chunks = (data[i : i + 100] for i in range(0, len(data), 100))  # an iterator: sent chunked
        headers = {"Content-Type": "application/json"}
        return webhook.post("/events", content=chunks, headers=headers, auth=("notify", "pw-1"))

    padded = json.loads(event) | {"extensions": {"padding": "x" * 2000}}
    assert post_chunked(json.dumps(padded).encode()).status_code == 413
    assert asset_events() == []
    assert post_chunked(event).status_code == 201
    assert len(asset_events()) == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("{not json", "not valid JSON"),
        ({"cloudEventsVersion": "0.1", "eventID": "x"}, "no 'data' member"),
        ({"eventID": "x", "data": [{"destinationTable": "Files", "name": "a"}]}, "lacks _id"),
        ({"eventID": "x", "data": [{"destinationTable": "TransactionKeyValue"}]}, "has no Files"),
    ],
)
def test_malformed_events_are_refused_with_a_reason(webhook, body, reason):
    response = post(webhook, body)
    assert response.status_code == 400
    assert reason in response.json()["reason"]
    assert asset_events() == []


def test_a_wrong_content_type_is_refused(webhook):
    response = post(webhook, "a=b", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415
    assert asset_events() == []


def test_cloudevents_1_0_binary_mode_is_accepted(webhook):
    data = [f for f in load_fixture("dispatcher-example-event.json")["data"] if f["destinationTable"] == "Files"]
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "bin-1",
        "ce-type": "org.pacifica.metadata.ingest",
        "ce-source": "/pacifica/metadata/ingest",
    }
    response = post(webhook, data, headers=headers)
    assert response.status_code == 201
    ((extra, _),) = asset_events()
    assert extra["cloudevent_id"] == "bin-1"
    assert extra["cloudevent"]["type"] == "org.pacifica.metadata.ingest"


def test_cloudevents_1_0_structured_mode_is_accepted(webhook):
    event = {
        "specversion": "1.0",
        "id": "s-1",
        "type": "t",
        "source": "/s",
        "data": load_fixture("dispatcher-example-event.json")["data"],
    }
    response = post(webhook, event, headers={"Content-Type": "application/cloudevents+json; charset=utf-8"})
    assert response.status_code == 201


def test_an_unknown_asset_is_reported_not_created(webhook, monkeypatch):
    # Allowed by configuration, but no DAG is scheduled on it: reported, never created.
    monkeypatch.setenv("AIRFLOW__PACIFICA__WEBHOOK_ALLOWED_ASSETS", "pacifica://nowhere/ingest")
    response = webhook.post(
        "/events?asset=pacifica://nowhere/ingest",
        content=json.dumps(load_fixture("dispatcher-example-event.json")),
        headers={"Content-Type": "application/json"},
        auth=("notify", "pw-1"),
    )
    assert response.status_code == 503
    assert "no DAG is scheduled on it" in response.json()["reason"]


def test_authenticate_needs_the_matching_scheme():
    assert authenticate("Bearer t", (None, None, "t"))
    assert not authenticate("Bearer t", ("u", "p", None))
    assert not authenticate("Basic dTpw", (None, None, "dTpw"))  # a token is not a basic credential
    assert not authenticate(None, ("u", "p", "t"))


def test_the_pacifica_uri_scheme_is_normalised():
    from airflow.sdk import Asset

    assert Asset(uri="pacifica://Metadata//ingest/").uri == "pacifica://metadata/ingest"
    with pytest.raises(ValueError, match="needs a service"):
        Asset(uri="pacifica:///ingest")


def test_events_are_recorded_on_the_asset_of_their_source(webhook, monkeypatch):
    from airflow.models.asset import AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    other = "pacifica://site-b/ingest"
    with create_session() as session:
        if session.scalar(select(AssetModel).where(AssetModel.uri == other)) is None:
            session.add(AssetModel(name="site_b_ingest", uri=other, group="asset"))
    monkeypatch.setenv("AIRFLOW__PACIFICA__WEBHOOK_ASSET_BY_SOURCE", json.dumps({"/site-b/metadata/ingest": other}))
    event = load_fixture("dispatcher-example-event.json")
    assert post(webhook, event).json()["asset_uri"] == ASSET_URI  # an unmapped source: the default
    event.update(eventID="b-1", source="/site-b/metadata/ingest")
    assert post(webhook, event).json()["asset_uri"] == other
    assert [uri for _, uri in asset_events()] == [ASSET_URI, other]


def test_the_same_event_id_from_another_source_is_a_new_event(webhook):
    event = load_fixture("dispatcher-example-event.json")
    assert post(webhook, event).status_code == 201
    event["source"] = "http://other-pacifica.example.org/transactions?_id=1"
    assert post(webhook, event).status_code == 201
    assert len(asset_events()) == 2


# -- hardening (issue 10, point 3) -------------------------------------------------------------


def add_asset(uri: str, name: str) -> None:
    from airflow.models.asset import AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        if session.scalar(select(AssetModel).where(AssetModel.uri == uri)) is None:
            session.add(AssetModel(name=name, uri=uri, group="asset"))


def test_a_redelivery_after_more_than_10000_events_starts_no_second_run(webhook):
    """The dedupe is one SQL query by the database, with no window of recent events."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.settings import engine
    from airflow.utils.session import create_session
    from sqlalchemy import event, func, insert, select

    first_event = load_fixture("dispatcher-example-event.json")
    first = post(webhook, first_event)
    assert first.status_code == 201
    later = 10_050
    with create_session() as session:
        asset_id = session.scalar(select(AssetModel.id).where(AssetModel.uri == ASSET_URI))
        template = {"source": first_event["source"], "summary": {}, "cloudevent": {"data": []}}
        session.execute(
            insert(AssetEvent),
            [{"asset_id": asset_id, "extra": {**template, "cloudevent_id": f"later-{n}"}} for n in range(later)],
        )

    statements: list[str] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", capture)
    try:
        again = post(webhook, first_event)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert again.json()["asset_event_id"] == first.json()["asset_event_id"]
    # The database filters on the extra's keys and returns one id; no extra is read into Python.
    on_events = [s for s in statements if "FROM asset_event" in s]
    assert len(on_events) == 1, on_events
    (dedupe,) = on_events
    assert "JSON_EXTRACT(asset_event.extra" in dedupe
    assert "LIMIT" in dedupe
    assert dedupe.split("FROM")[0].strip() == "SELECT asset_event.id"

    # An event that is new after all those is still recorded, and the total is right.
    fresh = dict(first_event, eventID="after-10050")
    assert post(webhook, fresh).status_code == 201
    with create_session() as session:
        assert session.scalar(select(func.count()).select_from(AssetEvent)) == later + 2


def test_a_redelivery_without_a_source_is_a_duplicate(webhook):
    event = load_fixture("dispatcher-example-event.json")
    del event["source"]
    assert post(webhook, event).status_code == 201
    assert post(webhook, event).json()["status"] == "duplicate"
    assert len(asset_events()) == 1


def test_the_asset_query_chooses_only_among_configured_ingest_assets(webhook, monkeypatch):
    add_asset("pacifica://airflow/downloads", "pacifica_downloads")
    add_asset("pacifica://site-b/ingest", "site_b_ingest")
    add_asset("pacifica://site-c/ingest", "site_c_ingest")
    monkeypatch.setenv("AIRFLOW__PACIFICA__WEBHOOK_ASSET_BY_SOURCE", json.dumps({"/b": "pacifica://site-b/ingest"}))
    event = load_fixture("dispatcher-example-event.json")

    def post_to(asset, event_id):
        return webhook.post(
            "/events",
            params={"asset": asset},
            content=json.dumps(dict(event, eventID=event_id)),
            headers={"Content-Type": "application/json"},
            auth=("notify", "pw-1"),
        )

    refused = post_to("pacifica://airflow/downloads", "d-1")
    assert refused.status_code == 400
    reason = refused.json()["reason"]
    assert "'pacifica://airflow/downloads' is not an ingest asset" in reason
    assert "pacifica://metadata/ingest, pacifica://site-b/ingest" in reason  # the allowed ones, named
    assert post_to("pacifica://site-c/ingest", "c-1").status_code == 400  # not configured (yet)
    assert post_to("http://elsewhere/x", "x-1").status_code == 400
    assert asset_events() == []

    assert post_to("pacifica://site-b/ingest", "b-1").json()["asset_uri"] == "pacifica://site-b/ingest"
    assert post_to("pacifica://Metadata//ingest/", "m-1").json()["asset_uri"] == ASSET_URI  # normalised
    monkeypatch.setenv("AIRFLOW__PACIFICA__WEBHOOK_ALLOWED_ASSETS", "pacifica://site-c/ingest, pacifica://x/y")
    assert post_to("pacifica://site-c/ingest", "c-2").status_code == 201
    assert [uri for _, uri in asset_events()] == ["pacifica://site-b/ingest", ASSET_URI, "pacifica://site-c/ingest"]


def _event_text(**replace: str) -> str:
    """The fixture event as JSON text, with raw JSON text substituted for some members."""
    text = json.dumps(load_fixture("dispatcher-example-event.json"))
    for key, raw in replace.items():
        text = text.replace('{"cloudEventsVersion"', '{"%s": %s, "cloudEventsVersion"' % (key, raw), 1)  # noqa: UP031
    return text


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested 100000 levels deep (at most 32)"),
        (_event_text(deep="[" * 100_000 + "]" * 100_000), "nested 100001 levels deep"),
        ("[" * 100_000, "nested 100000 levels deep"),  # and unterminated
        (json.dumps({"eventID": "s", "data": "[" * 5000 + "]" * 5000}), "CloudEvent 'data' is nested 5000 levels deep"),
        (_event_text(size="1" * 100_000), "a number of 100000 characters"),
        (_event_text(size="1e999"), "a number out of range"),
        (_event_text(size="NaN"), "has NaN, which is not JSON"),
        (_event_text(size="-Infinity"), "has -Infinity"),
        (_event_text(eventID='"dup"'), "has the key 'eventID' twice in one object"),
        (_event_text(note='"\\ud800"'), "lone UTF-16 surrogate"),
        (_event_text(note='"a\\u0000b"'), "NUL character"),
        (b'{"eventID": "\xff\xfe", "data": []}', "is not UTF-8"),
        ('"' + "\\" * 100_000, "not valid JSON"),  # an unterminated string of escapes
        ('"\\"' * 100_000, "not valid JSON"),
    ],
    ids=[
        "100000-nested-arrays",
        "deep-member",
        "unterminated-nesting",
        "deep-data-string",
        "huge-integer",
        "float-overflow",
        "nan",
        "infinity",
        "duplicate-key",
        "lone-surrogate",
        "nul",
        "invalid-utf8",
        "backslashes",
        "escaped-quotes",
    ],
)
def test_pathological_json_is_a_400_with_a_reason(webhook, body, reason):
    response = post(webhook, body)
    assert response.status_code == 400
    assert reason in response.json()["reason"]
    assert asset_events() == []


def test_a_deeply_nested_binary_mode_body_is_a_400(webhook):
    headers = {"ce-specversion": "1.0", "ce-id": "deep", "ce-type": "t", "ce-source": "/s"}
    response = post(webhook, "[" * 100_000 + "]" * 100_000, headers=headers)
    assert response.status_code == 400
    assert "CloudEvent data is nested 100000 levels deep" in response.json()["reason"]


def test_an_unexpected_validation_error_is_a_400_not_a_500(webhook, monkeypatch):
    def broken(event):
        raise KeyError("a bug")

    monkeypatch.setattr(webhook_module, "parse_cloudevent", broken)
    response = post(webhook, load_fixture("dispatcher-example-event.json"))
    assert response.status_code == 400
    assert "cannot be validated: KeyError" in response.json()["reason"]


def test_the_body_is_parsed_off_the_event_loop(webhook, monkeypatch):
    import asyncio

    seen = []
    real = webhook_module.prepare_event

    def spy(*args):
        try:
            asyncio.get_running_loop()
            seen.append("event loop")
        except RuntimeError:
            seen.append("worker thread")
        return real(*args)

    monkeypatch.setattr(webhook_module, "prepare_event", spy)
    assert post(webhook, load_fixture("dispatcher-example-event.json")).status_code == 201
    assert seen == ["worker thread"]


def test_strict_json_bounds():
    from airflow_provider_pacifica.cloudevents import CloudEventError
    from airflow_provider_pacifica.plugins.webhook import MAX_JSON_DEPTH, json_depth, strict_json

    assert json_depth('{"a": [1, {"b": "[[[[ \\" [["}]}') == 3  # brackets in strings do not count
    assert strict_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH, "x") is not None
    with pytest.raises(CloudEventError, match="nested 33 levels"):
        strict_json("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "x")
    assert strict_json('{"size": 18446744073709551616, "f": 1.5e300}', "x") == {"size": 2**64, "f": 1.5e300}


def test_credentials_are_looked_up_once_and_cached_for_30_seconds(webhook, monkeypatch, set_connection):
    calls = []
    real = webhook_module._lookup_credentials
    monkeypatch.setattr(webhook_module, "_lookup_credentials", lambda conn_id: calls.append(conn_id) or real(conn_id))
    clock = [1000.0]
    monkeypatch.setattr(webhook_module.time, "monotonic", lambda: clock[0])
    event = load_fixture("dispatcher-example-event.json")

    for n in range(5):
        assert post(webhook, dict(event, eventID=f"e-{n}")).status_code == 201
    assert calls == ["pacifica_webhook_default"]  # one secrets-backend lookup for five requests

    set_connection("pacifica_webhook_default", {"conn_type": "generic", "login": "notify", "password": "pw-2"})
    clock[0] += 29
    assert post(webhook, dict(event, eventID="old-pw")).status_code == 201  # still cached
    assert post(webhook, dict(event, eventID="new-pw"), auth=("notify", "pw-2")).status_code == 401
    clock[0] += 2  # past the 30 s
    assert post(webhook, dict(event, eventID="new-pw"), auth=("notify", "pw-2")).status_code == 201
    assert post(webhook, dict(event, eventID="old-pw-2")).status_code == 401
    assert calls == ["pacifica_webhook_default"] * 2


def test_the_credentials_cache_time_is_configurable(webhook, monkeypatch):
    calls = []
    real = webhook_module._lookup_credentials
    monkeypatch.setattr(webhook_module, "_lookup_credentials", lambda conn_id: calls.append(conn_id) or real(conn_id))
    monkeypatch.setenv("AIRFLOW__PACIFICA__WEBHOOK_CREDENTIALS_CACHE_SECONDS", "0")
    event = load_fixture("dispatcher-example-event.json")
    for n in range(3):
        post(webhook, dict(event, eventID=f"e-{n}"))
    assert len(calls) == 3


def test_a_failing_secrets_backend_is_a_503_with_a_reason(webhook, monkeypatch):
    def down(conn_id):
        raise ConnectionError("vault unreachable: token=s3cr3t")

    monkeypatch.setattr(webhook_module, "_lookup_credentials", down)
    response = post(webhook, load_fixture("dispatcher-example-event.json"))
    assert response.status_code == 503
    assert response.json()["reason"] == "the webhook credentials cannot be looked up"  # no details leak


@pytest.mark.parametrize(("value", "mounted"), [("True", True), ("False", False)])
def test_webhook_enabled_decides_whether_the_app_is_mounted(monkeypatch, value, mounted):
    from airflow_provider_pacifica.plugins.webhook import PacificaWebhookPlugin

    monkeypatch.setenv("AIRFLOW__PACIFICA__WEBHOOK_ENABLED", value)
    PacificaWebhookPlugin.on_load()
    try:
        prefixes = [app["url_prefix"] for app in PacificaWebhookPlugin.fastapi_apps]
        assert prefixes == (["/pacifica"] if mounted else [])
    finally:
        monkeypatch.delenv("AIRFLOW__PACIFICA__WEBHOOK_ENABLED")
        PacificaWebhookPlugin.on_load()


_PLUGINS_PROBE = """
import json
from fastapi import FastAPI
from airflow import plugins_manager
from airflow.api_fastapi.app import init_plugins
plugins, errors = plugins_manager._get_plugins()
app = FastAPI()
init_plugins(app)
print(json.dumps({
    "names": [p.name for p in plugins],
    "errors": {k: v for k, v in errors.items() if "pacifica" in k.lower() or "pacifica" in v.lower()},
    "mounts": [getattr(r, "path", "") for r in app.routes],
}))
"""


@pytest.mark.parametrize(
    ("lazy", "enabled"), [("True", "True"), ("False", "True"), ("True", "False")], ids=["default", "eager", "off"]
)
def test_the_plugin_is_registered_exactly_once(lazy, enabled):
    """As the api-server loads plugins: entry points always, provider-info plugins when not lazy."""
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "AIRFLOW__CORE__LAZY_DISCOVER_PROVIDERS": lazy,
        "AIRFLOW__PACIFICA__WEBHOOK_ENABLED": enabled,
    }
    done = subprocess.run(
        [sys.executable, "-c", _PLUGINS_PROBE], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert probe["names"].count("pacifica_webhook") == 1
    assert probe["errors"] == {}  # no "already registered, skipping"
    assert ("/pacifica" in probe["mounts"]) == (enabled == "True")


def test_the_plugin_is_declared_once_and_its_options_documented():
    import tomllib

    from airflow_provider_pacifica.get_provider_info import get_provider_info
    from tests.conftest import REPO

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    entry = pyproject["project"]["entry-points"]["airflow.plugins"]
    assert entry == {"pacifica_webhook": "airflow_provider_pacifica.plugins.webhook:PacificaWebhookPlugin"}
    info = get_provider_info()
    assert "plugins" not in info
    options = info["config"]["pacifica"]["options"]
    assert options["webhook_enabled"]["type"] == "boolean"
    assert options["webhook_enabled"]["default"] == "True"
    assert options["webhook_enabled"]["description"]
    assert options["webhook_credentials_cache_seconds"]["default"] == "30"
    assert "webhook_allowed_assets" in options


# -- one run per event (issue 10, point 4) -----------------------------------------------------


def partition_keys():
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        return [event.partition_key for event in session.query(AssetEvent).order_by(AssetEvent.id)]


def test_each_event_is_recorded_as_its_own_partition(webhook):
    """A PartitionedAssetTimetable DAG gets a run per partition key: one per event, even in a burst."""
    event = load_fixture("dispatcher-example-event.json")
    for event_id in ("metadata.ingest.1", "metadata.ingest.2"):
        assert post(webhook, {**event, "eventID": event_id}).status_code == 201
    assert post(webhook, {**event, "eventID": "metadata.ingest.1"}).json()["status"] == "duplicate"
    assert partition_keys() == ["metadata.ingest.1", "metadata.ingest.2"]


def test_partitioning_can_be_turned_off_for_dags_with_a_plain_asset_schedule(webhook, monkeypatch):
    monkeypatch.setenv("AIRFLOW__PACIFICA__WEBHOOK_PARTITION_EVENTS", "false")
    assert post(webhook, load_fixture("dispatcher-example-event.json")).status_code == 201
    assert partition_keys() == [None]


def test_an_event_id_too_long_for_a_partition_key_is_hashed():
    long_id = "x" * 300
    key = webhook_module.partition_key_for(long_id)
    assert key.startswith("sha256:")
    assert len(key) <= webhook_module.PARTITION_KEY_MAX
    assert key == webhook_module.partition_key_for(long_id)  # a redelivery maps to the same key
    assert webhook_module.partition_key_for("metadata.ingest.7") == "metadata.ingest.7"
