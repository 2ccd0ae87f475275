"""Webhook and watcher both on: the earliest recorded event of an ingest id downloads it, once.

The rule (airflow_provider_pacifica/intake.py) and the example DAGs' pick step that applies it to
the Task SDK's asset events (dags/pacifica_common.py), with the SDK's accessors replaced by lists.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_pacifica.intake import (
    LOOKBACK,
    RecordedEvent,
    UndecidedError,
    decide,
    ingest_event_id,
    lookback_start,
    stranded,
)

T0 = dt.datetime(2026, 12, 5, 10, 0, tzinfo=dt.UTC)
PUSH, PULL = "pacifica_ingest", "pacifica_ingest_pulled"


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def webhook_extra(event_id: str) -> dict:
    return {"cloudevent_id": event_id, "cloudevent": {"eventID": event_id, "eventTime": "2026-12-05T10:00:00"}}


def watcher_extra(event_id: str) -> dict:
    return {"from_trigger": True, "payload": {"cloudevent_id": event_id, "cloudevent": {"eventID": event_id}}}


# -- the id each intake's event carries --------------------------------------------------------


def test_the_ingest_id_is_read_from_the_webhooks_and_the_watchers_extra():
    assert ingest_event_id(webhook_extra("metadata.ingest.7")) == "metadata.ingest.7"
    assert ingest_event_id(watcher_extra("metadata.ingest.7")) == "metadata.ingest.7"
    assert ingest_event_id({"cloudevent": {"id": "ce-1.0"}}) == "ce-1.0"  # CloudEvents 1.0 key
    assert ingest_event_id({"payload": {"cloudevent": {"eventID": "metadata.ingest.8"}}}) == "metadata.ingest.8"


@pytest.mark.parametrize(
    "extra", [None, {}, {"requeue": ["metadata.ingest.1"]}, {"payload": "x"}, {"cloudevent_id": 5}]
)
def test_an_event_without_an_ingest_id_has_none(extra):
    assert ingest_event_id(extra) is None


# -- the window read ------------------------------------------------------------------------


def test_the_window_starts_a_lookback_before_the_ingests_time():
    recorded = at(3600)
    assert lookback_start({"eventTime": "2026-12-05T10:00:00"}, recorded) == T0 - LOOKBACK
    assert lookback_start({"time": "2026-12-05T10:00:00Z"}, recorded) == T0 - LOOKBACK


@pytest.mark.parametrize("cloudevent", [{}, {"eventTime": "yesterday"}, "not a mapping", {"eventTime": 5}])
def test_without_a_readable_event_time_the_window_starts_a_lookback_before_the_record(cloudevent):
    assert lookback_start(cloudevent, at(60)) == at(60) - LOOKBACK


def test_an_event_time_after_the_record_does_not_move_the_window_later():
    assert lookback_start({"eventTime": "2026-12-06T10:00:00"}, at(0)) == T0 - LOOKBACK


# -- the decision ---------------------------------------------------------------------------


def test_the_watcher_run_skips_an_ingest_the_webhook_recorded_first_and_names_the_winner():
    hook = RecordedEvent(PUSH, at(3), "metadata.ingest.1", row=10, runs=(("pacifica_cloudevent_download", "r1"),))
    pulled = RecordedEvent(PULL, at(12), "metadata.ingest.1", row=11)
    (decision,) = decide([RecordedEvent(PULL, at(12), "metadata.ingest.1")], [hook, pulled])
    assert decision.download is False
    assert decision.winner == hook
    assert "#10 on pacifica_ingest" in decision.reason
    assert "r1" in decision.reason


def test_the_webhook_run_downloads_when_the_watchers_event_is_later_or_absent():
    mine = [RecordedEvent(PUSH, at(3), "metadata.ingest.1")]
    hook = RecordedEvent(PUSH, at(3), "metadata.ingest.1", row=10)
    later = RecordedEvent(PULL, at(12), "metadata.ingest.1", row=11)
    assert [d.download for d in decide(mine, [hook, later])] == [True]
    assert [d.download for d in decide(mine, [hook])] == [True]
    assert [d.download for d in decide(mine, [])] == [True]  # a read that missed it: our own event competes


def test_the_webhook_run_skips_an_ingest_the_watcher_recorded_first():
    pulled = RecordedEvent(PULL, at(2), "metadata.ingest.1", row=9, runs=(("pacifica_ingest_watcher", "w1"),))
    hook = RecordedEvent(PUSH, at(40), "metadata.ingest.1", row=30)
    (decision,) = decide([RecordedEvent(PUSH, at(40), "metadata.ingest.1")], [pulled, hook])
    assert (decision.download, decision.winner) == (False, pulled)


def test_equal_timestamps_are_decided_by_the_asset_event_id_the_same_way_on_both_sides():
    hook = RecordedEvent(PUSH, at(5), "metadata.ingest.1", row=21, runs=(("pacifica_cloudevent_download", "p"),))
    pulled = RecordedEvent(PULL, at(5), "metadata.ingest.1", row=20, runs=(("pacifica_ingest_watcher", "w"),))
    push_side = decide([RecordedEvent(PUSH, at(5), "metadata.ingest.1")], [hook, pulled])
    pull_side = decide([RecordedEvent(PULL, at(5), "metadata.ingest.1")], [hook, pulled])
    assert [d.download for d in push_side + pull_side] == [False, True]


def test_a_transaction_the_watcher_yielded_twice_is_downloaded_by_the_first_events_run_only():
    first = RecordedEvent(PULL, at(10), "metadata.ingest.4", row=40, runs=(("pacifica_ingest_watcher", "a"),))
    again = RecordedEvent(PULL, at(70), "metadata.ingest.4", row=41)
    assert decide([RecordedEvent(PULL, at(70), "metadata.ingest.4")], [first, again])[0].download is False
    assert decide([RecordedEvent(PULL, at(10), "metadata.ingest.4")], [first, again])[0].download is True


def test_a_run_with_several_events_decides_each_id_once():
    mine = [
        RecordedEvent(PULL, at(10), "metadata.ingest.1"),
        RecordedEvent(PULL, at(11), "metadata.ingest.2"),
        RecordedEvent(PULL, at(12), "metadata.ingest.1"),  # the same transaction twice in one run
        RecordedEvent(PULL, at(13), "metadata.ingest.3"),
    ]
    recorded = [
        RecordedEvent(PUSH, at(1), "metadata.ingest.2", row=1, runs=(("pacifica_cloudevent_download", "p"),)),
        *(RecordedEvent(e.asset, e.timestamp, e.event_id, row=10 + i) for i, e in enumerate(mine)),
    ]
    decisions = {d.event_id: d.download for d in decide(mine, recorded)}
    assert decisions == {"metadata.ingest.1": True, "metadata.ingest.2": False, "metadata.ingest.3": True}


def test_an_earlier_event_that_started_no_run_leaves_the_pick_undecided():
    # The webhook DAG paused: Airflow records the webhook's event but queues no run for it.
    hook = RecordedEvent(PUSH, at(3), "metadata.ingest.1", row=10)
    pulled = RecordedEvent(PULL, at(12), "metadata.ingest.1", row=11)
    with pytest.raises(UndecidedError, match=r"metadata\.ingest\.1: the earlier asset event #10 .* started no run yet"):
        decide([RecordedEvent(PULL, at(12), "metadata.ingest.1")], [hook, pulled])


def test_on_the_last_try_an_earlier_event_that_started_no_run_does_not_stop_the_download():
    hook = RecordedEvent(PUSH, at(3), "metadata.ingest.1", row=10)
    pulled = RecordedEvent(PULL, at(12), "metadata.ingest.1", row=11)
    (decision,) = decide([RecordedEvent(PULL, at(12), "metadata.ingest.1")], [hook, pulled], last_try=True)
    assert decision.download is True
    assert "started no run (its DAG paused or gone)" in decision.reason


@st.composite
def recorded_histories(draw):
    """Events of a few ids on both assets, each consumed by one run of its asset's DAG."""
    count = draw(st.integers(1, 12))
    events, seen = [], set()
    for row in range(count):
        event = RecordedEvent(
            draw(st.sampled_from([PUSH, PULL])),
            at(draw(st.integers(0, 5))),  # few distinct times: ties across assets and ids are common
            f"metadata.ingest.{draw(st.integers(1, 3))}",
            row=row,
        )
        # A run knows its events by (asset, time, id): Airflow's times have microseconds, so one
        # asset never records one id twice at the same instant.
        if (event.asset, event.timestamp, event.event_id) not in seen:
            seen.add((event.asset, event.timestamp, event.event_id))
            events.append(event)
    runs = {}
    for event in events:  # a run groups events of one asset (the webhook's: one id; the watcher's: any)
        key = (event.asset, event.event_id if event.asset == PUSH else draw(st.integers(0, 2)))
        runs.setdefault(key, []).append(event)
    return events, list(runs.values())


