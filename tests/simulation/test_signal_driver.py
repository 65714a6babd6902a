"""SignalDriver: safe phase changes (green -> yellow -> red clearance -> green), without SUMO."""

from __future__ import annotations

import subprocess

import pytest

from edge_agent.errors import PlanRejected
from edge_agent.model import ApproachConfig, ClearancePolicy, Intersection, Movement, Phase, Turn
from simulation.signal_driver import SignalDriver, guarded_clearance


class FakeConn:
    """Just enough of a traci/libsumo connection: records every state set, per light."""

    def __init__(self) -> None:
        self.states: list[tuple[str, str]] = []
        self.trafficlight = self

    def setRedYellowGreenState(self, tls_id: str, state: str) -> None:  # noqa: N802 (SUMO's name)
        self.states.append((tls_id, state))

    @property
    def last(self) -> str:
        return self.states[-1][1]

    def sequence(self) -> list[str]:
        return [s for _, s in self.states]


# Four links. Phase 1: links 0, 1; phase 2: links 1, 2 (link 1 green in both); phase 3: link 3.
STATES = {1: "GGrr", 2: "rGGr", 3: "rrrG"}
MIN_GREEN = 5.0


def _intersection(*, rings=(((1, 2, 3),),),
                  conflicts=(("l0", "l3"), ("l2", "l3"))) -> Intersection:
    approaches = tuple(ApproachConfig(id=a, speed_mps=13.9) for a in "NSEW")
    movements = tuple(Movement(id=f"l{i}", approach=a, turn=Turn.THROUGH)
                      for i, a in enumerate("NSEW"))
    phases = (
        Phase(number=1, movements=("l0", "l1"), min_green=MIN_GREEN, max_green=60,
              yellow=3.0, red_clearance=2.0),
        Phase(number=2, movements=("l1", "l2"), min_green=MIN_GREEN, max_green=60,
              yellow=3.5, red_clearance=0.0),
        Phase(number=3, movements=("l3",), min_green=MIN_GREEN, max_green=60,
              yellow=4.0, red_clearance=1.0),
    )
    return Intersection(id="x1", approaches=approaches, movements=movements, phases=phases,
                        rings=rings, conflicts=conflicts,
                        clearance_policy=ClearancePolicy.HARD_FLOORS)


@pytest.fixture
def conn() -> FakeConn:
    return FakeConn()


@pytest.fixture
def driver(conn) -> SignalDriver:
    return SignalDriver(conn, "tls", _intersection(), STATES)


def run_green(driver: SignalDriver, seconds: float) -> None:
    for _ in range(round(seconds / driver.step_length)):
        driver.advance()


def steps_until_green(driver: SignalDriver, conn: FakeConn, limit: int = 50) -> list[str]:
    """The state after each step until the driver is green again."""
    seen = []
    for _ in range(limit):
        driver.advance()
        seen.append(conn.last)
        if driver.in_green:
            return seen
    raise AssertionError("never reached green")


def test_starts_green_in_the_first_phase_of_the_sequence(driver, conn):
    assert conn.states == [("tls", "GGrr")]
    assert driver.phase == 1 and driver.in_green and driver.changes == 0


def test_start_phase_is_honoured(conn):
    d = SignalDriver(conn, "tls", _intersection(), STATES, start_phase=3)
    assert d.phase == 3 and conn.last == "rrrG"


def test_guarded_clearance_is_the_configured_intervals():
    assert guarded_clearance(_intersection()) == {1: (3.0, 2.0), 2: (3.5, 0.0), 3: (4.0, 1.0)}


def test_switch_runs_yellow_then_red_then_next_green(driver, conn):
    run_green(driver, MIN_GREEN)
    driver.switch_to(2)
    # Link 0 ends ('y'), link 1 is green in both phases and stays 'G', link 2 waits red.
    assert conn.last == "yGrr" and not driver.in_green and driver.target == 2
    seen = steps_until_green(driver, conn)
    assert seen == ["yGrr"] * 2 + ["rGrr"] + ["rGrr"] + ["rGGr"]
    # 3 steps of yellow in all (the switch step included), 2 of red clearance.
    assert conn.sequence() == ["GGrr", "yGrr", "rGrr", "rGGr"]
    assert driver.phase == 2 and driver.target is None and driver.changes == 1
    assert driver.green_elapsed == 0.0


def test_yellow_of_3_5_s_rounds_up_to_4_steps_and_no_red_when_clearance_is_zero(driver, conn):
    run_green(driver, MIN_GREEN)
    driver.switch_to(2)
    steps_until_green(driver, conn)
    run_green(driver, MIN_GREEN)
    driver.switch_to(3)
    assert conn.last == "ryyr"  # both of phase 2's links end
    seen = steps_until_green(driver, conn)
    assert seen == ["ryyr"] * 3 + ["rrrG"]  # 4 steps of yellow, straight to green
    assert "rrrr" not in conn.sequence()


def test_yellow_only_on_links_that_end(conn):
    d = SignalDriver(conn, "tls", _intersection(), STATES, start_phase=3)
    run_green(d, MIN_GREEN)
    d.switch_to(1)
    assert conn.last == "rrry"
    assert steps_until_green(d, conn) == ["rrry"] * 3 + ["rrrr", "GGrr"]


