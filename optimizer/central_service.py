"""``tsc-central run``: ingest, the central loop and the operations API in one process.

:class:`CentralService` wires the parts of a :class:`~optimizer.central_config.CentralConfig`:

* the MQTT link (:class:`~optimizer.publisher.CentralLink`) with the topic filters of
  :func:`subscriptions`, feeding the ingest worker (:mod:`optimizer.ingest`) that stores into
  the history (:mod:`optimizer.history`) and PUBACKs only what it stored;
* the central loop (:mod:`optimizer.central_loop`) on its own thread, planning regions on a
  one-worker executor so that validation never delays heartbeats and acks;
* the operations API (:func:`optimizer.api.create_app` over the same
  :class:`~optimizer.central_loop.CentralOperations`), plus ``GET /api/v1/central``: the
  loop's regions, pending acks, alarms and the ingest counters (any user with a token);
* the override store (:mod:`optimizer.override_store`, in ``storage.db``): overrides survive a
  restart. On construction the service puts back the overrides it serves that had not ended
  (each guard-checked again; see
  :meth:`~optimizer.operations.OperationsService.restore_overrides`), before anything decides.

Ids after a restart: plan ids continue above the highest one the history recorded as published
(and the highest an override was issued under), override ids above the highest the store has
handed out, so an edge never sees a plan id it has accepted before.

Roles (scale-out): ``loop.role = "all"`` does everything; ``"ingest"`` only stores (a replica
taking a share of the measurements through a shared subscription into the same history).
``loop.regions`` restricts a process to some regions: it subscribes, plans, publishes and
serves only their intersections.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from edge_agent.signatures import load_private_key
from edge_agent.topics import TopicKind, shared_subscription, subscription
from optimizer.api import create_app
from optimizer.arbitration import Arbiter, TimeOfDaySchedule
from optimizer.audit import AuditLog
from optimizer.auth import UserStore
from optimizer.central_config import CentralConfig, restrict_site
from optimizer.central_loop import CentralLoop, CentralOperations, LoopTimes, RegionJob
from optimizer.history import History
from optimizer.ingest import Ingest, IngestWorker, Received
from optimizer.override_store import OverrideStore
from optimizer.publisher import CentralLink
from optimizer.region_plan import RegionPlanner
from optimizer.state import MemoryState

__all__ = ["CentralService", "subscriptions"]

log = logging.getLogger(__name__)

#: Kinds whose load replicas share (each message to one member of the group).
SHARED_KINDS = (TopicKind.MEASUREMENTS, TopicKind.EVENTS)
#: Kinds the process that plans an intersection must see itself.
OWN_KINDS = (TopicKind.ACK, TopicKind.STATUS)


def subscriptions(site: str, owned: Iterable[str], every: Iterable[str], *,
                  share_group: str = "", role: str = "all") -> list[str]:
    """The topic filters of a process serving ``owned`` of the site's ``every`` intersection.

    Serving the whole site: one ``+`` filter per kind (``tsc/v1/{site}/+/measurements``);
    serving some regions: one filter per intersection and kind. With ``share_group``,
    measurements and events are subscribed as ``$share/{group}/{filter}`` (MQTT 5): replicas
    with the same filter split its messages. Acks and statuses are never shared (the process
    that published a plan follows its ack); an ``ingest`` replica does not take them.
    """
    owned = sorted(set(owned))
    whole = set(owned) == set(every)

    def filters(kind: TopicKind) -> list[str]:
        if whole:
            return [subscription(site, "+", kind)]
        return [subscription(site, x, kind) for x in owned]

    out = []
    for kind in SHARED_KINDS:
        out += [shared_subscription(share_group, f) if share_group else f
                for f in filters(kind)]
    if role == "all":
        for kind in OWN_KINDS:
            out += filters(kind)
    return out


class CentralService:
    """Everything ``tsc-central run`` runs (see the module docstring)."""

    def __init__(self, config: CentralConfig, *, clock: Callable[[], float] = time.time,
                 protocol: int = 5) -> None:
        f = config.file
        self.config, self.clock = config, clock
        owned = [x for r in config.owned_regions for x in r.intersections]
        self.site = restrict_site(config.site, set(owned))
        self.history = History(config.history_path, retention_s=f.storage.retention_h * 3600)
        self.state = MemoryState()
        self.audit, self.users = AuditLog(config.db_path), UserStore(config.db_path)
        schedules = {x: TimeOfDaySchedule(entries, f.timezone)
                     for x, entries in config.time_of_day.items() if x in owned}
        # Only the process that publishes plans keeps overrides across restarts: an ingest
        # replica's arbiter publishes nothing, and restoring there too would expire (and audit)
        # the same override twice.
        self.overrides = OverrideStore(config.db_path) if f.loop.role == "all" else None
        last_ids = dict(self.history.last_plan_ids())
        if self.overrides is not None:
            # The history records every plan before it is published; the store's ids are a
            # second floor should the history file have been replaced.
            for x, n in self.overrides.last_plan_ids().items():
                last_ids[x] = max(n, last_ids.get(x, 0))
        last_ids = {x: n for x, n in last_ids.items() if x in owned}
        arbiter = Arbiter(self.site.intersections, time_of_day=schedules, last_plan_ids=last_ids,
                          max_override_s=f.api.max_override_h * 3600.0,
                          last_override_id=0 if self.overrides is None
                          else self.overrides.last_override_id())
        self.service = CentralOperations(self.site, audit=self.audit, state=self.state,
                                         arbiter=arbiter, clock=clock,
                                         stale_after_s=f.loop.stale_after_s,
                                         store=self.overrides)
        # Before the loop or the API decides anything: a restored override is in force from
        # the first plan published. Other processes' intersections are left to them.
        self.restored = self.service.restore_overrides(
            others={x.id for x in config.site.intersections} - set(owned))
        p = f.planning
        self.planner = RegionPlanner(self.site, halflife_s=p.halflife_s,
                                     prior_saturation_vph=p.prior_saturation_vph,
                                     max_degree=p.max_degree, cycle_step_s=p.cycle_step_s,
                                     cycle_max_s=p.cycle_max_s,
                                     max_green_factor=p.max_green_factor)
        regions = []
        for r in config.owned_regions:
            validator = None
            if r.validation is not None and f.loop.role == "all":
                from optimizer.central_gate import gate_validator
                validator = gate_validator(config.scenario_path(r), r.validation, p.window_s)
            regions.append(RegionJob(r.id, r.intersections, r.replan_s, validator))
        self.link = CentralLink(
            client_id=config.client_id,
            subscriptions=subscriptions(self.site.site, owned,
                                        [x.id for x in config.site.intersections],
                                        share_group=f.mqtt.share_group, role=f.loop.role),
            sink=self._offer, host=f.mqtt.host, port=f.mqtt.port, keepalive_s=f.mqtt.keepalive_s,
            session_expiry_s=f.mqtt.session_expiry_s, receive_maximum=f.mqtt.receive_maximum,
            protocol=protocol, username=f.mqtt.username or None, password=config.password,
            clock=clock)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tsc-central-plan")
        self.loop = CentralLoop(
            service=self.service, history=self.history, state=self.state, publisher=self.link,
            planner=self.planner, regions=regions,
            key=load_private_key(config.key_path.read_bytes()), key_id=f.signing.key_id,
            source=f.central_id, executor=self._executor, clock=clock,
            times=LoopTimes(heartbeat_s=f.loop.heartbeat_s, ack_timeout_s=f.loop.ack_timeout_s,
                            max_attempts=f.loop.max_attempts, window_s=p.window_s,
                            plan_ttl_s=p.plan_ttl_s, prune_every_s=f.storage.prune_every_s,
                            min_change_s=p.min_change_s))
        self.ingest = Ingest(self.history, self.state, site=self.site.site, intersections=owned,
                             on_ack=self.loop.on_ack)
        self.worker = IngestWorker(self.ingest, settle=self.link.settle)
        self._stop = threading.Event()
        self._loop_thread: threading.Thread | None = None

    def _offer(self, item: Received) -> None:
        self.worker.offer(item)

    # --- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start ingest, the MQTT link and (role ``all``) the loop; returns at once."""
        self.worker.start()
        self.link.start()
        if self.config.file.loop.role == "all":
            self._loop_thread = threading.Thread(
                target=self.loop.run, args=(self._stop, self.config.file.loop.tick_s),
                name="tsc-central-loop", daemon=True)
            self._loop_thread.start()
        log.info("tsc-central %s: site %s, %d intersections in %d regions, role %s",
                 self.config.file.central_id, self.site.site, len(self.site.intersections),
                 len(self.config.owned_regions), self.config.file.loop.role)

    def stop(self) -> None:
        """Stop the loop, drain ingest, close the link and the files."""
        self._stop.set()
        if self._loop_thread is not None:
            self._loop_thread.join(10)
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.link.close()
        self.worker.stop()
        self.history.close()
        if self.overrides is not None:
            self.overrides.close()

    def __enter__(self) -> CentralService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the API ----------------------------------------------------------------------------
    def app(self, tick_every_s: float | None = 1.0) -> FastAPI:
        """The operations API over this service, with ``GET /api/v1/central`` added."""
        app = create_app(self.service, self.users, tick_every_s=tick_every_s)
        app.include_router(self._router())
        return app

    def _router(self) -> APIRouter:
        bearer = HTTPBearer(auto_error=False)
        router = APIRouter()

        def user(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Any:
            found = None if credentials is None else self.users.authenticate(
                credentials.credentials)
            if found is None:
                raise HTTPException(401, "missing or invalid bearer token",
                                    headers={"WWW-Authenticate": "Bearer"})
            return found

        @router.get("/api/v1/central", summary="central loop: regions, acks, alarms, ingest")
        def central(who: Any = Depends(user)) -> dict[str, Any]:
            return {"central_id": self.config.file.central_id, "site": self.site.site,
                    "mqtt": {"connected": self.link.connected.is_set(),
                             "received": self.link.received,
                             "published": self.link.published},
                    "ingest": self.ingest.stats.to_dict(), "loop": self.loop.status(),
                    "alarms": self.history.alarms(50)}

        return router

    def serve(self) -> int:
        """Run until SIGINT/SIGTERM: the API (if enabled) in this thread, the rest behind;
        then stop cleanly (ingest drained, session kept on the broker)."""
        api = self.config.file.api
        done = threading.Event()
        # uvicorn restores the handlers it found and re-raises the signal it caught once it
        # has shut down: with ours installed first, that ends here, not the process.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        try:
            if api.enabled:
                import uvicorn
                log.info("operations API on http://%s:%d (OpenAPI at /openapi.json)",
                         api.host, api.port)
                uvicorn.run(self.app(), host=api.host, port=api.port, log_level="warning")
            else:
                done.wait()
        finally:
            self.stop()
            log.info("tsc-central %s stopped", self.config.file.central_id)
        return 0
