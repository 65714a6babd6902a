"""The validation gate: guard first, then candidate vs incumbent in SUMO on the same demand."""

from __future__ import annotations

import math
import pickle
from concurrent.futures import Future, ThreadPoolExecutor
from types import SimpleNamespace

import msgspec
import pytest

from edge_agent.plan import TimingPlan
from gate_plans import main_phase, two_phase
from simulation.gate import GateInputError, SideResult, Tolerance, Verdict, _compare, validate
from simulation.net_import import ImportedNet, import_net
from simulation.plan_episode import PROGRAM_ID, PlanSet, Programme, _check_programmes, run_plans
from simulation.scenario import Scenario, load_scenario
from simulation.sumo_session import SumoError

SECONDS = 600


# --- pure parts ----------------------------------------------------------------------------------
def test_tolerance_allows_the_larger_of_relative_and_absolute():
    tol = Tolerance()
    assert (tol.relative, tol.absolute_s) == (0.05, 1.0)
    assert tol.allowed_s(40.0) == pytest.approx(2.0)
    assert tol.allowed_s(10.0) == 1.0
    assert str(tol) == "max(5 % of the incumbent's delay, 1 s)"


@pytest.mark.parametrize("kwargs, field", [({"relative": -0.1}, "relative"),
                                           ({"absolute_s": math.inf}, "absolute_s"),
                                           ({"relative": "5%"}, "relative")])
def test_bad_tolerance_is_refused_naming_the_field(kwargs, field):
    with pytest.raises(GateInputError, match=f"tolerance.{field}"):
        Tolerance(**kwargs)


@pytest.mark.parametrize("seeds, horizon, words", [
    (0, 60, "seeds must be >= 1"), ([1, 1], 60, "seeds repeat"), ([-1], 60, "non-negative"),
    (True, 60, "seeds"), (1, 0, "horizon"), (1, math.nan, "horizon"),
])
def test_bad_seeds_and_horizon_are_refused_before_anything_runs(seeds, horizon, words):
    with pytest.raises(GateInputError, match=words):
        validate([], None, None, horizon, seeds, scenario="/nonexistent")


def side(delay: float, collisions: int | None = 0, braking: int = 0) -> SideResult:
    mean = {"mean_delay_s": delay, "collisions_total": collisions, "emergency_braking_total": braking}
    return SideResult("x", mean, [], "libsumo", 1.0)


def test_delay_within_the_tolerance_passes_and_beyond_it_is_a_reason():
    tol = Tolerance(relative=0.05, absolute_s=1.0)
    assert _compare(side(41.9), side(40.0), tol, 2) == ([], pytest.approx(2.0))
    reasons, allowed = _compare(side(42.5), side(40.0), tol, 2)
    assert allowed == pytest.approx(2.0)
    assert reasons == ["delay: mean delay 42.50 s/veh vs the incumbent's 40.00 s/veh, +2.50 s "
                       "(+6.2 %), more than the 2.00 s allowed by the tolerance "
                       "max(5 % of the incumbent's delay, 1 s)"]
    assert _compare(side(10.9), side(10.0), tol, 2)[0] == []  # 5 % is 0.5 s: the 1 s floor rules
    assert _compare(side(11.1), side(10.0), tol, 2)[0][0].startswith("delay:")


def test_more_collisions_or_emergency_braking_than_the_incumbent_is_a_reason():
    reasons, _ = _compare(side(10.0, collisions=1, braking=3), side(12.0, braking=2), Tolerance(), 3)
    assert reasons == ["safety: 1 collisions over 3 seed(s), the incumbent 0",
                       "safety: 3 emergency braking over 3 seed(s), the incumbent 2"]
    assert _compare(side(10.0, collisions=None), side(12.0), Tolerance(), 1)[0] == [
        "safety: SUMO reported no collisions count, so safety cannot be shown"]
    with pytest.raises(GateInputError, match="no vehicle"):
        _compare(SideResult("c", {"mean_delay_s": None, "collisions_total": 0,
                                  "emergency_braking_total": 0}, [], "libsumo", 0.0),
                 side(1.0), Tolerance(), 1)


def test_programme_states_allow_for_sumos_switch_step():
    programme = Programme("A0", "A0", (("Gr", 10.0), ("yr", 3.0), ("rG", 7.0)), offset=5.0)
    assert programme.cycle == 20.0
    assert programme.states_at(5.0) == {"Gr", "rG"}  # the first green starts: SUMO shows it a step later
    assert programme.states_at(9.0) == {"Gr"}
    assert programme.states_at(16.0) == {"yr"}
    assert programme.states_at(4.0 + 40) == {"rG"}


