"""What the edge's MQTT link sends and receives, without any IO: shared by the real link
(:mod:`edge_agent.mqtt_link`) and the in-memory fake (:mod:`edge_agent.fake_link`).

Outbound, :func:`prepare_outbound` turns a measurement, an events batch or an ack into a spool
item whose payload is encoded with the sequence number the spool assigns.

Inbound, :func:`decode_inbound` decodes a received payload: the centre's plans and heartbeats
(``tsc/v1/...`` topics, by :func:`edge_agent.messages.decode_for_topic`) and readings of the
local smart sensors. Sensors (cameras, radars) publish under a configurable prefix, one topic
per sensor and lane::

    {prefix}/{sensor}/{lane}        e.g.  sensors/elm-1st/cam-north/nb-1

with a JSON object holding any of ``count`` (vehicles since the sensor's previous report),
``speed_mps``, ``queue_veh``, ``queue_m``, ``occupancy`` (0..1), and optionally ``t`` (POSIX
seconds; the time of receipt when absent). The quantity names are those of
:class:`~edge_agent.messages.LaneMeasurement`. Decoding is strict: unknown fields,
wrong types, negative or out-of-range numbers (``1e999``) or an empty reading raise
:class:`~edge_agent.messages.MessageError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Union

import msgspec

from edge_agent.messages import (
    Ack, Events, Heartbeat, Measurement, Message, MessageError, PlanMessage, decode_for_topic,
    encode,
)
from edge_agent.model import require_ident
from edge_agent.spool import PRIORITY_KEEP, PRIORITY_LOW, PRIORITY_NORMAL, SpoolItem
from edge_agent.topics import TOPIC_QOS, TOPIC_RETAIN, TopicKind, parse_topic, topic

__all__ = ["MqttLinkStats", "SensorReading", "Inbound", "Outbound", "InboundMessage",
           "decode_inbound", "decode_sensor", "prepare_outbound", "sensor_filter",
           "check_sensor_prefix"]

#: What the link accepts for publishing (through the spool).
Outbound = Union[Measurement, Events, Ack]

_NonNeg = Annotated[float, msgspec.Meta(ge=0.0)]
_KINDS: dict[type, tuple[TopicKind, int]] = {
    Measurement: (TopicKind.MEASUREMENTS, PRIORITY_NORMAL),
    Events: (TopicKind.EVENTS, PRIORITY_LOW),
    Ack: (TopicKind.ACK, PRIORITY_KEEP),
}


@dataclass(frozen=True)
class MqttLinkStats:
    """A snapshot of the link's counters (since :meth:`EdgeLink.start` unless noted)."""

    connected: bool  # connected and subscribed
    pending: int  # in the spool, no PUBACK yet (including messages from earlier runs)
    pending_bytes: int
    inflight: int  # sent on this connection, PUBACK awaited
    appended: int
    delivered: int  # PUBACKs received for spooled rows
    sent: int  # publish calls for spooled rows, first sends and resends
    resent: int  # of those, rows sent again after a reconnect (possible duplicates)
    dropped: int  # rows the spool dropped beyond its cap, over the file's whole life
    next_seq: int
    connects: int
    inbound: int  # messages handed to on_inbound
    inbound_rejected: int  # undecodable or unexpected payloads
    inbound_overflow: int  # received while the inbound queue was full, lost


@dataclass(frozen=True)
class SensorReading:
    """One report of a local sensor for one lane; ``None`` for quantities it did not report."""

    sensor: str
    lane: str
    t: float
    count: int | None = None
    speed_mps: float | None = None
    queue_veh: float | None = None
    queue_m: float | None = None
    occupancy: float | None = None


class _SensorPayload(msgspec.Struct, forbid_unknown_fields=True):
    t: _NonNeg | None = None
    count: Annotated[int, msgspec.Meta(ge=0)] | None = None
    speed_mps: _NonNeg | None = None
    queue_veh: _NonNeg | None = None
    queue_m: _NonNeg | None = None
    occupancy: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None


#: What the link hands to the caller's callback (in :attr:`Inbound.message`).
InboundMessage = Union[PlanMessage, Heartbeat, SensorReading]
_SENSOR_DECODER = msgspec.json.Decoder(_SensorPayload)
_QUANTITIES = ("count", "speed_mps", "queue_veh", "queue_m", "occupancy")


@dataclass(frozen=True)
class Inbound:
    """A decoded message as handed to the link's callback."""

    topic: str
    message: InboundMessage
    retained: bool  # a retained plan is the plan in force, sent again on every subscribe
    received_at: float  # POSIX seconds


