"""Register maps: validation, the write allow-list, and value encoding in both word orders."""

from __future__ import annotations

import math
import re
import struct
from typing import Any, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.config import load_toml
from edge_agent.registers import (
    Access,
    DataType,
    DeviceSettings,
    Register,
    RegisterMap,
    Signal,
    Table,
    Transport,
    WordOrder,
    decode_value,
    encode_value,
)

from conftest import CONFIGS

ELM = load_toml(CONFIGS / "modbus-elm-1st.toml", RegisterMap)
RANGES = {DataType.UINT16: (0, 2**16 - 1), DataType.INT16: (-2**15, 2**15 - 1),
          DataType.UINT32: (0, 2**32 - 1), DataType.INT32: (-2**31, 2**31 - 1)}


def reg(name: str = "r", **changes: Any) -> Register:
    fields: dict[str, Any] = {"name": name, "table": "holding", "address": 0, "type": "uint16",
                              "signal": "watchdog"}
    return Register(**(fields | changes))


def device(**changes: Any) -> DeviceSettings:
    return DeviceSettings(**({"id": "cab", "transport": "tcp"} | changes))


def named(field: str) -> str:
    return "^" + re.escape(f"{field}: ")


# --- the shipped map -------------------------------------------------------------------
def test_only_allow_listed_registers_are_writable() -> None:
    assert ELM.writable("plan_commit").signal is Signal.PLAN_COMMIT
    assert ELM.writable("hold_2").table is Table.COIL
    with pytest.raises(PermissionError, match="count_0 is not allow-listed for writing"):
        ELM.writable("count_0")
    with pytest.raises(PermissionError, match="presence_0 is not allow-listed"):
        ELM.writable("presence_0")
    with pytest.raises(PermissionError, match="nope is not in the map; writes are deny-by-default"):
        ELM.writable("nope")
    writable = {r.name for r in ELM.registers if r.access is Access.WRITE}
    assert all(r.table in (Table.HOLDING, Table.COIL) for r in ELM.registers if r.name in writable)


def test_by_signal() -> None:
    splits = ELM.by_signal(Signal.PLAN_SPLIT)
    assert [(r.name, r.phase) for r in splits] == [("split_2", 2), ("split_4", 4),
                                                   ("split_6", 6), ("split_8", 8)]
    assert [r.name for r in ELM.by_signal(Signal.WATCHDOG)] == ["watchdog"]
    assert [r.ring for r in ELM.by_signal(Signal.CONTROLLER_PHASE)] == [1, 2]
    bare = RegisterMap(device=device(), registers=(reg(),))
    assert bare.by_signal(Signal.PLAN_ID) == []


def test_shipped_map_enums_and_device() -> None:
    plan_id = ELM.writable("plan_id")
    assert (plan_id.table, plan_id.type, plan_id.access, plan_id.width) == \
        (Table.HOLDING, DataType.UINT32, Access.WRITE, 2)
    assert ELM.device.transport is Transport.TCP and ELM.device.word_order is WordOrder.BIG


# --- registers -------------------------------------------------------------------------
def test_enum_strings_are_converted() -> None:
    r = reg(table="coil", type="bool", signal="phase.hold", access="write", phase=2)
    assert (r.table, r.type, r.signal, r.access) == \
        (Table.COIL, DataType.BOOL, Signal.PHASE_HOLD, Access.WRITE)
    assert reg().access is Access.READ


@pytest.mark.parametrize(("type_", "width"), [("bool", 1), ("uint16", 1), ("int16", 1),
                                              ("uint32", 2), ("int32", 2), ("float32", 2)])
def test_width(type_: str, width: int) -> None:
    table = "coil" if type_ == "bool" else "holding"
    assert reg(table=table, type=type_).width == width


