"""The edge agent's runtime: the pure core wired to a controller and an uplink, one step a poll.

:class:`EdgeRuntime` owns the core objects (:class:`~edge_agent.aggregation.Aggregator`,
:class:`~edge_agent.detector_health.DetectorHealth`, :class:`~edge_agent.modes.ModeMachine`,
:class:`~edge_agent.admission.PlanBook`) and talks to two ports: a controller
(:class:`~edge_agent.modbus_link.ModbusLink`, or anything with its methods) and an uplink
(:class:`~edge_agent.mqtt_link.EdgeLink` or :class:`~edge_agent.fake_link.FakeLink`). It has no
thread and no timer: :meth:`EdgeRuntime.step` does one round at the time the injected clock
says, so tests drive hours of operation in milliseconds. :mod:`edge_agent.runtime_agent` runs
it for real.

One step, in order:

1. **Inbound** (queued by the uplink's thread with :meth:`~EdgeRuntime.on_inbound`): a plan
   goes to :meth:`PlanBook.offer` and its :class:`~edge_agent.messages.Ack` is published
   (accepted, or rejected with the guard's violations; a rejected plan changes nothing, the
   plan in force stays). A plan that passes every check but that the register map cannot carry
   exactly is rejected too, so that "accepted" always means "will run". A heartbeat is a
   :class:`~edge_agent.modes.HeartbeatReceived`; a local sensor's report becomes samples of
   the detector it is configured as (:class:`~edge_agent.runtime_inputs.SensorDetectors`).
2. **Poll** (skipped by ``step(poll=False)``, which the agent uses to answer a plan at once):
   the controller is polled; fresh register values become samples for the aggregator and
   detector health; its status registers give ``ControllerOk`` / ``ControllerFault`` (stale
   or down, alarm, flash) and ``FaultCleared``; the watchdog is kicked while the link is up.
3. **Modes and plans**: :meth:`PlanBook.due` hands a staged plan over (``PlanActivated``);
   the machine ticks; a pending mode change completes with ``SafeBoundary`` only inside the
   switch window after a cycle boundary of the plan the controller runs
   (:func:`~edge_agent.admission.in_switch_window`), never during a yellow or red clearance.
   Then the plan the mode calls for is written if it is not the one running: the time-of-day
   plan in ``LOCAL_FALLBACK``, the plan in force in ``CENTRAL`` and ``OVERRIDE``, nothing in
   ``STARTUP`` and ``FAULT``. It too is written only at a boundary of the running plan, and
   only through :meth:`ModbusLink.write_plan`, which runs the guard again. The running plan
   is the one last written, through faults and lost links too, until the controller's mode
   register says it runs its own programme; with nothing of ours running, the controller
   makes the change at its own safe point.
4. **Report**: detector health is judged; failed detectors' phases go on recall; local
   actuation (:class:`~edge_agent.local_actuation.LocalActuation`) decides inside the bounds
   of the running plan and writes the hold and force-off coils that change (both through
   :class:`~edge_agent.runtime_coils.ControllerCoils`); every
   measurement interval that ended is closed and published; the retained status is updated
   whenever mode, controller health, running plan, failed detectors or the reason change.

Local actuation runs every poll while a plan of ours runs in ``CENTRAL`` or
``LOCAL_FALLBACK``. In ``OVERRIDE`` (an operator's plan runs as written), ``STARTUP`` and
``FAULT`` it stands aside and releases the coils it set: releasing only hands the timing back
to the plan the controller runs, so it is done in ``FAULT`` too while the link is up. Each
decision's explanation is kept (:attr:`EdgeRuntime.actuation`'s ``last`` and ``decisions``)
and logged at DEBUG when it changes.

Logging: once on entering an error state and once on leaving it (mode transitions come from
the machine only when something changes; device, uplink, write and value problems go through
:class:`~edge_agent.modbus_core.HealthLog`).

Time never goes backwards inside the runtime: a clock stepped back (NTP) is held at the last
time seen until it catches up, logged once.
"""

from __future__ import annotations

import collections
import logging
import math
import queue
import time
from collections.abc import Callable

import msgspec

