"""The adaptive controller in the SUMO harness: central plans plus local actuation.

Registered as ``adaptive`` under the ``tsc_edge.controllers`` entry point; the harness calls
:func:`build` with a running session, the imported net and one guarded
:class:`~simulation.signal_driver.SignalDriver` per traffic light. Every step it

1. reads the detector zones (:mod:`optimizer.detectors`: positions and speeds inside the
   zones, nothing else) and feeds the demand estimator (:mod:`optimizer.estimation`);
2. every ``planning.replan_s`` re-plans every intersection (:mod:`optimizer.planner`): cycle
   and splits minimising delay, with ``coordination.enabled`` common cycles and offsets for
   groups of closely spaced signals (:mod:`optimizer.coordination`), each plan checked with
   ``check_plan`` and kept with its explanation;
3. lets each intersection's :class:`~edge_agent.actuation.Actuator` decide inside the bounds of
   its plan, and carries switches out through the driver (which asks the guard again).

A lane counts in full toward a phase that serves every movement leaving it. Toward a phase
that serves only some of them it counts not at all when another phase serves them all (a left
running permissive with the through: the protected-left phase is not called by the shared
lane), else ``detection.shared_lane_weight``: detectors cannot tell whether the head of a
shared through/left lane turns, so a protected-turn phase is not called (nor kept green by a
gap) on the strength of through traffic it cannot serve.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

from edge_agent.actuation import Actuator, Bounds, PhaseMeasure
from edge_agent.lane_calls import lane_calls, lane_phases
from edge_agent.model import Turn
from optimizer.config import AdaptiveConfig, load_adaptive_config
from optimizer.detectors import Zones
from optimizer.estimation import DemandEstimator
from optimizer.planner import Planner

__all__ = ["AdaptiveController", "build"]

STARTUP_S = 4.0  # the first seconds of green carry the start-up lost time: not saturation


def build(session: Any, imported: Any, drivers: dict[str, Any], *, config: str | None = None,
          overrides: dict[str, dict[str, Any]] | None = None) -> AdaptiveController:
    """Entry point ``tsc_edge.controllers: adaptive`` (parameters from the config file)."""
    return AdaptiveController(session, imported, drivers,
                              load_adaptive_config(config, overrides))


class AdaptiveController:
    """Central plans and local actuation for every traffic light of a session."""

    def __init__(self, session: Any, imported: Any, drivers: dict[str, Any],
                 config: AdaptiveConfig) -> None:
        import sumolib  # the simulation extra provides it

        self.conn, self.imported, self.drivers, self.config = session.conn, imported, drivers, config
        net = sumolib.net.readNet(str(session.scenario.net_file))
        # phase -> {approach lane: exit lanes}, per traffic light
        self.phase_lanes: dict[str, dict[int, dict[str, set[str]]]] = {}
        self.lane_weight: dict[str, dict[int, dict[str, float]]] = {}
        for tls, x in imported.intersections.items():
            links = imported.links[tls]
            per_phase: dict[int, dict[str, set[str]]] = {}
            for p in x.phases:
                lanes: dict[str, set[str]] = {}
                for m in p.movements:
                    if x.movement_by_id[m].turn == Turn.PEDESTRIAN:
                        continue
                    lanes.setdefault(links[m].from_lane, set()).add(links[m].to_lane)
                per_phase[p.number] = lanes
            self.phase_lanes[tls] = per_phase
            # A lane counts in full toward a phase that serves every movement leaving it, not
            # at all toward one that serves only some when another serves them all, else
            # shared_lane_weight: the edge's rule (edge_agent.lane_calls) on the model's
            # lanes, named back to SUMO's.
            sumo = imported.lanes
            self.lane_weight[tls] = {
                n: {sumo.get(lane, lane): w for lane, w in weights.items()}
                for n, weights in lane_calls(lane_phases(x),
                                             config.detection.shared_lane_weight).items()}
        self.phase_exits = {tls: {n: sorted({o for outs in lanes.values() for o in outs})
                                  for n, lanes in ph.items()}
                            for tls, ph in self.phase_lanes.items()}
        approach = sorted({lane for ph in self.phase_lanes.values() for lanes in ph.values()
                           for lane in lanes})
        exits = sorted({o for ph in self.phase_lanes.values() for lanes in ph.values()
                        for outs in lanes.values() for o in outs})
        d = config.detection
        self.zones = Zones(self.conn, net, approach, exits, reach_m=d.reach_m,
                           exit_zone_m=d.exit_zone_m, stop_zone_m=d.stop_zone_m,
                           halting_speed_mps=d.halting_speed_mps, accel_mps2=d.accel_mps2,
                           downstream_m=d.downstream_m if params_use_pressure(config) else 0.0)
        e = config.estimation
        self.estimator = DemandEstimator(approach, prior_saturation_vph=e.prior_saturation_vph,
                                         prior_weight_veh=e.prior_weight_veh,
                                         halflife_s=e.halflife_s)
        self.lane_index = self.estimator.index
        params = config.actuation_params
        self.actuators = {tls: Actuator(x, tuple(drivers[tls].sequence), params)
                          for tls, x in imported.intersections.items()}
        self.clearance = {tls: {n: sum(v) for n, v in drv.clearance.items()}
                          for tls, drv in drivers.items()}
        self.planner = Planner(imported, net, self.phase_lanes, self.lane_index, config,
                               {tls: drv.clearance for tls, drv in drivers.items()})
        self.plans = self.planner.initial_plans()
        self.bounds = {tls: _bounds(plan) for tls, plan in self.plans.items()}
        self.coordination: dict[str, Any] = {}
        self._since_plan = 0.0
        self._prev_queue = np.zeros(len(approach))
        self.log: collections.deque[tuple[float, str, str]] = collections.deque(maxlen=2000)
        self.counts = collections.Counter()

    # --- the loop ---------------------------------------------------------------------------
    def step(self, time: float) -> None:
        for driver in self.drivers.values():
            driver.advance()
        self.zones.read(time)
        dep, queue = self.zones.arrays()
        self.estimator.observe(1.0, dep, queue, self._discharging())
        self._prev_queue = queue
        self._since_plan += 1.0
        if self._since_plan >= self.config.planning.replan_s:
            self._since_plan = 0.0
            self._replan(time)
        for tls, driver in self.drivers.items():
            if not driver.in_green:
                continue
            decision = self.actuators[tls].decide(
                time, driver.phase, driver.green_elapsed, self._measures(tls), self.bounds[tls],
                self.clearance[tls], self.coordination.get(tls))
            self.counts[decision.action] += 1
            if decision.action == "switch":
                driver.switch_to(decision.target)
                self.log.append((time, tls, decision.reason))

    def _discharging(self) -> np.ndarray:
        """Lanes now discharging a standing queue into a free exit at saturation."""
        mask = np.zeros(len(self._prev_queue), dtype=bool)
        threshold = self.config.estimation.min_discharge_queue_veh
        for tls, driver in self.drivers.items():
            if not driver.in_green or driver.green_elapsed < STARTUP_S:
                continue
            for lane, outs in self.phase_lanes[tls][driver.phase].items():
                i = self.lane_index[lane]
                if self._prev_queue[i] >= threshold and \
                        not all(self.zones.blocked[o] for o in outs):
                    mask[i] = True
        return mask

    def _measures(self, tls: str) -> dict[int, PhaseMeasure]:
        out = {}
        driver = self.drivers[tls]
        fresh = driver.green_elapsed < STARTUP_S
        recent = self.config.actuation.passage_s + 1.0
        readings, blocked = self.zones.readings, self.zones.blocked
        for n, lanes in self.phase_lanes[tls].items():
            if not lanes:
                out[n] = PhaseMeasure(detected=False)
                continue
            queue = moving = discharging = 0.0
            gap = float("inf")
            jammed = demand = False
            weights = self.lane_weight[tls][n]
            for lane, outs in lanes.items():
                r = readings[lane]
                if r.queue == 0 and r.moving == 0:
                    continue
                demand = True
                if all(blocked[o] for o in outs):
                    jammed = True
                    continue
                w = weights[lane]
                queue += w * r.queue
                if n == driver.phase and (fresh or r.since_departure_s <= recent):
                    discharging += r.queue
                moving += w * r.moving
                if w >= 1.0:  # an approaching vehicle on a shared lane may not be served
                    gap = min(gap, r.gap_s)
            down = sum(self.zones.downstream[o] for o in self.phase_exits[tls][n]) \
                if self.zones.far else 0.0
            out[n] = PhaseMeasure(queue=queue, discharging=discharging, approaching=moving,
                                  gap_s=gap, blocked=demand and jammed and queue + moving == 0,
                                  downstream=down)
        return out

    def _replan(self, time: float) -> None:
        plans, coordination = self.planner.plan(time, self.estimator, self.plans)
        self.plans.update(plans)
        for tls, plan in plans.items():
            self.bounds[tls] = _bounds(plan)
        self.coordination = coordination

    def explanations(self) -> dict[str, str]:
        """The explanation kept with each intersection's plan in force."""
        return {tls: plan.explanation for tls, plan in self.plans.items()}


def params_use_pressure(config: AdaptiveConfig) -> bool:
    """Exit zones are read only when the ranking uses them."""
    return config.actuation.pressure_weight > 0


def _bounds(plan: Any) -> dict[int, Bounds]:
    return {t.phase: Bounds(t.min_green, t.max_green) for t in plan.timings.values()}
