"""Operator that downloads the files of a Pacifica ingest event through a Cartd cart."""

from __future__ import annotations

import contextlib
import json
import os
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.sdk import BaseOperator, conf
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_provider_pacifica.carts import derive_cart_uid
from airflow_provider_pacifica.cloudevents import (
    CartFile,
    files_from_list,
    files_from_transaction_info,
    parse_cloudevent,
)
from airflow_provider_pacifica.exceptions import (
    CartdTransientError,
    CartFailedError,
    CartLostError,
    CartNotFoundError,
    CartWaitTimeoutError,
    DestinationWriteError,
    ExtractionError,
    InvalidInputError,
    PacificaError,
    RollbackError,
    StreamError,
)
from airflow_provider_pacifica.hooks.cartd import RECREATED_SUFFIX, PacificaCartdHook
from airflow_provider_pacifica.objectstore import manifest_path, object_url
from airflow_provider_pacifica.storage import Destination, StoreDestination, published_files, resolve_destination
from airflow_provider_pacifica.triggers.cartd import CartReadyTrigger

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Context, ObjectStoragePath

    from airflow_provider_pacifica.extraction import ExtractedFile

DIAGNOSE_MAX_FILES = 16  # the default of diagnose_max_files when the wait is not deferred


class PacificaDownloadOperator(BaseOperator):
    """Download files from Pacifica: create a cart, wait for it, stream, verify, publish.

    Give exactly one of ``cloudevent``, ``files`` or ``transaction_info``. The cart is created on
    the worker (Cartd's POST is not idempotent, so never from a trigger) under a uid derived from
    the dag, run, task, map index and file list: a retried task finds its own cart instead of
    staging a second one. The wait defers to :class:`CartReadyTrigger` (unless the cart is
    ready already). The tar is streamed and every file checked against the size and hash
    Pacifica gave before any file is moved to ``destination/<subdir>/<name>``; on failure the
    destination is left as it was. The steps themselves are :class:`PacificaCartdHook` methods;
    this operator decides what follows each outcome: wait, stage again, retry, or fail.

    Returns (XCom) a manifest: ``{"destination", "cart_uid", "file_count", "total_bytes",
    "files": [{"id", "path", "size", "hashtype", "hashsum"}], "event"}``. Above
    ``manifest_max_files`` files the list is written beside the files instead, as JSON in
    ``<destination>/.pacifica-files-<cart uid>.json``, and the manifest holds its path in
    ``"files_path"`` (``batching.manifest_files`` reads either form).

    In object storage (``destination=ObjectStoragePath("s3://bucket/prefix", conn_id="aws_s3")``)
    the files are streamed into the store and verified before any appears at its final name;
    the manifest object ``<destination>/.pacifica-manifest-<cart uid>.json`` is written last (the
    commit marker, see :mod:`airflow_provider_pacifica.objectstore`). The XCom manifest then
    gives ``"destination"`` as a URL, the store's ``"conn_id"``, and each file's ``"url"``, so a
    downstream task opens it with ``ObjectStoragePath(url, conn_id=...)``; a big list is read from
    the manifest object, named by ``"files_url"``.

    :param destination: where to publish (templated): an absolute local directory, on storage
        every worker sees when there are several, or an ``airflow.sdk.ObjectStoragePath``. A
        relative path or a URL given as a string fails the task at once.
    :param cloudevent: a Pacifica ingest CloudEvent, dict or JSON string (templated).
    :param files: a list of ``{"id", "path", "hashtype", "hashsum", "size"}`` dicts (templated).
    :param transaction_info: a Policy transaction-info document (templated).
    :param pacifica_conn_id: the ``pacifica_cartd`` connection (templated).
    :param deferrable: wait for the cart in the triggerer (no worker slot held).
    :param defer_after: deferrable only: seconds to poll on the worker before deferring. A cart
        that is ready sooner (small carts on disk usually are) is downloaded in the same attempt:
        no trigger round trip, and no resumed attempt that races the report of the deferral
        (Airflow 3.3 can fail a finished download then, apache/airflow#72716). 0 defers at once.
    :param poll_interval: seconds between the first status polls; the interval grows by half
        each poll up to ``max_poll_interval``.
    :param max_poll_interval: the cap of the poll interval in seconds.
    :param max_consecutive_failures: deferred only: Cartd faults in a row (unreachable, 503...)
        that the trigger rides through before the task fails with retries.
    :param timeout: seconds to wait for the cart to be ready before failing.
    :param delete_cart: delete the cart (and any re-created or probe cart) from Cartd once the
        files are published, or once the task failed for good.
    :param bundle: ask Cartd for a pre-built tar (bundle mode).
    :param download_attempts: how many times a download is started from the beginning when its
        stream breaks (the only remedy in Cartd's default streaming mode).
    :param max_resumes: with ``bundle=True``, how many times a broken download is resumed with an
        HTTP Range request from the last byte received, before it is restarted.
    :param progress_interval: seconds between progress lines in the task log.
    :param durable: fsync every file, every staging directory and every directory that received
        a rename (slower, most with many small files).
    :param skip_if_present: when every file is already in ``destination`` with the right size and
        hash (a retry after a successful download), return the manifest without downloading.
    :param manifest_max_files: the most files listed in the XCom manifest itself (default 1000,
        about 200 KB); a bigger list goes to a file.
    :param diagnose_max_files: when Cartd fails a cart of at most this many files for good (a
        hash mismatch, not an archive fault), stage each file alone to name the ones that failed;
        0 turns this off. Probing polls from the worker, so the default is 16 without deferral and
        0 with it.
    """

    template_fields: Sequence[str] = (
        "destination",
        "cloudevent",
        "files",
        "transaction_info",
        "pacifica_conn_id",
    )
    template_fields_renderers = {"cloudevent": "json", "files": "json", "transaction_info": "json"}
    ui_color = "#c9e4f2"

    def __init__(
        self,
        *,
        destination: str | os.PathLike[str] | ObjectStoragePath,
        cloudevent: dict[str, Any] | str | None = None,
        files: list[dict[str, Any]] | str | None = None,
        transaction_info: dict[str, Any] | str | None = None,
        pacifica_conn_id: str = PacificaCartdHook.default_conn_name,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        defer_after: float = 10.0,
        poll_interval: float = 5.0,
        max_poll_interval: float = 60.0,
        max_consecutive_failures: int = 10,
        timeout: float | timedelta = timedelta(days=1),
        delete_cart: bool = True,
        bundle: bool = False,
        download_attempts: int = 3,
        progress_interval: float = 5.0,
        diagnose_max_files: int | None = None,
        manifest_max_files: int = 1000,
        max_resumes: int = 5,
        skip_if_present: bool = True,
        durable: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        given = [
            name
            for name, value in (
                ("cloudevent", cloudevent),
                ("files", files),
                ("transaction_info", transaction_info),
            )
            if value is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"{type(self).__name__} needs exactly one of cloudevent, files, transaction_info; got {given or 'none'}"
            )
        self.destination = destination
        self.cloudevent = cloudevent
        self.files = files
        self.transaction_info = transaction_info
        self.pacifica_conn_id = pacifica_conn_id
        self.deferrable = deferrable
        self.defer_after = max(0.0, defer_after)
        self.poll_interval = poll_interval
        self.max_poll_interval = max(max_poll_interval, poll_interval)
        self.max_consecutive_failures = max_consecutive_failures
        self.timeout = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
        self.delete_cart = delete_cart
        self.bundle = bundle
        self.download_attempts = max(1, download_attempts)
        self.progress_interval = progress_interval
        self.diagnose_max_files = (
            diagnose_max_files if diagnose_max_files is not None else 0 if deferrable else DIAGNOSE_MAX_FILES
        )
        self.manifest_max_files = manifest_max_files
        self.max_resumes = max_resumes
        self.skip_if_present = skip_if_present
        self.durable = durable
        self._requested: tuple[list[CartFile], dict[str, Any] | None] | None = None
        self._published: tuple[dict[str, Any], list[dict[str, Any]]] | None = None  # for OpenLineage

    @cached_property
    def hook(self) -> PacificaCartdHook:
        """One hook (one connection lookup, one HTTP session) per execution; closed when it ends."""
        return PacificaCartdHook(pacifica_conn_id=self.pacifica_conn_id)

    # -- inputs ---------------------------------------------------------------------------

    def requested_files(self) -> tuple[list[CartFile], dict[str, Any] | None]:
        """The validated files and, for a CloudEvent, its summary; bad input fails the task at once.

        Parsed once per execution (the inputs are rendered by then): 10,000 records cost ~50 ms.
        """
        if self._requested is None:
            self._requested = self._parse_request()
        return self._requested

    def _parse_request(self) -> tuple[list[CartFile], dict[str, Any] | None]:
        try:
            if self.cloudevent is not None:
                event = parse_cloudevent(self.cloudevent)
                return list(event.files), event.summary()
            if self.transaction_info is not None:
                return files_from_transaction_info(self.transaction_info), None
            return files_from_list(self.files or []), None  # type: ignore[arg-type]  # JSON text is accepted too
        except InvalidInputError as err:
            raise AirflowFailException(f"cannot download: {err}") from err

    def cart_uid_for(self, context: Context, files: Sequence[CartFile]) -> str:
        """A uid stable across retries of this task instance and specific to its file list."""
        ti = context["ti"]
        identity = {
            "dag_id": ti.dag_id,
            "run_id": ti.run_id,
            "task_id": ti.task_id,
            "map_index": getattr(ti, "map_index", -1),
            "files": [f.to_fileid() for f in files],
            "bundle": self.bundle,
        }
        return derive_cart_uid(identity)

    # -- execution ------------------------------------------------------------------------

    @cached_property
    def target(self) -> Destination:
        """The resolved destination (a local directory or a store); a bad one fails the task at once."""
        try:
            return resolve_destination(self.destination)
        except InvalidInputError as err:
            raise AirflowFailException(f"cannot download: {err}") from err

    def execute(self, context: Context) -> dict[str, Any]:
        files, event_summary = self.requested_files()
        target = self.target
        cart_uid = self.cart_uid_for(context, files)
        with contextlib.closing(self.hook) as hook, self._outcomes(hook, cart_uid):
            present = published_files(target, files, _original_uid(cart_uid)) if self.skip_if_present else None
            if present is not None:
                # A retry after the files were published (e.g. the XCom push failed): no second download.
                self.log.info(
                    "All %d file(s) are already published in %s, verified; not downloading",
                    len(files),
                    target,
                )
                self._delete_carts(hook, cart_uid)
                return self._manifest(cart_uid, present, event_summary)
            status = hook.ensure_cart(cart_uid, files, bundle=self.bundle)
            if not status.ready and self.deferrable:
                if not self._ready_soon(hook, cart_uid):
                    self._defer(cart_uid)
                return self._wait_and_download(hook, cart_uid, context, ready=True)
            return self._wait_and_download(hook, cart_uid, context, ready=status.ready)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume after :class:`CartReadyTrigger`: download when ready, fail with Cartd's message otherwise.

        Everything needed comes from the event (its ``cart_uid``) or is derived again: deferral
        kwargs are not relied upon (``dag.test()`` drops them).
        """
        event = event or {"status": "error", "message": "the trigger sent no event"}
        files, _ = self.requested_files()
        cart_uid = str(event.get("cart_uid") or self.cart_uid_for(context, files))
        status, message = event.get("status"), str(event.get("message"))
        with contextlib.closing(self.hook) as hook, self._outcomes(hook, cart_uid):
            if status == "missing":  # Cartd's LRU may purge a cart while it waits
                cart_uid = self._stage_again(hook, cart_uid, f"vanished while waiting: {message}")
                return self._wait_and_download(hook, cart_uid, context, ready=False)
            if status == "error" and event.get("retryable"):  # Cartd unreachable, or an archive fault
                raise CartdTransientError(message)
            if status == "error":
                raise CartFailedError(message)
            if status != "ready":
                raise AirflowFailException(f"cart {cart_uid}: unexpected trigger event {event!r}")
            return self._wait_and_download(hook, cart_uid, context, ready=True)

    def _wait_and_download(self, hook: PacificaCartdHook, cart_uid: str, context: Context, *, ready: bool) -> Any:
        """Wait on the worker unless ``ready``; a cart that vanished is staged once more (deferred again)."""
        while True:
            try:
                if not ready:
                    hook.wait_for_cart(
                        cart_uid,
                        timeout=self.timeout,
                        poll_interval=self.poll_interval,
                        max_poll_interval=self.max_poll_interval,
                    )
                return self._download(hook, cart_uid)
            except CartNotFoundError as err:
                cart_uid = self._stage_again(hook, cart_uid, str(err))
                ready = False

    def _stage_again(self, hook: PacificaCartdHook, cart_uid: str, reason: str) -> str:
        """Re-create a lost cart (``CartLostError`` the second time) and defer to wait for it, if deferrable."""
        files, _ = self.requested_files()
        new_uid = hook.recreate_cart(cart_uid, files, bundle=self.bundle, reason=reason)
        if self.deferrable and not self._ready_soon(hook, new_uid):
            self._defer(new_uid)
        return new_uid

    def _ready_soon(self, hook: PacificaCartdHook, cart_uid: str) -> bool:
        """Whether the cart gets ready within ``defer_after`` seconds (polled here, on the worker)."""
        if not self.defer_after:
            return False
        try:
            hook.wait_for_cart(
                cart_uid,
                timeout=self.defer_after,
                poll_interval=min(self.poll_interval, 1.0),
                max_poll_interval=self.poll_interval,
            )
        except (CartWaitTimeoutError, CartNotFoundError):  # the trigger waits from here (and sees a purge)
            return False
        return True

    def _download(self, hook: PacificaCartdHook, cart_uid: str) -> dict[str, Any]:
        files, event_summary = self.requested_files()
        extracted = hook.download_cart(
            cart_uid,
            files,
            self.target,
            bundle=self.bundle,
            attempts=self.download_attempts,
            max_resumes=self.max_resumes,
            on_progress=lambda progress: self.log.info("Cart %s: %s", cart_uid, progress),
            progress_interval=self.progress_interval,
            durable=self.durable,
            staging_key=_original_uid(cart_uid),  # every attempt finds the staging of a killed one
        )
        manifest = self._manifest(cart_uid, extracted, event_summary)
        self.log.info(
            "Published %d verified file(s), %d bytes, to %s",
            manifest["file_count"],
            manifest["total_bytes"],
            manifest["destination"],
        )
        self._delete_carts(hook, cart_uid)
        return manifest

    def _defer(self, cart_uid: str) -> NoReturn:
        self.defer(
            trigger=CartReadyTrigger(
                cart_uid=cart_uid,
                pacifica_conn_id=self.pacifica_conn_id,
                poll_interval=self.poll_interval,
                max_poll_interval=self.max_poll_interval,
                max_consecutive_failures=self.max_consecutive_failures,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage | None:
        """Lineage of the finished download: the Pacifica transaction (or cart) read, the destination
        written, with its file count, bytes and checksums (see :mod:`airflow_provider_pacifica.openlineage`)."""
        if self._published is None:
            return None
        from airflow_provider_pacifica.openlineage import download_lineage

        manifest, files = self._published
        return download_lineage(manifest, self.hook.config.base_url, files)

    def on_kill(self) -> None:
        """Stop a running download (the task was killed or timed out): its stream is closed, its
        staging removed, nothing published; the cart stays for a retry."""
        if "hook" in self.__dict__:  # made when an execution began
            self.hook.cancel()

    # -- outcomes -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _outcomes(self, hook: PacificaCartdHook, cart_uid: str) -> Any:
        """Turn the provider's errors into task outcomes: fail for good, or fail with retries.

        What a retry can mend (Cartd unreachable, an archive fault, a broken stream, a full disk)
        keeps the cart for the retry to reuse; what it cannot (wrong data, hostile tars, a cart
        lost twice) fails at once and deletes the carts.
        """
        try:
            yield
        except CartFailedError as err:
            if err.transient:
                raise AirflowException(f"{err} (a retry stages the cart again)") from err
            message = self._name_culprits(hook, cart_uid, str(err))
            self._delete_carts(hook, cart_uid)
            raise AirflowFailException(message) from err
        except (CartLostError, InvalidInputError) as err:
            self._delete_carts(hook, cart_uid)
            raise AirflowFailException(str(err)) from err
        except RollbackError as err:  # a person must put the kept files back: a retry must not touch them
            raise AirflowFailException(f"cart {cart_uid}: {err}") from err
        except (StreamError, DestinationWriteError) as err:
            raise AirflowException(f"cart {cart_uid}: {err}; {self.target} was left unchanged") from err
        except ExtractionError as err:  # hostile or wrong tar, or a destination that conflicts
            self._delete_carts(hook, cart_uid)
            raise AirflowFailException(f"cart {cart_uid}: {err}; {self.target} was left unchanged") from err
        except PacificaError as err:  # Cartd unreachable, a wait that timed out, an unexpected answer
            raise AirflowException(str(err)) from err

    def _name_culprits(self, hook: PacificaCartdHook, cart_uid: str, message: str) -> str:
        """Cartd's message, with the files that broke the cart named when they can be found.

        One bad file fails the whole cart and Cartd does not say which. For carts of up to
        ``diagnose_max_files`` files each file is staged alone in a probe cart to find out;
        bigger carts are not re-staged (tape recalls are expensive).
        """
        files, _ = self.requested_files()
        if len(files) == 1:
            culprits = [(files[0], message)]
        elif 1 < len(files) <= self.diagnose_max_files:
            self.log.info("Cart %s failed; staging its %d files one by one to find the culprit", cart_uid, len(files))
            try:
                culprits = hook.find_failed_files(_original_uid(cart_uid), files, timeout=min(self.timeout, 300.0))
            except PacificaError as err:  # the diagnosis is a courtesy; Cartd's own message stands
                self.log.warning("Could not probe the files of cart %s: %s", cart_uid, err)
                culprits = []
        else:
            culprits = []
        if culprits:
            named = "; ".join(f"{f.path!r} (id {f.id!r}): {why}" for f, why in culprits)
            return f"{message}; failing file(s): {named}"
        return f"{message}; the cart held {len(files)} files, none was singled out"

    def _delete_carts(self, hook: PacificaCartdHook, cart_uid: str) -> None:
        """Delete this task instance's cart and its re-created twin, if ``delete_cart``."""
        if self.delete_cart:
            original = _original_uid(cart_uid)
            hook.delete_carts(original, original + RECREATED_SUFFIX)

    def _manifest(
        self, cart_uid: str, extracted: Sequence[ExtractedFile], event_summary: dict[str, Any] | None
    ) -> dict[str, Any]:
        target = self.target
        files = [f.to_dict() for f in extracted]
        if isinstance(target, StoreDestination):  # each file's URL, and the connection that opens it
            files = [{**entry, "url": object_url(target.fs, f"{target.root}/{entry['path']}")} for entry in files]
            where = {"destination": target.url, "conn_id": target.conn_id}
        else:
            where = {"destination": str(target.absolute())}
        manifest: dict[str, Any] = {
            **where,
            "cart_uid": cart_uid,
            "file_count": len(extracted),
            "total_bytes": sum(f.size for f in extracted),
            "files": files,
            "event": event_summary,
        }
        self._published = (dict(manifest), files)
        if len(extracted) <= self.manifest_max_files:
            return manifest
        # XComs live in Airflow's database: keep them small
        del manifest["files"]
        if isinstance(target, StoreDestination):  # the manifest object already lists them all
            manifest["files_url"] = object_url(target.fs, manifest_path(target.root, _original_uid(cart_uid)))
            return manifest
        path = target.absolute() / f".pacifica-files-{_original_uid(cart_uid)}.json"
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(files))
        os.replace(partial, path)  # whole or not at all
        manifest["files_path"] = str(path)
        return manifest


def _original_uid(cart_uid: str) -> str:
    return cart_uid.removesuffix(RECREATED_SUFFIX)