from edge_agent.admission import PlanBook, admit, in_switch_window
from edge_agent.agent_config import AgentConfig
from edge_agent.aggregation import Aggregator, Reading
from edge_agent.detector_health import DetectorHealth
from edge_agent.errors import DeviceError, PlanRejected
from edge_agent.link_wire import Inbound, SensorReading
from edge_agent.local_actuation import LocalActuation
from edge_agent.messages import Ack, EdgeMode, Heartbeat, Measurement, PlanMessage, Status
from edge_agent.modbus_core import HealthLog, Reading as RegisterReading, plan_writes
from edge_agent.modes import (
    Change, ControllerFault, ControllerOk, FaultCleared, HeartbeatReceived, ModeEvent,
    ModeMachine, PlanActivated, SafeBoundary, Tick,
)
from edge_agent.plan import PlanSource, TimingPlan
from edge_agent.plan_id_store import load_last_plan_id, save_last_plan_id
from edge_agent.registers import Alarm
from edge_agent.runtime_inputs import (
    RegisterReadings, SensorDetectors, alarm_bits, controller_fault, own_programme,
    status_registers, watchdog_register,
)
from edge_agent.runtime_coils import ControllerCoils
from edge_agent.runtime_ports import ControllerPort, RuntimeStats, UplinkPort, minute_of_day
from edge_agent.signatures import load_public_key

__all__ = ["ControllerPort", "UplinkPort", "RuntimeStats", "EdgeRuntime", "minute_of_day"]

log = logging.getLogger(__name__)
_WAKE = object()  # put on the inbox to wake a waiting loop; carries nothing
_ERROR_MODES = (EdgeMode.FAULT, EdgeMode.LOCAL_FALLBACK)
_MAX_UNKNOWN_SENSORS = 1000  # (sensor, lane) pairs remembered for log-once; beyond, counted


