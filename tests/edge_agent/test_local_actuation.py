"""Local actuation on register readings (edge_agent.local_actuation), pure: synthetic polls of
the elm-1st cabinet (configs/modbus-elm-1st.toml) on a fake clock.

elm-1st: ring 1 = phase 2 (NB: lanes S_0, S_1; stop bars count_0/presence_0, count_1/presence_1,
queue_0 on S_0) then phase 4 (EB: lane W_0, count_5/presence_5); ring 2 = phase 6 (SB: N_0, N_1;
count_2, count_3, queue_1) then phase 8 (WB: lane E_0, count_4/presence_4). The plan gives
phases 2 and 6 min 8 / max 50 s, phases 4 and 8 min 6 / max 40 s.
"""

from __future__ import annotations

import math

import msgspec
import pytest

from conftest import CONFIGS
from edge_agent.actuation import ActuationParams
from edge_agent.config import load_intersection, load_toml
from edge_agent.lane_calls import lane_calls, lane_phases
from edge_agent.local_actuation import ActuationConfig, LocalActuation
from edge_agent.modbus_core import Reading
from edge_agent.model import (
    ApproachConfig, Detector, DetectorKind, Intersection, Movement, Phase, Turn,
)
from edge_agent.plan import PhaseTiming, TimingPlan
from edge_agent.registers import Register, RegisterMap, Signal

X = load_intersection(CONFIGS / "nema-4phase.toml", "elm-1st")
MAP = load_toml(CONFIGS / "modbus-elm-1st.toml", RegisterMap)
COILS = sorted(r.name for r in MAP.registers
               if r.signal in (Signal.PHASE_HOLD, Signal.PHASE_FORCE_OFF))


def timing(n: int, split: float, lo: float, hi: float) -> PhaseTiming:
    return PhaseTiming(phase=n, split=split, yellow=3.5 if n in (2, 6) else 3.0,
                       red_clearance=1.5, min_green=lo, max_green=hi)


PLAN = TimingPlan(plan_id=7, intersection_id="elm-1st", cycle=80.0, offset=0.0,
                  offset_reference=2, activation=0.0, source="adaptive", author="test",
                  rings=((timing(2, 45, 8, 50), timing(4, 35, 6, 40)),
                         (timing(6, 45, 8, 50), timing(8, 35, 6, 40))))


class Cabinet:
    """Register values as a poll returns them, and the actuation they feed; time moves a
    second a poll unless told."""

    def __init__(self, regmap: RegisterMap = MAP, x: Intersection = X, **params: float) -> None:
        self.regmap = regmap
        self.values: dict[str, float] = {r.name: 0.0 for r in regmap.registers}
        self.stale: set[str] = set()
        self.t = 1000.0
        self.act = LocalActuation(x, regmap, ActuationParams(**params), poll_period_s=1.0)

    def snapshot(self) -> dict[str, Reading]:
        return {n: Reading(n, v, self.t, 3 if n in self.stale else 0, n in self.stale)
                for n, v in self.values.items()}

    def poll(self, plan: TimingPlan | None = PLAN, failed=frozenset(), dt: float = 1.0,
             **values: float) -> dict[str, bool]:
        """One poll ``dt`` after the last, with ``values`` set first; the writes, applied."""
        self.t += dt
        self.values.update(values)
        self.act.observe(self.snapshot())
        writes = self.act.update(self.t, plan, failed)
        for name, value in writes:
            self.act.written(name, value)
        return dict(writes)

    def car(self, *counters: str) -> None:
        for name in counters:
            self.values[name] += 1

    def decision(self, ring: int = 1) -> str:
        return self.act.decisions[ring].reason


def started(cab: Cabinet, **values: float) -> None:
    """Phase 2 green from the first poll, every coil known (all released)."""
    writes = cab.poll(phase_ring1=2, **values)
    assert writes == dict.fromkeys(COILS, False)  # unknown coils: written once, released


