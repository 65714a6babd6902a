"""Local actuation at the edge: the :class:`~edge_agent.actuation.Actuator` on Modbus readings.

Pure, no IO; time is an argument. The edge runtime hands :meth:`LocalActuation.observe` every
poll's register snapshot, then asks :meth:`LocalActuation.update` which coils to write for the
plan in force (or ``None`` when actuation must stand aside), writes them through the
controller's allow-list, and reports each outcome (:meth:`~LocalActuation.written`,
:meth:`~LocalActuation.unsure`). Only coils whose value changes are returned: Modbus writes
cost, and the controller keeps a coil's value until it is written again.

What the registers say, per poll:

* ``controller.phase`` (one register per ring): the phase in green. A controller may go on
  reporting a phase through its yellow and red clearance (the virtual controller does, until the
  next green starts), so a green is timed from the read that first shows its phase; that
  underestimates its age by up to a poll, which only delays a force-off (safe side).
* ``detector.count``: a counter increment since the last read is an actuation; of ``n``
  vehicles counted over a poll the last is taken at ``n/(n+1)`` of it (vehicles evenly spread),
  so a slow poll does not read as a long gap. Counts of stop-bar loops are departures.
* ``detector.presence`` (else ``detector.occupancy`` > 0): a vehicle on the loop now, an
  actuation at the time of the read; on a stop bar, a vehicle waiting (one queued vehicle).
* ``queue.length``: halting vehicles on the lane, at ``jam_spacing_m`` each.
* presence (or occupancy) of an ``exit`` detector: held without a break for ``spillback_s``,
  its departure lane is full back to the intersection. A movement all of whose exit detectors
  are full is blocked, and so is a lane all of whose movements are: it neither calls nor
  extends, and a phase whose demand is all on blocked lanes is ended (``blocked``). A stale or
  failed exit detector is never read as full (:mod:`edge_agent.spillback`).

Lanes map to phases through the intersection model (the phases serving a lane's vehicle
movements, its approach's where no movement names the lane). Per phase this gives a
:class:`~edge_agent.actuation.PhaseMeasure`: ``queue`` and ``approaching`` (vehicles counted by
the advance loops over the last poll) summed over its lanes; ``gap_s``, the time since the last
actuation, and ``discharging``, the queue on lanes whose stop bar counted a departure within
``passage_s`` plus a poll, both over the lanes the phase serves whole (a protected turn is not
kept green by the through traffic of a shared lane). A lane that one phase serves whole does not
call a phase serving only part of it (:func:`~edge_agent.lane_calls.lane_calls`: a left that
also runs permissive with the through never calls its protected phase). A phase with a failed calling detector
(the phases :class:`~edge_agent.detector_health.DetectorHealth` puts on recall), or with no
usable register at all, is not detected: the Actuator recalls it.

Each ring's :class:`~edge_agent.actuation.Actuator` decides inside the bounds of the plan in
force (its min and max greens), and the decision becomes coils of the phase in green:

* ``extend`` -> ``phase.hold`` (the controller extends the green up to its max green);
* ``switch`` -> ``phase.force_off`` (the controller ends it once its min green has run; it picks
  the next phase of its own sequence, so the decision's target is advice only), kept until
  another phase shows: the phase register may still show it through yellow and red;
* ``hold`` while min green runs -> neither (the plan's own timing);
* ``hold`` after min green (the green rests: no other phase of the ring calls) -> ``phase.hold``,
  unless another phase of the ring is not detected: it cannot call, so the plan's timing
  serves it in turn;
* a phase in green that is not detected runs the plan's timing (neither coil): without its
  detectors nothing says whether vehicles still arrive.

Coils of phases not in green are always released, so no stale hold or force-off meets a
phase's next green.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from edge_agent.actuation import (
    EXTEND, HOLD, SWITCH, ActuationParams, Actuator, Bounds, Decision, PhaseMeasure,
)
from edge_agent.detector_health import detector_phases
from edge_agent.lane_calls import lane_calls, lane_movements, lane_phases
from edge_agent.modbus_core import Reading as RegisterReading
from edge_agent.modbus_core import counter_modulus
from edge_agent.model import Contract, DetectorKind, Intersection, require_finite
from edge_agent.plan import TimingPlan
from edge_agent.registers import Access, RegisterMap, Signal
from edge_agent.spillback import ExitWatch

__all__ = ["ActuationConfig", "LocalActuation", "actuation_coils"]

#: Faster than this a counter increment is a reset (a controller restart), not traffic.
_MAX_VEH_PER_S = 1.0
_NEVER = -math.inf


class ActuationConfig(Contract, kw_only=True):
    """The agent file's ``[actuation]`` table.

    ``enabled``: run local actuation (default: when the register map has ``phase.hold`` or
    ``phase.force_off`` coils). ``spillback_s``: an exit detector occupied this long without a
    break reads as a full departure lane. The other keys are
    :class:`~edge_agent.actuation.ActuationParams` fields; a key left out keeps that class's
    default, except that ``passage_min_s`` left out is capped at a shorter ``passage_s`` (the
    default would otherwise refuse it).
    """

    enabled: bool | None = None
    passage_s: float | None = None
    min_queue_veh: float | None = None
    approach_weight: float | None = None
    max_wait_s: float | None = None
    recall_s: float | None = None
    passage_min_s: float | None = None
    waiting_ref_veh: float | None = None
    pressure_weight: float | None = None
    wait_weight: float | None = None
    preempt_wait_s: float | None = None
    spillback_s: float = 3.0

    def __post_init__(self) -> None:
        self.params  # noqa: B018 - builds ActuationParams: its ValueError names the key
        require_finite(self.spillback_s, "actuation.spillback_s", minimum=0.0)

    @property
    def params(self) -> ActuationParams:
        """The Actuator's parameters (ValueError naming ``actuation.<key>`` if out of range)."""
        given = {name: getattr(self, name) for name in self.__struct_fields__
                 if name not in ("enabled", "spillback_s") and getattr(self, name) is not None}
        if "passage_s" in given and "passage_min_s" not in given:
            given["passage_min_s"] = min(given["passage_s"], ActuationParams().passage_min_s)
        return ActuationParams(**given)


