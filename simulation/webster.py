"""Webster's fixed-time signal settings, and sharing green time within bounds. Pure maths.

Webster (1958): the delay-minimising cycle of an isolated intersection is
``C0 = (1.5 L + 5) / (1 - Y)``, where ``L`` is the lost time per cycle and ``Y`` the sum over
phases of the critical flow ratios ``y = q / s``; effective green is shared in proportion to
``y``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["SATURATION_VPH_PER_LANE", "allocate_green", "webster_cycle"]

SATURATION_VPH_PER_LANE = 1800.0  # HCM base saturation flow per lane, vehicles per hour
Y_MAX = 0.95  # beyond this the formula explodes; the cycle goes to its upper bound


def webster_cycle(lost_time: float, flow_ratios: Sequence[float], cycle_min: float,
                  cycle_max: float) -> float:
    """Webster's optimum cycle, bounded to ``cycle_min..cycle_max`` seconds."""
    if lost_time < 0 or any(y < 0 for y in flow_ratios):
        raise ValueError("lost time and flow ratios must be >= 0")
    total = sum(flow_ratios)
    if total >= Y_MAX:
        return cycle_max
    return min(max((1.5 * lost_time + 5.0) / (1.0 - total), cycle_min), cycle_max)


def allocate_green(total: float, weights: Sequence[float], minimum: Sequence[float],
                   maximum: Sequence[float]) -> list[float]:
    """Share ``total`` seconds in proportion to ``weights``, each share within its bounds.

    Water-filling: shares that would fall outside their bounds are fixed at the bound and the
    rest is shared again among the others. ValueError if the bounds cannot add up to
    ``total`` (the caller must then choose another cycle, not bend the bounds).
    """
    n = len(weights)
    if not len(minimum) == len(maximum) == n:
        raise ValueError("weights, minimum and maximum must have the same length")
    if sum(minimum) > total + 1e-9 or sum(maximum) < total - 1e-9:
        raise ValueError(f"cannot share {total:.1f} s within bounds summing to "
                         f"{sum(minimum):.1f}..{sum(maximum):.1f} s")
    fixed: dict[int, float] = {}
    while True:
        free = [i for i in range(n) if i not in fixed]
        left = total - sum(fixed.values())
        weight = sum(max(weights[i], 0.0) for i in free)
        shares = {i: (left * max(weights[i], 0.0) / weight if weight > 0 else left / len(free))
                  for i in free}
        low = [i for i in free if shares[i] < minimum[i] - 1e-9]
        high = [i for i in free if shares[i] > maximum[i] + 1e-9]
        if not low and not high:
            fixed.update(shares)
            return [fixed[i] for i in range(n)]
        # Fix the side that violates more: if raising the lows to their minimums takes more
        # than the highs give back, the final shares can only shrink, so the lows stay at
        # their minimums (and the other way round). Fixing lows first regardless could leave
        # too little for the highs' maximums to take, and the shares would not sum to total.
        deficit = sum(minimum[i] - shares[i] for i in low)
        excess = sum(shares[i] - maximum[i] for i in high)
        if deficit >= excess:
            for i in low:
                fixed[i] = minimum[i]
        else:
            for i in high:
                fixed[i] = maximum[i]
