"""Figures for the edge's Modbus adapter (edge_agent.modbus_link) against a loopback server.

1. Readings per second the adapter processes on one core: this process is pinned to one CPU,
   the virtual controller (a pymodbus TCP server) runs in another process pinned to another,
   and the link polls back to back (``poll_now``) for a few seconds. Reported per wall second
   and per CPU second of the adapter's process, for the example cabinet map (9 read requests
   a poll) and a generated map of a SUMO intersection (4 requests a poll). The same with the
   in-memory loopback client shows what the adapter costs without sockets.
2. Latency from a ``write_plan()`` call to the commit register being set on the server: the
   server runs in this process (so both ends share one clock) and stamps every write it
   receives; each plan is checked by the guard, staged register by register, commit last.

    .venv/bin/python benchmarks/edge_modbus.py [--seconds 5] [--plans 200]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_agent.config import load_site, load_toml  # noqa: E402
from edge_agent.modbus_core import plan_writes  # noqa: E402
from edge_agent.modbus_link import ModbusLink  # noqa: E402
from edge_agent.plan import PhaseTiming, TimingPlan  # noqa: E402
from edge_agent.registers import RegisterMap  # noqa: E402
from simulation.virtual_controller import VirtualController, serve_in_process  # noqa: E402
from simulation.virtual_map import register_map_for, write_register_map  # noqa: E402


def _pin(cpu: int) -> str:
    if hasattr(os, "sched_setaffinity") and cpu in os.sched_getaffinity(0):
        os.sched_setaffinity(0, {cpu})
        return f"cpu {cpu}"
    return "unpinned"


def _fast(regmap: RegisterMap, port: int | None = None) -> RegisterMap:
    device = msgspec.structs.replace(regmap.device, poll_period_s=1.0, timeout_s=0.5,
                                     **({"port": port} if port else {}))
    return msgspec.structs.replace(regmap, device=device)


def _poll_for(link: ModbusLink, seconds: float) -> tuple[float, float, int, int]:
    link.poll_now()  # connect and warm up
    start_values, start_requests = link.stats.values, link.stats.requests
    wall, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < seconds:
        if not link.poll_now():
            raise RuntimeError("a poll failed during the benchmark")
    return (time.perf_counter() - wall, time.process_time() - cpu,
            link.stats.values - start_values, link.stats.requests - start_requests)


def readings(maps: dict[str, RegisterMap], seconds: float) -> list[str]:
    rows = []
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    server_cpu = cpus[-1]
    with tempfile.TemporaryDirectory() as tmp:
        for label, regmap in maps.items():
            path = write_register_map(regmap, Path(tmp) / f"{label}.toml")
            proc, port = serve_in_process(path, cores=[server_cpu])
            try:
                link = ModbusLink(_fast(regmap, port), autopoll=False).start()
                try:
                    wall, cpu, values, requests = _poll_for(link, seconds)
                finally:
                    link.stop()
            finally:
                proc.terminate()
                proc.communicate()
            rows.append(f"{label:<22} tcp       {len(link.blocks):>3} {values / wall:>12,.0f} "
                        f"{values / cpu:>12,.0f} {requests / wall:>10,.0f}")
            vc = VirtualController(_fast(regmap)).start(tcp=False)
            link = ModbusLink(vc.link_map(), client_factory=vc.loopback_client,
                              autopoll=False).start()
            try:
                wall, cpu, values, requests = _poll_for(link, seconds)
            finally:
                link.stop()
                vc.stop()
            rows.append(f"{label:<22} in-memory {len(link.blocks):>3} {values / wall:>12,.0f} "
                        f"{values / cpu:>12,.0f} {requests / wall:>10,.0f}")
    return rows


def _elm_plan(plan_id: int) -> TimingPlan:
    def t(n, split, yellow, lo, hi, walk=0.0, ped=0.0):
        return PhaseTiming(phase=n, split=split, yellow=yellow, red_clearance=1.5,
                           min_green=lo, max_green=hi, walk=walk, ped_clearance=ped)
    return TimingPlan(plan_id=plan_id, intersection_id="elm-1st", cycle=80.0, offset=10.0,
                      offset_reference=2, activation=0.0, source="adaptive", author="bench",
                      rings=((t(2, 45, 3.5, 8, 50, 7, 11.3), t(4, 35, 3.0, 6, 40, 7, 13.1)),
                             (t(6, 45, 3.5, 8, 50), t(8, 35, 3.0, 6, 40))))


def plan_latency(regmap: RegisterMap, intersection, plans: int) -> list[str]:
    vc = VirtualController(_fast(regmap), intersection=intersection,
                           clock=time.perf_counter).start()
    link = ModbusLink(vc.link_map(), autopoll=False).start()
    to_commit, calls = [], []
    try:
        link.poll_now()
        for plan_id in range(1, plans + 1):
            t0 = time.perf_counter()
            link.write_plan(_elm_plan(plan_id), intersection)
            calls.append(time.perf_counter() - t0)
            commit = vc.bank.write_log[-1]
            assert commit.name == "plan_commit"
            to_commit.append(commit.time - t0)
        accepted = vc.logic.plan.plan_id if vc.logic.plan else None
    finally:
        link.stop()
        vc.stop()
    if accepted != plans:
        raise RuntimeError(f"the controller ran plan {accepted}, expected {plans}")
    q = statistics.quantiles
    return [f"write_plan -> commit on server  median {statistics.median(to_commit) * 1e3:.2f} ms"
            f"  p95 {q(to_commit, n=20)[-1] * 1e3:.2f} ms  max {max(to_commit) * 1e3:.2f} ms",
            f"write_plan call (to commit ack) median {statistics.median(calls) * 1e3:.2f} ms"
            f"  ({len(plan_writes(_elm_plan(1), regmap))} writes a plan, {plans} plans, "
            f"all accepted)"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="polling time per case")
    p.add_argument("--plans", type=int, default=200, help="plans written for the latency")
    args = p.parse_args(argv)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    where = _pin(0)
    elm_map = load_toml(REPO / "configs" / "modbus-elm-1st.toml", RegisterMap)
    elm = load_site(REPO / "configs" / "nema-4phase.toml").intersection("elm-1st")
    maps = {"elm-1st (54 registers)": elm_map}
    try:
        from simulation.demo_scenario import generate_corridor
        from simulation.net_import import import_net
        from simulation.scenario import load_scenario

        with tempfile.TemporaryDirectory() as tmp:
            net = load_scenario(generate_corridor(tmp, intersections=1)).net_file
            x = import_net(net).intersections["A0"]
        generated = register_map_for(x)
        maps[f"SUMO A0 ({len(generated.registers)} registers)"] = generated
    except (ImportError, OSError, subprocess.CalledProcessError) as exc:
        print(f"(generated map skipped: {exc})")
    print(f"edge Modbus adapter, pymodbus TCP on 127.0.0.1; adapter on {where}, "
          f"server in its own process\n")
    print(f"{'register map':<22} {'transport':<9} {'req':>3} {'readings/s':>12} "
          f"{'per CPU s':>12} {'requests/s':>10}")
    for row in readings(maps, args.seconds):
        print(row)
    print()
    for row in plan_latency(elm_map, elm, args.plans):
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
