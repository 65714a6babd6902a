"""check_switch: the guard's per-decision check for controllers that switch phase by phase."""

from __future__ import annotations

import pytest

from edge_agent.config import load_intersection
from edge_agent.guard import Rule, Violation, check_switch
from edge_agent.model import Intersection


@pytest.fixture(scope="module")
def nema8(configs_dir) -> Intersection:
    return load_intersection(configs_dir / "nema-8phase.toml")


def rules(violations: list[Violation]) -> list[Rule]:
    return [v.rule for v in violations]


def test_accepts_a_switch_after_min_green(nema8):
    minimum = nema8.phase_by_number[2].min_green
    assert check_switch(nema8, 2, minimum + 1.0, 3) == []


def test_accepts_a_switch_exactly_at_min_green(nema8):
    minimum = nema8.phase_by_number[1].min_green
    assert check_switch(nema8, 1, minimum, 2) == []


def test_accepts_a_switch_across_the_barrier_in_the_same_ring(nema8):
    assert check_switch(nema8, 4, 100.0, 1) == []  # ring 1 wraps from group 2 back to group 1


def test_rejects_a_switch_before_min_green_naming_phase_value_and_limit(nema8):
    minimum = nema8.phase_by_number[2].min_green
    elapsed = minimum - 1.5
    violations = check_switch(nema8, 2, elapsed, 3)
    assert rules(violations) == [Rule.MIN_GREEN]
    (v,) = violations
    assert v.phase == 2
    assert v.value == pytest.approx(elapsed)
    assert v.limit == pytest.approx(minimum)
    assert f"{minimum:.1f}" in v.message and f"{elapsed:.1f}" in v.message
    assert str(v).startswith("[min-green] phase 2: ")


def test_rejects_a_switch_with_no_green_at_all(nema8):
    assert rules(check_switch(nema8, 6, 0.0, 5)) == [Rule.MIN_GREEN]


@pytest.mark.parametrize("current, target, unknown", [
    (9, 2, [9]),     # unknown phase ending
    (2, 12, [12]),   # unknown target
    (11, 10, [10, 11]),  # both unknown: each named once, in order
])
def test_unknown_phases_are_named(nema8, current, target, unknown):
    violations = check_switch(nema8, current, 100.0, target)
    assert rules(violations) == [Rule.UNKNOWN_PHASE] * len(unknown)
    assert [v.phase for v in violations] == unknown


def test_unknown_phase_short_circuits_the_other_rules(nema8):
    # Elapsed 0 would break min green, but an unknown phase is reported alone.
    assert rules(check_switch(nema8, 2, 0.0, 9)) == [Rule.UNKNOWN_PHASE]


@pytest.mark.parametrize("current, target", [(1, 5), (2, 6), (4, 8), (7, 3)])
def test_rejects_a_switch_across_rings(nema8, current, target):
    violations = check_switch(nema8, current, 100.0, target)
    assert rules(violations) == [Rule.RING_STRUCTURE]
    assert violations[0].phase == current
    assert f"phase {target}" in violations[0].message


def test_reports_ring_structure_and_min_green_together(nema8):
    violations = check_switch(nema8, 1, 0.5, 6)
    assert set(rules(violations)) == {Rule.RING_STRUCTURE, Rule.MIN_GREEN}


def test_switch_to_the_same_phase_is_not_refused_when_min_green_is_served(nema8):
    assert check_switch(nema8, 2, 100.0, 2) == []
