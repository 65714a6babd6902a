"""Versioned wire messages of the MQTT contract, and their strict encoding and decoding.

Pure, no IO. Every message is a frozen :class:`~edge_agent.model.Contract` struct carrying
``v`` (the payload schema version). Decoding is strict: malformed JSON, a missing ``v``, another
version, unknown or missing fields, wrong types and bad values all raise :class:`MessageError`,
whose text names the message kind and the field (msgspec adds the path, e.g. ``$.lanes[0]``).

Messages are encoded with every field present (``omit_defaults=False``), so ``v`` is always on
the wire and a payload says what it means without knowing the defaults of its schema version.
Nested records (lanes, events, violations, the plan) keep the compact form of the contract.
"""

from __future__ import annotations

import base64
import binascii
import enum
from types import MappingProxyType
from typing import Annotated, Any, Mapping, TypeVar

import msgspec

from edge_agent.guard import Violation
from edge_agent.model import (
    MAX_PHASE, Contract, Ident, PhaseNumber, coerce_enum, require, require_finite, require_ident,
    require_int, require_unique,
)
from edge_agent.plan import TimingPlan
from edge_agent.topics import TopicKind, parse_topic

__all__ = [
    "SCHEMA_VERSION", "MessageError", "Message", "EdgeMode", "EventKind", "LaneMeasurement",
    "PhaseService", "Measurement", "Event", "Events", "PlanMessage", "ViolationRecord", "Ack",
    "Status", "Heartbeat", "MESSAGE_TYPES", "plan_signing_bytes", "offline_status", "encode",
    "decode", "decode_for_topic",
]

SCHEMA_VERSION = 1
SIGNATURE_BYTES = 64  # an Ed25519 signature
MAX_SEQ = 2**63 - 1  # sequence numbers and plan ids fit a signed 64-bit column (SQLite)

Seq = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
PlanId = Annotated[int, msgspec.Meta(ge=1, le=MAX_SEQ)]
NonNegative = Annotated[float, msgspec.Meta(ge=0.0)]
M = TypeVar("M", bound="Message")


class MessageError(ValueError):
    """A payload that is not a valid message of the expected kind (or does not fit its topic)."""


class EdgeMode(str, enum.Enum):
    """The edge's operating mode, as reported in its status."""

    STARTUP = "startup"
    LOCAL_FALLBACK = "local_fallback"
    CENTRAL = "central"
    OVERRIDE = "override"
    FAULT = "fault"


class EventKind(str, enum.Enum):
    """High-resolution events; ``Event.ref`` names the phase, detector or alarm."""

    PHASE_GREEN = "phase_green"
    PHASE_YELLOW = "phase_yellow"
    PHASE_RED = "phase_red"
    DETECTOR_ON = "detector_on"
    DETECTOR_OFF = "detector_off"
    DETECTOR_FAULT = "detector_fault"
    DETECTOR_RECOVERED = "detector_recovered"
    ALARM = "alarm"
    MODE_CHANGE = "mode_change"


_PHASE_EVENTS = frozenset({EventKind.PHASE_GREEN, EventKind.PHASE_YELLOW, EventKind.PHASE_RED})


def _idents(values: tuple[str, ...], field: str) -> None:
    for value in values:
        require_ident(value, field)
    require_unique(list(values), field)


def _text(value: str, field: str) -> None:
    require(isinstance(value, str), field, f"must be text, got {value!r}")


def _flag(value: bool, field: str) -> None:
    require(isinstance(value, bool), field, f"must be true or false, got {value!r}")


# msgspec applies ``kw_only`` only to the fields a class itself defines (it is not inherited
# from Contract), so every struct below repeats it: fields stay keyword-only everywhere.
class Message(Contract, omit_defaults=False, kw_only=True):
    """Base of every top-level wire message: carries the schema version ``v``."""

    v: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        require(type(self.v) is int and self.v == SCHEMA_VERSION, "v",
                f"schema version {self.v!r} is not supported (this is version {SCHEMA_VERSION})")


class _Addressed(Message, kw_only=True):
    """A message from or to one intersection of a site."""

    site: Ident
    intersection_id: Ident

    def __post_init__(self) -> None:
        super().__post_init__()
        require_ident(self.site, "site")
        require_ident(self.intersection_id, "intersection_id")


