"""Solvers and estimators on synthetic cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.estimation import DemandEstimator, saturation_from_headways
from optimizer.solver import Link, offsets, optimise_intersection, webster_delay, webster_optimum


# --- Webster ------------------------------------------------------------------------------------
def test_webster_optimum_for_a_two_phase_isolated_intersection():
    # L = 10 s, y = 0.3 + 0.2: C0 = (1.5 * 10 + 5) / (1 - 0.5) = 40 s
    assert webster_optimum(10.0, [0.3, 0.2]) == pytest.approx(40.0)


def test_delay_minimising_cycle_is_near_webster_and_greens_equalise_saturation():
    sol = optimise_intersection([540, 360], [1800, 1800], 10.0, [5, 5], [90, 90], 20, 180,
                                step=1.0)
    assert sol.webster_cycle == pytest.approx(40.0)
    # Webster's formula approximates the minimum of his delay expression within ~10 %.
    assert sol.cycle == pytest.approx(40.0, rel=0.15)
    g1, g2 = sol.greens
    assert g1 + g2 == pytest.approx(sol.cycle - 10.0)
    assert g1 / g2 == pytest.approx(0.3 / 0.2, rel=1e-6)  # equal degree of saturation
    around = [webster_delay(c, np.array(sol.greens) * (c - 10) / (sol.cycle - 10),
                            np.array([0.15, 0.1]), np.array([0.5, 0.5]))
              for c in (sol.cycle - 5, sol.cycle + 5)]
    assert sol.delay_s <= min(around)


def test_greens_respect_their_bounds_and_the_cycle_its_range():
    sol = optimise_intersection([100, 1500, 50], [1800, 1800, 1800], 12.0, [7, 10, 5],
                                [60, 45, 8], 30, 90)
    assert 30 <= sol.cycle <= 90
    for g, lo, hi in zip(sol.greens, [7, 10, 5], [60, 45, 8]):
        assert lo - 1e-6 <= g <= hi + 1e-6


def test_oversaturation_goes_to_the_longest_cycle_allowed():
    sol = optimise_intersection([1200, 1200], [1800, 1800], 10.0, [5, 5], [90, 90], 30, 120)
    assert sol.cycle == pytest.approx(120.0, abs=1.0)


def test_impossible_bounds_are_refused():
    with pytest.raises(ValueError, match="no cycle"):
        optimise_intersection([100, 100], [1800, 1800], 20.0, [30, 30], [40, 40], 30, 60)


# --- offsets ----------------------------------------------------------------------------------
def test_one_way_arterial_offsets_are_travel_time_modulo_cycle():
    speed, spacing, cycle = 12.5, 300.0, 60.0  # 24 s between signals
    nodes = ["a", "b", "c", "d"]
    links = [Link(u, d, spacing / speed, 800) for u, d in zip(nodes, nodes[1:])]
    out = offsets(nodes, links, cycle, weight_of={"a": 1000, "b": 1, "c": 1, "d": 1})
    assert {n: round(o, 6) for n, (o, _) in out.items()} == \
        {"a": 0.0, "b": 24.0, "c": 48.0, "d": 12.0}
    assert out["c"][1] == "b" and out["a"][1] is None
    # whichever signal is the root, neighbours differ by the travel time modulo the cycle
    free = offsets(nodes, links, cycle)
    for u, d in zip(nodes, nodes[1:]):
        assert (free[d][0] - free[u][0]) % cycle == pytest.approx(24.0)


def test_offsets_follow_the_heavier_link_and_the_platoon_release_time():
    links = [Link("a", "b", 20.0, 900, up_phase_start=10.0), Link("c", "b", 30.0, 100)]
    out = offsets(["a", "b", "c"], links, 90.0, weight_of={"b": 5000})
    # b is the root; a is timed against its link to b: b = a + 10 + 20 -> a = -30 = 60
    assert out["b"] == (0.0, None)
    assert out["a"] == (pytest.approx(60.0), "b")
    assert out["c"] == (pytest.approx(60.0), "b")


# --- estimation -------------------------------------------------------------------------------
@pytest.mark.parametrize("headway, expected", [(2.0, 1800.0), (2.4, 1500.0)])
def test_saturation_flow_from_synthetic_discharge_headways(headway, expected):
    headways = [3.5, 3.0, 2.7, 2.5] + [headway] * 20
    assert saturation_from_headways(headways) == pytest.approx(expected)


def test_saturation_from_headways_needs_queued_vehicles():
    with pytest.raises(ValueError):
        saturation_from_headways([3.0, 2.5])


def test_estimator_learns_saturation_from_observed_discharge():
    est = DemandEstimator(["a", "b"], prior_saturation_vph=1800, prior_weight_veh=10)
    # lane a discharges one vehicle every 2.4 s while its queue stands; lane b never discharges
    for t in range(2400):
        dep = 1.0 if (t * 10) % 24 < 10 else 0.0  # 1 vehicle per 2.4 s on average
        est.observe(1.0, np.array([dep, 0.0]), np.array([5.0, 0.0]), np.array([True, False]))
    s = est.saturation()
    assert s[0] == pytest.approx(1500.0, rel=0.02)
    assert s[1] == pytest.approx(1800.0)


def test_estimator_flows_from_counts_and_queue_growth():
    est = DemandEstimator(["a"], halflife_s=300)
    queue = 0.0
    for t in range(3600):  # 600 veh/h arrive: 0.1 veh/s leave, the queue grows 0.0667 veh/s
        queue += 1 / 15
        dep = 1.0 if t % 10 == 0 else 0.0
        est.observe(1.0, np.array([dep]), np.array([queue]), np.array([False]))
    assert est.flows()[0] == pytest.approx(600.0, rel=0.05)
    assert est.queues()[0] == pytest.approx(queue)


def test_missing_and_faulty_detectors_leave_estimates_alone():
    est = DemandEstimator(["a", "b"])
    est.observe(1.0, np.array([1.0, np.nan]), np.array([2.0, 3.0]), np.array([False, False]))
    est.observe(1.0, np.array([1.0, -4.0]), np.array([2.0, 3.0]), np.array([False, False]))
    flows = est.flows()
    assert np.isfinite(flows[0]) and np.isnan(flows[1])
    assert est.observed_s.tolist() == [2.0, 0.0]
