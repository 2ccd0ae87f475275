"""The Notifications webhook app, in process against Airflow's (sqlite) metadata DB."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from airflow_provider_pacifica.plugins.webhook import authenticate, create_app
from tests.conftest import load_fixture

ASSET_URI = "pacifica://metadata/ingest"


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


def test_an_unknown_asset_is_reported_not_created(webhook):
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
