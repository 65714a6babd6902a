"""What the runtime reads, made into the core's inputs: register snapshots to samples, the
controller's health from its status registers, local sensors to detectors. Pure."""

from __future__ import annotations

import msgspec
import pytest

from conftest import CONFIGS
from edge_agent.aggregation import Quantity
from edge_agent.config import load_intersection, load_toml
from edge_agent.link_wire import SensorReading
from edge_agent.modbus_core import Reading as RegisterReading
from edge_agent.model import Detector
from edge_agent.registers import Register, RegisterMap
from edge_agent.runtime_inputs import (
    RegisterReadings, SensorDetectors, alarm_bits, controller_fault, own_programme,
    polled_registers, status_registers, watchdog_register,
)

ELM = load_intersection(CONFIGS / "nema-4phase.toml", "elm-1st")
MAP = load_toml(CONFIGS / "modbus-elm-1st.toml", RegisterMap)


def fresh(name: str, value: float | None, t: float = 100.0, stale: bool = False,
          misses: int = 0) -> RegisterReading:
    return RegisterReading(name, value, None if value is None else t, misses, stale)


def snapshot(t: float = 100.0, **values: float) -> dict[str, RegisterReading]:
    out = {r.name: fresh(r.name, 0.0, t) for r in MAP.registers}
    out.update({name: fresh(name, value, t) for name, value in values.items()})
    out["mode"] = fresh("mode", values.get("mode", 2.0), t)
    return out


def with_registers(*extra: Register, keep=lambda r: True) -> RegisterMap:
    return RegisterMap(device=MAP.device,
                       registers=tuple(r for r in MAP.registers if keep(r)) + extra)


def test_polled_registers_leave_the_plan_out():
    polled = polled_registers(MAP)
    assert "count_0" in polled and "queue_1" in polled and "alarms" in polled
    assert "watchdog" in polled and "plan_id" not in polled and "hold_2" not in polled
    assert status_registers(MAP) == ["phase_ring1", "phase_ring2", "mode", "alarms"]
    bare = with_registers(keep=lambda r: not r.signal.value.startswith("controller."))
    assert status_registers(bare) == polled_registers(bare)


def test_each_poll_gives_each_value_once():
    readings = RegisterReadings(ELM, MAP)
    samples, bad = readings.samples(snapshot(100.0, count_0=7, occupancy_0=0.25, queue_0=30.0))
    by_detector = {(s.reading.detector, s.reading.quantity): s for s in samples}
    assert bad == [] and len(samples) == len(readings.registers) == 22
    assert by_detector[("elm-1st_S_0_stop", Quantity.COUNTER)].reading.value == 7.0
    assert by_detector[("elm-1st_S_queue", Quantity.QUEUE)].reading.value == 30.0
    assert by_detector[("elm-1st_S_0_adv", Quantity.SPEED)].aggregate
    # Presence sampled once a poll is for health only where the loop measures occupancy.
    assert not by_detector[("elm-1st_S_0_stop", Quantity.PRESENCE)].aggregate
    assert readings.samples(snapshot(100.0))[0] == []  # the same poll again: nothing new
    stale = snapshot(101.0)
    stale["count_0"] = fresh("count_0", 7.0, 101.0, stale=True)
    stale["count_1"] = fresh("count_1", None)
    names = {(s.reading.detector, s.reading.quantity) for s in readings.samples(stale)[0]}
    assert ("elm-1st_S_0_stop", Quantity.COUNTER) not in names
    assert ("elm-1st_S_1_stop", Quantity.COUNTER) not in names and len(names) == 20


def test_values_that_are_no_reading_are_named():
    readings = RegisterReadings(ELM, MAP)
    samples, bad = readings.samples(snapshot(occupancy_2=1.5, count_3=2.5))
    assert [name for name, _ in bad] == ["count_3", "occupancy_2"]
    assert "whole number" in bad[0][1] and "fraction" in bad[1][1] and len(samples) == 20


def test_counter_widths_follow_the_register_types_and_queues_need_a_detector():
    extra = (Register(name="count_w", table="input", address=50, type="uint32",
                      signal="detector.count", detector="elm-1st_S_0_adv"),
             Register(name="count_i", table="input", address=52, type="int16",
                      signal="detector.count", detector="elm-1st_N_0_adv"),
             Register(name="count_f", table="input", address=53, type="float32",
                      signal="detector.count", detector="elm-1st_S_queue"),
             Register(name="queue_x", table="input", address=55, type="uint16",
                      signal="queue.length", lane="nowhere"),
             Register(name="queue_e", table="input", address=56, type="uint16",
                      signal="queue.length", lane="elm-1st_E_0"))
    readings = RegisterReadings(ELM, with_registers(*extra))
    assert readings.counter_bits["elm-1st_S_0_stop"] == 16
    assert (readings.counter_bits["elm-1st_S_0_adv"], readings.counter_bits["elm-1st_N_0_adv"],
            readings.counter_bits["elm-1st_S_queue"]) == (32, 15, 24)
    assert readings.unplaced == ["queue_x"]
    samples, _ = readings.samples(snapshot(queue_e=12.0))
    # A lane without a queue detector: its queue goes to the lane's own detector.
    assert ("elm-1st_E_0_stop", Quantity.QUEUE, 12.0) in \
        {(s.reading.detector, s.reading.quantity, s.reading.value) for s in samples}


