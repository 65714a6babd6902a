"""``tsc-sim``: run, compare and import SUMO scenarios with our controllers and the baselines,
and validate candidate timing plans (the gate, :mod:`simulation.gate`).

Every episode runs in a fresh process (libsumo runs one simulation per process, and only the
first is reproducible), several at once across seeds and controllers. stdout carries only the
result (a table, or one JSON object with ``--json``); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from edge_agent.errors import ConfigError
from simulation.controllers import ControllerSpec, available_controllers
from simulation.kpi import summarise_seeds
from simulation.run import RunResult, run_episode
from simulation.scenario import ScenarioError, load_scenario

__all__ = ["main", "run_many"]

KEYS = ("mean_delay_s", "mean_delay_resco_s", "mean_travel_time_s", "mean_waiting_s",
        "throughput", "stops_mean", "teleports", "emergency_braking", "collisions",
        "never_inserted", "unfinished")


def _episode(scenario: str, controller: str, seed: int, seconds: float | None,
             output_dir: str | None) -> RunResult:
    spec = ControllerSpec(controller)
    return run_episode(scenario, spec.factory(), seed=seed, seconds=seconds,
                       output_dir=output_dir)


def run_many(scenario: str, controllers: list[str], seeds: int, seconds: float | None, *,
             output_dir: str | None = None, jobs: int | None = None,
             progress: bool = True) -> dict[str, list[RunResult]]:
    """Every controller on every seed, each episode in its own process; results by controller."""
    for name in controllers:
        ControllerSpec(name)  # fail fast on an unknown name, before starting any process
    tasks = [(c, s) for c in controllers for s in range(seeds)]
    results: dict[str, list[RunResult]] = {c: [] for c in controllers}
    ctx = multiprocessing.get_context("spawn")
    workers = jobs or min(len(tasks), os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                             max_tasks_per_child=1) as pool:
        futures = {pool.submit(_episode, scenario, c, s, seconds,
                               str(Path(output_dir) / c / f"seed{s}") if output_dir else None):
                   (c, s) for c, s in tasks}
        for done, future in enumerate(as_completed(futures), 1):
            results[futures[future][0]].append(future.result())
            if progress:
                _bar(done, len(tasks), f"{futures[future][0]} seed {futures[future][1]}")
    for runs in results.values():
        runs.sort(key=lambda r: r.seed)
    return results


def _bar(done: int, total: int, label: str) -> None:
    width = 30
    filled = int(width * done / total)
    end = "\n" if done == total else ""
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label:<30}", end=end,
          file=sys.stderr, flush=True)


def summary(runs: list[RunResult], controller: str) -> dict[str, Any]:
    """Mean of every KPI over seeds, its 95 % interval, and the run's speed."""
    out: dict[str, Any] = {"controller": controller, "seeds": len(runs),
                           "clearance": ControllerSpec(controller).clearance}
    for key in KEYS:
        values = [r.kpis.to_dict()[key] for r in runs]
        stats = summarise_seeds(values)
        out[key] = stats.mean
        if len(runs) > 1:
            out[f"{key}_ci95"] = [stats.low, stats.high]
    out["wall_s"] = sum(r.wall_s for r in runs)
    out["sim_s_per_wall_s"] = sum(r.sim_s for r in runs) / out["wall_s"]
    out["per_seed"] = [{"seed": r.seed, **{k: r.kpis.to_dict()[k] for k in KEYS}} for r in runs]
    return out


