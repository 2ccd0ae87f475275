"""The demo: a real Cartd on loopback, an example DAG downloading a cart from a CloudEvent.

Run it with ``scripts/demo`` (which prepares the venv first). It starts the real Cartd stack
(scripts/cartd-stack), loads sample files into the archive interface, builds the CloudEvent that
Pacifica Metadata would emit for them, runs ``airflow dags test pacifica_cloudevent_download``
with that event on a throwaway sqlite Airflow, prints where the verified files landed and the
manifest, and stops everything it started.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
STACK = REPO / "scripts" / "cartd-stack"
DAG_ID = "pacifica_cloudevent_download"

SAMPLES = {
    "README.txt": "Sample data set for the airflow-provider-pacifica demo.\n",
    "run-001/temperature.csv": "t_s,kelvin\n" + "".join(f"{t},{290 + t / 100:.2f}\n" for t in range(500)),
    "run-001/spectrum.bin": bytes(range(256)) * 4096,  # 1 MiB
    "run-001/notes/résumé ü.txt": "Non-ASCII names survive the round trip: é ü ✓\n",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=REPO / ".cache" / "demo")
    parser.add_argument("--output", type=Path, default=REPO / "demo-output", help="where the files are published")
    args = parser.parse_args()

    workdir: Path = args.workdir.absolute()
    if workdir.exists():
        subprocess.run([sys.executable, STACK, "stop", "--workdir", str(workdir)], check=False)
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    output: Path = args.output.absolute()

    step("Starting the real Cartd stack (redis, PostgreSQL, archive interface, Celery worker, Cartd)")
    started = subprocess.run(
        [sys.executable, STACK, "start", "--workdir", str(workdir / "stack")], capture_output=True, text=True
    )
    sys.stderr.write(started.stderr)
    if started.returncode != 0:
        print("The Cartd stack did not start.", file=sys.stderr)
        return 1
    stack = dict(line.split("=", 1) for line in started.stdout.splitlines() if "=" in line)
    print(f"Cartd at {stack['CARTD_URL']}, archive interface at {stack['ARCHIVE_URL']}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops the stack
    try:
        return run_demo(workdir, output, stack)
    finally:
        # Stop first: printing can fail (a closed pipe) and must not leave the stack running.
        subprocess.run([sys.executable, STACK, "stop", "--workdir", str(workdir / "stack")], check=False)
        step("Stopped the Cartd stack")


def run_demo(workdir: Path, output: Path, stack: dict[str, str]) -> int:
    step("Loading sample files into the archive interface")
    samples = workdir / "samples"
    for path, content in SAMPLES.items():
        target = samples / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content if isinstance(content, bytes) else content.encode())
    loaded = subprocess.run(
        [sys.executable, STACK, "load", "--workdir", str(workdir / "stack"), str(samples)],
        capture_output=True,
        text=True,
        check=True,
    )
    event = json.loads(loaded.stdout)
    print(json.dumps(event, indent=2, ensure_ascii=False))

    step(f"Running `airflow dags test {DAG_ID}` with that CloudEvent")
    cartd = urlsplit(stack["CARTD_URL"])
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(workdir / "airflow-home"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW_CONN_PACIFICA_CARTD_DEFAULT": json.dumps(
            {"conn_type": "pacifica_cartd", "host": cartd.hostname, "port": cartd.port, "schema": "http"}
        ),
        "PACIFICA_DOWNLOAD_ROOT": str(output),
    }
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    log = workdir / "dags-test.log"
    started = time.monotonic()
    with log.open("w") as handle:
        result = subprocess.run(
            [airflow, "dags", "test", DAG_ID, "-c", json.dumps({"cloudevent": event})],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    elapsed = time.monotonic() - started
    for line in log.read_text(errors="replace").splitlines():
        if any(word in line for word in ("DAG TEST", "Cart ", "Published", "Total:", "bytes,", "ERROR", "failed")):
            print("  " + line.strip()[:200])
    if result.returncode != 0:
        print(f"airflow dags test failed (exit {result.returncode}); full log: {log}", file=sys.stderr)
        return 1

    manifest = read_manifest(env)
    if manifest is None:
        print(f"no manifest in XCom; full log: {log}", file=sys.stderr)
        return 1
    step(f"Done in {elapsed:.1f}s: verified files published under {manifest['destination']}")
    for entry in manifest["files"]:
        print(f"  {entry['size']:>9} B  {entry['hashtype']} {entry['hashsum']}  {entry['path']}")
    print("\nManifest (the download task's XCom):")
    print(json.dumps(manifest, indent=2, ensure_ascii=False))
    return 0


def read_manifest(env: dict[str, str]) -> dict | None:
    """The newest ``download`` XCom of the demo DAG, read from the demo's Airflow DB."""
    code = (
        "import json; from airflow.models.xcom import XComModel; from airflow.utils.session import create_session\n"
        "with create_session() as s:\n"
        f"    row = s.query(XComModel).filter_by(dag_id={DAG_ID!r}, task_id='download', key='return_value')"
        ".order_by(XComModel.timestamp.desc()).first()\n"
        "    value = row.value if row else None\n"
        "    print(json.dumps(json.loads(value) if isinstance(value, str) else value))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
