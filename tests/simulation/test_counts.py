"""Measured counts: validation, conversion from wire messages, GEH comparison. Pure, no SUMO."""

from __future__ import annotations

import math

import pytest

from edge_agent.config import load_intersection
from edge_agent.messages import LaneMeasurement, Measurement
from simulation.counts import (CountTable, compare_counts, counts_from_measurements, geh,
                               normalise_counts)
from simulation.demand_from_counts import _lead, _passages
from simulation.net_import import ImportedNet
from simulation.net_xml import Lane, NetData


def lane(lane_id: str, function: str = "", length: float = 100.0, speed: float = 10.0) -> Lane:
    edge, index = lane_id.rsplit("_", 1)
    return Lane(lane_id, edge, int(index), speed, length, function)


NET = NetData(lanes={x.id: x for x in (lane("a_0"), lane("a_1"), lane("b_0"),
                                        lane(":j_0", "internal"))})


# --- normalise_counts --------------------------------------------------------------------------
def test_lane_counts_are_summed_into_their_edge_and_sorted():
    counts = {"a_1": [(300, 600, 4), (0, 300, 2)], "a_0": [(0, 300, 5), (300, 600, 1)],
              "b": [[0, 300, 7.0]]}
    assert normalise_counts(counts, NET) == {"a": ((0.0, 300.0, 7), (300.0, 600.0, 5)),
                                             "b": ((0.0, 300.0, 7),)}


def test_a_count_table_is_accepted_as_input():
    table = CountTable({"b": ((0.0, 60.0, 3),)})
    assert normalise_counts(table, NET) == {"b": ((0.0, 60.0, 3),)}
    assert table.total == 3


@pytest.mark.parametrize("counts, words", [
    ({"nowhere": [(0, 300, 1)]}, ["'nowhere'", "neither an edge nor a lane"]),
    ({":j_0": [(0, 300, 1)]}, ["':j_0'", "internal lane"]),
    ({"b": [(0, 300)]}, ["'b'", "not (begin, end, vehicles)"]),
    ({"b": [(300, 300, 1)]}, ["'b'", "0 <= begin < end"]),
    ({"b": [(-5, 300, 1)]}, ["'b'", "0 <= begin < end"]),
    ({"b": [(0, 300, 2.5)]}, ["'b'", "whole number"]),
    ({"b": [(0, 300, -1)]}, ["'b'", "whole number"]),
    ({"b": [(0, math.nan, 1)]}, ["'b'", "0 <= begin < end"]),
    ({"b": [(0, 300, 1), (0, 300, 2)]}, ["'b'", "given twice"]),
    ({"b": [(0, 300, 1), (200, 500, 2)]}, ["'b'", "overlap"]),
    ({"a": [(0, 300, 1)], "a_0": [(0, 300, 1)]}, ["'a'", "as a whole and by lane"]),
    ({"a_0": [(0, 300, 1)], "a_1": [(300, 600, 1)]}, ["'a'", "different intervals"]),
    ({"a": [(0, 300, 1)], "b": [(0, 900, 1)]}, ["different lengths", "300", "900"]),
    ({"a": [(0, 300, 1)], "b": [(100, 400, 1)]}, ["'b'", "off the", "grid"]),
])
def test_bad_counts_are_refused_naming_what_is_wrong(counts, words):
    with pytest.raises(ValueError) as info:
        normalise_counts(counts, NET)
    for word in words:
        assert word in str(info.value)


# --- GEH and comparison ------------------------------------------------------------------------
def test_geh():
    assert geh(0, 0) == 0.0
    assert geh(100, 100) == 0.0
    assert geh(100, 64) == pytest.approx(math.sqrt(2 * 36 ** 2 / 164))
    assert geh(10, 0) == pytest.approx(math.sqrt(20))


def test_compare_counts_sums_finer_modelled_intervals_and_finds_the_worst():
    measured = {"a": ((0.0, 600.0, 100),), "b": ((0.0, 600.0, 10),)}
    modelled = {"a": ((0.0, 300.0, 40), (300.0, 600.0, 50)), "c": ((0.0, 600.0, 5),)}
    fidelity = compare_counts(measured, modelled)
    assert fidelity.cells == 2
    assert (fidelity.measured_total, fidelity.modelled_total) == (110, 90)
    assert fidelity.worst == ("b", 0.0, 600.0, 10, 0)
    assert fidelity.max_geh == pytest.approx(math.sqrt(20))
    assert fidelity.share_geh_below_5 == 1.0
    assert fidelity.total_error == pytest.approx(-20 / 110)
    assert "2 counts" in str(fidelity)


def test_passages_count_each_vehicle_once_per_counted_edge_in_its_depart_interval():
    table = {"a": ((0.0, 300.0, 0), (300.0, 600.0, 0)), "b": ((0.0, 300.0, 0),)}
    vehicles = [(10.0, "v1", ("a", "b")), (299.9, "v2", ("a",)), (300.0, "v3", ("a", "b")),
                (700.0, "v4", ("a",))]
    assert _passages(vehicles, table) == {"a": ((0.0, 300.0, 2), (300.0, 600.0, 1)),
                                          "b": ((0.0, 300.0, 1),)}


def test_lead_is_the_mean_free_flow_time_to_the_counted_edges():
    times = {"a": 10.0, "b": 20.0, "c": 30.0}
    assert _lead(("a", "b", "c"), {"a": (), "c": ()}, times) == pytest.approx((10 + 60) / 2)
    assert _lead(("a", "b"), {"x": ()}, times) == 0.0


