"""What the virtual controller's cabinet does with what the edge writes, and how it times plans.

* :class:`ControllerLogic`: when ``plan.commit`` is written, the staged plan registers are read
  back into a :class:`~edge_agent.plan.TimingPlan` (:func:`staged_plan`) and checked with
  :func:`edge_agent.guard.check_plan` before anything runs, as a real controller refuses bad
  timing; a refused plan sets :attr:`Alarm.PLAN_REFUSED` and the running programme goes on.
  Running an edge plan, the controller expects the watchdog register to change at least every
  ``watchdog_timeout_s``; otherwise it falls back to its own programme and sets
  :attr:`Alarm.WATCHDOG`. Mode and alarms are published in the ``controller.mode`` and
  ``controller.alarm`` registers; the commit register is cleared once the commit is handled.
* :class:`PlanExecutor`: runs a single-ring plan on a :class:`~simulation.signal_driver.SignalDriver`
  (the guard-checked changes with full yellow and red clearance): each green for its planned
  time within the plan's min/max green, extended to max green while its hold coil is set and
  ended at min green when its force-off coil is set. The offset is sought by shortening or
  lengthening the reference phase's green (within its bounds) the short way round. A new plan
  takes over when the running green ends, never inside a change or clearance interval.

The clock of the timing is the simulation's (it stands for the cabinet's clock); the watchdog
runs on the wall clock, since the edge writing it lives in real time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection

from edge_agent.guard import check_plan
from edge_agent.model import Intersection
from edge_agent.plan import PhaseTiming, PlanSource, TimingPlan
from edge_agent.registers import Alarm, ControllerMode, Register, Signal
from simulation.signal_driver import SignalDriver
from simulation.virtual_bank import RegisterBank

__all__ = ["Alarm", "ControllerLogic", "ControllerMode", "PlanExecutor", "staged_plan"]

_log = logging.getLogger(__name__)


def _one(bank: RegisterBank, signal: Signal) -> Register | None:
    found = bank.regmap.by_signal(signal)
    if len(found) > 1:
        raise ValueError(f"register map has {len(found)} {signal.value} registers")
    return found[0] if found else None


def staged_plan(bank: RegisterBank, intersection: Intersection, *, activation: float = 0.0,
                author: str = "modbus") -> TimingPlan:
    """The plan staged in the holding registers, as the controller will run it.

    Registers carry the plan id, cycle, offset and per phase split and green bounds; the rest
    is the controller's own configuration: phase order (the intersection's rings), yellow, red
    clearance, pedestrian timings, and the configured bounds where the map has none. The
    offset refers to the first phase of ring 1. Raises ValueError naming what is missing or
    malformed (a plan id of 0, a zero cycle...).
    """
    def value(reg: Register | None, default: float | None, what: str) -> float:
        if reg is None:
            if default is None:
                raise ValueError(f"register map has no {what} register")
            return default
        return round(bank.load(reg.name), 6)  # drop binary noise of the scaling

    plan_id = int(value(_one(bank, Signal.PLAN_ID), None, "plan.id"))
    cycle = value(_one(bank, Signal.PLAN_CYCLE), None, "plan.cycle")
    offset = value(_one(bank, Signal.PLAN_OFFSET), 0.0, "plan.offset")
    per_phase = {s: {r.phase: r for r in bank.regmap.by_signal(s)}
                 for s in (Signal.PLAN_SPLIT, Signal.PLAN_MIN_GREEN, Signal.PLAN_MAX_GREEN)}
    rings = []
    for ring in intersection.rings:
        timings = []
        for group in ring:
            for n in group:
                p = intersection.phase_by_number[n]
                timings.append(PhaseTiming(
                    phase=n,
                    split=value(per_phase[Signal.PLAN_SPLIT].get(n), None, f"split for phase {n}"),
                    yellow=p.yellow, red_clearance=p.red_clearance,
                    min_green=value(per_phase[Signal.PLAN_MIN_GREEN].get(n), p.min_green, ""),
                    max_green=value(per_phase[Signal.PLAN_MAX_GREEN].get(n), p.max_green, ""),
                    walk=p.walk, ped_clearance=p.ped_clearance))
        rings.append(tuple(timings))
    return TimingPlan(plan_id=plan_id, intersection_id=intersection.id, cycle=cycle,
                      offset=offset, offset_reference=rings[0][0].phase, rings=tuple(rings),
                      activation=activation, source=PlanSource.ADAPTIVE, author=author)


class ControllerLogic:
    """Commit handling, the watchdog, mode and alarms of one virtual controller.

    ``tick()`` handles what arrived since the last call and returns the plan to run next
    when that changes (an accepted commit, or ``fallback`` when the watchdog expires), else
    None. Thread-safe: writes arrive on the server's thread, ticks come from the simulation's.
    """

    def __init__(self, bank: RegisterBank, intersection: Intersection, *,
                 fallback: TimingPlan | None = None, watchdog_timeout_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        if not watchdog_timeout_s > 0:
            raise ValueError(f"watchdog_timeout_s must be > 0, got {watchdog_timeout_s!r}")
        self.bank, self.intersection, self.fallback = bank, intersection, fallback
        self.watchdog_timeout_s, self.clock, self.wall = watchdog_timeout_s, clock, wall
        self.mode, self.alarms = ControllerMode.LOCAL, Alarm(0)
        self.plan: TimingPlan | None = fallback  # what the controller runs (None: unknown)
        self.refusals: list[list[str]] = []
        self._commit = _one(bank, Signal.PLAN_COMMIT)
        self._watchdog = _one(bank, Signal.WATCHDOG)
        self._mode_reg, self._alarm_reg = (_one(bank, Signal.CONTROLLER_MODE),
                                           _one(bank, Signal.CONTROLLER_ALARM))
        self._lock = threading.Lock()
        self._pending = False
        self._kick: float | None = None
        self._kick_value = bank.load(self._watchdog.name) if self._watchdog else None
        bank.on_write(self._on_write)
        self._publish()

    def _on_write(self, registers: list[Register]) -> None:
        with self._lock:
            for reg in registers:
                if reg is self._commit and self.bank.load(reg.name) != 0:
                    self._pending = True
                elif reg is self._watchdog:
                    value = self.bank.load(reg.name)
                    if value != self._kick_value:  # rewriting the same value is no heartbeat
                        self._kick_value, self._kick = value, self.clock()

    def fault(self, reason: str) -> None:
        """The simulation behind the controller failed: raise the FAULT alarm."""
        with self._lock:
            if not self.alarms & Alarm.FAULT:
                _log.error("virtual controller %s: %s", self.intersection.id, reason)
            self.alarms |= Alarm.FAULT
            self._publish()

    def tick(self) -> TimingPlan | None:
        """Handle commits and the watchdog; the plan to switch to, if it changes."""
        with self._lock:
            out = None
            if self._pending:
                self._pending = False
                out = self._load_commit()
            if (self.mode == ControllerMode.REMOTE and self._kick is not None
                    and self.clock() - self._kick > self.watchdog_timeout_s):
                _log.warning("virtual controller %s: watchdog not incremented for %.1f s; "
                             "back on the local programme", self.intersection.id,
                             self.clock() - self._kick)
                self.mode = ControllerMode.LOCAL
                self.alarms |= Alarm.WATCHDOG
                self.plan, out = self.fallback, self.fallback
            self._publish()
            return out

    def _load_commit(self) -> TimingPlan | None:
        try:
            plan = staged_plan(self.bank, self.intersection, activation=self.wall(),
                               author=f"modbus:{self.bank.regmap.device.id}")
            reasons = [str(v) for v in check_plan(plan, self.intersection)]
        except ValueError as exc:
            plan, reasons = None, [str(exc)]
        if self._commit is not None:
            self.bank.store(self._commit.name, 0)  # handled: the edge may read it back
        if reasons:
            self.refusals.append(reasons)
            self.alarms |= Alarm.PLAN_REFUSED
            _log.warning("virtual controller %s: committed plan %s refused: %s",
                         self.intersection.id, plan.plan_id if plan else "?", "; ".join(reasons))
            return None
        assert plan is not None
        if self.mode != ControllerMode.REMOTE or self.alarms & Alarm.PLAN_REFUSED:
            _log.info("virtual controller %s: running plan %d from the edge",
                      self.intersection.id, plan.plan_id)
        self.mode = ControllerMode.REMOTE
        self.alarms &= ~(Alarm.PLAN_REFUSED | Alarm.WATCHDOG)
        self.plan = plan
        self._kick = self.clock()  # the watchdog is armed from the commit on
        return plan

    def _publish(self) -> None:
        if self._mode_reg is not None:
            self.bank.store(self._mode_reg.name, int(self.mode))
        if self._alarm_reg is not None:
            self.bank.store(self._alarm_reg.name, int(self.alarms))


class PlanExecutor:
    """Times single-ring plans on a :class:`SignalDriver`; call :meth:`step` once per step."""

    def __init__(self, driver: SignalDriver, plan: TimingPlan, *, log_size: int = 10_000) -> None:
        if len(plan.rings) != 1:
            raise ValueError("the executor runs single-ring plans (one SUMO programme)")
        self.driver, self.plan = driver, plan
        self._pending: TimingPlan | None = None
        self._green_key: tuple[int, int] | None = None
        self._start = 0.0
        self._target = 0.0
        self._last: tuple[int, str] | None = None
        #: (time, phase, interval) at every change of the signals
        self.phase_log: deque[tuple[float, int, str]] = deque(maxlen=log_size)
        self._use_clearance(plan)

    def load(self, plan: TimingPlan) -> None:
        """Run ``plan`` from the end of the current green on."""
        if len(plan.rings) != 1:
            raise ValueError("the executor runs single-ring plans (one SUMO programme)")
        self._pending = plan

    def _use_clearance(self, plan: TimingPlan) -> None:
        # The plan's own change intervals (guard-checked) replace the driver's configured ones.
        for t in plan.rings[0]:
            self.driver.clearance[t.phase] = (t.yellow, t.red_clearance)

    def _sequence(self) -> list[int]:
        return [t.phase for t in self.plan.rings[0]]

    def _planned_green(self, phase: int, start: float) -> float:
        t = self.plan.timings.get(phase)
        if t is None:
            return self.driver.min_green(phase)
        green = t.green
        if phase == self.plan.offset_reference:
            late = (start - self.plan.offset) % self.plan.cycle
            if 1e-6 < late < self.plan.cycle - 1e-6:
                green += -late if late <= self.plan.cycle / 2 else self.plan.cycle - late
        return green

    def step(self, now: float, hold: Collection[int] = (), force_off: Collection[int] = ()) -> None:
        """Account one step starting at ``now`` and end the green when its time has come."""
        d = self.driver
        was_green = d.in_green
        d.advance()
        if d.in_green:
            key = (d.phase, d.changes)
            if key != self._green_key:
                self._green_key = key
                # A green already showing before this call has run green_elapsed less this step.
                self._start = now - (d.green_elapsed - d.step_length) if was_green else now
                self._target = self._planned_green(d.phase, self._start)
            t = self.plan.timings.get(d.phase)
            low, high = (t.min_green, t.max_green) if t else (d.min_green(), d.min_green())
            end = min(max(self._target, low), high)
            if d.phase in force_off:
                end = low
            elif d.phase in hold:
                end = high
            if now - self._start + 1e-9 >= end:
                if self._pending is not None:
                    self.plan, self._pending = self._pending, None
                    self._use_clearance(self.plan)
                seq = self._sequence()
                nxt = seq[(seq.index(d.phase) + 1) % len(seq)] if d.phase in seq else seq[0]
                if nxt != d.phase:
                    d.switch_to(nxt)
        if (d.phase, d.interval) != self._last:
            self._last = (d.phase, d.interval)
            self.phase_log.append((now, d.phase, d.interval))
