"""Candidate routes for sampling demand from counts: the routes a scenario's own demand uses.

:func:`candidate_routes` writes a route file of distinct ``<route>`` elements, each with a
``probability`` equal to the number of vehicles of the scenario's demand that drive it, plus
the scenario's vehicle types. Where the routes come from, in order:

1. The scenario's route files, when every vehicle and flow there has its route (embedded, by
   reference, or as a route distribution): taken as they are (arterial4x4, grid4x4, cologne3).
2. Otherwise (``<trip>`` elements or flows with ``from``/``to``: cologne1, ingolstadt*, the
   generated corridor) SUMO's ``duarouter`` routes the scenario's own demand (seeded), and the
   routes it finds are the candidates: the origin-destination pattern of the demand is kept.
3. When a counted edge is on none of those routes (or the scenario has no demand at all),
   ``tools/randomTrips.py`` adds routes across the whole net (seeded, trips starting and ending
   at the fringe preferred), each with weight 1, so that every counted edge can be served.

Every tool runs from the ``eclipse-sumo`` wheel (:mod:`simulation.sumo_binaries`), with
``sys.executable`` for the Python tools; the ``SUMO_HOME`` variable is never trusted.
"""

from __future__ import annotations

import math
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

from simulation.scenario import Scenario, ScenarioError, parse_sumo_time
from simulation.sumo_binaries import find_binary, sumo_env, tools_dir

__all__ = ["CandidateRoutes", "RouteSummary", "candidate_routes", "read_routes"]

#: randomTrips trips per edge of the net when routes have to be added.
RANDOM_TRIPS_PER_EDGE = 5
_TOOL_TIMEOUT_S = 600


@dataclass(frozen=True)
class CandidateRoutes:
    """A route file of candidate routes for ``routeSampler`` and what went into it.

    Attributes:
        path: the file: ``<vType>``/``<vTypeDistribution>`` elements, then one
            ``<route id=... edges=... probability=.../>`` per distinct route.
        source: where the routes came from (see the module docstring).
        routes: edge sequences and their weights.
        default_type: the vehicle type most of the scenario's demand uses (None: SUMO's default).
        max_speed: maximum speed of each vehicle type defined in the file that sets one.
        types_xml: the vehicle type elements, as XML text.
    """

    path: Path
    source: str
    routes: dict[tuple[str, ...], float]
    default_type: str | None
    max_speed: dict[str, float]
    types_xml: tuple[str, ...] = ()

    def covers(self, edges: Iterable[str]) -> list[str]:
        """The edges of ``edges`` that no candidate route passes."""
        on_routes = {e for route in self.routes for e in route}
        return sorted(set(edges) - on_routes)


@dataclass
class RouteSummary:
    """What :func:`read_routes` found: vehicles per distinct route, vehicle type elements,
    vehicles per type, and the number of trips and flows without a route (duarouter's job)."""

    routes: Counter
    types: list[ET.Element]
    type_use: Counter
    unrouted: int


def _flow_count(elem: ET.Element) -> float:
    """Expected vehicles of a ``<flow>`` (SUMO's defaults: begin 0, end 24 h)."""
    begin = parse_sumo_time(elem.get("begin", "0"))
    end = parse_sumo_time(elem.get("end", "86400"))
    span = max(end - begin, 0.0)
    if elem.get("number") is not None:
        return float(elem.get("number", "0"))
    if elem.get("vehsPerHour") is not None:
        return span * float(elem.get("vehsPerHour", "0")) / 3600.0
    period = elem.get("period")
    if period is not None:
        text = period.strip()
        if text.startswith("exp("):
            return span * float(text[4:-1])
        seconds = parse_sumo_time(text)
        return span / seconds if seconds > 0 else 0.0
    if elem.get("probability") is not None:
        return span * float(elem.get("probability", "0"))
    return 1.0


def read_routes(files: Iterable[Path]) -> RouteSummary:
    """Routes, vehicle types and type usage of route files (weights: vehicles per route)."""
    parsed = RouteSummary(Counter(), [], Counter(), 0)
    for path in files:
        try:
            root = ET.parse(path).getroot()
        except (ET.ParseError, OSError) as exc:
            raise ScenarioError(f"cannot read route file {path}: {exc}") from exc
        named: dict[str, list[tuple[str, ...]]] = {}
        for elem in root:
            if elem.tag == "route" and elem.get("edges"):
                named[elem.get("id", "")] = [tuple(elem.get("edges", "").split())]
            elif elem.tag == "routeDistribution":
                named[elem.get("id", "")] = [tuple(r.get("edges", "").split())
                                             for r in elem.iter("route") if r.get("edges")]
        referenced: set[str] = set()
        for elem in root:
            if elem.tag in ("vType", "vTypeDistribution"):
                parsed.types.append(elem)
                continue
            if elem.tag not in ("vehicle", "flow", "trip"):
                continue
            weight = _flow_count(elem) if elem.tag == "flow" else 1.0
            parsed.type_use[elem.get("type", "DEFAULT_VEHTYPE")] += weight
            routes = _routes_of(elem, named)
            if elem.get("route") in named:
                referenced.add(elem.get("route", ""))
            if not routes:
                parsed.unrouted += 1
                continue
            for route in routes:
                parsed.routes[route] += weight / len(routes)
        for name, routes in named.items():  # defined but never used: still a candidate
            if name not in referenced:
                for route in routes:
                    parsed.routes[route] += 1.0
    return parsed


