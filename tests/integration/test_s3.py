"""Downloads into a real S3 server (SeaweedFS, scripts/s3-stack) from the real Cartd stack."""

from __future__ import annotations

import hashlib
import io
import json
import types
import uuid

import pytest

from airflow_provider_pacifica.cloudevents import CartFile
from airflow_provider_pacifica.exceptions import StreamError, UnsafeMemberError, VerificationError
from airflow_provider_pacifica.objectstore import PART_SIZE, download_to_store, staging_path
from tests.integration.test_hook_cartd import load
from tests.tars import build_tar, cart_files, hostile_tars

BIG = bytes(range(256)) * (3 * PART_SIZE // 256 + 1000)  # a little over three 8 MiB parts
CONTENTS = {
    "raw/run-1/readme.txt": b"Pacifica test data\n",
    "raw/run-1/é/mesure ü.csv": b"t,v\n0,1.5\n",
    "deep/a/b/c/d/empty.dat": b"",
    "big/volume.bin": BIG,
}


def store_path(url: str, conn_id: str = "aws_s3"):
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(url, conn_id=conn_id)


@pytest.fixture
def prefix():
    return f"it-{uuid.uuid4().hex[:10]}"


def test_a_cart_lands_verified_in_s3_nested_non_ascii_and_multipart(cartd_stack, hook, s3_stack, s3_connection, prefix):
    files = load(cartd_stack, CONTENTS)
    cart_uid = hook.create_cart(files)
    hook.wait_for_cart(cart_uid, timeout=120, poll_interval=0.2)
    destination = store_path(s3_stack.url(prefix, "event-1"))

    extracted = hook.download_cart(cart_uid, files, destination)

    assert [f.path for f in extracted] == list(CONTENTS)
    client = s3_stack.client()
    for path, data in CONTENTS.items():
        body = client.get_object(Bucket=s3_stack.bucket, Key=f"{prefix}/event-1/{path}")["Body"].read()
        assert hashlib.sha1(body).digest() == hashlib.sha1(data).digest(), path
    manifest_key = f"{prefix}/event-1/.pacifica-manifest-{cart_uid}.json"
    assert s3_stack.keys(prefix) == sorted([manifest_key, *(f"{prefix}/event-1/{p}" for p in CONTENTS)])
    manifest = json.loads(client.get_object(Bucket=s3_stack.bucket, Key=manifest_key)["Body"].read())
    assert manifest["conn_id"] == "aws_s3"
    assert manifest["destination"] == s3_stack.url(prefix, "event-1")
    assert {entry["url"] for entry in manifest["files"]} == {s3_stack.url(prefix, "event-1", p) for p in CONTENTS}
    assert s3_stack.multipart_uploads(prefix) == []
    # and a reader opens them the documented way
    with store_path(manifest["files"][1]["url"]).open("rb") as handle:
        assert handle.read() == CONTENTS["raw/run-1/é/mesure ü.csv"]
    hook.delete_cart(cart_uid)


TRUNCATED_BIG = build_tar({"big/volume.bin": BIG})[: 2 * PART_SIZE + 4096]
FAILURES = {
    "path traversal": (hostile_tars()["path traversal"], cart_files(), UnsafeMemberError),
    "symlink": (hostile_tars()["symlink"], cart_files(), UnsafeMemberError),
    "unrequested member": (hostile_tars()["unexpected member"], cart_files(), UnsafeMemberError),
    "hash mismatch": (hostile_tars()["wrong content"], cart_files(), VerificationError),
    "truncated inside a multipart file": (TRUNCATED_BIG, cart_files({"big/volume.bin": BIG}), StreamError),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_a_failed_download_leaves_no_object_and_no_multipart_upload(s3_stack, s3_connection, prefix, case):
    tar, files, error = FAILURES[case]
    destination = store_path(s3_stack.url(prefix))
    with pytest.raises(error):
        download_to_store(io.BytesIO(tar), files, destination.fs, destination.path, "data", cart_key="cart-1")
    assert s3_stack.keys(prefix) == []
    assert s3_stack.multipart_uploads(prefix) == []


def test_a_killed_attempts_staging_and_multipart_upload_are_removed_by_the_next(s3_stack, s3_connection, prefix):
    staging_key = staging_path(prefix, "cart-1")
    client = s3_stack.client()
    client.put_object(Bucket=s3_stack.bucket, Key=f"{staging_key}/a/b.txt", Body=b"half")
    client.create_multipart_upload(Bucket=s3_stack.bucket, Key=f"{staging_key}/bin/blob.bin")
    destination = store_path(s3_stack.url(prefix))

    download_to_store(
        io.BytesIO(build_tar()), cart_files(), destination.fs, destination.path, "data", cart_key="cart-1"
    )

    assert not [key for key in s3_stack.keys(prefix) if ".pacifica-staging-" in key]
    assert s3_stack.multipart_uploads(prefix) == []


def test_a_bare_bucket_destination_aborts_a_killed_attempts_uploads_and_finds_its_files_again(
    s3_stack, s3_connection, prefix
):
    from airflow_provider_pacifica.objectstore import verify_published_objects

    client, bucket = s3_stack.client(), f"bare-{prefix}"
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="someone/else.txt", Body=b"not ours")
    client.create_multipart_upload(Bucket=bucket, Key="a/b.txt")  # a killed attempt's, to a key of the cart
    other = client.create_multipart_upload(Bucket=bucket, Key="someone/else.bin")["UploadId"]
    destination = store_path(f"s3://{bucket}")

    download_to_store(io.BytesIO(build_tar()), cart_files(), destination.fs, destination.path, "data", cart_key="c")

    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads") or []
    assert [upload["UploadId"] for upload in uploads] == [other]
    assert client.get_object(Bucket=bucket, Key="a/b.txt")["Body"].read() == b"hello pacifica\n"
    present = verify_published_objects(destination.fs, destination.path, cart_files(), "c")
    assert [f.path for f in present] == [f.path for f in cart_files()]
    client.delete_object(Bucket=bucket, Key="a/b.txt")
    assert verify_published_objects(destination.fs, destination.path, cart_files(), "c") is None


def operator_for(files: list[CartFile], destination, **kwargs):
    from airflow_provider_pacifica.operators.download import PacificaDownloadOperator

    return PacificaDownloadOperator(
        task_id="download",
        files=[f.to_dict() for f in files],
        destination=destination,
        poll_interval=0.2,
        **kwargs,
    )


def context_for(run_id: str) -> dict:
    ti = types.SimpleNamespace(dag_id="s3_test", run_id=run_id, task_id="download", map_index=-1)
    return {"ti": ti}


def test_the_operator_publishes_to_s3_and_a_retry_skips_the_download(
    cartd_stack, hook, s3_stack, s3_connection, prefix, capfd
):
    files = load(cartd_stack, {"x/one.txt": b"one\n", "x/two.txt": b"two\n" * 1000})
    context = context_for(f"manual__{prefix}")
    url = s3_stack.url(prefix)

    manifest = operator_for(files, store_path(url)).execute(context)

    assert manifest["destination"] == url
    assert manifest["conn_id"] == "aws_s3"
    assert [entry["url"] for entry in manifest["files"]] == [f"{url}/x/one.txt", f"{url}/x/two.txt"]
    assert store_path(manifest["files"][1]["url"]).read_bytes() == b"two\n" * 1000
    capfd.readouterr()
    again = operator_for(files, store_path(url)).execute(context)  # the same task instance, retried
    output = capfd.readouterr().out
    assert "are already published" in output
    assert "Created cart" not in output
    assert again["files"] == manifest["files"]
    s3_stack.client().delete_object(Bucket=s3_stack.bucket, Key=f"{prefix}/x/one.txt")
    assert operator_for(files, store_path(url)).execute(context)["file_count"] == 2  # downloaded again
    assert f"{prefix}/x/one.txt" in s3_stack.keys(prefix)


def test_a_big_file_list_goes_to_the_manifest_object(cartd_stack, hook, s3_stack, s3_connection, prefix):
    from airflow_provider_pacifica.batching import manifest_files

    files = load(cartd_stack, {f"many/{i}.txt": f"{i}\n".encode() for i in range(5)})
    manifest = operator_for(files, store_path(s3_stack.url(prefix)), manifest_max_files=2).execute(
        context_for(f"manual__{prefix}")
    )
    assert "files" not in manifest
    assert manifest["files_url"] == s3_stack.url(prefix, f".pacifica-manifest-{manifest['cart_uid']}.json")
    listed = manifest_files(manifest, open_url=lambda url: store_path(url, manifest["conn_id"]).open("rb"))
    assert [entry["path"] for entry in listed] == [f.path for f in files]


@pytest.mark.parametrize(
    ("destination", "named"),
    [("relative/downloads", "relative path"), ("s3://bucket/prefix", "URL given as a string")],
)
def test_relative_paths_and_url_strings_fail_the_task_at_once(cartd_stack, hook, destination, named):
    from airflow.sdk.exceptions import AirflowFailException

    files = [CartFile("1", "a.txt", "sha1", "0" * 40, 1)]
    with pytest.raises(AirflowFailException, match=f"destination '{destination}' is a {named}"):
        operator_for(files, destination).execute(context_for("manual__refused"))


def test_the_example_dag_downloads_to_the_configured_s3_root_and_summarizes_from_it(
    cartd_stack, hook, s3_stack, s3_connection, airflow_db, monkeypatch, capfd, prefix
):
    from airflow_provider_pacifica.destinations import safe_name
    from tests.integration.test_download_dag import TEXT_FILES, ingest_event, load_dag, task_states

    monkeypatch.setenv("AIRFLOW__PACIFICA__DOWNLOAD_ROOT", s3_stack.url(prefix))
    monkeypatch.setenv("AIRFLOW__PACIFICA__DOWNLOAD_CONN_ID", s3_connection)
    event = ingest_event(cartd_stack, TEXT_FILES)

    dag_run = load_dag("pacifica_cloudevent_download").test(run_conf={"cloudevent": event})

    assert task_states(dag_run) == {"pick_cloudevents": "success", "download": "success", "summarize": "success"}
    base = f"{prefix}/{safe_name(dag_run.run_id)}/{event['eventID']}"
    client = s3_stack.client()
    for path, data in TEXT_FILES.items():
        assert client.get_object(Bucket=s3_stack.bucket, Key=f"{base}/{path}")["Body"].read() == data
    output = capfd.readouterr().out
    assert f"Total: 3 files, {sum(map(len, TEXT_FILES.values()))} bytes" in output


_KILLED_ATTEMPT = """
import io, os, sys, time
sys.path.insert(0, os.environ["REPO"])
import s3fs
from airflow_provider_pacifica.objectstore import download_to_store
from tests.integration.test_s3 import CONTENTS
from tests.tars import build_tar, cart_files

class Slow(io.BytesIO):  # the small files, then the big one at a trickle: killed while it uploads
    def read(self, size=-1):
        if self.tell() > len(CONTENTS["big/volume.bin"]) // 2:
            time.sleep(0.5)
        return super().read(min(size, 1 << 20))

fs = s3fs.S3FileSystem(key=os.environ["KEY"], secret=os.environ["SECRET"], endpoint_url=os.environ["ENDPOINT"])
stream = Slow(build_tar(CONTENTS))
download_to_store(stream, cart_files(CONTENTS), fs, os.environ["ROOT"], "data", cart_key="cart-killed")
"""


def test_an_attempt_killed_mid_upload_leaves_an_upload_that_the_next_attempt_aborts(s3_stack, s3_connection, prefix):
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    root = f"{s3_stack.bucket}/{prefix}"
    env = {
        **os.environ,
        "REPO": str(REPO),
        "KEY": s3_stack.access_key,
        "SECRET": s3_stack.secret_key,
        "ENDPOINT": s3_stack.endpoint_url,
        "ROOT": root,
    }
    attempt = subprocess.Popen([sys.executable, "-c", _KILLED_ATTEMPT], env=env, cwd=REPO)
    deadline = time.monotonic() + 120
    while not s3_stack.multipart_uploads(prefix) and attempt.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    attempt.send_signal(signal.SIGKILL)
    attempt.wait(timeout=60)
    assert attempt.returncode == -signal.SIGKILL  # killed mid-upload, not finished
    # what a killed attempt leaves: an unfinished upload to the big file's final key, invisible
    assert [upload["Key"] for upload in s3_stack.multipart_uploads(prefix)] == [f"{prefix}/big/volume.bin"]
    assert f"{prefix}/big/volume.bin" not in s3_stack.keys(prefix)
    assert not [key for key in s3_stack.keys(prefix) if "/.pacifica-manifest-" in key]

    destination = store_path(s3_stack.url(prefix))
    tar = io.BytesIO(build_tar(CONTENTS))
    download_to_store(tar, cart_files(CONTENTS), destination.fs, destination.path, "data", cart_key="cart-killed")

    assert s3_stack.multipart_uploads(prefix) == []
    assert sorted(s3_stack.keys(prefix)) == sorted(
        [f"{prefix}/.pacifica-manifest-cart-killed.json", *(f"{prefix}/{p}" for p in CONTENTS)]
    )