def _table(rows: list[dict[str, Any]], reference: str | None) -> str:
    ref = next((r for r in rows if r["controller"] == reference), None)
    lines = [f"{'controller':<14}{'delay s/veh':>12}{'95% CI':>18}{'vs ' + (reference or '-'):>14}"
             f"{'travel s':>10}{'wait s':>9}{'through':>9}{'sim s/s':>9}"]
    for r in rows:
        ci = r.get("mean_delay_s_ci95")
        ci_text = f"{ci[0]:.1f}-{ci[1]:.1f}" if ci else "-"
        ratio = f"{r['mean_delay_s'] / ref['mean_delay_s']:.2f}" if ref else "-"
        lines.append(f"{r['controller']:<14}{r['mean_delay_s']:>12.2f}{ci_text:>18}{ratio:>14}"
                     f"{r['mean_travel_time_s']:>10.1f}{r['mean_waiting_s']:>9.1f}"
                     f"{r['throughput']:>9.0f}{r['sim_s_per_wall_s']:>9.0f}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    load_scenario(args.scenario)  # clear error before any process starts
    started = time.perf_counter()
    runs = run_many(args.scenario, [args.controller], args.seeds, args.seconds,
                    output_dir=args.output_dir, jobs=args.jobs, progress=not args.quiet)
    result = summary(runs[args.controller], args.controller)
    result["scenario"] = str(args.scenario)
    result["wall_s"] = time.perf_counter() - started
    if args.json:
        print(json.dumps(result))
    else:
        print(_table([result], None))
    return 0


def _compare(args: argparse.Namespace) -> int:
    load_scenario(args.scenario)
    names = [n.strip() for n in args.controllers.split(",") if n.strip()]
    runs = run_many(args.scenario, names, args.seeds, args.seconds,
                    output_dir=args.output_dir, jobs=args.jobs, progress=not args.quiet)
    rows = [summary(runs[n], n) for n in names]
    reference = args.reference if args.reference in names else names[0]
    if args.json:
        print(json.dumps({"scenario": str(args.scenario), "reference": reference,
                          "controllers": rows}))
    else:
        print(_table(rows, reference))
    if args.png:
        _bar_chart(rows, Path(args.png), title=Path(args.scenario).name)
        print(f"chart: {args.png}", file=sys.stderr)
    return 0


def _bar_chart(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on edge boxes and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = [r["controller"] for r in rows]
    means = [r["mean_delay_s"] for r in rows]
    errors = [(r["mean_delay_s"] - r["mean_delay_s_ci95"][0]) if "mean_delay_s_ci95" in r else 0
              for r in rows]
    ax.bar(names, means, yerr=errors, capsize=4, color="#4878a8")
    ax.set_ylabel("mean delay per vehicle (s)")
    ax.set_title(f"{title}: delay over every vehicle of the demand")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _import_net(args: argparse.Namespace) -> int:
    from simulation.net_import import import_net, write_site_config

    imported = import_net(args.net)
    out = write_site_config(imported, args.output, args.site)
    print(f"{out}: {len(imported.intersections)} intersections "
          f"({', '.join(sorted(imported.intersections))})")
    for adjustment in imported.adjustments:
        print(f"  raised to the guard's floor: {adjustment}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from simulation.demo_scenario import generate_corridor

    folder = Path(args.folder)
    cfg = generate_corridor(folder, intersections=args.intersections)
    print(f"scenario: {cfg} ({args.intersections} signalised intersections, generated)",
          file=sys.stderr)
    names = ["fixed", "webster", "actuated", "max-pressure"]
    names += [n for n in available_controllers() if n not in names]
    runs = run_many(str(cfg), names, 1, args.minutes * 60, progress=True)
    print(_table([summary(runs[n], n) for n in names], "fixed"))
    return 0


def _validate(args: argparse.Namespace) -> int:
    import tempfile

    from edge_agent.config import load_plan
    from simulation.demand_from_counts import demand_from_counts
    from simulation.gate import Tolerance, validate

    scenario = load_scenario(args.scenario)
    candidate = [load_plan(path) for path in args.candidate]
    incumbent = [load_plan(path) for path in args.incumbent or ()]
    tolerance = Tolerance(args.tolerance, args.tolerance_s)
    with tempfile.TemporaryDirectory(prefix="tsc-validate-") as tmp:
        demand = args.demand
        if args.counts:
            counts = _read_counts_json(args.counts)
            sampled = demand_from_counts(counts, scenario, Path(tmp) / "counts.rou.xml",
                                         seed=args.demand_seed)
            demand = str(sampled.path)
            if not args.quiet:
                print(f"demand from {args.counts}: {sampled.vehicles} vehicles on routes from "
                      f"{sampled.candidates.source}; sampled {sampled.sampling}", file=sys.stderr)
        verdict = validate(candidate, incumbent, demand, args.seconds, args.seeds,
                           scenario=scenario, tolerance=tolerance, jobs=args.jobs)
    if args.json:
        print(json.dumps(verdict.to_dict()))
    else:
        print(_verdict_text(verdict))
    return 0 if verdict.accepted else 1


def _read_counts_json(path: str) -> dict[str, list[list[float]]]:
    """``{"edge or lane": [[begin, end, vehicles], ...]}``; errors name the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read counts: {exc.strerror}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: counts are not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(rows, list) for rows in data.values()):
        raise ValueError(f"{path}: counts must be an object mapping each edge or lane to a list "
                         f"of [begin, end, vehicles]")
    for key, rows in data.items():
        for row in rows:
            if not isinstance(row, list) or not all(isinstance(x, (int, float)) and
                                                    not isinstance(x, bool) for x in row):
                raise ValueError(f"{path}: counts for {key!r}: {row!r} is not [begin, end, vehicles]")
    return data


def _verdict_text(verdict: Any) -> str:
    where = ", ".join(verdict.intersections)
    lines = [f"{'ACCEPTED' if verdict.accepted else 'REJECTED'}: candidate plans for {where}"]
    if verdict.candidate is not None and verdict.incumbent is not None:
        c, i = verdict.candidate.mean, verdict.incumbent.mean
        horizon = f"{verdict.horizon_s:g} s" if verdict.horizon_s else "the whole episode"
        lines.append(f"  {len(verdict.seeds)} seed(s), {horizon}; mean delay {c['mean_delay_s']:.2f} "
                     f"s/veh vs incumbent {i['mean_delay_s']:.2f} s/veh ({verdict.delay_change_s:+.2f} s; "
                     f"allowed +{verdict.allowed_s:.2f} s = {verdict.tolerance})")
        lines.append(f"  collisions {c['collisions_total']} vs {i['collisions_total']}, emergency "
                     f"braking {c['emergency_braking_total']} vs {i['emergency_braking_total']}")
    lines += [f"  - {reason}" for reason in verdict.reasons]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="tsc-sim", description="SUMO simulation harness: run controllers on a scenario "
                                    "and measure delay, travel time, queues and safety events.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    controllers = ", ".join(available_controllers())

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--scenario", required=True, metavar="DIR",
                       help="folder with a .sumocfg (or the .sumocfg itself)")
        p.add_argument("--seeds", type=int, default=1, metavar="N",
                       help="run seeds 0..N-1 and report mean and 95%% interval (default 1)")
        p.add_argument("--seconds", type=float, metavar="S",
                       help="simulate only S seconds from the scenario's begin")
        p.add_argument("--output-dir", metavar="DIR",
                       help="keep SUMO's own outputs (tripinfo, statistics, summary) here")
        p.add_argument("--jobs", type=int, metavar="N", help="episodes at once (default: cores)")
        p.add_argument("--json", action="store_true", help="print one JSON object")
        p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")

    run = sub.add_parser("run", help="run one controller on a scenario",
                         description=f"Run one controller ({controllers}) and print its KPIs.")
    common(run)
    run.add_argument("--controller", required=True, metavar="NAME", help=controllers)
    run.set_defaults(func=_run)

    compare = sub.add_parser("compare", help="run several controllers side by side",
                             description="Same scenario, same seeds: a table of KPIs with each "
                                         "controller's delay relative to a reference.")
    common(compare)
    compare.add_argument("--controllers", default="fixed,actuated,max-pressure,webster",
                         metavar="A,B,...", help=f"comma-separated, from: {controllers}")
    compare.add_argument("--reference", default="max-pressure", metavar="NAME",
                         help="controller the ratios are taken to (default max-pressure)")
    compare.add_argument("--png", metavar="FILE", help="also draw a bar chart of delay")
    compare.set_defaults(func=_compare)

    imp = sub.add_parser("import-net", help="write our intersection configs for a SUMO net",
                         description="Derive an intersection (phases, conflicts, lanes, "
                                     "detectors) for every traffic light of a SUMO net.")
    imp.add_argument("net", metavar="NET.xml")
    imp.add_argument("-o", "--output", required=True, metavar="FILE", help="site TOML to write")
    imp.add_argument("--site", default="imported", help="site id (default: imported)")
    imp.set_defaults(func=_import_net)

    demo = sub.add_parser("demo", help="generate a corridor and compare the controllers on it",
                          description="Generate a signalised corridor with time-varying demand "
                                      "(our own scenario) and compare every controller on it.")
    demo.add_argument("--minutes", type=float, default=20.0, help="simulated minutes (20)")
    demo.add_argument("--intersections", type=int, default=3, help="corridor length (3)")
    demo.add_argument("--folder", default="out/demo", help="where to write the scenario")
    demo.set_defaults(func=_demo)

    val = sub.add_parser(
        "validate", help="the validation gate: is a candidate plan safe and no worse?",
        description="Check candidate plans with the safety guard, then simulate them and the "
                    "incumbent plans on the same demand and seeds. Intersections without a "
                    "candidate plan keep the incumbent's; those without either keep the net's "
                    "programme. Exit 0 accepted, 1 rejected (reasons printed), 2 bad input.")
    val.add_argument("--scenario", required=True, metavar="DIR",
                     help="folder with a .sumocfg (or the .sumocfg itself)")
    val.add_argument("--candidate", required=True, nargs="+", metavar="FILE",
                     help="candidate plan files (.toml, or .json wire form), one per intersection "
                          "(intersection ids as tsc-sim import-net writes them)")
    val.add_argument("--incumbent", nargs="+", metavar="FILE",
                     help="plans in force (default: the net's own programmes)")
    val.add_argument("--seeds", type=int, default=3, metavar="N", help="seeds 0..N-1 (default 3)")
    val.add_argument("--seconds", type=float, metavar="S",
                     help="simulate S seconds from the scenario's begin (default: all of it)")
    val.add_argument("--tolerance", type=float, default=0.05, metavar="X",
                     help="relative delay tolerance: reject if mean delay grows by more than "
                          "max(X * incumbent delay, --tolerance-s) (default 0.05)")
    val.add_argument("--tolerance-s", type=float, default=1.0, metavar="S",
                     help="absolute delay tolerance in s/veh (default 1.0)")
    demand = val.add_mutually_exclusive_group()
    demand.add_argument("--demand", metavar="ROUTES",
                        help="route file replacing the scenario's demand")
    demand.add_argument("--counts", metavar="COUNTS.json",
                        help='measured counts {"edge or lane": [[begin, end, vehicles], ...]}, '
                             "replayed with routeSampler")
    val.add_argument("--demand-seed", type=int, default=0, metavar="N",
                     help="seed for sampling demand from --counts (default 0)")
    val.add_argument("--jobs", type=int, metavar="N", help="episodes at once (default: cores)")
    val.add_argument("--json", action="store_true", help="print one JSON object")
    val.add_argument("--quiet", action="store_true", help="nothing on stderr but errors")
    val.set_defaults(func=_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tsc-sim``."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ScenarioError, ConfigError, ValueError) as exc:
        print(f"tsc-sim: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
