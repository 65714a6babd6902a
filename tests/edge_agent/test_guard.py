"""The safety guard on the shipped 8-phase and 4-phase intersections."""

from __future__ import annotations

import msgspec
import pytest

from edge_agent.cli import load_plan
from edge_agent.config import load_intersection
from edge_agent.guard import Rule, Violation, check_intersection, check_plan, ite_change_interval
from edge_agent.model import ClearancePolicy, Intersection
from edge_agent.plan import PhaseTiming, TimingPlan


@pytest.fixture(scope="module")
def nema8(configs_dir) -> Intersection:
    return load_intersection(configs_dir / "nema-8phase.toml")


@pytest.fixture(scope="module")
def am_peak(configs_dir) -> TimingPlan:
    return load_plan(configs_dir / "plans" / "main-oak-am-peak.toml")


def with_phase(plan: TimingPlan, number: int, **changes) -> TimingPlan:
    """The plan with one phase timing changed."""
    rings = tuple(
        tuple(msgspec.structs.replace(t, **changes) if t.phase == number else t for t in ring)
        for ring in plan.rings)
    return msgspec.structs.replace(plan, rings=rings)


def rules(violations: list[Violation]) -> set[Rule]:
    return {v.rule for v in violations}


def test_accepts_a_correct_8_phase_dual_ring_plan(nema8, am_peak):
    assert check_plan(am_peak, nema8) == []


def test_accepts_lead_lag_order_within_a_barrier(nema8, am_peak):
    ring1 = am_peak.rings[0]
    lagging = (ring1[1], ring1[0], ring1[2], ring1[3])  # phase 2 before phase 1
    plan = msgspec.structs.replace(am_peak, rings=(lagging, am_peak.rings[1]))
    assert check_plan(plan, nema8) == []


def test_rejects_two_conflicting_phases_green_together(nema8, am_peak):
    # Ring 2 crosses the barrier 5 s early: its east-west phase 7 starts while phase 2 (NBT)
    # still runs in ring 1.
    plan = with_phase(with_phase(am_peak, 6, split=40.0), 8, split=51.0)
    violations = check_plan(plan, nema8)
    conflicts = [v for v in violations if v.rule is Rule.CONFLICT]
    assert conflicts, violations
    assert conflicts[0].phase == 2 and "phase 7" in conflicts[0].message
    assert conflicts[0].value == pytest.approx(5.0)
    assert Rule.BARRIER in rules(violations)


@pytest.mark.parametrize("yellow", [2.9, 0.0])
def test_rejects_a_yellow_below_the_mutcd_floor(nema8, am_peak, yellow):
    violations = check_plan(with_phase(am_peak, 3, yellow=yellow, split=14.0), nema8)
    assert rules(violations) == {Rule.YELLOW_FLOOR}
    v = violations[0]
    assert (v.phase, v.value, v.limit) == (3, yellow, 3.0)
    assert "phase 3" in str(v) and "yellow" in str(v)


def test_rejects_a_yellow_below_the_ite_change_interval(nema8, am_peak):
    # Main Street at 17.9 m/s needs 1 + 17.9 / 6.1 = 3.93 s.
    violations = check_plan(with_phase(am_peak, 2, yellow=3.5), nema8)
    assert rules(violations) == {Rule.YELLOW_ITE}
    assert violations[0].limit == pytest.approx(3.93, abs=0.01)


def test_hard_floor_policy_keeps_the_designers_yellow(nema8, am_peak):
    designed = msgspec.structs.replace(nema8, clearance_policy=ClearancePolicy.HARD_FLOORS)
    assert check_plan(with_phase(am_peak, 2, yellow=3.5), designed) == []
    assert rules(check_plan(with_phase(am_peak, 2, yellow=2.5), designed)) == {Rule.YELLOW_FLOOR}


def test_ite_change_interval_known_values():
    assert ite_change_interval(13.4) == pytest.approx(1 + 13.4 / 6.1)
    # a downgrade lengthens the interval, an upgrade shortens it
    assert ite_change_interval(13.4, -0.03) > ite_change_interval(13.4) > \
        ite_change_interval(13.4, 0.03)


def test_rejects_a_green_shorter_than_its_min(nema8, am_peak):
    plan = with_phase(with_phase(am_peak, 1, split=10.0), 2, split=50.0)  # phase 1 green 4.5 s
    violations = check_plan(plan, nema8)
    assert rules(violations) == {Rule.MIN_GREEN}
    assert (violations[0].phase, violations[0].value, violations[0].limit) == (1, 4.5, 5.0)


def test_rejects_a_60_ft_crossing_with_16_s_of_clearance(nema8, am_peak):
    violations = check_plan(with_phase(am_peak, 4, ped_clearance=16.0), nema8)
    assert rules(violations) == {Rule.PED_CLEARANCE}
    assert violations[0].phase == 4 and violations[0].limit == pytest.approx(17.1)


def test_rejects_splits_that_do_not_sum_to_the_cycle(nema8, am_peak):
    violations = check_plan(msgspec.structs.replace(am_peak, cycle=125.0), nema8)
    assert Rule.CYCLE_SUM in rules(violations)
    assert "ring 1" in str(violations[0])


def test_rejects_red_clearance_outside_0_to_6(nema8, am_peak):
    plan = with_phase(am_peak, 4, red_clearance=6.5)
    assert rules(check_plan(plan, nema8)) == {Rule.RED_CLEARANCE}


