"""Plan admission: signature, address, replay, expiry and guard checks; staging at boundaries."""

from __future__ import annotations

import functools
import math

import msgspec
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from edge_agent.admission import (
    BOUNDARY_EPS_S, PlanBook, admit, cycle_zero, in_switch_window, last_cycle_boundary,
    next_cycle_boundary, switch_window,
)
from edge_agent.cli import load_plan
from edge_agent.config import load_intersection
from edge_agent.messages import Ack, PlanMessage, ViolationRecord, decode, encode
from edge_agent.plan import PlanSource, TimingPlan
from edge_agent.signatures import generate_key, load_private_key, load_public_key, sign_plan

from conftest import CONFIGS

SITE = "downtown"
NEMA8 = load_intersection(CONFIGS / "nema-8phase.toml")
NEMA4 = load_intersection(CONFIGS / "nema-4phase.toml")
PLAN = load_plan(CONFIGS / "plans" / "main-oak-am-peak.toml")
BAD = load_plan(CONFIGS / "plans" / "main-oak-bad-yellow.toml")
_private, _public = generate_key()
KEY, TRUSTED = load_private_key(_private), {"central": load_public_key(_public)}
A = PLAN.activation  # 2026-12-01 08:00 UTC, a multiple of the 120 s cycle
# Phase 2 (the offset reference) starts 15 s into the ring; offset 30 -> local zero at 15 s.
ZERO = 15.0


def plan(plan_id: int = 2, **changes) -> TimingPlan:
    return msgspec.structs.replace(PLAN, plan_id=plan_id, **changes)


def signed(p: TimingPlan, site: str = SITE, key=KEY, key_id: str = "central") -> PlanMessage:
    # Through the wire, as the edge receives it.
    return decode(encode(sign_plan(site, p, key, key_id)), PlanMessage)


def book(**kwargs) -> PlanBook:
    return PlanBook(SITE, NEMA8, TRUSTED, **kwargs)


# --- cycle boundaries -------------------------------------------------------------------------
def test_boundaries_follow_the_system_cycle_clock_and_the_offset() -> None:
    assert cycle_zero(PLAN) == ZERO
    assert A % PLAN.cycle == 0.0
    assert next_cycle_boundary(PLAN, A) == A + ZERO
    assert next_cycle_boundary(PLAN, A + ZERO) == A + ZERO
    assert next_cycle_boundary(PLAN, A + ZERO - BOUNDARY_EPS_S / 2) == A + ZERO
    assert next_cycle_boundary(PLAN, A + ZERO + 0.01) == A + ZERO + 120
    assert last_cycle_boundary(PLAN, A) == A + ZERO - 120
    assert last_cycle_boundary(PLAN, A + ZERO + 119.9) == A + ZERO
    # An offset that puts the reference phase's green before its ring start wraps around.
    assert cycle_zero(plan(offset=5.0)) == 110.0


def test_switch_window_ends_before_any_ring_can_be_in_clearance() -> None:
    # Phases 1 and 5 open the rings with 9.5 s of green.
    assert switch_window(PLAN, 2.0) == 2.0
    assert switch_window(PLAN, 30.0) == 9.5
    assert in_switch_window(PLAN, A + ZERO, 2.0)
    assert in_switch_window(PLAN, A + ZERO + 1.99, 2.0)
    assert not in_switch_window(PLAN, A + ZERO + 2.0, 2.0)
    assert not in_switch_window(PLAN, A + ZERO - 0.5, 2.0)
    assert in_switch_window(PLAN, A + ZERO + 9.0, 30.0)
    assert not in_switch_window(PLAN, A + ZERO + 9.5, 30.0)


def test_a_plan_without_its_offset_reference_has_no_boundaries() -> None:
    with pytest.raises(ValueError, match="offset_reference: phase 9 is not in plan 2"):
        cycle_zero(plan(offset_reference=9))


@settings(max_examples=300, deadline=None)
@given(t=st.floats(0.0, 4e9), offset=st.integers(0, 1199).map(lambda n: n / 10))
def test_boundaries_are_ring_starts(t: float, offset: float) -> None:
    p = plan(offset=offset)
    b = next_cycle_boundary(p, t)
    assert t - BOUNDARY_EPS_S <= b < t + p.cycle
    # At a boundary the reference phase is ZERO s into its ring: its green starts at b + 15,
    # which is ``offset`` after a zero of the system cycle clock.
    assert math.isclose((b + ZERO - offset) % p.cycle, 0.0, abs_tol=1e-4) or \
        math.isclose((b + ZERO - offset) % p.cycle, p.cycle, abs_tol=1e-4)
    assert last_cycle_boundary(p, t) <= t + BOUNDARY_EPS_S


# --- admission checks -------------------------------------------------------------------------
def offer(message: PlanMessage, now: float = A - 600, last: int = 1, last_accepted=None):
    return admit(message, now, site=SITE, intersection=NEMA8, trusted=TRUSTED,
                 last_plan_id=last, last_accepted=last_accepted)


