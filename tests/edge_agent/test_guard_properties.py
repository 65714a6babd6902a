"""Property tests: random plans against an independent statement of every rule.

The oracle below restates the rules in the plainest way (a timeline sampled every tenth of a
second for conflicts, direct sums for the rest) without sharing code with the guard. For every
generated plan the set of rules the oracle finds broken must equal the set the guard reports:
so every plan that breaks a rule is rejected, and every plan the guard accepts keeps all rules.
"""

from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.config import load_intersection
from edge_agent.guard import Rule, check_plan
from edge_agent.model import Intersection
from edge_agent.plan import PhaseTiming, TimingPlan

from conftest import CONFIGS

NEMA8 = load_intersection(CONFIGS / "nema-8phase.toml")
NEMA4 = load_intersection(CONFIGS / "nema-4phase.toml")


def tenth(lo: float, hi: float) -> st.SearchStrategy[float]:
    """Times in tenths of a second, as controllers run them."""
    return st.integers(round(lo * 10), round(hi * 10)).map(lambda n: n / 10)


@st.composite
def clean_rings(draw, intersection: Intersection) -> list[list[PhaseTiming]]:
    """Rings with the configured intervals and greens inside their bounds, barriers aligned."""
    phases = intersection.phase_by_number
    rings: list[list[PhaseTiming]] = [[] for _ in intersection.rings]
    for g in range(len(intersection.rings[0])):
        groups = []
        for ring in intersection.rings:
            greens = {}
            for number in draw(st.permutations(ring[g])):
                p = phases[number]
                floor = max(p.min_green, p.walk + p.ped_clearance - p.yellow)
                greens[number] = draw(tenth(floor, p.max_green))
            groups.append(greens)
        length = max(sum(phases[n].yellow + phases[n].red_clearance + green
                         for n, green in greens.items()) for greens in groups)
        for r, greens in enumerate(groups):
            used = sum(phases[n].yellow + phases[n].red_clearance + green
                       for n, green in greens.items())
            last = list(greens)[-1]
            greens[last] = round(greens[last] + length - used, 1)  # pad to the barrier
            for n, green in greens.items():
                p = phases[n]
                rings[r].append(PhaseTiming(
                    phase=n, split=round(green + p.yellow + p.red_clearance, 1),
                    yellow=p.yellow, red_clearance=p.red_clearance, min_green=p.min_green,
                    max_green=p.max_green, walk=p.walk, ped_clearance=p.ped_clearance))
    return rings


MUTATIONS = {
    "yellow": [2.9, 0.0, 3.0, 3.2, 6.0],
    "red_clearance": [0.0, 6.0, 6.5],
    "min_green": [0.0, 3.0, 60.0],
    "max_green": [5.0, 70.0],
    "walk": [0.0, 5.0, 7.0, 40.0],
    "ped_clearance": [0.0, 16.0, 17.2, 40.0],
    "split": [1.0, 8.0, 30.0, 70.0],
}


@st.composite
def plans(draw, intersection: Intersection) -> TimingPlan:
    """Mostly valid plans, each with zero to three random faults."""
    rings = draw(clean_rings(intersection))
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3]))):
        r = draw(st.integers(0, len(rings) - 1))
        k = draw(st.integers(0, len(rings[r]) - 1))
        field = draw(st.sampled_from(sorted(MUTATIONS)))
        value = draw(st.sampled_from(MUTATIONS[field]))
        rings[r][k] = msgspec.structs.replace(rings[r][k], **{field: value})
    if len(rings) > 1 and draw(st.integers(0, 9)) == 0:
        rings[1] = rings[1][1:] + rings[1][:1]  # a ring rotated by one phase
    total = round(sum(t.split for t in rings[0]), 1)
    cycle = draw(st.sampled_from([total] * 6 + [total + 1.0]))
    offset = draw(st.sampled_from([0.0, round(cycle / 3, 1), round(cycle - 0.1, 1)] * 2
                                  + [cycle, -2.0]))
    reference = draw(st.sampled_from(sorted(intersection.phase_by_number)))
    return TimingPlan(plan_id=1, intersection_id=intersection.id, cycle=cycle, offset=offset,
                      offset_reference=reference, rings=tuple(tuple(r) for r in rings),
                      activation=0.0, source="adaptive", author="hypothesis")


