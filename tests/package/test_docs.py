"""The documentation builds with Sphinx, warning-free, without the network, and covers the package."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import airflow_provider_pacifica
from airflow_provider_pacifica.get_provider_info import get_provider_info

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.package

PAGES = (
    "index",
    "connection",
    "hooks",
    "operators",
    "sensors",
    "triggers",
    "webhook",
    "watcher",
    "deployment",
    "api/index",
    "api/airflow",
    "api/core",
)


@pytest.fixture(scope="module")
def html(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs")
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PACIFICA_DOCS_INTERSPHINX", "NO_PROXY", "no_proxy")
    }
    # Any download would go to a closed port on loopback, fail, warn, and so fail the build.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env[name] = "http://127.0.0.1:9"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-b",
            "html",
            "-d",
            str(out / ".doctrees"),
            str(REPO / "docs"),
            str(out / "html"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    return out / "html"


def test_every_page_is_built(html):
    for page in PAGES:
        assert (html / f"{page}.html").is_file(), page


def test_the_api_reference_documents_every_module_and_the_operator(html):
    api = (html / "api" / "airflow.html").read_text() + (html / "api" / "core.html").read_text()
    modules = [airflow_provider_pacifica.__name__] + [
        info.name
        for info in pkgutil.walk_packages(airflow_provider_pacifica.__path__, f"{airflow_provider_pacifica.__name__}.")
        if not info.ispkg and not info.name.rsplit(".", 1)[-1].startswith("_")
    ]
    missing = [name for name in modules if f'id="module-{name}"' not in api]
    assert not missing, f"add these modules to docs/api/airflow.rst or docs/api/core.rst: {missing}"
    for name in (
        "operators.download.PacificaDownloadOperator",
        "hooks.cartd.PacificaCartdHook.download_cart",
        "sensors.cartd.CartSensor",
        "triggers.cartd.CartReadyTrigger",
        "plugins.webhook.PacificaWebhookPlugin",
    ):
        assert f'id="airflow_provider_pacifica.{name}"' in api, name
    # the docstring's :param: fields are rendered as a field list
    assert "max_consecutive_failures" in api
    assert "field-list" in api


def test_the_connection_and_webhook_pages_list_what_provider_info_declares(html):
    info = get_provider_info()
    conn_type = next(c for c in info["connection-types"] if c["connection-type"] == "pacifica_cartd")
    connection = (html / "connection.html").read_text()
    for field in conn_type["conn-fields"]:
        assert f'<span class="pre">{field}</span>' in connection, field
    assert "AIRFLOW_CONN_PACIFICA_CARTD_DEFAULT" in connection
    assert "pacifica-cartd://" in connection
    webhook = (html / "webhook.html").read_text()
    for option in info["config"]["pacifica"]["options"]:
        assert f'<span class="pre">{option}</span>' in webhook, option


def test_the_watcher_page_says_what_exists_with_no_still_to_come(html):
    watcher = (html / "watcher.html").read_text()
    assert "PacificaIngestEventTrigger" in watcher
    assert "pacifica_metadata" in watcher
    for section in ("The example DAG", "Catch-up", "Cost"):
        assert f'{section}<a class="headerlink"' in watcher, section
    assert "apache/airflow#56050" in watcher  # stranded events, requeued
    assert "earliest recorded event" in watcher  # webhook + watcher: one download
    assert "still to come" not in watcher.lower()
    assert "in progress" not in watcher.lower()
    assert "airflow_provider_pacifica.intake" in (html / "api" / "core.html").read_text()
