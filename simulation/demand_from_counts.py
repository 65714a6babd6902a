"""Demand from measured counts: a SUMO route file that replays what the detectors saw.

Counts are vehicles per SUMO edge (or lane: lanes are summed into their edge) per interval,
``{edge_or_lane: [(begin, end, vehicles), ...]}`` in simulation seconds (validated by
:func:`~simulation.counts.normalise_counts`). :func:`~simulation.counts.counts_from_measurements`
builds them from the edge's wire messages (:class:`~edge_agent.messages.Measurement`) and the
imported net's lane mapping.

:func:`demand_from_counts` samples vehicles with SUMO's ``tools/routeSampler.py`` (run with
``sys.executable`` from the ``eclipse-sumo`` wheel): for each interval it picks, from candidate
routes (:mod:`simulation.candidate_routes`: the scenario's own routes, weighted by how many of
its vehicles drive them), a multiset of routes whose passages over the counted edges match the
counts, and gives each vehicle a depart time in the interval. routeSampler does this well (an
integer matching over many edges, GEH < 5 on every count here), so there is no own method.

One correction is ours: routeSampler departs a vehicle at the start of its route at the time
it is counted, but a stop-bar detector sees it when it reaches the stop line. Each vehicle's
depart is moved earlier by the free-flow time from its departure to the end of the counted
edges on its route (the mean over them, when it passes several), not before the first count
interval. Measured on the generated corridor (stop-line counts per 300 s over 30 minutes, three
seeds): without the shift the replay's detectors counted 8 % fewer vehicles than measured (GEH
up to 3.5), with it 6 % fewer (GEH up to 2.7, every count under 5); the rest is signal delay,
which free flow leaves out. Vehicles get the scenario's most used vehicle type and
``departLane="best" departSpeed="max"`` unless told otherwise.

Limits. Detectors count vehicles served, not vehicles wanting to be served: when a period is
oversaturated, the queue that builds up is not in the counts, and the replay is lighter than
the demand that caused them (on the corridor's saturated peak the replay's mean delay is about
half the original's, for the same counts). Lane counts are summed per edge (routeSampler
matches edge counts); turning shares come from the candidate routes' weights.

Everything is seeded (duarouter, randomTrips, routeSampler, our depart shift is exact): the
same counts, scenario and seed give the same file, byte for byte.
"""

from __future__ import annotations

import bisect
import math
import statistics
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

from simulation.candidate_routes import CandidateRoutes, candidate_routes
from simulation.counts import (CountFidelity, CountRow, Counts, CountTable, compare_counts,
                               counts_from_measurements, geh, normalise_counts)
from simulation.net_xml import NetData, read_net
from simulation.scenario import Scenario, load_scenario
from simulation.sumo_binaries import sumo_env, tools_dir

# The count helpers live in simulation.counts; they are part of this module's interface too.
__all__ = ["CountFidelity", "CountTable", "SampledDemand", "compare_counts", "counts_from_measurements",
           "demand_from_counts", "geh", "normalise_counts"]

DEFAULT_VEHICLE_ATTRIBUTES = 'departLane="best" departSpeed="max"'
_SAMPLER_TIMEOUT_S = 600


# --------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class SampledDemand:
    """A route file sampled from counts.

    Attributes:
        path: the route file (vehicle types, then vehicles sorted by depart).
        vehicles: vehicles written.
        counts: the counts it was sampled from (per SUMO edge).
        sampling: routeSampler's match: the sampled routes' passages over the counted edges,
            per interval, against the counts (before the depart shift; no simulation).
        candidates: the candidate routes used (their file is gone unless they were passed in).
        begin, end: the counted time span (departs lie in ``[begin, end)``).
    """

    path: Path
    vehicles: int
    counts: dict[str, tuple[CountRow, ...]]
    sampling: CountFidelity
    candidates: CandidateRoutes
    begin: float
    end: float


def _edgedata_xml(table: dict[str, tuple[CountRow, ...]]) -> str:
    by_interval: dict[tuple[float, float], list[tuple[str, int]]] = {}
    for edge, rows in table.items():
        for b, e, n in rows:
            by_interval.setdefault((b, e), []).append((edge, n))
    lines = ["<data>"]
    for (b, e), edges in sorted(by_interval.items()):
        lines.append(f'    <interval id="counts" begin="{b:g}" end="{e:g}">')
        lines += [f'        <edge id={quoteattr(edge)} entered="{n}"/>' for edge, n in edges]
        lines.append("    </interval>")
    return "\n".join(lines + ["</data>", ""])


def _run_sampler(candidates: Path, counts: Path, out: Path, seed: int) -> None:
    cmd = [sys.executable, str(tools_dir() / "routeSampler.py"), "-r", str(candidates),
           "-d", str(counts), "-o", str(out), "--seed", str(int(seed)), "--weighted",
           "--prefix", "c"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=sumo_env(),
                              timeout=_SAMPLER_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"routeSampler did not finish within {_SAMPLER_TIMEOUT_S} s") from exc
    # routeSampler exits 0 after some errors ("no input routes loaded"): check its output too.
    if done.returncode != 0 or not out.is_file():
        tail = (done.stderr or done.stdout).strip()[-2000:]
        raise RuntimeError(f"routeSampler failed (exit {done.returncode}): {tail}")


