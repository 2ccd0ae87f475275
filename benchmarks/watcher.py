"""The pull intake's benchmark: upload -> run latency at the default poll, and the cost of 50 watchers.

Run by ``scripts/benchmark --only-watcher`` (or ``--watcher`` in a full run), or alone:
``.venv/bin/python benchmarks/watcher.py [--workdir DIR] [--uploads 10] [--window 300]``. On
127.0.0.1: the whole real Pacifica (scripts/pacifica-stack) and a real Airflow (sqlite) whose
``pacifica_metadata_default`` connection goes through a loopback proxy that counts every request
to the real metadata (``tests/faultproxy.py``, forwarding only).

1. **Latency.** ``pacifica_ingest_watcher`` unpaused, its trigger at its default 30 s poll
   interval. ``uploads`` uploads through the real ingest, one after the other, each started at a
   random point of the poll cycle and waited for until the asset event and the run it started
   exist: upload start -> ingest job done, ->
   asset event recorded, -> DAG run queued (server times: the event's ``timestamp``, the run's
   ``queued_at``). p50 and p99 over the uploads (the poll phase makes them spread over 0-30 s).
2. **Cost.** Idle (no uploads), for ``window`` seconds each (five minutes: watchers started
   together poll in step, about every 28.5 s with the jitter, so a short window counts one round
   more or less; two minutes gave 100 and 124.5 requests/min for the same 50 watchers): the triggerer's CPU seconds per
   minute (user + system of its whole process group, from /proc) and metadata requests per
   minute, with no watcher running, with one, and with 50 watched assets, each with its own
   trigger (one DAG scheduled on any of 50 assets). Fifty triggers, not one shared poll loop:
   Airflow 3.3.2 opens a shared stream (``BaseEventTrigger.shared_stream_key``) from the trigger's
   kwargs alone and gives it no watcher's ``asset_state_store``, so a shared listing could keep no
   cursor that survives a restart; ``PacificaIngestEventTrigger.shared_stream_key`` returns None.
   (Triggers with equal kwargs are one trigger to Airflow, so the 50 differ by their
   ``instrument`` filter.)
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the tests' Airflow launcher and counting proxy

from intake import upload  # noqa: E402  # benchmarks/intake.py, beside this file

from airflow_provider_pacifica.triggers.ingest import PacificaIngestEventTrigger  # noqa: E402
from tests.faultproxy import FaultProxy  # noqa: E402
from tests.integration.airflow_stack import AirflowStack, start_airflow, wait  # noqa: E402

PACIFICA_STACK = REPO / "scripts" / "pacifica-stack"
WATCHER_DAG = "pacifica_ingest_watcher"
PULLED_URI = "pacifica://metadata/ingest-pulled"
WATCHED = 50
# The trigger's default poll interval, which the example DAG keeps (no PACIFICA_WATCHER_POLL_INTERVAL here).
POLL_INTERVAL = float(inspect.signature(PacificaIngestEventTrigger).parameters["poll_interval"].default)
BENCH_DAGS = """
from airflow.sdk import Asset, AssetAny, AssetWatcher, dag, task

from airflow_provider_pacifica.triggers.ingest import PacificaIngestEventTrigger


def watched(count: int, tag: str) -> list[Asset]:
    return [
        Asset(
            name=f"bench_{tag}_{i}",
            uri=f"pacifica://bench/{tag}/{i}",
            watchers=[
                AssetWatcher(name=f"bench_{tag}_{i}", trigger=PacificaIngestEventTrigger(instrument=f"{tag}-{i}"))
            ],
        )
        for i in range(count)
    ]


for count in (1, WATCHED):
    @dag(dag_id=f"bench_watch_{count}", schedule=AssetAny(*watched(count, f"w{count}")), is_paused_upon_creation=True)
    def bench():
        @task
        def nothing():
            pass

        nothing()

    bench()
