"""Benchmarks on the real Cartd stack, side by side in one run (run with ``scripts/benchmark``).

1. Download throughput and CPU of the same staged carts, alternating methods, medians of
   repetitions: this provider's download path (``PacificaDownloadOperator``: HEAD, stream, per-file
   hash verification, staging, atomic publish), ``curl -s <cart url> | tar -x`` (the practical
   ceiling), the verified shell ceiling (the same, then ``sha1sum -c`` of every file), the
   provider's path rebuilt on the standard library's ``tarfile`` (``benchmarks/tarfile_baseline.py``,
   default and 64 KiB buffers: what the hand-written tar reader buys) and the old
   ``pacifica-downloader==0.4.1`` (its own venv). Each run is a fresh child process; its peak RSS
   and CPU seconds (user + system of the download, all its threads; of every process of a shell
   pipeline) are reported, also per GiB and per 1,000 files.
2. Bundle mode: the provider's single stream of a bundle cart versus N parallel ranged GETs
   (``benchmarks/ranged.py``), both verified and published by the provider's extraction.
3. Memory: the provider's peak RSS for carts of 0.1 to 2 GiB; the growth must stay flat.
4. Triggerer scale: many ``CartReadyTrigger``s in one event loop against a loopback server that
   answers "staging" and then "ready": CPU used, worst event-loop lag, completions.
5. Parallel carts: one cart versus the same files split into N carts downloaded at once.
6. With ``--py-spy``: where the provider's CPU goes, one sampled download per cart.
7. Intake (``benchmarks/intake.py``): the webhook under a burst of 1,000 events from 16 clients on
   a real api-server with PostgreSQL, and real uploads through the whole real Pacifica to files on
   disk.
8. Pull intake (``benchmarks/watcher.py``, ``--watcher`` or ``--only-watcher``): upload -> run
   queued at the watcher's default poll interval, and the triggerer's CPU and metadata's request
   rate for 50 watched assets.

Writes ``benchmarks/results/results.json``, ``results.md`` and ``results.png`` (``--results``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STACK = REPO / "scripts" / "cartd-stack"
RESULTS = REPO / "benchmarks" / "results"
OLD_VENV = REPO / ".cache" / "old-downloader-venv"
OLD_PIN = "pacifica-downloader==0.4.1"
MIB = 1 << 20
GIB = 1 << 30

PROVIDER = "provider"
CURL_TAR = "curl | tar"
VERIFIED = "curl | tar + sha1sum -c"  # the verified shell ceiling
TARFILE_DEFAULT = "tarfile r| (default 10 KiB buffer)"
TARFILE_64K = "tarfile r| (64 KiB buffer)"
OLD_LIBRARY = "pacifica-downloader 0.4.1"
BUNDLE_STREAM = "provider, bundle mode (one stream)"


# -- child processes: one download each, timed, with its peak RSS ---------------------------------


def rss_now_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    """User + system CPU seconds of this process (all its threads) or of its waited-for children."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def timed_here(download: Callable[[], object]) -> dict[str, Any]:
    """Run ``download`` in this process: wall seconds, CPU seconds of all its threads, RSS."""
    baseline = rss_now_kib()
    with RssSampler() as sampler:
        cpu_before = cpu_seconds()
        started = time.perf_counter()
        download()
        seconds = time.perf_counter() - started
        cpu = cpu_seconds() - cpu_before
    return {
        "seconds": seconds,
        "cpu_seconds": cpu - sampler.cpu_seconds,  # the sampler's own thread is not the download
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,  # the whole process, imports included
        "rss_before_kib": baseline,
        "download_peak_rss_kib": sampler.peak_kib,  # sampled every 5 ms while the download ran
    }


