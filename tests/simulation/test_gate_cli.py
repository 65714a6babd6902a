"""``tsc-sim validate``: exit 0 accepted, 1 rejected (reasons printed), 2 bad input; --json."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from edge_agent.plan import TimingPlan
from gate_plans import MAIN_EDGES, main_phase, two_phase
from simulation.cli import main
from simulation.net_import import import_net
from simulation.plan_episode import run_plans

pytestmark = pytest.mark.integration

SECONDS = "600"


@pytest.fixture(scope="module")
def corridor(tmp_path_factory: pytest.TempPathFactory) -> str:
    from simulation.demo_scenario import generate_corridor

    return str(generate_corridor(tmp_path_factory.mktemp("gate-cli-corridor"), intersections=2))


def write(plan: TimingPlan, folder: Path, name: str) -> str:
    path = folder / f"{name}-{plan.intersection_id}.json"
    path.write_bytes(msgspec.json.encode(plan))
    return str(path)


@pytest.fixture(scope="module")
def files(corridor, tmp_path_factory) -> dict[str, list[str]]:
    """Plan files per kind: the designer's, main street starved, main street favoured, bad yellow."""
    folder = tmp_path_factory.mktemp("plans")
    imported = import_net(next(Path(corridor).parent.glob("*.net.xml")))
    out: dict[str, list[str]] = {"designer": [], "starve": [], "favour": [], "bad_yellow": []}
    for tls, x in imported.intersections.items():
        main = main_phase(imported, x)
        out["designer"].append(write(imported.designer_plan(tls), folder, "designer"))
        out["starve"].append(write(two_phase(x.id, side_green=55, main_green=5, main=main), folder, "starve"))
        out["favour"].append(write(two_phase(x.id, side_green=10, main_green=50, main=main), folder, "favour"))
        out["bad_yellow"].append(write(two_phase(x.id, side_green=20, main_green=40, main=main, yellow=2.5),
                                       folder, "bad"))
    return out


def validate(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["validate", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_accepted_prints_one_json_object_and_exits_0(capsys, corridor, files):
    code, out, _ = validate(capsys, "--scenario", corridor, "--candidate", *files["favour"],
                            "--incumbent", *files["starve"], "--seeds", "1", "--seconds", SECONDS, "--json")
    assert code == 0
    (line,) = out.strip().splitlines()  # stdout holds the JSON and nothing else
    verdict = json.loads(line)
    assert verdict["accepted"] is True and verdict["reasons"] == []
    assert verdict["tolerance"] == {"relative": 0.05, "absolute_s": 1.0}
    assert verdict["intersections"] == ["A0", "B0"] and verdict["seeds"] == [0]
    assert verdict["delay_change_s"] < 0
    for name in ("candidate", "incumbent"):
        assert verdict[name]["per_seed"][0]["seed"] == 0
        assert verdict[name]["mean"]["mean_delay_s"] > 0 and verdict[name]["mean"]["collisions_total"] == 0


def test_rejected_prints_the_reasons_and_exits_1(capsys, corridor, files):
    # No --incumbent: the net's own programmes are the plan in force.
    code, out, _ = validate(capsys, "--scenario", corridor, "--candidate", *files["starve"],
                            "--seeds", "1", "--seconds", SECONDS, "--tolerance", "0.1", "--tolerance-s", "3")
    assert code == 1
    assert out.startswith("REJECTED: candidate plans for A0, B0")
    assert "  - delay: mean delay" in out and "max(10 % of the incumbent's delay, 3 s)" in out


def test_a_guard_violation_exits_1_naming_phase_and_rule(capsys, corridor, files):
    code, out, _ = validate(capsys, "--scenario", corridor, "--candidate", files["bad_yellow"][0],
                            "--seconds", SECONDS)
    assert code == 1
    assert "  - guard: A0: [yellow-floor] phase 1: yellow 2.5 s < 3.0 s (MUTCD minimum)" in out


def test_counts_are_replayed_as_the_demand(capsys, corridor, files, tmp_path):
    run = run_plans(corridor, None, seed=0, seconds=600, count_period_s=300, use_libsumo=False)
    counts = tmp_path / "counts.json"
    counts.write_text(json.dumps({e: [list(r) for r in rows] for e, rows in run.edge_counts.items()
                                  if e in MAIN_EDGES}), encoding="utf-8")
    code, out, err = validate(capsys, "--scenario", corridor, "--candidate", *files["designer"],
                              "--counts", str(counts), "--seeds", "1", "--seconds", SECONDS, "--json")
    assert code == 0, out + err
    vehicles = int(err.split("demand from ")[1].split(": ")[1].split(" vehicles")[0])
    verdict = json.loads(out)
    assert verdict["candidate"]["per_seed"][0]["demand"] == vehicles
    assert verdict["delay_change_s"] == 0.0  # the same plans on the same demand and seed


@pytest.mark.parametrize("args, words", [
    (["--candidate", "missing.json"], ["missing.json", "cannot read"]),
    (["--candidate", "{favour0}", "--tolerance", "-0.5"], ["tolerance.relative"]),
    (["--candidate", "{favour0}", "--seeds", "0"], ["seeds must be >= 1"]),
    (["--candidate", "{favour0}", "--demand", "nowhere.rou.xml"], ["demand route file not found"]),
    (["--candidate", "{favour0}", "--counts", "{bad_counts}"], ["counts are not valid JSON"]),
    (["--candidate", "{other}"], ["'Z9' is no traffic light"]),
])
def test_bad_input_exits_2_with_a_message(capsys, corridor, files, tmp_path, args, words):
    bad_counts = tmp_path / "bad.json"
    bad_counts.write_text("{not json", encoding="utf-8")
    plan = msgspec.json.decode(Path(files["favour"][0]).read_bytes(), type=TimingPlan)
    other = write(msgspec.structs.replace(plan, intersection_id="Z9"), tmp_path, "other")
    filled = [a.format(favour0=files["favour"][0], bad_counts=bad_counts, other=other) for a in args]
    code, out, err = validate(capsys, "--scenario", corridor, *filled, "--seconds", SECONDS)
    assert code == 2 and out == ""
    for word in words:
        assert word in err
