"""Arbitration: override > adaptive > time-of-day, expiry and hand-back, guard, plan ids."""

from __future__ import annotations

from datetime import datetime, timezone

import msgspec
import pytest

from edge_agent.config import load_plan, load_site
from edge_agent.guard import Rule
from edge_agent.plan import PlanSource
from optimizer.arbitration import (
    Arbiter, GuardRefused, Mode, OverrideConflict, TimeOfDaySchedule, UnknownIntersection,
    UnknownOverride,
)

from conftest import CONFIGS

X = "main-oak"
T0 = datetime(2026, 12, 1, 6, 0, tzinfo=timezone.utc).timestamp()  # 06:00 UTC


@pytest.fixture(scope="module")
def site():
    return load_site(CONFIGS / "nema-8phase.toml")


@pytest.fixture(scope="module")
def peak():
    return load_plan(CONFIGS / "plans" / "main-oak-am-peak.toml")


def variant(plan, source, **changes):
    """The plan from another source, told apart by its offset."""
    return msgspec.structs.replace(plan, **{"source": source, "author": "test", "expiry": None,
                                            **changes})


@pytest.fixture
def offpeak(peak):
    return variant(peak, PlanSource.TIME_OF_DAY, offset=10.0, activation=0.0)


@pytest.fixture
def adaptive(peak):
    return variant(peak, PlanSource.ADAPTIVE, offset=20.0, activation=T0 - 60,
                   expiry=T0 + 3600)


@pytest.fixture
def override_plan(peak):
    return variant(peak, PlanSource.OVERRIDE, offset=40.0, activation=T0, expiry=T0 + 600)


@pytest.fixture
def schedule(offpeak, peak):
    # 00:00 off-peak, 07:00 AM peak, 19:00 off-peak again
    return TimeOfDaySchedule(((0, offpeak), (7 * 60, peak), (19 * 60, offpeak)))


@pytest.fixture
def arbiter(site, schedule):
    return Arbiter(site.intersections, time_of_day={X: schedule})


def test_without_any_candidate_the_centre_sends_nothing(site):
    arbiter = Arbiter(site.intersections)
    d = arbiter.decide(X, T0)
    assert d.mode == Mode.NONE and d.plan is None and not d.changed
    assert "local fallback" in d.reason and arbiter.in_force(X) == d


def test_time_of_day_follows_local_time_and_reissues_only_on_a_change(arbiter, peak):
    d = arbiter.decide(X, T0)
    assert d.mode == Mode.TIME_OF_DAY and d.changed and d.plan.plan_id == 1
    assert d.plan.offset == 10.0 and d.plan.activation == T0 and "00:00" in d.reason
    again = arbiter.decide(X, T0 + 60)
    assert not again.changed and again.plan == d.plan
    at_seven = arbiter.decide(X, T0 + 3600)
    assert at_seven.changed and at_seven.plan.plan_id == 2 and at_seven.plan.offset == peak.offset
    evening = arbiter.decide(X, T0 + 13 * 3600)
    assert evening.plan.plan_id == 3 and evening.plan.offset == 10.0
    after_midnight = arbiter.decide(X, T0 + 19 * 3600)  # 01:00, entry 00:00: the same plan
    assert not after_midnight.changed and "00:00" in after_midnight.reason


def test_a_schedule_in_another_time_zone_and_the_last_entry_wrapping_midnight(offpeak, peak):
    schedule = TimeOfDaySchedule(((0, offpeak), (7 * 60, peak)), "Europe/Berlin")
    assert schedule.entry_at(T0)[0] == 1  # 06:00 UTC is 07:00 in Berlin in December
    assert schedule.intersection_id == X
    wrapping = TimeOfDaySchedule(((7 * 60, peak), (19 * 60, offpeak)))
    assert wrapping.entry_at(T0)[0] == 1  # 06:00: still the 19:00 entry of the day before


def test_adaptive_outranks_time_of_day_until_it_expires(arbiter, adaptive):
    arbiter.decide(X, T0)
    arbiter.submit_adaptive(adaptive, T0)
    d = arbiter.decide(X, T0 + 1)
    assert d.mode == Mode.ADAPTIVE and d.changed and d.plan.plan_id == 2
    assert d.plan.expiry == adaptive.expiry and d.plan.source == PlanSource.ADAPTIVE
    back = arbiter.decide(X, adaptive.expiry)
    assert back.mode == Mode.TIME_OF_DAY and back.plan.plan_id == 3
    assert "adaptive plan not current" in back.reason


