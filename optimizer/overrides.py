"""Operator overrides as typed commands that produce timing plans.

An override says *which* intersection, *what* to run, *until when*, *why* and *who* asks. What
to run is one of three timing patterns, each turned into a complete :class:`TimingPlan` with
``source = override``; the arbiter then checks that plan with the same guard as every other
plan (:func:`edge_agent.guard.check_plan`) and refuses it whole if it breaks a rule. Nothing
here clamps a value into range: a pattern that asks too much yields a plan the guard rejects.

Patterns (the ``kind`` names are what the API and the command line use):

``extend-phase``  phase N gets ``seconds`` more green than in the plan in force. The cycle grows
                  by the same amount and, so that the barriers stay aligned, so does the last
                  phase of the same barrier group in every other ring. The actuation maximum of
                  the phases lengthened is raised to their new green where it was lower.
``fixed-cycle``   the plan in force re-timed to cycle C: every barrier group keeps its share of
                  the cycle, and inside a group each phase keeps its share of the green (yellow
                  and red clearance unchanged). Times are rounded to 0.1 s. The offset scales
                  with the cycle unless given.
``plan``          a complete plan (a plan file, or its JSON form in the API) for the
                  intersection; its source, author, activation and expiry are set by the
                  override, and the arbiter gives it the next plan id.

A flashing or all-red mode is deliberately not a pattern: it is not a timing plan, and the
guard could not vouch for it. The first two patterns need a plan in force to start from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import msgspec

from edge_agent.model import Intersection, require_ident
from edge_agent.plan import PhaseTiming, PlanSource, TimingPlan

__all__ = ["ExtendPhase", "FixedCycle", "FullPlan", "OverrideCommand", "Pattern",
           "PATTERN_KINDS", "build_override_plan"]

MAX_REASON = 500


def _number(value: object, field: str, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{field}: must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{field}: must be > 0, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class ExtendPhase:
    """Give ``phase`` ``seconds`` more green (see the module docstring)."""

    phase: int
    seconds: float
    kind = "extend-phase"

    def __post_init__(self) -> None:
        if isinstance(self.phase, bool) or not isinstance(self.phase, int) or self.phase < 1:
            raise ValueError(f"extend-phase.phase: must be a phase number >= 1, "
                             f"got {self.phase!r}")
        _number(self.seconds, "extend-phase.seconds")

    def describe(self) -> str:
        """One line for logs and the audit trail."""
        return f"extend-phase {self.phase} by {self.seconds:g} s"


@dataclass(frozen=True, slots=True)
class FixedCycle:
    """Re-time the plan in force to ``cycle`` seconds, splits in proportion."""

    cycle: float
    offset: float | None = None
    kind = "fixed-cycle"

    def __post_init__(self) -> None:
        _number(self.cycle, "fixed-cycle.cycle")
        if self.offset is not None:
            _number(self.offset, "fixed-cycle.offset", positive=False)

    def describe(self) -> str:
        """One line for logs and the audit trail."""
        offset = "" if self.offset is None else f", offset {self.offset:g} s"
        return f"fixed-cycle {self.cycle:g} s{offset}"


@dataclass(frozen=True, slots=True)
class FullPlan:
    """Run this complete plan."""

    plan: TimingPlan
    kind = "plan"

    def __post_init__(self) -> None:
        if not isinstance(self.plan, TimingPlan):
            raise ValueError(f"plan.plan: must be a TimingPlan, got {type(self.plan).__name__}")

    def describe(self) -> str:
        """One line for logs and the audit trail."""
        return f"plan (cycle {self.plan.cycle:g} s, from plan {self.plan.plan_id})"


Pattern = Union[ExtendPhase, FixedCycle, FullPlan]
PATTERN_KINDS = (ExtendPhase.kind, FixedCycle.kind, FullPlan.kind)


@dataclass(frozen=True, slots=True)
class OverrideCommand:
    """An operator's override: where, what, until when (POSIX seconds), why and who."""

    intersection_id: str
    pattern: Pattern
    expiry: float
    reason: str
    user: str

    def __post_init__(self) -> None:
        require_ident(self.intersection_id, "override.intersection_id")
        if not isinstance(self.pattern, (ExtendPhase, FixedCycle, FullPlan)):
            raise ValueError(f"override.pattern: must be one of {', '.join(PATTERN_KINDS)}, "
                             f"got {self.pattern!r}")
        _number(self.expiry, "override.expiry")
        if not isinstance(self.reason, str) or not self.reason.strip():
            raise ValueError("override.reason: an override needs a reason")
        if len(self.reason) > MAX_REASON:
            raise ValueError(f"override.reason: at most {MAX_REASON} characters, "
                             f"got {len(self.reason)}")
        require_ident(self.user, "override.user")


