"""Detector health: stuck on, stuck off, chatter, recovery with hysteresis, recalls, log once."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.aggregation import Quantity, Reading
from edge_agent.config import load_intersection
from edge_agent.detector_health import (
    DetectorHealth, FaultKind, HealthChange, HealthConfig, detector_phases,
)

from conftest import CONFIGS

NEMA8 = load_intersection(CONFIGS / "nema-8phase.toml")
NEMA4 = load_intersection(CONFIGS / "nema-4phase.toml")
T = 1_800_000_000.0
Q = Quantity


def r(detector: str, t: float, quantity: Quantity, value: float) -> Reading:
    return Reading(detector=detector, t=T + t, quantity=quantity, value=value)


def health(intersection=NEMA8, **config) -> DetectorHealth:
    return DetectorHealth(intersection, HealthConfig(**config), start=T)


def run(h: DetectorHealth, until: float, step: float = 1.0, start: float = 0.0):
    """Evaluate every ``step`` seconds; every change reported."""
    changes, t = [], start
    while t <= until:
        changes += h.evaluate(T + t)
        t += step
    return changes


def replay(h: DetectorHealth, readings: list[Reading], until: float, start: float = 0.0,
           step: float = 1.0):
    """Observe ``readings`` and evaluate every ``step`` seconds, in time order."""
    pending = sorted(readings, key=lambda x: x.t)
    changes, t = [], start
    while t <= until:
        while pending and pending[0].t <= T + t:
            h.observe(pending.pop(0))
        changes += h.evaluate(T + t)
        t += step
    return changes


def presence(h: DetectorHealth, detector: str, *changes: tuple[float, int]) -> None:
    for at, value in changes:
        h.observe(r(detector, at, Q.PRESENCE, value))


# --- recalls ---------------------------------------------------------------------------------
def test_calling_detectors_map_to_the_phases_of_their_lane() -> None:
    phases = detector_phases(NEMA8)
    assert phases["S_0_stop"] == phases["S_0_adv"] == {2}
    assert phases["S_2_stop"] == {5} and phases["N_2_stop"] == {1}
    assert phases["E_1_stop"] == {3} and phases["W_0_stop"] == {4}
    assert phases["S_queue"] == frozenset()  # measures only, calls nothing


def test_a_lane_no_movement_names_recalls_its_whole_approach() -> None:
    movements = tuple(msgspec.structs.replace(m, lanes=()) if m.id == "NB" else m
                      for m in NEMA4.movements)
    x = msgspec.structs.replace(NEMA4, movements=movements)
    assert detector_phases(x)["elm-1st_S_0_stop"] == {2}
    # An approach without lanes listed: its detectors' lanes belong to no approach.
    bare = msgspec.structs.replace(x, approaches=tuple(
        msgspec.structs.replace(a, lanes=()) for a in x.approaches))
    assert detector_phases(bare)["elm-1st_S_0_stop"] == frozenset()


# --- stuck on -----------------------------------------------------------------------------------
def test_stuck_on_fails_once_recalls_and_recovers_with_hysteresis() -> None:
    h = health()
    presence(h, "S_0_stop", (0, 1))
    assert run(h, 180) == []  # 180 s held is not yet longer than 180 s
    (change,) = run(h, 250, start=181)
    assert change == HealthChange(t=T + 181, detector="S_0_stop", failed=True,
                                  faults=frozenset({FaultKind.STUCK_ON}), phases=frozenset({2}),
                                  reason="stuck on: presence held 181 s > 180 s")
    assert str(change) == "detector S_0_stop failed: stuck on: presence held 181 s > 180 s"
    assert h.failed == {"S_0_stop"} and h.recall_phases == {2}
    assert h.faults("S_0_stop") == {FaultKind.STUCK_ON} and h.faults("S_1_stop") == set()
    readings = [r("S_0_stop", at, Q.PRESENCE, v) for at, v in ((300, 0), (400, 1), (470, 0))]
    # Clean from 300 s, until presence is held longer than 60 s (at 461 s); clean again from
    # 470 s; 300 s later it has recovered.
    assert replay(h, readings, 769, start=251) == []
    (back,) = run(h, 800, start=770)
    assert (back.t, back.failed, back.faults, back.reason) == \
        (T + 770, False, frozenset(), "normal for 300 s")
    assert str(back) == "detector S_0_stop recovered: normal for 300 s"
    assert h.failed == set() and h.recall_phases == set()


# --- stuck off ----------------------------------------------------------------------------------
def busy(h: DetectorHealth, detectors, every: float = 30.0, until: float = 1300.0) -> None:
    t = 5.0
    while t <= until:
        for d in detectors:
            h.observe(r(d, t, Q.VEHICLES, 1))
        t += every


def test_a_silent_loop_beside_busy_lanes_is_stuck_off() -> None:
    h = health()
    busy(h, ["S_1_stop", "S_2_stop", "S_0_adv", "S_1_adv"])
    assert run(h, 1200, step=10) == []
    changes = run(h, 1300, step=10, start=1201)
    assert [(c.detector, c.faults) for c in changes] == [
        ("S_0_stop", frozenset({FaultKind.STUCK_OFF}))]
    assert changes[0].reason.startswith("stuck off: no actuation for 1201 s while neighbours "
                                        "actuated")
    # The other approaches are silent too: a quiet street is not a fault.
    assert h.failed == {"S_0_stop"}


def test_stuck_off_recovers_after_regular_actuations() -> None:
    h = health()
    busy(h, ["S_1_stop", "S_2_stop", "S_0_adv", "S_1_adv"], until=3000)
    run(h, 1300, step=10)
    assert h.failed == {"S_0_stop"}
    # Clean from 1400 s; a gap of 200 s > 120 s breaks it at 1621 s; clean again from 1700 s.
    readings = [r("S_0_stop", at, Q.VEHICLES, 1)
                for at in [1400, 1450, 1500, 1700] + list(range(1760, 2100, 60))]
    assert replay(h, readings, 1999, start=1301) == []
    (back,) = replay(h, readings, 2001, start=2000)
    assert (back.detector, back.failed, back.t) == ("S_0_stop", False, T + 2000)


def test_counter_changes_count_as_actuations_and_first_readings_do_not() -> None:
    h = health()
    busy(h, ["S_1_stop", "S_2_stop", "S_0_adv", "S_1_adv"])
    h.observe(r("S_0_stop", 100, Q.COUNTER, 7))
    h.observe(r("S_0_stop", 200, Q.COUNTER, 7))  # unchanged: nothing passed
    h.observe(r("S_0_stop", 300, Q.COUNTER, 8))
    assert run(h, 1500, step=10) == []  # 300 + 1200 not yet passed
    assert [c.detector for c in run(h, 1510, step=10, start=1510)] == ["S_0_stop"]


def test_failed_neighbours_do_not_make_a_quiet_loop_look_stuck() -> None:
    h = health()
    # S_1_stop chatters from 1150 s: 150 presence changes in 50 s.
    presence(h, "S_1_stop", *[(1150 + k / 3, k % 2) for k in range(150)])
    assert [c.detector for c in h.evaluate(T + 1200)] == ["S_1_stop"]
    assert h.faults("S_1_stop") == {FaultKind.CHATTER}
    assert h.evaluate(T + 1201) == []  # its 75 actuations do not count: it is failed


def test_detectors_that_only_measure_are_not_expected_to_actuate() -> None:
    h = health()
    busy(h, ["S_0_stop", "S_1_stop", "S_2_stop", "S_0_adv", "S_1_adv"], until=7000)
    run(h, 5000, step=50)
    assert "S_queue" not in h.failed
    # ... until they report actuations themselves.
    h.observe(r("S_queue", 5001, Q.PRESENCE, 1))
    h.observe(r("S_queue", 5002, Q.PRESENCE, 0))
    assert [c.detector for c in run(h, 6300, step=50, start=5050)] == ["S_queue"]


def test_a_lone_detector_is_judged_against_the_whole_intersection() -> None:
    h = health(NEMA4)
    busy(h, ["elm-1st_S_0_stop", "elm-1st_N_0_stop"])
    changes = run(h, 1300, step=10)
    assert "elm-1st_E_0_stop" in {c.detector for c in changes}  # the E approach's only loop


# --- chatter ------------------------------------------------------------------------------------
def test_chatter_fails_over_the_rate_and_recovers_below_the_lower_one() -> None:
    h = health()
    presence(h, "E_0_stop", *[(k * 0.5, k % 2) for k in range(1, 122)])  # 120 changes
    assert h.evaluate(T + 60.4) == []
    presence(h, "E_0_stop", (60.6, 0), (60.7, 1))
    (change,) = h.evaluate(T + 60.7)
    assert change.faults == {FaultKind.CHATTER} and change.phases == {8}
    assert change.reason == "chattering: 122 presence changes in 60 s > 120"
    # 80 changes a minute: below the raising rate, above the clearing rate: stays failed.
    times = [61.0 + 1.5 * k + d for k in range(226) for d in (0.0, 0.25)] + [399.0]
    readings = [r("E_0_stop", at, Q.PRESENCE, n % 2) for n, at in enumerate(times)]
    assert readings[-1].value == 0  # ends off: a detector left on would be stuck on
    assert replay(h, readings, 400, start=61) == []
    # Then quiet: clean from the first second with at most 60 changes in the last minute.
    clean = next(n for n in range(401, 500) if sum(n - 60 < x <= n for x in times) <= 60)
    changes = replay(h, readings, 800, start=401)
    assert [(c.t - T, c.failed) for c in changes] == [(clean + 300, False)]


# --- inputs ---------------------------------------------------------------------------------------
def test_out_of_order_readings_are_counted_and_dropped() -> None:
    h = health()
    presence(h, "E_0_stop", (10, 1), (5, 0))
    assert h.out_of_order == 1
    assert run(h, 191) != []  # still on since 10 s: stuck


def test_other_quantities_do_not_move_the_checks() -> None:
    h = health()
    for k in range(200):
        h.observe(r("S_0_stop", k, Q.OCCUPANCY, 1.0))
        h.observe(r("S_0_stop", k, Q.SPEED, 10.0))
        h.observe(r("S_0_stop", k, Q.VEHICLES, 0))
    assert run(h, 200, step=10) == []


def test_inputs_are_checked() -> None:
    h = health()
    with pytest.raises(ValueError, match="unknown detector 'x'"):
        h.observe(r("x", 1, Q.PRESENCE, 1))
    h.evaluate(T + 10)
    with pytest.raises(ValueError, match="time went backwards"):
        h.evaluate(T + 9)
    with pytest.raises(ValueError, match="start"):
        DetectorHealth(NEMA8, start=-5.0)
    assert DetectorHealth(NEMA8, start=T).config == HealthConfig()


@pytest.mark.parametrize("fields,match", [
    (dict(stuck_on_s=0.0), "detector_health.stuck_on_s"),
    (dict(recovery_s=float("nan")), "detector_health.recovery_s"),
    (dict(stuck_on_clear_s=180.0), "stuck_on_clear_s: must be below stuck_on_s"),
    (dict(stuck_off_clear_s=1300.0), "stuck_off_clear_s: must be below stuck_off_s"),
    (dict(chatter_clear_per_min=120), "chatter_clear_per_min: must be below chatter_per_min"),
    (dict(stuck_off_neighbour_actuations=0), "stuck_off_neighbour_actuations"),
    (dict(chatter_per_min=0), "detector_health.chatter_per_min"),
    (dict(chatter_clear_per_min=-1), "detector_health.chatter_clear_per_min"),
])
def test_bad_config_names_the_field(fields: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HealthConfig(**fields)


# --- properties -------------------------------------------------------------------------------
DETECTORS = ["S_0_stop", "S_1_stop", "S_0_adv"]
PHASES = detector_phases(NEMA8)


@st.composite
def streams(draw):
    """Readings of three neighbouring detectors, evaluations in between, at rising times."""
    t, out = 0.0, []
    for _ in range(draw(st.integers(1, 80))):
        t += draw(st.sampled_from([0.1, 0.4, 1.0, 30.0, 130.0, 400.0]))
        kind = draw(st.sampled_from(["on", "off", "count", "evaluate", "evaluate"]))
        out.append((t, kind, draw(st.sampled_from(DETECTORS))))
    return out


@settings(max_examples=200, deadline=None)
@given(streams())
def test_each_entry_and_exit_of_failure_is_reported_once(stream) -> None:
    h = health(stuck_on_s=20.0, stuck_on_clear_s=10.0, stuck_off_s=300.0,
               stuck_off_clear_s=100.0, stuck_off_neighbour_actuations=3, chatter_per_min=8,
               chatter_clear_per_min=4, recovery_s=60.0)
    failed: set[str] = set()
    for t, kind, detector in stream:
        if kind == "evaluate":
            for change in h.evaluate(T + t):
                # A report always flips the state: never twice the same news.
                assert (change.detector in failed) != change.failed
                (failed.add if change.failed else failed.discard)(change.detector)
                assert change.faults == h.faults(change.detector)
            assert failed == h.failed
            assert h.recall_phases == {p for d in failed for p in PHASES[d]}
        elif kind == "count":
            h.observe(r(detector, t, Q.VEHICLES, 1))
        else:
            h.observe(r(detector, t, Q.PRESENCE, 1 if kind == "on" else 0))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(2.0, 20.0), st.floats(0.5, 10.0)), max_size=60))
def test_ordinary_traffic_never_fails_a_detector(pulses) -> None:
    # Gaps of 2-20 s, vehicles present 0.5-10 s: at most 2 changes per 2.5 s, 48 a minute.
    h = health()
    t = 0.0
    for gap, length in pulses:
        t += gap
        presence(h, "W_1_stop", (t, 1), (t + length, 0))
        t += length
        assert h.evaluate(T + t) == []
