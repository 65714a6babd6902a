"""Plan admission on the edge: check an incoming plan, stage it, activate it at a safe boundary.

Pure, no IO; time is an argument. :func:`admit` decides what to do with one
:class:`~edge_agent.messages.PlanMessage` and returns the :class:`~edge_agent.messages.Ack` to
publish. The checks run cheapest first and the first failure answers:

1. the Ed25519 signature verifies with the trusted key the message names
   (:func:`edge_agent.signatures.verify_plan`);
2. the message is for this edge's site and intersection;
3. the plan id exceeds the last accepted one (an identical copy of the last accepted message,
   as MQTT QoS 1 and the retained plan topic redeliver, is acknowledged again and changes
   nothing; any other plan with an id not above the last is stale or replayed);
4. the plan has not expired (``expiry <= now``), and an override carries an expiry;
5. the safety guard passes (:func:`edge_agent.guard.check_plan`); its violations go back in
   the ack.

A rejected plan changes nothing: the plan in force stays. :class:`PlanBook` keeps the plan in
force and at most one staged plan; ``due(now)`` hands the staged plan over at the first safe
cycle boundary at or after its activation time.

Cycle boundaries. The system cycle clock is POSIX time modulo the cycle; a plan's
``offset_reference`` phase turns green ``offset`` seconds after each system zero (see
:mod:`edge_agent.plan`). Every ring starts its cycle, with the green of its first phase, at the
plan's *local zero*, and ends it with the red clearance of its last phase; so at a local zero
no yellow or red clearance is running, and for the shortest first green after it none starts.
That window is where plans are switched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.guard import check_plan
from edge_agent.messages import Ack, PlanMessage, ViolationRecord
from edge_agent.model import Intersection, require, require_finite, require_ident, require_int
from edge_agent.plan import PlanSource, TimingPlan, phase_windows
from edge_agent.signatures import verify_plan

__all__ = [
    "BOUNDARY_EPS_S", "Admission", "admit", "cycle_zero", "last_cycle_boundary",
    "next_cycle_boundary", "switch_window", "in_switch_window", "PlanBook",
]

#: Times within a millisecond of a boundary are at it (POSIX seconds near 2e9 keep ~0.2 us).
BOUNDARY_EPS_S = 1e-3


def cycle_zero(plan: TimingPlan) -> float:
    """Where the plan's local zero falls in the system cycle: ``0 <= z < cycle``."""
    windows = phase_windows(plan)
    require(plan.offset_reference in windows, "offset_reference",
            f"phase {plan.offset_reference} is not in plan {plan.plan_id}")
    return (plan.offset - windows[plan.offset_reference][0]) % plan.cycle


def last_cycle_boundary(plan: TimingPlan, t: float) -> float:
    """The latest local zero of ``plan`` at or before ``t`` (within :data:`BOUNDARY_EPS_S`)."""
    require_finite(t, "t")
    z = cycle_zero(plan)
    return z + math.floor((t - z + BOUNDARY_EPS_S) / plan.cycle) * plan.cycle


def next_cycle_boundary(plan: TimingPlan, t: float) -> float:
    """The first local zero of ``plan`` at or after ``t`` (within :data:`BOUNDARY_EPS_S`)."""
    last = last_cycle_boundary(plan, t)
    return last if t - last <= BOUNDARY_EPS_S else last + plan.cycle


def switch_window(plan: TimingPlan, window_s: float) -> float:
    """How long after a local zero a switch stays safe: ``window_s``, but never longer than
    the shortest first green of any ring (after it a ring may be in its yellow)."""
    return min(window_s, min(ring[0].green for ring in plan.rings))


