"""A real Airflow on 127.0.0.1 for end-to-end tests: api-server, scheduler, dag-processor, triggerer.

Fresh AIRFLOW_HOME and sqlite DB per run (a trigger id leak on sqlite makes reused homes hang,
see airflow-live.md §4.6); the scheduler and triggerer run with --skip-serve-logs so the only
listener is the api-server on 127.0.0.1. Every process is started in its own session and stopped
by pid. :meth:`AirflowStack.add_component` adds more (a second api-server, Celery workers), each
with its own command and environment (tests/integration/distributed_airflow.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import requests

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).parent / "airflow")
COMPONENTS = {
    "api-server": ["api-server"],
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
}
# The part of /api/v2/monitor/health that reports each component, when it runs.
HEALTH_PARTS = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}

# The simple auth manager's user and the password start_airflow writes to its passwords file.
ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin-pw"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class AirflowStack:
    home: Path
    env: dict[str, str]
    url: str
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    token: str = ""
    commands: dict[str, list[str]] = field(default_factory=lambda: dict(COMPONENTS))
    component_env: dict[str, dict[str, str]] = field(default_factory=dict)  # per component, over ``env``

    def add_component(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        """Declare another component (``airflow <command>``, ``env`` over the stack's); :meth:`launch` starts it."""
        self.commands[name] = command
        self.component_env[name] = env or {}

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return requests.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kwargs)

    def get(self, path: str, **params) -> dict:
        response = self.api("GET", path, params=params)
        response.raise_for_status()
        return response.json()

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for name in self.commands:
            if not (self.home / f"{name}.log").exists():  # a component this stack did not start
                continue
            text = (self.home / f"{name}.log").read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {name}\n" + "\n".join(text))
        return "\n".join(out)

    def launch(self, name: str) -> None:
        """Start one component (appending to its log)."""
        with (self.home / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                [AIRFLOW, *self.commands[name]],
                env={**self.env, **self.component_env.get(name, {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop_component(self, name: str) -> None:
        """Stop one component (e.g. the api-server, for an outage); :meth:`restart_component` brings it back."""
        self._terminate([self.processes.pop(name)])

    def restart_component(self, name: str, ready_timeout: float = 120.0) -> None:
        self.launch(name)
        if name == "api-server":
            self.token = ""  # a new api-server may sign with a new key
        wait_until_healthy(self, ready_timeout)

    def stop(self) -> None:
        self._terminate(list(self.processes.values()))

    @staticmethod
    def _terminate(processes: list[subprocess.Popen]) -> None:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):  # its workers and children: its own process group
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def start_airflow(
    home: Path,
    extra_env: dict[str, str],
    ready_timeout: float = 120.0,
    components: tuple[str, ...] = tuple(COMPONENTS),
) -> AirflowStack:
    """Start ``components`` (default: all four) and wait until each of them is healthy."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (home / "passwords.json").write_text(json.dumps({"admin": "admin-pw"}))
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
        **extra_env,
    }
    env.pop("AIRFLOW__CORE__UNIT_TEST_MODE", None)
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    stack = AirflowStack(home=home, env=env, url=f"http://127.0.0.1:{port}")
    try:
        for name in components:
            stack.launch(name)
        wait_until_healthy(stack, ready_timeout)
    except BaseException:
        stack.stop()
        raise
    return stack


def wait_until_healthy(stack: AirflowStack, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for name, process in stack.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"airflow {name} exited ({process.returncode}):\n{stack.log_tail()}")
        try:
            if not stack.token:
                response = requests.post(
                    f"{stack.url}/auth/token", json={"username": "admin", "password": "admin-pw"}, timeout=5
                )
                if response.status_code == 201:
                    stack.token = response.json()["access_token"]
            if stack.token:
                health = stack.get("/api/v2/monitor/health")
                last = json.dumps(health)
                parts = ("metadatabase", *(HEALTH_PARTS[n] for n in stack.processes if n in HEALTH_PARTS))
                if all((health.get(part) or {}).get("status") == "healthy" for part in parts):
                    return
        except requests.RequestException as err:
            last = str(err)
        time.sleep(0.5)
    raise RuntimeError(f"Airflow was not healthy after {timeout:.0f}s ({last}):\n{stack.log_tail()}")


def wait(check, timeout: float, what: str, poll: float = 0.5):
    """``check()``'s first truthy result, polled every ``poll`` s; ``RuntimeError`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(poll)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def pacifica_env(stack, home: Path, webhook_login: str, webhook_password: str) -> dict[str, str]:
    """The environment of an Airflow on the whole real Pacifica ``stack`` (tests/integration/conftest.py's
    ``pacifica_stack``): its metadata and Cartd connections, the webhook's credentials, downloads
    under ``home/downloads``."""
    cartd = urlsplit(stack.env["CARTD_URL"])
    metadata = urlsplit(stack.metadata_url)
    return {
        "AIRFLOW_CONN_PACIFICA_METADATA_DEFAULT": json.dumps(
            {"conn_type": "pacifica_metadata", "host": metadata.hostname, "port": metadata.port}
        ),
        "AIRFLOW_CONN_PACIFICA_CARTD_DEFAULT": json.dumps(
            {"conn_type": "pacifica_cartd", "host": cartd.hostname, "port": cartd.port}
        ),
        "AIRFLOW_CONN_PACIFICA_WEBHOOK_DEFAULT": json.dumps(
            {"conn_type": "generic", "login": webhook_login, "password": webhook_password}
        ),
        "PACIFICA_DOWNLOAD_ROOT": str(home / "downloads"),
    }
