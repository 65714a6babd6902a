"""The adaptive controller's parameters (``configs/adaptive.toml``), validated once.

Unknown keys are refused (with the file, key and line), every value is range-checked, and the
same schema serves the tests and the harness: there are no parameters in code.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgspec

from edge_agent.actuation import ActuationParams
from edge_agent.config import convert, load_toml
from edge_agent.errors import ConfigError

__all__ = ["AdaptiveConfig", "DEFAULT_CONFIG", "load_adaptive_config"]

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "adaptive.toml"


class _Table(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if isinstance(value, bool):
                continue
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{type(self).__name__.lower()}.{name}: must be a finite "
                                 f"number >= 0, got {value!r}")


class Actuation(_Table, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """See :class:`edge_agent.actuation.ActuationParams`."""

    passage_s: float
    min_queue_veh: float
    approach_weight: float
    max_wait_s: float
    recall_s: float
    passage_min_s: float
    waiting_ref_veh: float
    pressure_weight: float
    wait_weight: float
    preempt_wait_s: float = 0.0


class Detection(_Table, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Detector zones the harness measures (what radar/camera/loops would see)."""

    reach_m: float
    halting_speed_mps: float
    exit_zone_m: float
    stop_zone_m: float
    accel_mps2: float
    downstream_m: float
    shared_lane_weight: float


class Estimation(_Table, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Demand estimation: priors and memory."""

    prior_saturation_vph: float
    prior_weight_veh: float
    halflife_s: float
    min_discharge_queue_veh: float


class Planning(_Table, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Plan optimisation on the rolling horizon."""

    replan_s: float
    cycle_step_s: float
    cycle_max_s: float
    max_green_factor: float
    max_degree: float


class Coordination(_Table, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Offsets for chains of closely spaced signals."""

    enabled: bool
    max_travel_s: float
    max_flow_ratio: float
    hold_fraction: float


class AdaptiveConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole ``adaptive.toml``."""

    actuation: Actuation
    detection: Detection
    estimation: Estimation
    planning: Planning
    coordination: Coordination

    def __post_init__(self) -> None:
        for name, value, low, high in (
                ("planning.max_green_factor", self.planning.max_green_factor, 1.0, 5.0),
                ("planning.max_degree", self.planning.max_degree, 0.5, 0.99),
                ("planning.cycle_step_s", self.planning.cycle_step_s, 1.0, 30.0),
                ("coordination.max_flow_ratio", self.coordination.max_flow_ratio, 0.1, 0.99),
                ("estimation.halflife_s", self.estimation.halflife_s, 60.0, 86400.0),
                ("detection.reach_m", self.detection.reach_m, 10.0, 1000.0),
                ("detection.shared_lane_weight", self.detection.shared_lane_weight, 0.0, 1.0),
                ("coordination.hold_fraction", self.coordination.hold_fraction, 0.0, 1.0)):
            if not low <= value <= high:
                raise ValueError(f"{name}: must be within {low:g}..{high:g}, got {value:g}")
        if self.detection.accel_mps2 <= 0:
            raise ValueError("detection.accel_mps2: must be > 0")
        if self.planning.replan_s < 60:
            raise ValueError("planning.replan_s: must be >= 60 s")

    @property
    def actuation_params(self) -> ActuationParams:
        a = self.actuation
        return ActuationParams(passage_s=a.passage_s, min_queue_veh=a.min_queue_veh,
                               approach_weight=a.approach_weight, max_wait_s=a.max_wait_s,
                               recall_s=a.recall_s, passage_min_s=a.passage_min_s,
                               waiting_ref_veh=a.waiting_ref_veh,
                               pressure_weight=a.pressure_weight, wait_weight=a.wait_weight,
                               preempt_wait_s=a.preempt_wait_s)


def load_adaptive_config(path: str | Path | None = None,
                         overrides: dict[str, dict[str, Any]] | None = None) -> AdaptiveConfig:
    """Load and validate the config file (default: ``configs/adaptive.toml``).

    ``overrides`` (table -> key -> value) replace values after reading, for experiments; they
    pass the same validation. ConfigError on any problem, naming file, key and line.
    """
    path = Path(path) if path is not None else DEFAULT_CONFIG
    config = load_toml(path, AdaptiveConfig)
    if overrides:
        data = msgspec.to_builtins(config)
        for table, values in overrides.items():
            if table not in data:
                raise ConfigError(f"unknown table {table!r}", file=str(path), key=table)
            data[table].update(values)
        config = convert(data, AdaptiveConfig, file=str(path))
    return config
