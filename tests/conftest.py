"""Shared fixtures: the repository's example configurations, the public scenarios, a clock
that moves only when told, and an edit of the example register map."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
# Public RESCO scenarios are referenced where they live (their licences are not ours).
RESCO = REPO.parent / "shared" / "scenarios" / "resco"


@pytest.fixture(scope="session")
def configs_dir() -> Path:
    return CONFIGS


@pytest.fixture(scope="session")
def resco_dir() -> Path:
    if not RESCO.is_dir():
        pytest.skip(f"RESCO scenarios not found at {RESCO}")
    return RESCO


class ManualClock:
    """An injected clock: POSIX seconds in ``now``, moved only by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def without_actuation_coils(regmap: Path) -> None:
    """Turn the hold and force-off coils of a copied register map into recall coils."""
    text = regmap.read_text()
    for signal in ("phase.hold", "phase.force_off"):
        text = text.replace(f'signal = "{signal}"', 'signal = "phase.recall"')
    regmap.write_text(text)
