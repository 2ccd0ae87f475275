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


# -- a real S3-compatible server (scripts/s3-stack: SeaweedFS), shared by every test that needs S3 --

S3_STACK = REPO / "scripts" / "s3-stack"


@dataclass(frozen=True)
class S3Stack:
    """The running S3 server: its endpoint, credentials and bucket, and the Airflow ``aws`` connection for it."""

    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str
    region: str
    workdir: Path

    def connection(self) -> dict:
        """An Airflow ``aws`` connection (JSON form, for ``set_connection`` or AIRFLOW_CONN_*)."""
        return {
            "conn_type": "aws",
            "login": self.access_key,
            "password": self.secret_key,
            "extra": {"endpoint_url": self.endpoint_url, "region_name": self.region},
        }

    def connection_json(self) -> str:
        return json.dumps(self.connection())

    def url(self, *parts: str) -> str:
        """``s3://<bucket>/<parts...>``."""
        return "/".join([f"s3://{self.bucket}", *(part.strip("/") for part in parts)])

    def client(self):
        """A boto3 S3 client (for checks the provider does not make: listings, multipart uploads)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` in the bucket."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def multipart_uploads(self, prefix: str = "") -> list[dict]:
        """The unfinished multipart uploads under ``prefix``."""
        return self.client().list_multipart_uploads(Bucket=self.bucket, Prefix=prefix).get("Uploads") or []


@pytest.fixture(scope="session")
def s3_stack(tmp_path_factory):
    """SeaweedFS's S3 gateway on 127.0.0.1 with one bucket (fails, never skips, if it cannot start)."""
    workdir = tmp_path_factory.mktemp("s3-stack")
    result = subprocess.run(
        [sys.executable, str(S3_STACK), "start", "--workdir", str(workdir)], capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0:
        pytest.fail(f"scripts/s3-stack start failed:\n{result.stderr[-4000:]}", pytrace=False)
    values = parse_env(result.stdout)
    try:
        yield S3Stack(
            values["S3_ENDPOINT_URL"],
            values["S3_ACCESS_KEY"],
            values["S3_SECRET_KEY"],
            values["S3_BUCKET"],
            values["S3_REGION"],
            workdir,
        )
    finally:
        subprocess.run([sys.executable, str(S3_STACK), "stop", "--workdir", str(workdir)], timeout=120, check=False)


@pytest.fixture
def s3_connection(s3_stack, set_connection):
    """The Airflow connection ``aws_s3`` (type ``aws``, ``endpoint_url`` in its extra) to the test S3 server."""
    set_connection("aws_s3", s3_stack.connection())
    return "aws_s3"
