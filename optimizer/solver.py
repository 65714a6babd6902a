"""Plan optimisation: cycle and splits per intersection, offsets for coordinated groups.

Pure numpy/scipy. Per intersection, the critical flow ratio ``y`` of each phase (critical lane
flow over its saturation flow) and the lost time ``L`` (yellow + red clearance of every phase)
give Webster's delay as a function of the cycle; greens are shared in proportion to ``y``
within the min/max bounds (equal degree of saturation), and the cycle minimising the total
delay is found on a grid refined by a bounded scalar search.

Offsets: a coordinated group's links (upstream signal, downstream signal, travel time, weight)
form a graph; the maximum-weight spanning tree from the heaviest signal fixes each downstream
signal's offset to its upstream one's plus the travel time, modulo the common cycle (a green
wave in the heavier direction of every tree link).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from simulation.webster import allocate_green, webster_cycle

__all__ = ["IntersectionSolution", "Link", "optimise_intersection", "offsets",
           "webster_delay", "webster_optimum"]

X_CAP = 0.98  # beyond this degree of saturation the random-delay term explodes


def webster_optimum(lost_time: float, flow_ratios: Sequence[float], cycle_min: float = 1.0,
                    cycle_max: float = 1e9) -> float:
    """Webster's optimum cycle ``(1.5 L + 5) / (1 - Y)``, within the bounds."""
    return webster_cycle(lost_time, list(flow_ratios), cycle_min, cycle_max)


def webster_delay(cycle: float, greens: np.ndarray, flows: np.ndarray,
                  saturation: np.ndarray) -> float:
    """Flow-weighted mean Webster delay (s/veh) of the critical streams.

    ``flows`` and ``saturation`` in veh/s; greens are effective greens. Past ``X_CAP`` the
    overflow term continues linearly, so that the search still prefers less saturation.
    """
    lam = np.clip(greens / cycle, 1e-6, 1.0)
    q = np.maximum(flows, 1e-6)
    x = q / (saturation * lam)
    xc = np.minimum(x, X_CAP)
    uniform = cycle * (1 - lam) ** 2 / (2 * (1 - lam * xc))
    overflow = xc ** 2 / (2 * q * (1 - xc))
    overflow = overflow + np.maximum(x - X_CAP, 0.0) * 1800.0  # half an hour per unit of overload
    return float(np.sum(q * (uniform + overflow)) / np.sum(q))


@dataclass(frozen=True)
class IntersectionSolution:
    """Cycle, effective greens per phase (input order) and the predicted delay."""

    cycle: float
    greens: tuple[float, ...]
    delay_s: float
    webster_cycle: float


def optimise_intersection(flows_vph: Sequence[float], saturation_vph: Sequence[float],
                          lost_time: float, min_green: Sequence[float],
                          max_green: Sequence[float], cycle_min: float, cycle_max: float,
                          *, step: float = 5.0, max_degree: float = 0.95
                          ) -> IntersectionSolution:
    """Cycle and greens minimising Webster delay, every green within its bounds.

    ``flows_vph``/``saturation_vph`` are each phase's critical stream. Raises ValueError when no
    cycle in ``cycle_min..cycle_max`` can hold the minimum greens plus the lost time.
    """
    q = np.asarray(flows_vph, dtype=float) / 3600.0
    s = np.asarray(saturation_vph, dtype=float) / 3600.0
    y = np.minimum(q / s, 1.0)
    lo = max(cycle_min, lost_time + float(np.sum(min_green)))
    hi = min(cycle_max, lost_time + float(np.sum(max_green)))
    if lo > hi + 1e-9:
        raise ValueError(f"no cycle within {cycle_min:.0f}-{cycle_max:.0f} s holds the minimum "
                         f"greens and {lost_time:.0f} s lost time")
    total = float(np.sum(y))
    cap = total if total <= max_degree else max_degree
    weights = y * (cap / total) if total > 0 else np.ones_like(y)
    c0 = webster_optimum(lost_time, weights.tolist(), lo, hi)

    def greens_for(cycle: float) -> np.ndarray:
        return np.asarray(allocate_green(cycle - lost_time, weights.tolist(), list(min_green),
                                         list(max_green)))

    def cost(cycle: float) -> float:
        return webster_delay(cycle, greens_for(cycle), np.maximum(q, 1e-4), s)

    grid = np.unique(np.clip(np.append(np.arange(lo, hi + 1e-9, step), [hi, c0]), lo, hi))
    costs = [cost(c) for c in grid]
    best = float(grid[int(np.argmin(costs))])
    if hi - lo > 1e-6:
        a, b = max(lo, best - step), min(hi, best + step)
        result = minimize_scalar(cost, bounds=(a, b), method="bounded",
                                 options={"xatol": 0.5})
        if result.success and result.fun < min(costs):
            best = float(result.x)
    greens = greens_for(best)
    return IntersectionSolution(best, tuple(float(g) for g in greens), cost(best), c0)


@dataclass(frozen=True)
class Link:
    """Platoons leave ``up`` when its phase ``up_phase_start`` s into its cycle starts and
    reach ``down`` after ``travel_s``; ``weight`` is the flow on the link (veh/h)."""

    up: str
    down: str
    travel_s: float
    weight: float
    up_phase_start: float = 0.0


def offsets(nodes: Sequence[str], links: Sequence[Link], cycle: float,
            weight_of: dict[str, float] | None = None) -> dict[str, tuple[float, str | None]]:
    """Offset of each node's coordinated phase and the node it is timed from (None: a root).

    Maximum-weight spanning forest (Prim from the heaviest node of each component, links
    taken undirected, each keeping its own direction for the timing). A downstream node's
    offset is its upstream node's offset plus ``up_phase_start`` plus the travel time; a link
    walked against its direction gives the upstream node's offset from the downstream one.
    """
    weight_of = weight_of or {}
    adjacent: dict[str, list[Link]] = {n: [] for n in nodes}
    for link in links:
        if link.up in adjacent and link.down in adjacent and link.up != link.down:
            adjacent[link.up].append(link)
            adjacent[link.down].append(link)
    node_weight = {n: weight_of.get(n, sum(lk.weight for lk in adjacent[n])) for n in nodes}
    out: dict[str, tuple[float, str | None]] = {}
    for root in sorted(nodes, key=lambda n: -node_weight[n]):
        if root in out:
            continue
        out[root] = (0.0, None)
        frontier = list(adjacent[root])
        while frontier:
            frontier.sort(key=lambda lk: lk.weight)
            link = frontier.pop()
            if link.up in out and link.down in out:
                continue
            if link.up in out:
                new = link.down
                value = out[link.up][0] + link.up_phase_start + link.travel_s
                out[new] = (value % cycle, link.up)
            else:
                new = link.up
                value = out[link.down][0] - link.travel_s - link.up_phase_start
                out[new] = (value % cycle, link.down)
            frontier.extend(lk for lk in adjacent[new] if lk is not link)
    return out
