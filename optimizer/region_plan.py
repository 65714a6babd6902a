"""Plans for the intersections of a site from the measurements their edges sent. Pure.

For each intersection, the measurements of the planning window (``Measurement`` messages, in
``interval_start`` order) feed a :class:`~optimizer.estimation.DemandEstimator` over the
intersection's vehicle lanes: departures are the lane counts, the standing queue the lane's
``queue_veh`` (0 where the edge has no queue detector), so the arrival flow is what left plus
what joined the queue, smoothed with the configured half-life. A lane reported unhealthy, or
not reported, keeps no estimate and borrows the median flow of the intersection's other
lanes. Saturation flows are the configured prior per lane: one-minute aggregates carry no
discharge headways.

A phase's critical flow ratio ``y`` is its busiest lane's flow over saturation (a lane shared
by several phases counted in equal parts). Ring-and-barrier structure is kept exactly: each
barrier group is one stage whose flow ratio is the largest of its rings' sums, whose lost time
is the ring with the most demand (the critical path), whose bounds are tightened so that every
other ring can fill the group; :func:`optimizer.solver.optimise_intersection` picks the cycle
and the critical phases' greens minimising Webster delay, which fixes each group's length, and
every ring shares its group's green among its phases in proportion to ``y`` within the
phases' bounds (a pedestrian phase's green also covers walk +
clearance - yellow). Times are in tenths of a second, shares rounded by largest remainder, so
rings meet at every barrier exactly.

Corridors of the site: members of a corridor run the longest of their cycles (their groups
re-solved for it) and offsets from the corridor's link travel times
(:func:`optimizer.solver.offsets`, a green wave in the heavier direction of each link). The
coordinated phase is the last phase of ring 1's first barrier group (NEMA's 2).

Every plan is checked with :func:`edge_agent.guard.check_plan`; one that fails is left out
(the plan in force stays) and counted.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from edge_agent.config import SiteConfig
from edge_agent.guard import check_plan
from edge_agent.messages import Measurement
from edge_agent.model import Intersection, Turn
from edge_agent.plan import PhaseTiming, PlanSource, TimingPlan
from optimizer.estimation import DemandEstimator
from optimizer.solver import IntersectionSolution, Link, offsets, optimise_intersection
from simulation.webster import allocate_green

__all__ = ["IntersectionResult", "RegionPlanner", "vehicle_lanes"]

AUTHOR = "optimizer.central"


@dataclass(frozen=True)
class IntersectionResult:
    """The outcome for one intersection: a guard-checked plan (or None and why) and KPIs."""

    intersection_id: str
    plan: TimingPlan | None
    reason: str
    kpis: dict[str, float] = field(default_factory=dict)
    measurements: int = 0


def vehicle_lanes(x: Intersection) -> dict[int, list[str]]:
    """Per phase, the lanes of its vehicle movements (a movement without lanes: its
    approach's)."""
    approaches = x.approach_by_id
    out: dict[int, list[str]] = {}
    for phase in x.phases:
        lanes: list[str] = []
        for m in (x.movement_by_id[mid] for mid in phase.movements):
            if m.turn == Turn.PEDESTRIAN:
                continue
            for lane in m.lanes or approaches[m.approach].lanes:
                if lane not in lanes:
                    lanes.append(lane)
        out[phase.number] = lanes
    return out


class _Model:
    """What never changes for one intersection: lanes, bounds, ring structure."""

    def __init__(self, x: Intersection) -> None:
        self.x = x
        self.phase_lanes = vehicle_lanes(x)
        self.lanes = sorted({lane for lanes in self.phase_lanes.values() for lane in lanes})
        self.serving = {lane: sum(lane in ls for ls in self.phase_lanes.values())
                        for lane in self.lanes}
        phases = x.phase_by_number
        self.lost = {n: p.yellow + p.red_clearance for n, p in phases.items()}
        # The green must also hold walk + pedestrian clearance up to the end of the yellow.
        self.min_green = {n: _ceil1(max(p.min_green, p.walk + p.ped_clearance - p.yellow
                                        if p.has_crossing else 0.0)) for n, p in phases.items()}
        self.max_green = {n: _floor1(p.max_green) for n, p in phases.items()}
        self.groups = len(x.rings[0])
        ring0 = x.rings[0][0]
        self.reference = ring0[-1]


def _ceil1(v: float) -> float:
    return math.ceil(round(v * 10, 6)) / 10


def _floor1(v: float) -> float:
    return math.floor(round(v * 10, 6)) / 10


def _share(total: float, weights: Sequence[float], low: Sequence[float],
           high: Sequence[float]) -> list[float]:
    """``total`` (tenths) shared within bounds, rounded to tenths by largest remainder."""
    raw = allocate_green(total, list(weights), list(low), list(high))
    units = [math.floor(round(g * 10, 6)) for g in raw]
    left = int(round(total * 10)) - sum(units)
    order = sorted(range(len(raw)), key=lambda i: raw[i] * 10 - units[i], reverse=True)
    for i in order[:max(left, 0)]:
        units[i] += 1
    return [u / 10 for u in units]


class RegionPlanner:
    """Plans for a site's intersections (see the module docstring)."""

    def __init__(self, site: SiteConfig, *, halflife_s: float = 300.0,
                 prior_saturation_vph: float = 1800.0, max_degree: float = 0.95,
                 cycle_step_s: float = 5.0, cycle_max_s: float = 150.0,
                 max_green_factor: float = 1.5) -> None:
        self.site = site
        self.models = {x.id: _Model(x) for x in site.intersections}
        self.halflife_s, self.prior_s = halflife_s, prior_saturation_vph
        self.max_degree, self.step, self.cycle_max_s = max_degree, cycle_step_s, cycle_max_s
        self.factor = max_green_factor
        self.rejected = 0

    # --- estimation -------------------------------------------------------------------------
    def flow_ratios(self, intersection_id: str, window: Sequence[Measurement]
                    ) -> tuple[dict[int, float], dict[str, float]] | None:
        """Per phase the critical flow ratio, and per lane the flow (veh/h); None if no lane
        was observed."""
        model = self.models[intersection_id]
        est = DemandEstimator(model.lanes, prior_saturation_vph=self.prior_s,
                              halflife_s=self.halflife_s)
        n = len(model.lanes)
        for m in window:
            dep, queue = np.full(n, np.nan), np.full(n, np.nan)
            for lane in m.lanes:
                i = est.index.get(lane.lane)
                if i is None or not lane.healthy:
                    continue
                dep[i] = lane.count
                queue[i] = lane.queue_veh if lane.queue_veh is not None else 0.0
            est.observe(m.interval_s, dep, queue, np.zeros(n, dtype=bool))
        flows, sats = est.flows(), est.saturation()
        known = [float(f) for f in flows if np.isfinite(f)]
        if not known:
            return None
        fallback = statistics.median(known)
        lane_flow = {lane: float(flows[i]) if np.isfinite(flows[i]) else fallback
                     for i, lane in enumerate(model.lanes)}
        ratios = {}
        for number, lanes in model.phase_lanes.items():
            ratios[number] = max((lane_flow[lane] / model.serving[lane] / float(sats[i])
                                  for i, lane in ((est.index[ln], ln) for ln in lanes)),
                                 default=0.0)
        return ratios, lane_flow

    # --- optimisation -----------------------------------------------------------------------
    def _critical(self, model: _Model, y: Mapping[int, float]) -> list | None:
        """The critical path: per barrier group the ring with the most demand, as
        (group, phase, lost time, min green, max green) rows; None when the rings' bounds
        cannot meet at a barrier. The critical phases' bounds are tightened so that every
        other ring can fill the group: the group must be as long as the longest minimum of
        any ring and no longer than the shortest maximum."""
        rows = []
        for g in range(model.groups):
            rings = [ring[g] for ring in model.x.rings]
            crit = max(rings, key=lambda ph: (sum(y[n] for n in ph),
                                              sum(model.lost[n] for n in ph)))
            lost = sum(model.lost[n] for n in crit)
            low = max(sum(model.min_green[n] + model.lost[n] for n in ph) for ph in rings)
            high = min(sum(model.max_green[n] + model.lost[n] for n in ph) for ph in rings)
            mins = {n: model.min_green[n] for n in crit}
            maxs = {n: model.max_green[n] for n in crit}
            deficit = round(low - lost - sum(mins.values()), 1)
            for n in sorted(crit, key=lambda n: -y[n]):
                add = max(0.0, min(deficit, maxs[n] - mins[n]))
                mins[n], deficit = round(mins[n] + add, 1), round(deficit - add, 1)
            excess = round(lost + sum(maxs.values()) - high, 1)
            for n in sorted(crit, key=lambda n: y[n]):
                cut = max(0.0, min(excess, maxs[n] - mins[n]))
                maxs[n], excess = round(maxs[n] - cut, 1), round(excess - cut, 1)
            if deficit > 1e-9 or excess > 1e-9:
                return None
            rows += [(g, n, model.lost[n], mins[n], maxs[n]) for n in crit]
        return rows

    def _solve(self, model: _Model, y: Mapping[int, float],
               cycle: float | None = None) -> tuple[IntersectionSolution, list] | None:
        crit = self._critical(model, y)
        if crit is None:
            return None
        sat = self.prior_s
        low = model.x.cycle_min if cycle is None else cycle
        high = min(model.x.cycle_max, max(self.cycle_max_s, model.x.cycle_min)) \
            if cycle is None else cycle
        try:
            sol = optimise_intersection([max(y[n], 1e-4) * sat for _, n, _, _, _ in crit],
                                        [sat] * len(crit), sum(r[2] for r in crit),
                                        [r[3] for r in crit], [r[4] for r in crit], low, high,
                                        step=self.step, max_degree=self.max_degree)
        except ValueError:
            return None
        return sol, crit

    def _plan(self, model: _Model, y: Mapping[int, float], sol: IntersectionSolution,
              crit: list, offset: float, now: float, ttl_s: float,
              explanation: str) -> TimingPlan | None:
        x = model.x
        lost = sum(r[2] for r in crit)
        try:
            greens = _share(round(sol.cycle - lost, 1), list(sol.greens), [r[3] for r in crit],
                            [r[4] for r in crit])
        except ValueError:
            self.rejected += 1
            return None
        lengths = [0.0] * model.groups
        solved = {}
        for (g, n, phase_lost, _, _), green in zip(crit, greens):
            lengths[g] = round(lengths[g] + green + phase_lost, 1)
            solved[n] = green
        cycle = round(sum(lengths), 1)
        phases = x.phase_by_number
        rings = []
        try:
            for ring in x.rings:
                timed = []
                for g, numbers in enumerate(ring):
                    available = round(lengths[g] - sum(model.lost[n] for n in numbers), 1)
                    if all(n in solved for n in numbers):  # the critical ring: as solved
                        greens = [solved[n] for n in numbers]
                    else:
                        greens = _share(available, [max(y[n], 1e-3) for n in numbers],
                                        [model.min_green[n] for n in numbers],
                                        [model.max_green[n] for n in numbers])
                    for n, green in zip(numbers, greens):
                        p = phases[n]
                        timed.append(PhaseTiming(
                            phase=n, split=round(green + model.lost[n], 1), yellow=p.yellow,
                            red_clearance=p.red_clearance, min_green=p.min_green,
                            max_green=round(min(p.max_green, max(p.min_green,
                                                                  self.factor * green)), 1),
                            walk=p.walk, ped_clearance=p.ped_clearance))
                rings.append(tuple(timed))
        except ValueError:
            self.rejected += 1
            return None
        plan = TimingPlan(plan_id=1, intersection_id=x.id, cycle=cycle,
                          offset=round(offset % cycle, 1) % cycle,
                          offset_reference=model.reference, rings=tuple(rings),
                          activation=now, expiry=now + ttl_s, source=PlanSource.ADAPTIVE,
                          author=AUTHOR, explanation=explanation[:4000])
        if check_plan(plan, x):
            self.rejected += 1
            return None
        return plan

    def plan(self, windows: Mapping[str, Sequence[Measurement]], now: float,
             ttl_s: float) -> dict[str, IntersectionResult]:
        """Plans for every intersection in ``windows`` (intersection -> its measurements)."""
        out: dict[str, IntersectionResult] = {}
        solved: dict[str, tuple] = {}
        for xid, window in windows.items():
            model = self.models[xid]
            estimate = self.flow_ratios(xid, window) if window else None
            if estimate is None:
                out[xid] = IntersectionResult(xid, None, "no healthy measurement in the window",
                                              measurements=len(window))
                continue
            y, lane_flow = estimate
            found = self._solve(model, y)
            if found is None:
                self.rejected += 1
                out[xid] = IntersectionResult(xid, None, "no cycle holds the minimum greens",
                                              _kpis(window, lane_flow, None),
                                              len(window))
                continue
            solved[xid] = (y, lane_flow, *found)
        cycles = {xid: s[2].cycle for xid, s in solved.items()}
        offsets_of: dict[str, tuple[float, str]] = {}
        for corridor in self.site.corridors:
            members = [m for m in corridor.intersections if m in solved]
            if len(members) < 2:
                continue
            cycle = float(math.ceil(max(cycles[m] for m in members)))
            resolved = {m: self._solve(self.models[m], solved[m][0], cycle) for m in members}
            members = [m for m in members if resolved[m] is not None]
            for m in members:
                solved[m] = (solved[m][0], solved[m][1], *resolved[m])
            weight = {m: sum(solved[m][0].values()) for m in members}
            links = [Link(lk.upstream, lk.downstream, lk.length_m / lk.speed_mps,
                          weight.get(lk.downstream, 0.0)) for lk in corridor.links
                     if lk.upstream in members and lk.downstream in members]
            for m, (value, parent) in offsets(members, links, cycle, weight).items():
                offsets_of[m] = (value, f"corridor {corridor.id}: common cycle {cycle:.0f} s, "
                                        f"offset {value:.1f} s"
                                        + (f" from {parent}" if parent else " (reference)"))
        for xid, (y, lane_flow, sol, crit) in solved.items():
            offset, coord = offsets_of.get(xid, (0.0, "isolated"))
            why = (f"t={now:.0f}: cycle {sol.cycle:.0f} s minimises Webster delay "
                   f"({sol.delay_s:.1f} s/veh predicted) for {len(windows[xid])} measurements; "
                   + ", ".join(f"phase {n} y {v:.2f}" for n, v in sorted(y.items()))
                   + f"; {coord}")
            plan = self._plan(self.models[xid], y, sol, crit, offset, now, ttl_s, why)
            kpis = _kpis(windows[xid], lane_flow, sol)
            out[xid] = IntersectionResult(xid, plan, why if plan else "plan fails the guard",
                                          kpis, len(windows[xid]))
        return out


def _kpis(window: Iterable[Measurement], lane_flow: Mapping[str, float],
          sol: IntersectionSolution | None) -> dict[str, float]:
    """KPIs of the window: measured throughput, occupancy, queue; predicted delay."""
    window = list(window)
    last = window[-1]
    counted = sum(lane.count for lane in last.lanes)
    queues = [lane.queue_veh for m in window for lane in m.lanes if lane.queue_veh is not None]
    out = {"throughput_vph": counted * 3600.0 / last.interval_s,
           "arrival_vph": float(sum(lane_flow.values())),
           "occupancy_mean": float(statistics.fmean(lane.occupancy for lane in last.lanes)),
           "max_queue_veh": float(max(queues, default=0.0)),
           "failed_detectors": float(len(last.failed_detectors))}
    if sol is not None:
        out["predicted_delay_s"] = float(sol.delay_s) if math.isfinite(sol.delay_s) else 0.0
        out["cycle_s"] = float(sol.cycle)
    return out
