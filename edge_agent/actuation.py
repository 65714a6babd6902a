"""Local actuation at the edge: every second, inside the bounds of the plan in force.

Pure: no IO, time is an argument. The caller (the edge runtime over Modbus, or the SUMO
harness) measures each phase's detectors into a :class:`PhaseMeasure`, asks
:meth:`Actuator.decide` what to do, and carries the decision out through whatever ends a green
safely (the harness's ``SignalDriver``, which asks :func:`edge_agent.guard.check_switch` again).

What a decision does, in order of precedence, while the current phase is green:

1. **min green**: hold until the phase's minimum green (the plan's, never below the configured
   one) has run.
2. **spillback**: a phase whose every demanded lane leads into a full exit lane is ended
   (green into a full link moves nobody and blocks the box); a phase is never chosen while
   its exits are full.
3. **coordination** (when the plan is coordinated): the coordinated phase holds to its yield
   point; other phases are forced off in time for the coordinated phase to start on its
   offset, and return early to it when they gap out, so the offset is never broken.
4. **max green**: end the phase at the plan's maximum when another phase has demand.
5. **extension**: keep the green while a queue is discharging on a lane with a free exit, or
   while the next vehicle reaches the stop line within the passage time (the gap); the
   passage time shrinks as vehicles queue on the other phases (``passage_min_s``,
   ``waiting_ref_veh``), so a trickle does not hold a green against a waiting queue.
6. **gap-out**: otherwise end it, and serve the phase with the most demand next (queued plus
   weighted approaching vehicles, less weighted vehicles already in its exit zones, plus a
   weight per second waited; phases with no demand are skipped; a phase that has waited
   ``max_wait_s`` with at least ``min_queue_veh`` queued goes first, at this gap-out or the
   max-out; it ends a green that is still discharging a queue only once it has waited
   ``preempt_wait_s``: cutting a saturated discharge for one or two vehicles cost delay).

Every decision carries an explanation such as ``"phase 2 extended: queue 14 veh, gap 1.1 s"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from edge_agent.guard import check_switch
from edge_agent.model import Intersection

__all__ = ["ActuationParams", "Bounds", "Coordination", "Decision", "PhaseMeasure", "Actuator"]

HOLD, EXTEND, SWITCH = "hold", "extend", "switch"


@dataclass(frozen=True, slots=True)
class ActuationParams:
    """Tuning of the local logic (from the ``[actuation]`` table of the controller config).

    ``passage_s``: extend while the next approaching vehicle reaches the stop line within this
    many seconds. ``min_queue_veh``: halting vehicles on a lane with a free exit that count as a
    discharging queue. ``approach_weight``: weight of moving vehicles against halting ones when
    ranking phases. ``max_wait_s``: a phase with demand waiting this long is served next.
    ``recall_s``: phases without any detector are served at least this often.
    ``passage_min_s`` and ``waiting_ref_veh``: the passage time shrinks linearly from
    ``passage_s`` (nobody waiting elsewhere) to ``passage_min_s`` when ``waiting_ref_veh``
    vehicles queue on the other phases (0: no scaling). ``pressure_weight``: weight of the
    vehicles already in a phase's exit zones, subtracted from its demand when ranking phases
    (green into a filling link moves fewer vehicles). ``wait_weight``: vehicles' worth of each
    second a phase has waited, added when ranking phases (long waits are served sooner).
    ``preempt_wait_s``: a phase that has waited ``max_wait_s`` is served next, when the green
    in force gaps out or maxes out; only after ``preempt_wait_s`` does it also end a green
    that is still discharging a queue (0: at ``max_wait_s``, as soon as it starves). The wait
    stays bounded either way: by ``max_wait_s`` plus the current phase's max green.
    """

    passage_s: float = 2.5
    min_queue_veh: float = 1.0
    approach_weight: float = 0.5
    max_wait_s: float = 120.0
    recall_s: float = 120.0
    passage_min_s: float = 2.5
    waiting_ref_veh: float = 0.0
    pressure_weight: float = 0.0
    wait_weight: float = 0.0
    preempt_wait_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("passage_s", "min_queue_veh", "approach_weight", "max_wait_s", "recall_s",
                     "passage_min_s", "waiting_ref_veh", "pressure_weight", "wait_weight",
                     "preempt_wait_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"actuation.{name}: must be a finite number >= 0, got {value!r}")
        if self.passage_min_s > self.passage_s:
            raise ValueError(f"actuation.passage_min_s: must be <= passage_s "
                             f"({self.passage_s!r}), got {self.passage_min_s!r}")


@dataclass(frozen=True, slots=True)
class Bounds:
    """A phase's green bounds from the plan in force (seconds)."""

    min_green: float
    max_green: float