def test_an_adaptive_plan_not_yet_active_or_gone_stale_is_not_used(site, schedule, adaptive):
    arbiter = Arbiter(site.intersections, time_of_day={X: schedule}, adaptive_ttl_s=300)
    later = msgspec.structs.replace(adaptive, activation=T0 + 100)
    arbiter.submit_adaptive(later, T0)
    assert arbiter.decide(X, T0).mode == Mode.TIME_OF_DAY
    assert arbiter.decide(X, T0 + 100).mode == Mode.ADAPTIVE
    assert arbiter.decide(X, T0 + 300).mode == Mode.TIME_OF_DAY  # silent optimiser
    arbiter.submit_adaptive(later, T0 + 400)  # a fresh submission counts again
    assert arbiter.decide(X, T0 + 400).mode == Mode.ADAPTIVE
    arbiter.withdraw_adaptive(X)
    assert arbiter.decide(X, T0 + 401).mode == Mode.TIME_OF_DAY


def test_an_override_outranks_adaptive_and_expires_back_to_it(arbiter, adaptive, override_plan):
    arbiter.submit_adaptive(adaptive, T0)
    assert arbiter.decide(X, T0).plan.plan_id == 1
    record = arbiter.add_override(override_plan, user="alice", reason="incident", now=T0,
                                  pattern="plan")
    assert record.override_id == 1 and arbiter.overrides() == [record]
    d = arbiter.decide(X, T0)
    assert d.mode == Mode.OVERRIDE and d.override == record and d.plan.plan_id == 2
    assert d.plan.expiry == record.expiry and "alice" in d.reason
    still = arbiter.decide(X, record.expiry - 0.001)
    assert still.mode == Mode.OVERRIDE and not still.changed
    back = arbiter.decide(X, record.expiry)
    assert back.mode == Mode.ADAPTIVE and back.expired == (record,) and back.changed
    assert back.plan.plan_id == 3 and back.plan.offset == adaptive.offset  # re-issued, new id
    assert "override 1 expired" in back.reason and arbiter.overrides() == []


def test_an_expired_override_without_adaptive_hands_back_to_time_of_day_or_nothing(
        site, arbiter, override_plan):
    arbiter.add_override(override_plan, user="alice", reason="incident", now=T0)
    arbiter.decide(X, T0)
    assert arbiter.decide(X, override_plan.expiry).mode == Mode.TIME_OF_DAY
    bare = Arbiter(site.intersections)
    bare.add_override(override_plan, user="alice", reason="incident", now=T0)
    assert bare.decide(X, T0).mode == Mode.OVERRIDE
    gone = bare.decide(X, override_plan.expiry)
    assert gone.mode == Mode.NONE and gone.plan is None and len(gone.expired) == 1


def test_a_cancelled_override_hands_back_at_once(arbiter, adaptive, override_plan):
    arbiter.submit_adaptive(adaptive, T0)
    record = arbiter.add_override(override_plan, user="alice", reason="incident", now=T0)
    arbiter.decide(X, T0)
    assert arbiter.override(record.override_id) == record
    assert arbiter.cancel_override(record.override_id) == record
    d = arbiter.decide(X, T0 + 5)
    assert d.mode == Mode.ADAPTIVE and d.expired == () and d.changed
    with pytest.raises(UnknownOverride, match="no active override 1"):
        arbiter.cancel_override(record.override_id)
    with pytest.raises(UnknownOverride):
        arbiter.override(record.override_id)


def test_one_override_at_a_time_until_the_first_expires(arbiter, override_plan):
    first = arbiter.add_override(override_plan, user="alice", reason="incident", now=T0)
    with pytest.raises(OverrideConflict, match="already has override 1 by alice"):
        arbiter.add_override(override_plan, user="bob", reason="event", now=T0 + 1)
    second = arbiter.add_override(
        msgspec.structs.replace(override_plan, expiry=first.expiry + 600), user="bob",
        reason="event", now=first.expiry)
    assert second.override_id == 2


