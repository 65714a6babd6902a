"""Locate the SUMO binaries and tools shipped by the ``eclipse-sumo`` wheel.

Paths are resolved from the installed ``sumo`` package, never from the ``SUMO_HOME``
environment variable: ``import libsumo`` overwrites ``SUMO_HOME`` with the ``sumo-data``
package, which has the data files but no binaries, so trusting the variable breaks as soon
as libsumo has been imported anywhere in the process.

The package is found with :func:`importlib.util.find_spec` instead of ``import sumo`` because
importing it sets ``SUMO_HOME`` and ``PROJ_LIB`` in ``os.environ`` as a side effect; finding
the folder is all we need.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path

__all__ = [
    "KNOWN_BINARIES",
    "SumoNotFoundError",
    "find_binary",
    "sumo_env",
    "sumo_home",
    "sumo_version",
    "tools_dir",
]

#: Binaries the project uses; any other name in the wheel's ``bin/`` also resolves.
KNOWN_BINARIES = ("sumo", "sumo-gui", "netconvert", "netgenerate", "duarouter")

_INSTALL_HINT = "install the simulation extra: pip install 'tsc-edge[simulation]' (eclipse-sumo==1.28.*)"


class SumoNotFoundError(RuntimeError):
    """The ``eclipse-sumo`` wheel, or a binary or folder expected in it, is missing."""


@functools.lru_cache(maxsize=1)
def sumo_home() -> Path:
    """Return the root folder of the ``eclipse-sumo`` wheel (what ``sumo.SUMO_HOME`` holds).

    Raises:
        SumoNotFoundError: the ``sumo`` package is not installed.
    """
    spec = importlib.util.find_spec("sumo")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise SumoNotFoundError(f"the 'sumo' package (eclipse-sumo wheel) is not installed; {_INSTALL_HINT}")
    home = Path(locations[0]).resolve()
    if not (home / "bin").is_dir():
        # A 'sumo' package without bin/ is not the wheel we expect (e.g. an unrelated package).
        raise SumoNotFoundError(f"{home} has no bin/ folder: not an eclipse-sumo installation; {_INSTALL_HINT}")
    return home


def find_binary(name: str) -> Path:
    """Return the absolute path of a SUMO executable (``sumo``, ``netconvert``, ...).

    Args:
        name: the executable's name without extension, e.g. ``"sumo-gui"``.

    Raises:
        SumoNotFoundError: the wheel is missing, or it has no such executable.
    """
    bin_dir = sumo_home() / "bin"
    candidates = [bin_dir / name]
    if sys.platform == "win32":
        candidates.insert(0, bin_dir / f"{name}.exe")
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise SumoNotFoundError(f"SUMO executable {name!r} not found (looked for {candidates[0]}); {_INSTALL_HINT}")


def tools_dir() -> Path:
    """Return the wheel's ``tools`` folder (the SUMO Python tools such as ``randomTrips.py``).

    Raises:
        SumoNotFoundError: the wheel is missing or has no ``tools`` folder.
    """
    path = sumo_home() / "tools"
    if not path.is_dir():
        raise SumoNotFoundError(f"SUMO tools folder not found at {path}; {_INSTALL_HINT}")
    return path


def sumo_version() -> str:
    """Return the installed ``eclipse-sumo`` version, e.g. ``"1.28.0"`` (``"unknown"`` if unreadable)."""
    sumo_home()  # raise the clear error first when the wheel is missing
    try:
        return importlib.metadata.version("eclipse-sumo")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def sumo_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Return an environment for SUMO subprocesses, pointing ``SUMO_HOME`` at the wheel.

    SUMO uses ``SUMO_HOME`` to find its XML schemas (without it, it warns and skips XML
    validation) and PROJ uses ``PROJ_LIB``/``PROJ_DATA`` to find ``proj.db`` (without it, it
    prints ``Cannot find proj.db`` for geo-referenced nets such as the Cologne ones). The
    caller's environment is copied, never modified.

    Args:
        base: environment to start from; defaults to a copy of ``os.environ``.
    """
    env = dict(os.environ if base is None else base)
    home = sumo_home()
    env["SUMO_HOME"] = str(home)
    proj = home / "data" / "proj"
    if proj.is_dir() and not (env.get("PROJ_LIB") or env.get("PROJ_DATA")):
        env["PROJ_LIB"] = env["PROJ_DATA"] = str(proj)
    return env
