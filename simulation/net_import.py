"""Import the traffic lights of a SUMO net into the intersection model.

Every traffic light (tls) becomes one :class:`~edge_agent.model.Intersection` in the
general-sequence form: one ring, one barrier group, the green phases of the net's own programme
in programme order, numbered 1..n. The net is parsed as XML (:mod:`simulation.net_xml`), so
import needs neither SUMO nor libsumo.

* Movements: one per controlled link index, id ``l{index}``; approach = the incoming edge (for
  a pedestrian crossing, the crossing itself); turn from the connection's ``dir``; lanes = the
  incoming lane(s). SUMO ids are sanitised to the contract's identifier pattern (characters
  outside ``A-Za-z0-9_.:-`` become ``_``, ids over 64 characters are cut and given a hash
  suffix, clashes get ``-2``, ``-3``...); :class:`ImportedNet` keeps the way back.
* Phases: a programme entry with a ``G``/``g`` and no ``y`` is a green phase serving its green
  links. Its yellow is the total of the following entries showing a ``y``, its red clearance
  the total of the following transitional entries without one (all-red), up to the next green.
  ``min_green`` = ``minDur`` if given, else min(5 s, duration); ``max_green`` = ``maxDur`` if
  given, else max(60 s, duration); a minDur or maxDur that excludes the designer's own duration
  is widened to admit it (and listed as an adjustment).
* Floors: clearance policy ``hard-floors`` keeps the designer's clearance times where they meet
  the hard floors. A yellow under 3.0 s (MUTCD, :data:`~edge_agent.guard.YELLOW_FLOOR_S`) is
  raised to 3.0 s, and every raised value is listed in :attr:`ImportedNet.adjustments`. A red
  clearance over 6 s is refused (ValueError naming the tls): shortening it is not safe.
* Conflicts: two links conflict when the junction's right-of-way logic marks them foes (the
  ``foes`` bits of its ``<request>`` rows; a link's junction index is found through its
  internal lanes in the junction's ``intLanes``, falling back to SUMO's enumeration order for
  nets without internal lanes; a joined tls spanning several junctions only pairs links of the
  same junction) EXCEPT when the designer's programme shows both green (``G``/``g``) in some
  entry: such pairs are permissive movements that yield to each other (a ``g`` left turn
  against a ``G`` through), permitted rather than hard conflicts. Links from the same incoming
  lane never conflict.
* Detectors, per controlled vehicle lane: a 2 m stop-bar loop 1 m upstream of the stop line, a
  2 m advance loop 40 m upstream (clipped to the lane; left out where the lane is too short to
  keep it 5 m from the stop line), and a queue (lane-area) detector over the last 100 m; per
  departure lane (not an approach of the same light), an ``exit`` spillback loop 10 m down it
  (half the lane if shorter) naming the movements into it.
* Cycle bounds: min(30 s, programme cycle) .. max(180 s, programme cycle with floors).

Pedestrian crossings become pedestrian movements, but their phases time no crossing
(``crossing_length_m`` 0): a SUMO programme has no separate walk and clearance intervals, so the
designer's crossing timing is kept as it is rather than checked against MUTCD walk rules.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import msgspec.structs

from edge_agent.guard import RED_CLEARANCE_MAX_S, YELLOW_FLOOR_S
from edge_agent.model import (ApproachConfig, ClearancePolicy, Detector, DetectorKind,
                              Intersection, Movement, Phase, Turn)
from edge_agent.plan import TimingPlan
from simulation.net_xml import Connection, NetData, TlLogic, read_net
from simulation.site_toml import site_toml
from simulation.sumo_program import GREEN, program_to_plan, split_program

__all__ = ["Adjustment", "ImportedNet", "LinkRef", "import_net", "write_site_config"]

DEFAULT_MIN_GREEN_S = 5.0
DEFAULT_MAX_GREEN_S = 60.0
CYCLE_MIN_S = 30.0
CYCLE_MAX_S = 180.0
STOP_BAR_SETBACK_M = 1.0
LOOP_LENGTH_M = 2.0
ADVANCE_M = 40.0
ADVANCE_MIN_M = 5.0
QUEUE_M = 100.0
EXIT_M = 10.0  # spillback loops this far down each departure lane

_TURNS = {"s": Turn.THROUGH, "l": Turn.LEFT, "L": Turn.LEFT, "r": Turn.RIGHT,
          "R": Turn.RIGHT, "t": Turn.UTURN}
_BAD = re.compile(r"[^A-Za-z0-9_.:\-]")


class LinkRef(NamedTuple):
    """A controlled link in SUMO terms (the first connection where several share the index)."""

    index: int
    from_lane: str
    to_lane: str
    via: str | None


@dataclass(frozen=True, slots=True)
class Adjustment:
    """A designer's value that import changed: a yellow raised to the floor, or a ``minDur`` /
    ``maxDur`` widened to admit the designer's own green duration."""

    tls: str
    phase: int
    field: str
    designed: float
    used: float

    def __str__(self) -> str:
        return f"{self.tls} phase {self.phase}: {self.field} {self.designed:g} s -> {self.used:g} s"


