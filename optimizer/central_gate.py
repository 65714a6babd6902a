"""Validation of a region's candidate plans in SUMO, for the central loop (optional per region).

A region whose config has a ``[regions.validation]`` table names a SUMO scenario of its
intersections (a net imported with ``tsc-sim import-net``, so that the site's intersection and
lane ids are the net's). Before the region's candidates become adaptive candidates, the gate
(:func:`simulation.gate.validate`) runs them against the plans in force on the demand measured
in the planning window: the window's lane counts become edge counts
(:func:`simulation.counts.counts_from_measurements`, unhealthy lanes left out), SUMO's
routeSampler turns them into vehicles (:func:`simulation.demand_from_counts.demand_from_counts`)
and both plan sets run over ``horizon_s`` (default: the window) on ``seeds`` seeds. Without any
count in the window the scenario's own demand is used, and the reasons say so.

The answer is the gate's: accepted, or rejected with its reasons (guard, safety, delay). An
error (SUMO failing, counts the net cannot place) is a rejection too: the loop keeps the plans
in force and reports why. Episodes run in worker processes (the gate's default pool), off the
loop's thread.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from edge_agent.plan import TimingPlan
from optimizer.central_config import Validation
from optimizer.central_loop import Validator

__all__ = ["gate_validator"]


def gate_validator(scenario: Path, settings: Validation, window_s: float) -> Validator:
    """A :data:`~optimizer.central_loop.Validator` over the scenario (imported once)."""
    from simulation.counts import counts_from_measurements
    from simulation.demand_from_counts import demand_from_counts
    from simulation.gate import Tolerance, validate
    from simulation.net_import import import_net
    from simulation.scenario import load_scenario

    scen = load_scenario(scenario)
    imported = import_net(scen.net_file)
    tolerance = Tolerance(settings.tolerance, settings.tolerance_s)
    horizon = settings.horizon_s or window_s

    def check(region: str, candidates: Mapping[str, TimingPlan],
              incumbent: Mapping[str, TimingPlan], windows: Mapping[str, Sequence[Any]],
              now: float) -> tuple[bool, list[str]]:
        measurements = [m for ms in windows.values() for m in ms]
        notes: list[str] = []
        with tempfile.TemporaryDirectory(prefix="tsc-central-gate-") as tmp:
            demand = None
            if measurements:
                origin = min(m.interval_start for m in measurements)
                table = counts_from_measurements(measurements, imported, origin_posix=origin,
                                                 origin_sim=scen.begin)
                if table.dropped:
                    notes.append(f"{len(table.dropped)} edge intervals left out (unhealthy)")
                if table.total > 0:
                    sampled = demand_from_counts(table, scen, Path(tmp) / "measured.rou.xml")
                    demand = sampled.path
                    notes.append(f"demand: {sampled.vehicles} vehicles from {table.total} "
                                 f"counted ({sampled.sampling})")
            if demand is None:
                notes.append("no counts in the window: validated on the scenario's own demand")
            verdict = validate(dict(candidates), dict(incumbent), demand, horizon,
                               settings.seeds, scenario=scen, tolerance=tolerance,
                               imported=imported, jobs=settings.jobs or None)
        change = verdict.delay_change_s
        if change is not None:
            notes.append(f"delay change {change:+.2f} s/veh over {len(verdict.seeds)} seed(s)")
        return verdict.accepted, list(verdict.reasons) + notes

    return check
