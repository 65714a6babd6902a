"""The central loop: re-plan each region on its schedule, arbitrate, sign, publish, follow acks,
send heartbeats. Time is injected; IO goes through objects handed in.

Each :meth:`CentralLoop.tick` (the service calls it every ``tick_s``; tests call it with their
own clock):

1. hands on the acks the ingest worker received (:meth:`CentralLoop.on_ack`, thread-safe);
2. sends a heartbeat (QoS 0) to every edge when ``heartbeat_s`` has passed;
3. collects finished region jobs: KPIs go to the :class:`~optimizer.state.MemoryState`, and
   accepted candidate plans become the intersections' adaptive candidates in the arbiter,
   except those that change the adaptive plan in force by no more than ``min_change_s``
   (:func:`~optimizer.plan_change.material_change`: a transition costs more than it gains),
   which stays in force unless it expires before the next re-plan can replace it;
4. starts the job of every region whose ``replan_s`` has passed: on the ``executor`` (one
   worker thread in the service, so validation in SUMO never holds up heartbeats or acks) it
   reads the planning window from the :class:`~optimizer.history.History`, plans
   (:class:`~optimizer.region_plan.RegionPlanner`) and, where the region has a ``validator``,
   validates the candidates against the plans in force: a rejected or failed validation
   keeps the plans in force (fail closed);
5. decides every intersection (:meth:`OperationsService.tick`: override > adaptive >
   time-of-day, overrides expiring and handing back, audited there) and publishes each plan
   in force that has not been published yet: signed (``edge_agent.signatures.sign_plan``),
   recorded in the history and then published QoS 1, retained, on the edge's plan topic (its
   id is the arbiter's, continued across restarts from the history);
6. follows acks: a plan not acknowledged within ``ack_timeout_s`` is published again, up to
   ``max_attempts`` times, then an alarm is raised; a rejection raises an alarm at once.
   Alarms are logged, kept in the history, audited (``plan.rejected``, ``plan.unanswered``)
   and listed by :meth:`CentralLoop.status`;
7. prunes the history every ``prune_every_s``.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

from edge_agent.messages import Ack, Heartbeat, encode
from edge_agent.plan import TimingPlan
from edge_agent.signatures import sign_plan
from edge_agent.topics import TOPIC_QOS, TOPIC_RETAIN, TopicKind, topic
from optimizer.arbitration import GuardRefused
from optimizer.history import History
from optimizer.operations import SYSTEM, OperationsService
from optimizer.plan_change import material_change
from optimizer.region_plan import IntersectionResult, RegionPlanner
from optimizer.state import KpiSnapshot, MemoryState

__all__ = ["CentralLoop", "CentralOperations", "LoopTimes", "RegionJob", "Publisher",
           "Validator", "InlineExecutor"]

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """What the loop publishes through (:class:`optimizer.publisher.CentralLink`)."""

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None: ...


#: (region id, candidate plans, plans in force, windows, now) -> (accepted, reasons)
Validator = Callable[[str, Mapping[str, TimingPlan], Mapping[str, TimingPlan],
                      Mapping[str, Sequence[Any]], float], tuple[bool, list[str]]]


class InlineExecutor(Executor):
    """Runs each job at once in the caller's thread (tests, benchmarks)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed back through the future
            future.set_exception(exc)
        return future


class CentralOperations(OperationsService):
    """The operations service plus what the loop needs: adaptive candidates under its lock."""

    def submit_adaptive(self, plans: Sequence[TimingPlan], now: float) -> dict[str, str]:
        """Make each plan its intersection's adaptive candidate; returns refusals by id."""
        refused = {}
        with self._lock:
            for plan in plans:
                try:
                    self.arbiter.submit_adaptive(plan, now)
                except (GuardRefused, ValueError) as exc:
                    refused[plan.intersection_id] = str(exc)
        return refused

    def plans_in_force(self, intersection_ids: Sequence[str]) -> dict[str, TimingPlan]:
        """The plan of the last decision at each intersection that has one."""
        with self._lock:
            decisions = {x: self.arbiter.in_force(x) for x in intersection_ids}
        return {x: d.plan for x, d in decisions.items() if d is not None and d.plan is not None}