@dataclass(frozen=True)
class ImportedNet:
    """The traffic lights of one net, in our model and with the way back to SUMO ids.

    Every mapping is keyed by SUMO tls id except ``tls_ids`` (intersection id -> tls id),
    ``lanes`` (sanitised lane id -> SUMO lane id) and ``edges`` (approach id -> SUMO edge id).
    ``programs`` is the designer's programme as written, ``phase_states[tls][n]`` the designer's
    state of green phase ``n``.
    """

    net_path: str
    intersections: dict[str, Intersection]
    tls_ids: dict[str, str]
    links: dict[str, dict[str, LinkRef]]
    lanes: dict[str, str]
    edges: dict[str, str]
    phase_states: dict[str, dict[int, str]]
    programs: dict[str, tuple[tuple[str, float], ...]]
    program_ids: dict[str, str]
    offsets: dict[str, float]
    adjustments: tuple[Adjustment, ...]

    def designer_plan(self, tls_id: str, *, plan_id: int = 1, **kwargs: Any) -> TimingPlan:
        """The designer's own programme as a plan, with the import's floors applied.

        Unless ``offset`` is given, it is where the first phase's green starts in the cycle:
        SUMO starts the programme's first entry ``offset`` s into each cycle (a positive
        offset delays the programme), and transitional entries may come before that green.
        """
        program = self.programs[tls_id]
        plan = program_to_plan(program, self.intersections[tls_id], self.phase_states[tls_id],
                               plan_id=plan_id, lenient=True, apply_floors=True, **kwargs)
        if "offset" in kwargs:
            return plan
        lead = sum(d for _, d in program[:split_program(program)[0].entry])
        return msgspec.structs.replace(plan, offset=(self.offsets[tls_id] + lead) % plan.cycle)


class _Names:
    """Sanitised, unique identifiers for one namespace, remembering the originals."""

    def __init__(self) -> None:
        self.by_original: dict[str, str] = {}
        self.original: dict[str, str] = {}

    def __call__(self, original: str) -> str:
        found = self.by_original.get(original)
        if found is not None:
            return found
        name = _BAD.sub("_", original) or "_"
        if len(name) > 64:  # keep it readable and still unique: a prefix plus a short hash
            name = name[:55] + "-" + hashlib.sha1(original.encode()).hexdigest()[:8]
        base, k = name, 2
        while name in self.original:
            suffix = f"-{k}"
            name, k = base[:64 - len(suffix)] + suffix, k + 1
        self.by_original[original], self.original[name] = name, original
        return name


