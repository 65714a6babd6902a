"""The validation gate: is a candidate plan safe, and not worse than the plan in force, on the
demand we measured?

:func:`validate` answers with a :class:`Verdict`, in three steps:

1. **Guard.** Every candidate plan passes :func:`edge_agent.guard.check_plan` against its
   imported intersection. Any violation rejects the candidate at once, without simulating;
   each reason names the intersection, the phase and the rule. (Incumbent plans must pass the
   guard too, or the comparison means nothing: that is bad input, :class:`GateInputError`.)
2. **Simulation.** Candidate and incumbent run on the same demand (e.g. a route file from
   :func:`simulation.demand_from_counts.demand_from_counts`), horizon and seeds, every episode
   in its own task (:func:`simulation.plan_episode.run_plans`). The candidate runs its plans
   over the incumbent's: an intersection the candidate has no plan for keeps the incumbent's
   plan, and one neither has a plan for keeps the net's own programme, so the comparison
   isolates the change.
3. **Comparison**, totals and means over the seeds:

   * safety: more collisions, or more emergency braking, than the incumbent rejects;
   * delay: ``mean_delay_s`` (every vehicle of the demand, those never inserted included) worse
     than the incumbent's by more than ``max(tolerance.relative x incumbent delay,
     tolerance.absolute_s)`` rejects. Defaults: 5 % and 1.0 s, so on an incumbent at 40 s/veh
     up to 2.0 s/veh worse is accepted, and at 10 s/veh up to 1.0 s/veh (5 % would be 0.5 s,
     below the seed-to-seed noise of short runs).

Executors. Episodes go through ``executor.submit(fn, *args)``: anything with the
:class:`concurrent.futures.Executor` ``submit`` method whose futures have ``result()`` works,
e.g. a ``ThreadPoolExecutor``, or a Dask cluster through ``distributed.Client(...)
.get_executor()`` (the scenario and demand paths must then be readable on the workers). By
default a ``ProcessPoolExecutor`` with the spawn context and ``max_tasks_per_child=1`` runs
each episode in a fresh process with libsumo: libsumo runs one simulation per process, and
only the first episode of a process is reproducible. Since a supplied executor may run
several episodes in one process or thread, episodes then use traci (a SUMO process each,
3-8x slower, reproducible) unless ``use_libsumo=True`` says that every task gets a fresh
process.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edge_agent.plan import TimingPlan
from simulation.net_import import ImportedNet, import_net
from simulation.plan_episode import PlanRun, PlanSet, run_plans
from simulation.scenario import Scenario, load_scenario

__all__ = ["GateInputError", "KPI_KEYS", "SideResult", "SubmitExecutor", "Tolerance", "Verdict",
           "validate"]

#: KPIs reported for both sides, per seed and as means over the seeds.
KPI_KEYS = ("mean_delay_s", "mean_delay_resco_s", "mean_travel_time_s", "mean_waiting_s",
            "throughput", "stops_mean", "demand", "never_inserted", "unfinished", "teleports",
            "collisions", "emergency_braking", "emergency_stops")
#: Safety counts compared as totals over the seeds: the candidate may not have more.
SAFETY_KEYS = ("collisions", "emergency_braking")

Plans = PlanSet | Mapping[str, TimingPlan] | Iterable[TimingPlan] | None


class GateInputError(ValueError):
    """The gate cannot answer: bad plans, seeds, horizon or demand; the message says which."""


class SubmitExecutor(Protocol):
    """What :func:`validate` needs of an executor."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future: ...


@dataclass(frozen=True)
class Tolerance:
    """How much worse mean delay may get: ``max(relative x incumbent, absolute_s)`` seconds."""

    relative: float = 0.05
    absolute_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("relative", "absolute_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise GateInputError(f"tolerance.{name} must be a number >= 0, got {value!r}")

    def allowed_s(self, incumbent_delay_s: float) -> float:
        """Seconds per vehicle the candidate may add to the incumbent's mean delay."""
        return max(self.relative * incumbent_delay_s, self.absolute_s)

    def __str__(self) -> str:
        return f"max({100 * self.relative:g} % of the incumbent's delay, {self.absolute_s:g} s)"


@dataclass(frozen=True)
class SideResult:
    """KPIs of one side (candidate or incumbent): means over seeds and per seed."""

    name: str
    mean: dict[str, float | None]
    per_seed: list[dict[str, Any]]
    backend: str
    wall_s: float

    @classmethod
    def of(cls, name: str, runs: list[PlanRun]) -> SideResult:
        per_seed = [{"seed": r.seed, **{k: r.kpis.to_dict()[k] for k in KPI_KEYS}} for r in runs]
        mean: dict[str, float | None] = {}
        for key in KPI_KEYS:
            values = [row[key] for row in per_seed]
            mean[key] = None if any(v is None for v in values) else sum(values) / len(values)
        for key in SAFETY_KEYS:  # totals, not means: one collision is one too many
            values = [row[key] for row in per_seed]
            mean[f"{key}_total"] = None if any(v is None for v in values) else sum(values)
        return cls(name, mean, per_seed, ",".join(sorted({r.backend for r in runs})),
                   sum(r.wall_s for r in runs))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "mean": self.mean, "per_seed": self.per_seed,
                "backend": self.backend, "wall_s": self.wall_s}