@dataclass(frozen=True, slots=True)
class Coordination:
    """A coordinated plan: ``phase``'s green starts at ``offset`` s after every zero of the
    system cycle clock (time modulo ``cycle``) and holds at least ``yield_s`` s."""

    cycle: float
    offset: float
    phase: int
    yield_s: float

    def cycle_time(self, now: float) -> float:
        """Seconds since the coordinated phase's scheduled start of green."""
        return (now - self.offset) % self.cycle


@dataclass(frozen=True, slots=True)
class PhaseMeasure:
    """What the detectors of one phase's lanes say now.

    ``queue``: halting vehicles on lanes whose exit is free; ``discharging``: those of them on
    lanes whose stop-bar detector saw a vehicle leave within the last few seconds (a queue
    that stands still behind a permissive turn or a red movement does not keep a green on);
    ``approaching``: moving vehicles
    in the detection zones of those lanes; ``gap_s``: time until the next moving vehicle
    reaches the stop line (inf: none); ``blocked``: every lane with demand leads into a full
    exit; ``detected``: False when the phase has no working detector (it is then recalled);
    ``downstream``: vehicles in the exit zones the phase feeds.
    """

    queue: float = 0.0
    discharging: float = 0.0
    approaching: float = 0.0
    gap_s: float = math.inf
    blocked: bool = False
    detected: bool = True
    downstream: float = 0.0

    @property
    def has_demand(self) -> bool:
        return self.queue > 0 or self.approaching > 0


@dataclass(frozen=True, slots=True)
class Decision:
    """``action`` is hold, extend or switch (to ``target``); ``reason`` says why."""

    action: str
    reason: str
    target: int | None = None