def check_sensor_prefix(prefix: str) -> str:
    """Validate a sensor topic prefix ("" = no sensors); ValueError names the problem."""
    if prefix and (any(c in prefix for c in "+#\0") or prefix.startswith("/")
                   or prefix.endswith("/") or "//" in prefix):
        raise ValueError(f"sensor_prefix: must be topic levels without wildcards or empty "
                         f"levels, got {prefix!r}")
    return prefix


def sensor_filter(prefix: str) -> str:
    """The subscription that covers every sensor and lane under ``prefix``."""
    return f"{check_sensor_prefix(prefix)}/+/+"


def decode_sensor(prefix: str, topic_name: str, payload: bytes,
                  received_at: float) -> SensorReading:
    """Decode a sensor report published on ``{prefix}/{sensor}/{lane}``; MessageError if bad."""
    rest = topic_name[len(prefix) + 1:].split("/") if topic_name.startswith(prefix + "/") else []
    if len(rest) != 2:
        raise MessageError(f"sensor: topic {topic_name!r} is not {prefix}/{{sensor}}/{{lane}}")
    try:
        require_ident(rest[0], "sensor")
        require_ident(rest[1], "lane")
        data = _SENSOR_DECODER.decode(payload)
    except msgspec.DecodeError as err:
        raise MessageError(f"sensor {rest[0]}/{rest[1]}: {err}") from None
    except ValueError as err:
        raise MessageError(f"sensor topic {topic_name!r}: {err}") from None
    values = {name: getattr(data, name) for name in _QUANTITIES}
    if all(v is None for v in values.values()):
        raise MessageError(f"sensor {rest[0]}/{rest[1]}: reports none of "
                           f"{', '.join(_QUANTITIES)}")
    t = received_at if data.t is None else data.t
    return SensorReading(sensor=rest[0], lane=rest[1], t=t, **values)


def decode_inbound(topic_name: str, payload: bytes, *, sensor_prefix: str, retained: bool,
                   received_at: float, addressed_to: tuple[str, str] | None = None) -> Inbound:
    """Decode what arrived on ``topic_name``; MessageError if it is malformed or unexpected.

    With ``addressed_to`` = (site, intersection), a plan or heartbeat on another
    intersection's topic is refused too: a broker that delivers what was not subscribed (seen
    with an embedded broker's retained messages) must not make the edge ack another's plan.
    """
    message: InboundMessage
    if sensor_prefix and topic_name.startswith(sensor_prefix + "/"):
        message = decode_sensor(sensor_prefix, topic_name, payload, received_at)
    else:
        if addressed_to is not None:
            try:
                address = parse_topic(topic_name)
            except ValueError as exc:
                raise MessageError(str(exc)) from None
            if (address.site, address.intersection) != addressed_to:
                raise MessageError(f"{topic_name!r} is not addressed to "
                                   f"{addressed_to[0]}/{addressed_to[1]}")
        decoded = decode_for_topic(topic_name, payload)
        if not isinstance(decoded, (PlanMessage, Heartbeat)):
            raise MessageError(f"{type(decoded).__name__} on {topic_name!r}: an edge receives "
                               "only plans and heartbeats")
        message = decoded
    return Inbound(topic=topic_name, message=message, retained=retained, received_at=received_at)


def prepare_outbound(message: Message, site: str, intersection: str) -> SpoolItem:
    """The spool item for ``message``: its topic, QoS, retain flag, drop priority, payload.

    Measurements and events get the spool's sequence number as their ``seq`` (whatever
    ``seq`` the caller gave is replaced). Raises ValueError for another kind of message or one
    addressed to another site or intersection.
    """
    entry = _KINDS.get(type(message))
    if entry is None:
        raise ValueError(f"cannot publish {type(message).__name__}: the link publishes "
                         "Measurement, Events and Ack (status is set with update_status)")
    kind, priority = entry
    assert isinstance(message, (Measurement, Events, Ack))
    if (message.site, message.intersection_id) != (site, intersection):
        raise ValueError(f"{type(message).__name__} for {message.site}/"
                         f"{message.intersection_id} given to the link of {site}/{intersection}")
    if isinstance(message, (Measurement, Events)):
        numbered = message

        def payload(seq: int) -> bytes:
            return encode(msgspec.structs.replace(numbered, seq=seq))
    else:
        data = encode(message)

        def payload(seq: int) -> bytes:
            return data
    return SpoolItem(topic(site, intersection, kind), payload, TOPIC_QOS[kind],
                     TOPIC_RETAIN[kind], priority)
