"""The edge's mode state machine: pure, table-driven, time as an argument.

Modes are :class:`~edge_agent.messages.EdgeMode`, the enum the edge's status reports:

``STARTUP``
    Just started, or a fault was just cleared. The edge writes nothing; the controller runs
    its own programme until the edge knows the controller is healthy and what to run.
``LOCAL_FALLBACK``
    The edge runs its local time-of-day plan: the centre is silent (no heartbeat for longer
    than ``heartbeat_timeout_s``) or has no plan in force.
``CENTRAL``
    The centre is alive (``good_heartbeats_to_resume`` consecutive good heartbeats) and one
    of its plans is in force.
``OVERRIDE``
    An operator's override plan is in force, until its expiry, whether or not the centre is
    heard meanwhile: the operator's decision is signed and bounded in time.
``FAULT``
    The controller reported a fault. The edge writes nothing until the fault is cleared.

How a step works. An event first updates what the machine knows (controller health,
heartbeats, the plans in force) through the handler table ``_HANDLERS``. Then the rule table
``_RULES`` (first match wins) names the mode that knowledge calls for. Entering ``FAULT``, and
leaving it for ``STARTUP``, take effect at once: neither starts a plan, they stop the edge
writing. Every other change switches the plan the controller runs, so it is only *requested*:
the state carries it as ``pending`` and the next :class:`SafeBoundary` completes it. The
runtime sends that event at the end of a cycle of the running plan (see
:func:`edge_agent.admission.in_switch_window`), never during a yellow or red clearance. A
request that is no longer called for is withdrawn, and at a boundary the machine enters the
mode called for *then*, not what an earlier request named.

Log once. :func:`step` returns :class:`Transition` records only when something changes (a
request made, withdrawn or completed; a mode entered), never on every tick, so the runtime
can log each record as it comes and report entering and leaving ``FAULT`` or
``LOCAL_FALLBACK`` exactly once.

Time never goes backwards: an event older than the previous one raises ``ValueError``. The
runtime feeds the machine from one clock (POSIX seconds, the clock plans are timed in).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Union

from edge_agent.messages import EdgeMode
from edge_agent.model import Contract, require, require_finite, require_int
from edge_agent.plan import PlanSource

__all__ = [
    "ModeConfig", "ControllerOk", "ControllerFault", "HeartbeatReceived", "Tick",
    "PlanActivated", "OverrideExpired", "FaultCleared", "SafeBoundary", "ModeEvent",
    "EVENT_TYPES", "Change", "Transition", "ModeState", "initial_state", "step", "ModeMachine",
]


class ModeConfig(Contract, kw_only=True):
    """Timeouts of the mode machine (seconds).

    ``heartbeat_timeout_s``: the centre counts as lost once its heartbeat has been silent for
    longer than this. ``good_heartbeats_to_resume``: consecutive good heartbeats (each within
    the timeout of the one before) needed to trust the centre again; one beat after an outage
    could be a flapping link. ``startup_grace_s``: how long a starting edge waits for the
    centre before it runs its local plan. The names match the agent file's ``[central]``.
    """

    heartbeat_timeout_s: float = 30.0
    good_heartbeats_to_resume: int = 3
    startup_grace_s: float = 60.0

    def __post_init__(self) -> None:
        require_finite(self.heartbeat_timeout_s, "modes.heartbeat_timeout_s", minimum=0.0)
        require(self.heartbeat_timeout_s > 0.0, "modes.heartbeat_timeout_s", "must be > 0")
        require_int(self.good_heartbeats_to_resume, "modes.good_heartbeats_to_resume", 1, 1000)
        require_finite(self.startup_grace_s, "modes.startup_grace_s", minimum=0.0)


# --- events -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Event:
    """Base of every event: ``t`` is when it happened, POSIX seconds."""

    t: float

    def __post_init__(self) -> None:
        require_finite(self.t, f"{type(self).__name__}.t", minimum=0.0)


@dataclass(frozen=True, slots=True)
class ControllerOk(_Event):
    """The controller answers and reports no fault."""


@dataclass(frozen=True, slots=True)
class ControllerFault(_Event):
    """The controller reported a fault (alarm, flash, lost communication): enter FAULT."""

    reason: str = "controller fault"

    def __post_init__(self) -> None:
        _Event.__post_init__(self)
        require(isinstance(self.reason, str) and self.reason != "", "ControllerFault.reason",
                "must be non-empty text")


@dataclass(frozen=True, slots=True)
class HeartbeatReceived(_Event):
    """A heartbeat from the centre arrived (``t`` is the time of receipt on the edge)."""


@dataclass(frozen=True, slots=True)
class Tick(_Event):
    """Time passes: lets the machine notice silence and expiries."""


@dataclass(frozen=True, slots=True)
class PlanActivated(_Event):
    """A plan from the centre took effect: the plan book returned it from ``due``.

    The mode follows the plan *in force*, not one merely accepted for later, so this is sent
    when :meth:`edge_agent.admission.PlanBook.due` hands the plan over. An override must carry
    its expiry (operators override for a bounded time); any ``expiry`` lies after ``t``.
    """

    plan_id: int
    source: PlanSource
    expiry: float | None = None

    def __post_init__(self) -> None:
        _Event.__post_init__(self)
        require_int(self.plan_id, "PlanActivated.plan_id", 1, 2**63 - 1)
        require(isinstance(self.source, PlanSource), "PlanActivated.source",
                f"must be a PlanSource, got {self.source!r}")
        if self.expiry is not None:
            require_finite(self.expiry, "PlanActivated.expiry")
            require(self.expiry > self.t, "PlanActivated.expiry",
                    f"must be after t ({self.t:.3f}), got {self.expiry:.3f}")
        require(self.source != PlanSource.OVERRIDE or self.expiry is not None,
                "PlanActivated.expiry", "an override plan must carry an expiry")


@dataclass(frozen=True, slots=True)
class OverrideExpired(_Event):
    """The override in force ended (its expiry passed, or the runtime ended it)."""


@dataclass(frozen=True, slots=True)
class FaultCleared(_Event):
    """The controller fault is cleared and the controller is healthy: leave FAULT."""


@dataclass(frozen=True, slots=True)
class SafeBoundary(_Event):
    """The running plan reached a cycle boundary: a pending mode change may complete now."""


ModeEvent = Union[ControllerOk, ControllerFault, HeartbeatReceived, Tick, PlanActivated,
                  OverrideExpired, FaultCleared, SafeBoundary]
#: Every event type the machine handles, in a fixed order (tests iterate over it).
EVENT_TYPES: tuple[type, ...] = (ControllerOk, ControllerFault, HeartbeatReceived, Tick,
                                 PlanActivated, OverrideExpired, FaultCleared, SafeBoundary)


# --- state and transitions ----------------------------------------------------------------
class Change(str, enum.Enum):
    """What a :class:`Transition` record reports."""

    REQUESTED = "requested"  # a change waits for the next safe boundary
    WITHDRAWN = "withdrawn"  # a waiting change is no longer called for
    ENTERED = "entered"  # the mode changed


@dataclass(frozen=True, slots=True)
class Transition:
    """One change to log: ``previous`` is the mode in force, ``mode`` the one requested,
    withdrawn or entered."""

    t: float
    change: Change
    previous: EdgeMode
    mode: EdgeMode
    reason: str

    def __str__(self) -> str:
        return (f"mode {self.change.value}: {self.previous.value} -> {self.mode.value} "
                f"({self.reason})")


@dataclass(frozen=True, slots=True)
class ModeState:
    """Everything the machine knows; replaced, never mutated, by :func:`step`.

    ``central_until``/``override_until`` are the expiries of the centre's plan and of the
    override in force (``math.inf``: no expiry; ``None``: none in force).
    """

    mode: EdgeMode
    t: float
    since: float
    pending: EdgeMode | None = None
    controller_ok: bool = False
    last_heartbeat: float | None = None
    good_heartbeats: int = 0
    central_plan: int | None = None
    central_until: float | None = None
    override_plan: int | None = None
    override_until: float | None = None
    fault_reason: str = ""


def initial_state(t: float) -> ModeState:
    """The state of an edge that starts at ``t``."""
    require_finite(t, "t", minimum=0.0)
    return ModeState(mode=EdgeMode.STARTUP, t=t, since=t)


# --- handlers: what an event teaches the machine ------------------------------------------
Handler = Callable[[ModeState, ModeEvent, ModeConfig], ModeState]
_set = dataclasses.replace


def _on_controller_ok(s: ModeState, e: ModeEvent, c: ModeConfig) -> ModeState:
    return _set(s, controller_ok=True)


def _on_controller_fault(s: ModeState, e: ModeEvent, c: ModeConfig) -> ModeState:
    assert isinstance(e, ControllerFault)
    if s.mode == EdgeMode.FAULT:  # already in FAULT: keep the first reason (log once)
        return _set(s, controller_ok=False)
    return _set(s, mode=EdgeMode.FAULT, controller_ok=False, fault_reason=e.reason)


def _on_heartbeat(s: ModeState, e: ModeEvent, c: ModeConfig) -> ModeState:
    gap_ok = s.last_heartbeat is not None and e.t - s.last_heartbeat <= c.heartbeat_timeout_s
    # Consecutive means each beat within the timeout of the previous; a longer gap starts over.
    good = min(s.good_heartbeats + 1, c.good_heartbeats_to_resume) if gap_ok else 1
    return _set(s, last_heartbeat=e.t, good_heartbeats=good)


def _on_nothing(s: ModeState, e: ModeEvent, c: ModeConfig) -> ModeState:
    return s  # Tick and SafeBoundary teach nothing: step() reads their time and kind


def _on_plan(s: ModeState, e: ModeEvent, c: ModeConfig) -> ModeState:
    assert isinstance(e, PlanActivated)
    until = math.inf if e.expiry is None else e.expiry
    if e.source == PlanSource.OVERRIDE:
        # The override replaced the centre's plan in the plan book: when it ends there is no
        # central plan to return to until the centre sends one.
        return _set(s, override_plan=e.plan_id, override_until=until, central_plan=None,
                    central_until=None)
    return _set(s, central_plan=e.plan_id, central_until=until, override_plan=None,
                override_until=None)


def _on_override_expired(s: ModeState, e: ModeEvent, c: ModeConfig) -> ModeState:
    return _set(s, override_plan=None, override_until=None)


def _on_fault_cleared(s: ModeState, e: ModeEvent, c: ModeConfig) -> ModeState:
    if s.mode != EdgeMode.FAULT:
        return s
    # Start over as at boot: STARTUP re-checks the centre before any plan is written.
    return _set(s, mode=EdgeMode.STARTUP, controller_ok=True, fault_reason="")


_HANDLERS: Mapping[type, Handler] = {
    ControllerOk: _on_controller_ok,
    ControllerFault: _on_controller_fault,
    HeartbeatReceived: _on_heartbeat,
    Tick: _on_nothing,
    PlanActivated: _on_plan,
    OverrideExpired: _on_override_expired,
    FaultCleared: _on_fault_cleared,
    SafeBoundary: _on_nothing,
}


# --- rules: the mode the state calls for (first match wins) -------------------------------
Rule = Callable[[ModeState, ModeConfig], Union[str, None]]


def _centre_alive(s: ModeState, c: ModeConfig) -> bool:
    return (s.last_heartbeat is not None and s.good_heartbeats >= c.good_heartbeats_to_resume
            and s.t - s.last_heartbeat <= c.heartbeat_timeout_s)


def _in_fault(s: ModeState, c: ModeConfig) -> str | None:
    return f"controller fault: {s.fault_reason}" if s.mode == EdgeMode.FAULT else None


def _controller_unknown(s: ModeState, c: ModeConfig) -> str | None:
    # Only STARTUP can have an unconfirmed controller: a fault in any other mode is FAULT.
    return None if s.controller_ok else "waiting for the controller"


def _override_in_force(s: ModeState, c: ModeConfig) -> str | None:
    if s.override_until is not None and s.t < s.override_until:
        return f"override plan {s.override_plan} in force until {s.override_until:.1f}"
    return None


def _centre_ready(s: ModeState, c: ModeConfig) -> str | None:
    if _centre_alive(s, c) and s.central_until is not None and s.t < s.central_until:
        return f"centre alive and its plan {s.central_plan} in force"
    return None


def _waiting_for_centre(s: ModeState, c: ModeConfig) -> str | None:
    if s.mode == EdgeMode.STARTUP and s.t - s.since < c.startup_grace_s:
        return f"waiting up to {c.startup_grace_s:g} s for the centre"
    return None


def _local(s: ModeState, c: ModeConfig) -> str:
    if s.last_heartbeat is None:
        return "no heartbeat from the centre"
    silent = s.t - s.last_heartbeat
    if silent > c.heartbeat_timeout_s:
        return f"central heartbeat silent for {silent:.1f} s (timeout {c.heartbeat_timeout_s:g} s)"
    if s.good_heartbeats < c.good_heartbeats_to_resume:
        return f"{s.good_heartbeats} of {c.good_heartbeats_to_resume} consecutive heartbeats"
    if s.central_until is None:
        return "no central plan in force"
    return f"central plan {s.central_plan} expired at {s.central_until:.1f}"


_RULES: tuple[tuple[EdgeMode, Rule], ...] = (
    (EdgeMode.FAULT, _in_fault),
    (EdgeMode.STARTUP, _controller_unknown),
    (EdgeMode.OVERRIDE, _override_in_force),
    (EdgeMode.CENTRAL, _centre_ready),
    (EdgeMode.STARTUP, _waiting_for_centre),
)  # and when no rule matches: LOCAL_FALLBACK, the plan that needs nobody else


def _called_for(s: ModeState, c: ModeConfig) -> tuple[EdgeMode, str]:
    for mode, rule in _RULES:
        reason = rule(s, c)
        if reason is not None:
            return mode, reason
    return EdgeMode.LOCAL_FALLBACK, _local(s, c)


# --- the step -----------------------------------------------------------------------------
def step(state: ModeState, event: ModeEvent,
         config: ModeConfig) -> tuple[ModeState, tuple[Transition, ...]]:
    """The state after ``event`` and the transitions to log (empty when nothing changed)."""
    handler = _HANDLERS.get(type(event))
    if handler is None:
        raise TypeError(f"not a mode event: {event!r}")
    require(event.t >= state.t, f"{type(event).__name__}.t",
            f"time went backwards: {event.t:.3f} < {state.t:.3f}")
    s = handler(_set(state, t=event.t), event, config)
    out: list[Transition] = []
    if s.mode != state.mode:
        # FAULT entered or left: at once, whatever was waiting is dropped with the old mode.
        reason = f"controller fault: {s.fault_reason}" if s.mode == EdgeMode.FAULT \
            else "controller fault cleared"
        out.append(Transition(event.t, Change.ENTERED, state.mode, s.mode, reason))
        s = _set(s, since=event.t, pending=None)
    target, reason = _called_for(s, config)
    if target == s.mode:
        if s.pending is not None:
            out.append(Transition(event.t, Change.WITHDRAWN, s.mode, s.pending, reason))
            s = _set(s, pending=None)
    elif isinstance(event, SafeBoundary):
        out.append(Transition(event.t, Change.ENTERED, s.mode, target, reason))
        s = _set(s, mode=target, since=event.t, pending=None)
    elif s.pending != target:
        out.append(Transition(event.t, Change.REQUESTED, s.mode, target, reason))
        s = _set(s, pending=target)
    return s, tuple(out)


class ModeMachine:
    """A convenience holder of the current :class:`ModeState`; all logic is in :func:`step`."""

    def __init__(self, t: float, config: ModeConfig | None = None) -> None:
        self.config = config if config is not None else ModeConfig()
        self._state = initial_state(t)

    @property
    def state(self) -> ModeState:
        """The current state."""
        return self._state

    @property
    def mode(self) -> EdgeMode:
        """The mode in force."""
        return self._state.mode

    @property
    def pending(self) -> EdgeMode | None:
        """The mode waiting for the next safe boundary, if any."""
        return self._state.pending

    def handle(self, event: ModeEvent) -> tuple[Transition, ...]:
        """Apply ``event``; return the transitions to log."""
        self._state, transitions = step(self._state, event, self.config)
        return transitions
