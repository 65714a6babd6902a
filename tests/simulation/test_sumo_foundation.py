"""Tests of the SUMO foundation: binaries, scenarios, demand, KPIs, sessions and episodes.

Tests marked ``integration`` run SUMO on the RESCO scenarios in ../shared (skipped if absent)
with short horizons. Episodes run with ``isolate=True`` (a fresh process each) because libsumo
reproduces a result only in the first episode of a process.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from simulation.kpi import (
    KpiCollector,
    Kpis,
    compute_kpis,
    mean_delay_resco,
    mean_delay_strict,
    parse_statistics,
    parse_tripinfo,
    summarise_seeds,
    t_quantile_975,
)
from simulation.run import RunResult, run_episode
from simulation.scenario import (
    Demand,
    PlannedVehicle,
    ScenarioError,
    load_scenario,
    parse_sumo_time,
    read_demand,
)
from simulation.sumo_binaries import KNOWN_BINARIES, SumoNotFoundError, find_binary, sumo_env, sumo_home, tools_dir
from simulation.sumo_session import SumoError, SumoSession

RESCO_NAMES = ("grid4x4", "arterial4x4", "cologne1", "cologne3", "ingolstadt1", "ingolstadt7")
# Episode windows as RESCO's cfgs encode them, and the vehicles planned inside them.
RESCO_EXPECTED = {
    "grid4x4": (0.0, 3600.0, 1473),
    "arterial4x4": (0.0, 3600.0, 2484),
    "cologne1": (25200.0, 28800.0, 2015),
    "cologne3": (25200.0, 28800.0, 2856),  # the file also has 1638 vehicles before 25200
    "ingolstadt1": (57600.0, 61200.0, 1716),
    "ingolstadt7": (57600.0, 61200.0, 3031),
}


@pytest.fixture(scope="session")
def resco_dir() -> Path:
    path = Path(__file__).resolve().parents[2].parent / "shared" / "scenarios" / "resco"
    if not path.is_dir():
        pytest.skip(f"RESCO scenarios not found at {path} (expected in ../shared next to the repository)")
    return path


# --------------------------------------------------------------------------- binaries


def test_every_known_binary_is_found_in_the_wheel() -> None:
    for name in KNOWN_BINARIES:
        path = find_binary(name)
        assert path.is_file() and path.parent == sumo_home() / "bin"
    assert (tools_dir() / "randomTrips.py").is_file()


def test_binaries_ignore_a_misleading_sumo_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # libsumo points SUMO_HOME at sumo-data, which has no binaries; we must not follow it.
    monkeypatch.setenv("SUMO_HOME", str(tmp_path))
    assert find_binary("sumo").parent.parent == sumo_home() != tmp_path
    assert sumo_env()["SUMO_HOME"] == str(sumo_home())


def test_missing_binary_raises_a_clear_error() -> None:
    with pytest.raises(SumoNotFoundError, match="no-such-tool"):
        find_binary("no-such-tool")


# --------------------------------------------------------------------------- scenarios


@pytest.mark.parametrize("name", RESCO_NAMES)
def test_resco_scenario_loads_with_its_episode_window(resco_dir: Path, name: str) -> None:
    scenario = load_scenario(resco_dir / name)
    begin, end, planned = RESCO_EXPECTED[name]
    assert (scenario.name, scenario.begin, scenario.end) == (name, begin, end)
    assert scenario.net_file.is_file() and scenario.route_files
    assert scenario.config_file == (resco_dir / name / f"{name}.sumocfg").resolve()
    assert load_scenario(scenario.config_file) == scenario
    demand = read_demand(scenario)
    assert demand.count == planned and not demand.approximate and demand.unsorted_ignored == 0


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _cfg(net: str = "a.net.xml", routes: str = "a.rou.xml", times: str = "") -> str:
    return (f'<configuration><input><net-file value="{net}"/><route-files value="{routes}"/></input>'
            f"{times}</configuration>")


def test_missing_net_file_error_names_the_path(tmp_path: Path) -> None:
    _write(tmp_path / "a.rou.xml", "<routes/>")
    cfg = _write(tmp_path / "s.sumocfg", _cfg(net="missing.net.xml"))
    with pytest.raises(ValueError, match="net-file") as info:
        load_scenario(cfg)
    assert str(tmp_path / "missing.net.xml") in str(info.value) and isinstance(info.value, ScenarioError)


def test_missing_route_file_error_names_the_path(tmp_path: Path) -> None:
    _write(tmp_path / "a.net.xml", "<net/>")
    _write(tmp_path / "a.rou.xml", "<routes/>")
    _write(tmp_path / "s.sumocfg", _cfg(routes="a.rou.xml,gone.rou.xml"))
    with pytest.raises(ScenarioError, match="route-files") as info:
        load_scenario(tmp_path)
    assert str(tmp_path / "gone.rou.xml") in str(info.value)


def test_bad_paths_and_folders_are_named(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="does not exist"):
        load_scenario(tmp_path / "nowhere")
    _write(tmp_path / "x.sumocfg", "<configuration>")
    with pytest.raises(ScenarioError, match="cannot parse"):
        load_scenario(tmp_path / "x.sumocfg")
    _write(tmp_path / "y.sumocfg", "<configuration/>")
    with pytest.raises(ScenarioError, match="several"):
        load_scenario(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ScenarioError, match="no \\*.net.xml"):
        load_scenario(empty)
    _write(empty / "e.net.xml", "<net/>")
    with pytest.raises(ScenarioError, match="route files"):
        load_scenario(empty)


def test_folder_without_cfg_and_cfg_times(tmp_path: Path) -> None:
    _write(tmp_path / "f" / "a.net.xml", "<net/>")
    _write(tmp_path / "f" / "b.rou.xml", "<routes/>")
    _write(tmp_path / "f" / "a.rou.xml", "<routes/>")
    scenario = load_scenario(tmp_path / "f")
    assert [p.name for p in scenario.route_files] == ["a.rou.xml", "b.rou.xml"]
    assert (scenario.begin, scenario.end, scenario.config_file) == (0.0, 3600.0, None)
    assert scenario.sumo_args()[0] == "-n"
    times = '<time><begin value="7:00:00"/><end value="7:30:00"/></time>'
    cfg = _write(tmp_path / "f" / "s.sumocfg", _cfg(times=times))
    scenario = load_scenario(cfg)
    assert (scenario.begin, scenario.end) == (25200.0, 27000.0)
    assert parse_sumo_time("1:00:00:10") == 86410.0
    _write(cfg, _cfg(times='<time><begin value="soon"/></time>'))
    with pytest.raises(ScenarioError, match="begin"):
        load_scenario(cfg)


# --------------------------------------------------------------------------- demand

# Departs SUMO 1.28 inserted for these flows (checked with --route-steps 0 on a 2x2 grid).
_FLOWS = """<routes>
 <flow id="a" begin="0" end="100" number="7" from="x" to="y"/>
 <flow id="c" begin="0" end="95" vehsPerHour="120" from="x" to="y"/>
 <flow id="e" begin="0" end="90" period="30" from="x" to="y"/>
 <flow id="d" begin="5" period="20" number="3" from="x" to="y"/>
 <flow id="b" begin="10" end="100" period="30" from="x" to="y"/>
 <vehicle id="late" depart="400"><route edges="x y"/></vehicle>
