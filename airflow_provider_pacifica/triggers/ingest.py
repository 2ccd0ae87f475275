"""Pull intake: an event trigger that turns new Pacifica transactions into ingest CloudEvents.

Put it on an asset's ``AssetWatcher``; each new transaction in pacifica-metadata becomes one asset
event whose ``extra["payload"]["cloudevent"]`` is the CloudEvent metadata itself emits on ingest
(what the webhook receives from Notifications), so the same DAGs and operator take it. It needs no
inbound connection to Airflow and catches up after any outage of metadata or of the triggerer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from airflow_provider_pacifica.backoff import Backoff
from airflow_provider_pacifica.cloudevents import parse_cloudevent
from airflow_provider_pacifica.exceptions import InvalidInputError, MetadataTransientError, TransactionNotFoundError
from airflow_provider_pacifica.hooks.metadata import PacificaMetadataHook
from airflow_provider_pacifica.transactions import (
    advance,
    event_id_for,
    format_time,
    ingest_cloudevent,
    initial_cursor,
    load_cursor,
    new_transactions,
    parse_time,
    query_since,
    transaction_id,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    import aiohttp

    from airflow_provider_pacifica.transactions import Cursor

CURSOR_KEY = "cursor"  # the key of the cursor in the watched asset's state store
SAVE_DELAY = 5.0  # seconds between yielding an event and saving the cursor past it (see run())
FAULT_BACKOFF_CAP = 300.0  # seconds: the longest wait after faults in a row
MAX_TRANSACTION_FAILURES = 5  # HTTP 500s in a row reading one transaction before it is skipped
MAX_EMITTED = 10_000  # event ids remembered against yielding one twice in a trigger's lifetime
RENEW_SESSION = 3600.0  # seconds before the connection is read again (a changed connection takes effect)


class _StoreUnavailableError(Exception):
    """The asset state store could not be read or written (the triggerer's API call failed)."""


class PacificaIngestEventTrigger(BaseEventTrigger):
    """Poll pacifica-metadata for new transactions; yield one ingest CloudEvent per transaction.

    Each event is ``{"status": "ingest", "message": ..., "cloudevent": <CloudEvent 0.1>,
    "cloudevent_id": "metadata.ingest.<id>", "source": ...}``: the ``eventID`` and ``source``
    are metadata's own (the webhook's dedupe keys). The CloudEvent is rebuilt from
    ``GET /transactioninfo/by_id/<id>`` by
    :func:`~airflow_provider_pacifica.transactions.ingest_cloudevent`.

    **Cursor.** Transactions are listed with ``created >= <cursor>``, minus ``overlap`` seconds (a
    transaction can commit after one created later; see :mod:`airflow_provider_pacifica.transactions`),
    and the cursor is kept in the watched asset's state store under ``"cursor"`` (Airflow 3.3), so it
    survives triggerer restarts. It is saved ``SAVE_DELAY`` (5) seconds after the yield of the last
    event it covers, between polls: the triggerer resumes a trigger as soon as it has queued an
    event, before the event is stored, and a crash in between must not lose the event. A restart
    after the yield and before the save makes the new trigger yield those transactions again,
    under the same event id: delivery is at least once, and consumers dedupe on the event id as the
    webhook does (``metadata.ingest.<id>``). Within one trigger's life no event id is yielded twice.
    Without a state store (outside a watcher, or before 3.3) the cursor lives in memory only.

    **Faults.** Metadata unreachable, slow or answering 5xx: logged, and polled again with a growing,
    capped interval; the trigger never ends on them, nor on a bad connection (logged as errors until
    it is fixed). A transaction that cannot become an event (no files, a file without a hash, a path
    the download would refuse) is skipped with a warning and the cursor moves past it: it is not
    retried forever; nor is one whose info metadata fails on with HTTP 500 five times in a row while
    it lists the others (logged as an error).

    :param pacifica_metadata_conn_id: the ``pacifica_metadata`` connection (no secret travels in
        the kwargs).
    :param poll_interval: seconds between polls (jittered by up to a tenth).
    :param since: ISO time (UTC when it has no zone): transactions created at or after it are new.
        ``None``: the time the trigger first runs, kept in the cursor. A stored cursor is resumed
        unless ``since`` is given and differs from the one it was started with.
    :param project: only transactions of this project (compared as strings).
    :param instrument: only transactions of this instrument (compared as strings).
    :param submitter: only transactions of this submitter (user id, compared as strings).
    :param items_per_page: the page size of metadata's listing.
    :param overlap: seconds before the newest transaction seen that every poll lists again, so that
        a transaction committed late (created earlier, visible later) is not lost.
    """

    def __init__(
        self,
        pacifica_metadata_conn_id: str = PacificaMetadataHook.default_conn_name,
        poll_interval: float = 30.0,
        since: str | None = None,
        project: str | int | None = None,
        instrument: str | int | None = None,
        submitter: str | int | None = None,
        items_per_page: int = 100,
        overlap: float = 300.0,
    ) -> None:
        super().__init__()
        self.pacifica_metadata_conn_id = pacifica_metadata_conn_id
        self.poll_interval = float(poll_interval)
        self.since = since
        if since is not None:
            parse_time(since, "since")  # fail when the DAG is parsed, not in the triggerer
        self.project = None if project is None else str(project)
        self.instrument = None if instrument is None else str(instrument)
        self.submitter = None if submitter is None else str(submitter)
        self.items_per_page = int(items_per_page)
        if self.items_per_page < 1:
            raise InvalidInputError(f"items_per_page must be at least 1, got {items_per_page}")
        self.overlap = float(overlap)
        if not self.overlap >= 0:
            raise InvalidInputError(f"overlap must be >= 0 seconds, got {overlap!r}")

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "pacifica_metadata_conn_id": self.pacifica_metadata_conn_id,
                "poll_interval": self.poll_interval,
                "since": self.since,
                "project": self.project,
                "instrument": self.instrument,
                "submitter": self.submitter,
                "items_per_page": self.items_per_page,
                "overlap": self.overlap,
            },
        )

    def shared_stream_key(self) -> None:
        """``None``: each watcher polls on its own.

        Watchers with different filters could share one listing, but a shared stream is opened from
        kwargs alone, without the subscribers' asset state stores, so it could keep no cursor that
        survives a restart; one listing every ``poll_interval`` per watcher is cheap for metadata.
        """
        return None

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> AsyncIterator[TriggerEvent]:
        state = _PollState()
        faults = Backoff(max(self.poll_interval, 1.0), cap=max(FAULT_BACKOFF_CAP, self.poll_interval))
        polls = Backoff(self.poll_interval, cap=self.poll_interval, factor=1.0)  # jitter only
        failures = 0
        while True:
            try:
                hook = PacificaMetadataHook(pacifica_metadata_conn_id=self.pacifica_metadata_conn_id)
                renew_at = time.monotonic() + RENEW_SESSION
                async with hook.async_session() as session:
                    while time.monotonic() < renew_at:
                        async for event in self._poll(hook, session, state):
                            yield event
                        failures = 0
                        await self._pause(state, polls.delay(0))
                continue
            except (MetadataTransientError, _StoreUnavailableError) as err:
                failures += 1
                delay = faults.delay(failures - 1)
                self.log.warning("Pacifica ingest watcher: %s (failure %d); next poll in %.1fs", err, failures, delay)
            except Exception as err:  # a bad connection, a 401, an unexpected answer: a person must act
                failures += 1
                delay = faults.delay(failures - 1)
                self.log.error(
                    "Pacifica ingest watcher: %s: %s (failure %d); next poll in %.1fs",
                    type(err).__name__,
                    err,
                    failures,
                    delay,
                )
            await asyncio.sleep(delay)

    async def _poll(
        self, hook: PacificaMetadataHook, session: aiohttp.ClientSession, state: _PollState
    ) -> AsyncIterator[TriggerEvent]:
        """One poll: list, then read, check and yield each new transaction in ``(created, _id)`` order."""
        if state.cursor is None:
            state.cursor = await self._load_cursor(state)
        await self._save_if_due(state)
        since = query_since(state.cursor, overlap=self.overlap)
        listed = await hook.list_transactions(since, items_per_page=self.items_per_page, session=session)
        for record in new_transactions(state.cursor, listed, overlap=self.overlap):
            txn = transaction_id(record)
            event_id = event_id_for(txn)
            if event_id in state.emitted:
                state.advance(record, self.overlap)
                continue
            try:
                info = await hook.transaction_info(txn, session=session)
            except TransactionNotFoundError as err:
                self.log.warning("Skipping transaction %s: listed, then not found (%s)", txn, err)
                state.advance(record, self.overlap)
                continue
            except MetadataTransientError as err:
                # Unreachable, 502-504: ridden through, however long. A 500 is metadata failing on
                # this transaction (it answers its exceptions so) while it lists fine: after a few,
                # the transaction is given up, or it would hold back every later one for good.
                if err.status_code != 500:
                    raise
                state.failures[txn] = state.failures.get(txn, 0) + 1
                if state.failures[txn] < MAX_TRANSACTION_FAILURES:
                    raise
                self.log.error("Skipping transaction %s: its info failed %d times: %s", txn, state.failures[txn], err)
                state.advance(record, self.overlap)
                continue
            state.failures.pop(txn, None)
            if not self._wanted(info):
                self.log.debug("Transaction %s does not match the watcher's filters", txn)
                state.advance(record, self.overlap)
                continue
            try:
                cloudevent = ingest_cloudevent(info)
                parsed = parse_cloudevent(cloudevent)  # what the download will insist on
            except InvalidInputError as err:
                self.log.warning("Skipping transaction %s: it cannot be downloaded: %s", txn, err)
                state.advance(record, self.overlap)
                continue
            message = (
                f"transaction {txn}: {len(parsed.files)} file(s), {sum(f.size or 0 for f in parsed.files)} bytes, "
                f"created {cloudevent['eventTime']}"
            )
            yield TriggerEvent(
                {
                    "status": "ingest",
                    "message": message,
                    "cloudevent": cloudevent,
                    "cloudevent_id": event_id,
                    "source": cloudevent["source"],
                }
            )
            # Resumed: the triggerer has queued the event (not yet stored it); the save waits.
            state.remember(event_id)
            state.advance(record, self.overlap, yielded=True)

    def _wanted(self, info: Mapping[str, Any]) -> bool:
        for name in ("project", "instrument", "submitter"):
            wanted = getattr(self, name)
            if wanted is not None and str(info.get(name)) != wanted:
                return False
        return True

    # -- the cursor's store -----------------------------------------------------------------

    async def _load_cursor(self, state: _PollState) -> Cursor:
        store = self.asset_state_store
        stored: Any = None
        if store is None:
            self.log.warning(
                "No asset state store (not run by an AssetWatcher on Airflow >= 3.3): the cursor is kept in "
                "memory and does not survive a restart of this trigger"
            )
        else:
            try:
                stored = await store.aget(CURSOR_KEY, None)
                state.store = store
            except ValueError as err:  # several watched assets: the store needs one named
                self.log.warning(
                    "The asset state store cannot be used (%s): give this trigger one asset; the cursor is kept "
                    "in memory and does not survive a restart",
                    err,
                )
            except Exception as err:
                raise _StoreUnavailableError(f"reading the cursor: {type(err).__name__}: {err}") from err
        cursor = None
        if stored is not None:
            try:
                cursor = load_cursor(stored)
            except InvalidInputError as err:
                self.log.error("The stored cursor is unusable (%s); starting again from since", err)
        wanted_since = None if self.since is None else format_time(parse_time(self.since, "since"))
        if cursor is not None and wanted_since is not None and cursor["since"] != wanted_since:
            self.log.info(
                "since is now %s (the stored cursor began at %s): starting from it", wanted_since, cursor["since"]
            )
            cursor = None
        if cursor is None:
            start = wanted_since or format_time(dt.datetime.now(dt.UTC))
            cursor = initial_cursor(start)
            state.dirty, state.due = True, 0.0  # a 'now' must be kept at once: a restart would move it
            self.log.info("Watching Pacifica transactions created from %s", cursor["since"])
        else:
            self.log.info("Resuming after transactions created at %s (%d seen)", cursor["created"], len(cursor["seen"]))
        return cursor

    async def _pause(self, state: _PollState, delay: float) -> None:
        """Wait ``delay`` seconds between polls, saving the cursor when it falls due meanwhile."""
        if state.dirty and state.store is not None:
            wait = state.due - time.monotonic()
            if wait < delay:
                if wait > 0:
                    await asyncio.sleep(wait)
                    delay -= wait
                await self._save_if_due(state, waited=True)
        await asyncio.sleep(delay)

    async def _save_if_due(self, state: _PollState, *, waited: bool = False) -> None:
        if not state.dirty or state.store is None or (not waited and time.monotonic() < state.due):
            return
        try:
            await state.store.aset(CURSOR_KEY, state.cursor)
        except Exception as err:
            raise _StoreUnavailableError(f"saving the cursor: {type(err).__name__}: {err}") from err
        state.dirty = False


class _PollState:
    """What one trigger keeps between polls: the cursor, the ids it yielded, failures per transaction."""

    def __init__(self) -> None:
        self.cursor: Cursor | None = None
        self.store: Any = None  # the asset state store, once it answered
        self.dirty = False  # the cursor moved since it was saved
        self.due = 0.0  # monotonic time from which it may be saved
        self.emitted: OrderedDict[str, None] = OrderedDict()
        self.failures: dict[int, int] = {}

    def remember(self, event_id: str) -> None:
        self.emitted[event_id] = None
        while len(self.emitted) > MAX_EMITTED:
            self.emitted.popitem(last=False)

    def advance(self, record: Mapping[str, Any], overlap: float, *, yielded: bool = False) -> None:
        if self.cursor is None:
            raise RuntimeError("the cursor is advanced before it was loaded")
        self.cursor = advance(self.cursor, record, overlap=overlap)
        if not self.dirty:
            self.due = 0.0
        self.dirty = True
        if yielded:
            self.due = time.monotonic() + SAVE_DELAY
