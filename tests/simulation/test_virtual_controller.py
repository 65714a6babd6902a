"""The virtual controller: register bank, cabinet logic, plan timing, generated maps (fast, no
SUMO), then, marked ``integration``, the pymodbus server's refusals and the SUMO-backed
controller on the generated corridor, seen from the edge's ModbusLink.
"""

from __future__ import annotations

import asyncio

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec
import pytest

pytest.importorskip("pymodbus")

from pymodbus.client import ModbusTcpClient  # noqa: E402
from pymodbus.constants import ExcCodes  # noqa: E402

from edge_agent.config import load_site, load_toml  # noqa: E402
from edge_agent.errors import DeviceError  # noqa: E402
from edge_agent.modbus_link import LinkState, ModbusLink  # noqa: E402
from edge_agent.model import (ApproachConfig, ClearancePolicy, Detector, Intersection,  # noqa: E402
                              Movement, Phase, Turn)
from edge_agent.plan import PhaseTiming, TimingPlan  # noqa: E402
from edge_agent.registers import (Access, RegisterMap, Signal, Table, WordOrder,  # noqa: E402
                                  encode_value)
from simulation.signal_driver import GREEN, RED, YELLOW, SignalDriver  # noqa: E402
from simulation.virtual_bank import RegisterBank, RequestRefused  # noqa: E402
from simulation.virtual_controller import VirtualController, main, serve  # noqa: E402
from simulation.virtual_logic import (Alarm, ControllerLogic, ControllerMode,  # noqa: E402
                                      PlanExecutor, staged_plan)
from simulation.virtual_map import register_map_for, register_map_toml  # noqa: E402
from simulation.virtual_sumo import detectors_xml  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def elm_map(configs_dir) -> RegisterMap:
    return load_toml(configs_dir / "modbus-elm-1st.toml", RegisterMap)


@pytest.fixture(scope="module")
def elm(configs_dir) -> Intersection:
    return load_site(configs_dir / "nema-4phase.toml").intersection("elm-1st")


def wire(bank: RegisterBank, name: str, value: float) -> None:
    """Write a register as the edge would (through the wire side of the bank)."""
    reg = bank.by_name[name]
    bank.write(Table(reg.table), reg.address, encode_value(reg, value, WordOrder.BIG))


def stage_elm(bank: RegisterBank, plan_id: int = 4, split2: float = 45.0) -> None:
    wire(bank, "plan_id", plan_id)
    wire(bank, "plan_cycle", 80)
    wire(bank, "plan_offset", 0)
    for n, split in ((2, split2), (4, 80 - split2), (6, split2), (8, 80 - split2)):
        wire(bank, f"split_{n}", split)
        wire(bank, f"min_green_{n}", 8 if n in (2, 6) else 6)
        wire(bank, f"max_green_{n}", 50 if n in (2, 6) else 40)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# ----------------------------------------------------------------------------- the bank
def test_bank_refuses_what_a_cabinet_refuses(elm_map):
    bank = RegisterBank(elm_map)
    seen = []
    bank.on_write(seen.append)
    with pytest.raises(RequestRefused) as err:
        bank.read(Table.INPUT, 5, 3)  # 6 and 7 are not mapped
    assert err.value.code == ExcCodes.ILLEGAL_ADDRESS
    assert bank.read(Table.DISCRETE, 4, 4) == [False] * 4  # bits read as 0 where unmapped
    for table, address in ((Table.HOLDING, 117), (Table.COIL, 12)):
        with pytest.raises(RequestRefused, match="not mapped"):
            bank.write(table, address, [1])
    with pytest.raises(RequestRefused, match="read-only") as err:
        bank.write(Table.INPUT, 0, [1])
    assert err.value.code == ExcCodes.ILLEGAL_FUNCTION
    assert bank.write_log == [] and seen == []
    bank.write(Table.HOLDING, 100, [1, 2])  # plan_id, high word first
    assert bank.load("plan_id") == 65538.0
    assert [(w.name, w.value) for w in bank.write_log] == [("plan_id", 65538.0)]
    assert [r.name for r in seen[0]] == ["plan_id"]
    bank.store("count_0", 65537, wrap=True)
    assert bank.load("count_0") == 1.0 and bank.read(Table.INPUT, 0, 1) == [1]
    bank.store("presence_5", True)
    assert bank.words_of(Table.DISCRETE)[5] is True


