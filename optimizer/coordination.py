"""Coordination: signals grouped into corridors from the network, one cycle per group, offsets
from travel times in both directions. Pure (numpy); the network is read once by the caller.

* :func:`find_links`: for every signal's approach edge, walk upstream along a simple chain of
  edges (no branching) until the exit edge of another signal; a link ``up -> down`` with the
  travel time at the speed limit, kept when that is at most ``max_travel_s`` (closely spaced
  signals, where platoons stay together).
* :func:`choose_phases`: each linked signal's coordinated phase is the one serving the most
  flow on its linked approaches (the arterial); a link is coordinated when the upstream
  signal's coordinated phase feeds it and the downstream one's serves it.
* :func:`groups`: connected components of coordinated links (corridors and clusters).
* :func:`two_way_offset`: the offset of the downstream signal's coordinated green relative to
  the upstream one's maximising the flow-weighted share of each direction's platoon that
  arrives on green (a green wave in both directions where the spacing allows, else the
  heavier direction).
* :func:`group_offsets`: a maximum-weight spanning tree of a group's links fixes every offset
  from the root's (the heaviest signal) through the pairwise offsets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
import numpy as np

__all__ = ["ChainLink", "choose_phases", "describe", "find_links", "group_offsets", "groups",
           "two_way_offset"]


@dataclass(frozen=True)
class ChainLink:
    """Signal ``up``'s exit edge leads, without a branch, to ``down``'s approach edge
    ``approach`` after ``travel_s`` s at the speed limit (``length_m`` metres)."""

    up: str
    down: str
    exit_edge: str
    approach: str
    length_m: float
    travel_s: float


def find_links(exit_edges: Mapping[str, set[str]], approach_edges: Mapping[str, set[str]],
               upstream: Callable[[str], list[str]], length: Callable[[str], float],
               speed: Callable[[str], float], *, max_travel_s: float,
               max_edges: int = 8) -> list[ChainLink]:
    """Links between signals (see the module doc). ``upstream(edge)`` lists the edges that
    feed ``edge`` (u-turns left out by the caller); ``length``/``speed`` per edge."""
    owner: dict[str, str] = {}
    for tls, edges in exit_edges.items():
        for e in edges:
            owner.setdefault(e, tls)
    out = []
    for down, edges in approach_edges.items():
        for approach in sorted(edges):
            edge, dist, travel = approach, 0.0, 0.0
            for _ in range(max_edges):
                dist += length(edge)
                travel += length(edge) / max(speed(edge), 1.0)
                if travel > max_travel_s:
                    break
                up = owner.get(edge)
                if up is not None and up != down:
                    out.append(ChainLink(up, down, edge, approach, dist, travel))
                    break
                feeders = upstream(edge)
                if len(feeders) != 1:
                    break
                edge = feeders[0]
    return out


def choose_phases(links: Sequence[ChainLink], approach_flow: Callable[[str, str], dict[int, float]],
                  feeds: Callable[[str, str], set[int]]) -> tuple[dict[str, int], list[ChainLink]]:
    """Each linked signal's coordinated phase and the links it coordinates.

    ``approach_flow(tls, edge)``: flow (veh/h) each phase of ``tls`` serves from ``edge``;
    ``feeds(tls, edge)``: the phases of ``tls`` that send traffic into its exit ``edge``.
    """
    score: dict[str, dict[int, float]] = {}
    for lk in links:
        for phase, flow in approach_flow(lk.down, lk.approach).items():
            per = score.setdefault(lk.down, {})
            per[phase] = per.get(phase, 0.0) + flow
    for lk in links:  # a signal that only sends platoons picks the phase feeding the most links
        if lk.up not in score:
            for phase in feeds(lk.up, lk.exit_edge):
                per = score.setdefault(lk.up, {})
                per[phase] = per.get(phase, 0.0) + 1e-3
    phase = {tls: max(sorted(per), key=lambda n: per[n]) for tls, per in score.items()}
    kept = [lk for lk in links if phase[lk.up] in feeds(lk.up, lk.exit_edge)
            and approach_flow(lk.down, lk.approach).get(phase[lk.down], 0.0) > 0.0]
    return phase, kept


def groups(nodes: Sequence[str], pairs: Sequence[tuple[str, str]]) -> list[list[str]]:
    """Connected components (each sorted, the list sorted by first member) of the pairs."""
    parent = {n: n for n in nodes}

    def root(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for a, b in pairs:
        if a in parent and b in parent:
            parent[root(a)] = root(b)
    out: dict[str, list[str]] = {}
    for n in nodes:
        out.setdefault(root(n), []).append(n)
    return sorted((sorted(g) for g in out.values()), key=lambda g: g[0])


def _overlap(start: np.ndarray, length: float, green: float, cycle: float) -> np.ndarray:
    """Length of [start, start+length) inside the green [0, green) on a circle of ``cycle``."""
    total = np.zeros_like(start)
    s = np.mod(start, cycle)
    for shift in (-cycle, 0.0, cycle):
        lo = np.maximum(s + shift, 0.0)
        hi = np.minimum(s + shift + length, green)
        total += np.maximum(hi - lo, 0.0)
    return total


def two_way_offset(cycle: float, travel_ab: float, green_a: float, green_b: float,
                   weight_ab: float, travel_ba: float | None = None, weight_ba: float = 0.0,
                   step: float = 1.0) -> float:
    """Offset of B's coordinated green start after A's (s, in ``[0, cycle)``).

    A's platoon leaves during A's green and reaches B ``travel_ab`` s later; B's leaves during
    B's green and reaches A ``travel_ba`` s later. The offset maximises the weighted share of
    both platoons arriving on green; ties go to the offset closest to the heavier direction's
    ideal (its platoon head arriving as the green starts).
    """
    travel_ba = travel_ab if travel_ba is None else travel_ba
    theta = np.arange(0.0, cycle, step)
    # A -> B: arrivals at B start at travel_ab, B's green starts at theta.
    ab = _overlap(travel_ab - theta, green_a, green_b, cycle) / max(green_a, 1e-9)
    # B -> A: B's platoon leaves at theta, reaches A at theta + travel_ba; A's green at 0.
    ba = _overlap(theta + travel_ba, green_b, green_a, cycle) / max(green_b, 1e-9)
    score = weight_ab * ab + weight_ba * ba
    ideal = travel_ab if weight_ab >= weight_ba else -travel_ba
    distance = np.abs((theta - ideal + cycle / 2) % cycle - cycle / 2)
    best = np.lexsort((distance, -np.round(score, 9)))[0]
    return float(theta[best])


def group_offsets(members: Sequence[str], pairs: Mapping[tuple[str, str], tuple[float, float]],
                  weight_of: Mapping[str, float], cycle: float) -> dict[str, float]:
    """Offsets of a group from pairwise ones: ``pairs[(a, b)] = (offset of b after a,
    weight)``. Maximum-weight spanning tree (Prim) from the heaviest member, offset 0."""
    adjacent: dict[str, list[tuple[float, str, float]]] = {m: [] for m in members}
    for (a, b), (theta, w) in pairs.items():
        if a in adjacent and b in adjacent and a != b:
            adjacent[a].append((w, b, theta))
            adjacent[b].append((w, a, -theta))
    out: dict[str, float] = {}
    for root in sorted(members, key=lambda m: (-weight_of.get(m, 0.0), m)):
        if root in out:
            continue
        out[root] = 0.0
        frontier = [(w, root, n, th) for w, n, th in adjacent[root]]
        while frontier:
            frontier.sort(key=lambda f: (f[0], f[2]))
            _, src, dst, th = frontier.pop()
            if dst in out:
                continue
            out[dst] = (out[src] + th) % cycle
            frontier.extend((w, dst, n, t) for w, n, t in adjacent[dst] if n not in out)
    return out


def describe(group: Sequence[str], cycle: float, offsets: Mapping[str, float],
             phases: Mapping[str, int]) -> str:
    """One line for a plan's explanation."""
    parts = ", ".join(f"{m} phase {phases[m]} at {offsets[m]:.0f} s" for m in group)
    return f"coordinated group of {len(group)} on a common {cycle:.0f} s cycle: {parts}"
