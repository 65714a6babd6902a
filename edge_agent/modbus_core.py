"""The pure part of the edge's Modbus adapter: what to read, what a reading means, what to write.

No IO and no clock of its own (time is an argument), so everything here is unit-tested fast;
:mod:`edge_agent.modbus_link` does the talking.

* :func:`plan_blocks` groups the registers to poll into as few read requests as the protocol
  allows: contiguous runs of one table (a gap is bridged only up to ``max_gap``, because many
  controllers answer a read that spans an unmapped address with ILLEGAL ADDRESS), at most 125
  words or 2000 bits per request (the Modbus limits for function codes 3/4 and 1/2).
* :class:`ReadingBook` keeps the last value of every register with the time it was read, and
  marks it stale once ``stale_after_polls`` polls in a row missed it. A second, time-based rule
  (older than ``stale_after_polls + 1`` poll periods) catches a poll loop that stopped ticking.
* :func:`plan_writes` turns a :class:`~edge_agent.plan.TimingPlan` into the register writes that
  stage it, commit last, every register taken through :meth:`RegisterMap.writable` (the
  allow-list) and every value checked to survive the register's resolution exactly: a plan is
  refused, never rounded.
* :class:`HealthLog`: log once on entering an error state and once on leaving it.
* :class:`Backoff`: reconnect delays that double from a floor to a cap (never zero: pymodbus
  #1794 busy-looped on a zero delay; never pymodbus' 300 s default cap).
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from edge_agent.errors import PlanRejected
from edge_agent.plan import TimingPlan
from edge_agent.registers import (
    DataType,
    DeviceSettings,
    Register,
    RegisterMap,
    Signal,
    Table,
    WordOrder,
    decode_value,
    encode_value,
)

__all__ = [
    "MAX_READ_BITS",
    "MAX_READ_WORDS",
    "Backoff",
    "Block",
    "HealthLog",
    "LinkState",
    "LinkStats",
    "PlannedWrite",
    "Reading",
    "ReadingBook",
    "counter_modulus",
    "next_counter",
    "plan_blocks",
    "plan_writes",
    "planned_write",
]

MAX_READ_WORDS = 125  # Modbus: read holding/input registers, at most 125 per request
MAX_READ_BITS = 2000  # Modbus: read coils/discrete inputs, at most 2000 per request
_TABLE_ORDER = (Table.INPUT, Table.DISCRETE, Table.HOLDING, Table.COIL)


@dataclass(frozen=True, slots=True)
class Block:
    """One read request: ``count`` words (or bits) of ``table`` from ``start``."""

    table: Table
    start: int
    count: int
    registers: tuple[Register, ...]

    def raw_of(self, reg: Register, raw: Sequence[int] | Sequence[bool]) -> list:
        """The words (or bits) of ``reg`` within this block's response ``raw``."""
        offset = reg.address - self.start
        return list(raw[offset:offset + reg.width])

    def __str__(self) -> str:
        return f"{self.table.value} {self.start}..{self.start + self.count - 1}"


def plan_blocks(registers: Iterable[Register], *, max_gap: int = 0,
                max_words: int = MAX_READ_WORDS, max_bits: int = MAX_READ_BITS) -> list[Block]:
    """Group ``registers`` into read requests, per table, in address order.

    A block grows while the next register starts at most ``max_gap`` addresses after the
    block's end and the block stays within the per-request limit. Raises ValueError for a
    negative gap or a limit below 2 (a 32-bit value must fit one request).
    """
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap}")
    if min(max_words, max_bits) < 2:
        raise ValueError("per-request limits must be >= 2")
    blocks: list[Block] = []
    by_table: dict[Table, list[Register]] = {}
    for reg in registers:
        by_table.setdefault(Table(reg.table), []).append(reg)
    for table in _TABLE_ORDER:
        limit = max_bits if table in (Table.COIL, Table.DISCRETE) else max_words
        run: list[Register] = []
        for reg in sorted(by_table.get(table, []), key=lambda r: r.address):
            if run:
                start, end = run[0].address, run[-1].address + run[-1].width
                if reg.address - end <= max_gap and reg.address + reg.width - start <= limit:
                    run.append(reg)
                    continue
                blocks.append(_block(table, run))
            run = [reg]
        if run:
            blocks.append(_block(table, run))
    return blocks


def _block(table: Table, run: list[Register]) -> Block:
    start = run[0].address
    end = max(r.address + r.width for r in run)
    return Block(table, start, end - start, tuple(run))


@dataclass(frozen=True, slots=True)
class Reading:
    """The last value of one register, when it was read, and whether it can still be trusted.

    ``value`` and ``read_at`` are None until the register was first read; ``misses`` counts the
    polls in a row that did not refresh it; ``stale`` is True until the first read and once
    the value is too old to use.
    """

    name: str
    value: float | None
    read_at: float | None
    misses: int
    stale: bool


