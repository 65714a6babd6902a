"""The project's small error vocabulary.

Adapters turn library errors (paho, pymodbus, SQLite, SUMO) into these, so callers handle a few
well-named failures instead of every library's own. All are ``TscError``; configuration and
message errors are also ``ValueError`` because they describe bad input.
"""

from __future__ import annotations

__all__ = ["TscError", "ConfigError", "DeviceError", "PlanRejected"]


class TscError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(TscError, ValueError):
    """A configuration file is unreadable or invalid.

    ``file``, ``key`` (a dotted path such as ``intersections[0].phases[2].yellow``) and ``line``
    locate the problem where they are known.
    """

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None,
                 line: int | None = None) -> None:
        self.file, self.key, self.line, self.reason = file, key, line, message
        where = ":".join(str(x) for x in (file, line) if x is not None)
        at = f" (key {key})" if key else ""
        super().__init__(f"{where + ': ' if where else ''}{message}{at}")


class DeviceError(TscError):
    """A field device (Modbus controller, MQTT broker) could not be reached or answered badly."""


class PlanRejected(TscError):
    """A plan failed the guard or the edge's admission checks; ``reasons`` says why."""

    def __init__(self, plan_id: int, reasons: list[str]) -> None:
        self.plan_id, self.reasons = plan_id, reasons
        super().__init__(f"plan {plan_id} rejected: " + "; ".join(reasons))
