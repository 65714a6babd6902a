"""The MQTT topic layout of the wire contract: ``tsc/v1/{site}/{intersection}/{kind}``.

Pure string handling, no IO. Identifiers in topics are the contract's :data:`Ident` (letters,
digits, ``_ . : -``), which can never contain a level separator ``/`` or a wildcard ``+``/``#``,
so a topic built here always has exactly five levels and parses back to the same address.

Per kind (see DESIGN.md, wire contract):

============  ==============  ===  ======  =================================================
kind          direction       QoS  retain  why
============  ==============  ===  ======  =================================================
measurements  edge -> centre  1    no      sequence numbered; redeliveries deduplicated
events        edge -> centre  1    no      sequence numbered too; lost events break KPIs
plan          centre -> edge  1    yes     a reconnecting edge gets the plan in force
ack           edge -> centre  1    no      the centre must learn of every rejection
status        edge -> centre  1    yes     also the last will: "offline" survives the edge
heartbeat     centre -> edge  0    no      a lost beat is replaced by the next; silence is
                                           the signal the edge acts on
============  ==============  ===  ======  =================================================

Heartbeats use the same per-intersection topic as everything else (the payload carries only
the site), so one ACL pattern ``tsc/v1/{site}/{intersection}/#`` covers an edge box.
"""

from __future__ import annotations

import enum
from types import MappingProxyType
from typing import Mapping

from edge_agent.model import Contract, Ident, coerce_enum, require, require_ident

__all__ = [
    "PREFIX",
    "VERSION",
    "WILDCARD",
    "TopicKind",
    "TopicAddress",
    "TOPIC_QOS",
    "TOPIC_RETAIN",
    "CENTRE_TO_EDGE",
    "EDGE_TO_CENTRE",
    "topic",
    "parse_topic",
    "subscription",
    "shared_subscription",
]

PREFIX = "tsc"
VERSION = "v1"  # bumped only with an incompatible change of the layout, not of payloads
WILDCARD = "+"  # MQTT single-level wildcard
_SHARE = "$share"


class TopicKind(str, enum.Enum):
    """The last level of a topic: what the payload is."""

    MEASUREMENTS = "measurements"
    EVENTS = "events"
    PLAN = "plan"
    ACK = "ack"
    STATUS = "status"
    HEARTBEAT = "heartbeat"


#: QoS to publish (and subscribe) each kind with.
TOPIC_QOS: Mapping[TopicKind, int] = MappingProxyType({
    TopicKind.MEASUREMENTS: 1,
    TopicKind.EVENTS: 1,
    TopicKind.PLAN: 1,
    TopicKind.ACK: 1,
    TopicKind.STATUS: 1,
    TopicKind.HEARTBEAT: 0,
})

#: Whether the broker keeps the last message of each kind for late subscribers.
TOPIC_RETAIN: Mapping[TopicKind, bool] = MappingProxyType({
    TopicKind.MEASUREMENTS: False,
    TopicKind.EVENTS: False,
    TopicKind.PLAN: True,
    TopicKind.ACK: False,
    TopicKind.STATUS: True,
    TopicKind.HEARTBEAT: False,
})

#: Kinds the centre publishes and an edge subscribes to.
CENTRE_TO_EDGE: frozenset[TopicKind] = frozenset({TopicKind.PLAN, TopicKind.HEARTBEAT})
#: Kinds an edge publishes and the centre subscribes to.
EDGE_TO_CENTRE: frozenset[TopicKind] = frozenset(TopicKind) - CENTRE_TO_EDGE


class TopicAddress(Contract, kw_only=True):
    """Where a topic points: a site, an intersection of it and the kind of payload."""

    site: Ident
    intersection: Ident
    kind: TopicKind

    def __post_init__(self) -> None:
        require_ident(self.site, "topic.site")
        require_ident(self.intersection, "topic.intersection")
        coerce_enum(self, "kind", TopicKind, "topic.kind")

    @property
    def topic(self) -> str:
        """The topic name of this address."""
        return f"{PREFIX}/{VERSION}/{self.site}/{self.intersection}/{self.kind.value}"

    def __str__(self) -> str:
        return self.topic


def topic(site: str, intersection: str, kind: TopicKind | str) -> str:
    """The topic name ``tsc/v1/{site}/{intersection}/{kind}``; ValueError names a bad part."""
    return TopicAddress(site=site, intersection=intersection, kind=kind).topic


def parse_topic(name: str) -> TopicAddress:
    """Split a concrete topic name (no wildcards) into its address.

    Raises ``ValueError`` naming what is wrong: the prefix, the version, the number of levels,
    the site, the intersection or the kind.
    """
    require(isinstance(name, str), "topic", f"must be text, got {name!r}")
    parts = name.split("/")
    require(parts[0] == PREFIX, "topic.prefix", f"must be {PREFIX!r}, got {parts[0]!r} in {name!r}")
    require(len(parts) > 1 and parts[1] == VERSION, "topic.version",
            f"must be {VERSION!r}, got {parts[1] if len(parts) > 1 else None!r} in {name!r}")
    require(len(parts) == 5, "topic", f"must have 5 levels {PREFIX}/{VERSION}/site/"
            f"intersection/kind, got {len(parts)} in {name!r}")
    return TopicAddress(site=parts[2], intersection=parts[3], kind=parts[4])


def subscription(site: str = WILDCARD, intersection: str = WILDCARD,
                 kind: TopicKind | str = WILDCARD) -> str:
    """A topic filter; each level is either a concrete value or the ``+`` wildcard.

    ``subscription(kind=TopicKind.MEASUREMENTS)`` is what the centre subscribes to;
    ``subscription(site, intersection, TopicKind.PLAN)`` is an edge's plan topic.
    """
    levels = [PREFIX, VERSION]
    for value, field in ((site, "subscription.site"),
                         (intersection, "subscription.intersection")):
        if value != WILDCARD:
            require_ident(value, field)
        levels.append(value)
    if kind != WILDCARD:
        try:
            kind = TopicKind(kind).value
        except ValueError:
            allowed = ", ".join(repr(k.value) for k in TopicKind)
            raise ValueError(f"subscription.kind: must be '+' or one of {allowed}, "
                             f"got {kind!r}") from None
    levels.append(kind)
    return "/".join(levels)


def shared_subscription(group: str, topic_filter: str) -> str:
    """An MQTT 5 shared subscription ``$share/{group}/{filter}``.

    Replicas of a central service that subscribe with the same group receive each message
    once between them, which is how the optimizer scales out (DESIGN.md, real parts).
    """
    # The share name may not contain '/', '+' or '#' (MQTT 5, 4.8.2); Ident guarantees that.
    require_ident(group, "shared_subscription.group")
    require(isinstance(topic_filter, str) and topic_filter != "", "shared_subscription.filter",
            f"must be a non-empty topic filter, got {topic_filter!r}")
    require(not topic_filter.startswith(_SHARE + "/"), "shared_subscription.filter",
            f"is already a shared subscription: {topic_filter!r}")
    return f"{_SHARE}/{group}/{topic_filter}"