""".replace("WATCHED", str(WATCHED))


def measure_watcher(workdir: Path, *, uploads: int = 10, window: float = 300.0) -> dict[str, Any]:
    stack_dir = workdir / "pacifica"
    subprocess.run([sys.executable, str(PACIFICA_STACK), "stop", "--workdir", str(stack_dir)], capture_output=True)
    started = subprocess.run(
        [sys.executable, str(PACIFICA_STACK), "start", "--workdir", str(stack_dir)], capture_output=True, text=True
    )
    if started.returncode != 0:
        raise RuntimeError(f"scripts/pacifica-stack start failed:\n{started.stderr[-3000:]}")
    pacifica = dict(line.split("=", 1) for line in started.stdout.splitlines() if "=" in line)
    proxy = FaultProxy(pacifica["PACIFICA_METADATA_URL"])
    airflow: AirflowStack | None = None
    try:
        dags = workdir / "dags"
        shutil.rmtree(dags, ignore_errors=True)
        dags.mkdir(parents=True)
        for name in ("pacifica_common.py", "pacifica_ingest_watcher.py"):
            shutil.copy(REPO / "dags" / name, dags / name)
        (dags / "bench_watchers.py").write_text(BENCH_DAGS)
        cartd = urlsplit(pacifica["CARTD_URL"])
        home = workdir / "airflow-watcher"
        shutil.rmtree(home, ignore_errors=True)
        airflow = start_airflow(
            home,
            {
                "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
                "AIRFLOW_CONN_PACIFICA_METADATA_DEFAULT": json.dumps(
                    {"conn_type": "pacifica_metadata", "host": "127.0.0.1", "port": proxy.port}
                ),
                "AIRFLOW_CONN_PACIFICA_CARTD_DEFAULT": json.dumps(
                    {"conn_type": "pacifica_cartd", "host": cartd.hostname, "port": cartd.port}
                ),
                "PACIFICA_DOWNLOAD_ROOT": str(home / "downloads"),
            },
        )
        for dag_id in (WATCHER_DAG, "bench_watch_1", f"bench_watch_{WATCHED}"):
            wait(lambda d=dag_id: airflow.api("GET", f"/api/v2/dags/{d}").status_code == 200, 120, dag_id)
        result: dict[str, Any] = {"poll_interval_s": POLL_INTERVAL, "watched": WATCHED}
        result["latency"] = measure_latency(airflow, stack_dir, workdir / "uploads", uploads)
        set_paused(airflow, WATCHER_DAG, True)
        result["cost"] = measure_cost(airflow, proxy, window)
        return result
    finally:
        if airflow is not None:
            airflow.stop()
        proxy.close()
        subprocess.run([sys.executable, str(PACIFICA_STACK), "stop", "--workdir", str(stack_dir)], capture_output=True)


def set_paused(airflow: AirflowStack, dag_id: str, paused: bool) -> None:
    airflow.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": paused}).raise_for_status()


def measure_latency(airflow: AirflowStack, stack_dir: Path, sources: Path, count: int) -> dict[str, Any]:
    set_paused(airflow, WATCHER_DAG, False)
    log = airflow.home / "triggerer.log"
    wait(lambda: "Watching Pacifica transactions created from" in log.read_text(errors="replace"), 180, "the watcher")
    asset = wait(lambda: asset_id(airflow, PULLED_URI), 60, "the watched asset")
    shutil.rmtree(sources, ignore_errors=True)
    samples = []
    pacing = random.Random(11)
    for index in range(count):
        root = sources / f"upload-{index}"
        root.mkdir(parents=True)
        (root / "readme.txt").write_text(f"upload {index}\n")
        # Each upload at a random point of the poll cycle: started right after the previous run
        # was queued (just after a poll), every upload would wait nearly a whole interval.
        time.sleep(pacing.uniform(0, POLL_INTERVAL))
        began = time.time()
        event_id = f"metadata.ingest.{upload(stack_dir, root)}"
        ingested = time.time() - began
        event = wait(lambda e=event_id: event_of(airflow, asset, e), 180, f"the event of {event_id}", poll=0.2)
        recorded = parse(event["timestamp"])
        run = wait(lambda r=recorded: run_after(airflow, r), 120, f"the run of {event_id}", poll=0.2)
        samples.append(
            {
                "ingest_s": ingested,
                "recorded_s": recorded - began,
                "queued_s": parse(run["queued_at"]) - began,
            }
        )
        print(f"  upload {index + 1}/{count}: " + ", ".join(f"{k} {v:.1f}" for k, v in samples[-1].items()), flush=True)
    queued = sorted(s["queued_s"] for s in samples)
    after_ingest = sorted(s["queued_s"] - s["ingest_s"] for s in samples)
    return {
        "uploads": count,
        "samples": samples,
        "p50_ingest_s": statistics.median(s["ingest_s"] for s in samples),
        "p50_recorded_s": statistics.median(s["recorded_s"] for s in samples),
        "p50_queued_s": statistics.median(queued),
        "p99_queued_s": percentile(queued, 0.99),
        "p50_queued_after_ingest_s": statistics.median(after_ingest),
        "p99_queued_after_ingest_s": percentile(after_ingest, 0.99),
    }


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank (of 10 samples, p99 is the largest)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def measure_cost(airflow: AirflowStack, proxy: FaultProxy, window: float) -> list[dict[str, Any]]:
    rows = []
    for watchers, unpaused in ((0, None), (1, "bench_watch_1"), (WATCHED, f"bench_watch_{WATCHED}")):
        for dag_id in ("bench_watch_1", f"bench_watch_{WATCHED}"):
            set_paused(airflow, dag_id, dag_id != unpaused)
        # The dag-processor (5 s refresh) adds or removes the triggers; the triggerer picks them up
        # and each polls once at start: let that settle before counting.
        time.sleep(45)
        pgid = airflow.processes["triggerer"].pid
        cpu0, seen0, began = group_cpu_seconds(pgid), len(proxy.seen), time.monotonic()
        time.sleep(window)
        minutes = (time.monotonic() - began) / 60
        cpu, requests = group_cpu_seconds(pgid) - cpu0, proxy.seen[seen0:]
        rows.append(
            {
                "watchers": watchers,
                "cpu_s_per_min": cpu / minutes,
                "requests_per_min": len(requests) / minutes,
                "listings_per_min": sum(1 for r in requests if r.path == "/transactions") / minutes,
            }
        )
        print(f"  {watchers} watcher(s): " + ", ".join(f"{k} {v:.2f}" for k, v in rows[-1].items()), flush=True)
    return rows


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every live process in the process group (the triggerer and its runner)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of stat: the process group
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def asset_id(airflow: AirflowStack, uri: str) -> int | None:
    assets = airflow.get("/api/v2/assets", uri_pattern=uri)["assets"]
    return next((a["id"] for a in assets if a["uri"] == uri), None)


def event_of(airflow: AirflowStack, asset: int, event_id: str) -> dict | None:
    query = {"asset_id": asset, "order_by": "-timestamp", "limit": 20}
    answer = airflow.api("GET", "/api/v2/assets/events", params=query)
    if answer.status_code == 500:  # Airflow 3.3.2, while an event's run is queued unstarted (apache/airflow#71360)
        return None  # asked again; the event's own timestamp is what is measured
    answer.raise_for_status()
    events = answer.json()["asset_events"]
    for event in events:
        if ((event.get("extra") or {}).get("payload") or {}).get("cloudevent_id") == event_id:
            return event
    return None


def run_after(airflow: AirflowStack, recorded: float) -> dict | None:
    """The watcher DAG's run that took an event recorded at ``recorded`` (its run_after is at or after it)."""
    runs = airflow.get(f"/api/v2/dags/{WATCHER_DAG}/dagRuns", limit=20, order_by="-run_after")["dag_runs"]
    return next((r for r in runs if r.get("queued_at") and parse(r["run_after"]) >= recorded), None)