def import_net(net_path: str | Path, *, tls_ids: list[str] | None = None) -> ImportedNet:
    """Import every traffic light of ``net_path`` (or those named in ``tls_ids``).

    Raises ValueError naming the tls for programmes that cannot be imported: no green phase,
    a state shorter than the links it controls, or a red clearance over 6 s.
    """
    data = read_net(net_path)
    wanted = list(data.tl_logics) if tls_ids is None else list(tls_ids)
    unknown = [t for t in wanted if t not in data.tl_logics]
    if unknown:
        raise ValueError(f"{net_path}: no traffic light {', '.join(map(repr, unknown))}")
    controlled: dict[str, list[Connection]] = {}
    for conn in data.connections:
        if conn.tl is not None and conn.link_index is not None:
            controlled.setdefault(conn.tl, []).append(conn)
    index_of = _JunctionIndex(data)
    tls_names, edge_names, lane_names, det_names = _Names(), _Names(), _Names(), _Names()
    intersections: dict[str, Intersection] = {}
    builders: dict[str, _TlsImport] = {}
    adjustments: list[Adjustment] = []
    for tls in wanted:
        builders[tls] = _TlsImport(tls, data.tl_logics[tls], controlled.get(tls, []), data,
                                   index_of, edge_names, lane_names, det_names, adjustments)
        intersections[tls] = builders[tls].build(tls_names(tls))
    return ImportedNet(
        net_path=str(net_path), intersections=intersections,
        tls_ids={i.id: tls for tls, i in intersections.items()},
        links={tls: b.links for tls, b in builders.items()},
        lanes=dict(lane_names.original), edges=dict(edge_names.original),
        phase_states={tls: b.phase_states for tls, b in builders.items()},
        programs={tls: b.program for tls, b in builders.items()},
        program_ids={tls: data.tl_logics[tls].program_id for tls in wanted},
        offsets={tls: data.tl_logics[tls].offset for tls in wanted},
        adjustments=tuple(adjustments))


def write_site_config(imported: ImportedNet, path: str | Path, site: str) -> Path:
    """Write the imported intersections as a site file that :func:`load_site` accepts."""
    header = [f"Imported from {imported.net_path} by simulation.net_import.",
              "Intersection names are the SUMO traffic-light ids; movement l<i> is link i."]
    header += [f"Adjusted to the hard floors: {a}" for a in imported.adjustments]
    path = Path(path)
    path.write_text(site_toml(site, imported.intersections.values(), header), encoding="utf-8")
    return path


class _JunctionIndex:
    """A controlled connection's junction and its index in that junction's requests."""

    def __init__(self, data: NetData) -> None:
        self.data = data
        self.int_pos = {lane: (j.id, i) for j in data.junctions.values()
                        for i, lane in enumerate(j.int_lanes)}
        self._enumerated: dict[Connection, tuple[str, int]] | None = None

    def __call__(self, conn: Connection) -> tuple[str, int] | None:
        lanes: list[str] = []
        lane = conn.via
        while lane is not None and lane not in lanes:  # follow the via chain through the node
            lanes.append(lane)
            lane = self.data.internal_next.get(lane)
        to_lane = self.data.lanes.get(conn.to_lane_id)
        if to_lane is not None and to_lane.function == "crossing":
            lanes.append(to_lane.id)  # crossings are listed in intLanes by their own lane
        for lane in lanes:
            if lane in self.int_pos:
                return self.int_pos[lane]
        return self._enumerate().get(conn)

    def _enumerate(self) -> dict[Connection, tuple[str, int]]:
        # Nets without internal lanes: SUMO numbers a junction's links by incoming lane (in
        # incLanes order), then by the lane's connections in file order (as sumolib does).
        if self._enumerated is None:
            by_lane: dict[str, list[Connection]] = {}
            for conn in self.data.connections:
                by_lane.setdefault(conn.from_lane_id, []).append(conn)
            self._enumerated = {}
            for junction in self.data.junctions.values():
                k = 0
                for lane in junction.inc_lanes:
                    for conn in by_lane.get(lane, []):
                        to_fn = self.data.lanes[conn.to_lane_id].function \
                            if conn.to_lane_id in self.data.lanes else ""
                        from_fn = self.data.lanes[lane].function if lane in self.data.lanes else ""
                        if to_fn == "walkingarea" or (from_fn == "walkingarea"
                                                      and to_fn != "crossing"):
                            continue
                        self._enumerated[conn] = (junction.id, k)
                        k += 1
        return self._enumerated


