"""What the download operator leaves on the real Cartd after each outcome, and how it reads
Cartd's real failure messages (issue 13: carts cleaned up, transient failures retried)."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_provider_pacifica.cloudevents import CartFile
from airflow_provider_pacifica.hooks.cartd import RECREATED_SUFFIX, PacificaCartdHook
from airflow_provider_pacifica.operators.download import PacificaDownloadOperator
from tests.integration.test_hook_cartd import load
from tests.unit.test_sensor_and_operator import make_context

FILES = {"x/one.txt": b"one\n", "x/two.txt": b"two\n", "y/three.txt": b"three\n"}


def download(files: list[CartFile], destination, **kwargs) -> PacificaDownloadOperator:
    return PacificaDownloadOperator(
        task_id=f"t-{uuid.uuid4().hex[:8]}",
        destination=str(destination),
        files=[f.to_dict() for f in files],
        poll_interval=0.2,
        max_poll_interval=0.5,
        timeout=120,
        **kwargs,
    )


def carts_left(cartd: PacificaCartdHook, cart_uid: str, probes: int = 0) -> list[str]:
    uids = [cart_uid, cart_uid + RECREATED_SUFFIX, *(f"{cart_uid}-probe-{i}" for i in range(probes))]
    return [uid for uid in uids if not cartd.cart_status(uid).missing]


def test_a_published_download_leaves_no_cart(cartd_stack, hook, tmp_path):
    files = load(cartd_stack, FILES)
    op = download(files, tmp_path / "dest")
    manifest = op.execute(make_context(op.task_id))
    assert manifest["file_count"] == 3
    assert carts_left(hook, manifest["cart_uid"]) == []


def test_a_cart_with_a_wrong_hash_names_the_file_and_leaves_no_cart_or_probe(cartd_stack, hook, tmp_path):
    files = load(cartd_stack, FILES)
    files[1] = CartFile(files[1].id, files[1].path, "sha1", "0" * 40, files[1].size)
    op = download(files, tmp_path / "dest")  # on the worker: probing is on by default
    with pytest.raises(AirflowFailException, match=r"failing file\(s\): 'x/two.txt'.*File hash does not match"):
        op.execute(make_context(op.task_id))
    assert carts_left(hook, op.cart_uid_for(make_context(op.task_id), files), probes=3) == []
    assert not (tmp_path / "dest").exists()


def test_a_file_that_fails_our_verification_leaves_no_cart(cartd_stack, hook, tmp_path):
    files = load(cartd_stack, FILES)
    files[0] = CartFile(files[0].id, files[0].path, files[0].hashtype, files[0].hashsum, files[0].size + 1)
    op = download(files, tmp_path / "dest")  # Cartd stages it (it checks hashes, not sizes); we refuse it
    with pytest.raises(AirflowFailException, match="Pacifica said"):
        op.execute(make_context(op.task_id))
    assert carts_left(hook, op.cart_uid_for(make_context(op.task_id), files)) == []


def test_an_archive_fault_is_retried_and_the_retry_stages_the_cart_again(cartd_stack, hook, tmp_path):
    """A file the archive cannot stage (here: not there yet) fails the cart with Cartd's real
    'Failed to stage with error' text: a fault a retry may not meet, so the task is retried, and the
    retry, once the archive has the file, stages the cart again and downloads it."""
    file_id = f"late-{uuid.uuid4().hex[:12]}"
    data = b"arrives late\n"
    files = [CartFile(file_id, "late.txt", "sha1", hashlib.sha1(data).hexdigest(), len(data))]
    op = download(files, tmp_path / "dest")
    context = make_context(op.task_id)
    with pytest.raises(AirflowException) as failure:
        op.execute(context)
    print(f"Cartd's message: {failure.value}")
    assert not isinstance(failure.value, AirflowFailException)
    assert "Failed to stage with error" in str(failure.value)
    cart_uid = op.cart_uid_for(context, files)
    assert hook.cart_status(cart_uid).failed  # kept for the retry, which finds it failed and stages it again
    cartd_stack.put(file_id, data)
    retry = download(files, tmp_path / "dest")
    retry.task_id = op.task_id
    manifest = retry.execute(context)
    assert manifest["cart_uid"] == cart_uid
    assert (tmp_path / "dest" / "late.txt").read_bytes() == data
    assert carts_left(hook, cart_uid) == []