# --- extension, gap-out, min and max green -------------------------------------------------
def test_the_green_is_held_while_vehicles_keep_arriving_then_forced_off_at_a_gap():
    cab = Cabinet()
    started(cab, presence_5=1)  # a car waits on phase 4
    for _ in range(7):  # min green 8 s: neither coil while it runs
        cab.car("count_0")
        assert cab.poll() == {}
        assert "min green" in cab.decision()
    cab.car("count_0")
    assert cab.poll() == {"hold_2": True}
    assert "extended" in cab.decision()
    for _ in range(10):  # cars keep coming: nothing to write
        cab.car("count_1")
        assert cab.poll() == {}
    assert cab.poll() == {}  # 1 s since the last car: gap 1.5 s (half a poll) <= 2.5 s
    writes = cab.poll(dt=2.0)
    assert writes == {"hold_2": False, "force_off_2": True}
    assert "gap-out" in cab.decision() and "-> phase 4" in cab.decision()
    assert cab.act.last is cab.act.decisions[1]
    cab.car("count_0")  # the controller is in yellow and still shows phase 2: a late car ...
    assert cab.poll() == {} and "gap-out" in cab.decision()  # ... does not undo the force-off

    # Phase 4's green: phase 2's force-off released before it comes round again.
    assert cab.poll(phase_ring1=4) == {"force_off_2": False}
    assert "phase 4 held: min green" in cab.decision()


def test_a_green_ends_at_min_green_when_its_lanes_are_empty():
    cab = Cabinet()
    started(cab, presence_5=1)
    for _ in range(6):
        assert cab.poll() == {}
    assert cab.poll() == {}  # 7 s
    assert cab.poll() == {"force_off_2": True}  # 8 s: min green has run
    assert "gap-out after 8 s (gap none" in cab.decision()


def test_max_green_ends_an_extension():
    cab = Cabinet()
    started(cab, presence_5=1)
    writes = {}
    for second in range(1, 60):
        cab.car("count_0")
        writes = cab.poll()
        if "force_off_2" in writes:
            break
    assert second == 50 and writes == {"hold_2": False, "force_off_2": True}
    assert "max-out at 50 s" in cab.decision()


def test_a_discharging_queue_extends_without_a_car_each_poll():
    cab = Cabinet()
    started(cab, presence_5=1, queue_0=60.0)  # 8 queued on S_0 (7.5 m each)
    for _ in range(7):
        cab.poll()
    cab.car("count_0")  # a departure from the stop bar of S_0 ...
    assert cab.poll() == {"hold_2": True}
    assert "extended: queue 8 veh" in cab.decision()
    assert cab.poll(dt=3.0) == {}  # ... 3 s ago: within passage 2.5 s plus a poll
    assert cab.poll(dt=1.0) == {"hold_2": False, "force_off_2": True}  # 4 s: not discharging


def test_a_green_rests_held_when_nobody_else_calls():
    cab = Cabinet()
    started(cab)
    for _ in range(7):
        assert cab.poll() == {}
    assert cab.poll() == {"hold_2": True}
    assert "rests in green" in cab.decision()
    assert cab.poll(presence_5=1) == {"hold_2": False, "force_off_2": True}


def test_the_rings_decide_each_for_its_own_phase():
    cab = Cabinet()
    writes = cab.poll(phase_ring1=2, phase_ring2=6, presence_5=1, presence_4=1)
    assert writes == dict.fromkeys(COILS, False)
    for _ in range(8):
        cab.car("count_2")  # SB keeps coming; NB is empty
        writes = cab.poll()
    assert writes == {"force_off_2": True, "hold_6": True}
    assert set(cab.act.decisions) == {1, 2} and "extended" in cab.decision(2)


# --- what stands aside, what is written ------------------------------------------------------
def test_nothing_is_written_when_nothing_changes():
    cab = Cabinet()
    started(cab)
    assert [cab.poll() for _ in range(5)] == [{}] * 5


def test_standing_aside_releases_only_the_coils_it_set():
    cab = Cabinet()
    started(cab, presence_5=1)
    for _ in range(8):
        cab.car("count_0")
        cab.poll()
    assert cab.act._state["hold_2"] is True
    assert cab.poll(plan=None) == {"hold_2": False}  # left CENTRAL: released
    assert cab.act.decisions == {} and cab.poll(plan=None) == {}
    fresh = Cabinet()  # coils never written by this run are not ours to touch
    assert fresh.poll(plan=None, phase_ring1=2) == {}


