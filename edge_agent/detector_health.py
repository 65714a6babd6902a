"""Detector health: stuck on, stuck off, chattering; recalls for failed detectors.

Pure, no IO; time is an argument. :meth:`DetectorHealth.observe` takes the same
:class:`~edge_agent.aggregation.Reading` samples the aggregator does; :meth:`DetectorHealth.
evaluate` judges every detector at ``now`` and returns a :class:`HealthChange` only when a
detector enters or leaves the failed state (log once), not on every call.

Faults (the NTCIP 1202 diagnostics: max presence, no activity, erratic counts):

``stuck_on``
    presence held continuously for longer than ``stuck_on_s`` (a queue in a long red lasts
    well under the default 180 s).
``stuck_off``
    no actuation for longer than ``stuck_off_s`` while the healthy neighbours (the other
    detectors of the same approach; all others where the approach has none) actuated at
    least ``stuck_off_neighbour_actuations`` times in that time: a quiet night is not a fault,
    a silent loop beside busy lanes is. It applies to stop-bar and advance detectors from the
    start (a loop dead since boot is found too) and to any detector once it has actuated.
``chatter``
    more than ``chatter_per_min`` presence changes within a minute.

An actuation is a presence change to on, a change of a cumulative counter, or a non-zero
vehicle count. Recovery has hysteresis in level and time: a failed detector recovers only
after each of its faults has been *clean*, by a stricter test than the one that raised it,
for ``recovery_s`` without a break: presence never held longer than ``stuck_on_clear_s``,
an actuation at least every ``stuck_off_clear_s``, at most ``chatter_clear_per_min``
changes a minute. A flapping detector therefore does not flap its recall.

A failed stop-bar or advance detector can no longer place or extend calls, so its phases go
on recall (:attr:`DetectorHealth.recall_phases`): the phases serving the vehicle movements
of its lane (of its approach where no movement names the lane). Queue and speed detectors
only measure; their failure drops their data (the aggregator leaves them out) but recalls
nothing.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from edge_agent.aggregation import Quantity, Reading
from edge_agent.model import (
    Contract, Detector, DetectorKind, Intersection, Turn, require, require_finite, require_int,
)

__all__ = ["FaultKind", "HealthConfig", "HealthChange", "DetectorHealth", "detector_phases"]

_WINDOW_S = 60.0  # chatter is counted per minute
#: Detectors that place and extend calls: expected to actuate, and recalled when failed.
CALLING_KINDS = frozenset({DetectorKind.STOP_BAR, DetectorKind.ADVANCE})


class FaultKind(str, enum.Enum):
    """Why a detector is failed."""

    STUCK_ON = "stuck_on"
    STUCK_OFF = "stuck_off"
    CHATTER = "chatter"


class HealthConfig(Contract, kw_only=True):
    """Thresholds of the detector checks (seconds; counts). Each ``*_clear*`` threshold is
    the stricter test a failed detector must pass for ``recovery_s`` to recover."""

    stuck_on_s: float = 180.0
    stuck_on_clear_s: float = 60.0
    stuck_off_s: float = 1200.0
    stuck_off_neighbour_actuations: int = 20
    stuck_off_clear_s: float = 120.0
    chatter_per_min: int = 120
    chatter_clear_per_min: int = 60
    recovery_s: float = 300.0

    def __post_init__(self) -> None:
        for name in ("stuck_on_s", "stuck_on_clear_s", "stuck_off_s", "stuck_off_clear_s",
                     "recovery_s"):
            require_finite(getattr(self, name), f"detector_health.{name}", minimum=0.0)
            require(getattr(self, name) > 0.0, f"detector_health.{name}", "must be > 0")
        require_int(self.stuck_off_neighbour_actuations,
                    "detector_health.stuck_off_neighbour_actuations", 1, 1_000_000)
        require_int(self.chatter_per_min, "detector_health.chatter_per_min", 1, 100_000)
        require_int(self.chatter_clear_per_min, "detector_health.chatter_clear_per_min", 0,
                    100_000)
        for clear, enter in (("stuck_on_clear_s", "stuck_on_s"),
                             ("stuck_off_clear_s", "stuck_off_s"),
                             ("chatter_clear_per_min", "chatter_per_min")):
            require(getattr(self, clear) < getattr(self, enter), f"detector_health.{clear}",
                    f"must be below {enter} ({getattr(self, enter):g}): that is the hysteresis")


@dataclass(frozen=True, slots=True)
class HealthChange:
    """A detector entered (``failed``) or left the failed state; ``phases`` are its recalls."""

    t: float
    detector: str
    failed: bool
    faults: frozenset[FaultKind]
    phases: frozenset[int]
    reason: str

    def __str__(self) -> str:
        return f"detector {self.detector} {'failed' if self.failed else 'recovered'}: " \
               f"{self.reason}"


@dataclass(slots=True)
class _Detector:
    """What the checks know of one detector."""

    last_activity: float
    expects_activity: bool
    last_t: float | None = None
    present: bool | None = None
    on_since: float | None = None
    counter: float | None = None
    changes: deque[float] = field(default_factory=deque)
    actuations: deque[tuple[float, int]] = field(default_factory=deque)
    recent: int = 0  # the sum of ``actuations``: neighbours read it every evaluation
    # Failed faults -> since when the stricter clean test has held (None: not clean now).
    faults: dict[FaultKind, float | None] = field(default_factory=dict)


def detector_phases(intersection: Intersection) -> dict[str, frozenset[int]]:
    """The phases each detector places calls for (empty for queue and speed detectors)."""
    lane_approach = {lane: a.id for a in intersection.approaches for lane in a.lanes}
    vehicle = [m for m in intersection.movements if m.turn != Turn.PEDESTRIAN]
    out: dict[str, frozenset[int]] = {}
    for d in intersection.detectors:
        if d.kind not in CALLING_KINDS:
            out[d.id] = frozenset()
            continue
        movements = {m.id for m in vehicle if d.lane in m.lanes}
        if not movements:  # the lane is named by no movement: recall its whole approach
            approach = lane_approach.get(d.lane)
            movements = {m.id for m in vehicle if m.approach == approach}
        out[d.id] = frozenset(p.number for p in intersection.phases
                              if movements.intersection(p.movements))
    return out


def _neighbours(intersection: Intersection) -> dict[str, tuple[str, ...]]:
    lane_approach = {lane: a.id for a in intersection.approaches for lane in a.lanes}
    out = {}
    for d in intersection.detectors:
        approach = lane_approach.get(d.lane)
        same = tuple(o.id for o in intersection.detectors
                     if o.id != d.id and approach is not None
                     and lane_approach.get(o.lane) == approach)
        out[d.id] = same or tuple(o.id for o in intersection.detectors if o.id != d.id)
    return out


class DetectorHealth:
    """Tracks every detector of one intersection; ``start`` is when observation began."""

    def __init__(self, intersection: Intersection, config: HealthConfig | None = None, *,
                 start: float) -> None:
        require_finite(start, "start", minimum=0.0)
        self.intersection = intersection
        self.config = config if config is not None else HealthConfig()
        self._detectors: dict[str, Detector] = {d.id: d for d in intersection.detectors}
        self._state = {d.id: _Detector(last_activity=start,
                                       expects_activity=d.kind in CALLING_KINDS)
                       for d in intersection.detectors}
        self._phases = detector_phases(intersection)
        self._neighbours = _neighbours(intersection)
        self._now = start
        #: Readings older than the detector's previous one (dropped: state moves forward only).
        self.out_of_order = 0

    # --- queries --------------------------------------------------------------------------
    @property
    def failed(self) -> frozenset[str]:
        """Detectors failed now (pass to :meth:`edge_agent.aggregation.Aggregator.close`)."""
        return frozenset(d for d, s in self._state.items() if s.faults)

    def faults(self, detector: str) -> frozenset[FaultKind]:
        """The faults a detector is failed for (empty when healthy)."""
        return frozenset(self._state[detector].faults)

    @property
    def recall_phases(self) -> frozenset[int]:
        """Phases to put on recall because a detector that calls them has failed."""
        return frozenset(p for d in self.failed for p in self._phases[d])

    # --- input ----------------------------------------------------------------------------
    def observe(self, reading: Reading) -> None:
        """Take one reading; readings of detectors not of this intersection are an error."""
        require(reading.detector in self._state, "reading.detector",
                f"unknown detector {reading.detector!r} of intersection {self.intersection.id}")
        st, t = self._state[reading.detector], reading.t
        if st.last_t is not None and t < st.last_t:
            self.out_of_order += 1
            return
        st.last_t = t
        actuations = 0
        if reading.quantity == Quantity.PRESENCE:
            on = reading.value == 1
            if st.present is not None and on != st.present:
                st.changes.append(t)
            if on and not st.present:
                st.on_since, actuations = t, 1
            elif not on:
                st.on_since = None
            st.present = on
        elif reading.quantity == Quantity.COUNTER:
            if st.counter is not None and reading.value != st.counter:
                actuations = 1  # at least one vehicle; the aggregator counts them exactly
            st.counter = reading.value
        elif reading.quantity == Quantity.VEHICLES:
            actuations = int(reading.value)
        if actuations:
            st.last_activity, st.expects_activity = t, True
            st.actuations.append((t, actuations))
            st.recent += actuations
        self._prune(st, t)

    def _prune(self, st: _Detector, now: float) -> None:
        # Keep only what the checks look at, so memory stays flat on a box that runs for years.
        while st.changes and st.changes[0] <= now - _WINDOW_S:
            st.changes.popleft()
        while st.actuations and st.actuations[0][0] <= now - self.config.stuck_off_s:
            st.recent -= st.actuations.popleft()[1]

    # --- judgement ------------------------------------------------------------------------
    def evaluate(self, now: float) -> list[HealthChange]:
        """Judge every detector at ``now``; the detectors that entered or left failure."""
        require_finite(now, "now", minimum=0.0)
        require(now >= self._now, "now", f"time went backwards: {now:.3f} < {self._now:.3f}")
        self._now = now
        failed_before = self.failed  # neighbours are judged by their state before this call
        for st in self._state.values():
            self._prune(st, now)
        out: list[HealthChange] = []
        for detector, st in self._state.items():
            was_failed = bool(st.faults)
            raised: list[str] = []
            for kind, (enter, clean, why) in self._symptoms(detector, st, now,
                                                           failed_before).items():
                if kind not in st.faults:
                    if enter:
                        st.faults[kind] = None
                        raised.append(why)
                elif not clean:
                    st.faults[kind] = None
                else:
                    since = st.faults[kind]
                    since = now if since is None else since
                    st.faults[kind] = since
                    if now - since >= self.config.recovery_s:
                        del st.faults[kind]
            if bool(st.faults) != was_failed:
                reason = "; ".join(raised) if st.faults else \
                    f"normal for {self.config.recovery_s:g} s"
                out.append(HealthChange(t=now, detector=detector, failed=bool(st.faults),
                                        faults=frozenset(st.faults),
                                        phases=self._phases[detector], reason=reason))
        return out

    def _symptoms(self, detector: str, st: _Detector, now: float,
                  failed: frozenset[str]) -> dict[FaultKind, tuple[bool, bool, str]]:
        """Per fault: (raise it now, clean by the stricter test now, why it is raised)."""
        c = self.config
        held = now - st.on_since if st.present and st.on_since is not None else 0.0
        silent = now - st.last_activity
        changes = len(st.changes)
        stuck_off = st.expects_activity and not st.present and silent > c.stuck_off_s
        around = 0
        if stuck_off:  # only then is the neighbours' activity worth adding up
            around = sum(self._state[o].recent for o in self._neighbours[detector]
                         if o not in failed)
            stuck_off = around >= c.stuck_off_neighbour_actuations
        checks = {
            FaultKind.STUCK_ON: (held > c.stuck_on_s, held <= c.stuck_on_clear_s),
            FaultKind.STUCK_OFF: (stuck_off, silent <= c.stuck_off_clear_s),
            FaultKind.CHATTER: (changes > c.chatter_per_min,
                                changes <= c.chatter_clear_per_min),
        }
        why = {  # built only for a fault being raised: evaluate runs every second
            FaultKind.STUCK_ON: lambda: f"stuck on: presence held {held:.0f} s > "
                                        f"{c.stuck_on_s:g} s",
            FaultKind.STUCK_OFF: lambda: f"stuck off: no actuation for {silent:.0f} s while "
                                         f"neighbours actuated {around} times",
            FaultKind.CHATTER: lambda: f"chattering: {changes} presence changes in "
                                       f"{_WINDOW_S:g} s > {c.chatter_per_min}",
        }
        return {kind: (enter, clean, why[kind]() if enter else "")
                for kind, (enter, clean) in checks.items()}
