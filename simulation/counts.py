"""Measured vehicle counts: validation, conversion from wire messages, and comparison.

Counts are vehicles per SUMO edge (or lane: lanes are summed into their edge) per interval,
``{edge_or_lane: [(begin, end, vehicles), ...]}`` in simulation seconds. They are what
:func:`simulation.demand_from_counts.demand_from_counts` turns into a route file, and what
:func:`compare_counts` checks a replay against (GEH per count). Pure: no SUMO, no IO beyond
reading a net file when given a path.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_agent.messages import Measurement
from edge_agent.model import Turn
from simulation.net_import import ImportedNet
from simulation.net_xml import NetData, read_net

__all__ = ["CountFidelity", "CountRow", "CountTable", "Counts", "compare_counts",
           "counts_from_measurements", "geh", "normalise_counts"]

#: (begin s, end s, vehicles)
CountRow = tuple[float, float, int]
Counts = Mapping[str, Iterable[Sequence[float]]]


@dataclass(frozen=True)
class CountTable:
    """Counts per SUMO edge, and the edge intervals left out of them (with the reason)."""

    counts: dict[str, tuple[CountRow, ...]]
    dropped: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return sum(n for rows in self.counts.values() for _, _, n in rows)


def _edge_of(key: str, net: NetData) -> tuple[str, bool]:
    """(edge id, True if ``key`` is a lane) for a count key, or ValueError."""
    if key in net.lanes:
        lane = net.lanes[key]
        if lane.function:
            raise ValueError(f"counts: {key!r} is a {lane.function} lane, not a road lane")
        return lane.edge, True
    if any(lane.edge == key and not lane.function for lane in net.lanes.values()):
        return key, False
    raise ValueError(f"counts: {key!r} is neither an edge nor a lane of the net")


def _row(key: str, row: Sequence[float]) -> CountRow:
    if len(row) != 3:
        raise ValueError(f"counts for {key!r}: {tuple(row)!r} is not (begin, end, vehicles)")
    begin, end, vehicles = (float(x) for x in row)
    if not (math.isfinite(begin) and math.isfinite(end) and 0.0 <= begin < end):
        raise ValueError(f"counts for {key!r}: interval {begin:g}-{end:g} s must have 0 <= begin < end")
    if not (math.isfinite(vehicles) and vehicles >= 0 and vehicles == int(vehicles)):
        raise ValueError(f"counts for {key!r} at {begin:g}-{end:g} s: {vehicles!r} is not a whole "
                         f"number of vehicles >= 0")
    return begin, end, int(vehicles)


def normalise_counts(counts: Counts | CountTable,
                     net: NetData | str | Path) -> dict[str, tuple[CountRow, ...]]:
    """Validate counts and sum lane counts into their edges.

    Rules (each break raises ValueError naming the key and interval): keys are edges or road
    lanes of the net; rows are ``(begin, end, vehicles)`` with ``0 <= begin < end`` and a whole
    number of vehicles; an edge is counted either as a whole or by lanes, not both, and all its
    lanes report the same intervals; one edge's intervals do not overlap; every interval has
    the same length and they lie on one grid (routeSampler splits a longer interval among
    shorter ones and truncates the shares, losing vehicles).
    """
    if isinstance(counts, CountTable):
        counts = counts.counts
    data = net if isinstance(net, NetData) else read_net(net)
    whole: dict[str, dict[tuple[float, float], int]] = {}
    by_lane: dict[str, dict[str, dict[tuple[float, float], int]]] = {}
    for key, rows in counts.items():
        edge, is_lane = _edge_of(key, data)
        table: dict[tuple[float, float], int] = {}
        for raw in rows:
            begin, end, n = _row(key, raw)
            if (begin, end) in table:
                raise ValueError(f"counts for {key!r}: interval {begin:g}-{end:g} s given twice")
            table[(begin, end)] = n
        if is_lane:
            by_lane.setdefault(edge, {})[key] = table
        else:
            whole[edge] = table
    for edge, lanes in by_lane.items():
        if edge in whole:
            raise ValueError(f"counts: edge {edge!r} is counted as a whole and by lane "
                             f"({', '.join(sorted(lanes))}); give one or the other")
        intervals = {frozenset(t) for t in lanes.values()}
        if len(intervals) > 1:
            raise ValueError(f"counts: the lanes of edge {edge!r} ({', '.join(sorted(lanes))}) "
                             f"report different intervals")
        whole[edge] = {iv: sum(t[iv] for t in lanes.values()) for iv in next(iter(lanes.values()))}
    out = {edge: tuple(sorted((b, e, n) for (b, e), n in t.items())) for edge, t in whole.items() if t}
    _check_grid(out)
    return dict(sorted(out.items()))


def _check_grid(table: dict[str, tuple[CountRow, ...]]) -> None:
    for edge, rows in table.items():
        for (b0, e0, _), (b1, _, _) in zip(rows, rows[1:]):
            if b1 < e0:
                raise ValueError(f"counts for edge {edge!r}: intervals {b0:g}-{e0:g} s and from "
                                 f"{b1:g} s overlap")
    lengths = {round(e - b, 6) for rows in table.values() for b, e, _ in rows}
    if len(lengths) > 1:
        listed = ", ".join(f"{x:g}" for x in sorted(lengths))
        raise ValueError(f"counts: intervals have different lengths ({listed} s); aggregate them "
                         f"to one length")
    if lengths:
        length = lengths.pop()
        origin = min(b for rows in table.values() for b, _, _ in rows)
        for edge, rows in table.items():
            for b, e, _ in rows:
                if abs((b - origin) / length - round((b - origin) / length)) > 1e-6:
                    raise ValueError(f"counts for edge {edge!r}: interval {b:g}-{e:g} s is off the "
                                     f"{length:g} s grid starting at {origin:g} s")


def counts_from_measurements(measurements: Iterable[Measurement], imported: ImportedNet, *,
                             origin_posix: float, origin_sim: float = 0.0) -> CountTable:
    """Edge counts from measurement messages (``LaneMeasurement.count`` per lane and interval).

    A message's lanes are the imported intersection's sanitised lane ids; they map to SUMO
    lanes and edges through the intersection's approaches. Times become simulation seconds:
    ``interval_start - origin_posix + origin_sim``. A repeated message (same site,
    intersection and ``seq``: a QoS 1 redelivery or a spool replay) is read once.

    An edge interval is counted only when every lane of the edge ever reported is reported
    healthy in it; otherwise it is left out (not counted as zero: routeSampler then leaves the
    edge free in that interval) and listed in ``CountTable.dropped`` with the reason.

    Raises:
        ValueError: an unknown intersection or lane, a repeated ``seq`` with other content,
            or one lane reported twice for overlapping intervals.
    """
    seen: dict[tuple[str, str, int], Measurement] = {}
    readings: dict[str, dict[tuple[float, float], int | None]] = {}  # SUMO lane -> interval -> count
    edge_of: dict[str, str] = {}
    for m in measurements:
        key = (m.site, m.intersection_id, m.seq)
        if key in seen:
            if seen[key] != m:
                raise ValueError(f"measurement seq {m.seq} of {m.site}/{m.intersection_id} arrived "
                                 f"twice with different content")
            continue
        seen[key] = m
        lanes = _vehicle_lanes(imported, m.intersection_id)
        begin = m.interval_start - origin_posix + origin_sim
        interval = (round(begin, 3), round(begin + m.interval_s, 3))
        for reading in m.lanes:
            if reading.lane not in lanes:
                raise ValueError(f"measurement seq {m.seq} of {m.intersection_id}: lane "
                                 f"{reading.lane!r} is no vehicle lane of that intersection")
            lane, edge = lanes[reading.lane]
            edge_of[lane] = edge
            table = readings.setdefault(lane, {})
            clash = [iv for iv in table if iv[0] < interval[1] and interval[0] < iv[1]]
            if clash:
                raise ValueError(f"lane {reading.lane!r} of {m.intersection_id}: interval "
                                 f"{interval[0]:g}-{interval[1]:g} s overlaps {clash[0][0]:g}-"
                                 f"{clash[0][1]:g} s reported before")
            table[interval] = reading.count if reading.healthy else None
    edge_lanes: dict[str, set[str]] = {}
    for lane, edge in edge_of.items():
        edge_lanes.setdefault(edge, set()).add(lane)
    counts: dict[str, list[tuple[float, float, int]]] = {}
    dropped: list[str] = []
    for edge, lanes in sorted(edge_lanes.items()):
        intervals = sorted({iv for lane in lanes for iv in readings[lane]})
        for iv in intervals:
            bad = sorted(lane for lane in lanes if readings[lane].get(iv) is None)
            if bad:
                what = ", ".join(f"{lane} ({'unhealthy' if iv in readings[lane] else 'not reported'})"
                                 for lane in bad)
                dropped.append(f"edge {edge} {iv[0]:g}-{iv[1]:g} s: {what}")
                continue
            total = sum(readings[lane][iv] or 0 for lane in lanes)
            counts.setdefault(edge, []).append((iv[0], iv[1], total))
    return CountTable({e: tuple(rows) for e, rows in counts.items()}, tuple(dropped))


def _vehicle_lanes(imported: ImportedNet, intersection_id: str) -> dict[str, tuple[str, str]]:
    """Sanitised lane id -> (SUMO lane, SUMO edge) for the vehicle approaches of one intersection."""
    tls = imported.tls_ids.get(intersection_id)
    if tls is None:
        raise ValueError(f"measurement for {intersection_id!r}: no such intersection in "
                         f"{imported.net_path} (known: {', '.join(sorted(imported.tls_ids))})")
    x = imported.intersections[tls]
    # Pedestrian movements may share an approach with vehicles: keep the vehicle movements' lanes.
    vehicle = {lane for m in x.movements if m.turn != Turn.PEDESTRIAN for lane in m.lanes}
    return {lane: (imported.lanes[lane], imported.edges[a.id])
            for a in x.approaches for lane in a.lanes if lane in vehicle}


# --------------------------------------------------------------------------- fidelity


def geh(measured: float, modelled: float) -> float:
    """The GEH statistic ``sqrt(2 (m - c)^2 / (m + c))``; under 5 is a good match for an hour's
    count (the usual calibration target), 0 when both are 0."""
    total = measured + modelled
    return math.sqrt(2.0 * (measured - modelled) ** 2 / total) if total > 0 else 0.0


@dataclass(frozen=True)
class CountFidelity:
    """How well modelled counts reproduce measured ones, over every measured (edge, interval).

    ``worst`` is (edge, begin, end, measured, modelled) of the largest GEH.
    """

    cells: int
    max_geh: float
    mean_geh: float
    share_geh_below_5: float
    measured_total: int
    modelled_total: int
    worst: tuple[str, float, float, int, int] | None

    @property
    def total_error(self) -> float:
        """(modelled - measured) / measured over all cells."""
        return (self.modelled_total - self.measured_total) / self.measured_total \
            if self.measured_total else 0.0

    def __str__(self) -> str:
        return (f"{self.cells} counts: GEH max {self.max_geh:.2f}, mean {self.mean_geh:.2f}, "
                f"{100 * self.share_geh_below_5:.0f} % under 5; total {self.modelled_total} vs "
                f"{self.measured_total} measured ({100 * self.total_error:+.1f} %)")


def compare_counts(measured: Mapping[str, Sequence[CountRow]],
                   modelled: Mapping[str, Sequence[CountRow]]) -> CountFidelity:
    """Compare per measured (edge, interval); modelled rows inside the interval are summed."""
    cells = []
    for edge, rows in measured.items():
        for begin, end, n in rows:
            got = sum(c for b, e, c in modelled.get(edge, ()) if begin <= b and e <= end + 1e-9)
            cells.append((geh(n, got), edge, begin, end, n, got))
    if not cells:
        return CountFidelity(0, 0.0, 0.0, 1.0, 0, 0, None)
    worst = max(cells)
    return CountFidelity(
        cells=len(cells), max_geh=worst[0], mean_geh=statistics.fmean(c[0] for c in cells),
        share_geh_below_5=sum(1 for c in cells if c[0] < 5.0) / len(cells),
        measured_total=sum(c[4] for c in cells), modelled_total=sum(c[5] for c in cells),
        worst=worst[1:])
