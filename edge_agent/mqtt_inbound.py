"""The receiving half of the MQTT link: payloads from paho's network thread to the caller.

paho calls ``on_message`` on its network thread, which also keeps the connection alive: work
done there delays PUBACKs and keepalives, and publishing there has deadlocked (FIELD-NOTES).
So the network thread only puts the raw payload on a bounded queue (:meth:`offer`, never
blocking); a dispatcher thread decodes it (:func:`~edge_agent.link_wire.decode_inbound`) and
calls the caller's callback.

Nothing is lost silently: an undecodable payload is counted and logged once per topic (and
once more when that topic decodes again); a full queue drops the newest payloads, counted and
logged once until it drains; a callback that raises is logged once until it succeeds again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable

from edge_agent.link_wire import Inbound, decode_inbound
from edge_agent.messages import MessageError

__all__ = ["InboundDispatcher"]

log = logging.getLogger(__name__)

_MAX_BAD_TOPICS = 1000  # topics remembered for "decodes again" lines; beyond, only counted


class InboundDispatcher:
    """A bounded queue and the thread that decodes and hands over what it holds."""

    def __init__(self, name: str, on_inbound: Callable[[Inbound], None], *,
                 sensor_prefix: str = "", maxsize: int = 10_000,
                 addressed_to: tuple[str, str] | None = None) -> None:
        self._name, self._on_inbound, self._prefix = name, on_inbound, sensor_prefix
        self._addressed_to = addressed_to
        self._queue: queue.Queue[tuple[str, bytes, bool, float] | None] = \
            queue.Queue(maxsize=maxsize)
        self._thread: threading.Thread | None = None
        self._bad_topics: dict[str, int] = {}
        self._callback_failing = self._overflowing = False
        #: payloads handed to the callback / rejected as undecodable / lost to a full queue
        self.delivered = self.rejected = self.overflow = 0

    def start(self) -> None:
        """Start the dispatcher thread."""
        self._thread = threading.Thread(target=self._run, name=f"mqtt-{self._name}-inbound",
                                        daemon=True)
        self._thread.start()

    def offer(self, topic: str, payload: bytes, retained: bool) -> None:
        """Queue a received payload (paho's network thread); never blocks."""
        try:
            self._queue.put_nowait((topic, payload, retained, time.time()))
        except queue.Full:
            self.overflow += 1
            if not self._overflowing:
                self._overflowing = True
                log.warning("MQTT link %s: inbound queue full (the callback is too slow); "
                            "dropping received messages", self._name)

    def stop(self, timeout: float = 5.0) -> None:
        """Hand over what is queued, then stop the thread."""
        if self._thread is None:
            return
        self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("MQTT link %s: inbound thread did not stop", self._name)
        self._thread = None

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            self._handle(*item)
            if self._queue.empty():
                self._drained()
        self._drained()

    def _drained(self) -> None:
        if self._overflowing:
            self._overflowing = False
            log.info("MQTT link %s: inbound queue drained (%d lost in all)", self._name,
                     self.overflow)

    def _handle(self, topic: str, payload: bytes, retained: bool, received_at: float) -> None:
        try:
            inbound = decode_inbound(topic, payload, sensor_prefix=self._prefix,
                                     retained=retained, received_at=received_at,
                                     addressed_to=self._addressed_to)
        except MessageError as exc:
            self.rejected += 1
            if topic in self._bad_topics:
                self._bad_topics[topic] += 1
            elif len(self._bad_topics) < _MAX_BAD_TOPICS:
                self._bad_topics[topic] = 1
                log.warning("MQTT link %s: rejected a payload on %s: %s", self._name, topic, exc)
            return
        if topic in self._bad_topics:
            log.info("MQTT link %s: %s decodes again (%d rejected)", self._name, topic,
                     self._bad_topics.pop(topic))
        try:
            self._on_inbound(inbound)
        except Exception:  # the caller's bug must not stop plans and heartbeats coming in
            if not self._callback_failing:
                log.exception("MQTT link %s: the inbound callback failed", self._name)
            self._callback_failing = True
        else:
            if self._callback_failing:
                log.info("MQTT link %s: the inbound callback works again", self._name)
            self._callback_failing = False
        self.delivered += 1