@dataclass(frozen=True)
class LoopTimes:
    """Periods and limits of the loop (``[loop]``, ``[planning]``, ``[storage]``)."""

    heartbeat_s: float = 5.0
    ack_timeout_s: float = 30.0
    max_attempts: int = 3
    window_s: float = 900.0
    plan_ttl_s: float = 900.0
    prune_every_s: float = 600.0
    min_change_s: float = 0.0


@dataclass(frozen=True)
class RegionJob:
    """A region to re-plan: its intersections, period and optional validator."""

    id: str
    intersections: tuple[str, ...]
    replan_s: float
    validator: Validator | None = None


@dataclass
class _Pending:
    plan_id: int
    topic: str
    payload: bytes
    sent: float
    attempts: int = 1


@dataclass
class _RegionState:
    next_due: float = 0.0
    running: Future | None = None
    last: dict[str, Any] = field(default_factory=dict)


class CentralLoop:
    """See the module docstring. Only :meth:`on_ack` may be called from another thread."""

    def __init__(self, *, service: CentralOperations, history: History, state: MemoryState,
                 publisher: Publisher, planner: RegionPlanner, regions: Sequence[RegionJob],
                 key: Any, key_id: str, source: str, times: LoopTimes = LoopTimes(),
                 executor: Executor | None = None, clock: Callable[[], float] = time.time,
                 heartbeat_seq: int | None = None) -> None:
        self.service, self.history, self.state = service, history, state
        self.publisher, self.planner, self.times = publisher, planner, times
        self.site = service.site.site
        self.key, self.key_id, self.source, self.clock = key, key_id, source, clock
        self.executor = executor if executor is not None else InlineExecutor()
        self.regions = {r.id: r for r in regions}
        self.intersections = [x.id for x in service.site.intersections]
        self._region_state = {r.id: _RegionState() for r in regions}
        self._acks: queue.SimpleQueue[tuple[Ack, float]] = queue.SimpleQueue()
        self._published: dict[str, int] = {}
        self._pending: dict[str, _Pending] = {}
        self._next_beat = 0.0
        # Heartbeat numbers keep rising across restarts (milliseconds at start).
        self._beat = int(clock() * 1000) if heartbeat_seq is None else heartbeat_seq
        self._next_prune = clock() + times.prune_every_s
        self.alarms: collections.deque[dict[str, Any]] = collections.deque(maxlen=200)
        self.counts = collections.Counter()
        self._lock = threading.Lock()  # tick vs status (read by API threads)

    # --- inputs -----------------------------------------------------------------------------
    def on_ack(self, ack: Ack, received: float) -> None:
        """An ack from an edge (thread-safe; handled at the next tick)."""
        self._acks.put((ack, received))

    # --- the tick ---------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> None:
        """One pass of the loop (see the module docstring)."""
        now = self.clock() if now is None else now
        with self._lock:
            self._tick(now)

    def _tick(self, now: float) -> None:
        self._handle_acks(now)
        if now >= self._next_beat:
            self._heartbeat(now)
            self._next_beat = now + self.times.heartbeat_s
        for region in self.regions.values():
            self._collect(region, now)
            state = self._region_state[region.id]
            if state.running is None and now >= state.next_due:
                self._start(region, now)
                self._collect(region, now)  # an inline executor has finished already
        self._publish_in_force(now)
        self._follow_acks(now)
        if now >= self._next_prune:
            deleted = self.history.prune(now)
            self._next_prune = now + self.times.prune_every_s
            if any(deleted.values()):
                log.info("history: pruned %s", deleted)

    def run(self, stop: threading.Event, tick_s: float) -> None:
        """Tick every ``tick_s`` until ``stop`` is set; a failing tick is logged, not fatal."""
        failing = False
        while not stop.is_set():
            try:
                self.tick()
                if failing:
                    log.info("central loop: recovered")
                failing = False
            except Exception:  # noqa: BLE001 - log once on entering the error state
                if not failing:
                    log.exception("central loop: tick failed; retrying")
                failing = True
            stop.wait(tick_s)

    # --- heartbeats -------------------------------------------------------------------------
    def _heartbeat(self, now: float) -> None:
        self._beat += 1
        payload = encode(Heartbeat(site=self.site, seq=self._beat, t=now, source=self.source))
        kind = TopicKind.HEARTBEAT
        for x in self.intersections:
            self.publisher.publish(topic(self.site, x, kind), payload, TOPIC_QOS[kind],
                                   TOPIC_RETAIN[kind])
        self.counts["heartbeats"] += 1

    # --- regions ----------------------------------------------------------------------------
    def _start(self, region: RegionJob, now: float) -> None:
        state = self._region_state[region.id]
        state.next_due = now + region.replan_s
        incumbent = self.service.plans_in_force(region.intersections)
        state.running = self.executor.submit(self._plan_region, region, now, incumbent)

    def _plan_region(self, region: RegionJob, now: float,
                     incumbent: Mapping[str, TimingPlan]) -> dict[str, Any]:
        """Runs on the executor: estimate, plan, validate. Returns the outcome."""
        started = time.perf_counter()
        windows = self.history.measurements(region.intersections, now - self.times.window_s,
                                            now + 1e-6)
        results = self.planner.plan(windows, now, self.times.plan_ttl_s)
        candidates = {x: r.plan for x, r in results.items() if r.plan is not None}
        accepted, reasons = bool(candidates), []
        if candidates and region.validator is not None:
            try:
                accepted, reasons = region.validator(region.id, candidates, incumbent, windows,
                                                     now)
            except Exception as exc:  # noqa: BLE001 - fail closed, say why
                log.exception("region %s: validation failed", region.id)
                accepted, reasons = False, [f"validation failed: {exc}"]
        return {"t": now, "results": results, "candidates": candidates, "accepted": accepted,
                "reasons": reasons, "validated": region.validator is not None,
                "wall_s": time.perf_counter() - started}

    def _collect(self, region: RegionJob, now: float) -> None:
        state = self._region_state[region.id]
        future = state.running
        if future is None or not future.done():
            return
        state.running = None
        try:
            outcome = future.result()
        except Exception as exc:  # noqa: BLE001
            log.error("region %s: re-plan failed: %s", region.id, exc)
            state.last = {"t": now, "error": str(exc)}
            return
        results: dict[str, IntersectionResult] = outcome["results"]
        for x, result in results.items():
            if result.kpis:
                self.state.set_kpis(x, KpiSnapshot(t=outcome["t"], window_s=self.times.window_s,
                                                   values=result.kpis))
        refused: dict[str, str] = {}
        kept: dict[str, str] = {}
        if outcome["accepted"]:
            fresh = self._worth_a_change(region, outcome["candidates"], now, kept)
            refused = self.service.submit_adaptive(fresh, outcome["t"])
            self.counts["plans_submitted"] += len(fresh) - len(refused)
            self.counts["plans_kept"] += len(kept)
        elif outcome["candidates"]:
            log.warning("region %s: candidates not used: %s", region.id,
                        "; ".join(outcome["reasons"]) or "rejected")
        state.last = {
            "t": outcome["t"], "wall_s": round(outcome["wall_s"], 3),
            "planned": sorted(outcome["candidates"]), "validated": outcome["validated"],
            "accepted": outcome["accepted"], "reasons": outcome["reasons"],
            "not_planned": {x: r.reason for x, r in results.items() if r.plan is None},
            "refused": refused, "kept": kept}

    def _worth_a_change(self, region: RegionJob, candidates: Mapping[str, TimingPlan],
                        now: float, kept: dict[str, str]) -> list[TimingPlan]:
        """The candidates that change the plan in force enough; ``kept`` says why not."""
        in_force = self.service.plans_in_force(list(candidates))
        # Renewed in time for the edge to have the next plan before this one expires, even
        # if the next re-plan is late and its plan needs every resend.
        renew_within = region.replan_s + self.times.ack_timeout_s * self.times.max_attempts
        out = []
        for x, plan in candidates.items():
            why = material_change(plan, in_force.get(x), now,
                                  min_change_s=self.times.min_change_s,
                                  renew_within_s=renew_within)
            if why is None:
                kept[x] = (f"plan {in_force[x].plan_id} kept: the new one changes nothing by "
                           f"more than {self.times.min_change_s:g} s")
            else:
                out.append(plan)
        return out

    # --- publishing -------------------------------------------------------------------------
    def _publish_in_force(self, now: float) -> None:
        decisions = self.service.tick()
        for x in self.intersections:
            plan = decisions[x].plan
            if plan is None or self._published.get(x) == plan.plan_id:
                continue
            payload = encode(sign_plan(self.site, plan, self.key, self.key_id))
            name = topic(self.site, x, TopicKind.PLAN)
            # Recorded before it is published: the next start continues the plan ids from the
            # history, and a plan that reached an edge but not the history would have its id
            # issued again to a different plan, which the edge refuses as a replay. Recorded
            # and then not sent (a crash in between) only leaves a gap in the ids.
            self.history.record_plan(x, plan.plan_id, plan.source.value, payload, now)
            self.publisher.publish(name, payload, TOPIC_QOS[TopicKind.PLAN],
                                   TOPIC_RETAIN[TopicKind.PLAN])
            self._published[x] = plan.plan_id
            self._pending[x] = _Pending(plan.plan_id, name, payload, now)
            self.counts["plans_published"] += 1
            log.info("plan %d for %s published (%s): %s", plan.plan_id, x,
                     decisions[x].mode.value, decisions[x].reason)

    def _handle_acks(self, now: float) -> None:
        while True:
            try:
                ack, received = self._acks.get_nowait()
            except queue.Empty:
                return
            x = ack.intersection_id
            pending = self._pending.get(x)
            if pending is not None and pending.plan_id == ack.plan_id:
                del self._pending[x]
            self.counts["acks_accepted" if ack.accepted else "acks_rejected"] += 1
            if not ack.accepted:
                why = ack.reason or "; ".join(f"[{v.rule}] {v.message}" for v in ack.violations)
                self._alarm(now, x, "rejected", f"edge {x} rejected plan {ack.plan_id}: {why}",
                            {"plan_id": ack.plan_id, "violations": [
                                {"rule": v.rule, "phase": v.phase, "message": v.message}
                                for v in ack.violations]})

    def _follow_acks(self, now: float) -> None:
        for x, p in list(self._pending.items()):
            if now - p.sent < self.times.ack_timeout_s:
                continue
            if p.attempts < self.times.max_attempts:
                self.publisher.publish(p.topic, p.payload, TOPIC_QOS[TopicKind.PLAN],
                                       TOPIC_RETAIN[TopicKind.PLAN])
                p.attempts += 1
                p.sent = now
                self.history.plan_sent_again(x, p.plan_id)
                self.counts["plans_republished"] += 1
                continue
            del self._pending[x]
            self.history.plan_unanswered(x, p.plan_id)
            self._alarm(now, x, "unanswered",
                        f"edge {x} has not acknowledged plan {p.plan_id} after {p.attempts} "
                        f"attempts {self.times.ack_timeout_s:g} s apart",
                        {"plan_id": p.plan_id, "attempts": p.attempts})

    def _alarm(self, now: float, x: str, kind: str, message: str,
               details: dict[str, Any]) -> None:
        log.error("ALARM %s", message)
        self.counts[f"alarms_{kind}"] += 1
        self.alarms.appendleft({"t": now, "intersection": x, "kind": kind, "message": message})
        self.history.add_alarm(now, x, kind, message)
        try:
            self.service.audit.append(t=now, who=SYSTEM, action=f"plan.{kind}", intersection=x,
                                      details=details, reason=message[:2000], outcome="alarm")
        except Exception as exc:  # noqa: BLE001 - the alarm is logged and stored already
            log.error("cannot audit the alarm: %s", exc)

    # --- reading ----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The loop's state for the operations API: regions, pending acks, alarms, counts."""
        with self._lock:
            return self._status()

    def _status(self) -> dict[str, Any]:
        return {"regions": {rid: dict(s.last, running=s.running is not None,
                                      next_due=s.next_due)
                            for rid, s in self._region_state.items()},
                "pending_acks": {x: {"plan_id": p.plan_id, "attempts": p.attempts,
                                     "sent": p.sent} for x, p in list(self._pending.items())},
                "published": dict(self._published), "alarms": list(self.alarms),
                "counts": dict(self.counts)}
