"""Configuration files: the shipped examples load; every problem names its file, key and line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge_agent.cli import load_plan
from edge_agent.config import (
    Corridor,
    Link,
    SiteConfig,
    convert,
    find_line,
    load_intersection,
    load_site,
    load_toml,
)
from edge_agent.errors import ConfigError, DeviceError, PlanRejected, TscError
from edge_agent.model import Intersection
from edge_agent.plan import PlanSource, TimingPlan
from edge_agent.registers import Access, RegisterMap

from conftest import CONFIGS

SITE_FILES = ["nema-8phase.toml", "nema-4phase.toml", "corridor-3.toml"]
REGISTER_MAPS = ["modbus-elm-1st.toml"]
PLAN_FILES = ["main-oak-am-peak.toml", "main-oak-bad-yellow.toml", "elm-1st-offpeak.toml",
              "elm-1st-peak.toml"]
# Shipped files loaded by the tests of what uses them.
TESTED_ELSEWHERE = {"edge-elm-1st.toml": "tests/edge_agent/test_agent_config.py",
                    "adaptive.toml": "tests/optimizer",
                    "central.toml": "tests/optimizer/test_ingest.py"}

NEMA8 = (CONFIGS / "nema-8phase.toml").read_text(encoding="utf-8")
NEMA4 = (CONFIGS / "nema-4phase.toml").read_text(encoding="utf-8")
CORRIDOR = (CONFIGS / "corridor-3.toml").read_text(encoding="utf-8")
MODBUS = (CONFIGS / "modbus-elm-1st.toml").read_text(encoding="utf-8")


def edit(text: str, after: str, old: str, new: str | None) -> tuple[str, int]:
    """Replace the first line starting with ``old`` at or after the line holding ``after``.

    ``new=None`` deletes the line; ``old=""`` inserts ``new`` just after the ``after`` line.
    Returns the edited text and the (1-based) line number of the edit.
    """
    lines = text.splitlines()
    start = next(n for n, line in enumerate(lines) if after in line)
    if old == "":
        lines.insert(start + 1, new or "")
        return "\n".join(lines) + "\n", start + 2
    n = next(n for n in range(start, len(lines)) if lines[n].lstrip().startswith(old))
    if new is None:
        del lines[n]
    else:
        lines[n] = new
    return "\n".join(lines) + "\n", n + 1


def line_of(text: str, needle: str, after: str = "") -> int:
    """1-based line of the first line containing ``needle`` at or after ``after``'s line."""
    lines = text.splitlines()
    start = next(n for n, line in enumerate(lines) if after in line)
    return next(n for n in range(start, len(lines)) if needle in lines[n]) + 1


@pytest.fixture
def write(tmp_path: Path):
    def write(text: str | bytes, name: str = "site.toml") -> Path:
        path = tmp_path / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return path
    return write


# --- the shipped examples --------------------------------------------------------------
def test_every_shipped_config_is_covered_here() -> None:
    assert sorted(p.name for p in CONFIGS.glob("*.toml")) == \
        sorted(SITE_FILES + REGISTER_MAPS + [n for n in TESTED_ELSEWHERE
                                             if (CONFIGS / n).exists()])
    assert sorted(p.name for p in (CONFIGS / "plans").glob("*.toml")) == sorted(PLAN_FILES)


@pytest.mark.parametrize("name", SITE_FILES)
def test_shipped_site_files_load(configs_dir: Path, name: str) -> None:
    site = load_site(configs_dir / name)
    assert isinstance(site, SiteConfig) and site.intersections
    for intersection in site.intersections:
        assert load_intersection(configs_dir / name, intersection.id) is not None


def test_shipped_site_contents(configs_dir: Path) -> None:
    nema8 = load_intersection(configs_dir / "nema-8phase.toml")
    assert (nema8.id, len(nema8.phases), nema8.rings) == \
        ("main-oak", 8, (((1, 2), (3, 4)), ((5, 6), (7, 8))))
    corridor = load_site(configs_dir / "corridor-3.toml")
    assert corridor.site == "elm-corridor"
    assert [i.id for i in corridor.intersections] == ["elm-1st", "elm-2nd", "elm-3rd"]
    (elm,) = corridor.corridors
    assert elm.intersections == ("elm-1st", "elm-2nd", "elm-3rd") and len(elm.links) == 4
    assert elm.links[0] == Link(upstream="elm-1st", downstream="elm-2nd", length_m=320.0,
                                speed_mps=13.9)


@pytest.mark.parametrize("name", REGISTER_MAPS)
def test_shipped_register_maps_load(configs_dir: Path, name: str) -> None:
    registers = load_toml(configs_dir / name, RegisterMap)
    assert registers.device.id == "elm-1st-cabinet" and registers.device.timeout_s == 0.4
    assert any(r.access is Access.WRITE for r in registers.registers)