def test_read_only_holding_registers_are_refused(elm_map):
    locked = RegisterMap(device=elm_map.device, registers=tuple(
        msgspec.structs.replace(r, access=Access.READ) if r.name == "watchdog" else r
        for r in elm_map.registers))
    with pytest.raises(RequestRefused, match="watchdog"):
        RegisterBank(locked).write(Table.HOLDING, 120, [1])


# ----------------------------------------------------------------------------- cabinet logic
def test_a_committed_plan_is_checked_then_run(elm_map, elm):
    bank, clock = RegisterBank(elm_map), Clock()
    logic = ControllerLogic(bank, elm, watchdog_timeout_s=5.0, clock=clock, wall=lambda: 42.0)
    assert bank.load("mode") == ControllerMode.LOCAL and logic.tick() is None
    stage_elm(bank)
    assert logic.tick() is None  # nothing committed yet
    wire(bank, "plan_commit", 4)
    plan = logic.tick()
    assert plan is not None and plan.plan_id == 4 and plan.activation == 42.0
    assert [[t.phase for t in ring] for ring in plan.rings] == [[2, 4], [6, 8]]
    assert plan.timings[2].yellow == 3.5 and plan.timings[4].walk == 7.0  # configured values
    assert (bank.load("mode"), bank.load("alarms"), bank.load("plan_commit")) == (2, 0, 0)
    assert logic.tick() is None


def test_a_committed_plan_failing_the_guard_raises_the_alarm(elm_map, elm):
    bank = RegisterBank(elm_map)
    logic = ControllerLogic(bank, elm, fallback=None)
    stage_elm(bank, split2=46.0)
    wire(bank, "split_6", 45.0)  # ring 2 no longer crosses the barrier with ring 1
    wire(bank, "plan_commit", 1)
    assert logic.tick() is None
    assert bank.load("alarms") == Alarm.PLAN_REFUSED and bank.load("mode") == ControllerMode.LOCAL
    assert any("barrier" in r for r in logic.refusals[-1])
    wire(bank, "plan_id", 0)
    wire(bank, "plan_commit", 2)
    assert logic.tick() is None and "plan_id" in logic.refusals[-1][0]
    stage_elm(bank)
    wire(bank, "plan_commit", 3)
    assert logic.tick() is not None and bank.load("alarms") == 0  # a good plan clears it
    wire(bank, "plan_commit", 0)  # the edge clearing the commit is no commit
    assert logic.tick() is None


def test_a_stale_watchdog_falls_back_to_the_own_programme(elm_map, elm):
    bank, clock = RegisterBank(elm_map), Clock()
    stage_elm(bank)
    own = staged_plan(bank, elm)  # stands for the controller's own programme
    logic = ControllerLogic(bank, elm, fallback=own, watchdog_timeout_s=5.0, clock=clock)
    wire(bank, "plan_commit", 4)
    assert logic.tick() is not None
    for value in (1, 2, 3):  # a live edge: the value changes
        clock.t += 4.0
        wire(bank, "watchdog", value)
        assert logic.tick() is None and bank.load("mode") == ControllerMode.REMOTE
    clock.t += 4.0
    wire(bank, "watchdog", 3)  # the same value again is no heartbeat
    clock.t += 1.5
    assert logic.tick() is own and bank.load("mode") == ControllerMode.LOCAL
    assert bank.load("alarms") == Alarm.WATCHDOG
    assert logic.tick() is None  # stays local until the next commit
    wire(bank, "plan_commit", 5)
    assert logic.tick() is not None and bank.load("alarms") == 0
    logic.fault("SUMO died")
    logic.fault("SUMO died")
    assert bank.load("alarms") == Alarm.FAULT
    with pytest.raises(ValueError, match="watchdog_timeout_s"):
        ControllerLogic(bank, elm, watchdog_timeout_s=0)


def test_staged_plan_names_what_the_map_lacks(elm_map, elm):
    bare = RegisterMap(device=elm_map.device, registers=tuple(
        r for r in elm_map.registers if r.signal != Signal.PLAN_CYCLE))
    with pytest.raises(ValueError, match="no plan.cycle register"):
        staged_plan(RegisterBank(bare), elm)
    no_split = RegisterMap(device=elm_map.device, registers=tuple(
        r for r in elm_map.registers if r.name != "split_8"))
    with pytest.raises(ValueError, match="split for phase 8"):
        staged_plan(RegisterBank(no_split), elm)