def actuation_coils(regmap: RegisterMap) -> dict[str, tuple[Signal, int]]:
    """The allow-listed ``phase.hold`` and ``phase.force_off`` coils: name -> (signal, phase)."""
    wanted = (Signal.PHASE_HOLD, Signal.PHASE_FORCE_OFF)
    return {r.name: (Signal(r.signal), r.phase) for r in regmap.registers
            if r.signal in wanted and r.access == Access.WRITE and r.phase is not None}


@dataclass(slots=True)
class _Loop:
    """A detector with a count, presence or occupancy register, and what it last said."""

    id: str
    lane: str
    stop: bool  # a stop-bar loop: its counts are departures, its presence a waiting vehicle
    count: str | None = None
    presence: str | None = None
    occupancy: str | None = None
    modulus: int = 2 ** 16
    counter: int | None = None
    counter_t: float = _NEVER
    present: bool = False
    new: int = 0  # vehicles counted by the last poll
    actuated_at: float = _NEVER  # (estimated) time of the last actuation
    counted_at: float = _NEVER  # (estimated) time of the last vehicle counted


@dataclass(slots=True)
class _Ring:
    """One ring: its phase register, its Actuator, and the green it shows."""

    number: int  # 1-based, as the phase register names it
    register: str
    sequence: tuple[int, ...]
    actuator: Actuator
    phase: int | None = None
    green_start: float = 0.0
    decision: Decision | None = None
    switched: bool = False  # a switch was decided for this green: held to until it ends


@dataclass(slots=True)
class _Lane:
    """One lane at one poll."""

    queue: float = 0.0
    approaching: float = 0.0
    actuated_at: float = _NEVER
    departed_at: float = _NEVER


