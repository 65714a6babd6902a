"""Local actuation against the real virtual controller: SUMO behind a pymodbus TCP server, the
edge's ModbusLink in front, the pure LocalActuation in between (what EdgeRuntime does every
poll, without the MQTT side). Skipped without libsumo."""

from __future__ import annotations

import time
from itertools import pairwise

import msgspec
import pytest

pytest.importorskip("pymodbus")
pytest.importorskip("libsumo")

from edge_agent.local_actuation import LocalActuation  # noqa: E402
from edge_agent.modbus_link import ModbusLink  # noqa: E402
from edge_agent.plan import PhaseTiming, TimingPlan  # noqa: E402
from edge_agent.registers import ControllerMode  # noqa: E402
from edge_agent.runtime_inputs import polled_registers  # noqa: E402
from simulation.demo_scenario import generate_corridor  # noqa: E402
from simulation.virtual_controller import serve  # noqa: E402

POLL_S = 2.0  # simulated seconds between polls
SPEED = 20.0  # simulated seconds per wall-clock second


def wait_until(condition, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.01)


@pytest.mark.integration
def test_hold_and_force_off_over_modbus_tcp_vary_the_greens_inside_the_bounds(tmp_path):
    corridor = generate_corridor(tmp_path, intersections=2, duration_s=1800)
    vc = serve(scenario=corridor, speed=SPEED, watchdog_timeout_s=600.0)
    sim = vc.sim
    assert sim is not None

    def clock() -> float:  # the cabinet's clock is the simulation's
        return sim.sim_time

    regmap = vc.link_map()
    regmap = msgspec.structs.replace(regmap, device=msgspec.structs.replace(
        regmap.device, poll_period_s=POLL_S, timeout_s=0.5))
    link = ModbusLink(regmap, clock=clock, poll=polled_registers(regmap), autopoll=False).start()
    try:
        wait_until(lambda: link.poll_now() and link.connected)
        x = sim.intersection
        timings = tuple(PhaseTiming(phase=n, split=20.0 + x.phase_by_number[n].yellow,
                                    yellow=x.phase_by_number[n].yellow, red_clearance=0.0,
                                    min_green=x.phase_by_number[n].min_green,
                                    max_green=x.phase_by_number[n].max_green)
                        for n in (1, 2))
        plan = TimingPlan(plan_id=5, intersection_id=x.id, offset=0.0, offset_reference=1,
                          cycle=sum(t.split for t in timings), rings=(timings,),
                          activation=0.0, source="adaptive", author="test")
        link.write_plan(plan, x)
        wait_until(lambda: link.poll_now() and link.value("mode") == ControllerMode.REMOTE)
        act = LocalActuation(x, regmap, poll_period_s=POLL_S)
        start = last = clock()
        reasons: list[str] = []
        while clock() < start + 420:
            if clock() - last < POLL_S:
                time.sleep(0.005)
                continue
            last = clock()
            link.poll_now()
            act.observe(link.readings())
            for name, value in act.update(clock(), plan):
                link.write(name, value)
                act.written(name, value)
            reasons += [d.reason for d in act.decisions.values()]
        assert sim.error is None and vc.logic is not None and vc.logic.alarms == 0
    finally:
        link.stop()
        vc.stop()
    states = {s: n for n, s in sim.imported.phase_states[sim.tls_id].items()}
    log = [e for e in sim.state_log if e[0] >= start + 30]
    greens = [(states[s], t2 - t) for (t, s), (t2, _) in pairwise(log) if s in states]
    assert len(greens) >= 6, greens
    lo = {n: t.min_green for n, t in plan.timings.items()}
    hi = {n: t.max_green for n, t in plan.timings.items()}
    assert all(lo[n] - 1e-6 <= g <= hi[n] + 1e-6 for n, g in greens), greens
    assert {round(g) for _, g in greens} != {20}, greens  # the plan alone gives 20 s each
    assert any("extended" in r for r in reasons) and any("gap-out" in r for r in reasons)
