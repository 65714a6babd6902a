"""Demand estimation from detector measurements. Pure numpy; time is an argument.

Per lane, every step, the caller reports how many vehicles crossed the stop line
(``departures``), how many stand queued (``queue``), and whether the lane was discharging a
standing queue into a free exit (``discharging``). From these:

* **arrival flow** ``q``: departures plus the change of the standing queue (what arrived is
  what left plus what joined the queue), smoothed exponentially with a half-life;
* **saturation flow** ``s``: departures per second of green while a queue discharges, blended
  with a prior (``prior_saturation_vph``, worth ``prior_weight_veh`` observed departures) so a
  lane that never discharged keeps the prior;
* **queue**: the last measured standing queue.

A missing or faulty measurement (NaN, negative) leaves that lane's estimates as they were and
marks the lane unobserved; :meth:`DemandEstimator.flows` then falls back to ``nan`` so that
the solver can use the lane's phase-mates or the intersection's median instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["DemandEstimator", "saturation_from_headways"]


def saturation_from_headways(headways_s: Sequence[float], skip_first: int = 4) -> float:
    """Saturation flow (veh/h) from discharge headways at the stop line (HCM method).

    The first ``skip_first`` headways carry the start-up lost time and are left out.
    """
    h = np.asarray(headways_s, dtype=float)[skip_first:]
    h = h[np.isfinite(h) & (h > 0)]
    if h.size == 0:
        raise ValueError("no valid discharge headway after the start-up vehicles")
    return 3600.0 / float(np.mean(h))


class DemandEstimator:
    """Flows, saturation flows and queues for a fixed list of lanes."""

    def __init__(self, lanes: Sequence[str], *, prior_saturation_vph: float = 1800.0,
                 prior_weight_veh: float = 30.0, halflife_s: float = 900.0) -> None:
        self.lanes = list(lanes)
        self.index = {lane: i for i, lane in enumerate(self.lanes)}
        n = len(self.lanes)
        self.halflife = halflife_s
        self.prior_s = prior_saturation_vph / 3600.0  # veh/s
        self.prior_veh = prior_weight_veh
        self._rate = np.zeros(n)  # smoothed arrivals, veh/s (bias-corrected on read)
        self._weight = np.zeros(n)  # sum of smoothing weights (for the bias correction)
        self._queue = np.full(n, np.nan)
        self._sat_dep = np.zeros(n)
        self._sat_time = np.zeros(n)
        self.observed_s = np.zeros(n)

    def observe(self, dt: float, departures: np.ndarray, queue: np.ndarray,
                discharging: np.ndarray) -> None:
        """One measurement interval of ``dt`` seconds for every lane (arrays in lane order)."""
        departures = np.asarray(departures, dtype=float)
        queue = np.asarray(queue, dtype=float)
        ok = np.isfinite(departures) & np.isfinite(queue) & (departures >= 0) & (queue >= 0)
        prev = np.where(np.isfinite(self._queue), self._queue, queue)
        arrivals = np.where(ok, np.maximum(departures + queue - prev, 0.0), 0.0)
        decay = 0.5 ** (dt / self.halflife)
        self._rate = np.where(ok, decay * self._rate + (1 - decay) * arrivals / dt, self._rate)
        self._weight = np.where(ok, decay * self._weight + (1 - decay), self._weight)
        self._queue = np.where(ok, queue, self._queue)
        dis = ok & np.asarray(discharging, dtype=bool)
        self._sat_dep += np.where(dis, departures, 0.0)
        self._sat_time += np.where(dis, dt, 0.0)
        self.observed_s += np.where(ok, dt, 0.0)

    def flows(self) -> np.ndarray:
        """Arrival flow per lane, veh/h (nan where the lane was never observed)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = np.where(self._weight > 0, self._rate / self._weight, np.nan)
        return rate * 3600.0

    def saturation(self) -> np.ndarray:
        """Saturation flow per lane, veh/h: observed discharge blended with the prior."""
        prior_time = self.prior_veh / self.prior_s
        return (self.prior_veh + self._sat_dep) / (prior_time + self._sat_time) * 3600.0

    def queues(self) -> np.ndarray:
        """Last standing queue per lane, veh (nan where never observed)."""
        return self._queue.copy()