@pytest.mark.parametrize("name", PLAN_FILES)
def test_shipped_plans_load(configs_dir: Path, name: str) -> None:
    plan = load_toml(configs_dir / "plans" / name, TimingPlan)
    assert plan.intersection_id in ("main-oak", "elm-1st")
    assert plan.source is PlanSource.TIME_OF_DAY
    assert load_plan(configs_dir / "plans" / name) == plan


# --- every problem located -------------------------------------------------------------
def test_unknown_key_in_an_array_of_tables(write) -> None:
    text, line = edit(NEMA8, "number = 3", "", 'colour = "amber"')
    path = write(text)
    with pytest.raises(ConfigError) as info:
        load_site(path)
    e = info.value
    assert (e.file, e.key, e.line) == (str(path), "intersections[0].phases[2].colour", line)
    assert "unknown field `colour`" in e.reason
    assert str(e).startswith(f"{path}:{line}: ") and "(key intersections[0].phases[2].colour)" \
        in str(e)


def test_unknown_top_level_key(write) -> None:
    text, line = edit(NEMA8, 'site = "downtown"', "", 'owner = "city"')
    with pytest.raises(ConfigError) as info:
        load_site(write(text))
    assert (info.value.key, info.value.line) == ("owner", line)


def test_unknown_key_in_the_second_table_of_a_kind(write) -> None:
    # the same key exists nowhere else, but the search must start at the right table
    text, line = edit(CORRIDOR, 'id = "elm-2nd"', "", "colour = 1")
    with pytest.raises(ConfigError) as info:
        load_site(write(text))
    assert (info.value.key, info.value.line) == ("intersections[1].colour", line)


def test_unknown_key_in_a_register_map(write) -> None:
    text, line = edit(MODBUS, 'name = "count_5"', "", "colour = 1")
    with pytest.raises(ConfigError) as info:
        load_toml(write(text, "map.toml"), RegisterMap)
    assert (info.value.key, info.value.line) == ("registers[5].colour", line)


def test_unknown_key_inside_an_inline_table_points_at_its_array(write) -> None:
    # find_line does not count inline tables; it points at the array that holds them
    text = NEMA4.replace("yellow = 3.0, red", "yelow = 3.0, red", 1)
    with pytest.raises(ConfigError) as info:
        load_site(write(text))
    assert info.value.key == "intersections[0].phases[1].yelow"
    assert info.value.line == line_of(text, "phases = [")


def test_missing_key_names_the_key_and_no_wrong_line(write) -> None:
    text, _ = edit(NEMA8, "number = 3", "yellow", None)
    with pytest.raises(ConfigError) as info:
        load_site(write(text))
    e = info.value
    assert e.key == "intersections[0].phases[2].yellow"
    assert "missing required field `yellow`" in e.reason
    # phase 4's yellow is the next "yellow =" in the file: it must not be blamed
    assert e.line is None


def test_missing_top_level_key(write) -> None:
    text, _ = edit(NEMA8, 'site = "downtown"', "site", None)
    with pytest.raises(ConfigError) as info:
        load_site(write(text))
    assert (info.value.key, info.value.line) == ("site", None)


def test_wrong_type(write) -> None:
    text, line = edit(NEMA8, "number = 3", "yellow", 'yellow = "3.5"')
    with pytest.raises(ConfigError) as info:
        load_site(write(text))
    e = info.value
    assert (e.key, e.line) == ("intersections[0].phases[2].yellow", line)
    assert "Expected `float`, got `str`" in e.reason


def test_wrong_type_in_a_plain_table(write) -> None:
    text, line = edit(MODBUS, "[device]", "timeout_s", 'timeout_s = "0.4"')
    with pytest.raises(ConfigError) as info:
        load_toml(write(text, "map.toml"), RegisterMap)
    assert (info.value.key, info.value.line) == ("device.timeout_s", line)


def test_wrong_enum_value(write) -> None:
    text = NEMA8.replace('clearance_policy = "ite-kinematic"', 'clearance_policy = "ite"')
    with pytest.raises(ConfigError, match="Invalid enum value 'ite'") as info:
        load_site(write(text))
    assert info.value.key == "intersections[0].clearance_policy"
    assert info.value.line == line_of(text, "clearance_policy")


def test_a_value_check_locates_its_table(write) -> None:
    text, _ = edit(NEMA8, "number = 1", "min_green", "min_green = 30")
    with pytest.raises(ConfigError) as info:
        load_site(write(text))
    e = info.value
    assert e.reason == "phase 1.max_green: must be >= min_green (30), got 25"
    assert e.key == "intersections[0].phases[0]"
    assert e.line == line_of(text, "[[intersections.phases]]")


