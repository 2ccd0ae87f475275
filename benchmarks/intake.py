"""The intake benchmark: the webhook under a burst, and the real chain from upload to files on disk.

Run by ``scripts/benchmark`` (``--only-intake`` runs just this; ``--no-intake`` skips it). On
127.0.0.1, with the whole real Pacifica (scripts/pacifica-stack) and a real Airflow whose metadata
database is PostgreSQL (a database of its own on the stack's PostgreSQL server):

1. **Burst.** ``events`` distinct ingest CloudEvents POSTed to the webhook by ``clients``
   concurrent clients (a ``requests`` session each, basic auth, as pacifica-notifications posts):
   events per second over the burst, p50/p99 latency per POST, and then, counted in PostgreSQL,
   the asset events recorded: exactly one per event id (none lost, none doubled). A tenth of the
   events is redelivered afterwards and must record nothing. The DAG is paused for the burst (its
   runs are not what this measures; a paused DAG gets no partition runs queued).
2. **Upload -> files.** ``uploads`` uploads, one after the other, through the real ingest; the
   webhook is subscribed in Notifications. Per upload: the ingest job (upload start -> job done),
   upload start -> DAG run queued (Pacifica's event through Notifications, the webhook and the
   scheduler), upload start -> files verified on disk, and Cartd's staging time inside the
   download task (from its log: "Created cart" -> "is ready"). Medians (p50) over the uploads.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the tests' Airflow launcher

from airflow_provider_pacifica.notifications import NotificationsClient  # noqa: E402
from tests.integration.airflow_stack import AirflowStack, start_airflow, wait  # noqa: E402

PACIFICA_STACK = REPO / "scripts" / "pacifica-stack"
DAG_ID = "pacifica_cloudevent_download"
INGEST_URI = "pacifica://metadata/ingest"
AUTH = ("pacifica-notify", "intake-bench-pw")


def measure_intake(workdir: Path, *, events: int = 1000, clients: int = 16, uploads: int = 10) -> dict[str, Any]:
    stack_dir = workdir / "pacifica"
    subprocess.run([sys.executable, str(PACIFICA_STACK), "stop", "--workdir", str(stack_dir)], capture_output=True)
    started = subprocess.run(
        [sys.executable, str(PACIFICA_STACK), "start", "--workdir", str(stack_dir)], capture_output=True, text=True
    )
    if started.returncode != 0:
        raise RuntimeError(f"scripts/pacifica-stack start failed:\n{started.stderr[-3000:]}")
    pacifica = dict(line.split("=", 1) for line in started.stdout.splitlines() if "=" in line)
    airflow: AirflowStack | None = None
    try:
        database = create_database(pacifica["PACIFICA_POSTGRES_URL"], "airflow_intake_bench")
        cartd = urlsplit(pacifica["CARTD_URL"])
        home = workdir / "airflow-intake"
        shutil.rmtree(home, ignore_errors=True)
        airflow = start_airflow(
            home,
            {
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database,
                "AIRFLOW_CONN_PACIFICA_CARTD_DEFAULT": json.dumps(
                    {"conn_type": "pacifica_cartd", "host": cartd.hostname, "port": cartd.port}
                ),
                "AIRFLOW_CONN_PACIFICA_WEBHOOK_DEFAULT": json.dumps(
                    {"conn_type": "generic", "login": AUTH[0], "password": AUTH[1]}
                ),
                "PACIFICA_DOWNLOAD_ROOT": str(home / "downloads"),
            },
        )
        wait(lambda: airflow.api("GET", f"/api/v2/dags/{DAG_ID}").status_code == 200, 120, "the DAG")
        wait(lambda: airflow.get("/api/v2/assets", uri_pattern=INGEST_URI)["assets"], 60, "the ingest asset")
        result: dict[str, Any] = {"database": "PostgreSQL", "api_server_workers": 1}
        set_paused(airflow, True)
        result["burst"] = measure_burst(airflow, database, events, clients)
        set_paused(airflow, False)
        result["uploads"] = measure_uploads(airflow, pacifica, stack_dir, workdir / "uploads", uploads)
        return result
    finally:
        if airflow is not None:
            airflow.stop()
        subprocess.run([sys.executable, str(PACIFICA_STACK), "stop", "--workdir", str(stack_dir)], capture_output=True)


def create_database(server_url: str, name: str) -> str:
    """A new, empty database on the stack's PostgreSQL; its SQLAlchemy URL for Airflow."""
    import psycopg2

    url = urlsplit(server_url)
    connection = psycopg2.connect(host=url.hostname, port=url.port, user=url.username or "postgres", dbname="postgres")
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {name}")
        cursor.execute(f"CREATE DATABASE {name}")
    connection.close()
    return f"postgresql+psycopg2://{url.username or 'postgres'}@{url.hostname}:{url.port}/{name}"


