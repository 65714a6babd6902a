"""The edge runtime, fast: the shipped agent file (keys swapped for a test pair), the virtual
controller's in-memory bank behind a real ModbusLink (loopback client, no sockets), the fake
MQTT link, and a fake clock, so hours of operation take a second or two.

The same behaviour over real mosquitto and a real pymodbus TCP server is in
``test_edge_integration.py``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
from pathlib import Path

import msgspec
import pytest

pytest.importorskip("pymodbus")

from conftest import CONFIGS, without_actuation_coils  # noqa: E402
from edge_agent.admission import in_switch_window, next_cycle_boundary  # noqa: E402
from edge_agent.agent_config import AgentConfig, load_agent_config  # noqa: E402
from edge_agent.errors import DeviceError, PlanRejected  # noqa: E402
from edge_agent.fake_link import FakeLink  # noqa: E402
from edge_agent.messages import (Ack, EdgeMode, Heartbeat, Measurement,  # noqa: E402
                                 PlanMessage)
from edge_agent.modbus_core import Reading as RegisterReading  # noqa: E402
from edge_agent.plan import PhaseTiming, TimingPlan  # noqa: E402
from edge_agent.registers import Alarm, ControllerMode, Signal  # noqa: E402
from edge_agent.runtime import EdgeRuntime, minute_of_day  # noqa: E402
from edge_agent.runtime_agent import Agent  # noqa: E402
from edge_agent.signatures import generate_key, load_private_key, sign_plan  # noqa: E402
from edge_agent.topics import TopicKind, topic  # noqa: E402
from simulation.virtual_controller import VirtualController  # noqa: E402

SITE, X = "downtown", "elm-1st"
T0 = 1_800_000_000.0  # a multiple of 60, 80 and 90: every plan here has a boundary at T0
PRIVATE, PUBLIC = generate_key()
KEY = load_private_key(PRIVATE)


class Clock:
    """The injected clock: POSIX seconds that move only when told."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def agent_file(tmp_path: Path, **central: object) -> Path:
    """The shipped configs, copied, with the test key trusted and the spool in tmp_path."""
    folder = tmp_path / "configs"
    shutil.copytree(CONFIGS, folder)
    (folder / "keys" / "example-central.pub").write_bytes(PUBLIC)
    path = folder / "edge-elm-1st.toml"
    text = path.read_text().replace('spool = "/tmp/tsc-edge-elm-1st.sqlite"',
                                    f'spool = "{tmp_path / "spool.sqlite"}"')
    for key, value in central.items():
        text, found = re.subn(rf"^{key} = \S+", f"{key} = {value}", text, flags=re.M)
        assert found == 1, key
    path.write_text(text)
    return path


def timing(n: int, split: float, yellow: float, lo: float, hi: float,
           walk: float = 0.0, ped: float = 0.0) -> PhaseTiming:
    return PhaseTiming(phase=n, split=split, yellow=yellow, red_clearance=1.5, min_green=lo,
                       max_green=hi, walk=walk, ped_clearance=ped)


def elm_plan(plan_id: int, *, split2: float = 45.0, offset: float = 0.0,
             activation: float = 0.0, yellow4: float = 3.0, source: str = "adaptive",
             **changes: object) -> TimingPlan:
    """An 80 s plan for elm-1st that passes the guard (unless told to break it)."""
    return TimingPlan(
        plan_id=plan_id, intersection_id=X, cycle=80.0, offset=offset, offset_reference=2,
        activation=activation, source=source, author="test",
        rings=((timing(2, split2, 3.5, 8, 50, 7, 11.3), timing(4, 80 - split2, yellow4, 6, 40,
                                                                7, 13.1)),
               (timing(6, split2, 3.5, 8, 50), timing(8, 80 - split2, 3.0, 6, 40))),
        **changes)


def signed(plan: TimingPlan) -> PlanMessage:
    return sign_plan(SITE, plan, KEY, "central")


