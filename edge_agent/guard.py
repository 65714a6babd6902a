"""The safety guard: the one check every plan passes before it reaches a controller.

``check_plan(plan, intersection)`` returns every rule the plan breaks; an empty list means the
plan may run. Nothing is clamped or repaired here: a plan that fails is rejected whole, and each
:class:`Violation` names the phase, the rule, the value and the limit so that an engineer (or the
centre reading the edge's ack) can see exactly why.

Hard floors (always): yellow >= 3.0 s (MUTCD), red clearance within 0-6 s, every green >= its
minimum, pedestrian walk >= 7 s and clearance >= crossing length / 1.07 m/s. Where the
intersection's clearance policy is ``ite-kinematic`` the yellow must also cover the ITE kinematic
change interval ``t + v / (2a + 2Gg)``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from edge_agent.model import ClearancePolicy, Intersection, Phase
from edge_agent.plan import PhaseTiming, TimingPlan, phase_windows

__all__ = [
    "Rule",
    "Violation",
    "check_plan",
    "check_intersection",
    "check_switch",
    "ite_change_interval",
    "YELLOW_FLOOR_S",
    "RED_CLEARANCE_MAX_S",
    "WALK_MIN_S",
    "PED_SPEED_MPS",
    "ROUNDING_S",
]

YELLOW_FLOOR_S = 3.0  # MUTCD 4D.26: the minimum yellow change interval, whatever the policy
RED_CLEARANCE_MAX_S = 6.0  # MUTCD 4D.26: red clearance shall not exceed 6 s
WALK_MIN_S = 7.0  # MUTCD 4E.06: minimum walk interval
PED_SPEED_MPS = 1.07  # MUTCD 4E.06: 3.5 ft/s walking speed for the pedestrian clearance
ITE_PERCEPTION_S = 1.0  # ITE: perception-reaction time t
ITE_DECEL_MPS2 = 3.05  # ITE: comfortable deceleration a (10 ft/s^2)
GRAVITY_MPS2 = 9.81
ROUNDING_S = 0.05  # plans are timed in tenths of a second; sums may differ by rounding only


class Rule(str, enum.Enum):
    """The rules of the guard; the value is the code carried in acks and logs."""

    WRONG_INTERSECTION = "wrong-intersection"
    UNKNOWN_PHASE = "unknown-phase"
    MISSING_PHASE = "missing-phase"
    RING_STRUCTURE = "ring-structure"
    CONFLICT = "conflicting-greens"
    YELLOW_FLOOR = "yellow-floor"
    YELLOW_ITE = "yellow-ite"
    RED_CLEARANCE = "red-clearance-range"
    MIN_GREEN = "min-green"
    MAX_GREEN = "max-green"
    GREEN_BOUNDS = "green-bounds"
    PED_WALK = "ped-walk"
    PED_CLEARANCE = "ped-clearance"
    PED_FIT = "ped-fit"
    CYCLE_SUM = "cycle-sum"
    CYCLE_RANGE = "cycle-range"
    BARRIER = "barrier-alignment"
    OFFSET_RANGE = "offset-range"
    OFFSET_REFERENCE = "offset-reference"


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule: which phase (None for plan-wide rules), the value and the limit."""

    rule: Rule
    message: str
    phase: int | None = None
    value: float | None = None
    limit: float | None = None

    def __str__(self) -> str:
        where = f"phase {self.phase}: " if self.phase is not None else ""
        return f"[{self.rule.value}] {where}{self.message}"


def ite_change_interval(speed_mps: float, grade: float = 0.0) -> float:
    """ITE kinematic yellow change interval for an approach speed (m/s) and grade (fraction)."""
    return ITE_PERCEPTION_S + speed_mps / (2.0 * ITE_DECEL_MPS2 + 2.0 * grade * GRAVITY_MPS2)


