"""Wire messages: round trips of every message and strict, field-naming rejection of bad input."""

from __future__ import annotations

import base64
import json
from typing import Any, Callable

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.guard import Rule, Violation
from edge_agent.messages import (
    MESSAGE_TYPES,
    SCHEMA_VERSION,
    Ack,
    EdgeMode,
    Event,
    EventKind,
    Events,
    Heartbeat,
    LaneMeasurement,
    Measurement,
    Message,
    MessageError,
    PhaseService,
    PlanMessage,
    Status,
    ViolationRecord,
    decode,
    decode_for_topic,
    encode,
    offline_status,
    plan_signing_bytes,
)
from edge_agent.plan import PhaseTiming, PlanSource, TimingPlan
from edge_agent.topics import TopicKind, topic

# --- strategies ---------------------------------------------------------------------------
idents = st.text(alphabet="ABCXYZabcxyz0189_.:-", min_size=1, max_size=12)
texts = st.text(max_size=30)
seqs = st.integers(0, 2**63 - 1)
times = st.floats(0.0, 4e9, allow_nan=False, allow_infinity=False)
amounts = st.floats(0.0, 1e5, allow_nan=False, allow_infinity=False)
reals = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
phases = st.integers(1, 64)


def optional(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.none() | strategy


lane_measurements = st.builds(
    LaneMeasurement, lane=idents, count=st.integers(0, 10_000), flow_vph=amounts,
    occupancy=st.floats(0.0, 1.0), mean_speed_mps=optional(amounts),
    queue_veh=optional(amounts), queue_m=optional(amounts), healthy=st.booleans())

measurements = st.builds(
    Measurement, site=idents, intersection_id=idents, seq=seqs, interval_start=times,
    interval_s=st.floats(0.1, 3600.0),
    lanes=st.lists(lane_measurements, min_size=1, max_size=6,
                   unique_by=lambda lane: lane.lane).map(tuple),
    failed_detectors=st.lists(idents, max_size=4, unique=True).map(tuple),
    phase_greens=st.lists(st.builds(PhaseService, phase=phases, green_s=amounts,
                                    services=st.integers(0, 100)),
                          max_size=8, unique_by=lambda p: p.phase).map(tuple))


@st.composite
def event_batches(draw: st.DrawFn) -> Events:
    stamps = sorted(draw(st.lists(times, min_size=1, max_size=8)))
    events = []
    for t in stamps:
        kind = draw(st.sampled_from(EventKind))
        ref = str(draw(phases)) if kind.value.startswith("phase_") else draw(idents)
        events.append(Event(t=t, kind=kind, ref=ref, value=draw(optional(reals))))
    return Events(site=draw(idents), intersection_id=draw(idents), seq=draw(seqs),
                  events=tuple(events))


@st.composite
def plans(draw: st.DrawFn) -> TimingPlan:
    numbers = draw(st.lists(phases, min_size=1, max_size=8, unique=True))
    cut = draw(st.integers(1, len(numbers)))
    rings = [numbers[:cut], numbers[cut:]] if cut < len(numbers) else [numbers]
    timing = lambda n: PhaseTiming(  # noqa: E731
        phase=n, split=draw(amounts), yellow=draw(amounts), red_clearance=draw(amounts),
        min_green=draw(amounts), max_green=draw(amounts), walk=draw(amounts),
        ped_clearance=draw(amounts))
    activation = draw(times)
    expiry = draw(optional(st.floats(1.0, 1e6)))
    return TimingPlan(
        plan_id=draw(st.integers(1, 2**63 - 1)), intersection_id=draw(idents),
        cycle=draw(st.floats(1.0, 300.0)), offset=draw(amounts),
        offset_reference=numbers[0], rings=tuple(tuple(timing(n) for n in r) for r in rings),
        activation=activation, source=draw(st.sampled_from(PlanSource)),
        author=draw(st.text(min_size=1, max_size=20)),
        expiry=None if expiry is None else activation + expiry, explanation=draw(texts))


signatures = st.binary(min_size=64, max_size=64).map(lambda b: base64.b64encode(b).decode())
plan_messages = st.builds(PlanMessage, site=idents, plan=plans(), key_id=idents, signature=signatures)
violation_records = st.builds(ViolationRecord, rule=st.sampled_from([r.value for r in Rule]),
                              message=texts, phase=optional(phases), value=optional(reals),
                              limit=optional(reals))


@st.composite
def acks(draw: st.DrawFn) -> Ack:
    accepted = draw(st.booleans())
    violations = () if accepted else tuple(draw(st.lists(violation_records, max_size=4)))
    reason = draw(texts) if accepted or violations else draw(st.text(min_size=1, max_size=30))
    return Ack(site=draw(idents), intersection_id=draw(idents),
               plan_id=draw(st.integers(1, 2**63 - 1)), t=draw(times), accepted=accepted,
               violations=violations, reason=reason)


statuses = st.builds(
    Status, site=idents, intersection_id=idents, t=times, online=st.booleans(),
    mode=st.sampled_from(EdgeMode), controller_ok=st.booleans(),
    plan_id=optional(st.integers(1, 2**63 - 1)),
    failed_detectors=st.lists(idents, max_size=4, unique=True).map(tuple), detail=texts)
heartbeats = st.builds(Heartbeat, site=idents, seq=seqs, t=times, source=idents)

STRATEGIES = {Measurement: measurements, Events: event_batches(), PlanMessage: plan_messages,
              Ack: acks(), Status: statuses, Heartbeat: heartbeats}
KIND_OF = {cls: kind for kind, cls in MESSAGE_TYPES.items()}


@given(st.one_of(*STRATEGIES.values()))
def test_every_message_round_trips(msg: Message) -> None:
    data = encode(msg)
    assert json.loads(data)["v"] == SCHEMA_VERSION  # v is always on the wire
    assert decode(data, type(msg)) == msg
    assert decode(data.decode(), type(msg)) == msg
    intersection = msg.plan.intersection_id if isinstance(msg, PlanMessage) else \
        getattr(msg, "intersection_id", "any")
    site = getattr(msg, "site", "any")
    assert decode_for_topic(topic(site, intersection, KIND_OF[type(msg)]), data) == msg


# --- one valid example of each message, as JSON objects to spoil -------------------------
def example_plan(**changes: Any) -> TimingPlan:
    fields = dict(plan_id=7, intersection_id="i1", cycle=60, offset=0, offset_reference=2,
                  rings=((PhaseTiming(phase=2, split=30, yellow=4, red_clearance=1,
                                      min_green=5, max_green=40),
                          PhaseTiming(phase=4, split=30.0, yellow=4.0, red_clearance=1.0,
                                      min_green=5.0, max_green=40.0)),),
                  activation=1000, source="adaptive", author="optimizer")
    return TimingPlan(**{**fields, **changes})


SIG = base64.b64encode(bytes(range(64))).decode()
EXAMPLES: dict[type[Message], Message] = {
    Measurement: Measurement(
        site="s1", intersection_id="i1", seq=5, interval_start=1000.0, interval_s=60.0,
        lanes=(LaneMeasurement(lane="l1", count=4, flow_vph=240.0, occupancy=0.2,
                               mean_speed_mps=10.0, queue_veh=2.0, queue_m=14.0),),
        failed_detectors=("d9",), phase_greens=(PhaseService(phase=2, green_s=25.0),)),
    Events: Events(site="s1", intersection_id="i1", seq=9,
                   events=(Event(t=1.0, kind=EventKind.PHASE_GREEN, ref="2"),
                           Event(t=2.0, kind="detector_on", ref="d1", value=1.0))),
    PlanMessage: PlanMessage(site="s1", plan=example_plan(), key_id="central-2024", signature=SIG),
    Ack: Ack(site="s1", intersection_id="i1", plan_id=7, t=5.0, accepted=False,
             violations=(ViolationRecord(rule="yellow-floor", message="too short", phase=2,
                                         value=2.5, limit=3.0),)),
    Status: Status(site="s1", intersection_id="i1", t=5.0, online=True, mode="central",
                   controller_ok=True, plan_id=7),
    Heartbeat: Heartbeat(site="s1", seq=1, t=5.0, source="central"),
}
KINDS = list(EXAMPLES)


def spoil(kind: type[Message], change: Callable[[dict], None]) -> bytes:
    obj = json.loads(encode(EXAMPLES[kind]))
    change(obj)
    # json writes inf as the non-JSON token Infinity; 1e400 is valid JSON that overflows.
    return json.dumps(obj).replace("Infinity", "1e400").encode()


def rejected(kind: type[Message], data: bytes | str) -> str:
    with pytest.raises(MessageError) as info:
        decode(data, kind)
    text = str(info.value)
    assert text.startswith(f"{kind.__name__}: ")
    return text


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_examples_decode(kind: type[Message]) -> None:
    assert decode(encode(EXAMPLES[kind]), kind) == EXAMPLES[kind]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_unknown_field(kind: type[Message]) -> None:
    assert "unknown field `surprise`" in rejected(kind, spoil(kind, lambda o: o.update(surprise=1)))


@pytest.mark.parametrize(("kind", "field"), [
    (kind, f.name) for kind in KINDS for f in msgspec.structs.fields(kind) if f.required])
def test_missing_field(kind: type[Message], field: str) -> None:
    assert f"missing required field `{field}`" in rejected(kind, spoil(kind, lambda o: o.pop(field)))


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_missing_version(kind: type[Message]) -> None:
    assert "missing required field `v`" in rejected(kind, spoil(kind, lambda o: o.pop("v")))


@pytest.mark.parametrize(("kind", "field"), [
    (kind, f.name) for kind in KINDS for f in msgspec.structs.fields(kind)])
def test_wrong_type(kind: type[Message], field: str) -> None:
    # No field of any message is a list of lists: wrong for all of them.
    assert f"`$.{field}" in rejected(kind, spoil(kind, lambda o: o.update({field: [[]]})))


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
@pytest.mark.parametrize("version", [0, 2, 99])
def test_wrong_version(kind: type[Message], version: int) -> None:
    # A newer payload with new fields must still be reported as a version problem.
    text = rejected(kind, spoil(kind, lambda o: o.update(v=version, added_in_v2=True)))
    assert f"schema version {version} received, version 1 supported" in text
    assert "`$.v`" in text


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
@pytest.mark.parametrize("data", [b"", b"{", b"not json", b'{"v": 1,}', b"\xff", b"[1]", b"1"])
def test_not_json_or_not_an_object(kind: type[Message], data: bytes) -> None:
    rejected(kind, data)


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def change(obj: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            obj = obj[int(key)] if isinstance(obj, list) else obj[key]
        if isinstance(obj, list):
            obj[int(last)] = value
        else:
            obj[last] = value
    return change


BAD_VALUES = [
    (Measurement, "site", "a b", "site"),
    (Measurement, "intersection_id", "", "intersection_id"),
    (Measurement, "seq", -1, "$.seq"),
    (Measurement, "interval_start", -1.0, "$.interval_start"),
    (Measurement, "interval_s", 0.0, "interval_s: must be > 0"),
    (Measurement, "lanes", [], "lanes: must not be empty"),
    (Measurement, "lanes.0.lane", "l#", "$.lanes[0]"),
    (Measurement, "lanes.0.count", -2, "$.lanes[0].count"),
    (Measurement, "lanes.0.flow_vph", -0.5, "$.lanes[0].flow_vph"),
    (Measurement, "lanes.0.occupancy", 1.01, "$.lanes[0].occupancy"),
    (Measurement, "lanes.0.mean_speed_mps", -1.0, "$.lanes[0].mean_speed_mps"),
    (Measurement, "lanes.0.queue_veh", -1.0, "$.lanes[0].queue_veh"),
    (Measurement, "lanes.0.queue_m", 1e400, "$.lanes[0].queue_m"),
    (Measurement, "failed_detectors", ["d1", "d1"], "failed_detectors: duplicate id 'd1'"),
    (Measurement, "failed_detectors", ["+"], "$.failed_detectors[0]"),
    (Measurement, "phase_greens.0.phase", 65, "$.phase_greens[0].phase"),
    (Measurement, "phase_greens.0.green_s", -3.0, "$.phase_greens[0].green_s"),
    (Events, "events", [], "events: must not be empty"),
    (Events, "events.0.t", 3.0, "events[1].t: events must be in time order"),
    (Events, "events.0.kind", "phase_purple", "$.events[0].kind"),
    (Events, "events.0.ref", "d1", "event.ref: must be a phase number"),
    (Events, "events.0.ref", "65", "event.ref: must be a phase number"),
    (Events, "events.1.value", 1e400, "$.events[1].value"),
    (PlanMessage, "signature", "not base64!", "signature: must be base64"),
    (PlanMessage, "signature", base64.b64encode(b"x" * 63).decode(), "must decode to 64 bytes"),
    (PlanMessage, "key_id", "key id", "key_id"),
    (PlanMessage, "plan.cycle", 0.0, "cycle: must be > 0"),
    (PlanMessage, "plan.plan_id", 0, "$.plan.plan_id"),
    (Ack, "plan_id", 0, "$.plan_id"),
    (Ack, "t", -1.0, "$.t"),
    (Ack, "violations", [], "reason: a rejection needs a reason or violations"),
    (Ack, "accepted", True, "violations: an accepted plan cannot have violations"),
    (Ack, "violations.0.phase", 0, "$.violations[0].phase"),
    (Ack, "violations.0.rule", "", "violation.rule: must be a non-empty rule code"),
    (Status, "mode", "asleep", "$.mode"),
    (Status, "plan_id", 0, "$.plan_id"),
    (Status, "failed_detectors", ["d1", "d1"], "failed_detectors: duplicate"),
    (Heartbeat, "seq", -1, "$.seq"),
    (Heartbeat, "source", "", "$.source"),
    (Heartbeat, "t", -0.1, "$.t"),
]


@pytest.mark.parametrize(("kind", "path", "value", "expected"), BAD_VALUES,
                         ids=[f"{k.__name__}-{p}" for k, p, _, _ in BAD_VALUES])
def test_bad_value(kind: type[Message], path: str, value: Any, expected: str) -> None:
    assert expected in rejected(kind, spoil(kind, _set(path, value)))


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_topic_payload_mismatch(kind: type[Message]) -> None:
    data = encode(EXAMPLES[kind])
    tkind = KIND_OF[kind]
    assert decode_for_topic(topic("s1", "i1", tkind), data) == EXAMPLES[kind]
    with pytest.raises(MessageError, match=f"^{kind.__name__}: site 's1' does not match"):
        decode_for_topic(topic("s2", "i1", tkind), data)
    if kind is not Heartbeat:  # one heartbeat serves every intersection of the site
        with pytest.raises(MessageError, match="intersection_id 'i1' does not match the topic's"):
            decode_for_topic(topic("s1", "i2", tkind), data)
    else:
        assert decode_for_topic(topic("s1", "i2", tkind), data) == EXAMPLES[kind]


def test_payload_on_the_wrong_kind_of_topic() -> None:
    data = encode(EXAMPLES[Status])
    with pytest.raises(MessageError, match="^Ack: Object contains unknown field `online`"):
        decode_for_topic(topic("s1", "i1", TopicKind.ACK), data)


@pytest.mark.parametrize("name", ["tsc/v1/s1/i1/nope", "tsc/v9/s1/i1/status", "x"])
def test_bad_topic_is_a_message_error(name: str) -> None:
    with pytest.raises(MessageError, match="^topic"):
        decode_for_topic(name, encode(EXAMPLES[Status]))


# --- construction in Python --------------------------------------------------------------
@pytest.mark.parametrize(("build", "expected"), [
    (lambda: Heartbeat(v=2, site="s", seq=0, t=0.0, source="c"), "^v: schema version 2"),
    (lambda: Heartbeat(v=True, site="s", seq=0, t=0.0, source="c"), "^v: "),
    (lambda: Heartbeat(site="s", seq=True, t=0.0, source="c"), "^seq: must be an integer"),
    (lambda: Heartbeat(site="s", seq=0, t=float("nan"), source="c"), "^t: must be a finite"),
    (lambda: LaneMeasurement(lane="l", count=1, flow_vph=1.0, occupancy=2.0),
     "^lane l.occupancy: must be a fraction"),
    (lambda: LaneMeasurement(lane="l", count=1, flow_vph=1.0, occupancy=0.5, healthy=1),
     "^lane l.healthy: must be true or false"),
    (lambda: LaneMeasurement(lane="l", count=1, flow_vph=1.0, occupancy=0.5, queue_m=-1),
     "^lane l.queue_m: must be >= 0"),
    (lambda: PhaseService(phase=3, green_s=1.0, services=-1), "^phase 3.services: "),
    (lambda: PhaseService(phase=0, green_s=1.0), "^phase_greens.phase: "),
    (lambda: Event(t=0.0, kind="alarm", ref="door", value=float("inf")), "^event.value: "),
    (lambda: Event(t=0.0, kind="bogus", ref="x"), "^event.kind: must be one of"),
    (lambda: PlanMessage(site="s1", plan={"plan_id": 1}, key_id="k", signature=SIG), "^plan: must be"),
    (lambda: PlanMessage(site="s1", plan=example_plan(), key_id="k", signature=b"\x00"),
     "^signature: must be base64"),
    (lambda: ViolationRecord(rule="r", message=3), "^violation.message: must be text"),
    (lambda: ViolationRecord(rule="r", message="m", limit=float("nan")), "^violation.limit: "),
    (lambda: Ack(site="s", intersection_id="i", plan_id=1, t=0.0, accepted="yes"),
     "^accepted: must be true or false"),
    (lambda: Ack(site="s", intersection_id="i", plan_id=1, t=0.0, accepted=False),
     "^reason: a rejection needs"),
    (lambda: Status(site="s", intersection_id="i", t=0.0, online=1, mode="fault",
                    controller_ok=False), "^online: "),
    (lambda: Status(site="s", intersection_id="i", t=0.0, online=True, mode="fault",
                    controller_ok=None), "^controller_ok: "),
    (lambda: Status(site="s", intersection_id="i", t=0.0, online=True, mode="fault",
                    controller_ok=True, detail=None), "^detail: must be text"),
])
def test_construction_validates(build: Callable[[], Any], expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        build()


def test_messages_are_frozen_and_keyword_only() -> None:
    msg = EXAMPLES[Heartbeat]
    with pytest.raises(AttributeError):
        msg.seq = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        Heartbeat("s", 1, 5.0, "central")  # type: ignore[misc]


def test_enums_coerced_from_text() -> None:
    assert EXAMPLES[Status].mode is EdgeMode.CENTRAL
    assert EXAMPLES[Events].events[1].kind is EventKind.DETECTOR_ON


def test_encode_and_decode_refuse_non_messages() -> None:
    with pytest.raises(TypeError, match="expected a Message"):
        encode(example_plan())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected a Message type"):
        decode(b"{}", TimingPlan)  # type: ignore[type-var]


def test_offline_status_is_the_last_will() -> None:
    will = offline_status("s1", "i1")
    assert (will.online, will.mode, will.controller_ok, will.t) == (False, EdgeMode.FAULT,
                                                                    False, 0.0)
    data = encode(will)
    assert decode_for_topic(topic("s1", "i1", TopicKind.STATUS), data) == will
    with pytest.raises(ValueError, match="^site: "):
        offline_status("s 1", "i1")


def test_violation_record_from_guard_violation() -> None:
    violation = Violation(Rule.YELLOW_FLOOR, "yellow 2.5 s < 3.0 s", 2, 2.5, 3.0)
    record = ViolationRecord.from_violation(violation)
    assert record == ViolationRecord(rule="yellow-floor", message="yellow 2.5 s < 3.0 s",
                                     phase=2, value=2.5, limit=3.0)
    plan_wide = ViolationRecord.from_violation(Violation(Rule.CYCLE_SUM, "sums differ"))
    assert (plan_wide.phase, plan_wide.value, plan_wide.limit) == (None, None, None)


def test_signing_bytes_are_canonical() -> None:
    as_ints = example_plan()  # ring timings of phase 2 given as ints, cycle=60 too
    message = EXAMPLES[PlanMessage]
    received = decode(encode(message), PlanMessage).plan
    assert plan_signing_bytes("s1", as_ints) == plan_signing_bytes("s1", received)
    assert plan_signing_bytes("s1", as_ints) == plan_signing_bytes("s1", example_plan(cycle=60.0))
    assert plan_signing_bytes("s1", as_ints) != plan_signing_bytes("s1", example_plan(cycle=61.0))
    assert b'"cycle":60.0' in plan_signing_bytes("s1", as_ints)
    assert message.signature_bytes == bytes(range(64))


@given(plans())
def test_signing_bytes_survive_the_wire(plan: TimingPlan) -> None:
    message = PlanMessage(site="s1", plan=plan, key_id="k1", signature=SIG)
    assert plan_signing_bytes("s1", decode(encode(message), PlanMessage).plan) == \
        plan_signing_bytes("s1", plan)
    assert plan_signing_bytes("s1", plan) != plan_signing_bytes("s2", plan)
