"""Declarative Modbus register maps: what each register of a controller cabinet means.

A map names the device (TCP or RTU), its polling discipline, and every register the edge reads
or writes, with its table, address, data type, scale and meaning. Writes are deny-by-default:
only entries marked ``access = "write"`` may ever be written (Modbus has no authentication, so
the allow-list is the only barrier between a bug and the cabinet). Pure: no IO here; the
pymodbus adapter reads this.
"""

from __future__ import annotations

import enum
import struct

from edge_agent.model import (
    MAX_PHASE,
    Contract,
    Ident,
    coerce_enum,
    require,
    require_finite,
    require_ident,
    require_int,
    require_unique,
)

__all__ = [
    "Access",
    "Alarm",
    "ControllerMode",
    "DataType",
    "DeviceSettings",
    "Register",
    "RegisterMap",
    "Signal",
    "Table",
    "Transport",
    "WordOrder",
    "decode_value",
    "encode_value",
]


class Transport(str, enum.Enum):
    TCP = "tcp"
    RTU = "rtu"


class Table(str, enum.Enum):
    """The four Modbus data tables."""

    COIL = "coil"  # 1 bit, read/write
    DISCRETE = "discrete"  # 1 bit, read-only
    INPUT = "input"  # 16-bit input registers, read-only
    HOLDING = "holding"  # 16-bit holding registers, read/write


class DataType(str, enum.Enum):
    BOOL = "bool"
    UINT16 = "uint16"
    INT16 = "int16"
    UINT32 = "uint32"
    INT32 = "int32"
    FLOAT32 = "float32"


class WordOrder(str, enum.Enum):
    """Order of the two 16-bit words of a 32-bit value (Modbus leaves it to the vendor)."""

    BIG = "big"  # high word first
    LITTLE = "little"  # low word first


class Access(str, enum.Enum):
    READ = "read"
    WRITE = "write"  # allow-listed for writing (and readable)


class Signal(str, enum.Enum):
    """What a register means to the edge agent."""

    DETECTOR_COUNT = "detector.count"  # cumulative vehicle count (wraps at the type's range)
    DETECTOR_OCCUPANCY = "detector.occupancy"  # fraction 0..1 after scaling
    DETECTOR_PRESENCE = "detector.presence"  # vehicle present now
    DETECTOR_SPEED = "detector.speed"  # m/s after scaling
    QUEUE_LENGTH = "queue.length"  # metres after scaling
    CONTROLLER_PHASE = "controller.phase"  # phase number now green, per ring
    CONTROLLER_MODE = "controller.mode"
    CONTROLLER_ALARM = "controller.alarm"
    PLAN_ID = "plan.id"
    PLAN_CYCLE = "plan.cycle"
    PLAN_OFFSET = "plan.offset"
    PLAN_SPLIT = "plan.split"  # per phase
    PLAN_MIN_GREEN = "plan.min_green"
    PLAN_MAX_GREEN = "plan.max_green"
    PLAN_COMMIT = "plan.commit"  # written last: the controller loads the staged plan
    PHASE_HOLD = "phase.hold"  # local actuation: hold the current phase
    PHASE_FORCE_OFF = "phase.force_off"  # local actuation: end the phase at min green
    PHASE_RECALL = "phase.recall"  # a failed detector's phase: serve it every cycle
    WATCHDOG = "watchdog"  # heartbeat the edge increments; the controller falls back if stale


class ControllerMode(enum.IntEnum):
    """Values of a ``controller.mode`` register: who runs the signals now.

    A vendor's own codes are mapped onto these where the cabinet is integrated; the virtual
    controller (:mod:`simulation.virtual_logic`) writes them as they are.
    """

    LOCAL = 1  # the controller's own programme
    REMOTE = 2  # a plan the edge committed
    FLASH = 3  # flashing operation (conflict monitor tripped, manual flash): a fault


class Alarm(enum.IntFlag):
    """Bits of a ``controller.alarm`` register."""

    PLAN_REFUSED = 1  # the last committed plan failed the controller's own checks
    WATCHDOG = 2  # the edge's watchdog went stale: the controller runs its own programme
    FAULT = 4  # the controller (or the simulation behind it) failed: nothing can be trusted