def check_plan(plan: TimingPlan, intersection: Intersection) -> list[Violation]:
    """Every rule ``plan`` breaks on ``intersection``; empty when the plan is safe to run."""
    if plan.intersection_id != intersection.id:
        return [Violation(Rule.WRONG_INTERSECTION,
                          f"plan is for {plan.intersection_id!r}, not {intersection.id!r}")]
    violations: list[Violation] = []
    timings = plan.timings
    known = intersection.phase_by_number
    unknown = sorted(set(timings) - set(known))
    for number in unknown:
        violations.append(Violation(Rule.UNKNOWN_PHASE, "not a phase of this intersection",
                                    phase=number))
    for number in sorted(set(known) - set(timings)):
        violations.append(Violation(Rule.MISSING_PHASE, "phase is not timed by the plan",
                                    phase=number))
    if unknown:
        return violations  # the structural rules below need every phase to be known

    for timing in timings.values():
        violations.extend(_check_timing(timing, known[timing.phase], intersection))
    violations.extend(_check_cycle(plan, intersection))
    structure = _check_ring_structure(plan, intersection)
    violations.extend(structure)
    if not structure:
        violations.extend(_check_barriers(plan, intersection))
    violations.extend(_check_conflicts(plan, intersection))
    return violations


def check_intersection(intersection: Intersection) -> list[Violation]:
    """The configured default intervals of every phase, checked against the same floors."""
    violations: list[Violation] = []
    for phase in intersection.phases:
        violations.extend(_check_intervals(phase.number, phase.yellow, phase.red_clearance,
                                           phase.walk, phase.ped_clearance, phase,
                                           intersection))
    return violations


def check_switch(intersection: Intersection, current: int, green_elapsed: float,
                 target: int) -> list[Violation]:
    """The rules a local decision to end ``current``'s green and serve ``target`` next breaks.

    Controllers that decide phase by phase (actuation at the edge, max-pressure in the
    harness) ask this before every change: the phase ending must have had its minimum green,
    and both phases must be this intersection's. Phases of different rings are not switched
    one to another. The change and clearance intervals that follow are the configured ones,
    already checked by :func:`check_intersection`.
    """
    known = intersection.phase_by_number
    out = [Violation(Rule.UNKNOWN_PHASE, "not a phase of this intersection", phase=n)
           for n in sorted({current, target}) if n not in known]
    if out:
        return out
    if intersection.phase_location(current)[0] != intersection.phase_location(target)[0]:
        out.append(Violation(Rule.RING_STRUCTURE, f"cannot hand over to phase {target} of "
                                                  f"another ring", phase=current))
    minimum = known[current].min_green
    if green_elapsed < minimum - 1e-9:
        out.append(Violation(Rule.MIN_GREEN, f"green ends after {green_elapsed:.1f} s, before "
                                             f"its min green {minimum:.1f} s", current,
                             green_elapsed, minimum))
    return out


def _check_intervals(number: int, yellow: float, red: float, walk: float, ped_clearance: float,
                     phase: Phase, intersection: Intersection) -> list[Violation]:
    out: list[Violation] = []
    if yellow < YELLOW_FLOOR_S:
        out.append(Violation(Rule.YELLOW_FLOOR,
                             f"yellow {yellow:.1f} s < {YELLOW_FLOOR_S:.1f} s (MUTCD minimum)",
                             number, yellow, YELLOW_FLOOR_S))
    elif intersection.clearance_policy == ClearancePolicy.ITE_KINEMATIC:
        # The worst approach sets the interval: the fastest, or a slower one on a downgrade.
        needed, approach = max(
            ((ite_change_interval(a.speed_mps, a.grade), a)
             for a in intersection.vehicle_approaches(number)),
            key=lambda pair: pair[0], default=(0.0, None))
        if approach is not None and yellow < needed - 1e-9:
            out.append(Violation(Rule.YELLOW_ITE,
                                 f"yellow {yellow:.1f} s < ITE change interval {needed:.2f} s "
                                 f"for approach {approach.id} at {approach.speed_mps:.1f} m/s",
                                 number, yellow, round(needed, 2)))
    if not 0.0 <= red <= RED_CLEARANCE_MAX_S:
        out.append(Violation(Rule.RED_CLEARANCE,
                             f"red clearance {red:.1f} s outside 0-{RED_CLEARANCE_MAX_S:.0f} s",
                             number, red, RED_CLEARANCE_MAX_S))
    if phase.has_crossing:
        if walk < WALK_MIN_S:
            out.append(Violation(Rule.PED_WALK, f"walk {walk:.1f} s < {WALK_MIN_S:.1f} s",
                                 number, walk, WALK_MIN_S))
        needed = phase.crossing_length_m / PED_SPEED_MPS
        if ped_clearance < needed - 1e-9:
            out.append(Violation(Rule.PED_CLEARANCE,
                                 f"pedestrian clearance {ped_clearance:.1f} s < "
                                 f"{needed:.1f} s for a {phase.crossing_length_m:.1f} m "
                                 f"crossing at {PED_SPEED_MPS} m/s",
                                 number, ped_clearance, round(needed, 1)))
    return out