def set_paused(airflow: AirflowStack, paused: bool) -> None:
    response = airflow.api("PATCH", f"/api/v2/dags/{DAG_ID}", json={"is_paused": paused})
    response.raise_for_status()


def ingest_event(index: int) -> dict[str, Any]:
    """An ingest CloudEvent as pacifica-metadata emits it (0.1 keys), one file, a distinct id."""
    return {
        "cloudEventsVersion": "0.1",
        "eventType": "org.pacifica.metadata.ingest",
        "eventID": f"metadata.ingest.bench-{index}",
        "eventTime": "2026-12-03T09:00:00",
        "source": f"http://metadata.pacifica.org/transactions?_id={100000 + index}",
        "contentType": "application/json",
        "extensions": {},
        "data": [
            {"destinationTable": "Transactions.project", "value": "1234a"},
            {
                "destinationTable": "Files",
                "_id": 500000 + index,
                "name": f"frame-{index}.raw",
                "subdir": "burst",
                "size": 4096,
                "hashtype": "sha1",
                "hashsum": f"{index:040x}",
                "mimetype": "application/octet-stream",
                "ctime": "2026-12-03T09:00:00",
                "mtime": "2026-12-03T09:00:00",
            },
            {"destinationTable": "Transactions._id", "value": 100000 + index},
        ],
    }


def measure_burst(airflow: AirflowStack, database: str, events: int, clients: int) -> dict[str, Any]:
    bodies = [json.dumps(ingest_event(i)) for i in range(events)]
    url = f"{airflow.url}/pacifica/events"
    sessions = [requests.Session() for _ in range(clients)]

    def post(index: int) -> tuple[int, float]:
        session = sessions[index % clients]
        begin = time.perf_counter()
        response = session.post(
            url, data=bodies[index], headers={"Content-Type": "application/json"}, auth=AUTH, timeout=120
        )
        return response.status_code, time.perf_counter() - begin

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(post, range(min(clients, events))))  # connections opened; these are redelivered below
        began = time.perf_counter()
        answers = list(pool.map(post, range(clients, events)))
        wall = time.perf_counter() - began
        redelivered = list(pool.map(post, range(0, events, 10)))
    latencies = sorted(seconds for _, seconds in answers)
    statuses = {str(code): sum(1 for c, _ in answers if c == code) for code in {c for c, _ in answers}}
    recorded, distinct = count_asset_events(database)
    return {
        "events": events,
        "clients": clients,
        "timed_events": len(answers),
        "seconds": wall,
        "events_per_s": len(answers) / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "statuses": statuses,
        "redelivered": len(redelivered),
        "redelivery_statuses": sorted({c for c, _ in redelivered}),
        "asset_events_recorded": recorded,
        "distinct_event_ids": distinct,
    }


def count_asset_events(database: str) -> tuple[int, int]:
    """Asset events of the ingest asset, and their distinct event ids, counted in PostgreSQL."""
    import psycopg2

    url = urlsplit(database.replace("postgresql+psycopg2", "postgresql"))
    connection = psycopg2.connect(host=url.hostname, port=url.port, user=url.username, dbname=url.path.lstrip("/"))
    with connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), count(DISTINCT e.extra->>'cloudevent_id') FROM asset_event e "
            "JOIN asset a ON a.id = e.asset_id WHERE a.uri = %s",
            (INGEST_URI,),
        )
        recorded, distinct = cursor.fetchone()
    connection.close()
    return int(recorded), int(distinct)