def test_programme_states_at_a_switch_are_counted_in_whole_milliseconds():
    # A centre's plan: phase 1 green 25.8 s, yellow 4, phase 2 green 5, yellow 4 (cycle 38.8)
    # whose phase 2 starts at 0: SUMO offset 9.0, so at 0 s SUMO has just switched to phase
    # 2's green. In floating point (0 - 9.0) % 38.8 is 29.799999999999997, inside the yellow.
    programme = Programme("A0", "A0", (("Gr", 25.8), ("yr", 4.0), ("rG", 5.0), ("ry", 4.0)),
                          offset=9.0)
    assert programme.states_at(0.0) == {"yr", "rG"}
    assert programme.states_at(38.8) == {"yr", "rG"}


def test_a_programme_sumo_does_not_run_is_an_error_not_a_silent_fallback():
    programme = Programme("A0", "A0", (("Gr", 10.0), ("rG", 10.0)), offset=0.0)
    tl = SimpleNamespace(getProgram=lambda tls: "0", getRedYellowGreenState=lambda tls: "Gr")
    session = SimpleNamespace(conn=SimpleNamespace(trafficlight=tl), time=3.0)
    with pytest.raises(SumoError, match="does not run the plan for 'A0'"):
        _check_programmes(session, [programme])
    tl.getProgram = lambda tls: PROGRAM_ID
    _check_programmes(session, [programme])
    tl.getRedYellowGreenState = lambda tls: "rG"
    with pytest.raises(SumoError, match="showing 'Gr'"):
        _check_programmes(session, [programme])


def test_a_plan_set_crosses_process_boundaries():
    plans = PlanSet.of([two_phase("A0", side_green=20, main_green=30, main=2)], "candidate")
    assert pickle.loads(pickle.dumps(plans)) == plans


def test_plan_sets_refuse_two_plans_for_one_intersection_and_non_plans():
    plan = two_phase("A0", side_green=20, main_green=20, main=2)
    with pytest.raises(ValueError, match="two plans for intersection 'A0'"):
        PlanSet.of([plan, plan], "candidate")
    with pytest.raises(ValueError, match="not a TimingPlan"):
        PlanSet({"A0": {"cycle": 60}})


# --- on the generated corridor -------------------------------------------------------------------
@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    from simulation.demo_scenario import generate_corridor

    return load_scenario(generate_corridor(tmp_path_factory.mktemp("gate-corridor"), intersections=2))


@pytest.fixture(scope="module")
def imported(scenario) -> ImportedNet:
    return import_net(scenario.net_file)


@pytest.fixture(scope="module")
def plans(imported) -> dict[str, list[TimingPlan]]:
    """Per intersection: the designer's plan, the main street starved, the main street favoured."""
    out: dict[str, list[TimingPlan]] = {"designer": [], "starve_main": [], "favour_main": []}
    for tls, x in imported.intersections.items():
        main = main_phase(imported, x)
        out["designer"].append(imported.designer_plan(tls))
        out["starve_main"].append(two_phase(x.id, side_green=55, main_green=5, main=main))
        out["favour_main"].append(two_phase(x.id, side_green=10, main_green=50, main=main))
    return out


class RefusingExecutor:
    """Proves that nothing is simulated: any submit fails the test."""

    def submit(self, fn, /, *args, **kwargs):
        raise AssertionError("the gate simulated a plan the guard rejects")


@pytest.mark.integration
def test_a_guard_violation_rejects_without_simulating(scenario, plans):
    bad_yellow = two_phase("A0", side_green=20, main_green=40, main=2, yellow=2.0)
    for_a0 = two_phase("A0", side_green=20, main_green=40, main=2)
    verdict = validate({"A0": bad_yellow, "B0": for_a0}, plans["designer"], None, SECONDS, 2,
                       scenario=scenario, executor=RefusingExecutor())
    assert not verdict.accepted and verdict.candidate is None and verdict.incumbent is None
    assert "guard: A0: [yellow-floor] phase 1: yellow 2.0 s < 3.0 s (MUTCD minimum)" in verdict.reasons
    assert "guard: A0: [yellow-floor] phase 2: yellow 2.0 s < 3.0 s (MUTCD minimum)" in verdict.reasons
    assert any(r.startswith("guard: B0: [wrong-intersection]") for r in verdict.reasons)
    assert set(verdict.violations) == {"A0", "B0"}
    assert verdict.to_dict()["candidate"] is None and verdict.delay_change_s is None


