"""The edge agent's own configuration file: which intersection, which controller, which broker.

One TOML file per box names the site file and register map it runs with (paths relative to the
file), the broker, the centre's public keys, the timeouts of the mode machine and the local
time-of-day plans it falls back to. :func:`load_agent_config` validates everything once at
start-up, including every referenced file and every fallback plan against the guard.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edge_agent.config import load_intersection, load_plan, load_toml
from edge_agent.errors import ConfigError
from edge_agent.guard import check_plan
from edge_agent.model import Contract, Ident, Intersection, require, require_finite, require_int
from edge_agent.plan import TimingPlan
from edge_agent.registers import RegisterMap

__all__ = ["AgentConfig", "AgentFile", "MqttSettings", "CentralSettings", "TimeOfDayEntry",
           "load_agent_config"]

_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class MqttSettings(Contract, kw_only=True):
    """How to reach the broker."""

    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = ""
    keepalive_s: float = 30.0
    sensor_prefix: str = ""  # local cameras/radars publish under this prefix ("" = none)

    def __post_init__(self) -> None:
        require(bool(self.host), "mqtt.host", "must not be empty")
        require_int(self.port, "mqtt.port", 1, 65535)
        require_finite(self.keepalive_s, "mqtt.keepalive_s", minimum=5.0)


class CentralSettings(Contract, kw_only=True):
    """Trust in the centre and how long its silence is tolerated."""

    trusted_keys: dict[Ident, str]  # key id -> public key file (PEM)
    heartbeat_timeout_s: float = 30.0
    good_heartbeats_to_resume: int = 3

    def __post_init__(self) -> None:
        require(len(self.trusted_keys) > 0, "central.trusted_keys", "name at least one key")
        require_finite(self.heartbeat_timeout_s, "central.heartbeat_timeout_s", minimum=1.0)
        require_int(self.good_heartbeats_to_resume, "central.good_heartbeats_to_resume", 1, 100)


class TimeOfDayEntry(Contract, kw_only=True):
    """From ``start`` (local "HH:MM") the fallback runs ``plan`` (a plan file)."""

    start: str
    plan: str

    def __post_init__(self) -> None:
        require(_CLOCK.match(self.start) is not None, "time_of_day.start",
                f"must be HH:MM (00:00-23:59), got {self.start!r}")

    @property
    def minute_of_day(self) -> int:
        """Minutes after midnight."""
        hours, minutes = self.start.split(":")
        return int(hours) * 60 + int(minutes)


class AgentFile(Contract, kw_only=True):
    """The file as written: references still unresolved."""

    site: Ident
    intersection: Ident
    site_config: str
    register_map: str
    spool: str = "tsc-edge-spool.sqlite"
    measurement_interval_s: float = 60.0
    mqtt: MqttSettings = MqttSettings()
    central: CentralSettings
    time_of_day: tuple[TimeOfDayEntry, ...]

    def __post_init__(self) -> None:
        require_finite(self.measurement_interval_s, "measurement_interval_s", minimum=1.0)
        require(len(self.time_of_day) > 0, "time_of_day",
                "the agent needs at least one local plan to fall back to")
        starts = [e.minute_of_day for e in self.time_of_day]
        require(starts == sorted(set(starts)), "time_of_day",
                "entries must be in increasing start order without repeats")


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent runs with, loaded and checked."""

    file: AgentFile
    path: Path
    intersection: Intersection
    register_map: RegisterMap
    trusted_keys: dict[str, bytes]  # key id -> PEM
    time_of_day: tuple[tuple[int, TimingPlan], ...]  # (minute of day, plan)
    spool_path: Path

    def fallback_plan(self, minute_of_day: int) -> TimingPlan:
        """The time-of-day plan in force at ``minute_of_day`` (the last entry wraps midnight)."""
        current = self.time_of_day[-1][1]
        for start, plan in self.time_of_day:
            if start <= minute_of_day:
                current = plan
        return current


def load_agent_config(path: str | Path) -> AgentConfig:
    """Load and check an agent file and everything it refers to; ConfigError on any problem."""
    path = Path(path)
    file = load_toml(path, AgentFile)
    base = path.parent

    def resolve(name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else base / p

    intersection = load_intersection(resolve(file.site_config), file.intersection)
    register_map = load_toml(resolve(file.register_map), RegisterMap)
    keys: dict[str, bytes] = {}
    for key_id, key_file in file.central.trusted_keys.items():
        try:
            keys[key_id] = resolve(key_file).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read public key {key_id!r}: {exc.strerror}",
                              file=str(path), key=f"central.trusted_keys.{key_id}") from exc
    plans = []
    for index, entry in enumerate(file.time_of_day):
        plan = load_plan(resolve(entry.plan))
        problems = check_plan(plan, intersection)
        if problems:
            raise ConfigError(f"time-of-day plan {entry.plan} fails the guard: "
                              + "; ".join(str(v) for v in problems), file=str(path),
                              key=f"time_of_day[{index}].plan")
        plans.append((entry.minute_of_day, plan))
    return AgentConfig(file=file, path=path, intersection=intersection,
                       register_map=register_map, trusted_keys=keys,
                       time_of_day=tuple(plans), spool_path=resolve(file.spool))