def test_bad_toml_syntax_reports_tomllib_line(write) -> None:
    text, line = edit(NEMA8, "number = 3", "yellow", "yellow = ")
    path = write(text)
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_site(path)
    assert (info.value.file, info.value.line) == (str(path), line)
    with pytest.raises(ConfigError, match="at end of document") as info:
        load_site(write(NEMA8 + "oops = "))
    assert info.value.line is None


def test_missing_or_unreadable_files(tmp_path: Path, write) -> None:
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError, match="cannot read: No such file") as info:
        load_site(missing)
    assert (info.value.file, info.value.line, info.value.key) == (str(missing), None, None)
    with pytest.raises(ConfigError, match="cannot read"):
        load_toml(tmp_path, RegisterMap)  # a directory
    latin1 = write('site = "Stra\xdfe"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8") as info:
        load_site(latin1)
    assert info.value.file == str(latin1)


def test_a_yellow_below_the_floor_is_refused_naming_the_rule(write) -> None:
    text, _ = edit(NEMA8, "number = 3", "yellow", "yellow = 2.5")
    path = write(text)
    assert load_toml(path, SiteConfig)  # a well-formed file: the guard is what refuses it
    with pytest.raises(ConfigError) as info:
        load_site(path)
    e = info.value
    assert "intersection 'main-oak' fails the guard" in e.reason
    assert "[yellow-floor] phase 3: yellow 2.5 s < 3.0 s" in e.reason
    assert (e.file, e.key, e.line) == (str(path), "intersections[0]",
                                       line_of(text, "[[intersections]]"))


def test_a_yellow_below_the_ite_interval_is_refused(write) -> None:
    text, _ = edit(NEMA8, "number = 2", "yellow", "yellow = 3.6")
    with pytest.raises(ConfigError, match=re.escape("[yellow-ite] phase 2: yellow 3.6 s")):
        load_site(write(text))


def test_the_guard_failure_names_the_right_intersection(write) -> None:
    text = CORRIDOR.replace("ped_clearance = 15.0", "ped_clearance = 12.0")  # elm-2nd only
    with pytest.raises(ConfigError, match=r"'elm-2nd' fails the guard: \[ped-clearance\]") as info:
        load_site(write(text))
    assert info.value.key == "intersections[1]"
    assert info.value.line == line_of(text, 'id = "elm-2nd"') - 1  # its [[intersections]]


def test_corridor_referencing_an_unknown_intersection(write) -> None:
    text = CORRIDOR.replace('intersections = ["elm-1st", "elm-2nd", "elm-3rd"]',
                            'intersections = ["elm-1st", "elm-2nd", "elm-3rd", "elm-4th"]')
    path = write(text)
    with pytest.raises(ConfigError) as info:
        load_site(path)
    assert info.value.reason == "corridor elm.intersections: unknown intersection 'elm-4th'"
    assert info.value.file == str(path)


def test_duplicate_intersection_ids(write) -> None:
    text = CORRIDOR.replace('id = "elm-3rd"', 'id = "elm-2nd"')
    with pytest.raises(ConfigError, match="intersections: duplicate id 'elm-2nd'"):
        load_site(write(text))


# --- load_intersection -----------------------------------------------------------------
def test_load_intersection_with_several_needs_an_id(configs_dir: Path) -> None:
    path = configs_dir / "corridor-3.toml"
    with pytest.raises(ConfigError) as info:
        load_intersection(path)
    assert info.value.reason == "holds several intersections (elm-1st, elm-2nd, elm-3rd); name one"
    assert info.value.file == str(path)
    with pytest.raises(ConfigError) as info:
        load_intersection(path, "elm-9th")
    assert info.value.reason == "no intersection 'elm-9th' in site 'elm-corridor'"
    assert info.value.file == str(path)
    elm2 = load_intersection(path, "elm-2nd")
    assert isinstance(elm2, Intersection) and elm2.id == "elm-2nd"
    assert elm2.phase_by_number[4].ped_clearance == 15.0  # its own crossing, not elm-1st's


def test_load_intersection_of_a_single_intersection_site(configs_dir: Path) -> None:
    path = configs_dir / "nema-4phase.toml"
    assert load_intersection(path) == load_intersection(path, "elm-1st")
    with pytest.raises(ConfigError, match="no intersection 'main-oak' in site 'downtown'"):
        load_intersection(path, "main-oak")


# --- corridors and sites built in Python -----------------------------------------------
@pytest.mark.parametrize(("build", "expected"), [
    (lambda: Link(upstream="a", downstream="b", length_m=0.5, speed_mps=10.0),
     "^link a->b.length_m: must be >= 1"),
    (lambda: Link(upstream="a", downstream="b", length_m=100.0, speed_mps=0.1),
     "^link a->b.speed_mps: must be >= 0.5"),
    (lambda: Link(upstream="a", downstream="b", length_m=float("nan"), speed_mps=10.0),
     "^link a->b.length_m: must be a finite"),
    (lambda: Corridor(id="c", intersections=("a",), links=()),
     "^corridor c.intersections: a corridor links at least two"),
    (lambda: Corridor(id="c", intersections=("a", "b", "a"), links=()),
     "^corridor c.intersections: duplicate id 'a'"),
    (lambda: Corridor(id="c", intersections=("a", "b"), links=(
        Link(upstream="a", downstream="z", length_m=100.0, speed_mps=10.0),)),
     "^corridor c.links: 'z' is not in the corridor"),
    (lambda: SiteConfig(site="s", intersections=()), "^intersections: must not be empty"),
])
def test_corridor_and_site_construction(build, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        build()


def test_site_intersection_lookup(configs_dir: Path) -> None:
    site = load_site(configs_dir / "corridor-3.toml")
    assert site.intersection("elm-3rd").name == "Elm St & 3rd Ave"
    with pytest.raises(KeyError, match="no intersection 'nope' in site 'elm-corridor'"):
        site.intersection("nope")


def test_convert_without_a_file() -> None:
    with pytest.raises(ConfigError) as info:
        convert({"site": "s"}, SiteConfig)
    e = info.value
    assert (e.file, e.key, e.line) == (None, "intersections", None)
    assert str(e) == "Object missing required field `intersections` (key intersections)"


# --- find_line -------------------------------------------------------------------------
TABLES = """\
site = "s"

[[t]]
a = 1
b = 2

[[ t ]]
a = 3
[[t.sub]]
c = 4
[[t.sub]]
c = 5

[device]
id = "d"
inline = { x = 1, y = 2 }
rows = [
  { z = 1 },
  { z = 2 },
]
"""


@pytest.mark.parametrize(("key", "line"), [
    ("site", 1),
    ("t[0]", 3),
    ("t[0].a", 4),
    ("t[0].b", 5),
    ("t[1]", 7),  # header written with spaces
    ("t[1].a", 8),
    ("t[1].sub[0].c", 10),
    ("t[1].sub[1].c", 12),
    ("device.id", 15),  # plain tables are not walked; the key is searched from the top
    ("device.inline.y", 16),  # a key inside an inline table
    ("device.rows[1].z", 17),  # inline tables are not counted: the array's own line
    ("t[0].c", None),  # missing in t[0]: the c of t[1].sub[0] must not be blamed
    ("t[1].b", None),
    ("nowhere", None),
    ("t[7].a", None),
])
def test_find_line(key: str, line: int | None) -> None:
    assert find_line(TABLES, key) == line


def test_find_line_without_text_or_key() -> None:
    assert find_line("", "site") is None
    assert find_line(TABLES, None) is None
    assert find_line(TABLES, "") is None


# --- the error vocabulary --------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "text"), [
    ({}, "bad value"),
    ({"file": "a.toml"}, "a.toml: bad value"),
    ({"file": "a.toml", "line": 7}, "a.toml:7: bad value"),
    ({"file": "a.toml", "line": 7, "key": "x[0].y"}, "a.toml:7: bad value (key x[0].y)"),
    ({"key": "x"}, "bad value (key x)"),
    ({"line": 3}, "3: bad value"),
])
def test_config_error_text(kwargs: dict, text: str) -> None:
    e = ConfigError("bad value", **kwargs)
    assert str(e) == text
    assert (e.reason, e.file, e.line, e.key) == ("bad value", kwargs.get("file"),
                                                 kwargs.get("line"), kwargs.get("key"))
    assert isinstance(e, TscError) and isinstance(e, ValueError)


def test_plan_rejected_lists_its_reasons() -> None:
    e = PlanRejected(12, ["[yellow-floor] phase 3: yellow 2.9 s < 3.0 s", "stale plan id"])
    assert str(e) == "plan 12 rejected: [yellow-floor] phase 3: yellow 2.9 s < 3.0 s; " \
                     "stale plan id"
    assert (e.plan_id, e.reasons) == (12, ["[yellow-floor] phase 3: yellow 2.9 s < 3.0 s",
                                          "stale plan id"])
    assert isinstance(e, TscError) and not isinstance(e, ValueError)
    assert issubclass(DeviceError, TscError) and not issubclass(DeviceError, ValueError)
