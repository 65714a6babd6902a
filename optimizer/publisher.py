"""The centre's MQTT adapter (paho-mqtt 2): a persistent session in, plans and heartbeats out.

Threads (FIELD-NOTES: paho deadlocks when publishing from its callbacks):

* paho's network thread (``loop_start``; reconnects every 1-10 s) runs the callbacks. They
  subscribe (in ``on_connect``, so every reconnect renews the subscriptions) and hand each
  received message to the ``sink`` (the ingest worker's queue); they never publish.
* the outbox thread makes every ``publish`` and every PUBACK call, in order.

Session. The client connects with a stable client id and a persistent session (MQTT 5
``clean_start`` off with a session expiry; MQTT 3.1.1 ``clean_session`` off), so the broker
queues QoS 1 messages while the centre is away. Acknowledgement is manual: a message is
PUBACKed only when :meth:`CentralLink.settle` is called with its token, which the ingest worker
does after committing it to SQLite. A PUBACK for a delivery of an earlier connection is not
sent (the broker redelivers that message; the dedup drops the copy). With MQTT 5 the client
announces ``receive_maximum``: how many unacknowledged deliveries the broker may have in
flight to it (mosquitto's own limit for 3.1.1 clients is ``max_inflight_messages``, 20).

Shared subscriptions (``$share/{group}/{filter}``, MQTT 5) let replicas split the messages of
a filter between them: each message goes to one member of the group.

Errors: library errors become :class:`~edge_agent.errors.DeviceError`; a lost broker is logged
once when it goes and once when it is back.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable, Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.errors import DeviceError
from optimizer.ingest import Received

__all__ = ["CentralLink"]

log = logging.getLogger(__name__)

_PUBLISH, _ACK, _STOP = range(3)
_SUBSCRIBE_CHUNK = 500  # filters per SUBSCRIBE packet


class CentralLink:
    """The centre's connection to the broker (see the module docstring)."""

    def __init__(self, *, client_id: str, subscriptions: Sequence[str],
                 sink: Callable[[Received], None], host: str = "127.0.0.1", port: int = 1883,
                 keepalive_s: float = 30.0, session_expiry_s: int = 86_400,
                 receive_maximum: int = 1000, protocol: int = 5, username: str | None = None,
                 password: str | None = None, clock: Callable[[], float] = time.time) -> None:
        if protocol not in (4, 5):
            raise ValueError(f"protocol: 4 (MQTT 3.1.1) or 5, got {protocol!r}")
        if any(f.startswith("$share/") for f in subscriptions) and protocol != 5:
            raise ValueError("shared subscriptions need MQTT 5 (protocol 5)")
        self.client_id, self._host, self._port = client_id, host, port
        self._keepalive, self._expiry = int(keepalive_s), int(session_expiry_s)
        self._receive_maximum, self._protocol = int(receive_maximum), protocol
        self._subscriptions = list(subscriptions)
        self._sink, self._clock, self._auth = sink, clock, (username, password)
        self._outbox: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._generation = 0  # connections so far; a delivery's token names its connection
        self._pending_subs: set[int] = set()
        self.connected = threading.Event()  # connected and subscribed
        self._down_since: float | None = None
        self._ever = self._closing = False
        self._client: mqtt.Client | None = None
        self._thread: threading.Thread | None = None
        self.published = self.settled = self.received = 0

    # --- caller's API -----------------------------------------------------------------------
    def start(self) -> None:
        """Start connecting (the broker may be down: paho keeps retrying)."""
        try:
            if self._protocol == 5:
                client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                     protocol=mqtt.MQTTv5, manual_ack=True)
            else:
                client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                     clean_session=False, protocol=mqtt.MQTTv311,
                                     manual_ack=True)
            client.reconnect_delay_set(1, 10)  # the default cap is 120 s (FIELD-NOTES)
            client.max_queued_messages_set(0)
            if self._auth[0]:
                client.username_pw_set(*self._auth)
            client.on_connect, client.on_disconnect = self._on_connect, self._on_disconnect
            client.on_connect_fail, client.on_subscribe = self._on_connect_fail, \
                self._on_subscribe
            client.on_message = self._on_message
            self._client = client
            if self._protocol == 5:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = self._expiry
                props.ReceiveMaximum = self._receive_maximum
                client.connect_async(self._host, self._port, self._keepalive,
                                     clean_start=False, properties=props)
            else:
                client.connect_async(self._host, self._port, self._keepalive)
            client.loop_start()
        except (ValueError, OSError) as exc:
            raise DeviceError(f"MQTT {self.client_id}: cannot start paho: {exc}") from exc
        self._thread = threading.Thread(target=self._run_outbox, name="tsc-central-outbox",
                                        daemon=True)
        self._thread.start()

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Queue a publish for the outbox thread (QoS 1 is kept by paho across a reconnect;
        QoS 0 published while disconnected is lost, which suits heartbeats)."""
        self._outbox.put((_PUBLISH, topic, payload, qos, retain))

    def settle(self, tokens: list[Any]) -> None:
        """PUBACK the deliveries named by ``tokens`` (they are stored)."""
        for token in tokens:
            self._outbox.put((_ACK, token))

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued, disconnect (the session stays on the broker)."""
        if self._thread is not None and self._thread.is_alive():
            self._outbox.put((_STOP,))
            self._thread.join(timeout)
        if self._client is not None:
            self._closing = True
            self._client.disconnect()
            self._client.loop_stop()

    # --- outbox thread ----------------------------------------------------------------------
    def _run_outbox(self) -> None:
        assert self._client is not None
        failing = False
        while True:
            command = self._outbox.get()
            if command[0] == _STOP:
                return
            try:
                if command[0] == _PUBLISH:
                    _, topic, payload, qos, retain = command
                    info = self._client.publish(topic, payload, qos=qos, retain=retain)
                    self.published += 1
                    bad = info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS,
                                          MQTTErrorCode.MQTT_ERR_NO_CONN)
                else:
                    generation, mid, qos = command[1]
                    bad = False
                    if generation == self._generation and qos > 0:
                        self._client.ack(mid, qos)
                        self.settled += 1
                if bad and not failing:
                    log.error("MQTT %s: publish failed: %s", self.client_id,
                              mqtt.error_string(info.rc))
                failing = bad
            except (ValueError, RuntimeError, OSError) as exc:  # never kill the outbox
                log.error("MQTT %s: %s", self.client_id, exc)

    # --- paho's network thread: subscribe and queue, never publish --------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            self._went_down(f"broker refused the connection: {reason}")
            return
        self._generation += 1
        self._pending_subs.clear()
        options = SubscribeOptions(qos=1) if self._protocol == 5 else 1
        for i in range(0, len(self._subscriptions), _SUBSCRIBE_CHUNK):
            chunk = [(f, options) for f in self._subscriptions[i:i + _SUBSCRIBE_CHUNK]]
            result, mid = client.subscribe(chunk)
            if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
                log.error("MQTT %s: subscribe failed: %s", self.client_id,
                          mqtt.error_string(result))
            self._pending_subs.add(mid)
        if self._down_since is not None:
            log.info("MQTT %s: broker %s:%d back after %.1f s", self.client_id, self._host,
                     self._port, time.monotonic() - self._down_since)
            self._down_since = None
        elif not self._ever:
            log.info("MQTT %s: connected to %s:%d (session %s)", self.client_id, self._host,
                     self._port, "resumed" if getattr(flags, "session_present", False)
                     else "new")
        self._ever = True
        if not self._subscriptions:
            self.connected.set()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[Any],
                      properties: Any) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            log.error("MQTT %s: broker refused subscriptions: %s", self.client_id,
                      ", ".join(sorted(set(refused))))
        self._pending_subs.discard(mid)
        if not self._pending_subs:
            self.connected.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._went_down("cannot connect")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        self.connected.clear()
        if not self._closing:
            self._went_down(f"disconnected: {reason}")

    def _went_down(self, why: str) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("MQTT %s: broker %s:%d unreachable (%s); retrying every 1-10 s",
                        self.client_id, self._host, self._port, why)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.received += 1
        token = (self._generation, msg.mid, msg.qos) if msg.qos > 0 else None
        self._sink(Received(msg.topic, msg.payload, self._clock(), token))
