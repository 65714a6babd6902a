"""An in-memory stand-in for :class:`~edge_agent.mqtt_link.EdgeLink`, for fast tests of callers.

Same public methods and the same message handling (:mod:`edge_agent.link_wire`: sequence
numbers written into measurements and events, validation of what is published, strict
decoding of what arrives), but no broker, no threads and no file: a published message is
"delivered" at once while the fake is online and kept pending, in order, while it is offline.
Inbound messages are handed to the callback synchronously by :meth:`FakeLink.deliver`.

Test helpers: :attr:`FakeLink.published` (topic and decoded message, in delivery order),
:attr:`FakeLink.statuses` (every status published, the will included), :meth:`set_online`
(simulate an outage: going offline publishes the last will, coming back the online status
and then every pending message, in order).
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from typing import Callable

import msgspec

from edge_agent.errors import DeviceError
from edge_agent.link_wire import (
    Inbound, MqttLinkStats, check_sensor_prefix, decode_inbound, prepare_outbound,
)
from edge_agent.messages import (
    MESSAGE_TYPES, EdgeMode, Message, MessageError, Status, decode, encode, offline_status,
)
from edge_agent.model import require_ident
from edge_agent.topics import parse_topic

__all__ = ["FakeLink"]


class FakeLink:
    """See the module docstring; the constructor takes EdgeLink's keywords it uses."""

    def __init__(self, *, site: str, intersection: str, on_inbound: Callable[[Inbound], None],
                 sensor_prefix: str = "", first_seq: int = 1,
                 clock: Callable[[], float] = time.time, **_ignored: object) -> None:
        require_ident(site, "site")
        require_ident(intersection, "intersection")
        self.site, self.intersection = site, intersection
        self._on_inbound, self._clock = on_inbound, clock
        self._prefix = check_sensor_prefix(sensor_prefix)
        self._next_seq = first_seq
        self._pending: list[tuple[int, str, bytes]] = []
        self._status = Status(site=site, intersection_id=intersection, t=0.0, online=True,
                              mode=EdgeMode.STARTUP, controller_ok=False)
        self._state, self._online = "new", False
        self._counts = dict(appended=0, delivered=0, connects=0, inbound=0, rejected=0)
        #: (topic, decoded message) of every delivered measurement, events batch and ack
        self.published: list[tuple[str, Message]] = []
        #: every status the "broker" saw: online ones, wills, clean offline ones
        self.statuses: list[Status] = []

    def start(self, timeout: float = 10.0) -> None:
        """Go online (publishes the online status)."""
        if self._state != "new":
            raise DeviceError("fake link: already started")
        self._state = "running"
        self.set_online(True)

    def submit(self, message: Message) -> Future[int]:
        """Spool the message at once; the future is already resolved with its seq."""
        item = prepare_outbound(message, self.site, self.intersection)
        if self._state != "running":
            raise DeviceError(f"fake link: not running ({self._state})")
        seq, self._next_seq = self._next_seq, self._next_seq + 1
        payload = item.payload(seq) if callable(item.payload) else item.payload
        self._pending.append((seq, item.topic, payload))
        self._counts["appended"] += 1
        self._flush()
        future: Future[int] = Future()
        future.set_result(seq)
        return future

    def publish(self, message: Message, timeout: float = 10.0) -> int:
        """:meth:`submit` and return the seq."""
        return self.submit(message).result(timeout)

    def update_status(self, status: Status) -> None:
        """Set the status; published now if online."""
        if (status.site, status.intersection_id) != (self.site, self.intersection):
            raise ValueError(f"status for {status.site}/{status.intersection_id} given to the "
                             f"link of {self.site}/{self.intersection}")
        self._status = status
        if self._online:
            self._say(online=True)

    @property
    def connected(self) -> bool:
        return self._online

    def wait_connected(self, timeout: float) -> bool:
        return self._online

    def wait_delivered(self, timeout: float) -> bool:
        return not self._pending

    def stats(self) -> MqttLinkStats:
        c = self._counts
        return MqttLinkStats(connected=self._online, pending=len(self._pending),
                         pending_bytes=sum(len(p) for _, _, p in self._pending), inflight=0,
                         appended=c["appended"], delivered=c["delivered"], sent=c["delivered"],
                         resent=0, dropped=0, next_seq=self._next_seq, connects=c["connects"],
                         inbound=c["inbound"], inbound_rejected=c["rejected"],
                         inbound_overflow=0)

    def close(self, timeout: float = 5.0) -> None:
        """Publish a clean offline status if online; pending messages are kept (and lost)."""
        if self._state == "running" and self._online:
            self._say(online=False, detail="shut down cleanly")
        self._state, self._online = "closed", False

    def __enter__(self) -> FakeLink:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- test helpers -----------------------------------------------------------------------
    def set_online(self, online: bool) -> None:
        """Simulate the broker connection coming and going."""
        if online == self._online:
            return
        self._online = online
        if online:
            self._counts["connects"] += 1
            self._say(online=True)
            self._flush()
        else:  # the broker publishes the will of a client it lost
            self.statuses.append(offline_status(self.site, self.intersection))

    def deliver(self, topic_name: str, payload: bytes | Message, *,
                retained: bool = False) -> Inbound | None:
        """Hand a received payload to the callback as the real link would (synchronously).

        Returns what was handed over, or None when the payload was rejected (counted).
        """
        data = encode(payload) if isinstance(payload, Message) else payload
        try:
            inbound = decode_inbound(topic_name, data, sensor_prefix=self._prefix,
                                     retained=retained, received_at=self._clock(),
                                     addressed_to=(self.site, self.intersection))
        except MessageError:  # the real link logs and counts it
            self._counts["rejected"] += 1
            return None
        self._counts["inbound"] += 1
        self._on_inbound(inbound)
        return inbound

    def _flush(self) -> None:
        if not self._online:
            return
        for _, name, payload in self._pending:
            kind = MESSAGE_TYPES[parse_topic(name).kind]
            self.published.append((name, decode(payload, kind)))
            self._counts["delivered"] += 1
        self._pending.clear()

    def _say(self, *, online: bool, detail: str | None = None) -> None:
        changes: dict[str, object] = dict(t=self._clock(), online=online)
        if detail is not None:
            changes["detail"] = detail
        self.statuses.append(msgspec.structs.replace(self._status, **changes))
