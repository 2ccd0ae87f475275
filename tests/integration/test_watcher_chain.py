"""The pull intake end to end, on the whole real Pacifica and a real Airflow with its triggerer.

Uploads go through the real ingest; ``pacifica_ingest_watcher`` is unpaused and its trigger polls
the real metadata every 3 s (``PACIFICA_WATCHER_POLL_INTERVAL``). What each test proves is read
from the download root: every ingest's files are in exactly one ``<run>/<event id>/`` directory,
whatever stopped meanwhile (the triggerer, metadata) and whichever intakes are on.
"""

from __future__ import annotations

import time

import pytest
import requests

from airflow_provider_pacifica.notifications import NotificationsClient
from tests.integration.airflow_stack import pacifica_env, start_airflow
from tests.integration.test_airflow_e2e import wait_for
from tests.integration.test_pacifica_stack import make_tree

pytestmark = pytest.mark.e2e
WATCHER_DAG = "pacifica_ingest_watcher"
WEBHOOK_DAG = "pacifica_cloudevent_download"
DAGS = (WATCHER_DAG, WEBHOOK_DAG)
WEBHOOK_LOGIN = "pacifica-notify"
WEBHOOK_PASSWORD = "watcher-chain-pw-51c2e0"
POLL = 3  # seconds between the watcher's polls


@pytest.fixture(scope="module")
def airflow(pacifica_stack, tmp_path_factory):
    """Airflow on the stack's metadata and Cartd, the watcher DAG unpaused and polling."""
    home = tmp_path_factory.mktemp("airflow-watcher-chain")
    stack = start_airflow(
        home,
        {
            **pacifica_env(pacifica_stack, home, WEBHOOK_LOGIN, WEBHOOK_PASSWORD),
            "PACIFICA_WATCHER_POLL_INTERVAL": str(POLL),
        },
    )
    try:
        for dag_id in DAGS:
            wait_for(lambda d=dag_id: stack.api("GET", f"/api/v2/dags/{d}").status_code == 200, 90, dag_id, stack)
        answer = stack.api("PATCH", f"/api/v2/dags/{WATCHER_DAG}", json={"is_paused": False})
        assert answer.status_code == 200, answer.text
        wait_for(lambda: "Watching Pacifica transactions created from" in triggerer_log(stack), 120, "polls", stack)
        yield stack
    finally:
        stack.stop()


def triggerer_log(stack) -> str:
    return (stack.home / "triggerer.log").read_text(errors="replace")


def download_dirs(stack, event_id: str) -> list:
    """The directories an ingest was downloaded into, by any run of either DAG."""
    root = stack.home / "downloads"
    return sorted(path for path in root.glob(f"*/{event_id}") if path.is_dir()) if root.exists() else []


def all_runs_ended(stack) -> bool:
    for dag_id in DAGS:
        runs = stack.get(f"/api/v2/dags/{dag_id}/dagRuns", limit=200)["dag_runs"]
        if any(run["state"] not in ("success", "failed") for run in runs):
            return False
    return True


def failed_runs(stack) -> list[str]:
    return [
        f"{dag_id}/{run['dag_run_id']}"
        for dag_id in DAGS
        for run in stack.get(f"/api/v2/dags/{dag_id}/dagRuns", limit=200)["dag_runs"]
        if run["state"] == "failed"
    ]


def assert_downloaded_once(stack, uploads: dict[int, dict[str, bytes]], timeout: float = 300) -> None:
    """Each upload's files verified in exactly one directory, once every run has ended (and stays so)."""
    for txn in uploads:
        wait_for(lambda t=txn: download_dirs(stack, f"metadata.ingest.{t}"), timeout, f"transaction {txn}", stack)
    wait_for(lambda: all_runs_ended(stack), timeout, "every run to end", stack)
    time.sleep(3 * POLL)  # a second download would start now: the watcher polls, a requeued run starts
    wait_for(lambda: all_runs_ended(stack), timeout, "every run to end", stack)
    assert failed_runs(stack) == [], stack.log_tail()
    for txn, contents in uploads.items():
        (directory,) = download_dirs(stack, f"metadata.ingest.{txn}")
        for relative, data in contents.items():
            assert (directory / relative).read_bytes() == data, (txn, relative)


def upload(pacifica_stack, tmp_path, tag: str) -> tuple[int, dict[str, bytes]]:
    contents = make_tree(tmp_path / tag, tag)
    return pacifica_stack.upload(tmp_path / tag), contents


