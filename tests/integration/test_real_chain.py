"""The real chain, end to end: upload -> ingest -> metadata -> Notifications -> webhook -> run -> files.

The whole real Pacifica (scripts/pacifica-stack) and a real Airflow (api-server, scheduler,
dag-processor, triggerer) on 127.0.0.1. Files are uploaded through the real ingest; the event that
starts the DAG run is the one pacifica-metadata emitted and pacifica-notifications delivered to
the provider's webhook with the subscription's basic auth. Nothing here builds an event itself.
"""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from airflow_provider_pacifica.destinations import safe_name
from airflow_provider_pacifica.notifications import NotificationsClient, main
from tests.integration.airflow_stack import pacifica_env, start_airflow
from tests.integration.test_airflow_e2e import wait_for
from tests.integration.test_pacifica_stack import make_tree

pytestmark = pytest.mark.e2e
DAG_ID = "pacifica_cloudevent_download"
WEBHOOK_LOGIN = "pacifica-notify"
WEBHOOK_PASSWORD = "real-chain-pw-7f3a9c"  # must never appear in a log


@pytest.fixture(scope="module")
def chain(pacifica_stack, tmp_path_factory):
    """Airflow on the stack's Cartd, and a Notifications subscription of its webhook."""
    home = tmp_path_factory.mktemp("airflow-real-chain")
    airflow = start_airflow(home, pacifica_env(pacifica_stack, home, WEBHOOK_LOGIN, WEBHOOK_PASSWORD))
    notifications = NotificationsClient(pacifica_stack.notifications_url, pacifica_stack.env["PACIFICA_USER"])
    match = None
    try:
        wait_for(lambda: airflow.api("GET", f"/api/v2/dags/{DAG_ID}").status_code == 200, 90, "the DAG", airflow)
        wait_for(
            lambda: airflow.get("/api/v2/assets", uri_pattern="pacifica://metadata/ingest")["assets"],
            30,
            "the ingest asset",
            airflow,
        )
        match = notifications.subscribe(
            "real-chain test", f"{airflow.url}/pacifica/events", login=WEBHOOK_LOGIN, password=WEBHOOK_PASSWORD
        )
        yield airflow, notifications, match
    finally:
        if match is not None:
            notifications._request("DELETE", f"/eventmatch/{match.uuid}")
        airflow.stop()


def run_of(airflow, txn: int) -> dict | None:
    """The run that the ingest event of transaction ``txn`` started (its partition is the event id)."""
    runs = airflow.get(f"/api/v2/dags/{DAG_ID}/dagRuns", limit=100)["dag_runs"]
    return next((run for run in runs if run.get("partition_key") == f"metadata.ingest.{txn}"), None)


def finished_run(airflow, txn: int, timeout: float = 240) -> dict:
    run = wait_for(lambda: run_of(airflow, txn), 90, f"a run for transaction {txn}", airflow)
    path = f"/api/v2/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}"
    state = wait_for(
        lambda: (s := airflow.get(path)["state"]) in ("success", "failed") and s, timeout, "the run to end", airflow
    )
    assert state == "success", airflow.log_tail()
    return run


def assert_downloaded(airflow, run: dict, txn: int, contents: dict[str, bytes]) -> None:
    destination = airflow.home / "downloads" / safe_name(run["dag_run_id"]) / f"metadata.ingest.{txn}"
    for path, data in contents.items():
        assert (destination / path).read_bytes() == data, path
    summary = airflow.get(
        f"/api/v2/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances/summarize/xcomEntries/return_value",
        map_index=0,
        deserialize=True,
    )["value"]
    summary = json.loads(summary) if isinstance(summary, str) else summary
    assert summary["transaction_id"] == txn
    assert summary["file_count"] == len(contents)
    assert summary["total_bytes"] == sum(len(d) for d in contents.values())


