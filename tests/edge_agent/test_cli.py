"""``tsc-edge``: exit status 0/1/2 and what it prints, for plans and configuration files."""

from __future__ import annotations

import json
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from edge_agent.cli import EXIT_BAD_INPUT, EXIT_CLEAN, EXIT_VIOLATIONS, load_plan, main
from edge_agent.errors import ConfigError

from conftest import CONFIGS

NEMA8 = str(CONFIGS / "nema-8phase.toml")
NEMA4 = str(CONFIGS / "nema-4phase.toml")
CORRIDOR = str(CONFIGS / "corridor-3.toml")
GOOD = str(CONFIGS / "plans" / "main-oak-am-peak.toml")
BAD_YELLOW = str(CONFIGS / "plans" / "main-oak-bad-yellow.toml")

# A clean 80 s plan for Elm St & 2nd Ave (corridor-3.toml), whose east-west crossing is 16 m.
ELM_2ND_PLAN = """\
plan_id = 5
intersection_id = "elm-2nd"
cycle = 80.0
offset = 0.0
offset_reference = 2
activation = 0
source = "adaptive"
author = "test"
rings = [
  [
    { phase = 2, split = 40.0, yellow = 3.5, red_clearance = 1.5, min_green = 8, max_green = 50, walk = 7, ped_clearance = 11.3 },
    { phase = 4, split = 40.0, yellow = 3.0, red_clearance = 1.5, min_green = 6, max_green = 40, walk = 7, ped_clearance = 15.0 },
  ],
  [
    { phase = 6, split = 40.0, yellow = 3.5, red_clearance = 1.5, min_green = 8, max_green = 50 },
    { phase = 8, split = 40.0, yellow = 3.0, red_clearance = 1.5, min_green = 6, max_green = 40 },
  ],
]
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_exit_codes_are_distinct() -> None:
    assert (EXIT_CLEAN, EXIT_VIOLATIONS, EXIT_BAD_INPUT) == (0, 1, 2)


# --- check-plan ------------------------------------------------------------------------
def test_a_good_plan_passes(capsys) -> None:
    code, out, err = run(capsys, "check-plan", GOOD, "--intersection", NEMA8)
    assert code == EXIT_CLEAN
    assert out == "plan 1 for main-oak: OK (cycle 120 s, 8 phases)\n" and err == ""


def test_the_bad_yellow_plan_is_rejected(capsys) -> None:
    code, out, err = run(capsys, "check-plan", BAD_YELLOW, "--intersection", NEMA8)
    assert code == EXIT_VIOLATIONS
    assert out.splitlines() == [
        "plan 2 for main-oak: REJECTED, 1 violation",
        "  [yellow-floor] phase 3: yellow 2.9 s < 3.0 s (MUTCD minimum)"]
    assert err == ""


def test_several_violations_are_all_listed(capsys, tmp_path: Path) -> None:
    text = Path(BAD_YELLOW).read_text(encoding="utf-8").replace(
        "{ phase = 7, split = 14.0, yellow = 3.5,", "{ phase = 7, split = 14.0, yellow = 2.0,")
    plan = tmp_path / "two.toml"
    plan.write_text(text, encoding="utf-8")
    code, out, _ = run(capsys, "check-plan", str(plan), "--intersection", NEMA8)
    assert code == EXIT_VIOLATIONS
    lines = out.splitlines()
    assert lines[0] == "plan 2 for main-oak: REJECTED, 2 violations"
    assert [line.split(":")[0] for line in lines[1:]] == ["  [yellow-floor] phase 3",
                                                          "  [yellow-floor] phase 7"]


def test_json_output(capsys) -> None:
    code, out, _ = run(capsys, "check-plan", GOOD, "--intersection", NEMA8, "--json")
    assert code == EXIT_CLEAN
    assert json.loads(out) == {"plan_id": 1, "intersection_id": "main-oak", "accepted": True,
                               "violations": []}
    code, out, _ = run(capsys, "check-plan", BAD_YELLOW, "--intersection", NEMA8, "--json")
    assert code == EXIT_VIOLATIONS
    report = json.loads(out)
    assert report["accepted"] is False and report["plan_id"] == 2
    assert report["violations"] == [{"rule": "yellow-floor", "phase": 3, "value": 2.9,
                                     "limit": 3.0, "message": "yellow 2.9 s < 3.0 s (MUTCD "
                                                              "minimum)"}]


def test_a_json_plan_file(capsys, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_bytes(msgspec.json.encode(load_plan(BAD_YELLOW)))
    assert load_plan(plan) == load_plan(BAD_YELLOW)
    code, out, _ = run(capsys, "check-plan", str(plan), "--intersection", NEMA8)
    assert code == EXIT_VIOLATIONS and "[yellow-floor] phase 3" in out
    upper = tmp_path / "PLAN.JSON"  # the suffix is matched without regard to case
    upper.write_bytes(msgspec.json.encode(load_plan(GOOD)))
    assert run(capsys, "check-plan", str(upper), "--intersection", NEMA8)[0] == EXIT_CLEAN


def test_a_malformed_json_plan(capsys, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text('{\n  "plan_id": 1,\n  "cycle": ,\n}\n', encoding="utf-8")
    code, out, err = run(capsys, "check-plan", str(plan), "--intersection", NEMA8)
    assert code == EXIT_BAD_INPUT and out == ""
    assert err.startswith(f"tsc-edge: {plan}:3: not valid JSON: Expecting value")
    with pytest.raises(ConfigError) as info:
        load_plan(plan)
    assert (info.value.file, info.value.line) == (str(plan), 3)


def test_a_json_plan_with_a_bad_field(capsys, tmp_path: Path) -> None:
    data = msgspec.to_builtins(load_plan(GOOD)) | {"colour": "red"}
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(data), encoding="utf-8")
    code, _, err = run(capsys, "check-plan", str(plan), "--intersection", NEMA8)
    assert code == EXIT_BAD_INPUT
    assert f"{plan}: Object contains unknown field `colour` (key colour)" in err


@pytest.mark.parametrize("name", ["missing.toml", "missing.json"])
def test_a_missing_plan_file(capsys, tmp_path: Path, name: str) -> None:
    plan = tmp_path / name
    code, out, err = run(capsys, "check-plan", str(plan), "--intersection", NEMA8)
    assert code == EXIT_BAD_INPUT and out == ""
    assert err == f"tsc-edge: {plan}: cannot read: No such file or directory\n"


@pytest.mark.parametrize("name", ["plan.toml", "plan.json"])
def test_a_plan_file_that_is_not_utf8(capsys, tmp_path: Path, name: str) -> None:
    plan = tmp_path / name
    plan.write_bytes('author = "Stra\xdfe"\n'.encode("latin-1"))
    code, _, err = run(capsys, "check-plan", str(plan), "--intersection", NEMA8)
    assert code == EXIT_BAD_INPUT
    assert err.startswith(f"tsc-edge: {plan}: not UTF-8 text")


def test_a_bad_plan_toml_names_its_line(capsys, tmp_path: Path) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text(Path(GOOD).read_text(encoding="utf-8").replace(
        "cycle = 120.0", "cycle = -120.0"), encoding="utf-8")
    code, _, err = run(capsys, "check-plan", str(plan), "--intersection", NEMA8)
    assert code == EXIT_BAD_INPUT
    assert "cycle: must be >= 0, got -120" in err


def test_a_site_with_several_intersections_needs_an_id(capsys, tmp_path: Path) -> None:
    plan = tmp_path / "elm-2nd.toml"
    plan.write_text(ELM_2ND_PLAN, encoding="utf-8")
    code, out, err = run(capsys, "check-plan", str(plan), "--intersection", CORRIDOR)
    assert code == EXIT_BAD_INPUT and out == ""
    assert err == (f"tsc-edge: {CORRIDOR}: holds several intersections "
                   "(elm-1st, elm-2nd, elm-3rd); name one\n")
    code, out, _ = run(capsys, "check-plan", str(plan), "--intersection", CORRIDOR,
                       "--id", "elm-2nd")
    assert (code, out) == (EXIT_CLEAN, "plan 5 for elm-2nd: OK (cycle 80 s, 4 phases)\n")
    # elm-1st is another intersection: the plan is refused, not applied
    code, out, _ = run(capsys, "check-plan", str(plan), "--intersection", CORRIDOR,
                       "--id", "elm-1st")
    assert code == EXIT_VIOLATIONS and "[wrong-intersection]" in out
    code, _, err = run(capsys, "check-plan", str(plan), "--intersection", CORRIDOR,
                       "--id", "elm-9th")
    assert code == EXIT_BAD_INPUT and "no intersection 'elm-9th'" in err


def test_check_plan_refuses_a_site_that_fails_the_guard(capsys, tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(Path(NEMA8).read_text(encoding="utf-8").replace(
        "yellow = 3.5\nred_clearance = 1.5", "yellow = 2.5\nred_clearance = 1.5", 1),
        encoding="utf-8")
    code, _, err = run(capsys, "check-plan", GOOD, "--intersection", str(site))
    assert code == EXIT_BAD_INPUT
    assert "[yellow-floor] phase 3: yellow 2.5 s" in err and f"{site}:" in err


# --- check-config ----------------------------------------------------------------------
def test_check_config_on_every_shipped_config(capsys) -> None:
    # adaptive.toml and central.toml configure the centre, which tsc-edge does not know
    files = sorted(str(p) for p in CONFIGS.glob("*.toml")
                   if p.name not in ("adaptive.toml", "central.toml"))
    code, out, err = run(capsys, "check-config", *files)
    assert code == EXIT_CLEAN and err == ""
    assert out.splitlines() == [
        f"{CORRIDOR}: OK, site elm-corridor: elm-1st, elm-2nd, elm-3rd; corridors elm",
        f"{CONFIGS / 'edge-elm-1st.toml'}: OK, edge agent for downtown/elm-1st: "
        "3 time-of-day plans, 1 trusted key(s)",
        f"{CONFIGS / 'modbus-elm-1st.toml'}: OK, register map of elm-1st-cabinet: "
        "55 registers, 29 writable",
        f"{CONFIGS / 'nema-4phase.toml'}: OK, site downtown: elm-1st",
        f"{NEMA8}: OK, site downtown: main-oak",
    ]


@pytest.mark.parametrize(("text", "line", "message"), [
    ('site = "s"\n\n[[intersections]\n', 3, "not valid TOML"),
    ('site = "s"\nintersections = []\ncolour = 1\n', 3, "unknown field `colour` (key colour)"),
    ('[device]\nid = "cab"\ntransport = "tcp"\ntimeout_s = "x"\n[[registers]]\n', 4,
     "Expected `float`, got `str` (key device.timeout_s)"),
])
def test_check_config_on_a_broken_file(capsys, tmp_path: Path, text: str, line: int,
                                       message: str) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text(text, encoding="utf-8")
    code, out, err = run(capsys, "check-config", NEMA8, str(broken), NEMA4)
    assert code == EXIT_BAD_INPUT
    # every file is checked: those before and after the broken one are reported too
    assert out == f"{NEMA8}: OK, site downtown: main-oak\n{NEMA4}: OK, site downtown: elm-1st\n"
    assert err.startswith(f"tsc-edge: {broken}:{line}: ") and message in err


@pytest.mark.parametrize("content", [None, b'site = "Stra\xdfe"\n'])
def test_check_config_on_an_unreadable_file(capsys, tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "site.toml"
    if content is not None:
        path.write_bytes(content)
    code, out, err = run(capsys, "check-config", str(path))
    assert code == EXIT_BAD_INPUT and out == ""
    assert err.startswith(f"tsc-edge: {path}: ")
    assert ("cannot read" if content is None else "not UTF-8 text") in err


# --- help and the console script -------------------------------------------------------
@pytest.mark.parametrize(("argv", "expected"), [
    (["--help"], ["check-plan", "check-config", "safety guard"]),
    (["check-plan", "--help"], ["--intersection CONFIG", "--id ID", "--json", "PLAN",
                                "Exits 1 if there is any"]),
    (["check-config", "--help"], ["FILE", "first problem of each with its file, key and line"]),
])
def test_help(capsys, argv: list[str], expected: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for text in expected:
        assert text in out


@pytest.mark.parametrize("argv", [[], ["check-plan", GOOD], ["launch"]])
def test_usage_errors_exit_2(capsys, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage: tsc-edge" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
def test_python_dash_m(capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["tsc-edge", "check-config", NEMA8])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("edge_agent.cli", run_name="__main__")
    assert info.value.code == 0
    assert capsys.readouterr().out == f"{NEMA8}: OK, site downtown: main-oak\n"


def test_console_script() -> None:
    script = shutil.which("tsc-edge", path=str(Path(sys.executable).parent)) \
        or shutil.which("tsc-edge")
    assert script, "the tsc-edge console script is not installed"
    done = subprocess.run([script, "check-plan", BAD_YELLOW, "--intersection", NEMA8],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_VIOLATIONS, done.stderr
    assert "[yellow-floor] phase 3" in done.stdout
