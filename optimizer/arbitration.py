"""Which plan is in force at each intersection: override > adaptive > time-of-day.

Pure: no IO, the time is an argument. The :class:`Arbiter` holds, per intersection, at most one
operator override, the latest adaptive plan and a time-of-day schedule, and
:meth:`Arbiter.decide` picks the plan in force:

1. an override until its expiry (or until it is cancelled); then it hands back to
2. the current adaptive plan: one that is active (activation <= now < expiry) and, where the
   arbiter has an ``adaptive_ttl_s``, was submitted no longer ago than that (a silent optimiser
   must not pin its last plan forever); failing that,
3. the time-of-day plan of the local time of day; failing that,
4. nothing: the centre sends no plan and the edge keeps its own local fallback.

Every candidate passes :func:`edge_agent.guard.check_plan` against the intersection when it
is submitted (or, for time-of-day plans, when the arbiter is built); one that fails is refused
whole with :class:`GuardRefused`, never adjusted. Plans are immutable and the arbiter changes
only their id, activation and expiry, which the guard does not judge, so what goes out is what
was checked.

Plan ids: each time the plan in force changes, the arbiter issues it under the next id of the
intersection (the edge refuses an id not above the last it accepted), so handing back to the
adaptive plan that ran before an override issues that plan again under a new id.

Restarts: the arbiter lives in memory. The overrides outlive it in
:mod:`optimizer.override_store`, and :meth:`Arbiter.restore_override` puts one back (guard-
checked again against the intersection as configured now); ``last_plan_ids`` and
``last_override_id`` continue the id sequences from what was published and stored before.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Iterable, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from edge_agent.errors import PlanRejected, TscError
from edge_agent.guard import Violation, check_plan
from edge_agent.model import Intersection
from edge_agent.plan import PlanSource, TimingPlan

__all__ = ["Arbiter", "Decision", "GuardRefused", "Mode", "Override", "OverrideConflict",
           "TimeOfDaySchedule", "UnknownIntersection", "UnknownOverride"]

DEFAULT_MAX_OVERRIDE_S = 24 * 3600.0


class GuardRefused(PlanRejected):
    """A candidate plan failed the guard; ``violations`` lists every broken rule."""

    def __init__(self, plan: TimingPlan, violations: list[Violation]) -> None:
        self.violations = violations
        super().__init__(plan.plan_id, [str(v) for v in violations])


class UnknownIntersection(TscError, LookupError):
    """The intersection is not one of the site's."""


class UnknownOverride(TscError, LookupError):
    """No active override has this id (never existed, cancelled or expired)."""


class OverrideConflict(TscError):
    """The intersection already has an active override; cancel it first."""


class Mode(str, enum.Enum):
    """Where the plan in force comes from."""

    OVERRIDE = "override"
    ADAPTIVE = "adaptive"
    TIME_OF_DAY = "time-of-day"
    NONE = "none"  # no central plan: the edge runs its local fallback


@dataclass(frozen=True, slots=True)
class Override:
    """An accepted override: its guard-checked plan and who asked, why, until when."""

    override_id: int
    intersection_id: str
    plan: TimingPlan
    user: str
    reason: str
    created: float
    expiry: float
    pattern: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    """The plan in force at one intersection after :meth:`Arbiter.decide`.

    ``changed`` is true when this decision issued a new plan (with a new id) that the centre
    must publish; ``expired`` lists overrides that ran out at this decision.
    """

    intersection_id: str
    mode: Mode
    plan: TimingPlan | None
    changed: bool
    reason: str
    override: Override | None = None
    expired: tuple[Override, ...] = ()


