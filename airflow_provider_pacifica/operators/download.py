"""Operator that downloads the files of a Pacifica ingest event through a Cartd cart."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.sdk import BaseOperator, conf
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_provider_pacifica.cloudevents import (
    CartFile,
    files_from_list,
    files_from_transaction_info,
    parse_cloudevent,
)
from airflow_provider_pacifica.exceptions import (
    CartdError,
    CartdTransientError,
    CartNotFoundError,
    CartNotReadyError,
    ExtractionError,
    InvalidInputError,
    PacificaError,
    RollbackError,
    StreamError,
    UnsafeMemberError,
    VerificationError,
)
from airflow_provider_pacifica.extraction import ExtractedFile, extract_cart, verify_published
from airflow_provider_pacifica.hooks.cartd import CartStatus, PacificaCartdHook
from airflow_provider_pacifica.triggers.cartd import CartReadyTrigger

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context

DOWNLOAD_NAME = "data"  # Cartd streams the tar under a top directory named after ?filename=
RECREATED_SUFFIX = "-r1"  # marks the one re-creation of a cart that Cartd lost


def is_recreated(cart_uid: str) -> bool:
    return cart_uid.endswith(RECREATED_SUFFIX)


class PacificaDownloadOperator(BaseOperator):
    """Download files from Pacifica: create a cart, wait for it, stream, verify, publish.

    Give exactly one of ``cloudevent``, ``files`` or ``transaction_info``. The cart is created on
    the worker (Cartd's POST is not idempotent, so never from a trigger) under a uid derived from
    the dag, run, task, map index and file list: a retried task finds its own cart instead of
    staging a second one. The wait defers to :class:`CartReadyTrigger`. The tar is streamed and
    every file checked against the size and hash Pacifica gave before any file is moved to
    ``destination/<subdir>/<name>``; on failure the destination is left as it was.

    Returns (XCom) a manifest: ``{"destination", "cart_uid", "file_count", "total_bytes",
    "files": [{"id", "path", "size", "hashtype", "hashsum"}], "event"}``.

    :param destination: the directory to publish into (templated).
    :param cloudevent: a Pacifica ingest CloudEvent, dict or JSON string (templated).
    :param files: a list of ``{"id", "path", "hashtype", "hashsum", "size"}`` dicts (templated).
    :param transaction_info: a Policy transaction-info document (templated).
    :param pacifica_conn_id: the ``pacifica_cartd`` connection (templated).
    :param deferrable: wait for the cart in the triggerer (no worker slot held).
    :param poll_interval: seconds between the first status polls; the interval grows by half
        each poll up to ``max_poll_interval``.
    :param max_poll_interval: the cap of the poll interval in seconds.
    :param timeout: seconds to wait for the cart to be ready before failing.
    :param delete_cart: delete the cart from Cartd once the files are published.
    :param bundle: ask Cartd for a pre-built tar (bundle mode).
    :param download_attempts: how many times a download is started from the beginning when its
        stream breaks (the only remedy in Cartd's default streaming mode).
    :param max_resumes: with ``bundle=True``, how many times a broken download is resumed with an
        HTTP Range request from the last byte received, before it is restarted.
    :param progress_interval: seconds between progress lines in the task log.
    :param durable: fsync every file before publishing and the destination directory after
        (slower, most with many small files). Subdirectories are not fsynced yet.
    :param skip_if_present: when every file is already in ``destination`` with the right size and
        hash (a retry after a successful download), return the manifest without downloading.
    :param diagnose_max_files: when Cartd fails a cart of at most this many files, stage each
        file alone to name the ones that failed (0 turns this off).
    """

    template_fields: Sequence[str] = (
        "destination",
        "cloudevent",
        "files",
        "transaction_info",
        "pacifica_conn_id",
    )
    ui_color = "#c9e4f2"

    def __init__(
        self,
        *,
        destination: str,
        cloudevent: dict[str, Any] | str | None = None,
        files: list[dict[str, Any]] | str | None = None,
        transaction_info: dict[str, Any] | str | None = None,
        pacifica_conn_id: str = PacificaCartdHook.default_conn_name,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = 5.0,
        max_poll_interval: float = 60.0,
        timeout: float | timedelta = timedelta(days=1),
        delete_cart: bool = True,
        bundle: bool = False,
        download_attempts: int = 3,
        progress_interval: float = 5.0,
        diagnose_max_files: int = 16,
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
        self.poll_interval = poll_interval
        self.max_poll_interval = max(max_poll_interval, poll_interval)
        self.timeout = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
        self.delete_cart = delete_cart
        self.bundle = bundle
        self.download_attempts = max(1, download_attempts)
        self.progress_interval = progress_interval
        self.diagnose_max_files = diagnose_max_files
        self.max_resumes = max_resumes
        self.skip_if_present = skip_if_present
        self.durable = durable
        self._requested: tuple[list[CartFile], dict[str, Any] | None] | None = None

    @property
    def hook(self) -> PacificaCartdHook:
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
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
        return f"airflow-{digest[:40]}"

    # -- execution ------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        files, event_summary = self.requested_files()
        cart_uid = self.cart_uid_for(context, files)
        hook = self.hook
        if self.skip_if_present and (present := verify_published(files, self.destination)) is not None:
            # A retry after the files were published (e.g. the XCom push failed): no second download.
            self.log.info(
                "All %d file(s) are already in %s with the right hashes; not downloading", len(files), self.destination
            )
            self._delete(hook, cart_uid)
            return self._manifest(cart_uid, present, event_summary)
        status = self._ensure_cart(hook, cart_uid, files)
        if not status.ready:
            if self.deferrable:
                self._defer(cart_uid)
            status = self._wait_on_worker(hook, cart_uid)
        return self._download(hook, status.cart_uid, context)  # a "-r1" uid if it had to be re-created

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume after :class:`CartReadyTrigger`: download when ready, fail with Cartd's message otherwise.

        Everything needed comes from the event (its ``cart_uid``) or is derived again: deferral
        kwargs are not relied upon (``dag.test()`` drops them).
        """
        event = event or {"status": "error", "message": "the trigger sent no event"}
        status = event.get("status")
        files, _ = self.requested_files()
        cart_uid = str(event.get("cart_uid") or self.cart_uid_for(context, files))
        if status == "missing" and not is_recreated(cart_uid):
            # Cartd's LRU may purge a cart while it waits: stage it once more, then wait again.
            self.log.warning("Cart %s vanished while waiting (%s); creating it again", cart_uid, event.get("message"))
            return self._download(self.hook, self._recreate(self.hook, cart_uid, files), context)
        if status == "error" and event.get("retryable"):  # Cartd unreachable: retries may help
            raise AirflowException(f"cart {cart_uid}: {event.get('message')}")
        if status == "error":
            self._fail_with_culprits(self.hook, cart_uid, str(event.get("message")))
        if status != "ready":
            raise AirflowFailException(f"cart {cart_uid}: {event.get('message')}")
        return self._download(self.hook, cart_uid, context)

    def _ensure_cart(self, hook: PacificaCartdHook, cart_uid: str, files: Sequence[CartFile]) -> CartStatus:
        """Reuse this task instance's cart if Cartd still has it; create it otherwise."""
        status = hook.cart_status(cart_uid)
        if status.ready or status.pending:
            self.log.info("Reusing cart %s (%s) from an earlier attempt", cart_uid, status.state)
            return status
        if status.failed:
            self.log.warning("Cart %s of an earlier attempt failed (%s); staging it again", cart_uid, status.message)
        hook.create_cart(files, cart_uid=cart_uid, bundle=self.bundle)
        return hook.cart_status(cart_uid)

    def _recreate(self, hook: PacificaCartdHook, cart_uid: str, files: Sequence[CartFile]) -> str:
        """Stage a lost cart once more under a marked uid and wait for it: deferred (this raises
        ``TaskDeferred``) or here, returning the new uid when it is ready."""
        new_uid = cart_uid + RECREATED_SUFFIX
        hook.create_cart(files, cart_uid=new_uid, bundle=self.bundle)
        if self.deferrable:
            self._defer(new_uid)
        self._wait_on_worker(hook, new_uid)
        return new_uid

    def _defer(self, cart_uid: str) -> NoReturn:
        self.defer(
            trigger=CartReadyTrigger(
                cart_uid=cart_uid,
                pacifica_conn_id=self.pacifica_conn_id,
                poll_interval=self.poll_interval,
                max_poll_interval=self.max_poll_interval,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def _wait_on_worker(self, hook: PacificaCartdHook, cart_uid: str) -> CartStatus:
        """Poll on the worker (``deferrable=False``), with the same growing interval as the trigger."""
        deadline = time.monotonic() + self.timeout
        interval = self.poll_interval
        while True:
            status = hook.cart_status(cart_uid)
            if status.ready:
                return status
            if status.failed:
                self._fail_with_culprits(hook, cart_uid, f"cart {cart_uid} failed: {status.message}")
            if status.missing:
                if is_recreated(cart_uid):
                    raise AirflowFailException(f"cart {cart_uid} vanished twice; giving up: {status.message}")
                self.log.warning("Cart %s vanished while waiting (%s); creating it again", cart_uid, status.message)
                cart_uid = self._recreate(hook, cart_uid, self.requested_files()[0])
                continue
            if time.monotonic() + interval > deadline:
                raise AirflowException(f"cart {cart_uid} was not ready after {self.timeout:.0f}s ({status.state})")
            self.log.info("Cart %s is %s; next poll in %.1fs", cart_uid, status.state, interval)
            time.sleep(interval)
            interval = min(interval * 1.5, self.max_poll_interval)

    def _fail_with_culprits(self, hook: PacificaCartdHook, cart_uid: str, message: str) -> NoReturn:
        """Fail the task, naming the files that broke the cart.

        Cartd's message says what failed ("File hash does not match provided hash") but not for
        which file, and one bad file fails the whole cart. For carts of up to
        ``diagnose_max_files`` files each file is staged alone in a probe cart, in parallel, to
        name the culprits; bigger carts are not re-staged (tape recalls are expensive).
        """
        files, _ = self.requested_files()
        if len(files) == 1:
            culprits = [(files[0], message)]
        elif len(files) <= self.diagnose_max_files:
            self.log.info("Cart %s failed; staging its %d files one by one to find the culprit", cart_uid, len(files))
            try:
                culprits = probe_files(hook, cart_uid, files, timeout=min(self.timeout, 300.0))
            except PacificaError as err:  # the diagnosis is a courtesy; Cartd's own message stands
                self.log.warning("Could not probe the files of cart %s: %s", cart_uid, err)
                culprits = []
        else:
            culprits = []
        if culprits:
            named = "; ".join(f"{f.path!r} (id {f.id!r}): {why}" for f, why in culprits)
            raise AirflowFailException(f"{message}; failing file(s): {named}")
        raise AirflowFailException(f"{message}; the cart held {len(files)} files, none was singled out")

    def _download(self, hook: PacificaCartdHook, cart_uid: str, context: Context) -> dict[str, Any]:
        files, event_summary = self.requested_files()
        destination = Path(self.destination)
        top_dir = cart_uid if self.bundle else DOWNLOAD_NAME
        for attempt in range(1, self.download_attempts + 1):
            try:
                with hook.read_cart(cart_uid, filename=f"{DOWNLOAD_NAME}.tar", max_resumes=self.max_resumes) as reader:
                    extracted = extract_cart(
                        reader,
                        files,
                        destination,
                        top_dir,
                        on_progress=lambda p: self.log.info("Cart %s: %s", cart_uid, p),
                        progress_interval=self.progress_interval,
                        durable=self.durable,
                    )
                break
            except (UnsafeMemberError, VerificationError) as err:
                raise AirflowFailException(f"cart {cart_uid}: {err}; {destination} was left unchanged") from err
            except RollbackError as err:  # a person must put the kept files back: a retry must not touch them
                raise AirflowFailException(f"cart {cart_uid}: {err}") from err
            except CartNotReadyError as err:
                status = hook.cart_status(cart_uid)
                if status.failed:  # it failed between our HEAD and the GET: no retry can help
                    self._fail_with_culprits(hook, cart_uid, f"cart {cart_uid} failed: {status.message}")
                raise AirflowException(
                    f"cart {cart_uid} is not downloadable ({status.state}: {status.message})"
                ) from err
            except CartNotFoundError as err:
                if is_recreated(cart_uid):
                    raise AirflowFailException(f"cart {cart_uid} vanished twice; giving up: {err}") from err
                self.log.warning("Cart %s vanished before download (%s); creating it again", cart_uid, err)
                return self._download(hook, self._recreate(hook, cart_uid, files), context)
            except (StreamError, CartdTransientError) as err:
                if attempt == self.download_attempts:
                    raise AirflowException(f"cart {cart_uid}: download failed {attempt} times: {err}") from err
                self.log.warning(
                    "Cart %s: download broke (%s); restarting (%d/%d)",
                    cart_uid,
                    err,
                    attempt,
                    self.download_attempts,
                )
            except ExtractionError as err:  # the destination conflicts (a directory where a file must go)
                raise AirflowFailException(f"cart {cart_uid}: {err}; {destination} was left unchanged") from err

        manifest = self._manifest(cart_uid, extracted, event_summary)
        self.log.info(
            "Published %d verified file(s), %d bytes, to %s",
            manifest["file_count"],
            manifest["total_bytes"],
            manifest["destination"],
        )
        self._delete(hook, cart_uid)
        return manifest

    def _delete(self, hook: PacificaCartdHook, cart_uid: str) -> None:
        if not self.delete_cart:
            return
        try:
            hook.delete_cart(cart_uid)
        except CartdError as err:  # the data is safe; Cartd's LRU will reclaim the cart
            self.log.warning("Could not delete cart %s: %s", cart_uid, err)

    def _manifest(
        self, cart_uid: str, extracted: Sequence[ExtractedFile], event_summary: dict[str, Any] | None
    ) -> dict[str, Any]:
        return {
            "destination": str(Path(self.destination).absolute()),
            "cart_uid": cart_uid,
            "file_count": len(extracted),
            "total_bytes": sum(f.size for f in extracted),
            "files": [f.to_dict() for f in extracted],
            "event": event_summary,
        }


def probe_files(
    hook: PacificaCartdHook, cart_uid: str, files: Sequence[CartFile], timeout: float = 300.0
) -> list[tuple[CartFile, str]]:
    """Stage each file in a cart of its own; return the files whose cart failed, with Cartd's message."""
    probes = {f"{cart_uid}-probe-{index}": file for index, file in enumerate(files)}
    culprits: list[tuple[CartFile, str]] = []
    pending = dict(probes)
    deadline = time.monotonic() + timeout
    try:
        for probe_uid, file in probes.items():
            hook.create_cart([file], cart_uid=probe_uid)
        while pending and time.monotonic() < deadline:
            for probe_uid, file in list(pending.items()):
                status = hook.cart_status(probe_uid)
                if status.pending:
                    continue
                del pending[probe_uid]
                if not status.ready:
                    culprits.append((file, status.message or status.state))
            if pending:
                time.sleep(0.5)
    finally:
        for probe_uid in probes:
            with contextlib.suppress(CartdError):
                hook.delete_cart(probe_uid)
    return sorted(culprits, key=lambda culprit: files.index(culprit[0]))
