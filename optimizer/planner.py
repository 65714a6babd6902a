"""Rolling-horizon planning: estimated demand in, guard-checked timing plans out.

For each intersection: the critical stream of every phase (the approach lane with the highest
flow ratio, a lane shared by several phases counted in equal parts), the lost time from the
driver's clearance intervals, then :func:`optimizer.solver.optimise_intersection`. The plan's
actuation bounds let the edge extend a phase up to ``max_green_factor`` times its planned
green (within the configured maximum). Every plan is checked with ``check_plan``; a failing
plan is never used (the plan in force stays) and is counted in :attr:`Planner.rejected`.

With ``coordination.enabled``, closely spaced signals on a shared arterial are grouped
(:mod:`optimizer.coordination`, links found once from the net): each group runs the longest
of its members' optimal cycles, every member's splits are re-optimised for that cycle, and
offsets come from travel times in both directions. A member busier than
``coordination.max_flow_ratio`` runs free. The edge keeps the offsets
(:class:`edge_agent.actuation.Coordination`: yield point, force-off, early return).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from edge_agent.actuation import Coordination
from edge_agent.guard import check_plan
from edge_agent.plan import PhaseTiming, PlanSource, TimingPlan
from optimizer import coordination as co
from optimizer.config import AdaptiveConfig
from optimizer.estimation import DemandEstimator
from optimizer.solver import IntersectionSolution, optimise_intersection

__all__ = ["Planner"]


class Planner:
    """Plans every intersection of an imported net from a :class:`DemandEstimator`."""

    def __init__(self, imported: Any, net: Any, phase_lanes: Mapping[str, Mapping[int, Any]],
                 lane_index: Mapping[str, int], config: AdaptiveConfig,
                 clearance: Mapping[str, Mapping[int, tuple[float, float]]]) -> None:
        self.imported, self.net, self.config = imported, net, config
        self.phase_lanes, self.lane_index, self.clearance = phase_lanes, lane_index, clearance
        self.rejected = 0
        self._plan_id = 1
        self.last_solution: dict[str, Any] = {}
        self.links: list[co.ChainLink] = []
        if net is not None and config.coordination.enabled:
            self.links = self._find_links(net)

    def _find_links(self, net: Any) -> list[co.ChainLink]:
        exits = {tls: {o.rsplit("_", 1)[0] for lanes in ph.values() for outs in lanes.values()
                       for o in outs} for tls, ph in self.phase_lanes.items()}
        approaches = {tls: {lane.rsplit("_", 1)[0] for lanes in ph.values() for lane in lanes}
                      for tls, ph in self.phase_lanes.items()}

        def upstream(edge: str) -> list[str]:
            e = net.getEdge(edge)
            return sorted(f.getID() for f in e.getIncoming()
                          if f.getFunction() != "internal"
                          and f.getFromNode().getID() != e.getToNode().getID())

        return co.find_links(exits, approaches, upstream,
                             lambda e: net.getEdge(e).getLength(),
                             lambda e: net.getEdge(e).getSpeed(),
                             max_travel_s=self.config.coordination.max_travel_s)

    # --- plans ------------------------------------------------------------------------------
    def initial_plans(self) -> dict[str, TimingPlan]:
        """Before any measurement: the designer's splits, else equal nominal demand."""
        out = {}
        for tls, x in self.imported.intersections.items():
            greens = None
            try:
                designer = self.imported.designer_plan(tls)
                greens = {t.phase: t.green for t in designer.timings.values()}
            except ValueError:
                pass
            if greens is None or any(greens.get(p.number, 0) < p.min_green for p in x.phases):
                greens = {p.number: max(p.min_green, min(p.max_green, 20.0)) for p in x.phases}
            plan = self._plan(tls, greens, "designer's splits until demand is measured")
            if plan is None:  # the designer's timing breaks a bound: start from the minimums
                plan = self._plan(tls, {p.number: p.min_green for p in x.phases},
                                  "minimum greens until demand is measured")
            assert plan is not None, f"{tls}: no plan passes the guard"
            out[tls] = plan
        return out

    def plan(self, now: float, estimator: DemandEstimator,
             current: Mapping[str, TimingPlan]) -> tuple[dict[str, TimingPlan], dict[str, Any]]:
        """New plans for every intersection (those that fail keep ``current``) and the
        coordination of each coordinated intersection (empty unless
        ``coordination.enabled``)."""
        flows, sats = estimator.flows(), estimator.saturation()
        out: dict[str, TimingPlan] = {}
        inputs: dict[str, tuple] = {}
        for tls, x in self.imported.intersections.items():
            phases = list(x.phases)
            q, s, lanes = self._critical(tls, phases, flows, sats)
            lost = sum(sum(self.clearance[tls][p.number]) for p in phases)
            sol = self._solve(tls, q, s, lost)
            if sol is None:
                continue
            self.last_solution[tls] = sol
            inputs[tls] = (q, s, lanes, lost)
            plan = self._plan(tls, {ph.number: g for ph, g in zip(phases, sol.greens)},
                              self._why(now, tls, sol, q, s, lanes, lost))
            if plan is not None:
                out[tls] = plan
        coordination: dict[str, Coordination] = {}
        if self.links:
            coordination = self._coordinate(now, flows, inputs, out)
        return out, coordination

    def _solve(self, tls: str, q: list[float], s: list[float], lost: float,
               cycle: float | None = None) -> IntersectionSolution | None:
        x = self.imported.intersections[tls]
        phases, p = list(x.phases), self.config.planning
        cycle_max = max(min(x.cycle_max, p.cycle_max_s), lost + sum(ph.min_green for ph in phases))
        low, high = (x.cycle_min, cycle_max) if cycle is None else (cycle, cycle)
        try:
            return optimise_intersection(q, s, lost, [ph.min_green for ph in phases],
                                         [ph.max_green for ph in phases], low, high,
                                         step=p.cycle_step_s, max_degree=p.max_degree)
        except ValueError:
            self.rejected += 1
            return None

    def _why(self, now: float, tls: str, sol: IntersectionSolution, q: list[float],
             s: list[float], lanes: list[str | None], lost: float) -> str:
        phases = self.imported.intersections[tls].phases
        y = np.asarray(q) / np.asarray(s)
        parts = [f"phase {ph.number} {g:.0f} s (lane {lane or '-'}: q {qq:.0f} veh/h, "
                 f"s {ss:.0f} veh/h, y {yy:.2f})"
                 for ph, g, qq, ss, yy, lane in zip(phases, sol.greens, q, s, y, lanes)]
        return (f"t={now:.0f} s: cycle {sol.cycle:.0f} s minimises Webster delay "
                f"({sol.delay_s:.1f} s/veh predicted; Webster's C0 {sol.webster_cycle:.0f} s) "
                f"for Y {float(np.sum(y)):.2f}, lost time {lost:.0f} s; " + "; ".join(parts))

    # --- coordination -----------------------------------------------------------------------
    def _coordinate(self, now: float, flows: np.ndarray, inputs: Mapping[str, tuple],
                    out: dict[str, TimingPlan]) -> dict[str, Coordination]:
        c = self.config.coordination
        lane_flow = {}  # (tls, approach edge) -> {phase: veh/h}

        def approach_flow(tls: str, edge: str) -> dict[int, float]:
            key = (tls, edge)
            if key not in lane_flow:
                per: dict[int, float] = {}
                for n, lanes in self.phase_lanes[tls].items():
                    for lane in lanes:
                        if lane.rsplit("_", 1)[0] == edge:
                            f = flows[self.lane_index[lane]]
                            per[n] = per.get(n, 0.0) + (float(f) if np.isfinite(f) else 0.0)
                lane_flow[key] = per
            return lane_flow[key]

        def feeds(tls: str, edge: str) -> set[int]:
            return {n for n, lanes in self.phase_lanes[tls].items()
                    if any(o.rsplit("_", 1)[0] == edge for outs in lanes.values() for o in outs)}

        busy = {tls for tls, (q, s, _, _) in inputs.items()
                if float(np.sum(np.asarray(q) / np.asarray(s))) > c.max_flow_ratio}
        links = [lk for lk in self.links if lk.up in inputs and lk.down in inputs
                 and lk.up not in busy and lk.down not in busy]
        phase, kept = co.choose_phases(links, approach_flow, feeds)
        members = sorted({lk.up for lk in kept} | {lk.down for lk in kept})
        result: dict[str, Coordination] = {}
        for group in co.groups(members, [(lk.up, lk.down) for lk in kept]):
            if len(group) < 2:
                continue
            cycle = float(np.ceil(max(self.last_solution[t].cycle for t in group)))
            sols = {t: self._solve(t, *inputs[t][:2], inputs[t][3], cycle) for t in group}
            if any(sol is None for sol in sols.values()):
                continue
            green = {t: self._green(t, sols[t], phase[t]) for t in group}
            pairs: dict[tuple[str, str], list] = {}
            for lk in kept:
                if lk.up not in sols or lk.down not in sols:
                    continue
                w = approach_flow(lk.down, lk.approach).get(phase[lk.down], 0.0)
                a, b = sorted((lk.up, lk.down))
                entry = pairs.setdefault((a, b), [None, 0.0, None, 0.0])
                if lk.up == a:
                    entry[0], entry[1] = lk.travel_s, entry[1] + w
                else:
                    entry[2], entry[3] = lk.travel_s, entry[3] + w
            pairwise = {}
            for (a, b), (t_ab, w_ab, t_ba, w_ba) in pairs.items():
                theta = co.two_way_offset(cycle, t_ab if t_ab is not None else t_ba, green[a],
                                          green[b], w_ab, t_ba, w_ba)
                pairwise[(a, b)] = (theta, w_ab + w_ba)
            weight = {t: sum(w for (a, b), (_, w) in pairwise.items() if t in (a, b))
                      for t in group}
            offsets = co.group_offsets(group, pairwise, weight, cycle)
            text = co.describe(group, cycle, offsets, phase)
            for t in group:
                x = self.imported.intersections[t]
                sol = sols[t]
                why = (self._why(now, t, sol, *inputs[t]) + "; " + text)
                plan = self._plan(t, {ph.number: g for ph, g in zip(x.phases, sol.greens)},
                                  why, offset=offsets[t], reference=phase[t], cycle=cycle)
                if plan is None:
                    continue
                out[t] = plan
                result[t] = Coordination(cycle=plan.cycle, offset=plan.offset, phase=phase[t],
                                         yield_s=c.hold_fraction * green[t])
        return result

    def _green(self, tls: str, sol: IntersectionSolution, phase: int) -> float:
        numbers = [ph.number for ph in self.imported.intersections[tls].phases]
        return float(sol.greens[numbers.index(phase)])

    def _critical(self, tls: str, phases: list, flows: np.ndarray,
                  sats: np.ndarray) -> tuple[list[float], list[float], list[str | None]]:
        """Per phase the critical lane's (flow, saturation flow, lane id); missing detectors
        fall back to the intersection's median lane flow."""
        lanes_of = self.phase_lanes[tls]
        serving: dict[str, int] = {}
        for ph in phases:
            for lane in lanes_of[ph.number]:
                serving[lane] = serving.get(lane, 0) + 1
        known = [flows[self.lane_index[lane]] for lane in serving
                 if np.isfinite(flows[self.lane_index[lane]])]
        fallback = float(np.median(known)) if known else 0.0
        q, s, which = [], [], []
        for ph in phases:
            best = (0.0, 0.0, self.config.estimation.prior_saturation_vph, None)
            for lane in lanes_of[ph.number]:
                i = self.lane_index[lane]
                flow = flows[i] if np.isfinite(flows[i]) else fallback
                flow /= serving[lane]
                ratio = flow / sats[i]
                if ratio > best[0]:
                    best = (ratio, flow, float(sats[i]), lane)
            q.append(best[1])
            s.append(best[2])
            which.append(best[3])
        return q, s, which

    def _plan(self, tls: str, greens: Mapping[int, float], explanation: str,
              offset: float = 0.0, reference: int | None = None,
              cycle: float | None = None) -> TimingPlan | None:
        """A single-ring plan in tenths of a second, or None when the guard rejects it."""
        x = self.imported.intersections[tls]
        factor = self.config.planning.max_green_factor
        timings = []
        for ph in x.phases:
            yellow, red = self.clearance[tls][ph.number]
            green = round(min(max(greens[ph.number], ph.min_green), ph.max_green), 1)
            split = round(green + yellow + red, 1)
            green = split - yellow - red
            if green < ph.min_green - 1e-9:
                split = round(split + 0.1, 1)
            timings.append(PhaseTiming(
                phase=ph.number, split=split, yellow=yellow, red_clearance=red,
                min_green=ph.min_green,
                max_green=min(ph.max_green, max(ph.min_green, factor * green)),
                walk=ph.walk, ped_clearance=ph.ped_clearance))
        if cycle is not None:  # a coordinated group's members must share the cycle exactly
            k = max(range(len(timings)), key=lambda i: timings[i].split)
            extra = round(cycle - sum(t.split for t in timings), 1)
            t = timings[k]
            timings[k] = PhaseTiming(
                phase=t.phase, split=round(t.split + extra, 1), yellow=t.yellow,
                red_clearance=t.red_clearance, min_green=t.min_green, max_green=t.max_green,
                walk=t.walk, ped_clearance=t.ped_clearance)
        cycle = round(sum(t.split for t in timings), 1)
        self._plan_id += 1
        plan = TimingPlan(plan_id=self._plan_id, intersection_id=x.id, cycle=cycle,
                          offset=offset % cycle,
                          offset_reference=reference or timings[0].phase,
                          rings=(tuple(timings),), activation=0.0, source=PlanSource.ADAPTIVE,
                          author="optimizer.adaptive", explanation=explanation[:4000])
        if check_plan(plan, x):
            self.rejected += 1
            return None
        return plan