@dataclass
class Actuator:
    """One intersection's local logic; keeps only when each phase was last served."""

    intersection: Intersection
    sequence: tuple[int, ...]
    params: ActuationParams = field(default_factory=ActuationParams)
    last_served: dict[int, float] = field(default_factory=dict)

    def served(self, phase: int, now: float) -> None:
        """Record that ``phase`` is green at ``now`` (call every step while it is)."""
        self.last_served[phase] = now

    def waited(self, phase: int, now: float) -> float:
        return now - self.last_served.setdefault(phase, now)

    # --- the decision ---------------------------------------------------------------------
    def decide(self, now: float, phase: int, green_elapsed: float,
               measures: Mapping[int, PhaseMeasure], bounds: Mapping[int, Bounds],
               clearance: Mapping[int, float], coordination: Coordination | None = None
               ) -> Decision:
        """What to do with ``phase``, green for ``green_elapsed`` s, at time ``now``.

        ``clearance[n]`` is phase n's yellow + red clearance. A switch decision has passed
        :func:`check_switch`; the caller must still carry it out through the guarded driver.
        """
        self.served(phase, now)
        p = self.params
        own = measures.get(phase, PhaseMeasure(detected=False))
        b = bounds[phase]
        min_green = max(b.min_green, self.intersection.phase_by_number[phase].min_green)
        if green_elapsed < min_green - 1e-9:
            return Decision(HOLD, f"phase {phase} held: min green {min_green:.0f} s")
        if coordination is not None:
            return self._coordinated(now, phase, green_elapsed, own, measures, bounds,
                                     clearance, coordination)
        candidates = self._candidates(now, phase, measures)
        if not candidates:
            return Decision(HOLD, f"phase {phase} rests in green: no conflicting demand")
        if own.blocked:
            return self._switch(phase, green_elapsed, candidates, measures,
                                f"phase {phase} ended after {green_elapsed:.0f} s: exit "
                                f"blocked (spillback)", now)
        starving = [n for n in candidates if self.waited(n, now) >= p.max_wait_s
                    and (self._queue(n, measures) >= p.min_queue_veh or
                         not measures.get(n, PhaseMeasure(detected=False)).detected)]
        # A starving phase is served next; it ends a green still discharging a queue only
        # once it has waited preempt_wait_s (at max_wait_s when that is 0).
        preempt = max(p.preempt_wait_s, p.max_wait_s)
        urgent = [n for n in starving if self.waited(n, now) >= preempt - 1e-9]
        if green_elapsed >= b.max_green - 1e-9 or urgent:
            why = (f"max-out at {green_elapsed:.0f} s" if green_elapsed >= b.max_green - 1e-9
                   else f"phase {urgent[0]} waited {self.waited(urgent[0], now):.0f} s")
            return self._switch(phase, green_elapsed, starving or candidates, measures,
                                f"phase {phase} ended: {why}", now)
        passage = self.passage(phase, measures)
        keep = self._extension(phase, own, passage)
        if keep is not None:
            if starving:
                keep = Decision(keep.action, f"{keep.reason}; phase {starving[0]} waited "
                                             f"{self.waited(starving[0], now):.0f} s: served next")
            return keep
        why = f"phase {phase} gap-out after {green_elapsed:.0f} s (gap {_fmt_gap(own.gap_s)} > " \
              f"{passage:.1f} s)"
        if starving:
            why += f"; phase {starving[0]} waited {self.waited(starving[0], now):.0f} s"
        return self._switch(phase, green_elapsed, starving or candidates, measures, why, now)

    # --- pieces ---------------------------------------------------------------------------
    def passage(self, phase: int, measures: Mapping[int, PhaseMeasure]) -> float:
        """The passage time now: shorter the more vehicles queue on the other phases."""
        p = self.params
        if p.waiting_ref_veh <= 0 or p.passage_min_s >= p.passage_s:
            return p.passage_s
        waiting = sum(m.queue for n, m in measures.items() if n != phase and m.detected)
        share = min(1.0, waiting / p.waiting_ref_veh)
        return p.passage_s - (p.passage_s - p.passage_min_s) * share

    def _extension(self, phase: int, own: PhaseMeasure,
                   passage: float | None = None) -> Decision | None:
        p = self.params
        passage = p.passage_s if passage is None else passage
        if not own.detected:
            return None
        if own.discharging >= p.min_queue_veh:
            return Decision(EXTEND, f"phase {phase} extended: queue {own.discharging:.0f} veh, "
                                    f"gap {_fmt_gap(own.gap_s)}")
        if own.gap_s <= passage:
            return Decision(EXTEND, f"phase {phase} extended: gap {own.gap_s:.1f} s "
                                    f"<= passage {passage:.1f} s")
        return None

    @staticmethod
    def _queue(n: int, measures: Mapping[int, PhaseMeasure]) -> float:
        return measures.get(n, PhaseMeasure(detected=False)).queue

    def _score(self, n: int, measures: Mapping[int, PhaseMeasure], now: float) -> float:
        m = measures.get(n, PhaseMeasure(detected=False))
        if not m.detected:
            return 0.0
        p = self.params
        return (m.queue + p.approach_weight * m.approaching - p.pressure_weight * m.downstream
                + p.wait_weight * self.waited(n, now))

    def _candidates(self, now: float, phase: int,
                    measures: Mapping[int, PhaseMeasure]) -> list[int]:
        """Other phases worth serving: demand and a free exit, or a detector-less recall."""
        out = []
        for n in self.sequence:
            if n == phase:
                continue
            m = measures.get(n, PhaseMeasure(detected=False))
            if not m.detected:
                if self.waited(n, now) >= self.params.recall_s:
                    out.append(n)
            elif m.has_demand and not m.blocked:
                out.append(n)
        return out

    def _best(self, candidates: list[int], measures: Mapping[int, PhaseMeasure],
              now: float) -> int:
        # Most demand first; on a tie the one that waited longest, then sequence order.
        return max(candidates, key=lambda n: (self._score(n, measures, now),
                                              self.waited(n, now), -self.sequence.index(n)))

    def _switch(self, phase: int, green_elapsed: float, candidates: list[int],
                measures: Mapping[int, PhaseMeasure], why: str, now: float) -> Decision:
        target = self._best(candidates, measures, now)
        violations = check_switch(self.intersection, phase, green_elapsed, target)
        if violations:  # deny by default: keep the green, say why
            return Decision(HOLD, f"phase {phase} held: guard refused the switch to {target}: "
                                  + "; ".join(str(v) for v in violations))
        skipped = [n for n in self.sequence if n not in candidates and n != phase]
        m = measures.get(target, PhaseMeasure(detected=False))
        what = f"queue {m.queue:.0f} veh" if m.detected else "recall (no detector)"
        text = f"{why} -> phase {target} ({what})"
        if skipped:
            text += f"; skipped {', '.join(map(str, skipped))} (no demand or exit blocked)"
        return Decision(SWITCH, text, target)

    def _coordinated(self, now: float, phase: int, green_elapsed: float, own: PhaseMeasure,
                     measures: Mapping[int, PhaseMeasure], bounds: Mapping[int, Bounds],
                     clearance: Mapping[int, float], c: Coordination) -> Decision:
        t = c.cycle_time(now)
        if phase == c.phase:
            if t < c.yield_s:
                return Decision(HOLD, f"phase {phase} coordinated: holds to its yield point "
                                      f"({c.yield_s - t:.0f} s left)")
            fits = [n for n in self._candidates(now, phase, measures)
                    if self._fits(n, t, phase, bounds, clearance, c)]
            if not fits:
                return Decision(HOLD, f"phase {phase} coordinated: rests (no demand that fits "
                                      f"before the next cycle)")
            keep = self._extension(phase, own)
            if keep is not None and green_elapsed < bounds[phase].max_green:
                return keep
            return self._switch(phase, green_elapsed, fits, measures,
                                f"phase {phase} coordinated: yields at {t:.0f} s of the cycle",
                                now)
        # A non-coordinated phase: force-off so the coordinated phase starts on time.
        left = (c.cycle - t) % c.cycle - clearance[phase]
        if left <= 0 or green_elapsed >= bounds[phase].max_green - 1e-9 or own.blocked:
            why = ("force-off for the coordinated phase" if left <= 0 else
                   "exit blocked (spillback)" if own.blocked else
                   f"max-out at {green_elapsed:.0f} s")
            return self._to(phase, green_elapsed, c.phase, f"phase {phase} ended: {why}")
        keep = self._extension(phase, own)
        if keep is not None:
            return keep
        fits = [n for n in self._candidates(now, phase, measures)
                if n != c.phase and self._fits(n, t, phase, bounds, clearance, c)]
        if fits:
            return self._switch(phase, green_elapsed, fits, measures,
                                f"phase {phase} gap-out after {green_elapsed:.0f} s", now)
        return self._to(phase, green_elapsed, c.phase,
                        f"phase {phase} gap-out: early return to coordinated phase")

    def _fits(self, n: int, t: float, current: int, bounds: Mapping[int, Bounds],
              clearance: Mapping[int, float], c: Coordination) -> bool:
        """Phase n's min green fits before the coordinated phase's next start."""
        needed = clearance[current] + bounds[n].min_green + clearance[n]
        return (c.cycle - t) % c.cycle >= needed

    def _to(self, phase: int, green_elapsed: float, target: int, why: str) -> Decision:
        violations = check_switch(self.intersection, phase, green_elapsed, target)
        if violations:
            return Decision(HOLD, f"phase {phase} held: guard refused the switch to {target}: "
                                  + "; ".join(str(v) for v in violations))
        return Decision(SWITCH, f"{why} -> phase {target}", target)


def _fmt_gap(gap: float) -> str:
    return "none" if math.isinf(gap) else f"{gap:.1f} s"
