"""The central service's configuration file (``tsc-central run --config FILE``), validated once.

One TOML file names the site file, the broker, the signing key, the storage files, the loop's
periods, the planner's parameters, the regions (which intersections are re-planned together,
how often, and whether candidates are validated in SUMO) and the time-of-day plans. Unknown
keys are refused with the file, key and line (:func:`edge_agent.config.load_toml`); paths are
relative to the config file. ``configs/central.toml`` documents every field.

:func:`load_central_config` checks everything it can without opening a connection: the site
file (and every intersection against the guard), that every region names intersections of the
site and none twice, the time-of-day plans against the guard, and (unless ``check_key`` is
false) that the signing key reads as an Ed25519 private key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import msgspec

from edge_agent.agent_config import TimeOfDayEntry
from edge_agent.config import SiteConfig, load_plan, load_site, load_toml
from edge_agent.errors import ConfigError
from edge_agent.guard import check_plan
from edge_agent.model import Contract, Ident, require, require_finite, require_ident, require_int
from edge_agent.plan import TimingPlan
from edge_agent.signatures import load_private_key

__all__ = ["CentralConfig", "CentralFile", "LoopSettings", "MqttSettings", "PlanningSettings",
           "Region", "Validation", "load_central_config"]


class MqttSettings(Contract, kw_only=True):
    """The broker, the persistent session and (for replicas) the shared-subscription group."""

    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = ""  # "" = tsc-central-{central_id}; must be stable: it names the session
    keepalive_s: float = 30.0
    session_expiry_s: int = 86_400  # the broker keeps the session (and queues) this long
    receive_maximum: int = 1000  # unacknowledged QoS 1 deliveries the broker may have in flight
    share_group: str = ""  # "" = plain subscriptions; else $share/{group}/... (MQTT 5)
    username: str = ""
    password_file: str = ""

    def __post_init__(self) -> None:
        require(bool(self.host), "mqtt.host", "must not be empty")
        require_int(self.port, "mqtt.port", 1, 65535)
        require_finite(self.keepalive_s, "mqtt.keepalive_s", minimum=5.0)
        require_int(self.session_expiry_s, "mqtt.session_expiry_s", 0, 2**32 - 1)
        require_int(self.receive_maximum, "mqtt.receive_maximum", 1, 65535)
        if self.client_id:
            require_ident(self.client_id, "mqtt.client_id")
        if self.share_group:
            require_ident(self.share_group, "mqtt.share_group")


class Storage(Contract, kw_only=True):
    """``db`` holds the API users, the audit log and the operator overrides (the file
    ``serve --db`` uses; :mod:`optimizer.override_store`); ``history`` the measurements,
    events, statuses, acks and published plans."""

    db: str
    history: str
    retention_h: float = 168.0
    prune_every_s: float = 600.0

    def __post_init__(self) -> None:
        require_finite(self.retention_h, "storage.retention_h", minimum=0.1)
        require_finite(self.prune_every_s, "storage.prune_every_s", minimum=1.0)


class Signing(Contract, kw_only=True):
    """The Ed25519 key plans are signed with, and the id the edges know it by."""

    key: str
    key_id: Ident = "central"


class Api(Contract, kw_only=True):
    """The operations API served in the same process."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8080
    max_override_h: float = 24.0

    def __post_init__(self) -> None:
        require_int(self.port, "api.port", 1, 65535)
        require_finite(self.max_override_h, "api.max_override_h", minimum=0.01)


class LoopSettings(Contract, kw_only=True):
    """Periods of the loop and how acks are followed."""

    role: str = "all"  # "all": ingest, plan, publish, serve; "ingest": store only (a replica)
    regions: tuple[Ident, ...] = ()  # regions this process plans ("" = every region)
    tick_s: float = 0.5
    heartbeat_s: float = 5.0
    ack_timeout_s: float = 30.0
    max_attempts: int = 3
    stale_after_s: float = 300.0

    def __post_init__(self) -> None:
        require(self.role in ("all", "ingest"), "loop.role",
                f"must be 'all' or 'ingest', got {self.role!r}")
        for name in ("tick_s", "heartbeat_s", "ack_timeout_s"):
            require_finite(getattr(self, name), f"loop.{name}", minimum=0.05)
        require_finite(self.stale_after_s, "loop.stale_after_s", minimum=1.0)
        require_int(self.max_attempts, "loop.max_attempts", 1, 100)