</routes>"""
_SUMO_FLOW_DEPARTS = {
    "a.0": 0.0, "a.1": 14.28, "a.2": 28.57, "a.3": 42.85, "a.4": 57.14, "a.5": 71.42, "a.6": 85.71,
    "c.0": 0.0, "c.1": 30.0, "c.2": 60.0, "c.3": 90.0, "e.0": 0.0, "e.1": 30.0, "e.2": 60.0,
    "d.0": 5.0, "d.1": 25.0, "d.2": 45.0, "b.0": 10.0, "b.1": 40.0, "b.2": 70.0,
}


def test_flows_expand_as_sumo_inserts_them(tmp_path: Path) -> None:
    demand = read_demand([_write(tmp_path / "f.rou.xml", _FLOWS)], 0, 200)
    got = {v.id: v.depart for v in demand.vehicles}
    assert got.keys() == _SUMO_FLOW_DEPARTS.keys()
    assert all(abs(got[k] - d) < 0.01 for k, d in _SUMO_FLOW_DEPARTS.items())
    assert [v.depart for v in demand.vehicles] == sorted(got.values())
    assert read_demand([tmp_path / "f.rou.xml"], 10, 60).count == 10  # window [10, 60)


def test_unsorted_and_random_demand(tmp_path: Path) -> None:
    # SUMO drops elements departing before one already read from the same file.
    text = """<routes><vehicle id="v1" depart="20"/><trip id="t2" depart="10" from="x" to="y"/>
        <vehicle id="v3" depart="triggered"/><flow id="p" begin="30" end="130" probability="0.1"/></routes>"""
    demand = read_demand([_write(tmp_path / "r.rou.xml", text)], 0, 1000)
    assert [v.id for v in demand.vehicles][:1] == ["v1"] and demand.unsorted_ignored == 1
    assert demand.count == 1 + 10 and demand.approximate and demand.skipped == 1


# --------------------------------------------------------------------------- KPIs (pure)

_TRIPINFO = """<tripinfos>
 <tripinfo id="v0" depart="0.00" departDelay="0.00" arrival="50.00" duration="50.00" routeLength="500"
   waitingTime="5.00" waitingCount="1" timeLoss="10.00" vaporized=""/>
 <tripinfo id="v1" depart="12.00" departDelay="2.00" arrival="80.00" duration="68.00" routeLength="600"
   waitingTime="10.00" waitingCount="2" timeLoss="20.00" vaporized=""/>
 <tripinfo id="v2" depart="25.00" departDelay="5.00" arrival="-1.00" duration="75.00" routeLength="300"
   waitingTime="20.00" waitingCount="3" timeLoss="30.00" vaporized="end"/>
 <tripinfo id="v3" depart="-1" departDelay="70.00" arrival="-1.00" duration="0.00" routeLength="0"
   waitingTime="0.00" waitingCount="0" timeLoss="0.00" vaporized="end"/>
 <personinfo id="p0" depart="3.00"/>
