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
from concurrent.futures import ThreadPoolExecutor
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
    return stack.get(f"/api/v2/dags/{DAG_ID}/dagRuns", limit=100)["dag_runs"]


def notify(stack, body, auth=WEBHOOK_AUTH, content_type="application/json") -> requests.Response:
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return requests.post(
        f"{stack.url}/pacifica/events", data=data, headers={"Content-Type": content_type}, auth=auth, timeout=30
    )


def task_instances(stack, run_id: str) -> list[dict]:
    return stack.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")["task_instances"]


def run_for(stack, event_id: str) -> dict | None:
    """The run of the event's partition (the webhook keys each event's partition by its id)."""
    return next((run for run in dag_runs(stack) if run.get("partition_key") == event_id), None)


def trigger_logs(stack, run_id: str) -> list:
    return [
        log
        for log in (stack.home / "logs").rglob("attempt=*.log.trigger.*.log")
        if "task_id=download" in log.parts and f"run_id={run_id}" in log.parts
    ]


def test_a_notification_runs_the_download_dag_waiting_deferred_while_the_archive_stages(airflow, cartd_stack, capsys):
    event = ingest_event(cartd_stack, TEXT_FILES)
    seen_states: set[str] = set()
    with cartd_stack.paused("worker"):  # Cartd cannot stage: the cart waits, as for a tape recall
        posted = time.monotonic()
        response = notify(airflow, event)
        assert response.status_code == 201, response.text
        assert response.json()["status"] == "recorded"
        run = wait_for(lambda: run_for(airflow, event["eventID"]), 60, "the asset-triggered run", airflow)
        queued_after = time.monotonic() - posted
        assert run["run_type"] == "asset_triggered"
        run_id = run["dag_run_id"]

        def deferred():
            states = {ti["state"] for ti in task_instances(airflow, run_id) if ti["task_id"] == "download"}
            seen_states.update(s for s in states if s)
            return "deferred" in states

        wait_for(deferred, 120, "the download to defer (its defer_after is 10 s)", airflow)
    destination = airflow.home / "downloads" / safe_name(run_id) / event["eventID"]

    def finished():
        seen_states.update(ti["state"] for ti in task_instances(airflow, run_id) if ti["task_id"] == "download")
        state = airflow.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
        return state if state in ("success", "failed") else None

    assert wait_for(finished, 180, "the run to finish", airflow) == "success", airflow.log_tail()
    files_after = time.monotonic() - posted
    instances = task_instances(airflow, run_id)
    assert {ti["task_id"]: ti["state"] for ti in instances} == {
        "pick_cloudevents": "success",
        "download": "success",
        "summarize": "success",
    }
    # The wait really ran in the triggerer: the task was deferred and the triggerer logged its trigger.
    logs = trigger_logs(airflow, run_id)
    assert logs, f"no triggerer log for the download task (states seen: {seen_states})"
    assert "ready" in logs[0].read_text(errors="replace")

    for path, data in TEXT_FILES.items():
        assert (destination / path).read_bytes() == data
        assert hashlib.sha1((destination / path).read_bytes()).hexdigest() == hashlib.sha1(data).hexdigest()

    downloads = asset_id(airflow, "pacifica://airflow/downloads")
    events = airflow.get("/api/v2/assets/events", asset_id=downloads)["asset_events"]
    (summary,) = [e for e in events if e["source_run_id"] == run_id]
    assert summary["extra"]["file_count"] == len(TEXT_FILES)
    assert summary["extra"]["event_id"] == event["eventID"]

    with capsys.disabled():
        print(
            f"\n[e2e] POST -> run queued {queued_after:.1f}s; POST -> files on disk {files_after:.1f}s "
            f"(the archive paused until the task deferred); download states seen: {sorted(seen_states)}"
        )

    # A redelivery of the same event records nothing and starts no second run.
    runs = len(dag_runs(airflow))
    again = notify(airflow, event)
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    time.sleep(6)
    assert len(dag_runs(airflow)) == runs


def test_a_cart_ready_within_seconds_is_downloaded_in_its_first_attempt_without_deferral(airflow, cartd_stack):
    """No deferral, so no resumed attempt racing the deferral's report (apache/airflow#72716)."""
    event = ingest_event(cartd_stack, {"quick/one.txt": b"ready at once\n"})
    assert notify(airflow, event).status_code == 201
    run_id = wait_for(lambda: run_for(airflow, event["eventID"]), 60, "the run", airflow)["dag_run_id"]
    states: list[str] = []

    def finished():
        download = next((ti for ti in task_instances(airflow, run_id) if ti["task_id"] == "download"), None)
        if download and download["state"]:
            states.append(download["state"])
        state = airflow.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
        return state if state in ("success", "failed") else None

    assert wait_for(finished, 180, "the run to finish", airflow) == "success", airflow.log_tail()
    (download,) = [ti for ti in task_instances(airflow, run_id) if ti["task_id"] == "download"]
    assert download["try_number"] == 1
    assert "deferred" not in states
    assert trigger_logs(airflow, run_id) == []
    destination = airflow.home / "downloads" / safe_name(run_id) / event["eventID"]
    assert (destination / "quick" / "one.txt").read_bytes() == b"ready at once\n"


def test_a_burst_of_30_events_is_30_runs_and_every_event_is_downloaded_with_no_later_ingest(
    airflow, cartd_stack, capsys
):
    """apache/airflow#56050: a plain asset schedule folds a burst into one run and strands events."""
    events = [ingest_event(cartd_stack, {f"burst/{i}.txt": f"event {i}\n".encode()}) for i in range(30)]
    started = time.monotonic()
    with ThreadPoolExecutor(30) as pool:  # all 30 POSTed within a second
        responses = list(pool.map(lambda event: notify(airflow, event), events))
    posted_in = time.monotonic() - started
    assert [r.status_code for r in responses] == [201] * 30, [r.text for r in responses if r.status_code != 201]
    ids = {event["eventID"] for event in events}

    def all_finished():
        runs = {run["partition_key"]: run for run in dag_runs(airflow) if run.get("partition_key") in ids}
        done = [run for run in runs.values() if run["state"] in ("success", "failed")]
        return runs if len(done) == len(ids) else None

    runs = wait_for(all_finished, 420, "30 runs to finish", airflow)
    elapsed = time.monotonic() - started
    assert sorted(runs) == sorted(ids)  # one run per event
    assert {run["state"] for run in runs.values()} == {"success"}
    for i, event in enumerate(events):
        run = runs[event["eventID"]]
        consumed = airflow.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}/upstreamAssetEvents")
        assert [e["extra"]["cloudevent_id"] for e in consumed["asset_events"]] == [event["eventID"]]
        destination = airflow.home / "downloads" / safe_name(run["dag_run_id"]) / event["eventID"]
        assert (destination / "burst" / f"{i}.txt").read_bytes() == f"event {i}\n".encode()
    with capsys.disabled():
        print(f"\n[e2e] burst: 30 events POSTed in {posted_in:.2f}s; 30 runs, all downloaded {elapsed:.0f}s after")


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