class Rig:
    """The runtime between the virtual controller's bank and the fake link, on a fake clock."""

    def __init__(self, path: Path, t0: float = T0) -> None:
        self.clock = Clock(t0)
        self.config: AgentConfig = load_agent_config(path)
        self.vc = VirtualController(self.config.register_map,
                                    intersection=self.config.intersection,
                                    clock=self.clock).start(tcp=False)
        self.agent = Agent(self.config, clock=self.clock, client_factory=self.vc.loopback_client,
                           link_factory=FakeLink).start()
        self.rt: EdgeRuntime = self.agent.runtime
        self.link: FakeLink = self.agent.link
        self.bank = self.vc.bank
        self.beats = 0
        self.writes: list[tuple[float, int]] = []  # (time, plan id) of every commit

    def close(self) -> None:
        self.agent.close()
        self.vc.stop()

    def step(self, dt: float = 1.0) -> None:
        self.clock.t += dt
        before = len(self.bank.write_log)
        self.rt.step()
        if any(w.name == "plan_commit" for w in self.bank.write_log[before:]):
            self.writes.append((self.clock.t, int(self.bank.load("plan_id"))))

    def run(self, seconds: float, *, beat_every: float | None = None, dt: float = 1.0) -> None:
        end = self.clock.t + seconds
        while self.clock.t + dt <= end + 1e-9:
            if beat_every is not None and (self.clock.t - T0) % beat_every < dt:
                self.beat()
            self.step(dt)

    def beat(self) -> None:
        self.beats += 1
        self.link.deliver(topic(SITE, X, TopicKind.HEARTBEAT),
                          Heartbeat(site=SITE, seq=self.beats, t=self.clock.t, source="centre"))

    def send(self, message: PlanMessage) -> None:
        self.link.deliver(topic(SITE, X, TopicKind.PLAN), message)

    def sent(self, kind: type) -> list:
        return [m for _, m in self.link.published if isinstance(m, kind)]

    def until(self, condition, limit: float = 400.0, **run) -> None:
        end = self.clock.t + limit
        while not condition():
            assert self.clock.t < end, "condition not reached in time"
            self.run(1.0, **run)

    def plan_registers(self) -> dict[str, float]:
        names = [r.name for r in self.config.register_map.registers
                 if r.signal.value.startswith("plan.") and r.signal != Signal.PLAN_COMMIT]
        return {n: self.bank.load(n) for n in names}


@pytest.fixture
def rig(tmp_path):
    r = Rig(agent_file(tmp_path))
    yield r
    r.close()


def central(rig: Rig, plan: TimingPlan) -> None:
    """Heartbeats and ``plan`` until the agent runs it in CENTRAL."""
    rig.send(signed(plan))
    rig.until(lambda: rig.rt.mode == EdgeMode.CENTRAL and rig.rt.running == plan, beat_every=5)


# --- start-up, local plan -------------------------------------------------------------------
def test_a_silent_centre_at_start_up_gives_the_local_plan_after_the_grace(rig):
    rig.run(30)
    assert rig.rt.mode == EdgeMode.STARTUP and rig.rt.controller_ok
    assert rig.writes == [] and rig.vc.logic.mode == ControllerMode.LOCAL  # nothing written
    assert {w.name for w in rig.bank.write_log} == {"watchdog"}
    rig.run(31)  # startup_grace_s = 60: nothing of ours runs, so no boundary to wait for
    local = rig.config.fallback_plan(minute_of_day(rig.clock.t))
    assert rig.rt.mode == EdgeMode.LOCAL_FALLBACK and rig.rt.running == local
    assert rig.writes == [(T0 + 60, local.plan_id)]
    assert rig.bank.load("plan_cycle") == local.cycle and rig.vc.logic.mode == ControllerMode.REMOTE
    status = rig.link.statuses[-1]
    assert (status.mode, status.controller_ok, status.plan_id) == \
        (EdgeMode.LOCAL_FALLBACK, True, local.plan_id)
    assert "no heartbeat" in status.detail


def test_the_watchdog_is_kicked_every_poll(rig):
    rig.run(5)
    kicks = [w.value for w in rig.bank.write_log if w.name == "watchdog"]
    assert kicks == [1.0, 2.0, 3.0, 4.0, 5.0] and rig.rt.stats.watchdog_kicks == 5


# --- plans from the centre ------------------------------------------------------------------
def test_a_signed_plan_is_acked_and_written_at_a_safe_boundary(rig):
    rig.run(12, beat_every=5)
    plan = elm_plan(7, offset=20.0, activation=T0 + 12)  # boundaries at T0 + 20 + 80 k
    rig.send(signed(plan))
    rig.step()
    ack = rig.sent(Ack)[-1]
    assert (ack.plan_id, ack.accepted) == (7, True) and rig.rt.mode == EdgeMode.STARTUP
    assert rig.writes == []
    rig.run(10, beat_every=5)
    assert rig.writes == [(T0 + 20, 7)] and rig.rt.mode == EdgeMode.CENTRAL
    assert rig.plan_registers()["split_2"] == 45.0 and rig.bank.load("plan_offset") == 20.0
    assert rig.vc.logic.plan is not None and rig.vc.logic.plan.plan_id == 7

    # The next plan waits for a boundary of the running one, never a clearance.
    rig.send(signed(elm_plan(8, split2=40.0, offset=20.0, activation=T0 + 30)))
    rig.run(100, beat_every=5)
    assert rig.writes[-1] == (T0 + 100, 8)
    assert in_switch_window(plan, T0 + 100, rig.rt.book.switch_window_s)
    assert rig.link.statuses[-1].plan_id == 8


