"""Override commands and the timing patterns they turn into plans."""

from __future__ import annotations

import msgspec
import pytest

from edge_agent.config import load_intersection, load_plan
from edge_agent.guard import Rule, check_plan
from edge_agent.plan import PlanSource
from optimizer.overrides import (
    ExtendPhase, FixedCycle, FullPlan, OverrideCommand, build_override_plan,
)

from conftest import CONFIGS

NOW = 1_796_112_000.0


@pytest.fixture(scope="module")
def nema8():
    return load_intersection(CONFIGS / "nema-8phase.toml")


@pytest.fixture(scope="module")
def nema4():
    return load_intersection(CONFIGS / "nema-4phase.toml")


@pytest.fixture(scope="module")
def base():
    return load_plan(CONFIGS / "plans" / "main-oak-am-peak.toml")


def command(pattern, intersection="main-oak", expiry=NOW + 1800, reason="crash on Oak Ave",
            user="alice"):
    return OverrideCommand(intersection, pattern, expiry, reason, user)


def splits(plan):
    return {t.phase: t.split for ring in plan.rings for t in ring}


def test_extend_phase_lengthens_the_phase_the_cycle_and_the_concurrent_ring(nema8, base):
    plan = build_override_plan(command(ExtendPhase(2, 10)), nema8, base, NOW)
    assert check_plan(plan, nema8) == []
    assert plan.cycle == base.cycle + 10
    # phase 2 (ring 1) and the last phase of the same barrier group in ring 2 (phase 6)
    assert {p: s - splits(base)[p] for p, s in splits(plan).items() if s != splits(base)[p]} \
        == {2: 10.0, 6: 10.0}
    assert plan.timings[2].green == pytest.approx(base.timings[2].green + 10)
    assert plan.source == PlanSource.OVERRIDE and plan.author == "alice"
    assert plan.activation == NOW and plan.expiry == NOW + 1800 and plan.plan_id == 1
    assert "extend-phase 2 by 10 s" in plan.explanation and "crash" in plan.explanation


def test_extend_phase_beyond_the_maximum_green_is_a_plan_the_guard_rejects(nema8, base):
    plan = build_override_plan(command(ExtendPhase(1, 30)), nema8, base, NOW)
    violations = check_plan(plan, nema8)
    assert {(v.rule, v.phase) for v in violations if v.rule == Rule.MAX_GREEN} \
        == {(Rule.MAX_GREEN, 1), (Rule.MAX_GREEN, 6)}
    assert plan.timings[1].max_green == pytest.approx(plan.timings[1].green)  # not clamped


def test_extend_phase_on_a_four_phase_dual_ring(nema4):
    base = load_plan(CONFIGS / "plans" / "elm-1st-peak.toml")
    plan = build_override_plan(command(ExtendPhase(4, 5), intersection="elm-1st"), nema4,
                               base, NOW)
    assert plan.cycle == base.cycle + 5 and check_plan(plan, nema4) == []
    assert splits(plan)[8] == splits(base)[8] + 5


@pytest.mark.parametrize("cycle", [100.0, 130.0])
def test_fixed_cycle_keeps_barriers_aligned_and_splits_in_proportion(nema8, base, cycle):
    plan = build_override_plan(command(FixedCycle(cycle)), nema8, base, NOW)
    assert check_plan(plan, nema8) == []
    assert plan.cycle == cycle and plan.offset == pytest.approx(base.offset * cycle / 120)
    for ring in plan.rings:
        assert sum(t.split for t in ring) == pytest.approx(cycle, abs=0.05)
    assert plan.timings[2].green / plan.timings[1].green == pytest.approx(
        base.timings[2].green / base.timings[1].green, rel=0.03)
    assert all(t.yellow == base.timings[t.phase].yellow for ring in plan.rings for t in ring)


