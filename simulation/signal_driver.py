"""Drive one SUMO traffic light phase by phase: green, yellow, red clearance, next green.

Controllers in the harness decide *which* phase comes next and *when*; the driver makes the
change safe: it asks the guard (:func:`edge_agent.guard.check_switch`) before ending a green,
then runs the change interval and the red clearance before the next green. Links that stay
green into the next phase are not interrupted. States are set with
``trafficlight.setRedYellowGreenState``, which FIELD-NOTES prefers over loading programmes
mid-run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from edge_agent.errors import PlanRejected
from edge_agent.guard import check_switch
from edge_agent.model import Intersection

__all__ = ["Clearance", "SignalDriver", "guarded_clearance"]

GREEN, YELLOW, RED = "green", "yellow", "red"
_GREEN_CHARS = frozenset("Gg")

#: (yellow, red clearance) seconds per phase number
Clearance = Mapping[int, tuple[float, float]]


def guarded_clearance(intersection: Intersection) -> dict[int, tuple[float, float]]:
    """The configured change and clearance intervals, which passed the guard's floors."""
    return {p.number: (p.yellow, p.red_clearance) for p in intersection.phases}


class SignalDriver:
    """Runs one traffic light of a SUMO session through safe phase changes.

    ``phase_states`` maps each phase number to its SUMO green state string (as imported);
    ``clearance`` gives the (yellow, red) intervals to run, by default the guarded ones.
    Call :meth:`advance` once per simulation step, then :meth:`switch_to` to end a green.
    """

    def __init__(self, conn: Any, tls_id: str, intersection: Intersection,
                 phase_states: Mapping[int, str], *, clearance: Clearance | None = None,
                 start_phase: int | None = None, step_length: float = 1.0) -> None:
        if len(intersection.rings) != 1:
            raise ValueError(f"{intersection.id}: the driver runs single-ring sequences only")
        self.conn, self.tls_id, self.intersection = conn, tls_id, intersection
        self.phase_states = dict(phase_states)
        self.sequence: list[int] = [n for group in intersection.rings[0] for n in group]
        self.clearance = dict(clearance or guarded_clearance(intersection))
        self.step_length = step_length
        self.phase = start_phase if start_phase is not None else self.sequence[0]
        self.interval = GREEN
        self.elapsed = 0.0  # seconds in the current interval
        self.green_elapsed = 0.0  # seconds of green of the current phase
        self.target: int | None = None
        self.changes = 0
        self._apply(self.phase_states[self.phase])

    # --- what controllers read ---------------------------------------------------------
    @property
    def in_green(self) -> bool:
        """True while a phase shows green (not changing)."""
        return self.interval == GREEN

    def next_in_sequence(self, phase: int | None = None) -> int:
        """The phase after ``phase`` (default: the current one) in the configured order."""
        i = self.sequence.index(self.phase if phase is None else phase)
        return self.sequence[(i + 1) % len(self.sequence)]

    def min_green(self, phase: int | None = None) -> float:
        """Configured minimum green of a phase (default: the current one)."""
        return self.intersection.phase_by_number[self.phase if phase is None else phase].min_green

    # --- what controllers do ------------------------------------------------------------
    def switch_to(self, target: int) -> None:
        """End the current green and serve ``target`` after the change and clearance intervals.

        Raises PlanRejected if the guard refuses (min green not served, unknown phase): a
        controller asking for that has a bug, and it must not be hidden.
        """
        if not self.in_green:
            raise RuntimeError(f"{self.tls_id}: phase {self.phase} is already changing")
        if target == self.phase:
            return
        violations = check_switch(self.intersection, self.phase, self.green_elapsed, target)
        if violations:
            raise PlanRejected(0, [str(v) for v in violations])
        self.target = target
        self._enter(YELLOW)

    def advance(self) -> None:
        """Account one simulation step and move on when an interval has run its course."""
        self.elapsed += self.step_length
        if self.interval == GREEN:
            self.green_elapsed += self.step_length
            return
        yellow, red = self.clearance[self.phase]
        if self.interval == YELLOW and self._done(yellow):
            self._enter(RED if red > 0 else GREEN)
        elif self.interval == RED and self._done(red):
            self._enter(GREEN)

    # --- internals ----------------------------------------------------------------------
    def _done(self, duration: float) -> bool:
        # Intervals are run in whole steps, rounded up: never shorter than configured.
        return self.elapsed >= math.ceil(duration / self.step_length - 1e-9) * self.step_length

    def _enter(self, interval: str) -> None:
        self.interval, self.elapsed = interval, 0.0
        assert self.target is not None
        now, nxt = self.phase_states[self.phase], self.phase_states[self.target]
        if interval == YELLOW:
            self._apply("".join(a if a in _GREEN_CHARS and b in _GREEN_CHARS else
                                "y" if a in _GREEN_CHARS else "r" for a, b in zip(now, nxt)))
        elif interval == RED:
            self._apply("".join(a if a in _GREEN_CHARS and b in _GREEN_CHARS else "r"
                                for a, b in zip(now, nxt)))
        else:
            self.phase, self.target = self.target, None
            self.green_elapsed = 0.0
            self.changes += 1
            self._apply(nxt)

    def _apply(self, state: str) -> None:
        self.conn.trafficlight.setRedYellowGreenState(self.tls_id, state)
