"""SUMO scenarios: which files make up a network and its demand, and the demand itself.

A :class:`Scenario` is loaded from a ``.sumocfg`` (or a folder holding exactly one), or from a
folder holding one ``*.net.xml`` plus ``*.rou.xml`` files. The episode window (``begin``,
``end``) comes from the cfg, because RESCO encodes its one-hour episodes there (cologne1:
25200-28800, grid4x4: 0-3600, ingolstadt*: 57600-61200).

:func:`read_demand` lists every vehicle the route files plan to insert in a window, so that
KPIs can charge vehicles SUMO never inserted (they appear in no SUMO output at all).
"""

from __future__ import annotations

import gzip
import math
import os
import re
import xml.etree.ElementTree as ET
import xml.parsers.expat
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

__all__ = [
    "Demand", "PlannedVehicle", "Scenario", "ScenarioError", "check_well_formed", "load_scenario", "read_demand",
]

#: Episode length used when neither the cfg nor the caller gives an end (RESCO's one hour).
DEFAULT_EPISODE_S = 3600.0

# SUMO accepts these names for the options we read (long name first, then synonyms).
_OPTION_NAMES = {
    "net": ("net-file", "net", "n"),
    "routes": ("route-files", "routes", "r"),
    "additional": ("additional-files", "additional", "a"),
    "begin": ("begin", "b"),
    "end": ("end", "e"),
}
# SUMO splits file lists on commas (and tolerates spaces/semicolons around them).
_FILE_LIST_SPLIT = re.compile(r"[,;\s]+")


class ScenarioError(ValueError):
    """A scenario path or file is missing or malformed; the message names the path."""


@dataclass(frozen=True)
class Scenario:
    """The files of one SUMO scenario and its episode window (simulation seconds).

    Attributes:
        name: short name (the cfg's stem, or the folder's name).
        net_file: the network.
        route_files: demand files, in SUMO's loading order.
        additional_files: additional files (detectors, programmes, sometimes demand).
        begin: episode start, seconds of simulation time.
        end: episode end (exclusive: the last simulated step starts at ``end - step``).
        config_file: the ``.sumocfg`` it came from, or None for a net+routes folder.
    """

    name: str
    net_file: Path
    route_files: tuple[Path, ...]
    additional_files: tuple[Path, ...]
    begin: float
    end: float
    config_file: Path | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.begin) or not math.isfinite(self.end) or self.end <= self.begin:
            raise ScenarioError(f"scenario {self.name!r}: end ({self.end}) must be after begin ({self.begin})")

    @property
    def duration(self) -> float:
        """Length of the episode window in seconds."""
        return self.end - self.begin

    def sumo_args(self) -> list[str]:
        """Return SUMO command-line arguments naming the scenario's input files.

        With a cfg, ``-c`` is used so that any other setting in it (step length, ...) applies
        exactly as in RESCO; callers append ``--begin``/``--end`` and outputs, which override it.
        """
        if self.config_file is not None:
            return ["-c", str(self.config_file)]
        args = ["-n", str(self.net_file)]
        if self.route_files:
            args += ["-r", ",".join(str(p) for p in self.route_files)]
        if self.additional_files:
            args += ["-a", ",".join(str(p) for p in self.additional_files)]
        return args

    def demand_files(self) -> tuple[Path, ...]:
        """Files SUMO reads vehicles from: route files, then additional files."""
        return self.route_files + self.additional_files


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Load a scenario from a ``.sumocfg``, a folder with one ``.sumocfg``, or a net+routes folder.

    A folder without a cfg must hold exactly one ``*.net.xml`` (or ``.net.xml.gz``); all its
    ``*.rou.xml`` files are the demand and ``*.add.xml`` files the additionals; the episode is
    0 to 3600 s. In a cfg, missing ``begin`` means 0 and missing ``end`` means begin + 3600 s.

    Raises:
        ScenarioError: (a ValueError) the path, or a file the cfg names, is missing or malformed.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ScenarioError(f"scenario path does not exist: {p}")
    if p.is_file():
        if not p.name.endswith(".sumocfg"):
            raise ScenarioError(f"not a .sumocfg file: {p}")
        return _from_config(p.resolve())
    cfgs = sorted(p.glob("*.sumocfg"))
    if len(cfgs) > 1:
        names = ", ".join(c.name for c in cfgs)
        raise ScenarioError(f"scenario folder {p} holds several .sumocfg files ({names}); pass one of them")
    if cfgs:
        return _from_config(cfgs[0].resolve())
    return _from_folder(p.resolve())


