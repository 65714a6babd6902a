"""What the edge runtime talks to, and what it counts.

The runtime (:mod:`edge_agent.runtime`) depends on these two small protocols, not on pymodbus
or paho: :class:`~edge_agent.modbus_link.ModbusLink` is a :class:`ControllerPort`,
:class:`~edge_agent.mqtt_link.EdgeLink` and :class:`~edge_agent.fake_link.FakeLink` are
:class:`UplinkPort` s, and a test can hand in anything with the same methods.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from edge_agent.messages import Message, Status
from edge_agent.modbus_core import Reading as RegisterReading
from edge_agent.model import Intersection
from edge_agent.plan import TimingPlan

__all__ = ["ControllerPort", "UplinkPort", "RuntimeStats", "minute_of_day"]


class ControllerPort(Protocol):
    """What the runtime needs of the controller link (:class:`ModbusLink` has it)."""

    @property
    def connected(self) -> bool: ...

    def poll_now(self, timeout: float | None = None) -> bool: ...

    def readings(self) -> dict[str, RegisterReading]: ...

    def write_plan(self, plan: TimingPlan, intersection: Intersection) -> None: ...

    def kick_watchdog(self) -> float: ...

    def write(self, name: str, value: float | bool) -> None: ...


class UplinkPort(Protocol):
    """What the runtime needs of the MQTT link (:class:`EdgeLink`, :class:`FakeLink`)."""

    def submit(self, message: Message) -> Future[int]: ...

    def update_status(self, status: Status) -> None: ...


@dataclass
class RuntimeStats:
    """Counters since start."""

    steps: int = 0
    samples: int = 0  # register and sensor readings taken by aggregation/health
    bad_samples: int = 0  # register values that are no reading (wrong scale, broken device)
    unknown_sensor_reports: int = 0
    measurements: int = 0
    plans_accepted: int = 0
    plans_rejected: int = 0
    plans_written: int = 0
    watchdog_kicks: int = 0
    coil_writes: int = 0  # hold and force-off coils written by local actuation


def minute_of_day(t: float) -> int:
    """Minutes after local midnight at POSIX time ``t`` (the time-of-day plans' clock)."""
    local = time.localtime(t)
    return local.tm_hour * 60 + local.tm_min
