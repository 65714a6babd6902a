"""Timing plans: what the centre sends and the controller runs.

A plan lists, per ring, the phases in the order they run from the start of the cycle, each with
its split (green + yellow + red clearance), its change and clearance intervals, the green bounds
the edge may actuate within, and pedestrian timings. Every ring starts at local cycle time zero.
The start of green of the ``offset_reference`` phase falls ``offset`` seconds after each zero of
the system cycle clock (POSIX time modulo the cycle), which is what coordinates neighbours.

Plans are frozen value objects: construction checks only what makes a plan a plan (finite,
non-negative numbers, identifiers, an expiry after activation). Whether a plan is *safe* for an
intersection is the guard's question (:func:`edge_agent.guard.check_plan`).
"""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec

from edge_agent.model import (
    MAX_PHASE,
    Contract,
    Ident,
    PhaseNumber,
    coerce_enum,
    require,
    require_finite,
    require_ident,
    require_int,
    require_unique,
)

__all__ = ["PhaseTiming", "PlanSource", "TimingPlan", "phase_windows"]


class PlanSource(str, enum.Enum):
    """Who made a plan; arbitration ranks override > adaptive > time-of-day > fallback."""

    ADAPTIVE = "adaptive"
    OVERRIDE = "override"
    FALLBACK = "fallback"
    TIME_OF_DAY = "time-of-day"


class PhaseTiming(Contract, kw_only=True):
    """One phase's timing inside a plan.

    ``split`` is the phase's share of the cycle including its own ``yellow`` and
    ``red_clearance``; the green is what remains. ``min_green``/``max_green`` bound the local
    actuation (gap-out, extension) around the planned green.
    """

    phase: PhaseNumber
    split: float
    yellow: float
    red_clearance: float
    min_green: float
    max_green: float
    walk: float = 0.0
    ped_clearance: float = 0.0

    def __post_init__(self) -> None:
        require_int(self.phase, "phase", 1, MAX_PHASE)
        for name in ("split", "yellow", "red_clearance", "min_green", "max_green", "walk",
                     "ped_clearance"):
            require_finite(getattr(self, name), f"phase {self.phase}.{name}", minimum=0.0)

    @property
    def green(self) -> float:
        """Planned green time: the split less its change and clearance intervals."""
        return self.split - self.yellow - self.red_clearance


class TimingPlan(Contract, kw_only=True):
    """A complete timing plan for one intersection.

    ``rings[r]`` is the sequence of phase timings of ring ``r``, in running order from local
    cycle time zero. ``plan_id`` increases monotonically per intersection; the edge refuses a
    plan whose id is not greater than the last one it accepted. Times are POSIX seconds.
    """

    plan_id: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
    intersection_id: Ident
    cycle: float
    offset: float
    offset_reference: PhaseNumber
    rings: tuple[tuple[PhaseTiming, ...], ...]
    activation: float
    source: PlanSource
    author: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    expiry: float | None = None
    explanation: str = ""

    def __post_init__(self) -> None:
        require_int(self.plan_id, "plan_id", 1, 2**63 - 1)
        require_ident(self.intersection_id, "intersection_id")
        require_int(self.offset_reference, "offset_reference", 1, MAX_PHASE)
        coerce_enum(self, "source", PlanSource, "source")
        require(isinstance(self.author, str) and 0 < len(self.author) <= 128, "author",
                f"must be 1-128 characters, got {self.author!r}")
        require(isinstance(self.explanation, str), "explanation", "must be text")
        require_finite(self.cycle, "cycle", minimum=0.0)
        require(self.cycle > 0.0, "cycle", "must be > 0")
        require_finite(self.offset, "offset")
        require_finite(self.activation, "activation", minimum=0.0)
        require(len(self.rings) > 0, "rings", "must have at least one ring")
        for r, ring in enumerate(self.rings):
            require(len(ring) > 0, f"rings[{r}]", "must have at least one phase")
        require_unique([t.phase for ring in self.rings for t in ring], "rings")
        if self.expiry is not None:
            require_finite(self.expiry, "expiry")
            require(self.expiry > self.activation, "expiry",
                    f"must be after activation ({self.activation:g}), got {self.expiry:g}")

    @property
    def timings(self) -> dict[int, PhaseTiming]:
        """Every phase timing keyed by phase number."""
        return {t.phase: t for ring in self.rings for t in ring}

    def is_active(self, now: float) -> bool:
        """True from activation until expiry (exclusive)."""
        return self.activation <= now and (self.expiry is None or now < self.expiry)


def phase_windows(plan: TimingPlan) -> dict[int, tuple[float, float, float]]:
    """Per phase, (start, end of green, end of split) in cycle time from the ring start.

    Each ring starts at zero and runs its phases back to back; the guard compares windows of
    phases in different rings to find conflicting phases with right of way at the same time.
    """
    windows: dict[int, tuple[float, float, float]] = {}
    for ring in plan.rings:
        t = 0.0
        for timing in ring:
            windows[timing.phase] = (t, t + timing.green, t + timing.split)
            t += timing.split
    return windows