def check_well_formed(scenario: Scenario) -> None:
    """Check that every input file of the scenario is well-formed XML.

    SUMO 1.28 crashes (segmentation fault) on a truncated or malformed net file instead of
    reporting it; inside libsumo that kills the caller's process, so check first. Streaming
    with expat costs about 10 ms per MB.

    Raises:
        ScenarioError: a file is not well-formed; the message names the file and line.
    """
    for path in (scenario.net_file, *scenario.route_files, *scenario.additional_files):
        parser = xml.parsers.expat.ParserCreate()
        opener = gzip.open if path.name.endswith(".gz") else open
        try:
            with opener(path, "rb") as fh:
                parser.ParseFile(fh)
        except xml.parsers.expat.ExpatError as exc:
            raise ScenarioError(f"{path} is not well-formed XML: {exc}") from None
        except OSError as exc:
            raise ScenarioError(f"cannot read {path}: {exc}") from exc


def _from_config(cfg: Path) -> Scenario:
    try:
        root = ET.parse(cfg).getroot()
    except ET.ParseError as exc:
        raise ScenarioError(f"cannot parse SUMO config {cfg}: {exc}") from exc
    values = _config_values(root)
    base = cfg.parent
    if not values.get("net"):
        raise ScenarioError(f"SUMO config {cfg} names no net-file")
    net = _existing(base, values["net"], cfg, "net-file")
    routes = tuple(_existing(base, f, cfg, "route-files") for f in _split_files(values.get("routes", "")))
    adds = tuple(_existing(base, f, cfg, "additional-files") for f in _split_files(values.get("additional", "")))
    begin = _time_value(values.get("begin"), 0.0, cfg, "begin")
    end = _time_value(values.get("end"), -1.0, cfg, "end")
    if end < 0:  # SUMO's "no end"; an episode needs one
        end = begin + DEFAULT_EPISODE_S
    name = cfg.name[: -len(".sumocfg")]
    if end <= begin:
        raise ScenarioError(f"SUMO config {cfg}: end ({end}) must be after begin ({begin})")
    return Scenario(name, net, routes, adds, begin, end, config_file=cfg)


def _from_folder(folder: Path) -> Scenario:
    nets = sorted(folder.glob("*.net.xml")) + sorted(folder.glob("*.net.xml.gz"))
    if len(nets) != 1:
        what = "no *.net.xml" if not nets else f"{len(nets)} *.net.xml files"
        raise ScenarioError(f"scenario folder {folder} has no .sumocfg and {what} (need exactly one)")
    routes = tuple(sorted(folder.glob("*.rou.xml")) + sorted(folder.glob("*.rou.xml.gz")))
    if not routes:
        raise ScenarioError(f"scenario folder {folder} has no .sumocfg and no *.rou.xml route files")
    adds = tuple(sorted(folder.glob("*.add.xml")))
    return Scenario(folder.name, nets[0], routes, adds, 0.0, DEFAULT_EPISODE_S, config_file=None)


def _config_values(root: ET.Element) -> dict[str, str]:
    """Map our option keys to the cfg's values (``<net-file value=..."/>`` anywhere in the tree)."""
    found: dict[str, str] = {}
    for elem in root.iter():
        for key, names in _OPTION_NAMES.items():
            if elem.tag in names and key not in found:
                value = elem.get("value", elem.text or "")
                found[key] = value.strip()
    return found


def _split_files(value: str) -> list[str]:
    return [part for part in _FILE_LIST_SPLIT.split(value.strip()) if part]


