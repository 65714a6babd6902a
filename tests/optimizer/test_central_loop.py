"""The central loop with fakes and an injected clock: plans, signing, acks, alarms, heartbeats,
validation, arbitration with overrides, restarts."""

from __future__ import annotations

import msgspec
import pytest

from edge_agent.messages import (
    Ack, Heartbeat, LaneMeasurement, Measurement, PlanMessage, ViolationRecord, decode, encode,
)
from edge_agent.plan import PlanSource
from edge_agent.signatures import generate_key, load_private_key, load_public_key, verify_plan
from edge_agent.topics import parse_topic
from optimizer.arbitration import Arbiter, TimeOfDaySchedule
from optimizer.audit import AuditLog
from optimizer.central_config import load_central_config
from optimizer.central_loop import CentralLoop, CentralOperations, LoopTimes, RegionJob
from optimizer.history import History
from optimizer.overrides import ExtendPhase
from optimizer.region_plan import RegionPlanner
from optimizer.state import MemoryState

from conftest import CONFIGS, ManualClock

T0 = 1_800_000_000.0  # 2027-01-15 08:00 UTC: the peak time-of-day plan runs
PRIVATE, PUBLIC = generate_key()


class FakeLink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, int, bool]] = []

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.sent.append((topic, payload, qos, retain))

    def take(self, kind: str) -> list[tuple[str, bytes, int, bool]]:
        out = [s for s in self.sent if s[0].endswith("/" + kind)]
        self.sent = [s for s in self.sent if not s[0].endswith("/" + kind)]
        return out

    def plans(self) -> dict[str, PlanMessage]:
        return {parse_topic(t).intersection: decode(p, PlanMessage)
                for t, p, _, _ in self.take("plan")}


def measurement(x, seq, start, heavy=600.0, light=250.0):
    lanes = []
    for a in x.approaches:
        for lane in a.lanes:
            flow = heavy if a.id in ("N", "S") else light
            lanes.append(LaneMeasurement(lane=lane, count=int(flow / 60), flow_vph=flow,
                                         occupancy=0.1, queue_veh=1.0))
    return Measurement(site="elm-corridor", intersection_id=x.id, seq=seq, interval_start=start,
                       interval_s=60.0, lanes=tuple(lanes))


class Centre:
    def __init__(self, history=None, validator=None, ack_timeout_s=1e6,
                 min_change_s=0.0) -> None:
        config = load_central_config(CONFIGS / "central.toml", check_key=False)
        self.site = config.site
        self.clock, self.link = ManualClock(T0), FakeLink()
        self.history = history or History(":memory:")
        self.state, self.audit = MemoryState(), AuditLog(":memory:")
        schedules = {x: TimeOfDaySchedule(e) for x, e in config.time_of_day.items()}
        arbiter = Arbiter(self.site.intersections, time_of_day=schedules,
                          last_plan_ids=self.history.last_plan_ids())
        self.service = CentralOperations(self.site, audit=self.audit, state=self.state,
                                         arbiter=arbiter, clock=self.clock)
        self.times = LoopTimes(heartbeat_s=5, ack_timeout_s=ack_timeout_s, max_attempts=3, window_s=900,
                               plan_ttl_s=900, prune_every_s=3600, min_change_s=min_change_s)
        self.loop = CentralLoop(
            service=self.service, history=self.history, state=self.state, publisher=self.link,
            planner=RegionPlanner(self.site), times=self.times, clock=self.clock,
            regions=[RegionJob("elm", ("elm-1st", "elm-2nd", "elm-3rd"), 300, validator)],
            key=load_private_key(PRIVATE), key_id="central", source="central-1",
            heartbeat_seq=0)
        self.seq = 0

    def measure(self, minutes=15, **flows):
        for x in self.site.intersections:
            for k in range(minutes):
                self.seq += 1
                m = measurement(x, self.seq, self.clock.now - 60 * (minutes - k), **flows)
                self.history.add_measurement(m, encode(m), self.clock.now)

    def tick(self, advance=0.0):
        self.clock.now += advance
        self.loop.tick()

    def ack(self, message: PlanMessage, accepted=True, **extra):
        self.loop.on_ack(Ack(site="elm-corridor", intersection_id=message.plan.intersection_id,
                             plan_id=message.plan.plan_id, t=self.clock.now, accepted=accepted,
                             **extra), self.clock.now)


def test_first_tick_publishes_time_of_day_plans_signed_and_retained_and_heartbeats() -> None:
    c = Centre()
    c.tick()
    beats = c.link.take("heartbeat")
    assert len(beats) == 3 and all(qos == 0 and not retain for _, _, qos, retain in beats)
    assert decode(beats[0][1], Heartbeat).source == "central-1"
    sent = [s for s in c.link.sent if s[0].endswith("/plan")]
    assert [(t, q, r) for t, _, q, r in sent] == [("tsc/v1/elm-corridor/elm-1st/plan", 1, True)]
    plans = c.link.plans()
    message = plans["elm-1st"]
    assert verify_plan(message, {"central": load_public_key(PUBLIC)})
    assert message.plan.source == PlanSource.TIME_OF_DAY and message.plan.plan_id == 1
    c.tick(1)  # nothing new in force: nothing published again
    assert c.link.plans() == {} and c.link.take("heartbeat") == []
    c.tick(4)
    assert len(c.link.take("heartbeat")) == 3
    assert c.history.plan("elm-1st", 1).outcome == "pending"