_WIDTH = {DataType.BOOL: 1, DataType.UINT16: 1, DataType.INT16: 1, DataType.UINT32: 2,
          DataType.INT32: 2, DataType.FLOAT32: 2}
_STRUCT = {DataType.UINT16: ">H", DataType.INT16: ">h", DataType.UINT32: ">I",
           DataType.INT32: ">i", DataType.FLOAT32: ">f"}
_BIT_TABLES = (Table.COIL, Table.DISCRETE)
_WRITABLE_TABLES = (Table.COIL, Table.HOLDING)


class Register(Contract, kw_only=True):
    """One entry of a register map. ``value = raw * scale`` on read, ``raw = value / scale``."""

    name: Ident
    table: Table
    address: int
    type: DataType
    signal: Signal
    access: Access = Access.READ
    scale: float = 1.0
    unit: str = ""
    detector: Ident | None = None  # detector id, for detector.* signals
    lane: Ident | None = None  # lane id, for queue.length
    phase: int | None = None  # phase number, for plan.* per-phase signals
    ring: int | None = None  # ring number (1-based), for controller.phase

    def __post_init__(self) -> None:
        require_ident(self.name, "register.name")
        where = f"register {self.name}"
        for name, kind in (("table", Table), ("type", DataType), ("signal", Signal),
                           ("access", Access)):
            coerce_enum(self, name, kind, f"{where}.{name}")
        require_int(self.address, f"{where}.address", 0, 65535 - self.width + 1)
        require_finite(self.scale, f"{where}.scale")
        require(self.scale != 0.0, f"{where}.scale", "must not be 0")
        bit = self.table in _BIT_TABLES
        require(bit == (self.type == DataType.BOOL), f"{where}.type",
                f"{self.table.value} registers hold {'bool' if bit else '16-bit words'}, "
                f"not {self.type.value}")
        if self.access == Access.WRITE:
            require(self.table in _WRITABLE_TABLES, f"{where}.access",
                    f"{self.table.value} registers are read-only")
        if self.signal.value.startswith("detector."):
            require(self.detector is not None, f"{where}.detector",
                    f"{self.signal.value} needs the detector id")
        if self.signal in (Signal.PLAN_SPLIT, Signal.PLAN_MIN_GREEN, Signal.PLAN_MAX_GREEN,
                           Signal.PHASE_HOLD, Signal.PHASE_FORCE_OFF, Signal.PHASE_RECALL):
            require(self.phase is not None, f"{where}.phase", f"{self.signal.value} needs a phase")
        if self.signal == Signal.QUEUE_LENGTH:
            require(self.lane is not None, f"{where}.lane", "queue.length needs the lane id")
        if self.signal == Signal.CONTROLLER_PHASE:
            require(self.ring is not None, f"{where}.ring", "controller.phase needs the ring")
        if self.phase is not None:
            require_int(self.phase, f"{where}.phase", 1, MAX_PHASE)
        if self.ring is not None:
            require_int(self.ring, f"{where}.ring", 1, 4)

    @property
    def width(self) -> int:
        """Number of 16-bit registers (or bits) the value occupies."""
        return _WIDTH[DataType(self.type)]


