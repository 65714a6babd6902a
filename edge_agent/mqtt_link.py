"""The edge's MQTT adapter over paho-mqtt 2: spooled, ordered, at-least-once publishing, the
retained status with its last will, and the centre's plans and heartbeats coming in.

Threads (paho deadlocks when publishing from its callbacks, FIELD-NOTES):

* paho's network thread runs the connection (``loop_start``; reconnects every 1-10 s). Its
  callbacks only put commands on a queue, subscribe (in ``on_connect``, so subscriptions are
  renewed on every connect) and queue received payloads; they never publish.
* the publisher thread owns the spool and every ``publish`` call. It appends what callers
  submit (many messages per fsync), sends undelivered rows in sequence order with QoS 1 (at
  most ``window`` awaiting PUBACK), deletes a row on its PUBACK (``on_publish`` with the
  mid), and publishes the retained online status on every connect.
* the dispatcher thread decodes received payloads and calls the caller's ``on_inbound``.

Delivery. paho's own in-memory resend queue is emptied in ``on_connect``; instead, on every
connect, the publisher sends again every row of the spool that has no PUBACK yet, in order.
So a message is delivered at least once, across broker outages and restarts of the agent; a
copy may arrive twice (sent, then the connection broke before the PUBACK came back). The
``seq`` of measurements and events is the spool's sequence number, so a consumer that drops
repeats of ``(intersection, seq)`` sees each exactly once. Acks carry no ``seq``; a repeated
ack repeats the same ``(plan_id, accepted)``. The consumer should hold a persistent session
(clean session off) on a broker with persistence on and a ``max_queued_messages`` above the
backlog of an outage: a PUBACK means the broker has the message, not that the centre has.

One link serves one intersection: MQTT gives a connection one last will, and the will is the
intersection's offline status (:func:`edge_agent.messages.offline_status`). A box that runs
several intersections runs one link (and one spool file) for each.

Errors: library errors become :class:`~edge_agent.errors.DeviceError`. A lost broker is
logged once when the link goes down and once when it is back; so are a failing spool, a
failing callback, undecodable payloads (per topic) and a full inbound queue.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import queue
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edge_agent.errors import DeviceError
from edge_agent.link_wire import (
    Inbound, MqttLinkStats, check_sensor_prefix, prepare_outbound, sensor_filter,
)
from edge_agent.messages import EdgeMode, Message, Status, encode, offline_status
from edge_agent.mqtt_inbound import InboundDispatcher
from edge_agent.model import require_ident
from edge_agent.spool import DEFAULT_MAX_BYTES, Spool, SpoolItem
from edge_agent.topics import TopicKind, topic

__all__ = ["EdgeLink", "MqttLinkStats"]

log = logging.getLogger(__name__)

_SUBMIT, _PUBACK, _CONNECTED, _DISCONNECTED, _STATUS, _STOP = range(6)


class EdgeLink:
    """The MQTT link of one intersection's edge agent; see the module docstring.

    ``on_inbound`` is called with each decoded :class:`~edge_agent.link_wire.Inbound` (plans,
    heartbeats, sensor readings) on the link's dispatcher thread, never on paho's. The MQTT
    settings use the names of the agent file's ``[mqtt]`` table; an empty ``client_id`` means
    ``tsc-edge-{site}-{intersection}`` and an empty ``sensor_prefix`` means no sensors.
    """

    def __init__(self, *, site: str, intersection: str, spool_path: str | Path, on_inbound:
                 Callable[[Inbound], None], host: str = "127.0.0.1", port: int = 1883,
                 client_id: str = "", keepalive_s: float = 30.0, sensor_prefix: str = "",
                 username: str | None = None, password: str | None = None, window: int = 100,
                 spool_max_bytes: int = DEFAULT_MAX_BYTES, first_seq: int | None = None,
                 inbound_queue: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        require_ident(site, "site")
        require_ident(intersection, "intersection")
        if not (isinstance(port, int) and 1 <= port <= 65535):
            raise ValueError(f"port: must be within 1..65535, got {port!r}")
        if not (math.isfinite(keepalive_s) and keepalive_s >= 1):
            raise ValueError(f"keepalive_s: must be >= 1, got {keepalive_s!r}")
        if window < 1 or inbound_queue < 1:
            raise ValueError("window and inbound_queue: must be >= 1")
        self.site, self.intersection = site, intersection
        self._name = f"{site}/{intersection}"
        self._host, self._port, self._keepalive = host, port, int(math.ceil(keepalive_s))
        self._client_id = client_id or f"tsc-edge-{site}-{intersection}"
        self._sensor_prefix = check_sensor_prefix(sensor_prefix)
        self._auth = (username, password)
        self._window_size, self._spool_args = window, (spool_path, spool_max_bytes, first_seq)
        self._clock = clock
        self._status_topic = topic(site, intersection, TopicKind.STATUS)
        self._subscriptions = [(topic(site, intersection, TopicKind.PLAN), 1),
                               (topic(site, intersection, TopicKind.HEARTBEAT), 0)]
        if self._sensor_prefix:
            self._subscriptions.append((sensor_filter(self._sensor_prefix), 0))
        self._status = Status(site=site, intersection_id=intersection, t=0.0, online=True,
                              mode=EdgeMode.STARTUP, controller_ok=False)
        self._commands: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._receiver = InboundDispatcher(self._name, on_inbound,
                                           sensor_prefix=self._sensor_prefix,
                                           maxsize=inbound_queue,
                                           addressed_to=(site, intersection))
        self._ready = threading.Event()  # connected and subscribed
        self._spool_ready = threading.Event()
        self._cond = threading.Condition()  # guards _submitted, _stats, _failed
        self._submitted = self._taken = 0
        self._failed: DeviceError | None = None
        self._state = "new"
        self._client: mqtt.Client | None = None
        self._spool: Spool | None = None
        self._publisher_thread: threading.Thread | None = None
        # publisher-thread state
        self._online = False
        self._window: dict[int, int] = {}  # mid -> seq, this connection only
        self._cursor = -1  # the last seq sent on this connection
        self._max_sent = -1
        self._stop_deadline: float | None = None
        self._spool_failing = False
        self._counts = dict(appended=0, delivered=0, sent=0, resent=0, connects=0)
        # network- and dispatcher-thread state
        self._down_since: float | None = None
        self._ever_connected = self._closing = False
        self._sub_mid: int | None = None
        self._stats = MqttLinkStats(False, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)

    # --- caller's API -----------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> None:
        """Open the spool and start connecting (the broker may be down: messages spool)."""
        if self._state != "new":
            raise DeviceError(f"MQTT link {self._name}: already started")
        self._state = "running"
        self._publisher_thread = threading.Thread(
            target=self._publisher, name=f"mqtt-{self._name}-publisher", daemon=True)
        self._publisher_thread.start()
        if not self._spool_ready.wait(timeout) or self._failed is not None:
            self._state = "closed"
            raise self._failed or DeviceError(f"MQTT link {self._name}: spool not ready")
        try:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self._client_id,
                                 clean_session=True, protocol=mqtt.MQTTv311)
            client.reconnect_delay_set(1, 10)  # the default cap is 120 s (FIELD-NOTES)
            client.max_inflight_messages_set(self._window_size)
            client.max_queued_messages_set(0)  # the window bounds it; never refuse silently
            client.will_set(self._status_topic, encode(offline_status(self.site,
                            self.intersection)), qos=1, retain=True)
            if self._auth[0] is not None:
                client.username_pw_set(*self._auth)
            client.on_connect, client.on_connect_fail = self._on_connect, self._on_connect_fail
            client.on_disconnect, client.on_subscribe = self._on_disconnect, self._on_subscribe
            client.on_publish, client.on_message = self._on_publish, self._on_message
            self._client = client
            client.connect_async(self._host, self._port, self._keepalive)
            client.loop_start()
        except (ValueError, OSError) as exc:
            self.close(0)
            raise DeviceError(f"MQTT link {self._name}: cannot start paho: {exc}") from exc
        self._receiver.start()

    def submit(self, message: Message) -> Future[int]:
        """Queue a Measurement, Events or Ack; the future gives its seq once it is durable.

        The ``seq`` of a measurement or events batch is replaced by the spool's number (pass
        0). ValueError at once for a message of another kind or another intersection;
        DeviceError (from the future) if the spool fails.
        """
        item = prepare_outbound(message, self.site, self.intersection)
        future: Future[int] = Future()
        with self._cond:
            if self._failed is not None:
                raise self._failed
            if self._state != "running" or self._stop_deadline is not None:
                raise DeviceError(f"MQTT link {self._name}: not running ({self._state})")
            self._submitted += 1
            self._commands.put((_SUBMIT, item, future))  # under the lock: see _fail
        return future

    def publish(self, message: Message, timeout: float = 10.0) -> int:
        """:meth:`submit` and wait: the seq, once the message is in the spool on disk."""
        return self.submit(message).result(timeout)

    def update_status(self, status: Status) -> None:
        """Set the retained status (sent now if connected, and on every connect).

        ``online`` and ``t`` are set by the link when it publishes.
        """
        if (status.site, status.intersection_id) != (self.site, self.intersection):
            raise ValueError(f"status for {status.site}/{status.intersection_id} given to the "
                             f"link of {self._name}")
        self._commands.put((_STATUS, status))

    @property
    def connected(self) -> bool:
        """Connected to the broker and subscribed."""
        return self._ready.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Wait until connected and subscribed; False on timeout."""
        return self._ready.wait(timeout)

    def wait_delivered(self, timeout: float) -> bool:
        """Wait until everything submitted so far is spooled and acknowledged by the broker."""
        with self._cond:
            return self._cond.wait_for(lambda: self._failed is not None or (
                self._taken == self._submitted and self._stats.pending == 0), timeout) \
                and self._failed is None

    def stats(self) -> MqttLinkStats:
        """The latest counters (the publisher's refreshed at least once a second)."""
        with self._cond:
            stats = self._stats
        receiver = self._receiver
        return dataclasses.replace(stats, connected=self._ready.is_set(),
                                   inbound=receiver.delivered, inbound_rejected=receiver.rejected,
                                   inbound_overflow=receiver.overflow)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what it can within ``timeout``, publish a clean offline status, disconnect.

        Undelivered messages stay in the spool for the next start. Idempotent.
        """
        if self._state == "running":
            self._commands.put((_STOP, time.monotonic() + timeout))
            assert self._publisher_thread is not None
            self._publisher_thread.join(timeout + 10)
            if self._publisher_thread.is_alive():
                log.error("MQTT link %s: publisher thread did not stop", self._name)
            self._receiver.stop()
        self._state = "closed"

    def __enter__(self) -> EdgeLink:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- publisher thread -------------------------------------------------------------------
    def _publisher(self) -> None:
        path, max_bytes, first_seq = self._spool_args
        try:
            self._spool = Spool(path, max_bytes=max_bytes, first_seq=first_seq)
        except DeviceError as exc:
            with self._cond:
                self._failed = exc
            self._spool_ready.set()
            return
        self._snapshot(self._spool, 0)  # pending rows of earlier runs count from the start
        self._spool_ready.set()
        try:
            self._loop()
        except Exception as exc:  # a bug or an unforeseen library error: fail loudly, unblock
            log.exception("MQTT link %s: publisher failed; the link stops", self._name)
            self._fail(DeviceError(f"MQTT link {self._name}: publisher failed: {exc}"))
        finally:
            self._finish()

    def _loop(self) -> None:
        spool = self._spool
        assert spool is not None
        while True:
            try:
                commands = [self._commands.get(timeout=0.05 if self._stop_deadline else 1.0)]
            except queue.Empty:
                commands = []
            while len(commands) < 5000:
                try:
                    commands.append(self._commands.get_nowait())
                except queue.Empty:
                    break
            submits: list[tuple[SpoolItem, Future[int]]] = []
            acked: list[int] = []
            for command in commands:
                kind = command[0]
                if kind == _SUBMIT:
                    submits.append((command[1], command[2]))
                elif kind == _PUBACK:  # mids of an earlier connection are gone: ignored
                    seq = self._window.pop(command[1], None)
                    if seq is not None:
                        acked.append(seq)
                elif kind == _CONNECTED:
                    self._online, self._cursor = True, -1
                    self._window.clear()
                    self._counts["connects"] += 1
                    self._publish_status(online=True)
                elif kind == _DISCONNECTED:
                    self._online = False
                elif kind == _STATUS:
                    self._status = command[1]
                    if self._online:
                        self._publish_status(online=True)
                elif kind == _STOP:
                    self._stop_deadline = command[1]
            self._append(submits)
            self._acknowledge(acked)
            if self._online:
                self._send_window(spool)
            self._snapshot(spool, len(submits))
            if self._stop_deadline is not None and (not self._online or len(spool) == 0
                                                    or time.monotonic() >= self._stop_deadline):
                return

    def _append(self, submits: list[tuple[SpoolItem, Future[int]]]) -> None:
        if not submits:
            return
        assert self._spool is not None
        try:
            seqs = self._spool.append_many(item for item, _ in submits)
        except Exception as exc:  # DeviceError, or an encoding bug: fail these callers only
            error = exc if isinstance(exc, DeviceError) else DeviceError(f"spool append: {exc}")
            self._spool_state(error)
            for _, future in submits:
                future.set_exception(error)
            return
        self._spool_state(None)
        self._counts["appended"] += len(seqs)
        for (_, future), seq in zip(submits, seqs):
            future.set_result(seq)

    def _acknowledge(self, seqs: list[int]) -> None:
        if not seqs:
            return
        assert self._spool is not None
        try:
            self._counts["delivered"] += self._spool.mark_delivered(seqs)
        except DeviceError as exc:  # the rows stay and are sent again: duplicates, not losses
            self._spool_state(exc)
            return
        self._spool_state(None)

    def _spool_state(self, error: DeviceError | None) -> None:
        if error is not None and not self._spool_failing:
            log.error("MQTT link %s: spool failing: %s", self._name, error)
        elif error is None and self._spool_failing:
            log.info("MQTT link %s: spool working again", self._name)
        self._spool_failing = error is not None

    def _send_window(self, spool: Spool) -> None:
        client = self._client
        assert client is not None
        while len(self._window) < self._window_size:
            try:
                rows = spool.pending(self._window_size - len(self._window), after=self._cursor)
            except DeviceError as exc:
                self._spool_state(exc)
                return
            if not rows:
                return
            for row in rows:
                info = client.publish(row.topic, row.payload, row.qos, row.retain)
                self._cursor = row.seq
                self._counts["sent"] += 1
                if row.seq <= self._max_sent:
                    self._counts["resent"] += 1
                self._max_sent = max(self._max_sent, row.seq)
                if row.qos == 0:  # no PUBACK will come; nothing the link sends is QoS 0
                    self._acknowledge([row.seq])
                else:
                    self._window[info.mid] = row.seq
                if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                    self._online = False  # the disconnect command follows; resent on connect
                    return
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    raise DeviceError(f"paho refused to publish: {mqtt.error_string(info.rc)}")

    def _publish_status(self, *, online: bool, detail: str | None = None) -> mqtt.MQTTMessageInfo:
        assert self._client is not None
        changes: dict[str, Any] = dict(t=self._clock(), online=online)
        if detail is not None:
            changes["detail"] = detail
        status = msgspec.structs.replace(self._status, **changes)
        return self._client.publish(self._status_topic, encode(status), qos=1, retain=True)

    def _snapshot(self, spool: Spool, taken: int) -> None:
        s = spool.stats()
        with self._cond:
            self._taken += taken
            self._stats = MqttLinkStats(connected=self._ready.is_set(), pending=s.pending,
                                    pending_bytes=s.pending_bytes, inflight=len(self._window),
                                    dropped=s.dropped, next_seq=s.next_seq, inbound=0,
                                    inbound_rejected=0, inbound_overflow=0, **self._counts)
            self._cond.notify_all()

    def _fail(self, error: DeviceError) -> None:
        with self._cond:  # no submit can slip in between: nobody waits on a dead thread
            self._failed = error
            self._cond.notify_all()
            while True:
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    return
                if command[0] == _SUBMIT:
                    command[2].set_exception(error)

    def _finish(self) -> None:
        """Say goodbye (a clean DISCONNECT cancels the will), stop paho, close the spool."""
        client, deadline = self._client, self._stop_deadline or time.monotonic()
        if client is not None:
            if self._online and self._failed is None:
                info = self._publish_status(online=False, detail="shut down cleanly")
                try:
                    info.wait_for_publish(max(0.1, deadline - time.monotonic()))
                except (RuntimeError, ValueError) as exc:  # lost the connection meanwhile
                    log.warning("MQTT link %s: offline status not sent: %s", self._name, exc)
            self._closing = True  # the disconnect below is not an outage
            client.disconnect()
            client.loop_stop()
        if self._spool is not None:
            try:
                self._spool.close()
            except DeviceError as exc:
                log.error("MQTT link %s: %s", self._name, exc)
        with self._cond:
            if self._failed is None:
                self._failed = DeviceError(f"MQTT link {self._name}: closed")
            self._cond.notify_all()

    # --- paho's network thread: queue, subscribe, never publish ----------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            self._went_down(f"broker refused the connection: {reason}")
            return
        client.drop_out_messages()  # the spool resends unacknowledged rows itself, in order
        result, self._sub_mid = client.subscribe(self._subscriptions)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.error("MQTT link %s: subscribe failed: %s", self._name, mqtt.error_string(result))
        self._commands.put((_CONNECTED, None))
        if self._down_since is not None:
            log.info("MQTT link %s: broker %s:%d back after %.1f s; resending what is "
                     "unacknowledged", self._name, self._host, self._port,
                     time.monotonic() - self._down_since)
            self._down_since = None
        elif not self._ever_connected:
            log.info("MQTT link %s: connected to %s:%d", self._name, self._host, self._port)
        self._ever_connected = True

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._went_down("cannot connect")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        self._ready.clear()
        self._commands.put((_DISCONNECTED, None))
        if not self._closing:
            self._went_down(f"disconnected: {reason}")

    def _went_down(self, why: str) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("MQTT link %s: broker %s:%d unreachable (%s); spooling, retrying every "
                        "1-10 s", self._name, self._host, self._port, why)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[Any],
                      properties: Any) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if mid == self._sub_mid and refused:
            log.error("MQTT link %s: broker refused subscriptions (%s): no plans will arrive",
                      self._name, ", ".join(refused))
        elif mid == self._sub_mid:
            self._ready.set()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        self._commands.put((_PUBACK, mid))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._receiver.offer(msg.topic, msg.payload, bool(msg.retain))
