"""The operations service: overrides, the plans in force and the audit trail, in one place.

The HTTP API (:mod:`optimizer.api`) and, later, the central loop are thin callers of this
object. It holds the :class:`~optimizer.arbitration.Arbiter`, writes every override action to
the :class:`~optimizer.audit.AuditLog` (accepted or refused: who, what, when, why, outcome)
and reads edge health and KPIs from a :class:`~optimizer.state.CentralState`. The clock is
injected so tests can run an override to its expiry.

An override is audited *before* it is reported as accepted: if the audit log cannot be written
the override is withdrawn again and the error propagates, so nothing runs unrecorded.

With an :class:`~optimizer.override_store.OverrideStore`, overrides survive a restart: each one
is stored when accepted (before it is audited, so that none runs without being stored) and
marked ended when cancelled or expired; :meth:`OperationsService.restore_overrides` puts the
stored ones back when the service starts again (see there). Without a store, overrides live in
memory only.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Collection

import msgspec

from edge_agent.config import SiteConfig
from edge_agent.errors import TscError
from edge_agent.messages import ViolationRecord
from edge_agent.plan import TimingPlan
from optimizer.arbitration import (
    Arbiter, Decision, GuardRefused, Override, OverrideConflict, UnknownIntersection,
    UnknownOverride,
)
from optimizer.audit import AuditEntry, AuditLog
from optimizer.override_store import OverrideStore, OverrideStoreError
from optimizer.overrides import OverrideCommand, Pattern, build_override_plan
from optimizer.state import CentralState, health_of

__all__ = ["OperationsService", "Refused", "Restored", "plan_dict", "override_dict"]

log = logging.getLogger(__name__)

SYSTEM = "system"  # the "who" of actions the service takes by itself (expiry)


class Refused(TscError):
    """An override action was refused and audited; ``error`` is why, ``entry`` the record."""

    def __init__(self, error: Exception, entry: AuditEntry) -> None:
        self.error, self.entry = error, entry
        super().__init__(str(error))


@dataclass(frozen=True, slots=True)
class Restored:
    """What :meth:`OperationsService.restore_overrides` did with the stored overrides."""

    restored: tuple[Override, ...] = ()  # back in force
    expired: tuple[Override, ...] = ()  # ran out while the centre was down: expired, handed back
    dropped: tuple[tuple[Override, str], ...] = ()  # (override, why): not put back


def plan_dict(plan: TimingPlan | None) -> dict[str, Any] | None:
    """The JSON form of a plan (the wire form), or None."""
    return None if plan is None else msgspec.to_builtins(plan)


def override_dict(o: Override) -> dict[str, Any]:
    """The JSON form of an override record (its plan without the rings: see the plan)."""
    return {"override_id": o.override_id, "intersection_id": o.intersection_id,
            "user": o.user, "reason": o.reason, "created": o.created, "expiry": o.expiry,
            "pattern": o.pattern, "cycle": o.plan.cycle}


class OperationsService:
    """Overrides, arbitration and audit for one site (thread-safe)."""

    def __init__(self, site: SiteConfig, *, audit: AuditLog, state: CentralState,
                 arbiter: Arbiter | None = None, clock: Callable[[], float] = time.time,
                 stale_after_s: float = 120.0, store: OverrideStore | None = None) -> None:
        self.site, self.audit, self.state, self.clock = site, audit, state, clock
        self.store = store
        self.arbiter = arbiter if arbiter is not None else Arbiter(site.intersections)
        known = {x.id for x in site.intersections}
        if set(self.arbiter.intersection_ids) != known:
            raise ValueError("operations: the arbiter's intersections are not the site's")
        self.stale_after_s = stale_after_s
        self._lock = threading.RLock()

    # --- reading ---------------------------------------------------------------------------
    def tick(self) -> dict[str, Decision]:
        """Decide every intersection now; audit the overrides that expired (hand-back)."""
        with self._lock:
            return self._tick(self.clock())

    def _tick(self, now: float) -> dict[str, Decision]:
        with self._lock:
            decisions = self.arbiter.decide_all(now)
            for decision in decisions.values():
                for o in decision.expired:
                    self._end_stored(o, "expired", now, "expiry reached")
                    self.audit.append(
                        t=now, who=SYSTEM, action="override.expire",
                        intersection=o.intersection_id,
                        details={"override_id": o.override_id, "user": o.user,
                                 "expiry": o.expiry, "handed_back_to": decision.mode.value,
                                 "plan_id": None if decision.plan is None
                                 else decision.plan.plan_id},
                        reason="expiry reached", outcome="expired")
            return decisions

    def intersections(self) -> list[dict[str, Any]]:
        """Every intersection with its mode, plan in force, health and recent KPIs."""
        decisions = self.tick()
        return [self._view(x.id, decisions[x.id]) for x in self.site.intersections]

    def intersection(self, intersection_id: str) -> dict[str, Any]:
        """One intersection's view (UnknownIntersection if not of the site)."""
        self.arbiter.intersection(intersection_id)
        return self._view(intersection_id, self.tick()[intersection_id])

    def overrides(self) -> list[Override]:
        """The active overrides (after expiring those past their time)."""
        with self._lock:
            self.tick()
            return self.arbiter.overrides()

    def _view(self, xid: str, decision: Decision) -> dict[str, Any]:
        x = self.arbiter.intersection(xid)
        status = self.state.status(xid)
        kpis = self.state.kpis(xid)
        edge = None if status is None else {
            "online": status.online, "mode": status.mode.value,
            "controller_ok": status.controller_ok, "plan_id": status.plan_id,
            "failed_detectors": list(status.failed_detectors), "t": status.t,
            "detail": status.detail}
        return {"id": xid, "name": x.name, "mode": decision.mode.value,
                "reason": decision.reason, "plan": plan_dict(decision.plan),
                "override": None if decision.override is None
                else override_dict(decision.override),
                "health": health_of(status, self.clock(), self.stale_after_s), "edge": edge,
                "kpis": None if kpis is None else kpis.to_dict()}

    # --- overrides -------------------------------------------------------------------------
    def create_override(self, *, user: str, intersection_id: str, pattern: Pattern,
                        expiry: float, reason: str) -> tuple[Override, Decision, AuditEntry]:
        """Build, guard, accept and audit an override; raise :class:`Refused` (audited).

        ``Refused.error`` is a GuardRefused (the plan breaks a rule), OverrideConflict (one is
        active already), UnknownIntersection or ValueError (the command is malformed).
        """
        with self._lock:
            now = self.clock()
            decisions = self._tick(now)  # the plan in force now, expiries audited first
            details: dict[str, Any] = {"pattern": _pattern_details(pattern),
                                       "expiry": _json_safe(expiry)}
            try:
                command = OverrideCommand(intersection_id, pattern, expiry, reason, user)
                intersection = self.arbiter.intersection(intersection_id)
                base = decisions[intersection_id].plan
                details["base_plan_id"] = None if base is None else base.plan_id
                plan = build_override_plan(command, intersection, base, now)
                record = self.arbiter.add_override(
                    plan, user=user, reason=reason, now=now, pattern=pattern.describe(),
                    next_id=None if self.store is None else self.store.next_id)
            except (GuardRefused, OverrideConflict, UnknownIntersection, ValueError) as exc:
                raise Refused(exc, self._refused("override.create", user, intersection_id,
                                                 details, reason, exc, now)) from exc
            stored = False
            try:
                decision = self.arbiter.decide(intersection_id, now)
                assert decision.plan is not None
                details.update(override_id=record.override_id, plan_id=decision.plan.plan_id,
                               plan=plan_dict(decision.plan))
                if self.store is not None:
                    # Stored before it is audited: an accepted override that a restart would
                    # lose is what the store exists to prevent.
                    self.store.save(record, decision.plan.plan_id)
                    stored = True
                entry = self.audit.append(t=now, who=user, action="override.create",
                                          intersection=intersection_id, details=details,
                                          reason=reason, outcome="accepted")
            except BaseException as exc:
                self.arbiter.cancel_override(record.override_id)  # nothing runs unrecorded
                self.arbiter.decide(intersection_id, now)
                if stored:  # nor comes back after a restart
                    self._end_stored(record, "withdrawn", now, f"not audited: {exc}")
                raise
            return record, decision, entry

    def cancel_override(self, *, user: str, override_id: int,
                        reason: str) -> tuple[Override, Decision, AuditEntry]:
        """Cancel an active override and audit it; raise :class:`Refused` (audited)."""
        with self._lock:
            now = self.clock()
            self._tick(now)  # an override that has just expired is reported as such
            details: dict[str, Any] = {"override_id": override_id}
            intersection = None
            try:
                if not isinstance(reason, str) or not reason.strip():
                    raise ValueError("cancel.reason: a cancellation needs a reason")
                record = self.arbiter.override(override_id)
                intersection = record.intersection_id
            except (UnknownOverride, ValueError) as exc:
                raise Refused(exc, self._refused("override.cancel", user, intersection,
                                                 details, str(reason), exc, now)) from exc
            if self.store is not None:
                # Ended in the store first: if that fails, the cancel fails whole (the override
                # runs on and the operator tries again) instead of ending here and coming back
                # after a restart.
                self.store.end(override_id, "cancelled", now, reason)
            record = self.arbiter.cancel_override(override_id)
            decision = self.arbiter.decide(record.intersection_id, now)
            details.update(handed_back_to=decision.mode.value,
                           plan_id=None if decision.plan is None else decision.plan.plan_id,
                           override_user=record.user)
            entry = self.audit.append(t=now, who=user, action="override.cancel",
                                      intersection=record.intersection_id, details=details,
                                      reason=reason, outcome="cancelled")
            return record, decision, entry

    # --- restart -----------------------------------------------------------------------------
    def restore_overrides(self, *, others: Collection[str] = ()) -> Restored:
        """Put back the overrides of the store that had not ended when the centre stopped.

        Call once, when the service starts, before anything decides. Each stored override is
        rebuilt exactly (id, plan, user, reason, created, expiry, pattern) and:

        * still running: passes the guard again against the intersection as configured now
          and is back in force (audited ``override.restore``); its plan is issued again under
          the intersection's next plan id, since the edges refuse an id they have seen;
        * past its expiry (it ran out while the centre was down): expired as at any other
          time, with its ``override.expire`` entry and the hand-back to adaptive or time of day;
        * failing the guard now, or for an intersection no longer in the site: not restored,
          marked ``dropped`` in the store, audited ``override.drop`` with the reason (the
          guard's violations) and logged as an error.

        Overrides of the intersections in ``others`` (the site's intersections that another
        process serves) are left in the store untouched. OverrideStoreError (naming the file)
        when the store cannot be read: an override is never lost silently.
        """
        if self.store is None:
            return Restored()
        with self._lock:
            now = self.clock()
            back: list[Override] = []
            dropped: list[tuple[Override, str]] = []
            running = {o.override_id for o in self.arbiter.overrides()}
            for stored in self.store.active():
                record = stored.record
                if record.intersection_id in others or record.override_id in running:
                    continue  # another process's, or in force here already (called twice)
                try:
                    self.arbiter.restore_override(record, now)
                except (GuardRefused, OverrideConflict, UnknownIntersection, ValueError) as exc:
                    dropped.append((record, self._drop(record, exc, now)))
                    continue
                back.append(record)
            if not back:  # nothing to decide on yet: the first tick decides as on any start
                return Restored(dropped=tuple(dropped))
            decisions = self._tick(now)  # expires (audits, hands back) what ran out meanwhile
            expired = tuple(o for d in decisions.values() for o in d.expired)
            gone = {o.override_id for o in expired}
            restored = tuple(o for o in back if o.override_id not in gone)
            for o in restored:
                plan = decisions[o.intersection_id].plan
                plan_id = None if plan is None else plan.plan_id
                self.audit.append(
                    t=now, who=SYSTEM, action="override.restore", intersection=o.intersection_id,
                    details={"override_id": o.override_id, "user": o.user,
                             "created": o.created, "expiry": o.expiry, "pattern": o.pattern,
                             "plan_id": plan_id},
                    reason="the centre restarted", outcome="restored")
                log.info("override %d on %s by %s restored until %.0f (plan %s)",
                         o.override_id, o.intersection_id, o.user, o.expiry, plan_id)
            for o in expired:
                log.info("override %d on %s expired while the centre was down; handed back to "
                         "%s", o.override_id, o.intersection_id,
                         decisions[o.intersection_id].mode.value)
            return Restored(restored, expired, tuple(dropped))

    def _drop(self, record: Override, exc: Exception, now: float) -> str:
        """Audit, log and end in the store a stored override that cannot be put back."""
        why = f"not restored after a restart: {exc}"
        details: dict[str, Any] = {
            "override_id": record.override_id, "user": record.user, "created": record.created,
            "expiry": record.expiry, "pattern": record.pattern, "plan": plan_dict(record.plan),
            "error": str(exc), "error_kind": type(exc).__name__}
        if isinstance(exc, GuardRefused):
            details["violations"] = [msgspec.to_builtins(ViolationRecord.from_violation(v))
                                     for v in exc.violations]
        known = record.intersection_id \
            if record.intersection_id in self.arbiter.intersection_ids else None
        if known is None:
            details["intersection_id"] = record.intersection_id
        # Audited before it is ended in the store: should the store write fail, the next start
        # drops (and audits) it again rather than leave no trace.
        self.audit.append(t=now, who=SYSTEM, action="override.drop", intersection=known,
                          details=details, reason=_clip(why), outcome="dropped")
        assert self.store is not None
        self.store.end(record.override_id, "dropped", now, why)
        log.error("override %d on %s by %s (until %.0f) %s", record.override_id,
                  record.intersection_id, record.user, record.expiry, why)
        return str(exc)

    def _end_stored(self, record: Override, outcome: str, now: float, why: str) -> None:
        """Mark an override ended in the store; a failure is logged, not raised: the override
        has ended here already (the tick must go on publishing), and a restart finds an
        expired one past its expiry and expires it again. A withdrawn one would come back
        after a restart (audited ``override.restore``): the error says so."""
        if self.store is None:
            return
        try:
            self.store.end(record.override_id, outcome, now, why)
        except OverrideStoreError as exc:
            log.error("override %d on %s %s, but the store was not updated: %s%s",
                      record.override_id, record.intersection_id, outcome, exc,
                      "; it would be restored after a restart: cancel it then"
                      if outcome == "withdrawn" else "")

    def record_refusal(self, *, user: str, action: str, intersection_id: str | None,
                       details: dict[str, Any], reason: str, error: str) -> AuditEntry:
        """Audit an override action refused before it reached this service (bad request,
        insufficient role)."""
        known = intersection_id if intersection_id in self.arbiter.intersection_ids else None
        if known is None and intersection_id is not None:
            details = {**details, "intersection_id": intersection_id}
        return self.audit.append(t=self.clock(), who=user, action=action, intersection=known,
                                 details={**details, "error": error}, reason=_clip(reason),
                                 outcome="refused")

    def _refused(self, action: str, user: str, intersection: str | None,
                 details: dict[str, Any], reason: str, exc: Exception,
                 now: float) -> AuditEntry:
        details = {**details, "error": str(exc), "error_kind": type(exc).__name__}
        if isinstance(exc, GuardRefused):
            details["violations"] = [msgspec.to_builtins(ViolationRecord.from_violation(v))
                                     for v in exc.violations]
        known = intersection if intersection in self.arbiter.intersection_ids else None
        if known is None and intersection is not None:
            details["intersection_id"] = intersection  # recorded, but not as a site id
        text = reason if isinstance(reason, str) else repr(reason)
        return self.audit.append(t=now, who=user, action=action, intersection=known,
                                 details=details, reason=_clip(text), outcome="refused")


def _clip(text: str, limit: int = 1000) -> str:
    """Refusals are recorded even when the reason given is too long to accept."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _json_safe(value: Any) -> Any:
    """A value for the audit details: numbers that JSON cannot hold are kept as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def _pattern_details(pattern: Any) -> dict[str, Any]:
    kind = getattr(pattern, "kind", type(pattern).__name__)
    if kind == "plan":
        return {"kind": kind, "plan": msgspec.to_builtins(pattern.plan)}
    if kind in ("extend-phase", "fixed-cycle"):
        return {"kind": kind, **{k: _json_safe(getattr(pattern, k)) for k in pattern.__slots__}}
    return {"kind": str(kind)}