def test_fixed_cycle_with_an_offset_and_too_short_a_cycle(nema8, base):
    plan = build_override_plan(command(FixedCycle(100, offset=12.5)), nema8, base, NOW)
    assert plan.offset == 12.5
    short = build_override_plan(command(FixedCycle(60)), nema8, base, NOW)
    assert {Rule.MIN_GREEN, Rule.PED_FIT} <= {v.rule for v in check_plan(short, nema8)}
    with pytest.raises(ValueError, match="fixed-cycle.cycle: 15 s leaves no green in barrier "
                                         "group 1"):
        build_override_plan(command(FixedCycle(15)), nema8, base, NOW)


def test_a_full_plan_becomes_the_override(nema8, base):
    given = msgspec.structs.replace(base, plan_id=77, author="eng", expiry=None)
    plan = build_override_plan(command(FullPlan(given)), nema8, None, NOW)
    assert check_plan(plan, nema8) == []
    assert (plan.plan_id, plan.author, plan.source) == (1, "alice", PlanSource.OVERRIDE)
    assert plan.rings == base.rings and plan.expiry == NOW + 1800
    assert FullPlan(given).describe() == "plan (cycle 120 s, from plan 77)"


def test_patterns_that_change_the_plan_in_force_need_one(nema8, base):
    with pytest.raises(ValueError, match="main-oak has none; give a complete plan"):
        build_override_plan(command(ExtendPhase(2, 5)), nema8, None, NOW)
    with pytest.raises(ValueError, match="phase 9 is not in the plan in force"):
        build_override_plan(command(ExtendPhase(9, 5)), nema8, base, NOW)
    with pytest.raises(ValueError, match="must be after now"):
        build_override_plan(command(ExtendPhase(2, 5), expiry=NOW), nema8, base, NOW)
    with pytest.raises(ValueError, match="is not intersection 'main-oak'"):
        build_override_plan(command(ExtendPhase(2, 5), intersection="elm-1st"), nema8, base,
                            NOW)


def test_a_phase_the_intersection_does_not_have_is_named(nema4, base):
    foreign = msgspec.structs.replace(base, intersection_id="elm-1st")
    with pytest.raises(ValueError, match="phase 1 is not a phase of elm-1st"):
        build_override_plan(command(ExtendPhase(1, 5), intersection="elm-1st"), nema4,
                            foreign, NOW)


@pytest.mark.parametrize("make, message", [
    (lambda: ExtendPhase(0, 5), "extend-phase.phase"),
    (lambda: ExtendPhase(True, 5), "extend-phase.phase"),
    (lambda: ExtendPhase(2, 0), "extend-phase.seconds: must be > 0"),
    (lambda: ExtendPhase(2, float("nan")), "extend-phase.seconds: must be a finite number"),
    (lambda: FixedCycle(-90), "fixed-cycle.cycle"),
    (lambda: FixedCycle(90, offset="5"), "fixed-cycle.offset"),
    (lambda: FullPlan({"cycle": 90}), "plan.plan: must be a TimingPlan"),
    (lambda: command("flash"), "override.pattern: must be one of extend-phase, fixed-cycle, "
                               "plan"),
    (lambda: command(ExtendPhase(2, 5), reason="  "), "override.reason: an override needs"),
    (lambda: command(ExtendPhase(2, 5), reason="x" * 501), "at most 500 characters"),
    (lambda: command(ExtendPhase(2, 5), user="a b"), "override.user"),
    (lambda: command(ExtendPhase(2, 5), intersection="a/b"), "override.intersection_id"),
    (lambda: command(ExtendPhase(2, 5), expiry=float("inf")), "override.expiry"),
])
def test_malformed_commands_are_refused_naming_the_field(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_descriptions(base):
    assert ExtendPhase(2, 10).describe() == "extend-phase 2 by 10 s"
    assert FixedCycle(90).describe() == "fixed-cycle 90 s"
    assert FixedCycle(90, 15).describe() == "fixed-cycle 90 s, offset 15 s"
