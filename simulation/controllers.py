"""Signal controllers the harness runs by name: ``fixed``, ``actuated``, ``max-pressure``,
``webster``, and any registered under the ``tsc_edge.controllers`` entry-point group (the
optimizer registers ``adaptive`` there, so simulation never imports optimizer).

A controller spec is picklable (a name and parameters): calling it with a running
:class:`~simulation.sumo_session.SumoSession` builds the controller, whose ``step(time)`` runs
once per simulation step. Our own controllers change signals only through
:class:`~simulation.signal_driver.SignalDriver` (guard-checked switches, proper clearance).

Baselines run as published: where the guard's floors raised a designer's clearance times
(arterial4x4's 2 s yellows become 3 s), ``fixed``, ``actuated``, ``max-pressure`` and
``webster`` keep the designer's values, and :attr:`ControllerSpec.clearance` says which applies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from simulation.baselines import MaxPressure, Webster, install_actuated
from simulation.net_import import ImportedNet, import_net
from simulation.signal_driver import SignalDriver, guarded_clearance
from simulation.sumo_program import split_program

__all__ = ["BUILT_IN", "ControllerSpec", "available_controllers", "designed_clearance",
           "make_drivers"]

ENTRY_POINT_GROUP = "tsc_edge.controllers"
BUILT_IN = ("fixed", "actuated", "max-pressure", "webster")


def available_controllers() -> list[str]:
    """Built-in names and those registered by installed packages."""
    return list(BUILT_IN) + sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)
                                   if ep.name not in BUILT_IN)


def designed_clearance(imported: ImportedNet, tls_id: str) -> dict[int, tuple[float, float]]:
    """The designer's own (yellow, red) per phase, before any floor was applied."""
    groups = split_program(imported.programs[tls_id], imported.phase_states[tls_id])
    return {g.phase: (g.yellow, g.red) for g in groups}


def make_drivers(session: Any, imported: ImportedNet, *, as_designed: bool) -> dict[str, SignalDriver]:
    """A driver per traffic light, starting in the phase the net's programme shows now."""
    drivers = {}
    for tls_id, intersection in imported.intersections.items():
        states = imported.phase_states[tls_id]
        current = session.conn.trafficlight.getRedYellowGreenState(tls_id)
        start = next((n for n, s in states.items() if s == current), None)
        clearance = designed_clearance(imported, tls_id) if as_designed \
            else guarded_clearance(intersection)
        drivers[tls_id] = SignalDriver(session.conn, tls_id, intersection, states,
                                       clearance=clearance, start_phase=start,
                                       step_length=session.step_length)
    return drivers


@dataclass(frozen=True)
class ControllerSpec:
    """A controller by name with its parameters; call it with a session to build it."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in available_controllers():
            raise ValueError(f"unknown controller {self.name!r}; available: "
                             f"{', '.join(available_controllers())}")

    @property
    def is_baseline(self) -> bool:
        return self.name in BUILT_IN

    @property
    def clearance(self) -> str:
        """Which clearance times the controller runs: the designer's or the guarded ones."""
        return "as-designed" if self.is_baseline else "guarded"

    def factory(self) -> Callable[[Any], Any] | None:
        """``run_episode``'s controller factory (None for ``fixed``: the net's programme)."""
        return None if self.name == "fixed" else self

    def __call__(self, session: Any) -> Any:
        imported = import_net(session.scenario.net_file)
        if self.name == "actuated":
            return install_actuated(session, imported, **self.params)
        if self.name == "max-pressure":
            return MaxPressure(session, imported, make_drivers(session, imported,
                                                               as_designed=True), **self.params)
        if self.name == "webster":
            return Webster(session, imported, make_drivers(session, imported, as_designed=True),
                           **self.params)
        (ep,) = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == self.name]
        build = ep.load()
        return build(session, imported, make_drivers(session, imported, as_designed=False),
                     **self.params)
