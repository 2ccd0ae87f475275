"""End to end on real components, all on 127.0.0.1.

A real Airflow (api-server, scheduler, dag-processor, triggerer) with the provider installed, the
real Cartd stack with files loaded, and the CloudEvent POSTed to the provider's webhook exactly as
pacifica-notifications does it (``requests.post(target_url, data=json.dumps(event),
headers={'Content-Type': 'application/json'}, auth=(user, password))``).
"""

from __future__ import annotations

import hashlib
import json
import time
from urllib.parse import urlsplit

import pytest
import requests

from airflow_provider_pacifica.destinations import safe_name
from tests.integration.airflow_stack import start_airflow
from tests.integration.test_download_dag import TEXT_FILES, ingest_event

pytestmark = pytest.mark.e2e
DAG_ID = "pacifica_cloudevent_download"
WEBHOOK_AUTH = ("pacifica-notify", "notify-secret-1")


@pytest.fixture(scope="module")
def airflow(cartd_stack, tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow-e2e")
    cartd = urlsplit(cartd_stack.cartd_url)
    stack = start_airflow(
        home,
        {
            "AIRFLOW_CONN_PACIFICA_CARTD_DEFAULT": json.dumps(
                {"conn_type": "pacifica_cartd", "host": cartd.hostname, "port": cartd.port}
            ),
            "AIRFLOW_CONN_PACIFICA_WEBHOOK_DEFAULT": json.dumps(
                {"conn_type": "generic", "login": WEBHOOK_AUTH[0], "password": WEBHOOK_AUTH[1]}
            ),
            "PACIFICA_DOWNLOAD_ROOT": str(home / "downloads"),
        },
    )
    try:
        wait_for(
            lambda: stack.api("GET", f"/api/v2/dags/{DAG_ID}").status_code == 200, 90, "the DAG to be parsed", stack
        )
        wait_for(lambda: asset_id(stack, "pacifica://metadata/ingest") is not None, 30, "the ingest asset", stack)
        yield stack
    finally:
        stack.stop()


def wait_for(check, timeout: float, what: str, stack=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{stack.log_tail()}" if stack else ""))


def asset_id(stack, uri: str) -> int | None:
    assets = stack.get("/api/v2/assets", uri_pattern=uri)["assets"]
    return next((a["id"] for a in assets if a["uri"] == uri), None)


def dag_runs(stack) -> list[dict]:
    return stack.get(f"/api/v2/dags/{DAG_ID}/dagRuns")["dag_runs"]


def notify(stack, body, auth=WEBHOOK_AUTH, content_type="application/json") -> requests.Response:
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return requests.post(
        f"{stack.url}/pacifica/events", data=data, headers={"Content-Type": content_type}, auth=auth, timeout=30
    )


def test_a_notification_runs_the_download_dag_deferred_and_verified(airflow, cartd_stack, capsys):
    event = ingest_event(cartd_stack, TEXT_FILES)
    posted = time.monotonic()
    response = notify(airflow, event)
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "recorded"

    (run,) = wait_for(lambda: dag_runs(airflow), 60, "the asset-triggered run", airflow)
    queued_after = time.monotonic() - posted
    assert run["run_type"] == "asset_triggered"
    run_id = run["dag_run_id"]
    destination = airflow.home / "downloads" / safe_name(run_id) / event["eventID"]

    seen_states: set[str] = set()
    files_after = None

    def finished():
        nonlocal files_after
        for ti in airflow.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")["task_instances"]:
            if ti["task_id"] == "download" and ti["state"]:
                seen_states.add(ti["state"])
        if files_after is None and all((destination / path).exists() for path in TEXT_FILES):
            files_after = time.monotonic() - posted
        state = airflow.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
        return state if state in ("success", "failed") else None

    assert wait_for(finished, 180, "the run to finish", airflow) == "success", airflow.log_tail()
    states = {
        ti["task_id"]: ti["state"]
        for ti in airflow.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")["task_instances"]
    }
    assert states == {"pick_cloudevents": "success", "download": "success", "summarize": "success"}

    # The wait really ran in the triggerer: the task was deferred and the triggerer logged its trigger.
    trigger_logs = [
        log
        for log in (airflow.home / "logs").rglob("attempt=1.log.trigger.*.log")
        if "task_id=download" in log.parts  # under map_index=0/ now that downloads are mapped per event
    ]
    assert trigger_logs, f"no triggerer log for the download task (states seen: {seen_states})"
    assert "ready" in trigger_logs[0].read_text(errors="replace")

    for path, data in TEXT_FILES.items():
        assert (destination / path).read_bytes() == data
        assert hashlib.sha1((destination / path).read_bytes()).hexdigest() == hashlib.sha1(data).hexdigest()

    downloads = asset_id(airflow, "pacifica://airflow/downloads")
    events = airflow.get("/api/v2/assets/events", asset_id=downloads)["asset_events"]
    assert [e["extra"]["file_count"] for e in events] == [len(TEXT_FILES)]
    assert events[0]["source_run_id"] == run_id
    assert events[0]["extra"]["event_id"] == event["eventID"]

    with capsys.disabled():
        print(
            f"\n[e2e] POST -> run queued {queued_after:.1f}s; POST -> files on disk {files_after:.1f}s; "
            f"download states seen: {sorted(seen_states)}"
        )

    # A redelivery of the same event records nothing and starts no second run.
    again = notify(airflow, event)
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    time.sleep(6)
    assert len(dag_runs(airflow)) == 1


@pytest.mark.parametrize(
    ("body", "auth", "content_type", "status"),
    [
        ("EVENT", ("pacifica-notify", "wrong"), "application/json", 401),
        ("EVENT", None, "application/json", 401),
        ("{not json", WEBHOOK_AUTH, "application/json", 400),
        ({"cloudEventsVersion": "0.1", "eventID": "no-files", "data": []}, WEBHOOK_AUTH, "application/json", 400),
        ("x" * (5 * 1024 * 1024), WEBHOOK_AUTH, "application/json", 413),
        ("EVENT", WEBHOOK_AUTH, "text/plain", 415),
    ],
)
def test_bad_notifications_are_refused_and_start_nothing(airflow, cartd_stack, body, auth, content_type, status):
    runs_before = len(dag_runs(airflow))
    ingest = asset_id(airflow, "pacifica://metadata/ingest")
    events_before = airflow.get("/api/v2/assets/events", asset_id=ingest)["total_entries"]
    if body == "EVENT":
        body = ingest_event(cartd_stack, {"x.txt": b"x"})
    response = notify(airflow, body, auth=auth, content_type=content_type)
    assert response.status_code == status, response.text
    assert response.json()["status"] == "refused"
    time.sleep(2)
    assert len(dag_runs(airflow)) == runs_before
    assert airflow.get("/api/v2/assets/events", asset_id=ingest)["total_entries"] == events_before
