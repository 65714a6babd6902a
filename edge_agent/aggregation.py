"""Detector readings in, one :class:`~edge_agent.messages.Measurement` per interval out.

Pure, no IO; time is an argument. Adapters (Modbus polls, MQTT sensor events) turn what they
read into :class:`Reading` samples ``(detector, t, quantity, value)``; an :class:`Aggregator`
buckets them into intervals aligned to the clock (``interval_start`` is a multiple of
``interval_s`` in POSIX seconds) and, when an interval has passed, :meth:`Aggregator.close`
turns it into a measurement with the next sequence number of this edge.

Per detector and interval:

* count: the increments of a cumulative counter (``COUNTER``), modulo the register width, so
  a 16-bit counter going 65534 -> 3 counted 5; plus explicit ``VEHICLES`` counts (sensor
  events). An increment faster than ``max_flow_vph`` allows is not traffic but a counter
  reset (a controller reboot): the new value is counted as the vehicles since the reset.
  A delta between readings in two intervals belongs to the later one.
* occupancy: time-weighted from ``PRESENCE`` changes (a state holds until the next reading,
  also across intervals), else the mean of the device's own ``OCCUPANCY`` samples.
* speed: the mean of ``SPEED`` samples (time-mean spot speed).
* queue: the longest ``QUEUE`` reading (metres); in vehicles at ``jam_spacing_m`` each. The
  longest, not the mean, because spill-back into the upstream junction is what it warns of.

Per lane, each quantity comes from one detector: the first healthy one with data, by kind
(stop bar first for counts and occupancy: the volume actually served) and then by
configuration order, so redundant detectors on a lane never double-count. Failed detectors
(from :mod:`edge_agent.detector_health`) are left out and listed in ``failed_detectors``; a
lane with a failed detector is reported ``healthy=false``. A lane without a source reads 0
(count, occupancy) or ``None`` (speed, queue).

Intervals are reported whole: the one the aggregator starts in only primes counters and
presence states. Quiet intervals (no readings) are reported too, because event-driven
sensors are silent when there is no traffic; after a long gap (a clock step) only the last
``catch_up_intervals`` quiet intervals are, the others counted in ``skipped_intervals``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Callable, Collection, Iterable

import msgspec

from edge_agent.messages import MAX_SEQ, LaneMeasurement, Measurement
from edge_agent.model import (
    Contract, Detector, DetectorKind, Ident, Intersection, coerce_enum, require, require_finite,
    require_ident, require_int,
)

__all__ = ["Quantity", "Reading", "AggregationConfig", "Aggregator", "ApproachSummary",
           "by_approach"]


class Quantity(str, enum.Enum):
    """What a reading's value is."""

    COUNTER = "counter"  # cumulative vehicle counter as read; wraps at the register width
    VEHICLES = "vehicles"  # vehicles counted since the previous reading (sensor events)
    PRESENCE = "presence"  # 1: a vehicle is present from t on, 0: none is
    OCCUPANCY = "occupancy"  # fraction 0..1 of the device's own period
    SPEED = "speed"  # m/s
    QUEUE = "queue_m"  # queue length, metres


_WHOLE = (Quantity.COUNTER, Quantity.VEHICLES)


class Reading(Contract, kw_only=True):
    """One sample from a detector at POSIX time ``t``."""

    detector: Ident
    t: float
    quantity: Quantity
    value: float

    def __post_init__(self) -> None:
        require_ident(self.detector, "reading.detector")
        where = f"reading {self.detector}"
        require_finite(self.t, f"{where}.t", minimum=0.0)
        coerce_enum(self, "quantity", Quantity, f"{where}.quantity")
        require_finite(self.value, f"{where}.value", minimum=0.0)
        if self.quantity in _WHOLE:
            require(float(self.value).is_integer(), f"{where}.value",
                    f"a {self.quantity.value} reading is a whole number, got {self.value!r}")
        elif self.quantity == Quantity.PRESENCE:
            require(self.value in (0, 1), f"{where}.value",
                    f"presence is 0 or 1, got {self.value!r}")
        elif self.quantity == Quantity.OCCUPANCY:
            require(self.value <= 1.0, f"{where}.value",
                    f"occupancy is a fraction within 0..1, got {self.value!r}")


