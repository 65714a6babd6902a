"""Coordination on synthetic corridors with known answers."""

from __future__ import annotations

import pytest

from optimizer.coordination import (ChainLink, choose_phases, find_links, group_offsets, groups,
                                    two_way_offset)


# --- links from the network ---------------------------------------------------------------------
def corridor(n: int, spacing: float, speed: float):
    """A two-way corridor of n signals S0..S{n-1}; edge 'Si>Sj' runs from Si to Sj."""
    exits = {f"S{i}": {f"S{i}>S{j}" for j in (i - 1, i + 1) if 0 <= j < n} for i in range(n)}
    approaches = {f"S{i}": {f"S{j}>S{i}" for j in (i - 1, i + 1) if 0 <= j < n}
                  for i in range(n)}
    return exits, approaches, (lambda e: []), (lambda e: spacing), (lambda e: speed)


def test_links_join_adjacent_signals_with_their_travel_time():
    exits, approaches, up, length, speed = corridor(3, 300.0, 15.0)
    links = find_links(exits, approaches, up, length, speed, max_travel_s=45.0)
    pairs = {(lk.up, lk.down): lk.travel_s for lk in links}
    assert pairs == {("S0", "S1"): 20.0, ("S1", "S0"): 20.0, ("S1", "S2"): 20.0,
                     ("S2", "S1"): 20.0}


def test_signals_too_far_apart_are_not_linked():
    exits, approaches, up, length, speed = corridor(3, 900.0, 15.0)
    assert find_links(exits, approaches, up, length, speed, max_travel_s=45.0) == []


def test_links_follow_an_unbranched_chain_of_edges_but_stop_at_a_branch():
    # A's exit 'a' -> 'mid' -> B's approach 'b' (a geometry node in between): linked.
    exits, approaches = {"A": {"a"}, "B": {"x"}}, {"A": set(), "B": {"b"}}
    feeders = {"b": ["mid"], "mid": ["a"]}
    links = find_links(exits, approaches, lambda e: feeders.get(e, []), lambda e: 100.0,
                       lambda e: 10.0, max_travel_s=45.0)
    assert [(lk.up, lk.down, lk.travel_s) for lk in links] == [("A", "B", 30.0)]
    feeders["mid"] = ["a", "side"]  # a branch: platoons do not stay together
    assert find_links(exits, approaches, lambda e: feeders.get(e, []), lambda e: 100.0,
                      lambda e: 10.0, max_travel_s=45.0) == []


def test_the_arterial_phase_is_coordinated_and_side_links_dropped():
    links = [ChainLink("A", "B", "ab", "ab", 300, 20), ChainLink("C", "B", "cb", "cb", 300, 20)]
    # B serves the arterial (from A) in phase 1 with 600 veh/h, the side street (from C) in 2.
    flows = {("B", "ab"): {1: 600.0}, ("B", "cb"): {2: 100.0}}
    feeds = {("A", "ab"): {1}, ("C", "cb"): {1}}
    phase, kept = choose_phases(links, lambda t, e: flows.get((t, e), {}),
                                lambda t, e: feeds.get((t, e), set()))
    assert phase["B"] == 1
    assert [(lk.up, lk.down) for lk in kept] == [("A", "B")]


def test_groups_are_connected_components():
    assert groups(["a", "b", "c", "d", "e"], [("a", "b"), ("c", "b"), ("d", "e")]) == \
        [["a", "b", "c"], ["d", "e"]]


# --- offsets ------------------------------------------------------------------------------------
def test_one_way_arterial_offset_is_the_travel_time():
    # 400 m at 13.3 m/s = 30 s: B's green starts 30 s after A's (mod the 80 s cycle).
    assert two_way_offset(80.0, 30.0, 40.0, 40.0, 500.0) == pytest.approx(30.0)
    assert two_way_offset(80.0, 100.0, 40.0, 40.0, 500.0) == pytest.approx(20.0)


