"""Read the parts of a SUMO ``.net.xml`` that signal import needs, without starting SUMO.

Plain XML parsing (``xml.etree.ElementTree.iterparse``) keeps import usable on a laptop or an
edge box with neither SUMO nor libsumo installed, and is fast enough for city nets: elements
are cleared as soon as they are read. Only lanes, edges, connections, junctions (with their
right-of-way requests) and traffic-light programmes are kept.
"""

from __future__ import annotations

import gzip
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Connection", "Junction", "Lane", "NetData", "TlLogic", "TlPhase", "read_net"]


@dataclass(frozen=True, slots=True)
class Lane:
    """A lane: ``function`` is its edge's function ("" for normal roads, else e.g. internal)."""

    id: str
    edge: str
    index: int
    speed: float
    length: float
    function: str


@dataclass(frozen=True, slots=True)
class Connection:
    """A ``<connection>`` from lane ``from_lane`` of ``from_edge`` to ``to_lane`` of ``to_edge``."""

    from_edge: str
    to_edge: str
    from_lane: int
    to_lane: int
    via: str | None
    tl: str | None
    link_index: int | None
    dir: str
    state: str

    @property
    def from_lane_id(self) -> str:
        return f"{self.from_edge}_{self.from_lane}"

    @property
    def to_lane_id(self) -> str:
        return f"{self.to_edge}_{self.to_lane}"


@dataclass(frozen=True, slots=True)
class Junction:
    """A junction and its right-of-way logic; ``foes[i]`` is request ``i``'s foes bit string."""

    id: str
    type: str
    inc_lanes: tuple[str, ...]
    int_lanes: tuple[str, ...]
    foes: dict[int, str]

    def are_foes(self, a: int, b: int) -> bool:
        """True when junction links ``a`` and ``b`` are foes (either request says so).

        SUMO writes the bit of link ``j`` at position ``len - 1 - j`` (rightmost is link 0).
        """
        for x, y in ((a, b), (b, a)):
            bits = self.foes.get(x)
            if bits is not None and 0 <= y < len(bits) and bits[len(bits) - 1 - y] == "1":
                return True
        return False


@dataclass(frozen=True, slots=True)
class TlPhase:
    """One ``<phase>`` of a ``<tlLogic>``; ``min_dur``/``max_dur`` only where the net gives them."""

    state: str
    duration: float
    min_dur: float | None = None
    max_dur: float | None = None


@dataclass(frozen=True, slots=True)
class TlLogic:
    """A traffic-light programme as written in the net."""

    id: str
    type: str
    program_id: str
    offset: float
    phases: tuple[TlPhase, ...]


@dataclass(slots=True)
class NetData:
    """What :func:`read_net` keeps of a net file."""

    lanes: dict[str, Lane] = field(default_factory=dict)
    edge_to_node: dict[str, str] = field(default_factory=dict)
    connections: list[Connection] = field(default_factory=list)
    junctions: dict[str, Junction] = field(default_factory=dict)
    #: The programme SUMO activates per traffic light: the last ``<tlLogic>`` with that id
    #: (each programme SUMO loads becomes the tls's default, so the last one wins).
    tl_logics: dict[str, TlLogic] = field(default_factory=dict)
    #: Internal lane -> the internal lane a vehicle continues on (internal junctions split
    #: turning movements into two internal lanes; the junction lists the second one).
    internal_next: dict[str, str] = field(default_factory=dict)


def _float(value: str | None) -> float | None:
    return None if value is None else float(value)


def read_net(path: str | Path) -> NetData:
    """Parse a SUMO net file (plain or gzipped)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    data = NetData()
    edge_id, edge_function = "", ""
    with opener(path, "rb") as stream:
        for event, elem in ET.iterparse(stream, events=("start", "end")):
            tag = elem.tag
            if event == "start":
                if tag == "edge":
                    edge_id, edge_function = elem.get("id", ""), elem.get("function", "")
                    if elem.get("to"):
                        data.edge_to_node[edge_id] = elem.get("to", "")
                continue
            if tag == "lane" and edge_id:
                lane_id = elem.get("id", "")
                data.lanes[lane_id] = Lane(lane_id, edge_id, int(elem.get("index", "0")),
                                           float(elem.get("speed", "0")),
                                           float(elem.get("length", "0")), edge_function)
            elif tag == "edge":
                edge_id, edge_function = "", ""
                elem.clear()
            elif tag == "connection":
                _read_connection(elem, data)
                elem.clear()
            elif tag == "junction":
                _read_junction(elem, data)
                elem.clear()
            elif tag == "tlLogic":
                phases = tuple(
                    TlPhase(p.get("state", ""), float(p.get("duration", "0")),
                            _float(p.get("minDur")), _float(p.get("maxDur")))
                    for p in elem.iter("phase"))
                logic = TlLogic(elem.get("id", ""), elem.get("type", "static"),
                                elem.get("programID", "0"), float(elem.get("offset", "0")),
                                phases)
                data.tl_logics.pop(logic.id, None)  # keep file order of the winning programme
                data.tl_logics[logic.id] = logic
                elem.clear()
    return data


def _read_connection(elem: ET.Element, data: NetData) -> None:
    from_edge, to_edge = elem.get("from", ""), elem.get("to", "")
    from_lane, to_lane = int(elem.get("fromLane", "0")), int(elem.get("toLane", "0"))
    via = elem.get("via")
    if from_edge.startswith(":") and via:
        # An internal connection: remember how the internal lanes chain together.
        data.internal_next[f"{from_edge}_{from_lane}"] = via
    link = elem.get("linkIndex")
    data.connections.append(Connection(
        from_edge, to_edge, from_lane, to_lane, via, elem.get("tl"),
        int(link) if link is not None else None, elem.get("dir", "s"), elem.get("state", "")))


def _read_junction(elem: ET.Element, data: NetData) -> None:
    if elem.get("type") == "internal":
        return  # internal junctions hold no requests of their own
    foes = {int(r.get("index", "0")): r.get("foes", "") for r in elem.iter("request")}
    data.junctions[elem.get("id", "")] = Junction(
        elem.get("id", ""), elem.get("type", ""), tuple(elem.get("incLanes", "").split()),
        tuple(elem.get("intLanes", "").split()), foes)
