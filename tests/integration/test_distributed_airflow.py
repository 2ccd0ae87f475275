"""The provider on a real distributed Airflow: PostgreSQL, CeleryExecutor on redis, two workers,
two api-servers (tests/integration/distributed_airflow.py), with the real Cartd behind a fault proxy.

* the webhook records one asset event per event id under concurrent redeliveries spread over
  both api-servers;
* the example DAG downloads into S3 (the real SeaweedFS of scripts/s3-stack, ``[pacifica]
  download_root`` / ``download_conn_id``) on one worker (the data mover: a cluster policy routes
  ``PacificaDownloadOperator`` tasks to its queue) and ``summarize`` reads the objects on the other;
* a worker SIGKILLed in the middle of a download: the retry runs on the other worker, reuses the
  cart, publishes once, and removes what the dead attempt wrote (its unfinished multipart upload,
  any staged object).
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import requests

from airflow_provider_pacifica.destinations import safe_name
from airflow_provider_pacifica.objectstore import MANIFEST_PREFIX, PART_SIZE, STAGING_PREFIX
from tests.faultproxy import FaultProxy
from tests.integration.distributed_airflow import (
    DEFAULT_QUEUE,
    DistributedAirflow,
    start_distributed_airflow,
)
from tests.integration.test_download_dag import TEXT_FILES, ingest_event

pytestmark = pytest.mark.e2e
DAG_ID = "pacifica_cloudevent_download"
INGEST_ASSET = "pacifica://metadata/ingest"
WEBHOOK_AUTH = ("pacifica-notify", "notify-secret-2")
DOWNLOAD_QUEUE = "pacifica-downloads"
MOVER, OTHER = "worker-a", "worker-b"  # the data mover (download queue) and the worker for the rest
# The deployment's cluster policy (airflow_local_settings.py): every Pacifica download goes to the
# data movers' queue, whatever the DAG says; and, in this test deployment only, a failed download
# is retried after 5-10 s instead of the example DAG's 30-60 s.
CLUSTER_POLICY = f"""
from datetime import timedelta


def task_policy(task):
    if task.task_type == "PacificaDownloadOperator":
        task.queue = {DOWNLOAD_QUEUE!r}
        task.retry_delay = timedelta(seconds=5)
"""


@pytest.fixture(scope="module")
def proxy(cartd_stack):
    fault_proxy = FaultProxy(cartd_stack.cartd_url)
    try:
        yield fault_proxy
    finally:
        fault_proxy.release()
        fault_proxy.close()


@pytest.fixture(scope="module")
def root(s3_stack) -> str:
    """The download root's prefix in the bucket (one per module run)."""
    return f"distributed-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def cluster(cartd_stack, proxy, s3_stack, root, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("distributed-airflow")
    cartd = urlsplit(proxy.url)
    cluster = start_distributed_airflow(
        workdir,
        {
            "AIRFLOW_CONN_PACIFICA_CARTD_DEFAULT": json.dumps(
                {"conn_type": "pacifica_cartd", "host": cartd.hostname, "port": cartd.port}
            ),
            "AIRFLOW_CONN_PACIFICA_WEBHOOK_DEFAULT": json.dumps(
                {"conn_type": "generic", "login": WEBHOOK_AUTH[0], "password": WEBHOOK_AUTH[1]}
            ),
            # The one place the dag-processor and the workers agree on: storage both workers reach.
            "AIRFLOW__PACIFICA__DOWNLOAD_ROOT": s3_stack.url(root),
            "AIRFLOW__PACIFICA__DOWNLOAD_CONN_ID": "aws_s3",
            "AIRFLOW_CONN_AWS_S3": s3_stack.connection_json(),
        },
        worker_queues={MOVER: [DOWNLOAD_QUEUE], OTHER: [DEFAULT_QUEUE]},
        local_settings=CLUSTER_POLICY,
    )
    try:
        wait_for(lambda: cluster.api("GET", f"/api/v2/dags/{DAG_ID}").ok, 120, "the DAG to be parsed", cluster)
        wait_for(lambda: asset_id(cluster, INGEST_ASSET) is not None, 60, "the ingest asset", cluster)
        yield cluster
    finally:
        cluster.stop()


