"""Whether a new adaptive plan is worth a transition at the controller. Pure.

Every plan change costs something in the street: the controller seeks the new offset by
lengthening or shortening greens, and a cycle or two runs neither plan well. A re-plan that
moves the cycle, a split or the offset by a second or two gains less than that, so the centre
keeps the plan in force (same id, nothing published) unless the candidate differs from it by
more than ``min_change_s`` somewhere, or the plan in force would expire before the next
chance to replace it. Operators see a new plan when the plan really changed.
"""

from __future__ import annotations

from edge_agent.plan import PhaseTiming, PlanSource, TimingPlan

__all__ = ["material_change"]


def material_change(candidate: TimingPlan, in_force: TimingPlan | None, now: float, *,
                    min_change_s: float, renew_within_s: float) -> str | None:
    """Why ``candidate`` should replace ``in_force`` at ``now``, or None to keep ``in_force``.

    ``min_change_s`` is the smallest change of cycle, of any phase's split or green bounds, or
    of the offset (the short way round the cycle) that is worth a transition (0: every
    candidate is). ``renew_within_s``: a plan in force that expires within this many seconds
    is replaced whatever the change (the edge would otherwise fall back at its expiry).
    """
    if min_change_s <= 0:
        return "every re-plan is published (min_change_s = 0)"
    if in_force is None or in_force.source != PlanSource.ADAPTIVE:
        return "no adaptive plan in force"
    if in_force.intersection_id != candidate.intersection_id:
        raise ValueError(f"plan in force is for {in_force.intersection_id!r}, the candidate "
                         f"for {candidate.intersection_id!r}")
    if in_force.expiry is not None and in_force.expiry - now < renew_within_s:
        return f"the plan in force expires in {max(0.0, in_force.expiry - now):.0f} s"
    if abs(candidate.cycle - in_force.cycle) > min_change_s:
        return f"cycle {in_force.cycle:g} -> {candidate.cycle:g} s"
    old = _timings(in_force)
    new = _timings(candidate)
    if [r for r, _ in old] != [r for r, _ in new]:
        return "phase sequence changed"
    for (_, a), (_, b) in zip(old, new):
        for name in ("split", "min_green", "max_green"):
            x, y = getattr(a, name), getattr(b, name)
            if abs(x - y) > min_change_s:
                return f"phase {a.phase} {name.replace('_', ' ')} {x:g} -> {y:g} s"
    shift = abs(candidate.offset - in_force.offset) % candidate.cycle
    shift = min(shift, candidate.cycle - shift)
    if candidate.offset_reference != in_force.offset_reference or shift > min_change_s:
        return f"offset {in_force.offset:g} -> {candidate.offset:g} s"
    return None


def _timings(plan: TimingPlan) -> list[tuple[tuple[int, int], PhaseTiming]]:
    """((ring, phase), timing) in running order: equal keys mean the same sequence."""
    return [((r, t.phase), t) for r, ring in enumerate(plan.rings) for t in ring]