def test_polls_that_come_late_still_find_the_boundary(rig):
    # Polls every 7 s (a slow device, a busy box) never land in a 2-s window after the
    # boundaries at T0 + 20 + 80 k; the window follows the polls' spacing, so the plan is
    # written at the first poll after a boundary, while every ring's first green still runs.
    rig.run(12, beat_every=5)
    plan = elm_plan(7, offset=20.0, activation=T0 + 12)
    rig.send(signed(plan))
    rig.run(14, beat_every=7, dt=7.0)
    assert rig.writes == [(T0 + 26, 7)] and rig.rt.mode == EdgeMode.CENTRAL
    assert rig.rt.book.switch_window_s == 14.0
    rig.send(signed(elm_plan(8, split2=40.0, offset=20.0, activation=T0 + 30)))
    rig.run(84, beat_every=7, dt=7.0)
    assert rig.writes[-1] == (T0 + 103, 8)  # boundary at T0 + 100, the next poll
    rig.run(5, beat_every=5)  # polls on time again: the window narrows back
    assert rig.rt.book.switch_window_s == 14.0  # the last 8 spacings include a 7-s one
    rig.run(5, beat_every=5)
    assert rig.rt.book.switch_window_s == 2.0


def test_a_clock_faster_than_the_wall_scales_the_poll_period(tmp_path):
    # A simulation run 5 times faster than real time: the map's 1-s wall poll period is 5 s
    # on the runtime's clock, for the switch window and for the staleness of readings.
    clock = Clock(T0)
    config = load_agent_config(agent_file(tmp_path))
    vc = VirtualController(config.register_map, intersection=config.intersection,
                           clock=clock).start(tcp=False)
    agent = Agent(config, clock=clock, client_factory=vc.loopback_client, link_factory=FakeLink,
                  time_scale=5.0).start()
    try:
        rt = agent.runtime
        assert rt.poll_period == pytest.approx(5.0) and rt.book.switch_window_s == 10.0
        for _ in range(3):
            clock.t += 5.0
            rt.step()
        assert rt.controller_ok  # readings 5 s old on this clock are fresh
    finally:
        agent.close()
        vc.stop()
    with pytest.raises(ValueError, match="time_scale"):
        EdgeRuntime(config, agent.modbus, agent.link, clock=clock, time_scale=0.0)


def test_a_plan_failing_the_guard_is_rejected_and_the_old_plan_stays(rig):
    plan = elm_plan(7, activation=T0)
    central(rig, plan)
    before, writes = rig.plan_registers(), len(rig.writes)
    rig.send(signed(elm_plan(9, yellow4=2.5, activation=rig.clock.t)))
    rig.run(200, beat_every=5)
    ack = rig.sent(Ack)[-1]
    assert (ack.plan_id, ack.accepted) == (9, False)
    assert {v.rule for v in ack.violations} == {"yellow-floor"} and "guard" in ack.reason
    assert rig.plan_registers() == before and len(rig.writes) == writes
    assert rig.rt.running == plan and rig.rt.mode == EdgeMode.CENTRAL


@pytest.mark.parametrize(("message", "reason"), [
    (lambda: signed(elm_plan(7, offset=10.05)), "registers cannot carry the plan"),
    (lambda: msgspec.structs.replace(signed(elm_plan(7)), plan=elm_plan(7, split2=44.0)),
     "signature does not verify"),
])
def test_plans_that_cannot_run_are_refused_with_a_reason(rig, message, reason):
    rig.send(message())
    rig.step()
    ack = rig.sent(Ack)[-1]
    assert not ack.accepted and reason in ack.reason
    assert rig.rt.book.staged is None and rig.rt.stats.plans_rejected == 1


def test_a_redelivered_plan_is_acked_again_and_changes_nothing(rig):
    plan = elm_plan(7, activation=T0)
    central(rig, plan)
    writes = list(rig.writes)
    rig.send(signed(plan))  # the retained plan again, as after a reconnect
    rig.run(100, beat_every=5)
    acks = rig.sent(Ack)
    assert [a.accepted for a in acks] == [True, True] and "duplicate" in acks[-1].reason
    assert rig.writes == writes


