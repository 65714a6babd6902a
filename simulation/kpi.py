"""Episode KPIs from SUMO's outputs, a per-step queue collector, and seed summaries.

Everything here except :class:`KpiCollector` is pure: it reads XML text or files and returns
values. Two delays are reported, because they rank controllers differently:

``mean_delay_s`` (strict; the headline number)
    Averaged over *every vehicle of the demand* (planned depart in ``[begin, end)``) plus any
    inserted vehicle not in it. An inserted vehicle counts ``timeLoss + departDelay`` (both up to
    the episode end if it has not arrived; needs ``--tripinfo-output.write-unfinished``). A
    vehicle never inserted counts ``end - planned depart``: the whole time it was owed entry
    and waited outside the network (the same value SUMO writes as ``departDelay`` for it with
    ``--tripinfo-output.write-undeparted``). A controller cannot look good by starving an origin.

``mean_delay_resco_s`` (RESCO's number, for comparison with published results)
    RESCO's ``readXML.py``: ``timeLoss + departDelay`` averaged over the vehicles in the
    tripinfo file (inserted ones, unfinished included), plus, for demand written as
    ``<vehicle>`` elements only, each vehicle planned to depart after the planned depart of the
    last-inserted vehicle charged ``end - planned depart``. Never-inserted ``<trip>``/``<flow>``
    vehicles are not charged at all (cologne1, ingolstadt*), and vehicles stuck in the insertion
    queue with an earlier planned depart are missed. Unlike RESCO, the demand is limited to the
    episode window (RESCO's files have nothing outside it anyway).
"""

from __future__ import annotations

import math
import os
import statistics as _stats
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from io import BytesIO
from typing import Any, Iterable, Iterator, Mapping, Sequence

from simulation.scenario import Demand

__all__ = [
    "KpiCollector",
    "Kpis",
    "QueueStats",
    "SeedSummary",
    "SimStatistics",
    "TripRecord",
    "compute_kpis",
    "mean_delay_resco",
    "mean_delay_strict",
    "parse_statistics",
    "parse_tripinfo",
    "summarise_seeds",
]

XmlSource = str | bytes | os.PathLike[str]


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class TripRecord:
    """One ``<tripinfo>`` element. Times in seconds; ``-1`` where SUMO writes it for "none"."""

    id: str
    depart: float  # actual insertion time; -1 if never inserted (write-undeparted)
    depart_delay: float
    arrival: float  # -1 if still running at the end (write-unfinished)
    duration: float
    time_loss: float
    waiting_time: float
    waiting_count: int
    route_length: float
    vaporized: str = ""  # why SUMO removed it early ("end" for unfinished), "" if it arrived

    @property
    def inserted(self) -> bool:
        """True if the vehicle entered the network."""
        return self.depart >= 0

    @property
    def arrived(self) -> bool:
        """True if the vehicle reached its destination before the end."""
        return self.arrival >= 0 and not self.vaporized


def _open_xml(source: XmlSource) -> Any:
    """Return something ``iterparse`` reads: XML text is wrapped, anything else is a path."""
    if isinstance(source, bytes):
        return BytesIO(source)
    if isinstance(source, str) and source.lstrip().startswith("<"):
        return BytesIO(source.encode("utf-8"))
    return os.fspath(source)


def _iter_elements(source: XmlSource, tag: str) -> Iterator[ET.Element]:
    for _, elem in ET.iterparse(_open_xml(source), events=("end",)):
        if elem.tag == tag:
            yield elem
            elem.clear()  # tripinfo files reach tens of MB; keep memory flat


def parse_tripinfo(source: XmlSource) -> list[TripRecord]:
    """Read the vehicles of a SUMO tripinfo file (path, or the XML text itself).

    Person and container trips (``<personinfo>``) are ignored.
    """
    records = []
    for el in _iter_elements(source, "tripinfo"):
        g = el.get
        records.append(TripRecord(
            id=g("id", ""),
            depart=float(g("depart", "-1")),
            depart_delay=float(g("departDelay", "0")),
            arrival=float(g("arrival", "-1")),
            duration=float(g("duration", "0")),
            time_loss=float(g("timeLoss", "0")),
            waiting_time=float(g("waitingTime", "0")),
            waiting_count=int(float(g("waitingCount", "0"))),
            route_length=float(g("routeLength", "0")),
            vaporized=g("vaporized", ""),
        ))
    return records


@dataclass(frozen=True)
class SimStatistics:
    """Counts from SUMO's ``--statistic-output`` file (None where the file lacks them)."""

    loaded: int | None = None
    inserted: int | None = None
    running: int | None = None
    waiting: int | None = None
    teleports: int | None = None
    teleports_jam: int | None = None
    teleports_yield: int | None = None
    teleports_wrong_lane: int | None = None
    collisions: int | None = None
    emergency_stops: int | None = None
    emergency_braking: int | None = None


