"""The MQTT topic layout: build/parse round trip, bad topics, filters and the QoS table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.topics import (
    CENTRE_TO_EDGE,
    EDGE_TO_CENTRE,
    TOPIC_QOS,
    TOPIC_RETAIN,
    TopicAddress,
    TopicKind,
    parse_topic,
    shared_subscription,
    subscription,
    topic,
)

IDENT_ALPHABET = "ABCXYZabcxyz0189_.:-"
idents = st.text(alphabet=IDENT_ALPHABET, min_size=1, max_size=64)


@given(site=idents, intersection=idents, kind=st.sampled_from(TopicKind))
def test_topic_round_trip(site: str, intersection: str, kind: TopicKind) -> None:
    name = topic(site, intersection, kind)
    assert name == f"tsc/v1/{site}/{intersection}/{kind.value}"
    address = parse_topic(name)
    assert address == TopicAddress(site=site, intersection=intersection, kind=kind)
    assert address.kind is kind
    assert str(address) == address.topic == name


def test_topic_accepts_kind_as_text() -> None:
    assert topic("s1", "i-7", "plan") == "tsc/v1/s1/i-7/plan"


@pytest.mark.parametrize(
    ("site", "intersection", "kind", "field"),
    [
        ("", "i1", "plan", "topic.site"),
        ("s/1", "i1", "plan", "topic.site"),
        ("s1", "+", "plan", "topic.intersection"),
        ("s1", "#", "plan", "topic.intersection"),
        ("s1", "i 1", "plan", "topic.intersection"),
        ("s1", "i1", "plans", "topic.kind"),
        ("s1", "i1", "+", "topic.kind"),
    ],
)
def test_topic_rejects_bad_parts(site: str, intersection: str, kind: str, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        topic(site, intersection, kind)


@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("mqtt/v1/s1/i1/plan", "topic.prefix"),
        ("", "topic.prefix"),
        ("/tsc/v1/s1/i1/plan", "topic.prefix"),
        ("tsc", "topic.version"),
        ("tsc/v2/s1/i1/plan", "topic.version"),
        ("tsc/V1/s1/i1/plan", "topic.version"),
        ("tsc/v1/s1/i1", "topic"),
        ("tsc/v1/s1/i1/plan/extra", "topic"),
        ("tsc/v1/s1/i1/plan/", "topic"),
        ("tsc/v1//i1/plan", "topic.site"),
        ("tsc/v1/+/i1/plan", "topic.site"),
        ("tsc/v1/s1/#/plan", "topic.intersection"),
        ("tsc/v1/s1/i1/nonsense", "topic.kind"),
        ("tsc/v1/s1/i1/+", "topic.kind"),
    ],
)
def test_parse_topic_names_what_is_wrong(name: str, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        parse_topic(name)


def test_parse_topic_rejects_non_text() -> None:
    with pytest.raises(ValueError, match="^topic: must be text"):
        parse_topic(b"tsc/v1/s1/i1/plan")  # type: ignore[arg-type]


def test_topic_address_is_frozen() -> None:
    address = parse_topic("tsc/v1/s1/i1/ack")
    with pytest.raises(AttributeError):
        address.site = "s2"  # type: ignore[misc]


def test_subscription_filters() -> None:
    assert subscription() == "tsc/v1/+/+/+"
    assert subscription(kind=TopicKind.MEASUREMENTS) == "tsc/v1/+/+/measurements"
    assert subscription("s1", kind="status") == "tsc/v1/s1/+/status"
    assert subscription("s1", "i1", TopicKind.PLAN) == "tsc/v1/s1/i1/plan"
    assert subscription(intersection="i1") == "tsc/v1/+/i1/+"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"site": "#"}, "subscription.site"),
        ({"site": "a/b"}, "subscription.site"),
        ({"intersection": ""}, "subscription.intersection"),
        ({"kind": "#"}, "subscription.kind"),
        ({"kind": "plans"}, "subscription.kind"),
    ],
)
def test_subscription_rejects_bad_levels(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        subscription(**kwargs)


def test_shared_subscription() -> None:
    flt = subscription(kind=TopicKind.MEASUREMENTS)
    assert shared_subscription("optimizer", flt) == "$share/optimizer/tsc/v1/+/+/measurements"


@pytest.mark.parametrize(
    ("group", "flt", "field"),
    [
        ("opt/1", "tsc/v1/+/+/ack", "shared_subscription.group"),
        ("+", "tsc/v1/+/+/ack", "shared_subscription.group"),
        ("", "tsc/v1/+/+/ack", "shared_subscription.group"),
        ("opt", "", "shared_subscription.filter"),
        ("opt", None, "shared_subscription.filter"),
        ("opt", "$share/other/tsc/v1/+/+/ack", "shared_subscription.filter"),
    ],
)
def test_shared_subscription_rejects(group: str, flt: str, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field.replace('$', '[$]')}: "):
        shared_subscription(group, flt)


def test_qos_and_retain_table() -> None:
    assert set(TOPIC_QOS) == set(TopicKind) == set(TOPIC_RETAIN)
    assert TOPIC_QOS[TopicKind.MEASUREMENTS] == 1
    assert TOPIC_QOS[TopicKind.PLAN] == 1 and TOPIC_RETAIN[TopicKind.PLAN] is True
    assert TOPIC_QOS[TopicKind.ACK] == 1
    assert TOPIC_RETAIN[TopicKind.STATUS] is True
    assert TOPIC_QOS[TopicKind.HEARTBEAT] == 0
    retained = {k for k, keep in TOPIC_RETAIN.items() if keep}
    assert retained == {TopicKind.PLAN, TopicKind.STATUS}
    with pytest.raises(TypeError):
        TOPIC_QOS[TopicKind.PLAN] = 0  # type: ignore[index]


def test_directions_partition_the_kinds() -> None:
    assert CENTRE_TO_EDGE == {TopicKind.PLAN, TopicKind.HEARTBEAT}
    assert CENTRE_TO_EDGE | EDGE_TO_CENTRE == set(TopicKind)
    assert not CENTRE_TO_EDGE & EDGE_TO_CENTRE