# --- the centre falls silent and comes back -------------------------------------------------
def test_a_silent_centre_means_the_local_plan_at_a_boundary_then_central_again(rig, caplog):
    caplog.set_level(logging.INFO, logger="edge_agent.runtime")
    plan = elm_plan(7, offset=20.0, activation=T0)
    central(rig, plan)
    rig.until(lambda: rig.clock.t % 80 == 30.0, beat_every=5)  # 10 s into a cycle
    rig.beat()
    rig.step()
    silent_from = rig.clock.t  # the last heartbeat was taken at this step
    rig.until(lambda: rig.rt.machine.pending == EdgeMode.LOCAL_FALLBACK)
    assert rig.clock.t - silent_from <= 30.0 + 1.0  # heartbeat_timeout_s + one poll
    assert rig.rt.mode == EdgeMode.CENTRAL  # not yet: the running cycle ends first
    rig.until(lambda: rig.rt.mode == EdgeMode.LOCAL_FALLBACK)
    local = rig.config.fallback_plan(minute_of_day(rig.clock.t))
    assert rig.writes[-1] == (rig.clock.t, local.plan_id)
    assert rig.clock.t == next_cycle_boundary(plan, silent_from)  # 70 s later, not mid-cycle
    status = rig.link.statuses[-1]
    assert status.mode == EdgeMode.LOCAL_FALLBACK and "silent" in status.detail

    # Two heartbeats are not enough (good_heartbeats_to_resume = 3), three are.
    rig.run(6, beat_every=3)
    assert rig.rt.machine.pending is None
    rig.run(3, beat_every=3)
    assert rig.rt.machine.pending == EdgeMode.CENTRAL
    rig.until(lambda: rig.rt.mode == EdgeMode.CENTRAL, beat_every=3)
    assert rig.writes[-1] == (rig.clock.t, 7) and in_switch_window(local, rig.clock.t, 2.0)
    entered = [r.getMessage() for r in caplog.records if "entered" in r.getMessage()]
    assert [e.split("(")[0].strip() for e in entered] == [
        "mode entered: startup -> central", "mode entered: central -> local_fallback",
        "mode entered: local_fallback -> central"]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warned if "-> local_fallback" in w]) == 1  # logged once


def test_an_override_runs_until_its_expiry(rig):
    central(rig, elm_plan(7, activation=T0))
    start = rig.clock.t
    override = elm_plan(8, split2=50.0, activation=start, source="override",
                        expiry=start + 400)
    rig.send(signed(override))
    rig.until(lambda: rig.rt.mode == EdgeMode.OVERRIDE, beat_every=5)
    assert rig.rt.running == override
    rig.until(lambda: rig.rt.mode != EdgeMode.OVERRIDE, beat_every=5)
    # Its plan replaced the centre's: with none left, the local plan runs.
    assert rig.rt.mode == EdgeMode.LOCAL_FALLBACK and rig.clock.t >= start + 400


# --- the controller -------------------------------------------------------------------------
def test_a_controller_fault_stops_every_write_until_it_clears(rig):
    central(rig, elm_plan(7, activation=T0))
    rig.vc.logic.fault("test: cabinet door open")
    rig.step()
    assert rig.rt.mode == EdgeMode.FAULT and not rig.rt.controller_ok
    assert rig.link.statuses[-1].mode == EdgeMode.FAULT
    writes = len(rig.writes)
    rig.send(signed(elm_plan(8, split2=40.0, activation=rig.clock.t)))  # accepted, not run
    rig.run(200, beat_every=5)
    assert len(rig.writes) == writes and rig.rt.mode == EdgeMode.FAULT
    rig.vc.logic.alarms &= ~Alarm.FAULT
    rig.step()
    # Cleared: STARTUP, which finds the centre alive with its plan in force: CENTRAL again,
    # at a boundary of plan 7 (the controller went on running it), and plan 8 with it.
    assert rig.rt.mode == EdgeMode.STARTUP and rig.rt.machine.pending == EdgeMode.CENTRAL
    rig.until(lambda: rig.rt.mode == EdgeMode.CENTRAL, beat_every=5)
    assert rig.writes[-1] == (rig.clock.t, 8) and rig.clock.t % 80 == 0.0


def test_a_controller_that_falls_back_on_its_own_gets_the_plan_again(rig, caplog):
    caplog.set_level(logging.WARNING, logger="edge_agent.runtime")
    central(rig, elm_plan(7, offset=20.0, activation=T0))
    rig.run(5, beat_every=5)
    rig.vc.logic.mode = ControllerMode.LOCAL  # as after its watchdog or a restart
    rig.step()
    # Nothing of ours runs: written again at once (the controller changes at its own time).
    assert rig.writes[-1] == (rig.clock.t, 7) and rig.vc.logic.mode == ControllerMode.REMOTE
    assert "runs its own programme (mode = 1), not plan 7; the plan is written again" \
        in caplog.text

    rig.run(5, beat_every=5)
    rig.vc.logic.mode, rig.vc.logic.alarms = ControllerMode.LOCAL, Alarm.PLAN_REFUSED
    writes = len(rig.writes)
    rig.run(100, beat_every=5)  # its own checks refused the plan: not written again
    assert len(rig.writes) == writes and rig.rt.running is None
    assert len([r for r in caplog.records if "refused the plan" in r.getMessage()]) == 1


