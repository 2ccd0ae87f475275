"""The real Cartd stack for integration tests, started once per session by scripts/cartd-stack."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
import requests

if TYPE_CHECKING:
    from collections.abc import Iterator

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "scripts" / "cartd-stack"
PACIFICA_STACK = REPO / "scripts" / "pacifica-stack"


@dataclass(frozen=True)
class CartdStack:
    """URLs of the running stack, and the archive PUT that loads files into it."""

    cartd_url: str
    archive_url: str
    workdir: Path

    def put(self, file_id: str | int, data: bytes) -> None:
        response = requests.put(
            f"{self.archive_url}/{file_id}",
            data=data,
            headers={"Content-Type": "application/octet-stream"},  # a form type makes CherryPy parse the body
            timeout=60,
        )
        if response.status_code != 201:
            raise RuntimeError(f"archive PUT {file_id}: HTTP {response.status_code}: {response.text[:300]}")

    def restart(self, service: str) -> None:
        run_stack("restart", "--workdir", str(self.workdir), "--service", service)

    @contextlib.contextmanager
    def paused(self, service: str) -> Iterator[None]:
        """SIGSTOP a service's process group (e.g. ``worker``: carts stay staging, like a tape recall)
        and SIGCONT it on leaving the block."""
        record = json.loads((self.workdir / "run" / "pids" / f"{service}.json").read_text())
        os.killpg(record["pid"], signal.SIGSTOP)
        try:
            yield
        finally:
            os.killpg(record["pid"], signal.SIGCONT)


def run_stack(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, str(STACK), *args], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        pytest.fail(f"scripts/cartd-stack {args[0]} failed:\n{result.stderr[-4000:]}", pytrace=False)
    return result


def start_stack(workdir: Path, *options: str):
    result = run_stack("start", "--workdir", str(workdir), *options)
    values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return CartdStack(values["CARTD_URL"], values["ARCHIVE_URL"], workdir)


@pytest.fixture(scope="session")
def cartd_stack(tmp_path_factory):
    """The real Cartd 0.7.0 + archive interface 0.4.2 on 127.0.0.1 (fails, never skips, if it cannot start)."""
    workdir = tmp_path_factory.mktemp("cartd-stack")
    try:
        yield start_stack(workdir)
    finally:
        subprocess.run([sys.executable, str(STACK), "stop", "--workdir", str(workdir)], timeout=120, check=False)


@pytest.fixture
def hook(cartd_stack, set_connection):
    """A ``PacificaCartdHook`` on the real Cartd (connection ``pacifica_cartd_default``)."""
    from airflow_provider_pacifica.hooks.cartd import PacificaCartdHook

    url = urlsplit(cartd_stack.cartd_url)
    set_connection(
        "pacifica_cartd_default",
        {
            "conn_type": "pacifica_cartd",
            "host": url.hostname,
            "port": url.port,
            "schema": "http",
            "extra": {"read_timeout": 30},
        },
    )
    return PacificaCartdHook()


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)


# -- the whole real Pacifica (scripts/pacifica-stack), shared by every test that needs it ----------


def run_pacifica_stack(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, str(PACIFICA_STACK), *args], capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        pytest.fail(f"scripts/pacifica-stack {args[0]} failed:\n{result.stderr[-4000:]}", pytrace=False)
    return result


def parse_env(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@dataclass(frozen=True)
class PacificaStack:
    env: dict[str, str]
    workdir: Path

    @property
    def metadata_url(self) -> str:
        return self.env["PACIFICA_METADATA_URL"]

    @property
    def notifications_url(self) -> str:
        return self.env["PACIFICA_NOTIFICATIONS_URL"]

    @property
    def user_header(self) -> dict[str, str]:
        return {self.env["PACIFICA_NOTIFICATIONS_USER_HEADER"]: self.env["PACIFICA_USER"]}

    def upload(self, *sources: Path) -> int:
        return int(run_pacifica_stack("upload", "--workdir", str(self.workdir), *map(str, sources)).stdout.strip())

    def stop_service(self, name: str) -> None:
        """Stop one HTTP service (e.g. ``metadata``) by its recorded pid: an outage."""
        run_pacifica_stack("stop-service", "--workdir", str(self.workdir), "--service", name, timeout=120)

    def start_service(self, name: str) -> None:
        """Start a service :meth:`stop_service` stopped, on its port; returns once it answers."""
        run_pacifica_stack("start-service", "--workdir", str(self.workdir), "--service", name, timeout=180)


@pytest.fixture(scope="session")
def pacifica_stack(tmp_path_factory):
    """The whole real Pacifica on 127.0.0.1 (fails, never skips, if it cannot start)."""
    workdir = tmp_path_factory.mktemp("pacifica-stack")
    try:
        yield PacificaStack(parse_env(run_pacifica_stack("start", "--workdir", str(workdir)).stdout), workdir)
    finally:
        subprocess.run(
            [sys.executable, str(PACIFICA_STACK), "stop", "--workdir", str(workdir)], timeout=120, check=False
        )
