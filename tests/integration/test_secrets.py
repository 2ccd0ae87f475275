"""Secrets never leak: a full run with a credentialed connection, every output scanned.

Cartd itself has no authentication, so the credentials below are sent and ignored; what matters
is that they never show up in task logs, XCom, trigger kwargs, rendered template fields, the
metadata database, or error messages.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.integration.test_download_dag import TEXT_FILES, ingest_event, load_dag, task_states

PASSWORD = "Pw-9f1c-SECRET-pw"
TOKEN = "tok-77ab-SECRET-token"
KEY_NAME = "secret-KEYPATH-4b1e.pem"


def scan_database(home: Path, secrets: list[str]) -> list[str]:
    found = []
    with sqlite3.connect(home / "airflow.db") as db:
        tables = [row[0] for row in db.execute("select name from sqlite_master where type='table'")]
        for table in tables:
            for row in db.execute(f'select * from "{table}"'):
                text = " ".join(str(value) for value in row)
                found += [f"{table}: {secret}" for secret in secrets if secret in text]
    return found


def scan_files(root: Path, secrets: list[str]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and path.suffix != ".db":
            text = path.read_text(errors="replace")
            found += [f"{path}: {secret}" for secret in secrets if secret in text]
    return found


@pytest.mark.parametrize(
    ("auth", "secrets"),
    [
        ({"login": "svc-pacifica", "password": PASSWORD}, [PASSWORD, KEY_NAME]),
        ({"extra_token": TOKEN}, [TOKEN, KEY_NAME]),
    ],
    ids=["basic-auth", "bearer-token"],
)
@pytest.mark.parametrize("outcome", ["success", "wrong-hash"])
def test_no_secret_reaches_logs_xcom_trigger_kwargs_templates_or_errors(
    cartd_stack, airflow_db, set_connection, tmp_path, monkeypatch, capfd, caplog, auth, secrets, outcome
):
    url = urlsplit(cartd_stack.cartd_url)
    tls = tmp_path / "tls"
    tls.mkdir()
    (tls / "client.pem").write_text("certificate (unused over http)")
    (tls / KEY_NAME).write_text("key (unused over http)")
    extra = {"client_cert": str(tls / "client.pem"), "client_key": str(tls / KEY_NAME), "read_timeout": 30}
    if "extra_token" in auth:
        extra["token"] = auth["extra_token"]
    connection = {"conn_type": "pacifica_cartd", "host": url.hostname, "port": url.port, "extra": extra}
    connection.update({k: v for k, v in auth.items() if k in ("login", "password")})
    set_connection("pacifica_cartd_default", connection)
    monkeypatch.setenv("PACIFICA_DOWNLOAD_ROOT", str(tmp_path / "downloads"))

    event = ingest_event(
        cartd_stack, TEXT_FILES, wrong_hash_for="calib/constants.bin" if outcome == "wrong-hash" else None
    )
    dag_run = load_dag("pacifica_cloudevent_download").test(run_conf={"cloudevent": event})
    assert task_states(dag_run)["download"] == ("success" if outcome == "success" else "failed")

    captured = capfd.readouterr()
    outputs = captured.out + captured.err + caplog.text
    if outcome == "wrong-hash":
        assert "File hash does not match provided hash" in outputs  # the error itself is there...
    home = Path(os.environ["AIRFLOW_HOME"])
    leaks = [s for s in secrets if s in outputs]  # ...but no secret
    leaks += scan_database(home, secrets)  # XCom, rendered fields, trigger rows, task history
    leaks += scan_files(home / "logs", secrets)
    leaks += scan_files(tmp_path / "downloads", secrets) if (tmp_path / "downloads").exists() else []
    assert leaks == []


def test_trigger_kwargs_carry_only_the_connection_id():
    from airflow_provider_pacifica.triggers.cartd import CartReadyTrigger

    _, kwargs = CartReadyTrigger(cart_uid="c", pacifica_conn_id="pacifica_cartd_default").serialize()
    assert set(kwargs) == {
        "cart_uid",
        "pacifica_conn_id",
        "poll_interval",
        "max_poll_interval",
        "max_consecutive_failures",
    }
    assert json.dumps(kwargs).count("SECRET") == 0
