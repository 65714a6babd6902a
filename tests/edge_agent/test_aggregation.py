"""Aggregation: counts with wrap-around, occupancy, speed, queues, failed detectors, seq."""

from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.aggregation import (
    AggregationConfig, Aggregator, ApproachSummary, Quantity, Reading, by_approach,
)
from edge_agent.config import load_intersection
from edge_agent.messages import LaneMeasurement, Measurement, decode, encode
from edge_agent.model import Detector

from conftest import CONFIGS

SITE = "downtown"
NEMA8 = load_intersection(CONFIGS / "nema-8phase.toml")
T = 1_800_000_000.0  # a multiple of 60 s
Q = Quantity


def r(detector: str, t: float, quantity: Quantity, value: float) -> Reading:
    return Reading(detector=detector, t=T + t, quantity=quantity, value=value)


def agg(**config) -> Aggregator:
    return Aggregator(SITE, NEMA8, AggregationConfig(**config), start=T)


def lane(m: Measurement, lane_id: str) -> LaneMeasurement:
    return next(x for x in m.lanes if x.lane == lane_id)


def feed(a: Aggregator, *readings: Reading) -> None:
    for reading in readings:
        a.add(reading)


# --- counts -------------------------------------------------------------------------------
def test_counter_increments_wrap_at_the_register_width() -> None:
    a = agg()
    feed(a, r("S_0_stop", 0, Q.COUNTER, 65530), r("S_0_stop", 10, Q.COUNTER, 65534),
         r("S_0_stop", 20, Q.COUNTER, 2), r("S_0_stop", 70, Q.COUNTER, 5))
    assert a.close(T + 59.9) == []
    (first,) = a.close(T + 60)
    assert (first.seq, first.interval_start, first.interval_s) == (0, T, 60.0)
    assert lane(first, "S_0").count == 8 and lane(first, "S_0").flow_vph == 480.0
    (second,) = a.close(T + 120)
    assert second.seq == 1 and lane(second, "S_0").count == 3  # the delta 2 -> 5 at T+70
    assert a.next_seq == 2
    # Every measurement goes through the wire unchanged.
    assert decode(encode(second), Measurement) == second


def test_32_bit_counters_and_per_detector_widths() -> None:
    a = agg(counter_bits=32, counter_bits_by_detector={"S_1_stop": 8})
    feed(a, r("S_0_stop", 0, Q.COUNTER, 2**32 - 1), r("S_0_stop", 5, Q.COUNTER, 1),
         r("S_1_stop", 0, Q.COUNTER, 255), r("S_1_stop", 5, Q.COUNTER, 3))
    (m,) = a.close(T + 60)
    assert (lane(m, "S_0").count, lane(m, "S_1").count) == (2, 4)
    with pytest.raises(ValueError, match="counter 256 does not fit 8 bits"):
        a.add(r("S_1_stop", 70, Q.COUNTER, 256))


def test_a_jump_too_large_for_traffic_is_a_counter_reset() -> None:
    a = agg()
    feed(a, r("S_0_stop", 0, Q.COUNTER, 5000), r("S_0_stop", 10, Q.COUNTER, 3),
         r("N_0_stop", 0, Q.COUNTER, 5000), r("N_0_stop", 1, Q.COUNTER, 40))
    (m,) = a.close(T + 60)
    # 10 s allow 11 vehicles: 3 since the reset are counted; 40 in 1 s cannot be, so none.
    assert (lane(m, "S_0").count, lane(m, "N_0").count) == (3, 0)
    assert a.counter_resets == 2


def test_event_counts_add_up() -> None:
    a = agg()
    feed(a, r("N_0_stop", 1, Q.VEHICLES, 1), r("N_0_stop", 2, Q.VEHICLES, 1),
         r("N_0_stop", 30, Q.VEHICLES, 2), r("N_0_stop", 59.99, Q.VEHICLES, 0))
    (m,) = a.close(T + 60)
    assert lane(m, "N_0").count == 4 and lane(m, "N_0").flow_vph == 240.0