@pytest.mark.integration
def test_bad_input_is_a_clear_error(scenario, plans):
    starving = two_phase("A0", side_green=2, main_green=40, main=2)
    with pytest.raises(GateInputError, match=r"incumbent.*A0: \[min-green\] phase 1"):
        validate(plans["designer"], [starving], None, SECONDS, 1, scenario=scenario,
                 executor=RefusingExecutor())
    with pytest.raises(GateInputError, match=r"'Z9' is no traffic light.*A0, B0"):
        validate({"Z9": plans["designer"][0]}, None, None, SECONDS, 1, scenario=scenario)
    with pytest.raises(GateInputError, match="candidate: no plan"):
        validate([], None, None, SECONDS, 1, scenario=scenario)
    with pytest.raises(GateInputError, match="demand route file not found"):
        validate(plans["designer"], None, scenario.net_file.parent / "none.rou.xml", SECONDS, 1,
                 scenario=scenario)


@pytest.fixture(scope="module")
def worse(scenario, plans) -> Verdict:
    """Starving the main street against the designer's plans: default process pool, 2 seeds."""
    return validate(plans["starve_main"], plans["designer"], None, SECONDS, 2, scenario=scenario)


@pytest.mark.integration
def test_a_candidate_clearly_worse_than_the_tolerance_is_rejected(worse):
    assert not worse.accepted
    (reason,) = worse.reasons
    assert reason.startswith("delay: mean delay ") and "5 % of the incumbent's delay, 1 s" in reason
    assert worse.delay_change_s > 5 * worse.allowed_s
    assert worse.allowed_s == pytest.approx(max(0.05 * worse.incumbent.mean["mean_delay_s"], 1.0))
    assert worse.seeds == (0, 1) and worse.horizon_s == SECONDS
    assert worse.intersections == ("A0", "B0")
    for result in (worse.candidate, worse.incumbent):
        assert result.backend == "libsumo"
        assert [row["seed"] for row in result.per_seed] == [0, 1]
        assert result.mean["mean_delay_s"] == pytest.approx(
            sum(row["mean_delay_s"] for row in result.per_seed) / 2)
        assert result.mean["collisions_total"] == 0


@pytest.mark.integration
def test_a_better_candidate_against_a_bad_incumbent_is_accepted(scenario, plans):
    verdict = validate(plans["favour_main"], plans["starve_main"], None, SECONDS, 2, scenario=scenario)
    assert verdict.accepted and verdict.reasons == [] and verdict.violations == {}
    assert verdict.delay_change_s < -10.0
    assert verdict.to_dict()["accepted"] is True


@pytest.mark.integration
def test_intersections_without_a_candidate_plan_keep_the_incumbents(scenario, plans):
    # Only A0 changes; B0 runs the incumbent's plan on both sides, A0 an offset plan.
    a0 = plans["favour_main"][0]
    shifted = msgspec.structs.replace(a0, offset=17.0)
    merged = PlanSet.of([shifted]).over(PlanSet.of(plans["designer"]), import_net(scenario.net_file))
    assert merged.plans == {"A0": shifted, "B0": plans["designer"][1]}
    run = run_plans(scenario, merged, seed=0, seconds=60, use_libsumo=False)
    assert run.programmes == {"A0": "A0", "B0": "B0"} and run.backend == "traci"


@pytest.mark.integration
def test_a_thread_pool_gives_the_same_verdict_through_traci(scenario, plans, worse):
    # libsumo runs one simulation per process, so a supplied executor gets traci by default.
    with ThreadPoolExecutor(max_workers=2) as pool:
        verdict = validate(plans["starve_main"], plans["designer"], None, SECONDS, 2,
                           scenario=scenario, executor=pool)
    assert verdict.candidate.backend == verdict.incumbent.backend == "traci"
    assert verdict.accepted == worse.accepted and verdict.reasons == worse.reasons
    assert verdict.candidate.per_seed == worse.candidate.per_seed
    assert verdict.incumbent.per_seed == worse.incumbent.per_seed


class InlineExecutor:
    """The smallest executor: runs each task at once, in the caller; only ``submit``."""

    def __init__(self) -> None:
        self.calls = 0

    def submit(self, fn, /, *args, **kwargs) -> Future:
        self.calls += 1
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


@pytest.mark.integration
def test_any_object_with_submit_can_run_the_episodes(scenario, plans, worse):
    executor = InlineExecutor()
    verdict = validate(plans["starve_main"], plans["designer"], None, SECONDS, [0],
                       scenario=scenario, executor=executor)
    assert executor.calls == 2 and verdict.seeds == (0,)
    assert not verdict.accepted
    assert verdict.candidate.per_seed == worse.candidate.per_seed[:1]
    assert verdict.incumbent.per_seed == worse.incumbent.per_seed[:1]