def oracle(plan: TimingPlan, x: Intersection) -> set[Rule]:
    """Every rule the plan breaks, restated independently of the guard."""
    broken: set[Rule] = set()
    conflict_pairs = {frozenset(c) for c in x.conflicts}
    for ring in plan.rings:
        for t in ring:
            p = x.phase_by_number[t.phase]
            green = t.split - t.yellow - t.red_clearance
            if t.yellow < 3.0:
                broken.add(Rule.YELLOW_FLOOR)
            else:
                worst = max(1.0 + a.speed_mps / (2 * 3.05 + 2 * a.grade * 9.81)
                            for a in x.approaches
                            if any(m.approach == a.id and m.turn != "pedestrian"
                                   for m in x.movements if m.id in p.movements))
                if t.yellow < worst:
                    broken.add(Rule.YELLOW_ITE)
            if t.red_clearance < 0 or t.red_clearance > 6:
                broken.add(Rule.RED_CLEARANCE)
            if green <= 0 or green < p.min_green or green < t.min_green:
                broken.add(Rule.MIN_GREEN)
            if green > p.max_green:
                broken.add(Rule.MAX_GREEN)
            if t.min_green < p.min_green or t.max_green > p.max_green or \
                    t.min_green > t.max_green:
                broken.add(Rule.GREEN_BOUNDS)
            if p.crossing_length_m > 0:
                if t.walk < 7:
                    broken.add(Rule.PED_WALK)
                if t.ped_clearance < p.crossing_length_m / 1.07:
                    broken.add(Rule.PED_CLEARANCE)
                if t.walk + t.ped_clearance > green + t.yellow:
                    broken.add(Rule.PED_FIT)
        if not math.isclose(sum(t.split for t in ring), plan.cycle, abs_tol=0.05):
            broken.add(Rule.CYCLE_SUM)
    if not x.cycle_min <= plan.cycle <= x.cycle_max:
        broken.add(Rule.CYCLE_RANGE)
    if not 0 <= plan.offset < plan.cycle:
        broken.add(Rule.OFFSET_RANGE)
    # ring structure: each ring runs its own configured ring's barrier groups, each group as one
    # block, in the configured order (rotations allowed), all rings starting in the same group
    n_groups = len(x.rings[0])
    first_groups = set()
    for r, ring in enumerate(plan.rings):
        group_of = {n: g for g, group in enumerate(x.rings[r]) for n in group}
        if any(t.phase not in group_of for t in ring):
            broken.add(Rule.RING_STRUCTURE)
            continue
        seq = [group_of[t.phase] for t in ring]
        blocks = [g for i, g in enumerate(seq) if i == 0 or seq[i - 1] != g]
        if sorted(blocks) != list(range(n_groups)) or any(
                (blocks[i + 1] - blocks[i]) % n_groups != 1 for i in range(len(blocks) - 1)):
            broken.add(Rule.RING_STRUCTURE)
        first_groups.add(blocks[0])
    if len(first_groups) > 1:
        broken.add(Rule.RING_STRUCTURE)
    # barrier groups: per group, the time each ring spends in it (only meaningful, and only
    # reported, when the ring structure is right)
    for g in range(n_groups if Rule.RING_STRUCTURE not in broken else 0):
        members = [set(ring[g]) for ring in x.rings]
        sums = [sum(t.split for t in ring if t.phase in members[r])
                for r, ring in enumerate(plan.rings)]
        if max(sums) - min(sums) > 0.05:
            broken.add(Rule.BARRIER)
    # conflicts: sample the cycle every 0.1 s (between tenths) and look at who holds the road
    horizon = max(sum(t.split for t in ring) for ring in plan.rings)
    for k in range(int(round(horizon * 10))):
        now = k / 10 + 0.05
        holding = []
        for ring in plan.rings:
            start = 0.0
            for t in ring:
                if start <= now < start + t.split:
                    holding.append(x.phase_by_number[t.phase])
                start += t.split
        for i, a in enumerate(holding):
            for b in holding[i + 1:]:
                if any(frozenset((m, n)) in conflict_pairs for m in a.movements
                       for n in b.movements):
                    broken.add(Rule.CONFLICT)
    return broken


SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("intersection", [NEMA8, NEMA4], ids=["nema8", "nema4"])
@SETTINGS
@given(data=st.data())
def test_guard_reports_exactly_the_broken_rules(intersection, data):
    plan = data.draw(plans(intersection))
    found = {v.rule for v in check_plan(plan, intersection)}
    assert found == oracle(plan, intersection)


@SETTINGS
@given(plan=plans(NEMA8))
def test_accepted_plans_never_give_conflicting_movements_the_road(plan):
    if check_plan(plan, NEMA8):
        return
    assert oracle(plan, NEMA8) == set()