# --- counts from measurement messages ------------------------------------------------------------
@pytest.fixture(scope="module")
def imported(configs_dir) -> ImportedNet:
    """The 4-phase example as if imported from a net whose edges are its approach ids."""
    x = load_intersection(configs_dir / "nema-4phase.toml")
    lanes = {name: name.split("elm-1st_", 1)[1] for a in x.approaches for name in a.lanes}
    return ImportedNet(net_path="hand.net.xml", intersections={"J1": x}, tls_ids={x.id: "J1"},
                       links={}, lanes=lanes, edges={a.id: f"edge{a.id}" for a in x.approaches},
                       phase_states={}, programs={}, program_ids={}, offsets={}, adjustments=())


def measurement(seq: int, start: float, counts: dict[str, int], unhealthy: tuple[str, ...] = (),
                intersection: str = "elm-1st") -> Measurement:
    return Measurement(site="downtown", intersection_id=intersection, seq=seq,
                       interval_start=start, interval_s=300.0,
                       lanes=tuple(LaneMeasurement(lane=name, count=n, flow_vph=12.0 * n,
                                                   occupancy=0.1, healthy=name not in unhealthy)
                                   for name, n in counts.items()))


T0 = 1_700_000_000.0


def test_measurements_become_edge_counts_in_simulation_time(imported):
    table = counts_from_measurements(
        [measurement(1, T0, {"elm-1st_S_0": 3, "elm-1st_S_1": 4, "elm-1st_E_0": 2}),
         measurement(2, T0 + 300, {"elm-1st_S_0": 5, "elm-1st_S_1": 1, "elm-1st_E_0": 0}),
         measurement(2, T0 + 300, {"elm-1st_S_0": 5, "elm-1st_S_1": 1, "elm-1st_E_0": 0})],
        imported, origin_posix=T0, origin_sim=100.0)
    assert table.counts == {"edgeE": ((100.0, 400.0, 2), (400.0, 700.0, 0)),
                            "edgeS": ((100.0, 400.0, 7), (400.0, 700.0, 6))}
    assert table.dropped == ()
    assert table.total == 15


def test_an_edge_interval_with_an_unhealthy_or_missing_lane_is_left_out_not_zero(imported):
    table = counts_from_measurements(
        [measurement(1, T0, {"elm-1st_S_0": 3, "elm-1st_S_1": 4}),
         measurement(2, T0 + 300, {"elm-1st_S_0": 5, "elm-1st_S_1": 9}, unhealthy=("elm-1st_S_1",)),
         measurement(3, T0 + 600, {"elm-1st_S_0": 5})],
        imported, origin_posix=T0)
    assert table.counts == {"edgeS": ((0.0, 300.0, 7),)}
    assert table.dropped == ("edge edgeS 300-600 s: S_1 (unhealthy)",
                             "edge edgeS 600-900 s: S_1 (not reported)")


@pytest.mark.parametrize("messages, words", [
    ([measurement(1, T0, {"elm-1st_S_0": 1}, intersection="oak-2nd")], ["'oak-2nd'", "no such"]),
    ([measurement(1, T0, {"elm-1st_X_0": 1})], ["'elm-1st_X_0'", "no vehicle lane"]),
    ([measurement(1, T0, {"elm-1st_S_0": 1}), measurement(1, T0, {"elm-1st_S_0": 2})],
     ["seq 1", "different content"]),
    ([measurement(1, T0, {"elm-1st_S_0": 1}), measurement(2, T0 + 100, {"elm-1st_S_0": 2})],
     ["'elm-1st_S_0'", "overlaps"]),
])
def test_bad_measurements_are_refused_naming_what_is_wrong(imported, messages, words):
    with pytest.raises(ValueError) as info:
        counts_from_measurements(messages, imported, origin_posix=T0)
    for word in words:
        assert word in str(info.value)


# --- candidate routes from a scenario's route file ------------------------------------------------
def test_read_routes_weights_routes_by_the_vehicles_that_drive_them(tmp_path):
    from simulation.candidate_routes import read_routes

    path = tmp_path / "demand.rou.xml"
    path.write_text("""<routes>
    <vType id="bus" maxSpeed="12"/>
    <route id="r1" edges="a b"/>
    <route id="unused" edges="x y"/>
    <vehicle id="v1" depart="0" route="r1"/>
    <vehicle id="v2" depart="1" type="bus" route="r1"/>
    <flow id="f" begin="0" end="1800" vehsPerHour="100"><route edges="c d"/></flow>
    <flow id="g" begin="0" end="600" period="60" type="bus"><route edges="c e"/></flow>
    <vehicle id="v3" depart="2"><routeDistribution><route edges="a c" probability="1"/>
        <route edges="a d" probability="1"/></routeDistribution></vehicle>
    <trip id="t" depart="3" from="a" to="d"/>
</routes>
""", encoding="utf-8")
    found = read_routes([path])
    assert dict(found.routes) == {("a", "b"): 2.0, ("c", "d"): 50.0, ("c", "e"): 10.0,
                                  ("a", "c"): 0.5, ("a", "d"): 0.5, ("x", "y"): 1.0}
    assert found.unrouted == 1  # the trip: duarouter's job
    assert [t.get("id") for t in found.types] == ["bus"]
    assert found.type_use == {"DEFAULT_VEHTYPE": 1 + 50 + 1 + 1, "bus": 1 + 10}
