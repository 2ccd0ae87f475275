"""The provider as Airflow discovers it: entry point, provider info, example DAGs."""

from __future__ import annotations

import importlib
import json
from importlib.metadata import distribution, entry_points
from pathlib import Path

import jsonschema
import pytest

from airflow_provider_pacifica.get_provider_info import get_provider_info

REPO = Path(__file__).resolve().parents[2]


def test_provider_info_validates_against_airflows_runtime_schema():
    import airflow

    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_package_name_matches_the_installed_distribution():
    assert get_provider_info()["package-name"] == distribution("airflow-provider-pacifica").metadata["Name"]


def test_the_entry_point_returns_the_provider_info():
    (entry,) = [
        e for e in entry_points(group="apache_airflow_provider") if e.value.startswith("airflow_provider_pacifica")
    ]
    assert entry.load()() == get_provider_info()


def test_every_listed_module_and_class_imports():
    info = get_provider_info()
    for kind in ("hooks", "triggers", "sensors", "operators"):
        for group in info[kind]:
            for module in group["python-modules"]:
                importlib.import_module(module)
    declared = {}
    for conn in info["connection-types"]:
        module, name = conn["hook-class-name"].rsplit(".", 1)
        hook = getattr(importlib.import_module(module), name)
        assert hook.conn_type == conn["connection-type"]
        assert hook.hook_name == conn["hook-name"]
        declared[hook.conn_type] = (hook.hook_name, hook.conn_name_attr, hook.default_conn_name)
    assert declared == {
        "pacifica_cartd": ("Pacifica Cartd", "pacifica_conn_id", "pacifica_cartd_default"),
        "pacifica_metadata": ("Pacifica Metadata", "pacifica_metadata_conn_id", "pacifica_metadata_default"),
    }


def test_declared_connection_fields_are_exactly_the_extras_the_hook_accepts():
    from airflow_provider_pacifica.connection import EXTRA_FIELDS

    for conn in get_provider_info()["connection-types"]:  # Cartd and metadata take the same extras
        assert set(conn["conn-fields"]) == set(EXTRA_FIELDS)
        assert conn["conn-fields"]["token"]["schema"]["format"] == "password"


def test_airflow_lists_the_connection_type_and_its_fields():
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    manager.initialize_providers_hooks()
    assert "airflow-provider-pacifica" in manager.providers
    assert "extra__pacifica_cartd__token" in manager.connection_form_widgets
    assert manager.connection_form_widgets["extra__pacifica_cartd__token"].is_sensitive
    assert manager.field_behaviours["pacifica_cartd"]["relabeling"]["host"] == "Cartd host"
    assert "extra__pacifica_metadata__token" in manager.connection_form_widgets
    assert manager.field_behaviours["pacifica_metadata"]["relabeling"]["host"] == "Metadata host"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_example_dags_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert {
        "pacifica_cloudevent_download",
        "pacifica_cart_sensor",
        "pacifica_parallel_download",
        "pacifica_ingest_watcher",
    } <= set(dagbag.dag_ids)


def test_the_watcher_dag_is_opt_in_and_scheduled_on_an_asset_the_ingest_trigger_watches(dagbag):
    from airflow_provider_pacifica.triggers.ingest import PacificaIngestEventTrigger

    dag = dagbag.dags["pacifica_ingest_watcher"]
    assert dag.is_paused_upon_creation is True  # a paused DAG's watcher does not poll
    (asset,) = dag.timetable.asset_condition.objects
    assert asset.uri == "pacifica://metadata/ingest-pulled"
    (watcher,) = asset.watchers
    assert isinstance(watcher.trigger, PacificaIngestEventTrigger)
    assert watcher.trigger.pacifica_metadata_conn_id == "pacifica_metadata_default"


def test_example_dags_are_documented_and_serialize(dagbag):
    from airflow.serialization.serialized_objects import DagSerialization

    for dag_id in ("pacifica_cloudevent_download", "pacifica_cart_sensor", "pacifica_parallel_download"):
        dag = dagbag.dags[dag_id]
        assert dag.doc_md
        assert len(dag.doc_md) > 100
        DagSerialization.to_dict(dag)


def test_the_cloudevent_dag_runs_once_per_partitioned_ingest_event_and_waits_deferred(dagbag):
    from airflow.sdk import PartitionedAssetTimetable

    dag = dagbag.dags["pacifica_cloudevent_download"]
    assert isinstance(dag.timetable, PartitionedAssetTimetable)  # a run per event (the webhook's partition key)
    assert dag.timetable.asset_condition.uri == "pacifica://metadata/ingest"
    assert dag.get_task("download").partial_kwargs["deferrable"] is True
    assert dagbag.dags["pacifica_cart_sensor"].get_task("wait_for_cart").deferrable is True


