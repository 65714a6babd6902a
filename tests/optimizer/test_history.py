"""The centre's SQLite history: dedup by (intersection, seq), windows, retention, plan ids."""

from __future__ import annotations

import pytest

from edge_agent.messages import (
    Ack, EdgeMode, Event, EventKind, Events, LaneMeasurement, Measurement, Status,
    ViolationRecord, encode, offline_status,
)
from optimizer.history import History

T0 = 1_800_000_000.0


def measurement(seq: int, start: float, x: str = "elm-1st", count: int = 5) -> Measurement:
    return Measurement(site="downtown", intersection_id=x, seq=seq, interval_start=start,
                       interval_s=60.0, lanes=(LaneMeasurement(lane="a", count=count,
                                                               flow_vph=count * 60.0,
                                                               occupancy=0.1),))


def store(h: History, m: Measurement, received: float = T0) -> bool:
    return h.add_measurement(m, encode(m), received)


def test_a_repeated_seq_is_stored_once_whatever_the_order() -> None:
    h = History(":memory:")
    assert store(h, measurement(7, T0 - 120))
    assert store(h, measurement(3, T0 - 180))  # late, out of order: still stored
    assert not store(h, measurement(7, T0 - 120))  # a QoS 1 redelivery
    assert store(h, measurement(7, T0 - 120, x="elm-2nd"))  # seq is per intersection
    assert h.count("measurements") == 3
    window = h.measurements(["elm-1st"], T0 - 600)["elm-1st"]
    assert [m.seq for m in window] == [3, 7]  # by interval_start, not by arrival


def test_windows_are_read_by_data_time() -> None:
    h = History(":memory:")
    for k in range(10):
        store(h, measurement(100 + k, T0 - 600 + 60 * k))
    got = h.measurements(["elm-1st", "nowhere"], T0 - 300, T0 - 60)
    assert [m.interval_start for m in got["elm-1st"]] == [T0 - 300 + 60 * k for k in range(4)]
    assert got["nowhere"] == []


def test_events_are_deduplicated_too() -> None:
    h = History(":memory:")
    e = Events(site="downtown", intersection_id="elm-1st", seq=5,
               events=(Event(t=T0, kind=EventKind.PHASE_GREEN, ref="2"),))
    assert h.add_events(e, encode(e), T0)
    assert not h.add_events(e, encode(e), T0)
    assert h.count("events") == 1


def test_retention_prunes_old_rows_and_keeps_the_latest_plan() -> None:
    h = History(":memory:", retention_s=3600)
    store(h, measurement(1, T0 - 7200))
    store(h, measurement(2, T0 - 60))
    h.record_plan("elm-1st", 4, "adaptive", b"{}", T0 - 7200)
    h.record_plan("elm-1st", 5, "adaptive", b"{}", T0 - 7100)
    h.add_alarm(T0 - 7200, "elm-1st", "rejected", "old")
    assert h.too_old(T0 - 3601, T0) and not h.too_old(T0 - 3599, T0)
    deleted = h.prune(T0)
    assert deleted["measurements"] == 1 and deleted["alarms"] == 1 and deleted["plans"] == 1
    assert h.count("measurements") == 1
    assert h.last_plan_ids() == {"elm-1st": 5}  # the plan-id sequence survives retention


def test_plans_and_acks(tmp_path) -> None:
    path = tmp_path / "history.sqlite"
    h = History(path)
    h.record_plan("elm-1st", 3, "time-of-day", b"p3", T0)
    h.record_plan("elm-1st", 4, "adaptive", b"p4", T0 + 1)
    assert h.plan("elm-1st", 3).outcome == "superseded"
    h.plan_sent_again("elm-1st", 4)
    rejected = Ack(site="downtown", intersection_id="elm-1st", plan_id=4, t=T0 + 2,
                   accepted=False, violations=(ViolationRecord(rule="min-green", message="x",
                                                               phase=2),))
    h.add_ack(rejected, encode(rejected), T0 + 2)
    record = h.plan("elm-1st", 4)
    assert (record.attempts, record.outcome, record.reason) == (2, "rejected", "[min-green] x")
    h.record_plan("elm-2nd", 9, "adaptive", b"p9", T0)
    h.plan_unanswered("elm-2nd", 9)
    assert h.plan("elm-2nd", 9).outcome == "unanswered"
    assert h.plan("elm-2nd", 10) is None
    h.close()
    again = History(path)  # a restart continues the plan ids
    assert again.last_plan_ids() == {"elm-1st": 4, "elm-2nd": 9}


def test_status_and_alarms() -> None:
    h = History(":memory:")
    online = Status(site="downtown", intersection_id="elm-1st", t=T0, online=True,
                    mode=EdgeMode.CENTRAL, controller_ok=True)
    h.set_status(online, encode(online), T0)
    will = offline_status("downtown", "elm-1st")
    h.set_status(will, encode(will), T0 + 5)
    assert h.statuses() == [encode(will)]
    assert h.count("status_log") == 2
    h.add_alarm(T0, "elm-1st", "unanswered", "no ack")
    assert h.alarms()[0]["kind"] == "unanswered"
    with pytest.raises(ValueError):
        h.count("audit")
    with pytest.raises(ValueError):
        History(":memory:", retention_s=0)


def test_a_failed_batch_rolls_back() -> None:
    h = History(":memory:")
    with pytest.raises(RuntimeError):
        with h.batch():
            store(h, measurement(1, T0))
            raise RuntimeError("boom")
    assert h.count("measurements") == 0
