"""What the centre knows about each edge: its last status and its recent KPIs.

:class:`CentralState` is the small interface the operations API reads; the central service's
ingest (issue 6, item 1) will keep it up to date from the edges' ``status`` and
``measurements`` topics. :class:`MemoryState` is the in-memory implementation used until then,
by the tests and by ``tsc-central serve``.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

from edge_agent.messages import EdgeMode, Status
from edge_agent.model import require_ident

__all__ = ["CentralState", "Health", "KpiSnapshot", "MemoryState", "health_of"]


@dataclass(frozen=True, slots=True)
class KpiSnapshot:
    """KPIs of one intersection over the ``window_s`` seconds before POSIX time ``t``.

    ``values`` maps a KPI name (``mean_delay_s``, ``throughput_vph``, ``max_queue_veh``...) to a
    finite number; the names are the producer's, the API passes them through.
    """

    t: float
    window_s: float
    values: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("t", "window_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise ValueError(f"kpis.{name}: must be a finite number >= 0, got {value!r}")
        for key, value in self.values.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"kpis.values: names must be non-empty text, got {key!r}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise ValueError(f"kpis.values.{key}: must be a finite number, got {value!r}")
        object.__setattr__(self, "values", dict(self.values))

    def to_dict(self) -> dict[str, Any]:
        """A plain dict for JSON output."""
        return {"t": self.t, "window_s": self.window_s, "values": dict(self.values)}


class Health:
    """One-word health of an edge, derived from its last status (see :func:`health_of`)."""

    UNKNOWN = "unknown"  # no status received yet
    OFFLINE = "offline"  # the last status says offline (e.g. the last will)
    STALE = "stale"  # online, but no status for longer than the staleness limit
    FAULT = "fault"  # the edge reports its fault mode or a failed controller link
    DEGRADED = "degraded"  # running, with failed detectors
    OK = "ok"


def health_of(status: Status | None, now: float, stale_after_s: float) -> str:
    """Summarise a status: unknown, offline, stale, fault, degraded or ok."""
    if status is None:
        return Health.UNKNOWN
    if not status.online:
        return Health.OFFLINE
    if now - status.t > stale_after_s:
        return Health.STALE
    if status.mode == EdgeMode.FAULT or not status.controller_ok:
        return Health.FAULT
    if status.failed_detectors:
        return Health.DEGRADED
    return Health.OK


class CentralState(Protocol):
    """Read side of the centre's state store, per intersection id."""

    def status(self, intersection_id: str) -> Status | None:
        """The last status message the edge published (None if none yet)."""

    def kpis(self, intersection_id: str) -> KpiSnapshot | None:
        """The most recent KPIs (None if none yet)."""


class MemoryState:
    """:class:`CentralState` in memory, with setters for the producer (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status: dict[str, Status] = {}
        self._kpis: dict[str, KpiSnapshot] = {}

    def set_status(self, status: Status) -> None:
        """Record an edge's status (a newer ``t`` wins; an offline last will, t = 0, always)."""
        if not isinstance(status, Status):
            raise ValueError(f"status: must be a Status message, got {type(status).__name__}")
        with self._lock:
            old = self._status.get(status.intersection_id)
            if old is None or not status.online or status.t >= old.t:
                self._status[status.intersection_id] = status

    def set_kpis(self, intersection_id: str, kpis: KpiSnapshot) -> None:
        """Record the latest KPIs of an intersection."""
        require_ident(intersection_id, "intersection_id")
        if not isinstance(kpis, KpiSnapshot):
            raise ValueError(f"kpis: must be a KpiSnapshot, got {type(kpis).__name__}")
        with self._lock:
            self._kpis[intersection_id] = kpis

    def status(self, intersection_id: str) -> Status | None:
        """See :meth:`CentralState.status`."""
        with self._lock:
            return self._status.get(intersection_id)

    def kpis(self, intersection_id: str) -> KpiSnapshot | None:
        """See :meth:`CentralState.kpis`."""
        with self._lock:
            return self._kpis.get(intersection_id)
