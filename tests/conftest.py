"""Shared fixtures: the repository's example configurations and the public scenarios."""

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
