"""The package as users get it: built, checked, installed into a clean venv, found by Airflow."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from airflow_provider_pacifica import __version__

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.package


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(REPO)],
        check=True,
        capture_output=True,
        text=True,
    )
    return out


def test_the_sdist_and_wheel_pass_twine_check(dist):
    result = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir())], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_wheel_holds_the_package_only_typed_and_versioned(dist):
    (wheel,) = dist.glob("*.whl")
    assert wheel.name.startswith(f"airflow_provider_pacifica-{__version__}-")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(f"airflow_provider_pacifica-{__version__}.dist-info/METADATA").decode()
    assert {name.split("/")[0] for name in names} == {
        "airflow_provider_pacifica",
        f"airflow_provider_pacifica-{__version__}.dist-info",
    }
    assert "airflow_provider_pacifica/py.typed" in names
    for url in ("Source", "Issues", "Changelog"):
        assert f"Project-URL: {url}, " in metadata
    assert "Requires-Dist: apache-airflow-providers-http" not in metadata


def test_the_sdist_holds_the_tests_and_the_example_dags(dist):
    (sdist,) = dist.glob("*.tar.gz")
    top = f"airflow_provider_pacifica-{__version__}"
    with tarfile.open(sdist) as archive:
        names = set(archive.getnames())
    for path in ("tests/unit/test_hook.py", "dags/pacifica_cloudevent_download.py", "CHANGELOG.md", "README.md"):
        assert f"{top}/{path}" in names
    assert not any("__pycache__" in name for name in names)


def test_the_wheel_installs_into_a_clean_venv_and_airflow_lists_the_provider(dist, tmp_path):
    (wheel,) = dist.glob("*.whl")
    venv = tmp_path / "venv"
    uv = REPO / ".venv" / "bin" / "uv"
    subprocess.run([str(uv), "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    subprocess.run(
        [
            str(uv),
            "pip",
            "install",
            "-q",
            "--python",
            str(venv / "bin" / "python"),
            "-c",
            str(REPO / "constraints.txt"),
            str(wheel),
        ],
        check=True,
    )
    env = {"AIRFLOW_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [str(venv / "bin" / "airflow"), "providers", "list", "-o", "plain"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "airflow-provider-pacifica" in result.stdout
    assert __version__ in result.stdout