class ReadingBook:
    """Value bookkeeping for one device: the last good value of every polled register.

    Not thread-safe by itself: the link updates it from its event loop and hands out
    snapshots (immutable :class:`Reading` objects) under its own lock.
    """

    def __init__(self, registers: Iterable[Register], settings: DeviceSettings, *,
                 time_scale: float = 1.0) -> None:
        if not (math.isfinite(time_scale) and time_scale > 0):
            raise ValueError(f"time_scale: must be a finite number > 0, got {time_scale!r}")
        self.settings = settings
        # Read times are on the caller's clock, which runs time_scale times as fast as the
        # wall clock the polls are paced by (1 but in a simulation run faster than real time).
        self._period = settings.poll_period_s * time_scale
        self.registers = {r.name: r for r in registers}
        self._value: dict[str, float] = {}
        self._read_at: dict[str, float] = {}
        self._misses: dict[str, int] = dict.fromkeys(self.registers, 0)
        self.invalid: dict[str, str] = {}  # register -> why its last raw value was refused

    def record(self, block: Block, raw: Sequence[int] | Sequence[bool], now: float) -> None:
        """Store the values of ``block`` decoded from one response read at ``now``.

        A value that decodes to NaN or infinity (a float32 register holding garbage) counts as
        a miss for that register, and the reason is kept in :attr:`invalid`.
        """
        order = WordOrder(self.settings.word_order)
        for reg in block.registers:
            value = decode_value(reg, block.raw_of(reg, raw), order)
            if not math.isfinite(value):
                self._misses[reg.name] += 1
                self.invalid[reg.name] = f"non-finite value {value!r}"
                continue
            self.invalid.pop(reg.name, None)
            self._value[reg.name], self._read_at[reg.name] = value, now
            self._misses[reg.name] = 0

    def miss(self, registers: Iterable[Register]) -> None:
        """One poll went by without refreshing ``registers``."""
        for reg in registers:
            self._misses[reg.name] += 1

    def miss_all(self) -> None:
        """One poll went by without refreshing anything (the link is down)."""
        self.miss(self.registers.values())

    def reading(self, name: str, now: float) -> Reading:
        """The reading of register ``name`` as of ``now`` (KeyError if it is not polled)."""
        reg = self.registers[name]
        value, read_at, misses = self._value.get(name), self._read_at.get(name), \
            self._misses[name]
        limit = self.settings.stale_after_polls
        stale = read_at is None or misses >= limit or \
            now - read_at > (limit + 1) * self._period
        return Reading(reg.name, value, read_at, misses, stale)

    def snapshot(self, now: float) -> dict[str, Reading]:
        """Every polled register's reading as of ``now``."""
        return {name: self.reading(name, now) for name in self.registers}


@dataclass(frozen=True, slots=True)
class PlannedWrite:
    """One register write: the engineering value and the raw words (or bit) that carry it."""

    register: Register
    value: float
    raw: tuple[int, ...] | tuple[bool, ...]


def counter_modulus(reg: Register) -> int:
    """How many raw values a counter register runs through before it wraps."""
    if reg.type == DataType.BOOL:
        return 2
    if reg.type == DataType.FLOAT32:
        return 2 ** 24  # integers above 2^24 are not all exact in float32
    return 2 ** (16 * reg.width - (1 if reg.type in (DataType.INT16, DataType.INT32) else 0))


def next_counter(reg: Register, current: float | None) -> float:
    """The value after ``current`` for a heartbeat counter: +1 raw step, wrapping to 0."""
    raw = 0 if current is None else int(round(current / reg.scale))
    return ((raw + 1) % counter_modulus(reg)) * reg.scale


def _commit_value(reg: Register, plan_id: int) -> float:
    # A value that changes from one plan to the next and is never 0, so a controller that
    # watches the register (rather than the write) sees every commit.
    modulus = counter_modulus(reg)
    return 1.0 if modulus == 2 else ((plan_id - 1) % (modulus - 1) + 1) * reg.scale


def planned_write(reg: Register, value: float | bool, order: WordOrder) -> PlannedWrite:
    """The write of ``value`` to ``reg``; ValueError unless the register carries it exactly
    (in range, and a multiple of its resolution: values are refused, never rounded)."""
    raw = encode_value(reg, value, order)
    back = decode_value(reg, raw, order)
    if abs(back - float(value)) > max(1e-6, 1e-6 * abs(float(value))):
        raise ValueError(f"{value:g} is not a multiple of register {reg.name}'s resolution "
                         f"{reg.scale:g} (it would arrive as {back:g})")
    return PlannedWrite(reg, float(value), tuple(raw))


def _exact(reg: Register, value: float, order: WordOrder, what: str,
           reasons: list[str]) -> PlannedWrite | None:
    try:
        return planned_write(reg, value, order)
    except ValueError as exc:
        reasons.append(f"{what}: {exc}")
        return None