# ----------------------------------------------------------------------------- plan timing
class FakeConn:
    def __init__(self) -> None:
        self.trafficlight = self
        self.state = ""

    def setRedYellowGreenState(self, tls_id: str, state: str) -> None:  # noqa: N802
        self.state = state


STATES = {1: "GGr", 2: "rrG"}


def two_phase() -> Intersection:
    return Intersection(
        id="x", approaches=(ApproachConfig(id="N", speed_mps=10.0, lanes=("n0",)),
                            ApproachConfig(id="E", speed_mps=10.0, lanes=("e0",))),
        movements=(Movement(id="l0", approach="N", turn=Turn.THROUGH, lanes=("n0",)),
                   Movement(id="l1", approach="E", turn=Turn.THROUGH, lanes=("e0",))),
        phases=(Phase(number=1, movements=("l0",), min_green=5, max_green=60, yellow=3,
                      red_clearance=1),
                Phase(number=2, movements=("l1",), min_green=5, max_green=60, yellow=4,
                      red_clearance=0)),
        rings=(((1, 2),),), conflicts=(("l0", "l1"),), clearance_policy=ClearancePolicy.HARD_FLOORS,
        detectors=(Detector(id="n0_stop", kind="stop_bar", lane="n0", position_m=1.0),
                   Detector(id="n0_adv", kind="advance", lane="n0", position_m=40.0),
                   Detector(id="n0_q", kind="queue", lane="n0", length_m=80.0)))


def plan2(green1: float, green2: float, *, offset: float = 0.0, plan_id: int = 1,
          lo: float = 5, hi: float = 60) -> TimingPlan:
    s1, s2 = green1 + 4, green2 + 4
    return TimingPlan(plan_id=plan_id, intersection_id="x", cycle=s1 + s2, offset=offset,
                      offset_reference=1, activation=0, source="adaptive", author="t",
                      rings=((PhaseTiming(phase=1, split=s1, yellow=3, red_clearance=1,
                                          min_green=lo, max_green=hi),
                              PhaseTiming(phase=2, split=s2, yellow=4, red_clearance=0,
                                          min_green=lo, max_green=hi)),))


def greens(executor: PlanExecutor) -> list[tuple[int, float]]:
    """(phase, green seconds) of every completed green in the executor's log."""
    log = list(executor.phase_log)
    return [(p, t2 - t) for (t, p, i), (t2, _, _) in zip(log, log[1:]) if i == GREEN]


def run(executor: PlanExecutor, start: float, seconds: int, **coils) -> float:
    for k in range(seconds):
        executor.step(start + k, **coils)
    return start + seconds


def test_executor_times_greens_and_clearances_as_planned():
    conn = FakeConn()
    ex = PlanExecutor(SignalDriver(conn, "x", two_phase(), STATES), plan2(20, 10))
    run(ex, 0.0, 100)
    assert greens(ex)[:4] == [(1, 20), (2, 10), (1, 20), (2, 10)]
    log = list(ex.phase_log)
    assert [(i, t2 - t) for (t, _, i), (t2, _, _) in zip(log, log[1:])][1:3] == \
        [(YELLOW, 3.0), (RED, 1.0)]
    assert log[4][2] == YELLOW and log[5][2] == GREEN and log[5][0] - log[4][0] == 4.0


def test_hold_extends_to_max_and_force_off_ends_at_min():
    ex = PlanExecutor(SignalDriver(FakeConn(), "x", two_phase(), STATES), plan2(20, 10, hi=30))
    t = run(ex, 0.0, 90, hold={1}, force_off={2})
    assert greens(ex)[:4] == [(1, 30), (2, 5), (1, 30), (2, 5)]
    run(ex, t, 60, hold={1, 2}, force_off={1, 2})  # force-off wins over hold
    assert {g for _, g in greens(ex)[4:]} == {5}


def test_a_new_plan_takes_over_when_the_green_ends_and_seeks_its_offset():
    ex = PlanExecutor(SignalDriver(FakeConn(), "x", two_phase(), STATES), plan2(20, 10))
    t = run(ex, 0.0, 5)
    ex.load(plan2(30, 16, offset=10.0, plan_id=2))  # cycle 54
    run(ex, t, 300)
    got = greens(ex)
    assert got[0] == (1, 20)  # the running green keeps the old plan's time
    assert got[1] == (2, 16)
    starts = [t for t, p, i in ex.phase_log if p == 1 and i == GREEN][1:]
    assert [(s - 10.0) % 54 for s in starts[-3:]] == [0.0, 0.0, 0.0]  # on its offset
    assert got[-2:] == [(1, 30), (2, 16)]
    with pytest.raises(ValueError, match="single-ring"):
        PlanExecutor(ex.driver, TimingPlan(
            plan_id=1, intersection_id="x", cycle=30, offset=0, offset_reference=1,
            activation=0, source="adaptive", author="t",
            rings=(plan2(11, 11).rings[0][:1], plan2(11, 11).rings[0][1:])))


