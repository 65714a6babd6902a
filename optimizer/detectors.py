"""Detector zones in SUMO: what loops, radar and cameras at each signal would measure.

The harness's adapter between libsumo/traci and the pure core. For every controlled approach
lane there is a lane-area zone reaching ``reach_m`` upstream of the stop line (following the
lanes that feed a short lane, as a radar zone would cover them), a stop-bar zone whose leavers
are counted as departures, and for every exit lane a zone at its start watched for spillback
and a longer one (``downstream_m``, 0: none) whose vehicles are counted (the pressure term).
Only positions and speeds of vehicles inside those zones are read: never routes or
destinations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LaneReading", "Zones"]


@dataclass(frozen=True, slots=True)
class LaneReading:
    """One approach lane now: halting and moving vehicles, time to the stop line of the next
    moving one, vehicles that crossed the stop line since the last step."""

    queue: int
    moving: int
    gap_s: float
    departures: int
    since_departure_s: float  # since a vehicle last crossed the stop line (stop-bar loop)


def _segments(net: Any, lane_id: str, reach: float, upstream: bool,
              depth: int = 6) -> list[tuple[str, float, float, float]]:
    """(lane, from, to, distance of the lane's end (upstream) / start (downstream) from the
    reference point) stretches within ``reach`` m; internal lanes are skipped."""
    out = []
    frontier = [(net.getLane(lane_id), reach, 0.0)]
    seen = {lane_id}
    for _ in range(depth):
        nxt = []
        for lane, left, dist in frontier:
            length = lane.getLength()
            out.append((lane.getID(), max(0.0, length - left), length, dist) if upstream
                       else (lane.getID(), 0.0, min(left, length), dist))
            if left > length:
                more = lane.getIncoming() if upstream else lane.getOutgoingLanes()
                for other in more:
                    if other.getID() not in seen and not other.getID().startswith(":"):
                        seen.add(other.getID())
                        nxt.append((other, left - length, dist + length))
        frontier = nxt
        if not frontier:
            break
    return out


class Zones:
    """Every detector zone of a set of approach and exit lanes, read once per step."""

    def __init__(self, conn: Any, net: Any, approach_lanes: list[str], exit_lanes: list[str],
                 *, reach_m: float, exit_zone_m: float, stop_zone_m: float,
                 halting_speed_mps: float, accel_mps2: float,
                 downstream_m: float = 0.0) -> None:
        self.conn = conn
        self.approach_lanes, self.exit_lanes = list(approach_lanes), list(exit_lanes)
        self.up = {lane: _segments(net, lane, reach_m, True) for lane in approach_lanes}
        self.down = {lane: _segments(net, lane, exit_zone_m, False) for lane in exit_lanes}
        self.far = {lane: _segments(net, lane, downstream_m, False) for lane in exit_lanes} \
            if downstream_m > 0 else {}
        self.length = {lane: net.getLane(lane).getLength() for lane in approach_lanes}
        self.stop_zone, self.halting, self.accel = stop_zone_m, halting_speed_mps, accel_mps2
        self.watched = sorted({seg[0] for segs in (*self.up.values(), *self.down.values(),
                                                   *self.far.values())
                               for seg in segs} | set(approach_lanes))
        self._in_stop_zone: dict[str, set[str]] = {lane: set() for lane in approach_lanes}
        self._last_departure: dict[str, float] = {lane: -1e9 for lane in approach_lanes}
        self.readings: dict[str, LaneReading] = {}
        self.blocked: dict[str, bool] = {}
        self.downstream: dict[str, int] = {lane: 0 for lane in exit_lanes}

    def read(self, now: float) -> None:
        """Measure every zone at time ``now`` (call once per simulation step)."""
        lane_api, veh = self.conn.lane, self.conn.vehicle
        on: dict[str, list[tuple[str, float, float]]] = {}
        for lane in self.watched:
            ids = lane_api.getLastStepVehicleIDs(lane)
            on[lane] = [(v, veh.getLanePosition(v), veh.getSpeed(v)) for v in ids] if ids else []
        for lane in self.approach_lanes:
            queue = moving = 0
            gap = math.inf
            for seg_lane, start, end, dist in self.up[lane]:
                for _, pos, speed in on[seg_lane]:
                    if not start <= pos <= end:
                        continue
                    if speed < self.halting:
                        queue += 1
                        continue
                    moving += 1
                    to_stop = dist + end - pos  # upstream stretches end at their lane's end
                    # Average speed to the stop line: no slower than accelerating from rest.
                    eta = to_stop / max(speed, math.sqrt(self.accel * max(to_stop, 0.0) / 2.0))
                    gap = min(gap, eta)
            length = self.length[lane]
            now_ids = {v for v, _, _ in on[lane]}
            departures = len(self._in_stop_zone[lane] - now_ids)
            self._in_stop_zone[lane] = {v for v, pos, _ in on[lane]
                                        if pos >= length - self.stop_zone}
            if departures:
                self._last_departure[lane] = now
            self.readings[lane] = LaneReading(queue, moving, gap, departures,
                                              now - self._last_departure[lane])
        for lane in self.exit_lanes:
            self.blocked[lane] = any(start <= pos <= end and speed < self.halting
                                     for seg_lane, start, end, _ in self.down[lane]
                                     for _, pos, speed in on[seg_lane])
        for lane, segs in self.far.items():
            self.downstream[lane] = sum(1 for seg_lane, start, end, _ in segs
                                        for _, pos, _ in on[seg_lane] if start <= pos <= end)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(departures, queue) per approach lane, in ``approach_lanes`` order."""
        dep = np.array([self.readings[lane].departures for lane in self.approach_lanes], float)
        queue = np.array([self.readings[lane].queue for lane in self.approach_lanes], float)
        return dep, queue
