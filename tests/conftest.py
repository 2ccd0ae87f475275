"""Test settings shared by unit, integration and end-to-end tests.

Airflow reads its configuration at import time, so the environment is set here, before any test
module imports it: a throwaway AIRFLOW_HOME, no example DAGs, the project's dags/ folder.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_HOME = tempfile.mkdtemp(prefix="pacifica-airflow-home-")
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ["AIRFLOW_HOME"] = _HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
# The example DAGs import their shared steps (dags/pacifica_common.py) as Airflow's dag-processor
# and workers let them (a bundle's folder is on sys.path there); a plain DagBag does not add it.
sys.path.insert(0, str(REPO / "dags"))

import pytest  # noqa: E402

from tests.httpserver import ScriptedServer  # noqa: E402


@pytest.fixture
def http_server():
    """A small scripted HTTP server on 127.0.0.1 (see tests/httpserver.py)."""
    server = ScriptedServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def set_connection(monkeypatch):
    """Define an Airflow connection through its AIRFLOW_CONN_* variable (no DB needed)."""

    def _set(conn_id: str, value: dict | str) -> None:
        text = value if isinstance(value, str) else json.dumps(value)
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", text)

    return _set


@pytest.fixture
def cartd_conn(http_server, set_connection):
    """Connection ``pacifica_cartd_default`` pointing at the scripted server, fast retries."""

    def _make(**extra):
        extra.setdefault("retry_backoff", 0.01)
        set_connection(
            "pacifica_cartd_default",
            {
                "conn_type": "pacifica_cartd",
                "host": "127.0.0.1",
                "port": http_server.port,
                "schema": "http",
                "extra": extra,
            },
        )
        return "pacifica_cartd_default"

    return _make


def load_fixture(name: str):
    return json.loads((REPO / "tests" / "fixtures" / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def airflow_db():
    """Airflow's metadata DB (sqlite in the throwaway AIRFLOW_HOME), needed by dag.test()."""
    from airflow.utils.db import initdb

    initdb()
