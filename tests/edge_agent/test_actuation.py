"""Local actuation on scripted detector inputs: every rule with a known answer."""

from __future__ import annotations

import math
import time

import pytest

from edge_agent.actuation import (ActuationParams, Actuator, Bounds, Coordination,
                                  PhaseMeasure)
from edge_agent.model import ApproachConfig, Intersection, Movement, Phase

BOUNDS = {1: Bounds(5, 40), 2: Bounds(5, 30), 3: Bounds(5, 20)}
CLEARANCE = {1: 5.0, 2: 5.0, 3: 5.0}
IDLE = PhaseMeasure()


def three_phase() -> Intersection:
    approaches = tuple(ApproachConfig(id=a, speed_mps=13.9) for a in ("n", "s", "e"))
    movements = (Movement(id="ns", approach="n", turn="through"),
                 Movement(id="sn", approach="s", turn="through"),
                 Movement(id="ew", approach="e", turn="through"))
    phases = tuple(Phase(number=n, movements=m, min_green=5, max_green=60, yellow=3,
                         red_clearance=2) for n, m in ((1, ("ns",)), (2, ("sn",)), (3, ("ew",))))
    return Intersection(id="x", approaches=approaches, movements=movements, phases=phases,
                        rings=(((1, 2, 3),),),
                        conflicts=(("ns", "ew"), ("sn", "ew"), ("ns", "sn")))


@pytest.fixture
def actuator() -> Actuator:
    return Actuator(three_phase(), (1, 2, 3), ActuationParams(passage_s=2.5, max_wait_s=120))


def decide(a: Actuator, elapsed: float, measures: dict, now: float = 100.0, phase: int = 1,
           coordination: Coordination | None = None):
    return a.decide(now, phase, elapsed, measures, BOUNDS, CLEARANCE, coordination)


def test_min_green_is_held_whatever_the_demand(actuator):
    d = decide(actuator, 3.0, {1: IDLE, 2: PhaseMeasure(queue=20)})
    assert d.action == "hold" and "min green" in d.reason


def test_extension_while_the_queue_discharges(actuator):
    d = decide(actuator, 10.0, {1: PhaseMeasure(queue=14, discharging=14, gap_s=1.1),
                                2: PhaseMeasure(queue=3)})
    assert d.action == "extend"
    assert d.reason == "phase 1 extended: queue 14 veh, gap 1.1 s"


def test_extension_on_a_short_gap(actuator):
    d = decide(actuator, 10.0, {1: PhaseMeasure(approaching=2, gap_s=1.8),
                                2: PhaseMeasure(queue=3)})
    assert d.action == "extend" and d.reason == "phase 1 extended: gap 1.8 s <= passage 2.5 s"


def test_a_standing_queue_that_does_not_discharge_does_not_extend(actuator):
    d = decide(actuator, 10.0, {1: PhaseMeasure(queue=6, discharging=0),
                                2: PhaseMeasure(queue=3)})
    assert d.action == "switch" and d.target == 2


def test_gap_out_switches_to_the_phase_with_most_demand(actuator):
    d = decide(actuator, 12.0, {1: PhaseMeasure(approaching=1, gap_s=4.0),
                                2: PhaseMeasure(queue=2), 3: PhaseMeasure(queue=8)})
    assert d.action == "switch" and d.target == 3
    assert d.reason.startswith("phase 1 gap-out after 12 s (gap 4.0 s > 2.5 s) -> phase 3")


def test_phases_without_demand_are_skipped(actuator):
    d = decide(actuator, 12.0, {1: IDLE, 2: IDLE, 3: PhaseMeasure(queue=1)})
    assert d.target == 3 and "skipped 2" in d.reason


def test_rest_in_green_without_conflicting_demand(actuator):
    d = decide(actuator, 80.0, {1: PhaseMeasure(queue=5, discharging=5), 2: IDLE, 3: IDLE})
    assert d.action == "hold" and "no conflicting demand" in d.reason


def test_max_out_at_the_plans_maximum(actuator):
    d = decide(actuator, 40.0, {1: PhaseMeasure(queue=9, discharging=9, gap_s=0.5),
                                2: PhaseMeasure(queue=1)})
    assert d.action == "switch" and d.target == 2 and "max-out at 40 s" in d.reason


def test_spillback_ends_the_green_and_blocked_phases_are_not_chosen(actuator):
    d = decide(actuator, 8.0, {1: PhaseMeasure(blocked=True), 2: PhaseMeasure(queue=9,
                                                                            blocked=True),
                               3: PhaseMeasure(queue=1)})
    assert d.action == "switch" and d.target == 3 and "spillback" in d.reason