def parse_statistics(source: XmlSource) -> SimStatistics:
    """Read SUMO's statistic output (path or XML text): vehicles, teleports, safety counts."""
    root = ET.parse(_open_xml(source)).getroot()

    def count(tag: str, attr: str) -> int | None:
        el = root.find(tag)
        raw = el.get(attr) if el is not None else None
        return int(float(raw)) if raw is not None else None

    return SimStatistics(
        loaded=count("vehicles", "loaded"), inserted=count("vehicles", "inserted"),
        running=count("vehicles", "running"), waiting=count("vehicles", "waiting"),
        teleports=count("teleports", "total"), teleports_jam=count("teleports", "jam"),
        teleports_yield=count("teleports", "yield"), teleports_wrong_lane=count("teleports", "wrongLane"),
        collisions=count("safety", "collisions"), emergency_stops=count("safety", "emergencyStops"),
        emergency_braking=count("safety", "emergencyBraking"),
    )


# --------------------------------------------------------------------------- KPIs


@dataclass(frozen=True)
class Kpis:
    """Episode KPIs. Means are NaN when there is no vehicle to average over."""

    mean_delay_s: float
    mean_delay_resco_s: float
    mean_travel_time_s: float
    mean_waiting_s: float
    throughput: int
    stops_total: int
    stops_mean: float
    demand: int
    inserted: int
    never_inserted: int
    unfinished: int
    teleports: int | None = None
    emergency_braking: int | None = None
    emergency_stops: int | None = None
    collisions: int | None = None
    demand_approximate: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON; NaN becomes None (JSON has no NaN)."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def _mean(total: float, n: int) -> float:
    return total / n if n else math.nan


def mean_delay_strict(trips: Sequence[TripRecord], demand: Demand) -> float:
    """Mean delay over every vehicle of the demand (see the module docstring), seconds."""
    inserted = {t.id: t for t in trips if t.inserted}
    total = sum(t.time_loss + t.depart_delay for t in inserted.values())
    never = [v for v in demand.vehicles if v.id not in inserted]
    total += sum(demand.end - v.depart for v in never)
    return _mean(total, len(inserted) + len(never))


def mean_delay_resco(trips: Sequence[TripRecord], demand: Demand) -> float:
    """RESCO's mean delay (see the module docstring), seconds."""
    inserted = [t for t in trips if t.inserted]  # RESCO does not write undeparted vehicles
    total = sum(t.time_loss + t.depart_delay for t in inserted)
    n = len(inserted)
    if inserted:
        last = inserted[0]
        for t in inserted:  # first of the latest departs, as RESCO's strict '>' scan finds it
            if t.depart > last.depart:
                last = t
        planned = {v.id: v.depart for v in demand.vehicles}
        # RESCO looks the planned depart up in the route file; depart - departDelay is the same
        # number for vehicles outside the demand list.
        last_planned = planned.get(last.id, last.depart - last.depart_delay)
        late = [v.depart for v in demand.vehicles if v.kind == "vehicle" and v.depart > last_planned]
        total += sum(demand.end - d for d in late)
        n += len(late)
    return _mean(total, n)


def compute_kpis(trips: Sequence[TripRecord], demand: Demand, statistics: SimStatistics | None = None) -> Kpis:
    """Compute the episode KPIs from tripinfo records, the demand, and SUMO's statistics.

    Travel time, waiting time and stops are averaged over inserted vehicles (unfinished ones
    up to the end, as RESCO does); ``stops`` are SUMO's ``waitingCount`` (times a vehicle came
    to a halt). Teleports and safety counts come from ``statistics`` (None without it).
    """
    inserted = [t for t in trips if t.inserted]
    inserted_ids = {t.id for t in inserted}
    never = sum(1 for v in demand.vehicles if v.id not in inserted_ids)
    arrived = sum(1 for t in inserted if t.arrived)
    stops = sum(t.waiting_count for t in inserted)
    stats = statistics or SimStatistics()
    return Kpis(
        mean_delay_s=mean_delay_strict(trips, demand),
        mean_delay_resco_s=mean_delay_resco(trips, demand),
        mean_travel_time_s=_mean(sum(t.duration for t in inserted), len(inserted)),
        mean_waiting_s=_mean(sum(t.waiting_time for t in inserted), len(inserted)),
        throughput=arrived,
        stops_total=stops,
        stops_mean=_mean(stops, len(inserted)),
        demand=demand.count,
        inserted=len(inserted),
        never_inserted=never,
        unfinished=sum(1 for t in inserted if t.arrival < 0),
        teleports=stats.teleports,
        emergency_braking=stats.emergency_braking,
        emergency_stops=stats.emergency_stops,
        collisions=stats.collisions,
        demand_approximate=demand.approximate,
    )