def test_uploads_made_while_the_triggerer_is_stopped_are_each_downloaded_once_after_it_starts(
    airflow, pacifica_stack, tmp_path
):
    """The cursor survives in the asset's state store; the three transactions come as a burst of
    events (folded into runs, or left without one until requeued: apache/airflow#56050)."""
    airflow.stop_component("triggerer")
    try:
        uploads = dict(upload(pacifica_stack, tmp_path, f"while-stopped-{n}") for n in range(3))
    finally:
        airflow.restart_component("triggerer")
    assert_downloaded_once(airflow, uploads)
    assert "Resuming after transactions created at" in triggerer_log(airflow)  # the stored cursor


@pytest.mark.timeout(900)
def test_a_metadata_outage_of_a_minute_is_ridden_through_and_caught_up(airflow, pacifica_stack, tmp_path):
    """An upload just before metadata stops (ingest needs metadata: none can be made during it) and
    one just after it is back are each downloaded once; the watcher logged the outage."""
    before = upload(pacifica_stack, tmp_path, "before-outage")
    failures = triggerer_log(airflow).count("Pacifica ingest watcher:")
    pacifica_stack.stop_service("metadata")
    stopped = time.monotonic()
    try:
        wait_for(lambda: triggerer_log(airflow).count("Pacifica ingest watcher:") > failures, 60, "a failed poll")
        time.sleep(max(0.0, 60 - (time.monotonic() - stopped)))
    finally:
        pacifica_stack.start_service("metadata")
    after = upload(pacifica_stack, tmp_path, "after-outage")
    assert_downloaded_once(airflow, dict([before, after]), timeout=600)  # the watcher's backoff reaches 48 s


def test_transactions_that_cannot_be_downloaded_are_skipped_with_their_reason_and_the_watcher_goes_on(
    airflow, pacifica_stack, tmp_path
):
    """Written to metadata directly (the ingest never makes them): one without files, one whose
    file has no hash. The triggerer is stopped meanwhile, so the watcher never sees one half-written."""
    no_files, no_hash = 900_001, 900_002
    records = {
        "transactions": [{"_id": txn} for txn in (no_files, no_hash)],
        # What transaction info reads the submitter, project and instrument from (404 without it).
        "transsip": [
            {"_id": txn, "submitter": 10, "project": "1234a", "instrument": 54} for txn in (no_files, no_hash)
        ],
        "files": [
            {
                "_id": 900_100,
                "name": "nohash.txt",
                "subdir": "",
                "transaction": no_hash,
                "size": 5,
                "hashtype": "sha1",
                "hashsum": "",
                "mimetype": "text/plain",
            }
        ],
    }
    airflow.stop_component("triggerer")
    try:
        for table, rows in records.items():
            answer = requests.put(f"{pacifica_stack.metadata_url}/{table}", json=rows, timeout=30)
            assert answer.status_code == 200, answer.text
    finally:
        airflow.restart_component("triggerer")
    good = upload(pacifica_stack, tmp_path, "after-bad-ones")
    assert_downloaded_once(airflow, dict([good]))
    skipped = {
        txn: [line for line in triggerer_log(airflow).splitlines() if f"Skipping transaction {txn}:" in line]
        for txn in (no_files, no_hash)
    }
    assert len(skipped[no_files]) == 1  # skipped once, not retried
    assert f"cannot be downloaded: transaction {no_files} has no files" in skipped[no_files][0]
    assert len(skipped[no_hash]) == 1
    assert "cannot be downloaded" in skipped[no_hash][0]
    assert "has no hashsum" in skipped[no_hash][0]
    assert download_dirs(airflow, f"metadata.ingest.{no_files}") == []
    assert download_dirs(airflow, f"metadata.ingest.{no_hash}") == []


def test_with_the_webhook_on_too_each_ingest_is_downloaded_once_and_the_other_run_names_the_winner(
    airflow, pacifica_stack, tmp_path
):
    notifications = NotificationsClient(pacifica_stack.notifications_url, pacifica_stack.env["PACIFICA_USER"])
    match = notifications.subscribe(
        "watcher-chain test", f"{airflow.url}/pacifica/events", login=WEBHOOK_LOGIN, password=WEBHOOK_PASSWORD
    )
    try:
        uploads = dict(upload(pacifica_stack, tmp_path, f"both-{n}") for n in range(2))
        assert_downloaded_once(airflow, uploads)
    finally:
        notifications._request("DELETE", f"/eventmatch/{match.uuid}")
    task_logs = "\n".join(
        path.read_text(errors="replace") for path in (airflow.home / "logs").rglob("*") if path.is_file()
    )
    for txn in uploads:
        event_id = f"metadata.ingest.{txn}"
        # Both intakes recorded it: one run downloaded, the other's pick logged the skip and the winner.
        assert f"Skipping {event_id}: already recorded earlier: asset event #" in task_logs, event_id
