"""The demo: files uploaded to a real Pacifica reach an Airflow DAG run through Pacifica's own event.

Run it with ``scripts/demo`` (which prepares the venv first). On 127.0.0.1 only, it starts:

* the whole real Pacifica (scripts/pacifica-stack: metadata, policy, ingest, notifications,
  archive interface, Cartd, with PostgreSQL and redis),
* a real Airflow 3 (api-server with the provider's webhook, scheduler, dag-processor, triggerer;
  the launcher of the end-to-end tests, tests/integration/airflow_stack.py),

subscribes the webhook to Pacifica's ingest events (``POST /eventmatch``, basic auth), uploads
sample files through the real ingest (a subdirectory, a non-ASCII name, a 32 MiB file), and
follows the run of ``pacifica_cloudevent_download`` that Pacifica's event started: the files
verified on disk against metadata's hashes, the downstream step's result and the manifest. Then
it stops everything it started.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the tests' Airflow launcher

from airflow_provider_pacifica.notifications import NotificationsClient  # noqa: E402
from tests.integration.airflow_stack import AirflowStack, start_airflow  # noqa: E402

STACK = REPO / "scripts" / "pacifica-stack"
DAG_ID = "pacifica_cloudevent_download"
WEBHOOK_LOGIN = "pacifica-notify"
WEBHOOK_PASSWORD = "demo-webhook-password"  # a throwaway stack's; a real one comes from a secrets backend


def sample_files() -> dict[str, bytes]:
    rows = "".join(f"{t},{290 + t / 100:.2f}\n" for t in range(500))
    return {
        "README.txt": b"Sample data set for the airflow-provider-pacifica demo.\n",
        "run-001/temperature.csv": ("t_s,kelvin\n" + rows).encode(),
        "run-001/notes/résumé ü.txt": "Non-ASCII names survive the round trip: é ü ✓\n".encode(),
        "run-001/detector/frames.raw": hashlib.sha256(b"frames").digest() * (32 * 1024 * 1024 // 32),  # 32 MiB
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=REPO / ".cache" / "demo")
    parser.add_argument("--output", type=Path, default=REPO / "demo-output", help="where the files are published")
    args = parser.parse_args()
    began = time.monotonic()

    workdir: Path = args.workdir.absolute()
    stack_dir = workdir / "pacifica"
    if workdir.exists():
        subprocess.run([sys.executable, STACK, "stop", "--workdir", str(stack_dir)], check=False)
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    output: Path = args.output.absolute()
    shutil.rmtree(output, ignore_errors=True)

    step("Starting the whole real Pacifica on 127.0.0.1 (scripts/pacifica-stack)")
    started = subprocess.run(
        [sys.executable, STACK, "start", "--workdir", str(stack_dir)], capture_output=True, text=True
    )
    sys.stderr.write(started.stderr[-3000:])
    if started.returncode != 0:
        print("Pacifica did not start.", file=sys.stderr)
        return 1
    pacifica = dict(line.split("=", 1) for line in started.stdout.splitlines() if "=" in line)
    for key in ("PACIFICA_METADATA_URL", "PACIFICA_INGEST_URL", "PACIFICA_NOTIFICATIONS_URL", "CARTD_URL"):
        print(f"  {key}={pacifica[key]}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops everything
    airflow: AirflowStack | None = None
    try:
        step("Starting Airflow on 127.0.0.1: api-server (with the webhook), scheduler, dag-processor, triggerer")
        cartd = urlsplit(pacifica["CARTD_URL"])
        airflow = start_airflow(
            workdir / "airflow-home",
            {
                "AIRFLOW_CONN_PACIFICA_CARTD_DEFAULT": json.dumps(
                    {"conn_type": "pacifica_cartd", "host": cartd.hostname, "port": cartd.port, "schema": "http"}
                ),
                "AIRFLOW_CONN_PACIFICA_WEBHOOK_DEFAULT": json.dumps(
                    {"conn_type": "generic", "login": WEBHOOK_LOGIN, "password": WEBHOOK_PASSWORD}
                ),
                "PACIFICA_DOWNLOAD_ROOT": str(output),
            },
        )
        print(f"  Airflow at {airflow.url} (user admin, password admin-pw); logs in {airflow.home}")
        return run_demo(workdir, pacifica, airflow, began)
    finally:
        # Stop first: printing can fail (a closed pipe) and must not leave anything running.
        if airflow is not None:
            airflow.stop()
        subprocess.run([sys.executable, STACK, "stop", "--workdir", str(stack_dir)], check=False, capture_output=True)
        step(f"Stopped Airflow and Pacifica; {time.monotonic() - began:.0f}s in all")


def run_demo(workdir: Path, pacifica: dict[str, str], airflow: AirflowStack, began: float) -> int:
    wait(lambda: airflow.api("GET", f"/api/v2/dags/{DAG_ID}").status_code == 200, 120, "the DAG to be parsed")
    wait(lambda: airflow.get("/api/v2/assets", uri_pattern="pacifica://metadata/ingest")["assets"], 60, "the asset")

    step("Subscribing the webhook to Pacifica's ingest events (Notifications POST /eventmatch, basic auth)")
    notifications = NotificationsClient(pacifica["PACIFICA_NOTIFICATIONS_URL"], pacifica["PACIFICA_USER"])
    match = notifications.subscribe(
        "airflow-provider-pacifica demo",
        f"{airflow.url}/pacifica/events",
        login=WEBHOOK_LOGIN,
        password=WEBHOOK_PASSWORD,
    )
    print(f"  eventmatch {match.uuid} -> {match.target_url}")

    step("Uploading sample files through the real ingest (scripts/pacifica-stack upload)")
    samples = workdir / "samples"
    contents = sample_files()
    for path, data in contents.items():
        (samples / path).parent.mkdir(parents=True, exist_ok=True)
        (samples / path).write_bytes(data)
        print(f"  {len(data):>9} B  {path}")
    uploaded = time.monotonic()
    upload = subprocess.run(
        [sys.executable, STACK, "upload", "--workdir", str(workdir / "pacifica"), str(samples)],
        capture_output=True,
        text=True,
    )
    if upload.returncode != 0:
        print(f"The upload failed:\n{upload.stderr[-3000:]}", file=sys.stderr)
        return 1
    txn = int(upload.stdout.strip())
    ingested = time.monotonic() - uploaded
    event_id = f"metadata.ingest.{txn}"
    print(f"  transaction {txn}: ingest job done in {ingested:.1f}s; metadata emits the event {event_id!r}")

    step("Waiting for the DAG run that Pacifica's event started (webhook -> asset partition -> run)")
    run = wait(lambda: run_of(airflow, event_id), 120, f"a run for {event_id}")
    queued = time.monotonic() - uploaded
    run_id = run["dag_run_id"]
    print(f"  {run_id} ({run['run_type']}, partition {run['partition_key']!r}) queued {queued:.1f}s after the upload")
    path = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}"
    state = wait(lambda: (s := airflow.get(path)["state"]) in ("success", "failed") and s, 600, "the run to end")
    finished = time.monotonic() - uploaded
    for ti in airflow.get(f"{path}/taskInstances")["task_instances"]:
        print(f"  {ti['task_id']:<17} {ti['state']:<8} try {ti['try_number']}")
    if state != "success":
        print(f"The run {state}; logs under {airflow.home / 'logs'}\n{airflow.log_tail()}", file=sys.stderr)
        return 1

    manifest = xcom(airflow, run_id, "download")
    summary = xcom(airflow, run_id, "summarize")
    step(f"Verified files on disk under {manifest['destination']} ({finished:.1f}s after the upload)")
    listed = metadata_hashes(pacifica["PACIFICA_METADATA_URL"], txn)
    destination = Path(manifest["destination"])
    for entry in manifest["files"]:
        digest = hashlib.sha1((destination / entry["path"]).read_bytes()).hexdigest()
        agrees = "matches metadata" if listed.get(entry["path"]) == digest == entry["hashsum"] else "MISMATCH"
        print(f"  {entry['size']:>9} B  sha1 {digest}  {agrees}  {entry['path']}")
        if agrees == "MISMATCH":
            return 1
    step("The downstream step's result (summarize)")
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    step("The manifest (the download task's XCom)")
    print(json.dumps(manifest, indent=2, ensure_ascii=False))
    print(f"\nupload -> ingest done {ingested:.1f}s -> run queued {queued:.1f}s -> files verified {finished:.1f}s")
    print(f"demo so far {time.monotonic() - began:.0f}s (install and start-up included)")
    return 0


def run_of(airflow: AirflowStack, event_id: str) -> dict | None:
    runs = airflow.get(f"/api/v2/dags/{DAG_ID}/dagRuns", limit=100)["dag_runs"]
    return next((run for run in runs if run.get("partition_key") == event_id), None)


def xcom(airflow: AirflowStack, run_id: str, task_id: str) -> dict:
    entry = airflow.get(
        f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value",
        map_index=0,
        deserialize=True,
    )
    value = entry["value"]
    return json.loads(value) if isinstance(value, str) else value


def metadata_hashes(metadata_url: str, txn: int) -> dict[str, str]:
    """``path -> sha1`` of the transaction's files as pacifica-metadata lists them."""
    import requests

    records = requests.get(f"{metadata_url}/transactioninfo/files/{txn}", timeout=30).json().values()
    return {"/".join(p for p in (r["subdir"], r["name"]) if p): r["hashsum"] for r in records}


def wait(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.5)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