def test_a_good_plan_is_accepted_and_staged() -> None:
    message = signed(plan(2))
    result = offer(message)
    assert result.ack == Ack(site=SITE, intersection_id="main-oak", plan_id=2, t=A - 600,
                             accepted=True)
    assert result.plan == message.plan


@pytest.mark.parametrize("message,reason", [
    (signed(plan(2), key=load_private_key(generate_key()[0])),
     "signature does not verify with trusted key 'central'"),
    (signed(plan(2), key_id="other"), "signature does not verify with trusted key 'other' "
                                      "(unknown key)"),
    (signed(plan(2), site="uptown"), "plan is for site 'uptown', this edge is 'downtown'"),
    (signed(plan(2, intersection_id="elm-1st")),
     "plan is for intersection 'elm-1st', this edge is 'main-oak'"),
    (signed(plan(1)), "plan id 1 is not greater than the last accepted 1 (stale or replayed)"),
    (signed(plan(2, activation=A - 7200, expiry=A - 600)),
     "plan expired at 1796111400.0 (now 1796111400.0)"),
    (signed(plan(2, source=PlanSource.OVERRIDE, expiry=None)),
     "an override plan must carry an expiry"),
])
def test_rejections_give_the_reason_and_stage_nothing(message: PlanMessage, reason: str) -> None:
    result = offer(message)
    assert result.plan is None
    assert not result.ack.accepted and result.ack.reason == reason
    assert (result.ack.site, result.ack.intersection_id) == (SITE, "main-oak")


def test_an_altered_plan_fails_its_signature() -> None:
    message = signed(plan(2))
    altered = msgspec.structs.replace(message, plan=plan(2, offset=31.0))
    assert offer(altered).ack.reason.startswith("signature does not verify")


def test_a_plan_failing_the_guard_is_rejected_with_its_violations() -> None:
    result = offer(signed(msgspec.structs.replace(BAD, plan_id=5)))
    assert not result.ack.accepted and result.plan is None
    assert result.ack.reason == "failed the safety guard: 1 violation(s)"
    assert result.ack.violations == (ViolationRecord(
        rule="yellow-floor", message="yellow 2.9 s < 3.0 s (MUTCD minimum)", phase=3,
        value=2.9, limit=3.0),)


def test_a_redelivered_plan_is_acknowledged_again_without_restaging() -> None:
    message = signed(plan(2))
    result = offer(message, last=2, last_accepted=signed(plan(2)))
    assert result.ack.accepted and result.plan is None
    assert result.ack.reason == "duplicate of the accepted plan; nothing changed"
    # The same id with other content is a replay, not a redelivery.
    other = offer(signed(plan(2, offset=40.0)), last=2, last_accepted=message)
    assert not other.ack.accepted and "stale or replayed" in other.ack.reason


# --- the plan book ----------------------------------------------------------------------------
def test_staged_plan_takes_effect_at_the_first_boundary_after_activation() -> None:
    b = book(last_plan_id=1)
    message = signed(plan(2))
    assert b.offer(message, A - 600).accepted
    assert (b.staged, b.in_force, b.last_plan_id) == (message.plan, None, 2)
    assert b.due(A - 600) is None  # activation not reached
    assert b.due(A) is None  # activation reached, but mid-cycle
    assert b.due(A + ZERO - 0.5) is None
    assert b.due(A + ZERO + 0.5) == message.plan
    assert (b.in_force, b.staged) == (message.plan, None)
    assert b.due(A + ZERO + 1.0) is None  # handed over once
    assert b.active(A + ZERO + 1) == message.plan
    assert b.active(PLAN.expiry) is None  # expired: the runtime falls back
    # Redelivery of the retained plan later changes nothing.
    assert b.offer(message, A + 100).reason.startswith("duplicate")
    assert b.staged is None and b.take_dropped() == []


def test_a_late_look_waits_for_the_next_boundary() -> None:
    b = book()
    b.offer(signed(plan(2)), A - 600)
    assert b.due(A + ZERO + 2.5) is None  # past the 2 s window: mid-cycle now
    assert b.due(A + ZERO + 120.0) is not None


def test_boundaries_come_from_the_running_plan() -> None:
    # The local plan runs a 100 s cycle with its zero at 0 s (phase 2 starts at 12.5 s).
    local = plan(1, cycle=100.0, offset=12.5, source=PlanSource.TIME_OF_DAY,
                 rings=tuple(tuple(msgspec.structs.replace(t, split=t.split * 100 / 120)
                                   for t in ring) for ring in PLAN.rings))
    b = book()
    b.offer(signed(plan(2)), A - 600)
    assert cycle_zero(local) == 0.0
    assert b.due(A + ZERO, running=local) is None
    assert b.due(A + 100.5, running=local) is not None