class _TlsImport:
    """Builds one intersection; ``links``, ``phase_states`` and ``program`` are kept for the
    :class:`ImportedNet`."""

    def __init__(self, tls: str, logic: TlLogic, conns: list[Connection], data: NetData,
                 index_of: _JunctionIndex, edge_names: _Names, lane_names: _Names,
                 det_names: _Names, adjustments: list[Adjustment]) -> None:
        self.tls, self.logic, self.data, self.index_of = tls, logic, data, index_of
        self.edge_names, self.lane_names, self.det_names = edge_names, lane_names, det_names
        self.adjustments = adjustments
        self.program = tuple((p.state, p.duration) for p in logic.phases)
        if not self.program:
            raise ValueError(f"tls {tls!r}: programme {logic.program_id!r} has no phases")
        self.width = len(self.program[0][0])
        if any(len(state) != self.width for state, _ in self.program):
            raise ValueError(f"tls {tls!r}: programme states differ in length")
        self.by_index: dict[int, list[Connection]] = {}
        for conn in sorted(conns, key=lambda c: c.link_index or 0):
            self.by_index.setdefault(conn.link_index or 0, []).append(conn)
        if not self.by_index:
            raise ValueError(f"tls {tls!r}: controls no connection")
        if max(self.by_index) >= self.width:
            raise ValueError(f"tls {tls!r}: link index {max(self.by_index)} but states have "
                             f"{self.width} characters")
        self.links: dict[str, LinkRef] = {}
        self.phase_states: dict[int, str] = {}

    def _is_pedestrian(self, conn: Connection) -> bool:
        functions = {lane.function for lane in (self.data.lanes.get(conn.from_lane_id),
                                                self.data.lanes.get(conn.to_lane_id)) if lane}
        return bool(functions & {"crossing", "walkingarea"})

    def build(self, intersection_id: str) -> Intersection:
        approaches: dict[str, list[str]] = {}  # SUMO edge -> SUMO lanes, first seen first
        exits: dict[str, list[str]] = {}  # departure lane -> the movements into it
        movements = []
        for index, conns in self.by_index.items():
            first = conns[0]
            pedestrian = self._is_pedestrian(first)
            if not pedestrian:
                for c in conns:
                    exits.setdefault(c.to_lane_id, []).append(f"l{index}")
            edge = first.to_edge if pedestrian else first.from_edge
            lanes = list(dict.fromkeys(c.to_lane_id if pedestrian else c.from_lane_id
                                       for c in conns))
            for lane in lanes:
                if lane not in approaches.setdefault(edge, []):
                    approaches[edge].append(lane)
            self.links[f"l{index}"] = LinkRef(index, first.from_lane_id, first.to_lane_id,
                                               first.via)
            movements.append(Movement(
                id=f"l{index}", approach=self.edge_names(edge),
                turn=Turn.PEDESTRIAN if pedestrian else _TURNS.get(first.dir, Turn.THROUGH),
                lanes=tuple(self.lane_names(lane) for lane in lanes)))
        phases, floored_cycle = self._phases()
        cycle = sum(duration for _, duration in self.program)
        return Intersection(
            id=intersection_id, name=self.tls, approaches=self._approaches(approaches),
            movements=tuple(movements), phases=phases,
            rings=((tuple(p.number for p in phases),),), conflicts=self._conflicts(),
            cycle_min=float(min(CYCLE_MIN_S, cycle)),
            cycle_max=float(max(CYCLE_MAX_S, cycle, floored_cycle)),
            clearance_policy=ClearancePolicy.HARD_FLOORS,
            detectors=self._detectors(approaches) + self._exit_detectors(approaches, exits))

    def _approaches(self, approaches: dict[str, list[str]]) -> tuple[ApproachConfig, ...]:
        out = []
        for edge, lanes in approaches.items():
            lanes = sorted(lanes, key=lambda lane: self.data.lanes[lane].index
                           if lane in self.data.lanes else 0)
            speed = max((self.data.lanes[lane].speed for lane in lanes
                         if lane in self.data.lanes), default=0.0)
            out.append(ApproachConfig(id=self.edge_names(edge), speed_mps=speed,
                                      lanes=tuple(self.lane_names(lane) for lane in lanes)))
        return tuple(out)

    def _phases(self) -> tuple[tuple[Phase, ...], float]:
        phases, floored_cycle = [], 0.0
        for group in split_program(self.program):
            n, green = group.phase, group.green
            served = tuple(f"l{i}" for i, c in enumerate(group.state)
                           if c in GREEN and i in self.by_index)
            if not served:
                raise ValueError(f"tls {self.tls!r}: green phase {n} serves no controlled link")
            if group.red > RED_CLEARANCE_MAX_S:
                raise ValueError(f"tls {self.tls!r}: phase {n} red clearance {group.red:g} s "
                                 f"exceeds {RED_CLEARANCE_MAX_S:g} s")
            yellow = self._floor(n, "yellow", group.yellow, max(group.yellow, YELLOW_FLOOR_S))
            sumo = self.logic.phases[group.entry]
            min_green = min(DEFAULT_MIN_GREEN_S, green) if sumo.min_dur is None else \
                self._floor(n, "min_green", sumo.min_dur, min(sumo.min_dur, green))
            max_green = max(DEFAULT_MAX_GREEN_S, green) if sumo.max_dur is None else \
                self._floor(n, "max_green", sumo.max_dur, max(sumo.max_dur, green))
            self.phase_states[n] = group.state
            floored_cycle += green + yellow + group.red
            phases.append(Phase(number=n, movements=served, min_green=float(min_green),
                                max_green=float(max_green), yellow=float(yellow),
                                red_clearance=float(group.red), name=group.state))
        return tuple(phases), floored_cycle

    def _floor(self, phase: int, field: str, designed: float, used: float) -> float:
        if used != designed:
            self.adjustments.append(Adjustment(self.tls, phase, field, designed, used))
        return used

    def _conflicts(self) -> tuple[tuple[str, str], ...]:
        together: dict[int, int] = {}  # link -> bit mask of programme entries showing it green
        for k, (state, _) in enumerate(self.program):
            for i, c in enumerate(state):
                if c in GREEN:
                    together[i] = together.get(i, 0) | (1 << k)
        where = {i: [self.index_of(c) for c in conns] for i, conns in self.by_index.items()}
        lanes = {i: {c.from_lane_id for c in conns} for i, conns in self.by_index.items()}
        indices = sorted(self.by_index)
        out = []
        for pos, a in enumerate(indices):
            for b in indices[pos + 1:]:
                if together.get(a, 0) & together.get(b, 0) or lanes[a] & lanes[b]:
                    continue
                if any(ja is not None and jb is not None and ja[0] == jb[0]
                       and self.data.junctions[ja[0]].are_foes(ja[1], jb[1])
                       for ja in where[a] for jb in where[b]):
                    out.append((f"l{a}", f"l{b}"))
        return tuple(out)

    def _exit_detectors(self, approaches: dict[str, list[str]],
                        exits: dict[str, list[str]]) -> tuple[Detector, ...]:
        """A spillback loop ``EXIT_M`` down each departure lane, naming the movements into it
        (a lane that is also an approach of this light, inside a joined cluster, has none)."""
        inbound = {lane for lanes in approaches.values() for lane in lanes}
        out = []
        for lane_id, movements in exits.items():
            lane = self.data.lanes.get(lane_id)
            if lane is None or lane_id in inbound or lane.length <= 0.0:
                continue
            at = min(EXIT_M, lane.length / 2)
            out.append(Detector(id=self.det_names(f"{lane_id}_exit"), kind=DetectorKind.EXIT,
                                lane=self.lane_names(lane_id), position_m=at,
                                length_m=min(LOOP_LENGTH_M, lane.length - at),
                                movements=tuple(dict.fromkeys(movements))))
        return tuple(out)

    def _detectors(self, approaches: dict[str, list[str]]) -> tuple[Detector, ...]:
        out = []
        for lanes in approaches.values():
            for lane_id in lanes:
                lane = self.data.lanes.get(lane_id)
                if lane is None or lane.function in ("crossing", "walkingarea") \
                        or lane.length <= 0.0:
                    continue
                name, length = self.lane_names(lane_id), lane.length
                stop = min(STOP_BAR_SETBACK_M, length / 2)
                out.append(Detector(id=self.det_names(f"{lane_id}_stop"),
                                    kind=DetectorKind.STOP_BAR, lane=name, position_m=stop,
                                    length_m=min(LOOP_LENGTH_M, length - stop)))
                advance = min(ADVANCE_M, length - LOOP_LENGTH_M)
                if advance >= ADVANCE_MIN_M:
                    out.append(Detector(id=self.det_names(f"{lane_id}_adv"),
                                        kind=DetectorKind.ADVANCE, lane=name,
                                        position_m=advance, length_m=LOOP_LENGTH_M))
                out.append(Detector(id=self.det_names(f"{lane_id}_queue"),
                                    kind=DetectorKind.QUEUE, lane=name, position_m=0.0,
                                    length_m=min(QUEUE_M, length)))
        return tuple(out)
