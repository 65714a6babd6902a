"""The edge's MQTT link: one contract run against the in-memory fake and a real mosquitto, then
the failures only a real broker shows: a 20 s broker outage at 50 msg/s, kill -9 of an agent
process, the last will, subscriptions across a broker restart, a broker down at start-up.

Delivery is checked the way the centre will see it: a consumer with a persistent QoS 1 session
that drops repeats of (intersection, seq). Raw duplicates (before that dedup) are counted and
reported, not forbidden: at-least-once delivery makes them.
"""

from __future__ import annotations

import logging
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import paho.mqtt.client as mqtt
import pytest

from broker import Mosquitto, free_port, require_mosquitto
from edge_agent.errors import DeviceError
from edge_agent.fake_link import FakeLink
from edge_agent.link_wire import Inbound, SensorReading
from edge_agent.messages import (
    Ack, EdgeMode, Heartbeat, PlanMessage, Status, decode_for_topic, encode,
)
from edge_agent.mqtt_link import EdgeLink
from edge_agent.spool import Spool
from edge_agent.topics import TopicKind, topic
from test_link_wire import CROSSING, PREFIX, SITE, measurement, plan_message

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]


def eventually(probe: Callable[[], T], timeout: float = 10.0, what: str = "") -> T:
    """Poll until ``probe`` returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            assert value, f"timed out after {timeout} s waiting for {what or probe}"
            return value
        time.sleep(0.02)


class Consumer:
    """The centre's side: a persistent QoS 1 session on tsc/v1/#; it can publish too."""

    def __init__(self, port: int, client_id: str = "centre") -> None:
        self.lock = threading.Lock()
        self.raw: list[tuple[str, bytes, bool]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=False)
        self.client.reconnect_delay_set(0.2, 1)
        self.subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe("tsc/v1/#", 1)
        self.client.on_subscribe = lambda c, u, mid, r, p: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the consumer could not subscribe"

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.raw.append((msg.topic, msg.payload, bool(msg.retain)))

    def messages(self, kind: TopicKind, *, live: bool = False) -> list[Any]:
        """Decoded messages of one kind; ``live``: leave out retained copies (re)sent on
        subscribing."""
        with self.lock:
            raw = list(self.raw)
        return [decode_for_topic(name, payload) for name, payload, retained in raw
                if name.endswith("/" + kind.value) and not (live and retained)]

    def seqs(self) -> list[tuple[str, int]]:
        """(intersection, seq) of every measurement received, repeats included."""
        return [(m.intersection_id, m.seq) for m in self.messages(TopicKind.MEASUREMENTS)]

    def publish(self, name: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(name, payload, qos, retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as running:
        yield running


# --- one contract, two links ----------------------------------------------------------------
class FakeSide:
    """The fake link and what "the centre" sees of it."""

    def __init__(self, tmp_path: Path) -> None:
        self.inbound: queue.Queue[Inbound] = queue.Queue()
        self.link = FakeLink(site=SITE, intersection=CROSSING, on_inbound=self.inbound.put,
                             sensor_prefix=PREFIX)
        self.link.start()

    def received(self, kind: TopicKind) -> list[Any]:
        if kind is TopicKind.STATUS:
            return list(self.link.statuses)
        return [m for name, m in self.link.published if name.endswith("/" + kind.value)]

    def to_edge(self, name: str, payload: bytes) -> None:
        self.link.deliver(name, payload)

    def close(self) -> None:
        self.link.close()


class RealSide(FakeSide):
    """EdgeLink against mosquitto, with a consumer as the centre."""

    def __init__(self, tmp_path: Path) -> None:
        self.broker = Mosquitto(tmp_path / "broker").start()
        self.consumer = Consumer(self.broker.port)
        self.inbound = queue.Queue()
        self.link = EdgeLink(site=SITE, intersection=CROSSING, on_inbound=self.inbound.put,
                             sensor_prefix=PREFIX, spool_path=str(tmp_path / "spool.sqlite"),
                             port=self.broker.port, first_seq=1)
        self.link.start()
        assert self.link.wait_connected(10)

    def received(self, kind: TopicKind) -> list[Any]:
        return self.consumer.messages(kind)

    def to_edge(self, name: str, payload: bytes) -> None:
        self.consumer.publish(name, payload)

    def close(self) -> None:
        self.link.close()
        self.consumer.close()
        self.broker.stop()


@pytest.fixture(params=["fake", pytest.param("mosquitto", marks=pytest.mark.integration)])
def side(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeSide]:
    if request.param == "mosquitto":
        require_mosquitto()
    made = (FakeSide if request.param == "fake" else RealSide)(tmp_path)
    try:
        yield made
    finally:
        made.close()


class TestLinkContract:
    def test_published_measurements_arrive_numbered_in_order(self, side: FakeSide) -> None:
        seqs = [side.link.publish(measurement(count=c)) for c in range(5)]
        assert seqs == sorted(seqs) and len(set(seqs)) == 5
        got = eventually(lambda: len(side.received(TopicKind.MEASUREMENTS)) >= 5
                         and side.received(TopicKind.MEASUREMENTS))
        assert [(m.seq, m.lanes[0].count) for m in got] == list(zip(seqs, range(5)))
        assert side.link.wait_delivered(10) and side.link.stats().pending == 0

    def test_acks_arrive(self, side: FakeSide) -> None:
        ack = Ack(site=SITE, intersection_id=CROSSING, plan_id=4, t=9.0, accepted=False,
                  reason="signature does not verify")
        side.link.publish(ack)
        assert eventually(lambda: side.received(TopicKind.ACK)) == [ack]

    def test_plans_heartbeats_and_sensor_readings_reach_the_callback(self, side: FakeSide) -> None:
        side.to_edge(topic(SITE, CROSSING, TopicKind.PLAN), b"not a plan")  # counted, dropped
        side.to_edge(topic(SITE, CROSSING, TopicKind.PLAN), encode(plan_message()))
        beat = Heartbeat(site=SITE, seq=7, t=1.0, source="central")
        side.to_edge(topic(SITE, CROSSING, TopicKind.HEARTBEAT), encode(beat))
        side.to_edge(f"{PREFIX}/cam-n/nb-1", b'{"count": 5, "t": 12.0}')
        got = [side.inbound.get(timeout=5).message for _ in range(3)]
        assert got == [plan_message(), beat,
                       SensorReading(sensor="cam-n", lane="nb-1", t=12.0, count=5)]
        assert eventually(lambda: side.link.stats().inbound == 3)
        assert side.link.stats().inbound_rejected == 1

    def test_status_is_online_then_follows_updates_then_offline_on_close(
            self, side: FakeSide) -> None:
        first = eventually(lambda: side.received(TopicKind.STATUS))[0]
        assert first.online and first.mode is EdgeMode.STARTUP and first.t > 0
        side.link.update_status(Status(site=SITE, intersection_id=CROSSING, t=0.0, online=True,
                                       mode=EdgeMode.CENTRAL, controller_ok=True, plan_id=1))
        later = eventually(lambda: len(side.received(TopicKind.STATUS)) >= 2
                           and side.received(TopicKind.STATUS)[-1])
        assert later.mode is EdgeMode.CENTRAL and later.plan_id == 1 and later.online
        side.link.close()
        last = eventually(lambda: len(side.received(TopicKind.STATUS)) >= 3
                          and side.received(TopicKind.STATUS)[-1])
        assert not last.online and last.detail == "shut down cleanly"
        assert last.mode is EdgeMode.CENTRAL  # the last known mode, unlike the will's

    def test_refuses_what_it_must_not_send(self, side: FakeSide) -> None:
        with pytest.raises(ValueError, match="given to the link of s1/main-oak"):
            side.link.publish(Ack(site=SITE, intersection_id="elm-1st", plan_id=1, t=0.0,
                                  accepted=True))
        with pytest.raises(ValueError, match="cannot publish PlanMessage"):
            side.link.submit(plan_message())
        side.link.close()
        with pytest.raises(DeviceError):
            side.link.publish(measurement())


# --- without a broker -----------------------------------------------------------------------
def test_without_a_broker_messages_spool_and_wait(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.mqtt_link")
    spool = tmp_path / "spool.sqlite"
    link = EdgeLink(site=SITE, intersection=CROSSING, spool_path=str(spool),
                    on_inbound=lambda m: None, port=free_port(), first_seq=1)
    link.start()
    assert [link.publish(measurement()) for _ in range(3)] == [1, 2, 3]
    assert not link.connected and not link.wait_delivered(1.5)
    stats = link.stats()
    assert (stats.pending, stats.appended, stats.sent, stats.connects) == (3, 3, 0, 0)
    started = time.monotonic()
    link.close()
    assert time.monotonic() - started < 3
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"MQTT link s1/main-oak: broker 127.0.0.1:{link._port} unreachable (cannot connect); "
        "spooling, retrying every 1-10 s"]
    with Spool(spool) as reopened:  # kept for the next run
        assert [r.seq for r in reopened.pending()] == [1, 2, 3]


def test_a_spool_held_by_another_process_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    with Spool(path):
        link = EdgeLink(site=SITE, intersection=CROSSING, spool_path=str(path),
                        on_inbound=lambda m: None, port=free_port())
        with pytest.raises(DeviceError, match="database is locked"):
            link.start()
        link.close()


@pytest.mark.parametrize("kwargs, message", [
    (dict(site="bad site"), "site"),
    (dict(port=0), "port: must be within 1..65535"),
    (dict(keepalive_s=0.5), "keepalive_s: must be >= 1"),
    (dict(window=0), "window and inbound_queue"),
    (dict(sensor_prefix="a/#"), "sensor_prefix"),
])
def test_bad_settings_are_refused(kwargs: dict, message: str) -> None:
    base: dict[str, Any] = dict(site=SITE, intersection=CROSSING, spool_path="x.sqlite",
                                on_inbound=lambda m: None)
    with pytest.raises(ValueError, match=message):
        EdgeLink(**{**base, **kwargs})


# --- only a real broker shows these ---------------------------------------------------------
@pytest.mark.integration
def test_broker_down_at_start_up_then_up(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker")
    consumer_port = broker.port
    with EdgeLink(site=SITE, intersection=CROSSING, spool_path=str(tmp_path / "s.sqlite"),
                  on_inbound=lambda m: None, port=consumer_port, first_seq=1) as link:
        seqs = [link.publish(measurement()) for _ in range(5)]
        time.sleep(0.3)
        with broker:
            consumer = Consumer(broker.port)
            try:
                assert link.wait_connected(15) and link.wait_delivered(10)
                eventually(lambda: {s for _, s in consumer.seqs()} == set(seqs), 10)
            finally:
                consumer.close()
                link.close()


@pytest.mark.integration
def test_a_20s_broker_outage_at_50_msgs_loses_and_duplicates_nothing(
        tmp_path: Path, broker: Mosquitto, record_property: Callable[[str, Any], None]) -> None:
    consumer = Consumer(broker.port)
    inbound: queue.Queue[Inbound] = queue.Queue()
    link = EdgeLink(site=SITE, intersection=CROSSING, spool_path=str(tmp_path / "s.sqlite"),
                    on_inbound=inbound.put, port=broker.port, keepalive_s=5)
    link.start()
    assert link.wait_connected(10)
    acknowledged: list[int] = []
    stop = threading.Event()

    def agent() -> None:  # 50 messages a second, each one's seq kept once the spool has it
        next_at = time.monotonic()
        while not stop.is_set():
            acknowledged.append(link.publish(measurement(count=len(acknowledged))))
            next_at += 0.02
            time.sleep(max(0.0, next_at - time.monotonic()))

    publisher = threading.Thread(target=agent)
    publisher.start()
    try:
        time.sleep(2)
        broker.stop()
        outage_started = time.monotonic()
        time.sleep(20)
        broker.start()
        outage_s = time.monotonic() - outage_started
        assert link.wait_connected(15), "the link did not reconnect"
        reconnect_s = time.monotonic() - outage_started - outage_s
        # subscriptions were renewed on reconnect: a plan published now reaches the agent
        consumer.publish(topic(SITE, CROSSING, TopicKind.PLAN), encode(plan_message()),
                         retain=True)
        got = inbound.get(timeout=10)
        assert isinstance(got.message, PlanMessage) and got.message == plan_message()
        time.sleep(2)
    finally:
        stop.set()
        publisher.join()
    try:
        assert link.wait_delivered(30)
        expected = {(CROSSING, s) for s in acknowledged}
        eventually(lambda: expected <= set(consumer.seqs()), 30, "every seq at the consumer")
        time.sleep(0.5)  # late repeats would show here
        raw = consumer.seqs()
        assert set(raw) == expected  # nothing lost, nothing invented: exactly once after dedup
        first_seen = list(dict.fromkeys(raw))
        assert first_seen == sorted(first_seen), "first arrivals out of sequence order"
        stats = link.stats()
        report = dict(published=len(acknowledged), received_raw=len(raw),
                      raw_duplicates=len(raw) - len(expected), resent=stats.resent,
                      connects=stats.connects, outage_s=round(outage_s, 1),
                      reconnect_after_restart_s=round(reconnect_s, 1))
        for key, value in report.items():
            record_property(key, value)
        print(f"\n20 s outage at 50 msg/s: {report}")
        assert len(acknowledged) >= 50 * 22 * 0.9
        assert stats.connects >= 2 and stats.pending == 0
    finally:
        link.close()
        consumer.close()


@pytest.mark.integration
def test_a_hung_broker_makes_the_link_resend_unacknowledged_messages(
        tmp_path: Path, broker: Mosquitto, record_property: Callable[[str, Any], None]) -> None:
    """SIGSTOP: publishes are sent but never acknowledged; paho drops the silent connection
    after the keepalive; on reconnect the link resends them (duplicates, never losses)."""
    consumer = Consumer(broker.port)
    link = EdgeLink(site=SITE, intersection=CROSSING, spool_path=str(tmp_path / "s.sqlite"),
                    on_inbound=lambda m: None, port=broker.port, keepalive_s=2)
    link.start()
    assert link.wait_connected(10)
    assert broker.process is not None
    acknowledged = [link.publish(measurement()) for _ in range(20)]
    broker.process.send_signal(signal.SIGSTOP)
    try:
        for _ in range(150):  # 3 s at 50 msg/s: the window fills, no PUBACK comes back
            acknowledged.append(link.publish(measurement()))
            time.sleep(0.02)
        eventually(lambda: not link.connected, 10, "paho to give up on the silent broker")
        time.sleep(1)
    finally:
        broker.process.send_signal(signal.SIGCONT)
    try:
        assert link.wait_connected(15) and link.wait_delivered(15)
        expected = {(CROSSING, s) for s in acknowledged}
        eventually(lambda: expected <= set(consumer.seqs()), 15, "every seq at the consumer")
        time.sleep(0.5)
        raw, stats = consumer.seqs(), link.stats()
        assert set(raw) == expected and stats.resent > 0
        record_property("raw_duplicates", len(raw) - len(expected))
        print(f"\nhung broker: {len(acknowledged)} published, {stats.resent} resent, "
              f"{len(raw) - len(expected)} raw duplicates at the consumer")
    finally:
        link.close()
        consumer.close()


AGENT = textwrap.dedent("""
    import sys, time
    from edge_agent.messages import LaneMeasurement, Measurement
    from edge_agent.mqtt_link import EdgeLink

    port, spool, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    link = EdgeLink(site="s1", intersection="main-oak", spool_path=spool, port=port,
                    on_inbound=lambda m: None, keepalive_s=5)
    link.start()
    if mode == "flush":  # a restart: deliver what the spool holds, then leave cleanly
        ok = link.wait_delivered(30)
        link.close()
        print("flushed" if ok else "not flushed", flush=True)
        sys.exit(0 if ok else 1)
    m = Measurement(site="s1", intersection_id="main-oak", seq=0, interval_start=1.7e9,
                    interval_s=60.0, lanes=(LaneMeasurement(lane="nb-1", count=1,
                                                            flow_vph=60.0, occupancy=0.1),))
    while True:
        print(link.publish(m), flush=True)  # printed once the spool has it on disk
        time.sleep(0.02)
""")


def _run_agent(command: list[str], at_least: int) -> list[int]:
    """Run the agent until it has printed ``at_least`` seqs, then kill -9 it; all it printed."""
    agent = subprocess.Popen(command + ["run"], stdout=subprocess.PIPE, text=True, cwd=REPO)
    printed: list[int] = []
    try:
        assert agent.stdout is not None
        for line in agent.stdout:
            printed.append(int(line))
            if len(printed) >= at_least:
                agent.send_signal(signal.SIGKILL)  # mid-run: it is publishing right now
                break
        printed += [int(x) for x in agent.stdout.read().split()]
    finally:
        agent.kill()
        agent.wait(10)
    assert agent.returncode == -signal.SIGKILL
    return printed


@pytest.mark.integration
def test_kill_9_of_the_agent_loses_nothing_spooled_and_fires_the_last_will(
        tmp_path: Path, broker: Mosquitto) -> None:
    consumer = Consumer(broker.port)
    script, spool = tmp_path / "agent.py", tmp_path / "agent.sqlite"
    script.write_text(AGENT)
    command = [sys.executable, str(script), str(broker.port), str(spool)]
    try:
        # 1. killed while connected: the broker publishes the last will
        printed = _run_agent(command, 100)
        will = eventually(lambda: [s for s in consumer.messages(TopicKind.STATUS)
                                   if not s.online], 10, "the last will")
        assert will[-1].mode is EdgeMode.FAULT and "last will" in will[-1].detail
        # 2. killed while the broker is down: everything it printed is only in the spool
        broker.stop()
        offline = _run_agent(command, 100)
        assert not {(CROSSING, s) for s in offline} & set(consumer.seqs())
        printed += offline
        broker.start()
        # 3. restarted on the same spool: it delivers every spooled message, says goodbye
        statuses_before = len(consumer.messages(TopicKind.STATUS, live=True))
        restarted = subprocess.run(command + ["flush"], capture_output=True, text=True,
                                   cwd=REPO, timeout=60)
        assert restarted.returncode == 0, restarted.stderr
        expected = {(CROSSING, s) for s in printed}
        eventually(lambda: expected <= set(consumer.seqs()), 15, "every spooled seq")
        after = eventually(lambda: consumer.messages(TopicKind.STATUS,
                                                     live=True)[statuses_before:])
        assert [s.online for s in after] == [True, False]  # online again, then a clean goodbye
        raw = consumer.seqs()
        assert set(raw) == expected
        print(f"\nkill -9: {len(printed)} acknowledged to the spool, {len(raw)} received raw, "
              f"{len(raw) - len(expected)} raw duplicates")
    finally:
        consumer.close()
