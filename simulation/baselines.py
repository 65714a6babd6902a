"""Baseline controllers, reproduced as published so that our ratios come from one run.

* ``actuated``: SUMO's own gap-based actuated control on the net's phase sequence, min/max
  green 5/50 s (RESCO's setting); SUMO places its detectors itself.
* ``max-pressure`` (Varaiya 2013, as in RESCO): every 5 s, once the current green has run its
  5 s minimum, serve the phase whose green links carry the largest pressure: vehicles within
  200 m upstream of the stop line less vehicles within 200 m downstream.
* ``webster``: fixed time from demand; every 15 min the cycle and splits are recomputed by
  Webster's method from the departures counted on each phase's lanes, then checked by the guard.
"""

from __future__ import annotations

from typing import Any

import msgspec.structs

from edge_agent.guard import check_plan
from edge_agent.model import Turn
from edge_agent.plan import PhaseTiming, TimingPlan
from simulation.net_import import ImportedNet
from simulation.signal_driver import SignalDriver
from simulation.sumo_program import split_program
from simulation.webster import SATURATION_VPH_PER_LANE, allocate_green, webster_cycle

__all__ = ["MaxPressure", "Webster", "install_actuated"]

TRAFFICLIGHT_TYPE_ACTUATED = 3  # libsumo/traci constant for SUMO's actuated tlLogic


def install_actuated(session: Any, imported: ImportedNet, *, min_green: float = 5.0,
                     max_green: float = 50.0) -> None:
    """Switch every traffic light to SUMO's actuated control on its own phase sequence.

    SUMO then runs the lights itself, so there is no per-step controller (returns None).
    """
    tl = session.conn.trafficlight
    for tls_id in imported.intersections:
        logic = tl.getAllProgramLogics(tls_id)[0]
        phases = []
        for p in logic.phases:
            green = any(c in "Gg" for c in p.state) and "y" not in p.state
            low, high = (min_green, max_green) if green else (p.duration, p.duration)
            phases.append(tl.Phase(low if green else p.duration, p.state, low, high))
        tl.setProgramLogic(tls_id, tl.Logic("tsc-actuated", TRAFFICLIGHT_TYPE_ACTUATED, 0,
                                            phases))
    return None


class _Lanes:
    """Per traffic light and phase: the (incoming, outgoing) SUMO lanes of its green links."""

    def __init__(self, imported: ImportedNet) -> None:
        self.by_phase: dict[str, dict[int, list[tuple[str, str]]]] = {}
        for tls_id, x in imported.intersections.items():
            links = imported.links[tls_id]
            self.by_phase[tls_id] = {
                p.number: sorted({(links[m].from_lane, links[m].to_lane) for m in p.movements
                                  if x.movement_by_id[m].turn != Turn.PEDESTRIAN})
                for p in x.phases}


class MaxPressure:
    """Varaiya's max-pressure with RESCO's settings (5 s decisions and min green, 200 m)."""

    def __init__(self, session: Any, imported: ImportedNet, drivers: dict[str, SignalDriver], *,
                 period: float = 5.0, min_green: float = 5.0, reach_m: float = 200.0) -> None:
        import sumolib  # the simulation extra provides it

        self.conn, self.drivers = session.conn, drivers
        self.period, self.min_green, self.reach = period, min_green, reach_m
        self.lanes = _Lanes(imported).by_phase
        net = sumolib.net.readNet(str(session.scenario.net_file))
        # The 200 m reach runs across lane boundaries: a short controlled lane (a stub before
        # the stop line) would otherwise hide the queue on the lanes feeding it.
        self.upstream = {i: _reach(net, i, reach_m, upstream=True)
                         for phases in self.lanes.values() for pairs in phases.values()
                         for i, _ in pairs}
        self.downstream = {o: _reach(net, o, reach_m, upstream=False)
                           for phases in self.lanes.values() for pairs in phases.values()
                           for _, o in pairs}
        self._since_decision = 0.0

    def _count(self, segments: list[tuple[str, float, float, float]]) -> int:
        """Vehicles on the (lane, from, to, length) stretches of a reach."""
        total = 0
        for lane, start, end, length in segments:
            if start <= 0.0 and end >= length:
                total += self.conn.lane.getLastStepVehicleNumber(lane)
            else:
                position = self.conn.vehicle.getLanePosition
                total += sum(1 for v in self.conn.lane.getLastStepVehicleIDs(lane)
                             if start <= position(v) <= end)
        return total

    def step(self, time: float) -> None:
        for driver in self.drivers.values():
            driver.advance()
        self._since_decision += 1.0
        if self._since_decision < self.period:
            return
        self._since_decision = 0.0
        counts: dict[tuple[str, bool], int] = {}

        def count(lane: str, upstream: bool) -> int:
            key = (lane, upstream)
            if key not in counts:
                counts[key] = self._count(self.upstream[lane] if upstream
                                          else self.downstream[lane])
            return counts[key]

        for tls_id, driver in self.drivers.items():
            if not driver.in_green or driver.green_elapsed < max(self.min_green,
                                                                 driver.min_green()):
                continue
            pressure = {n: sum(count(i, True) - count(o, False) for i, o in pairs)
                        for n, pairs in self.lanes[tls_id].items()}
            best = max(pressure, key=lambda n: (pressure[n], n == driver.phase))
            if best != driver.phase and pressure[best] > pressure[driver.phase]:
                driver.switch_to(best)