@settings(max_examples=300, deadline=None)
@given(recorded_histories())
def test_every_recorded_ingest_id_is_downloaded_by_exactly_one_run(history):
    events, runs = history
    downloads: dict[str, int] = {}
    for run in runs:
        mine = [RecordedEvent(e.asset, e.timestamp, e.event_id) for e in run]  # as triggering events: no row
        # A run reads what was recorded up to its latest event (later ones cannot win against it),
        # each with the run it started.
        latest = max(e.timestamp for e in run)
        visible = [dataclasses.replace(e, runs=(("dag", "run"),)) for e in events if e.timestamp <= latest]
        for decision in decide(mine, visible):
            downloads[decision.event_id] = downloads.get(decision.event_id, 0) + decision.download
    assert downloads == dict.fromkeys({e.event_id for e in events}, 1)


# -- stranded events (apache/airflow#56050) -----------------------------------------------------


def test_events_after_the_runs_window_without_a_run_of_the_dag_are_stranded():
    took = (("pacifica_ingest_watcher", "r2"),)
    own = [
        RecordedEvent(PULL, at(1), "metadata.ingest.1", row=1),  # this run's window
        RecordedEvent(PULL, at(3), "metadata.ingest.2", row=2, runs=took),  # the next run took it
        RecordedEvent(PULL, at(4), "metadata.ingest.3", row=3),  # stranded
        RecordedEvent(PULL, at(5), "metadata.ingest.4", row=4, runs=(("other_dag", "x"),)),  # stranded for us
        RecordedEvent(PULL, at(6), None, row=5),  # a requeue event: not an ingest
    ]
    assert [e.event_id for e in stranded(own, at(2), "pacifica_ingest_watcher")] == [
        "metadata.ingest.3",
        "metadata.ingest.4",
    ]


