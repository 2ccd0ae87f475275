from __future__ import annotations

import pytest

from airflow_provider_pacifica.backoff import Backoff
from airflow_provider_pacifica.destinations import destination_for, download_root, safe_name


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("manual__2026-12-02T22:00:00+00:00", "manual__2026-12-02T22_00_00_00_00"),
        ("asset_triggered__2026-12-02T22:00:00.123+00:00", "asset_triggered__2026-12-02T22_00_00.123_00_00"),
        ("metadata.ingest.1001", "metadata.ingest.1001"),
        ("../../etc", "etc"),
        (".hidden", "hidden"),
        ("", "unnamed"),
        ("é/ü", "unnamed"),
    ],
)
def test_run_and_event_ids_become_safe_directory_names(text, name):
    assert safe_name(text) == name


def test_the_download_root_comes_from_the_environment_when_the_task_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("PACIFICA_DOWNLOAD_ROOT", str(tmp_path / "root"))
    assert destination_for("manual__1:2", "evt") == str(tmp_path / "root" / "manual__1_2" / "evt")
    monkeypatch.delenv("PACIFICA_DOWNLOAD_ROOT")
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "home"))
    assert download_root() == str(tmp_path / "home" / "pacifica-downloads")


def test_backoff_grows_to_its_cap(monkeypatch):
    import random

    monkeypatch.setattr(random, "random", lambda: 0.0)
    delays = [Backoff(1.0, cap=5.0).delay(attempt) for attempt in range(5)]
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert Backoff(2.0, cap=60.0, factor=1.5).delay(1) == 3.0
    assert Backoff(1.0, cap=5.0).delay(10_000) == 5.0  # no overflow


# -- destinations the operator accepts, and the configured download root (storage.py) --------------


@pytest.mark.parametrize(
    ("destination", "message"),
    [
        ("relative/dir", "'relative/dir' is a relative path"),
        ("", "'' is a relative path"),
        ("s3://bucket/prefix", r"'s3://bucket/prefix' is a URL given as a string; pass ObjectStoragePath"),
        ("file:///tmp/x", "is a URL given as a string"),
        (42, r"42 \(int\) is neither a local path nor an ObjectStoragePath"),
    ],
)
def test_relative_paths_url_strings_and_other_types_are_refused_by_name(destination, message):
    from airflow_provider_pacifica.exceptions import InvalidInputError
    from airflow_provider_pacifica.storage import resolve_destination

    with pytest.raises(InvalidInputError, match=message):
        resolve_destination(destination)


def test_absolute_paths_and_file_urls_are_local_and_other_stores_are_stores(tmp_path):
    from pathlib import Path

    from airflow.sdk import ObjectStoragePath
    from airflow.sdk.io import attach
    from fsspec.implementations.memory import MemoryFileSystem

    from airflow_provider_pacifica.storage import StoreDestination, resolve_destination

    attach(protocol="memory", fs=MemoryFileSystem())  # any fsspec backend Airflow knows is a store
    assert resolve_destination(str(tmp_path)) == tmp_path
    assert resolve_destination(tmp_path / "x") == tmp_path / "x"
    assert resolve_destination(ObjectStoragePath(f"file://{tmp_path}/y")) == Path(f"{tmp_path}/y")
    store = resolve_destination(ObjectStoragePath("memory://bucket/prefix/"))
    assert isinstance(store, StoreDestination)
    assert store.root == "/bucket/prefix"
    assert store.url == "memory:///bucket/prefix"
    assert store.conn_id is None


def test_the_configured_download_root_is_read_when_the_task_runs(monkeypatch, tmp_path):
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_pacifica.exceptions import InvalidInputError
    from airflow_provider_pacifica.storage import download_destination

    monkeypatch.setenv("PACIFICA_DOWNLOAD_ROOT", str(tmp_path / "env-root"))
    monkeypatch.delenv("AIRFLOW__PACIFICA__DOWNLOAD_ROOT", raising=False)
    assert download_destination("manual__1:2", "evt") == str(tmp_path / "env-root" / "manual__1_2" / "evt")

    monkeypatch.setenv("AIRFLOW__PACIFICA__DOWNLOAD_ROOT", str(tmp_path / "conf-root"))
    assert download_destination("run") == str(tmp_path / "conf-root" / "run")

    monkeypatch.setenv("AIRFLOW__PACIFICA__DOWNLOAD_ROOT", "s3://bucket/downloads")
    monkeypatch.setenv("AIRFLOW__PACIFICA__DOWNLOAD_CONN_ID", "aws_s3")
    destination = download_destination("manual__1:2", "evt")
    assert isinstance(destination, ObjectStoragePath)
    assert (destination.protocol, destination.path, destination.conn_id) == (
        "s3",
        "bucket/downloads/manual__1_2/evt",
        "aws_s3",
    )

    monkeypatch.setenv("AIRFLOW__PACIFICA__DOWNLOAD_ROOT", "downloads")
    with pytest.raises(InvalidInputError, match=r"\[pacifica\] download_root 'downloads' is a relative path"):
        download_destination("run")