def test_airflow_cli_lists_the_hook(tmp_path):
    import os
    import subprocess
    import sys

    airflow = Path(sys.executable).parent / "airflow"
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path)}
    result = subprocess.run(
        [str(airflow), "providers", "hooks", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    (listing,) = [line for line in result.stdout.splitlines() if line.startswith("[{")]  # logs may precede it
    hooks = {row["connection_type"]: row for row in json.loads(listing)}
    assert hooks["pacifica_cartd"]["class"] == "airflow_provider_pacifica.hooks.cartd.PacificaCartdHook"
    assert hooks["pacifica_cartd"]["conn_id_attribute_name"] == "pacifica_conn_id"


def test_every_queued_ingest_event_gets_its_own_download_directory(dagbag):
    import datetime as dt
    from types import SimpleNamespace

    from airflow_provider_pacifica.destinations import download_root
    from tests.unit.test_intake import FakeInletEvents

    pick = dagbag.dags["pacifica_cloudevent_download"].get_task("pick_cloudevents").python_callable
    ingest, root = pick.__globals__["PACIFICA_INGEST"], download_root()

    def event(event_id, files="f"):
        return {"cloudEventsVersion": "0.1", "eventID": event_id, "data": files}

    queued = [event("ingest.1"), event("ingest.2"), event("ingest.1"), event("a/b"), event("a_b"), event("../..")]
    now = dt.datetime.now(dt.UTC)
    downloads = pick(
        triggering_asset_events={
            ingest: [
                SimpleNamespace(extra={"cloudevent": e}, timestamp=now + dt.timedelta(seconds=i))
                for i, e in enumerate(queued)
            ]
        },
        inlet_events=FakeInletEvents({}),  # no event of the watcher: each id is the webhook's to download
        run_id="r",
    )
    assert [d["destination"].removeprefix(f"{root}/r/") for d in downloads] == [
        "ingest.1",  # once: the same event delivered twice
        "ingest.2",
        "a_b",
        "a_b-3",  # another event whose id makes the same name is kept
        "event-4",  # nothing usable in the id
    ]
    assert [d["cloudevent"]["eventID"] for d in downloads] == ["ingest.1", "ingest.2", "a/b", "a_b", "../.."]


def test_a_manual_run_downloads_the_event_in_its_conf_and_nothing_is_an_error(dagbag):
    pick = dagbag.dags["pacifica_cloudevent_download"].get_task("pick_cloudevents").python_callable
    conf_run = type("Run", (), {"conf": {"cloudevent": '{"eventID": "e1", "data": []}'}})()
    assert [d["cloudevent"]["eventID"] for d in pick(dag_run=conf_run, run_id="r")] == ["e1"]
    with pytest.raises(ValueError, match="no CloudEvent"):
        pick(triggering_asset_events={}, dag_run=None, run_id="r")


def test_both_intake_dags_read_both_intakes_and_give_the_watched_asset_one_watcher(dagbag):
    """Every DAG file declaring the pulled asset declares its watcher alike (no flapping trigger)."""
    push = dagbag.dags["pacifica_cloudevent_download"].get_task("pick_cloudevents")
    pull = dagbag.dags["pacifica_ingest_watcher"].get_task("pick_cloudevents")
    names = {"pacifica_ingest", "pacifica_ingest_pulled"}
    assert {a.name for a in push.inlets} == {a.name for a in pull.inlets} == names
    (pushed_view,) = [a for a in push.inlets if a.name == "pacifica_ingest_pulled"]
    (watched,) = dagbag.dags["pacifica_ingest_watcher"].timetable.asset_condition.objects
    assert [w.trigger.serialize() for w in pushed_view.watchers] == [w.trigger.serialize() for w in watched.watchers]


def test_the_watcher_dag_requeues_stranded_events_only_when_it_finds_some(dagbag):
    dag = dagbag.dags["pacifica_ingest_watcher"]
    requeue = dag.get_task("requeue_stranded")
    assert [a.name for a in requeue.outlets] == ["pacifica_ingest_pulled"]  # queues the asset again
    assert requeue.upstream_task_ids == {"find_stranded"}  # a short circuit: skipped, it records nothing
    assert not dag.get_task("pick_cloudevents").outlets