@dataclass(frozen=True)
class Verdict:
    """The gate's answer.

    Attributes:
        accepted: True when the candidate may be pushed.
        reasons: why it was rejected (empty when accepted): guard violations, safety counts
            above the incumbent's, delay worse than the tolerance allows.
        violations: guard violations per intersection id (as text).
        tolerance: the tolerance applied.
        seeds, horizon_s: what was simulated (horizon None: the whole episode).
        candidate, incumbent: KPIs of both sides; None when the guard short-circuited.
        allowed_s: seconds of mean delay the candidate could add (None without simulation).
    """

    accepted: bool
    reasons: list[str]
    violations: dict[str, list[str]]
    tolerance: Tolerance
    seeds: tuple[int, ...]
    horizon_s: float | None
    candidate: SideResult | None = None
    incumbent: SideResult | None = None
    allowed_s: float | None = None
    intersections: tuple[str, ...] = field(default_factory=tuple)

    @property
    def delay_change_s(self) -> float | None:
        """Candidate minus incumbent mean delay (s/veh), None without simulation."""
        if self.candidate is None or self.incumbent is None:
            return None
        return self.candidate.mean["mean_delay_s"] - self.incumbent.mean["mean_delay_s"]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "accepted": self.accepted, "reasons": self.reasons, "violations": self.violations,
            "tolerance": {"relative": self.tolerance.relative, "absolute_s": self.tolerance.absolute_s},
            "allowed_s": self.allowed_s, "delay_change_s": self.delay_change_s,
            "seeds": list(self.seeds), "horizon_s": self.horizon_s,
            "intersections": list(self.intersections),
            "candidate": self.candidate.to_dict() if self.candidate else None,
            "incumbent": self.incumbent.to_dict() if self.incumbent else None,
        }