@dataclass(frozen=True)
class TimeOfDaySchedule:
    """Plans by local time of day: ``entries`` = (minute after midnight, plan), increasing.

    The last entry runs on past midnight until the first one starts (as on the edge).
    """

    entries: tuple[tuple[int, TimingPlan], ...]
    timezone: str = "UTC"
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.entries:
            raise ValueError("time_of_day: needs at least one entry")
        starts = [start for start, _ in self.entries]
        for start in starts:
            if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < 1440:
                raise ValueError(f"time_of_day: start must be a minute within 0..1439, "
                                 f"got {start!r}")
        if starts != sorted(set(starts)):
            raise ValueError("time_of_day: entries must be in increasing start order without "
                             "repeats")
        if len({plan.intersection_id for _, plan in self.entries}) != 1:
            raise ValueError("time_of_day: every plan must be for the same intersection")
        try:
            object.__setattr__(self, "_zone", ZoneInfo(self.timezone))
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"time_of_day.timezone: unknown time zone {self.timezone!r}") \
                from None

    @property
    def intersection_id(self) -> str:
        """The intersection the plans time."""
        return self.entries[0][1].intersection_id

    def entry_at(self, now: float) -> tuple[int, TimingPlan]:
        """(index, plan) of the entry in force at POSIX time ``now``."""
        local = datetime.fromtimestamp(now, self._zone)
        minute = local.hour * 60 + local.minute
        index = len(self.entries) - 1
        for i, (start, _) in enumerate(self.entries):
            if start <= minute:
                index = i
        return index, self.entries[index][1]


@dataclass
class _Adaptive:
    plan: TimingPlan
    submitted: float
    serial: int


@dataclass
class _Slot:
    intersection: Intersection
    last_plan_id: int = 0
    override: Override | None = None
    adaptive: _Adaptive | None = None
    schedule: TimeOfDaySchedule | None = None
    issued_key: tuple | None = None
    decision: Decision | None = None


