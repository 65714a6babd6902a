"""The highest plan id an edge has accepted, kept on disk across restarts.

Without it a restarted edge would accept an older, validly signed plan (a replay) until the
retained current plan arrived. The id is written atomically (temporary file, fsync, rename)
before the accepting ack is sent, so a crash can never forget an id the centre was told about.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from edge_agent.errors import ConfigError

__all__ = ["load_last_plan_id", "save_last_plan_id"]


def load_last_plan_id(path: Path) -> int:
    """The stored id, 0 when the file does not exist; ConfigError if it is unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return 0
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the last accepted plan id: {exc}", file=str(path)) \
            from exc
    value = data.get("last_plan_id") if isinstance(data, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"last_plan_id must be an integer >= 0, got {value!r}",
                          file=str(path), key="last_plan_id")
    return value


def save_last_plan_id(path: Path, plan_id: int) -> None:
    """Store ``plan_id`` durably (atomic replace, file and folder fsynced)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"last_plan_id": plan_id}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
