"""The MQTT link's pure parts: outbound numbering, inbound decoding (plans, heartbeats, local
sensors), the inbound dispatcher thread and the in-memory fake link. No broker needed."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time

import msgspec
import pytest

from conftest import CONFIGS
from edge_agent.config import load_toml
from edge_agent.errors import DeviceError
from edge_agent.fake_link import FakeLink
from edge_agent.link_wire import (
    Inbound, SensorReading, check_sensor_prefix, decode_inbound, decode_sensor, prepare_outbound,
    sensor_filter,
)
from edge_agent.messages import (
    Ack, EdgeMode, Event, EventKind, Events, Heartbeat, LaneMeasurement, Measurement,
    MessageError, PlanMessage, Status, decode, encode,
)
from edge_agent.mqtt_inbound import InboundDispatcher
from edge_agent.plan import TimingPlan
from edge_agent.spool import PRIORITY_KEEP, PRIORITY_LOW, PRIORITY_NORMAL
from edge_agent.topics import TopicKind, topic

SITE, CROSSING, PREFIX = "s1", "main-oak", "sensors/main-oak"
SIG = base64.b64encode(bytes(64)).decode()


def measurement(seq: int = 0, count: int = 3) -> Measurement:
    return Measurement(site=SITE, intersection_id=CROSSING, seq=seq, interval_start=1.7e9,
                       interval_s=60.0, lanes=(LaneMeasurement(lane="nb-1", count=count,
                                                               flow_vph=180.0, occupancy=0.1),))


def plan_message() -> PlanMessage:
    plan = load_toml(CONFIGS / "plans" / "main-oak-am-peak.toml", TimingPlan)
    return PlanMessage(site=SITE, plan=plan, key_id="central", signature=SIG)


def t(kind: TopicKind) -> str:
    return topic(SITE, CROSSING, kind)


# --- outbound -------------------------------------------------------------------------------
def test_measurements_and_events_carry_the_spools_number() -> None:
    item = prepare_outbound(measurement(seq=999), SITE, CROSSING)
    assert (item.topic, item.qos, item.retain, item.priority) == \
        (t(TopicKind.MEASUREMENTS), 1, False, PRIORITY_NORMAL)
    assert callable(item.payload)
    assert decode(item.payload(42), Measurement) == msgspec.structs.replace(measurement(), seq=42)
    events = Events(site=SITE, intersection_id=CROSSING, seq=0,
                    events=(Event(t=1.0, kind=EventKind.PHASE_GREEN, ref="2"),))
    item = prepare_outbound(events, SITE, CROSSING)
    assert (item.topic, item.priority) == (t(TopicKind.EVENTS), PRIORITY_LOW)
    assert decode(item.payload(7), Events).seq == 7


def test_acks_are_never_dropped_and_keep_their_payload() -> None:
    ack = Ack(site=SITE, intersection_id=CROSSING, plan_id=3, t=5.0, accepted=True)
    item = prepare_outbound(ack, SITE, CROSSING)
    assert (item.topic, item.qos, item.priority) == (t(TopicKind.ACK), 1, PRIORITY_KEEP)
    assert item.payload(1) == item.payload(2) == encode(ack)


def test_outbound_refuses_other_kinds_and_other_intersections() -> None:
    status = Status(site=SITE, intersection_id=CROSSING, t=0.0, online=True,
                    mode=EdgeMode.CENTRAL, controller_ok=True)
    with pytest.raises(ValueError, match="cannot publish Status"):
        prepare_outbound(status, SITE, CROSSING)
    with pytest.raises(ValueError, match="for s1/main-oak given to the link of s1/elm-1st"):
        prepare_outbound(measurement(), SITE, "elm-1st")


# --- inbound --------------------------------------------------------------------------------
def test_plans_and_heartbeats_decode_by_topic() -> None:
    got = decode_inbound(t(TopicKind.PLAN), encode(plan_message()), sensor_prefix=PREFIX,
                         retained=True, received_at=5.0)
    assert got == Inbound(t(TopicKind.PLAN), plan_message(), True, 5.0)
    beat = Heartbeat(site=SITE, seq=1, t=2.0, source="central")
    assert decode_inbound(t(TopicKind.HEARTBEAT), encode(beat), sensor_prefix="",
                          retained=False, received_at=1.0).message == beat


@pytest.mark.parametrize("name, payload, message", [
    (t(TopicKind.PLAN), b"{not json", "PlanMessage: JSON is malformed"),
    (t(TopicKind.MEASUREMENTS), encode(measurement()), "an edge receives only plans"),
    ("tsc/v1/s1/other/plan", encode(plan_message()), "does not match the topic"),
    ("elsewhere/x", b"{}", "topic.prefix"),
])
def test_unexpected_or_malformed_inbound_is_a_message_error(name: str, payload: bytes,
                                                            message: str) -> None:
    with pytest.raises(MessageError, match=message):
        decode_inbound(name, payload, sensor_prefix=PREFIX, retained=False, received_at=0.0)


def test_sensor_reports_become_readings() -> None:
    payload = json.dumps({"t": 100.5, "count": 4, "speed_mps": 12.5, "queue_veh": 3,
                          "queue_m": 21.0, "occupancy": 0.25}).encode()
    got = decode_inbound(f"{PREFIX}/cam-n/nb-1", payload, sensor_prefix=PREFIX, retained=False,
                         received_at=200.0)
    assert got.message == SensorReading(sensor="cam-n", lane="nb-1", t=100.5, count=4,
                                        speed_mps=12.5, queue_veh=3.0, queue_m=21.0,
                                        occupancy=0.25)
    # no time from the sensor: the time of receipt
    assert decode_sensor(PREFIX, f"{PREFIX}/radar:2/sb-1", b'{"speed_mps": 9}', 200.0) == \
        SensorReading(sensor="radar:2", lane="sb-1", t=200.0, speed_mps=9.0)


@pytest.mark.parametrize("name, payload, message", [
    (f"{PREFIX}/cam/nb-1", b'{"count": 1, "colour": "red"}', "unknown field `colour`"),
    (f"{PREFIX}/cam/nb-1", b'{"count": -1}', r"Expected `int` >= 0 - at `\$.count`"),
    (f"{PREFIX}/cam/nb-1", b'{"occupancy": 1.5}', r"<= 1.0 - at `\$.occupancy`"),
    (f"{PREFIX}/cam/nb-1", b'{"count": 1.5}', "Expected `int | null`"),
    (f"{PREFIX}/cam/nb-1", b'{"speed_mps": 1e999}', r"out of range - at `\$.speed_mps`"),
    (f"{PREFIX}/cam/nb-1", b'{"t": 1e999, "count": 1}', r"out of range - at `\$.t`"),
    (f"{PREFIX}/cam/nb-1", b'{"t": 5}', "reports none of count"),
    (f"{PREFIX}/cam/nb-1", b"12", "Expected `object`"),
    (f"{PREFIX}/cam", b'{"count": 1}', "is not sensors/main-oak/{sensor}/{lane}"),
    (f"{PREFIX}/cam/nb-1/x", b'{"count": 1}', "is not sensors/main-oak/{sensor}/{lane}"),
    (f"{PREFIX}/cam/nb 1", b'{"count": 1}', "lane"),
])
def test_bad_sensor_reports_are_message_errors(name: str, payload: bytes, message: str) -> None:
    with pytest.raises(MessageError, match=message):
        decode_inbound(name, payload, sensor_prefix=PREFIX, retained=False, received_at=0.0)


def test_sensor_prefix_is_checked() -> None:
    assert sensor_filter("sensors/a") == "sensors/a/+/+"
    assert check_sensor_prefix("") == ""
    for bad in ("sensors/+", "a/#", "/a", "a/", "a//b"):
        with pytest.raises(ValueError, match="sensor_prefix"):
            check_sensor_prefix(bad)


# --- the dispatcher thread ------------------------------------------------------------------
def test_dispatcher_hands_over_on_its_own_thread_and_logs_bad_topics_once(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.mqtt_inbound")
    seen: list[tuple[Inbound, str]] = []
    done = threading.Event()

    def callback(inbound: Inbound) -> None:
        seen.append((inbound, threading.current_thread().name))
        if len(seen) == 2:
            done.set()

    receiver = InboundDispatcher("s1/main-oak", callback, sensor_prefix=PREFIX)
    receiver.start()
    for _ in range(3):
        receiver.offer(t(TopicKind.PLAN), b"garbage", False)
    receiver.offer(t(TopicKind.PLAN), encode(plan_message()), True)
    receiver.offer(f"{PREFIX}/cam/nb-1", b'{"count": 2}', False)
    assert done.wait(5)
    receiver.stop()
    assert [s[0].message for s in seen][0] == plan_message()
    assert all(name.endswith("-inbound") for _, name in seen)
    assert (receiver.delivered, receiver.rejected, receiver.overflow) == (2, 3, 0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "rejected a payload on tsc/v1/s1/main-oak/plan" in warnings[0]
    assert any("decodes again (3 rejected)" in r.getMessage() for r in caplog.records)


def test_dispatcher_survives_a_failing_callback_and_a_full_queue(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.mqtt_inbound")
    release, calls = threading.Event(), []

    def callback(inbound: Inbound) -> None:
        calls.append(inbound)
        release.wait(5)
        if len(calls) <= 2:
            raise RuntimeError("caller bug")

    receiver = InboundDispatcher("x", callback, sensor_prefix=PREFIX, maxsize=2)
    receiver.start()
    reading = b'{"count": 1}'
    receiver.offer(f"{PREFIX}/a/l", reading, False)
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:  # the first is in the callback
        time.sleep(0.01)
    for _ in range(5):  # two fit the queue, three are lost
        receiver.offer(f"{PREFIX}/a/l", reading, False)
    release.set()
    receiver.stop()
    assert (receiver.delivered, receiver.overflow) == (3, 3)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("inbound queue full" in m for m in messages) == 1
    assert sum("inbound callback failed" in m for m in messages) == 1
    assert sum("callback works again" in m for m in messages) == 1
    assert sum("queue drained (3 lost in all)" in m for m in messages) == 1


# --- the fake link --------------------------------------------------------------------------
def test_fake_link_numbers_delivers_and_survives_an_outage() -> None:
    inbound: list[Inbound] = []
    link = FakeLink(site=SITE, intersection=CROSSING, on_inbound=inbound.append, first_seq=10,
                    sensor_prefix=PREFIX, host="ignored")
    with pytest.raises(DeviceError, match="not running"):
        link.publish(measurement())
    with link:
        assert link.connected and link.wait_connected(0) and link.statuses[-1].online
        assert link.publish(measurement()) == 10
        link.set_online(False)
        assert link.statuses[-1] == Status(site=SITE, intersection_id=CROSSING, t=0.0,
                                           online=False, mode=EdgeMode.FAULT,
                                           controller_ok=False, detail=link.statuses[-1].detail)
        assert [link.publish(measurement(count=c)) for c in (1, 2)] == [11, 12]
        assert not link.wait_delivered(0) and link.stats().pending == 2
        link.set_online(True)
        assert [m.seq for _, m in link.published] == [10, 11, 12]
        assert link.stats().delivered == 3 and link.stats().connects == 2
        link.update_status(Status(site=SITE, intersection_id=CROSSING, t=0.0, online=True,
                                  mode=EdgeMode.CENTRAL, controller_ok=True, plan_id=1))
        assert link.statuses[-1].mode is EdgeMode.CENTRAL
        assert link.deliver(t(TopicKind.PLAN), plan_message()).message == plan_message()
        assert link.deliver(t(TopicKind.PLAN), b"garbage") is None
        assert link.stats().inbound_rejected == 1 and len(inbound) == 1
        with pytest.raises(ValueError, match="given to the link of"):
            link.update_status(Status(site=SITE, intersection_id="x", t=0.0, online=True,
                                      mode=EdgeMode.CENTRAL, controller_ok=True))
        with pytest.raises(DeviceError, match="already started"):
            link.start()
    assert link.statuses[-1].online is False and link.statuses[-1].detail == "shut down cleanly"


def test_plans_on_another_intersections_topic_are_refused_not_acked() -> None:
    """A broker may deliver what was not subscribed; the edge must not take it as its own."""
    other = topic(SITE, "elsewhere", TopicKind.PLAN)
    payload = encode(plan_message())
    with pytest.raises(MessageError, match="is not addressed to"):
        decode_inbound(other, payload, sensor_prefix="", retained=True, received_at=0.0,
                       addressed_to=(SITE, CROSSING))
    with pytest.raises(MessageError, match="is not addressed to"):
        decode_inbound(topic("other-site", CROSSING, TopicKind.HEARTBEAT), payload,
                       sensor_prefix="", retained=False, received_at=0.0,
                       addressed_to=(SITE, CROSSING))
    with pytest.raises(MessageError, match="topic"):
        decode_inbound("not/ours", payload, sensor_prefix="", retained=False, received_at=0.0,
                       addressed_to=(SITE, CROSSING))
    mine = decode_inbound(t(TopicKind.PLAN), encode(plan_message()), sensor_prefix="",
                          retained=True, received_at=0.0, addressed_to=(SITE, CROSSING))
    assert mine.topic == t(TopicKind.PLAN)
