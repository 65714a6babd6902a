"""Configuration files: TOML, validated once at start-up, unknown keys rejected.

A *site* file holds one or more intersections and the corridors that link them; a *register
map* file describes a Modbus controller (see :mod:`edge_agent.registers`). Both go through
:func:`load_toml`, which turns every problem into a :class:`~edge_agent.errors.ConfigError`
naming the file, the key and, where it can be found, the line.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from edge_agent.errors import ConfigError
from edge_agent.guard import check_intersection
from edge_agent.model import Contract, Ident, Intersection, require, require_finite, require_unique
from edge_agent.plan import TimingPlan

__all__ = ["Corridor", "Link", "SiteConfig", "load_intersection", "load_plan", "load_site",
           "load_toml"]

T = TypeVar("T")


class Link(Contract, kw_only=True):
    """The road between two neighbouring intersections of a corridor, in travel direction."""

    upstream: Ident
    downstream: Ident
    length_m: float
    speed_mps: float

    def __post_init__(self) -> None:
        where = f"link {self.upstream}->{self.downstream}"
        require_finite(self.length_m, f"{where}.length_m", minimum=1.0)
        require_finite(self.speed_mps, f"{where}.speed_mps", minimum=0.5)


class Corridor(Contract, kw_only=True):
    """Intersections coordinated together, listed in order along the corridor."""

    id: Ident
    intersections: tuple[Ident, ...]
    links: tuple[Link, ...]
    name: str = ""

    def __post_init__(self) -> None:
        where = f"corridor {self.id}"
        require(len(self.intersections) >= 2, f"{where}.intersections",
                "a corridor links at least two intersections")
        require_unique(list(self.intersections), f"{where}.intersections")
        members = set(self.intersections)
        for link in self.links:
            for end in (link.upstream, link.downstream):
                require(end in members, f"{where}.links", f"{end!r} is not in the corridor")


class SiteConfig(Contract, kw_only=True):
    """Everything a site file declares."""

    site: Ident
    intersections: tuple[Intersection, ...]
    corridors: tuple[Corridor, ...] = ()

    def __post_init__(self) -> None:
        require(len(self.intersections) > 0, "intersections", "must not be empty")
        require_unique([i.id for i in self.intersections], "intersections")
        known = {i.id for i in self.intersections}
        for corridor in self.corridors:
            for member in corridor.intersections:
                require(member in known, f"corridor {corridor.id}.intersections",
                        f"unknown intersection {member!r}")

    def intersection(self, intersection_id: str) -> Intersection:
        """The intersection with this id (KeyError naming it when absent)."""
        for i in self.intersections:
            if i.id == intersection_id:
                return i
        raise KeyError(f"no intersection {intersection_id!r} in site {self.site!r}")


def load_toml(path: str | Path, schema: type[T]) -> T:
    """Read ``path`` and convert it to ``schema``, strictly; ConfigError on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text: {exc.reason} at byte {exc.start}",
                          file=str(path)) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"line (\d+)", str(exc))
        raise ConfigError(f"not valid TOML: {exc}", file=str(path),
                          line=int(found.group(1)) if found else None) from exc
    return convert(data, schema, file=str(path), text=text)


def convert(data: Any, schema: type[T], *, file: str | None = None, text: str = "") -> T:
    """Validate plain data against ``schema``; errors carry the key path and line if known."""
    try:
        return msgspec.convert(data, schema, strict=True)
    except msgspec.ValidationError as exc:
        message, key = _split_validation_error(str(exc))
        raise ConfigError(message, file=file, key=key, line=find_line(text, key)) from exc


def load_site(path: str | Path) -> SiteConfig:
    """Load a site file and check every intersection's configured intervals with the guard."""
    site = load_toml(path, SiteConfig)
    for index, intersection in enumerate(site.intersections):
        problems = check_intersection(intersection)
        if problems:
            key = f"intersections[{index}]"
            raise ConfigError(f"intersection {intersection.id!r} fails the guard: "
                              + "; ".join(str(v) for v in problems), file=str(path), key=key,
                              line=find_line(Path(path).read_text(encoding="utf-8"), key))
    return site


def load_intersection(path: str | Path, intersection_id: str | None = None) -> Intersection:
    """The one intersection of a site file, or the one named ``intersection_id``."""
    site = load_site(path)
    if intersection_id is None:
        if len(site.intersections) != 1:
            ids = ", ".join(i.id for i in site.intersections)
            raise ConfigError(f"holds several intersections ({ids}); name one", file=str(path))
        return site.intersections[0]
    try:
        return site.intersection(intersection_id)
    except KeyError as exc:
        raise ConfigError(str(exc.args[0]), file=str(path)) from None


# A table header, ``[name]`` or ``[[name]]`` (not an array value such as ``["a", "b"]``).
_HEADER = re.compile(r"^\s*\[\[?\s*[A-Za-z_][\w.\- ]*\]\]?\s*(?:#.*)?$")
_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_FIELD = re.compile(r"field `(?P<field>[^`]+)`")


def _split_validation_error(text: str) -> tuple[str, str | None]:
    """msgspec says "... - at `$.a[0].b`"; return the message and the dotted key path."""
    match = _AT.match(text)
    assert match is not None  # the pattern matches any string
    message, path = match.group("msg"), (match.group("path") or "").lstrip(".")
    field = _FIELD.search(message)
    if field:
        path = f"{path}.{field.group('field')}" if path else field.group("field")
    return message, path or None


def find_line(text: str, key: str | None) -> int | None:
    """Best-effort line of ``key`` (e.g. ``intersections[0].phases[2].yellow``) in TOML text.

    Walks ``[[array.of.tables]]`` headers by their index, then looks for ``name =`` inside the
    table found; gives up (None) for layouts it cannot follow, such as inline tables.
    """
    if not text or not key:
        return None
    lines = text.splitlines()
    parts = re.findall(r"([^.\[\]]+)|\[(\d+)\]", key)
    start, table, end = 0, "", len(lines)
    leaf: str | None = None
    for name, index in parts:
        if name:
            table = f"{table}.{name}" if table else name
            leaf = name
            continue
        header = re.compile(rf"^\s*\[\[\s*{re.escape(table)}\s*\]\]")
        hits = [n for n in range(start, len(lines)) if header.match(lines[n])]
        if int(index) >= len(hits):
            break
        start, leaf = hits[int(index)], None
        # The table's own keys end at the next header: a key missing here must not be found
        # in a later table (a missing ``yellow`` would otherwise point at the next phase's).
        end = next((n for n in range(start + 1, len(lines)) if _HEADER.match(lines[n])),
                   len(lines))
    if leaf is None:
        return start + 1
    pattern = re.compile(rf"^\s*{re.escape(leaf)}\s*=|[{{,]\s*{re.escape(leaf)}\s*=")
    for n in range(start, end):
        if pattern.search(lines[n]):
            return n + 1
    return None


def load_plan(path: str | Path) -> TimingPlan:
    """A plan file: TOML (for people) or JSON (the wire form), chosen by the file suffix."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text)
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"not UTF-8 text: {exc.reason} at byte {exc.start}",
                              file=str(path)) from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not valid JSON: {exc.msg}", file=str(path), line=exc.lineno) \
                from exc
        return convert(data, TimingPlan, file=str(path))
    return load_toml(path, TimingPlan)