def test_a_map_for_another_intersection_is_refused():
    other = with_registers(Register(name="count_z", table="input", address=50, type="uint16",
                                    signal="detector.count", detector="elm-9th_S_0_stop"))
    with pytest.raises(ValueError, match="no detector 'elm-9th_S_0_stop'"):
        RegisterReadings(ELM, other)


def test_controller_health_from_its_status_registers():
    names = status_registers(MAP)
    assert controller_fault(snapshot(), MAP, names) is None
    down = snapshot()
    down["alarms"] = fresh("alarms", 0.0, stale=True, misses=3)
    assert controller_fault(down, MAP, names) == \
        "controller not answering (alarms stale: 3 polls missed)"
    down["alarms"] = fresh("alarms", None, stale=True)
    assert "alarms stale: never read" in controller_fault(down, MAP, names)
    assert controller_fault(snapshot(alarms=5.0), MAP, names) == \
        "controller alarm alarms = 5 (fault)"
    assert controller_fault(snapshot(alarms=3.0), MAP, names) is None  # refused plan, watchdog
    assert controller_fault(snapshot(mode=3.0), MAP, names) == "controller in flash (mode = 3)"
    partial = {n: r for n, r in snapshot().items() if n not in ("mode", "alarms")}
    assert controller_fault(partial, MAP, ["phase_ring1"]) is None


def test_alarms_mode_and_watchdog_registers():
    assert alarm_bits(snapshot(alarms=3.0), MAP) == 3
    stale = snapshot(alarms=3.0)
    stale["alarms"] = fresh("alarms", 3.0, stale=True)
    assert alarm_bits(stale, MAP) == 0 and alarm_bits({}, MAP) == 0
    assert own_programme(snapshot(100.0, mode=2.0), MAP, after=50.0) is None
    assert own_programme(snapshot(100.0, mode=1.0), MAP, after=50.0) == "mode = 1"
    assert own_programme(snapshot(100.0, mode=1.0), MAP, after=100.0) is None  # too early
    assert own_programme({}, MAP, after=0.0) is None
    assert watchdog_register(MAP) == "watchdog"
    read_only = RegisterMap(
        device=MAP.device, registers=tuple(
            msgspec.structs.replace(r, access="read") if r.name == "watchdog" else r
            for r in MAP.registers))
    assert watchdog_register(read_only) is None
    assert watchdog_register(with_registers(keep=lambda r: r.name != "watchdog")) is None


def test_sensors_are_the_detectors_named_after_them():
    x = ELM.__class__(**{**{f: getattr(ELM, f) for f in ELM.__struct_fields__},
                         "detectors": ELM.detectors + (
                             Detector(id="cam-1:elm-1st_W_0", kind="speed", lane="elm-1st_W_0"),
                             Detector(id="radar-2", kind="queue", lane="elm-1st_E_0"))})
    sensors = SensorDetectors(x, jam_spacing_m=7.5)

    def report(sensor: str, lane: str, **values: float) -> SensorReading:
        return SensorReading(sensor=sensor, lane=lane, t=50.0, **values)

    assert sensors.detector(report("cam-1", "elm-1st_W_0")) == "cam-1:elm-1st_W_0"
    assert sensors.detector(report("radar-2", "elm-1st_E_0")) == "radar-2"
    assert sensors.detector(report("radar-2", "elm-1st_W_0")) is None  # not its lane
    assert sensors.detector(report("cam-1", "elm-1st_N_0")) is None
    got = sensors.samples(report("radar-2", "elm-1st_E_0", count=3, occupancy=0.2,
                                 speed_mps=8.0, queue_veh=2.0), "radar-2")
    assert [(r.quantity, r.value, r.t) for r in got] == [
        (Quantity.VEHICLES, 3.0, 50.0), (Quantity.OCCUPANCY, 0.2, 50.0),
        (Quantity.SPEED, 8.0, 50.0), (Quantity.QUEUE, 15.0, 50.0)]
    got = sensors.samples(report("radar-2", "elm-1st_E_0", queue_m=20.0, queue_veh=9.0),
                          "radar-2")
    assert [(r.quantity, r.value) for r in got] == [(Quantity.QUEUE, 20.0)]
