"""What the centre knows about each edge: its last status and its recent KPIs.

:class:`CentralState` is the small interface the operations API reads; the central service's
ingest (issue 6, item 1) will keep it up to date from the edges' ``status`` and
``measurements`` topics. :class:`MemoryState` is the in-memory implementation used until then,
by the tests and by ``tsc-central serve``.

:class:`StateHistory` is an optional extension a store may also implement: recent KPI
snapshots and measurements per intersection, which the dashboard plots and tabulates
(``GET /api/v1/intersections/{id}/kpis`` and ``.../measurements``). A store without it still
serves the dashboard, with the latest KPIs only and no measurements.
"""

from __future__ import annotations

import bisect
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, runtime_checkable

from edge_agent.messages import EdgeMode, Measurement, Status
from edge_agent.model import require_ident

__all__ = ["CentralState", "Health", "KpiSnapshot", "MemoryState", "StateHistory", "health_of"]


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


@runtime_checkable
class StateHistory(Protocol):
    """Optional history side of a state store (see the module docstring)."""

    def kpi_history(self, intersection_id: str, *, since: float = 0.0,
                    limit: int = 500) -> list[KpiSnapshot]:
        """KPI snapshots with ``t >= since``, oldest first, the newest ``limit`` of them."""

    def measurements(self, intersection_id: str, *, limit: int = 1) -> list[Measurement]:
        """The newest ``limit`` measurements, oldest first."""


class MemoryState:
    """:class:`CentralState` in memory, with setters for the producer (thread-safe).

    It also keeps the last ``history`` KPI snapshots and measurements of each intersection
    (:class:`StateHistory`).
    """

    def __init__(self, *, history: int = 720) -> None:
        if isinstance(history, bool) or not isinstance(history, int) or history < 1:
            raise ValueError(f"history: must be a whole number >= 1, got {history!r}")
        self._lock = threading.Lock()
        self._status: dict[str, Status] = {}
        self._kpis: dict[str, KpiSnapshot] = {}
        self._history = history
        self._kpi_history: dict[str, list[KpiSnapshot]] = {}
        self._measurements: dict[str, list[Measurement]] = {}

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
            series = self._kpi_history.setdefault(intersection_id, [])
            times = [k.t for k in series]
            at = bisect.bisect_left(times, kpis.t)
            if at < len(series) and series[at].t == kpis.t:
                series[at] = kpis  # a snapshot for the same time replaces the earlier one
            else:
                series.insert(at, kpis)
            del series[:-self._history]

    def add_measurement(self, measurement: Measurement) -> None:
        """Record a measurement of an intersection (kept newest last; a repeat seq is dropped)."""
        if not isinstance(measurement, Measurement):
            raise ValueError(f"measurement: must be a Measurement message, got "
                             f"{type(measurement).__name__}")
        with self._lock:
            kept = self._measurements.setdefault(measurement.intersection_id, [])
            if any(m.seq == measurement.seq for m in kept):
                return
            kept.append(measurement)
            kept.sort(key=lambda m: (m.interval_start, m.seq))  # nearly sorted: linear
            del kept[:-self._history]

    def status(self, intersection_id: str) -> Status | None:
        """See :meth:`CentralState.status`."""
        with self._lock:
            return self._status.get(intersection_id)

    def kpis(self, intersection_id: str) -> KpiSnapshot | None:
        """See :meth:`CentralState.kpis`."""
        with self._lock:
            return self._kpis.get(intersection_id)

    def kpi_history(self, intersection_id: str, *, since: float = 0.0,
                    limit: int = 500) -> list[KpiSnapshot]:
        """See :meth:`StateHistory.kpi_history`."""
        with self._lock:
            series = [k for k in self._kpi_history.get(intersection_id, ()) if k.t >= since]
        return series[-limit:] if limit > 0 else []

    def measurements(self, intersection_id: str, *, limit: int = 1) -> list[Measurement]:
        """See :meth:`StateHistory.measurements`."""
        with self._lock:
            kept = list(self._measurements.get(intersection_id, ()))
        return kept[-limit:] if limit > 0 else []
