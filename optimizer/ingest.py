"""Ingest: what the edges publish, decoded, deduplicated and stored, on a worker thread.

:class:`Ingest` handles a batch of received messages in one SQLite transaction:

* ``measurements`` and ``events``: stored once per ``(intersection, seq)``
  (:class:`~optimizer.history.History`); a repeat (QoS 1 redelivery, the edge's spool
  resending after a reconnect) is counted and dropped. Stored measurements are also handed to
  the state's ``add_measurement`` where it has one (the dashboard's live measurements). Arrival order does not matter, and
  late data is stored as long as it is within the retention; older data is refused.
* ``status`` (retained; also the edge's last will, an offline status with ``t`` = 0): kept in
  the history and handed to the :class:`~optimizer.state.MemoryState` the API reads.
* ``ack``: stored, marked on the plan it answers, and handed to ``on_ack`` (the central loop
  follows acks: re-publish, alarm).

Payloads that do not decode (or do not fit their topic), messages for intersections this
process does not serve and kinds the centre does not consume are counted and logged once per
topic kind, never raised: one bad edge must not stop the ingest of the others.

:class:`IngestWorker` runs :class:`Ingest` on its own thread, never on paho's network thread:
the MQTT adapter only queues what arrives (:meth:`IngestWorker.offer`). After a batch is
committed the worker calls ``settle`` with the batch's delivery tokens, which the adapter turns
into PUBACKs (manual acknowledgement), so the broker forgets a message only once it is on disk
here: a crash of the centre loses nothing the edges sent; the broker delivers it again and the
dedup drops what was stored already.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from edge_agent.errors import DeviceError
from edge_agent.messages import (
    Ack, Events, Measurement, MessageError, Status, decode_for_topic,
)
from edge_agent.topics import parse_topic
from optimizer.history import History
from optimizer.state import MemoryState

__all__ = ["Ingest", "IngestStats", "IngestWorker", "Received"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Received:
    """One message as the MQTT adapter queued it; ``token`` is what ``settle`` gets back."""

    topic: str
    payload: bytes
    received_at: float
    token: Any = None


@dataclass
class IngestStats:
    """Counters since start."""

    received: int = 0
    measurements: int = 0  # stored, first copies
    events: int = 0
    duplicates: int = 0  # measurement and events repeats dropped
    statuses: int = 0
    acks: int = 0
    rejected: int = 0  # undecodable, foreign or unexpected
    too_old: int = 0
    batches: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Ingest:
    """Decode, deduplicate, store (see the module docstring). Not thread-safe: one caller."""

    def __init__(self, history: History, state: MemoryState, *, site: str,
                 intersections: Iterable[str],
                 on_ack: Callable[[Ack, float], None] | None = None) -> None:
        self.history, self.state, self.site = history, state, site
        self.intersections = frozenset(intersections)
        self.on_ack = on_ack
        self.stats = IngestStats()
        self._logged: set[str] = set()
        self._fresh: list[Measurement] = []

    def process(self, batch: list[Received]) -> None:
        """Handle a batch in one transaction; acks are handed on after the commit."""
        acks: list[tuple[Ack, float]] = []
        statuses: list[Status] = []
        self._fresh: list[Measurement] = []
        with self.history.batch():
            for item in batch:
                self.stats.received += 1
                try:
                    msg = decode_for_topic(item.topic, item.payload)
                except MessageError as exc:
                    self._reject(item.topic, f"undecodable: {exc}")
                    continue
                if msg.site != self.site or getattr(msg, "intersection_id", None) not in \
                        self.intersections:
                    self._reject(item.topic, "not an intersection this centre serves")
                    continue
                self._store(msg, item, acks, statuses)
        self.stats.batches += 1
        for status in statuses:  # after the commit: what the API shows is on disk
            self.state.set_status(status)
        live = getattr(self.state, "add_measurement", None)
        if live is not None:
            for m in self._fresh:
                live(m)
        if self.on_ack is not None:
            for ack, received in acks:
                self.on_ack(ack, received)

    def _store(self, msg: Any, item: Received, acks: list, statuses: list) -> None:
        now = item.received_at
        if isinstance(msg, Measurement):
            if self.history.too_old(msg.interval_start, now):
                self.stats.too_old += 1
            elif self.history.add_measurement(msg, item.payload, now):
                self.stats.measurements += 1
                self._fresh.append(msg)
            else:
                self.stats.duplicates += 1
        elif isinstance(msg, Events):
            if self.history.too_old(msg.events[-1].t, now):
                self.stats.too_old += 1
            elif self.history.add_events(msg, item.payload, now):
                self.stats.events += 1
            else:
                self.stats.duplicates += 1
        elif isinstance(msg, Status):
            self.history.set_status(msg, item.payload, now)
            statuses.append(msg)
            self.stats.statuses += 1
            if not msg.online:
                log.warning("edge %s offline: %s", msg.intersection_id, msg.detail or "-")
        elif isinstance(msg, Ack):
            self.history.add_ack(msg, item.payload, now)
            acks.append((msg, now))
            self.stats.acks += 1
        else:  # plans and heartbeats are the centre's own
            self._reject(item.topic, f"the centre does not consume {type(msg).__name__}")

    def _reject(self, topic: str, why: str) -> None:
        self.stats.rejected += 1
        try:
            kind = parse_topic(topic).kind.value
        except ValueError:
            kind = "?"
        if kind not in self._logged:  # once per kind: a flood must not flood the log
            self._logged.add(kind)
            log.warning("ingest: dropped a message on %s (%s); further drops of %s messages "
                        "are only counted", topic, why, kind)


class IngestWorker:
    """:class:`Ingest` on its own thread, fed through a bounded queue."""

    def __init__(self, ingest: Ingest, *, settle: Callable[[list[Any]], None] | None = None,
                 max_batch: int = 500, maxsize: int = 100_000) -> None:
        self.ingest, self.settle, self.max_batch = ingest, settle, max_batch
        self._queue: queue.Queue[Received | None] = queue.Queue(maxsize)
        self._thread = threading.Thread(target=self._run, name="tsc-central-ingest",
                                        daemon=True)
        self._failing = False
        self.idle = threading.Event()
        self.idle.set()

    def start(self) -> None:
        self._thread.start()

    def offer(self, item: Received) -> None:
        """Queue a message (called on paho's thread). When the queue is full this blocks,
        which slows the broker's deliveries instead of losing any (nothing is PUBACKed
        until stored)."""
        self.idle.clear()
        self._queue.put(item)

    def stop(self, timeout: float = 10.0) -> None:
        """Process what is queued, then end the thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def wait_idle(self, timeout: float) -> bool:
        """True once everything offered so far is processed."""
        return self.idle.wait(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._handle(batch)
            if self._queue.empty():
                self.idle.set()
        self.idle.set()

    def _handle(self, batch: list[Received]) -> None:
        while True:
            try:
                self.ingest.process(batch)
            except DeviceError as exc:  # the database: retry, the broker keeps the messages
                if not self._failing:
                    log.error("ingest: cannot store (%s); retrying every second", exc)
                    self._failing = True
                time.sleep(1.0)
                continue
            except Exception:  # a bug must not kill ingest: log it, settle, go on
                log.exception("ingest: batch of %d failed", len(batch))
                break
            if self._failing:
                log.info("ingest: storing again")
                self._failing = False
            break
        if self.settle is not None:
            self.settle([item.token for item in batch if item.token is not None])