@pytest.mark.parametrize(("build", "expected"), [
    (lambda: reg("a b"), named("register.name") + "must be 1-64 characters"),
    (lambda: reg(table="register"), named("register r.table") + "must be one of 'coil'"),
    (lambda: reg(type="uint8"), named("register r.type") + "must be one of 'bool'"),
    (lambda: reg(signal="detector"), named("register r.signal") + "must be one of"),
    (lambda: reg(access="rw"), named("register r.access") + "must be one of 'read', 'write'"),
    (lambda: reg(address=-1), named("register r.address") + r"must be within 0\.\.65535"),
    (lambda: reg(address=65536), named("register r.address") + "must be within 0..65535"),
    (lambda: reg(address=65535, type="uint32"),
     named("register r.address") + "must be within 0..65534"),
    (lambda: reg(address=1.0), named("register r.address") + "must be an integer"),
    (lambda: reg(scale=0.0), named("register r.scale") + "must not be 0"),
    (lambda: reg(scale=float("nan")), named("register r.scale") + "must be a finite"),
    (lambda: reg(scale="0.1"), named("register r.scale") + "must be a number"),
    # bit tables hold bools, word tables hold words
    (lambda: reg(table="coil", type="uint16"),
     named("register r.type") + "coil registers hold bool, not uint16"),
    (lambda: reg(table="discrete", type="float32"),
     named("register r.type") + "discrete registers hold bool, not float32"),
    (lambda: reg(table="holding", type="bool"),
     named("register r.type") + "holding registers hold 16-bit words, not bool"),
    (lambda: reg(table="input", type="bool"),
     named("register r.type") + "input registers hold 16-bit words, not bool"),
    # read-only tables cannot be allow-listed for writing
    (lambda: reg(table="input", access="write"),
     named("register r.access") + "input registers are read-only"),
    (lambda: reg(table="discrete", type="bool", access="write"),
     named("register r.access") + "discrete registers are read-only"),
])
def test_bad_registers_are_rejected(build: Callable[[], Any], expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        build()


def test_address_range_depends_on_width() -> None:
    assert reg(address=65535).address == 65535
    assert reg(address=65534, type="float32").address == 65534
    assert reg(table="coil", type="bool", address=65535).address == 65535


@pytest.mark.parametrize("signal", [s for s in Signal if s.value.startswith("detector.")])
def test_detector_signals_need_a_detector(signal: Signal) -> None:
    with pytest.raises(ValueError, match=named("register r.detector")
                       + f"{re.escape(signal.value)} needs the detector id"):
        reg(table="input", signal=signal.value)
    assert reg(table="input", signal=signal.value, detector="d1").detector == "d1"


@pytest.mark.parametrize("signal", [Signal.PLAN_SPLIT, Signal.PLAN_MIN_GREEN,
                                    Signal.PLAN_MAX_GREEN, Signal.PHASE_HOLD,
                                    Signal.PHASE_FORCE_OFF])
def test_per_phase_plan_signals_need_a_phase(signal: Signal) -> None:
    with pytest.raises(ValueError, match=named("register r.phase")
                       + f"{re.escape(signal.value)} needs a phase"):
        reg(signal=signal.value)
    assert reg(signal=signal.value, phase=4).phase == 4


# --- register maps ---------------------------------------------------------------------
@pytest.mark.parametrize(("registers", "expected"), [
    ((), named("registers") + "must not be empty"),
    ((reg("a"), reg("a", address=1)), named("registers") + "duplicate id 'a'"),
    ((reg("a"), reg("b")), named("register b.address") + "holding 0 is already used by a"),
    # a 32-bit register occupies two addresses: the next one overlaps its low word
    ((reg("a", address=100, type="uint32"), reg("b", address=101)),
     named("register b.address") + "holding 101 is already used by a"),
    ((reg("b", address=101), reg("a", address=100, type="int32")),
     named("register a.address") + "holding 101 is already used by b"),
    ((reg("a", address=100, type="float32"), reg("b", address=99, type="uint32")),
     named("register b.address") + "holding 100 is already used by a"),
])
def test_bad_register_maps(registers: tuple[Register, ...], expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        RegisterMap(device=device(), registers=registers)


def test_tables_have_separate_address_spaces_and_neighbours_do_not_overlap() -> None:
    m = RegisterMap(device=device(), registers=(
        reg("a", address=100, type="uint32"), reg("b", address=102, type="float32"),
        reg("c", address=104), reg("d", table="input", address=100, type="int32"),
        reg("e", table="coil", type="bool", address=100),
        reg("f", table="discrete", type="bool", address=100)))
    assert [r.name for r in m.registers] == ["a", "b", "c", "d", "e", "f"]


# --- device settings -------------------------------------------------------------------
def test_device_defaults_and_enums() -> None:
    d = device(word_order="little")
    assert d.transport is Transport.TCP and d.word_order is WordOrder.LITTLE
    assert (d.port, d.unit_id, d.timeout_s, d.poll_period_s) == (502, 1, 0.5, 1.0)
    rtu = device(transport="rtu", serial_port="/dev/ttyUSB0", baudrate=19200, parity="E",
                 stopbits=2)
    assert rtu.transport is Transport.RTU
    assert device(reconnect_max_s=30.0).reconnect_max_s == 30.0


@pytest.mark.parametrize(("changes", "expected"), [
    ({"id": ""}, named("device.id") + "must be 1-64"),
    ({"transport": "udp"}, named("device.transport") + "must be one of 'tcp', 'rtu'"),
    ({"word_order": "middle"}, named("device.word_order") + "must be one of 'big', 'little'"),
    ({"unit_id": 248}, named("device.unit_id") + "must be within 0..247"),
    ({"port": 0}, named("device.port") + "must be within 1..65535"),
    ({"port": 65536}, named("device.port") + "must be within 1..65535"),
    ({"retries": 11}, named("device.retries") + "must be within 0..10"),
    ({"stale_after_polls": 0}, named("device.stale_after_polls") + "must be within 1..1000"),
    ({"parity": "X"}, named("device.parity") + "must be N, E or O"),
    ({"parity": "n"}, named("device.parity") + "must be N, E or O"),
    ({"stopbits": 3}, named("device.stopbits") + "must be 1 or 2"),
    ({"baudrate": 9601}, named("device.baudrate") + "unsupported baud rate 9601"),
    ({"baudrate": 250000}, named("device.baudrate") + "unsupported baud rate"),
    ({"poll_period_s": 0.0}, named("device.poll_period_s") + "must be >= 0.01"),
    ({"timeout_s": float("inf")}, named("device.timeout_s") + "must be a finite"),
    ({"reconnect_max_s": "5"}, named("device.reconnect_max_s") + "must be a number"),
    # a poll must time out before the next is due
    ({"timeout_s": 1.0, "poll_period_s": 1.0},
     named("device.timeout_s") + r"must be shorter than poll_period_s \(1 s\)"),
    ({"timeout_s": 2.0}, named("device.timeout_s") + "must be shorter than poll_period_s"),
    ({"reconnect_max_s": 30.5}, named("device.reconnect_max_s") + "cap reconnect backoff at 30"),
    ({"transport": "rtu"}, named("device.serial_port") + "required for rtu"),
])
def test_bad_device_settings(changes: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        device(**changes)


# --- decoding and encoding -------------------------------------------------------------
ORDERS = [WordOrder.BIG, WordOrder.LITTLE]
word = st.integers(0, 0xFFFF)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("type_", [DataType.UINT16, DataType.INT16])
@given(raw=word)
def test_16_bit_words_round_trip(type_: DataType, order: WordOrder, raw: int) -> None:
    r = reg(type=type_.value)
    value = decode_value(r, [raw], order)
    assert RANGES[type_][0] <= value <= RANGES[type_][1]
    assert encode_value(r, value, order) == [raw]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("type_", [DataType.UINT32, DataType.INT32, DataType.FLOAT32])
@given(raw=st.lists(word, min_size=2, max_size=2))
def test_32_bit_words_round_trip(type_: DataType, order: WordOrder, raw: list[int]) -> None:
    r = reg(type=type_.value)
    value = decode_value(r, raw, order)
    if math.isnan(value) or math.isinf(value):
        return  # NaN and infinity decode, but are never written
    assert encode_value(r, value, order) == raw


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("type_", list(RANGES))
@given(data=st.data())
def test_integers_round_trip(type_: DataType, order: WordOrder, data: st.DataObject) -> None:
    r = reg(type=type_.value)
    value = data.draw(st.integers(*RANGES[type_]))
    assert decode_value(r, encode_value(r, value, order), order) == value


@pytest.mark.parametrize("order", ORDERS)
@given(value=st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_float32_values_round_trip(order: WordOrder, value: float) -> None:
    r = reg(type="float32")
    assert decode_value(r, encode_value(r, value, order), order) == value


@pytest.mark.parametrize(("type_", "value", "big"), [
    ("uint32", 0x00010002, [0x0001, 0x0002]),
    ("int32", -2, [0xFFFF, 0xFFFE]),
    ("float32", 1.0, [0x3F80, 0x0000]),
    ("float32", -2.5, [0xC020, 0x0000]),
])
def test_word_order_of_32_bit_values(type_: str, value: float, big: list[int]) -> None:
    r = reg(type=type_)
    assert encode_value(r, value, WordOrder.BIG) == big
    assert encode_value(r, value, WordOrder.LITTLE) == big[::-1]  # low word first
    assert decode_value(r, big, WordOrder.BIG) == value
    assert decode_value(r, big[::-1], WordOrder.LITTLE) == value
    # read with the wrong order, the same words mean something else
    assert decode_value(r, big, WordOrder.LITTLE) != value


@pytest.mark.parametrize("order", ORDERS)
def test_16_bit_values_ignore_word_order(order: WordOrder) -> None:
    assert encode_value(reg(type="int16"), -1, order) == [0xFFFF]
    assert decode_value(reg(type="int16"), [0x8000], order) == -32768


def test_scale_is_applied_both_ways() -> None:
    occupancy = ELM.registers[6]
    assert (occupancy.name, occupancy.scale) == ("occupancy_0", 0.001)
    assert decode_value(occupancy, [500], WordOrder.BIG) == pytest.approx(0.5)
    assert encode_value(occupancy, 0.5, WordOrder.BIG) == [500]
    cycle = ELM.writable("plan_cycle")
    assert encode_value(cycle, 120.0, WordOrder.BIG) == [1200]
    assert encode_value(cycle, 12.34, WordOrder.BIG) == [123]  # rounded to the register's step
    assert decode_value(cycle, [1200], WordOrder.BIG) == pytest.approx(120.0)
    negative = reg(type="int32", scale=-0.5)
    assert encode_value(negative, 10.0, WordOrder.LITTLE) == [0xFFEC, 0xFFFF]  # raw -20
    assert decode_value(negative, [0xFFEC, 0xFFFF], WordOrder.LITTLE) == 10.0
    scaled_float = reg(type="float32", scale=0.01)
    assert encode_value(scaled_float, 1.0, WordOrder.BIG) == \
        [int.from_bytes(struct.pack(">f", 100.0)[i:i + 2], "big") for i in (0, 2)]


def test_bits() -> None:
    coil = reg(table="coil", type="bool")
    assert decode_value(coil, [True], WordOrder.BIG) == 1.0
    assert decode_value(coil, [False], WordOrder.LITTLE) == 0.0
    assert decode_value(coil, [1], WordOrder.BIG) == 1.0
    assert encode_value(coil, True, WordOrder.BIG) == [1]
    assert encode_value(coil, 0, WordOrder.BIG) == [0]
    assert encode_value(coil, 1.0, WordOrder.LITTLE) == [1]
    with pytest.raises(ValueError, match="expected 1 words, got 2"):
        decode_value(coil, [True, False], WordOrder.BIG)


@pytest.mark.parametrize(("type_", "value"), [
    ("uint16", 65536), ("uint16", -1), ("int16", 32768), ("int16", -32769),
    ("uint32", 2**32), ("uint32", -0.6), ("int32", 2**31), ("int32", -2**31 - 1),
    ("float32", 1e39), ("float32", -1e39),
])
def test_values_that_do_not_fit_name_the_register(type_: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"^register r: {re.escape(repr(value))} does not fit "
                                         f"{type_}$"):
        encode_value(reg(type=type_), value, WordOrder.BIG)


def test_scale_counts_when_fitting() -> None:
    tenths = reg(type="uint16", scale=0.1)
    assert encode_value(tenths, 6553.5, WordOrder.BIG) == [65535]
    with pytest.raises(ValueError, match="^register r: 6553.6 does not fit uint16"):
        encode_value(tenths, 6553.6, WordOrder.BIG)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_are_never_encoded(value: float) -> None:
    for r in (reg(type="float32"), reg(type="uint16")):
        with pytest.raises(ValueError, match="^register r: must be a finite"):
            encode_value(r, value, WordOrder.BIG)
    with pytest.raises(ValueError, match="^register r: a bool register takes 0/1"):
        encode_value(reg(table="coil", type="bool"), value, WordOrder.BIG)


@pytest.mark.parametrize(("raw", "expected"), [
    ([], "expected 2 words, got 0"), ([1], "expected 2 words, got 1"),
    ([1, 2, 3], "expected 2 words, got 3"), ([0, 0x10000], "raw word out of range: 65536"),
    ([-1, 0], "raw word out of range: -1"), ([0, 1.5], "raw word out of range: 1.5"),
    ([0, "1"], "raw word out of range: '1'"),
])
def test_bad_raw_words_name_the_register(raw: list, expected: str) -> None:
    with pytest.raises(ValueError, match=f"^register r: {re.escape(expected)}"):
        decode_value(reg(type="uint32"), raw, WordOrder.BIG)


@pytest.mark.parametrize("order", ORDERS)
def test_decode_does_not_mutate_the_callers_words(order: WordOrder) -> None:
    raw = [0x0001, 0x0002]
    for type_ in ("uint32", "int32", "float32"):
        decode_value(reg(type=type_), raw, order)
        assert raw == [0x0001, 0x0002]
    # decoding twice gives the same value (a reversed-in-place list would flip it back)
    r = reg(type="uint32")
    assert decode_value(r, raw, order) == decode_value(r, raw, order)


def test_encode_returns_a_fresh_list() -> None:
    r = reg(type="uint32")
    first = encode_value(r, 7, WordOrder.LITTLE)
    first.append(99)
    assert encode_value(r, 7, WordOrder.LITTLE) == [7, 0]