def test_every_candidate_passes_the_guard_or_is_refused_whole(site, arbiter, adaptive,
                                                              override_plan, offpeak):
    bad_rings = ((msgspec.structs.replace(override_plan.rings[0][0], yellow=2.5),
                  *override_plan.rings[0][1:]), override_plan.rings[1])
    with pytest.raises(GuardRefused) as refused:
        arbiter.add_override(msgspec.structs.replace(override_plan, rings=bad_rings),
                             user="alice", reason="x", now=T0)
    assert Rule.YELLOW_FLOOR in {v.rule for v in refused.value.violations}
    assert arbiter.overrides() == []
    with pytest.raises(GuardRefused, match="cycle-range"):
        arbiter.submit_adaptive(msgspec.structs.replace(adaptive, cycle=200.0), T0)
    assert arbiter.decide(X, T0).mode == Mode.TIME_OF_DAY
    broken = TimeOfDaySchedule(((0, msgspec.structs.replace(offpeak, offset=500.0)),))
    with pytest.raises(GuardRefused, match="offset-range"):
        Arbiter(site.intersections, time_of_day={X: broken})


def test_plan_ids_rise_from_the_last_one_issued_across_every_transition(site, schedule,
                                                                       adaptive, override_plan):
    arbiter = Arbiter(site.intersections, time_of_day={X: schedule}, last_plan_ids={X: 41})
    issued = [arbiter.decide(X, T0).plan.plan_id]
    arbiter.submit_adaptive(adaptive, T0)
    record = arbiter.add_override(override_plan, user="a", reason="r", now=T0)
    for t in (T0, T0 + 1, override_plan.expiry, T0 + 3600, T0 + 7200):
        d = arbiter.decide(X, t)
        if d.changed:
            issued.append(d.plan.plan_id)
    assert issued == [42, 43, 44, 45] and record.override_id == 1
    assert arbiter.last_plan_ids() == {X: 45}
    assert arbiter.decide_all(T0 + 7200)[X].plan.plan_id == 45


def test_wrong_candidates_and_settings_are_refused_naming_the_problem(site, schedule, adaptive,
                                                                      override_plan, offpeak):
    arbiter = Arbiter(site.intersections, last_override_id=9)
    with pytest.raises(ValueError, match="source must be 'adaptive'"):
        arbiter.submit_adaptive(override_plan, T0)
    with pytest.raises(ValueError, match="source must be 'override'"):
        arbiter.add_override(adaptive, user="a", reason="r", now=T0)
    with pytest.raises(ValueError, match="must expire after now"):
        arbiter.add_override(override_plan, user="a", reason="r", now=override_plan.expiry)
    with pytest.raises(ValueError, match="must expire after now"):
        arbiter.add_override(msgspec.structs.replace(override_plan, expiry=None), user="a",
                             reason="r", now=T0)
    with pytest.raises(ValueError, match="at most 86400 s ahead"):
        arbiter.add_override(msgspec.structs.replace(override_plan, expiry=T0 + 90000),
                             user="a", reason="r", now=T0)
    assert arbiter.add_override(override_plan, user="a", reason="r", now=T0).override_id == 10
    with pytest.raises(UnknownIntersection, match="'nowhere'"):
        arbiter.decide("nowhere", T0)
    with pytest.raises(UnknownIntersection):
        Arbiter(site.intersections, last_plan_ids={"nowhere": 3})
    with pytest.raises(ValueError, match="needs at least one intersection"):
        Arbiter([])
    with pytest.raises(ValueError, match="adaptive_ttl_s"):
        Arbiter(site.intersections, adaptive_ttl_s=0)
    with pytest.raises(ValueError, match="max_override_s"):
        Arbiter(site.intersections, max_override_s=-1)
    other = msgspec.structs.replace(offpeak, intersection_id="elm-1st")
    with pytest.raises(ValueError, match="plans are for 'elm-1st'"):
        Arbiter(site.intersections, time_of_day={X: TimeOfDaySchedule(((0, other),))})
    assert arbiter.intersection_ids == [X] and arbiter.intersection(X).id == X


@pytest.mark.parametrize("entries, zone, message", [
    ((), "UTC", "at least one entry"),
    (((1440, None),), "UTC", "within 0..1439"),
    (((60, None), (0, None)), "UTC", "increasing start order"),
    (((0, None),), "Mars/Olympus", "unknown time zone"),
])
def test_bad_schedules_are_refused(entries, zone, message, offpeak):
    entries = tuple((start, offpeak) for start, _ in entries)
    with pytest.raises(ValueError, match=message):
        TimeOfDaySchedule(entries, zone)


def test_a_schedule_times_one_intersection(offpeak):
    other = msgspec.structs.replace(offpeak, intersection_id="elm-1st")
    with pytest.raises(ValueError, match="same intersection"):
        TimeOfDaySchedule(((0, offpeak), (60, other)))