def test_exit_detectors_measure_no_lane() -> None:
    exits = msgspec.structs.replace(NEMA8, detectors=(*NEMA8.detectors, Detector(
        id="N_out_0", kind="exit", lane="N_out_0", position_m=15.0,
        movements=(NEMA8.movements[0].id,))))
    a = Aggregator(SITE, exits, AggregationConfig(), start=T)
    feed(a, r("N_out_0", 1, Q.PRESENCE, 1), r("N_0_stop", 1, Q.VEHICLES, 2))
    (m,) = a.close(T + 60)
    assert "N_out_0" not in {x.lane for x in m.lanes} and lane(m, "N_0").count == 2


def test_counts_come_from_one_detector_per_lane_stop_bar_first() -> None:
    a = agg()
    feed(a, r("S_0_stop", 1, Q.VEHICLES, 5), r("S_0_adv", 1, Q.VEHICLES, 7),
         r("S_1_adv", 1, Q.VEHICLES, 6))
    (m,) = a.close(T + 60, failed=())
    assert lane(m, "S_0").count == 5  # not 12: redundant detectors never double-count
    assert lane(m, "S_1").count == 6  # the stop bar has no data: the advance loop counts
    feed(a, r("S_0_stop", 61, Q.VEHICLES, 5), r("S_0_adv", 61, Q.VEHICLES, 7))
    (m,) = a.close(T + 120, failed={"S_0_stop", "W_1_stop"})
    assert lane(m, "S_0").count == 7 and not lane(m, "S_0").healthy
    assert not lane(m, "W_1").healthy and lane(m, "W_1").count == 0
    assert lane(m, "S_1").healthy
    assert m.failed_detectors == ("S_0_stop", "W_1_stop")  # configuration order


# --- occupancy, speed, queue ------------------------------------------------------------------
def test_occupancy_is_time_weighted_from_presence_and_carries_over() -> None:
    a = agg()
    feed(a, r("E_0_stop", 0, Q.PRESENCE, 1), r("E_0_stop", 15, Q.PRESENCE, 0),
         r("E_0_stop", 30, Q.PRESENCE, 1), r("E_0_stop", 45, Q.PRESENCE, 0),
         r("E_0_stop", 50, Q.PRESENCE, 1), r("E_0_stop", 70, Q.PRESENCE, 0),
         # W_0: nothing known until the first reading at 30 s
         r("W_0_stop", 30, Q.PRESENCE, 1), r("W_0_stop", 45, Q.PRESENCE, 0))
    first, second = a.close(T + 120)
    assert lane(first, "E_0").occupancy == pytest.approx(40 / 60)
    assert lane(first, "W_0").occupancy == pytest.approx(0.5)
    assert lane(second, "E_0").occupancy == pytest.approx(10 / 60)
    assert lane(second, "W_0").occupancy == 0.0


def test_device_occupancy_samples_are_averaged_when_no_presence_is_known() -> None:
    a = agg()
    feed(a, r("N_1_stop", 10, Q.OCCUPANCY, 0.2), r("N_1_stop", 20, Q.OCCUPANCY, 0.4))
    (m,) = a.close(T + 60)
    assert lane(m, "N_1").occupancy == pytest.approx(0.3)


def test_speed_is_the_mean_and_queue_the_longest() -> None:
    a = agg(jam_spacing_m=7.5)
    feed(a, r("N_0_adv", 5, Q.SPEED, 10.0), r("N_0_adv", 9, Q.SPEED, 14.0),
         r("S_queue", 5, Q.QUEUE, 10.0), r("S_queue", 25, Q.QUEUE, 30.0),
         r("S_queue", 45, Q.QUEUE, 20.0))
    (m,) = a.close(T + 60)
    assert lane(m, "N_0").mean_speed_mps == 12.0
    assert (lane(m, "S_0").queue_m, lane(m, "S_0").queue_veh) == (30.0, 4.0)
    quiet = lane(m, "E_1")
    assert (quiet.count, quiet.occupancy, quiet.mean_speed_mps, quiet.queue_m,
            quiet.queue_veh, quiet.healthy) == (0, 0.0, None, None, None, True)


# --- intervals, seq, late readings -------------------------------------------------------------
def test_the_starting_interval_only_primes_and_is_not_reported() -> None:
    a = Aggregator(SITE, NEMA8, start=T + 30, next_seq=41)
    feed(a, r("S_0_stop", 40, Q.COUNTER, 100), r("S_0_stop", 70, Q.COUNTER, 103))
    (m,) = a.close(T + 120)
    assert (m.seq, m.interval_start, lane(m, "S_0").count) == (41, T + 60, 3)