def in_switch_window(plan: TimingPlan, t: float, window_s: float) -> bool:
    """True when ``t`` lies in ``[b, b + switch_window)`` for a local zero ``b`` of ``plan``.

    The runtime sends :class:`edge_agent.modes.SafeBoundary` when this turns true; it must
    look at least every ``window_s`` seconds or it can miss a window (and waits a cycle).
    """
    return t - last_cycle_boundary(plan, t) < switch_window(plan, window_s)


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer to one plan message: the ack to publish and, if the plan is new and
    accepted, the plan to stage (``None`` for rejections and repeated deliveries)."""

    ack: Ack
    plan: TimingPlan | None


def admit(message: PlanMessage, now: float, *, site: str, intersection: Intersection,
          trusted: Mapping[str, Ed25519PublicKey], last_plan_id: int,
          last_accepted: PlanMessage | None = None) -> Admission:
    """Decide on ``message`` at time ``now`` (see the module docstring for the checks)."""
    plan = message.plan

    def reject(reason: str, violations: tuple[ViolationRecord, ...] = ()) -> Admission:
        return Admission(Ack(site=site, intersection_id=intersection.id, plan_id=plan.plan_id,
                             t=now, accepted=False, violations=violations, reason=reason), None)

    def accept(reason: str = "", staged: TimingPlan | None = None) -> Admission:
        return Admission(Ack(site=site, intersection_id=intersection.id, plan_id=plan.plan_id,
                             t=now, accepted=True, reason=reason), staged)

    if not verify_plan(message, dict(trusted)):
        known = "" if message.key_id in trusted else " (unknown key)"
        return reject(f"signature does not verify with trusted key {message.key_id!r}{known}")
    if message.site != site:
        return reject(f"plan is for site {message.site!r}, this edge is {site!r}")
    if plan.intersection_id != intersection.id:
        return reject(f"plan is for intersection {plan.intersection_id!r}, "
                      f"this edge is {intersection.id!r}")
    if last_accepted is not None and message == last_accepted:
        # QoS 1 redelivers and the plan topic is retained: the same signed message again is
        # not an attack, and a rejection would raise a false alarm at the centre.
        return accept("duplicate of the accepted plan; nothing changed")
    if plan.plan_id <= last_plan_id:
        return reject(f"plan id {plan.plan_id} is not greater than the last accepted "
                      f"{last_plan_id} (stale or replayed)")
    if plan.expiry is not None and plan.expiry <= now:
        return reject(f"plan expired at {plan.expiry:.1f} (now {now:.1f})")
    if plan.source == PlanSource.OVERRIDE and plan.expiry is None:
        return reject("an override plan must carry an expiry")
    violations = check_plan(plan, intersection)
    if violations:
        return reject(f"failed the safety guard: {len(violations)} violation(s)",
                      tuple(ViolationRecord.from_violation(v) for v in violations))
    return accept(staged=plan)


class PlanBook:
    """The centre's plans on one edge: the plan in force and at most one staged plan.

    ``offer`` admits or rejects a message; ``due`` hands a staged plan over when its time and
    a safe boundary have come. A newer accepted plan replaces a staged one that never ran,
    and a staged plan that expires before its boundary is dropped; both are listed by
    :meth:`take_dropped` so that the runtime can log them (the centre was told "accepted").

    ``last_plan_id`` and ``in_force`` restore what a restarted edge accepted before.
    ``switch_window_s`` bounds how late after a cycle boundary a switch may still happen.
    """

    def __init__(self, site: str, intersection: Intersection,
                 trusted: Mapping[str, Ed25519PublicKey], *, last_plan_id: int = 0,
                 in_force: TimingPlan | None = None, switch_window_s: float = 2.0) -> None:
        require_ident(site, "site")
        require(isinstance(intersection, Intersection), "intersection",
                "must be an Intersection")
        require_int(last_plan_id, "last_plan_id", 0, 2**63 - 1)
        require_finite(switch_window_s, "switch_window_s", minimum=0.0)
        require(switch_window_s > 0.0, "switch_window_s", "must be > 0")
        if in_force is not None:
            require(in_force.intersection_id == intersection.id, "in_force",
                    f"plan is for {in_force.intersection_id!r}, not {intersection.id!r}")
            last_plan_id = max(last_plan_id, in_force.plan_id)
        self.site = site
        self.intersection = intersection
        self.switch_window_s = switch_window_s
        self._trusted = dict(trusted)
        self._last_plan_id = last_plan_id
        self._last_accepted: PlanMessage | None = None
        self._in_force = in_force
        self._staged: TimingPlan | None = None
        self._dropped: list[tuple[int, str]] = []

    @property
    def in_force(self) -> TimingPlan | None:
        """The plan last handed over by :meth:`due` (it may have expired: see :meth:`active`)."""
        return self._in_force

    @property
    def staged(self) -> TimingPlan | None:
        """The accepted plan waiting for its activation and a boundary."""
        return self._staged

    @property
    def last_plan_id(self) -> int:
        """The highest plan id accepted (0: none); persist it to survive restarts."""
        return self._last_plan_id

    def active(self, now: float) -> TimingPlan | None:
        """The plan in force unless it has expired by ``now``."""
        plan = self._in_force
        return plan if plan is not None and (plan.expiry is None or now < plan.expiry) else None

    def offer(self, message: PlanMessage, now: float) -> Ack:
        """Admit or reject ``message`` at ``now``; return the ack to publish."""
        require_finite(now, "now", minimum=0.0)
        result = admit(message, now, site=self.site, intersection=self.intersection,
                       trusted=self._trusted, last_plan_id=self._last_plan_id,
                       last_accepted=self._last_accepted)
        if result.plan is not None:
            if self._staged is not None:
                self._dropped.append((self._staged.plan_id,
                                      f"superseded by plan {result.plan.plan_id}"))
            self._staged = result.plan
            self._last_plan_id = result.plan.plan_id
            self._last_accepted = message
        return result.ack

    def due(self, now: float, running: TimingPlan | None = None) -> TimingPlan | None:
        """The staged plan if it is to take effect now, else ``None``.

        A plan takes effect in the switch window of the first boundary at or after its
        activation. Boundaries are those of ``running`` (the plan the controller runs; the
        local plan in fallback), else of the plan in force, else of the staged plan itself:
        with nothing of ours running, the controller's own plan transition applies.
        """
        require_finite(now, "now", minimum=0.0)
        plan = self._staged
        if plan is None:
            return None
        if plan.expiry is not None and plan.expiry <= now:
            self._dropped.append((plan.plan_id, f"expired at {plan.expiry:.1f} before it could "
                                                f"take effect"))
            self._staged = None
            return None
        reference = next(p for p in (running, self._in_force, plan) if p is not None)
        boundary = last_cycle_boundary(reference, now)
        if boundary + BOUNDARY_EPS_S < plan.activation \
                or not in_switch_window(reference, now, self.switch_window_s):
            return None
        self._in_force, self._staged = plan, None
        return plan

    def take_dropped(self) -> list[tuple[int, str]]:
        """(plan id, why) of accepted plans that will never run, since the last call."""
        dropped, self._dropped = self._dropped, []
        return dropped