# ----------------------------------------------------------------------------- maps, files
def test_generated_map_is_packed_allow_listed_and_reads_back(tmp_path):
    x = two_phase()
    regmap = register_map_for(x, port=5021)
    names = {r.name: r for r in regmap.registers}
    assert [names[f"count_{i}"].detector for i in range(2)] == ["n0_stop", "n0_adv"]
    assert names["speed_0"].detector == "n0_adv" and names["queue_0"].lane == "n0"
    inputs = sorted(r.address for r in regmap.registers if r.table == Table.INPUT)
    assert inputs == list(range(len(inputs)))  # one read request
    writable = {r.name for r in regmap.registers if r.access == Access.WRITE}
    assert writable == {r.name for r in regmap.registers if r.table in (Table.HOLDING, Table.COIL)}
    assert {"hold_1", "force_off_2", "plan_commit", "watchdog", "split_2"} <= writable
    path = tmp_path / "map.toml"
    path.write_text(register_map_toml(regmap, ["a header"]), encoding="utf-8")
    assert load_toml(path, RegisterMap) == regmap
    assert path.read_text().startswith("# a header\n")


def test_detector_file_places_loops_and_zones():
    x = two_phase()
    xml = detectors_xml([(d, "n0", 100.0) for d in x.detectors])
    assert '<inductionLoop id="n0_stop" lane="n0" pos="98.00"' in xml
    assert '<inductionLoop id="n0_adv" lane="n0" pos="59.00"' in xml
    assert '<laneAreaDetector id="n0_q" lane="n0" pos="20.00" endPos="100.00"' in xml


def test_an_exit_loop_sits_downstream_on_its_departure_lane():
    d = Detector(id="x_out", kind="exit", lane="out0", position_m=10.0, length_m=2.0,
                 movements=("m",))
    assert '<inductionLoop id="x_out" lane="out0" pos="11.00"' in detectors_xml([(d, "out0",
                                                                                 100.0)])
    assert 'pos="4.50"' in detectors_xml([(d, "out0", 4.5)])  # on a short lane: its end


def test_serve_needs_a_map_or_a_scenario(elm_map, elm):
    with pytest.raises(ValueError, match="register map"):
        serve()
    with pytest.raises(ValueError, match="not both"):
        VirtualController(elm_map, intersection=elm, scenario="anywhere")


# ----------------------------------------------------------------------------- real server
@pytest.mark.integration
def test_the_tcp_server_refuses_like_a_cabinet(elm_map, elm):
    with VirtualController(elm_map, intersection=elm) as vc:
        client = ModbusTcpClient("127.0.0.1", port=vc.port, timeout=2)
        assert client.connect()
        try:
            assert client.read_input_registers(5, count=3, device_id=1).exception_code == \
                ExcCodes.ILLEGAL_ADDRESS
            assert client.write_register(117, 1, device_id=1).isError()
            assert client.write_coil(12, True, device_id=1).isError()
            assert client.mask_write_register(address=120, device_id=1).exception_code == \
                ExcCodes.ILLEGAL_FUNCTION
            assert client.write_registers(100, [0, 9], device_id=1).isError() is False
            assert client.read_holding_registers(100, count=2, device_id=1).registers == [0, 9]
        finally:
            client.close()
        assert [(w.name, w.value) for w in vc.bank.write_log] == [("plan_id", 9.0)]
        with pytest.raises(DeviceError, match="cannot listen"):
            VirtualController(elm_map, port=vc.port).start()


# ----------------------------------------------------------------------------- SUMO behind
@pytest.fixture(scope="module")
def corridor(tmp_path_factory) -> Path:
    from simulation.demo_scenario import generate_corridor

    return generate_corridor(tmp_path_factory.mktemp("vc-corridor"), intersections=2,
                             duration_s=1800)


def fast_link(vc: VirtualController) -> ModbusLink:
    regmap = vc.link_map()
    device = msgspec.structs.replace(regmap.device, poll_period_s=0.2, timeout_s=0.15,
                                     reconnect_max_s=0.5)
    link = ModbusLink(msgspec.structs.replace(regmap, device=device)).start()
    wait_until(lambda: link.state == LinkState.UP)
    return link


