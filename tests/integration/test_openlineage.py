"""OpenLineage from a real `airflow dags test` run of the example DAG against the real Cartd, with
the openlineage provider installed and its file transport: the download's events carry the
Pacifica transaction read, the destination written (one dataset, with file count and bytes) and
the checksums."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from tests.conftest import REPO
from tests.integration.test_download_dag import TEXT_FILES, ingest_event

DAG_ID = "pacifica_cloudevent_download"


def test_a_real_run_emits_lineage_from_the_transaction_to_the_destination_with_checksums(cartd_stack, tmp_path):
    event = ingest_event(cartd_stack, TEXT_FILES)
    cartd = urlsplit(cartd_stack.cartd_url)
    lineage = tmp_path / "lineage.jsonl"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "home"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW_CONN_PACIFICA_CARTD_DEFAULT": json.dumps(
            {"conn_type": "pacifica_cartd", "host": cartd.hostname, "port": cartd.port}
        ),
        "PACIFICA_DOWNLOAD_ROOT": str(tmp_path / "downloads"),
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps({"type": "file", "log_file_path": str(lineage), "append": True}),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "pacifica-tests",
    }
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    run = subprocess.run(
        [airflow, "dags", "test", DAG_ID, "-c", json.dumps({"cloudevent": event})],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    events = [json.loads(line) for line in lineage.read_text().splitlines() if line.strip()]
    completes = [
        e for e in events if e["eventType"] == "COMPLETE" and e["job"]["name"].startswith(f"{DAG_ID}.download")
    ]
    assert completes, f"no COMPLETE event for the download among {[(e['eventType'], e['job']['name']) for e in events]}"
    complete = completes[-1]

    (source,) = complete["inputs"]
    assert source["namespace"] == f"pacifica://{cartd.netloc}"
    assert source["name"] == "transactions/4242"  # the transaction id in the event

    (destination,) = complete["outputs"]  # one dataset for the download, not one per file
    assert destination["namespace"].startswith("file://")
    assert destination["name"].startswith(str(tmp_path / "downloads"))
    statistics = destination["outputFacets"]["outputStatistics"]
    assert statistics["fileCount"] == len(TEXT_FILES)
    assert statistics["size"] == sum(map(len, TEXT_FILES.values()))
    checksums = {f["path"]: f for f in destination["facets"]["pacifica_checksums"]["files"]}
    assert {path: f["hashsum"] for path, f in checksums.items()} == {
        path: hashlib.sha1(data).hexdigest() for path, data in TEXT_FILES.items()
    }
    assert destination["facets"]["pacifica_checksums"]["omitted"] == 0
    assert destination["facets"]["pacifica_checksums"]["_schemaURL"].endswith("checksums.json")