def build_override_plan(command: OverrideCommand, intersection: Intersection,
                        base: TimingPlan | None, now: float) -> TimingPlan:
    """The plan ``command`` asks for, from ``now`` until its expiry (not yet guard-checked).

    ``base`` is the plan in force, which ``extend-phase`` and ``fixed-cycle`` start from.
    ``plan_id`` is 1: the arbiter numbers every plan it puts in force. Raises ``ValueError``
    naming the problem when the command cannot be turned into a plan at all.
    """
    if command.intersection_id != intersection.id:
        raise ValueError(f"override.intersection_id: {command.intersection_id!r} is not "
                         f"intersection {intersection.id!r}")
    if command.expiry <= now:
        raise ValueError(f"override.expiry: must be after now ({now:.0f}), "
                         f"got {command.expiry:.0f}")
    pattern = command.pattern
    if isinstance(pattern, FullPlan):
        plan = pattern.plan
    else:
        if base is None:
            raise ValueError(f"override.pattern: {pattern.kind} changes the plan in force, and "
                             f"{intersection.id} has none; give a complete plan instead")
        if isinstance(pattern, ExtendPhase):
            plan = _extend_phase(base, intersection, pattern)
        else:
            plan = _fixed_cycle(base, intersection, pattern)
    return msgspec.structs.replace(
        plan, plan_id=1, source=PlanSource.OVERRIDE, author=command.user, activation=now,
        expiry=command.expiry,
        explanation=f"override by {command.user}: {pattern.describe()}; {command.reason}")


def _round(x: float) -> float:
    """Plans are timed in tenths of a second."""
    return round(float(x), 1)


def _ring_of(plan: TimingPlan, number: int) -> int:
    return next(r for r, ring in enumerate(plan.rings) if any(t.phase == number for t in ring))


def _group_of(intersection: Intersection, number: int) -> int:
    try:
        return intersection.phase_location(number)[1]
    except KeyError:
        raise ValueError(f"override.pattern: phase {number} is not a phase of "
                         f"{intersection.id}") from None


def _extend_phase(base: TimingPlan, intersection: Intersection,
                  pattern: ExtendPhase) -> TimingPlan:
    if pattern.phase not in base.timings:
        raise ValueError(f"extend-phase.phase: phase {pattern.phase} is not in the plan in "
                         f"force (phases {sorted(base.timings)})")
    group = _group_of(intersection, pattern.phase)
    home = _ring_of(base, pattern.phase)
    lengthen = {pattern.phase}
    for r, ring in enumerate(base.rings):
        if r != home:
            in_group = [t.phase for t in ring if _group_of(intersection, t.phase) == group]
            if in_group:
                lengthen.add(in_group[-1])

    def grow(t: PhaseTiming) -> PhaseTiming:
        if t.phase not in lengthen:
            return t
        split = _round(t.split + pattern.seconds)
        green = split - t.yellow - t.red_clearance
        return msgspec.structs.replace(t, split=split, max_green=max(t.max_green, _round(green)))

    rings = tuple(tuple(grow(t) for t in ring) for ring in base.rings)
    return msgspec.structs.replace(base, rings=rings, cycle=_round(base.cycle + pattern.seconds))


def _fixed_cycle(base: TimingPlan, intersection: Intersection,
                 pattern: FixedCycle) -> TimingPlan:
    cycle = _round(pattern.cycle)
    factor = cycle / base.cycle
    groups = sorted({_group_of(intersection, t.phase) for t in base.rings[0]},
                    key=lambda g: next(i for i, t in enumerate(base.rings[0])
                                       if _group_of(intersection, t.phase) == g))
    old_length = {g: sum(t.split for t in base.rings[0] if _group_of(intersection, t.phase) == g)
                  for g in groups}
    new_length = {g: _round(old_length[g] * factor) for g in groups[:-1]}
    new_length[groups[-1]] = _round(cycle - sum(new_length.values()))
    rings = []
    for ring in base.rings:
        timed: dict[int, PhaseTiming] = {}
        for g in groups:
            members = [t for t in ring if _group_of(intersection, t.phase) == g]
            lost = sum(t.yellow + t.red_clearance for t in members)
            greens = sum(t.green for t in members)
            available = new_length[g] - lost
            if available <= 0:
                raise ValueError(f"fixed-cycle.cycle: {cycle:g} s leaves no green in barrier "
                                 f"group {g + 1}, whose clearance intervals alone take "
                                 f"{lost:g} s")
            used = 0.0
            for i, t in enumerate(members):
                if i < len(members) - 1:
                    green = _round(t.green * available / greens)
                    used += green
                else:  # the last phase of the group takes what rounding left over
                    green = _round(available - used)
                timed[t.phase] = msgspec.structs.replace(
                    t, split=_round(green + t.yellow + t.red_clearance),
                    min_green=min(t.min_green, green), max_green=max(t.max_green, green))
        rings.append(tuple(timed[t.phase] for t in ring))
    offset = pattern.offset if pattern.offset is not None else _round(base.offset * factor)
    if pattern.offset is None:
        offset = _round(offset % cycle)
    return msgspec.structs.replace(base, rings=tuple(rings), cycle=cycle, offset=offset)