def test_a_failed_write_is_written_again_and_released_when_standing_aside():
    cab = Cabinet()
    cab.t += 1
    cab.values["phase_ring1"] = 2
    cab.act.observe(cab.snapshot())
    writes = cab.act.update(cab.t, PLAN)
    for name, _ in writes:
        cab.act.unsure(name)  # the link was down: none known
    assert cab.poll() == dict.fromkeys(COILS, False)  # all again
    cab.act.unsure("hold_4")  # maybe it landed as True
    assert cab.poll(plan=None) == {"hold_4": False}


def test_no_phase_in_green_means_no_coil():
    cab = Cabinet()
    started(cab, presence_5=1)
    cab.stale.add("phase_ring1")  # the controller stopped answering
    cab.poll()
    assert cab.act.decisions == {}
    cab.stale.clear()
    assert cab.poll(phase_ring1=0) == {} and cab.act.decisions == {}  # 0: none green
    cab.poll(phase_ring1=2)  # seen again: its green is timed from here
    for _ in range(6):
        assert "min green" in cab.decision() and cab.poll() == {}


def test_a_plan_that_does_not_time_the_phase_leaves_it_alone():
    ring1 = TimingPlan(plan_id=8, intersection_id="elm-1st", cycle=80.0, offset=0.0,
                       offset_reference=2, activation=0.0, source="adaptive", author="test",
                       rings=((timing(2, 45, 8, 50), timing(4, 35, 6, 40)),))
    cab = Cabinet()
    cab.poll(plan=ring1, phase_ring1=2, phase_ring2=6)
    assert set(cab.act.decisions) == {1}


# --- failed detectors: recall ------------------------------------------------------------
def test_a_phase_with_a_failed_detector_is_recalled_not_called():
    cab = Cabinet(recall_s=30.0)
    failed = frozenset({"elm-1st_W_0_stop"})  # phase 4's only detector
    cab.poll(failed=failed, phase_ring1=2, presence_5=1)
    m = cab.act.measures(cab.t, failed, {2})
    assert not m[4].detected and m[8].detected and m[2].detected
    start = cab.t
    for _ in range(20):  # its presence is not believed, and it cannot call: no rest-hold
        assert cab.poll(failed=failed) == {}
    assert "rests in green" in cab.decision()
    writes = {}
    while not writes:
        writes = cab.poll(failed=failed)
    # Waited recall_s from the end of phase 2's min green (when the Actuator first looked).
    assert writes == {"force_off_2": True} and cab.t == start + 8 + 30
    assert "recall (no detector)" in cab.decision()


def test_a_green_phase_with_a_failed_detector_runs_the_plans_green():
    cab = Cabinet()
    failed = frozenset({"elm-1st_S_1_stop"})
    cab.poll(failed=failed, phase_ring1=2, presence_5=1)
    for _ in range(30):
        cab.car("count_0")  # S_0 still counts, but the phase is on recall: not trusted
        assert cab.poll(failed=failed) == {}
    assert "no working detector, runs the plan's green" in cab.decision()


def test_a_phase_without_any_usable_register_is_not_detected():
    regmap = msgspec.structs.replace(MAP, registers=tuple(
        r for r in MAP.registers if r.name not in ("count_4", "occupancy_4", "presence_4")))
    cab = Cabinet(regmap)
    cab.poll(phase_ring2=6)
    assert not cab.act.measures(cab.t)[8].detected


def test_a_failed_queue_detector_drops_its_queue():
    cab = Cabinet()
    cab.poll(queue_0=75.0, phase_ring2=6)
    assert cab.act.measures(cab.t)[2].queue == 10.0
    assert cab.act.measures(cab.t, {"elm-1st_S_queue"})[2].queue == 0.0


# --- spillback: exit detectors ----------------------------------------------------------------
# NB (phase 2) leaves over two exit lanes on the north leg, each with a presence loop; the first
# also has an occupancy register.
X_EXITS = msgspec.structs.replace(X, detectors=(
    *X.detectors,
    Detector(id="N_out_0", kind=DetectorKind.EXIT, lane="elm-1st_N_out_0", position_m=20.0,
             movements=("NB",)),
    Detector(id="N_out_1", kind=DetectorKind.EXIT, lane="elm-1st_N_out_1", position_m=20.0,
             movements=("NB",))))
