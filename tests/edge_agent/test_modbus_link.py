"""The edge's Modbus adapter: the pure core (blocks, readings, plan writes, backoff), then one
contract class run against the in-memory fake and, marked ``integration``, a real pymodbus TCP
server on 127.0.0.1 (DESIGN principle 8).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

import msgspec
import pytest

from edge_agent.config import load_site, load_toml
from edge_agent.errors import DeviceError, PlanRejected
from edge_agent.modbus_core import (Backoff, Block, ReadingBook, counter_modulus, next_counter,
                                    plan_blocks, plan_writes)
from edge_agent.modbus_link import LinkState, ModbusLink
from edge_agent.plan import PhaseTiming, TimingPlan
from edge_agent.registers import (Access, DeviceSettings, Register, RegisterMap,
                                  Signal, Table, Transport, WordOrder, encode_value)

pytest.importorskip("pymodbus")
from simulation.virtual_controller import VirtualController  # noqa: E402  (needs pymodbus)
from simulation.virtual_logic import Alarm, ControllerMode  # noqa: E402

from null_modem import NullModem  # noqa: E402  (tests/edge_agent: a pty pair for RTU)


@pytest.fixture(scope="module")
def elm_map(configs_dir) -> RegisterMap:
    return load_toml(configs_dir / "modbus-elm-1st.toml", RegisterMap)


@pytest.fixture(scope="module")
def elm(configs_dir):
    return load_site(configs_dir / "nema-4phase.toml").intersection("elm-1st")


def _t(n: int, split: float, yellow: float, red: float, lo: float, hi: float, walk: float = 0.0,
       ped: float = 0.0) -> PhaseTiming:
    return PhaseTiming(phase=n, split=split, yellow=yellow, red_clearance=red, min_green=lo,
                       max_green=hi, walk=walk, ped_clearance=ped)


def elm_plan(plan_id: int = 7, *, split2: float = 45.0, offset: float = 10.0,
             yellow4: float = 3.0) -> TimingPlan:
    """A plan for elm-1st that passes the guard (80 s cycle, barrier at 45 s)."""
    return TimingPlan(
        plan_id=plan_id, intersection_id="elm-1st", cycle=80.0, offset=offset,
        offset_reference=2, activation=0.0, source="adaptive", author="test",
        rings=((_t(2, split2, 3.5, 1.5, 8, 50, 7, 11.3), _t(4, 80 - split2, yellow4, 1.5, 6, 40, 7, 13.1)),
               (_t(6, split2, 3.5, 1.5, 8, 50), _t(8, 80 - split2, 3.0, 1.5, 6, 40))))


def _reg(name: str, table: str, address: int, type_: str = "uint16", **kw) -> Register:
    kw.setdefault("signal", "controller.mode")
    return Register(name=name, table=table, address=address, type=type_, **kw)


def _device(**kw) -> DeviceSettings:
    base = dict(id="dev", transport="tcp", poll_period_s=1.0, timeout_s=0.5, retries=2,
                reconnect_max_s=5.0, stale_after_polls=3)
    base.update(kw)
    return DeviceSettings(**base)


# ----------------------------------------------------------------------------- block planning
def test_blocks_are_contiguous_runs_per_table(elm_map):
    blocks = plan_blocks(elm_map.registers)
    assert [str(b) for b in blocks] == [
        "input 0..5", "input 10..15", "input 20..21", "input 30..31", "input 40..43",
        "discrete 0..5", "holding 100..116", "holding 120..120", "coil 0..11"]
    assert sum(len(b.registers) for b in blocks) == len(elm_map.registers)


def test_gaps_are_bridged_only_when_asked(elm_map):
    assert [str(b) for b in plan_blocks(elm_map.registers, max_gap=8)] == [
        "input 0..43", "discrete 0..5", "holding 100..120", "coil 0..11"]


def test_blocks_respect_the_request_limits_and_never_split_a_value():
    regs = [_reg(f"r{i}", "input", 2 * i, "uint32") for i in range(70)]  # 140 words
    blocks = plan_blocks(regs)
    assert [(b.start, b.count) for b in blocks] == [(0, 124), (124, 16)]
    bits = [_reg(f"b{i}", "coil", i, "bool", signal="phase.hold", phase=1, access="write")
            for i in range(2100)]
    assert [b.count for b in plan_blocks(bits)] == [2000, 100]
    assert [b.count for b in plan_blocks(bits, max_bits=300)][:2] == [300, 300]
    with pytest.raises(ValueError, match="max_gap"):
        plan_blocks(regs, max_gap=-1)
    with pytest.raises(ValueError, match="limits"):
        plan_blocks(regs, max_words=1)


# ----------------------------------------------------------------------------- readings
WORD_MAP_REGS = (
    _reg("u16", "input", 0, scale=0.1), _reg("i16", "input", 1, "int16"),
    _reg("u32", "input", 2, "uint32"), _reg("i32", "input", 4, "int32", scale=0.01),
    _reg("f32", "input", 6, "float32"), _reg("flag", "discrete", 3, "bool"),
)
WORD_VALUES = {"u16": 6553.4, "i16": -1234.0, "u32": 4_000_000_123.0, "i32": -98765.43,
               "f32": 3.25, "flag": 1.0}


@pytest.mark.parametrize("order", ["big", "little"])
def test_book_decodes_scale_type_and_word_order(order):
    device = _device(word_order=order)
    book = ReadingBook(WORD_MAP_REGS, device)
    for block in plan_blocks(WORD_MAP_REGS):
        raw: list = [False] * block.count if block.table == Table.DISCRETE else [0] * block.count
        for reg in block.registers:
            words = encode_value(reg, WORD_VALUES[reg.name], WordOrder(order))
            raw[reg.address - block.start:reg.address - block.start + reg.width] = words
        book.record(block, raw, now=100.0)
    got = {n: r.value for n, r in book.snapshot(100.5).items()}
    assert got == pytest.approx(WORD_VALUES)
    assert all(r.read_at == 100.0 and not r.stale for r in book.snapshot(100.5).values())


def test_values_go_stale_after_missed_polls_and_when_polling_stops():
    device = _device(poll_period_s=1.0, stale_after_polls=2)
    reg = _reg("a", "input", 0)
    book, block = ReadingBook([reg], device), Block(Table.INPUT, 0, 1, (reg,))
    assert book.reading("a", 0.0).stale and book.reading("a", 0.0).value is None
    book.record(block, [7], now=10.0)
    book.miss([reg])
    r = book.reading("a", 11.0)
    assert (r.value, r.misses, r.stale) == (7.0, 1, False)
    book.miss_all()
    assert book.reading("a", 12.0).stale  # two polls missed
    book.record(block, [8], now=13.0)
    assert not book.reading("a", 13.0).stale
    assert not book.reading("a", 15.9).stale
    assert book.reading("a", 16.1).stale  # nothing polled for more than three periods


def test_non_finite_float_counts_as_a_miss():
    reg = _reg("f", "input", 0, "float32")
    book, block = ReadingBook([reg], _device()), Block(Table.INPUT, 0, 2, (reg,))
    book.record(block, encode_value(reg, 1.5, WordOrder.BIG), now=1.0)
    book.record(block, [0x7FC0, 0], now=2.0)  # NaN
    r = book.reading("f", 2.0)
    assert (r.value, r.read_at, r.misses) == (1.5, 1.0, 1)
    assert "non-finite" in book.invalid["f"]


# ----------------------------------------------------------------------------- plan writes
def test_plan_writes_stage_everything_and_commit_last(elm_map):
    writes = plan_writes(elm_plan(), elm_map)
    names = [w.register.name for w in writes]
    assert names[:3] == ["plan_id", "plan_cycle", "plan_offset"]
    assert names[3:6] == ["split_2", "min_green_2", "max_green_2"]
    assert names[-1] == "plan_commit" and names.count("plan_commit") == 1
    assert set(names) == {r.name for r in elm_map.registers if r.signal.value.startswith("plan.")}
    by = {w.register.name: w for w in writes}
    assert by["plan_cycle"].raw == (800,) and by["plan_id"].raw == (0, 7)
    assert by["plan_commit"].value == 7.0
    assert plan_writes(elm_plan(65536), elm_map)[-1].value == 1.0  # wraps, never 0


def test_plans_the_map_cannot_carry_exactly_are_rejected_whole(elm_map):
    with pytest.raises(PlanRejected) as err:
        plan_writes(elm_plan(split2=45.25), elm_map)
    assert any("resolution" in r and "phase 2 split" in r for r in err.value.reasons)
    assert any("phase 6 split" in r for r in err.value.reasons)
    with pytest.raises(PlanRejected, match="does not fit"):
        plan_writes(elm_plan(2**33), elm_map)
    bare = RegisterMap(device=elm_map.device, registers=tuple(
        r for r in elm_map.registers if r.signal not in (Signal.PLAN_OFFSET, Signal.PLAN_COMMIT)
        and r.name != "min_green_4"))
    with pytest.raises(PlanRejected) as err:
        plan_writes(elm_plan(), bare)
    assert set(err.value.reasons) == {
        "register map has no plan.offset register for offset 10",
        "register map has no plan.min_green register for phase 4",
        "register map has no plan.commit register"}
    assert plan_writes(elm_plan(offset=0.0), RegisterMap(device=elm_map.device, registers=tuple(
        r for r in elm_map.registers if r.signal != Signal.PLAN_OFFSET)))


def test_plan_registers_must_be_allow_listed(elm_map):
    locked = RegisterMap(device=elm_map.device, registers=tuple(
        msgspec.structs.replace(r, access=Access.READ) if r.name == "split_4" else r
        for r in elm_map.registers))
    with pytest.raises(PermissionError, match="split_4"):
        plan_writes(elm_plan(), locked)
    twice = RegisterMap(device=elm_map.device, registers=elm_map.registers + (
        _reg("commit2", "holding", 200, signal="plan.commit", access="write"),))
    with pytest.raises(PlanRejected, match="2 plan.commit registers"):
        plan_writes(elm_plan(), twice)


def test_counters_wrap_at_their_range():
    u16, i16 = _reg("w", "holding", 0), _reg("s", "holding", 1, "int16")
    assert [counter_modulus(r) for r in (u16, i16)] == [65536, 32768]
    assert counter_modulus(_reg("f", "input", 2, "float32")) == 2**24
    assert counter_modulus(_reg("b", "coil", 0, "bool", access="write")) == 2
    assert next_counter(u16, None) == 1.0
    assert next_counter(u16, 65535.0) == 0.0
    assert next_counter(i16, 32767.0) == 0.0


def test_backoff_doubles_to_its_cap_and_resets():
    b = Backoff(0.5, 3.0)
    assert [b.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    b.reset()
    assert b.next_delay() == 0.5
    assert Backoff.for_device(_device(poll_period_s=2.0, timeout_s=1.0, reconnect_max_s=1.5)
                              ).first_s == 1.5
    for first, cap in ((0.0, 1.0), (1.0, 0.5), (math.inf, math.inf)):
        with pytest.raises(ValueError):
            Backoff(first, cap)


# ----------------------------------------------------------------------------- contract
FAST = dict(poll_period_s=0.2, timeout_s=0.15, retries=1, reconnect_max_s=0.5,
            stale_after_polls=2)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


class Rig:
    """A virtual controller and an edge link to it: in memory, over TCP, or over RTU on the
    two ends of a null-modem pty pair (``transport``: "memory", "tcp" or "rtu")."""

    def __init__(self, regmap: RegisterMap, intersection, transport: str, **link_kw) -> None:
        fast = msgspec.structs.replace(regmap.device, **FAST)
        self.modem = NullModem() if transport == "rtu" else None
        if self.modem is not None:  # the controller on one end of the line, the edge on the other
            controller_end, edge_end = self.modem.paths
            fast = msgspec.structs.replace(fast, transport="rtu", serial_port=controller_end,
                                           baudrate=115200)
        self.vc = VirtualController(msgspec.structs.replace(regmap, device=fast),
                                    intersection=intersection).start(tcp=transport != "memory")
        factory = {"client_factory": self.vc.loopback_client} if transport == "memory" else {}
        link_map = self.vc.link_map()
        if self.modem is not None:
            link_map = msgspec.structs.replace(link_map, device=msgspec.structs.replace(
                link_map.device, serial_port=edge_end))
        self.link = ModbusLink(link_map, **factory, **link_kw).start()
        if self.link.autopoll:
            wait_for(lambda: self.link.state == LinkState.UP)

    def close(self) -> None:
        self.link.stop()
        self.vc.stop()
        if self.modem is not None:
            self.modem.close()

    def sees(self, name: str, value: float) -> bool:
        """Wait until the link reads ``value`` fresh from ``name``."""
        wait_for(lambda: not self.link.reading(name).stale
                 and self.link.reading(name).value == value)
        return True


class LinkContract:
    """What the edge can rely on, whatever is at the other end of the link."""

    transport = "memory"

    @pytest.fixture
    def rig(self, elm_map, elm):
        rig = Rig(elm_map, elm, self.transport)
        yield rig
        rig.close()

    def test_polled_values_match_what_the_device_exposes(self, rig):
        bank = rig.vc.bank
        values = {"count_0": 65535, "count_5": 12, "occupancy_3": 0.873, "speed_1": 13.89,
                  "queue_0": 412.7, "phase_ring2": 6, "presence_4": True, "hold_6": True}
        for name, value in values.items():
            bank.store(name, value)
        def arrived() -> bool:
            got = rig.link.readings()
            return all(got[n].value == pytest.approx(float(v)) for n, v in values.items())

        wait_for(arrived)
        got = rig.link.readings()
        for name, value in values.items():
            assert got[name].value == pytest.approx(float(value)), name
            assert not got[name].stale and got[name].read_at == pytest.approx(time.time(), abs=2)
        assert got["count_1"].value == 0.0 and rig.link.state == LinkState.UP
        assert rig.link.value("speed_1") == pytest.approx(13.89)

    @pytest.mark.parametrize("order", ["big", "little"])
    def test_data_types_and_word_order_survive_the_wire(self, order, elm):
        regmap = RegisterMap(device=_device(word_order=order), registers=WORD_MAP_REGS)
        rig = Rig(regmap, None, self.transport)
        try:
            for name, value in WORD_VALUES.items():
                rig.vc.bank.store(name, value)
            wait_for(lambda: {n: r.value for n, r in rig.link.readings().items()}
                     == pytest.approx(WORD_VALUES))
            assert not any(r.stale for r in rig.link.readings().values())
        finally:
            rig.close()

    def test_a_silent_device_gives_stale_values_then_recovers(self, rig, caplog):
        caplog.set_level(logging.INFO, logger="edge_agent.modbus_link")
        rig.vc.bank.store("count_2", 5)
        assert rig.sees("count_2", 5.0)
        rig.vc.stop_server()
        wait_for(lambda: rig.link.reading("count_2").stale)
        assert rig.link.reading("count_2").value == 5.0  # the last value stays, marked stale
        with pytest.raises(DeviceError, match="stale"):
            rig.link.value("count_2")
        assert rig.link.state == LinkState.DOWN
        time.sleep(1.2)  # several reconnect attempts: the backoff reaches its 0.5 s cap
        rig.vc.bank.store("count_2", 6)
        restarted = time.monotonic()
        rig.vc.start_server()
        wait_for(lambda: rig.link.reading("count_2").value == 6.0)
        # Capped backoff: back within the cap plus a poll period (and some slack for CI).
        assert time.monotonic() - restarted < FAST["reconnect_max_s"] + 0.6
        assert rig.link.state == LinkState.UP and not rig.link.reading("count_2").stale
        mine = [r for r in caplog.records if r.name == "edge_agent.modbus_link"]
        assert [r.levelname for r in mine] == ["WARNING", "INFO"]  # once down, once back
        assert "recovered" in mine[1].getMessage()

    def test_a_mute_device_times_out_then_recovers(self, rig):
        rig.vc.bank.store("count_3", 9)
        assert rig.sees("count_3", 9.0)
        rig.vc.mute()
        wait_for(lambda: rig.link.reading("count_3").stale)
        assert rig.link.state == LinkState.DOWN
        rig.vc.bank.store("count_3", 10)
        rig.vc.mute(False)
        wait_for(lambda: rig.link.reading("count_3").value == 10.0)
        assert rig.link.stats.failed_requests > 0

    def test_writes_outside_the_allow_list_never_reach_the_device(self, rig, caplog):
        caplog.set_level(logging.WARNING, logger="edge_agent.modbus_link")
        for name, value in (("count_0", 3), ("alarms", 0), ("no_such_register", 1)):
            with pytest.raises(PermissionError):
                rig.link.write(name, value)
        assert rig.vc.bank.write_log == []
        assert len([r for r in caplog.records if "write refused" in r.getMessage()]) == 3
        # Plan registers change only as a whole, guard-checked plan (write_plan).
        with pytest.raises(PermissionError, match="only through write_plan"):
            rig.link.write("plan_cycle", 80)
        assert rig.vc.bank.write_log == []
        with pytest.raises(ValueError, match="bool register"):
            rig.link.write("hold_2", 0.5)
        rig.link.write("hold_2", True)
        assert [(w.name, w.value) for w in rig.vc.bank.write_log] == [("hold_2", 1.0)]

    def test_a_plan_arrives_register_by_register_commit_last(self, rig, elm, elm_map):
        rig.link.write_plan(elm_plan(), elm)
        arrived = [w.name for w in rig.vc.bank.write_log]
        assert arrived == [w.register.name for w in plan_writes(elm_plan(), elm_map)]
        assert arrived[-1] == "plan_commit"
        stamps = [w.time for w in rig.vc.bank.write_log]
        assert stamps == sorted(stamps)
        # The controller checked and loaded it, and cleared the commit.
        wait_for(lambda: rig.link.reading("mode").value == ControllerMode.REMOTE)
        assert rig.vc.logic.plan.rings == elm_plan().rings
        assert rig.sees("plan_commit", 0.0)

    def test_the_guard_runs_before_anything_is_written(self, rig, elm):
        bad = elm_plan(yellow4=2.5)
        with pytest.raises(PlanRejected, match="yellow-floor"):
            rig.link.write_plan(bad, elm)
        assert rig.vc.bank.write_log == []

    def test_the_controller_refuses_a_bad_plan_written_past_the_guard(self, rig, elm_map):
        # A rogue client (not the edge, which cannot do this) writes plan registers directly.
        rogue = rig.vc.loopback_client()
        address = {r.name: r.address for r in elm_map.registers}

        async def write_past_the_guard() -> None:
            await rogue.connect()
            await rogue.write_registers(address["plan_id"], [0, 3])
            await rogue.write_register(address["plan_cycle"], 800)
            await rogue.write_register(address["plan_commit"], 3)  # splits never staged: zero

        asyncio.run(write_past_the_guard())
        wait_for(lambda: rig.link.reading("alarms").value == Alarm.PLAN_REFUSED
                 and rig.link.reading("alarms").read_at > rig.vc.bank.write_log[-1].time - 1)
        assert rig.link.reading("mode").value == ControllerMode.LOCAL
        assert any("min-green" in r for r in rig.vc.logic.refusals[-1])

    def test_watchdog_increments_arrive(self, rig):
        assert [rig.link.kick_watchdog() for _ in range(3)] == [1.0, 2.0, 3.0]
        assert [w.value for w in rig.vc.bank.write_log] == [1.0, 2.0, 3.0]

    def test_writes_to_an_unreachable_device_raise_device_errors(self, rig, elm):
        rig.vc.stop_server()
        wait_for(lambda: rig.link.state == LinkState.DOWN)
        # Over TCP the connection is gone; a serial port stays open with no one answering.
        why = "no answer to the write" if self.transport == "rtu" else "not connected"
        with pytest.raises(DeviceError, match=why):
            rig.link.write_plan(elm_plan(), elm)
        assert rig.vc.bank.write_log == []  # the first write failed: nothing after it was sent


class TestInMemory(LinkContract):
    transport = "memory"


@pytest.mark.integration
class TestPymodbusTcp(LinkContract):
    transport = "tcp"


@pytest.mark.integration
class TestPymodbusRtu(LinkContract):
    """The same contract over Modbus RTU: pymodbus' serial client and server on real
    (pseudo-)serial ports joined by a null modem."""

    transport = "rtu"


# ----------------------------------------------------------------------------- link edges
def test_link_refuses_unknown_poll_names_and_use_before_start(elm_map):
    with pytest.raises(ValueError, match="nope"):
        ModbusLink(elm_map, poll=["count_0", "nope"])
    link = ModbusLink(elm_map, poll=["count_0"], autopoll=False)
    assert [str(b) for b in link.blocks] == ["input 0..0"]
    with pytest.raises(DeviceError, match="not started"):
        link.write("hold_2", True)
    link.stop()  # harmless


def test_poll_now_without_autopoll_and_device_refusals(elm_map, elm):
    rig = Rig(elm_map, elm, "memory", autopoll=False)
    try:
        assert rig.link.state == LinkState.CONNECTING
        assert rig.link.poll_now() is True
        assert rig.link.stats.requests == len(rig.link.blocks)
        # A map that names an address the device lacks: that block is refused, others read.
        bigger = RegisterMap(device=rig.vc.link_map().device, registers=elm_map.registers + (
            _reg("ghost", "input", 500),))
        link = ModbusLink(bigger, client_factory=rig.vc.loopback_client, autopoll=False).start()
        try:
            assert link.poll_now() is False
            assert link.reading("ghost").stale and not link.reading("count_0").stale
        finally:
            link.stop()
    finally:
        rig.close()


def test_a_bad_client_setting_is_a_device_error(elm_map):
    rtu = RegisterMap(device=DeviceSettings(id="rtu", transport=Transport.RTU,
                                            serial_port="/dev/null-tsc", poll_period_s=0.2,
                                            timeout_s=0.1), registers=elm_map.registers)

    def broken(settings):
        raise ValueError("no such serial port")

    with pytest.raises(DeviceError, match="no such serial port"):
        ModbusLink(rtu, client_factory=broken).start()
    try:
        link = ModbusLink(rtu, autopoll=False).start()  # pymodbus' serial client
    except DeviceError as exc:  # pymodbus needs pyserial for RTU (pymodbus[serial])
        assert "pyserial" in str(exc)
        return
    try:  # the port does not exist: the link is down, nothing hangs
        assert link.poll_now() is False and link.state == LinkState.DOWN
    finally:
        link.stop()


def test_a_virtual_rtu_controller_without_its_serial_port_says_which(elm_map):
    rtu = RegisterMap(device=DeviceSettings(id="rtu", transport=Transport.RTU,
                                            serial_port="/dev/no-such-tty-tsc"),
                      registers=elm_map.registers)
    with pytest.raises(DeviceError, match="/dev/no-such-tty-tsc"):
        VirtualController(rtu).start()