class LaneMeasurement(Contract, kw_only=True):
    """One lane over a measurement interval; ``None`` where the lane has no such detector."""

    lane: Ident
    count: Annotated[int, msgspec.Meta(ge=0)]
    flow_vph: NonNegative
    occupancy: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
    mean_speed_mps: NonNegative | None = None
    queue_veh: NonNegative | None = None
    queue_m: NonNegative | None = None
    healthy: bool = True

    def __post_init__(self) -> None:
        require_ident(self.lane, "lane")
        where = f"lane {self.lane}"
        require_int(self.count, f"{where}.count", 0, MAX_SEQ)
        require_finite(self.flow_vph, f"{where}.flow_vph", minimum=0.0)
        require_finite(self.occupancy, f"{where}.occupancy", minimum=0.0)
        require(self.occupancy <= 1.0, f"{where}.occupancy",
                f"must be a fraction within 0..1, got {self.occupancy:g}")
        for name in ("mean_speed_mps", "queue_veh", "queue_m"):
            if getattr(self, name) is not None:
                require_finite(getattr(self, name), f"{where}.{name}", minimum=0.0)
        _flag(self.healthy, f"{where}.healthy")


class PhaseService(Contract, kw_only=True):
    """How a phase was served over a measurement interval: total green and green starts."""

    phase: PhaseNumber
    green_s: NonNegative
    services: Annotated[int, msgspec.Meta(ge=0)] = 1

    def __post_init__(self) -> None:
        require_int(self.phase, "phase_greens.phase", 1, MAX_PHASE)
        require_finite(self.green_s, f"phase {self.phase}.green_s", minimum=0.0)
        require_int(self.services, f"phase {self.phase}.services", 0, MAX_SEQ)


