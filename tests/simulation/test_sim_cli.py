"""``tsc-sim``: run, compare and import-net from the command line (real SUMO episodes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config import load_site
from simulation.cli import build_parser, main
from simulation.controllers import BUILT_IN, available_controllers

pytestmark = pytest.mark.integration

SECONDS = "300"
RESULT_KEYS = {"mean_delay_s", "mean_travel_time_s", "mean_waiting_s", "throughput",
               "teleports", "wall_s"}
# What varies between identical runs: timings.
TIMING_KEYS = {"wall_s", "sim_s_per_wall_s"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def corridor(tmp_path_factory: pytest.TempPathFactory) -> str:
    from simulation.demo_scenario import generate_corridor

    return str(generate_corridor(tmp_path_factory.mktemp("cli-corridor"), intersections=2))


def run_json(capsys, scenario: str, controller: str, *extra: str) -> dict:
    code = main(["run", "--scenario", scenario, "--controller", controller,
                 "--seconds", SECONDS, "--json", "--quiet", *extra])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 1, out  # exactly one JSON object, nothing else
    result = json.loads(lines[0])
    assert isinstance(result, dict)
    return result


@pytest.fixture(scope="module")
def first_runs() -> dict[str, dict]:
    """One JSON result per controller, shared by the tests that compare runs."""
    return {}


@pytest.mark.parametrize("controller", BUILT_IN)
def test_run_prints_one_json_object_with_the_kpis(capsys, corridor, first_runs, controller):
    result = run_json(capsys, corridor, controller)
    assert RESULT_KEYS <= set(result)
    for key in RESULT_KEYS:
        assert isinstance(result[key], (int, float)), key
    assert result["controller"] == controller and result["seeds"] == 1
    assert result["throughput"] > 0 and result["collisions"] == 0
    assert result["scenario"] == corridor
    first_runs[controller] = result


def test_two_invocations_give_identical_kpis(capsys, corridor, first_runs):
    first = first_runs.get("max-pressure") or run_json(capsys, corridor, "max-pressure")
    second = run_json(capsys, corridor, "max-pressure")
    strip = lambda r: {k: v for k, v in r.items() if k not in TIMING_KEYS}  # noqa: E731
    assert strip(first) == strip(second)


def test_run_prints_a_table_without_json(capsys, corridor):
    assert main(["run", "--scenario", corridor, "--controller", "fixed", "--seconds", "60",
                 "--quiet"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("controller") and lines[1].startswith("fixed")


def test_unknown_controller_exits_2_listing_the_available_ones(capsys, corridor):
    code = main(["run", "--scenario", corridor, "--controller", "nope", "--seconds", SECONDS,
                 "--quiet"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert "'nope'" in captured.err
    for name in available_controllers():
        assert name in captured.err


def test_unknown_controller_in_compare_exits_2(capsys, corridor):
    code = main(["compare", "--scenario", corridor, "--controllers", "fixed,nope",
                 "--seconds", SECONDS, "--quiet"])
    assert code == 2 and "nope" in capsys.readouterr().err


def test_missing_scenario_exits_2_naming_the_path(capsys, tmp_path):
    missing = tmp_path / "no-such-scenario"
    code = main(["run", "--scenario", str(missing), "--controller", "fixed", "--quiet"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert str(missing) in captured.err


def test_compare_writes_a_png_and_one_row_per_controller(capsys, corridor, tmp_path):
    png = tmp_path / "delay.png"
    names = ["fixed", "max-pressure", "webster"]
    code = main(["compare", "--scenario", corridor, "--controllers", ",".join(names),
                 "--seconds", "120", "--quiet", "--png", str(png)])
    captured = capsys.readouterr()
    assert code == 0
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    lines = captured.out.strip().splitlines()
    assert lines[0].startswith("controller") and "vs max-pressure" in lines[0]
    assert [line.split()[0] for line in lines[1:]] == names
    assert str(png) in captured.err


def test_compare_json_lists_every_controller(capsys, corridor):
    code = main(["compare", "--scenario", corridor, "--controllers", "fixed,actuated",
                 "--seconds", "60", "--quiet", "--json", "--reference", "fixed"])
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(out)
    assert result["reference"] == "fixed"
    assert [r["controller"] for r in result["controllers"]] == ["fixed", "actuated"]


def test_import_net_writes_a_loadable_site(capsys, tmp_path):
    from simulation.sumo_binaries import find_binary

    net = tmp_path / "grid.net.xml"
    subprocess.run([str(find_binary("netgenerate")), "--grid", "--grid.number", "2",
                    "--grid.attach-length", "100", "-j", "traffic_light", "-o", str(net)],
                   check=True, capture_output=True)
    site_file = tmp_path / "site.toml"
    assert main(["import-net", str(net), "-o", str(site_file), "--site", "grid"]) == 0
    out = capsys.readouterr().out
    site = load_site(site_file)
    assert site.site == "grid"
    assert len(site.intersections) >= 4
    assert f"{len(site.intersections)} intersections" in out


@pytest.mark.parametrize("argv", [[], ["run"], ["compare"], ["import-net"], ["demo"]])
def test_help_of_every_subcommand(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tsc-sim")


def test_every_subcommand_has_help():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    assert set(sub.choices) == {"run", "compare", "import-net", "demo", "validate"}


def test_console_script_prints_only_json_on_stdout(corridor):
    exe = shutil.which("tsc-sim", path=str(Path(sys.executable).parent)) or shutil.which("tsc-sim")
    command = [exe] if exe else [sys.executable, "-m", "simulation.cli"]
    proc = subprocess.run([*command, "run", "--scenario", corridor, "--controller",
                           "max-pressure", "--seconds", "120", "--json", "--quiet"],
                          capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # the whole of stdout is one JSON document
    assert proc.stdout.count("\n") == 1
    assert RESULT_KEYS <= set(result) and result["controller"] == "max-pressure"
