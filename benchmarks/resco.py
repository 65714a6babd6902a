"""Every controller on every RESCO development scenario, side by side in one run.

Prints, per scenario, the mean delay per vehicle over every vehicle of the demand (vehicles
that never entered are charged too) and RESCO's own delay, each controller's ratio to
max-pressure, and simulated seconds per wall second. Same SUMO, same seeds, one process per
episode. The scenarios are read from ../shared/scenarios/resco (never copied here).

With ``adaptive`` and at least one baseline in the run, a second table sets ``adaptive``
against the best baseline of this run and the targets of the adaptive-control issue: at most
0.85 x the best baseline and below the best published learned controller (RESCO, SUMO 1.9),
the target being the smaller (as the issue states it per scenario).

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
BASELINES = ("fixed", "actuated", "max-pressure")
#: The issue's reference figures (s/veh): the best published RESCO result (controller) and
#: the target for ``adaptive``. Reference data to compare with, not results of ours.
PUBLISHED = {"grid4x4": (32.95, "IDQN", 32.9), "arterial4x4": (654.1, "FMA2C", 566.0),
             "cologne1": (26.05, "IDQN", 20.7), "cologne3": (23.99, "IDQN", 23.9),
             "ingolstadt1": (20.90, "IPPO", 12.0), "ingolstadt7": (31.19, "IDQN", 28.5)}


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
    verdicts = []
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
        verdict = against_targets(scenario, rows)
        if verdict is not None:
            verdicts.append(verdict)
    if verdicts:
        print()
        print(f"{'scenario':<13}{'adaptive':>9}{'best baseline':>22}{'ratio':>7}"
              f"{'published':>16}{'target':>8}  met")
        for v in verdicts:
            print(f"{v['scenario']:<13}{v['adaptive']:>9.1f}{v['baseline']:>22}"
                  f"{v['ratio']:>7.2f}{v['published']:>16}{v['target']:>8.1f}  "
                  f"{'yes' if v['met'] else 'no'}")
    return 0


def against_targets(scenario: str, rows: dict[str, dict]) -> dict | None:
    """``adaptive`` of one scenario against this run's best baseline and the issue's target
    (None without adaptive, a baseline or a reference figure)."""
    baselines = {n: rows[n]["mean_delay_s"] for n in BASELINES if n in rows}
    if "adaptive" not in rows or not baselines or scenario not in PUBLISHED:
        return None
    best = min(baselines, key=baselines.__getitem__)
    delay, published = rows["adaptive"]["mean_delay_s"], PUBLISHED[scenario]
    ratio = delay / baselines[best]
    return {"scenario": scenario, "adaptive": delay,
            "baseline": f"{baselines[best]:.1f} {best}", "ratio": ratio,
            "published": f"{published[0]:.2f} {published[1]}", "target": published[2],
            "met": delay <= published[2] and ratio <= 0.85 and delay < published[0]}


if __name__ == "__main__":
    sys.exit(main())