def test_quiet_intervals_are_reported_and_a_long_gap_is_cut_short() -> None:
    a = agg(catch_up_intervals=2)
    feed(a, r("E_0_stop", 0, Q.PRESENCE, 0), r("E_0_stop", 50, Q.PRESENCE, 1))
    (m,) = a.close(T + 60)
    assert lane(m, "E_0").occupancy == pytest.approx(1 / 6)
    out = a.close(T + 180)  # quiet, yet the presence carried over says something
    assert [(m.interval_start - T, lane(m, "E_0").occupancy) for m in out] == \
        [(60, 1.0), (120, 1.0)]
    a.add(r("E_0_stop", 310, Q.PRESENCE, 0))
    out = a.close(T + 900)  # readings in one interval of twelve; two quiet ones kept
    assert [(m.interval_start - T, lane(m, "E_0").occupancy) for m in out] == \
        [(300, pytest.approx(1 / 6)), (780, 0.0), (840, 0.0)]
    assert a.skipped_intervals == 9
    assert [m.seq for m in out] == [3, 4, 5]
    # A clock step of a year: only the last quiet intervals, at once.
    out = a.close(T + 900 + 365 * 86400)
    assert [m.seq for m in out] == [6, 7] and a.skipped_intervals == 9 + 365 * 1440 - 2


def test_late_readings_are_counted_and_dropped() -> None:
    a = agg()
    a.close(T + 60)
    a.add(r("S_0_stop", 30, Q.VEHICLES, 4))
    assert a.late_readings == 1
    a.add(r("S_0_stop", 61, Q.VEHICLES, 1))
    a.add(r("S_0_stop", 60, Q.VEHICLES, 1))  # out of order inside an open interval is fine
    (m,) = a.close(T + 120)
    assert lane(m, "S_0").count == 2


