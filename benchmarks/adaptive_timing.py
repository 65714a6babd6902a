"""Decision time of the adaptive controller, on one core.

* planning: one re-plan of a 100-intersection network (a 10 x 10 netgenerate grid imported
  with ``import_net``, random demand in the estimator): critical streams, cycle and splits,
  coordination (groups, common cycles, re-split, offsets; timed with it on and off), every
  plan checked by the guard; target < 1 s.
* actuation: one local decision per intersection (``Actuator.decide`` on detector readings);
  target < 1 ms per intersection step.

    .venv/bin/python benchmarks/adaptive_timing.py [--size 10] [--repeats 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_agent.actuation import Actuator, Bounds, PhaseMeasure
from edge_agent.model import Turn
from optimizer.config import load_adaptive_config
from optimizer.estimation import DemandEstimator
from optimizer.planner import Planner
from simulation.net_import import import_net
from simulation.signal_driver import guarded_clearance
from simulation.sumo_binaries import find_binary


def grid(folder: Path, size: int) -> Path:
    net = folder / f"grid{size}.net.xml"
    subprocess.run([str(find_binary("netgenerate")), "--grid", "--grid.number", str(size),
                    "--grid.length", "250", "--grid.attach-length", "200",
                    "--default.lanenumber", "2", "--tls.guess", "true", "--no-turnarounds",
                    "true", "-o", str(net)], check=True, capture_output=True)
    return net


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=10, help="grid of size x size signals")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    config = load_adaptive_config()
    import sumolib

    with tempfile.TemporaryDirectory() as tmp:
        net_file = grid(Path(tmp), args.size)
        imported = import_net(net_file)
        net = sumolib.net.readNet(str(net_file))
    phase_lanes = {}
    for tls, x in imported.intersections.items():
        links = imported.links[tls]
        phase_lanes[tls] = {p.number: {links[m].from_lane: {links[m].to_lane}
                                       for m in p.movements
                                       if x.movement_by_id[m].turn != Turn.PEDESTRIAN}
                            for p in x.phases}
    lanes = sorted({lane for ph in phase_lanes.values() for ls in ph.values() for lane in ls})
    rng = np.random.default_rng(0)
    est = DemandEstimator(lanes)
    queue = rng.integers(0, 8, len(lanes)).astype(float)  # standing queues (arrivals = departures)
    for _ in range(600):
        # ~300 veh/h per lane; no discharge observed: saturation flows stay at the prior
        est.observe(1.0, rng.poisson(0.08, len(lanes)).astype(float), queue,
                    np.zeros(len(lanes), bool))
    clearance = {tls: guarded_clearance(x) for tls, x in imported.intersections.items()}
    n = len(imported.intersections)
    for enabled in (False, True):
        cfg = load_adaptive_config(overrides={"coordination": {"enabled": enabled}})
        planner = Planner(imported, net, phase_lanes, est.index, cfg, clearance)
        current = planner.initial_plans()
        times = []
        for _ in range(args.repeats):
            start = time.process_time()
            plans, coordinated = planner.plan(0.0, est, current)
            times.append(time.process_time() - start)
        print(f"planning (coordination {'on' if enabled else 'off'}): {n} intersections, "
              f"{len(plans)} plans passed the guard, {planner.rejected} rejected, "
              f"{len(coordinated)} coordinated; best {min(times):.3f} s, median "
              f"{float(np.median(times)):.3f} s CPU per re-plan (target < 1 s)")

    actuators = [(Actuator(x, tuple(n for g in x.rings[0] for n in g), config.actuation_params),
                  x) for x in imported.intersections.values()]
    steps, start = 0, time.process_time()
    for k in range(200):
        for a, x in actuators:
            numbers = [p.number for p in x.phases]
            measures = {n: PhaseMeasure(queue=float((k + n) % 7), discharging=float(k % 3),
                                        approaching=float(n % 4), gap_s=float((k * n) % 5))
                        for n in numbers}
            bounds = {n: Bounds(x.phase_by_number[n].min_green, 40.0) for n in numbers}
            a.decide(float(k), numbers[0], float(k % 50), measures, bounds,
                     {n: 5.0 for n in numbers})
            steps += 1
    per = (time.process_time() - start) / steps
    print(f"actuation: {per * 1e6:.0f} us CPU per intersection step, readings included "
          f"(target < 1000 us)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
