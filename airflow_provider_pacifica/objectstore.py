"""Verified downloads into object storage (S3 and any other fsspec filesystem).

Plain Python, no Airflow import: it takes an fsspec filesystem and a root path in it
(``bucket/prefix`` for S3). The members of the cart's tar are checked, hashed and verified by the
same loop as local downloads (:func:`~airflow_provider_pacifica.extraction.stream_verified_files`);
this module only decides where the bytes go:

* each file is streamed straight into the store, in parts of ``part_size`` bytes (8 MiB: S3's
  multipart minimum is 5 MiB; s3fs's default 50 MiB buffer would cost ~150 MiB of memory), so
  memory stays flat whatever the cart size. S3 allows 10,000 parts per object: a file bigger than
  ``MAX_PARTS`` (9,000) parts gets parts of ``size / 9,000`` bytes instead (114 MiB for 1 TiB,
  what the upload then buffers), chosen when it is opened; files smaller than a part are
  gathered into batches (at most 4 MiB or 256 files) put concurrently, from a thread that
  overlaps the store's round trips with reading the tar;
* nothing is visible at its final name until every file is verified. On S3, a file of at least
  one part goes straight to its final key as a multipart upload whose CompleteMultipartUpload is
  held back until then (an unfinished upload is invisible, and completing it copies nothing);
  files smaller than a part stay in memory, up to 32 MiB of them, and are put at their final keys
  then; beyond that, and every larger file on other fsspec backends (GCS, Azure, ...), they are
  written under a staging prefix named from the cart uid and the attempt
  (``<root>/.pacifica-staging-<key>/<attempt>/``) and copied into place (server-side on S3).
  Small files are not held as multipart uploads: one PUT costs fewer requests than three
  multipart calls each. A later attempt finds what a killed one left by name: the staging
  prefix, and unfinished uploads to the keys of this download's files;
* only the directories the files go into are listed (to see which objects exist), never the
  whole root, which many downloads may share;
* the manifest object ``<root>/.pacifica-manifest-<cart uid>.json`` is written LAST: it is the
  commit marker. A download without it did not finish, whatever objects it left;
* on any failure what was written is removed (staging objects, multipart uploads aborted, its
  manifest if its PUT arrived, objects already put into place that were not there before, unless
  a later attempt of the same download began meanwhile: they are its own from then on);
* a retry finds the committed manifest, checks the objects still exist with the right sizes, and
  does not download again (:func:`verify_published_objects`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import queue
import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from airflow_provider_pacifica.exceptions import BackgroundWriteError, DestinationWriteError, InvalidInputError
from airflow_provider_pacifica.extraction import ExtractedFile, stream_verified_files

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from fsspec import AbstractFileSystem

    from airflow_provider_pacifica.cloudevents import CartFile
    from airflow_provider_pacifica.extraction import Progress
    from airflow_provider_pacifica.tarstream import Readable

PART_SIZE = 8 << 20
BATCH_BYTES = 4 << 20  # small files put together, at most this many bytes...
BATCH_FILES = 256  # ...and files per batch (the queue holds at most 8 batches)
HELD_BYTES = 32 << 20  # small files kept in memory until all are verified, then put in place directly
MIN_PART_SIZE = 5 << 20  # S3 refuses smaller parts (but the last)
MAX_PARTS = 9_000  # S3 allows 10,000 parts per upload: a file over 9,000 parts gets bigger parts
LISTINGS_AT_ONCE = 16  # directories listed concurrently when checking which objects exist
ABORT_WAIT = 120.0  # seconds a failed download waits for the upload thread's request in flight
MANIFEST_PREFIX = ".pacifica-manifest-"
STAGING_PREFIX = ".pacifica-staging-"
MANIFEST_FORMAT = 1
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

log = logging.getLogger(__name__)


def store_root(fs: AbstractFileSystem, root: str) -> str:
    """``root`` as ``fs`` names it (no protocol, no trailing ``/``); refuses an empty one."""
    path = fs._strip_protocol(str(root)).rstrip("/")
    if not path:
        raise InvalidInputError(f"object storage destination {root!r} names no bucket or path")
    return path


def object_url(fs: AbstractFileSystem, path: str) -> str:
    """The URL of ``path`` in ``fs`` (``s3://bucket/key``), what ``ObjectStoragePath`` opens."""
    return fs.unstrip_protocol(path)


def manifest_path(root: str, cart_key: str) -> str:
    """Where the manifest (commit marker) of the download keyed ``cart_key`` lives under ``root``."""
    name = _UNSAFE.sub("_", cart_key).strip("._")[:150] or "unkeyed"
    return f"{root}/{MANIFEST_PREFIX}{name}.json"


def staging_path(root: str, cart_key: str) -> str:
    """The staging prefix of the download keyed ``cart_key``: each attempt stages under its own
    name in it, and the start of an attempt removes everything in it (a killed attempt's)."""
    key = hashlib.sha256(cart_key.encode()).hexdigest()[:16] if cart_key else "unkeyed"
    return f"{root}/{STAGING_PREFIX}{key}"


def _is_s3(fs: AbstractFileSystem) -> bool:
    """Whether ``fs`` speaks S3's multipart API (s3fs), for uploads held back until all are verified."""
    return callable(getattr(fs, "call_s3", None)) and callable(getattr(fs, "split_path", None))


class _DeferredUpload:
    """A multipart upload straight to a file's final key, completed only by :meth:`complete`.

    Until then the object does not exist for any reader; :meth:`discard` aborts it. Parts are
    ``part_size`` bytes or a little more (one buffer of the tar's chunks); the last may be smaller.
    """

    def __init__(self, fs: AbstractFileSystem, path: str, part_size: int) -> None:
        self.path = path
        self._fs = fs
        self._bucket, self._key, _ = fs.split_path(path)
        self._part_size = part_size
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._upload_id: str | None = None
        self.completed = False

    def _call(self, method: str, **kwargs: Any) -> Any:
        return self._fs.call_s3(method, Bucket=self._bucket, Key=self._key, **kwargs)

    def write(self, chunk: memoryview) -> None:
        self._buffer += chunk
        if len(self._buffer) >= self._part_size:
            self._send()

    def _send(self) -> None:
        if self._upload_id is None:
            self._upload_id = self._call("create_multipart_upload")["UploadId"]
        number = len(self._parts) + 1
        answer = self._call("upload_part", UploadId=self._upload_id, PartNumber=number, Body=bytes(self._buffer))
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        self._buffer = bytearray()

    def close(self) -> None:
        if self._buffer or not self._parts:
            self._send()

    def complete(self) -> None:
        self._call("complete_multipart_upload", UploadId=self._upload_id, MultipartUpload={"Parts": self._parts})
        self.completed = True

    def discard(self) -> None:
        if self._upload_id is not None and not self.completed:
            upload_id, self._upload_id = self._upload_id, None
            self._call("abort_multipart_upload", UploadId=upload_id)


class _SmallFile:
    """A file smaller than a part: kept in memory, then uploaded with others in one concurrent batch."""

    __slots__ = ("data", "path", "relative")

    def __init__(self, path: str, relative: str) -> None:
        self.path = path
        self.relative = relative
        self.data = bytearray()


class _StoreSink:
    """Files under the staging prefix (or, on S3, held-back multipart uploads to their final keys).

    The uploads run in a thread of their own, fed through a bounded queue: the store's round
    trips overlap with reading and hashing the tar instead of stalling them (memory: at most
    ``depth`` items in the queue, one part per file being written). Files smaller than a part are
    gathered into batches of at most ``BATCH_BYTES``/``BATCH_FILES`` and put concurrently
    (``fs.pipe``): one round trip at a time per small file would make thousands of them slow. The
    first ``HELD_BYTES`` of small files are not staged at all: they stay in memory (``held``) and
    are put at their final keys once every file is verified, which saves a copy per file. The
    thread's first error is raised at the next write, close or :meth:`finish`; after it the thread
    only drains.
    """

    def __init__(self, fs: AbstractFileSystem, staging: str, root: str, part_size: int, depth: int = 8) -> None:
        self.where = f"into {object_url(fs, staging)}"
        self._fs = fs
        self._staging = staging
        self._root = root
        self._part_size = part_size
        self._s3 = _is_s3(fs)
        self.deferred: dict[str, _DeferredUpload] = {}  # relative path -> upload held back until all are verified
        self._opened: set[str] = set()
        self._handles: list[Any] = []  # every file opened, to abort what is unfinished on failure
        self._batch: dict[str, bytes] = {}  # small files waiting to be put together
        self._batch_bytes = 0
        self.held: dict[str, bytes] = {}  # relative path -> content, put in place after verification
        self._held_bytes = 0
        self._queue: queue.Queue[tuple[str, Any, Any] | None] = queue.Queue(maxsize=depth)
        self._error: tuple[str, BaseException] | None = None
        self._thread = threading.Thread(target=self._upload, name="pacifica-store-upload", daemon=True)
        self._thread.start()

    def _upload(self) -> None:
        while (item := self._queue.get()) is not None:
            action, handle, chunk = item
            if self._error is not None:
                continue  # drain, so the reader never blocks on a full queue
            try:
                if action == "write":
                    handle.write(chunk)  # uploads a part whenever part_size bytes are buffered
                elif action == "close":
                    handle.close()  # the last part and CompleteMultipartUpload
                else:
                    self._fs.pipe(handle)  # a batch of small files, {path: bytes}, put concurrently
            except BaseException as err:
                where = f"one of {len(handle)} files from {next(iter(handle))}" if action == "pipe" else handle.path
                self._error = (str(where), err)

    def _raise_error(self) -> None:
        if self._error is None:
            return
        path, err = self._error
        reason = (err.strerror or str(err)) if isinstance(err, OSError) else f"{type(err).__name__}: {err}"
        raise BackgroundWriteError(f"{reason} ({path}); nothing was published") from err

    def _put(self, item: tuple[str, Any, Any] | None) -> None:
        while True:
            self._raise_error()
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    raise DestinationWriteError("the upload thread stopped") from None

    def open(self, relative: str, size: int) -> Any:
        if relative in self._opened:  # an object store would silently overwrite it
            raise FileExistsError(17, "file exists", relative)
        self._opened.add(relative)
        self._raise_error()
        if size < self._part_size:
            return _SmallFile(f"{self._staging}/{relative}", relative)
        # S3 allows 10,000 parts: past 9,000 parts of part_size (~70 GiB at 8 MiB) a file's parts
        # grow to size/9,000 (114 MiB for 1 TiB), the memory it buffers with them.
        part_size = max(self._part_size, -(-size // MAX_PARTS))
        if self._s3:
            upload = _DeferredUpload(self._fs, f"{self._root}/{relative}", part_size)
            self.deferred[relative] = upload
            self._handles.append(upload)
            return upload
        try:  # no request yet: the parts go up from the thread
            handle = self._fs.open(f"{self._staging}/{relative}", "wb", block_size=part_size)
        except OSError:
            raise
        except Exception as err:  # botocore's and aiohttp's errors are not all OSErrors
            raise DestinationWriteError(f"{type(err).__name__}: {err}") from err
        self._handles.append(handle)
        return handle

    def write(self, handle: Any, chunk: memoryview) -> None:
        if type(handle) is _SmallFile:
            handle.data += chunk
        else:
            self._put(("write", handle, chunk))  # the chunk is a slice of an immutable read: safe to hand over

    def close(self, handle: Any) -> None:
        if type(handle) is not _SmallFile:
            self._put(("close", handle, None))
            return
        if self._held_bytes + len(handle.data) <= HELD_BYTES:
            self.held[handle.relative] = bytes(handle.data)
            self._held_bytes += len(handle.data)
            return
        self._batch[handle.path] = bytes(handle.data)
        self._batch_bytes += len(handle.data)
        if self._batch_bytes >= BATCH_BYTES or len(self._batch) >= BATCH_FILES:
            self._flush_batch()

    def _flush_batch(self) -> None:
        if self._batch:
            batch, self._batch, self._batch_bytes = self._batch, {}, 0
            self._put(("pipe", batch, None))

    def discard(self, handle: Any) -> None:
        """Nothing here: :meth:`abort` aborts every unfinished upload once the thread has stopped."""

    def finish(self) -> None:
        """Wait for every upload to complete; raise the first error."""
        self._flush_batch()
        self._put(None)
        self._thread.join()
        try:
            self._raise_error()
        except DestinationWriteError as err:
            raise DestinationWriteError(f"could not write {self.where}: {err}") from err.__cause__

    def abort(self) -> None:
        """Stop the thread and abort every unfinished upload (s3fs: AbortMultipartUpload)."""
        if self._thread.is_alive():
            self._error = self._error or ("", RuntimeError("aborted"))  # the thread drains from here
            with contextlib.suppress(queue.Empty):
                while True:  # make room for the end marker
                    self._queue.get_nowait()
            self._queue.put(None)
            self._thread.join(ABORT_WAIT)
            if self._thread.is_alive():  # a hung request: the task must still end
                log.warning(
                    "The upload thread did not stop within %.0f s (a store that does not answer); "
                    "aborting its uploads without it",
                    ABORT_WAIT,
                )
        for handle in self._handles:
            if isinstance(handle, _DeferredUpload):
                with contextlib.suppress(Exception):
                    handle.discard()  # AbortMultipartUpload, unless it was completed
                continue
            if getattr(handle, "closed", True):
                continue
            with contextlib.suppress(Exception):  # a clean-up must not hide the failure it follows
                discard = getattr(handle, "discard", None)
                if discard is not None:  # fsspec's buffered files: s3fs aborts the multipart upload
                    discard()
                    handle.closed = True  # never completed by a later close() (or __del__)
                else:
                    handle.close()  # the staging prefix is removed whole


def download_to_store(
    stream: Readable,
    files: Sequence[CartFile],
    fs: AbstractFileSystem,
    root: str,
    top_dir: str,
    *,
    cart_key: str,
    conn_id: str | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    progress_interval: float = 5.0,
    part_size: int = PART_SIZE,
) -> list[ExtractedFile]:
    """Read a cart tar from ``stream`` and publish the verified ``files`` under ``root`` in ``fs``.

    :param stream: a binary file object read sequentially (e.g. ``response.raw``).
    :param files: the requested files; each lands at ``<root>/<path>``.
    :param fs: the fsspec filesystem (``ObjectStoragePath(...).fs``).
    :param root: the destination in ``fs``: ``bucket/prefix`` or ``s3://bucket/prefix``.
    :param top_dir: the tar's top directory (see :func:`~airflow_provider_pacifica.extraction.extract_cart`).
    :param cart_key: names the staging prefix and the manifest: the same for every attempt of
        one download (the original cart uid). A killed attempt's staging is removed first.
    :param conn_id: the Airflow connection of the store, recorded in the manifest for readers.
    :param on_progress: called with a :class:`~airflow_provider_pacifica.extraction.Progress`
        every ``progress_interval`` seconds and at the end.
    :param part_size: bytes buffered per uploaded part (at least 5 MiB, S3's minimum).
    :raises UnsafeMemberError: a member that must not be extracted.
    :raises VerificationError: wrong size or hash, or a requested file did not arrive.
    :raises StreamError: the stream ended early or is not a tar.
    :raises DestinationWriteError: the store refused a write, a copy or the manifest.
    """
    if part_size < MIN_PART_SIZE:
        raise InvalidInputError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum), got {part_size}")
    if not cart_key:
        raise InvalidInputError("cart_key must name the download (the cart uid)")
    root = store_root(fs, root)
    every_attempt = staging_path(root, cart_key)
    remove_stale_staging(fs, every_attempt)  # an earlier attempt's, killed (or a zombie: it fails from here)
    if _is_s3(fs):  # a killed attempt's unfinished uploads to this download's keys
        _abort_multipart_uploads(fs, root, keys={f"{root}/{file.path}" for file in files})
    # Each attempt stages under a name of its own, and marks that it is the newest with an object
    # that the next attempt's start removes (with all the staging above): two attempts running at
    # once (a zombie and its retry) never remove each other's staging, and one that fails removes
    # the objects it put in place only while its marker is still there (see _remove_added).
    attempt = uuid.uuid4().hex
    staging = f"{every_attempt}/{attempt[:16]}"
    newest = f"{every_attempt}/{attempt[:16]}.newest"
    try:
        fs.pipe_file(newest, b"")
    except Exception as err:
        raise DestinationWriteError(
            f"could not write {object_url(fs, newest)}: {type(err).__name__}: {err}; nothing was published"
        ) from err
    copied: list[str] = []
    published = False
    sink = _StoreSink(fs, staging, root, part_size)
    try:
        extracted = stream_verified_files(
            stream,
            files,
            top_dir,
            sink,
            on_progress=on_progress,
            progress_interval=progress_interval,
        )
        sink.finish()  # an upload that fails after its file's turn in the loop is raised here
        _publish(fs, staging, root, extracted, sink, copied)
        write_manifest(fs, root, cart_key, extracted, conn_id, attempt=attempt)
        published = True
        return extracted
    finally:
        # Each step on its own, so that one failing does not skip the next; none may hide the
        # outcome. What a step leaves is named in the log; a later attempt removes it.
        _clean_up(sink.abort, f"unfinished multipart uploads in {object_url(fs, root)}")
        if not published:  # the commit marker first: it must never list objects that are gone
            manifest = manifest_path(root, cart_key)
            _clean_up(functools.partial(_remove_own_manifest, fs, manifest, attempt), object_url(fs, manifest))
            _clean_up(functools.partial(_remove_added, fs, root, copied, newest), _named(fs, copied))
        _clean_up(functools.partial(_remove_prefix, fs, staging), f"the staging {object_url(fs, staging)}")
        _clean_up(functools.partial(_remove_marker, fs, newest), object_url(fs, newest))


def _remove_marker(fs: AbstractFileSystem, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # a later attempt's start removed it already
        fs.rm_file(path)


def _remove_added(fs: AbstractFileSystem, root: str, paths: list[str], newest: str) -> None:
    """Remove the objects at ``paths`` that a failed attempt added, unless a later attempt began.

    Every attempt of a download writes the same bytes to the same keys, so no object (nor its
    ETag) tells whose it is. The rule is by time instead: a later attempt's start removes this
    one's ``newest`` marker, and from then on the keys are that attempt's to publish; removing
    them could pull files from under its manifest. Left in place, they are overwritten by it.
    """
    fs.invalidate_cache(newest.rpartition("/")[0])
    if not fs.exists(newest):
        log.info("A later attempt began: leaving the objects this one put in place to it")
        return
    _remove(fs, root, paths)


def _clean_up(step: Callable[[], object], what: str) -> None:
    """Run one clean-up step; a failure is logged, naming ``what`` it left, never raised."""
    try:
        step()
    except Exception as err:
        log.warning("Could not remove %s: %s: %s", what, type(err).__name__, err)


def _named(fs: AbstractFileSystem, paths: Sequence[str]) -> str:
    shown = ", ".join(object_url(fs, path) for path in paths[:5])
    return f"the objects this failed attempt added, among {shown}{', ...' if len(paths) > 5 else ''}"


def _publish(
    fs: AbstractFileSystem,
    staging: str,
    root: str,
    extracted: Sequence[ExtractedFile],
    sink: _StoreSink,
    copied: list[str],
) -> None:
    """Put every verified file into place: copy it from the staging prefix (server-side on S3),
    complete its held-back multipart upload, or put it from memory.

    Objects that were not there before are recorded in ``copied``, so that a failure midway
    removes them again; one that replaced an earlier object stays (its old content is gone).
    """
    existing = _object_sizes(fs, [f"{root}/{file.path}" for file in extracted])
    copied.extend(target for file in extracted if (target := f"{root}/{file.path}") not in existing)
    deferred, held = sink.deferred, sink.held
    staged = [file.path for file in extracted if file.path not in deferred and file.path not in held]
    try:
        if staged:  # s3fs copies concurrently, in batches
            fs.copy([f"{staging}/{path}" for path in staged], [f"{root}/{path}" for path in staged])
        for upload in deferred.values():
            upload.complete()
        if held:  # concurrently too
            fs.pipe({f"{root}/{path}": data for path, data in held.items()})
    except Exception as err:
        raise DestinationWriteError(
            f"could not put the verified files into place in {object_url(fs, root)}: {type(err).__name__}: {err}; "
            "the files it had added were removed"
        ) from err


def write_manifest(
    fs: AbstractFileSystem,
    root: str,
    cart_key: str,
    extracted: Sequence[ExtractedFile],
    conn_id: str | None,
    *,
    attempt: str | None = None,
) -> str:
    """Write the commit marker: the manifest object listing every published file with its URL.

    ``attempt`` names the attempt that writes it, so that its failure removes its own manifest
    only (a PUT can reach the store although its answer is lost), never an earlier one's.
    """
    path = manifest_path(root, cart_key)
    document = {
        "format": MANIFEST_FORMAT,
        "cart": cart_key,
        "attempt": attempt,
        "destination": object_url(fs, root),
        "conn_id": conn_id,
        "files": [{**file.to_dict(), "url": object_url(fs, f"{root}/{file.path}")} for file in extracted],
    }
    try:
        fs.pipe_file(path, json.dumps(document, ensure_ascii=False).encode())
    except Exception as err:
        raise DestinationWriteError(
            f"could not write the manifest {object_url(fs, path)}: {type(err).__name__}: {err}; nothing was published"
        ) from err
    return path


def _remove_own_manifest(fs: AbstractFileSystem, path: str, attempt: str) -> None:
    """Remove the manifest at ``path`` if ``attempt`` wrote it (its PUT arrived, its answer did not)."""
    fs.invalidate_cache(path.rpartition("/")[0])
    try:
        document = json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return
    except ValueError:  # not one of ours to judge; a later attempt overwrites it
        return
    if isinstance(document, dict) and document.get("attempt") == attempt:
        fs.rm_file(path)


def verify_published_objects(
    fs: AbstractFileSystem, root: str, files: Sequence[CartFile], cart_key: str
) -> list[ExtractedFile] | None:
    """The files if a finished download of ``cart_key`` published them all under ``root``, else None.

    Its manifest must list exactly these files with the same hashes, and each object must still
    exist with the right size (nothing is read back: the manifest attests the hashes were verified
    when the objects were written).
    """
    root = store_root(fs, root)
    fs.invalidate_cache(root)
    try:
        document = json.loads(fs.cat_file(manifest_path(root, cart_key)))
        listed = {entry["path"]: entry for entry in document["files"]}
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    if len(listed) != len(files):
        return None
    for file in files:
        entry = listed.get(file.path)
        if (
            entry is None
            or entry.get("hashtype") != file.hashtype
            or entry.get("hashsum") != file.hashsum
            or (file.size is not None and entry.get("size") != file.size)
        ):
            return None
    present = _object_sizes(fs, [f"{root}/{file.path}" for file in files])
    verified = []
    for file in files:
        entry = listed[file.path]
        if present.get(f"{root}/{file.path}") != entry["size"]:
            return None
        verified.append(ExtractedFile(file.id, file.path, int(entry["size"]), file.hashtype, file.hashsum))
    return verified


def remove_stale_staging(fs: AbstractFileSystem, staging: str) -> None:
    """Remove what a killed attempt left under ``staging``: its objects and its multipart uploads."""
    _abort_multipart_uploads(fs, staging)
    fs.invalidate_cache(staging)
    if fs.exists(staging):
        log.info("Removing the staging %s of an earlier attempt", object_url(fs, staging))
        _remove_prefix(fs, staging)


def _abort_multipart_uploads(fs: AbstractFileSystem, prefix: str, keys: set[str] | None = None) -> None:
    """Abort the unfinished multipart uploads under ``prefix`` (only those to ``keys``, paths as
    ``fs`` names them, when given). S3 only: other stores have none."""
    if not _is_s3(fs):
        return
    bucket, key, _ = fs.split_path(prefix)
    under = f"{key}/" if key else ""  # a bare bucket: every key in it
    wanted = None if keys is None else {tuple(fs.split_path(path)[:2]) for path in keys}
    marker: dict[str, str] = {}
    while True:
        answer = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=under, **marker)
        for upload in answer.get("Uploads") or []:
            name = upload.get("Key", "")
            if not name.startswith(under):  # a store may ignore Prefix
                continue
            if wanted is None or (bucket, name) in wanted:
                fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=name, UploadId=upload["UploadId"])
        if not answer.get("IsTruncated"):
            return
        marker = {"KeyMarker": answer["NextKeyMarker"], "UploadIdMarker": answer["NextUploadIdMarker"]}


def _remove_prefix(fs: AbstractFileSystem, prefix: str) -> None:
    fs.invalidate_cache(prefix)
    found = fs.find(prefix)
    if found:
        fs.rm(found)
    fs.invalidate_cache(prefix)


def _remove(fs: AbstractFileSystem, root: str, paths: list[str]) -> None:
    """Remove those of ``paths`` that exist (listing their directories, not one request per path)."""
    if not paths:
        return
    present = _object_sizes(fs, paths)
    if present:
        fs.rm(sorted(present))
    fs.invalidate_cache(root)


def _object_sizes(fs: AbstractFileSystem, paths: Sequence[str]) -> dict[str, int]:
    """The size of each of ``paths`` that is an object in ``fs``.

    Only the directories that hold them are listed (not recursively, several at once), never the
    whole destination: one destination may be shared by many downloads, or be a whole bucket.
    The cost is a request per 1,000 objects in each of those directories.
    """
    if not paths:
        return {}
    s3 = _is_s3(fs)
    directories = sorted({path.rpartition("/")[0] for path in paths})
    list_one = functools.partial(_s3_directory if s3 else _directory, fs)
    found: dict[Any, int] = {}
    with ThreadPoolExecutor(max_workers=min(LISTINGS_AT_ONCE, len(directories))) as pool:
        for listing in pool.map(list_one, directories):
            found.update(listing)
    sizes = {}
    for path in paths:
        size = found.get(tuple(fs.split_path(path)[:2]) if s3 else path)
        if size is not None:
            sizes[path] = size
    return sizes


def _directory(fs: AbstractFileSystem, directory: str) -> dict[Any, int]:
    """The objects directly in ``directory``, by path, with their sizes (any fsspec filesystem)."""
    fs.invalidate_cache(directory)
    try:
        entries = fs.ls(directory, detail=True)
    except FileNotFoundError:
        return {}
    return {entry["name"]: int(entry["size"]) for entry in entries if entry.get("type") == "file"}


def _s3_directory(fs: AbstractFileSystem, directory: str) -> dict[Any, int]:
    """The objects directly under ``directory`` in S3, by (bucket, key), with their sizes.

    ListObjectsV2 with a delimiter: s3fs's ``ls`` of a missing directory lists its parent too.
    """
    bucket, key, _ = fs.split_path(directory)
    under = f"{key}/" if key else ""
    found: dict[Any, int] = {}
    token: dict[str, str] = {}
    while True:
        answer = fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=under, Delimiter="/", **token)
        for item in answer.get("Contents") or []:
            found[(bucket, item["Key"])] = int(item["Size"])
        if not answer.get("IsTruncated"):
            return found
        token = {"ContinuationToken": answer["NextContinuationToken"]}