MAP_EXITS = msgspec.structs.replace(MAP, registers=(
    *MAP.registers,
    Register(name="exit_0", table="discrete", address=20, type="bool",
             signal="detector.presence", detector="N_out_0"),
    Register(name="exit_0_occ", table="input", address=60, type="uint16", scale=0.01,
             signal="detector.occupancy", detector="N_out_0"),
    Register(name="exit_1", table="discrete", address=21, type="bool",
             signal="detector.presence", detector="N_out_1")))


def test_a_full_exit_ends_the_green_that_feeds_it_and_keeps_it_from_being_chosen():
    cab = Cabinet(MAP_EXITS, X_EXITS)
    started(cab, presence_5=1)  # a car waits on phase 4
    for _ in range(8):  # cars keep coming on NB: past min green it is extended
        cab.car("count_0")
        cab.poll()
    assert "extended" in cab.decision()
    cab.car("count_0")
    cab.poll(exit_0=1, exit_1=1, presence_0=1)  # exits occupied: not yet spillback (a car
    # passing); a car stands at the stop bar
    for _ in range(2):
        cab.car("count_0")
        cab.poll()
        assert "extended" in cab.decision()
    cab.car("count_0")
    writes = cab.poll()  # occupied 3 s without a break: full
    assert writes == {"hold_2": False, "force_off_2": True}
    assert "exit blocked (spillback) -> phase 4" in cab.decision()
    assert cab.act.exits.full(cab.t) == {"N_out_0", "N_out_1"}
    m = cab.act.measures(cab.t)
    assert m[2].blocked and m[2].queue == 0 and m[2].approaching == 0
    assert not m[4].blocked

    # Phase 4 green; NB still calls but its exits are full: phase 4 rests, not forced off.
    cab.poll(phase_ring1=4, presence_5=0)
    for _ in range(10):
        cab.car("count_0")
        assert "force_off_4" not in cab.poll()
    assert "rests in green" in cab.decision()
    cab.car("count_0")
    writes = cab.poll(exit_1=0)  # one exit lane clears: NB can leave over it
    assert not cab.act.measures(cab.t)[2].blocked
    assert writes["force_off_4"] is True and "-> phase 2" in cab.decision()


def test_an_exit_counts_full_only_while_read_occupied_and_working():
    cab = Cabinet(MAP_EXITS, X_EXITS)
    cab.poll(phase_ring1=2, exit_0=1, exit_1=1)
    for _ in range(3):
        cab.poll()
    assert cab.act.exits.full(cab.t) == {"N_out_0", "N_out_1"}
    assert cab.act.exits.full(cab.t, {"N_out_1"}) == {"N_out_0"}  # a failed one: not known
    assert not cab.act.measures(cab.t, {"N_out_1"})[2].blocked
    cab.stale.add("exit_1")  # a stale read is not believed either: the clock starts again
    cab.poll()
    cab.stale.clear()
    cab.poll()
    assert cab.act.exits.full(cab.t) == {"N_out_0"}
    cab.stale.add("exit_0")  # presence unreadable: occupancy stands in for it
    cab.poll(exit_0_occ=0.4)
    assert cab.act.exits.full(cab.t) == {"N_out_0"}
    cab.poll(exit_0_occ=0.0)
    assert "N_out_0" not in cab.act.exits.full(cab.t)


def test_exit_detectors_are_not_lanes_of_traffic():
    act = LocalActuation(X_EXITS, MAP_EXITS)
    assert "elm-1st_N_out_0" not in lane_phases(X_EXITS)
    assert act.exits.spillback_s == 3.0 and not LocalActuation(X, MAP).exits.ids


# --- readings -------------------------------------------------------------------------------
def test_counters_wrap_and_a_reset_is_no_traffic():
    cab = Cabinet()
    cab.poll(count_0=65535)
    cab.poll(count_0=1)  # wrapped: 2 vehicles
    loop = cab.act._loops["elm-1st_S_0_stop"]
    assert loop.new == 2 and loop.counted_at == pytest.approx(cab.t - 1 / 3)
    cab.poll(count_0=40_000)  # a jump no traffic makes (a controller restart)
    assert loop.new == 0 and loop.counter == 40_000
    cab.poll(dt=0.0)  # the same read again: nothing new
    assert loop.new == 0