class DeviceSettings(Contract, kw_only=True):
    """How to reach one Modbus device and how often to poll it."""

    id: Ident
    transport: Transport
    unit_id: int = 1
    host: str = "127.0.0.1"
    port: int = 502
    serial_port: str = ""
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    poll_period_s: float = 1.0
    timeout_s: float = 0.5
    retries: int = 2
    reconnect_max_s: float = 5.0
    stale_after_polls: int = 3
    word_order: WordOrder = WordOrder.BIG

    def __post_init__(self) -> None:
        require_ident(self.id, "device.id")
        coerce_enum(self, "transport", Transport, "device.transport")
        coerce_enum(self, "word_order", WordOrder, "device.word_order")
        require_int(self.unit_id, "device.unit_id", 0, 247)
        require_int(self.port, "device.port", 1, 65535)
        require_int(self.retries, "device.retries", 0, 10)
        require_int(self.stale_after_polls, "device.stale_after_polls", 1, 1000)
        require(self.parity in ("N", "E", "O"), "device.parity", "must be N, E or O")
        require(self.stopbits in (1, 2), "device.stopbits", "must be 1 or 2")
        require(self.baudrate in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200),
                "device.baudrate", f"unsupported baud rate {self.baudrate}")
        for name in ("poll_period_s", "timeout_s", "reconnect_max_s"):
            require_finite(getattr(self, name), f"device.{name}", minimum=0.01)
        # A poll must time out before the next one is due, or polls pile up behind a dead link.
        require(self.timeout_s < self.poll_period_s, "device.timeout_s",
                f"must be shorter than poll_period_s ({self.poll_period_s:g} s)")
        require(self.reconnect_max_s <= 30.0, "device.reconnect_max_s",
                "cap reconnect backoff at 30 s or less")
        if self.transport == Transport.RTU:
            require(bool(self.serial_port), "device.serial_port", "required for rtu")


class RegisterMap(Contract, kw_only=True):
    """A device and its registers; registers of one table must not overlap."""

    device: DeviceSettings
    registers: tuple[Register, ...]

    def __post_init__(self) -> None:
        require(len(self.registers) > 0, "registers", "must not be empty")
        require_unique([r.name for r in self.registers], "registers")
        used: dict[tuple[Table, int], str] = {}
        for reg in self.registers:
            for address in range(reg.address, reg.address + reg.width):
                other = used.setdefault((reg.table, address), reg.name)
                require(other == reg.name, f"register {reg.name}.address",
                        f"{reg.table.value} {address} is already used by {other}")

    def writable(self, name: str) -> Register:
        """The allow-listed register ``name``; PermissionError for anything else."""
        for reg in self.registers:
            if reg.name == name:
                if reg.access != Access.WRITE:
                    raise PermissionError(f"register {name} is not allow-listed for writing")
                return reg
        raise PermissionError(f"register {name} is not in the map; writes are deny-by-default")

    def by_signal(self, signal: Signal) -> list[Register]:
        """Every register carrying ``signal``."""
        return [r for r in self.registers if r.signal == signal]


def _words_to_bytes(words: list[int], order: WordOrder) -> bytes:
    # Build a new list rather than reversing the caller's (FIELD-NOTES: pymodbus once did).
    ordered = list(reversed(words)) if order == WordOrder.LITTLE and len(words) == 2 else words
    return b"".join(w.to_bytes(2, "big") for w in ordered)


def decode_value(reg: Register, raw: list[int] | list[bool], order: WordOrder) -> float:
    """Engineering value of a register from its raw words (or bits), applying the scale."""
    require(len(raw) == reg.width, f"register {reg.name}",
            f"expected {reg.width} words, got {len(raw)}")
    if reg.type == DataType.BOOL:
        return 1.0 if raw[0] else 0.0
    for word in raw:
        require(isinstance(word, int) and 0 <= word <= 0xFFFF, f"register {reg.name}",
                f"raw word out of range: {word!r}")
    (value,) = struct.unpack(_STRUCT[reg.type], _words_to_bytes(list(raw), order))
    return value * reg.scale


def encode_value(reg: Register, value: float, order: WordOrder) -> list[int]:
    """Raw words for an engineering value; ValueError if it does not fit the data type."""
    if reg.type == DataType.BOOL:
        require(isinstance(value, (bool, int, float)) and value in (0, 1), f"register {reg.name}",
                f"a bool register takes 0/1 or True/False, got {value!r}")
        return [1 if value else 0]
    require_finite(value, f"register {reg.name}")
    raw = value / reg.scale
    if reg.type != DataType.FLOAT32:
        raw = round(raw)
    try:
        packed = struct.pack(_STRUCT[reg.type], raw)
    except (struct.error, OverflowError):  # float32 overflow is an OverflowError
        raise ValueError(f"register {reg.name}: {value!r} does not fit {reg.type.value}") from None
    words = [int.from_bytes(packed[i:i + 2], "big") for i in range(0, len(packed), 2)]
    return list(reversed(words)) if order == WordOrder.LITTLE and len(words) == 2 else words

