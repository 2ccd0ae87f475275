from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from airflow_provider_pacifica import extraction
from airflow_provider_pacifica.exceptions import (
    ExtractionError,
    InvalidInputError,
    RollbackError,
    StreamError,
    UnsafeMemberError,
    VerificationError,
)
from airflow_provider_pacifica.extraction import Progress, extract_cart
from tests.tars import CONTENTS, build_tar, cart_files, hostile_tars


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for directories)."""
    return {
        str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(root.rglob("*"))
        if not p.is_symlink()
    } | {str(p.relative_to(root)): b"<symlink>" for p in root.rglob("*") if p.is_symlink()}


@pytest.fixture
def workspace(tmp_path):
    """A parent dir holding a destination with one file already in it."""
    destination = tmp_path / "parent" / "dest"
    destination.mkdir(parents=True)
    (destination / "keep.txt").write_bytes(b"already here")
    return destination


def test_a_good_cart_lands_verified_at_destination_subdir_name(workspace):
    files = cart_files()
    extracted = extract_cart(io.BytesIO(build_tar()), files, workspace, "data")
    for path, data in CONTENTS.items():
        assert (workspace / path).read_bytes() == data
    assert (workspace / "keep.txt").read_bytes() == b"already here"
    assert [e.to_dict() for e in extracted] == [
        {"id": f.id, "path": f.path, "size": f.size, "hashtype": "sha1", "hashsum": f.hashsum} for f in files
    ]
    assert sorted(p.name for p in workspace.parent.iterdir()) == ["dest"]  # no staging left behind


def test_the_destination_is_created_when_missing(tmp_path):
    destination = tmp_path / "new" / "dest"
    extract_cart(io.BytesIO(build_tar()), cart_files(), destination, "data")
    assert (destination / "a" / "b.txt").read_bytes() == CONTENTS["a/b.txt"]


def test_a_failed_download_removes_the_parent_directories_it_created(tmp_path):
    (tmp_path / "root").mkdir()
    with pytest.raises(VerificationError):
        extract_cart(io.BytesIO(build_tar(skip=("a/b.txt",))), cart_files(), tmp_path / "root/run/event", "data")
    assert list((tmp_path / "root").iterdir()) == []


def test_existing_files_at_the_same_paths_are_replaced(workspace):
    (workspace / "a").mkdir()
    (workspace / "a" / "b.txt").write_bytes(b"old version")
    extract_cart(io.BytesIO(build_tar()), cart_files(), workspace, "data")
    assert (workspace / "a" / "b.txt").read_bytes() == CONTENTS["a/b.txt"]


def test_bundle_mode_top_directory_is_the_cart_uid(workspace):
    extract_cart(io.BytesIO(build_tar(top="cart-123")), cart_files(), workspace, "cart-123")
    assert (workspace / "bin" / "blob.bin").read_bytes() == CONTENTS["bin/blob.bin"]


def test_sizes_are_optional(workspace):
    files = [f.__class__(f.id, f.path, f.hashtype, f.hashsum, None) for f in cart_files()]
    extract_cart(io.BytesIO(build_tar()), files, workspace, "data")
    assert (workspace / "a" / "b.txt").exists()


def test_other_hash_types_are_verified(workspace):
    data = CONTENTS["a/b.txt"]
    file = cart_files()[0].__class__(1, "a/b.txt", "sha256", hashlib.sha256(data).hexdigest(), len(data))
    extract_cart(io.BytesIO(build_tar({"a/b.txt": data})), [file], workspace, "data")
    assert (workspace / "a" / "b.txt").read_bytes() == data


EXPECTED_ERRORS = {
    "path traversal": (UnsafeMemberError, r"contains '\.\.'"),
    "dot-dot at the top": (UnsafeMemberError, r"contains '\.\.'"),
    "absolute path": (UnsafeMemberError, "absolute path"),
    "symlink": (UnsafeMemberError, "symbolic link"),
    "symlink over a requested file": (UnsafeMemberError, "symbolic link"),
    "hardlink": (UnsafeMemberError, "hard link"),
    "character device": (UnsafeMemberError, "character device"),
    "fifo": (UnsafeMemberError, "FIFO"),
    "unexpected member": (UnsafeMemberError, "was not requested"),
    "unexpected directory": (UnsafeMemberError, "directory that was not requested"),
    "outside the top directory": (UnsafeMemberError, "outside the cart's top directory"),
    "duplicate member": (UnsafeMemberError, "appears twice"),
    "missing file": (VerificationError, r"1 requested file\(s\) did not arrive: 'a/c/second.txt'"),
    "truncated stream": (StreamError, "truncated"),
    "truncated inside a file": (StreamError, "truncated|ended after"),
    "wrong content": (VerificationError, r"file 'a/b.txt' \(id 1000\) has sha1"),
    "wrong size": (VerificationError, r"file 'a/b.txt' \(id 1000\) is 5 bytes in the cart, Pacifica said 15"),
    "not a tar": (StreamError, "not a tar"),
    "empty stream": (StreamError, "empty file"),
}


@pytest.mark.parametrize("case", sorted(hostile_tars()))
def test_hostile_tars_fail_cleanly_and_change_nothing(workspace, case):
    before = snapshot(workspace.parent)
    error, message = EXPECTED_ERRORS[case]
    with pytest.raises(error, match=message):
        extract_cart(io.BytesIO(hostile_tars()[case]), cart_files(), workspace, "data")
    assert snapshot(workspace.parent) == before
    assert not Path("/tmp/pacifica-absolute-escape.txt").exists()


def test_every_hostile_case_has_an_expected_error():
    assert set(EXPECTED_ERRORS) == set(hostile_tars())


def test_a_stream_that_breaks_is_a_stream_error(workspace):
    class Breaking(io.BytesIO):
        def read(self, size=-1):
            if self.tell() > 0:
                raise ConnectionResetError("reset by peer")
            return super().read(3000)

    before = snapshot(workspace.parent)
    with pytest.raises(StreamError, match="ConnectionResetError"):
        extract_cart(Breaking(build_tar()), cart_files(), workspace, "data")
    assert snapshot(workspace.parent) == before


def test_a_failed_publish_puts_everything_back(workspace, monkeypatch):
    (workspace / "a").mkdir()
    (workspace / "a" / "b.txt").write_bytes(b"old version")
    before = snapshot(workspace.parent)
    real_replace, real_rename = os.replace, os.rename
    moves = []

    def flaky(real):
        def move(src, dst):
            moves.append(dst)
            if len(moves) == 4:  # fail in the middle of publishing
                raise OSError("disk full")
            return real(src, dst)

        return move

    monkeypatch.setattr(extraction.os, "replace", flaky(real_replace))
    monkeypatch.setattr(extraction.os, "rename", flaky(real_rename))
    with pytest.raises(OSError, match="disk full"):
        extract_cart(io.BytesIO(build_tar()), cart_files(), workspace, "data")
    monkeypatch.setattr(extraction.os, "replace", real_replace)
    monkeypatch.setattr(extraction.os, "rename", real_rename)
    assert len(moves) >= 4
    assert snapshot(workspace.parent) == before


def test_a_rollback_that_fails_keeps_the_replaced_files_and_says_where(workspace, monkeypatch):
    (workspace / "a").mkdir()
    (workspace / "a" / "b.txt").write_bytes(b"old version")
    real_replace, real_rename = os.replace, os.rename
    moves = []

    def broken_after_three(real):
        def move(src, dst):
            moves.append(dst)
            if len(moves) >= 4:  # publishing fails, and so does every move back
                raise OSError("disk gone")
            return real(src, dst)

        return move

    monkeypatch.setattr(extraction.os, "replace", broken_after_three(real_replace))
    monkeypatch.setattr(extraction.os, "rename", broken_after_three(real_rename))
    with pytest.raises(RollbackError, match=r"could not be undone .* kept in ") as raised:
        extract_cart(io.BytesIO(build_tar()), cart_files(), workspace, "data")
    monkeypatch.setattr(extraction.os, "replace", real_replace)
    monkeypatch.setattr(extraction.os, "rename", real_rename)
    kept = Path(raised.value.kept)
    assert kept.parent == workspace.parent  # the staging dir, not deleted
    assert [p.read_bytes() for p in (kept / "replaced").iterdir()] == [b"old version"]


def test_a_destination_that_is_a_mount_point_is_staged_inside_it(monkeypatch):
    # Staged beside it, the final renames would cross filesystems (EXDEV) after the whole download.
    mount = Path("/dev/shm")
    if not os.path.ismount(mount) or not os.access(mount, os.W_OK):
        pytest.skip("needs /dev/shm to be a writable mount point")
    contents = {f"pacifica-test-{uuid.uuid4().hex}/file.txt": b"on the mount"}
    top = Path(next(iter(contents))).parent
    staged_in = []
    real_mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(extraction.tempfile, "mkdtemp", lambda **kw: staged_in.append(kw["dir"]) or real_mkdtemp(**kw))
    try:
        extract_cart(io.BytesIO(build_tar(contents)), cart_files(contents), mount, "data")
        assert staged_in == [mount]
        assert (mount / top / "file.txt").read_bytes() == b"on the mount"
        assert not [p for p in mount.iterdir() if "pacifica-staging" in p.name]
    finally:
        shutil.rmtree(mount / top, ignore_errors=True)


def test_a_destination_that_is_a_symlink_receives_the_files_in_its_target(tmp_path):
    target = tmp_path / "real"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    extract_cart(io.BytesIO(build_tar()), cart_files(), tmp_path / "link", "data")
    for path, data in CONTENTS.items():
        assert (target / path).read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


def test_publish_refuses_a_directory_where_a_file_must_go(workspace):
    (workspace / "a" / "b.txt").mkdir(parents=True)
    before = snapshot(workspace.parent)
    with pytest.raises(ExtractionError, match="is a directory"):
        extract_cart(io.BytesIO(build_tar()), cart_files(), workspace, "data")
    assert snapshot(workspace.parent) == before


def test_publish_refuses_a_symlinked_subdirectory(workspace, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (workspace / "a").symlink_to(outside)
    with pytest.raises(ExtractionError, match="not a plain directory"):
        extract_cart(io.BytesIO(build_tar()), cart_files(), workspace, "data")
    assert list(outside.iterdir()) == []


def test_a_destination_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(InvalidInputError, match="not a directory"):
        extract_cart(io.BytesIO(build_tar()), cart_files(), target, "data")


def test_progress_is_reported_with_files_bytes_and_rate(workspace):
    seen: list[Progress] = []
    extract_cart(io.BytesIO(build_tar()), cart_files(), workspace, "data", on_progress=seen.append, progress_interval=0)
    last = seen[-1]
    assert (last.files_done, last.files_total) == (4, 4)
    assert last.bytes_done == last.bytes_total == sum(len(d) for d in CONTENTS.values())
    assert "4/4 files" in str(last)
    assert "MiB/s" in str(last)


def test_durable_mode_publishes_the_same_files(workspace):
    extract_cart(io.BytesIO(build_tar()), cart_files(), workspace, "data", durable=True)
    for path, data in CONTENTS.items():
        assert (workspace / path).read_bytes() == data


def test_durable_mode_syncs_every_directory_that_holds_a_new_name(workspace, monkeypatch):
    (workspace / "a").mkdir()  # merged into: b.txt and the subtree c/ are renamed into it
    synced: list[str] = []
    monkeypatch.setattr(extraction, "_fsync_path", lambda path: synced.append(str(path)))
    extract_cart(io.BytesIO(build_tar()), cart_files(), workspace, "data", durable=True)
    staged = {p for p in synced if "pacifica-staging" in p}
    assert {p.split("/files", 1)[-1] for p in staged} == {"", "/a", "/a/c", "/é", "/bin"}
    assert set(synced) - staged == {str(workspace), str(workspace / "a")}


def test_a_new_destination_receives_the_tree_in_one_rename(tmp_path, monkeypatch):
    renames = []
    real_rename = os.rename
    monkeypatch.setattr(extraction.os, "rename", lambda a, b: (renames.append(b), real_rename(a, b)))
    extract_cart(io.BytesIO(build_tar()), cart_files(), tmp_path / "fresh", "data")
    assert renames == [str(tmp_path / "fresh")]


def test_a_directory_created_meanwhile_by_another_publisher_is_merged_into(tmp_path, monkeypatch):
    destination = tmp_path / "dest"
    real_rename = os.rename
    raced = []

    def rename(source, target):
        if not raced and target == str(destination):  # another task publishes first
            raced.append(target)
            os.makedirs(destination / "a")
            (destination / "a" / "theirs.txt").write_text("theirs")
        return real_rename(source, target)

    monkeypatch.setattr(extraction.os, "rename", rename)
    extract_cart(io.BytesIO(build_tar()), cart_files(), destination, "data")
    assert raced
    assert (destination / "a" / "theirs.txt").read_text() == "theirs"
    for path, data in CONTENTS.items():
        assert (destination / path).read_bytes() == data


def test_parallel_extractions_into_one_destination_all_land(tmp_path):
    import threading

    halves = [dict(list(CONTENTS.items())[:2]), dict(list(CONTENTS.items())[2:])]
    errors = []

    def run(contents):
        try:
            extract_cart(io.BytesIO(build_tar(contents)), cart_files(contents), tmp_path / "dest", "data")
        except Exception as err:  # collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(half,)) for half in halves]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for path, data in CONTENTS.items():
        assert (tmp_path / "dest" / path).read_bytes() == data
