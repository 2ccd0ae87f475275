"""The example DAGs end to end with dag.test() against the real Cartd stack."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from airflow_provider_pacifica.destinations import safe_name
from tests.conftest import REPO

TEXT_FILES = {
    "raw/run-1/readme.txt": b"Pacifica test data\nline two\n",
    "raw/run-1/é/mesure ü.csv": b"t,v\n0,1.5\n1,2.5\n",
    "calib/constants.bin": bytes(range(256)) * 400,
}


@pytest.fixture
def cartd_connection(cartd_stack, set_connection):
    url = urlsplit(cartd_stack.cartd_url)
    set_connection("pacifica_cartd_default", {"conn_type": "pacifica_cartd", "host": url.hostname, "port": url.port})


def ingest_event(cartd_stack, contents: dict[str, bytes], wrong_hash_for: str | None = None) -> dict:
    """Load files into the archive and describe them as Pacifica Metadata does (CloudEvents 0.1)."""
    records = []
    for path, data in contents.items():
        file_id = f"dag-{uuid.uuid4().hex[:12]}"
        cartd_stack.put(file_id, data)
        subdir, _, name = path.rpartition("/")
        digest = hashlib.sha1(data).hexdigest()
        records.append(
            {
                "destinationTable": "Files",
                "_id": file_id,
                "name": name,
                "subdir": subdir,
                "size": len(data),
                "mimetype": "application/octet-stream",
                "hashtype": "sha1",
                "hashsum": "0" * 40 if path == wrong_hash_for else digest,
                "ctime": "2026-11-24T00:00:00",
                "mtime": "2026-11-24T00:00:00",
            }
        )
    return {
        "cloudEventsVersion": "0.1",
        "eventType": "org.pacifica.metadata.ingest",
        "eventID": f"metadata.ingest.{uuid.uuid4().hex[:8]}",
        "eventTime": "2026-11-24T00:00:00",
        "source": "/pacifica/metadata/ingest",
        "contentType": "application/json",
        "extensions": {},
        "data": [{"destinationTable": "Transactions._id", "value": 4242}, *records],
    }


def load_dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag.dags[dag_id]


def task_states(dag_run) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance).filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id).all()
        return {ti.task_id: str(ti.state) for ti in rows}


def test_cloudevent_dag_downloads_verified_files_and_summarises_them(
    cartd_stack, cartd_connection, airflow_db, tmp_path, monkeypatch, capfd, caplog
):
    monkeypatch.setenv("PACIFICA_DOWNLOAD_ROOT", str(tmp_path))
    event = ingest_event(cartd_stack, TEXT_FILES)
    dag_run = load_dag("pacifica_cloudevent_download").test(run_conf={"cloudevent": event})
    assert task_states(dag_run) == {"pick_cloudevents": "success", "download": "success", "summarize": "success"}
    assert str(dag_run.state) == "success"

    destination = tmp_path / safe_name(dag_run.run_id) / event["eventID"]
    for path, data in TEXT_FILES.items():
        assert (destination / path).read_bytes() == data
    assert sorted(str(p.relative_to(destination)) for p in destination.rglob("*") if p.is_file()) == sorted(TEXT_FILES)
    output = capfd.readouterr().out
    assert "Total: 3 files" in output
    # Cartd staged these few files within the operator's defer_after (10 s): downloaded without
    # deferral. The deferred wait on a real triggerer: tests/integration/test_airflow_e2e.py.
    assert "[DAG TEST] running trigger in line" not in caplog.text


def test_a_wrong_hash_in_the_event_fails_the_task_at_once_with_cartds_message(
    cartd_stack, cartd_connection, airflow_db, tmp_path, monkeypatch, capfd
):
    monkeypatch.setenv("PACIFICA_DOWNLOAD_ROOT", str(tmp_path))
    event = ingest_event(cartd_stack, TEXT_FILES, wrong_hash_for="raw/run-1/readme.txt")
    dag_run = load_dag("pacifica_cloudevent_download").test(run_conf={"cloudevent": event})
    states = task_states(dag_run)
    assert states["download"] == "failed"
    assert states["summarize"] == "upstream_failed"
    assert list(tmp_path.iterdir()) == []  # nothing published, no staging left
    output = capfd.readouterr().out
    assert "File hash does not match provided hash" in output
    # deferred, the operator does not re-stage files one by one from a worker to name the culprit
    assert "none was singled out" in output


def test_cart_sensor_dag_waits_deferred_and_downloads(cartd_stack, cartd_connection, airflow_db, tmp_path, monkeypatch):
    monkeypatch.setenv("PACIFICA_DOWNLOAD_ROOT", str(tmp_path))
    event = ingest_event(cartd_stack, TEXT_FILES)
    dag_run = load_dag("pacifica_cart_sensor").test(run_conf={"cloudevent": event})
    assert task_states(dag_run) == {"create_cart": "success", "wait_for_cart": "success", "download_cart": "success"}
    for path, data in TEXT_FILES.items():
        assert (Path(tmp_path) / safe_name(dag_run.run_id) / path).read_bytes() == data


def test_parallel_dag_downloads_one_event_as_several_verified_carts(
    cartd_stack, cartd_connection, airflow_db, tmp_path, monkeypatch, capfd
):
    monkeypatch.setenv("PACIFICA_DOWNLOAD_ROOT", str(tmp_path))
    contents = {f"many/part-{i}.bin": bytes([i]) * (10_000 + i) for i in range(6)} | TEXT_FILES
    event = ingest_event(cartd_stack, contents)
    dag_run = load_dag("pacifica_parallel_download").test(run_conf={"cloudevent": event, "max_files": 3})
    assert str(dag_run.state) == "success"
    for path, data in contents.items():
        assert (tmp_path / safe_name(dag_run.run_id) / path).read_bytes() == data
    assert f"{len(contents)} files, {sum(map(len, contents.values()))} bytes from 3 carts" in capfd.readouterr().out