def test_a_region_is_replanned_from_measurements_on_its_schedule() -> None:
    c = Centre()
    c.tick()
    c.ack(c.link.plans()["elm-1st"])
    c.measure()
    c.tick(299)
    assert c.link.plans() == {}  # not due yet
    c.tick(1)
    plans = c.link.plans()
    assert set(plans) == {"elm-1st", "elm-2nd", "elm-3rd"}
    for message in plans.values():
        plan = message.plan
        assert plan.source == PlanSource.ADAPTIVE and plan.expiry == c.clock.now + 900
        assert "Webster" in plan.explanation
    assert plans["elm-1st"].plan.plan_id == 2 and plans["elm-2nd"].plan.plan_id == 1
    assert len({m.plan.cycle for m in plans.values()}) == 1  # the corridor's common cycle
    kpis = c.state.kpis("elm-2nd")
    assert kpis.values["arrival_vph"] > 0 and kpis.values["predicted_delay_s"] > 0
    view = {v["id"]: v for v in c.service.intersections()}
    assert view["elm-2nd"]["mode"] == "adaptive" and view["elm-2nd"]["kpis"] is not None
    status = c.loop.status()["regions"]["elm"]
    assert status["planned"] == ["elm-1st", "elm-2nd", "elm-3rd"] and status["accepted"]


def test_a_replan_that_changes_little_keeps_the_plan_in_force_until_it_needs_renewing() -> None:
    c = Centre(ack_timeout_s=30, min_change_s=2.0)
    c.measure()
    c.tick()
    first = c.link.plans()
    assert {m.plan.source for m in first.values()} == {PlanSource.ADAPTIVE}
    for message in first.values():
        c.ack(message)
    c.measure()  # the same demand again: the same plans come out
    c.tick(300)
    assert c.link.plans() == {}  # nothing published: the plans in force stay, same ids
    status = c.loop.status()
    assert set(status["regions"]["elm"]["kept"]) == {"elm-1st", "elm-2nd", "elm-3rd"}
    assert status["counts"]["plans_kept"] == 3
    view = {v["id"]: v for v in c.service.intersections()}
    assert view["elm-1st"]["plan"]["plan_id"] == first["elm-1st"].plan.plan_id
    # 300 s later the plans in force expire within replan + resends (300 + 3 x 30 s):
    # renewed, under new ids, although they did not change.
    c.measure()
    c.tick(300)
    renewed = c.link.plans()
    assert set(renewed) == {"elm-1st", "elm-2nd", "elm-3rd"}
    for x, message in renewed.items():
        assert message.plan.plan_id > first[x].plan.plan_id
        assert message.plan.expiry == c.clock.now + 900
    # Heavier demand changes the plans: published at the next re-plan.
    for message in renewed.values():
        c.ack(message)
    c.measure(heavy=900.0, light=150.0)
    c.tick(300)
    assert set(c.link.plans()) == {"elm-1st", "elm-2nd", "elm-3rd"}


def test_an_adaptive_plan_not_renewed_hands_back_to_time_of_day() -> None:
    c = Centre()
    c.measure()
    c.tick()
    assert c.link.plans()["elm-1st"].plan.source == PlanSource.ADAPTIVE
    c.tick(900)  # the data is now older than the window: nothing to plan with
    plans = c.link.plans()
    assert plans["elm-1st"].plan.source == PlanSource.TIME_OF_DAY
    assert "elm-2nd" not in plans  # no time-of-day plan: the edge keeps its own fallback
    assert c.loop.status()["regions"]["elm"]["not_planned"]["elm-2nd"].startswith("no healthy")


def test_acks_are_followed_republished_then_alarmed() -> None:
    c = Centre(ack_timeout_s=10)
    c.tick()
    first = c.link.plans()["elm-1st"]
    for _ in range(2):
        c.tick(10)
        again = c.link.take("plan")
        assert [decode(p, PlanMessage) for _, p, _, _ in again] == [first]
    c.tick(10)
    assert c.link.take("plan") == []
    assert c.loop.alarms[0]["kind"] == "unanswered"
    assert c.history.plan("elm-1st", 1).attempts == 3
    assert c.history.plan("elm-1st", 1).outcome == "unanswered"
    entry = c.audit.entries(newest_first=True, limit=1)[0]
    assert (entry.action, entry.outcome, entry.intersection) == ("plan.unanswered", "alarm",
                                                                 "elm-1st")