# -- the DAGs' pick step on the Task SDK's events ------------------------------------------------


class FakeInletEvents:
    """``inlet_events[asset].after(..).before(..)`` over lists of SDK-like asset events."""

    def __init__(self, events: dict[str, list], fail: bool = False):
        self.events, self.fail = events, fail

    def __getitem__(self, asset):
        outer = self

        class Accessor:
            def __init__(self):
                self.low = self.high = None

            def after(self, value):
                self.low = dt.datetime.fromisoformat(value)
                return self

            def before(self, value):
                self.high = dt.datetime.fromisoformat(value)
                return self

            def __iter__(self):
                if outer.fail:
                    from airflow.sdk.exceptions import AirflowRuntimeError, ErrorType
                    from airflow.sdk.execution_time.comms import ErrorResponse

                    raise AirflowRuntimeError(
                        ErrorResponse(error=ErrorType.API_SERVER_ERROR, detail={"status_code": 500})
                    )
                return iter([e for e in outer.events.get(asset.name, []) if self.low <= e.timestamp <= self.high])

        return Accessor()


def sdk_event(row: int, when: dt.datetime, extra: dict, runs=()):
    return SimpleNamespace(
        id=row,
        timestamp=when,
        extra=extra,
        created_dagruns=[SimpleNamespace(dag_id=d, run_id=r) for d, r in runs],
    )


