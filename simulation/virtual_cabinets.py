"""Several virtual controllers in one SUMO session: a corridor's cabinets, one Modbus server each.

:class:`~simulation.virtual_controller.VirtualController` runs one traffic light per SUMO
session. A corridor demo needs every light of one net in the same traffic, so
:class:`VirtualCabinets` starts one SUMO session, one stepping thread and, per traffic light, a
pymodbus server on 127.0.0.1 (its own port) in front of a
:class:`~simulation.virtual_bank.RegisterBank`. Each light keeps the single-light pieces:
register map (:func:`~simulation.virtual_map.register_map_for`), commit handling, guard and
watchdog (:class:`~simulation.virtual_logic.ControllerLogic`, built by
:class:`~simulation.virtual_sumo.SumoIntersection`), plan timing
(:class:`~simulation.virtual_logic.PlanExecutor`) and the same measurements.

``on_step(sim_time)`` is called after every SUMO step (the demo's simulated clock);
:attr:`commits` lists the plans each controller accepted and ran, and :attr:`kpis` holds the
episode KPIs once the episode ended (or was stopped).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from edge_agent.registers import RegisterMap
from simulation.kpi import Kpis
from simulation.net_import import ImportedNet, import_net
from simulation.net_xml import read_net
from simulation.scenario import Scenario, load_scenario
from simulation.sumo_session import SumoSession
from simulation.virtual_controller import VirtualController
from simulation.virtual_map import register_map_for
from simulation.virtual_sumo import (SumoIntersection, detectors_xml,
                                     session_with_additional)

__all__ = ["Commit", "VirtualCabinets"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Commit:
    """A plan a virtual controller accepted from the wire and started running (the registers
    carry no source: the centre's history says whose plan an id is)."""

    sim_time: float
    intersection: str
    plan_id: int


class VirtualCabinets:
    """Every traffic light of ``scenario`` (or ``tls_ids``) behind its own Modbus server.

    Args:
        scenario: the SUMO scenario (a Scenario or a path ``load_scenario`` accepts).
        tls_ids: the lights to serve (default: all of the net).
        speed: simulated seconds per wall-clock second (None: as fast as SUMO goes).
        seed, seconds: SUMO's seed and the episode length (default: the scenario's).
        poll_period_s: the poll period written into the register maps' device settings.
        watchdog_timeout_s: each controller's watchdog (wall clock).
        on_step: called with the simulation time after every step (stepping thread).
        output_dir: keep SUMO's outputs there (default: a temporary folder, removed).
    """

    def __init__(self, scenario: Scenario | str | os.PathLike[str], *,
                 tls_ids: Sequence[str] | None = None, speed: float | None = 1.0,
                 seed: int | None = 0, seconds: float | None = None,
                 poll_period_s: float = 1.0, watchdog_timeout_s: float = 10.0,
                 on_step: Callable[[float], None] | None = None,
                 output_dir: str | os.PathLike[str] | None = None) -> None:
        if speed is not None and not speed > 0:
            raise ValueError(f"speed must be > 0 or None, got {speed!r}")
        self.scenario = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        self.imported: ImportedNet = import_net(self.scenario.net_file)
        self.tls_ids = list(tls_ids) if tls_ids is not None else sorted(self.imported.intersections)
        self.speed, self.seed, self.seconds, self.on_step = speed, seed, seconds, on_step
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.controllers: dict[str, VirtualController] = {}
        self.lights: dict[str, SumoIntersection] = {}
        for tls in self.tls_ids:
            x = self.imported.intersections[tls]
            regmap = register_map_for(x)
            regmap = msgspec.structs.replace(regmap, device=msgspec.structs.replace(
                regmap.device, poll_period_s=poll_period_s,
                timeout_s=min(regmap.device.timeout_s, poll_period_s / 2)))
            vc = VirtualController(regmap, port=0)
            # The light: the single-light measurement and commit pieces on this bank; its
            # own thread is never started, the shared stepping thread below runs it.
            light = SumoIntersection(self.scenario, vc.bank, tls_id=tls, imported=self.imported,
                                     speed=speed, seed=seed, seconds=seconds,
                                     watchdog_timeout_s=watchdog_timeout_s)
            vc.sim, vc.logic, vc.intersection = light, light.logic, light.intersection
            self.controllers[x.id] = vc
            self.lights[x.id] = light
        self.commits: list[Commit] = []
        self.sim_time = 0.0
        self.end = 0.0
        self.kpis: Kpis | None = None
        self.error: BaseException | None = None
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._started = threading.Event()
        self._go = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ life cycle
    def start(self, *, paused: bool = False) -> VirtualCabinets:
        """Start SUMO, the stepping thread and every server; returns once all answer.

        ``paused``: SUMO loads but time stands still until :meth:`resume`.
        """
        if not paused:
            self._go.set()
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(target=self._run, name="sumo-cabinets", daemon=True)
        self._thread.start()
        self._started.wait()
        if self.error is not None:
            self.stop()
            raise self.error
        try:
            for vc in self.controllers.values():
                vc.start_server()
        except BaseException:
            self.stop()
            raise
        return self

    def resume(self) -> None:
        """Let simulated time run (after ``start(paused=True)``)."""
        self._go.set()

    def stop(self) -> None:
        """Stop the servers, the stepping and SUMO. Safe to call twice."""
        for vc in self.controllers.values():
            vc.stop_server()
        self._stop.set()
        self._go.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> VirtualCabinets:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def link_maps(self) -> dict[str, RegisterMap]:
        """Intersection id -> register map with the port its server listens on."""
        return {x: vc.link_map() for x, vc in self.controllers.items()}

    # ------------------------------------------------------------------ stepping
    def _session(self, folder: Path) -> SumoSession:
        lanes = read_net(self.scenario.net_file).lanes
        rows = []
        for light in self.lights.values():
            for d in light.detectors:
                lane = self.imported.lanes[d.lane]
                rows.append((d, lane, lanes[lane].length))
        add = folder / "tsc-cabinets-detectors.add.xml"
        add.write_text(detectors_xml(rows), encoding="utf-8")
        return session_with_additional(self.scenario, add, seed=self.seed, seconds=self.seconds,
                                       output_dir=self.output_dir or folder)

    def _run(self) -> None:
        folder = Path(tempfile.mkdtemp(prefix="tsc-cabinets-"))
        try:
            session = self._session(folder)
            try:
                self._loop(session)
            finally:
                try:
                    self.kpis = session.kpis()
                except Exception as exc:  # noqa: BLE001 - a stopped run may lack outputs
                    _log.warning("no KPIs for the virtual cabinets' episode: %r", exc)
                    session.close()
        except Exception as exc:  # the thread's last word: record it, FAULT every light
            self.error = exc
            for light in self.lights.values():
                light.logic.fault(f"SUMO stopped: {exc!r}")
        finally:
            self._started.set()
            self.finished.set()
            shutil.rmtree(folder, ignore_errors=True)

    def _loop(self, session: SumoSession) -> None:
        for light in self.lights.values():
            light.attach(session)
        self._started.set()
        self._go.wait()
        wall0, sim0 = time.perf_counter(), session.time
        while not self._stop.is_set() and not session.done:
            now = session.time
            for x, light in self.lights.items():
                plan = light.control(now)
                if plan is not None and plan is not light.fallback:
                    self.commits.append(Commit(now, x, plan.plan_id))
            session.step()
            self.sim_time = session.time
            for light in self.lights.values():
                light.measure(session)
            if self.on_step is not None:
                self.on_step(session.time)
            if self.speed is not None:
                ahead = (session.time - sim0) / self.speed - (time.perf_counter() - wall0)
                if ahead > 0:
                    self._stop.wait(ahead)
                elif ahead < -1.0:  # fell behind (a slow step): don't sprint to catch up
                    wall0, sim0 = time.perf_counter(), session.time
        if session.done:
            for light in self.lights.values():
                light.finished = True
            _log.info("virtual cabinets: episode ended at %.0f s", session.time)

    def __repr__(self) -> str:
        return f"VirtualCabinets({self.scenario.name!r}, {len(self.controllers)} lights)"

