"""The controllers on networks that are NOT in the repository, side by side in one run.

The RESCO six are the development set; these networks judge whether the adaptive controller's
one parameter set generalises. Every network and demand is generated here, deterministically
(fixed seeds), from SUMO's own generators:

* ``corridor8``: :func:`simulation.demo_scenario.generate_corridor` with 8 signals 250 m apart
  and its demand times ``--corridor-scale`` (default 1.2): heavy main-street platoons, a long
  corridor where arriving on red costs.
* ``grid-irregular``: a 5 x 3 grid of signals with irregular block lengths (110-420 m), two-lane
  arterials and one-lane cross streets, built with ``netconvert`` from node and edge lists;
  demand from SUMO's ``randomTrips.py`` (a trip every 0.9 s, mostly fringe to fringe, fixed
  seed).
* ``random``: ``netgenerate --rand`` (an irregular network, 36 signals guessed by netconvert's
  rules, many with 3-5 phases), demand from ``randomTrips.py`` (one trip a second, fixed seed).

Prints delay over every vehicle of the demand (never-inserted ones charged too) for each
controller, its ratio to the best baseline and to fixed time and max-pressure, and how many
vehicles never entered.

    .venv/bin/python benchmarks/generalisation.py --seeds 1
    .venv/bin/python benchmarks/generalisation.py --networks corridor8 --controllers fixed,adaptive
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from simulation.cli import run_many, summary
from simulation.demo_scenario import generate_corridor
from simulation.net_import import import_net
from simulation.sumo_binaries import find_binary, sumo_env, tools_dir

OUT = Path(__file__).resolve().parents[1] / "out" / "generalisation"
NETWORKS = ("corridor8", "grid-irregular", "random")
CONTROLLERS = ("fixed", "actuated", "max-pressure", "adaptive")
BASELINES = ("fixed", "actuated", "max-pressure", "webster")
CFG = """<configuration>
  <input>
    <net-file value="{net}"/>
    <route-files value="{routes}"/>
  </input>
  <time>
    <begin value="0"/>
    <end value="3600"/>
  </time>
</configuration>
"""


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=sumo_env())


def corridor8(folder: Path, scale: float) -> Path:
    """8 signals, 250 m apart; the demo's main-street peak demand times ``scale``."""
    cfg = generate_corridor(folder / "base", intersections=8, spacing_m=250.0, seed=2)
    text = (cfg.parent / cfg.name.replace(".sumocfg", ".rou.xml")).read_text(encoding="utf-8")
    scaled = re.sub(r'vehsPerHour="([0-9.]+)"',
                    lambda m: f'vehsPerHour="{float(m.group(1)) * scale:.1f}"', text)
    routes = folder / f"corridor8-x{scale:g}.rou.xml"
    routes.write_text(scaled, encoding="utf-8")
    net = folder / "corridor8.net.xml"
    net.write_bytes((cfg.parent / cfg.name.replace(".sumocfg", ".net.xml")).read_bytes())
    out = folder / f"corridor8-x{scale:g}.sumocfg"
    out.write_text(CFG.format(net=net.name, routes=routes.name), encoding="utf-8")
    return out


def _random_trips(net: Path, routes: Path, period: float, seed: int) -> None:
    _run([sys.executable, str(tools_dir() / "randomTrips.py"), "-n", str(net),
          "-o", str(routes.with_suffix(".trips.xml")), "-r", str(routes), "-b", "0",
          "-e", "3600", "-p", f"{period:g}", "--seed", str(seed), "--fringe-factor", "10",
          "--min-distance", "300", "--validate", "--vehicle-class", "passenger",
          "--trip-attributes", 'departLane="best" departSpeed="max"'])