def parse(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def report(watcher: dict[str, Any]) -> str:
    latency, cost = watcher["latency"], watcher["cost"]
    base = next(row for row in cost if row["watchers"] == 1)
    lines = [
        f"### Pull intake (the watcher at its default {watcher['poll_interval_s']:.0f} s poll; real metadata, "
        "real triggerer)",
        "",
        f"| {latency['uploads']} real uploads | ingest job | -> asset event | -> run queued p50 | -> run queued p99 |"
        " after the ingest job: p50 | p99 |",
        "|---|---|---|---|---|---|---|",
        f"| seconds from upload start | {latency['p50_ingest_s']:.1f} | {latency['p50_recorded_s']:.1f} | "
        f"{latency['p50_queued_s']:.1f} | {latency['p99_queued_s']:.1f} | {latency['p50_queued_after_ingest_s']:.1f} | "
        f"{latency['p99_queued_after_ingest_s']:.1f} |",
        "",
        "| watched assets (a trigger each), idle | triggerer CPU s/min | x one watcher | metadata requests/min |"
        " of which listings |",
        "|---|---|---|---|---|",
    ]
    for row in cost:
        ratio = row["cpu_s_per_min"] / base["cpu_s_per_min"] if base["cpu_s_per_min"] else float("nan")
        lines.append(
            f"| {row['watchers']} | {row['cpu_s_per_min']:.2f} | {ratio:.2f}x | {row['requests_per_min']:.1f} | "
            f"{row['listings_per_min']:.1f} |"
        )
    return "\n".join([*lines, ""])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pacifica-watcher-bench"))
    parser.add_argument("--uploads", type=int, default=10, help="real uploads timed to their run (>= 10 for a p99)")
    parser.add_argument("--window", type=float, default=300.0, help="seconds each idle cost is measured over")
    args = parser.parse_args()
    figures = measure_watcher(args.workdir.absolute(), uploads=args.uploads, window=args.window)
    print(json.dumps(figures, indent=2))
    print(report(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