def demand_from_counts(counts: Counts | CountTable, scenario: Scenario | str | Path,
                       out: str | Path, *, seed: int = 0, candidates: CandidateRoutes | None = None,
                       vehicle_type: str | None = None,
                       vehicle_attributes: str = DEFAULT_VEHICLE_ATTRIBUTES,
                       align_to_detectors: bool = True) -> SampledDemand:
    """Write a route file to ``out`` whose vehicles reproduce ``counts`` on the scenario's net.

    Args:
        counts: per edge or lane, ``(begin, end, vehicles)`` rows (see :func:`normalise_counts`),
            or a :class:`CountTable`.
        scenario: the net, and the demand the candidate routes come from.
        out: the route file to write.
        seed: seeds duarouter, randomTrips and routeSampler.
        candidates: candidate routes to reuse (default: :func:`candidate_routes`).
        vehicle_type: type of every vehicle (default: the scenario's most used type).
        vehicle_attributes: further ``<vehicle>`` attributes, as XML text.
        align_to_detectors: move departs earlier by the free-flow time to the counted edges'
            stop lines (see the module docstring).

    Raises:
        ValueError: bad counts (see :func:`normalise_counts`), no counts at all, or a counted
            edge no route passes.
        RuntimeError: a SUMO tool failed.
    """
    scen = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    net = read_net(scen.net_file)
    table = normalise_counts(counts, net)
    if not any(n for rows in table.values() for _, _, n in rows):
        raise ValueError("counts: no vehicle counted at all; there is no demand to sample")
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="tsc-counts-") as tmp:
        work = Path(tmp)
        cands = candidates or candidate_routes(scen, work, seed=seed, counted_edges=table)
        missing = cands.covers(e for e, rows in table.items() if any(n for _, _, n in rows))
        if missing:
            raise ValueError(f"no candidate route passes counted edge(s) {', '.join(missing)}")
        counts_file = work / "counts.xml"
        counts_file.write_text(_edgedata_xml(table), encoding="utf-8")
        raw = work / "sampled.rou.xml"
        _run_sampler(cands.path, counts_file, raw, seed)
        vehicles = [(float(v.get("depart", "0")), v.get("id", ""), tuple(route.get("edges", "").split()))
                    for v in ET.parse(raw).getroot().iter("vehicle")
                    if (route := v.find("route")) is not None]
    begin = min(b for rows in table.values() for b, _, _ in rows)
    end = max(e for rows in table.values() for _, e, _ in rows)
    sampling = compare_counts(table, _passages(vehicles, table))
    vtype = vehicle_type if vehicle_type is not None else cands.default_type
    if align_to_detectors:
        times = _free_flow_times(net, cands.max_speed.get(vtype or "", math.inf))
        vehicles = [(max(begin, depart - _lead(route, table, times)), vid, route)
                    for depart, vid, route in vehicles]
    vehicles.sort(key=lambda v: (round(v[0], 2), v[1]))
    _write_routes(out, cands, vehicles, vtype, vehicle_attributes)
    return SampledDemand(out, len(vehicles), table, sampling, cands, begin, end)


def _passages(vehicles: list[tuple[float, str, tuple[str, ...]]],
              table: dict[str, tuple[CountRow, ...]]) -> dict[str, tuple[CountRow, ...]]:
    """Sampled vehicles per counted edge and interval (a vehicle counts in its depart's interval)."""
    hits = {edge: [0] * len(rows) for edge, rows in table.items()}
    begins = {edge: [b for b, _, _ in rows] for edge, rows in table.items()}
    for depart, _, route in vehicles:
        for edge in set(route) & hits.keys():
            k = bisect.bisect_right(begins[edge], depart) - 1
            if k >= 0 and depart < table[edge][k][1]:
                hits[edge][k] += 1
    return {edge: tuple((b, e, hits[edge][k]) for k, (b, e, _) in enumerate(rows))
            for edge, rows in table.items()}


def _free_flow_times(net: NetData, speed_cap: float) -> dict[str, float]:
    """Seconds to drive each edge at its speed limit (or the vehicle type's maximum speed)."""
    sizes: dict[str, tuple[float, float]] = {}
    for lane in net.lanes.values():
        length, speed = sizes.get(lane.edge, (0.0, 0.0))
        sizes[lane.edge] = (max(length, lane.length), max(speed, lane.speed))
    return {edge: length / min(speed, speed_cap) if min(speed, speed_cap) > 0 else 0.0
            for edge, (length, speed) in sizes.items()}


def _lead(route: tuple[str, ...], counted: Mapping[str, object], times: Mapping[str, float]) -> float:
    """Mean free-flow time from departure to the end of each counted edge on the route."""
    elapsed, leads = 0.0, []
    for edge in route:
        elapsed += times.get(edge, 0.0)
        if edge in counted:
            leads.append(elapsed)
    return statistics.fmean(leads) if leads else 0.0


def _write_routes(out: Path, cands: CandidateRoutes, vehicles: list[tuple[float, str, tuple[str, ...]]],
                  vtype: str | None, attributes: str) -> None:
    type_attr = f" type={quoteattr(vtype)}" if vtype else ""
    extra = f" {attributes.strip()}" if attributes.strip() else ""
    lines = ["<routes>"] + ["    " + t for t in cands.types_xml]
    for depart, vid, route in vehicles:
        lines.append(f'    <vehicle id={quoteattr(vid)} depart="{depart:.2f}"{type_attr}{extra}>'
                     f'<route edges={quoteattr(" ".join(route))}/></vehicle>')
    lines.append("</routes>\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines), encoding="utf-8")