class AggregationConfig(Contract, kw_only=True):
    """How readings are aggregated; seconds, metres, vehicles per hour.

    ``counter_bits`` is the width of cumulative counter registers (``uint16``: 16), per
    detector in ``counter_bits_by_detector`` where a device differs.
    """

    interval_s: float = 60.0
    counter_bits: int = 16
    counter_bits_by_detector: dict[str, int] = msgspec.field(default_factory=dict)
    jam_spacing_m: float = 7.5
    max_flow_vph: float = 3600.0
    catch_up_intervals: int = 15

    def __post_init__(self) -> None:
        require_finite(self.interval_s, "aggregation.interval_s", minimum=1.0)
        require_int(self.counter_bits, "aggregation.counter_bits", 1, 64)
        for detector, bits in self.counter_bits_by_detector.items():
            require_ident(detector, "aggregation.counter_bits_by_detector")
            require_int(bits, f"aggregation.counter_bits_by_detector.{detector}", 1, 64)
        require_finite(self.jam_spacing_m, "aggregation.jam_spacing_m", minimum=1.0)
        require_finite(self.max_flow_vph, "aggregation.max_flow_vph", minimum=1.0)
        require_int(self.catch_up_intervals, "aggregation.catch_up_intervals", 1, 10_000)


# Per quantity, the detector kinds a lane takes it from, best first.
_COUNT_FROM = (DetectorKind.STOP_BAR, DetectorKind.ADVANCE, DetectorKind.SPEED,
               DetectorKind.QUEUE)
_OCCUPANCY_FROM = (DetectorKind.STOP_BAR, DetectorKind.ADVANCE, DetectorKind.SPEED,
                   DetectorKind.QUEUE)
_SPEED_FROM = (DetectorKind.SPEED, DetectorKind.ADVANCE, DetectorKind.STOP_BAR,
               DetectorKind.QUEUE)
_QUEUE_FROM = (DetectorKind.QUEUE, DetectorKind.STOP_BAR, DetectorKind.ADVANCE,
               DetectorKind.SPEED)


@dataclass(slots=True)
class _Track:
    """What a detector's earlier readings leave for the next interval."""

    counter: int | None = None
    counter_t: float = 0.0
    present: bool | None = None


@dataclass(slots=True)
class _Stats:
    """One detector over one interval."""

    count: int | None = None
    on_s: float = 0.0
    known_s: float = 0.0
    occupancy: list[float] = field(default_factory=list)
    speeds: list[float] = field(default_factory=list)
    queue_m: float | None = None

    @property
    def occupancy_value(self) -> float | None:
        if self.known_s > 0.0:
            return min(1.0, self.on_s / self.known_s)
        return sum(self.occupancy) / len(self.occupancy) if self.occupancy else None

    @property
    def speed(self) -> float | None:
        return sum(self.speeds) / len(self.speeds) if self.speeds else None


