"""Run timing plans in SUMO: a picklable plan set, and one episode that runs it.

:class:`PlanSet` holds :class:`~edge_agent.plan.TimingPlan` objects for some traffic lights of
a net, keyed by SUMO tls id or by the intersection id :func:`~simulation.net_import.import_net`
gives it. It is a frozen dataclass of plain values (plans are msgspec structs), so it crosses
process boundaries like :class:`~simulation.controllers.ControllerSpec`.

:func:`run_plans` runs one episode with those plans. How the plans run, and why:

* Every plan passes :func:`edge_agent.guard.check_plan` against the imported intersection
  first, in the process that runs the episode: a failing plan raises
  :class:`~edge_agent.errors.PlanRejected` and nothing runs. It is never clamped.
* Each plan becomes a static SUMO programme (:func:`~simulation.sumo_program.plan_to_program`)
  with its offset (:func:`~simulation.sumo_program.sumo_offset`), loaded from an additional
  file at start-up (:func:`~simulation.sumo_program.program_xml`). SUMO then runs it exactly,
  to the millisecond, with offsets on the simulation clock (the reference phase's green starts
  whenever ``time % cycle == offset``): a fixed-time plan needs no per-step Python, and loading
  at start-up avoids changing programmes mid-run, which FIELD-NOTES calls fragile. The session
  checks after start-up that SUMO really runs the programme at its offset.
* Traffic lights without a plan keep the net's own programme.
* ``demand`` replaces the scenario's route files (e.g. a route file written by
  :func:`simulation.demand_from_counts.demand_from_counts`); the KPIs then count every vehicle
  of that demand.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time as _time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from xml.sax.saxutils import quoteattr

from edge_agent.errors import PlanRejected
from edge_agent.guard import Violation, check_plan
from edge_agent.plan import TimingPlan
from simulation.kpi import Kpis
from simulation.net_import import ImportedNet, import_net
from simulation.scenario import Scenario, ScenarioError, load_scenario
from simulation.sumo_program import plan_to_program, program_xml, sumo_offset
from simulation.sumo_session import SumoError, SumoSession

__all__ = ["PROGRAM_ID", "PlanRun", "PlanSet", "Programme", "run_plans", "scenario_with"]

#: SUMO programme id of every programme loaded from a plan.
PROGRAM_ID = "tsc-plan"
#: Vehicle counts per edge are SUMO's ``left`` (vehicles that left the edge across its stop
#: line into the next one): what stop-bar detectors count.
COUNT_ATTRIBUTE = "left"

#: edge id -> ((begin, end, vehicles), ...), simulation seconds
EdgeCountTable = dict[str, tuple[tuple[float, float, int], ...]]


class Programme(NamedTuple):
    """The SUMO programme one plan runs: ``(state, duration)`` entries and the tlLogic offset."""

    tls_id: str
    intersection_id: str
    phases: tuple[tuple[str, float], ...]
    offset: float

    @property
    def cycle(self) -> float:
        return sum(d for _, d in self.phases)

    def xml(self) -> str:
        """An ``<additional>`` document SUMO loads with ``-a``."""
        return program_xml(self.tls_id, PROGRAM_ID, self.phases, self.offset)

    def states_at(self, time: float) -> set[str]:
        """The state SUMO shows at ``time``: the entry running then, or at a switch the one
        ending (SUMO applies a switch due at ``t`` during the step after ``t``).

        In whole milliseconds, as SUMO counts: in floating point a position that falls exactly
        on a switch (``(0 - 9.0) % 38.8`` is 29.799999999999997, not 29.8) lands in the
        entry before it, which SUMO has already left.
        """
        durations = [round(d * 1000) for _, d in self.phases]
        cycle, now = sum(durations), round(time * 1000)
        out = set()
        for position in ((now - round(self.offset * 1000)) % cycle,
                         (now - 1 - round(self.offset * 1000)) % cycle):
            start = 0
            for (state, _), duration in zip(self.phases, durations):
                if start <= position < start + duration:
                    out.add(state)
                    break
                start += duration
        return out


@dataclass(frozen=True)
class PlanSet:
    """Timing plans keyed by SUMO tls id or intersection id; picklable.

    Attributes:
        plans: key -> plan. An intersection id is the plan's own ``intersection_id`` as
            ``tsc-sim import-net`` writes it; a tls id is SUMO's.
        name: a label for reports ("candidate", "incumbent").
    """

    plans: Mapping[str, TimingPlan] = field(default_factory=dict)
    name: str = "plans"

    def __post_init__(self) -> None:
        for key, plan in self.plans.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"{self.name}: plan key {key!r} must be a tls or intersection id")
            if not isinstance(plan, TimingPlan):
                raise ValueError(f"{self.name}: plan for {key!r} is a {type(plan).__name__}, "
                                 f"not a TimingPlan")

    @classmethod
    def of(cls, plans: PlanSet | Mapping[str, TimingPlan] | Iterable[TimingPlan] | None,
           name: str = "plans") -> PlanSet:
        """A plan set from a PlanSet, a mapping, or plans keyed by their ``intersection_id``.

        Raises:
            ValueError: two plans for the same intersection.
        """
        if plans is None:
            return cls({}, name)
        if isinstance(plans, PlanSet):
            return cls(dict(plans.plans), name)
        if isinstance(plans, Mapping):
            return cls(dict(plans), name)
        keyed: dict[str, TimingPlan] = {}
        for plan in plans:
            if not isinstance(plan, TimingPlan):
                raise ValueError(f"{name}: {plan!r} is not a TimingPlan")
            if plan.intersection_id in keyed:
                raise ValueError(f"{name}: two plans for intersection {plan.intersection_id!r} "
                                 f"(plan ids {keyed[plan.intersection_id].plan_id} and "
                                 f"{plan.plan_id})")
            keyed[plan.intersection_id] = plan
        return cls(keyed, name)

    def resolve(self, imported: ImportedNet) -> dict[str, TimingPlan]:
        """The plans keyed by SUMO tls id.

        Raises:
            ValueError: a key names no traffic light of the net, names two different ones
                (a tls id that is also another tls's intersection id), or two keys name one.
        """
        out: dict[str, TimingPlan] = {}
        for key, plan in self.plans.items():
            by_tls = key if key in imported.intersections else None
            by_id = imported.tls_ids.get(key)
            if by_tls is not None and by_id is not None and by_tls != by_id:
                raise ValueError(f"{self.name}: key {key!r} is tls {by_tls!r} and also the "
                                 f"intersection id of tls {by_id!r}; key the plan by the other id")
            tls = by_tls or by_id
            if tls is None:
                known = ", ".join(sorted(imported.tls_ids)) or "none"
                raise ValueError(f"{self.name}: {key!r} is no traffic light of "
                                 f"{imported.net_path} (intersections: {known})")
            if tls in out:
                raise ValueError(f"{self.name}: two plans for traffic light {tls!r}")
            out[tls] = plan
        return out

    def over(self, base: PlanSet, imported: ImportedNet) -> PlanSet:
        """This set's plans, and ``base``'s for traffic lights this set has no plan for."""
        merged = base.resolve(imported)
        merged.update(self.resolve(imported))
        return PlanSet(merged, self.name)

    def violations(self, imported: ImportedNet) -> dict[str, list[Violation]]:
        """Guard violations per intersection id (only intersections whose plan fails)."""
        out: dict[str, list[Violation]] = {}
        for tls, plan in self.resolve(imported).items():
            intersection = imported.intersections[tls]
            found = check_plan(plan, intersection)
            if found:
                out[intersection.id] = found
        return out

    def programmes(self, imported: ImportedNet) -> list[Programme]:
        """The SUMO programme of every plan, after the guard.

        Raises:
            PlanRejected: a plan breaks a guard rule (every violation of every plan listed).
        """
        resolved = self.resolve(imported)
        reasons: list[str] = []
        first_failing = 0
        for tls, plan in resolved.items():
            intersection = imported.intersections[tls]
            found = check_plan(plan, intersection)
            first_failing = first_failing or (plan.plan_id if found else 0)
            reasons += [f"{intersection.id}: {v}" for v in found]
        if reasons:
            raise PlanRejected(first_failing, reasons)
        out = []
        for tls, plan in resolved.items():
            intersection = imported.intersections[tls]
            phases = plan_to_program(plan, intersection, imported.phase_states[tls])
            out.append(Programme(tls, intersection.id, tuple(phases), sumo_offset(plan)))
        return out


@dataclass(frozen=True)
class PlanRun:
    """Outcome of one :func:`run_plans` episode (picklable).

    Attributes:
        plans: the plan set's name.
        seed: SUMO seed.
        backend: "libsumo" or "traci".
        kpis: episode KPIs over every vehicle of the demand.
        programmes: tls id -> intersection id of every traffic light run on a plan.
        edge_counts: vehicles that left each edge per interval, if counting was asked for.
        wall_s, sim_s: wall-clock and simulated seconds.
    """

    plans: str
    seed: int | None
    backend: str
    kpis: Kpis
    programmes: dict[str, str]
    edge_counts: EdgeCountTable | None
    wall_s: float
    sim_s: float


def scenario_with(scenario: Scenario, *, demand: Sequence[Path] | None = None,
                  additional: Sequence[Path] = ()) -> tuple[Scenario, list[str]]:
    """The scenario with its route files replaced and additional files appended.

    Returns the scenario to hand to :class:`SumoSession` (its ``route_files`` are the demand
    the KPIs count) and the extra SUMO options that make SUMO load exactly those files: a
    ``.sumocfg`` is kept for its other settings and overridden on the command line.
    """
    routes = tuple(Path(p).resolve() for p in demand) if demand is not None \
        else scenario.route_files
    for path in routes:
        if not path.is_file():
            raise ScenarioError(f"demand file not found: {path}")
    adds = scenario.additional_files + tuple(Path(p) for p in additional)
    replaced = dataclasses.replace(scenario, route_files=routes, additional_files=adds)
    if scenario.config_file is None:
        return replaced, []  # Scenario.sumo_args passes -n, -r and -a itself
    extra = []
    if demand is not None:
        extra += ["--route-files", ",".join(str(p) for p in routes)]
    if additional:
        extra += ["--additional-files", ",".join(str(p) for p in adds)]
    return replaced, extra


def _count_xml(period: float, begin: float, path: Path) -> str:
    return (f'<additional>\n    <edgeData id="tsc-counts" period="{period:g}" begin="{begin:g}" '
            f'file={quoteattr(str(path))} excludeEmpty="true"/>\n</additional>\n')


def _read_counts(path: Path) -> EdgeCountTable:
    table: dict[str, list[tuple[float, float, int]]] = {}
    for interval in ET.parse(path).getroot().iter("interval"):
        begin, end = float(interval.get("begin", "0")), float(interval.get("end", "0"))
        for edge in interval.iter("edge"):
            table.setdefault(edge.get("id", ""), []).append(
                (begin, end, int(float(edge.get(COUNT_ATTRIBUTE, "0")))))
    return {edge: tuple(rows) for edge, rows in table.items()}


def run_plans(scenario: Scenario | str | os.PathLike[str], plans: PlanSet | None = None,
              seed: int | None = 0, seconds: float | None = None, *,
              demand: Sequence[str | os.PathLike[str]] | str | os.PathLike[str] | None = None,
              use_libsumo: bool = True, count_period_s: float | None = None,
              output_dir: str | os.PathLike[str] | None = None) -> PlanRun:
    """Simulate one episode with ``plans`` on the scenario (and ``demand``, if given).

    A top-level function with picklable arguments and result, for process pools. Give each
    episode a fresh process to use libsumo (see :mod:`simulation.sumo_session`); with
    ``use_libsumo=False`` each episode runs in its own SUMO process through traci, which is
    safe from threads and reused worker processes.

    Args:
        scenario: a Scenario or a path :func:`~simulation.scenario.load_scenario` accepts.
        plans: the plans to run (None or empty: the net's own programmes).
        seed: SUMO seed.
        seconds: simulate this many seconds from the scenario's begin (default: all of it).
        demand: route file(s) replacing the scenario's own.
        use_libsumo: False forces traci.
        count_period_s: also count, per edge and per interval of this length, the vehicles
            that left the edge (SUMO's edgeData ``left``; what stop-bar detectors see).
        output_dir: keep SUMO's outputs there.

    Raises:
        PlanRejected: a plan breaks a guard rule (nothing was simulated).
        ValueError: a plan names no traffic light of the net.
        SumoError: SUMO failed, or did not run a plan's programme at its offset.
    """
    started = _time.perf_counter()
    scen = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    plan_set = plans if plans is not None else PlanSet()
    imported = import_net(scen.net_file)
    programmes = plan_set.programmes(imported)
    if count_period_s is not None and not (math.isfinite(count_period_s) and count_period_s > 0):
        raise ValueError(f"count_period_s must be a positive number of seconds, got {count_period_s!r}")
    routes = None if demand is None else \
        [Path(demand)] if isinstance(demand, (str, os.PathLike)) else [Path(p) for p in demand]
    with tempfile.TemporaryDirectory(prefix="tsc-plans-") as tmp:
        folder = Path(tmp)
        adds = []
        for k, programme in enumerate(programmes):
            path = folder / f"plan{k}.add.xml"
            path.write_text(programme.xml(), encoding="utf-8")
            adds.append(path)
        counts_path = folder / "edge-counts.xml"
        if count_period_s is not None:
            adds.append(folder / "counts.add.xml")
            adds[-1].write_text(_count_xml(count_period_s, scen.begin, counts_path), encoding="utf-8")
        run_scenario, extra = scenario_with(scen, demand=routes, additional=adds)
        # SumoSession starts one session at a time, so thread pools are safe here.
        session = SumoSession(run_scenario, seed=seed, seconds=seconds, use_libsumo=use_libsumo,
                              output_dir=output_dir, extra_args=extra)
        with session:
            _check_programmes(session, programmes)
            session.run_to_end()
            kpis = session.kpis()  # closes SUMO, which writes the count file
            counts = _read_counts(counts_path) if count_period_s is not None else None
            return PlanRun(plans=plan_set.name, seed=seed, backend=session.backend, kpis=kpis,
                           programmes={p.tls_id: p.intersection_id for p in programmes},
                           edge_counts=counts, wall_s=_time.perf_counter() - started,
                           sim_s=session.time - session.begin)


def _check_programmes(session: Any, programmes: list[Programme]) -> None:
    """SUMO runs each plan's programme, at its offset (nothing is assumed silently)."""
    tl = session.conn.trafficlight
    for programme in programmes:
        running = tl.getProgram(programme.tls_id)
        state = tl.getRedYellowGreenState(programme.tls_id)
        expected = sorted(programme.states_at(session.time))
        if running != PROGRAM_ID or state not in expected:
            raise SumoError(f"SUMO does not run the plan for {programme.tls_id!r}: programme "
                            f"{running!r} shows {state!r} at {session.time:g} s, expected "
                            f"{PROGRAM_ID!r} showing {' or '.join(map(repr, expected))}")
