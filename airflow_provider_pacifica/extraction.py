"""Safe, verified, atomic extraction of a Cartd tar stream.

Plain Python, no Airflow import. The tar is read as a stream (memory stays flat whatever the cart
size) and nothing in it is trusted:

* only regular files and directories under the expected top directory are accepted; a member that
  is absolute, contains ``..``, is a link, a device or a FIFO, or was not requested fails at once;
* each file is hashed while it is written and checked against the size and hash that Pacifica
  gave; every requested file must arrive, once;
* files are written into a staging directory beside the destination and moved into place only
  when all are verified. On any failure the staging directory is removed and the destination is
  left exactly as it was (files it replaced are put back).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import queue
import shutil
import stat
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from airflow_provider_pacifica.exceptions import (
    BackgroundWriteError,
    DestinationWriteError,
    ExtractionError,
    InvalidInputError,
    RollbackError,
    StreamError,
    UnsafeMemberError,
    VerificationError,
)
from airflow_provider_pacifica.paths import parent_directories, path_parts
from airflow_provider_pacifica.tarstream import Readable, TarStreamReader

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from airflow_provider_pacifica.cloudevents import CartFile

CHUNK_SIZE = 1 << 20
_MEMBER_KINDS = {
    tarfile.SYMTYPE: "symbolic link",
    tarfile.LNKTYPE: "hard link",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
    tarfile.CONTTYPE: "contiguous file",
    tarfile.GNUTYPE_SPARSE: "sparse file",
}
_PLAIN_FILE_TYPES = {tarfile.REGTYPE, tarfile.AREGTYPE}
# a new file only (O_EXCL: two members that normalise to one path fail), never through a link
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Progress:
    """How far an extraction is; handed to the ``on_progress`` callback every few seconds."""

    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int | None
    elapsed: float

    @property
    def mib_per_second(self) -> float:
        return self.bytes_done / (1 << 20) / self.elapsed if self.elapsed > 0 else 0.0

    def __str__(self) -> str:
        total = f" of {self.bytes_total / (1 << 20):.1f}" if self.bytes_total is not None else ""
        return (
            f"{self.files_done}/{self.files_total} files, {self.bytes_done / (1 << 20):.1f}{total} MiB, "
            f"{self.mib_per_second:.1f} MiB/s"
        )


@dataclass(frozen=True)
class ExtractedFile:
    """One verified file in the destination."""

    id: int | str
    path: str
    size: int
    hashtype: str
    hashsum: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "path": self.path,
            "size": self.size,
            "hashtype": self.hashtype,
            "hashsum": self.hashsum,
        }


def extract_cart(
    stream: Readable,
    files: Sequence[CartFile],
    destination: str | os.PathLike[str],
    top_dir: str,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    progress_interval: float = 5.0,
    durable: bool = False,
    staging_key: str = "",
) -> list[ExtractedFile]:
    """Read a cart tar from ``stream`` and publish the verified ``files`` under ``destination``.

    :param stream: a binary file object read sequentially (e.g. ``response.raw``).
    :param files: the requested files; each lands at ``destination/<path>``.
    :param destination: a directory; created if missing. Existing files at the same paths are
        replaced, other content is left alone.
    :param top_dir: the tar's top directory: the download ``filename`` without ``.tar`` in
        Cartd's streaming mode, the cart uid in bundle mode.
    :param on_progress: called with a :class:`Progress` every ``progress_interval`` seconds and at the end.
    :param durable: fsync every file and staging directory before anything moves, and every
        directory that received a rename after (survives a power loss; costs time, most with many
        small files).
    :param staging_key: names this download's staging directories (e.g. the cart uid, the same
        for every attempt of a task): the staging left by a killed earlier attempt with the same
        key is removed first. Staging directories are hidden (``.<name>.pacifica-staging-…``).
    :raises UnsafeMemberError: a member that must not be extracted.
    :raises VerificationError: wrong size or hash, or a requested file did not arrive.
    :raises StreamError: the stream ended early or is not a tar.
    :raises DestinationWriteError: a file could not be written whole (disk full, quota).
    """
    dest = Path(destination).resolve()  # a symlinked destination receives the files in its target
    if dest.exists() and not dest.is_dir():
        raise InvalidInputError(f"destination {dest} exists and is not a directory")
    created_parents = [p for p in dest.parents if not p.exists()]  # innermost first; removed again on failure
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Stage on the destination's filesystem, or the final renames would fail (EXDEV) after the whole
    # download: beside it usually, inside it when it is a mount point.
    beside = not dest.is_dir() or os.stat(dest).st_dev == os.stat(dest.parent).st_dev
    prefix = staging_prefix(dest.name, staging_key)
    staging_parent = dest.parent if beside else dest
    if staging_key:  # without a key, other downloads' staging cannot be told from a dead one's
        remove_stale_staging(staging_parent, prefix)
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=staging_parent))
    keep_staging = published = False
    try:
        extracted = stage_files(
            stream,
            files,
            staging / "files",
            top_dir,
            on_progress=on_progress,
            progress_interval=progress_interval,
            durable=durable,
        )
        publish(staging / "files", dest, staging / REPLACED_DIR, durable=durable)
        published = True
        return extracted
    except RollbackError:
        keep_staging = True  # it holds the only copy of the files the failed publish replaced
        raise
    finally:
        if not keep_staging:
            shutil.rmtree(staging, ignore_errors=True)
            for parent in [] if published else created_parents:
                with contextlib.suppress(OSError):  # not empty: someone else is using it now
                    parent.rmdir()


REPLACED_DIR = "replaced"  # inside a staging directory: files a publish replaced, until it is complete


def staging_prefix(destination_name: str, staging_key: str) -> str:
    """The hidden name prefix of the staging directories of one download (one key, any attempt)."""
    key = hashlib.sha256(staging_key.encode()).hexdigest()[:16] if staging_key else "unkeyed"
    return f".{destination_name[:100]}.pacifica-staging-{key}."


def remove_stale_staging(parent: Path, prefix: str) -> list[Path]:
    """Remove the staging directories under ``parent`` named ``prefix*`` (left by a killed attempt).

    One that holds replaced files is kept: a publish was cut midway and they may be the only copy
    of what it replaced. Returns what was removed.
    """
    removed = []
    with contextlib.suppress(FileNotFoundError), os.scandir(parent) as entries:
        for entry in entries:
            if not entry.name.startswith(prefix) or not entry.is_dir(follow_symlinks=False):
                continue
            replaced = os.path.join(entry.path, REPLACED_DIR)
            if os.path.isdir(replaced) and os.listdir(replaced):
                continue  # RollbackError named it for a person to sort out
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def verify_published(files: Sequence[CartFile], destination: str | os.PathLike[str]) -> list[ExtractedFile] | None:
    """The files if every one is already at ``destination`` with the right size and hash, else None.

    Lets a retried task that had already published its files finish without a new download.
    Sizes are compared first, so a missing or different file costs no hashing.
    """
    dest = Path(destination)
    targets = [(file, dest / file.path) for file in files]
    for file, target in targets:
        if target.is_symlink() or not target.is_file():
            return None
        if file.size is not None and target.stat().st_size != file.size:
            return None
    verified = []
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    for file, target in targets:
        digest = new_hash(file.hashtype)
        with open(target, "rb", buffering=0) as handle:
            while count := handle.readinto(view):
                digest.update(view[:count])
        if digest.hexdigest() != file.hashsum:
            return None
        verified.append(ExtractedFile(file.id, file.path, target.stat().st_size, file.hashtype, file.hashsum))
    return verified


class MemberSink(Protocol):
    """Where :func:`stream_verified_files` puts the bytes of each accepted tar member.

    The shared loop does everything that decides what is accepted: the member checks, the
    hashing and the verification. A sink only writes: :meth:`open` a new file of ``size`` bytes
    (refusing a path it already holds), :meth:`write` every chunk whole, :meth:`close` it once complete, or
    :meth:`discard` it when the download breaks midway. ``where`` ends the error messages ("into
    the staging directory").
    """

    where: str

    def open(self, relative: str, size: int) -> Any: ...

    def write(self, handle: Any, chunk: memoryview) -> None: ...

    def close(self, handle: Any) -> None: ...

    def discard(self, handle: Any) -> None: ...


class _LocalSink:
    """Files under a local staging directory, written with os-level calls: a file object per
    member costs more than the hashing for small files."""

    where = "into the staging directory"

    def __init__(self, root: Path, durable: bool) -> None:
        self._root = str(root)
        self._durable = durable
        self._made_dirs = {""}

    def open(self, relative: str, size: int) -> int:
        parent, _, _ = relative.rpartition("/")
        if parent not in self._made_dirs:
            os.makedirs(self._root + "/" + parent, exist_ok=True)
            self._made_dirs.add(parent)
        return os.open(self._root + "/" + relative, _CREATE_FLAGS, 0o666)

    def write(self, fd: int, chunk: memoryview) -> None:
        # write() may write less than it was given (a disk nearly full): the rest must be
        # written, or the error seen, never a short file verified.
        written = os.write(fd, chunk)
        while written != len(chunk):
            if not written:
                raise DestinationWriteError("the filesystem took no more bytes; nothing was published")
            chunk = chunk[written:]
            written = os.write(fd, chunk)

    def close(self, fd: int) -> None:
        try:
            if self._durable:
                os.fsync(fd)
        finally:
            os.close(fd)

    def discard(self, fd: int) -> None:
        os.close(fd)  # the staging directory is removed whole


def stage_files(
    stream: Readable,
    files: Sequence[CartFile],
    staging: Path,
    top_dir: str,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    progress_interval: float = 5.0,
    durable: bool = False,
) -> list[ExtractedFile]:
    """Write the requested files from the tar ``stream`` into ``staging``, verifying each one."""
    staging.mkdir(parents=True, exist_ok=False)
    extracted = stream_verified_files(
        stream,
        files,
        top_dir,
        _LocalSink(staging, durable),
        on_progress=on_progress,
        progress_interval=progress_interval,
    )
    if durable:  # the files' names live in their directories: those must reach the disk too
        for directory, _, _ in os.walk(staging):
            _fsync_path(directory)
    return extracted


def stream_verified_files(
    stream: Readable,
    files: Sequence[CartFile],
    top_dir: str,
    sink: MemberSink,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    progress_interval: float = 5.0,
) -> list[ExtractedFile]:
    """Check every member of the tar ``stream``, hand the requested files to ``sink`` and verify them.

    Shared by every destination, so that what is accepted never depends on where it goes: only
    regular files and directories under ``top_dir``, each requested file once, with the size
    and hash Pacifica gave; every requested file must arrive. Returns the files in the order of
    ``files``; the caller publishes them (and removes what ``sink`` wrote when this raises).

    :raises UnsafeMemberError: a member that must not be extracted.
    :raises VerificationError: wrong size or hash, or a requested file did not arrive.
    :raises StreamError: the stream ended early or is not a tar.
    :raises DestinationWriteError: the sink could not write a file whole.
    """
    expected = {f.path: f for f in files}
    if len(expected) != len(files):
        raise InvalidInputError("the requested files have duplicate paths")
    directories = parent_directories(expected)
    if not top_dir or "/" in top_dir or top_dir in (".", ".."):
        raise InvalidInputError(f"invalid tar top directory {top_dir!r}")

    done: dict[str, ExtractedFile] = {}
    bytes_done = 0
    sizes = [f.size for f in files]
    bytes_total = sum(s for s in sizes if s is not None) if None not in sizes else None
    started = last_report = time.monotonic()

    def report(force: bool = False) -> None:
        nonlocal last_report
        now = time.monotonic()
        if on_progress and (force or now - last_report >= progress_interval):
            last_report = now
            on_progress(Progress(len(done), len(files), bytes_done, bytes_total, now - started))

    # bound once: this loop runs per member, and for small files its overhead is the cost
    sink_open, sink_write, sink_close, sink_discard = sink.open, sink.write, sink.close, sink.discard
    writing = ""  # the file being written, for a write error's message
    prefetcher = _Prefetcher(stream)
    try:
        reader = TarStreamReader(_GuardedStream(prefetcher), CHUNK_SIZE)
        for member in reader:
            relative = _member_path(member, top_dir)
            if member.isdir():
                if relative and relative not in directories:
                    raise UnsafeMemberError(f"tar member {member.name!r} is a directory that was not requested")
                continue
            if member.type not in _PLAIN_FILE_TYPES:
                kind = _MEMBER_KINDS.get(member.type, f"member of type {member.type!r}")
                raise UnsafeMemberError(f"tar member {member.name!r} is a {kind}; only regular files are accepted")
            wanted = expected.get(relative)
            if wanted is None:
                raise UnsafeMemberError(f"tar member {member.name!r} was not requested")
            if relative in done:
                raise UnsafeMemberError(f"tar member {member.name!r} appears twice")
            if wanted.size is not None and member.size != wanted.size:
                raise VerificationError(
                    f"file {wanted.path!r} (id {wanted.id!r}) is {member.size} bytes in the cart, "
                    f"Pacifica said {wanted.size}"
                )
            writing = relative
            digest = new_hash(wanted.hashtype)
            handle = sink_open(relative, member.size)
            try:
                for chunk in reader.data():
                    digest.update(chunk)
                    sink_write(handle, chunk)
                    bytes_done += len(chunk)
                    report()
            except BaseException:
                with contextlib.suppress(Exception):  # the first error is the one to report
                    sink_discard(handle)
                raise
            sink_close(handle)
            if digest.hexdigest() != wanted.hashsum:
                raise VerificationError(
                    f"file {wanted.path!r} (id {wanted.id!r}) has {wanted.hashtype} {digest.hexdigest()}, "
                    f"Pacifica said {wanted.hashsum}"
                )
            done[relative] = ExtractedFile(wanted.id, wanted.path, member.size, wanted.hashtype, wanted.hashsum)
            report()
    except FileExistsError as err:  # two names that normalise to one path
        raise UnsafeMemberError(f"tar member written twice: {err.filename or writing!r}") from err
    except BackgroundWriteError as err:  # names its own object: the file being handed over did not fail
        raise DestinationWriteError(f"could not write {sink.where}: {err}") from err
    except DestinationWriteError as err:
        raise DestinationWriteError(f"could not write file {writing!r} {sink.where}: {err}") from err
    except OSError as err:  # the network side's errors are StreamErrors: this is the destination
        raise DestinationWriteError(
            f"could not write file {writing!r} {sink.where}: {err.strerror or err}; nothing was published"
        ) from err
    finally:
        prefetcher.close()

    missing = [f.path for f in files if f.path not in done]
    if missing:
        shown = ", ".join(repr(p) for p in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise VerificationError(f"{len(missing)} requested file(s) did not arrive: {shown}")
    report(force=True)
    return [done[f.path] for f in files]


def publish(staging: Path, destination: Path, backup_dir: Path, *, durable: bool = False) -> None:
    """Move the verified tree ``staging`` into ``destination``: all of it, or nothing.

    A destination that does not exist yet receives the whole tree in one rename. Otherwise the
    tree is merged: a subtree the destination lacks moves with one rename, a file the destination
    already has is moved to ``backup_dir`` and replaced. Conflicts are looked for before anything
    moves; a directory that appears meanwhile (another task publishing into the same destination)
    is merged into; on any failure midway every move is undone.
    """
    if os.path.lexists(destination):
        _check_merge(str(staging), str(destination), "")
    undo: list[Callable[[], None]] = []
    moved_into: set[str] = set()  # directories that received a rename
    try:
        _move_tree(str(staging), str(destination), "", str(backup_dir), undo, moved_into)
    except BaseException as err:
        stuck: list[OSError] = []
        for action in reversed(undo):
            try:
                action()
            except OSError as undo_err:
                stuck.append(undo_err)
        if stuck:
            raise RollbackError(
                f"publishing into {destination} failed ({type(err).__name__}: {err}) and {len(stuck)} move(s) "
                f"could not be undone (first: {stuck[0]}); the files it replaced are kept in {backup_dir}",
                str(backup_dir.parent),
            ) from err
        raise
    if durable:  # make the renames themselves durable
        for directory in sorted(moved_into):
            _fsync_path(directory)


def _check_merge(source_dir: str, target_dir: str, relative: str) -> None:
    """Raise ``ExtractionError`` if merging ``source_dir`` into ``target_dir`` would hit a conflict."""
    with os.scandir(source_dir) as entries:
        for entry in entries:
            path = f"{relative}{entry.name}"
            target = os.path.join(target_dir, entry.name)
            try:
                existing = os.lstat(target)
            except FileNotFoundError:
                continue  # a new file or a whole new subtree
            if entry.is_dir(follow_symlinks=False):
                if not stat.S_ISDIR(existing.st_mode):  # a file, or a symlink that could lead anywhere
                    raise ExtractionError(f"cannot publish {path!r}: {target} is not a plain directory")
                _check_merge(entry.path, target, f"{path}/")
            elif stat.S_ISDIR(existing.st_mode):
                raise ExtractionError(f"cannot publish {path!r}: {target} is a directory")


def _move_tree(
    source: str,
    target: str,
    relative: str,
    backup_dir: str,
    undo: list[Callable[[], None]],
    moved_into: set[str],
) -> None:
    is_dir = os.path.isdir(source) and not os.path.islink(source)
    if not os.path.lexists(target):
        try:
            os.rename(source, target)  # a file, or a whole subtree in one step
            undo.append(lambda: os.rename(target, source))
            moved_into.add(os.path.dirname(target))
            return
        except OSError as err:
            if not (is_dir and err.errno in (errno.ENOTEMPTY, errno.EEXIST)):
                raise
            # Another publisher created this directory meanwhile: merge into it below.
    existing = os.lstat(target)
    if is_dir:
        if not stat.S_ISDIR(existing.st_mode):
            raise ExtractionError(f"cannot publish {relative!r}: {target} is not a plain directory")
        for name in os.listdir(source):
            _move_tree(
                os.path.join(source, name),
                os.path.join(target, name),
                f"{relative}/{name}".lstrip("/"),
                backup_dir,
                undo,
                moved_into,
            )
        return
    if stat.S_ISDIR(existing.st_mode):
        raise ExtractionError(f"cannot publish {relative!r}: {target} is a directory")
    backup = os.path.join(backup_dir, str(len(undo)))  # keep the replaced file until all is in place
    os.makedirs(backup_dir, exist_ok=True)
    os.replace(target, backup)
    undo.append(lambda: os.replace(backup, target))
    os.replace(source, target)
    undo.append(lambda: os.replace(target, source))
    moved_into.add(os.path.dirname(target))


def _fsync_path(path: str | os.PathLike[str]) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _Prefetcher:
    """Reads the network stream in a background thread, so that receiving overlaps hashing and writing.

    At most ``depth`` chunks wait in the queue, so memory stays flat whatever the cart size. The
    stream is only ever touched by the thread; its errors are raised again in the reader.
    """

    def __init__(self, stream: Readable, chunk_size: int = CHUNK_SIZE, depth: int = 8) -> None:
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._leftover = b""
        self._finished = False
        self._thread = threading.Thread(
            target=self._pump, args=(stream, chunk_size), name="pacifica-cart-reader", daemon=True
        )
        self._thread.start()

    def _pump(self, stream: Readable, chunk_size: int) -> None:
        try:
            while not self._stop.is_set():
                data = stream.read(chunk_size)
                self._put(data)
                if not data:
                    return
        except BaseException as err:  # handed to the reading thread, which raises it
            self._put(err)

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def read(self, size: int = -1) -> bytes:
        if not self._leftover:
            if self._finished:
                return b""
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._finished = True
                raise item
            if not item:
                self._finished = True
                return b""
            self._leftover = item
        if 0 <= size < len(self._leftover):
            data, self._leftover = self._leftover[:size], self._leftover[size:]
        else:
            data, self._leftover = self._leftover, b""
        return data

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        self._thread.join(timeout=1)  # it may sit in a socket read until the caller closes the response


class _GuardedStream:
    """Reads from the network stream; any failure there (reset, timeout) becomes a ``StreamError``."""

    def __init__(self, stream: Readable) -> None:
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        try:
            return self._stream.read(size)
        except ExtractionError:
            raise
        except Exception as err:  # urllib3's ProtocolError and ReadTimeoutError are not OSErrors
            raise StreamError(f"reading the cart stream failed: {type(err).__name__}: {err}") from err


@functools.cache
def _hash_constructor(hashtype: str) -> Callable[[], Any]:
    """``hashlib``'s named constructor (``hashlib.sha1``): cheaper per file than ``hashlib.new(name)``."""
    named = getattr(hashlib, hashtype, None)
    if hashtype in hashlib.algorithms_guaranteed and callable(named):
        return named
    return functools.partial(hashlib.new, hashtype)


def new_hash(hashtype: str) -> Any:
    """A new hash object of ``hashtype`` (any name :func:`hashlib.new` takes)."""
    return _hash_constructor(hashtype)()


def _member_path(member: tarfile.TarInfo, top_dir: str) -> str:
    """The member's path below ``top_dir``, or raise ``UnsafeMemberError``."""
    name = member.name
    if name.startswith("/"):
        raise UnsafeMemberError(f"tar member {name!r} has an absolute path")
    try:
        parts = path_parts(name)
    except ValueError as err:
        raise UnsafeMemberError(f"tar member {name!r} {err}") from None
    if parts[0] != top_dir:
        raise UnsafeMemberError(f"tar member {name!r} is outside the cart's top directory {top_dir!r}")
    return "/".join(parts[1:])