def _reach(net: Any, lane_id: str, reach: float, *, upstream: bool,
           depth: int = 6) -> list[tuple[str, float, float, float]]:
    """(lane, from, to, length) stretches within ``reach`` metres of a lane's stop line
    (upstream, following the lanes that feed it) or of its start (downstream, following the
    lanes it feeds). Internal junction lanes are skipped: vehicles there are counted nowhere.
    """
    out: list[tuple[str, float, float, float]] = []
    frontier = [(net.getLane(lane_id), reach)]
    seen = {lane_id}
    for _ in range(depth):
        nxt = []
        for lane, left in frontier:
            length = lane.getLength()
            out.append((lane.getID(), max(0.0, length - left), length, length) if upstream
                       else (lane.getID(), 0.0, min(left, length), length))
            if left > length:
                more = lane.getIncoming() if upstream else lane.getOutgoingLanes()
                for other in more:
                    if other.getID() not in seen and not other.getID().startswith(":"):
                        seen.add(other.getID())
                        nxt.append((other, left - length))
        frontier = nxt
        if not frontier:
            break
    return out


class Webster:
    """Fixed-time control re-timed by Webster's method from counted departures."""

    def __init__(self, session: Any, imported: ImportedNet, drivers: dict[str, SignalDriver], *,
                 update_s: float = 900.0) -> None:
        self.conn, self.imported, self.drivers = session.conn, imported, drivers
        self.update_s = update_s
        lanes = _Lanes(imported).by_phase
        self.phase_lanes = {t: {n: sorted({i for i, _ in pairs}) for n, pairs in ph.items()}
                            for t, ph in lanes.items()}
        self.greens: dict[str, dict[int, float]] = {}
        for tls_id in drivers:  # start on the designer's greens
            groups = split_program(imported.programs[tls_id], imported.phase_states[tls_id])
            self.greens[tls_id] = {g.phase: g.green for g in groups}
        self.seen: dict[str, set[str]] = {}
        self.departed: dict[str, int] = {}
        self._elapsed = 0.0
        self.rejected = 0

    def _count_departures(self) -> None:
        get = self.conn.lane.getLastStepVehicleIDs
        for lanes in self.phase_lanes.values():
            for phase_lanes in lanes.values():
                for lane in phase_lanes:
                    now = set(get(lane))
                    before = self.seen.get(lane, set())
                    self.departed[lane] = self.departed.get(lane, 0) + len(before - now)
                    self.seen[lane] = now

    def _retime(self) -> None:
        hours = self._elapsed / 3600.0
        for tls_id, x in self.imported.intersections.items():
            phases = list(x.phases)
            clearance = self.drivers[tls_id].clearance
            lost = sum(sum(clearance[p.number]) for p in phases)
            ratios = [max((self.departed.get(lane, 0) / hours / SATURATION_VPH_PER_LANE
                           for lane in self.phase_lanes[tls_id][p.number]), default=0.0)
                      for p in phases]
            cycle = webster_cycle(lost, ratios, x.cycle_min, x.cycle_max)
            try:
                greens = allocate_green(cycle - lost, ratios, [p.min_green for p in phases],
                                        [p.max_green for p in phases])
            except ValueError:
                self.rejected += 1
                continue
            plan = TimingPlan(
                plan_id=1, intersection_id=x.id, cycle=round(cycle, 1), offset=0.0,
                offset_reference=phases[0].number, activation=0.0, source="time-of-day",
                author="webster", rings=(tuple(PhaseTiming(
                    phase=p.number, split=g + x.phase_by_number[p.number].yellow
                    + x.phase_by_number[p.number].red_clearance,
                    yellow=x.phase_by_number[p.number].yellow,
                    red_clearance=x.phase_by_number[p.number].red_clearance,
                    min_green=p.min_green, max_green=p.max_green, walk=p.walk,
                    ped_clearance=p.ped_clearance) for p, g in zip(phases, greens)),))
            if check_plan(tenths(plan), x):
                self.rejected += 1  # keep the timing in force: a failing plan never runs
                continue
            self.greens[tls_id] = {p.number: g for p, g in zip(phases, greens)}
        self.departed.clear()
        self._elapsed = 0.0

    def step(self, time: float) -> None:
        self._count_departures()
        self._elapsed += 1.0
        if self._elapsed >= self.update_s:
            self._retime()
        for tls_id, driver in self.drivers.items():
            driver.advance()
            if driver.in_green and driver.green_elapsed >= self.greens[tls_id][driver.phase]:
                driver.switch_to(driver.next_in_sequence())


def tenths(plan: TimingPlan) -> TimingPlan:
    """The plan as a controller runs it: splits in tenths of a second, the cycle their sum."""
    rings = tuple(tuple(msgspec.structs.replace(t, split=round(t.split, 1)) for t in ring)
                  for ring in plan.rings)
    total = round(sum(t.split for t in rings[0]), 1)
    return msgspec.structs.replace(plan, rings=rings, cycle=total)