def test_boundaries_come_from_the_plan_in_force_by_default() -> None:
    b = book(in_force=plan(1, offset=0.0))  # zero at 105 s
    assert b.last_plan_id == 1
    b.offer(signed(plan(2)), A - 600)
    assert b.due(A + ZERO) is None
    assert b.due(A + 105.0) is not None


def test_a_rejected_plan_leaves_the_plan_in_force() -> None:
    b = book(in_force=plan(3), last_plan_id=2)
    assert b.last_plan_id == 3
    ack = b.offer(signed(msgspec.structs.replace(BAD, plan_id=9)), A)
    assert not ack.accepted
    assert (b.in_force, b.staged, b.last_plan_id) == (plan(3), None, 3)
    assert b.due(A + ZERO) is None


def test_newer_plans_supersede_staged_ones_and_expired_ones_are_dropped() -> None:
    b = book()
    b.offer(signed(plan(2)), A - 600)
    b.offer(signed(plan(3, expiry=A + 10.0)), A - 500)
    assert b.staged is not None and b.staged.plan_id == 3
    assert b.due(A + 10.0) is None  # expired before its first boundary (A + 15)
    assert b.staged is None
    assert b.take_dropped() == [(2, "superseded by plan 3"),
                                (3, "expired at 1796112010.0 before it could take effect")]
    assert b.take_dropped() == []
    assert b.due(A) is None


def test_book_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="site"):
        PlanBook("down town", NEMA8, TRUSTED)
    with pytest.raises(ValueError, match="intersection: must be an Intersection"):
        PlanBook(SITE, "main-oak", TRUSTED)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="last_plan_id"):
        book(last_plan_id=-1)
    with pytest.raises(ValueError, match="switch_window_s"):
        book(switch_window_s=0.0)
    with pytest.raises(ValueError, match="in_force: plan is for 'main-oak', not 'elm-1st'"):
        PlanBook(SITE, NEMA4, TRUSTED, in_force=PLAN)
    with pytest.raises(ValueError, match="now"):
        book().offer(signed(plan(2)), -1.0)
    with pytest.raises(ValueError, match="now"):
        book().due(math.nan)


# --- properties -------------------------------------------------------------------------------
@st.composite
def offers(draw):
    """A stream of offers (fresh, repeated, stale, forged and unsafe plans) and looks at the
    book, some of them just after a cycle boundary."""
    out = []
    for _ in range(draw(st.integers(1, 25))):
        step = draw(st.sampled_from([0.5, 1.0, 7.0, 60.0, 119.0, 300.0]))
        plan_id = draw(st.integers(1, 12))
        kind = draw(st.sampled_from(["good", "good", "good", "forged", "unsafe", "look",
                                     "boundary", "boundary"]))
        activation = draw(st.sampled_from([A - 7200.0, A - 3000.0, A + 300.0]))
        out.append((step, kind, plan_id, activation))
    return out


_FORGER = load_private_key(generate_key()[0])


@functools.lru_cache(maxsize=None)
def _message(kind: str, plan_id: int, activation: float) -> PlanMessage:
    # Signing and decoding dominate the run time; the same few messages recur.
    p = plan(plan_id, activation=activation, expiry=None)
    if kind == "unsafe":
        p = msgspec.structs.replace(BAD, plan_id=plan_id, activation=activation, expiry=None)
    return signed(p, key=_FORGER if kind == "forged" else KEY)


@settings(max_examples=200, deadline=None)
@given(offers())
def test_only_new_safe_signed_plans_run_and_only_at_boundaries(stream) -> None:
    b = book()
    t, accepted_ids, handed_over = A - 3600.0, [], 0
    for step, kind, plan_id, activation in stream:
        t += step
        before = (b.in_force, b.staged)
        if kind in ("look", "boundary"):
            reference = b.in_force or b.staged
            if kind == "boundary" and reference is not None:
                t = next_cycle_boundary(reference, t) + 0.5
            got = b.due(t)
            if got is not None:
                handed_over += 1
                assert got == before[1] and b.in_force == got and b.staged is None
                assert in_switch_window(reference, t, b.switch_window_s)
                assert last_cycle_boundary(reference, t) >= got.activation - BOUNDARY_EPS_S
            else:
                assert b.in_force == before[0]
            continue
        message = _message(kind, plan_id, activation)
        ack = b.offer(message, t)
        if kind in ("forged", "unsafe"):
            assert not ack.accepted
        if ack.accepted and not ack.reason:
            assert not accepted_ids or plan_id > accepted_ids[-1]
            accepted_ids.append(plan_id)
            assert b.staged == message.plan and b.in_force == before[0]
        else:
            assert (b.in_force, b.staged) == before  # nothing changes on a rejection
        assert b.last_plan_id == (accepted_ids[-1] if accepted_ids else 0)
    event(f"handed over: {min(handed_over, 2)}")