def _check_timing(timing: PhaseTiming, phase: Phase,
                  intersection: Intersection) -> list[Violation]:
    n = timing.phase
    out = _check_intervals(n, timing.yellow, timing.red_clearance, timing.walk,
                           timing.ped_clearance, phase, intersection)
    green = timing.green
    min_green = max(phase.min_green, timing.min_green)
    if green < min_green - 1e-9 or green <= 0.0:
        out.append(Violation(Rule.MIN_GREEN, f"green {green:.1f} s < min green {min_green:.1f} s",
                             n, green, min_green))
    if green > phase.max_green + 1e-9:
        out.append(Violation(Rule.MAX_GREEN,
                             f"green {green:.1f} s > max green {phase.max_green:.1f} s",
                             n, green, phase.max_green))
    if timing.min_green < phase.min_green - 1e-9:
        out.append(Violation(Rule.GREEN_BOUNDS,
                             f"actuation min green {timing.min_green:.1f} s < configured "
                             f"{phase.min_green:.1f} s", n, timing.min_green, phase.min_green))
    if timing.max_green > phase.max_green + 1e-9:
        out.append(Violation(Rule.GREEN_BOUNDS,
                             f"actuation max green {timing.max_green:.1f} s > configured "
                             f"{phase.max_green:.1f} s", n, timing.max_green, phase.max_green))
    if timing.min_green > timing.max_green:
        out.append(Violation(Rule.GREEN_BOUNDS,
                             f"actuation min green {timing.min_green:.1f} s > max green "
                             f"{timing.max_green:.1f} s", n, timing.min_green, timing.max_green))
    if phase.has_crossing and timing.walk + timing.ped_clearance > green + timing.yellow + 1e-9:
        # MUTCD 4E.06: the pedestrian change interval must end by the end of the yellow.
        needed = timing.walk + timing.ped_clearance
        out.append(Violation(Rule.PED_FIT,
                             f"walk + pedestrian clearance {needed:.1f} s exceed green + yellow "
                             f"{green + timing.yellow:.1f} s", n, needed,
                             green + timing.yellow))
    return out


def _check_cycle(plan: TimingPlan, intersection: Intersection) -> list[Violation]:
    out: list[Violation] = []
    if not intersection.cycle_min <= plan.cycle <= intersection.cycle_max:
        limit = intersection.cycle_min if plan.cycle < intersection.cycle_min \
            else intersection.cycle_max
        out.append(Violation(Rule.CYCLE_RANGE,
                             f"cycle {plan.cycle:.1f} s outside {intersection.cycle_min:.0f}-"
                             f"{intersection.cycle_max:.0f} s", None, plan.cycle, limit))
    for r, ring in enumerate(plan.rings):
        total = sum(t.split for t in ring)
        if abs(total - plan.cycle) > ROUNDING_S:
            out.append(Violation(Rule.CYCLE_SUM,
                                 f"ring {r + 1} splits sum to {total:.2f} s, cycle is "
                                 f"{plan.cycle:.2f} s", None, total, plan.cycle))
    if not 0.0 <= plan.offset < plan.cycle:
        out.append(Violation(Rule.OFFSET_RANGE,
                             f"offset {plan.offset:.1f} s outside 0-{plan.cycle:.1f} s",
                             None, plan.offset, plan.cycle))
    if plan.offset_reference not in plan.timings:
        out.append(Violation(Rule.OFFSET_REFERENCE,
                             f"offset reference phase {plan.offset_reference} is not in the plan",
                             plan.offset_reference))
    return out


