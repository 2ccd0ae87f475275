"""A distributed Airflow on 127.0.0.1: PostgreSQL, redis, CeleryExecutor, two workers, two api-servers.

What a multi-machine deployment has, on one machine and loopback only:

* PostgreSQL (Debian's, a cluster of its own in a temporary directory) as the metadata database,
  and redis as the Celery broker, both started with scripts/cartd-stack's helpers;
* the scheduler (CeleryExecutor), the dag-processor and the triggerer, sharing one AIRFLOW_HOME;
* TWO api-servers on different ports, on the same database and with the same signing secrets;
* TWO Celery workers, each with its own AIRFLOW_HOME (its own logs, pid file and temporary
  directory) and its own hostname, which it reports for the task instances it runs (``[core]
  hostname_callable`` is :func:`worker_hostname`), all of them started with ``--skip-serve-logs``;
* heartbeat timeouts lowered, so the task of a killed worker is failed (and retried) within
  about half a minute instead of five.

Every process runs in its own session and is stopped by pid; the logs stay in the work directory
(``<name>.log`` per component, and each worker's task logs under its own home).
"""

from __future__ import annotations

import base64
import contextlib
import importlib.machinery
import importlib.util
import os
import secrets
import signal
import socket
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import psutil
import requests

from tests.integration.airflow_stack import REPO, AirflowStack, free_port, start_airflow, wait_until_healthy

WORKER_NAME_VARIABLE = "PACIFICA_TEST_WORKER"
DEFAULT_QUEUE = "default"
WORKER_COMMAND = ["celery", "worker", "--skip-serve-logs", "--without-mingle", "--without-gossip"]
HEARTBEAT_TIMEOUT = 20  # [scheduler] task_instance_heartbeat_timeout, seconds (Airflow's default: 300)


def worker_hostname() -> str:
    """``[core] hostname_callable`` of the harness's workers: the name their environment gives them."""
    return os.environ.get(WORKER_NAME_VARIABLE) or socket.getfqdn()


def _services() -> Any:
    """scripts/cartd-stack as a module: its redis and PostgreSQL helpers (importing it runs nothing)."""
    path = REPO / "scripts" / "cartd-stack"
    loader = importlib.machinery.SourceFileLoader("cartd_stack", str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("cartd_stack", loader))  # type: ignore[arg-type]
    loader.exec_module(module)
    return module


@dataclass
class Worker:
    name: str  # also the hostname its task instances report
    home: Path
    queues: list[str]

    @property
    def pid_file(self) -> str:
        """Its pid file (Airflow's default, one per AIRFLOW_HOME)."""
        return str(self.home / "worker.pid")

    @property
    def node(self) -> str:
        """Its Celery node name."""
        return f"{self.name}@pacifica-test"

    def task_logs(self, dag_id: str, run_id: str, task_id: str) -> list[Path]:
        """The task logs this worker wrote for ``task_id`` of one run (every map index and attempt)."""
        base = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        return sorted(base.rglob("attempt=*.log")) if base.exists() else []


