"""When a re-plan is worth a transition: optimizer.plan_change.material_change, and the loop
keeping the plan in force when it is not."""

from __future__ import annotations

import msgspec
import pytest

from edge_agent.config import load_plan
from edge_agent.plan import PlanSource
from optimizer.plan_change import material_change

from conftest import CONFIGS

NOW = 1_800_000_000.0
BASE = msgspec.structs.replace(load_plan(CONFIGS / "plans" / "elm-1st-peak.toml"),
                               source=PlanSource.ADAPTIVE, activation=NOW - 100,
                               expiry=NOW + 800)


def shifted(plan, phase, delta):
    """``plan`` with ``delta`` s moved from the other phase of ``phase``'s ring to it."""
    rings = []
    for ring in plan.rings:
        if any(t.phase == phase for t in ring):
            ring = tuple(msgspec.structs.replace(t, split=t.split + (delta if t.phase == phase
                                                                      else -delta))
                         for t in ring)
        rings.append(ring)
    return msgspec.structs.replace(plan, rings=tuple(rings))


def change(candidate, in_force=BASE, now=NOW, min_change_s=2.0, renew_within_s=390.0):
    return material_change(candidate, in_force, now, min_change_s=min_change_s,
                           renew_within_s=renew_within_s)


def test_a_candidate_within_the_tolerance_keeps_the_plan_in_force() -> None:
    near = msgspec.structs.replace(shifted(BASE, 2, 1.5), offset=BASE.offset + 1.0)
    assert change(near) is None
    assert change(BASE) is None


@pytest.mark.parametrize("candidate, why", [
    (msgspec.structs.replace(BASE, cycle=95.0), "cycle 90 -> 95 s"),
    (shifted(BASE, 4, 3.0), "phase 2 split 52 -> 49 s"),
    (msgspec.structs.replace(BASE, offset=5.0), "offset 0 -> 5 s"),
])
def test_a_larger_change_replaces_it_and_says_what_changed(candidate, why) -> None:
    assert change(candidate) == why


def test_the_offset_is_compared_the_short_way_round_the_cycle() -> None:
    assert change(msgspec.structs.replace(BASE, offset=89.0)) is None  # 1 s early, not 89 late
    assert change(msgspec.structs.replace(BASE, offset=85.0)) == "offset 0 -> 85 s"


def test_a_plan_close_to_its_expiry_is_renewed_whatever_the_change() -> None:
    assert change(BASE, now=NOW + 500) == "the plan in force expires in 300 s"


def test_no_adaptive_plan_in_force_or_a_zero_tolerance_publishes() -> None:
    assert change(BASE, in_force=None) == "no adaptive plan in force"
    time_of_day = msgspec.structs.replace(BASE, source=PlanSource.TIME_OF_DAY)
    assert change(BASE, in_force=time_of_day) == "no adaptive plan in force"
    assert change(BASE, min_change_s=0.0).startswith("every re-plan")


def test_a_changed_phase_sequence_is_material() -> None:
    swapped = msgspec.structs.replace(BASE, rings=tuple(ring[::-1] for ring in BASE.rings))
    assert change(swapped) == "phase sequence changed"


def test_plans_of_different_intersections_are_not_compared() -> None:
    other = msgspec.structs.replace(BASE, intersection_id="elm-2nd")
    with pytest.raises(ValueError, match="elm-2nd"):
        change(other)