def test_uploads_through_the_real_ingest_start_runs_that_download_their_verified_files(
    chain, pacifica_stack, tmp_path, capsys
):
    airflow, notifications, _ = chain
    first = make_tree(tmp_path / "first", "first upload")
    (tmp_path / "first" / "big" / "detector.raw").parent.mkdir(parents=True)
    big = hashlib.sha256(b"seed").digest() * (24 * 1024 * 1024 // 32)  # 24 MiB
    (tmp_path / "first" / "big" / "detector.raw").write_bytes(big)
    first["big/detector.raw"] = big

    started = time.monotonic()
    txn = pacifica_stack.upload(tmp_path / "first")
    uploaded = time.monotonic() - started
    run = finished_run(airflow, txn)
    assert run["run_type"] == "asset_triggered"
    assert_downloaded(airflow, run, txn, first)
    elapsed = time.monotonic() - started

    second = make_tree(tmp_path / "second", "second upload")
    txn2 = pacifica_stack.upload(tmp_path / "second")
    assert txn2 != txn
    run2 = finished_run(airflow, txn2)
    assert run2["dag_run_id"] != run["dag_run_id"]
    assert_downloaded(airflow, run2, txn2, second)

    (match,) = [m for m in notifications.eventmatches() if m.name == "real-chain test"]
    assert not match.is_disabled
    with capsys.disabled():
        print(f"\n[real chain] upload {uploaded:.1f}s (ingest job done); upload -> verified files {elapsed:.1f}s")


def test_an_api_server_outage_disables_the_subscription_and_the_cli_restores_delivery(
    chain, pacifica_stack, tmp_path, capsys
):
    airflow, notifications, match = chain
    airflow.stop_component("api-server")
    try:
        make_tree(tmp_path / "missed", "during the outage")
        missed = pacifica_stack.upload(tmp_path / "missed")

        def disabled():
            (current,) = [m for m in notifications.eventmatches() if m.uuid == match.uuid]
            return current if current.is_disabled else None

        # What Pacifica does: one delivery, refused connection, the subscription disabled for good.
        broken = wait_for(disabled, 90, "Notifications to disable the subscription")
        assert "Connection refused" in (broken.error or "") or "Max retries" in (broken.error or "")
    finally:
        airflow.restart_component("api-server")

    make_tree(tmp_path / "still", "while disabled")
    still = pacifica_stack.upload(tmp_path / "still")
    time.sleep(5)
    assert run_of(airflow, still) is None  # nothing reaches Airflow until the subscription is repaired

    url, user = pacifica_stack.notifications_url, pacifica_stack.env["PACIFICA_USER"]
    assert main(["list", "--url", url, "--user", user, "--check"]) == 1
    listed = capsys.readouterr().out
    assert "DISABLED" in listed
    assert main(["enable", "--url", url, "--user", user]) == 0
    assert f"re-enabled {match.uuid}" in capsys.readouterr().out
    assert main(["list", "--url", url, "--user", user, "--check"]) == 0
    capsys.readouterr()

    contents = make_tree(tmp_path / "after", "after the repair")
    txn = pacifica_stack.upload(tmp_path / "after")
    assert_downloaded(airflow, finished_run(airflow, txn), txn, contents)
    assert run_of(airflow, missed) is None  # Notifications does not send missed events again
    assert run_of(airflow, still) is None


def test_with_the_watcher_dag_unpaused_an_upload_is_found_by_polling_metadata_and_downloaded(
    chain, pacifica_stack, tmp_path, capsys
):
    """The pull intake on a real triggerer, beside the webhook: the ingest is downloaded once."""
    airflow, _, _ = chain
    watcher_dag = "pacifica_ingest_watcher"
    wait_for(lambda: airflow.api("GET", f"/api/v2/dags/{watcher_dag}").status_code == 200, 90, "the DAG", airflow)
    assert airflow.get(f"/api/v2/dags/{watcher_dag}")["is_paused"] is True  # opt-in
    triggerer_log = airflow.home / "triggerer.log"
    assert airflow.api("PATCH", f"/api/v2/dags/{watcher_dag}", json={"is_paused": False}).status_code == 200
    try:
        wait_for(
            lambda: "Watching Pacifica transactions created from" in triggerer_log.read_text(errors="replace"),
            120,
            "the watcher to start polling",
            airflow,
        )
        contents = make_tree(tmp_path / "pulled", "found by the watcher")
        started = time.monotonic()
        txn = pacifica_stack.upload(tmp_path / "pulled")
        event_id = f"metadata.ingest.{txn}"

        def watcher_run():
            for run in airflow.get(f"/api/v2/dags/{watcher_dag}/dagRuns", limit=100)["dag_runs"]:
                run_path = f"/api/v2/dags/{watcher_dag}/dagRuns/{run['dag_run_id']}"
                events = airflow.api("GET", f"{run_path}/upstreamAssetEvents")
                if events.status_code != 200:  # Airflow 3.3.2 answers 500 while the run has no start_date
                    continue
                ids = [(e["extra"].get("payload") or {}).get("cloudevent_id") for e in events.json()["asset_events"]]
                if event_id in ids:
                    return run
            return None

        run = wait_for(watcher_run, 120, f"a watcher run for {event_id}", airflow)
        queued = time.monotonic() - started
        path = f"/api/v2/dags/{watcher_dag}/dagRuns/{run['dag_run_id']}"
        state = wait_for(
            lambda: (s := airflow.get(path)["state"]) in ("success", "failed") and s, 240, "the run", airflow
        )
        assert state == "success", airflow.log_tail()
        # The webhook's subscription is on too: its DAG got the ingest as well, and one of the two
        # runs downloaded it (the earliest recorded event's, docs/watcher.rst), the other skipped it.
        finished_run(airflow, txn)
        (destination,) = sorted((airflow.home / "downloads").glob(f"*/{event_id}"))
        assert destination.parent.name in (safe_name(run["dag_run_id"]), safe_name(run_of(airflow, txn)["dag_run_id"]))
        for relative, data in contents.items():
            assert (destination / relative).read_bytes() == data, relative
        with capsys.disabled():
            print(f"\n[real chain] watcher: upload -> run queued {queued:.1f}s (10 s polls)")
    finally:
        airflow.api("PATCH", f"/api/v2/dags/{watcher_dag}", json={"is_paused": True})


def test_the_webhook_password_is_in_no_log(chain, pacifica_stack):
    """Not in Airflow's component, task or triggerer logs, nor in Pacifica's service logs."""
    airflow, _, _ = chain
    logs = [*airflow.home.rglob("*.log"), *(pacifica_stack.workdir / "run" / "logs").rglob("*")]
    assert len(logs) > 10
    assert [str(path) for path in logs if path.is_file() and WEBHOOK_PASSWORD.encode() in path.read_bytes()] == []