@dataclass
class DistributedAirflow:
    airflow: AirflowStack
    workdir: Path  # scripts/cartd-stack's layout: run/pids, run/logs (redis and PostgreSQL)
    postgres_port: int
    broker_url: str
    api_urls: list[str]
    workers: dict[str, Worker] = field(default_factory=dict)

    # -- the REST API and the database -------------------------------------------------------

    def api(self, method: str, path: str, server: int = 0, **kwargs: Any) -> requests.Response:
        """A request to api-server ``server`` (0 or 1), with the admin's token (valid on both)."""
        headers = {"Authorization": f"Bearer {self.airflow.token}", **kwargs.pop("headers", {})}
        return requests.request(method, f"{self.api_urls[server]}{path}", headers=headers, timeout=30, **kwargs)

    def get(self, path: str, server: int = 0, **params: Any) -> Any:
        response = self.api("GET", path, server, params=params)
        response.raise_for_status()
        return response.json()

    def query(self, sql: str, *params: Any) -> list[tuple]:
        """Rows of a query on Airflow's PostgreSQL database."""
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.postgres_port, user="postgres", dbname="airflow")
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall()
        finally:
            connection.close()

    # -- the workers -------------------------------------------------------------------------

    @cached_property
    def celery(self) -> Any:
        """A Celery app on the broker, for remote control of the workers (``.control``)."""
        from celery import Celery

        return Celery("pacifica-test-control", broker=self.broker_url)

    def consume(self, worker: str, queue: str) -> None:
        """Make a running worker consume ``queue`` too (Celery's ``add_consumer``)."""
        node = self.workers[worker].node
        replies = self.celery.control.add_consumer(queue, destination=[node], reply=True, timeout=10)
        if not any(node in reply for reply in replies or []):
            raise RuntimeError(f"worker {worker} did not answer add_consumer({queue!r}): {replies}")
        self.workers[worker].queues.append(queue)

    def kill_worker(self, name: str) -> list[int]:
        """SIGKILL a worker and every process under it (its pool, supervisors and task processes,
        which run in process groups of their own): frozen first, so none can fork away. Returns the
        pids, once none of them runs."""
        process = self.airflow.processes.pop(name)
        frozen: set[int] = set()
        for _ in range(3):  # a fork between the listing and the stop is caught by the next round
            tree = [process.pid, *(child.pid for child in _children(process.pid))]
            for pid in set(tree) - frozen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            frozen.update(tree)
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait(timeout=30)
        deadline = time.monotonic() + 30
        while (left := [pid for pid in frozen if _running(pid)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        if left:
            raise RuntimeError(f"processes of worker {name} survived SIGKILL: {left}")
        return sorted(frozen)

    def log_tail(self, lines: int = 40) -> str:
        return self.airflow.log_tail(lines)

    def stop(self) -> None:
        """Stop every Airflow process, then redis and PostgreSQL; the logs stay in ``workdir``."""
        try:
            self.airflow.stop()
        finally:
            stop_services(self.workdir)


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has exited: only its exit status waits to be collected)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def start_distributed_airflow(
    workdir: Path,
    extra_env: dict[str, str],
    worker_queues: dict[str, list[str]] | None = None,
    local_settings: str | None = None,
    ready_timeout: float = 180.0,
) -> DistributedAirflow:
    """Start everything (see the module docstring); :meth:`DistributedAirflow.stop` stops it.

    :param extra_env: environment of every Airflow process (connections, ``[pacifica]`` options).
    :param worker_queues: the queues of each worker, by worker name (default: two workers,
        ``worker-a`` and ``worker-b``, on the default queue).
    :param local_settings: the text of the deployment's ``airflow_local_settings.py`` (cluster
        policies, e.g. a ``task_policy`` routing some tasks to a queue), in ``$AIRFLOW_HOME/config``.
    """
    services = _services()
    run = workdir / "run"
    for sub in ("pids", "logs"):
        (run / sub).mkdir(parents=True, exist_ok=True)
    redis_port, postgres_port = free_port(), free_port()
    try:
        services.spawn(
            run,
            "redis",
            [services.redis_binary(run), "--bind", "127.0.0.1", "--port", str(redis_port), "--save", ""],
        )
        services.wait_for("redis", lambda: services.redis_ping(redis_port), 60, run, "redis")
        services.start_postgres(run, services.postgres_bin(), postgres_port, 60, database="airflow")
    except BaseException:
        stop_services(workdir)
        raise
    database = f"postgres@127.0.0.1:{postgres_port}/airflow"
    broker = f"redis://127.0.0.1:{redis_port}/0"
    home = workdir / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{database}",
        "AIRFLOW__CELERY__BROKER_URL": broker,
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://{database}",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
        # The processes of one deployment share their secrets (several api-servers validate each
        # other's tokens; every process reads the same encrypted connections).
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        # A killed worker's task: failed after 20 s without heartbeat (checked every 3 s), then retried.
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "3",
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "2",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        **extra_env,
    }
    if local_settings:
        (home / "config").mkdir(exist_ok=True)
        (home / "config" / "airflow_local_settings.py").write_text(local_settings)
    try:
        stack = start_airflow(home, env, ready_timeout)
    except BaseException:
        stop_services(workdir)
        raise
    second_port = free_port()
    cluster = DistributedAirflow(stack, workdir, postgres_port, broker, [stack.url, f"http://127.0.0.1:{second_port}"])
    try:
        stack.add_component("api-server-2", ["api-server"], {"AIRFLOW__API__PORT": str(second_port)})
        stack.launch("api-server-2")
        for name, queues in (worker_queues or {"worker-a": [DEFAULT_QUEUE], "worker-b": [DEFAULT_QUEUE]}).items():
            worker = Worker(name, workdir / name, list(queues))
            (worker.home / "tmp").mkdir(parents=True, exist_ok=True)
            stack.add_component(
                name,
                [
                    *WORKER_COMMAND,
                    "--celery-hostname",
                    worker.node,
                    "--queues",
                    ",".join(queues),
                    "--pid",
                    worker.pid_file,
                ],
                {
                    "AIRFLOW_HOME": str(worker.home),
                    "TMPDIR": str(worker.home / "tmp"),
                    "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.worker_hostname",
                    WORKER_NAME_VARIABLE: name,
                },
            )
            stack.launch(name)
            cluster.workers[name] = worker
        _wait_for_the_rest(cluster, ready_timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_for_the_rest(cluster: DistributedAirflow, timeout: float) -> None:
    """The second api-server answering, and every worker answering Celery's ping."""
    deadline = time.monotonic() + timeout
    pending = {"api-server-2", *cluster.workers}
    last = ""
    while pending and time.monotonic() < deadline:
        wait_until_healthy(cluster.airflow, max(1.0, deadline - time.monotonic()))  # nothing exited
        try:
            if "api-server-2" in pending and cluster.api("GET", "/api/v2/monitor/health", 1).status_code == 200:
                pending.discard("api-server-2")
            nodes = {cluster.workers[name].node: name for name in pending & set(cluster.workers)}
            if nodes:
                for reply in cluster.celery.control.ping(destination=list(nodes), timeout=1.0) or []:
                    for node in reply:
                        pending.discard(nodes.get(node, ""))
        except (requests.RequestException, OSError) as err:
            last = str(err)
        if pending:
            time.sleep(0.5)
    if pending:
        raise RuntimeError(
            f"{', '.join(sorted(pending))} not ready after {timeout:.0f}s ({last}):\n{cluster.log_tail()}"
        )


def stop_services(workdir: Path) -> None:
    """Stop the redis and PostgreSQL that :func:`start_distributed_airflow` started (by recorded pid)."""
    _services().stop_all(workdir)