@dataclass
class LocalActuation:
    """One intersection's local actuation on its register map (see the module docstring).

    ``poll_period_s`` is how often :meth:`observe` is called (a departure seen within
    ``passage_s`` plus one poll still counts as a discharging queue); ``jam_spacing_m`` turns
    queue lengths into vehicles.
    """

    intersection: Intersection
    regmap: RegisterMap
    params: ActuationParams = field(default_factory=ActuationParams)
    jam_spacing_m: float = 7.5
    poll_period_s: float = 1.0
    spillback_s: float = 3.0
    #: The last decision of any ring (None before the first).
    last: Decision | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        x, regmap = self.intersection, self.regmap
        self.coils = actuation_coils(regmap)
        self._hold = {phase: name for name, (sig, phase) in self.coils.items()
                      if sig == Signal.PHASE_HOLD}
        self._force = {phase: name for name, (sig, phase) in self.coils.items()
                       if sig == Signal.PHASE_FORCE_OFF}
        self._lane_moves = lane_movements(x)
        self._lane_phases = lane_phases(x)
        self._calls_of = lane_calls(self._lane_phases)
        #: The exit detectors watched for spillback.
        self.exits = ExitWatch(x, regmap, self.spillback_s)
        self._calls = detector_phases(x)
        detectors = {d.id: d for d in x.detectors}
        self._loops: dict[str, _Loop] = {}
        self._queues: dict[str, tuple[str, str]] = {}  # lane -> (register, its detector)
        for reg in regmap.registers:
            if reg.signal == Signal.QUEUE_LENGTH:
                on_lane = sorted((d for d in x.detectors if d.lane == reg.lane),
                                 key=lambda d: d.kind != DetectorKind.QUEUE)
                if on_lane:  # as RegisterReadings places it: the lane's queue detector first
                    self._queues[str(reg.lane)] = (reg.name, on_lane[0].id)
                continue
            d = detectors.get(reg.detector or "")
            if d is None or reg.signal not in (Signal.DETECTOR_COUNT, Signal.DETECTOR_PRESENCE,
                                               Signal.DETECTOR_OCCUPANCY):
                continue
            if d.kind == DetectorKind.EXIT:  # watched for spillback (self.exits)
                continue
            loop = self._loops.setdefault(d.id, _Loop(d.id, d.lane,
                                                      d.kind == DetectorKind.STOP_BAR))
            if reg.signal == Signal.DETECTOR_COUNT:
                loop.count, loop.modulus = reg.name, counter_modulus(reg)
            elif reg.signal == Signal.DETECTOR_PRESENCE:
                loop.presence = reg.name
            else:
                loop.occupancy = reg.name
        phase_regs = {r.ring: r.name for r in regmap.by_signal(Signal.CONTROLLER_PHASE)}
        self._rings: list[_Ring] = []
        for index, ring in enumerate(x.rings):
            sequence = tuple(n for group in ring for n in group)
            if index + 1 in phase_regs:
                self._rings.append(_Ring(index + 1, phase_regs[index + 1], sequence,
                                         Actuator(x, sequence, self.params)))
        self._state: dict[str, bool | None] = dict.fromkeys(self.coils)  # None: not known
        self._touched: set[str] = set()
        self._snapshot: Mapping[str, RegisterReading] = {}

    # --- the runtime's API -------------------------------------------------------------------
    @property
    def available(self) -> bool:
        """True when the register map has coils to actuate with."""
        return bool(self.coils)

    @property
    def decisions(self) -> dict[int, Decision]:
        """The last decision of each ring in force (ring number, 1-based)."""
        return {r.number: r.decision for r in self._rings if r.decision is not None}

    def observe(self, snapshot: Mapping[str, RegisterReading]) -> None:
        """Take one poll's register values (call every poll, actuating or not, so that
        counters and the phase in green are known when actuation starts)."""
        self._snapshot = snapshot
        for loop in self._loops.values():
            self._observe_loop(loop)
        self.exits.observe(self._fresh)
        for ring in self._rings:
            r = self._fresh(ring.register)
            phase = int(r.value) if r is not None and r.value is not None else None
            if phase not in ring.sequence:  # stale, or no phase of this ring (0: none green)
                ring.phase, ring.switched = None, False
            elif phase != ring.phase and r is not None and r.read_at is not None:
                ring.phase, ring.green_start, ring.switched = phase, r.read_at, False

    def update(self, now: float, plan: TimingPlan | None,
               failed: Collection[str] = frozenset()) -> list[tuple[str, bool]]:
        """The coil writes due at ``now``: ``(name, value)``, only where a value changes.

        ``plan``: the plan in force whose bounds actuation keeps, or None to stand aside
        (override, start-up, fault): then only coils this object set are released.
        ``failed``: detectors failed now (their phases count as not detected).
        """
        if plan is None:
            for ring in self._rings:
                ring.decision = None
            return self._changes(dict.fromkeys(self.coils, False), ours_only=True)
        wanted = dict.fromkeys(self.coils, False)
        current = {r.phase for r in self._rings if r.phase is not None}
        measures = self.measures(now, failed, current)
        bounds = {n: Bounds(t.min_green, t.max_green) for n, t in plan.timings.items()}
        clearance = {n: t.yellow + t.red_clearance for n, t in plan.timings.items()}
        for ring in self._rings:
            coil = self._decide(ring, now, measures, bounds, clearance)
            if coil is not None:
                wanted[coil] = True
        return self._changes(wanted, ours_only=False)

    def written(self, name: str, value: bool) -> None:
        """``name`` was written with ``value``."""
        self._state[name] = value
        self._touched.add(name)

    def unsure(self, name: str) -> None:
        """A write of ``name`` failed: its value is unknown (written again when due)."""
        self._state[name] = None
        self._touched.add(name)

    # --- measures ----------------------------------------------------------------------------
    def measures(self, now: float, failed: Collection[str] = frozenset(),
                 current: Collection[int] = ()) -> dict[int, PhaseMeasure]:
        """What the detectors say of every phase now; ``current`` are the phases in green
        (only their queues can be discharging)."""
        failed = frozenset(failed)
        recall = {p for d in failed for p in self._calls.get(d, ())}
        lanes = self._lanes(failed)
        jammed = self.exits.blocked_lanes(now, self._lane_moves, lanes, failed)
        recent = self.params.passage_s + self.poll_period_s
        out: dict[int, PhaseMeasure] = {}
        for p in self.intersection.phases:
            n = p.number
            mine = [lane for lane in lanes if n in self._lane_phases.get(lane, {})]
            if n in recall or not mine:
                out[n] = PhaseMeasure(detected=False)
                continue
            weight = self._calls_of[n]
            demand = [lane for lane in mine if weight[lane] > 0 and
                      (lanes[lane].queue > 0 or lanes[lane].approaching > 0)]
            # A lane whose every movement leads into a full exit moves nobody: no call, and
            # a phase all of whose demand is such lanes is blocked (ended, never chosen).
            free = [lane for lane in mine if lane not in jammed]
            calling = [lane for lane in free if weight[lane] > 0]
            whole = [lane for lane in free if self._lane_phases[lane][n]] or calling
            last = max((lanes[lane].actuated_at for lane in whole), default=_NEVER)
            discharging = sum(lanes[lane].queue for lane in whole
                              if now - lanes[lane].departed_at <= recent) if n in current else 0.0
            out[n] = PhaseMeasure(queue=sum(weight[lane] * lanes[lane].queue for lane in free),
                                  discharging=discharging,
                                  approaching=sum(weight[lane] * lanes[lane].approaching
                                                  for lane in free),
                                  gap_s=max(0.0, now - last),
                                  blocked=bool(demand) and all(lane in jammed for lane in demand))
        return out

    def _lanes(self, failed: frozenset[str]) -> dict[str, _Lane]:
        """Every lane with a usable register, from its working detectors."""
        out: dict[str, _Lane] = {}
        for loop in self._loops.values():
            if loop.id in failed:
                continue
            lane = out.setdefault(loop.lane, _Lane())
            lane.actuated_at = max(lane.actuated_at, loop.actuated_at)
            if loop.stop:
                lane.departed_at = max(lane.departed_at, loop.counted_at)
                lane.queue = max(lane.queue, 1.0 if loop.present else 0.0)
            else:
                lane.approaching += max(loop.new, 1 if loop.present else 0)
        for name, (register, detector) in self._queues.items():
            r = self._fresh(register)
            if detector in failed or r is None or r.value is None:
                continue
            lane = out.setdefault(name, _Lane())
            lane.queue = max(lane.queue, max(0.0, r.value) / self.jam_spacing_m)
        return out

    def _observe_loop(self, loop: _Loop) -> None:
        loop.new, loop.present = 0, False
        r = self._fresh(loop.count)
        if r is not None and r.value is not None and r.read_at is not None and \
                r.read_at > loop.counter_t:
            value = int(r.value) % loop.modulus
            if loop.counter is not None:
                dt = r.read_at - loop.counter_t
                delta = (value - loop.counter) % loop.modulus
                if 0 < delta <= _MAX_VEH_PER_S * dt + 1.0:  # larger: a reset, not traffic
                    loop.new = delta
                    loop.counted_at = loop.counter_t + dt * delta / (delta + 1)
                    loop.actuated_at = max(loop.actuated_at, loop.counted_at)
            loop.counter, loop.counter_t = value, r.read_at
        r = self._fresh(loop.presence) or self._fresh(loop.occupancy)
        if r is not None and r.value is not None and r.read_at is not None and r.value > 0:
            loop.present = True
            loop.actuated_at = max(loop.actuated_at, r.read_at)

    def _fresh(self, name: str | None) -> RegisterReading | None:
        r = self._snapshot.get(name) if name is not None else None
        return None if r is None or r.stale else r

    # --- decisions ---------------------------------------------------------------------------
    def _decide(self, ring: _Ring, now: float, measures: Mapping[int, PhaseMeasure],
                bounds: Mapping[int, Bounds], clearance: Mapping[int, float]) -> str | None:
        """Ask the ring's Actuator about its phase in green; the coil to set, if any."""
        phase = ring.phase
        if phase is None or phase not in bounds:
            ring.decision = None  # nothing green that the plan times: no coil of ours
            return None
        if ring.switched:
            # The controller may be in the change interval already and still report the
            # phase: a force-off stands until another phase shows, whatever arrives meanwhile.
            return self._force.get(phase)
        elapsed = max(0.0, now - ring.green_start)
        if not measures[phase].detected:
            ring.actuator.served(phase, now)
            decision = Decision(HOLD, f"phase {phase}: no working detector, runs the plan's "
                                      f"green ({elapsed:.0f} s)")
        else:
            decision = ring.actuator.decide(now, phase, elapsed, measures, bounds, clearance)
        ring.decision = self.last = decision
        if decision.action == SWITCH:
            ring.switched = True
            return self._force.get(phase)
        if decision.action == EXTEND:
            return self._hold.get(phase)
        min_green = max(bounds[phase].min_green,
                        self.intersection.phase_by_number[phase].min_green)
        blind = any(not measures[n].detected for n in ring.sequence)
        if decision.action == HOLD and elapsed >= min_green - 1e-9 and not blind:
            return self._hold.get(phase)  # rests in green: nobody else calls
        return None

    def _changes(self, wanted: Mapping[str, bool], *, ours_only: bool) -> list[tuple[str, bool]]:
        out = []
        for name, value in wanted.items():
            known = self._state[name]
            if ours_only and known is None and name not in self._touched:
                continue  # never written by us: not ours to release
            if known != value:
                out.append((name, value))
        return out