def test_rejects_short_walk_and_pedestrian_timing_that_does_not_fit(nema8, am_peak):
    assert rules(check_plan(with_phase(am_peak, 2, walk=5.0), nema8)) == {Rule.PED_WALK}
    # 30 s of walk + 13.1 s clearance do not fit in 39 s green + 4 s yellow
    assert rules(check_plan(with_phase(am_peak, 2, walk=30.0), nema8)) == {Rule.PED_FIT}


def test_rejects_greens_beyond_their_bounds(nema8, am_peak):
    long_green = msgspec.structs.replace(
        with_phase(with_phase(am_peak, 4, split=51.0), 8, split=51.0), cycle=125.0)
    violations = check_plan(long_green, nema8)
    assert rules(violations) == {Rule.MAX_GREEN}
    assert [(v.phase, v.value, v.limit) for v in violations] == [(4, 45.5, 45.0), (8, 45.5, 45.0)]
    assert rules(check_plan(with_phase(am_peak, 1, min_green=4.0), nema8)) == {Rule.GREEN_BOUNDS}
    assert rules(check_plan(with_phase(am_peak, 1, max_green=30.0), nema8)) == {Rule.GREEN_BOUNDS}
    crossed = with_phase(am_peak, 1, min_green=9.0, max_green=8.0)
    assert Rule.GREEN_BOUNDS in rules(check_plan(crossed, nema8))


def test_rejects_cycle_and_offset_out_of_range(nema8, am_peak):
    assert rules(check_plan(msgspec.structs.replace(am_peak, offset=120.0), nema8)) == \
        {Rule.OFFSET_RANGE}
    assert rules(check_plan(msgspec.structs.replace(am_peak, offset=-1.0), nema8)) == \
        {Rule.OFFSET_RANGE}
    assert rules(check_plan(msgspec.structs.replace(am_peak, offset_reference=9), nema8)) == \
        {Rule.OFFSET_REFERENCE}
    short = msgspec.structs.replace(nema8, cycle_min=130.0, cycle_max=150.0)
    assert rules(check_plan(am_peak, short)) == {Rule.CYCLE_RANGE}
    tight = msgspec.structs.replace(nema8, cycle_max=100.0)
    (v,) = check_plan(am_peak, tight)
    assert (v.value, v.limit) == (120.0, 100.0)


def test_rejects_plans_for_another_intersection_or_with_unknown_phases(nema8, am_peak):
    other = msgspec.structs.replace(am_peak, intersection_id="elsewhere")
    assert rules(check_plan(other, nema8)) == {Rule.WRONG_INTERSECTION}
    unknown = with_phase(am_peak, 8, phase=9)
    assert rules(check_plan(unknown, nema8)) == {Rule.UNKNOWN_PHASE, Rule.MISSING_PHASE}


def test_rejects_broken_ring_structure(nema8, am_peak):
    r1, r2 = am_peak.rings
    one_ring = msgspec.structs.replace(am_peak, rings=(r1 + r2,))
    assert rules(check_plan(one_ring, nema8)) == {Rule.RING_STRUCTURE, Rule.CYCLE_SUM}
    swapped = msgspec.structs.replace(am_peak, rings=(r2, r1))
    assert Rule.RING_STRUCTURE in rules(check_plan(swapped, nema8))
    split_barrier = msgspec.structs.replace(am_peak, rings=((r1[0], r1[2], r1[1], r1[3]), r2))
    assert Rule.RING_STRUCTURE in rules(check_plan(split_barrier, nema8))
    # Both rings may start at the east-west barrier, but not one ring only.
    both = msgspec.structs.replace(am_peak, rings=(r1[2:] + r1[:2], r2[2:] + r2[:2]))
    assert check_plan(both, nema8) == []
    one = msgspec.structs.replace(am_peak, rings=(r1[2:] + r1[:2], r2))
    assert Rule.RING_STRUCTURE in rules(check_plan(one, nema8))


def test_missing_phase_is_reported(nema8, am_peak):
    r1, r2 = am_peak.rings
    without_1 = msgspec.structs.replace(am_peak, rings=(r1[1:], r2))
    violations = check_plan(without_1, nema8)
    assert Rule.MISSING_PHASE in rules(violations)
    assert [v.phase for v in violations if v.rule is Rule.MISSING_PHASE] == [1]


def test_shipped_configurations_pass_their_own_floors(configs_dir):
    for name in ("nema-8phase.toml", "nema-4phase.toml"):
        assert check_intersection(load_intersection(configs_dir / name)) == []


def test_violation_text_names_phase_rule_value_and_limit():
    v = Violation(Rule.YELLOW_FLOOR, "yellow 2.9 s < 3.0 s", phase=3, value=2.9, limit=3.0)
    assert str(v) == "[yellow-floor] phase 3: yellow 2.9 s < 3.0 s"
    assert str(Violation(Rule.CYCLE_SUM, "sum")) == "[cycle-sum] sum"


def test_single_ring_sequence(configs_dir):
    """A general phase sequence (one ring, one barrier group) such as a SUMO programme."""
    nema4 = load_intersection(configs_dir / "nema-4phase.toml")
    seq = msgspec.structs.replace(nema4, rings=(((2, 4, 6, 8),),), conflicts=())
    t = {p.number: p for p in seq.phases}
    ring = tuple(PhaseTiming(phase=n, split=25.0, yellow=t[n].yellow,
                             red_clearance=t[n].red_clearance, min_green=t[n].min_green,
                             max_green=t[n].max_green, walk=t[n].walk,
                             ped_clearance=t[n].ped_clearance) for n in (2, 4, 6, 8))
    plan = TimingPlan(plan_id=1, intersection_id=seq.id, cycle=100.0, offset=0.0,
                      offset_reference=2, rings=(ring,), activation=0.0, source="adaptive",
                      author="test")
    assert check_plan(plan, seq) == []