def test_an_unreachable_controller_is_a_fault(rig, caplog):
    caplog.set_level(logging.WARNING)
    rig.run(3)
    rig.vc.stop_server()
    kicks = rig.rt.stats.watchdog_kicks
    rig.run(5)
    assert rig.rt.mode == EdgeMode.FAULT and "not answering" in rig.rt.detail
    assert rig.rt.stats.watchdog_kicks == kicks  # nothing written to a device that is gone
    rig.vc.start_server()
    deadline = time.monotonic() + 10  # the link's reconnect backoff runs on real time
    while not rig.rt.controller_ok:
        assert time.monotonic() < deadline
        time.sleep(0.05)
        rig.step()
    assert rig.rt.mode == EdgeMode.STARTUP
    faults = [r for r in caplog.records if "-> fault" in r.getMessage()]
    assert len(faults) == 1


# --- measurements ---------------------------------------------------------------------------
def test_measurements_carry_what_the_controller_exposed(rig):
    bank = rig.bank
    bank.store("count_0", 65530)
    for name, value in (("occupancy_0", 0.25), ("speed_0", 12.5), ("queue_0", 30.0),
                        ("count_4", 3)):
        bank.store(name, value)
    rig.run(60)  # the first interval only primes the counters
    for second in range(1, 11):  # a vehicle a second; count_0 wraps 65535 -> 0 on the way
        bank.store("count_0", 65530 + second, wrap=True)
        bank.store("count_4", 3 + min(second, 7))
        rig.step()
    rig.run(50)
    measurements = rig.sent(Measurement)
    assert [m.interval_start for m in measurements] == [T0, T0 + 60]
    lanes = {lane.lane: lane for lane in measurements[-1].lanes}
    s0 = lanes["elm-1st_S_0"]
    assert (s0.count, s0.occupancy, s0.mean_speed_mps, s0.queue_m, s0.queue_veh) == \
        (10, 0.25, 12.5, 30.0, 4.0)
    assert s0.flow_vph == 600.0 and lanes["elm-1st_E_0"].count == 7
    assert lanes["elm-1st_N_1"].count == 0 and lanes["elm-1st_N_1"].mean_speed_mps is None
    assert all(lane.healthy for lane in lanes.values())
    assert rig.rt.stats.samples > 24 * 100 and rig.rt.stats.measurements == 2


def test_local_sensors_are_merged_and_unknown_ones_ignored(rig, caplog):
    caplog.set_level(logging.WARNING, logger="edge_agent.runtime")
    prefix = rig.config.file.mqtt.sensor_prefix
    rig.run(60)
    for _ in range(3):  # the detector of lane E_0 as a sensor, and a camera nobody configured
        rig.link.deliver(f"{prefix}/elm-1st_E_0_stop/elm-1st_E_0",
                         b'{"speed_mps": 9.5, "count": 2}')
        rig.link.deliver(f"{prefix}/cam-9/elm-1st_E_0", b'{"count": 4}')
        rig.step()
    rig.run(60)
    lane = {m.lane: m for m in rig.sent(Measurement)[-1].lanes}["elm-1st_E_0"]
    assert (lane.count, lane.mean_speed_mps) == (6, 9.5)
    assert rig.rt.stats.unknown_sensor_reports == 3
    assert len([r for r in caplog.records if "cam-9" in r.getMessage()]) == 1


def test_register_values_that_are_no_reading_are_logged_once(rig, caplog):
    caplog.set_level(logging.INFO, logger="edge_agent.runtime")
    rig.bank.store("occupancy_2", 1.5)  # a wrong scale: above 100 %
    rig.run(3)
    rig.bank.store("occupancy_2", 0.5)
    rig.run(3)
    said = [r.getMessage() for r in caplog.records if "occupancy_2" in r.getMessage()]
    assert len(said) == 2 and "usable again" in said[1] and rig.rt.stats.bad_samples == 3


# --- clock, stops ----------------------------------------------------------------------------
def test_a_clock_stepped_back_is_held(rig, caplog):
    caplog.set_level(logging.INFO, logger="edge_agent.runtime")
    rig.run(5)
    rig.clock.t -= 30.0
    rig.step()  # the machine would refuse time going backwards: held instead
    rig.clock.t += 40.0
    rig.step()
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("clock")]
    assert len(said) == 2 and "went back" in said[0] and "recovered" in said[1]