def test_an_accepted_ack_stops_the_resends() -> None:
    c = Centre(ack_timeout_s=10)
    c.tick()
    c.ack(c.link.plans()["elm-1st"])
    c.tick(30)
    assert c.link.take("plan") == [] and not c.loop.alarms
    assert c.loop.status()["pending_acks"] == {}


def test_a_rejection_raises_an_alarm_at_once() -> None:
    c = Centre(ack_timeout_s=10)
    c.tick()
    message = c.link.plans()["elm-1st"]
    c.ack(message, accepted=False, violations=(
        ViolationRecord(rule="min-green", message="green 3.0 s < 8.0 s", phase=2),))
    c.tick(1)
    alarm = c.loop.alarms[0]
    assert alarm["kind"] == "rejected" and "[min-green] green 3.0 s" in alarm["message"]
    entry = c.audit.entries(newest_first=True, limit=1)[0]
    assert entry.action == "plan.rejected" and entry.details_obj["plan_id"] == 1
    c.tick(30)
    assert c.link.take("plan") == []  # a rejected plan is not sent again


@pytest.mark.parametrize("verdict", ["reject", "raise"])
def test_validation_that_fails_keeps_the_plans_in_force(verdict) -> None:
    seen = {}

    def validator(region, candidates, incumbent, windows, now):
        seen.update(candidates=set(candidates), incumbent=set(incumbent),
                    windows={x: len(ms) for x, ms in windows.items()})
        if verdict == "raise":
            raise RuntimeError("SUMO crashed")
        return False, ["delay: worse by 9 s/veh"]

    c = Centre(validator=validator)
    c.tick()
    assert set(c.link.plans()) == {"elm-1st"}  # time-of-day
    c.measure()
    c.tick(300)
    assert c.link.plans() == {}  # time-of-day stays at elm-1st, nothing elsewhere
    assert seen["candidates"] == {"elm-1st", "elm-2nd", "elm-3rd"}
    assert seen["incumbent"] == {"elm-1st"} and seen["windows"]["elm-2nd"] == 10  # 15 min measured, 5 min ago
    reasons = c.loop.status()["regions"]["elm"]["reasons"]
    assert reasons == (["delay: worse by 9 s/veh"] if verdict == "reject"
                       else ["validation failed: SUMO crashed"])


def test_validation_that_accepts_lets_the_plans_through() -> None:
    c = Centre(validator=lambda *args: (True, ["delay change -2.0 s/veh"]))
    c.measure()
    c.tick()
    assert {m.plan.source for m in c.link.plans().values()} == {PlanSource.ADAPTIVE}


def test_an_override_is_published_audited_and_hands_back_at_expiry() -> None:
    c = Centre()
    c.measure()
    c.tick()
    adaptive = c.link.plans()["elm-2nd"].plan
    record, decision, entry = c.service.create_override(
        user="alice", intersection_id="elm-2nd", pattern=ExtendPhase(2, 10.0),
        expiry=c.clock.now + 120, reason="crash on 2nd Ave")
    c.tick(1)
    override = c.link.plans()["elm-2nd"].plan
    assert override.source == PlanSource.OVERRIDE and override.plan_id == adaptive.plan_id + 1
    assert override.cycle == adaptive.cycle + 10 and entry.action == "override.create"
    c.tick(119)
    back = c.link.plans()["elm-2nd"].plan
    assert back.source == PlanSource.ADAPTIVE and back.plan_id == override.plan_id + 1
    assert msgspec.structs.replace(back, plan_id=adaptive.plan_id, activation=0.0) == \
        msgspec.structs.replace(adaptive, activation=0.0)
    expired = [e for e in c.audit.entries() if e.action == "override.expire"]
    assert len(expired) == 1 and expired[0].details_obj["handed_back_to"] == "adaptive"


def test_plan_ids_continue_after_a_restart(tmp_path) -> None:
    history = History(tmp_path / "h.sqlite")
    c = Centre(history=history)
    c.measure()
    c.tick()
    before = {x: m.plan.plan_id for x, m in c.link.plans().items()}
    again = Centre(history=History(tmp_path / "h.sqlite"))
    again.tick()
    after = {x: m.plan.plan_id for x, m in again.link.plans().items()}
    # The same plans are in force again (re-planned from the same history), under new ids.
    assert after == {x: n + 1 for x, n in before.items()}


def test_a_tick_that_fails_is_logged_and_the_loop_goes_on(caplog) -> None:
    import logging
    import threading

    caplog.set_level(logging.INFO)
    c = Centre()
    calls = []

    def broken(now=None):
        calls.append(now)
        if len(calls) == 1:
            raise RuntimeError("boom")
        stop.set()

    stop = threading.Event()
    c.loop.tick = broken
    c.loop.run(stop, 0.01)
    assert len(calls) == 2 and "tick failed" in caplog.text and "recovered" in caplog.text
