"""The adaptive controller: its config file, its registration, and a short SUMO run."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from edge_agent.errors import ConfigError
from optimizer.config import DEFAULT_CONFIG, load_adaptive_config


def test_the_shipped_config_loads():
    config = load_adaptive_config()
    assert config.actuation_params.passage_s > 0
    assert DEFAULT_CONFIG.name == "adaptive.toml"


def test_a_starving_phase_preempts_a_discharging_green_only_after_preempt_wait():
    # Shipped: served next after max_wait_s, a discharging green is cut only after
    # preempt_wait_s; an old config without the key keeps preemption at max_wait_s.
    params = load_adaptive_config().actuation_params
    assert params.preempt_wait_s > params.max_wait_s
    legacy = load_adaptive_config(overrides={"actuation": {"preempt_wait_s": 0.0}})
    assert legacy.actuation_params.preempt_wait_s == 0.0


def test_unknown_keys_are_refused_naming_the_key(tmp_path):
    text = DEFAULT_CONFIG.read_text(encoding="utf-8").replace(
        "[actuation]\n", "[actuation]\npasage_s = 2.0\n")
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_adaptive_config(path)
    assert info.value.key == "actuation.pasage_s" and info.value.line == 7


@pytest.mark.parametrize("table, key, value", [("planning", "max_degree", 1.5),
                                               ("actuation", "passage_s", -1.0),
                                               ("actuation", "preempt_wait_s", -1.0),
                                               ("planning", "replan_s", 10.0)])
def test_out_of_range_values_are_refused(table, key, value):
    with pytest.raises(ConfigError, match=f"{table}.{key}"):
        load_adaptive_config(overrides={table: {key: value}})


def test_unknown_override_table_is_refused():
    with pytest.raises(ConfigError, match="unknown table"):
        load_adaptive_config(overrides={"tuning": {}})


def test_registered_as_a_harness_controller():
    names = [ep.name for ep in entry_points(group="tsc_edge.controllers")]
    assert "adaptive" in names
    from simulation.controllers import ControllerSpec

    assert ControllerSpec("adaptive").clearance == "guarded"


@pytest.mark.integration
def test_tsc_sim_runs_adaptive_on_a_generated_corridor(tmp_path):
    from simulation.demo_scenario import generate_corridor

    cfg = generate_corridor(tmp_path, intersections=4)
    done = subprocess.run([sys.executable, "-m", "simulation.cli", "run", "--scenario",
                           str(cfg), "--controller", "adaptive", "--seconds", "300", "--json",
                           "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["controller"] == "adaptive" and result["clearance"] == "guarded"
    assert result["collisions"] == 0 and result["teleports"] == 0
    assert result["throughput"] > 50
    assert result["mean_delay_s"] < 60


@pytest.mark.integration
def test_plans_are_checked_explained_and_decisions_logged(tmp_path):
    from edge_agent.guard import check_plan
    from simulation.controllers import ControllerSpec
    from simulation.demo_scenario import generate_corridor
    from simulation.run import run_episode

    cfg = generate_corridor(tmp_path, intersections=2)
    seen = {}

    class Spy:
        def __call__(self, session):
            seen["controller"] = ControllerSpec("adaptive",
                                                {"overrides": {"planning": {"replan_s": 120.0}}}
                                                )(session)
            return seen["controller"]

    run_episode(cfg, Spy(), seed=0, seconds=400, isolate=False, reuse_libsumo=True)
    c = seen["controller"]
    for tls, plan in c.plans.items():
        assert check_plan(plan, c.imported.intersections[tls]) == []
        assert "minimises Webster delay" in plan.explanation
    assert c.log and all(" -> phase " in reason for _, _, reason in c.log)
    assert c.counts["switch"] > 0 and c.planner.rejected == 0


@pytest.mark.integration
def test_a_lane_served_whole_does_not_call_its_protected_turn_phase(resco_dir):
    """cologne1: lane 23429231#1_1 carries a through, a left and a u-turn. Phase 1 serves all
    three (the left permissive), phase 2 only the left and the u-turn (protected): the lane's
    vehicles call phase 1 only, and phase 2, called by no lane, is skipped, not recalled."""
    from simulation.controllers import ControllerSpec
    from simulation.run import run_episode

    scenario = resco_dir / "cologne1"
    if not scenario.is_dir():
        pytest.skip(f"{scenario} not found")
    seen = {"busy": 0}

    class Spy:
        def __call__(self, session):
            seen["c"] = ControllerSpec("adaptive")(session)
            return self

        def step(self, time):
            c = seen["c"]
            c.step(time)
            (tls,) = c.lane_weight
            lane = c.zones.readings["23429231#1_1"]
            if lane.queue + lane.moving:
                seen["busy"] += 1
                measure = c._measures(tls)[2]
                assert measure.detected and not measure.has_demand
                assert measure.gap_s == float("inf")

    run_episode(scenario, Spy(), seed=0, seconds=300, isolate=False, reuse_libsumo=True)
    c = seen["c"]
    (tls,) = c.lane_weight
    assert c.lane_weight[tls][1]["23429231#1_1"] == 1.0
    assert c.lane_weight[tls][2]["23429231#1_1"] == 0.0
    assert c.lane_weight[tls][1]["23429231#1_0"] == 1.0  # right + through, both in phase 1
    assert seen["busy"] > 30  # the lane carried traffic for a good part of the run
