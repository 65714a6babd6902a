"""Wall time of a full episode with the net's own programmes: bare ``sumo`` vs. our harness.

For each RESCO scenario this runs, with the same SUMO options (``build_sumo_args``):

* ``bare``: the wheel's ``sumo`` binary via subprocess (process start, load, run, outputs);
* ``harness``: ``run_episode`` with libsumo in a fresh process, without queue sampling; the
  time is measured inside that process after ``import libsumo`` (start, steps, close, KPIs);
* ``+queues``: the same with the per-step queue collector (the default);
* ``import``: ``import libsumo`` in that fresh process (a large shared library: 0.3-0.9 s);
* ``+spawn``: ``run_episode(..., isolate=True)`` with queues, timed from the caller: process
  spawn, imports and the episode, what each isolated episode really costs.
* ``traci`` (with ``--traci``): ``run_episode`` over traci.

Each cell is the minimum (or, with ``--stat median``, the median) of ``--repeats`` runs; the
minimum is the better estimate of cost on a shared machine, where other load only adds time.
Both paths must give the same KPIs; the script checks the strict mean delay of the bare run
against the harness's.

    python benchmarks/bare_vs_harness.py [--repeats 3] [--stat min] [--traci] [--json] [SCENARIO ...]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from simulation.kpi import compute_kpis, parse_statistics, parse_tripinfo
from simulation.run import run_episode
from simulation.scenario import load_scenario, read_demand
from simulation.sumo_binaries import find_binary, sumo_env, sumo_version
from simulation.sumo_session import build_sumo_args

RESCO = Path(__file__).resolve().parents[1].parent / "shared" / "scenarios" / "resco"
NAMES = ("grid4x4", "arterial4x4", "cologne1", "cologne3", "ingolstadt1", "ingolstadt7")


def bare_run(scenario_dir: Path, seed: int) -> tuple[float, float]:
    """Run the bare binary once; return (wall seconds, strict mean delay)."""
    scenario = load_scenario(scenario_dir)
    with tempfile.TemporaryDirectory(prefix="tsc-bare-") as tmp:
        trip, stats = Path(tmp) / "tripinfo.xml", Path(tmp) / "statistics.xml"
        args = build_sumo_args(scenario, begin=scenario.begin, end=scenario.end, seed=seed,
                               tripinfo=trip, statistics=stats)
        started = time.perf_counter()
        subprocess.run([str(find_binary("sumo")), *args], env=sumo_env(), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        kpis = compute_kpis(parse_tripinfo(trip), read_demand(scenario), parse_statistics(stats))
    return wall, kpis.mean_delay_s


def _timed_in_fresh_process(path: Path, seed: int, queue_every: int | None) -> tuple[float, float]:
    """Run in a spawned process: (seconds to import libsumo, run_episode's wall_s)."""
    started = time.perf_counter()
    import libsumo  # noqa: F401  (timed apart from the episode)

    imported = time.perf_counter() - started
    return imported, run_episode(path, seed=seed, queue_every=queue_every).wall_s


def _fresh(path: Path, seed: int, queue_every: int | None) -> tuple[float, float]:
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(_timed_in_fresh_process, path, seed, queue_every).result()


def measure(name: str, repeats: int, seed: int, with_traci: bool,
            stat: str = "min") -> dict[str, float | str | bool]:
    """Wall times for one scenario (min or median over the repeats)."""
    pick = min if stat == "min" else statistics.median
    path = RESCO / name
    bare, harness, queues, imports, spawn, traci = [], [], [], [], [], []
    delays = set()
    for _ in range(repeats):
        wall, delay = bare_run(path, seed)
        bare.append(wall)
        delays.add(round(delay, 6))
        imported, wall = _fresh(path, seed, None)
        imports.append(imported)
        harness.append(wall)
        imported, wall = _fresh(path, seed, 1)
        imports.append(imported)
        queues.append(wall)
        started = time.perf_counter()
        r = run_episode(path, seed=seed, isolate=True)
        spawn.append(time.perf_counter() - started)
        delays.add(round(r.kpis.mean_delay_s, 6))
        if with_traci:
            traci.append(run_episode(path, seed=seed, queue_every=None, use_libsumo=False).wall_s)
    row: dict[str, float | str | bool] = {
        "scenario": name,
        "bare_s": pick(bare),
        "harness_s": pick(harness),
        "harness_queues_s": pick(queues),
        "import_libsumo_s": pick(imports),
        "harness_spawn_s": pick(spawn),
        "same_kpis": len(delays) == 1,
        "mean_delay_s": next(iter(delays)),
    }
    if with_traci:
        row["traci_s"] = pick(traci)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", default=list(NAMES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stat", choices=("min", "median"), default="min")
    parser.add_argument("--traci", action="store_true", help="also time run_episode over traci")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    opts = parser.parse_args(argv)
    if not RESCO.is_dir():
        print(f"RESCO scenarios not found at {RESCO}", file=sys.stderr)
        return 2
    rows = [measure(n, opts.repeats, opts.seed, opts.traci, opts.stat) for n in opts.scenarios]
    if opts.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"SUMO {sumo_version()}, one-hour episodes, fixed programmes, seed {opts.seed}, "
          f"{opts.stat} of {opts.repeats}; seconds of wall time")
    head = f"{'scenario':<12} {'bare':>6} {'harness':>8} {'+queues':>8} {'import':>7} {'+spawn':>7} {'ratio':>6}"
    head += f" {'traci':>6}" if opts.traci else ""
    print(head + f"  {'delay_s':>8} same   (ratio = harness / bare)")
    for r in rows:
        line = (f"{r['scenario']:<12} {r['bare_s']:6.2f} {r['harness_s']:8.2f} {r['harness_queues_s']:8.2f} "
                f"{r['import_libsumo_s']:7.2f} {r['harness_spawn_s']:7.2f} "
                f"{float(r['harness_s']) / float(r['bare_s']):6.2f}")
        line += f" {r['traci_s']:6.2f}" if opts.traci else ""
        print(line + f"  {r['mean_delay_s']:8.2f} {'yes' if r['same_kpis'] else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
