"""The edge's Modbus adapter: polls one controller cabinet and writes plans to it (pymodbus 3).

One :class:`ModbusLink` per device, one pymodbus client per link, and every call on that client
runs on the link's own thread and event loop, one at a time: pymodbus clients are not safe for
concurrent calls (pymodbus #2432). Other threads use the blocking methods here, which hand the
work to that loop and wait for it.

Polling, every ``poll_period_s`` of the register map's ``[device]``:

* the registers are read in the fewest requests (:func:`~edge_agent.modbus_core.plan_blocks`),
  each request with ``timeout_s`` (shorter than the period, validated by the map) and at most
  ``retries`` retries while the poll's period has time left, so polls never pile up;
* values are decoded with :func:`~edge_agent.registers.decode_value` and kept with their read
  time (the injected ``clock``, POSIX seconds by default); a value is stale after
  ``stale_after_polls`` missed polls (:class:`~edge_agent.modbus_core.ReadingBook`);
* the link reconnects itself with a backoff from one poll period doubling up to
  ``reconnect_max_s``: pymodbus' own reconnect is switched off (``reconnect_delay=0``), since its
  cap defaults to 300 s and a zero delay once busy-looped (#1794). The backoff restarts only
  after the device has answered, so a port that accepts connections but never answers does not
  get hammered.

Writes go only to allow-listed registers (:meth:`RegisterMap.writable`); anything else raises
PermissionError, is logged and never reaches the wire. :meth:`ModbusLink.write_plan` checks the
plan with the guard, then stages it register by register and writes ``plan.commit`` last.

Errors: library failures become :class:`~edge_agent.errors.DeviceError`; the link logs once when
the device stops answering (or a block is refused) and once when it recovers. pymodbus itself
still logs each failed request and connect at WARNING/ERROR on the ``pymodbus.logging`` logger;
raise that logger's level if those lines are unwanted.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException

from edge_agent.errors import DeviceError, PlanRejected
from edge_agent.guard import check_plan
from edge_agent.model import Intersection
from edge_agent.modbus_core import (Backoff, Block, HealthLog, LinkState, LinkStats,
                                    PlannedWrite, Reading, ReadingBook, next_counter,
                                    plan_blocks, plan_writes, planned_write)
from edge_agent.plan import TimingPlan
from edge_agent.registers import (DeviceSettings, Register, RegisterMap, Signal, Table,
                                  Transport, WordOrder)

__all__ = ["LinkState", "LinkStats", "ModbusLink", "pymodbus_client"]

_log = logging.getLogger(__name__)
T = TypeVar("T")
_READ = {Table.INPUT: "read_input_registers", Table.HOLDING: "read_holding_registers",
         Table.COIL: "read_coils", Table.DISCRETE: "read_discrete_inputs"}


def pymodbus_client(settings: DeviceSettings) -> Any:
    """The pymodbus async client for a device: our timeout, no retries or reconnects of its own.

    The link does the retrying (bounded by the poll period) and the reconnecting (capped
    backoff), so the client gets ``retries=0`` and ``reconnect_delay=0``.
    """
    common = dict(name=settings.id, timeout=settings.timeout_s, retries=0, reconnect_delay=0)
    if settings.transport == Transport.TCP:
        return AsyncModbusTcpClient(settings.host, port=settings.port, **common)
    return AsyncModbusSerialClient(settings.serial_port, baudrate=settings.baudrate,
                                   parity=settings.parity, stopbits=settings.stopbits,
                                   bytesize=8, **common)


class ModbusLink:
    """Polls one Modbus device and writes to its allow-listed registers.

    Args:
        regmap: the device and its registers.
        clock: time source for read times and staleness (POSIX seconds by default).
        client_factory: ``(DeviceSettings) -> client`` with pymodbus' async client API
            (:func:`pymodbus_client` by default; tests pass an in-memory one).
        poll: names of the registers to poll (default: every register of the map).
        max_gap: bridge gaps of up to this many unmapped addresses in one read request
            (0: only contiguous registers; use more only where the device answers gaps).
        autopoll: poll every ``poll_period_s`` (False: only when :meth:`poll_now` is called).
        time_scale: seconds of ``clock`` per wall-clock second (1; a simulation's clock run
            faster than real time: its speed), for the time-based staleness rule.
    """

    def __init__(self, regmap: RegisterMap, *, clock: Callable[[], float] = time.time,
                 client_factory: Callable[[DeviceSettings], Any] = pymodbus_client,
                 poll: Iterable[str] | None = None, max_gap: int = 0,
                 autopoll: bool = True, time_scale: float = 1.0) -> None:
        self.regmap, self.settings, self.clock = regmap, regmap.device, clock
        self._factory, self.autopoll = client_factory, autopoll
        by_name = {r.name: r for r in regmap.registers}
        names = list(by_name) if poll is None else list(poll)
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ValueError(f"poll: not in the register map: {', '.join(unknown)}")
        polled = [by_name[n] for n in names]
        self.blocks: list[Block] = plan_blocks(polled, max_gap=max_gap)
        self._book = ReadingBook(polled, self.settings, time_scale=time_scale)
        self._book_lock = threading.Lock()
        self.stats = LinkStats()
        self.state = LinkState.STOPPED
        self._what = f"modbus {self.settings.id}"
        self._health = HealthLog(_log, self._what)
        self._block_health = {b: HealthLog(_log, f"{self._what} {b}") for b in self.blocks}
        self._backoff = Backoff.for_device(self.settings)
        self._watchdog: float | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self._start_error: Exception | None = None

    # ------------------------------------------------------------------ life cycle
    def start(self) -> ModbusLink:
        """Start the link's thread; it connects and (with ``autopoll``) polls on its own."""
        if self._thread is not None:
            raise RuntimeError(f"{self._what}: already started")
        ready = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, args=(ready,),
                                        name=f"modbus-{self.settings.id}", daemon=True)
        self._thread.start()
        ready.wait()
        if self._start_error is not None:
            self._thread.join()
            self._thread = None
            raise DeviceError(f"{self._what}: cannot create the client: "
                              f"{self._start_error}") from self._start_error
        return self

    def stop(self) -> None:
        """Stop polling, close the connection and end the thread. Safe to call twice."""
        if self._thread is None or self._loop is None:
            return
        loop, self._loop = self._loop, None
        loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join()
        self._thread = None
        self.state = LinkState.STOPPED

    def __enter__(self) -> ModbusLink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _thread_main(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._stopping = asyncio.Event()
        self._io = asyncio.Lock()  # one request at a time on the client (pymodbus #2432)
        self._cycle = asyncio.Lock()
        self._connecting = asyncio.Lock()
        try:  # pymodbus clients must be created inside their running loop
            self._client = loop.run_until_complete(self._create_client())
        except Exception as exc:  # a bad setting, pyserial missing...: start() raises it
            # (the thread boundary: whatever it is, it must reach the caller, not vanish)
            self._start_error = exc
            loop.close()
            ready.set()
            return
        self._connect_at = loop.time()
        self.state = LinkState.CONNECTING
        self._loop = loop
        ready.set()
        try:
            loop.run_until_complete(self._main())
        finally:
            self._client.close()
            loop.run_until_complete(asyncio.sleep(0))  # let transports finish closing
            loop.close()

    async def _create_client(self) -> Any:
        return self._factory(self.settings)

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        period = self.settings.poll_period_s
        due = loop.time()
        while not self._stopping.is_set():
            if self.autopoll:
                await self._poll_cycle()
            due += period
            now = loop.time()
            if due < now:  # a poll overran (or the machine stalled): skip, don't burst
                due = now + period
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=due - now)
            except asyncio.TimeoutError:
                continue

    # ------------------------------------------------------------------ reading
    @property
    def connected(self) -> bool:
        """True while the device answers."""
        return self.state == LinkState.UP

    def readings(self) -> dict[str, Reading]:
        """Every polled register's last value, read time and staleness, as of now."""
        with self._book_lock:
            return self._book.snapshot(self.clock())

    def reading(self, name: str) -> Reading:
        """One register's reading (KeyError if it is not polled)."""
        with self._book_lock:
            return self._book.reading(name, self.clock())

    def value(self, name: str) -> float:
        """A register's fresh value; DeviceError if it is stale or was never read."""
        r = self.reading(name)
        if r.stale or r.value is None:
            raise DeviceError(f"{self._what}: {name} is stale (last read "
                              f"{'never' if r.read_at is None else r.read_at}, "
                              f"{r.misses} polls missed)")
        return r.value

    def poll_now(self, timeout: float | None = None) -> bool:
        """Run one poll now and wait for it; True when every block was read."""
        return self._call(self._poll_cycle(), timeout or self._poll_budget())

    def _poll_budget(self) -> float:
        return self.settings.poll_period_s + self.settings.timeout_s + 1.0

    async def _poll_cycle(self) -> bool:
        async with self._cycle:
            loop = asyncio.get_running_loop()
            self.stats.polls += 1
            if not self._client.connected:
                if self.state == LinkState.UP:  # closed under us (peer gone, pymodbus gave up)
                    self._down(f"connection to {self._where()} lost")
                if loop.time() >= self._connect_at:
                    await self._connect()
                if not self._client.connected:
                    with self._book_lock:
                        self._book.miss_all()
                    return False
            deadline = loop.time() + self.settings.poll_period_s
            complete = True
            for i, block in enumerate(self.blocks):
                raw = await self._read_block(block, deadline)
                if raw is None:
                    complete = False
                    if not self._client.connected or self.state == LinkState.DOWN:
                        # The device is gone or mute: the rest of this poll would time out too.
                        with self._book_lock:
                            for rest in self.blocks[i:]:
                                self._book.miss(rest.registers)
                        return False
                    with self._book_lock:
                        self._book.miss(block.registers)
                    continue
                with self._book_lock:
                    self._book.record(block, raw, self.clock())
                self.stats.values += len(block.registers)
            return complete

    async def _connect(self) -> None:
        async with self._connecting:  # a poll and a write may both find the link closed
            if self._client.connected:
                return
            self.stats.connects += 1
            try:
                ok = await self._client.connect()
                reason = "connect failed"
            except (OSError, asyncio.TimeoutError, ModbusException) as exc:
                ok, reason = False, f"connect failed: {exc}"
            if not ok:
                self.stats.failed_connects += 1
                self._down(f"{reason} ({self._where()})")

    def _down(self, reason: str) -> None:
        # The next connect waits for the backoff; while a connection stays open (the device
        # is mute), polls go on every period and pymodbus closes it after a few misses.
        delay = self._backoff.next_delay()
        self._connect_at = asyncio.get_running_loop().time() + delay
        self.state = LinkState.DOWN
        if not self._client.connected:
            reason += (f"; next attempt in {delay:g} s (backoff capped at "
                       f"{self.settings.reconnect_max_s:g} s)")
        self._health.failed(self.clock(), reason)

    def _up(self) -> None:
        self._backoff.reset()
        self.state = LinkState.UP
        self._health.ok(self.clock())

    def _where(self) -> str:
        s = self.settings
        return f"{s.host}:{s.port}" if s.transport == Transport.TCP else s.serial_port

    async def _read_block(self, block: Block, deadline: float) -> list | None:
        loop = asyncio.get_running_loop()
        read = getattr(self._client, _READ[block.table])
        for attempt in range(self.settings.retries + 1):
            if attempt and loop.time() + self.settings.timeout_s > deadline:
                break  # no time left in this poll period for another try
            self.stats.requests += 1
            try:
                async with self._io:
                    rr = await read(block.start, count=block.count,
                                    device_id=self.settings.unit_id)
            except ConnectionException as exc:
                self.stats.failed_requests += 1
                self._client.close()
                self._down(f"connection lost: {exc}")
                return None
            except ModbusException:  # no answer within timeout_s
                self.stats.failed_requests += 1
                continue
            self._up()
            if rr.isError():
                self.stats.failed_requests += 1
                self._block_health[block].failed(
                    self.clock(), f"device refuses the read (exception code "
                                  f"{getattr(rr, 'exception_code', '?')})")
                return None
            raw = list(rr.bits[:block.count] if block.table in (Table.COIL, Table.DISCRETE)
                       else rr.registers)
            if len(raw) != block.count:
                self._block_health[block].failed(
                    self.clock(), f"short response: {len(raw)} of {block.count} values")
                return None
            self._block_health[block].ok(self.clock())
            return raw
        self._down(f"no answer within {self.settings.timeout_s:g} s "
                   f"({self.settings.retries} retries) from {self._where()}")
        return None

    # ------------------------------------------------------------------ writing
    def write(self, name: str, value: float | bool) -> None:
        """Write one allow-listed register (engineering units; True/False for coils).

        Raises PermissionError (logged) for a register that is not allow-listed, ValueError
        for a value the register cannot carry exactly, DeviceError when the device is
        unreachable or refuses the write.
        """
        register = self._writable(name)
        if register.signal.value.startswith("plan."):
            # Plan registers change only as a whole plan that passed the guard.
            _log.warning("refused a write to %s: plan registers are written by write_plan",
                        name)
            raise PermissionError(f"register {name} carries {register.signal.value}: plans "
                                  "are written only through write_plan, after the guard")
        planned = planned_write(register, value, WordOrder(self.settings.word_order))
        self._call(self._write_all([planned]), self._write_budget(1))

    def write_plan(self, plan: TimingPlan, intersection: Intersection) -> None:
        """Check ``plan`` with the guard, then stage it register by register, commit last.

        Raises PlanRejected (nothing written) when the guard or the register map refuses the
        plan, DeviceError when a write fails (the commit is then never written, so the
        controller keeps running what it runs).
        """
        violations = check_plan(plan, intersection)
        if violations:
            _log.warning("%s: plan %d rejected by the guard, nothing written: %s", self._what,
                         plan.plan_id, "; ".join(map(str, violations)))
            raise PlanRejected(plan.plan_id, [str(v) for v in violations])
        try:
            writes = plan_writes(plan, self.regmap)
        except PermissionError as exc:
            _log.warning("%s: plan %d not written: %s", self._what, plan.plan_id, exc)
            raise
        except PlanRejected as exc:
            _log.warning("%s: %s", self._what, exc)
            raise
        self._call(self._write_all(writes), self._write_budget(len(writes)))

    def kick_watchdog(self) -> float:
        """Increment the watchdog register (wrapping at its range); returns the value written."""
        found = self.regmap.by_signal(Signal.WATCHDOG)
        if len(found) != 1:
            raise PermissionError(f"{self._what}: the register map has {len(found)} watchdog "
                                  f"registers, expected one")
        reg = self.regmap.writable(found[0].name)
        current = self._watchdog
        if current is None and reg.name in self._book.registers:
            seen = self.reading(reg.name)
            current = None if seen.stale else seen.value
        value = next_counter(reg, current)
        self.write(reg.name, value)
        self._watchdog = value
        return value

    def _writable(self, name: str) -> Register:
        try:
            return self.regmap.writable(name)
        except PermissionError as exc:
            _log.warning("%s: write refused: %s", self._what, exc)
            raise

    def _write_budget(self, writes: int) -> float:
        return writes * (self.settings.retries + 1) * self.settings.timeout_s + 1.0

    async def _write_all(self, writes: list[PlannedWrite]) -> None:
        for planned in writes:
            await self._write_one(planned)

    async def _write_one(self, planned: PlannedWrite) -> None:
        reg, unit = planned.register, self.settings.unit_id
        if not self._client.connected and asyncio.get_running_loop().time() >= self._connect_at:
            await self._connect()  # not waiting for the next poll (the backoff still rules)
        if not self._client.connected:
            raise DeviceError(f"{self._what}: not connected; {reg.name} not written")
        for _ in range(self.settings.retries + 1):
            try:
                async with self._io:
                    if reg.table == Table.COIL:
                        rr = await self._client.write_coil(reg.address, bool(planned.raw[0]),
                                                           device_id=unit)
                    elif reg.width == 1:
                        rr = await self._client.write_register(reg.address, planned.raw[0],
                                                               device_id=unit)
                    else:
                        rr = await self._client.write_registers(reg.address, list(planned.raw),
                                                                device_id=unit)
            except ConnectionException as exc:
                self._client.close()
                self._down(f"connection lost: {exc}")
                raise DeviceError(f"{self._what}: connection lost writing {reg.name}") from exc
            except ModbusException:  # no answer: writing the same value again is harmless
                continue
            if rr.isError():
                raise DeviceError(f"{self._what}: device refused the write of {reg.name} "
                                  f"(exception code {getattr(rr, 'exception_code', '?')})")
            self.stats.writes += 1
            self._up()
            return
        raise DeviceError(f"{self._what}: no answer to the write of {reg.name} after "
                          f"{self.settings.retries + 1} attempts")

    # ------------------------------------------------------------------ plumbing
    def _call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        loop = self._loop
        if loop is None:
            coro.close()
            raise DeviceError(f"{self._what}: link not started")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout)
        except TimeoutError as exc:  # concurrent.futures.TimeoutError is TimeoutError (3.11)
            future.cancel()
            raise DeviceError(f"{self._what}: no result within {timeout:g} s") from exc
