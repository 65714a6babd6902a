"""Rolling-horizon planning: estimated demand in, guard-checked timing plans out.

For each intersection: the critical stream of every phase (the approach lane with the highest
flow ratio, a lane shared by several phases counted in equal parts), the lost time from the
driver's clearance intervals, then :func:`optimizer.solver.optimise_intersection`. The plan's
actuation bounds let the edge extend a phase up to ``max_green_factor`` times its planned
green (within the configured maximum). Every plan is checked with ``check_plan``; a failing
plan is never used (the plan in force stays) and is counted in :attr:`Planner.rejected`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from edge_agent.guard import check_plan
from edge_agent.plan import PhaseTiming, PlanSource, TimingPlan
from optimizer.config import AdaptiveConfig
from optimizer.estimation import DemandEstimator
from optimizer.solver import optimise_intersection

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
        coordination of each coordinated intersection (none yet: see the config)."""
        flows, sats = estimator.flows(), estimator.saturation()
        out: dict[str, TimingPlan] = {}
        for tls, x in self.imported.intersections.items():
            phases = list(x.phases)
            q, s, lanes = self._critical(tls, phases, flows, sats)
            lost = sum(sum(self.clearance[tls][p.number]) for p in phases)
            p = self.config.planning
            cycle_max = max(min(x.cycle_max, p.cycle_max_s),
                            lost + sum(ph.min_green for ph in phases))
            try:
                sol = optimise_intersection(q, s, lost, [ph.min_green for ph in phases],
                                            [ph.max_green for ph in phases], x.cycle_min,
                                            cycle_max, step=p.cycle_step_s,
                                            max_degree=p.max_degree)
            except ValueError:
                self.rejected += 1
                continue
            self.last_solution[tls] = sol
            y = np.asarray(q) / np.asarray(s)
            parts = [f"phase {ph.number} {g:.0f} s (lane {lane or '-'}: q {qq:.0f} veh/h, "
                     f"s {ss:.0f} veh/h, y {yy:.2f})"
                     for ph, g, qq, ss, yy, lane in zip(phases, sol.greens, q, s, y, lanes)]
            why = (f"t={now:.0f} s: cycle {sol.cycle:.0f} s minimises Webster delay "
                   f"({sol.delay_s:.1f} s/veh predicted; Webster's C0 {sol.webster_cycle:.0f} s) "
                   f"for Y {float(np.sum(y)):.2f}, lost time {lost:.0f} s; " + "; ".join(parts))
            plan = self._plan(tls, {ph.number: g for ph, g in zip(phases, sol.greens)}, why)
            if plan is not None:
                out[tls] = plan
        return out, {}

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
              offset: float = 0.0, reference: int | None = None) -> TimingPlan | None:
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
