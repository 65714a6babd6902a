"""The virtual controller's memory: the raw words and bits of a register map, and an in-memory
client that talks to it without sockets.

:class:`RegisterBank` is the truth the Modbus server (or :class:`LoopbackClient`) exposes. The
device side (SUMO measurements, the controller's own status) stores engineering values with
:meth:`RegisterBank.store`; the wire side reads and writes raw words with
:meth:`RegisterBank.read` / :meth:`RegisterBank.write`, which refuse what a cabinet refuses:
unmapped addresses, and writes to anything not marked ``access = "write"``. Every accepted
wire write is kept in :attr:`RegisterBank.write_log` (for tests and benchmarks: what arrived, in
which order, when) and handed to the listeners.

:class:`LoopbackClient` has the part of pymodbus' async client API the edge's
:class:`~edge_agent.modbus_link.ModbusLink` uses and answers with pymodbus' own response
objects, so the link's code runs unchanged against it: it is the in-memory fake of the
contract tests (DESIGN principle 8) and a socket-free transport for demos.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.pdu.bit_message import (ReadCoilsResponse, ReadDiscreteInputsResponse,
                                      WriteSingleCoilResponse)
from pymodbus.pdu.register_message import (ReadHoldingRegistersResponse,
                                           ReadInputRegistersResponse,
                                           WriteMultipleRegistersResponse,
                                           WriteSingleRegisterResponse)

from edge_agent.modbus_core import counter_modulus
from edge_agent.registers import (Access, Register, RegisterMap, Table, WordOrder,
                                  decode_value, encode_value)

__all__ = ["Endpoint", "LoopbackClient", "RegisterBank", "RequestRefused", "WriteRecord"]

BIT_TABLES = (Table.COIL, Table.DISCRETE)


class RequestRefused(Exception):
    """A request the device answers with a Modbus exception; ``code`` is the exception code."""

    def __init__(self, code: ExcCodes, message: str) -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class WriteRecord:
    """One register changed by a write from the wire: when, which, and its value afterwards."""

    time: float
    name: str
    value: float


class RegisterBank:
    """Raw words and bits of every register of ``regmap``, safe to use from several threads.

    Unmapped coils and discrete inputs read as 0, as pymodbus' server does for bits inside its
    blocks; unmapped words are refused with ILLEGAL ADDRESS.
    """

    def __init__(self, regmap: RegisterMap, *, clock: Callable[[], float] = time.perf_counter
                 ) -> None:
        self.regmap, self.clock = regmap, clock
        self.order = WordOrder(regmap.device.word_order)
        self._lock = threading.RLock()
        self._cells: dict[Table, dict[int, int | bool]] = {t: {} for t in Table}
        self._owner: dict[tuple[Table, int], Register] = {}
        self.by_name: dict[str, Register] = {}
        for reg in regmap.registers:
            self.by_name[reg.name] = reg
            for a in range(reg.address, reg.address + reg.width):
                self._owner[(Table(reg.table), a)] = reg
                self._cells[Table(reg.table)][a] = False if reg.table in BIT_TABLES else 0
        self.write_log: list[WriteRecord] = []
        self._listeners: list[Callable[[list[Register]], None]] = []

    # ------------------------------------------------------------------ device side
    def store(self, name: str, value: float | bool, *, wrap: bool = False) -> None:
        """Set a register to an engineering value (the device's own update, any register).

        ``wrap``: a cumulative counter; it runs modulo the register's range instead of raising.
        """
        reg = self.by_name[name]
        if wrap:
            modulus = counter_modulus(reg)
            value = (int(round(value / reg.scale)) % modulus) * reg.scale
        raw = encode_value(reg, value, self.order)
        with self._lock:
            cells = self._cells[Table(reg.table)]
            for i, word in enumerate(raw):
                cells[reg.address + i] = bool(word) if reg.table in BIT_TABLES else word

    def load(self, name: str) -> float:
        """A register's engineering value now."""
        reg = self.by_name[name]
        with self._lock:
            cells = self._cells[Table(reg.table)]
            raw = [cells[reg.address + i] for i in range(reg.width)]
        return decode_value(reg, raw, self.order)

    def on_write(self, listener: Callable[[list[Register]], None]) -> None:
        """Call ``listener(registers)`` after every accepted wire write, with what it touched."""
        self._listeners.append(listener)

    # ------------------------------------------------------------------ wire side
    def read(self, table: Table, address: int, count: int) -> list[int] | list[bool]:
        """Raw words (or bits) as the wire sees them; RequestRefused for unmapped words."""
        with self._lock:
            cells = self._cells[table]
            if table in BIT_TABLES:
                return [bool(cells.get(a, False)) for a in range(address, address + count)]
            missing = [a for a in range(address, address + count) if a not in cells]
            if missing:
                raise RequestRefused(ExcCodes.ILLEGAL_ADDRESS,
                                     f"{table.value} {missing[0]} is not mapped")
            return [int(cells[a]) for a in range(address, address + count)]

    def write(self, table: Table, address: int, values: Sequence[int] | Sequence[bool]) -> None:
        """Apply a write from the wire; RequestRefused unless every address is allow-listed."""
        if table not in (Table.COIL, Table.HOLDING):
            raise RequestRefused(ExcCodes.ILLEGAL_FUNCTION, f"{table.value} is read-only")
        touched: list[Register] = []
        with self._lock:
            for a in range(address, address + len(values)):
                reg = self._owner.get((table, a))
                if reg is None:
                    raise RequestRefused(ExcCodes.ILLEGAL_ADDRESS,
                                         f"{table.value} {a} is not mapped")
                if reg.access != Access.WRITE:
                    raise RequestRefused(ExcCodes.ILLEGAL_ADDRESS,
                                         f"{table.value} {a} ({reg.name}) is read-only")
                if reg not in touched:
                    touched.append(reg)
            cells = self._cells[table]
            for i, v in enumerate(values):
                cells[address + i] = bool(v) if table == Table.COIL else int(v) & 0xFFFF
            now = self.clock()
            for reg in touched:
                raw = [cells[reg.address + i] for i in range(reg.width)]
                self.write_log.append(WriteRecord(now, reg.name,
                                                  decode_value(reg, raw, self.order)))
        for listener in self._listeners:
            listener(touched)

    def words_of(self, table: Table) -> dict[int, int | bool]:
        """A copy of one table's cells (address -> word or bit)."""
        with self._lock:
            return dict(self._cells[table])


class Endpoint(Protocol):
    """What :class:`LoopbackClient` talks to (the virtual controller)."""

    unit_id: int

    @property
    def running(self) -> bool: ...

    @property
    def muted(self) -> bool: ...

    @property
    def generation(self) -> int: ...

    def handle(self, table: Table, address: int, *, count: int = 0,
               values: Sequence[int] | Sequence[bool] | None = None) -> list: ...


class LoopbackClient:
    """An in-memory stand-in for pymodbus' ``AsyncModbusTcpClient`` wired to an endpoint.

    ``connect()`` fails while the endpoint is stopped; a connection does not survive the
    endpoint's restart (each start is a new generation), so the client must reconnect, as a
    TCP client must. While the endpoint is muted, requests wait ``timeout`` seconds and fail
    as pymodbus' do when no answer comes.
    """

    def __init__(self, endpoint: Endpoint, *, timeout: float = 0.5) -> None:
        self.endpoint, self.timeout = endpoint, timeout
        self._generation: int | None = None

    @property
    def connected(self) -> bool:
        return (self._generation is not None and self.endpoint.running
                and self._generation == self.endpoint.generation)

    async def connect(self) -> bool:
        self._generation = self.endpoint.generation if self.endpoint.running else None
        return self.connected

    def close(self) -> None:
        self._generation = None

    async def _serve(self, fc: int, table: Table, address: int, device_id: int, *,
                     count: int = 0, values: Sequence | None = None) -> list | ExceptionResponse:
        if not self.connected:
            self._generation = None
            raise ConnectionException(f"Not connected[LoopbackClient {self.endpoint!r}]")
        if self.endpoint.muted:
            await asyncio.sleep(self.timeout)
            raise ModbusIOException("No response received (loopback endpoint muted)")
        if device_id != self.endpoint.unit_id:
            return ExceptionResponse(fc, ExcCodes.GATEWAY_NO_RESPONSE, device_id=device_id)
        try:
            return self.endpoint.handle(table, address, count=count, values=values)
        except RequestRefused as exc:
            return ExceptionResponse(fc, exc.code, device_id=device_id)

    async def _read(self, fc: int, table: Table, kind: type[ModbusPDU], address: int,
                    count: int, device_id: int) -> ModbusPDU:
        out = await self._serve(fc, table, address, device_id, count=count)
        if isinstance(out, ExceptionResponse):
            return out
        if table in BIT_TABLES:  # bits travel in whole bytes: pad like the wire does
            return kind(bits=list(out) + [False] * (-len(out) % 8), dev_id=device_id)
        return kind(registers=list(out), dev_id=device_id)

    async def read_coils(self, address: int, *, count: int = 1, device_id: int = 1) -> ModbusPDU:
        return await self._read(1, Table.COIL, ReadCoilsResponse, address, count, device_id)

    async def read_discrete_inputs(self, address: int, *, count: int = 1,
                                   device_id: int = 1) -> ModbusPDU:
        return await self._read(2, Table.DISCRETE, ReadDiscreteInputsResponse, address, count,
                                device_id)

    async def read_holding_registers(self, address: int, *, count: int = 1,
                                     device_id: int = 1) -> ModbusPDU:
        return await self._read(3, Table.HOLDING, ReadHoldingRegistersResponse, address, count,
                                device_id)

    async def read_input_registers(self, address: int, *, count: int = 1,
                                   device_id: int = 1) -> ModbusPDU:
        return await self._read(4, Table.INPUT, ReadInputRegistersResponse, address, count,
                                device_id)

    async def write_coil(self, address: int, value: bool, *, device_id: int = 1) -> ModbusPDU:
        out = await self._serve(5, Table.COIL, address, device_id, values=[bool(value)])
        return out if isinstance(out, ExceptionResponse) else \
            WriteSingleCoilResponse(address=address, bits=[bool(value)], dev_id=device_id)

    async def write_register(self, address: int, value: int, *, device_id: int = 1
                             ) -> ModbusPDU:
        out = await self._serve(6, Table.HOLDING, address, device_id, values=[value])
        return out if isinstance(out, ExceptionResponse) else \
            WriteSingleRegisterResponse(address=address, registers=[value], dev_id=device_id)

    async def write_registers(self, address: int, values: Sequence[int], *,
                              device_id: int = 1) -> ModbusPDU:
        out = await self._serve(16, Table.HOLDING, address, device_id, values=list(values))
        return out if isinstance(out, ExceptionResponse) else \
            WriteMultipleRegistersResponse(address=address, count=len(values), dev_id=device_id)