def grid_irregular(folder: Path, period: float) -> Path:
    """5 x 3 signals, block lengths 110-420 m; east-west arterials with two lanes."""
    xs = [0.0, 250.0, 360.0, 780.0, 1000.0, 1300.0, 1550.0]  # first and last: dead ends
    ys = [0.0, 230.0, 600.0, 720.0, 950.0]
    nodes, edges = [], []
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            inner_x, inner_y = 0 < i < len(xs) - 1, 0 < j < len(ys) - 1
            if not inner_x and not inner_y:
                continue  # corners
            kind = "traffic_light" if inner_x and inner_y else "priority"
            nodes.append(f'  <node id="n{i}_{j}" x="{x}" y="{y}" type="{kind}"/>')
    ids = {n.split('"')[1] for n in nodes}

    def edge(a: str, b: str, lanes: int, speed: float) -> None:
        if a in ids and b in ids:
            for u, v in ((a, b), (b, a)):
                edges.append(f'  <edge id="{u}-{v}" from="{u}" to="{v}" numLanes="{lanes}" '
                             f'speed="{speed}"/>')

    for j in range(1, len(ys) - 1):  # arterials
        for i in range(len(xs) - 1):
            edge(f"n{i}_{j}", f"n{i + 1}_{j}", 2, 13.89)
    for i in range(1, len(xs) - 1):  # cross streets
        for j in range(len(ys) - 1):
            edge(f"n{i}_{j}", f"n{i}_{j + 1}", 1, 11.11)
    nod, edg = folder / "grid-irregular.nod.xml", folder / "grid-irregular.edg.xml"
    nod.write_text("<nodes>\n" + "\n".join(nodes) + "\n</nodes>\n", encoding="utf-8")
    edg.write_text("<edges>\n" + "\n".join(edges) + "\n</edges>\n", encoding="utf-8")
    net = folder / "grid-irregular.net.xml"
    _run([str(find_binary("netconvert")), "-n", str(nod), "-e", str(edg), "-o", str(net),
          "--no-turnarounds", "true", "--tls.default-type", "static", "--tls.yellow.time", "4",
          "--seed", "3"])
    routes = folder / f"grid-irregular-p{period:g}.rou.xml"
    _random_trips(net, routes, period, seed=42)
    out = folder / f"grid-irregular-p{period:g}.sumocfg"
    out.write_text(CFG.format(net=net.name, routes=routes.name), encoding="utf-8")
    return out


def random_net(folder: Path, period: float) -> Path:
    """An irregular random network (netgenerate --rand, fixed seed), signals guessed."""
    net = folder / "random.net.xml"
    _run([str(find_binary("netgenerate")), "--rand", "--rand.iterations", "60",
          "--rand.min-distance", "120", "--rand.max-distance", "320", "--rand.connectivity",
          "0.95", "--default.lanenumber", "2", "--default.speed", "13.89", "--tls.guess",
          "true", "--tls.guess.threshold", "40", "--tls.default-type", "static",
          "--tls.yellow.time", "4", "--no-turnarounds", "true", "--seed", "7", "-o", str(net)])
    routes = folder / f"random-p{period:g}.rou.xml"
    _random_trips(net, routes, period, seed=42)
    out = folder / f"random-p{period:g}.sumocfg"
    out.write_text(CFG.format(net=net.name, routes=routes.name), encoding="utf-8")
    return out


def build(name: str, args: argparse.Namespace) -> Path:
    folder = Path(args.out) / name
    folder.mkdir(parents=True, exist_ok=True)
    if name == "corridor8":
        return corridor8(folder, args.corridor_scale)
    if name == "grid-irregular":
        return grid_irregular(folder, args.grid_period)
    if name == "random":
        return random_net(folder, args.random_period)
    raise SystemExit(f"unknown network {name!r}; known: {', '.join(NETWORKS)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--seconds", type=float, help="shorter horizon (default: one hour)")
    parser.add_argument("--networks", default=",".join(NETWORKS))
    parser.add_argument("--controllers", default=",".join(CONTROLLERS))
    parser.add_argument("--out", default=str(OUT), help="where the networks are written")
    parser.add_argument("--corridor-scale", type=float, default=1.2,
                        help="corridor8: demand of the demo corridor times this")
    parser.add_argument("--grid-period", type=float, default=0.9,
                        help="grid-irregular: randomTrips period (s between departures)")
    parser.add_argument("--random-period", type=float, default=1.0,
                        help="random: randomTrips period (s between departures)")
    args = parser.parse_args(argv)
    names = args.controllers.split(",")
    print(f"{'network':<16}{'controller':<14}{'delay s/veh':>12}{'vs best base':>13}"
          f"{'vs fixed':>9}{'vs max-p':>9}{'never in':>9}{'signals':>8}")
    for network in args.networks.split(","):
        cfg = build(network, args)
        net = re.search(r'net-file value="([^"]+)"', cfg.read_text(encoding="utf-8")).group(1)
        signals = len(import_net(cfg.parent / net).intersections)
        runs = run_many(str(cfg), names, args.seeds, args.seconds, progress=False)
        rows = {n: summary(runs[n], n) for n in names}
        delay = {n: r["mean_delay_s"] for n, r in rows.items()}
        base = [delay[n] for n in names if n in BASELINES]
        best = min(base) if base else None

        def ratio(value: float, ref: float | None) -> str:
            return f"{value / ref:.2f}" if ref else "-"

        for n in names:
            print(f"{network:<16}{n:<14}{delay[n]:>12.1f}{ratio(delay[n], best):>13}"
                  f"{ratio(delay[n], delay.get('fixed')):>9}"
                  f"{ratio(delay[n], delay.get('max-pressure')):>9}"
                  f"{rows[n]['never_inserted']:>9.0f}{signals:>8}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