</tripinfos>"""
_STATISTICS = """<statistics><vehicles loaded="5" inserted="3" running="1" waiting="1"/>
 <teleports total="1" jam="1" yield="0" wrongLane="0"/>
 <safety collisions="2" emergencyStops="4" emergencyBraking="3"/></statistics>"""


def _demand(kind: str) -> Demand:
    vehicles = tuple(PlannedVehicle(f"v{i}", 10.0 * i, kind) for i in range(5))  # v4 never loaded
    return Demand(vehicles, 0.0, 100.0)


def test_kpis_from_a_synthetic_tripinfo() -> None:
    trips = parse_tripinfo(_TRIPINFO)
    assert [t.id for t in trips] == ["v0", "v1", "v2", "v3"]
    kpis = compute_kpis(trips, _demand("vehicle"), parse_statistics(_STATISTICS))
    # inserted: 10+0, 20+2, 30+5 = 67; never inserted: v3 100-30, v4 100-40 = 130 -> 197 / 5
    assert kpis.mean_delay_s == pytest.approx(39.4)
    # RESCO: last-inserted v2 was planned at 20; <vehicle>s planned later (v3, v4) are charged.
    assert kpis.mean_delay_resco_s == pytest.approx(39.4)
    assert kpis.mean_travel_time_s == pytest.approx((50 + 68 + 75) / 3)
    assert kpis.mean_waiting_s == pytest.approx(35 / 3)
    assert (kpis.throughput, kpis.stops_total, kpis.stops_mean) == (2, 6, 2.0)
    assert (kpis.demand, kpis.inserted, kpis.never_inserted, kpis.unfinished) == (5, 3, 2, 1)
    assert (kpis.teleports, kpis.collisions, kpis.emergency_braking, kpis.emergency_stops) == (1, 2, 3, 4)
    d = kpis.to_dict()
    for key in ("mean_delay_s", "mean_delay_resco_s", "mean_travel_time_s", "mean_waiting_s", "throughput",
                "teleports", "emergency_braking", "collisions", "stops_mean", "demand", "inserted",
                "never_inserted", "unfinished"):
        assert key in d


def test_resco_delay_ignores_never_inserted_trips_but_strict_delay_does_not() -> None:
    trips = parse_tripinfo(_TRIPINFO.encode())
    assert mean_delay_resco(trips, _demand("trip")) == pytest.approx(67 / 3)
    assert mean_delay_strict(trips, _demand("trip")) == pytest.approx(39.4)


def test_resco_delay_double_counts_vehicles_inserted_before_the_last_one() -> None:
    # v5 (planned 22) entered at 23 from another origin, before v2 (planned 20) entered at 25:
    # RESCO charges v5 its trip delay and again 100 - 22 as if it never departed.
    extra = ('<tripinfo id="v5" depart="23.00" departDelay="1.00" arrival="60.00" duration="37.00" '
             'waitingTime="0" waitingCount="0" timeLoss="4.00"/></tripinfos>')
    trips = parse_tripinfo(_TRIPINFO.replace("</tripinfos>", extra))
    demand = Demand(_demand("vehicle").vehicles + (PlannedVehicle("v5", 22.0, "vehicle"),), 0.0, 100.0)
    assert mean_delay_resco(trips, demand) == pytest.approx((67 + 5 + 70 + 60 + 78) / 7)
    assert mean_delay_strict(trips, demand) == pytest.approx((67 + 5 + 70 + 60) / 6)


def test_kpis_without_vehicles_are_none_in_json() -> None:
    kpis = compute_kpis([], Demand((), 0.0, 10.0))
    assert isinstance(kpis, Kpis) and math.isnan(kpis.mean_delay_s)
    assert kpis.to_dict()["mean_delay_s"] is None and kpis.to_dict()["teleports"] is None


def test_summarise_seeds() -> None:
    s = summarise_seeds([1.0, 2.0, 3.0])
    assert (s.n, s.mean, s.std) == (3, 2.0, 1.0)
    assert s.half_width == pytest.approx(4.3027 / math.sqrt(3))
    assert s.low == pytest.approx(2 - s.half_width) and s.high == pytest.approx(2 + s.half_width)
    assert math.isnan(summarise_seeds([5.0]).half_width) and summarise_seeds([5.0]).to_dict()["low"] is None
    big = summarise_seeds(range(40))
    assert big.half_width == pytest.approx(1.959964 * big.std / math.sqrt(40))
    with pytest.raises(ValueError):
        summarise_seeds([])


def test_t_table_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, 31):
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-3)


class _FakeConn:
    """Two signals sharing lane 'm'; halting counts advance per sample."""

    def __init__(self) -> None:
        self.counts = [{"a": 1, "m": 2, "b": 0}, {"a": 3, "m": 0, "b": 4}]
        self.i = 0
        conn = self

        class TrafficLight:
            @staticmethod
            def getIDList() -> tuple[str, ...]:
                return ("J1", "J2")

            @staticmethod
            def getControlledLanes(tls: str) -> tuple[str, ...]:
                return ("a", "a", "m") if tls == "J1" else ("m", "b")

        class Lane:
            @staticmethod
            def getLastStepHaltingNumber(lane: str) -> int:
                return conn.counts[conn.i][lane]

        self.trafficlight, self.lane = TrafficLight, Lane


def test_kpi_collector_queues_per_intersection_and_network() -> None:
    conn = _FakeConn()
    collector = KpiCollector(conn)
    collector.sample()
    conn.i = 1
    collector.sample()
    q = collector.result()
    assert q.samples == 2
    assert q.per_tls == {"J1": (3.0, 3), "J2": (3.0, 4)}  # J1: 3 then 3; J2: 2 then 4
    assert (q.network_mean, q.network_max) == (5.0, 7)  # each lane once: 3 then 7
    assert q.to_dict()["per_tls"]["J2"] == {"mean": 3.0, "max": 4}
    sparse = KpiCollector(conn, every=2)
    for _ in range(3):
        sparse.sample()
    assert sparse.result().samples == 2


# --------------------------------------------------------------------------- SUMO runs


@pytest.mark.integration
@pytest.mark.parametrize("name", RESCO_NAMES)
def test_every_resco_scenario_runs_a_short_horizon(resco_dir: Path, name: str) -> None:
    result = run_episode(resco_dir / name, seed=1, seconds=300, isolate=True)
    assert isinstance(result, RunResult) and result.backend == "libsumo"
    begin = RESCO_EXPECTED[name][0]
    assert (result.begin, result.end, result.sim_s) == (begin, begin + 300, 300)
    k = result.kpis
    assert k.demand == read_demand(load_scenario(resco_dir / name), begin, begin + 300).count > 0
    assert 0 < k.inserted <= k.demand and k.inserted + k.never_inserted == k.demand
    assert k.throughput + k.unfinished == k.inserted
    assert k.mean_delay_s >= 0 and math.isfinite(k.mean_delay_resco_s) and k.teleports == 0
    assert result.queues is not None and result.queues.samples == 300 and result.queues.per_tls
    assert result.sim_speed > 0


@pytest.mark.integration
def test_same_seed_gives_identical_kpis(resco_dir: Path) -> None:
    a = run_episode(resco_dir / "cologne1", seed=7, seconds=300, isolate=True)
    b = run_episode(resco_dir / "cologne1", seed=7, seconds=300, isolate=True)
    assert a.kpis == b.kpis and a.queues == b.queues


@pytest.mark.integration
def test_libsumo_and_traci_agree(resco_dir: Path) -> None:
    a = run_episode(resco_dir / "grid4x4", seconds=300, isolate=True)
    b = run_episode(resco_dir / "grid4x4", seconds=300, use_libsumo=False)
    assert (a.backend, b.backend) == ("libsumo", "traci") and a.kpis == b.kpis


class _RecordingController:
    """Top-level (picklable) controller that records the times it is called at."""

    def __init__(self, session: SumoSession) -> None:
        self.session = session
        self.tls = session.conn.trafficlight.getIDList()
        self.times: list[float] = []

    def step(self, time: float) -> None:
        self.times.append(time)
        assert self.session.conn.trafficlight.getPhase(self.tls[0]) >= 0


@pytest.mark.integration
def test_controller_steps_once_per_second_and_stdout_stays_clean(
        resco_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    made: list[_RecordingController] = []

    def factory(session: SumoSession) -> _RecordingController:
        made.append(_RecordingController(session))
        return made[-1]

    ticks: list[tuple[float, float]] = []
    result = run_episode(resco_dir / "ingolstadt1", factory, seconds=30, output_dir=tmp_path / "out",
                         progress=lambda t, end: ticks.append((t, end)))
    assert made[0].times == [57600.0 + i for i in range(30)]
    assert ticks[-1] == (57630.0, 57630.0) and len(ticks) == 4
    assert result.controller == "_RecordingController"
    for name in ("tripinfo.xml", "statistics.xml", "summary.xml", "sumo-stdout.log"):
        assert (tmp_path / "out" / name).is_file()
    assert "Simulation ended" in (tmp_path / "out" / "sumo-stdout.log").read_text()
    run_episode(resco_dir / "ingolstadt1", seconds=10, isolate=True)
    assert capfd.readouterr().out == ""


@pytest.mark.integration
def test_session_refuses_to_step_past_the_end(resco_dir: Path) -> None:
    with SumoSession(resco_dir / "cologne1", seconds=10, use_libsumo=False) as session:
        assert session.time == 25200.0 and session.demand.count == 2  # planned at 25205 and 25207
        session.run_to_end()
        assert (session.time, session.steps, session.done) == (25210.0, 10, True)
        with pytest.raises(SumoError, match="already ended"):
            session.step()
        temp = session.output_dir
    assert not temp.exists()


def test_malformed_input_is_reported_before_sumo_crashes_on_it(tmp_path: Path) -> None:
    _write(tmp_path / "x.net.xml", "<net><junction")  # SUMO 1.28 segfaults on this
    _write(tmp_path / "x.rou.xml", "<routes/>")
    with pytest.raises(ScenarioError, match="not well-formed") as info:
        SumoSession(tmp_path)
    assert str(tmp_path / "x.net.xml") in str(info.value)


def test_begin_end_arguments_are_checked(resco_dir: Path) -> None:
    with pytest.raises(ValueError, match="either end or seconds"):
        SumoSession(resco_dir / "cologne1", end=25300, seconds=10)
    with pytest.raises(ValueError, match="after begin"):
        SumoSession(resco_dir / "cologne1", end=100)
