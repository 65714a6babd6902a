"""A real mosquitto for integration tests (:class:`optimizer.mosquitto.Mosquitto`).

``Mosquitto(tmp_dir).start()`` runs a private broker on a free port of 127.0.0.1 with
persistence on, so that a consumer's persistent session and its queued messages survive a
restart, as in production; ``stop()`` ends it with SIGTERM and ``start()`` again restarts it on
the same port. Tests skip, with the reason, when the binary is missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from optimizer.mosquitto import Mosquitto as _Mosquitto, find_mosquitto, free_port

__all__ = ["Mosquitto", "find_mosquitto", "free_port", "require_mosquitto"]


def require_mosquitto() -> str:
    """The binary, or skip the calling test with a clear reason."""
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto not installed (apt-get install mosquitto): integration tests "
                    "need a real broker")
    return binary


class Mosquitto(_Mosquitto):
    """The shared broker with persistence on; skips the test when mosquitto is missing."""

    def __init__(self, directory: Path, binary: str | None = None, *,
                 max_queued_messages: int = 100_000) -> None:
        super().__init__(directory, binary=binary or require_mosquitto(), persistence=True,
                         max_queued_messages=max_queued_messages)
