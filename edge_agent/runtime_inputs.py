"""What the edge runtime reads, made into what the pure core takes. Pure, no IO.

* :class:`RegisterReadings` turns the Modbus link's snapshot (one
  :class:`~edge_agent.modbus_core.Reading` per polled register) into aggregation
  :class:`~edge_agent.aggregation.Reading` samples: each register value once, when a poll has
  refreshed it (a stale value is never passed on). ``detector.count`` is a ``COUNTER``,
  ``detector.occupancy`` an ``OCCUPANCY`` sample, ``detector.speed`` a ``SPEED``,
  ``detector.presence`` a ``PRESENCE`` and ``queue.length`` (per lane) a ``QUEUE`` of the lane's
  queue detector (else of the lane's first detector).

  Presence sampled once a poll is a poor occupancy: a car crosses a 6 m loop in half a
  second. Where a detector also has an occupancy register (the controller measures it
  continuously), its presence samples go to detector health only (stuck on, chatter), not
  into the aggregated occupancy.
* :func:`controller_fault` reads the controller's status registers: stale (the device does
  not answer), ``Alarm.FAULT`` set, or ``ControllerMode.FLASH``; :func:`alarm_bits` and
  :func:`own_programme` read its alarms and whether it runs a plan of the edge's.
* :class:`SensorDetectors` turns a local smart sensor's report (MQTT) into samples of the
  detector it is configured as: a detector whose id is the sensor id, or
  ``{sensor}:{lane}`` for a sensor that covers several lanes, on the lane the topic names.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from edge_agent.aggregation import Quantity, Reading
from edge_agent.link_wire import SensorReading
from edge_agent.modbus_core import Reading as RegisterReading
from edge_agent.modbus_core import counter_modulus
from edge_agent.model import DetectorKind, Intersection
from edge_agent.registers import Alarm, ControllerMode, Register, RegisterMap, Signal

__all__ = ["Sample", "RegisterReadings", "SensorDetectors", "alarm_bits", "controller_fault",
           "own_programme", "polled_registers", "status_registers", "watchdog_register"]

_QUANTITY = {
    Signal.DETECTOR_COUNT: Quantity.COUNTER,
    Signal.DETECTOR_OCCUPANCY: Quantity.OCCUPANCY,
    Signal.DETECTOR_SPEED: Quantity.SPEED,
    Signal.DETECTOR_PRESENCE: Quantity.PRESENCE,
    Signal.QUEUE_LENGTH: Quantity.QUEUE,
}
_STATUS = (Signal.CONTROLLER_MODE, Signal.CONTROLLER_ALARM, Signal.CONTROLLER_PHASE)


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading and where it goes: the aggregator too (``aggregate``), or health only."""

    reading: Reading
    aggregate: bool = True


def polled_registers(regmap: RegisterMap) -> list[str]:
    """The registers the runtime polls: detectors, queues, controller status, the watchdog
    (read so a restarted edge continues the controller's counter). Plan registers are
    written, not read."""
    wanted = set(_QUANTITY) | set(_STATUS) | {Signal.WATCHDOG}
    return [r.name for r in regmap.registers if r.signal in wanted]


def status_registers(regmap: RegisterMap) -> list[str]:
    """The registers whose freshness says the controller answers: its status registers, or
    every polled one where the map has none."""
    found = [r.name for r in regmap.registers if r.signal in _STATUS]
    return found or polled_registers(regmap)


def watchdog_register(regmap: RegisterMap) -> str | None:
    """The one allow-listed watchdog register, or None (none, several, or read-only)."""
    found = regmap.by_signal(Signal.WATCHDOG)
    if len(found) != 1:
        return None
    try:
        return regmap.writable(found[0].name).name
    except PermissionError:
        return None


