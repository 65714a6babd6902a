"""The SUMO side of the virtual controller: one traffic light, its detectors, stepped in a thread.

:class:`SumoIntersection` starts a :class:`~simulation.sumo_session.SumoSession` with detectors
of its own (an additional file written from the imported intersection's detector list: SUMO
induction loops for stop-bar, advance and speed detectors, lane-area detectors for queue
zones), and every step stores what the register map asks for into the
:class:`~simulation.virtual_bank.RegisterBank`:

* ``detector.count``: vehicles that entered the detector since the start (cumulative, wrapping
  at the register's range); ``detector.occupancy``: the mean of SUMO's occupancy over the last
  ``occupancy_window_s``, as a fraction; ``detector.presence``: a vehicle on it now;
  ``detector.speed``: the mean speed of the last vehicles measured (held between vehicles);
* ``queue.length``: the jam length of the lane's queue detector, or, on a lane without one,
  its halting vehicles times 7.5 m;
* ``controller.phase``: the phase running (green or changing) in ring 1 (imported
  intersections have one ring; other rings read 0); mode and alarms from
  :class:`~simulation.virtual_logic.ControllerLogic`.

The light itself is run by a :class:`~simulation.virtual_logic.PlanExecutor`: the net's own
programme (the designer's plan, with the guard's floors) until the edge commits a plan that
passes the guard, and again whenever the watchdog expires. Hold and force-off coils act on the
running phase. Simulation time advances ``speed`` times faster than the wall clock (None: as
fast as SUMO goes); at the end of the episode the last values stay in the bank.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from edge_agent.guard import check_plan
from edge_agent.model import Detector, DetectorKind
from edge_agent.modbus_core import counter_modulus
from edge_agent.plan import TimingPlan
from edge_agent.registers import DataType, Register, Signal
from simulation.net_import import ImportedNet, import_net
from simulation.net_xml import read_net
from simulation.scenario import Scenario, load_scenario
from simulation.signal_driver import SignalDriver, guarded_clearance
from simulation.sumo_session import SumoSession
from simulation.virtual_bank import RegisterBank
from simulation.virtual_logic import ControllerLogic, PlanExecutor
from simulation.virtual_map import INDUCTION_KINDS

__all__ = ["SumoIntersection", "detectors_xml", "session_with_additional"]

_log = logging.getLogger(__name__)
JAM_SPACING_M = 7.5  # a halting car and its gap, for lanes without a queue detector


def detectors_xml(detectors: list[tuple[Detector, str, float]]) -> str:
    """An ``<additional>`` file with a detector per (detector, SUMO lane, lane length).

    Loops sit at the middle of the detector's zone (``position_m`` upstream of the stop line,
    ``length_m`` long; an exit detector's zone starts ``position_m`` from the start of its
    departure lane); lane-area detectors cover the zone. Outputs go to the null device.
    """
    out = ["<additional>"]
    null = quoteattr(os.devnull)
    for d, lane, length in detectors:
        end = max(0.0, length - d.position_m)
        start = max(0.0, end - d.length_m)
        if d.kind == DetectorKind.EXIT:
            start = min(d.position_m, length)
            end = min(start + d.length_m, length)
        if d.kind in INDUCTION_KINDS:
            out.append(f'    <inductionLoop id={quoteattr(d.id)} lane={quoteattr(lane)} '
                       f'pos="{(start + end) / 2:.2f}" period="3600" file={null} '
                       f'friendlyPos="true"/>')
        else:
            out.append(f'    <laneAreaDetector id={quoteattr(d.id)} lane={quoteattr(lane)} '
                       f'pos="{start:.2f}" endPos="{max(end, start + 0.1):.2f}" '
                       f'period="3600" file={null} friendlyPos="true"/>')
    out += ["</additional>", ""]
    return "\n".join(out)


def session_with_additional(scenario: Scenario, add: Path, *, seed: int | None,
                            seconds: float | None, output_dir: Path) -> SumoSession:
    """A session of ``scenario`` that also loads the additional file ``add`` (our detectors)."""
    extra: list[str] = []
    if scenario.config_file is None:
        scenario = dataclasses.replace(scenario,
                                       additional_files=scenario.additional_files + (add,))
    else:  # the command line replaces the cfg's list: repeat the cfg's own files
        files = [str(f) for f in scenario.additional_files] + [str(add)]
        extra = ["--additional-files", ",".join(files)]
    return SumoSession(scenario, seed=seed, seconds=seconds, extra_args=extra,
                       output_dir=output_dir)


def _fit(reg: Register, value: float) -> float:
    """A measurement clipped to what the register can show (a sensor saturates, it does not
    wrap); float registers take any value."""
    if reg.type == DataType.FLOAT32:
        return value
    top = (counter_modulus(reg) - 1) * reg.scale
    low = 0.0 if reg.type in (DataType.UINT16, DataType.UINT32) else -top
    low, top = sorted((low, top))  # a negative scale turns the range round
    return min(max(value, low), top)


class _Detector:
    """Running measurements of one SUMO detector (induction loop or lane-area)."""

    def __init__(self, api: Any, det_id: str, window: int) -> None:
        self.api, self.id = api, det_id
        self.count = 0
        self.seen: set[str] = set()
        self.occupancy: deque[float] = deque(maxlen=max(1, window))
        self.speed = 0.0

    def update(self) -> None:
        ids = set(self.api.getLastStepVehicleIDs(self.id))
        self.count += len(ids - self.seen)
        self.seen = ids
        self.occupancy.append(self.api.getLastStepOccupancy(self.id) / 100.0)
        speed = self.api.getLastStepMeanSpeed(self.id)
        if speed >= 0.0:  # -1: nobody on it this step; keep the last measured speed
            self.speed = speed

    def value(self, signal: Signal) -> float:
        if signal == Signal.DETECTOR_COUNT:
            return float(self.count)
        if signal == Signal.DETECTOR_OCCUPANCY:
            return min(1.0, sum(self.occupancy) / len(self.occupancy)) if self.occupancy else 0.0
        if signal == Signal.DETECTOR_PRESENCE:
            return 1.0 if self.seen else 0.0
        return self.speed


class SumoIntersection:
    """One SUMO traffic light behind a register bank; :meth:`start` runs it in a thread.

    Args:
        scenario: the SUMO scenario (a Scenario or a path ``load_scenario`` accepts).
        bank: the register bank to fill; its map must name detectors and lanes of the
            imported intersection (see :func:`simulation.virtual_map.register_map_for`).
        tls_id: the SUMO traffic light (default: the first of the net, by id).
        imported: the net as imported (default: imported here).
        speed: simulated seconds per wall-clock second (None: as fast as possible).
        seed, seconds: SUMO's seed and the episode length (default: the scenario's).
        watchdog_timeout_s, clock: see :class:`~simulation.virtual_logic.ControllerLogic`.
        occupancy_window_s: occupancy is averaged over this much simulated time.

    Raises ValueError for a map naming detectors or lanes the intersection lacks, and for a
    net whose own programme fails the guard (it is the fallback programme).
    """

    def __init__(self, scenario: Scenario | str | os.PathLike[str], bank: RegisterBank, *,
                 tls_id: str | None = None, imported: ImportedNet | None = None,
                 speed: float | None = 1.0, seed: int | None = 0, seconds: float | None = None,
                 watchdog_timeout_s: float = 10.0, clock: Any = time.monotonic,
                 occupancy_window_s: float = 5.0) -> None:
        if speed is not None and not speed > 0:
            raise ValueError(f"speed must be > 0 or None, got {speed!r}")
        self.scenario = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        self.imported = imported or import_net(self.scenario.net_file)
        self.tls_id = tls_id or sorted(self.imported.intersections)[0]
        if self.tls_id not in self.imported.intersections:
            raise ValueError(f"no traffic light {self.tls_id!r} in {self.scenario.net_file}")
        self.intersection = self.imported.intersections[self.tls_id]
        self.bank, self.speed, self.seed, self.seconds = bank, speed, seed, seconds
        self.occupancy_window_s = occupancy_window_s
        self.fallback = self.imported.designer_plan(self.tls_id)
        problems = check_plan(self.fallback, self.intersection)
        if problems:
            raise ValueError(f"{self.tls_id}: the net's own programme fails the guard: "
                             + "; ".join(map(str, problems)))
        self.logic = ControllerLogic(bank, self.intersection, fallback=self.fallback,
                                     watchdog_timeout_s=watchdog_timeout_s, clock=clock)
        self._resolve(bank.regmap.registers)
        #: (simulation time, SUMO state of the light) at every change
        self.state_log: deque[tuple[float, str]] = deque(maxlen=10_000)
        self.executor: PlanExecutor | None = None
        self.driver: SignalDriver | None = None
        self._dets: dict[str, _Detector] = {}
        self.sim_time = 0.0
        self.error: BaseException | None = None
        self.finished = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = threading.Event()

    def _resolve(self, registers: tuple[Register, ...]) -> None:
        x = self.intersection
        by_id = {d.id: d for d in x.detectors}
        self.det_regs: list[tuple[Register, str]] = []
        self.queue_regs: list[tuple[Register, str, str | None]] = []
        self.phase_regs = [r for r in registers if r.signal == Signal.CONTROLLER_PHASE]
        self.hold_regs = [r for r in registers if r.signal == Signal.PHASE_HOLD]
        self.force_regs = [r for r in registers if r.signal == Signal.PHASE_FORCE_OFF]
        used: dict[str, Detector] = {}
        queue_det = {d.lane: d for d in x.detectors if d.kind == DetectorKind.QUEUE}
        for reg in registers:
            if reg.signal.value.startswith("detector."):
                if reg.detector not in by_id:
                    raise ValueError(f"register {reg.name}: no detector {reg.detector!r} at "
                                     f"{self.tls_id}")
                used[reg.detector] = by_id[reg.detector]
                self.det_regs.append((reg, reg.detector))
            elif reg.signal == Signal.QUEUE_LENGTH:
                if reg.lane not in self.imported.lanes:
                    raise ValueError(f"register {reg.name}: no lane {reg.lane!r} in the net")
                det = queue_det.get(reg.lane)
                if det is not None:
                    used[det.id] = det
                self.queue_regs.append((reg, self.imported.lanes[reg.lane],
                                        det.id if det else None))
        self.detectors = list(used.values())

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Start SUMO and the stepping thread; returns once SUMO runs (or failed to start)."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(target=self._run, name=f"sumo-{self.tls_id}",
                                        daemon=True)
        self._thread.start()
        self._started.wait()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """Stop stepping and close SUMO. Safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _additional(self, folder: Path) -> Path:
        lanes = read_net(self.scenario.net_file).lanes
        rows = []
        for d in self.detectors:
            # An exit lane leaving the network is no approach of any light: its SUMO id.
            lane = self.imported.lanes.get(d.lane, d.lane)
            rows.append((d, lane, lanes[lane].length))
        path = folder / "tsc-vc-detectors.add.xml"
        path.write_text(detectors_xml(rows), encoding="utf-8")
        return path

    def _session(self, folder: Path) -> SumoSession:
        return session_with_additional(self.scenario, self._additional(folder), seed=self.seed,
                                       seconds=self.seconds, output_dir=folder)

    def _run(self) -> None:
        folder = Path(tempfile.mkdtemp(prefix="tsc-vc-"))
        try:
            with self._session(folder) as session:
                self._loop(session)
        except Exception as exc:  # the thread's last word: record it, raise FAULT, never vanish
            self.error = exc
            self.logic.fault(f"SUMO stopped: {exc!r}")
        finally:
            self._started.set()
            shutil.rmtree(folder, ignore_errors=True)

    def attach(self, session: SumoSession) -> None:
        """Take over this light in a started ``session``: a guarded driver from the state SUMO
        shows, the plan executor on it (running the fallback), and the detectors read."""
        conn, step = session.conn, session.step_length
        states = self.imported.phase_states[self.tls_id]
        current = conn.trafficlight.getRedYellowGreenState(self.tls_id)
        start = next((n for n, s in states.items() if s == current), None)
        self.driver = SignalDriver(conn, self.tls_id, self.intersection, states,
                                   clearance=guarded_clearance(self.intersection),
                                   start_phase=start, step_length=step)
        self.executor = PlanExecutor(self.driver, self.fallback)
        window = max(1, round(self.occupancy_window_s / step))
        self._dets = {d.id: _Detector(conn.inductionloop if d.kind in INDUCTION_KINDS
                                      else conn.lanearea, d.id, window) for d in self.detectors}

    def control(self, now: float) -> TimingPlan | None:
        """Before a step: load a newly committed plan (returned), then run the executor with
        the hold and force-off coils as the edge left them."""
        assert self.executor is not None, "attach() first"
        plan = self.logic.tick()
        if plan is not None:
            self.executor.load(plan)
        hold = {r.phase for r in self.hold_regs if self.bank.load(r.name)}
        force = {r.phase for r in self.force_regs if self.bank.load(r.name)}
        self.executor.step(now, hold, force)
        return plan

    def measure(self, session: SumoSession) -> None:
        """After a step: read the detectors and publish them, the queues and the phase."""
        assert self.driver is not None, "attach() first"
        self.sim_time = session.time
        for det in self._dets.values():
            det.update()
        self._publish(self._dets, session.conn, self.driver.phase)

    def _loop(self, session: SumoSession) -> None:
        self.attach(session)
        self._started.set()
        wall0, sim0, last_state = time.perf_counter(), session.time, None
        while not self._stop.is_set() and not session.done:
            now = session.time
            self.control(now)
            state = session.conn.trafficlight.getRedYellowGreenState(self.tls_id)
            if state != last_state:
                self.state_log.append((now, state))
                last_state = state
            session.step()
            self.measure(session)
            if self.speed is not None:
                ahead = (session.time - sim0) / self.speed - (time.perf_counter() - wall0)
                if ahead > 0:
                    self._stop.wait(ahead)
                elif ahead < -1.0:  # fell behind (a slow step): don't sprint to catch up
                    wall0, sim0 = time.perf_counter(), session.time
        if session.done:
            self.finished = True
            _log.info("virtual controller %s: episode ended at %.0f s; values stay as they are",
                      self.tls_id, session.time)

    def _publish(self, dets: dict[str, _Detector], conn: Any, phase: int) -> None:
        bank = self.bank
        for reg, det_id in self.det_regs:
            value = dets[det_id].value(reg.signal)
            if reg.signal == Signal.DETECTOR_COUNT:
                bank.store(reg.name, value, wrap=True)
            else:
                bank.store(reg.name, _fit(reg, value))
        for reg, lane, det_id in self.queue_regs:
            metres = conn.lanearea.getJamLengthMeters(det_id) if det_id is not None else \
                conn.lane.getLastStepHaltingNumber(lane) * JAM_SPACING_M
            bank.store(reg.name, _fit(reg, metres))
        for reg in self.phase_regs:
            bank.store(reg.name, phase if reg.ring == 1 else 0)