def _check_ring_structure(plan: TimingPlan, intersection: Intersection) -> list[Violation]:
    """Each plan ring times the phases of one configured ring, in whole barrier groups.

    Lead/lag order inside a barrier group is free; the order of the groups is the configured
    one, possibly rotated (the cycle may start at any barrier), the same in every ring.
    """
    out: list[Violation] = []
    if len(plan.rings) != len(intersection.rings):
        return [Violation(Rule.RING_STRUCTURE,
                          f"plan has {len(plan.rings)} rings, intersection has "
                          f"{len(intersection.rings)}")]
    n_groups = len(intersection.rings[0])
    starts: set[int] = set()
    for r, ring in enumerate(plan.rings):
        locations = [intersection.phase_location(t.phase) for t in ring]
        wrong = [t.phase for t, (rr, _) in zip(ring, locations) if rr != r]
        for number in wrong:
            out.append(Violation(Rule.RING_STRUCTURE, f"phase belongs to ring "
                                 f"{intersection.phase_location(number)[0] + 1}, plan times it "
                                 f"in ring {r + 1}", number))
        if wrong:
            continue
        blocks = [g for i, (_, g) in enumerate(locations) if i == 0 or locations[i - 1][1] != g]
        rotation = [(blocks[0] + k) % n_groups for k in range(n_groups)] if blocks else []
        if blocks != rotation:
            out.append(Violation(Rule.RING_STRUCTURE,
                                 f"ring {r + 1} runs barrier groups in order "
                                 f"{[b + 1 for b in blocks]}; each group must run once, in the "
                                 f"configured order"))
        elif blocks:
            starts.add(blocks[0])
    if len(starts) > 1:
        out.append(Violation(Rule.RING_STRUCTURE, "rings start the cycle in different barrier "
                                                  "groups"))
    return out


def _check_barriers(plan: TimingPlan, intersection: Intersection) -> list[Violation]:
    out: list[Violation] = []
    for g in range(len(intersection.rings[0])):
        sums = [sum(t.split for t in ring if intersection.phase_location(t.phase)[1] == g)
                for ring in plan.rings]
        if max(sums) - min(sums) > ROUNDING_S:
            text = ", ".join(f"ring {r + 1} {s:.1f} s" for r, s in enumerate(sums))
            out.append(Violation(Rule.BARRIER,
                                 f"barrier group {g + 1} is not aligned across rings: {text}",
                                 None, max(sums), min(sums)))
    return out


def _check_conflicts(plan: TimingPlan, intersection: Intersection) -> list[Violation]:
    """Conflicting phases in different rings must never hold right of way together.

    A phase holds right of way for its whole split: its green, its yellow (drivers may still
    enter) and its red clearance (those who entered are still clearing).
    """
    out: list[Violation] = []
    windows = phase_windows(plan)
    ring_of = {t.phase: r for r, ring in enumerate(plan.rings) for t in ring}
    numbers = sorted(windows)
    for i, a in enumerate(numbers):
        for b in numbers[i + 1:]:
            if ring_of[a] == ring_of[b] or not intersection.phases_conflict(a, b):
                continue
            start = max(windows[a][0], windows[b][0])
            end = min(windows[a][2], windows[b][2])
            if end - start > ROUNDING_S:
                out.append(Violation(Rule.CONFLICT,
                                     f"conflicts with phase {b} yet both hold right of way "
                                     f"from {start:.1f} s to {end:.1f} s of the cycle",
                                     a, end - start, 0.0))
    return out