def test_closing_says_offline_and_a_closed_uplink_is_logged_once(rig, caplog):
    caplog.set_level(logging.WARNING, logger="edge_agent.runtime")
    rig.run(3)
    rig.link.close()
    rig.send(signed(elm_plan(7)))
    rig.step()
    rig.send(signed(elm_plan(8)))
    rig.step()
    assert len([r for r in caplog.records if "uplink" in r.getMessage()]) == 1
    last = rig.link.statuses[-1]
    assert (last.online, last.detail) == (False, "shut down cleanly")


def test_the_agent_loop_answers_at_once_and_stops_on_request(tmp_path):
    config = load_agent_config(agent_file(tmp_path))
    vc = VirtualController(config.register_map, intersection=config.intersection).start(tcp=False)
    agent = Agent(config, client_factory=vc.loopback_client, link_factory=FakeLink).start()
    thread = threading.Thread(target=agent.run)
    try:
        thread.start()
        time.sleep(0.3)
        assert agent.runtime.stats.steps >= 1
        steps = agent.runtime.stats.steps
        sent = time.monotonic()
        agent.link.deliver(topic(SITE, X, TopicKind.PLAN), signed(elm_plan(3)))
        deadline = time.monotonic() + 2
        while not [m for _, m in agent.link.published if isinstance(m, Ack)]:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert time.monotonic() - sent < 0.5  # not a whole poll period later
        assert agent.runtime.stats.steps > steps
    finally:
        agent.stop()
        thread.join(5)
        agent.close()
        agent.close()
        vc.stop()
    assert not thread.is_alive()
    assert agent.link.statuses[-1].online is False


# --- failing ports (a controller object that refuses) ---------------------------------------
class Refusing:
    """A controller port whose calls fail as told."""

    def __init__(self, config: AgentConfig, clock: Clock) -> None:
        self.clock, self.config = clock, config
        self.poll_error: Exception | None = None
        self.write_error: Exception | None = None
        self.kick_error: Exception | None = None
        self.coil_error: Exception | None = None
        self.written: list[int] = []
        self.coils: list[tuple[str, float | bool]] = []  # single-register writes (coils)

    connected = True

    def poll_now(self, timeout: float | None = None) -> bool:
        if self.poll_error:
            raise self.poll_error
        return True

    def readings(self) -> dict[str, RegisterReading]:
        return {r.name: RegisterReading(r.name, 2.0 if r.signal == Signal.CONTROLLER_MODE
                                        else 0.0, self.clock.t, 0, False)
                for r in self.config.register_map.registers}

    def write_plan(self, plan: TimingPlan, intersection) -> None:
        if self.write_error:
            raise self.write_error
        self.written.append(plan.plan_id)

    def kick_watchdog(self) -> float:
        if self.kick_error:
            raise self.kick_error
        return 1.0

    def write(self, name: str, value: float | bool) -> None:
        if self.coil_error:
            raise self.coil_error
        self.coils.append((name, value))


def runtime_from(path: Path) -> EdgeRuntime:
    """A runtime from an agent file, over a :class:`Refusing` controller and a fake link."""
    config = load_agent_config(path)
    return EdgeRuntime(config, Refusing(config, Clock(T0)),
                       FakeLink(site=SITE, intersection=X, on_inbound=lambda m: None), start=T0)


def refusing_runtime(tmp_path: Path) -> tuple[Clock, Refusing, FakeLink, EdgeRuntime]:
    """A runtime (no start-up grace) over a :class:`Refusing` controller and a fake link."""
    config = load_agent_config(agent_file(tmp_path, startup_grace_s=0))
    clock = Clock(T0)
    port = Refusing(config, clock)
    link = FakeLink(site=SITE, intersection=X, on_inbound=lambda m: None, clock=clock)
    link.start()
    return clock, port, link, EdgeRuntime(config, port, link, clock=clock)


