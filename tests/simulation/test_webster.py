"""Webster's cycle and the bounded sharing of green time: known answers and properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulation.webster import Y_MAX, allocate_green, webster_cycle


# --- webster_cycle -----------------------------------------------------------------------------
def test_two_phase_optimum_is_webster_formula():
    # L = 10 s, Y = 0.3 + 0.2 = 0.5 -> C0 = (1.5 * 10 + 5) / (1 - 0.5) = 40 s
    assert webster_cycle(10.0, (0.3, 0.2), 30.0, 120.0) == pytest.approx(40.0)


def test_textbook_example():
    # L = 12 s, Y = 0.25 + 0.35 = 0.6 -> C0 = (18 + 5) / 0.4 = 57.5 s
    assert webster_cycle(12.0, [0.25, 0.35], 20.0, 180.0) == pytest.approx(57.5)


def test_zero_demand_gives_the_minimum_formula_value():
    # Y = 0: C0 = 1.5 L + 5
    assert webster_cycle(8.0, [0.0, 0.0], 10.0, 120.0) == pytest.approx(17.0)


def test_short_cycle_is_raised_to_cycle_min():
    assert webster_cycle(10.0, (0.3, 0.2), 60.0, 120.0) == 60.0


def test_long_cycle_is_clamped_to_cycle_max():
    # Y = 0.9 -> C0 = 20 / 0.1 = 200 s
    assert webster_cycle(10.0, (0.5, 0.4), 30.0, 150.0) == 150.0


@pytest.mark.parametrize("ratios", [(0.5, 0.45), (0.6, 0.4), (0.9, 0.9), (Y_MAX,)])
def test_saturated_demand_gives_cycle_max(ratios):
    assert sum(ratios) >= 0.95
    assert webster_cycle(10.0, ratios, 30.0, 140.0) == 140.0


def test_just_below_saturation_uses_the_formula_bounded():
    assert webster_cycle(10.0, (0.94,), 30.0, 1000.0) == pytest.approx(20.0 / 0.06)


@pytest.mark.parametrize("lost, ratios", [(-1.0, (0.3, 0.2)), (10.0, (0.3, -0.1))])
def test_negative_inputs_raise(lost, ratios):
    with pytest.raises(ValueError):
        webster_cycle(lost, ratios, 30.0, 120.0)


@given(lost=st.floats(0, 40), ratios=st.lists(st.floats(0, 0.5), min_size=1, max_size=8),
       low=st.floats(1, 100), span=st.floats(0, 200))
def test_cycle_is_always_within_bounds(lost, ratios, low, span):
    cycle = webster_cycle(lost, ratios, low, low + span)
    assert low <= cycle <= low + span


# --- allocate_green ----------------------------------------------------------------------------
def test_proportional_shares():
    assert allocate_green(30.0, [0.3, 0.2], [0.0, 0.0], [100.0, 100.0]) == \
        pytest.approx([18.0, 12.0])


def test_share_below_min_is_fixed_and_rest_redistributed():
    # Proportional: 36 / 4 -> but phase 2 must get >= 10
    greens = allocate_green(40.0, [0.9, 0.1], [5.0, 10.0], [100.0, 100.0])
    assert greens == pytest.approx([30.0, 10.0])


def test_share_above_max_is_fixed_and_rest_redistributed():
    # Proportional: 48 / 12 / 0... phase 1 capped at 40, 20 s left shared 0.2:0.1
    greens = allocate_green(60.0, [0.6, 0.2, 0.1], [0.0, 0.0, 0.0], [40.0, 100.0, 100.0])
    assert greens[0] == pytest.approx(40.0)
    assert greens[1:] == pytest.approx([40.0 / 3.0, 20.0 / 3.0])
    assert sum(greens) == pytest.approx(60.0)


def test_min_fix_can_push_another_share_to_its_max():
    # Proportional 45/5; phase 2 raised to 15 leaves 35 for phase 1, capped at 30; the 5 s
    # left goes back to phase 2.
    greens = allocate_green(50.0, [0.9, 0.1], [5.0, 15.0], [30.0, 60.0])
    assert greens == pytest.approx([30.0, 20.0])


def test_zero_weights_share_evenly():
    assert allocate_green(30.0, [0.0, 0.0, 0.0], [0, 0, 0], [50, 50, 50]) == \
        pytest.approx([10.0, 10.0, 10.0])


def test_bounds_meeting_the_total_exactly():
    assert allocate_green(20.0, [0.5, 0.5], [10.0, 10.0], [10.0, 10.0]) == \
        pytest.approx([10.0, 10.0])


@pytest.mark.parametrize("total, minimum, maximum", [
    (15.0, [10.0, 10.0], [50.0, 50.0]),   # minimums exceed the total
    (120.0, [5.0, 5.0], [50.0, 50.0]),    # maximums fall short of the total
])
def test_infeasible_bounds_raise(total, minimum, maximum):
    with pytest.raises(ValueError, match="cannot share"):
        allocate_green(total, [0.5, 0.5], minimum, maximum)


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="same length"):
        allocate_green(30.0, [0.5, 0.5], [0.0], [50.0, 50.0])


@st.composite
def feasible(draw):
    n = draw(st.integers(1, 8))
    # flow ratios: zero or realistic (subnormal weights lose the total to underflow)
    weights = draw(st.lists(st.just(0.0) | st.floats(1e-6, 1), min_size=n, max_size=n))
    minimum = draw(st.lists(st.floats(0, 30), min_size=n, max_size=n))
    maximum = [lo + draw(st.floats(0, 60)) for lo in minimum]
    t = draw(st.floats(0, 1))
    total = sum(minimum) + t * (sum(maximum) - sum(minimum))
    return total, weights, minimum, maximum


@settings(max_examples=300, deadline=None)
@given(feasible())
def test_shares_sum_to_total_and_respect_bounds(case):
    total, weights, minimum, maximum = case
    greens = allocate_green(total, weights, minimum, maximum)
    assert len(greens) == len(weights)
    assert sum(greens) == pytest.approx(total, abs=1e-6)
    for g, lo, hi in zip(greens, minimum, maximum):
        assert lo - 1e-6 <= g <= hi + 1e-6
