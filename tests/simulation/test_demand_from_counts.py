"""Demand from counts on the generated corridor: counts -> routeSampler -> SUMO reproduces them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from simulation.candidate_routes import candidate_routes
from simulation.counts import compare_counts
from simulation.demand_from_counts import demand_from_counts
from simulation.net_import import import_net
from simulation.plan_episode import run_plans
from simulation.scenario import Scenario, load_scenario

pytestmark = pytest.mark.integration

SECONDS = 600
INTERVAL = 300


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    from simulation.demo_scenario import generate_corridor

    return load_scenario(generate_corridor(tmp_path_factory.mktemp("counts-corridor"), intersections=2))


@pytest.fixture(scope="module")
def measured(scenario) -> dict:
    """Stop-line counts on every signal approach of the original demand (our 'detectors')."""
    imported = import_net(scenario.net_file)
    approaches = {imported.edges[a.id] for x in imported.intersections.values() for a in x.approaches}
    run = run_plans(scenario, None, seed=0, seconds=SECONDS, count_period_s=INTERVAL, use_libsumo=False)
    counts = {edge: rows for edge, rows in run.edge_counts.items() if edge in approaches}
    assert set(counts) == approaches and sum(n for rows in counts.values() for *_, n in rows) > 300
    return counts


@pytest.fixture(scope="module")
def sampled(scenario, measured, tmp_path_factory):
    return demand_from_counts(measured, scenario, tmp_path_factory.mktemp("sampled") / "counts.rou.xml",
                              seed=1)


def test_replaying_the_sampled_demand_reproduces_the_counts(scenario, measured, sampled):
    # routeSampler matches the counts almost exactly before any simulation...
    assert sampled.sampling.share_geh_below_5 == 1.0 and sampled.sampling.max_geh < 1.5
    assert sampled.begin == 0.0 and sampled.end == SECONDS
    # ...and SUMO driving the sampled vehicles passes the detectors about as often as measured.
    replay = run_plans(scenario, None, seed=0, seconds=SECONDS, demand=sampled.path,
                       count_period_s=INTERVAL, use_libsumo=False)
    fidelity = compare_counts(measured, replay.edge_counts)
    print(f"replay fidelity: {fidelity}")
    assert fidelity.cells == 2 * len(measured)
    assert fidelity.share_geh_below_5 == 1.0 and fidelity.max_geh < 5.0
    assert abs(fidelity.total_error) < 0.12
    # The KPIs count exactly the sampled vehicles.
    assert replay.kpis.demand == sampled.vehicles and replay.kpis.collisions == 0


def test_routes_come_from_duarouter_on_the_scenarios_flows(sampled):
    assert "duarouter" in sampled.candidates.source
    assert sampled.candidates.default_type == "car"
    text = sampled.path.read_text(encoding="utf-8")
    assert '<vType id="car"' in text
    assert text.count('type="car" departLane="best" departSpeed="max"') == sampled.vehicles
    departs = [float(line.split('depart="')[1].split('"')[0]) for line in text.splitlines()
               if "<vehicle " in line]
    assert departs == sorted(departs) and min(departs) >= 0.0


def test_the_same_seed_gives_the_same_file_and_another_seed_another(scenario, measured, sampled,
                                                                    tmp_path):
    again = demand_from_counts(measured, scenario, tmp_path / "again.rou.xml", seed=1)
    other = demand_from_counts(measured, scenario, tmp_path / "other.rou.xml", seed=2)
    assert again.path.read_bytes() == sampled.path.read_bytes()
    assert other.path.read_bytes() != sampled.path.read_bytes()


def test_random_routes_are_added_when_the_scenarios_routes_miss_a_counted_edge(scenario, tmp_path):
    net = Path(shutil.copy(scenario.net_file, tmp_path / "net.net.xml"))
    routes = tmp_path / "one.rou.xml"
    routes.write_text('<routes><vehicle id="v" depart="0"><route edges="left0A0 A0B0 B0right0"/>'
                      '</vehicle></routes>\n', encoding="utf-8")
    one_route = Scenario("one", net, (routes,), (), 0.0, 600.0)
    own = candidate_routes(one_route, tmp_path / "own", counted_edges=["A0B0"])
    assert own.source == "the scenario's routes" and list(own.routes) == [("left0A0", "A0B0", "B0right0")]
    widened = candidate_routes(one_route, tmp_path / "wide", counted_edges=["A0B0", "top0A0"])
    assert widened.source == "the scenario's routes and randomTrips routes"
    assert widened.covers(["A0B0", "top0A0"]) == [] and len(widened.routes) > 1


def test_counts_with_no_vehicle_or_off_the_net_are_refused(scenario, tmp_path):
    with pytest.raises(ValueError, match="no vehicle counted"):
        demand_from_counts({"A0B0": [(0, 300, 0)]}, scenario, tmp_path / "x.rou.xml")
    with pytest.raises(ValueError, match="'Z9Z9'"):
        demand_from_counts({"Z9Z9": [(0, 300, 5)]}, scenario, tmp_path / "x.rou.xml")