def test_inputs_are_checked() -> None:
    a = agg()
    with pytest.raises(ValueError, match="unknown detector 'nope'"):
        a.add(r("nope", 1, Q.VEHICLES, 1))
    with pytest.raises(ValueError, match="reading: must be a Reading"):
        a.add((1, 2, 3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="failed: unknown detector 'nope'"):
        a.close(T + 60, failed={"nope"})
    with pytest.raises(ValueError, match="now"):
        a.close(math.inf)
    with pytest.raises(ValueError, match="no detectors"):
        Aggregator(SITE, msgspec.structs.replace(NEMA8, detectors=()), start=T)
    with pytest.raises(ValueError, match="site"):
        Aggregator("a b", NEMA8, start=T)
    with pytest.raises(ValueError, match="start"):
        Aggregator(SITE, NEMA8, start=-1.0)
    with pytest.raises(ValueError, match="next_seq"):
        Aggregator(SITE, NEMA8, start=T, next_seq=-1)
    with pytest.raises(ValueError, match="counter_bits_by_detector: unknown detector 'x'"):
        Aggregator(SITE, NEMA8, AggregationConfig(counter_bits_by_detector={"x": 16}), start=T)


@pytest.mark.parametrize("fields,match", [
    (dict(detector="a b"), "reading.detector"),
    (dict(t=-1.0), "reading S_0_stop.t"),
    (dict(value=math.nan), "reading S_0_stop.value"),
    (dict(value=-1.0), "reading S_0_stop.value"),
    (dict(value=1.5), "a counter reading is a whole number"),
    (dict(quantity="vehicles", value=0.5), "a vehicles reading is a whole number"),
    (dict(quantity="presence", value=0.5), "presence is 0 or 1"),
    (dict(quantity="occupancy", value=1.5), "occupancy is a fraction"),
    (dict(quantity="flow"), "reading S_0_stop.quantity: must be one of"),
])
def test_bad_readings_name_the_field(fields: dict, match: str) -> None:
    base = dict(detector="S_0_stop", t=1.0, quantity="counter", value=1.0)
    with pytest.raises(ValueError, match=match):
        Reading(**{**base, **fields})


def test_readings_decode_strictly_with_their_quantity() -> None:
    reading = msgspec.json.decode(b'{"detector":"S_0_stop","t":1.0,"quantity":"speed",'
                                  b'"value":12.5}', type=Reading)
    assert reading.quantity is Q.SPEED


@pytest.mark.parametrize("fields,match", [
    (dict(interval_s=0.5), "aggregation.interval_s"),
    (dict(counter_bits=0), "aggregation.counter_bits"),
    (dict(counter_bits=65), "aggregation.counter_bits"),
    (dict(counter_bits_by_detector={"a b": 16}), "aggregation.counter_bits_by_detector"),
    (dict(counter_bits_by_detector={"S_0_stop": 99}),
     "aggregation.counter_bits_by_detector.S_0_stop"),
    (dict(jam_spacing_m=0.0), "aggregation.jam_spacing_m"),
    (dict(max_flow_vph=0.0), "aggregation.max_flow_vph"),
    (dict(catch_up_intervals=0), "aggregation.catch_up_intervals"),
])
def test_bad_config_names_the_field(fields: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AggregationConfig(**fields)


# --- per approach ------------------------------------------------------------------------------
def test_approach_summaries() -> None:
    def lm(lane_id, count, occupancy=0.0, speed=None, queue=None, healthy=True):
        return LaneMeasurement(lane=lane_id, count=count, flow_vph=count * 60.0,
                               occupancy=occupancy, mean_speed_mps=speed, queue_m=queue,
                               healthy=healthy)

    m = Measurement(site=SITE, intersection_id="main-oak", seq=0, interval_start=T,
                    interval_s=60.0, lanes=(
                        lm("S_0", 3, 0.2, 10.0, 30.0), lm("S_1", 1, 0.4, 14.0, None, False),
                        lm("S_2", 0), lm("E_0", 0, speed=8.0), lm("E_1", 0, speed=10.0),
                        lm("X_9", 5)))
    out = by_approach(m, NEMA8)
    assert set(out) == {"S", "E"}  # X_9 is a lane of no approach
    assert out["S"] == ApproachSummary(approach="S", count=4, flow_vph=240.0,
                                       occupancy=pytest.approx(0.2), mean_speed_mps=11.0,
                                       queue_m=30.0, healthy=False)
    assert out["E"].mean_speed_mps == 9.0 and out["E"].queue_m is None and out["E"].healthy
    assert by_approach(msgspec.structs.replace(m, lanes=(lm("S_2", 0),)),
                       NEMA8)["S"].mean_speed_mps is None


# --- properties --------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(bits=st.sampled_from([8, 16]), first=st.integers(0, 255),
       steps=st.lists(st.integers(0, 2), min_size=1, max_size=400),
       interval=st.sampled_from([10.0, 60.0]))
def test_every_vehicle_is_counted_once_across_wraps_and_intervals(bits, first, steps,
                                                                   interval) -> None:
    a = Aggregator(SITE, NEMA8, AggregationConfig(interval_s=interval, counter_bits=bits),
                   start=T)
    value = first
    a.add(r("S_0_stop", 0, Q.COUNTER, value))
    for k, step in enumerate(steps, start=1):  # one poll a second
        value = (value + step) % 2 ** bits
        a.add(r("S_0_stop", k, Q.COUNTER, value))
    out = a.close(T + len(steps) + interval)
    assert sum(lane(m, "S_0").count for m in out) == sum(steps)
    assert [m.seq for m in out] == list(range(len(out)))
    assert [m.interval_start for m in out] == [T + k * interval for k in range(len(out))]
    assert a.counter_resets == 0


@settings(max_examples=200, deadline=None)
@given(changes=st.lists(st.tuples(st.floats(0.0, 179.9), st.sampled_from([0, 1])),
                        max_size=40))
def test_occupancy_is_the_exact_share_of_time_present(changes) -> None:
    a = agg()
    changes = sorted(changes, key=lambda c: c[0])
    for at, value in changes:
        a.add(r("E_1_stop", at, Q.PRESENCE, value))
    out = a.close(T + 180)
    for m in out:
        start, end = m.interval_start - T, m.interval_start - T + 60
        on = known = 0.0
        for k, (at, value) in enumerate(changes):
            until = changes[k + 1][0] if k + 1 < len(changes) else 180.0
            overlap = max(0.0, min(until, end) - max(at, start))
            known += overlap
            on += overlap * value
        expected = on / known if known > 0 else 0.0
        assert lane(m, "E_1").occupancy == pytest.approx(expected, abs=1e-6)
        assert 0.0 <= lane(m, "E_1").occupancy <= 1.0
