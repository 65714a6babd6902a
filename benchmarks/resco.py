"""Every controller on every RESCO development scenario, side by side in one run.

Prints, per scenario, the mean delay per vehicle over every vehicle of the demand (vehicles
that never entered are charged too) and RESCO's own delay, each controller's ratio to
max-pressure, and simulated seconds per wall second. Same SUMO, same seeds, one process per
episode. The scenarios are read from ../shared/scenarios/resco (never copied here).

    .venv/bin/python benchmarks/resco.py --seeds 3
    .venv/bin/python benchmarks/resco.py --scenarios cologne1,ingolstadt1 --seconds 900
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from simulation.cli import run_many, summary
from simulation.controllers import available_controllers

RESCO = Path(__file__).resolve().parents[1].parent / "shared" / "scenarios" / "resco"
SCENARIOS = ("grid4x4", "arterial4x4", "cologne1", "cologne3", "ingolstadt1", "ingolstadt7")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--seconds", type=float, help="shorter horizon (default: the episode)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--controllers", default=",".join(available_controllers()))
    parser.add_argument("--resco", default=str(RESCO), help="folder of the RESCO scenarios")
    args = parser.parse_args(argv)
    names = args.controllers.split(",")
    print(f"{'scenario':<13}{'controller':<14}{'delay s/veh':>12}{'resco s/veh':>12}"
          f"{'vs max-pressure':>17}{'never in':>9}{'sim s/wall s':>14}")
    for scenario in args.scenarios.split(","):
        folder = Path(args.resco) / scenario
        if not folder.is_dir():
            print(f"{scenario}: not found at {folder}", file=sys.stderr)
            return 2
        runs = run_many(str(folder), names, args.seeds, args.seconds, progress=False)
        rows = {n: summary(runs[n], n) for n in names}
        ref = rows.get("max-pressure")
        for n in names:
            r = rows[n]
            ratio = f"{r['mean_delay_s'] / ref['mean_delay_s']:.2f}" if ref else "-"
            print(f"{scenario:<13}{n:<14}{r['mean_delay_s']:>12.1f}{r['mean_delay_resco_s']:>12.1f}"
                  f"{ratio:>17}{r['never_inserted']:>9.0f}{r['sim_s_per_wall_s']:>14.0f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