def test_failing_calls_are_logged_once_and_retried(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    clock, port, link, rt = refusing_runtime(tmp_path)
    port.poll_error = DeviceError("link not started")
    port.kick_error = DeviceError("no answer to the write of watchdog")
    port.write_error = DeviceError("not connected")
    for _ in range(3):
        clock.t += 1
        rt.step()
    assert rt.mode == EdgeMode.LOCAL_FALLBACK and rt.running is None and port.written == []
    port.write_error = None
    clock.t += 1
    rt.step()
    assert port.written == [1] and rt.stats.watchdog_kicks == 0
    messages = [r.getMessage() for r in caplog.records]
    for what in ("poll: link not started", "watchdog: no answer", "not written: not connected"):
        assert len([m for m in messages if what in m]) == 1, what

    # A plan the guard refuses at the last moment is never retried.
    port.write_error = PlanRejected(2, ["refused"])
    rt.running = None
    for _ in range(3):
        clock.t += 1
        rt.step()
    assert len([r for r in caplog.records if "will not be written" in r.getMessage()]) == 1


def test_a_map_without_a_watchdog_is_said_at_start(tmp_path, caplog):
    path = agent_file(tmp_path)
    regmap = path.parent / "modbus-elm-1st.toml"
    regmap.write_text(regmap.read_text().replace('signal = "watchdog"\naccess = "write"',
                                                 'signal = "watchdog"'))
    caplog.set_level(logging.WARNING, logger="edge_agent.runtime")
    rt = runtime_from(path)
    assert not rt._watchdog
    assert "no single allow-listed watchdog" in caplog.text


def test_controller_constants_are_the_virtual_controllers():
    from simulation import virtual_logic

    assert virtual_logic.Alarm is Alarm and virtual_logic.ControllerMode is ControllerMode
    assert (int(ControllerMode.LOCAL), int(ControllerMode.REMOTE), int(ControllerMode.FLASH)) \
        == (1, 2, 3)
    assert (Alarm.PLAN_REFUSED | Alarm.WATCHDOG | Alarm.FAULT) == 7


def test_the_last_accepted_plan_id_survives_a_restart(tmp_path):
    """A restarted edge refuses an older signed plan: it would be a replay."""
    path = agent_file(tmp_path)
    first = Rig(path)
    try:
        first.send(signed(elm_plan(7, activation=T0)))
        first.step()
        assert first.sent(Ack)[-1].accepted
    finally:
        first.close()
    assert json.loads((tmp_path / "spool.sqlite.plan-id").read_text()) == {"last_plan_id": 7}
    second = Rig(path)
    try:
        assert second.rt.book.last_plan_id == 7
        second.send(signed(elm_plan(6, activation=T0)))
        second.step()
        ack = second.sent(Ack)[-1]
        assert (ack.plan_id, ack.accepted) == (6, False)
    finally:
        second.close()


@pytest.mark.parametrize("content", ["not json", '{"last_plan_id": -1}', '[1]'])
def test_an_unreadable_plan_id_file_is_refused_at_start(tmp_path, content):
    from edge_agent.errors import ConfigError
    from edge_agent.plan_id_store import load_last_plan_id

    bad = tmp_path / "x.plan-id"
    bad.write_text(content)
    with pytest.raises(ConfigError, match="plan id|last_plan_id"):
        load_last_plan_id(bad)
    assert load_last_plan_id(tmp_path / "absent") == 0


def test_a_stuck_detector_puts_its_phase_on_recall_at_the_controller(rig, caplog):
    """elm-1st_S_0_stop (presence_0) sits on lane S_0 of movement NB, served by phase 2."""
    caplog.set_level(logging.WARNING, logger="edge_agent.runtime")
    rig.run(5, beat_every=5)
    assert rig.bank.load("recall_2") == 0.0
    rig.bank.store("presence_0", 1)  # held on: stuck after stuck_on_s (180 s)
    rig.run(240, beat_every=5)
    assert "elm-1st_S_0_stop" in rig.rt.health.failed
    assert rig.bank.load("recall_2") == 1.0
    assert [rig.bank.load(f"recall_{n}") for n in (4, 6, 8)] == [0.0, 0.0, 0.0]
    assert any("on recall" in r.getMessage() for r in caplog.records)
    writes = [w.name for w in rig.bank.write_log if w.name.startswith("recall_")]
    rig.run(30, beat_every=5)  # unchanged: not written again
    assert [w.name for w in rig.bank.write_log if w.name.startswith("recall_")] == writes


# --- local actuation ----------------------------------------------------------------------------
COILS = [f"{kind}_{n}" for kind in ("hold", "force_off") for n in (2, 4, 6, 8)]


def coil_writes(rig: Rig) -> list[tuple[str, float]]:
    return [(w.name, w.value) for w in rig.bank.write_log if w.name in COILS]


def coils(rig: Rig) -> dict[str, float]:
    return {n: rig.bank.load(n) for n in COILS if rig.bank.load(n)}


def cars(rig: Rig, seconds: int, counter: str = "count_0") -> None:
    """A car a second on ``counter``'s stop bar, heartbeats as usual."""
    for _ in range(seconds):
        rig.bank.store(counter, rig.bank.load(counter) + 1)
        rig.run(1, beat_every=5)


def test_local_actuation_holds_and_forces_off_then_stands_aside_for_an_override(rig, caplog):
    caplog.set_level(logging.INFO, logger="edge_agent.runtime")
    rig.run(5, beat_every=5)
    assert coil_writes(rig) == []  # STARTUP: nothing of ours runs
    central(rig, elm_plan(7, activation=T0))
    assert "local actuation on, inside plan" in caplog.text and rig.rt.running.plan_id == 7
    assert sorted(coil_writes(rig)) == sorted((n, 0.0) for n in COILS)  # made known, once
    rig.bank.store("phase_ring1", 2)  # NB green; a car waits on EB
    rig.bank.store("presence_5", 1)
    cars(rig, 10)
    assert coils(rig) == {"hold_2": 1.0}
    assert "phase 2 extended" in rig.rt.actuation.last.reason
    rig.run(4, beat_every=5)  # nobody comes: gap-out
    assert coils(rig) == {"force_off_2": 1.0}
    assert "gap-out" in rig.rt.actuation.decisions[1].reason
    written = len(coil_writes(rig))
    rig.run(5, beat_every=5)
    assert len(coil_writes(rig)) == written and rig.rt.stats.coil_writes == written

    # The operator's plan runs as written: the coils are released and left alone.
    start = rig.clock.t
    rig.send(signed(elm_plan(8, split2=50.0, activation=start, source="override",
                             expiry=start + 400)))
    rig.until(lambda: rig.rt.mode == EdgeMode.OVERRIDE, beat_every=5)
    rig.run(1, beat_every=5)
    assert coils(rig) == {} and coil_writes(rig)[-1] == ("force_off_2", 0.0)
    assert "local actuation off (override)" in caplog.text
    written = len(coil_writes(rig))
    cars(rig, 20)
    assert len(coil_writes(rig)) == written and rig.rt.actuation.decisions == {}


def test_local_actuation_releases_its_coils_on_a_controller_fault(rig):
    central(rig, elm_plan(7, activation=T0))
    rig.bank.store("phase_ring2", 6)
    rig.bank.store("presence_4", 1)
    cars(rig, 10, "count_2")
    assert coils(rig) == {"hold_6": 1.0}
    rig.vc.logic.fault("test: cabinet door open")
    rig.step()
    assert rig.rt.mode == EdgeMode.FAULT and coils(rig) == {}


def test_local_actuation_runs_the_local_plan_too(rig):
    rig.bank.store("phase_ring1", 4)
    rig.bank.store("presence_0", 1)
    rig.run(61)  # silent centre: the time-of-day plan after the grace
    assert rig.rt.mode == EdgeMode.LOCAL_FALLBACK and rig.rt.actuation_plan() is rig.rt.running
    assert coils(rig) == {"force_off_4": 1.0}  # EB empty, NB waits


def test_coil_writes_that_fail_are_retried_and_said_once(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    clock, port, link, rt = refusing_runtime(tmp_path)
    port.coil_error = DeviceError("no answer to the write of hold_2")
    for _ in range(3):
        clock.t += 1
        rt.step()
    assert rt.mode == EdgeMode.LOCAL_FALLBACK and port.written == [1] and port.coils == []
    assert len([r for r in caplog.records if "coil hold_2 not written" in r.getMessage()]) == 1
    port.coil_error = None
    clock.t += 1
    rt.step()
    assert sorted(port.coils) == sorted((n, False) for n in COILS)
    assert rt.stats.coil_writes == 8 and "recovered" in caplog.text

    # A coil the link refuses (a bug: they are checked at start) stops actuation for good.
    port.coil_error = PermissionError("register hold_2 is not allow-listed for writing")
    rt.actuation.unsure("hold_2")
    for _ in range(3):
        clock.t += 1
        rt.step()
    assert len([r for r in caplog.records if "local actuation stopped" in r.getMessage()]) == 1


def test_the_agent_file_sets_how_long_an_exit_must_stand_occupied(tmp_path):
    path = agent_file(tmp_path)
    path.write_text(path.read_text().replace("spillback_s = 3.0", "spillback_s = 5.0"))
    rt = runtime_from(path)
    assert rt.actuation.spillback_s == 5.0


def test_a_map_without_coils_runs_no_actuation_and_says_so(tmp_path, caplog):
    path = agent_file(tmp_path)
    regmap = path.parent / "modbus-elm-1st.toml"
    without_actuation_coils(regmap)
    caplog.set_level(logging.INFO, logger="edge_agent.runtime")
    rt = runtime_from(path)
    assert not rt.actuation.available and rt.actuation_plan() is None
    assert "no allow-listed phase.hold/phase.force_off coils: local actuation is off" \
        in caplog.text

    path.write_text(path.read_text().replace("# enabled = true", "enabled = false"))
    regmap.write_text(regmap.read_text().replace('signal = "phase.recall"\nphase = 2\naccess',
                                                 'signal = "phase.hold"\nphase = 2\naccess', 1))
    rt = runtime_from(path)
    assert rt.actuation.available and "([actuation] enabled = false)" in caplog.text