def _seeds(seeds: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(seeds, bool):
        raise GateInputError(f"seeds must be a count or a list of seeds, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise GateInputError(f"seeds must be >= 1, got {seeds}")
        return tuple(range(seeds))
    out = tuple(seeds)
    if not out or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in out):
        raise GateInputError(f"seeds must be non-negative integers, got {list(out)!r}")
    if len(set(out)) != len(out):
        raise GateInputError(f"seeds repeat: {list(out)!r}")
    return out


def _demand(demand: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None) -> list[Path] | None:
    if demand is None:
        return None
    paths = [Path(demand)] if isinstance(demand, (str, os.PathLike)) else [Path(p) for p in demand]
    if not paths:
        raise GateInputError("demand: no route file given (pass None for the scenario's own demand)")
    for path in paths:
        if not path.is_file():
            raise GateInputError(f"demand route file not found: {path}")
    return [p.resolve() for p in paths]


def validate(candidate: Plans, incumbent: Plans,
             demand: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None,
             horizon: float | None, seeds: int | Sequence[int] = 3, *,
             scenario: Scenario | str | os.PathLike[str], tolerance: Tolerance | None = None,
             executor: SubmitExecutor | None = None, use_libsumo: bool | None = None,
             jobs: int | None = None, imported: ImportedNet | None = None) -> Verdict:
    """Check ``candidate`` against the guard, then against ``incumbent`` in SUMO.

    Args:
        candidate: plans to check: a :class:`PlanSet`, a mapping tls or intersection id ->
            plan, or plans keyed by their ``intersection_id``. At least one plan.
        incumbent: the plans in force, in the same forms; None or empty: the net's programmes.
        demand: route file(s) replacing the scenario's demand (None: the scenario's own).
        horizon: seconds simulated from the scenario's begin (None: the whole episode).
        seeds: a number of seeds (0..n-1) or the seeds themselves.
        scenario: the SUMO scenario (net, settings and, without ``demand``, the demand).
        tolerance: see :class:`Tolerance` (default 5 % and 1.0 s).
        executor: runs the episodes (see the module docstring); default: a process pool.
        use_libsumo: default True with the default pool, False with a supplied executor.
        jobs: worker processes of the default pool (default: one per episode, up to the cores).
        imported: the scenario's imported net, if the caller has it already.

    Raises:
        GateInputError: no candidate plan, a plan for no traffic light of the net, incumbent
            plans that break the guard, bad seeds, horizon or demand, or no vehicle to compare.
    """
    tol = tolerance if tolerance is not None else Tolerance()
    seed_list = _seeds(seeds)
    if horizon is not None and not (isinstance(horizon, (int, float)) and math.isfinite(horizon)
                                    and horizon > 0):
        raise GateInputError(f"horizon must be a positive number of seconds, got {horizon!r}")
    scen = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    routes = _demand(demand)
    net = imported if imported is not None else import_net(scen.net_file)
    try:
        cand = PlanSet.of(candidate, "candidate")
        inc = PlanSet.of(incumbent, "incumbent")
        if not cand.plans:
            raise GateInputError("candidate: no plan given")
        cand_by_tls = cand.resolve(net)
        bad_incumbent = inc.violations(net)
        found = cand.violations(net)
        merged = cand.over(inc, net)
    except GateInputError:
        raise
    except ValueError as exc:
        raise GateInputError(str(exc)) from exc
    if bad_incumbent:
        details = "; ".join(f"{iid}: {v}" for iid, vs in bad_incumbent.items() for v in vs)
        raise GateInputError(f"incumbent plans break the guard, so nothing can be compared with "
                             f"them: {details}")
    names = tuple(sorted(net.intersections[t].id for t in cand_by_tls))
    common = dict(tolerance=tol, seeds=seed_list, horizon_s=horizon, intersections=names)
    if found:
        reasons = [f"guard: {iid}: {v}" for iid, vs in found.items() for v in vs]
        return Verdict(False, reasons, {iid: [str(v) for v in vs] for iid, vs in found.items()},
                       **common)
    runs = _simulate(scen, merged, inc, routes, horizon, seed_list, executor, use_libsumo, jobs)
    cand_side = SideResult.of("candidate", runs["candidate"])
    inc_side = SideResult.of("incumbent", runs["incumbent"])
    reasons, allowed = _compare(cand_side, inc_side, tol, len(seed_list))
    return Verdict(not reasons, reasons, {}, candidate=cand_side, incumbent=inc_side,
                   allowed_s=allowed, **common)


def _simulate(scen: Scenario, candidate: PlanSet, incumbent: PlanSet, routes: list[Path] | None,
              horizon: float | None, seeds: tuple[int, ...], executor: SubmitExecutor | None,
              use_libsumo: bool | None, jobs: int | None) -> dict[str, list[PlanRun]]:
    tasks = [(label, plans, seed) for label, plans in (("candidate", candidate), ("incumbent", incumbent))
             for seed in seeds]
    own_pool = executor is None
    libsumo = own_pool if use_libsumo is None else use_libsumo
    if own_pool:
        workers = jobs or min(len(tasks), os.cpu_count() or 1)
        executor = ProcessPoolExecutor(max_workers=workers, max_tasks_per_child=1,
                                       mp_context=multiprocessing.get_context("spawn"))
    assert executor is not None
    futures: list[tuple[str, Future]] = []
    try:
        for label, plans, seed in tasks:
            futures.append((label, executor.submit(run_plans, scen, plans, seed, horizon,
                                                   demand=routes, use_libsumo=libsumo)))
        out: dict[str, list[PlanRun]] = {"candidate": [], "incumbent": []}
        for label, future in futures:
            out[label].append(future.result())
        return out
    except BaseException:
        for _, future in futures:
            future.cancel()
        raise
    finally:
        if own_pool:
            executor.shutdown(wait=True, cancel_futures=True)


def _compare(cand: SideResult, inc: SideResult, tol: Tolerance, n_seeds: int) -> tuple[list[str], float]:
    reasons = []
    for key in SAFETY_KEYS:
        c, i = cand.mean[f"{key}_total"], inc.mean[f"{key}_total"]
        label = key.replace("_", " ")
        if c is None or i is None:
            reasons.append(f"safety: SUMO reported no {label} count, so safety cannot be shown")
        elif c > i:
            reasons.append(f"safety: {c:g} {label} over {n_seeds} seed(s), the incumbent {i:g}")
    c_delay, i_delay = cand.mean["mean_delay_s"], inc.mean["mean_delay_s"]
    if c_delay is None or i_delay is None:
        raise GateInputError("no vehicle of the demand departs within the horizon: there is no "
                             "delay to compare (check the demand file and --seconds)")
    allowed = tol.allowed_s(i_delay)
    worse = c_delay - i_delay
    if worse > allowed:
        reasons.append(f"delay: mean delay {c_delay:.2f} s/veh vs the incumbent's {i_delay:.2f} "
                       f"s/veh, {worse:+.2f} s ({100 * worse / i_delay:+.1f} %), more than the "
                       f"{allowed:.2f} s allowed by the tolerance {tol}" if i_delay > 0 else
                       f"delay: mean delay {c_delay:.2f} s/veh vs the incumbent's {i_delay:.2f} "
                       f"s/veh, more than the {allowed:.2f} s allowed by the tolerance {tol}")
    return reasons, allowed