def wait_until(condition, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def green_runs(vc: VirtualController, since: float) -> list[tuple[int | None, float, float]]:
    """(phase, start, seconds) of every green SUMO showed after ``since`` (by the state)."""
    states = {s: n for n, s in vc.sim.imported.phase_states[vc.sim.tls_id].items()}
    log = [e for e in vc.sim.state_log if e[0] >= since]
    return [(states[s], t, t2 - t) for (t, s), (t2, _) in zip(log, log[1:]) if s in states]


def corridor_plan(vc: VirtualController, green1: float, green2: float, plan_id: int) -> TimingPlan:
    x = vc.sim.intersection
    timings = tuple(PhaseTiming(phase=n, split=g + x.phase_by_number[n].yellow,
                                yellow=x.phase_by_number[n].yellow, red_clearance=0.0,
                                min_green=x.phase_by_number[n].min_green,
                                max_green=x.phase_by_number[n].max_green)
                    for n, g in ((1, green1), (2, green2)))
    return TimingPlan(plan_id=plan_id, intersection_id=x.id, cycle=sum(t.split for t in timings),
                      offset=0.0, offset_reference=1, rings=(timings,), activation=0.0,
                      source="adaptive", author="test")


@pytest.mark.integration
def test_sumo_controller_counts_runs_plans_and_obeys_coils(corridor):
    vc = serve(scenario=corridor, speed=60.0, watchdog_timeout_s=60.0)
    link = fast_link(vc)
    try:
        assert vc.sim.tls_id == "A0" and link.value("mode") == ControllerMode.LOCAL
        counts = [n for n in link.readings() if n.startswith("count_")]
        before = sum(link.value(n) for n in counts)
        wait_until(lambda: vc.sim.sim_time > 120)
        link.poll_now()
        after = sum(link.value(n) for n in counts)
        assert after > before + 5, (before, after)
        assert all(0.0 <= link.value(n) <= 1.0 for n in link.readings() if "occupancy" in n)
        assert link.value("phase_ring1") in (1.0, 2.0)
        assert all(link.value(n) >= 0.0 for n in link.readings() if n.startswith("queue"))
        # Designer's programme first: 41 s greens.
        assert {round(g) for _, _, g in green_runs(vc, 0.0)} == {41}

        plan = corridor_plan(vc, 36.0, 16.0, plan_id=11)  # cycle 60
        link.write_plan(plan, vc.sim.intersection)
        committed = vc.sim.sim_time
        wait_until(lambda: link.reading("mode").value == ControllerMode.REMOTE)
        wait_until(lambda: vc.sim.sim_time > committed + 260)
        runs = green_runs(vc, committed + 120)  # after the offset is found
        assert len(runs) >= 3 and {(p, g) for p, _, g in runs} == {(1, 36), (2, 16)}, runs
        assert all(start % 60.0 == 0.0 for p, start, _ in runs if p == 1)

        link.write("hold_1", True)  # phase 1 held: its green runs to max green
        held = vc.sim.sim_time
        wait_until(lambda: any(p == 1 and g == 60 for p, _, g in green_runs(vc, held)))
        link.write("hold_1", False)
        link.write("force_off_2", True)  # phase 2 forced off at min green
        forced = vc.sim.sim_time
        wait_until(lambda: any(p == 2 and s > forced and g == 5
                               for p, s, g in green_runs(vc, forced)))
        assert vc.sim.error is None and vc.logic.alarms == 0
    finally:
        link.stop()
        vc.stop()


@pytest.mark.integration
def test_sumo_controller_refuses_bad_timing_and_falls_back_on_a_stale_watchdog(corridor):
    vc = serve(scenario=corridor, speed=60.0, watchdog_timeout_s=1.0)
    link = fast_link(vc)
    try:
        # Past the edge's guard (which refuses single plan-register writes), straight into
        # the registers as a rogue client would: phase 1 green 2 s < min 5 s.
        regs = {r.name: r for r in link.regmap.registers}
        order = WordOrder(link.regmap.device.word_order)
        rogue = vc.loopback_client()

        async def write_past_the_guard() -> None:
            await rogue.connect()
            for name, value in (("plan_id", 3), ("plan_cycle", 50), ("split_1", 6),
                                ("split_2", 44), ("plan_commit", 3)):
                words = encode_value(regs[name], value, order)
                await rogue.write_registers(regs[name].address, words)

        asyncio.run(write_past_the_guard())
        wait_until(lambda: link.reading("alarms").value == Alarm.PLAN_REFUSED)
        assert link.value("mode") == ControllerMode.LOCAL
        assert any("min-green" in r for r in vc.logic.refusals[-1])

        link.write_plan(corridor_plan(vc, 20.0, 20.0, plan_id=4), vc.sim.intersection)
        wait_until(lambda: link.reading("mode").value == ControllerMode.REMOTE)
        # Nobody kicks the watchdog: back on the net's own programme, alarm raised.
        wait_until(lambda: link.reading("alarms").value == Alarm.WATCHDOG, timeout=10)
        fell_back = vc.sim.sim_time
        assert link.value("mode") == ControllerMode.LOCAL
        # The first reference-phase green after the fall-back may be stretched to find the
        # programme's offset; after it the programme runs as written.
        wait_until(lambda: len(green_runs(vc, fell_back)) >= 5)
        assert [round(g) for _, _, g in green_runs(vc, fell_back)][3:5] == [41, 41]
    finally:
        link.stop()
        vc.stop()


@pytest.mark.integration
def test_command_line_serves_a_generated_map(corridor, tmp_path):
    path = tmp_path / "a0.toml"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulation.virtual_controller", "--scenario", str(corridor),
         "--register-map", str(path), "--port", "0", "--speed", "20"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stdout.readline()
        assert "on 127.0.0.1:" in line and "register map written" in line, proc.stderr.read()
        regmap = load_toml(path, RegisterMap)
        assert regmap.device.host == "127.0.0.1" and f":{regmap.device.port}," in line
        link = ModbusLink(regmap).start()
        try:
            wait_until(lambda: not link.reading("phase_ring1").stale)
            assert link.value("phase_ring1") in (1.0, 2.0)
        finally:
            link.stop()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)  # also closes the pipes
    assert proc.returncode == 0