def plan_writes(plan: TimingPlan, regmap: RegisterMap) -> list[PlannedWrite]:
    """The writes that stage ``plan`` on the controller, in order, ``plan.commit`` last.

    Order: plan id, cycle, offset, then per phase in ring order its split, min green and max
    green, then the commit. Every register comes from :meth:`RegisterMap.writable`, so a map
    that marks a plan register read-only raises PermissionError. Raises
    :class:`~edge_agent.errors.PlanRejected` (every reason at once) when the map cannot carry
    the plan: a missing register, a value out of the register's range or off its resolution.
    Writes nothing itself.
    """
    order = WordOrder(regmap.device.word_order)
    reasons: list[str] = []
    out: list[PlannedWrite] = []

    def single(signal: Signal, required: bool) -> Register | None:
        found = regmap.by_signal(signal)
        if len(found) > 1:
            reasons.append(f"register map has {len(found)} {signal.value} registers, "
                           f"expected one")
            return None
        if not found:
            if required:
                reasons.append(f"register map has no {signal.value} register")
            return None
        return regmap.writable(found[0].name)

    def add(reg: Register | None, value: float, what: str) -> None:
        if reg is not None:
            planned = _exact(reg, value, order, what, reasons)
            if planned is not None:
                out.append(planned)

    add(single(Signal.PLAN_ID, True), float(plan.plan_id), "plan id")
    add(single(Signal.PLAN_CYCLE, True), plan.cycle, "cycle")
    offset_reg = single(Signal.PLAN_OFFSET, False)
    if offset_reg is None and plan.offset != 0.0:
        reasons.append(f"register map has no plan.offset register for offset {plan.offset:g}")
    add(offset_reg, plan.offset, "offset")
    per_phase = {s: {r.phase: r for r in regmap.by_signal(s)}
                 for s in (Signal.PLAN_SPLIT, Signal.PLAN_MIN_GREEN, Signal.PLAN_MAX_GREEN)}
    for ring in plan.rings:
        for t in ring:
            for signal, value in ((Signal.PLAN_SPLIT, t.split),
                                  (Signal.PLAN_MIN_GREEN, t.min_green),
                                  (Signal.PLAN_MAX_GREEN, t.max_green)):
                regs = per_phase[signal]
                if t.phase in regs:
                    add(regmap.writable(regs[t.phase].name), value,
                        f"phase {t.phase} {signal.value.split('.')[1]}")
                elif regs or signal == Signal.PLAN_SPLIT:
                    # Splits always; bounds wherever the map carries bounds for some phase.
                    reasons.append(f"register map has no {signal.value} register for phase "
                                   f"{t.phase}")
    commit = single(Signal.PLAN_COMMIT, True)
    if commit is not None:
        add(commit, _commit_value(commit, plan.plan_id), "commit")
    if reasons:
        raise PlanRejected(plan.plan_id, reasons)
    return out


class Backoff:
    """Reconnect delays: ``first_s``, doubling each failure, capped at ``max_s``.

    ``first_s`` must be > 0: a zero delay reconnects in a tight loop (pymodbus #1794).
    """

    def __init__(self, first_s: float, max_s: float) -> None:
        if not (first_s > 0.0 and math.isfinite(first_s)):
            raise ValueError(f"first_s must be a positive number, got {first_s!r}")
        if not (max_s >= first_s and math.isfinite(max_s)):
            raise ValueError(f"max_s must be >= first_s ({first_s:g}), got {max_s!r}")
        self.first_s, self.max_s = first_s, max_s
        self.failures = 0

    @classmethod
    def for_device(cls, settings: DeviceSettings) -> Backoff:
        """First retry one poll period after a failure (or the cap if shorter)."""
        return cls(min(settings.poll_period_s, settings.reconnect_max_s),
                   settings.reconnect_max_s)

    def next_delay(self) -> float:
        """Record one more failure and return how long to wait before the next attempt."""
        delay = min(self.max_s, self.first_s * 2.0 ** min(self.failures, 60))
        self.failures += 1
        return delay

    def reset(self) -> None:
        """A success: the next failure waits ``first_s`` again."""
        self.failures = 0


class LinkState(str, enum.Enum):
    """Where a link stands with its device."""

    STOPPED = "stopped"
    CONNECTING = "connecting"  # started, the device has not answered yet
    UP = "up"  # the device answered the last request
    DOWN = "down"  # connect failed, the connection was lost, or requests went unanswered


@dataclass
class LinkStats:
    """Counters since start: polls, read requests, registers decoded, failures, writes."""

    polls: int = 0
    requests: int = 0
    values: int = 0
    failed_requests: int = 0
    connects: int = 0
    failed_connects: int = 0
    writes: int = 0


class HealthLog:
    """Log once on entering an error state (WARNING) and once on leaving it (INFO)."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self.log, self.what = log, what
        self.since: float | None = None
        self.reason = ""

    @property
    def failing(self) -> bool:
        """True between :meth:`failed` and :meth:`ok`."""
        return self.since is not None

    def failed(self, now: float, reason: str) -> None:
        """An error; logged only if the state was fine until now."""
        if self.since is None:
            self.since, self.reason = now, reason
            self.log.warning("%s: %s", self.what, reason)

    def ok(self, now: float) -> None:
        """A success; logs the recovery if the state was failing."""
        if self.since is not None:
            self.log.info("%s: recovered after %.1f s (was: %s)", self.what, now - self.since,
                          self.reason)
            self.since = None