def measure_uploads(
    airflow: AirflowStack, pacifica: dict[str, str], stack_dir: Path, sources: Path, count: int
) -> dict[str, Any]:
    notifications = NotificationsClient(pacifica["PACIFICA_NOTIFICATIONS_URL"], pacifica["PACIFICA_USER"])
    notifications.subscribe("intake benchmark", f"{airflow.url}/pacifica/events", login=AUTH[0], password=AUTH[1])
    shutil.rmtree(sources, ignore_errors=True)
    samples = []
    for index in range(count):
        root = sources / f"upload-{index}"
        (root / "sub").mkdir(parents=True)
        (root / "readme.txt").write_text(f"upload {index}\n")
        (root / "sub" / "data.bin").write_bytes(bytes(range(256)) * 4096 * 4)  # 4 MiB
        began = time.monotonic()
        event_id = f"metadata.ingest.{upload(stack_dir, root)}"
        ingested = time.monotonic() - began
        run = wait(lambda event_id=event_id: run_of(airflow, event_id), 120, f"a run for {event_id}", poll=0.05)
        queued = time.monotonic() - began
        path = f"/api/v2/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}"
        state = wait(lambda path=path: end_state(airflow, path), 600, "the run", poll=0.2)
        done = time.monotonic() - began
        if state != "success":
            raise RuntimeError(f"run {run['dag_run_id']} {state}:\n{airflow.log_tail()}")
        samples.append(
            {
                "ingest_s": ingested,
                "queued_s": queued,
                "files_s": done,
                "staging_s": cart_staging_seconds(airflow, run["dag_run_id"]),
            }
        )
        print(f"  upload {index + 1}/{count}: " + ", ".join(f"{k} {v:.1f}" for k, v in samples[-1].items()), flush=True)
    return {
        "uploads": count,
        "bytes_each": 4 * 1024 * 1024 + 9,
        "samples": samples,
        **{f"p50_{key}": statistics.median(s[key] for s in samples) for key in samples[0]},
    }


def cart_staging_seconds(airflow: AirflowStack, run_id: str) -> float:
    """From the download task's log: when the cart was created, and when it was found ready."""
    created = ready = None
    logs = sorted(
        (airflow.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / "task_id=download").rglob("attempt=*.log")
    )
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            text = str(record.get("event", ""))
            stamp = record.get("timestamp")
            if stamp and text.startswith("Created cart") and created is None:
                created = datetime.fromisoformat(stamp)
            elif stamp and created is not None and ready is None and text.endswith("is ready"):
                ready = datetime.fromisoformat(stamp)
    if created is None:
        return float("nan")
    return (ready - created).total_seconds() if ready else 0.0  # ready at once: no poll was needed


def end_state(airflow: AirflowStack, run_path: str) -> str | None:
    state = airflow.get(run_path)["state"]
    return state if state in ("success", "failed") else None


def upload(stack_dir: Path, source: Path) -> int:
    """Upload ``source`` through the real ingest (``scripts/pacifica-stack upload``); its transaction id."""
    done = subprocess.run(
        [sys.executable, str(PACIFICA_STACK), "upload", "--workdir", str(stack_dir), str(source)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout.strip())


def run_of(airflow: AirflowStack, event_id: str) -> dict | None:
    runs = airflow.get(f"/api/v2/dags/{DAG_ID}/dagRuns", limit=100, order_by="-run_after")["dag_runs"]
    return next((run for run in runs if run.get("partition_key") == event_id), None)


def report(intake: dict[str, Any]) -> str:
    burst, uploads = intake["burst"], intake["uploads"]
    lost_or_doubled = burst["asset_events_recorded"] - burst["events"]
    lines = [
        f"### Intake (webhook on a real api-server, {intake['api_server_workers']} worker, "
        f"{intake['database']} metadata DB)",
        "",
        "| Burst | events | clients | events/s | p50 | p99 | asset events recorded | distinct ids | redeliveries |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| webhook | {burst['events']} | {burst['clients']} | {burst['events_per_s']:.0f} | "
        f"{burst['p50_ms']:.0f} ms | {burst['p99_ms']:.0f} ms | {burst['asset_events_recorded']} "
        f"({lost_or_doubled:+d}) | {burst['distinct_event_ids']} | {burst['redelivered']} -> "
        f"{'/'.join(map(str, burst['redelivery_statuses']))} |",
        "",
        f"| Real upload ({uploads['uploads']} x 4 MiB + 1 file), p50 | ingest job | -> run queued | "
        "-> files verified | of which Cartd staging |",
        "|---|---|---|---|---|",
        f"| seconds from upload start | {uploads['p50_ingest_s']:.1f} | {uploads['p50_queued_s']:.1f} | "
        f"{uploads['p50_files_s']:.1f} | {uploads['p50_staging_s']:.1f} |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    figures = measure_intake(REPO / ".cache" / "bench")
    print(json.dumps(figures, indent=2))
    print(report(figures))