class Arbiter:
    """Arbitration state of every intersection of a site (see the module docstring)."""

    def __init__(self, intersections: Iterable[Intersection], *,
                 time_of_day: Mapping[str, TimeOfDaySchedule] | None = None,
                 last_plan_ids: Mapping[str, int] | None = None,
                 adaptive_ttl_s: float | None = None,
                 max_override_s: float = DEFAULT_MAX_OVERRIDE_S,
                 last_override_id: int = 0) -> None:
        self._slots = {x.id: _Slot(x) for x in intersections}
        if not self._slots:
            raise ValueError("arbiter: needs at least one intersection")
        if adaptive_ttl_s is not None and not adaptive_ttl_s > 0:
            raise ValueError(f"arbiter.adaptive_ttl_s: must be > 0, got {adaptive_ttl_s!r}")
        if not max_override_s > 0:
            raise ValueError(f"arbiter.max_override_s: must be > 0, got {max_override_s!r}")
        self.adaptive_ttl_s, self.max_override_s = adaptive_ttl_s, max_override_s
        self._next_override = last_override_id + 1
        self._serial = 0
        for xid, last in (last_plan_ids or {}).items():
            self._slot(xid).last_plan_id = last
        for xid, schedule in (time_of_day or {}).items():
            slot = self._slot(xid)
            if schedule.intersection_id != xid:
                raise ValueError(f"time_of_day[{xid}]: plans are for "
                                 f"{schedule.intersection_id!r}")
            for start, plan in schedule.entries:
                self._guard(plan, slot.intersection)
            slot.schedule = schedule

    # --- candidates ------------------------------------------------------------------------
    @property
    def intersection_ids(self) -> list[str]:
        """The intersections arbitrated, in site order."""
        return list(self._slots)

    def intersection(self, intersection_id: str) -> Intersection:
        """The intersection model (UnknownIntersection if not of this site)."""
        return self._slot(intersection_id).intersection

    def submit_adaptive(self, plan: TimingPlan, now: float) -> None:
        """Make ``plan`` the intersection's adaptive candidate; GuardRefused if it fails."""
        if plan.source != PlanSource.ADAPTIVE:
            raise ValueError(f"adaptive plan: source must be 'adaptive', got "
                             f"{plan.source.value!r}")
        slot = self._slot(plan.intersection_id)
        self._guard(plan, slot.intersection)
        self._serial += 1
        slot.adaptive = _Adaptive(plan, now, self._serial)

    def withdraw_adaptive(self, intersection_id: str) -> None:
        """Drop the adaptive candidate (the optimiser stops planning this intersection)."""
        self._slot(intersection_id).adaptive = None

    def add_override(self, plan: TimingPlan, *, user: str, reason: str, now: float,
                     pattern: str = "", next_id: Callable[[], int] | None = None) -> Override:
        """Accept an override plan (source ``override``, expiry set) and return its record.

        Refused with GuardRefused (the guard), OverrideConflict (one is already active) or
        ValueError (wrong source, no expiry, expiry not after ``now`` or beyond the longest
        override allowed). ``next_id``, when given, numbers the override once every check has
        passed (the override store hands out ids that no process sharing it has used);
        otherwise the arbiter's own counter does.
        """
        slot = self._slot(plan.intersection_id)
        if plan.source != PlanSource.OVERRIDE:
            raise ValueError(f"override plan: source must be 'override', got "
                             f"{plan.source.value!r}")
        if plan.expiry is None or plan.expiry <= now:
            raise ValueError("override.expiry: an override must expire after now")
        if plan.expiry - now > self.max_override_s:
            raise ValueError(f"override.expiry: at most {self.max_override_s:g} s ahead, got "
                             f"{plan.expiry - now:g} s")
        self._expire(slot, now)
        if slot.override is not None:
            raise OverrideConflict(f"{plan.intersection_id} already has override "
                                   f"{slot.override.override_id} by {slot.override.user} "
                                   f"until {slot.override.expiry:.0f}; cancel it first")
        self._guard(plan, slot.intersection)
        override_id = self._next_override if next_id is None else next_id()
        if override_id < self._next_override:
            raise ValueError(f"override id {override_id} was issued before (the next is "
                             f"{self._next_override}): ids are never reused")
        record = Override(override_id, plan.intersection_id, plan, user, reason, now,
                          plan.expiry, pattern)
        self._next_override = override_id + 1
        slot.override = record
        return record

    def restore_override(self, record: Override, now: float) -> None:
        """Put back, unchanged, an override accepted before a restart (the override store's).

        A record still running at ``now`` passes the guard again, against the intersection
        as configured now: one that fails raises GuardRefused and is not restored (the
        intersection may have changed since). A record past its expiry is not checked: it
        never runs again, and the next decision expires it and hands back as usual. Raises
        UnknownIntersection, OverrideConflict (the intersection has an override already) or
        ValueError (the record's plan is not an override plan of its intersection). The
        override id counter moves past the record's id, so ids are never reused.
        """
        slot = self._slot(record.intersection_id)
        plan = record.plan
        if plan.intersection_id != record.intersection_id or plan.source != PlanSource.OVERRIDE:
            raise ValueError(f"override {record.override_id}: the plan is not an override plan "
                             f"of {record.intersection_id}")
        if slot.override is not None:
            raise OverrideConflict(f"{record.intersection_id} already has override "
                                   f"{slot.override.override_id}; override "
                                   f"{record.override_id} cannot be restored beside it")
        if now < record.expiry:
            self._guard(plan, slot.intersection)
        slot.override = record
        self._next_override = max(self._next_override, record.override_id + 1)

    def cancel_override(self, override_id: int) -> Override:
        """Withdraw an active override; the next decision hands back."""
        for slot in self._slots.values():
            if slot.override is not None and slot.override.override_id == override_id:
                record, slot.override = slot.override, None
                return record
        raise UnknownOverride(f"no active override {override_id}")

    def override(self, override_id: int) -> Override:
        """The active override with this id (UnknownOverride if none)."""
        for record in self.overrides():
            if record.override_id == override_id:
                return record
        raise UnknownOverride(f"no active override {override_id}")

    def overrides(self) -> list[Override]:
        """Active overrides (expired ones stay listed until the next decision sweeps them)."""
        return [s.override for s in self._slots.values() if s.override is not None]

    # --- decisions -------------------------------------------------------------------------
    def decide(self, intersection_id: str, now: float) -> Decision:
        """The plan in force at ``intersection_id`` at time ``now``."""
        slot = self._slot(intersection_id)
        expired = self._expire(slot, now)
        mode, key, plan, reason, expiry = self._choose(slot, now)
        if expired:
            reason = (f"override {expired[0].override_id} expired at "
                      f"{expired[0].expiry:.0f}; handed back: {reason}")
        changed = False
        if plan is not None and key != slot.issued_key:
            slot.last_plan_id += 1
            plan = msgspec.structs.replace(plan, plan_id=slot.last_plan_id, activation=now,
                                           expiry=expiry)
            slot.issued_key, changed = key, True
        elif plan is not None:
            assert slot.decision is not None and slot.decision.plan is not None
            plan = slot.decision.plan  # still in force: the same id, not re-issued
        else:
            slot.issued_key = None
        slot.decision = Decision(intersection_id, mode, plan, changed, reason,
                                 slot.override if mode == Mode.OVERRIDE else None,
                                 tuple(expired))
        return slot.decision

    def decide_all(self, now: float) -> dict[str, Decision]:
        """:meth:`decide` for every intersection."""
        return {xid: self.decide(xid, now) for xid in self._slots}

    def in_force(self, intersection_id: str) -> Decision | None:
        """The last decision made for the intersection (None before the first)."""
        return self._slot(intersection_id).decision

    def last_plan_ids(self) -> dict[str, int]:
        """The last plan id issued per intersection (persist it: ids must keep rising)."""
        return {xid: slot.last_plan_id for xid, slot in self._slots.items()}

    # --- internals -------------------------------------------------------------------------
    def _slot(self, intersection_id: str) -> _Slot:
        try:
            return self._slots[intersection_id]
        except KeyError:
            raise UnknownIntersection(f"unknown intersection {intersection_id!r}") from None

    @staticmethod
    def _guard(plan: TimingPlan, intersection: Intersection) -> None:
        violations = check_plan(plan, intersection)
        if violations:
            raise GuardRefused(plan, violations)

    @staticmethod
    def _expire(slot: _Slot, now: float) -> list[Override]:
        if slot.override is not None and now >= slot.override.expiry:
            record, slot.override = slot.override, None
            return [record]
        return []

    def _choose(self, slot: _Slot, now: float) -> tuple:
        """(mode, identity of the candidate, plan, reason, expiry to issue it with)."""
        if slot.override is not None:
            o = slot.override
            return (Mode.OVERRIDE, ("override", o.override_id), o.plan,
                    f"override {o.override_id} by {o.user} until {o.expiry:.0f}: {o.reason}",
                    o.expiry)
        adaptive = slot.adaptive
        if adaptive is not None:
            fresh = self.adaptive_ttl_s is None or now - adaptive.submitted < self.adaptive_ttl_s
            if adaptive.plan.is_active(now) and fresh:
                return (Mode.ADAPTIVE, ("adaptive", adaptive.serial), adaptive.plan,
                        f"adaptive plan submitted at {adaptive.submitted:.0f}",
                        adaptive.plan.expiry)
        stale = "" if adaptive is None else "adaptive plan not current; "
        if slot.schedule is not None:
            index, plan = slot.schedule.entry_at(now)
            start = slot.schedule.entries[index][0]
            # Identity by the plan itself: two entries running the same plan (evening and
            # after midnight) do not re-issue it at the boundary between them.
            return (Mode.TIME_OF_DAY, ("time-of-day", plan), plan,
                    f"{stale}time-of-day plan from {start // 60:02d}:{start % 60:02d} "
                    f"({slot.schedule.timezone})", None)
        return (Mode.NONE, None, None,
                f"{stale}no override, adaptive or time-of-day plan: the edge runs its local "
                f"fallback", None)