def test_intervals_are_counted_in_steps_of_the_step_length(conn):
    d = SignalDriver(conn, "tls", _intersection(), STATES, step_length=0.5)
    run_green(d, MIN_GREEN)  # 10 steps
    d.switch_to(2)
    seen = steps_until_green(d, conn)
    assert seen.count("yGrr") == 5  # 6 half-second steps of yellow, the switch step included
    assert seen.count("rGrr") == 4  # 2 s of red clearance
    assert seen[-1] == "rGGr"


def test_permissive_green_kept_through_a_change(conn):
    states = {1: "gGrr", 2: "grGr", 3: "rrrG"}
    d = SignalDriver(conn, "tls", _intersection(), states)
    run_green(d, MIN_GREEN)
    d.switch_to(2)
    assert conn.last == "gyrr"
    steps_until_green(d, conn)
    assert conn.sequence() == ["gGrr", "gyrr", "grrr", "grGr"]


def test_custom_clearance_overrides_the_configured_one(conn):
    d = SignalDriver(conn, "tls", _intersection(), STATES,
                     clearance={1: (4.0, 0.0), 2: (3.0, 0.0), 3: (3.0, 0.0)})
    run_green(d, MIN_GREEN)
    d.switch_to(2)
    assert steps_until_green(d, conn) == ["yGrr"] * 3 + ["rGGr"]


def test_switch_before_min_green_raises_plan_rejected(driver, conn):
    run_green(driver, MIN_GREEN - 1)
    with pytest.raises(PlanRejected) as info:
        driver.switch_to(2)
    assert any("min-green" in r and "phase 1" in r for r in info.value.reasons)
    assert driver.in_green and driver.phase == 1 and conn.sequence() == ["GGrr"]


def test_switch_to_an_unknown_phase_raises_plan_rejected(driver):
    run_green(driver, MIN_GREEN)
    with pytest.raises(PlanRejected, match="unknown-phase"):
        driver.switch_to(7)
    assert driver.in_green


def test_switch_while_changing_raises(driver):
    run_green(driver, MIN_GREEN)
    driver.switch_to(2)
    with pytest.raises(RuntimeError, match="already changing"):
        driver.switch_to(3)
    driver.advance()
    with pytest.raises(RuntimeError):
        driver.switch_to(1)


def test_switch_to_the_current_phase_is_a_no_op(driver, conn):
    driver.switch_to(1)  # even before min green: nothing changes, nothing is checked
    run_green(driver, MIN_GREEN)
    driver.switch_to(1)
    assert driver.in_green and driver.phase == 1 and driver.changes == 0
    assert driver.green_elapsed == MIN_GREEN
    assert conn.sequence() == ["GGrr"]


def test_green_elapsed_counts_only_green(driver, conn):
    run_green(driver, 7)
    assert driver.green_elapsed == 7.0
    driver.switch_to(2)
    steps_until_green(driver, conn)
    assert driver.green_elapsed == 0.0
    driver.advance()
    assert driver.green_elapsed == 1.0


def test_next_in_sequence_wraps(driver):
    assert driver.next_in_sequence() == 2
    assert driver.next_in_sequence(2) == 3
    assert driver.next_in_sequence(3) == 1


def test_min_green_reads_the_configuration(driver):
    assert driver.min_green() == MIN_GREEN and driver.min_green(3) == MIN_GREEN


def test_full_cycle_returns_to_the_first_phase(driver, conn):
    for _ in range(3):
        run_green(driver, MIN_GREEN)
        driver.switch_to(driver.next_in_sequence())
        steps_until_green(driver, conn)
    assert driver.phase == 1 and driver.changes == 3 and conn.last == "GGrr"


def test_dual_ring_intersections_are_refused(conn):
    with pytest.raises(ValueError, match="single-ring"):
        SignalDriver(conn, "tls", _intersection(rings=(((1, 2),), ((3,),)), conflicts=()), STATES)


# --- on an imported SUMO net ------------------------------------------------------------------
@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    from simulation.net_import import import_net
    from simulation.sumo_binaries import find_binary

    try:
        netgenerate = find_binary("netgenerate")
    except Exception as exc:  # pragma: no cover - the simulation extra is missing
        pytest.skip(f"netgenerate not available: {exc}")
    net = tmp_path_factory.mktemp("driver-net") / "grid.net.xml"
    subprocess.run([str(netgenerate), "--grid", "--grid.number", "2", "--grid.attach-length",
                    "100", "-j", "traffic_light", "-o", str(net)], check=True,
                   capture_output=True)
    return import_net(net)


def test_drives_every_imported_light_through_its_sequence(imported):
    multi = {t: x for t, x in imported.intersections.items() if len(x.phases) > 1}
    assert multi
    for tls_id, x in multi.items():
        conn = FakeConn()
        states = imported.phase_states[tls_id]
        d = SignalDriver(conn, tls_id, x, states)
        for _ in range(len(d.sequence)):
            now, nxt = states[d.phase], states[d.next_in_sequence()]
            run_green(d, d.min_green())
            d.switch_to(d.next_in_sequence())
            yellow = conn.last
            assert len(yellow) == len(now)
            for a, b, y in zip(now, nxt, yellow):
                if a in "Gg" and b in "Gg":
                    assert y == a  # stays green
                elif a in "Gg":
                    assert y == "y"
                else:
                    assert y == "r"
            steps_until_green(d, conn, limit=100)
            assert conn.last == nxt
        assert d.phase == d.sequence[0] and d.changes == len(d.sequence)
