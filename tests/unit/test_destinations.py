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
