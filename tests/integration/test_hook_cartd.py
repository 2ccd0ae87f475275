"""The hook against the real Cartd 0.7.0 and archive interface 0.4.2 (scripts/cartd-stack)."""

from __future__ import annotations

import hashlib
import io
import tarfile
import time
import uuid

import pytest
import requests

from airflow_provider_pacifica.cloudevents import CartFile
from airflow_provider_pacifica.hooks.cartd import CartStatus, PacificaCartdHook


def load(cartd_stack, contents: dict[str, bytes]) -> list[CartFile]:
    """Put files in the archive under fresh ids; return what a cart needs to fetch them."""
    files = []
    for path, data in contents.items():
        file_id = f"it-{uuid.uuid4().hex[:12]}"
        cartd_stack.put(file_id, data)
        files.append(CartFile(file_id, path, "sha1", hashlib.sha1(data).hexdigest(), len(data)))
    return files


def wait(hook: PacificaCartdHook, cart_uid: str, limit: float = 60.0) -> CartStatus:
    deadline = time.monotonic() + limit
    while True:
        status = hook.cart_status(cart_uid)
        if not status.pending or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


CONTENTS = {
    "a/b.txt": b"The data for file a/b.\n",
    "a/c/second.txt": b"second\n",
    "é/baré ü.txt": "non-ASCII path ✓\n".encode(),
    "bin/blob.bin": bytes(range(256)) * 12_000,  # about 3 MB
}


def test_a_cart_of_several_files_is_created_staged_streamed_and_deleted(cartd_stack, hook):
    files = load(cartd_stack, CONTENTS)
    cart_uid = hook.create_cart(files)
    assert wait(hook, cart_uid).ready

    with hook.open_cart_stream(cart_uid, filename="data.tar") as response:
        assert response.status_code == 200
        assert "Content-Length" not in response.headers  # streaming mode: chunked
        members = {}
        with tarfile.open(fileobj=response.raw, mode="r|") as tar:
            for member in tar:
                if member.isfile():
                    members[member.name] = tar.extractfile(member).read()
    assert members == {f"data/{path}": data for path, data in CONTENTS.items()}

    assert hook.delete_cart(cart_uid) is True
    assert hook.cart_status(cart_uid).missing
    assert hook.delete_cart(cart_uid) is False


def test_a_wrong_hashsum_puts_the_cart_in_error_with_cartds_message(cartd_stack, hook):
    (good,) = load(cartd_stack, {"x/good.txt": b"good"})
    bad = CartFile(good.id, "x/bad.txt", "sha1", "0" * 40)
    cart_uid = hook.create_cart([bad])
    status = wait(hook, cart_uid)
    assert status.failed
    assert "File hash does not match provided hash" in status.message
    hook.delete_cart(cart_uid)


def test_an_unknown_cart_is_missing(hook):
    status = hook.cart_status(f"never-created-{uuid.uuid4().hex}")
    assert status.missing
    assert "No cart with uid" in status.message


def test_the_health_check_passes(hook):
    ok, message = hook.test_connection()
    assert ok
    assert message == "Pacifica Cartd Interface Up and Running"


def test_bundle_mode_serves_a_sized_tar_that_honours_range(cartd_stack, hook):
    files = load(cartd_stack, {"k/one.txt": b"one" * 1000, "k/two.txt": b"two" * 1000})
    cart_uid = hook.create_cart(files, bundle=True)
    assert wait(hook, cart_uid).ready
    with hook.open_cart_stream(cart_uid) as response:
        whole = response.raw.read()
        assert int(response.headers["Content-Length"]) == len(whole)
    with hook.open_cart_stream(cart_uid, offset=1000) as response:
        assert response.status_code == 206
        assert response.raw.read() == whole[1000:]
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        names = tar.getnames()
    assert f"{cart_uid}/k/one.txt" in names  # bundle mode: the top directory is the cart uid
    hook.delete_cart(cart_uid)


def test_a_download_of_a_staging_cart_is_refused_not_misread(cartd_stack, hook):
    from airflow_provider_pacifica.exceptions import CartNotReadyError

    # Cartd never finishes a cart with no files: it stays 'staging' (cartd-live.md §3).
    cart_uid = f"empty-{uuid.uuid4().hex}"
    response = requests.post(f"{cartd_stack.cartd_url}/{cart_uid}", json={"fileids": []}, timeout=10)
    assert response.status_code == 201
    assert hook.cart_status(cart_uid).state == "staging"
    with pytest.raises(CartNotReadyError), hook.open_cart_stream(cart_uid):
        pass
    hook.delete_cart(cart_uid)
