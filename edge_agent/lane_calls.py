"""Which phases each lane's vehicles call, and with what weight. Pure, from the model.

A lane carries the vehicle movements that name it (a lane no movement names carries its
approach's). A phase serves a lane *whole* when it serves every one of those movements. The
local actuation at the edge (:mod:`edge_agent.local_actuation`) and the adaptive controller in
the SUMO harness (:mod:`optimizer.adaptive`) both count a lane's vehicles toward a phase by
:func:`lane_calls`.
"""

from __future__ import annotations

from collections.abc import Mapping

from edge_agent.model import DetectorKind, Intersection, Turn

__all__ = ["lane_calls", "lane_movements", "lane_phases"]


def lane_movements(intersection: Intersection) -> dict[str, frozenset[str]]:
    """Per approach lane (and lane of a detector other than an exit detector), the vehicle
    movements leaving it (a lane no movement names carries its approach's movements)."""
    approach_of = {lane: a.id for a in intersection.approaches for lane in a.lanes}
    vehicle = [m for m in intersection.movements if m.turn != Turn.PEDESTRIAN]
    lanes = dict.fromkeys([*approach_of, *(lane for m in vehicle for lane in m.lanes),
                           *(d.lane for d in intersection.detectors
                             if d.kind != DetectorKind.EXIT)])
    return {lane: frozenset({m.id for m in vehicle if lane in m.lanes} or
                            {m.id for m in vehicle if m.approach == approach_of.get(lane)})
            for lane in lanes}


def lane_phases(intersection: Intersection) -> dict[str, dict[int, bool]]:
    """Per lane, the phases serving its vehicle movements, each with whether it serves all of
    them (a lane no movement names belongs to its approach's movements)."""
    return {lane: {p.number: moves <= set(p.movements) for p in intersection.phases
                   if moves & set(p.movements)}
            for lane, moves in lane_movements(intersection).items()}


def lane_calls(lane_phases: Mapping[str, Mapping[int, bool]],
               partial_weight: float = 1.0) -> dict[int, dict[str, float]]:
    """Per phase, the lanes whose vehicles call it and the weight each counts with.

    ``lane_phases`` is, per lane, the phases serving its movements, each with whether it serves
    all of them (:func:`lane_phases`). A lane counts 1 toward a phase serving all its
    movements; toward one serving only some of them it counts 0 when another phase serves
    them all (a left running permissive with the through in one phase and protected in
    another: every vehicle of the lane goes in the first, so the protected phase is not called
    by it, and, measured on the RESCO and generated networks, calling it cost more change time
    than it saved), else ``partial_weight`` (the lane's turn has no other service; detectors
    cannot tell which way its head turns, so it calls in part).
    """
    out: dict[int, dict[str, float]] = {}
    for lane, phases in lane_phases.items():
        whole_elsewhere = any(phases.values())
        for n, whole in phases.items():
            out.setdefault(n, {})[lane] = 1.0 if whole else \
                0.0 if whole_elsewhere else partial_weight
    return out