def test_command_line_errors_are_reported(capsys, tmp_path):
    assert main(["--port", "0"]) == 2
    assert "register-map" in capsys.readouterr().err
    assert main(["--register-map", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_in_memory_command_line_serves_until_interrupted(configs_dir, capsys):
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    previous = signal.getsignal(signal.SIGINT)
    timer.start()
    try:
        assert main(["--register-map", str(configs_dir / "modbus-elm-1st.toml"),
                     "--site", str(configs_dir / "nema-4phase.toml")]) == 0
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert "in-memory bank) on 127.0.0.1:" in capsys.readouterr().out


@pytest.mark.integration
def test_sumo_controller_serves_exit_detectors_for_spillback(corridor):
    """The importer puts a spillback loop 10 m down each of A0's departure lanes, naming the
    movements into it; the virtual controller serves their presence and occupancy, and local
    actuation reads them over Modbus."""
    from edge_agent.local_actuation import LocalActuation
    from edge_agent.model import DetectorKind
    from simulation.net_import import import_net
    from simulation.scenario import load_scenario

    imported = import_net(load_scenario(corridor).net_file)
    x = imported.intersections["A0"]
    exits = {d.lane: d for d in x.detectors if d.kind == DetectorKind.EXIT}
    into = {lane: {m for m, ref in imported.links["A0"].items() if ref.to_lane == lane}
            for lane in ("A0B0_0", "A0B0_1")}
    assert {lane: set(exits[lane].movements) for lane in into} == into
    assert all(d.position_m == 10.0 for d in exits.values())
    vc = serve(scenario=corridor, tls_id="A0", speed=60.0, watchdog_timeout_s=60.0)
    link = fast_link(vc)
    names = [r.name for r in link.regmap.registers if r.name.startswith("exit_presence_")]
    assert len(names) == len(exits)
    act = LocalActuation(x, link.regmap, poll_period_s=0.2)
    seen = 0.0
    try:
        end = vc.sim.sim_time + 300
        while vc.sim.sim_time < end and not seen:
            link.poll_now()
            act.observe(link.readings())
            seen = max(link.value(n) for n in link.readings() if n.startswith("exit_"))
            time.sleep(0.05)
        assert seen > 0  # platoons from A0 pass the loops
        assert all(0.0 <= link.value(n) <= 1.0
                   for n in link.readings() if n.startswith("exit_occupancy_"))
        assert act.exits.ids == {d.id for d in exits.values()}
        assert vc.sim.error is None
    finally:
        link.stop()
        vc.stop()
