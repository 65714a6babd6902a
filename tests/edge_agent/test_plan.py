"""Timing plans: field-naming validation at construction, timings, activity and phase windows."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.cli import load_plan
from edge_agent.plan import PhaseTiming, PlanSource, TimingPlan, phase_windows

from conftest import CONFIGS

NAN, INF = float("nan"), float("inf")
AM_PEAK = load_plan(CONFIGS / "plans" / "main-oak-am-peak.toml")


def timing(phase: int = 2, **changes: Any) -> PhaseTiming:
    fields: dict[str, Any] = {"phase": phase, "split": 30.0, "yellow": 3.5,
                              "red_clearance": 1.5, "min_green": 8.0, "max_green": 50.0}
    return PhaseTiming(**(fields | changes))


def plan(**changes: Any) -> TimingPlan:
    fields: dict[str, Any] = {
        "plan_id": 7, "intersection_id": "elm-1st", "cycle": 60.0, "offset": 0.0,
        "offset_reference": 2, "rings": ((timing(2), timing(4)), (timing(6), timing(8))),
        "activation": 1000.0, "source": "adaptive", "author": "optimizer"}
    return TimingPlan(**(fields | changes))


def named(field: str) -> str:
    return "^" + re.escape(f"{field}: ")


# --- phase timings ---------------------------------------------------------------------
@pytest.mark.parametrize(("value", "expected"), [
    (0, "must be within 1..64"), (65, "must be within 1..64"), (2.0, "must be an integer"),
    (True, "must be an integer"), ("2", "must be an integer"),
])
def test_phase_timing_phase_number(value: Any, expected: str) -> None:
    with pytest.raises(ValueError, match=named("phase") + expected):
        timing(value)


@pytest.mark.parametrize("name", ["split", "yellow", "red_clearance", "min_green", "max_green",
                                  "walk", "ped_clearance"])
@pytest.mark.parametrize(("value", "expected"), [
    (-0.1, "must be >= 0"), (NAN, "must be a finite"), (-INF, "must be a finite"),
    ("30", "must be a number"), (None, "must be a number"), (False, "must be a number"),
])
def test_phase_timing_times(name: str, value: Any, expected: str) -> None:
    with pytest.raises(ValueError, match=named(f"phase 2.{name}") + expected):
        timing(**{name: value})


def test_green_is_the_split_less_change_and_clearance() -> None:
    assert timing(split=30.0, yellow=3.5, red_clearance=1.5).green == 25.0
    # a split too short for its intervals is still a plan: the guard rejects it (min-green)
    assert timing(split=4.0).green == pytest.approx(-1.0)


# --- plans -----------------------------------------------------------------------------
def test_a_valid_plan_builds_is_frozen_and_coerces_its_source() -> None:
    p = plan()
    assert p.source is PlanSource.ADAPTIVE and p.expiry is None and p.explanation == ""
    with pytest.raises(AttributeError):
        p.cycle = 90.0  # type: ignore[misc]
    assert plan(source=PlanSource.OVERRIDE).source is PlanSource.OVERRIDE
    assert AM_PEAK.source is PlanSource.TIME_OF_DAY


@pytest.mark.parametrize(("changes", "expected"), [
    ({"plan_id": 0}, named("plan_id") + "must be within 1.."),
    ({"plan_id": 2**63}, named("plan_id") + "must be within 1.."),
    ({"plan_id": 1.0}, named("plan_id") + "must be an integer"),
    ({"plan_id": True}, named("plan_id") + "must be an integer"),
    ({"intersection_id": "elm 1st"}, named("intersection_id") + "must be 1-64 characters"),
    ({"intersection_id": "tsc/+/#"}, named("intersection_id") + "must be 1-64 characters"),
    ({"offset_reference": 0}, named("offset_reference") + "must be within 1..64"),
    ({"offset_reference": 65}, named("offset_reference") + "must be within 1..64"),
    ({"source": "manual"}, named("source") + "must be one of 'adaptive', 'override'"),
    ({"source": "ADAPTIVE"}, named("source") + "must be one of"),
    ({"author": ""}, named("author") + "must be 1-128 characters"),
    ({"author": "a" * 129}, named("author") + "must be 1-128 characters"),
    ({"author": None}, named("author") + "must be 1-128 characters"),
    ({"explanation": None}, named("explanation") + "must be text"),
    ({"cycle": 0.0}, named("cycle") + "must be > 0"),
    ({"cycle": -60.0}, named("cycle") + "must be >= 0"),
    ({"cycle": NAN}, named("cycle") + "must be a finite"),
    ({"cycle": "60"}, named("cycle") + "must be a number"),
    ({"offset": NAN}, named("offset") + "must be a finite"),
    ({"offset": INF}, named("offset") + "must be a finite"),
    ({"activation": -1.0}, named("activation") + "must be >= 0"),
    ({"activation": NAN}, named("activation") + "must be a finite"),
    ({"rings": ()}, named("rings") + "must have at least one ring"),
    ({"rings": ((timing(2),), ())}, named("rings[1]") + "must have at least one phase"),
    ({"rings": ((timing(2), timing(4)), (timing(6), timing(2)))},
     named("rings") + "duplicate id 2"),
    ({"expiry": 1000.0}, named("expiry") + r"must be after activation \(1000\), got 1000"),
    ({"expiry": 999.0}, named("expiry") + "must be after activation"),
    ({"expiry": NAN}, named("expiry") + "must be a finite"),
    ({"expiry": "later"}, named("expiry") + "must be a number"),
])
def test_bad_plans_are_rejected_naming_the_field(changes: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        plan(**changes)


def test_construction_checks_shape_not_safety() -> None:
    # A negative offset or a cycle the splits do not fill is the guard's business, not a
    # construction error: the edge must be able to decode such a plan to reject it with reasons.
    assert plan(offset=-5.0, cycle=500.0).offset == -5.0


def test_the_wire_form_is_strict() -> None:
    data = msgspec.to_builtins(AM_PEAK)
    assert msgspec.convert(data, TimingPlan, strict=True) == AM_PEAK
    assert msgspec.json.decode(msgspec.json.encode(AM_PEAK), type=TimingPlan) == AM_PEAK
    with pytest.raises(msgspec.ValidationError, match="unknown field `colour`"):
        msgspec.convert(data | {"colour": "red"}, TimingPlan, strict=True)
    with pytest.raises(msgspec.ValidationError, match="Invalid enum value 'manual'"):
        msgspec.convert(data | {"source": "manual"}, TimingPlan, strict=True)
    with pytest.raises(msgspec.ValidationError, match="expiry: must be after activation"):
        msgspec.convert(data | {"expiry": data["activation"]}, TimingPlan, strict=True)


# --- derived views ---------------------------------------------------------------------
def test_timings_are_keyed_by_phase_across_rings() -> None:
    timings = AM_PEAK.timings
    assert sorted(timings) == list(range(1, 9))
    assert timings[6] is AM_PEAK.rings[1][1]
    assert timings[4].green == pytest.approx(40.5)


def test_is_active_from_activation_until_expiry_exclusive() -> None:
    p = plan(activation=1000.0, expiry=2000.0)
    assert [p.is_active(t) for t in (999.9, 1000.0, 1500.0, 1999.9, 2000.0, 3000.0)] == \
        [False, True, True, True, False, False]
    forever = plan(activation=1000.0)
    assert not forever.is_active(999.0)
    assert forever.is_active(1000.0) and forever.is_active(1e12)


def test_phase_windows_of_the_am_peak_plan() -> None:
    windows = phase_windows(AM_PEAK)
    # every value here is exact in binary floating point
    assert windows == {
        1: (0.0, 9.5, 15.0), 2: (15.0, 54.0, 60.0), 3: (60.0, 69.0, 74.0),
        4: (74.0, 114.5, 120.0),
        5: (0.0, 9.5, 15.0), 6: (15.0, 54.0, 60.0), 7: (60.0, 69.0, 74.0),
        8: (74.0, 114.5, 120.0)}


tenths = st.integers(1, 600).map(lambda n: n / 10)


@given(st.lists(st.lists(st.tuples(tenths, tenths, tenths), min_size=1, max_size=5),
                min_size=1, max_size=3))
def test_phase_windows_run_back_to_back_from_zero(spec: list[list[tuple]]) -> None:
    number = iter(range(1, 65))
    rings = tuple(tuple(timing(next(number), split=s, yellow=y, red_clearance=r)
                        for s, y, r in ring) for ring in spec)
    p = plan(rings=rings)
    windows = phase_windows(p)
    assert sorted(windows) == sorted(p.timings)
    for ring in p.rings:
        assert windows[ring[0].phase][0] == 0.0  # every ring starts at local cycle zero
        for before, after in zip(ring, ring[1:]):
            assert windows[after.phase][0] == windows[before.phase][2]
        for t in ring:
            start, green_end, end = windows[t.phase]
            assert green_end == pytest.approx(start + t.green)
            assert end == pytest.approx(start + t.split)
        assert windows[ring[-1].phase][2] == pytest.approx(sum(t.split for t in ring))
