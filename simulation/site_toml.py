"""Write site files (the schema :func:`edge_agent.config.load_site` reads) as TOML.

The standard library reads TOML but does not write it, and the layout here is small: scalars,
arrays and one-line inline tables. Writing it by hand avoids a dependency for the edge box.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from edge_agent.model import Intersection, require_ident

__all__ = ["site_toml", "toml_string", "toml_value"]

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


def toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    """One TOML value on one line: arrays and inline tables nest."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write non-finite number {value!r}")
        return repr(value)  # shortest text that reads back as the same float
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _comment(text: str) -> str:
    return "# " + " ".join(text.split())  # a comment ends at the line end: no newlines inside


def site_toml(site: str, intersections: Iterable[Intersection],
              header: Sequence[str] = ()) -> str:
    """The text of a site file holding ``intersections``; ``header`` lines become comments.

    Fields left at their defaults are omitted (as the contract's encoder does), lists of
    tables are written one inline table per line so that the file stays readable.
    """
    require_ident(site, "site")
    lines = [_comment(h) for h in header]
    lines += [f"site = {toml_string(site)}", ""]
    for intersection in intersections:
        data = msgspec.to_builtins(intersection)
        lines.append("[[intersections]]")
        scalars = {k: v for k, v in data.items() if not isinstance(v, (list, tuple))}
        arrays = {k: v for k, v in data.items() if isinstance(v, (list, tuple))}
        for key, value in scalars.items():
            lines.append(f"{key} = {toml_value(value)}")
        for key, value in arrays.items():
            if value and all(isinstance(v, (dict, list)) for v in value):
                lines.append(f"{key} = [")
                lines += [f"  {toml_value(v)}," for v in value]
                lines.append("]")
            else:
                lines.append(f"{key} = {toml_value(value)}")
        lines.append("")
    return "\n".join(lines)