def _existing(base: Path, name: str, cfg: Path, option: str) -> Path:
    path = (base / name).resolve()
    if not path.is_file():
        raise ScenarioError(f"SUMO config {cfg}: {option} {name!r} not found at {path}")
    return path


def _time_value(raw: str | None, default: float, cfg: Path, option: str) -> float:
    if raw is None or raw == "":
        return default
    try:
        return parse_sumo_time(raw)
    except ValueError:
        raise ScenarioError(f"SUMO config {cfg}: {option} value {raw!r} is not a time") from None


def parse_sumo_time(raw: str) -> float:
    """Parse a SUMO time: seconds (``"25200"``, ``"3.5"``) or ``[D:]HH:MM:SS``.

    Raises:
        ValueError: the text is neither.
    """
    text = raw.strip()
    if ":" not in text:
        return float(text)
    parts = [float(x) for x in text.split(":")]
    if len(parts) not in (3, 4):
        raise ValueError(f"bad SUMO time {raw!r}")
    seconds = parts[-3] * 3600 + parts[-2] * 60 + parts[-1]
    return seconds + (parts[0] * 86400 if len(parts) == 4 else 0.0)


# --------------------------------------------------------------------------- demand


@dataclass(frozen=True, slots=True)
class PlannedVehicle:
    """One vehicle the demand plans to insert: SUMO id, planned depart, and source element."""

    id: str
    depart: float
    kind: str  # "vehicle", "trip" or "flow"


@dataclass(frozen=True)
class Demand:
    """Vehicles planned to depart in ``[begin, end)``, sorted by planned depart.

    Attributes:
        vehicles: the planned vehicles.
        begin: window start; vehicles planned earlier are not counted (SUMO discards them too).
        end: window end (exclusive; SUMO does not insert a vehicle planned at ``end``).
        approximate: True if a random flow (``probability`` or ``period="exp(...)"``) was
            expanded by its expected count; the ids and departs are then estimates.
        skipped: vehicles whose depart is not a time (``triggered``, ...) and were not counted.
        unsorted_ignored: vehicles SUMO ignores because their route file is not sorted by
            depart (see :func:`read_demand`); not counted as demand.
    """

    vehicles: tuple[PlannedVehicle, ...]
    begin: float
    end: float
    approximate: bool = False
    skipped: int = 0
    unsorted_ignored: int = 0

    @property
    def count(self) -> int:
        """Number of planned vehicles in the window."""
        return len(self.vehicles)

    def __len__(self) -> int:
        return len(self.vehicles)