class Aggregator:
    """Buckets readings of one intersection into intervals and closes them into measurements.

    ``start`` is when the edge began reading (intervals before the first whole one are not
    reported); ``next_seq`` continues the sequence of a restarted edge.
    """

    def __init__(self, site: str, intersection: Intersection,
                 config: AggregationConfig | None = None, *, start: float,
                 next_seq: int = 0) -> None:
        require_ident(site, "site")
        require(len(intersection.detectors) > 0, f"intersection {intersection.id}.detectors",
                "no detectors: nothing to aggregate")
        require_finite(start, "start", minimum=0.0)
        require_int(next_seq, "next_seq", 0, MAX_SEQ)
        self.site, self.intersection = site, intersection
        self.config = config if config is not None else AggregationConfig()
        self._detectors = {d.id: d for d in intersection.detectors}
        for detector in self.config.counter_bits_by_detector:
            require(detector in self._detectors, "aggregation.counter_bits_by_detector",
                    f"unknown detector {detector!r}")
        interval = self.config.interval_s
        self._open = math.floor(start / interval)  # first interval not yet closed
        self._first = math.ceil(start / interval)  # first interval reported (a whole one)
        self._buffers: dict[int, list[Reading]] = {}
        self._tracks = {d.id: _Track() for d in intersection.detectors}
        # Exit detectors watch departure lanes for spillback (local actuation): no lane's
        # traffic is measured there.
        self._lanes = list(dict.fromkeys(d.lane for d in intersection.detectors
                                         if d.kind != DetectorKind.EXIT))
        self._seq = next_seq
        #: Readings that came after their interval was closed (dropped: it was already sent).
        self.late_readings = 0
        #: Counter jumps too large for traffic, taken as counter resets.
        self.counter_resets = 0
        #: Quiet intervals not reported after a long gap.
        self.skipped_intervals = 0

    @property
    def next_seq(self) -> int:
        """The sequence number the next measurement will carry; persist it across restarts."""
        return self._seq

    def _bits(self, detector: str) -> int:
        return self.config.counter_bits_by_detector.get(detector, self.config.counter_bits)

    def add(self, reading: Reading) -> None:
        """Take one reading (any order within open intervals); ValueError for unknown
        detectors and counter values wider than the register."""
        require(isinstance(reading, Reading), "reading", f"must be a Reading, got {reading!r}")
        require(reading.detector in self._detectors, "reading.detector",
                f"unknown detector {reading.detector!r} of intersection {self.intersection.id}")
        if reading.quantity == Quantity.COUNTER:
            bits = self._bits(reading.detector)
            require(reading.value < 2 ** bits, f"reading {reading.detector}.value",
                    f"counter {reading.value:.0f} does not fit {bits} bits")
        index = math.floor(reading.t / self.config.interval_s)
        if index < self._open:
            self.late_readings += 1
            return
        self._buffers.setdefault(index, []).append(reading)

    def close(self, now: float, failed: Collection[str] = frozenset()) -> list[Measurement]:
        """Measurements of every interval that ended at or before ``now``, oldest first.

        ``failed`` are the detectors to leave out (those failed now, per detector health).
        """
        require_finite(now, "now", minimum=0.0)
        for detector in failed:
            require(detector in self._detectors, "failed",
                    f"unknown detector {detector!r} of intersection {self.intersection.id}")
        last = math.floor(now / self.config.interval_s) - 1  # the last interval that ended
        # Intervals with readings, and the last few quiet ones. A quiet interval changes no
        # carried state, so older quiet ones are skipped without a look: a clock step of a
        # year costs nothing.
        recent = range(max(self._open, last - self.config.catch_up_intervals + 1), last + 1)
        due = sorted({i for i in self._buffers if i <= last}.union(recent))
        reported = [i for i in due if i >= self._first]
        self.skipped_intervals += max(0, last + 1 - max(self._open, self._first)) - len(reported)
        failed = frozenset(failed)
        out: list[Measurement] = []
        for index in due:
            stats = self._process(index, self._buffers.pop(index, []))
            if index >= self._first:
                out.append(self._measurement(index, stats, failed))
        self._open = max(self._open, last + 1)
        return out

    # --- one interval ---------------------------------------------------------------------
    def _process(self, index: int, readings: list[Reading]) -> dict[str, _Stats]:
        start = index * self.config.interval_s
        end = start + self.config.interval_s
        by_detector: dict[str, list[Reading]] = {}
        for reading in sorted(readings, key=lambda r: r.t):
            by_detector.setdefault(reading.detector, []).append(reading)
        stats: dict[str, _Stats] = {}
        for detector, track in self._tracks.items():
            st = stats[detector] = _Stats()
            cursor, state = start, track.present
            for r in by_detector.get(detector, ()):
                if r.quantity == Quantity.COUNTER:
                    counted = 0 if track.counter is None else self._counted(detector, track, r)
                    st.count = (st.count or 0) + counted
                    track.counter, track.counter_t = int(r.value), r.t
                elif r.quantity == Quantity.VEHICLES:
                    st.count = (st.count or 0) + int(r.value)
                elif r.quantity == Quantity.PRESENCE:
                    _presence(st, state, r.t - cursor)
                    cursor, state = r.t, r.value == 1
                elif r.quantity == Quantity.OCCUPANCY:
                    st.occupancy.append(r.value)
                elif r.quantity == Quantity.SPEED:
                    st.speeds.append(r.value)
                else:
                    st.queue_m = r.value if st.queue_m is None else max(st.queue_m, r.value)
            _presence(st, state, end - cursor)
            track.present = state
        return stats

    def _counted(self, detector: str, track: _Track, reading: Reading) -> int:
        assert track.counter is not None
        value = int(reading.value)
        delta = (value - track.counter) % (2 ** self._bits(detector))
        # One vehicle of slack: two readings a moment apart may still differ by one.
        limit = self.config.max_flow_vph / 3600.0 * (reading.t - track.counter_t) + 1.0
        if delta <= limit:
            return delta
        self.counter_resets += 1
        return value if value <= limit else 0

    def _measurement(self, index: int, stats: dict[str, _Stats],
                     failed: frozenset[str]) -> Measurement:
        lanes = []
        for lane in self._lanes:
            detectors = [d for d in self.intersection.detectors if d.lane == lane]
            usable = [d for d in detectors if d.id not in failed]
            count = int(_pick(usable, stats, _COUNT_FROM, lambda s: s.count) or 0)
            queue_m = _pick(usable, stats, _QUEUE_FROM, lambda s: s.queue_m)
            occupancy = _pick(usable, stats, _OCCUPANCY_FROM, lambda s: s.occupancy_value)
            lanes.append(LaneMeasurement(
                lane=lane, count=count, flow_vph=count * 3600.0 / self.config.interval_s,
                occupancy=float(occupancy or 0.0),
                mean_speed_mps=_pick(usable, stats, _SPEED_FROM, lambda s: s.speed),
                queue_m=queue_m,
                queue_veh=None if queue_m is None else queue_m / self.config.jam_spacing_m,
                healthy=len(usable) == len(detectors)))
        measurement = Measurement(
            site=self.site, intersection_id=self.intersection.id, seq=self._seq,
            interval_start=index * self.config.interval_s, interval_s=self.config.interval_s,
            lanes=tuple(lanes),
            failed_detectors=tuple(d.id for d in self.intersection.detectors if d.id in failed))
        self._seq += 1
        return measurement