class PlanningSettings(Contract, kw_only=True):
    """Demand estimation and optimisation (see :mod:`optimizer.region_plan`)."""

    window_s: float = 900.0
    halflife_s: float = 300.0
    prior_saturation_vph: float = 1800.0
    max_degree: float = 0.95
    cycle_step_s: float = 5.0
    cycle_max_s: float = 150.0
    max_green_factor: float = 1.5
    plan_ttl_s: float = 900.0
    min_change_s: float = 2.0  # a re-plan changing nothing by more keeps the plan in force

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            require_finite(getattr(self, name), f"planning.{name}", minimum=0.0)
        require(self.window_s > 0 and self.halflife_s > 0 and self.plan_ttl_s > 0
                and self.cycle_step_s > 0, "planning",
                "window_s, halflife_s, plan_ttl_s and cycle_step_s must be > 0")
        require(0 < self.max_degree < 1, "planning.max_degree", "must be within 0..1")
        require(self.max_green_factor >= 1, "planning.max_green_factor", "must be >= 1")


class Validation(Contract, kw_only=True):
    """Validate a region's candidates in SUMO (:func:`simulation.gate.validate`)."""

    scenario: str  # a SUMO scenario whose intersection ids are the site's (tsc-sim import-net)
    seeds: int = 2
    horizon_s: float = 0.0  # 0 = the planning window
    tolerance: float = 0.05
    tolerance_s: float = 1.0
    jobs: int = 0  # worker processes; 0 = one per episode, up to the cores

    def __post_init__(self) -> None:
        require_int(self.seeds, "validation.seeds", 1, 50)
        require_int(self.jobs, "validation.jobs", 0, 256)
        for name in ("horizon_s", "tolerance", "tolerance_s"):
            require_finite(getattr(self, name), f"validation.{name}", minimum=0.0)


class Region(Contract, kw_only=True):
    """Intersections re-planned together on one schedule (coordinated where a corridor of
    the site links them)."""

    id: Ident
    intersections: tuple[Ident, ...]
    replan_s: float = 300.0
    validation: Validation | None = None

    def __post_init__(self) -> None:
        require(len(self.intersections) > 0, f"region {self.id}.intersections",
                "must not be empty")
        require_finite(self.replan_s, f"region {self.id}.replan_s", minimum=1.0)


class TimeOfDay(TimeOfDayEntry, kw_only=True):
    """From ``start`` (local "HH:MM") the centre's time-of-day plan for ``intersection``."""

    intersection: Ident


class CentralFile(Contract, kw_only=True):
    """The file as written."""

    site_config: str
    central_id: Ident = "central"
    timezone: str = "UTC"
    storage: Storage
    signing: Signing
    mqtt: MqttSettings = MqttSettings()
    api: Api = Api()
    loop: LoopSettings = LoopSettings()
    planning: PlanningSettings = PlanningSettings()
    regions: tuple[Region, ...]
    time_of_day: tuple[TimeOfDay, ...] = ()


@dataclass(frozen=True)
class CentralConfig:
    """Everything the service runs with, loaded and checked; paths resolved."""

    file: CentralFile
    path: Path
    site: SiteConfig
    time_of_day: dict[str, tuple[tuple[int, TimingPlan], ...]]  # intersection -> entries
    key_path: Path
    db_path: Path
    history_path: Path
    password: str | None

    @property
    def owned_regions(self) -> tuple[Region, ...]:
        """The regions this process plans (``loop.regions``, or all of them)."""
        wanted = self.file.loop.regions
        return tuple(r for r in self.file.regions if not wanted or r.id in wanted)

    @property
    def client_id(self) -> str:
        return self.file.mqtt.client_id or f"tsc-central-{self.file.central_id}"

    def scenario_path(self, region: Region) -> Path | None:
        if region.validation is None:
            return None
        return _resolve(self.path.parent, region.validation.scenario)


