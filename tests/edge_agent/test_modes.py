"""The edge's mode state machine: every state x event pair, timeouts, log-once, properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.messages import EdgeMode
from edge_agent.modes import (
    EVENT_TYPES, Change, ControllerFault, ControllerOk, FaultCleared, HeartbeatReceived,
    ModeConfig, ModeMachine, ModeState, OverrideExpired, PlanActivated, SafeBoundary, Tick,
    Transition, initial_state, step,
)
from edge_agent.plan import PlanSource

S, L, C, O, F = (EdgeMode.STARTUP, EdgeMode.LOCAL_FALLBACK, EdgeMode.CENTRAL, EdgeMode.OVERRIDE,
                 EdgeMode.FAULT)
CFG = ModeConfig(heartbeat_timeout_s=30.0, good_heartbeats_to_resume=3, startup_grace_s=60.0)
T0 = 1000.0
ADAPTIVE, OVERRIDE = PlanSource.ADAPTIVE, PlanSource.OVERRIDE


def run(events, state: ModeState | None = None) -> tuple[ModeState, list[Transition]]:
    state = initial_state(T0) if state is None else state
    log: list[Transition] = []
    for event in events:
        state, out = step(state, event, CFG)
        log.extend(out)
    return state, log


# --- every state x event pair -------------------------------------------------------------
# Each situation is reached through the public events, so the table also tests the paths.
_TO_CENTRAL = [ControllerOk(1001), Tick(1061), SafeBoundary(1062),
               PlanActivated(1063, 7, ADAPTIVE), HeartbeatReceived(1064),
               HeartbeatReceived(1065), HeartbeatReceived(1066), SafeBoundary(1067)]
SITUATIONS = {
    "STARTUP": [],
    "STARTUP>LOCAL": _TO_CENTRAL[:2],
    "LOCAL": _TO_CENTRAL[:3],
    "LOCAL>CENTRAL": _TO_CENTRAL[:7],
    "CENTRAL": _TO_CENTRAL,
    "CENTRAL>LOCAL": _TO_CENTRAL + [Tick(1097)],  # 31 s without a heartbeat
    "OVERRIDE": _TO_CENTRAL + [PlanActivated(1068, 8, OVERRIDE, 1568), SafeBoundary(1068)],
    "OVERRIDE>LOCAL": _TO_CENTRAL + [PlanActivated(1068, 8, OVERRIDE, 1568),
                                     SafeBoundary(1068), OverrideExpired(1069)],
    "FAULT": _TO_CENTRAL + [ControllerFault(1068, "alarm")],
}
EVENTS = {
    "controller_ok": lambda t: ControllerOk(t),
    "controller_fault": lambda t: ControllerFault(t, "alarm"),
    "heartbeat": lambda t: HeartbeatReceived(t),
    "tick": lambda t: Tick(t),
    "plan_adaptive": lambda t: PlanActivated(t, 20, ADAPTIVE),
    "plan_override": lambda t: PlanActivated(t, 21, OVERRIDE, t + 300),
    "override_expired": lambda t: OverrideExpired(t),
    "fault_cleared": lambda t: FaultCleared(t),
    "safe_boundary": lambda t: SafeBoundary(t),
}
# (mode, pending) after the event, one row per situation, columns in EVENTS order.
EXPECTED = {
    "STARTUP": [(S, None), (F, None), (S, None), (S, None), (S, None), (S, None), (S, None),
                (S, None), (S, None)],
    "STARTUP>LOCAL": [(S, L), (F, None), (S, L), (S, L), (S, L), (S, O), (S, L), (S, L),
                      (L, None)],
    "LOCAL": [(L, None), (F, None), (L, None), (L, None), (L, None), (L, O), (L, None),
              (L, None), (L, None)],
    "LOCAL>CENTRAL": [(L, C), (F, None), (L, C), (L, C), (L, C), (L, O), (L, C), (L, C),
                      (C, None)],
    "CENTRAL": [(C, None), (F, None), (C, None), (C, None), (C, None), (C, O), (C, None),
                (C, None), (C, None)],
    "CENTRAL>LOCAL": [(C, L), (F, None), (C, L), (C, L), (C, L), (C, O), (C, L), (C, L),
                      (L, None)],
    "OVERRIDE": [(O, None), (F, None), (O, None), (O, None), (O, C), (O, None), (O, L),
                 (O, None), (O, None)],
    "OVERRIDE>LOCAL": [(O, L), (F, None), (O, L), (O, L), (O, C), (O, None), (O, L), (O, L),
                       (L, None)],
    "FAULT": [(F, None), (F, None), (F, None), (F, None), (F, None), (F, None), (F, None),
              (S, C), (F, None)],
}


def test_the_tables_cover_every_mode_and_event_type() -> None:
    starting = {run(events)[0].mode for events in SITUATIONS.values()}
    assert starting == set(EdgeMode)
    assert {type(make(1.0)) for make in EVENTS.values()} == set(EVENT_TYPES)
    assert set(EXPECTED) == set(SITUATIONS)
    assert all(len(row) == len(EVENTS) for row in EXPECTED.values())


@pytest.mark.parametrize("situation", list(SITUATIONS))
def test_situations_are_what_they_say(situation: str) -> None:
    state, _ = run(SITUATIONS[situation])
    mode, _, pending = situation.partition(">")
    expected = {"STARTUP": S, "LOCAL": L, "CENTRAL": C, "OVERRIDE": O, "FAULT": F}
    assert state.mode == expected[mode]
    assert state.pending == (expected[pending] if pending else None)


@pytest.mark.parametrize("situation,event", [(s, e) for s in SITUATIONS for e in EVENTS])
def test_every_state_event_pair(situation: str, event: str) -> None:
    before, _ = run(SITUATIONS[situation])
    after, out = step(before, EVENTS[event](before.t + 1.0), CFG)
    assert (after.mode, after.pending) == EXPECTED[situation][list(EVENTS).index(event)]
    # Records name exactly what changed: nothing for a no-op pair.
    if (after.mode, after.pending) == (before.mode, before.pending):
        assert out == ()
    if after.mode != before.mode:
        assert out[0].change == Change.ENTERED and (out[0].previous, out[0].mode) == \
            (before.mode, after.mode)


# --- timeouts, with the clock injected as event times --------------------------------------
def test_heartbeat_timeout_is_strictly_longer_than_the_configured_time() -> None:
    central, _ = run(SITUATIONS["CENTRAL"])  # last heartbeat at 1066
    at_limit, out = step(central, Tick(1096.0), CFG)
    assert (at_limit.mode, at_limit.pending, out) == (C, None, ())
    late, out = step(at_limit, Tick(1096.01), CFG)
    assert late.pending == L
    assert out == (Transition(1096.01, Change.REQUESTED, C, L,
                              "central heartbeat silent for 30.0 s (timeout 30 s)"),)
    # The change waits for the boundary: ticks do not switch the plan mid-cycle.
    later, out = step(late, Tick(1200.0), CFG)
    assert (later.mode, out) == (C, ())
    local, out = step(later, SafeBoundary(1201.0), CFG)
    assert local.mode == L and out[0].change == Change.ENTERED


def test_recovery_needs_consecutive_heartbeats_each_within_the_timeout() -> None:
    local, _ = run(SITUATIONS["LOCAL"] + [PlanActivated(1063, 7, ADAPTIVE)])
    beats = [HeartbeatReceived(t) for t in (1070, 1080, 1111, 1120)]  # 31 s gap after 1080
    state, _ = run(beats, local)
    assert state.pending is None and state.good_heartbeats == 2
    state, out = step(state, HeartbeatReceived(1130), CFG)
    assert state.pending == C and out[0].change == Change.REQUESTED
    state, _ = step(state, SafeBoundary(1131), CFG)
    assert state.mode == C


def test_a_short_silence_is_withdrawn_before_the_boundary() -> None:
    pending, _ = run(SITUATIONS["CENTRAL>LOCAL"])
    state, log = run([HeartbeatReceived(1098), HeartbeatReceived(1099)], pending)
    assert state.pending == L and log == []
    state, out = step(state, HeartbeatReceived(1100), CFG)
    assert (state.mode, state.pending) == (C, None)
    assert [t.change for t in out] == [Change.WITHDRAWN]
    assert out[0].mode == L


def test_startup_waits_for_the_centre_for_the_grace_time() -> None:
    state, _ = run([ControllerOk(1001), Tick(1059.9)])
    assert (state.mode, state.pending) == (S, None)
    state, out = step(state, Tick(1060.0), CFG)
    assert state.pending == L and out[0].reason == "no heartbeat from the centre"
    # A centre that answers in time takes the edge from STARTUP straight to CENTRAL.
    state, _ = run([ControllerOk(1001), HeartbeatReceived(1002), HeartbeatReceived(1003),
                    HeartbeatReceived(1004), PlanActivated(1005, 3, ADAPTIVE),
                    SafeBoundary(1006)])
    assert state.mode == C


def test_startup_without_a_controller_never_leaves() -> None:
    state, log = run([Tick(5000.0), SafeBoundary(5001.0)])
    assert (state.mode, state.pending, log) == (S, None, [])


def test_expiries_of_central_and_override_plans() -> None:
    state, _ = run(SITUATIONS["CENTRAL"] + [HeartbeatReceived(1070),
                                            PlanActivated(1071, 9, ADAPTIVE, 1080)])
    assert state.pending is None
    state, out = step(state, Tick(1080.0), CFG)
    assert state.pending == L and out[0].reason == "central plan 9 expired at 1080.0"
    override, _ = run(SITUATIONS["OVERRIDE"])
    state, out = step(override, Tick(1568.0), CFG)  # the expiry itself ends the override
    assert state.pending == L and out[0].reason == "central heartbeat silent for 502.0 s " \
                                                   "(timeout 30 s)"


def test_reasons_name_what_is_missing() -> None:
    state, out = step(run(SITUATIONS["OVERRIDE"])[0], OverrideExpired(1069), CFG)
    assert out[0].reason == "no central plan in force"
    state, out = step(run(SITUATIONS["LOCAL"])[0], PlanActivated(1063, 7, ADAPTIVE), CFG)
    state, out = step(state, HeartbeatReceived(1064), CFG)
    state, out = step(state, PlanActivated(1065, 8, OVERRIDE, 1100), CFG)
    state, out = step(state, OverrideExpired(1066), CFG)  # override gone, centre not back
    assert out[-1].reason == "1 of 3 consecutive heartbeats"
    state, out = step(run(SITUATIONS["LOCAL"])[0], PlanActivated(1063, 9, OVERRIDE, 2000), CFG)
    assert out[0].reason == "override plan 9 in force until 2000.0"
    assert str(out[0]) == "mode requested: local_fallback -> override (override plan 9 in " \
                          "force until 2000.0)"


# --- FAULT ----------------------------------------------------------------------------------
def test_fault_is_entered_at_once_from_any_state_and_drops_a_pending_change() -> None:
    for situation in SITUATIONS:
        before, _ = run(SITUATIONS[situation])
        after, out = step(before, ControllerFault(before.t + 1, "flash"), CFG)
        assert (after.mode, after.pending) == (F, None)
        if before.mode != F:
            assert out == (Transition(before.t + 1, Change.ENTERED, before.mode, F,
                                      "controller fault: flash"),)


def test_fault_is_left_only_when_cleared_and_restarts() -> None:
    state, _ = run(SITUATIONS["FAULT"])
    state, log = run([ControllerOk(1070), ControllerFault(1071, "again"), SafeBoundary(1072),
                      Tick(9000)], state)
    assert state.mode == F and log == [] and state.fault_reason == "alarm"
    state, out = step(state, FaultCleared(9001), CFG)
    assert (state.mode, state.since, state.controller_ok) == (S, 9001, True)
    assert out[0] == Transition(9001, Change.ENTERED, F, S, "controller fault cleared")
    state, out = step(state, Tick(9061), CFG)  # the centre went quiet meanwhile
    assert state.pending == L


# --- log once ---------------------------------------------------------------------------------
def test_entering_and_leaving_fallback_and_fault_are_reported_once() -> None:
    events = list(_TO_CENTRAL)
    t = 1067.0
    for _ in range(500):  # the centre falls silent; the edge ticks every second
        t += 1
        events.append(Tick(t))
    events += [SafeBoundary(t + 1)] + [Tick(t + 2 + k) for k in range(100)]
    t += 200
    events += [PlanActivated(t, 30, ADAPTIVE)]
    events += [HeartbeatReceived(t + k) for k in range(1, 20)]
    events += [SafeBoundary(t + 20)] + [Tick(t + 21 + k) for k in range(10)]
    events += [ControllerFault(t + 40 + k, "alarm") for k in range(20)]
    events += [Tick(t + 70 + k) for k in range(20)] + [FaultCleared(t + 100)]
    _, log = run(events)
    entered = [x for x in log if x.change == Change.ENTERED]
    assert sum(x.mode == L for x in entered) == 2  # once at start-up, once after the silence
    assert sum(x.previous == L for x in entered) == 2
    assert sum(x.mode == F for x in entered) == 1
    assert sum(x.previous == F for x in entered) == 1
    assert sum(x.change == Change.REQUESTED and x.mode == L for x in log) == 2


# --- validation -----------------------------------------------------------------------------
@pytest.mark.parametrize("make,match", [
    (lambda: Tick(-1.0), "Tick.t"),
    (lambda: Tick(math.nan), "Tick.t"),
    (lambda: ControllerFault(1.0, ""), "ControllerFault.reason"),
    (lambda: PlanActivated(1.0, 0, ADAPTIVE), "PlanActivated.plan_id"),
    (lambda: PlanActivated(1.0, 1, "adaptive"), "PlanActivated.source"),
    (lambda: PlanActivated(1.0, 1, OVERRIDE), "an override plan must carry an expiry"),
    (lambda: PlanActivated(5.0, 1, ADAPTIVE, 5.0), "PlanActivated.expiry"),
    (lambda: PlanActivated(5.0, 1, ADAPTIVE, math.inf), "PlanActivated.expiry"),
    (lambda: ModeConfig(heartbeat_timeout_s=0.0), "modes.heartbeat_timeout_s"),
    (lambda: ModeConfig(good_heartbeats_to_resume=0), "modes.good_heartbeats_to_resume"),
    (lambda: ModeConfig(startup_grace_s=-1.0), "modes.startup_grace_s"),
    (lambda: initial_state(math.inf), "^t:"),
])
def test_bad_values_name_the_field(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_time_never_goes_backwards_and_unknown_events_are_refused() -> None:
    state, _ = run([Tick(1100.0)])
    with pytest.raises(ValueError, match="time went backwards"):
        step(state, HeartbeatReceived(1099.0), CFG)
    with pytest.raises(TypeError, match="not a mode event"):
        step(state, "tick", CFG)  # type: ignore[arg-type]


def test_machine_holds_the_state() -> None:
    machine = ModeMachine(T0, CFG)
    assert (machine.mode, machine.pending) == (S, None)
    assert machine.handle(ControllerOk(1001)) == ()
    out = machine.handle(Tick(1100))
    assert machine.pending == L and out[0].change == Change.REQUESTED
    machine.handle(SafeBoundary(1101))
    assert machine.mode == L and machine.state.since == 1101
    assert ModeMachine(0.0).config == ModeConfig()


# --- properties -----------------------------------------------------------------------------
def oracle(history, mode_now: EdgeMode) -> EdgeMode:
    """The mode the rules call for after ``history`` (outside FAULT), restated plainly."""
    ok, faulted, since, beats, last, central, override = False, False, T0, 0, None, None, None
    t = T0
    for e in history:
        t = e.t
        if isinstance(e, ControllerOk):
            ok = True
        elif isinstance(e, ControllerFault):
            ok, faulted = False, True
        elif isinstance(e, FaultCleared) and faulted:
            ok, faulted, since = True, False, e.t
        elif isinstance(e, HeartbeatReceived):
            beats = beats + 1 if last is not None and e.t - last <= 30.0 else 1
            last = e.t
        elif isinstance(e, PlanActivated):
            until = math.inf if e.expiry is None else e.expiry
            central, override = (None, until) if e.source == OVERRIDE else (until, None)
        elif isinstance(e, OverrideExpired):
            override = None
    if not ok:
        return S
    if override is not None and t < override:
        return O
    if last is not None and beats >= 3 and t - last <= 30.0 and central is not None \
            and t < central:
        return C
    return S if mode_now == S and t - since < 60.0 else L


@st.composite
def histories(draw):
    kinds = st.sampled_from(["ok", "fault", "cleared", "beat", "beat", "beat", "tick",
                             "adaptive", "override", "expired", "boundary", "boundary"])
    t, out = T0, []
    for kind in draw(st.lists(kinds, max_size=60)):
        t += draw(st.sampled_from([0.0, 1.0, 5.0, 20.0, 31.0, 90.0]))
        out.append({
            "ok": lambda: ControllerOk(t), "fault": lambda: ControllerFault(t, "x"),
            "cleared": lambda: FaultCleared(t), "beat": lambda: HeartbeatReceived(t),
            "tick": lambda: Tick(t), "adaptive": lambda: PlanActivated(
                t, 1, ADAPTIVE, draw(st.sampled_from([None, t + 100.0]))),
            "override": lambda: PlanActivated(t, 2, OVERRIDE, t + 100.0),
            "expired": lambda: OverrideExpired(t), "boundary": lambda: SafeBoundary(t),
        }[kind]())
    return out


@settings(max_examples=400, deadline=None)
@given(histories())
def test_modes_follow_the_rules_and_change_only_where_allowed(history) -> None:
    state = initial_state(T0)
    faulted = False
    for k, event in enumerate(history):
        before = state
        state, out = step(state, event, CFG)
        faulted = (faulted or isinstance(event, ControllerFault)) and \
            not (faulted and isinstance(event, FaultCleared))
        assert (state.mode == F) == faulted
        assert state.pending != state.mode
        if state.mode != before.mode:  # plans switch only at a boundary; FAULT at once
            assert isinstance(event, (SafeBoundary, ControllerFault, FaultCleared))
            assert [x for x in out if x.change == Change.ENTERED][-1].mode == state.mode
        else:
            assert all(x.change != Change.ENTERED for x in out)
        if state.pending != before.pending and state.pending is not None:
            assert out[-1].change == Change.REQUESTED and out[-1].mode == state.pending
        if state.pending == before.pending and state.mode == before.mode:
            assert out == ()  # log once: nothing new, nothing reported
        if not faulted:  # what runs, or is waiting to, is what the rules call for
            assert (state.pending or state.mode) == oracle(history[:k + 1], state.mode)
