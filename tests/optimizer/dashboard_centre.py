"""A populated centre for the dashboard tests: the Elm Street corridor with plans in force,
edge statuses of every health, KPI histories and a measurement per intersection."""

from __future__ import annotations

import math
import time
from typing import Callable

import msgspec

from edge_agent.config import load_plan, load_site
from edge_agent.guard import check_plan
from edge_agent.messages import EdgeMode, LaneMeasurement, Measurement, PhaseService, Status
from edge_agent.plan import PlanSource
from optimizer.api import create_app
from optimizer.arbitration import Arbiter, TimeOfDaySchedule
from optimizer.audit import AuditLog
from optimizer.auth import UserStore
from optimizer.operations import OperationsService
from optimizer.state import KpiSnapshot, MemoryState

from conftest import CONFIGS

SITE_FILE = CONFIGS / "corridor-3.toml"
KPI_STEP_S = 300.0
KPI_POINTS = 24


def corridor_plans(site):
    """A peak plan per intersection of the corridor (1st Ave's, with each one's crossings)."""
    base = load_plan(CONFIGS / "plans" / "elm-1st-peak.toml")
    plans = {}
    for x in site.intersections:
        phases = {p.number: p for p in x.phases}
        rings = tuple(tuple(msgspec.structs.replace(t, walk=phases[t.phase].walk,
                                                    ped_clearance=phases[t.phase].ped_clearance)
                            for t in ring) for ring in base.rings)
        plan = msgspec.structs.replace(base, intersection_id=x.id, rings=rings)
        assert check_plan(plan, x) == [], x.id
        plans[x.id] = plan
    return plans


class Centre:
    """Service, state, audit and users over the corridor; ``tokens`` by role."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.site = load_site(SITE_FILE)
        plans = corridor_plans(self.site)
        now = clock()
        first, second, third = (x.id for x in self.site.intersections)
        schedules = {xid: TimeOfDaySchedule(((0, plans[xid]),)) for xid in (first, second)}
        arbiter = Arbiter(self.site.intersections, time_of_day=schedules)
        adaptive = msgspec.structs.replace(
            plans[third], source=PlanSource.ADAPTIVE, author="optimizer", activation=now - 60,
            expiry=None, offset=12.0,
            explanation="adaptive: Webster cycle 90 s for flow ratios 0.42 (N-S) and 0.31 "
                        "(E-W); offset 12 s for the southbound green wave from elm-2nd")
        arbiter.submit_adaptive(adaptive, now - 60)
        self.state = MemoryState()
        self.audit = AuditLog(":memory:")
        self.users = UserStore(":memory:")
        self.service = OperationsService(self.site, audit=self.audit, state=self.state,
                                         clock=clock, arbiter=arbiter)
        self.tokens = {role: self.users.add(f"{role}-1", role, now)
                       for role in ("viewer", "operator", "admin")}
        self._populate(now)

    def app(self, **kw):
        return create_app(self.service, self.users, **kw)

    def _populate(self, now: float) -> None:
        site = self.site.site
        ids = [x.id for x in self.site.intersections]
        self.state.set_status(Status(site=site, intersection_id=ids[0], t=now - 5, online=True,
                                     mode=EdgeMode.CENTRAL, controller_ok=True, plan_id=1))
        self.state.set_status(Status(site=site, intersection_id=ids[1], t=now - 8, online=True,
                                     mode=EdgeMode.CENTRAL, controller_ok=True, plan_id=1,
                                     failed_detectors=(f"{ids[1]}_N_queue",),
                                     detail="queue detector N stuck on"))
        self.state.set_status(Status(site=site, intersection_id=ids[2], t=now - 900,
                                     online=True, mode=EdgeMode.CENTRAL, controller_ok=True,
                                     plan_id=1))
        for k, x in enumerate(self.site.intersections):
            for i in range(KPI_POINTS):
                t = now - (KPI_POINTS - 1 - i) * KPI_STEP_S
                wave = math.sin(i / 3.0 + k)
                self.state.set_kpis(x.id, KpiSnapshot(t, KPI_STEP_S, {
                    "mean_delay_s": round(28 + 6 * wave + k * 3 + i * 0.2, 1),
                    "throughput_vph": round(1450 + 180 * math.cos(i / 4.0 + k), 0),
                    "max_queue_veh": round(9 + 4 * wave, 1)}))
            lanes = sorted({lane for a in x.approaches for lane in a.lanes})
            greens = tuple(PhaseService(phase=p, green_s=g)
                           for p, g in ((2, 47.0), (4, 33.5), (6, 47.0), (8, 33.5)))
            self.state.add_measurement(Measurement(
                site=site, intersection_id=x.id, seq=100 + k, interval_start=now - 60,
                interval_s=60.0,
                lanes=tuple(LaneMeasurement(lane=lane, count=8 + j, flow_vph=480.0 + 60 * j,
                                            occupancy=0.12 + 0.02 * j,
                                            mean_speed_mps=11.5 - 0.5 * j,
                                            queue_veh=float(j % 4),
                                            healthy=not (k == 1 and j == 0))
                            for j, lane in enumerate(lanes)),
                failed_detectors=(f"{x.id}_N_queue",) if k == 1 else (), phase_greens=greens))