def test_occupancy_stands_in_for_a_missing_presence_register():
    regmap = msgspec.structs.replace(MAP, registers=tuple(
        r for r in MAP.registers if r.name != "presence_4"))
    cab = Cabinet(regmap)
    cab.poll(phase_ring2=6, occupancy_4=0.3)
    m = cab.act.measures(cab.t)
    assert m[8].queue == 1.0 and m[8].gap_s == 0.0
    assert m[6].gap_s == math.inf and m[6].discharging == 0.0


def test_advance_loops_count_approaching_vehicles():
    advance = Register(name="count_adv", table="input", address=50, type="uint16",
                       signal="detector.count", detector="elm-1st_S_0_adv")
    cab = Cabinet(msgspec.structs.replace(MAP, registers=(*MAP.registers, advance)))
    assert cab.act.available
    cab.poll(phase_ring2=6, count_adv=10)
    cab.poll(count_adv=12)
    m = cab.act.measures(cab.t)
    assert (m[2].approaching, m[2].queue) == (2.0, 0.0)
    assert m[2].gap_s == pytest.approx(1 / 3)  # the second of two cars over the last second


def test_a_map_without_coils_has_nothing_to_actuate_with():
    regmap = msgspec.structs.replace(MAP, registers=tuple(
        r for r in MAP.registers if r.name not in COILS))
    cab = Cabinet(regmap)
    assert not cab.act.available
    assert cab.poll(phase_ring1=2) == {}


def test_lanes_belong_to_the_phases_of_their_movements():
    x = Intersection(
        id="y", approaches=(ApproachConfig(id="N", speed_mps=10.0, lanes=("n0", "n1")),),
        movements=(Movement(id="t", approach="N", turn=Turn.THROUGH, lanes=("n0",)),
                   Movement(id="l", approach="N", turn=Turn.LEFT, lanes=("n0",)),
                   Movement(id="p", approach="N", turn=Turn.PEDESTRIAN)),
        phases=(Phase(number=1, movements=("t", "p"), min_green=5, max_green=30, yellow=3,
                      red_clearance=1),
                Phase(number=2, movements=("l",), min_green=5, max_green=30, yellow=3,
                      red_clearance=1)),
        rings=(((1, 2),),), conflicts=())
    assert lane_phases(x) == {"n0": {1: False, 2: False},  # shared: neither serves it whole
                              "n1": {1: False, 2: False}}  # named by none: its approach's
    assert lane_phases(X)["elm-1st_S_0"] == {2: True}


def test_a_lane_calls_the_phases_that_serve_it_whole_and_in_part_only_without_one():
    calls = lane_calls({"permissive": {1: True, 2: False},  # left with the through, or alone
                        "shared": {1: False, 2: False},  # through in 1, left only in 2
                        "turn_bay": {1: True, 2: True}}, partial_weight=0.3)
    assert calls == {1: {"permissive": 1.0, "shared": 0.3, "turn_bay": 1.0},
                     2: {"permissive": 0.0, "shared": 0.3, "turn_bay": 1.0}}
    assert lane_calls({"shared": {1: False, 2: False}}) == {1: {"shared": 1.0},
                                                            2: {"shared": 1.0}}


# --- configuration --------------------------------------------------------------------------
def test_the_config_table_sets_how_long_an_exit_must_stand_occupied():
    assert ActuationConfig().spillback_s == 3.0
    assert ActuationConfig(spillback_s=5.0).params == ActuationParams()
    with pytest.raises(ValueError, match="actuation.spillback_s"):
        ActuationConfig(spillback_s=-1.0)


def test_the_config_table_gives_the_actuators_parameters():
    assert ActuationConfig().params == ActuationParams()
    assert ActuationConfig().enabled is None
    tuned = ActuationConfig(passage_s=2.0, max_wait_s=90.0)
    assert (tuned.params.passage_s, tuned.params.passage_min_s, tuned.params.max_wait_s) == \
        (2.0, 2.0, 90.0)  # passage_min_s follows a shorter passage_s
    assert ActuationConfig(passage_s=4.0).params.passage_min_s == \
        ActuationParams().passage_min_s
    with pytest.raises(ValueError, match="actuation.recall_s"):
        ActuationConfig(recall_s=-1.0)
    with pytest.raises(ValueError, match="actuation.passage_min_s"):
        ActuationConfig(passage_s=2.0, passage_min_s=3.0)