def wait_for(check, timeout: float, what: str, cluster: DistributedAirflow | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{cluster.log_tail()}" if cluster else ""))


def asset_id(cluster: DistributedAirflow, uri: str) -> int | None:
    assets = cluster.get("/api/v2/assets", uri_pattern=uri)["assets"]
    return next((a["id"] for a in assets if a["uri"] == uri), None)


def notify(cluster: DistributedAirflow, event: dict, server: int) -> requests.Response:
    return requests.post(
        f"{cluster.api_urls[server]}/pacifica/events",
        data=json.dumps(event),
        headers={"Content-Type": "application/json"},
        auth=WEBHOOK_AUTH,
        timeout=120,
    )


def set_paused(cluster: DistributedAirflow, paused: bool) -> None:
    cluster.api("PATCH", f"/api/v2/dags/{DAG_ID}", json={"is_paused": paused}).raise_for_status()


def run_of(cluster: DistributedAirflow, event_id: str, timeout: float = 120) -> str:
    """The id of the run the webhook started for the event (its partition key is the event id)."""

    def find():
        runs = cluster.get(f"/api/v2/dags/{DAG_ID}/dagRuns", limit=100)["dag_runs"]
        return next((run["dag_run_id"] for run in runs if run.get("partition_key") == event_id), None)

    return wait_for(find, timeout, f"the run of {event_id}", cluster)


def finished(cluster: DistributedAirflow, run_id: str, timeout: float) -> str:
    def state():
        value = cluster.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
        return value if value in ("success", "failed") else None

    return wait_for(state, timeout, f"run {run_id} to finish", cluster)


def task_instance(cluster: DistributedAirflow, run_id: str, task_id: str) -> dict:
    """The task's (first) mapped instance: download and summarize are mapped, one per event."""
    return cluster.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/0")


def tries(cluster: DistributedAirflow, run_id: str, task_id: str) -> list[dict]:
    path = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/0/tries"
    return sorted(cluster.get(path)["task_instances"], key=lambda ti: ti["try_number"])


def keys_of(s3_stack, prefix: str) -> list[str]:
    """The object keys under ``prefix/``, relative to it."""
    return [key.removeprefix(f"{prefix}/") for key in s3_stack.keys(f"{prefix}/")]


def leftovers(s3_stack, prefix: str) -> list[str]:
    """What an unfinished download has in the store: staged objects and unfinished multipart uploads."""
    staged = [key for key in keys_of(s3_stack, prefix) if key.startswith(STAGING_PREFIX)]
    return staged + [f"upload of {upload['Key']}" for upload in s3_stack.multipart_uploads(f"{prefix}/")]


def log_text(cluster: DistributedAirflow, worker: str, run_id: str, task_id: str) -> str:
    return "\n".join(p.read_text(errors="replace") for p in cluster.workers[worker].task_logs(DAG_ID, run_id, task_id))


# -- (a) the webhook's dedupe across two api-servers --------------------------------------------


def deliver_at_once(cluster: DistributedAirflow, event: dict, servers: list[int]) -> list[requests.Response]:
    """POST ``event`` once per entry of ``servers`` (api-server 0 or 1), all threads released together."""
    barrier = threading.Barrier(len(servers))

    def deliver(server: int) -> requests.Response:
        barrier.wait(60)
        return notify(cluster, event, server)

    with ThreadPoolExecutor(max_workers=len(servers)) as pool:
        return list(pool.map(deliver, servers))


def test_concurrent_redeliveries_over_two_api_servers_record_one_asset_event_per_event_id(cluster, cartd_stack):
    events = [ingest_event(cartd_stack, {"readme.txt": f"event {n}\n".encode()}) for n in range(20)]
    # Each event 5 times at the same instant, over both api-servers (3 + 2, alternating): each
    # server serialises its own requests, so only a lock across processes keeps these apart.
    deliveries = [(event, [(n + k) % 2 for k in range(5)]) for n, event in enumerate(events)]
    set_paused(cluster, True)  # the events are recorded, but start no run (their files are not the point here)
    try:
        with ThreadPoolExecutor(max_workers=2) as waves:  # two events in flight at a time: 10 threads
            answers = list(waves.map(lambda delivery: deliver_at_once(cluster, *delivery), deliveries))
    finally:
        set_paused(cluster, False)

    outcomes: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
    for (event, servers), wave in zip(deliveries, answers, strict=True):
        for server, answer in zip(servers, wave, strict=True):
            assert answer.status_code in (200, 201), f"api-server {server}: {answer.status_code} {answer.text}"
            body = answer.json()
            outcomes[event["eventID"]].append((answer.status_code, body["status"], body["asset_event_id"]))
    for event in events:
        seen = outcomes[event["eventID"]]
        assert sorted(status for _, status, _ in seen) == ["duplicate"] * 4 + ["recorded"], seen
        assert len({asset_event for _, _, asset_event in seen}) == 1, f"answers name different asset events: {seen}"
    # What the database holds, counted by PostgreSQL itself: one row per event id.
    rows = cluster.query(
        "SELECT extra->>'cloudevent_id', count(*) FROM asset_event WHERE asset_id = %s GROUP BY 1",
        asset_id(cluster, INGEST_ASSET),
    )
    counts = {event_id: count for event_id, count in rows}
    assert {event["eventID"]: counts.get(event["eventID"]) for event in events} == {
        event["eventID"]: 1 for event in events
    }


# -- (b) a download on one worker, read on the other --------------------------------------------


def test_the_example_dag_downloads_to_s3_on_the_data_mover_and_summarizes_on_the_other_worker(
    cluster, cartd_stack, s3_stack, root
):
    event = ingest_event(cartd_stack, TEXT_FILES)
    answer = notify(cluster, event, server=1)
    assert answer.status_code == 201, answer.text
    run_id = run_of(cluster, event["eventID"])
    assert finished(cluster, run_id, 300) == "success", cluster.log_tail()

    download, summarize = task_instance(cluster, run_id, "download"), task_instance(cluster, run_id, "summarize")
    assert (download["hostname"], download["queue"]) == (MOVER, DOWNLOAD_QUEUE)
    assert (summarize["hostname"], summarize["queue"]) == (OTHER, DEFAULT_QUEUE)
    prefix = f"{root}/{safe_name(run_id)}/{safe_name(event['eventID'])}"
    client = s3_stack.client()
    for path, data in TEXT_FILES.items():
        assert client.get_object(Bucket=s3_stack.bucket, Key=f"{prefix}/{path}")["Body"].read() == data
    # Each worker keeps its own task logs: the summary was computed on the other worker, from the objects.
    summary = log_text(cluster, OTHER, run_id, "summarize")
    total = sum(len(data) for data in TEXT_FILES.values())
    assert f"Total: {len(TEXT_FILES)} files, {total} bytes" in summary
    for path, data in TEXT_FILES.items():
        assert f"{path}: {len(data)} bytes" in summary
        assert hashlib.sha256(data).hexdigest() in summary
    assert "Published 3 verified file(s)" in log_text(cluster, MOVER, run_id, "download")
    assert not cluster.workers[OTHER].task_logs(DAG_ID, run_id, "download")


# -- (c) a worker killed in the middle of a download -------------------------------------------


def test_a_worker_killed_mid_download_is_replaced_by_the_other_which_reuses_the_cart_and_publishes_once(
    cluster, cartd_stack, proxy, s3_stack, root
):
    # Both workers serve both queues now: the download may start on either.
    cluster.consume(MOVER, DEFAULT_QUEUE)
    cluster.consume(OTHER, DOWNLOAD_QUEUE)
    # Two small files and one of more than two parts (a multipart upload to its final key, completed
    # only once every file is verified). The first download stops 64 KiB before the end of the last
    # file: whatever the order of the files in the tar (and the client's 1 MiB reads), the large
    # file has a part uploaded by then.
    rng = random.Random(7)
    contents = {f"small/part-{n}.bin": rng.randbytes(2 << 20) for n in range(2)}
    contents["large/whole.bin"] = rng.randbytes(2 * PART_SIZE + (1 << 20))
    event = ingest_event(cartd_stack, contents)
    seen_before = len(proxy.seen)
    proxy.hold_next_download(after=sum(map(len, contents.values())) - (64 << 10))
    assert notify(cluster, event, server=0).status_code == 201
    run_id = run_of(cluster, event["eventID"])
    prefix = f"{root}/{safe_name(run_id)}/{safe_name(event['eventID'])}"

    assert proxy.holding.wait(240), f"the download never started\n{cluster.log_tail()}"
    running = wait_for(
        lambda: (ti := task_instance(cluster, run_id, "download"))["state"] == "running" and ti["hostname"] and ti,
        60,
        "the download to run",
        cluster,
    )
    victim = running["hostname"]
    survivor = OTHER if victim == MOVER else MOVER
    left = wait_for(lambda: leftovers(s3_stack, prefix), 60, "the download's first writes to the store", cluster)
    killed = cluster.kill_worker(victim)
    proxy.release()
    assert len(killed) >= 3, f"the worker, its pool and the task process: {killed}"
    assert all(key.startswith(STAGING_PREFIX) for key in keys_of(s3_stack, prefix)), "visible before the end"

    # The heartbeat timeout fails the dead attempt (20 s), the retry waits its retry_delay (5-10 s).
    assert finished(cluster, run_id, 420) == "success", cluster.log_tail()
    attempts = tries(cluster, run_id, "download")
    assert [(ti["try_number"], ti["hostname"]) for ti in attempts] == [(1, victim), (2, survivor)], attempts
    assert attempts[-1]["state"] == "success"

    # One cart: the retry found the cart the dead attempt had created, and downloaded it again.
    traffic = proxy.seen[seen_before:]
    posts = [s.path for s in traffic if s.method == "POST"]
    gets = [s.path for s in traffic if s.method == "GET" and s.path != "/"]
    assert len(posts) == 1, traffic
    assert gets == [posts[0], posts[0]], traffic
    # Published once, by the survivor: the files and the manifest (the commit marker), nothing else:
    # what the dead attempt had written (seen above) is gone.
    assert "Published" not in log_text(cluster, victim, run_id, "download")
    assert log_text(cluster, survivor, run_id, "download").count("Published 3 verified file(s)") == 1
    client = s3_stack.client()
    for path, data in contents.items():
        assert client.get_object(Bucket=s3_stack.bucket, Key=f"{prefix}/{path}")["Body"].read() == data
    cart_uid = posts[0].strip("/")
    assert keys_of(s3_stack, prefix) == sorted([*contents, f"{MANIFEST_PREFIX}{cart_uid}.json"]), left
    assert leftovers(s3_stack, prefix) == [], left