# --------------------------------------------------------------------------- queues


@dataclass(frozen=True)
class QueueStats:
    """Halting vehicles on signal-controlled incoming lanes, sampled during an episode.

    Attributes:
        samples: number of samples taken.
        network_mean, network_max: total over all controlled lanes (each lane once).
        per_tls: TLS id -> (mean, max) of the total over that TLS's controlled lanes.
    """

    samples: int
    network_mean: float
    network_max: int
    per_tls: Mapping[str, tuple[float, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "samples": self.samples,
            "network_mean": self.network_mean,
            "network_max": self.network_max,
            "per_tls": {k: {"mean": m, "max": x} for k, (m, x) in self.per_tls.items()},
        }


class KpiCollector:
    """Samples queues (``lane.getLastStepHaltingNumber``) on each TLS's controlled lanes.

    Call :meth:`sample` once per simulation step; it reads the lanes every ``every`` calls.
    A lane controlled by several TLS counts for each of them but once for the network.

    Args:
        conn: the ``libsumo`` module or a traci connection (anything with ``trafficlight``
            and ``lane`` domains).
        tls_ids: signals to watch; defaults to every TLS in the network.
        every: sample every N calls (1 = every step).
    """

    def __init__(self, conn: Any, tls_ids: Iterable[str] | None = None, every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self._conn = conn
        self._every = every
        ids = list(conn.trafficlight.getIDList() if tls_ids is None else tls_ids)
        # getControlledLanes lists a lane once per link; keep each lane once, in order.
        self._lanes = {tls: list(dict.fromkeys(conn.trafficlight.getControlledLanes(tls))) for tls in ids}
        self._all_lanes = list(dict.fromkeys(lane for lanes in self._lanes.values() for lane in lanes))
        self._calls = 0
        self._samples = 0
        self._net_sum = 0
        self._net_max = 0
        self._tls_sum = dict.fromkeys(ids, 0)
        self._tls_max = dict.fromkeys(ids, 0)

    def sample(self) -> None:
        """Count halting vehicles now (every ``every``-th call)."""
        self._calls += 1
        if (self._calls - 1) % self._every:
            return
        halting = self._conn.lane.getLastStepHaltingNumber
        counts = {lane: halting(lane) for lane in self._all_lanes}
        self._samples += 1
        net = sum(counts.values())
        self._net_sum += net
        self._net_max = max(self._net_max, net)
        for tls, lanes in self._lanes.items():
            q = sum(counts[lane] for lane in lanes)
            self._tls_sum[tls] += q
            if q > self._tls_max[tls]:
                self._tls_max[tls] = q

    def result(self) -> QueueStats:
        """Mean and max queues over the samples so far."""
        n = self._samples
        per_tls = {tls: (_mean(self._tls_sum[tls], n), self._tls_max[tls]) for tls in self._lanes}
        return QueueStats(n, _mean(self._net_sum, n), self._net_max, per_tls)


# --------------------------------------------------------------------------- seeds

# Two-sided 95% Student-t quantiles t(0.975, df) for df = 1..30.
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)
_Z975 = 1.959964


@dataclass(frozen=True)
class SeedSummary:
    """Mean over seeds with a two-sided 95% confidence interval (NaN bounds for one value)."""

    n: int
    mean: float
    std: float
    half_width: float
    low: float
    high: float

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON; NaN becomes None."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def t_quantile_975(df: int) -> float:
    """Two-sided 95% t quantile: table up to 30 degrees of freedom, normal beyond."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else _Z975


def summarise_seeds(values: Iterable[float]) -> SeedSummary:
    """Mean and 95% interval of a KPI over seeds (t-distribution for n <= 30, normal above).

    Raises:
        ValueError: no values, or a value is not finite.
    """
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("summarise_seeds needs at least one value")
    if not all(math.isfinite(x) for x in xs):
        raise ValueError(f"summarise_seeds got a non-finite value: {xs}")
    n = len(xs)
    mean = _stats.fmean(xs)
    if n == 1:
        return SeedSummary(1, mean, math.nan, math.nan, math.nan, math.nan)
    std = _stats.stdev(xs)
    q = t_quantile_975(n - 1) if n <= 30 else _Z975
    half = q * std / math.sqrt(n)
    return SeedSummary(n, mean, std, half, mean - half, mean + half)