def read_demand(files: Scenario | tuple[Path, ...] | list[Path], begin: float | None = None,
                end: float | None = None, step_length: float = 1.0) -> Demand:
    """List the vehicles planned to depart in ``[begin, end)`` from SUMO route files.

    Counted elements (anywhere in the files, as SUMO reads ``<routes>`` and ``<additional>``):

    * ``<vehicle>`` and ``<trip>``: one vehicle at ``depart`` (``depart="begin"`` means the
      window's begin; ``triggered`` and other non-time departs are skipped and counted in
      ``Demand.skipped``).
    * ``<flow>``: expanded as SUMO does for deterministic flows, with ids ``<flow id>.<k>``:
      ``period=P`` or ``vehsPerHour=V`` (P = 3600/V) give departs ``begin + k*P`` while
      ``< end``, capped by ``number`` if given; ``number=N`` alone spreads N departs evenly over
      ``[begin, end)``. Random flows are approximated by their expected count spread evenly
      (``probability=p``: ``p * duration / step_length``; ``period="exp(r)"``: ``r * duration``)
      and mark the result ``approximate``. A flow's default begin is 0 and end is 24 h.

    SUMO loads route files incrementally and silently drops (with only a warning) any element
    whose depart (a flow's begin) is earlier than one already read from the same file ("Route
    file should be sorted by departure time, ignoring ..."). Such elements are left out here
    too and counted in ``Demand.unsorted_ignored``, so demand matches what SUMO can insert.
    Additional files are loaded whole, so the rule is not applied to them.

    Args:
        files: a Scenario (its route and additional files) or the files themselves.
        begin, end: window; default to the Scenario's (required when passing files).
        step_length: simulation step, used to expand ``probability`` flows.
    """
    if isinstance(files, Scenario):
        begin = files.begin if begin is None else begin
        end = files.end if end is None else end
        paths = files.demand_files()
    else:
        paths = tuple(files)
        if begin is None or end is None:
            raise ValueError("read_demand: begin and end are required when passing files")
    incremental = set(files.route_files) if isinstance(files, Scenario) else set(paths)
    planned: list[PlannedVehicle] = []
    approximate = False
    skipped = unsorted = 0
    for path in paths:
        latest = -math.inf  # latest depart read so far from this file
        for elem in _demand_elements(Path(path)):
            if elem.tag == "flow":
                vehicles, approx = _expand_flow(elem, step_length)
                start = parse_sumo_time(elem.get("begin", "0"))
            else:
                raw = elem.get("depart", "")
                try:
                    start = begin if raw == "begin" else parse_sumo_time(raw)
                except ValueError:
                    skipped += 1
                    continue
                vehicles, approx = [PlannedVehicle(elem.get("id", ""), start, elem.tag)], False
            if path in incremental:
                if start < latest:
                    unsorted += sum(1 for v in vehicles if begin <= v.depart < end)
                    continue
                latest = start
            approximate = approximate or approx
            planned.extend(vehicles)
    in_window = [v for v in planned if begin <= v.depart < end]
    in_window.sort(key=lambda v: v.depart)  # stable: keeps file order among equal departs
    return Demand(tuple(in_window), float(begin), float(end), approximate, skipped, unsorted)


def _demand_elements(path: Path) -> Iterator[ET.Element]:
    """Yield ``vehicle``/``trip``/``flow`` elements of a route file, streaming (files get big)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            yield from _iter_tags(fh, path)
    except OSError as exc:
        raise ScenarioError(f"cannot read demand file {path}: {exc}") from exc


def _iter_tags(fh: IO[bytes], path: Path) -> Iterator[ET.Element]:
    depth = 0
    try:
        for event, elem in ET.iterparse(fh, events=("start", "end")):
            if event == "start":
                depth += 1
                continue
            depth -= 1
            # Demand elements are children of the root (<routes>/<additional>); nested
            # <route>/<stop> children are not vehicles.
            if depth == 1:
                if elem.tag in ("vehicle", "trip", "flow"):
                    yield elem
                elem.clear()
    except ET.ParseError as exc:
        raise ScenarioError(f"cannot parse demand file {path}: {exc}") from exc


def _expand_flow(elem: ET.Element, step_length: float) -> tuple[list[PlannedVehicle], bool]:
    fid = elem.get("id", "")
    begin = parse_sumo_time(elem.get("begin", "0"))
    end = parse_sumo_time(elem.get("end", "86400"))
    number = int(float(elem.get("number"))) if elem.get("number") is not None else None
    period_raw = elem.get("period")
    approximate = False
    if elem.get("vehsPerHour") is not None:
        period: float | None = 3600.0 / float(elem.get("vehsPerHour"))
    elif period_raw is not None and period_raw.strip().startswith("exp("):
        rate = float(period_raw.strip()[4:-1])
        period, approximate = 1.0 / rate, True
    elif period_raw is not None:
        period = parse_sumo_time(period_raw)
    elif elem.get("probability") is not None:
        prob = float(elem.get("probability"))
        period, approximate = (step_length / prob if prob > 0 else math.inf), True
    else:
        period = None
    if period is None:
        if number is None:
            raise ScenarioError(f"flow {fid!r} has none of number, period, vehsPerHour, probability")
        period = (end - begin) / number if number > 0 else math.inf
        count = number
    else:
        count = math.ceil((end - begin) / period - 1e-9) if math.isfinite(period) and end > begin else 0
        if number is not None:
            count = min(count, number) if elem.get("end") is not None else number
    return [PlannedVehicle(f"{fid}.{k}", begin + k * period, "flow") for k in range(max(count, 0))], approximate