def triggering(when: dt.datetime, extra: dict):
    return SimpleNamespace(timestamp=when, extra=extra)


def test_the_watcher_dags_pick_downloads_only_what_the_webhook_did_not_record_first(
    caplog, capfd, monkeypatch, tmp_path
):
    import pacifica_common

    monkeypatch.setenv("PACIFICA_DOWNLOAD_ROOT", str(tmp_path))
    inlet = FakeInletEvents(
        {
            PUSH: [
                sdk_event(1, at(3), webhook_extra("metadata.ingest.1"), runs=[("pacifica_cloudevent_download", "r")])
            ],
            PULL: [
                sdk_event(2, at(10), watcher_extra("metadata.ingest.1")),
                sdk_event(3, at(11), watcher_extra("metadata.ingest.2")),
            ],
        }
    )
    events = {
        pacifica_common.PACIFICA_PULLED: [
            triggering(at(10), watcher_extra("metadata.ingest.1")),
            triggering(at(11), watcher_extra("metadata.ingest.2")),
            triggering(at(12), {"requeue": ["metadata.ingest.9"]}),
        ]
    }
    with caplog.at_level("INFO"):
        downloads = pacifica_common.pick_downloads(pacifica_common.PACIFICA_PULLED, events, inlet, "run-1")
    assert [d["cloudevent"]["eventID"] for d in downloads] == ["metadata.ingest.2"]
    assert downloads[0]["destination"] == str(tmp_path / "run-1" / "metadata.ingest.2")
    # Where the line goes depends on whether Airflow's structlog was set up by an earlier test.
    logged = caplog.text + "".join(capfd.readouterr())
    assert "Skipping metadata.ingest.1: already recorded earlier: asset event #1 on pacifica_ingest" in logged


def test_a_run_of_only_requeue_events_downloads_nothing():
    import pacifica_common

    events = {pacifica_common.PACIFICA_PULLED: [triggering(at(12), {"requeue": ["metadata.ingest.9"]})]}
    assert pacifica_common.pick_downloads(pacifica_common.PACIFICA_PULLED, events, FakeInletEvents({}), "r") == []


def test_an_unreadable_window_leaves_the_pick_undecided_for_its_retry():
    import pacifica_common

    events = {pacifica_common.PACIFICA_INGEST: [triggering(at(3), webhook_extra("metadata.ingest.1"))]}
    with pytest.raises(UndecidedError, match="cannot be read yet"):
        pacifica_common.pick_downloads(pacifica_common.PACIFICA_INGEST, events, FakeInletEvents({}, fail=True), "r")


def test_the_pick_knows_its_last_try_from_the_task_instance():
    import pacifica_common

    inlet = FakeInletEvents({PUSH: [sdk_event(1, at(3), webhook_extra("metadata.ingest.1"))]})
    events = {pacifica_common.PACIFICA_PULLED: [triggering(at(10), watcher_extra("metadata.ingest.1"))]}
    with pytest.raises(UndecidedError, match="started no run yet"):
        pacifica_common.pick_downloads(pacifica_common.PACIFICA_PULLED, events, inlet, "r")
    downloads = pacifica_common.pick_downloads(pacifica_common.PACIFICA_PULLED, events, inlet, "r", last_try=True)
    assert [d["cloudevent"]["eventID"] for d in downloads] == ["metadata.ingest.1"]