class RegisterReadings:
    """Maps polled registers to detector samples; remembers what it passed on already.

    Raises ValueError for a map whose detector registers name detectors the intersection
    lacks (a wrong map for the box). ``unplaced`` lists queue registers of lanes without any
    detector: they are left out (the runtime logs them once at start).
    """

    def __init__(self, intersection: Intersection, regmap: RegisterMap) -> None:
        detectors = {d.id: d for d in intersection.detectors}
        on_lane: dict[str, list[str]] = {}
        for d in sorted(intersection.detectors, key=lambda d: d.kind != DetectorKind.QUEUE):
            on_lane.setdefault(d.lane, []).append(d.id)  # queue detectors first, then config order
        with_occupancy = {r.detector for r in regmap.registers
                          if r.signal == Signal.DETECTOR_OCCUPANCY}
        self._map: list[tuple[str, str, Quantity, bool]] = []
        self.unplaced: list[str] = []
        self.counter_bits: dict[str, int] = {}
        for reg in regmap.registers:
            quantity = _QUANTITY.get(reg.signal)
            if quantity is None:
                continue
            if reg.signal == Signal.QUEUE_LENGTH:
                assert reg.lane is not None  # the register map requires it
                if reg.lane not in on_lane:
                    self.unplaced.append(reg.name)
                    continue
                detector = on_lane[reg.lane][0]
            else:
                assert reg.detector is not None  # the register map requires it
                if reg.detector not in detectors:
                    raise ValueError(f"register {reg.name}: no detector {reg.detector!r} at "
                                     f"intersection {intersection.id}")
                detector = reg.detector
            if quantity == Quantity.COUNTER:
                self.counter_bits[detector] = _bits(reg)
            aggregate = not (quantity == Quantity.PRESENCE and detector in with_occupancy)
            self._map.append((reg.name, detector, quantity, aggregate))
        self._seen: dict[str, float] = {}

    @property
    def registers(self) -> list[str]:
        """The names of the registers that become samples."""
        return [name for name, *_ in self._map]

    def samples(self, snapshot: Mapping[str, RegisterReading]
                ) -> tuple[list[Sample], list[tuple[str, str]]]:
        """The samples of every register a poll refreshed since the last call, and
        ``(register, why)`` for values that are no reading (a negative speed, an occupancy
        above 1, a counter with a fraction: a wrong scale or a broken device)."""
        out: list[Sample] = []
        bad: list[tuple[str, str]] = []
        seen = self._seen
        for name, detector, quantity, aggregate in self._map:
            r = snapshot.get(name)
            if r is None or r.stale or r.value is None or r.read_at is None:
                continue
            if r.read_at <= seen.get(name, -math.inf):
                continue  # the same poll's value again
            seen[name] = r.read_at
            try:
                reading = Reading(detector=detector, t=r.read_at, quantity=quantity,
                                  value=r.value)
            except ValueError as exc:
                bad.append((name, str(exc)))
                continue
            out.append(Sample(reading, aggregate))
        return out, bad


def _bits(reg: Register) -> int:
    """The width of a counter register in bits (what it counts before it wraps)."""
    return int(math.log2(counter_modulus(reg)))


def controller_fault(snapshot: Mapping[str, RegisterReading], regmap: RegisterMap,
                     names: Iterable[str]) -> str | None:
    """Why the controller counts as faulty, or None when it answers and reports no fault.

    ``names`` are the registers whose freshness matters (:func:`status_registers`).
    """
    for name in names:
        r = snapshot[name]
        if r.stale or r.value is None:
            when = "never read" if r.read_at is None else f"{r.misses} polls missed"
            return f"controller not answering ({name} stale: {when})"
    for reg in regmap.by_signal(Signal.CONTROLLER_ALARM):
        value = snapshot[reg.name].value if reg.name in snapshot else None
        if value is not None and int(value) & Alarm.FAULT:
            return f"controller alarm {reg.name} = {int(value)} (fault)"
    for reg in regmap.by_signal(Signal.CONTROLLER_MODE):
        value = snapshot[reg.name].value if reg.name in snapshot else None
        if value is not None and int(value) == ControllerMode.FLASH:
            return f"controller in flash ({reg.name} = {int(value)})"
    return None


def alarm_bits(snapshot: Mapping[str, RegisterReading], regmap: RegisterMap) -> int:
    """The alarm bits of every fresh ``controller.alarm`` register, or-ed together."""
    bits = 0
    for reg in regmap.by_signal(Signal.CONTROLLER_ALARM):
        r = snapshot.get(reg.name)
        if r is not None and not r.stale and r.value is not None:
            bits |= int(r.value)
    return bits


def own_programme(snapshot: Mapping[str, RegisterReading], regmap: RegisterMap,
                  after: float) -> str | None:
    """``"{register} = {value}"`` when a ``controller.mode`` register read after ``after``
    says the controller runs anything but a plan the edge committed (REMOTE), else None."""
    for reg in regmap.by_signal(Signal.CONTROLLER_MODE):
        r = snapshot.get(reg.name)
        if r is not None and not r.stale and r.value is not None and r.read_at is not None \
                and r.read_at > after and int(r.value) != ControllerMode.REMOTE:
            return f"{reg.name} = {int(r.value)}"
    return None


class SensorDetectors:
    """Which configured detector a local sensor's report belongs to, and its samples."""

    def __init__(self, intersection: Intersection, jam_spacing_m: float) -> None:
        self._detectors = {d.id: d for d in intersection.detectors}
        self.jam_spacing_m = jam_spacing_m

    def detector(self, report: SensorReading) -> str | None:
        """The detector id of the report (None: the sensor/lane is not configured)."""
        for key in (report.sensor, f"{report.sensor}:{report.lane}"):
            d = self._detectors.get(key)
            if d is not None and d.lane == report.lane:
                return d.id
        return None

    def samples(self, report: SensorReading, detector: str) -> list[Reading]:
        """The report's quantities as readings of ``detector`` (ValueError if one is no
        reading, which the wire decoder already rules out for what it lets through)."""
        values: list[tuple[Quantity, float]] = []
        if report.count is not None:
            values.append((Quantity.VEHICLES, float(report.count)))
        if report.occupancy is not None:
            values.append((Quantity.OCCUPANCY, report.occupancy))
        if report.speed_mps is not None:
            values.append((Quantity.SPEED, report.speed_mps))
        queue = report.queue_m if report.queue_m is not None else (
            None if report.queue_veh is None else report.queue_veh * self.jam_spacing_m)
        if queue is not None:
            values.append((Quantity.QUEUE, queue))
        return [Reading(detector=detector, t=report.t, quantity=q, value=v) for q, v in values]
