"""The object-storage sink on fsspec's in-memory filesystem (the real S3 is in tests/integration/test_s3.py)."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import threading
from typing import Any

import pytest
from fsspec.implementations.memory import MemoryFileSystem

from airflow_provider_pacifica import objectstore
from airflow_provider_pacifica.exceptions import DestinationWriteError, InvalidInputError, VerificationError
from airflow_provider_pacifica.objectstore import download_to_store, verify_published_objects
from tests.tars import CONTENTS, build_tar, cart_files, hostile_tars
from tests.unit.test_extraction import EXPECTED_ERRORS


@pytest.fixture
def fs():
    memory = MemoryFileSystem()
    memory.store.clear()
    memory.pseudo_dirs.clear()
    memory.pseudo_dirs.append("")
    memory.pipe_file("/bucket/other/keep.txt", b"not ours")
    yield memory
    memory.store.clear()


def objects(fs) -> dict[str, bytes]:
    return {path: fs.cat_file(path) for path in fs.find("/bucket")}


class FakeS3(MemoryFileSystem):
    """The memory filesystem with the few S3 calls the sink makes (``call_s3``, ``split_path``):
    multipart uploads are held apart until completed, as S3 does, and S3's limits are checked."""

    cachable = False  # a fresh instance per test: fsspec would hand back the last one, calls and all
    max_parts = 10_000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.uploads: dict[str, tuple[str, str, dict[int, bytes]]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._ids = itertools.count(1)

    def split_path(self, path: str) -> tuple[str, str, None]:
        bucket, _, key = self._strip_protocol(path).lstrip("/").partition("/")
        return bucket, key, None

    def call_s3(self, method: str, **kwargs: Any) -> dict[str, Any]:
        self.calls.append((method, kwargs))
        return getattr(self, f"_s3_{method}")(**kwargs)

    def _s3_create_multipart_upload(self, Bucket: str, Key: str) -> dict[str, Any]:
        upload_id = f"upload-{next(self._ids)}"
        self.uploads[upload_id] = (Bucket, Key, {})
        return {"UploadId": upload_id}

    def _s3_upload_part(self, Bucket: str, Key: str, UploadId: str, PartNumber: int, Body: bytes) -> dict[str, Any]:
        if not 1 <= PartNumber <= self.max_parts:
            raise OSError(f"InvalidArgument: part number {PartNumber} is over {self.max_parts}")
        self.uploads[UploadId][2][PartNumber] = Body
        return {"ETag": f'"{PartNumber}-{len(Body)}"'}

    def _s3_complete_multipart_upload(
        self, Bucket: str, Key: str, UploadId: str, MultipartUpload: dict[str, Any]
    ) -> dict[str, Any]:
        _, _, parts = self.uploads.pop(UploadId)
        numbers = [part["PartNumber"] for part in MultipartUpload["Parts"]]
        if any(len(parts[n]) < objectstore.MIN_PART_SIZE for n in numbers[:-1]):
            raise OSError("EntityTooSmall")
        self.pipe_file(f"/{Bucket}/{Key}", b"".join(parts[n] for n in numbers))
        return {"ETag": f'"{UploadId}-{len(numbers)}"'}

    def _s3_abort_multipart_upload(self, Bucket: str, Key: str, UploadId: str) -> dict[str, Any]:
        self.uploads.pop(UploadId, None)
        return {}

    def _s3_list_objects_v2(self, Bucket: str, Prefix: str, Delimiter: str) -> dict[str, Any]:
        under = f"/{Bucket}/{Prefix}"
        found = [
            {"Key": path.removeprefix(f"/{Bucket}/"), "Size": len(self.store[path].getvalue())}
            for path in sorted(self.store)
            if path.startswith(under) and Delimiter not in path[len(under) :]
        ]
        return {"Contents": found, "IsTruncated": False}

    def _s3_list_multipart_uploads(self, Bucket: str, Prefix: str) -> dict[str, Any]:
        uploads = [
            {"Key": key, "UploadId": upload_id}
            for upload_id, (bucket, key, _) in self.uploads.items()
            if bucket == Bucket and key.startswith(Prefix)
        ]
        return {"Uploads": uploads, "IsTruncated": False}


@pytest.fixture
def s3():
    store = FakeS3()
    store.store.clear()
    store.pseudo_dirs.clear()
    store.pseudo_dirs.append("")
    yield store
    store.store.clear()


def test_a_good_cart_lands_under_the_root_with_a_manifest_written_last(fs):
    extracted = download_to_store(
        io.BytesIO(build_tar()), cart_files(), fs, "memory://bucket/run/event", "data", cart_key="cart-1", conn_id="s3"
    )
    assert [f.path for f in extracted] == list(CONTENTS)
    stored = objects(fs)
    for path, data in CONTENTS.items():
        assert stored[f"/bucket/run/event/{path}"] == data
    manifest = json.loads(stored["/bucket/run/event/.pacifica-manifest-cart-1.json"])
    assert manifest["conn_id"] == "s3"
    assert manifest["destination"] == "memory:///bucket/run/event"
    assert [entry["url"] for entry in manifest["files"]] == [f"memory:///bucket/run/event/{p}" for p in CONTENTS]
    assert not [path for path in stored if ".pacifica-staging-" in path]


@pytest.mark.parametrize("case", sorted(hostile_tars()))
def test_hostile_tars_leave_no_object_behind(fs, case):
    before = objects(fs)
    error, message = EXPECTED_ERRORS[case]
    with pytest.raises(error, match=message):
        download_to_store(io.BytesIO(hostile_tars()[case]), cart_files(), fs, "/bucket/dest", "data", cart_key="c")
    assert objects(fs) == before


def test_a_killed_attempts_staging_is_removed_by_the_next(fs):
    staging = objectstore.staging_path("/bucket/dest", "cart-1")
    fs.pipe_file(f"{staging}/a/b.txt", b"half")
    download_to_store(io.BytesIO(build_tar()), cart_files(), fs, "/bucket/dest", "data", cart_key="cart-1")
    assert not [path for path in objects(fs) if ".pacifica-staging-" in path]


def test_a_published_download_is_found_by_a_retry_and_a_changed_one_is_not(fs):
    files = cart_files()
    assert verify_published_objects(fs, "/bucket/dest", files, "cart-1") is None
    download_to_store(io.BytesIO(build_tar()), files, fs, "/bucket/dest", "data", cart_key="cart-1")
    present = verify_published_objects(fs, "/bucket/dest", files, "cart-1")
    assert [f.path for f in present] == [f.path for f in files]
    assert verify_published_objects(fs, "/bucket/dest", files, "another-cart") is None
    fs.pipe_file("/bucket/dest/a/b.txt", b"shorter")
    assert verify_published_objects(fs, "/bucket/dest", files, "cart-1") is None
    fs.rm("/bucket/dest/a/b.txt")
    assert verify_published_objects(fs, "/bucket/dest", files, "cart-1") is None


@pytest.mark.parametrize("held", [True, False], ids=["put from memory", "copied from staging"])
def test_a_failed_publish_removes_the_objects_it_added_and_writes_no_manifest(fs, monkeypatch, held):
    if not held:
        monkeypatch.setattr(objectstore, "HELD_BYTES", 0)
    fs.pipe_file("/bucket/dest/a/b.txt", b"an older version")
    real_copy, real_pipe = fs.copy, fs.pipe

    def copy_then_fail(sources, targets, **kwargs):
        real_copy(sources[:2], targets[:2])
        raise PermissionError("access denied")

    def pipe_then_fail(batch, **kwargs):
        if all(path.startswith("/bucket/dest/.pacifica-staging-") for path in batch):
            return real_pipe(batch, **kwargs)  # the staging batches go through
        real_pipe(dict(list(batch.items())[:2]))
        raise PermissionError("access denied")

    monkeypatch.setattr(fs, "copy", copy_then_fail)
    monkeypatch.setattr(fs, "pipe", pipe_then_fail)
    with pytest.raises(DestinationWriteError, match="could not put the verified files into place"):
        download_to_store(io.BytesIO(build_tar()), cart_files(), fs, "/bucket/dest", "data", cart_key="c")
    assert sorted(p for p in objects(fs) if p.startswith("/bucket/dest/")) == ["/bucket/dest/a/b.txt"]


def test_small_files_are_held_in_memory_and_put_in_place_without_staging(fs, monkeypatch):
    calls = []
    real_pipe = fs.pipe
    monkeypatch.setattr(fs, "pipe", lambda batch, **kw: (calls.append(sorted(batch)), real_pipe(batch, **kw)))
    monkeypatch.setattr(fs, "copy", lambda *a, **kw: pytest.fail("nothing to copy"))
    download_to_store(io.BytesIO(build_tar()), cart_files(), fs, "/bucket/dest", "data", cart_key="c")
    assert calls == [sorted(f"/bucket/dest/{path}" for path in CONTENTS)]


def test_too_small_parts_and_an_empty_root_are_refused(fs):
    with pytest.raises(InvalidInputError, match="part_size"):
        download_to_store(io.BytesIO(b""), cart_files(), fs, "/bucket", "data", cart_key="c", part_size=1 << 20)
    with pytest.raises(InvalidInputError, match="names no bucket"):
        download_to_store(io.BytesIO(b""), cart_files(), fs, "memory://", "data", cart_key="c")


@pytest.mark.parametrize("size", ["small, put in a batch", "large, written in parts"])
def test_a_store_that_refuses_a_write_fails_the_download_naming_it_and_leaves_nothing(fs, monkeypatch, size):
    monkeypatch.setattr(objectstore, "HELD_BYTES", 0)  # every small file is staged
    contents = dict(CONTENTS)
    if size.startswith("large"):
        contents["a/c/second.txt"] = b"x" * (objectstore.MIN_PART_SIZE + 1)
    real_open = fs.open

    class Refusing:
        def __init__(self, handle):
            self.handle, self.path = handle, handle.path

        def write(self, chunk):
            raise PermissionError(13, "Access Denied")

        def close(self):
            self.handle.close()

    def open_refusing(path, mode="rb", **kwargs):
        handle = real_open(path, mode, **kwargs)
        return Refusing(handle) if path.endswith("second.txt") else handle

    def pipe_refusing(batch, **kwargs):
        raise PermissionError(13, "Access Denied")

    monkeypatch.setattr(fs, "open", open_refusing)
    monkeypatch.setattr(fs, "pipe", pipe_refusing)
    before = objects(fs)
    with pytest.raises(DestinationWriteError, match=r"Access Denied \(.*(second.txt|a/b.txt)\)"):
        download_to_store(
            io.BytesIO(build_tar(contents)),
            cart_files(contents),
            fs,
            "/bucket/dest",
            "data",
            cart_key="c",
            part_size=objectstore.MIN_PART_SIZE,
        )
    assert objects(fs) == before


def test_many_small_files_beyond_what_is_held_go_up_in_batches_and_all_arrive(fs, monkeypatch):
    monkeypatch.setattr(objectstore, "HELD_BYTES", 0)
    contents = {f"many/{i:04d}.txt": f"{i}\n".encode() for i in range(objectstore.BATCH_FILES * 2 + 3)}
    batches = []
    real_pipe = fs.pipe
    monkeypatch.setattr(fs, "pipe", lambda batch, **kw: (batches.append(len(batch)), real_pipe(batch, **kw)))
    download_to_store(io.BytesIO(build_tar(contents)), cart_files(contents), fs, "/bucket/many", "data", cart_key="c")
    assert batches == [objectstore.BATCH_FILES, objectstore.BATCH_FILES, 3]
    stored = objects(fs)
    assert all(stored[f"/bucket/many/{path}"] == data for path, data in contents.items())


def test_a_bare_bucket_destination_aborts_a_killed_attempts_uploads_to_its_keys_only(s3):
    killed = s3.call_s3("create_multipart_upload", Bucket="bucket", Key="a/b.txt")["UploadId"]
    other = s3.call_s3("create_multipart_upload", Bucket="bucket", Key="someone/else.bin")["UploadId"]
    download_to_store(io.BytesIO(build_tar()), cart_files(), s3, "memory://bucket", "data", cart_key="c")
    assert killed not in s3.uploads
    assert list(s3.uploads) == [other]
    assert s3.cat_file("/bucket/a/b.txt") == CONTENTS["a/b.txt"]


def test_a_file_of_more_parts_than_s3_allows_is_sent_in_bigger_parts(s3, monkeypatch):
    monkeypatch.setattr(s3, "max_parts", 3)  # S3's 10,000, scaled down
    monkeypatch.setattr(objectstore, "MAX_PARTS", 3)
    contents = {**CONTENTS, "big.bin": bytes(range(256)) * (4 * objectstore.MIN_PART_SIZE // 256)}  # 4 parts' worth
    download_to_store(
        io.BytesIO(build_tar(contents)),
        cart_files(contents),
        s3,
        "/bucket/dest",
        "data",
        cart_key="c",
        part_size=objectstore.MIN_PART_SIZE,
    )
    assert s3.cat_file("/bucket/dest/big.bin") == contents["big.bin"]
    assert max(kwargs["PartNumber"] for method, kwargs in s3.calls if method == "upload_part") == 3


def test_a_clean_up_step_that_fails_does_not_skip_the_next_and_names_what_it_left(fs, monkeypatch, caplog):
    monkeypatch.setattr(objectstore, "HELD_BYTES", 0)  # every file is staged, then copied
    real_copy, real_rm = fs.copy, fs.rm

    def copy_then_fail(sources, targets, **kwargs):
        real_copy(sources[:1], targets[:1])
        raise PermissionError("access denied")

    def rm_only_staging(paths, *args, **kwargs):  # may delete its staging, not the published keys
        if any(".pacifica-staging-" not in path for path in ([paths] if isinstance(paths, str) else paths)):
            raise PermissionError("access denied")
        return real_rm(paths, *args, **kwargs)

    monkeypatch.setattr(fs, "copy", copy_then_fail)
    monkeypatch.setattr(fs, "rm", rm_only_staging)
    with pytest.raises(DestinationWriteError, match="could not put the verified files into place"):
        download_to_store(io.BytesIO(build_tar()), cart_files(), fs, "/bucket/dest", "data", cart_key="c")
    assert not [path for path in objects(fs) if ".pacifica-staging-" in path]
    assert "Could not remove the objects this failed attempt added, among memory:///bucket/dest/a/b.txt" in caplog.text


@pytest.mark.parametrize("earlier", [False, True], ids=["first attempt", "over an earlier manifest"])
def test_a_manifest_put_whose_answer_is_lost_is_removed_with_the_objects(fs, monkeypatch, earlier):
    manifest = objectstore.manifest_path("/bucket/dest", "c")
    if earlier:
        fs.pipe_file(manifest, b'{"attempt": "an earlier one", "files": []}')
    real_pipe_file = fs.pipe_file

    def pipe_file_then_fail(path, data, **kwargs):
        real_pipe_file(path, data, **kwargs)
        if path == manifest:
            raise ConnectionResetError("the answer was lost")

    monkeypatch.setattr(fs, "pipe_file", pipe_file_then_fail)
    with pytest.raises(DestinationWriteError, match="could not write the manifest"):
        download_to_store(io.BytesIO(build_tar()), cart_files(), fs, "/bucket/dest", "data", cart_key="c")
    assert sorted(p for p in objects(fs) if p.startswith("/bucket/dest/")) == []


def test_a_failed_manifest_write_leaves_an_earlier_attempts_manifest(fs, monkeypatch):
    manifest = objectstore.manifest_path("/bucket/dest", "c")
    fs.pipe_file(manifest, b'{"attempt": "an earlier one", "files": []}')
    real_pipe_file = fs.pipe_file

    def refuse_the_manifest(path, data, **kwargs):
        if path == manifest:
            raise PermissionError("access denied")
        return real_pipe_file(path, data, **kwargs)

    monkeypatch.setattr(fs, "pipe_file", refuse_the_manifest)
    with pytest.raises(DestinationWriteError, match="could not write the manifest"):
        download_to_store(io.BytesIO(build_tar()), cart_files(), fs, "/bucket/dest", "data", cart_key="c")
    assert sorted(p for p in objects(fs) if p.startswith("/bucket/dest/")) == [manifest]


def test_a_zombie_attempt_that_fails_leaves_the_files_its_retry_published(fs, monkeypatch, caplog):
    real_pipe = fs.pipe

    def retry_publishes_then_the_zombie_fails(batch, **kwargs):
        monkeypatch.setattr(fs, "pipe", real_pipe)
        # the retry of a task whose attempt still runs: it starts, publishes and commits...
        download_to_store(io.BytesIO(build_tar()), cart_files(), fs, "/bucket/dest", "data", cart_key="c")
        raise ConnectionResetError("...then the zombie's own put of the same files fails")

    monkeypatch.setattr(fs, "pipe", retry_publishes_then_the_zombie_fails)
    with pytest.raises(DestinationWriteError, match="could not put the verified files into place"):
        download_to_store(io.BytesIO(build_tar()), cart_files(), fs, "/bucket/dest", "data", cart_key="c")
    present = verify_published_objects(fs, "/bucket/dest", cart_files(), "c")
    assert [f.path for f in present] == list(CONTENTS)
    assert not [path for path in objects(fs) if ".pacifica-staging-" in path]
    assert "Could not remove" not in caplog.text


def test_a_failing_attempt_removes_its_own_staging_not_a_concurrent_attempts(fs, monkeypatch):
    monkeypatch.setattr(objectstore, "HELD_BYTES", 0)  # staged, then copied
    concurrent = f"{objectstore.staging_path('/bucket/dest', 'c')}/another-attempt/a/b.txt"

    def concurrent_attempt_stages_then_copy_fails(sources, targets, **kwargs):
        fs.pipe_file(concurrent, b"staged by an attempt running beside this one")
        raise PermissionError("access denied")

    monkeypatch.setattr(fs, "copy", concurrent_attempt_stages_then_copy_fails)
    with pytest.raises(DestinationWriteError, match="could not put the verified files into place"):
        download_to_store(io.BytesIO(build_tar()), cart_files(), fs, "/bucket/dest", "data", cart_key="c")
    assert [path for path in objects(fs) if ".pacifica-staging-" in path] == [concurrent]


def test_an_upload_error_raised_at_a_later_write_names_only_the_object_that_failed(fs, monkeypatch):
    monkeypatch.setattr(objectstore, "HELD_BYTES", 0)
    monkeypatch.setattr(objectstore, "BATCH_FILES", 1)  # each small file goes up alone, from the thread
    failed = threading.Event()

    def pipe_refusing(batch, **kwargs):
        failed.set()
        raise PermissionError(13, "Access Denied")

    class AfterTheFailure(io.BytesIO):  # the next member is read once the upload has failed
        def read(self, size=-1):
            if self.tell() > 1024:
                failed.wait(timeout=60)
            return super().read(size)

    monkeypatch.setattr(fs, "pipe", pipe_refusing)
    with pytest.raises(DestinationWriteError) as raised:
        download_to_store(AfterTheFailure(build_tar()), cart_files(), fs, "/bucket/dest", "data", cart_key="c")
    message = str(raised.value)
    assert "Access Denied (one of 1 files from /bucket/dest/.pacifica-staging-" in message
    assert "/a/b.txt)" in message
    assert "could not write file" not in message  # no other file named as the one that failed


def test_a_store_that_hangs_does_not_hang_the_failed_download(fs, monkeypatch, caplog):
    monkeypatch.setattr(objectstore, "HELD_BYTES", 0)
    monkeypatch.setattr(objectstore, "BATCH_FILES", 1)
    monkeypatch.setattr(objectstore, "ABORT_WAIT", 0.1)
    asked, release = threading.Event(), threading.Event()
    monkeypatch.setattr(fs, "pipe", lambda batch, **kwargs: (asked.set(), release.wait()))  # never answers
    files = cart_files()
    files[-1] = dataclasses.replace(files[-1], hashsum="0" * 40)  # fails at the last file
    outcome: list[BaseException] = []

    class OnceAsked(io.BytesIO):  # the rest of the tar is read once the store hangs on a request
        def read(self, size=-1):
            if self.tell() > 1024:
                asked.wait(timeout=60)
            return super().read(size)

    def download() -> None:
        try:
            download_to_store(OnceAsked(build_tar()), files, fs, "/bucket/dest", "data", cart_key="c")
        except BaseException as err:
            outcome.append(err)

    attempt = threading.Thread(target=download, daemon=True)
    attempt.start()
    attempt.join(timeout=120)
    ended_while_the_store_hung = not attempt.is_alive()
    release.set()
    assert ended_while_the_store_hung
    assert isinstance(outcome[0], VerificationError)
    assert "The upload thread did not stop within" in caplog.text


@pytest.mark.parametrize("root", ["memory://bucket", "memory://bucket/shared"], ids=["bare bucket", "shared prefix"])
@pytest.mark.parametrize("store", ["s3", "fs"])
def test_publishing_and_the_skip_check_list_only_the_directories_of_the_carts_files(s3, fs, monkeypatch, root, store):
    target = s3 if store == "s3" else fs
    base = objectstore.store_root(target, root)
    for i in range(3):  # other downloads' files in the same root
        target.pipe_file(f"{base}/other-{i}/deep/file.txt", b"not ours")
    real_find, real_ls = target.find, target.ls
    listed: list[str] = []

    def find_staging_only(path, *args, **kwargs):
        if ".pacifica-staging-" not in path:
            pytest.fail(f"listed {path} recursively")
        return real_find(path, *args, **kwargs)

    def ls(path, *args, **kwargs):
        listed.append(path)
        return real_ls(path, *args, **kwargs)

    monkeypatch.setattr(target, "find", find_staging_only)
    monkeypatch.setattr(target, "ls", ls)
    download_to_store(io.BytesIO(build_tar()), cart_files(), target, root, "data", cart_key="c")
    assert [f.path for f in verify_published_objects(target, root, cart_files(), "c")] == list(CONTENTS)
    if store == "s3":
        listed = [kwargs["Prefix"] for method, kwargs in s3.calls if method == "list_objects_v2"]
        prefix = base.removeprefix("/bucket").strip("/")
        base = f"{prefix}/" if prefix else ""
        assert set(listed) == {f"{base}{d}/" for d in ("a", "a/c", "é", "bin")}
    else:
        assert set(listed) == {f"{base}/{d}" for d in ("a", "a/c", "é", "bin")}