def _routes_of(elem: ET.Element, named: dict[str, list[tuple[str, ...]]]) -> list[tuple[str, ...]]:
    if elem.tag == "trip":
        return []
    if elem.get("route") is not None:
        return named.get(elem.get("route", ""), [])
    child = elem.find("route")
    if child is not None and child.get("edges"):
        return [tuple(child.get("edges", "").split())]
    dist = elem.find("routeDistribution")
    if dist is not None:
        return [tuple(r.get("edges", "").split()) for r in dist.iter("route") if r.get("edges")]
    return []


def _run_tool(cmd: list[str], what: str) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=sumo_env(),
                              timeout=_TOOL_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{what} did not finish within {_TOOL_TIMEOUT_S} s: {' '.join(cmd)}") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-2000:]
        raise RuntimeError(f"{what} failed (exit {done.returncode}): {tail}")


def _duarouter(scenario: Scenario, folder: Path, seed: int) -> Path:
    out = folder / "duarouter.rou.xml"
    cmd = [str(find_binary("duarouter")), "-n", str(scenario.net_file),
           "--route-files", ",".join(str(p) for p in scenario.route_files),
           "-o", str(out), "--seed", str(int(seed)), "--ignore-errors", "true",
           "--no-step-log", "true", "--write-license", "false"]
    types_in_adds = [p for p in scenario.additional_files if _defines_types(p)]
    if types_in_adds:
        cmd += ["--additional-files", ",".join(str(p) for p in types_in_adds)]
    _run_tool(cmd, "duarouter")
    return out


def _defines_types(path: Path) -> bool:
    try:
        return any(e.tag in ("vType", "vTypeDistribution") for e in ET.parse(path).getroot())
    except (ET.ParseError, OSError) as exc:
        raise ScenarioError(f"cannot read additional file {path}: {exc}") from exc


def _random_trips(scenario: Scenario, folder: Path, seed: int) -> Path:
    edges = sum(1 for e in ET.parse(scenario.net_file).getroot().iter("edge")
                if e.get("function", "") == "")
    trips = max(RANDOM_TRIPS_PER_EDGE * edges, 50)
    routes = folder / "random.rou.xml"
    _run_tool([sys.executable, str(tools_dir() / "randomTrips.py"), "-n", str(scenario.net_file),
               "-o", str(folder / "random.trips.xml"), "-r", str(routes), "--seed", str(int(seed)),
               "--begin", "0", "--end", str(trips), "--period", "1", "--fringe-factor", "10",
               "--validate", "--prefix", "rnd"], "randomTrips.py")
    return routes


def candidate_routes(scenario: Scenario, folder: str | Path, *, seed: int = 0,
                     counted_edges: Iterable[str] = ()) -> CandidateRoutes:
    """Write ``folder/candidates.rou.xml`` from the scenario's demand (see the module docstring).

    Args:
        scenario: its route files give the routes and vehicle types.
        folder: where the candidate file and the tools' outputs go (created if needed).
        seed: seed for duarouter and randomTrips: same inputs and seed, same file.
        counted_edges: edges that carry counts; random routes are added if one is on no route.

    Raises:
        ValueError: a counted edge is on no candidate route even after adding random ones.
        RuntimeError: duarouter or randomTrips failed (their message is included).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    own = read_routes(scenario.route_files)
    parsed, source = own, "the scenario's routes"
    if own.unrouted:
        routed = read_routes([_duarouter(scenario, folder, seed)])
        parsed = RouteSummary(routed.routes, own.types, own.type_use, 0)
        source = "duarouter on the scenario's trips and flows"
    counted = set(counted_edges)
    routes = Counter(parsed.routes)
    if not routes or counted - {e for r in routes for e in r}:
        for route in read_routes([_random_trips(scenario, folder, seed)]).routes:
            routes.setdefault(route, 1.0)  # a possibility, not a measured preference
        source = f"{source} and randomTrips routes" if parsed.routes else "randomTrips routes"
    if not routes:
        raise ValueError(f"no route can be found on {scenario.net_file}")
    default = max(sorted(own.type_use), key=lambda t: own.type_use[t]) if own.type_use else None
    type_ids = {t.get("id") for t in own.types}
    if default == "DEFAULT_VEHTYPE" or (default is not None and default not in type_ids
                                        and not _type_in(scenario.additional_files, default)):
        default = None
    path = folder / "candidates.rou.xml"
    types_xml = tuple(ET.tostring(t, encoding="unicode").strip() for t in own.types)
    lines = ["<routes>"] + ["    " + t for t in types_xml]
    ordered = sorted(routes.items())
    for k, (edges, weight) in enumerate(ordered):
        lines.append(f'    <route id="cand{k}" edges={quoteattr(" ".join(edges))} '
                     f'probability="{max(weight, 1e-6):.6g}"/>')
    lines.append("</routes>\n")
    path.write_text("\n".join(lines), encoding="utf-8")
    result = CandidateRoutes(path, source, dict(ordered), default, _max_speeds(own.types), types_xml)
    missing = result.covers(counted)
    if missing:
        raise ValueError(f"no route of {source} passes counted edge(s) {', '.join(missing)}; "
                         f"check that they are edges of {scenario.net_file} that vehicles may use")
    return result


def _type_in(files: Iterable[Path], type_id: str) -> bool:
    return any(e.get("id") == type_id for p in files for e in ET.parse(p).getroot()
               if e.tag in ("vType", "vTypeDistribution"))


def _max_speeds(types: list[ET.Element]) -> dict[str, float]:
    out = {}
    for t in types:
        for vtype in ([t] if t.tag == "vType" else list(t.iter("vType"))):
            raw = vtype.get("maxSpeed")
            if raw is not None and math.isfinite(float(raw)) and float(raw) > 0:
                out[vtype.get("id", "")] = float(raw)
    return out