def test_a_starving_phase_goes_first(actuator):
    actuator.served(3, 0.0)
    d = decide(actuator, 10.0, {1: PhaseMeasure(queue=9, discharging=9),
                                2: PhaseMeasure(queue=20), 3: PhaseMeasure(queue=1)},
               now=130.0)
    assert d.action == "switch" and d.target == 3 and "waited 130 s" in d.reason


def served_next() -> Actuator:
    a = Actuator(three_phase(), (1, 2, 3),
                 ActuationParams(passage_s=2.5, max_wait_s=120, preempt_wait_s=180))
    a.served(3, 0.0)
    return a


def test_a_starving_phase_is_served_next_without_cutting_a_discharging_queue():
    # Phase 3 has waited 130 s (>= max_wait_s, < preempt_wait_s): phase 1 keeps discharging
    # its 9 vehicles, and says that phase 3 comes next.
    d = decide(served_next(), 10.0, {1: PhaseMeasure(queue=9, discharging=9),
                                     2: PhaseMeasure(queue=20), 3: PhaseMeasure(queue=1)},
               now=130.0)
    assert d.action == "extend" and "phase 3 waited 130 s: served next" in d.reason


def test_at_gap_out_the_starving_phase_goes_before_a_bigger_queue():
    d = decide(served_next(), 10.0, {1: IDLE, 2: PhaseMeasure(queue=20),
                                     3: PhaseMeasure(queue=1)}, now=130.0)
    assert d.action == "switch" and d.target == 3
    assert "gap-out" in d.reason and "phase 3 waited 130 s" in d.reason


def test_after_preempt_wait_a_starving_phase_ends_a_discharging_green():
    d = decide(served_next(), 10.0, {1: PhaseMeasure(queue=9, discharging=9),
                                     2: PhaseMeasure(queue=20), 3: PhaseMeasure(queue=1)},
               now=181.0)
    assert d.action == "switch" and d.target == 3
    assert "phase 1 ended: phase 3 waited 181 s" in d.reason


def test_a_starving_phase_still_waits_no_longer_than_max_wait_plus_a_max_green():
    # Served next at the latest when phase 1 maxes out (40 s here), before preempt_wait_s.
    d = decide(served_next(), 40.0, {1: PhaseMeasure(queue=9, discharging=9),
                                     2: PhaseMeasure(queue=20), 3: PhaseMeasure(queue=1)},
               now=160.0)
    assert d.action == "switch" and d.target == 3 and "max-out" in d.reason


def test_preempt_wait_is_validated():
    with pytest.raises(ValueError, match="preempt_wait_s"):
        ActuationParams(preempt_wait_s=-1.0)


def test_detectorless_phase_is_recalled():
    a = Actuator(three_phase(), (1, 2, 3), ActuationParams(recall_s=60))
    a.served(2, 0.0)
    measures = {1: IDLE, 2: PhaseMeasure(detected=False), 3: IDLE}
    assert decide(a, 10.0, measures, now=30.0).action == "hold"
    d = decide(a, 10.0, measures, now=61.0)
    assert d.target == 2 and "recall" in d.reason


def test_the_guard_is_asked_and_a_refusal_holds():
    x = three_phase()
    a = Actuator(x, (1, 2, 3))
    # A plan bound below the configured minimum (5 s) is never trusted: the guard refuses.
    low = {1: Bounds(1, 40), 2: Bounds(5, 30), 3: Bounds(5, 20)}
    d = a.decide(100.0, 1, 2.0, {1: IDLE, 2: PhaseMeasure(queue=5)}, low, CLEARANCE)
    assert d.action == "hold"


# --- coordination ----------------------------------------------------------------------------
COORD = Coordination(cycle=90.0, offset=10.0, phase=1, yield_s=30.0)


def test_coordinated_phase_holds_to_its_yield_point(actuator):
    d = decide(actuator, 20.0, {1: IDLE, 2: PhaseMeasure(queue=9)}, now=10.0 + 20.0,
               coordination=COORD)
    assert d.action == "hold" and "yield point" in d.reason
    d = decide(actuator, 31.0, {1: IDLE, 2: PhaseMeasure(queue=9)}, now=10.0 + 31.0,
               coordination=COORD)
    assert d.action == "switch" and d.target == 2


def test_force_off_keeps_the_offset(actuator):
    # Phase 2 green, 4 s before the coordinated phase must start: clearance is 5 s.
    d = decide(actuator, 20.0, {1: IDLE, 2: PhaseMeasure(queue=9, discharging=9)},
               now=10.0 + 86.0, phase=2, coordination=COORD)
    assert d.action == "switch" and d.target == 1 and "force-off" in d.reason