def worker_provider(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("AIRFLOW_HOME", str(REPO / ".cache" / "bench" / "airflow-home"))
    from airflow_provider_pacifica.operators.download import PacificaDownloadOperator

    files = json.loads(Path(args.files).read_text())
    op = PacificaDownloadOperator(
        task_id=args.task_id,
        destination=args.dest,
        files=files,
        delete_cart=False,
        skip_if_present=False,
        progress_interval=3600,
        bundle=args.bundle,
    )
    context = {"ti": _TaskInstance(args.task_id)}
    # the cart is already staged under this task's uid: HEAD, then download
    return timed_here(lambda: op.execute(context))  # type: ignore[arg-type]


def worker_tarfile(args: argparse.Namespace) -> dict[str, Any]:
    from tarfile_baseline import download_with_tarfile

    files = json.loads(Path(args.files).read_text())
    return timed_here(lambda: download_with_tarfile(args.url, files, args.dest, args.top_dir, bufsize=args.bufsize))


def worker_ranged(args: argparse.Namespace) -> dict[str, Any]:
    from ranged import download_ranged

    import airflow_provider_pacifica.extraction  # noqa: F401  # imported before the clock starts

    files = json.loads(Path(args.files).read_text())
    return timed_here(
        lambda: download_ranged(args.url, files, args.dest, args.top_dir, args.parts, pipelined=not args.sequential)
    )


class RssSampler:
    """The highest RSS seen while the block runs (``ru_maxrss`` also counts the imports before it)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.peak_kib = rss_now_kib()
        self.cpu_seconds = 0.0  # the sampling thread's own CPU, to leave out of the download's
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        started = time.thread_time()
        while not self._stop.wait(self._interval):
            self.peak_kib = max(self.peak_kib, rss_now_kib())
        self.cpu_seconds = time.thread_time() - started

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, rss_now_kib())


class _TaskInstance:
    """The few task-instance attributes the operator reads (dag, run, task, map index)."""

    def __init__(self, task_id: str) -> None:
        self.dag_id, self.run_id, self.task_id, self.map_index = "bench", "bench", task_id, -1


def worker_shell(scripts: list[str]) -> dict[str, Any]:
    """Time shell scripts run one after the other (curl | tar, then sha1sum -c), with the CPU of every process."""
    cpu_before = cpu_seconds(resource.RUSAGE_CHILDREN)
    parts = []
    for script in scripts:
        started = time.perf_counter()
        subprocess.run(["bash", "-c", f"set -euo pipefail; {script}"], check=True)
        parts.append(time.perf_counter() - started)
    return {
        "seconds": sum(parts),
        "parts_seconds": parts,
        # bash waits for curl, tar and sha1sum, so their usage is in bash's, which is in ours
        "cpu_seconds": cpu_seconds(resource.RUSAGE_CHILDREN) - cpu_before,
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    }


# Timed inside its own process like the provider (imports done first), in the old library's venv.
_OLD_LIBRARY_CHILD = """
import json, resource, sys, time
from pacifica.downloader import Downloader
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
downloader = Downloader(cart_api_url=sys.argv[1])
cpu_before, started = cpu(), time.perf_counter()
downloader._download_from_url(sys.argv[2], sys.argv[1] + "/" + sys.argv[3], "data")
seconds, cpu_seconds = time.perf_counter() - started, cpu() - cpu_before
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_rss_kib": peak}))
"""


def old_library(cartd_url: str, cart_uid: str, dest: Path) -> dict[str, Any]:
    """The old library's own download path (no hash verification), the same cart, in its venv."""
    result = subprocess.run(
        [str(OLD_VENV / "bin" / "python"), "-c", _OLD_LIBRARY_CHILD, cartd_url, str(dest), cart_uid],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"pacifica-downloader failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_child(*argv: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, __file__, *argv], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    if result.returncode != 0:
        raise RuntimeError(f"benchmark child {argv[:2]} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- setup ----------------------------------------------------------------------------------------


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def write_files(root: Path, count: int, size: int, per_dir: int) -> None:
    if root.exists() and len(list(root.rglob("*.bin"))) == count:
        return
    shutil.rmtree(root, ignore_errors=True)
    block = os.urandom(1 << 20)
    for index in range(count):
        path = root / f"d{index // per_dir:03d}" / f"f{index:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            written = 0
            prefix = f"{index}:".encode()
            while written < size:  # unique content per file, cheap to make
                chunk = (prefix + block)[: min(len(block), size - written)]
                handle.write(chunk)
                written += len(chunk)


def load(workdir: Path, source: Path, first_id: int) -> list[dict[str, Any]]:
    """PUT the files into the archive (scripts/cartd-stack load) and return them as cart files."""
    from airflow_provider_pacifica.cloudevents import files_from_cloudevent

    result = subprocess.run(
        [sys.executable, str(STACK), "load", "--workdir", str(workdir), "--first-id", str(first_id), str(source)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [f.to_dict() for f in files_from_cloudevent(result.stdout)]


def stage(files: list[dict[str, Any]], task_id: str, *, bundle: bool = False) -> tuple[str, bool]:
    """Create the cart the provider's operator will look for, and wait until Cartd has staged it.

    Returns its uid, and whether Cartd had it ready already (a stack kept by ``--keep-stack``).
    """
    from airflow_provider_pacifica.cloudevents import files_from_list
    from airflow_provider_pacifica.hooks.cartd import PacificaCartdHook
    from airflow_provider_pacifica.operators.download import PacificaDownloadOperator

    op = PacificaDownloadOperator(task_id=task_id, destination="/nonexistent", files=files, bundle=bundle)
    cart_uid = op.cart_uid_for({"ti": _TaskInstance(task_id)}, files_from_list(files))  # type: ignore[typeddict-item]
    hook = PacificaCartdHook()
    if hook.cart_status(cart_uid).ready:
        return cart_uid, True
    hook.create_cart(files, cart_uid=cart_uid, bundle=bundle)
    deadline = time.monotonic() + 3600
    while not (status := hook.cart_status(cart_uid)).ready:
        if status.failed or time.monotonic() > deadline:
            raise RuntimeError(f"cart {cart_uid} did not stage: {status}")
        time.sleep(0.5)
    return cart_uid, False


# -- the measurements ----------------------------------------------------------------------------

Method = Callable[[Path], dict[str, Any]]  # downloads into the (new, empty) directory it is given
CARTD_PID: int | None = None  # the stack's Cartd (HTTP server) process, set by run_all


def cartd_cpu_seconds() -> float:
    """CPU seconds Cartd's HTTP process (all its threads: the tar writer too) has used so far; 0 if unknown."""
    if CARTD_PID is None:
        return 0.0
    fields = Path(f"/proc/{CARTD_PID}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def alternate(
    label: str, methods: dict[str, Method], outputs: Path, reps: int, total: int
) -> dict[str, list[dict[str, Any]]]:
    """Run every method ``reps`` times, alternating their order; each run gets a new directory."""
    samples: dict[str, list[dict[str, Any]]] = {method: [] for method in methods}
    shutil.rmtree(outputs, ignore_errors=True)
    # Every run gets a directory of its own, as every DAG run does. Re-creating the very paths a
    # previous run just deleted got slower with each repetition on these machines (10,000 files:
    # 1.3 s, then 2.9, 4.9, 6.9 s of kernel time), which measured the sandbox, not the downloads.
    # Deleting many files makes the next creations slower too, whatever their paths: ext4's inode
    # allocator skips inodes freed in the last ~30 s (``recently_deleted`` in ``perf``), so a
    # small-files cart's outputs are kept until all its runs are done.
    keep_outputs = total * reps * len(methods) < (2 << 30)
    for rep in range(reps):
        order = list(methods) if rep % 2 == 0 else list(reversed(methods))  # alternate, so drift hits all
        for index, method in enumerate(order):
            dest = outputs / f"rep{rep}-{index}"
            dest.mkdir(parents=True)
            os.sync()  # no run pays for the previous run's writeback
            server_before = cartd_cpu_seconds()
            run = methods[method](dest)
            samples[method].append({**run, "cartd_cpu_seconds": cartd_cpu_seconds() - server_before})
            if not keep_outputs:  # a large cart: its few big files are cheap to delete
                shutil.rmtree(dest)
        print(
            f"  {label} rep {rep + 1}/{reps}: "
            + ", ".join(
                f"{m} {samples[m][-1]['seconds']:.2f}s/{samples[m][-1]['cpu_seconds']:.2f} CPU" for m in methods
            ),
            flush=True,
        )
    shutil.rmtree(outputs, ignore_errors=True)
    return samples


def summarise(samples: dict[str, list[dict[str, Any]]], total: int, file_count: int) -> dict[str, dict[str, Any]]:
    """Medians of wall time and CPU per method, and the CPU per GiB and per 1,000 files."""
    summary = {}
    for method, runs in samples.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        cpu = statistics.median(r["cpu_seconds"] for r in runs)
        summary[method] = {
            "median_seconds": seconds,
            "mb_per_s": total / seconds / 1e6,
            "cpu_seconds": cpu,
            "cpu_seconds_per_gib": cpu / (total / GIB),
            "cpu_seconds_per_1000_files": cpu / (file_count / 1000),
            "cartd_cpu_seconds": statistics.median(r["cartd_cpu_seconds"] for r in runs),
            "peak_rss_mib": max(r["peak_rss_kib"] for r in runs) / 1024,
            "runs": [round(r["seconds"], 3) for r in runs],
            "cpu_runs": [round(r["cpu_seconds"], 3) for r in runs],
        }
    return summary


def relative_to(summary: dict[str, dict[str, Any]], reference: str, key: str) -> None:
    """Add ``speed_vs_<key>`` (reference's time / the method's: >1 is faster) and ``cpu_vs_<key>``
    (the method's CPU / the reference's: <1 is cheaper) to every method."""
    if reference not in summary:
        return
    ref = summary[reference]
    for row in summary.values():
        row[f"speed_vs_{key}"] = ref["median_seconds"] / row["median_seconds"]
        row[f"cpu_vs_{key}"] = row["cpu_seconds"] / ref["cpu_seconds"] if ref["cpu_seconds"] else float("nan")


def checksum_list(files: list[dict[str, Any]], top_dir: str, path: Path) -> str:
    """Write the ``sha1sum -c`` list of the cart's files (untimed); returns the checking command."""
    hashtypes = {f["hashtype"] for f in files}
    if len(hashtypes) != 1 or not shutil.which(f"{next(iter(hashtypes))}sum"):
        raise RuntimeError(f"the verified shell ceiling needs one hash type with a coreutils tool, got {hashtypes}")
    path.write_text("".join(f"{f['hashsum']}  {top_dir}/{f['path']}\n" for f in files))
    return f"{next(iter(hashtypes))}sum -c --quiet --strict '{path}'"


def measure_cart(
    name: str,
    files: list[dict[str, Any]],
    task_id: str,
    cartd_url: str,
    scratch: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    staging_started = time.perf_counter()
    cart_uid, reused = stage(files, task_id)
    stage_seconds = None if reused else time.perf_counter() - staging_started
    print(f"  Cartd staged the {len(files)} files " + ("earlier" if reused else f"in {stage_seconds:.0f}s"), flush=True)
    files_json = scratch / f"{task_id}.json"
    files_json.write_text(json.dumps(files))
    total = sum(f["size"] for f in files)
    url = f"{cartd_url}/{cart_uid}?filename=data.tar"
    check = checksum_list(files, "data", scratch / f"{task_id}.sha1sums")
    fetch_and_untar = f"curl -sf '{url}' | tar -x -C \"$DEST\""
    methods: dict[str, Method] = {
        PROVIDER: lambda dest: run_child(
            "worker", "provider", "--task-id", task_id, "--files", str(files_json), "--dest", str(dest)
        ),
        CURL_TAR: lambda dest: run_child("worker", "shell", "--script", fetch_and_untar, env={"DEST": str(dest)}),
        VERIFIED: lambda dest: run_child(
            "worker",
            "shell",
            "--script",
            fetch_and_untar,
            "--script",
            f'cd "$DEST" && {check}',
            env={"DEST": str(dest)},
        ),
    }
    if args.tarfile:
        for method, bufsize in ((TARFILE_DEFAULT, None), (TARFILE_64K, 64 << 10)):
            methods[method] = lambda dest, bufsize=bufsize: run_child(
                "worker", "tarfile", "--url", url, "--files", str(files_json), "--dest", str(dest), "--top-dir", "data",
                *(["--bufsize", str(bufsize)] if bufsize else []),
            )  # fmt: skip
    if args.old_library:
        methods[OLD_LIBRARY] = lambda dest: old_library(cartd_url, cart_uid, dest)
    # One untimed fetch first: whoever went first would pay for Cartd reading the cart from disk.
    subprocess.run(["curl", "-sf", "-o", "/dev/null", url], check=True)
    samples = alternate(name, methods, scratch / f"out-{task_id}", args.reps, total)
    summary = summarise(samples, total, len(files))
    curl = summary[CURL_TAR]["median_seconds"]
    for row in summary.values():
        row["ratio_to_curl_tar"] = curl / row["median_seconds"]
    relative_to(summary, VERIFIED, "verified_ceiling")
    relative_to(summary, OLD_LIBRARY, "old_library")
    for row in summary.values():
        if "speed_vs_old_library" in row:
            row["speedup_vs_old_library"] = row["speed_vs_old_library"]  # the name earlier results used
    provider = summary[PROVIDER]
    comparisons: dict[str, Any] = {
        "provider_vs_verified_ceiling": {
            "speed": provider["speed_vs_verified_ceiling"],  # ceiling's wall time / provider's: goal >= 1
            "cpu": provider["cpu_vs_verified_ceiling"],  # provider's CPU / ceiling's: goal <= 1.2
            "goal_met": provider["speed_vs_verified_ceiling"] >= 1.0 and provider["cpu_vs_verified_ceiling"] <= 1.2,
        }
    }
    for method in (TARFILE_DEFAULT, TARFILE_64K):
        if method in summary:  # how much faster and cheaper the provider's tar reader is than tarfile
            row = summary[method]
            comparisons.setdefault("tarstream_vs_tarfile", {})[method] = {
                "speed": row["median_seconds"] / provider["median_seconds"],
                "cpu_saving": row["cpu_seconds"] / provider["cpu_seconds"],
            }
    return {
        "name": name,
        "files": len(files),
        "bytes": total,
        "stage_seconds": stage_seconds,
        "methods": summary,
        "comparisons": comparisons,
    }


def measure_ranged(
    files: list[dict[str, Any]], cartd_url: str, scratch: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """A bundle cart: the provider's single stream versus N parallel ranged GETs, all verified."""
    staging_started = time.perf_counter()
    cart_uid, reused = stage(files, "ranged", bundle=True)
    stage_seconds = None if reused else time.perf_counter() - staging_started
    print("  Cartd built the bundle " + ("earlier" if reused else f"in {stage_seconds:.0f}s"), flush=True)
    files_json = scratch / "ranged.json"
    files_json.write_text(json.dumps(files))
    total = sum(f["size"] for f in files)
    url = f"{cartd_url}/{cart_uid}?filename={cart_uid}.tar"
    methods: dict[str, Method] = {
        BUNDLE_STREAM: lambda dest: run_child(
            "worker", "provider", "--bundle", "--task-id", "ranged", "--files", str(files_json), "--dest", str(dest)
        )
    }
    modes = [("pipelined", [])] + ([("download, then extract", ["--sequential"])] if args.ranged_sequential else [])
    for parts in args.ranged_parts:
        for mode, flags in modes:
            methods[f"{parts} ranged GETs, {mode}"] = lambda dest, parts=parts, flags=flags: run_child(
                "worker", "ranged", "--url", url, "--files", str(files_json), "--dest", str(dest),
                "--top-dir", cart_uid, "--parts", str(parts), *flags,
            )  # fmt: skip
    subprocess.run(["curl", "-sf", "-o", "/dev/null", url], check=True)  # untimed: Cartd reads it from disk once
    samples = alternate("bundle", methods, scratch / "out-ranged", args.reps, total)
    summary = summarise(samples, total, len(files))
    relative_to(summary, BUNDLE_STREAM, "single_stream")
    best = max((m for m in summary if m != BUNDLE_STREAM), key=lambda m: summary[m]["speed_vs_single_stream"])
    return {
        "files": len(files),
        "bytes": total,
        "stage_seconds": stage_seconds,
        "methods": summary,
        "best": best,
        "best_speed_vs_single_stream": summary[best]["speed_vs_single_stream"],
        "reaches_1_3x": summary[best]["speed_vs_single_stream"] >= 1.3,
    }


def measure_memory(sizes_gib: list[float], pool: list[dict[str, Any]], scratch: Path) -> list[dict[str, Any]]:
    files_json = scratch / "memory.json"
    curve = []
    for gib in sizes_gib:
        chosen, total = [], 0
        for file in pool:
            if total >= gib * (1 << 30):
                break
            chosen.append(file)
            total += file["size"]
        task_id = f"memory-{gib}"
        stage(chosen, task_id)
        files_json.write_text(json.dumps(chosen))
        dest = scratch / f"out-{task_id}"
        shutil.rmtree(dest, ignore_errors=True)
        run = run_child("worker", "provider", "--task-id", task_id, "--files", str(files_json), "--dest", str(dest))
        shutil.rmtree(dest, ignore_errors=True)
        curve.append(
            {
                "gib": round(total / (1 << 30), 3),
                "peak_rss_mib": run["peak_rss_kib"] / 1024,
                "rss_before_mib": run["rss_before_kib"] / 1024,
                "download_peak_rss_mib": run["download_peak_rss_kib"] / 1024,
                "seconds": run["seconds"],
            }
        )
        print(
            f"  {total / (1 << 30):.2f} GiB: RSS {run['rss_before_kib'] / 1024:.1f} MiB before the download, "
            f"{run['download_peak_rss_kib'] / 1024:.1f} MiB at most during it ({run['seconds']:.1f}s)",
            flush=True,
        )
    return curve


def measure_parallel(files: list[dict[str, Any]], parts: int, scratch: Path) -> dict[str, Any]:
    from airflow_provider_pacifica.batching import split_files
    from airflow_provider_pacifica.cloudevents import files_from_list

    batches = split_files(files_from_list(files), parts=parts)
    jobs = []
    for index, batch in enumerate(batches):
        task_id = f"parallel-{parts}-{index}"
        stage(batch, task_id)
        (scratch / f"{task_id}.json").write_text(json.dumps(batch))
        jobs.append(task_id)

    def one(task_id: str) -> dict[str, Any]:
        return run_child(
            "worker",
            "provider",
            "--task-id",
            task_id,
            "--files",
            str(scratch / f"{task_id}.json"),
            "--dest",
            str(dest),
        )

    dest = scratch / f"out-parallel-{parts}"
    shutil.rmtree(dest, ignore_errors=True)
    os.sync()
    started = time.perf_counter()
    with ThreadPoolExecutor(len(jobs)) as pool:
        list(pool.map(one, jobs))
    seconds = time.perf_counter() - started
    shutil.rmtree(dest, ignore_errors=True)
    return {"carts": len(jobs), "seconds": seconds}


def measure_triggers(count: int, poll: float, ready_after: float) -> dict[str, Any]:
    """Run ``count`` CartReadyTriggers in this process's loop against a server in another process."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, __file__, "trigger-server", "--port", str(port), "--ready-after", str(ready_after)]
    )
    try:
        time.sleep(2)
        os.environ["AIRFLOW_CONN_PACIFICA_CARTD_DEFAULT"] = json.dumps(
            {"conn_type": "pacifica_cartd", "host": "127.0.0.1", "port": port}
        )
        return asyncio.run(_run_triggers(count, poll))
    finally:
        server.terminate()
        server.wait(timeout=30)


async def _run_triggers(count: int, poll: float) -> dict[str, Any]:
    import gc

    from airflow_provider_pacifica.triggers.cartd import CartReadyTrigger

    lags: list[tuple[float, float, float]] = []  # (start, end, lag) of each 50 ms probe sleep
    full_gcs: list[tuple[float, float]] = []  # (start, end) of each full (generation 2) collection
    gc_started = [0.0]
    stop = asyncio.Event()

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            full_gcs.append((gc_started[0], time.perf_counter()))

    async def lag_monitor() -> None:
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.05)
            after = time.perf_counter()
            lags.append((before, after, after - before - 0.05))

    async def one(index: int) -> str:
        trigger = CartReadyTrigger(cart_uid=f"scale-{index}", poll_interval=poll, max_poll_interval=poll)
        event = await trigger.run().__anext__()
        return str(event.payload["status"])

    # Warm up: the first request imports aiohttp's client modules and reads the connection, a
    # one-time cost of any triggerer process that is not what this measures.
    from airflow_provider_pacifica.hooks.cartd import PacificaCartdHook

    await PacificaCartdHook().async_cart_status("warm-up")
    # What one full collection of this process costs: CPython pauses the loop for it now and then,
    # whatever the triggers do; the heap is mostly Airflow's own modules.
    gc_probe = time.perf_counter()
    gc.collect()
    full_gc_idle_ms = (time.perf_counter() - gc_probe) * 1000
    gc.callbacks.append(on_gc)
    monitor = asyncio.create_task(lag_monitor())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    started = time.perf_counter()
    # Start them as the triggerer does: at most 50 new triggers per loop iteration
    # ([triggerer] max_trigger_to_select_per_loop), the rest on the next ones.
    tasks = []
    for start in range(0, count, 50):
        tasks += [asyncio.create_task(one(i)) for i in range(start, min(start + 50, count))]
        await asyncio.sleep(0)
    statuses = await asyncio.gather(*tasks)
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu_before
    stop.set()
    await monitor
    gc.callbacks.remove(on_gc)
    # A probe that overlapped a full collection measured the interpreter, not the triggers.
    outside_gc = [lag for begin, end, lag in lags if not any(b < end and e > begin for b, e in full_gcs)]
    return {
        "triggers": count,
        "completed_ready": statuses.count("ready"),
        "poll_interval_s": poll,
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_percent_of_one_core": 100 * cpu / wall,
        "worst_loop_lag_ms": max(lag for _, _, lag in lags) * 1000,
        "worst_loop_lag_outside_full_gc_ms": max(outside_gc, default=0.0) * 1000,
        "full_gc_count": len(full_gcs),
        "longest_full_gc_ms": max((e - b for b, e in full_gcs), default=0.0) * 1000,
        "full_gc_idle_ms": full_gc_idle_ms,
        "gc_tracked_objects": len(gc.get_objects()),
    }


def trigger_server(args: argparse.Namespace) -> None:
    """HEAD /<uid>: 'staging' until ready_after seconds after start, then 'ready'."""
    from aiohttp import web

    ready_at = time.monotonic() + args.ready_after

    async def head(request: web.Request) -> web.Response:
        state = "ready" if time.monotonic() >= ready_at else "staging"
        return web.Response(status=204, headers={"X-Pacifica-Status": state, "X-Pacifica-Message": ""})

    app = web.Application()
    app.router.add_route("HEAD", "/{uid}", head)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


def measure_profile(py_spy: str, label: str, argv: list[str], raw: Path, rate: int) -> dict[str, Any]:
    """Sample one provider download with py-spy: the lines where its CPU goes (the download only).

    py-spy counts only samples where a thread is running (not waiting on a socket or a queue); the
    samples kept are those of the timed download (under ``timed_here``) and of the threads it
    started (the extraction's reader thread; not the RSS sampler's, not the imports before).
    """
    command = [py_spy, "record", "--rate", str(rate), "--format", "raw", "--output", str(raw), "--nonblocking"]
    subprocess.run([*command, "--", sys.executable, __file__, *argv], check=True, capture_output=True)
    own: Counter[str] = Counter()  # by the line running (the leaf frame)
    inclusive: Counter[str] = Counter()  # by function, anywhere in the stack
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        timed = any(f.startswith("timed_here ") for f in frames)
        provider_thread = "threading.py" in frames[0] and any("airflow_provider_pacifica/" in f for f in frames)
        if not (timed or provider_thread):
            continue
        total += int(count)
        own[_short_frame(frames[-1])] += int(count)
        for function in {_short_frame(f, line_number=False) for f in frames if "(bench.py:" not in f}:
            inclusive[function] += int(count)  # the benchmark's own frames hold every sample: left out
    top = 15

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(frame, 100 * n / total) for frame, n in counter.most_common(top)] if total else []

    return {"cart": label, "samples": total, "rate": rate, "own": share(own), "inclusive": share(inclusive)}


def _short_frame(frame: str, *, line_number: bool = True) -> str:
    """``update (/…/airflow_provider_pacifica/extraction.py:301)`` as ``extraction.py:301 update``."""
    function, _, where = frame.partition(" (")
    path, _, number = where.rstrip(")").rpartition(":")
    location = "/".join(Path(path).parts[-2:]) if "site-packages" in path else Path(path).name
    return f"{location}:{number} {function}" if line_number else f"{location} {function}"


# -- report ---------------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> str:
    lines = [
        "| cart | method | median s | MB/s | CPU s | CPU s/GiB | CPU s/1,000 files | speed vs curl \\| tar "
        "| speed vs verified ceiling | CPU vs verified ceiling | vs old library | peak RSS MiB | Cartd CPU s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cart in results["carts"]:
        label = f"{cart['name']} ({cart['files']} files, {cart['bytes'] / MIB:.0f} MiB)"
        for method, row in cart["methods"].items():
            lines.append(
                f"| {label} | {_cell(method)} | {row['median_seconds']:.2f} | {row['mb_per_s']:.0f} | "
                f"{_num(row, 'cpu_seconds')} | {_num(row, 'cpu_seconds_per_gib')} | "
                f"{_num(row, 'cpu_seconds_per_1000_files', 3)} | {row['ratio_to_curl_tar']:.2f} | "
                f"{_num(row, 'speed_vs_verified_ceiling')} | {_num(row, 'cpu_vs_verified_ceiling')} | "
                f"{_num(row, 'speedup_vs_old_library', suffix='x')} | {row['peak_rss_mib']:.0f} | "
                f"{_num(row, 'cartd_cpu_seconds')} |"
            )
    lines.append(
        "\nCPU: user + system seconds of the download (the provider's and tarfile's worker process, all its "
        "threads; every process of a shell pipeline), median of the runs; Cartd's own (its HTTP process's) "
        "is in the last column, not in the others. "
        "Speed ratios: the reference's wall time / the method's (above 1 is faster); CPU ratios: the method's "
        "CPU / the reference's (below 1 is cheaper)."
    )
    for cart in results["carts"]:
        goal = cart.get("comparisons", {}).get("provider_vs_verified_ceiling")
        if goal:
            lines.append(
                f"\n**{cart['name']}: the provider against the verified shell ceiling** ({_cell(VERIFIED)}): "
                f"speed {goal['speed']:.2f}x (goal at least 1.00), CPU {goal['cpu']:.2f}x (goal at most 1.20): "
                + ("**met**." if goal["goal_met"] else "**not met**.")
            )
        for method, ratio in cart.get("comparisons", {}).get("tarstream_vs_tarfile", {}).items():
            lines.append(
                f"\n{cart['name']}: the provider's tar reader against {_cell(method)} (same verified download): "
                f"tarfile takes {ratio['speed']:.2f}x the provider's wall time and {ratio['cpu_saving']:.2f}x its CPU."
            )
    if results.get("ranged"):
        r = results["ranged"]
        lines += [
            "",
            f"Bundle mode, {r['files']} files, {r['bytes'] / MIB:.0f} MiB, all verified and published by the "
            "provider's extraction:",
            "",
            "| method | median s | MB/s | CPU s | CPU s/GiB | speed vs one stream | CPU vs one stream | peak RSS MiB "
            "| Cartd CPU s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for method, row in r["methods"].items():
            lines.append(
                f"| {method} | {row['median_seconds']:.2f} | {row['mb_per_s']:.0f} | {row['cpu_seconds']:.2f} | "
                f"{row['cpu_seconds_per_gib']:.2f} | {row['speed_vs_single_stream']:.2f} | "
                f"{row['cpu_vs_single_stream']:.2f} | {row['peak_rss_mib']:.0f} | {_num(row, 'cartd_cpu_seconds')} |"
            )
        lines.append(
            f"\nBest: {r['best']}, {r['best_speed_vs_single_stream']:.2f}x the single stream: "
            + ("**reaches 1.3x**." if r["reaches_1_3x"] else "**does not reach 1.3x**.")
        )
    for profile in results.get("profiles") or []:
        lines += [
            "",
            f"Where the provider's CPU goes, {profile['cart']} cart ({profile['samples']} py-spy samples at "
            f"{profile['rate']} Hz, running threads only):",
            "",
            "| line (self) | % | function (inclusive) | % |",
            "|---|---:|---|---:|",
        ]
        for (own, own_pct), (incl, incl_pct) in zip(profile["own"], profile["inclusive"], strict=False):
            lines.append(f"| {_cell(own)} | {own_pct:.1f} | {_cell(incl)} | {incl_pct:.1f} |")
    staged = [c for c in results["carts"] if c.get("stage_seconds") is not None]
    if staged:
        lines.append(
            "\nCartd's staging time (before any download; not part of the timings above): "
            + ", ".join(f"{c['name']} {c['stage_seconds']:.0f} s" for c in staged)
            + "."
        )
    memory = results.get("memory") or []
    if memory:
        peaks = [m.get("download_peak_rss_mib", m["peak_rss_mib"]) for m in memory]
        growth = max(peaks) - min(peaks)
        lines += [
            "",
            "| cart GiB | RSS before the download MiB | peak RSS during the download MiB | process peak RSS MiB |",
            "|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {m['gib']:.2f} | {m.get('rss_before_mib', float('nan')):.1f} | {peak:.1f} | {m['peak_rss_mib']:.1f} |"
            for m, peak in zip(memory, peaks, strict=True)
        ]
        lines.append(
            f"\nGrowth of the download's peak RSS from {memory[0]['gib']:.1f} to {memory[-1]['gib']:.1f} GiB: "
            f"**{growth:.1f} MiB** (sampled every 5 ms while it ran)."
        )
    if results.get("triggers"):
        t = results["triggers"]
        lines.append(
            f"\n{t['triggers']} CartReadyTriggers in one event loop, {t['poll_interval_s']:.0f} s polls: "
            f"{t['completed_ready']} completed ready in {t['wall_s']:.1f} s, CPU {t['cpu_s']:.2f} s "
            f"(**{t['cpu_percent_of_one_core']:.1f} % of one core**), worst event-loop lag "
            f"**{t['worst_loop_lag_ms']:.0f} ms** ({t['full_gc_count']} full garbage collections during the run; "
            f"{t['worst_loop_lag_outside_full_gc_ms']:.0f} ms outside them). One full collection of this "
            f"process ({t['gc_tracked_objects']:,} objects, mostly Airflow's own) takes {t['full_gc_idle_ms']:.0f} ms: "
            "CPython pauses any triggerer's loop that long whenever it runs one, whatever the triggers."
        )
    if results.get("parallel"):
        p = results["parallel"]
        lines.append(
            f"\nParallel carts ({p['bytes'] / MIB:.0f} MiB): 1 cart {p['one_cart_s']:.2f} s, "
            f"{p['carts']} carts at once {p['n_carts_s']:.2f} s (x{p['one_cart_s'] / p['n_carts_s']:.2f})."
        )
    if results.get("intake"):
        from intake import report as intake_report

        lines += ["", intake_report(results["intake"])]
    if results.get("watcher"):
        from watcher import report as watcher_report

        lines += ["", watcher_report(results["watcher"])]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a literal pipe inside a Markdown table cell


def _num(row: dict[str, Any], key: str, digits: int = 2, suffix: str = "") -> str:
    return f"{row[key]:.{digits}f}{suffix}" if key in row else "-"


def chart(results: dict[str, Any], path: Path) -> None:
    if not results.get("carts"):  # an intake-only run: nothing to plot
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 1 + bool(results.get("memory"))
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4))
    axes = axes if panels > 1 else [axes]
    methods = list(results["carts"][0]["methods"])
    width = 0.8 / len(methods)
    for offset, method in enumerate(methods):
        values = [cart["methods"][method]["ratio_to_curl_tar"] for cart in results["carts"]]
        positions = [i + offset * width for i in range(len(results["carts"]))]
        axes[0].bar(positions, values, width, label=method)
    axes[0].set_xticks([i + width * (len(methods) - 1) / 2 for i in range(len(results["carts"]))])
    axes[0].set_xticklabels(
        [
            f"{c['name']}: {c['files']} files\ncurl | tar {c['methods']['curl | tar']['mb_per_s']:.0f} MB/s"
            for c in results["carts"]
        ]
    )
    axes[0].axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    axes[0].set_ylabel("throughput / curl | tar (median)")
    axes[0].set_title("Download speed relative to curl | tar, same cart")
    axes[0].legend(fontsize=8, loc="lower center")
    if results.get("memory"):
        memory = results["memory"]
        peaks = [m.get("download_peak_rss_mib", m["peak_rss_mib"]) for m in memory]
        axes[1].plot([m["gib"] for m in memory], peaks, marker="o", label="peak during the download")
        if all("rss_before_mib" in m for m in memory):
            before = [m["rss_before_mib"] for m in memory]
            axes[1].plot([m["gib"] for m in memory], before, marker=".", linestyle=":", label="before it")
        axes[1].set_xlabel("cart size (GiB)")
        axes[1].set_ylabel("provider RSS (MiB)")
        axes[1].set_ylim(0, max(peaks) * 1.3)
        axes[1].legend(fontsize=8, loc="lower right")
        axes[1].set_title("Memory stays flat")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# -- main -----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    worker = sub.add_parser("worker")
    worker.add_argument("kind", choices=["provider", "shell", "tarfile", "ranged"])
    worker.add_argument("--task-id")
    worker.add_argument("--files")
    worker.add_argument("--dest")
    worker.add_argument("--bundle", action="store_true")
    worker.add_argument(
        "--script", action="append", default=[], help="shell: run one after the other, timed as the sum"
    )
    worker.add_argument("--url")
    worker.add_argument("--top-dir")
    worker.add_argument("--bufsize", type=int, default=tarfile.RECORDSIZE)
    worker.add_argument("--parts", type=int)
    worker.add_argument("--sequential", action="store_true")
    server = sub.add_parser("trigger-server")
    server.add_argument("--port", type=int, required=True)
    server.add_argument("--ready-after", type=float, required=True)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--large-files", type=int, default=64, help="files of 16 MiB in the large cart")
    parser.add_argument(
        "--small-files",
        type=int,
        default=10_000,
        help="files of 4 KiB in the small-files cart. Cartd 0.7 stages a cart in time quadratic in its file "
        "count (every staged file re-reads the whole cart): 10,000 files take it about half an hour, 2,000 "
        "about a minute and a half; use --small-files 2000 for a quick run",
    )
    parser.add_argument("--memory-gib", default="0.1,0.5,1,2")
    parser.add_argument("--triggers", type=int, default=1000)
    parser.add_argument("--parallel-carts", type=int, default=4)
    parser.add_argument(
        "--no-tarfile",
        dest="tarfile",
        action="store_false",
        help="skip the provider's path rebuilt on tarfile (benchmarks/tarfile_baseline.py)",
    )
    parser.add_argument("--no-old-library", dest="old_library", action="store_false", help="skip pacifica-downloader")
    parser.add_argument("--no-ranged", dest="ranged", action="store_false", help="skip the bundle-mode ranged GETs")
    parser.add_argument(
        "--ranged-files", type=int, default=64, help="files of 16 MiB in the bundle cart of the ranged GETs"
    )
    parser.add_argument(
        "--ranged-parts",
        type=lambda text: [int(n) for n in text.split(",") if n],
        default=[2, 4, 8],
        help="parallel ranged GETs to try (comma-separated)",
    )
    parser.add_argument(
        "--no-ranged-sequential",
        dest="ranged_sequential",
        action="store_false",
        help="skip the ranged variant that extracts only after every range has arrived",
    )
    parser.add_argument(
        "--py-spy",
        metavar="PATH",
        help="a py-spy executable (not in .venv: e.g. a scratch venv's): sample one provider download per cart",
    )
    parser.add_argument("--py-spy-rate", type=int, default=1000, help="py-spy samples per second")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where results.json/.md/.png go")
    parser.add_argument("--workdir", type=Path, default=REPO / ".cache" / "bench")
    parser.add_argument(
        "--keep-stack",
        action="store_true",
        help="leave the Cartd stack running, and reuse it if a previous --keep-stack run left it: the carts "
        "it staged are reused too (staging 10,000 small files takes Cartd about 20 minutes)",
    )
    parser.add_argument("--no-intake", dest="intake", action="store_false", help="skip benchmarks/intake.py")
    parser.add_argument("--intake-events", type=int, default=1000, help="events in the webhook burst")
    parser.add_argument("--intake-clients", type=int, default=16, help="concurrent clients of the burst")
    parser.add_argument("--intake-uploads", type=int, default=10, help="real uploads timed to files on disk")
    parser.add_argument(
        "--only-intake",
        action="store_true",
        help="measure only the intake (benchmarks/intake.py), into the results of the last full run",
    )
    parser.add_argument("--watcher", action="store_true", help="also run benchmarks/watcher.py (about 15 min)")
    parser.add_argument(
        "--only-watcher",
        action="store_true",
        help="measure only the pull intake (benchmarks/watcher.py), into the results of the last full run",
    )
    parser.add_argument("--watcher-uploads", type=int, default=10, help="real uploads timed to their watcher run")
    parser.add_argument("--watcher-window", type=float, default=300.0, help="seconds each idle cost is measured")
    parser.add_argument(
        "--only-triggers",
        action="store_true",
        help="measure only the triggerer scale, into the results of the last full run",
    )
    args = parser.parse_args()

    if args.command == "worker":
        workers = {
            "provider": lambda: worker_provider(args),
            "shell": lambda: worker_shell(args.script),
            "tarfile": lambda: worker_tarfile(args),
            "ranged": lambda: worker_ranged(args),
        }
        print(json.dumps(workers[args.kind]()))
        return 0
    if args.command == "trigger-server":
        trigger_server(args)
        return 0
    return run_all(args)


def run_all(args: argparse.Namespace) -> int:
    workdir: Path = args.workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["AIRFLOW_HOME"] = str(workdir / "airflow-home")
    if args.only_watcher:  # measured into the last full run's results (needs neither curl nor the old library)
        step("Pull intake: upload -> run at the default poll, and the cost of 50 watchers")
        watcher = run_watcher(workdir, args)
        previous = (
            json.loads((args.results / "results.json").read_text())
            if (args.results / "results.json").exists()
            else {"carts": []}
        )
        write_results({**previous, "watcher": watcher}, args.results)
        return 0
    if args.old_library and not (OLD_VENV / "bin" / "python").exists():
        step(f"Installing {OLD_PIN} into its own venv")
        subprocess.run([sys.executable, "-m", "venv", str(OLD_VENV)], check=True)
        subprocess.run([str(OLD_VENV / "bin" / "pip"), "install", "-qq", OLD_PIN], check=True)
    if not shutil.which("curl"):
        subprocess.run(["apt-get", "install", "-y", "-q", "curl"], check=True, stdout=subprocess.DEVNULL)

    if args.only_intake:  # measured again into the last full run's results
        step("Intake: a webhook burst and real uploads through the whole real Pacifica")
        intake = run_intake(workdir, args)
        previous = (
            json.loads((args.results / "results.json").read_text())
            if (args.results / "results.json").exists()
            else {"carts": []}
        )
        write_results({**previous, "intake": intake}, args.results)
        return 0
    if args.only_triggers:  # measured again into the last full run's results
        step(f"Triggerer scale: {args.triggers} CartReadyTriggers in one event loop, 5 s polls")
        triggers = measure_triggers(args.triggers, poll=5.0, ready_after=30.0)
        print(json.dumps(triggers, indent=2))
        if (args.results / "results.json").exists():
            previous = json.loads((args.results / "results.json").read_text())
            write_results({**previous, "triggers": triggers}, args.results)
        return 0
    stack_dir = workdir / "stack"
    stack_env = stack_dir / "run" / "stack.env"
    running = subprocess.run([sys.executable, str(STACK), "status", "--workdir", str(stack_dir)], capture_output=True)
    if args.keep_stack and running.returncode == 0 and stack_env.exists():
        step("Reusing the Cartd stack left running by --keep-stack (its staged carts too)")
        lines = stack_env.read_text()
    else:
        subprocess.run([sys.executable, str(STACK), "stop", "--workdir", str(stack_dir)], check=False)
        step("Starting the real Cartd stack (2 Celery workers)")
        started = subprocess.run(
            [sys.executable, str(STACK), "start", "--workdir", str(stack_dir), "--workers", "2"],
            capture_output=True,
            text=True,
        )
        if started.returncode != 0:
            print(started.stderr, file=sys.stderr)
            return 1
        lines = started.stdout
    stack = dict(line.split("=", 1) for line in lines.splitlines() if "=" in line)
    cartd_url = stack["CARTD_URL"]
    global CARTD_PID  # read by every measurement, set once here
    with contextlib.suppress(OSError, ValueError, KeyError):
        CARTD_PID = json.loads((stack_dir / "run" / "pids" / "cartd.json").read_text())["pid"]
    host, port = cartd_url.rsplit("/", 1)[-1].split(":")
    os.environ["AIRFLOW_CONN_PACIFICA_CARTD_DEFAULT"] = json.dumps(
        {"conn_type": "pacifica_cartd", "host": host, "port": int(port), "extra": {"read_timeout": 300}}
    )
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, "carts": []}
    scratch = workdir / "scratch"
    scratch.mkdir(exist_ok=True)
    try:
        memory_sizes = [float(x) for x in args.memory_gib.split(",") if x]
        big_count = max(
            args.large_files, args.ranged_files if args.ranged else 0, int(max(memory_sizes or [0]) * 64 + 0.5)
        )
        step(f"Writing and loading {big_count} files of 16 MiB and {args.small_files} files of 4 KiB")
        write_files(workdir / "data" / "large", big_count, 16 * MIB, per_dir=16)
        write_files(workdir / "data" / "small", args.small_files, 4096, per_dir=100)
        t0 = time.perf_counter()
        pool = load(stack_dir, workdir / "data" / "large", first_id=1_000_000)
        small = load(stack_dir, workdir / "data" / "small", first_id=2_000_000)
        print(f"  loaded into the archive in {time.perf_counter() - t0:.0f}s", flush=True)

        step(f"Throughput: large cart ({args.large_files} x 16 MiB), {args.reps} alternating repetitions")
        results["carts"].append(measure_cart("large", pool[: args.large_files], "large", cartd_url, scratch, args))
        step(f"Throughput: many small files ({args.small_files} x 4 KiB), {args.reps} alternating repetitions")
        results["carts"].append(measure_cart("small files", small, "small", cartd_url, scratch, args))
        if args.ranged:
            step(
                f"Bundle mode: one stream vs {args.ranged_parts} ranged GETs ({args.ranged_files} x 16 MiB), "
                f"{args.reps} alternating repetitions"
            )
            results["ranged"] = measure_ranged(pool[: args.ranged_files], cartd_url, scratch, args)
        if args.py_spy:
            step(f"Profile: one provider download per cart under py-spy ({args.py_spy_rate} Hz)")
            results["profiles"] = []
            for label, task_id in (("large", "large"), ("small files", "small")):
                dest = scratch / f"out-profile-{task_id}"
                shutil.rmtree(dest, ignore_errors=True)
                argv = ["worker", "provider", "--task-id", task_id, "--files", str(scratch / f"{task_id}.json")]
                raw = args.results / f"py-spy-{task_id}.txt"
                args.results.mkdir(parents=True, exist_ok=True)
                results["profiles"].append(
                    measure_profile(args.py_spy, label, [*argv, "--dest", str(dest)], raw, args.py_spy_rate)
                )
                shutil.rmtree(dest, ignore_errors=True)

        if memory_sizes:
            step(f"Memory: provider peak RSS for carts of {args.memory_gib} GiB")
            results["memory"] = measure_memory(memory_sizes, pool, scratch)
        if args.parallel_carts > 1:
            step(f"Parallel carts: 1 cart vs {args.parallel_carts} carts on the same {args.large_files} files")
            one = measure_parallel(pool[: args.large_files], 1, scratch)
            many = measure_parallel(pool[: args.large_files], args.parallel_carts, scratch)
            results["parallel"] = {
                "bytes": sum(f["size"] for f in pool[: args.large_files]),
                "one_cart_s": one["seconds"],
                "carts": many["carts"],
                "n_carts_s": many["seconds"],
            }
    finally:
        if not args.keep_stack:
            subprocess.run([sys.executable, str(STACK), "stop", "--workdir", str(stack_dir)], check=False)
    if args.triggers:
        step(f"Triggerer scale: {args.triggers} CartReadyTriggers in one event loop, 5 s polls")
        results["triggers"] = measure_triggers(args.triggers, poll=5.0, ready_after=30.0)
    if args.intake:
        step("Intake: a webhook burst and real uploads through the whole real Pacifica")
        results["intake"] = run_intake(workdir, args)
    if args.watcher:
        step("Pull intake: upload -> run at the default poll, and the cost of 50 watchers")
        results["watcher"] = run_watcher(workdir, args)

    write_results(results, args.results)
    return 0


def run_intake(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from intake import measure_intake  # benchmarks/intake.py, beside this file

    return measure_intake(workdir, events=args.intake_events, clients=args.intake_clients, uploads=args.intake_uploads)


def run_watcher(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from watcher import measure_watcher  # benchmarks/watcher.py, beside this file

    return measure_watcher(workdir / "watcher", uploads=args.watcher_uploads, window=args.watcher_window)


def write_results(results: dict[str, Any], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps(results, indent=2))
    table = report(results)
    (directory / "results.md").write_text(table)
    chart(results, directory / "results.png")
    step("Results")
    print(table)
    print(f"(written to {directory})")


if __name__ == "__main__":
    sys.exit(main())