class Measurement(_Addressed, kw_only=True):
    """Aggregated detector data of one interval (edge -> centre, topic ``measurements``).

    ``seq`` is the edge's spool sequence number: it increases with every message the edge
    sends (measurements and events share it, so gaps are normal) and is never reused. The
    centre drops repeats of ``(intersection, seq)`` (QoS 1 redelivery, spool replay).
    ``interval_start`` is POSIX seconds.
    """

    seq: Seq
    interval_start: NonNegative
    interval_s: NonNegative
    lanes: tuple[LaneMeasurement, ...]
    failed_detectors: tuple[Ident, ...] = ()
    phase_greens: tuple[PhaseService, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        require_int(self.seq, "seq", 0, MAX_SEQ)
        require_finite(self.interval_start, "interval_start", minimum=0.0)
        require_finite(self.interval_s, "interval_s", minimum=0.0)
        require(self.interval_s > 0.0, "interval_s", "must be > 0")
        # An all-failed intersection still reports its lanes (healthy=false), never nothing.
        require(len(self.lanes) > 0, "lanes", "must not be empty")
        require_unique([lane.lane for lane in self.lanes], "lanes")
        _idents(self.failed_detectors, "failed_detectors")
        require_unique([p.phase for p in self.phase_greens], "phase_greens")


class Event(Contract, kw_only=True):
    """One timestamped event; phase events name the phase number in ``ref``."""

    t: NonNegative
    kind: EventKind
    ref: Ident
    value: float | None = None

    def __post_init__(self) -> None:
        require_finite(self.t, "event.t", minimum=0.0)
        coerce_enum(self, "kind", EventKind, "event.kind")
        require_ident(self.ref, "event.ref")
        if self.kind in _PHASE_EVENTS:
            require(self.ref.isdigit() and 1 <= int(self.ref) <= MAX_PHASE, "event.ref",
                    f"must be a phase number 1..{MAX_PHASE} for {self.kind.value}, "
                    f"got {self.ref!r}")
        if self.value is not None:
            require_finite(self.value, "event.value")


class Events(_Addressed, kw_only=True):
    """A batch of events in time order (edge -> centre, topic ``events``)."""

    seq: Seq
    events: tuple[Event, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        require_int(self.seq, "seq", 0, MAX_SEQ)
        require(len(self.events) > 0, "events", "must not be empty")
        for i in range(1, len(self.events)):
            require(self.events[i].t >= self.events[i - 1].t, f"events[{i}].t",
                    "events must be in time order")


def plan_signing_bytes(site: str, plan: TimingPlan) -> bytes:
    """The canonical bytes of ``plan`` for ``site`` that the centre signs and the edge verifies.

    The site is part of what is signed (intersection ids are unique only within a site), so a
    plan signed for one site's intersection cannot be replayed at another site's namesake.

    msgspec encodes struct fields in definition order, omits fields equal to their defaults and
    writes floats in the shortest form that reads back exactly, so a plan's JSON depends on its
    values alone, except that a plan built in Python may hold ``30`` where the decoded copy at
    the edge holds ``30.0``: encoding the decoded form on both sides removes that difference.
    A new optional field with a default leaves old plans' bytes unchanged.
    """
    require_ident(site, "site")
    raw = msgspec.json.encode(plan)
    canonical = msgspec.json.encode(msgspec.json.decode(raw, type=TimingPlan))
    return b"tsc/v1 plan " + site.encode() + b"\n" + canonical


class PlanMessage(Message, kw_only=True):
    """A signed plan (centre -> edge, topic ``plan``, retained).

    ``signature`` is the base64 Ed25519 signature of :func:`plan_signing_bytes` by the key
    ``key_id``; verifying it (with the edge's trusted keys) is the edge runtime's job.
    """

    site: Ident
    plan: TimingPlan
    key_id: Ident
    signature: str

    def __post_init__(self) -> None:
        super().__post_init__()
        require_ident(self.site, "site")
        require_ident(self.key_id, "key_id")
        require(isinstance(self.plan, TimingPlan), "plan", "must be a TimingPlan")
        size = len(self.signature_bytes)
        require(size == SIGNATURE_BYTES, "signature",
                f"must decode to {SIGNATURE_BYTES} bytes (Ed25519), got {size}")

    @property
    def signature_bytes(self) -> bytes:
        """The raw signature."""
        try:
            return base64.b64decode(self.signature, validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise ValueError(f"signature: must be base64 text, got {self.signature!r}") from None


class ViolationRecord(Contract, kw_only=True):
    """A guard violation as carried in an ack (see :class:`edge_agent.guard.Violation`)."""

    rule: str
    message: str
    phase: PhaseNumber | None = None
    value: float | None = None
    limit: float | None = None

    def __post_init__(self) -> None:
        require(isinstance(self.rule, str) and self.rule != "", "violation.rule",
                f"must be a non-empty rule code, got {self.rule!r}")
        _text(self.message, "violation.message")
        if self.phase is not None:
            require_int(self.phase, "violation.phase", 1, MAX_PHASE)
        for name in ("value", "limit"):
            if getattr(self, name) is not None:
                require_finite(getattr(self, name), f"violation.{name}")

    @classmethod
    def from_violation(cls, violation: Violation) -> ViolationRecord:
        """The wire form of a guard violation."""
        return cls(rule=violation.rule.value, message=violation.message,
                   phase=violation.phase, value=violation.value, limit=violation.limit)


class Ack(_Addressed, kw_only=True):
    """The edge's answer to a plan (edge -> centre, topic ``ack``)."""

    plan_id: PlanId
    t: NonNegative
    accepted: bool
    violations: tuple[ViolationRecord, ...] = ()
    reason: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        require_int(self.plan_id, "plan_id", 1, MAX_SEQ)
        require_finite(self.t, "t", minimum=0.0)
        _flag(self.accepted, "accepted")
        _text(self.reason, "reason")
        if self.accepted:
            require(not self.violations, "violations", "an accepted plan cannot have violations")
        else:
            # The centre must be able to tell an operator why; a bare "no" is not an answer.
            require(bool(self.violations) or self.reason != "", "reason",
                    "a rejection needs a reason or violations")


class Status(_Addressed, kw_only=True):
    """The edge's health (edge -> centre, topic ``status``, retained, also the last will).

    When ``online`` is false only the address means anything: see :func:`offline_status`.
    """

    t: NonNegative
    online: bool
    mode: EdgeMode
    controller_ok: bool
    plan_id: PlanId | None = None
    failed_detectors: tuple[Ident, ...] = ()
    detail: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        require_finite(self.t, "t", minimum=0.0)
        _flag(self.online, "online")
        coerce_enum(self, "mode", EdgeMode, "mode")
        _flag(self.controller_ok, "controller_ok")
        if self.plan_id is not None:
            require_int(self.plan_id, "plan_id", 1, MAX_SEQ)
        _idents(self.failed_detectors, "failed_detectors")
        _text(self.detail, "detail")


def offline_status(site: str, intersection_id: str) -> Status:
    """The last-will payload an edge registers when it connects.

    The broker publishes it later, when the edge vanishes, so no true time can be written in
    advance: ``t`` is 0 (meaning unknown; use the time of receipt). The mode is ``fault`` and
    ``controller_ok`` false because nothing about the box can be vouched for; the controller
    itself keeps running its last plan or its own fallback.
    """
    return Status(site=site, intersection_id=intersection_id, t=0.0, online=False,
                  mode=EdgeMode.FAULT, controller_ok=False,
                  detail="edge disconnected without a clean shutdown (last will)")


class Heartbeat(Message, kw_only=True):
    """The centre's liveness beat (centre -> edge, topic ``heartbeat``, QoS 0).

    It names only the site so one payload can go to every intersection of the site.
    """

    site: Ident
    seq: Seq
    t: NonNegative
    source: Ident

    def __post_init__(self) -> None:
        super().__post_init__()
        require_ident(self.site, "site")
        require_int(self.seq, "seq", 0, MAX_SEQ)
        require_finite(self.t, "t", minimum=0.0)
        require_ident(self.source, "source")


#: The message type carried by each topic kind.
MESSAGE_TYPES: Mapping[TopicKind, type[Message]] = MappingProxyType({
    TopicKind.MEASUREMENTS: Measurement,
    TopicKind.EVENTS: Events,
    TopicKind.PLAN: PlanMessage,
    TopicKind.ACK: Ack,
    TopicKind.STATUS: Status,
    TopicKind.HEARTBEAT: Heartbeat,
})


# Only the version, read first: a newer payload would otherwise fail on its new fields and
# hide the one fact that explains it. Unknown fields are ignored here, checked in the 2nd pass.
class _Envelope(msgspec.Struct):
    v: int


_ENCODER = msgspec.json.Encoder()
_ENVELOPE = msgspec.json.Decoder(_Envelope)
_DECODERS: dict[type, msgspec.json.Decoder[Any]] = {}


def encode(msg: Message) -> bytes:
    """The JSON payload of a message."""
    if not isinstance(msg, Message):
        raise TypeError(f"encode: expected a Message, got {type(msg).__name__}")
    return _ENCODER.encode(msg)


def decode(data: bytes | str, kind: type[M]) -> M:
    """Decode and validate a payload as a message of type ``kind``; raises MessageError."""
    decoder = _DECODERS.get(kind)
    if decoder is None:
        if not (isinstance(kind, type) and issubclass(kind, Message)):
            raise TypeError(f"decode: expected a Message type, got {kind!r}")
        decoder = _DECODERS[kind] = msgspec.json.Decoder(kind)
    name = kind.__name__
    try:
        version = _ENVELOPE.decode(data).v
        if version != SCHEMA_VERSION:
            raise MessageError(f"{name}: schema version {version} received, "
                               f"version {SCHEMA_VERSION} supported - at `$.v`")
        return decoder.decode(data)
    except msgspec.DecodeError as err:  # malformed JSON, and ValidationError (a subclass)
        raise MessageError(f"{name}: {err}") from None


def decode_for_topic(topic: str, data: bytes | str) -> Message:
    """Decode a payload by its topic's kind and check it is about the topic's address."""
    try:
        address = parse_topic(topic)
    except ValueError as err:
        raise MessageError(str(err)) from None
    kind = MESSAGE_TYPES[address.kind]
    msg = decode(data, kind)
    name = kind.__name__
    if isinstance(msg, PlanMessage):  # the signed plan names its intersection
        pairs = [("site", msg.site, address.site),
                 ("plan.intersection_id", msg.plan.intersection_id, address.intersection)]
    else:  # a Heartbeat names only its site: one payload serves every intersection
        assert isinstance(msg, (_Addressed, Heartbeat))
        pairs = [("site", msg.site, address.site)]
        if isinstance(msg, _Addressed):
            pairs.append(("intersection_id", msg.intersection_id, address.intersection))
    for field, got, expected in pairs:
        if got != expected:
            raise MessageError(f"{name}: {field} {got!r} does not match the topic's "
                               f"{expected!r} in {topic!r}")
    return msg