def test_early_return_when_side_streets_gap_out(actuator):
    d = decide(actuator, 8.0, {1: PhaseMeasure(queue=2), 2: IDLE, 3: IDLE},
               now=10.0 + 50.0, phase=2, coordination=COORD)
    assert d.action == "switch" and d.target == 1 and "early return" in d.reason


def test_a_phase_that_cannot_fit_before_the_next_cycle_is_not_started(actuator):
    d = decide(actuator, 8.0, {1: IDLE, 2: IDLE, 3: PhaseMeasure(queue=4)},
               now=10.0 + 84.0, phase=2, coordination=COORD)
    assert d.target == 1


def test_params_are_validated():
    with pytest.raises(ValueError, match="actuation.passage_s"):
        ActuationParams(passage_s=math.nan)
    with pytest.raises(ValueError, match="actuation.passage_min_s"):
        ActuationParams(passage_s=2.0, passage_min_s=3.0)


# --- passage scaling, pressure and waiting in the ranking ---------------------------------------
def scaled() -> Actuator:
    return Actuator(three_phase(), (1, 2, 3),
                    ActuationParams(passage_s=3.0, passage_min_s=1.0, waiting_ref_veh=10.0))


def test_passage_shrinks_linearly_with_the_queue_on_other_phases():
    a = scaled()
    assert a.passage(1, {1: IDLE, 2: IDLE, 3: IDLE}) == pytest.approx(3.0)
    assert a.passage(1, {1: PhaseMeasure(queue=30), 2: PhaseMeasure(queue=5)}) == \
        pytest.approx(2.0)  # own queue does not count; 5 of 10 veh: half way
    assert a.passage(1, {2: PhaseMeasure(queue=8), 3: PhaseMeasure(queue=40)}) == \
        pytest.approx(1.0)


def test_a_gap_that_extends_when_nobody_waits_gaps_out_when_many_do():
    a = scaled()
    d = a.decide(100.0, 1, 10.0, {1: PhaseMeasure(approaching=1, gap_s=2.5),
                                  2: PhaseMeasure(approaching=1, gap_s=30.0)}, BOUNDS, CLEARANCE)
    assert d.action == "extend" and "passage 3.0 s" in d.reason
    d = a.decide(100.0, 1, 10.0, {1: PhaseMeasure(approaching=1, gap_s=2.5),
                                  2: PhaseMeasure(queue=12)}, BOUNDS, CLEARANCE)
    assert d.action == "switch" and d.target == 2 and "> 1.0 s" in d.reason


def test_pressure_term_prefers_the_phase_whose_exit_has_room():
    a = Actuator(three_phase(), (1, 2, 3), ActuationParams(pressure_weight=0.5))
    measures = {1: IDLE, 2: PhaseMeasure(queue=6, downstream=10),
                3: PhaseMeasure(queue=4, downstream=0)}
    d = a.decide(100.0, 1, 10.0, measures, BOUNDS, CLEARANCE)
    assert d.target == 3  # 6 - 0.5 * 10 = 1 < 4
    plain = Actuator(three_phase(), (1, 2, 3), ActuationParams(pressure_weight=0.0))
    assert plain.decide(100.0, 1, 10.0, measures, BOUNDS, CLEARANCE).target == 2


def test_waiting_time_raises_a_phases_rank():
    a = Actuator(three_phase(), (1, 2, 3), ActuationParams(wait_weight=0.1))
    a.served(2, 90.0)
    a.served(3, 30.0)  # phase 3 has waited 70 s: worth 7 vehicles, phase 2 1 vehicle
    measures = {1: IDLE, 2: PhaseMeasure(queue=6), 3: PhaseMeasure(queue=2)}
    assert a.decide(100.0, 1, 10.0, measures, BOUNDS, CLEARANCE).target == 3


def test_a_decision_takes_well_under_a_millisecond(actuator):
    measures = {1: PhaseMeasure(approaching=1, gap_s=4.0), 2: PhaseMeasure(queue=2),
                3: PhaseMeasure(queue=8)}
    n = 2000
    start = time.perf_counter()
    for k in range(n):
        decide(actuator, 12.0, measures, now=100.0 + k)
    assert (time.perf_counter() - start) / n < 1e-3


def test_a_phase_with_less_than_a_queued_vehicle_does_not_claim_starvation(actuator):
    # 0.3 veh: a shared lane's queue weighted toward a protected-turn phase
    actuator.served(3, 0.0)
    d = decide(actuator, 10.0, {1: PhaseMeasure(queue=9, discharging=9),
                                2: IDLE, 3: PhaseMeasure(queue=0.3)}, now=130.0)
    assert d.action == "extend"
