"""Run one SUMO episode with an optional controller in the loop and return its KPIs.

:func:`run_episode` is a top-level function with picklable arguments and result, so episodes
can be fanned out over a process pool. libsumo allows one simulation per process, and only the
first episode of a process is reproducible (see :mod:`simulation.sumo_session`), so give each
episode a fresh process:

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=4, mp_context=ctx, max_tasks_per_child=1) as pool:
        results = list(pool.map(run_episode, [scenario] * 5, [None] * 5, range(5)))
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time as _time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from simulation.kpi import KpiCollector, Kpis, QueueStats
from simulation.scenario import Scenario, load_scenario
from simulation.sumo_session import SumoSession

__all__ = ["Controller", "ControllerFactory", "ProgressCallback", "RunResult", "run_episode"]

#: Progress is reported every this many simulation steps (and once at the end).
PROGRESS_EVERY_STEPS = 10


class Controller(Protocol):
    """Anything with ``step(time)``; called once per simulation step, before SUMO advances.

    It reads detectors and sets signals through the session's ``conn`` (given to its factory).
    An optional ``close()`` is called after the last step.
    """

    def step(self, time: float) -> None: ...


#: Builds a controller for a started session: ``factory(session) -> controller``.
ControllerFactory = Callable[[SumoSession], Controller]
#: ``progress(sim_time, end)``, e.g. to draw a progress bar.
ProgressCallback = Callable[[float, float], None]


@dataclass(frozen=True)
class RunResult:
    """Outcome of one episode.

    Attributes:
        scenario: scenario name.
        seed: SUMO seed (None: random).
        begin, end: the episode window simulated.
        backend: "libsumo" or "traci".
        controller: the controller's class name, or "fixed" for the net's own programmes.
        kpis: episode KPIs.
        queues: queue statistics per intersection (None if not collected).
        wall_s: wall-clock seconds for the whole episode (start, steps, close, KPIs).
        sim_s: simulated seconds.
        output_dir: where SUMO's outputs were kept, if anywhere.
    """

    scenario: str
    seed: int | None
    begin: float
    end: float
    backend: str
    controller: str
    kpis: Kpis
    queues: QueueStats | None
    wall_s: float
    sim_s: float
    output_dir: str | None = None

    @property
    def sim_speed(self) -> float:
        """Simulated seconds per wall-clock second."""
        return self.sim_s / self.wall_s if self.wall_s > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (KPIs flattened under ``kpis``)."""
        return {
            "scenario": self.scenario, "seed": self.seed, "begin": self.begin, "end": self.end,
            "backend": self.backend, "controller": self.controller,
            "wall_s": self.wall_s, "sim_s": self.sim_s, "sim_speed": self.sim_speed,
            "output_dir": self.output_dir, "kpis": self.kpis.to_dict(),
            "queues": self.queues.to_dict() if self.queues is not None else None,
        }


def run_episode(scenario: Scenario | str | os.PathLike[str],
                controller_factory: ControllerFactory | None = None,
                seed: int | None = 0,
                seconds: float | None = None,
                output_dir: str | os.PathLike[str] | None = None,
                use_libsumo: bool = True,
                progress: ProgressCallback | None = None,
                *,
                queue_every: int | None = 1,
                isolate: bool = False,
                reuse_libsumo: bool = False) -> RunResult:
    """Simulate one episode and compute its KPIs.

    Args:
        scenario: a Scenario or a path :func:`~simulation.scenario.load_scenario` accepts.
        controller_factory: ``(session) -> controller``; its ``step(time)`` runs once per
            simulation step before SUMO advances. None runs the net's own programmes ("fixed").
        seed: SUMO seed; None for ``--random``.
        seconds: simulate only this many seconds from the scenario's begin (default: full episode).
        output_dir: keep SUMO's outputs there (see :class:`SumoSession`).
        use_libsumo: False forces traci.
        progress: ``progress(sim_time, end)`` every few steps and at the end.
        queue_every: sample queues every N steps; None to skip queue collection.
        isolate: run the episode in a fresh child process (spawned), so that libsumo is used
            and the result is reproducible whatever ran before; ``controller_factory`` must
            then be picklable, and ``progress`` is not supported.
        reuse_libsumo: see :class:`SumoSession` (fast but not reproducible after another episode).

    Raises:
        ValueError: ``progress`` together with ``isolate``.
    """
    if isolate:
        if progress is not None:
            raise ValueError("progress callbacks cannot cross processes; use isolate=False for a progress bar")
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            return pool.submit(run_episode, scenario, controller_factory, seed, seconds, output_dir, use_libsumo,
                               None, queue_every=queue_every, reuse_libsumo=reuse_libsumo).result()
    started = _time.perf_counter()
    scen = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    with SumoSession(scen, seed=seed, seconds=seconds, output_dir=output_dir, use_libsumo=use_libsumo,
                     reuse_libsumo=reuse_libsumo) as session:
        controller = controller_factory(session) if controller_factory is not None else None
        collector = KpiCollector(session.conn, every=queue_every) if queue_every else None
        step_controller = controller.step if controller is not None else None
        while not session.done:
            if step_controller is not None:
                step_controller(session.time)
            session.step()
            if collector is not None:
                collector.sample()
            if progress is not None and session.steps % PROGRESS_EVERY_STEPS == 0:
                progress(session.time, session.end)
        if progress is not None:
            progress(session.time, session.end)
        closer = getattr(controller, "close", None)
        if callable(closer):
            closer()
        kpis = session.kpis()
        sim_s = session.time - session.begin
        result_fields = dict(
            scenario=scen.name, seed=seed, begin=session.begin, end=session.end, backend=session.backend,
            controller=type(controller).__name__ if controller is not None else "fixed",
            kpis=kpis, queues=collector.result() if collector is not None else None,
            sim_s=sim_s, output_dir=str(output_dir) if output_dir is not None else None,
        )
    return RunResult(wall_s=_time.perf_counter() - started, **result_fields)
