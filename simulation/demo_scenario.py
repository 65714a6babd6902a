"""A scenario the project generates itself, so it is ours to ship and demo.

A corridor of signalised intersections built with SUMO's ``netgenerate`` (a 1 x N grid with
approach legs) and time-varying demand of our own: a main-street peak that builds up and
fades, with lighter cross-street traffic. Generation is deterministic for a given seed.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

from simulation.sumo_binaries import find_binary

__all__ = ["generate_corridor"]

# (start s, end s, main-street vehicles/h per direction, cross-street vehicles/h per leg)
DEMAND_PROFILE = ((0, 600, 500, 120), (600, 1500, 900, 180), (1500, 2400, 650, 150),
                  (2400, 3600, 400, 100))


def generate_corridor(folder: str | Path, *, intersections: int = 3, spacing_m: float = 300.0,
                      seed: int = 1, duration_s: float = 3600.0) -> Path:
    """Write ``corridor.net.xml``, ``corridor.rou.xml`` and ``corridor.sumocfg`` into ``folder``.

    Returns the ``.sumocfg`` path. Files already there are reused when the inputs match (the
    name of the config records them), so repeated demos start at once.
    """
    if intersections < 1:
        raise ValueError(f"intersections must be >= 1, got {intersections}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tag = f"corridor-{intersections}x{int(spacing_m)}-s{seed}-{int(duration_s)}"
    cfg = folder / f"{tag}.sumocfg"
    if cfg.exists():
        return cfg
    net = folder / f"{tag}.net.xml"
    subprocess.run([
        str(find_binary("netgenerate")), "--grid", "--grid.x-number", str(intersections),
        "--grid.y-number", "1", "--grid.x-length", str(spacing_m), "--grid.y-length", "200",
        "--grid.attach-length", "250", "--default.lanenumber", "2", "--default.speed", "13.89",
        "--tls.guess", "true", "--tls.default-type", "static", "--tls.yellow.time", "4",
        "--no-turnarounds", "true", "--seed", str(seed), "-o", str(net)],
        check=True, capture_output=True, text=True)
    routes = folder / f"{tag}.rou.xml"
    routes.write_text(_demand(net, seed, duration_s), encoding="utf-8")
    cfg.write_text(f"""<configuration>
  <input>
    <net-file value="{net.name}"/>
    <route-files value="{routes.name}"/>
  </input>
  <time>
    <begin value="0"/>
    <end value="{int(duration_s)}"/>
  </time>
</configuration>
""", encoding="utf-8")
    return cfg


def _demand(net: Path, seed: int, duration_s: float) -> str:
    """Flows from every entry leg to every exit leg, main-street through traffic heaviest."""
    import sumolib  # the simulation extra provides it; imported here to keep import light

    graph = sumolib.net.readNet(str(net))
    sources = sorted(e for e in graph.getEdges() if e.getFromNode().getType() == "dead_end")
    sinks = sorted(e for e in graph.getEdges() if e.getToNode().getType() == "dead_end")
    y_main = sorted(e.getToNode().getCoord()[1] for e in sources)[len(sources) // 2]
    rng = random.Random(seed)
    lines = ['<routes>', '  <vType id="car" accel="2.6" decel="4.5" sigma="0.5" length="5" '
             'maxSpeed="16.7"/>']
    for k, (start, end, main, cross) in enumerate(DEMAND_PROFILE):
        if start >= duration_s:
            break
        end = min(end, duration_s)
        for src in sources:
            x0, y0 = src.getFromNode().getCoord()
            on_main = y0 == y_main  # the west and east legs of the main street
            rate = main if on_main else cross
            targets = [d for d in sinks if d.getToNode().getCoord() != (x0, y0)]
            # Main street: 80 % continue to the far end, the rest turn off; side streets
            # spread evenly. Each flow gets a little jitter so directions differ.
            far = max(targets, key=lambda d: abs(d.getToNode().getCoord()[0] - x0))
            for dst in targets:
                share = (0.8 if dst is far else 0.2 / (len(targets) - 1)) if on_main \
                    else 1.0 / len(targets)
                vph = rate * share * rng.uniform(0.9, 1.1)
                lines.append(f'  <flow id="f{k}_{src.getID()}_{dst.getID()}" type="car" '
                             f'begin="{start}" end="{end}" from="{src.getID()}" '
                             f'to="{dst.getID()}" vehsPerHour="{vph:.1f}" departLane="best" '
                             f'departSpeed="max"/>')
    lines.append("</routes>")
    return "\n".join(lines) + "\n"
