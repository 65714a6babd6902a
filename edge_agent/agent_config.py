"""The edge agent's own configuration file: which intersection, which controller, which broker.

One TOML file per box names the site file and register map it runs with (paths relative to the
file), the broker, the centre's public keys, the timeouts of the mode machine and the local
time-of-day plans it falls back to. :func:`load_agent_config` validates everything once at
start-up, including every referenced file and every fallback plan against the guard and the
register map (a plan the controller's registers cannot carry exactly is refused here, not at
3 a.m. when the centre goes silent).

The tuning of the pure core lives in the same file, in tables that *are* the core's own
structs, so there is one schema and one set of checks: ``[central]`` is a
:class:`~edge_agent.modes.ModeConfig` (plus the trusted keys), ``[aggregation]`` an
:class:`~edge_agent.aggregation.AggregationConfig` (its interval is the top-level
``measurement_interval_s``, which is why ``aggregation.interval_s`` is refused) and
``[detector_health]`` a :class:`~edge_agent.detector_health.HealthConfig` and ``[actuation]``
an :class:`~edge_agent.local_actuation.ActuationConfig` (whether local actuation runs, and the
:class:`~edge_agent.actuation.ActuationParams` it runs with).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import msgspec

from edge_agent.aggregation import AggregationConfig
from edge_agent.config import find_line, load_intersection, load_plan, load_toml
from edge_agent.actuation import ActuationParams
from edge_agent.detector_health import HealthConfig
from edge_agent.errors import ConfigError, PlanRejected
from edge_agent.guard import check_plan
from edge_agent.local_actuation import ActuationConfig, actuation_coils
from edge_agent.modbus_core import plan_writes
from edge_agent.model import Contract, Ident, Intersection, require, require_finite, require_int
from edge_agent.modes import ModeConfig
from edge_agent.plan import TimingPlan
from edge_agent.registers import RegisterMap
from edge_agent.signatures import load_public_key

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


class CentralSettings(ModeConfig, kw_only=True):
    """Trust in the centre and how long its silence is tolerated: the mode machine's
    :class:`~edge_agent.modes.ModeConfig` (``heartbeat_timeout_s``,
    ``good_heartbeats_to_resume``, ``startup_grace_s``) plus the centre's public keys."""

    trusted_keys: dict[Ident, str]  # key id -> public key file (PEM)

    def __post_init__(self) -> None:
        require(len(self.trusted_keys) > 0, "central.trusted_keys", "name at least one key")
        # Stricter than the machine itself allows: a box that gives up on the centre within
        # a second flaps on every lost packet.
        require_finite(self.heartbeat_timeout_s, "central.heartbeat_timeout_s", minimum=1.0)
        require_int(self.good_heartbeats_to_resume, "central.good_heartbeats_to_resume", 1, 100)
        require_finite(self.startup_grace_s, "central.startup_grace_s", minimum=0.0)
        super().__post_init__()


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
    aggregation: AggregationConfig = AggregationConfig()
    detector_health: HealthConfig = HealthConfig()
    actuation: ActuationConfig = ActuationConfig()

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

    @property
    def modes(self) -> ModeConfig:
        """The mode machine's timeouts (``[central]`` without the keys)."""
        c = self.file.central
        return ModeConfig(heartbeat_timeout_s=c.heartbeat_timeout_s,
                          good_heartbeats_to_resume=c.good_heartbeats_to_resume,
                          startup_grace_s=c.startup_grace_s)

    @property
    def aggregation(self) -> AggregationConfig:
        """``[aggregation]`` with ``measurement_interval_s`` as its interval."""
        return msgspec.structs.replace(self.file.aggregation,
                                       interval_s=float(self.file.measurement_interval_s))

    @property
    def health(self) -> HealthConfig:
        """The detector checks' thresholds (``[detector_health]``)."""
        return self.file.detector_health

    @property
    def actuation_enabled(self) -> bool:
        """Whether local actuation runs: ``[actuation] enabled``, by default whenever the
        register map has hold or force-off coils."""
        enabled = self.file.actuation.enabled
        return bool(actuation_coils(self.register_map)) if enabled is None else enabled

    @property
    def actuation_params(self) -> ActuationParams:
        """The local actuation's parameters (``[actuation]``, defaults where left out)."""
        return self.file.actuation.params

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
    text = path.read_text(encoding="utf-8")  # load_toml has read and parsed it already
    if "interval_s" in tomllib.loads(text).get("aggregation", {}):
        raise ConfigError("the interval is set once, as measurement_interval_s", file=str(path),
                          key="aggregation.interval_s",
                          line=find_line(text, "aggregation.interval_s"))
    base = path.parent

    def resolve(name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else base / p

    intersection = load_intersection(resolve(file.site_config), file.intersection)
    register_map = load_toml(resolve(file.register_map), RegisterMap)
    detectors = {d.id for d in intersection.detectors}
    for detector in file.aggregation.counter_bits_by_detector:
        if detector not in detectors:
            raise ConfigError(f"unknown detector {detector!r} of intersection "
                              f"{intersection.id}", file=str(path),
                              key=f"aggregation.counter_bits_by_detector.{detector}")
    if file.actuation.enabled and not actuation_coils(register_map):
        raise ConfigError(f"local actuation needs phase.hold or phase.force_off coils "
                          f"(access = \"write\"), and register map {file.register_map} has "
                          f"none", file=str(path), key="actuation.enabled",
                          line=find_line(text, "actuation.enabled"))
    keys: dict[str, bytes] = {}
    for key_id, key_file in file.central.trusted_keys.items():
        try:
            keys[key_id] = resolve(key_file).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read public key {key_id!r}: {exc.strerror}",
                              file=str(path), key=f"central.trusted_keys.{key_id}") from exc
        try:
            load_public_key(keys[key_id])
        except ValueError as exc:  # cryptography says ValueError for PEM it cannot read
            raise ConfigError(f"public key {key_id!r} ({key_file}) is not an Ed25519 public "
                              f"key in PEM: {exc}", file=str(path),
                              key=f"central.trusted_keys.{key_id}") from exc
    plans = []
    for index, entry in enumerate(file.time_of_day):
        plan = load_plan(resolve(entry.plan))
        problems = check_plan(plan, intersection)
        if problems:
            raise ConfigError(f"time-of-day plan {entry.plan} fails the guard: "
                              + "; ".join(str(v) for v in problems), file=str(path),
                              key=f"time_of_day[{index}].plan")
        try:
            plan_writes(plan, register_map)
        except (PlanRejected, PermissionError) as exc:
            raise ConfigError(f"time-of-day plan {entry.plan} cannot be written to the "
                              f"controller: {exc}", file=str(path),
                              key=f"time_of_day[{index}].plan") from exc
        plans.append((entry.minute_of_day, plan))
    return AgentConfig(file=file, path=path, intersection=intersection,
                       register_map=register_map, trusted_keys=keys,
                       time_of_day=tuple(plans), spool_path=resolve(file.spool))