def _pick(detectors: list[Detector], stats: dict[str, _Stats], kinds: tuple[DetectorKind, ...],
          value: Callable[[_Stats], float | int | None]) -> float | int | None:
    """The value of the first detector with one, by kind in ``kinds`` order, then config
    order (``sorted`` is stable)."""
    for detector in sorted(detectors, key=lambda d: kinds.index(d.kind)):
        found = value(stats[detector.id])
        if found is not None:
            return found
    return None


def _presence(st: _Stats, state: bool | None, seconds: float) -> None:
    """Add ``seconds`` spent in presence ``state`` (unknown states add nothing)."""
    if state is not None:
        st.known_s += seconds
        if state:
            st.on_s += seconds


@dataclass(frozen=True, slots=True)
class ApproachSummary:
    """One approach over an interval: the sum of its lanes' counts and flows, the mean of
    their occupancies, the count-weighted mean speed and the longest queue."""

    approach: str
    count: int
    flow_vph: float
    occupancy: float
    mean_speed_mps: float | None
    queue_m: float | None
    healthy: bool


def by_approach(measurement: Measurement,
                intersection: Intersection) -> dict[str, ApproachSummary]:
    """Lane measurements summed per approach (lanes of no approach are left out)."""
    lane_approach = {lane: a.id for a in intersection.approaches for lane in a.lanes}
    groups: dict[str, list[LaneMeasurement]] = {}
    for lane in measurement.lanes:
        if lane.lane in lane_approach:
            groups.setdefault(lane_approach[lane.lane], []).append(lane)
    out = {}
    for approach, lanes in groups.items():
        speeds = [(lane.mean_speed_mps, lane.count) for lane in lanes
                  if lane.mean_speed_mps is not None]
        weight = sum(n for _, n in speeds)
        speed = (sum(v * n for v, n in speeds) / weight if weight
                 else _mean(v for v, _ in speeds))
        queues = [lane.queue_m for lane in lanes if lane.queue_m is not None]
        out[approach] = ApproachSummary(
            approach=approach, count=sum(lane.count for lane in lanes),
            flow_vph=sum(lane.flow_vph for lane in lanes),
            occupancy=sum(lane.occupancy for lane in lanes) / len(lanes),
            mean_speed_mps=speed, queue_m=max(queues) if queues else None,
            healthy=all(lane.healthy for lane in lanes))
    return out


def _mean(values: Iterable[float]) -> float | None:
    items = list(values)
    return sum(items) / len(items) if items else None
