"""Spillback at the edge: exit detectors on departure lanes, read every poll. Pure, no IO.

An ``exit`` detector (:class:`~edge_agent.model.Detector`) is a presence loop ``position_m``
down a departure lane that names the movements discharging over it. Read occupied without a
break for ``spillback_s`` it is *full*: the lane is queued back to the intersection. A movement
is blocked when every exit detector naming it is full, and an approach lane when every movement
leaving it is. A stale, unread or failed exit detector is never full: not knowing is not read as
spillback. :class:`~edge_agent.local_actuation.LocalActuation` keeps blocked lanes from calling
or holding a green.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

from edge_agent.modbus_core import Reading
from edge_agent.model import DetectorKind, Intersection
from edge_agent.registers import RegisterMap, Signal

__all__ = ["ExitWatch"]


@dataclass(slots=True)
class _Exit:
    """An exit detector: its presence (or occupancy) register and since when it is occupied
    without a break (None: free, or not known)."""

    id: str
    movements: frozenset[str]
    presence: str | None = None
    occupancy: str | None = None
    occupied_since: float | None = None


class ExitWatch:
    """The exit detectors of one intersection that its register map can read."""

    def __init__(self, intersection: Intersection, regmap: RegisterMap,
                 spillback_s: float = 3.0) -> None:
        self.spillback_s = spillback_s
        detectors = {d.id: d for d in intersection.detectors if d.kind == DetectorKind.EXIT}
        self._exits: dict[str, _Exit] = {}
        for reg in regmap.registers:
            d = detectors.get(reg.detector or "")
            if d is None or reg.signal not in (Signal.DETECTOR_PRESENCE,
                                               Signal.DETECTOR_OCCUPANCY):
                continue  # standing traffic, not counts, tells spillback
            exit_ = self._exits.setdefault(d.id, _Exit(d.id, frozenset(d.movements)))
            if reg.signal == Signal.DETECTOR_PRESENCE:
                exit_.presence = reg.name
            else:
                exit_.occupancy = reg.name
        #: movement -> the exit detectors watching it
        self._watching: dict[str, list[str]] = {}
        for e in self._exits.values():
            for m in e.movements:
                self._watching.setdefault(m, []).append(e.id)

    @property
    def ids(self) -> frozenset[str]:
        """The exit detectors watched (those with a presence or occupancy register)."""
        return frozenset(self._exits)

    def observe(self, fresh: Callable[[str | None], Reading | None]) -> None:
        """One poll: ``fresh(register)`` is the register's reading, None if stale or unread."""
        for exit_ in self._exits.values():
            r = fresh(exit_.presence) or fresh(exit_.occupancy)
            if r is None or r.value is None or r.read_at is None or r.value <= 0:
                exit_.occupied_since = None  # free, or not known: never read as full
            elif exit_.occupied_since is None:
                exit_.occupied_since = r.read_at

    def full(self, now: float, failed: Collection[str] = frozenset()) -> set[str]:
        """The exit detectors occupied without a break for ``spillback_s`` or longer."""
        return {e.id for e in self._exits.values() if e.id not in failed and
                e.occupied_since is not None and now - e.occupied_since >= self.spillback_s}

    def blocked_lanes(self, now: float, lane_moves: Mapping[str, frozenset[str]],
                      lanes: Iterable[str], failed: Collection[str] = frozenset()) -> set[str]:
        """Of ``lanes``, those all of whose movements (``lane_moves``) lead only into full
        exits."""
        if not self._exits:
            return set()
        full = self.full(now, failed)  # never a failed one
        blocked = {m for m, ids in self._watching.items()
                   if any(i not in failed for i in ids)
                   and all(i in full for i in ids if i not in failed)}
        return {lane for lane in lanes if lane_moves.get(lane) and lane_moves[lane] <= blocked}