def test_two_way_offset_gives_both_directions_a_wave_when_the_spacing_allows():
    # Travel 40 s each way, cycle 80 s, greens 40 s: with B 40 s after A, A's platoon
    # (leaving 0-40) reaches B at 40-80, B's green; B's (leaving 40-80) reaches A at 80-120,
    # i.e. 0-40 of A's next cycle, A's green. Both directions ride a wave.
    theta = two_way_offset(80.0, 40.0, 40.0, 40.0, 300.0, 40.0, 300.0)
    assert theta == pytest.approx(40.0)


def test_heavier_direction_wins_when_both_cannot_be_served():
    heavy_ab = two_way_offset(90.0, 25.0, 40.0, 40.0, 800.0, 25.0, 100.0)
    heavy_ba = two_way_offset(90.0, 25.0, 40.0, 40.0, 100.0, 25.0, 800.0)
    assert heavy_ab == pytest.approx(25.0)  # A->B platoon arrives as B turns green
    assert heavy_ba == pytest.approx(90.0 - 25.0)  # B's platoon reaches A as A turns green


def test_group_offsets_chain_pairwise_offsets_from_the_heaviest_root():
    pairs = {("A", "B"): (20.0, 500.0), ("B", "C"): (30.0, 400.0), ("A", "C"): (0.0, 1.0)}
    out = group_offsets(["A", "B", "C"], pairs, {"A": 501.0, "B": 900.0, "C": 401.0}, 80.0)
    assert out == {"B": 0.0, "A": 60.0, "C": 30.0}


# --- the planner on a generated corridor --------------------------------------------------------
def test_planner_coordinates_a_generated_corridor_on_one_cycle(tmp_path):
    import numpy as np
    import sumolib

    from edge_agent.guard import check_plan
    from edge_agent.model import Turn
    from optimizer.config import load_adaptive_config
    from optimizer.estimation import DemandEstimator
    from optimizer.planner import Planner
    from simulation.demo_scenario import generate_corridor
    from simulation.net_import import import_net
    from simulation.signal_driver import guarded_clearance

    generate_corridor(tmp_path, intersections=3, spacing_m=300.0)
    net_file = next(tmp_path.glob("*.net.xml"))
    imported, net = import_net(net_file), sumolib.net.readNet(str(net_file))
    phase_lanes = {}
    for tls, x in imported.intersections.items():
        links = imported.links[tls]
        per = {}
        for p in x.phases:
            lanes = {}
            for m in p.movements:
                if x.movement_by_id[m].turn != Turn.PEDESTRIAN:
                    lanes.setdefault(links[m].from_lane, set()).add(links[m].to_lane)
            per[p.number] = lanes
        phase_lanes[tls] = per
    lanes = sorted({lane for ph in phase_lanes.values() for ls in ph.values() for lane in ls})
    main = {lane for lane in lanes
            if abs(net.getLane(lane).getShape()[0][1] - net.getLane(lane).getShape()[-1][1]) < 1}
    rate = np.array([500.0 if lane in main else 120.0 for lane in lanes]) / 3600.0
    est = DemandEstimator(lanes)
    for _ in range(300):
        est.observe(1.0, rate, np.zeros(len(lanes)), np.zeros(len(lanes), bool))
    config = load_adaptive_config(overrides={"coordination": {"enabled": True}})
    clearance = {tls: guarded_clearance(x) for tls, x in imported.intersections.items()}
    planner = Planner(imported, net, phase_lanes, est.index, config, clearance)
    assert len(planner.links) == 4  # two each way between neighbours
    plans, coordination = planner.plan(600.0, est, planner.initial_plans())
    assert sorted(coordination) == sorted(imported.intersections)
    cycles = {c.cycle for c in coordination.values()}
    assert len(cycles) == 1  # one common cycle, exactly
    for tls, c in coordination.items():
        plan = plans[tls]
        assert check_plan(plan, imported.intersections[tls]) == []
        assert plan.offset == pytest.approx(c.offset) and plan.offset_reference == c.phase
        assert "coordinated group of 3" in plan.explanation
        # the coordinated phase serves the main street
        served = phase_lanes[tls][c.phase]
        assert served and set(served) <= main