def _resolve(base: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() or str(name).startswith(":") else base / p


def load_central_config(path: str | Path, *, check_key: bool = True) -> CentralConfig:
    """Load and check a central config file; ConfigError naming file and key on any problem."""
    path = Path(path)
    file = load_toml(path, CentralFile)
    base = path.parent
    site = load_site(_resolve(base, file.site_config))
    known = {x.id for x in site.intersections}
    seen: dict[str, str] = {}
    for i, region in enumerate(file.regions):
        if region.id in {r.id for r in file.regions[:i]}:
            raise ConfigError(f"duplicate region id {region.id!r}", file=str(path),
                              key=f"regions[{i}].id")
        for x in region.intersections:
            if x not in known:
                raise ConfigError(f"region {region.id}: {x!r} is not an intersection of site "
                                  f"{site.site!r}", file=str(path),
                                  key=f"regions[{i}].intersections")
            if x in seen:
                raise ConfigError(f"{x!r} is in regions {seen[x]!r} and {region.id!r}; an "
                                  f"intersection belongs to one region", file=str(path),
                                  key=f"regions[{i}].intersections")
            seen[x] = region.id
        if region.validation is not None and not _resolve(base, region.validation.scenario) \
                .exists():
            raise ConfigError(f"region {region.id}: scenario not found: "
                              f"{region.validation.scenario}", file=str(path),
                              key=f"regions[{i}].validation.scenario")
    unknown = [r for r in file.loop.regions if r not in {x.id for x in file.regions}]
    if unknown:
        raise ConfigError(f"loop.regions names unknown regions {unknown}", file=str(path),
                          key="loop.regions")
    schedules: dict[str, list[tuple[int, TimingPlan]]] = {}
    for i, entry in enumerate(file.time_of_day):
        if entry.intersection not in known:
            raise ConfigError(f"{entry.intersection!r} is not an intersection of the site",
                              file=str(path), key=f"time_of_day[{i}].intersection")
        plan = load_plan(_resolve(base, entry.plan))
        problems = check_plan(plan, site.intersection(entry.intersection))
        if problems:
            raise ConfigError(f"time-of-day plan {entry.plan} fails the guard: "
                              + "; ".join(str(v) for v in problems), file=str(path),
                              key=f"time_of_day[{i}].plan")
        rows = schedules.setdefault(entry.intersection, [])
        if rows and rows[-1][0] >= entry.minute_of_day:
            raise ConfigError(f"time-of-day entries of {entry.intersection} must be in "
                              f"increasing start order", file=str(path),
                              key=f"time_of_day[{i}].start")
        rows.append((entry.minute_of_day, plan))
    key_path = _resolve(base, file.signing.key)
    if check_key:
        try:
            load_private_key(key_path.read_bytes())
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot load the Ed25519 signing key {key_path}: {exc}",
                              file=str(path), key="signing.key") from exc
    password = None
    if file.mqtt.password_file:
        try:
            password = _resolve(base, file.mqtt.password_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the MQTT password file: {exc.strerror}",
                              file=str(path), key="mqtt.password_file") from exc
    try:
        from zoneinfo import ZoneInfo
        ZoneInfo(file.timezone)
    except Exception:  # noqa: BLE001 - ZoneInfo raises several kinds for a bad name
        raise ConfigError(f"unknown time zone {file.timezone!r}", file=str(path),
                          key="timezone") from None
    if math.isfinite(file.planning.window_s) and file.planning.window_s < 60:
        raise ConfigError("planning.window_s: at least 60 s of measurements are needed",
                          file=str(path), key="planning.window_s")
    return CentralConfig(file=file, path=path, site=site,
                         time_of_day={k: tuple(v) for k, v in schedules.items()},
                         key_path=key_path, db_path=_resolve(base, file.storage.db),
                         history_path=_resolve(base, file.storage.history), password=password)


def restrict_site(site: SiteConfig, ids: set[str]) -> SiteConfig:
    """The site reduced to ``ids`` (a replica serves the intersections of its regions)."""
    keep = tuple(x for x in site.intersections if x.id in ids)
    corridors = tuple(c for c in site.corridors if set(c.intersections) <= ids)
    return msgspec.structs.replace(site, intersections=keep, corridors=corridors)