class EdgeRuntime:
    """One intersection's edge logic between a controller and an uplink (module docstring).

    ``clock`` gives POSIX seconds (plans are timed in them); ``start`` overrides the start
    time; ``time_scale`` is how many seconds of ``clock`` pass per wall-clock second (1, but
    a simulation's speed when it runs faster than real time): the poll period is wall time.
    Raises ValueError when the register map names detectors the intersection lacks.
    """

    def __init__(self, config: AgentConfig, controller: ControllerPort, uplink: UplinkPort, *,
                 clock: Callable[[], float] = time.time, start: float | None = None,
                 time_scale: float = 1.0) -> None:
        if not (math.isfinite(time_scale) and time_scale > 0):
            raise ValueError(f"time_scale: must be a finite number > 0, got {time_scale!r}")
        now = clock() if start is None else start
        self.config, self.controller, self.uplink, self.clock = config, controller, uplink, clock
        self.site, x = config.file.site, config.intersection
        regmap = config.register_map
        self.stats = RuntimeStats()
        self._inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._held: list[object] = []
        self._registers = RegisterReadings(x, regmap)
        for name in self._registers.unplaced:
            log.warning("register %s: its lane has no detector at %s; its queue is not used",
                        name, x.id)
        self._status_regs = status_registers(regmap)
        # Counter widths follow the registers' types unless the file sets them.
        aggregation = config.aggregation
        bits = {**self._registers.counter_bits, **aggregation.counter_bits_by_detector}
        aggregation = msgspec.structs.replace(aggregation, counter_bits_by_detector=bits)
        self.aggregator = Aggregator(self.site, x, aggregation, start=now)
        self.health = DetectorHealth(x, config.health, start=now)
        self.machine = ModeMachine(now, config.modes)
        self._trusted = {k: load_public_key(pem) for k, pem in config.trusted_keys.items()}
        #: The poll period on the runtime's clock.
        self.poll_period = regmap.device.poll_period_s * time_scale
        # The switch window spans at least two poll spacings, or a boundary can fall between
        # two looks and the plan waits a cycle: two poll periods, or twice the longest of the
        # last spacings seen when polls come late (a slow device, a busy box).
        self._base_window = max(2.0, 2.0 * self.poll_period)
        self._spacings: collections.deque[float] = collections.deque(maxlen=8)
        self._last_poll: float | None = None
        window = self._base_window
        # The highest accepted plan id survives restarts: an older signed plan is a replay.
        self._plan_id_path = config.spool_path.with_name(config.spool_path.name + ".plan-id")
        self._saved_plan_id = load_last_plan_id(self._plan_id_path)
        self.book = PlanBook(self.site, x, self._trusted, switch_window_s=window,
                             last_plan_id=self._saved_plan_id)
        self._sensors = SensorDetectors(x, aggregation.jam_spacing_m)
        self._watchdog = watchdog_register(regmap) is not None
        if not self._watchdog:
            log.warning("register map has no single allow-listed watchdog register: the "
                        "controller cannot tell that the edge is alive")
        #: The plan last written to the controller (None: nothing of ours known to run).
        self.running: TimingPlan | None = None
        self._written_at = now
        self.controller_ok = False
        self.detail = "starting"
        self._now = now
        interval = aggregation.interval_s
        self._interval = interval
        self._next_close = (math.floor(now / interval) + 1) * interval
        self._alarms = 0
        self._bad: dict[str, str] = {}
        self._unknown_sensors: set[tuple[str, str]] = set()
        self._unwritable: set[TimingPlan] = set()
        self._status_key: tuple[object, ...] | None = None
        self._logs = {name: HealthLog(log, what) for name, what in (
            ("clock", "clock"), ("poll", f"controller {regmap.device.id} poll"),
            ("watchdog", f"controller {regmap.device.id} watchdog"),
            ("write", f"plan write to {regmap.device.id}"), ("uplink", "uplink"))}
        self.coils = ControllerCoils(
            regmap, controller,
            LocalActuation(x, regmap, config.actuation_params,
                           jam_spacing_m=aggregation.jam_spacing_m,
                           poll_period_s=self.poll_period,
                           spillback_s=config.file.actuation.spillback_s),
            actuation_enabled=config.actuation_enabled, write_log=self._logs["write"],
            stats=self.stats)

    @property
    def actuation(self) -> LocalActuation:
        """Local actuation: its ``last`` decision and ``decisions`` with their reasons."""
        return self.coils.actuation

    # --- the caller's API ----------------------------------------------------------------
    @property
    def mode(self) -> EdgeMode:
        """The mode in force."""
        return self.machine.mode

    def on_inbound(self, inbound: Inbound) -> None:
        """Queue a received plan, heartbeat or sensor report (any thread)."""
        self._inbox.put(inbound)

    def wake(self) -> None:
        """Make a :meth:`wait` return at once (any thread; safe in a signal handler)."""
        self._inbox.put(_WAKE)

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` s for something to arrive; True if something did."""
        try:
            item = self._inbox.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return False
        self._held.append(item)
        return True

    def step(self, now: float | None = None, *, poll: bool = True) -> None:
        """One round at ``now`` (default: the clock); see the module docstring."""
        now = self._time(now)
        self.stats.steps += 1
        self._take_inbound(now)
        if poll:
            self._space(now)
            self._poll(now)
        self._advance(now)
        if poll:
            self._report(now)
        self._publish_status(now)

    # --- time ------------------------------------------------------------------------------
    def _time(self, now: float | None) -> float:
        t = self.clock() if now is None else now
        if t < self._now:
            self._logs["clock"].failed(self._now, f"went back {self._now - t:.3f} s; holding "
                                                  f"the runtime's time until it catches up")
            return self._now
        self._logs["clock"].ok(t)
        self._now = t
        return t

    def _space(self, now: float) -> None:
        """Widen the switch window to the spacing of the recent polls (see __init__)."""
        if self._last_poll is not None:
            self._spacings.append(now - self._last_poll)
        self._last_poll = now
        widest = max(self._spacings, default=0.0)
        self.book.switch_window_s = max(self._base_window, 2.0 * widest)

    # --- 1. inbound -------------------------------------------------------------------------
    def _take_inbound(self, now: float) -> None:
        held, self._held = self._held, []
        while True:
            if held:
                item = held.pop(0)
            else:
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    return
            if not isinstance(item, Inbound):
                continue  # a wake-up
            message = item.message
            if isinstance(message, PlanMessage):
                self._offer(message, now)
            elif isinstance(message, Heartbeat):
                self._handle(HeartbeatReceived(now))
            else:
                self._sensor(message)

    def _offer(self, message: PlanMessage, now: float) -> None:
        ack = self._admit(message, now)
        if self.book.last_plan_id > self._saved_plan_id:  # durable before the centre hears
            save_last_plan_id(self._plan_id_path, self.book.last_plan_id)
            self._saved_plan_id = self.book.last_plan_id
        self._send(ack, now)
        if ack.accepted:
            self.stats.plans_accepted += 1
            log.info("plan %d accepted%s", ack.plan_id, f" ({ack.reason})" if ack.reason else "")
        else:
            self.stats.plans_rejected += 1
            log.warning("plan %d rejected: %s%s", ack.plan_id, ack.reason,
                        "".join(f"\n  {v.message}" for v in ack.violations))
        self._log_dropped()

    def _admit(self, message: PlanMessage, now: float) -> Ack:
        x = self.config.intersection
        first = admit(message, now, site=self.site, intersection=x, trusted=self._trusted,
                      last_plan_id=self.book.last_plan_id)
        if first.plan is not None:  # new, signed, safe: can the controller's registers carry it?
            try:
                plan_writes(first.plan, self.config.register_map)
            except (PlanRejected, PermissionError) as exc:
                reasons = exc.reasons if isinstance(exc, PlanRejected) else [str(exc)]
                return Ack(site=self.site, intersection_id=x.id, plan_id=first.plan.plan_id,
                           t=now, accepted=False,
                           reason="the controller's registers cannot carry the plan: "
                                  + "; ".join(reasons))
        return self.book.offer(message, now)

    def _sensor(self, report: SensorReading) -> None:
        detector = self._sensors.detector(report)
        if detector is None:
            self.stats.unknown_sensor_reports += 1
            key = (report.sensor, report.lane)
            if key not in self._unknown_sensors and \
                    len(self._unknown_sensors) < _MAX_UNKNOWN_SENSORS:
                self._unknown_sensors.add(key)
                log.warning("sensor %s on lane %s is not a detector of %s (name it %r or "
                            "%r); its reports are ignored", report.sensor, report.lane,
                            self.config.intersection.id, report.sensor,
                            f"{report.sensor}:{report.lane}")
            return
        for reading in self._sensors.samples(report, detector):
            self._ingest(reading, aggregate=True)

    def _ingest(self, reading: Reading, aggregate: bool) -> None:
        if aggregate:
            self.aggregator.add(reading)
        self.health.observe(reading)
        self.stats.samples += 1

    # --- 2. poll ----------------------------------------------------------------------------
    def _poll(self, now: float) -> None:
        try:
            self.controller.poll_now()
        except DeviceError as exc:  # the link's own call failed (not the device's answer)
            self._logs["poll"].failed(now, str(exc))
        else:
            self._logs["poll"].ok(now)
        snapshot = self.controller.readings()
        self.actuation.observe(snapshot)
        samples, bad = self._registers.samples(snapshot)
        for sample in samples:
            self._ingest(sample.reading, sample.aggregate)
        self._bad_values(snapshot, dict(bad))
        fault = controller_fault(snapshot, self.config.register_map, self._status_regs)
        self.controller_ok = fault is None
        if fault is not None:
            self._handle(ControllerFault(now, fault))
        elif self.machine.mode == EdgeMode.FAULT:
            self._handle(FaultCleared(now))
        else:
            self._handle(ControllerOk(now))
        self._watch_alarms(snapshot)
        self._check_running(snapshot)
        if self._watchdog and self.controller.connected:
            try:
                self.controller.kick_watchdog()
            except DeviceError as exc:
                self._logs["watchdog"].failed(now, str(exc))
            else:
                self._logs["watchdog"].ok(now)
                self.stats.watchdog_kicks += 1

    def _bad_values(self, snapshot: dict[str, RegisterReading], bad: dict[str, str]) -> None:
        self.stats.bad_samples += len(bad)
        for name, why in bad.items():
            if name not in self._bad:
                log.warning("register %s: value ignored: %s", name, why)
            self._bad[name] = why
        for name in [n for n in self._bad if n not in bad]:
            if not snapshot[name].stale:  # read again, and fine this time
                log.info("register %s: values usable again", name)
                del self._bad[name]

    def _watch_alarms(self, snapshot: dict[str, RegisterReading]) -> None:
        alarms = alarm_bits(snapshot, self.config.register_map)
        for bit in Alarm:
            if alarms & bit and not self._alarms & bit:
                log.warning("controller alarm raised: %s", bit.name)
            elif self._alarms & bit and not alarms & bit:
                log.info("controller alarm cleared: %s", bit.name)
        self._alarms = alarms

    def _check_running(self, snapshot: dict[str, RegisterReading]) -> None:
        # A fault or a lost link alone leaves the controller on the plan last committed; a
        # controller that fell back (its watchdog, a restart) says so in its mode register.
        if self.running is None:
            return
        after = self._written_at + 2.0 * self.poll_period
        own = own_programme(snapshot, self.config.register_map, after)
        if own is not None:
            refused = bool(self._alarms & Alarm.PLAN_REFUSED)
            if refused:  # its own checks refused it: writing it again would loop
                self._unwritable.add(self.running)
            log.warning("controller runs its own programme (%s), not plan %d; %s", own,
                        self.running.plan_id, "it refused the plan" if refused else
                        "the plan is written again")
            self.running = None

    # --- 3. modes and plans ----------------------------------------------------------------
    def _handle(self, event: ModeEvent) -> None:
        for transition in self.machine.handle(event):
            self.detail = transition.reason
            entered = transition.change == Change.ENTERED
            level = logging.WARNING if entered and transition.mode in _ERROR_MODES \
                else logging.INFO
            log.log(level, "%s", transition)

    def _at_boundary(self, now: float) -> bool:
        return self.running is None or \
            in_switch_window(self.running, now, self.book.switch_window_s)

    def _advance(self, now: float) -> None:
        due = self.book.due(now, self.running)
        if due is not None:
            log.info("plan %d (%s) in force", due.plan_id, PlanSource(due.source).value)
            self._handle(PlanActivated(now, due.plan_id, PlanSource(due.source), due.expiry))
        self._log_dropped()
        self._handle(Tick(now))
        if self.machine.pending is not None and self._at_boundary(now):
            self._handle(SafeBoundary(now))
        desired = self.desired_plan(now)
        if desired is not None and desired != self.running and desired not in self._unwritable \
                and self._at_boundary(now):
            self._write(desired, now)

    def desired_plan(self, now: float) -> TimingPlan | None:
        """The plan the mode in force calls for (None: write nothing)."""
        mode = self.machine.mode
        if mode == EdgeMode.LOCAL_FALLBACK:
            return self.config.fallback_plan(minute_of_day(now))
        if mode in (EdgeMode.CENTRAL, EdgeMode.OVERRIDE):
            return self.book.active(now)
        return None

    def _write(self, plan: TimingPlan, now: float) -> None:
        try:
            self.controller.write_plan(plan, self.config.intersection)
        except (PlanRejected, PermissionError) as exc:  # checked before: a bug, said loudly
            self._unwritable.add(plan)
            log.error("plan %d will not be written: %s", plan.plan_id, exc)
            return
        except DeviceError as exc:  # the commit was not written: the controller runs on
            self._logs["write"].failed(now, f"plan {plan.plan_id} not written: {exc}")
            return
        self._logs["write"].ok(now)
        self.running, self._written_at = plan, now
        self.stats.plans_written += 1
        log.info("plan %d (%s) written to the controller", plan.plan_id,
                 PlanSource(plan.source).value)

    def _log_dropped(self) -> None:
        for plan_id, why in self.book.take_dropped():
            # A newer plan taking a staged one's place is the normal course of re-planning;
            # a plan that expired before it could run is worth a warning.
            level = logging.INFO if why.startswith("superseded") else logging.WARNING
            log.log(level, "accepted plan %d will not run: %s", plan_id, why)

    # --- 4. report --------------------------------------------------------------------------
    def _report(self, now: float) -> None:
        for change in self.health.evaluate(now):
            log.log(logging.WARNING if change.failed else logging.INFO, "%s", change)
        self.coils.recall(now, self.health.recall_phases, self.health.failed,
                          writable=self.machine.mode != EdgeMode.FAULT)
        self.coils.actuate(now, self.actuation_plan(), self.health.failed,
                           self.machine.mode.value)
        if now >= self._next_close:
            for measurement in self.aggregator.close(now, self.health.failed):
                self._send(measurement, now)
                self.stats.measurements += 1
            self._next_close = (math.floor(now / self._interval) + 1) * self._interval

    def actuation_plan(self) -> TimingPlan | None:
        """The plan local actuation works inside now (None: it stands aside).

        A plan of ours in ``CENTRAL`` or ``LOCAL_FALLBACK``; never an operator's plan, which
        runs as written, and nothing in ``STARTUP`` or ``FAULT``.
        """
        plan = self.running
        if not self.coils.actuating or plan is None or plan.source == PlanSource.OVERRIDE or \
                self.machine.mode not in (EdgeMode.CENTRAL, EdgeMode.LOCAL_FALLBACK):
            return None
        return plan

    def _send(self, message: Measurement | Ack, now: float) -> None:
        try:
            self.uplink.submit(message)
        except DeviceError as exc:  # the link is closed or its spool failed: said once
            self._logs["uplink"].failed(now, f"{type(message).__name__} not sent: {exc}")
        else:
            self._logs["uplink"].ok(now)

    def _publish_status(self, now: float) -> None:
        plan_id = None if self.running is None else self.running.plan_id
        failed = tuple(sorted(self.health.failed))
        key = (self.machine.mode, self.controller_ok, plan_id, failed, self.detail)
        if key == self._status_key:
            return
        self._status_key = key
        self.uplink.update_status(Status(
            site=self.site, intersection_id=self.config.intersection.id, t=now, online=True,
            mode=self.machine.mode, controller_ok=self.controller_ok, plan_id=plan_id,
            failed_detectors=failed, detail=self.detail))
