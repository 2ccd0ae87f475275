"""Which intake downloads an ingest, when the webhook (push) and the watcher (pull) both record it.

Plain Python, no Airflow import. The webhook records an ingest event on one asset (its id in
``extra["cloudevent_id"]``), the watcher on another (``extra["payload"]["cloudevent_id"]``); a
DAG scheduled on each would download the same transaction twice, and the watcher itself may
record one id twice (after a triggerer restart between its yield and its cursor save). The rule
both DAGs apply in their pick step, on the asset events they can read through the Task SDK
(``inlet_events``):

    **the earliest recorded event of an id wins**: the smallest ``(timestamp, asset event id)``
    among the events of that id on either asset. A run downloads an id only when the winner is
    one of its own triggering events; otherwise it skips it and names the winner.

Both DAGs compute the same winner from the same rows (asset event ids are one sequence across
assets, so ties are broken the same way), and the winner is recorded before the loser: when the
loser's run reads, the winner is there to be read. The window read is bounded below by the
ingest's own time (:func:`lookback_start`): no event of an ingest can be recorded before it.

Airflow 3.3.2's execution API answers HTTP 500 for a window holding an event whose run is queued
and has no start date yet (apache/airflow#71360): the winner cannot be known then
(:class:`UndecidedError`); the pick task fails and its retries read again once that run started.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_pacifica.exceptions import PacificaError

LOOKBACK = dt.timedelta(days=1)  # before the ingest's eventTime: any server time zone, any clock skew

__all__ = [
    "LOOKBACK",
    "Decision",
    "RecordedEvent",
    "UndecidedError",
    "decide",
    "ingest_event_id",
    "lookback_start",
    "stranded",
]


class UndecidedError(PacificaError):
    """Asset events that may hold the winner could not be read yet; the decision must wait."""


@dataclass(frozen=True)
class RecordedEvent:
    """One asset event as the pick step sees it.

    :param asset: the asset's name.
    :param timestamp: when Airflow recorded it (aware).
    :param event_id: the ingest CloudEvent's id it carries, or ``None`` (not an ingest event).
    :param row: the asset event's id (``None`` for a run's triggering events: the Task SDK gives none).
    :param runs: ``(dag_id, run_id)`` of the runs it created.
    """

    asset: str
    timestamp: dt.datetime
    event_id: str | None
    row: int | None = None
    runs: tuple[tuple[str, str], ...] = field(default=())

    @property
    def order(self) -> tuple[dt.datetime, int]:
        return (self.timestamp, -1 if self.row is None else self.row)

    def describe(self) -> str:
        runs = ", ".join(run_id for _, run_id in self.runs) or "no run"
        row = "" if self.row is None else f" #{self.row}"
        return f"asset event{row} on {self.asset} recorded {self.timestamp.isoformat()} ({runs})"


@dataclass(frozen=True)
class Decision:
    """What a run does with one event id among its triggering events."""

    event_id: str
    download: bool
    winner: RecordedEvent
    reason: str


def ingest_event_id(extra: Mapping[str, Any] | None) -> str | None:
    """The ingest CloudEvent's id an asset event carries, from the webhook's or the watcher's extra.

    Webhook: ``extra["cloudevent_id"]`` (or the ``eventID``/``id`` of ``extra["cloudevent"]``);
    watcher: the same keys under ``extra["payload"]``. ``None`` when there is none.
    """
    if not isinstance(extra, Mapping):
        return None
    for holder in (extra, extra.get("payload")):
        if not isinstance(holder, Mapping):
            continue
        value = holder.get("cloudevent_id")
        cloudevent = holder.get("cloudevent")
        if not value and isinstance(cloudevent, Mapping):
            value = cloudevent.get("eventID") or cloudevent.get("id")
        if isinstance(value, str) and value:
            return value
    return None


def lookback_start(cloudevent: Any, recorded: dt.datetime, lookback: dt.timedelta = LOOKBACK) -> dt.datetime:
    """The earliest time an event of this ingest can have been recorded, less ``lookback``.

    The ingest's ``eventTime`` when it reads as a time (metadata writes its server's local time
    in the webhook's events, UTC in the watcher's: ``lookback`` covers any zone), else
    ``recorded``; never later than ``recorded - lookback``.
    """
    start = recorded
    event_time = cloudevent.get("eventTime") or cloudevent.get("time") if isinstance(cloudevent, Mapping) else None
    if isinstance(event_time, str):
        try:
            parsed = dt.datetime.fromisoformat(event_time.replace("Z", "+00:00"))
        except ValueError:
            parsed = None
        if parsed is not None:
            parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
            start = min(start, parsed)
    return start - lookback


def decide(
    mine: Sequence[RecordedEvent], recorded: Iterable[RecordedEvent], *, last_try: bool = False
) -> list[Decision]:
    """For each ingest id among ``mine`` (a run's triggering events), download it or not.

    :param mine: the run's triggering events (one asset; rows unknown: they are recognised among
        ``recorded`` by asset, timestamp and id, Airflow's timestamps having microseconds).
    :param recorded: the events read from both assets in the window (with rows); ``mine`` among them.
    :param last_try: the pick's last attempt: an earlier event that started no run does not
        win any more (see below).
    :returns: one decision per distinct id, in the order of ``mine``: ``download`` when the
        earliest recorded event of the id is one of ``mine``, or when it is another that started
        no run by the last try (its DAG paused or gone: Airflow records events for a paused DAG
        but queues no run, and the ingest would be downloaded by nobody).
    :raises UndecidedError: the earliest event is another that has started no run yet (its run
        is usually created within seconds: the pick's retry decides).
    """
    recorded = [event for event in recorded if event.event_id is not None]
    decisions: dict[str, Decision] = {}
    for event in mine:
        if event.event_id is None or event.event_id in decisions:
            continue
        candidates = [e for e in recorded if e.event_id == event.event_id]
        read = {(e.asset, e.timestamp) for e in candidates}
        # One of this run's own events the read missed still competes (it cannot have been lost).
        candidates += [m for m in mine if m.event_id == event.event_id and (m.asset, m.timestamp) not in read]
        winner = min(candidates, key=lambda e: e.order)
        if any((m.asset, m.timestamp, m.event_id) == (winner.asset, winner.timestamp, winner.event_id) for m in mine):
            decisions[event.event_id] = Decision(event.event_id, True, winner, "the earliest recorded event of its id")
        elif not winner.runs and last_try:
            reason = f"the earlier {winner.describe()} started no run (its DAG paused or gone)"
            decisions[event.event_id] = Decision(event.event_id, True, winner, reason)
        elif not winner.runs:
            raise UndecidedError(
                f"{event.event_id}: the earlier {winner.describe()} has started no run yet; "
                "a later try of this pick downloads it if none ever starts"
            )
        else:
            decisions[event.event_id] = Decision(
                event.event_id, False, winner, f"already recorded earlier: {winner.describe()}"
            )
    return list(decisions.values())


def stranded(own: Iterable[RecordedEvent], after: dt.datetime, dag_id: str) -> list[RecordedEvent]:
    """Ingest events recorded after ``after`` (this run's ``run_after``) that no run of ``dag_id`` took.

    With a plain asset schedule, Airflow 3.3 gives a new run the events up to the moment the asset
    was queued for it and drops that queue entry: events recorded in between wait for a later
    event to queue the asset again (apache/airflow#56050). These are they (or events whose run
    is about to be created: telling them apart is not possible from a task, and a spare run is
    harmless).
    """
    return [
        event
        for event in own
        if event.event_id is not None
        and event.timestamp > after
        and not any(run_dag == dag_id for run_dag, _ in event.runs)
    ]
