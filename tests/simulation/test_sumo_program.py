"""Timing plans <-> SUMO programmes (simulation.sumo_program)."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from edge_agent.guard import check_plan
from edge_agent.model import ApproachConfig, Intersection, Movement, Phase
from edge_agent.plan import PhaseTiming, PlanSource, TimingPlan
from simulation.net_import import import_net
from simulation.sumo_program import (plan_to_program, program_to_plan, program_xml,
                                     split_program, sumo_offset)

# A hand-made three-phase signal: link 0 north through, 1 north left (permissive 'g' in
# phase 1, protected in phase 2), 2 south through, 3 east through, 4 east right ('s': right
# turn on red while the east approach is red).
STATES = {1: "GgGrs", 2: "GGrrs", 3: "rrrGG"}


def _intersection(states: dict[int, str], conflicts: list[tuple[str, str]],
                  iid: str = "hand") -> Intersection:
    width = len(next(iter(states.values())))
    return Intersection(
        id=iid, approaches=(ApproachConfig(id="in", speed_mps=13.9),),
        movements=tuple(Movement(id=f"l{i}", approach="in", turn="through")
                        for i in range(width)),
        phases=tuple(Phase(number=n, movements=tuple(f"l{i}" for i, c in enumerate(s)
                                                     if c in "Gg"),
                           min_green=5.0, max_green=60.0, yellow=3.0, red_clearance=0.0)
                     for n, s in states.items()),
        rings=((tuple(states),),), conflicts=tuple(conflicts), clearance_policy="hard-floors")


HAND = _intersection(STATES, [("l0", "l3"), ("l1", "l3"), ("l2", "l3"), ("l1", "l4"),
                              ("l2", "l4")])


def _timing(phase: int, split: float, yellow: float, red: float) -> PhaseTiming:
    return PhaseTiming(phase=phase, split=split, yellow=yellow, red_clearance=red,
                       min_green=5.0, max_green=60.0)


def _plan(intersection: Intersection, timings: list[PhaseTiming], offset: float = 0.0,
          ref: int | None = None) -> TimingPlan:
    return TimingPlan(plan_id=7, intersection_id=intersection.id,
                      cycle=round(sum(t.split for t in timings), 3), offset=offset,
                      offset_reference=timings[0].phase if ref is None else ref,
                      rings=(tuple(timings),), activation=0.0, source=PlanSource.TIME_OF_DAY,
                      author="sumo-program")


HAND_PLAN = _plan(HAND, [_timing(1, 30.0, 3.0, 1.0), _timing(2, 15.0, 3.0, 0.0),
                         _timing(3, 25.0, 4.0, 2.0)])


def test_three_phase_example_states() -> None:
    assert check_plan(HAND_PLAN, HAND) == []
    assert plan_to_program(HAND_PLAN, HAND, STATES) == [
        ("GgGrs", 26.0), ("Ggyrs", 3.0), ("Ggrrs", 1.0),  # left turn continues, protected next
        ("GGrrs", 12.0), ("yyrrs", 3.0),  # no red clearance: no entry
        ("rrrGG", 19.0), ("rrryy", 4.0), ("rrrrr", 2.0),  # the right turn yellows too
    ]
    assert program_to_plan(plan_to_program(HAND_PLAN, HAND, STATES), HAND, STATES,
                           plan_id=7) == HAND_PLAN


def test_plan_to_program_refuses_what_sumo_cannot_run() -> None:
    two_rings = TimingPlan(plan_id=1, intersection_id="hand", cycle=70.0, offset=0.0,
                           offset_reference=1, rings=((_timing(1, 35, 3, 0),),
                                                      (_timing(3, 35, 3, 0),)),
                           activation=0.0, source="adaptive", author="t")
    with pytest.raises(ValueError, match="single-ring.*dual-ring export is future work"):
        plan_to_program(two_rings, HAND, STATES)
    with pytest.raises(ValueError, match="not 'other'"):
        plan_to_program(HAND_PLAN, _intersection(STATES, [], "other"), STATES)
    with pytest.raises(ValueError, match="phase 2: no green state"):
        plan_to_program(HAND_PLAN, HAND, {1: STATES[1], 3: STATES[3]})
    no_yellow = _plan(HAND, [_timing(1, 30, 0.0, 0), _timing(2, 15, 3, 0),
                             _timing(3, 25, 3, 0)])
    with pytest.raises(ValueError, match="phase 1: yellow 0 s must be > 0"):
        plan_to_program(no_yellow, HAND, STATES)


def test_designer_programme_reads_leniently_with_floors() -> None:
    designer = [("rrryy", 4.0), ("GgGrs", 30.0), ("Ggyrs", 2.0), ("GGrrs", 10.0),
                ("yyrrs", 3.0), ("rrrrr", 2.0), ("rrrGG", 20.0)]
    with pytest.raises(ValueError, match="not in the form plan_to_program writes"):
        program_to_plan(designer, HAND, STATES, plan_id=1)
    plan = program_to_plan(designer, HAND, STATES, plan_id=1, lenient=True, apply_floors=True)
    assert [(t.phase, t.green, t.yellow, t.red_clearance) for t in plan.rings[0]] == [
        (1, 30.0, 3.0, 0.0), (2, 10.0, 3.0, 2.0), (3, 20.0, 4.0, 0.0)]
    assert plan.cycle == 72.0 and check_plan(plan, HAND) == []
    assert [g.entry for g in split_program(designer)] == [1, 3, 6]


def test_ambiguous_programme_is_refused_not_guessed() -> None:
    # Phase 2 serves only a link that continues from phase 1 and into phase 3, with the same
    # characters: its green, yellow and red look alike and SUMO runs two plans identically.
    states = {1: "GGr", 2: "Grr", 3: "GrG"}
    intersection = _intersection(states, [("l1", "l2")])
    plan = _plan(intersection, [_timing(1, 20, 3, 1), _timing(2, 15, 3, 0),
                                _timing(3, 20, 3, 0)])
    program = plan_to_program(plan, intersection, states)
    assert program[2:5] == [("Grr", 1.0), ("Grr", 12.0), ("Grr", 3.0)]
    with pytest.raises(ValueError, match="two different plans"):
        program_to_plan(program, intersection, states, plan_id=7)


def test_program_xml() -> None:
    program = plan_to_program(HAND_PLAN, HAND, STATES)
    text = program_xml('a"b&<c', "tsc", program, offset=12.5)
    logic = ET.fromstring(text).find("tlLogic")
    assert logic is not None and logic.get("id") == 'a"b&<c'
    assert (logic.get("type"), logic.get("programID"), logic.get("offset")) == \
        ("static", "tsc", "12.5")
    assert [(p.get("state"), float(p.get("duration", ""))) for p in logic] == program
    with pytest.raises(ValueError, match="invalid characters"):
        program_xml("t", "p", [("GxG", 5.0)])
    with pytest.raises(ValueError, match="differ in length"):
        program_xml("t", "p", [("GG", 5.0), ("G", 3.0)])


def test_sumo_offset_places_the_reference_green() -> None:
    plan = _plan(HAND, HAND_PLAN.rings[0], offset=10.0, ref=2)
    # Phase 2's green starts 30 s into the ring, so the ring must start 20 s before 10 s.
    assert sumo_offset(plan) == 50.0
    assert sumo_offset(_plan(HAND, HAND_PLAN.rings[0], offset=10.0)) == 10.0


# --- the round trip, over random guard-valid plans ------------------------------------------
def _draw_plan(data: st.DataObject, intersection: Intersection) -> TimingPlan:
    phases = data.draw(st.permutations(intersection.phases), label="order")
    slack = intersection.cycle_max - sum(p.min_green + 12.0 for p in phases)
    assume(slack >= 0.0)
    timings = []
    for p in phases:
        cap = min(p.max_green, p.min_green + slack / len(phases))
        green = data.draw(st.integers(max(1, math.ceil(p.min_green * 10)),
                                      math.floor(cap * 10))) / 10
        yellow = data.draw(st.integers(30, 60)) / 10
        red = data.draw(st.integers(0, 60)) / 10
        low = data.draw(st.integers(math.ceil(p.min_green * 10), round(green * 10))) / 10
        high = data.draw(st.integers(round(green * 10), math.floor(p.max_green * 10))) / 10
        timings.append(PhaseTiming(phase=p.number, split=round(green + yellow + red, 1),
                                   yellow=yellow, red_clearance=red, min_green=low,
                                   max_green=high, walk=p.walk, ped_clearance=p.ped_clearance))
    cycle = round(sum(t.split for t in timings), 3)
    assume(cycle >= intersection.cycle_min)
    plan = TimingPlan(
        plan_id=data.draw(st.integers(1, 2**40)), intersection_id=intersection.id, cycle=cycle,
        offset=data.draw(st.integers(0, round(cycle * 10) - 1)) / 10,
        offset_reference=data.draw(st.sampled_from([t.phase for t in timings])),
        rings=(tuple(timings),), activation=1.7e9, source=PlanSource.ADAPTIVE, author="prop")
    assert check_plan(plan, intersection) == []
    return plan


def _round_trip(plan: TimingPlan, intersection: Intersection, states: dict[int, str]) -> None:
    program = plan_to_program(plan, intersection, states)
    back = program_to_plan(
        program, intersection, states, plan_id=plan.plan_id, offset=plan.offset,
        offset_reference=plan.offset_reference, activation=plan.activation,
        source=plan.source, author=plan.author,
        bounds={t.phase: (t.min_green, t.max_green) for t in plan.rings[0]})
    assert back == plan
    assert sum(d for _, d in program) == pytest.approx(plan.cycle, abs=1e-6)


def _sumo_binary(name: str) -> Path:
    spec = importlib.util.find_spec("sumo")  # not "import sumo": no SUMO_HOME side effects
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the eclipse-sumo wheel is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "bin" / name
    if not path.exists():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> list:
    """Intersections and their states from small generated nets, plus the hand-made one."""
    pool = [(HAND, STATES)]
    d = tmp_path_factory.mktemp("generated")
    for name, options in {"grid": [], "ped": ["--sidewalks.guess", "--crossings.guess"],
                          "joined": ["--grid.length", "30", "--tls.join"]}.items():
        path = d / f"{name}.net.xml"
        subprocess.run([str(_sumo_binary("netgenerate")), "--grid", "--grid.number", "2",
                        "--grid.attach-length", "100", "-j", "traffic_light", *options,
                        "-o", str(path)], check=True, capture_output=True)
        net = import_net(path)
        pool += [(net.intersections[t], net.phase_states[t]) for t in net.intersections]
    return pool


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_round_trip_generated(generated: list, data: st.DataObject) -> None:
    intersection, states = data.draw(st.sampled_from(generated), label="intersection")
    _round_trip(_draw_plan(data, intersection), intersection, states)


@pytest.fixture(scope="module")
def resco_pool(resco_dir: Path) -> list:
    pool = []
    for folder in sorted(p for p in resco_dir.iterdir() if p.is_dir()):
        net = import_net(next(folder.glob("*.net.xml")))
        pool += [(net.intersections[t], net.phase_states[t], net.designer_plan(t))
                 for t in net.intersections]
    return pool


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_round_trip_resco(resco_pool: list, data: st.DataObject) -> None:
    intersection, states, _ = data.draw(st.sampled_from(resco_pool), label="intersection")
    _round_trip(_draw_plan(data, intersection), intersection, states)


def test_resco_designer_plans_round_trip(resco_pool: list) -> None:
    for intersection, states, plan in resco_pool:
        assert check_plan(plan, intersection) == []
        _round_trip(plan, intersection, states)


# --- SUMO runs what we write ----------------------------------------------------------------
@pytest.mark.integration
def test_sumo_runs_the_programme(tmp_path: Path) -> None:
    net_path = tmp_path / "grid.net.xml"
    subprocess.run([str(_sumo_binary("netgenerate")), "--grid", "--grid.number", "2",
                    "--grid.attach-length", "100", "-j", "traffic_light", "-o", str(net_path)],
                   check=True, capture_output=True)
    net = import_net(net_path, tls_ids=["A0"])
    intersection, states = net.intersections["A0"], net.phase_states["A0"]
    plan = _plan(intersection, [_timing(2, 20.0, 3.0, 2.0), _timing(1, 30.0, 4.0, 0.0)],
                 offset=17.0, ref=1)
    assert check_plan(plan, intersection) == []
    program = plan_to_program(plan, intersection, states)
    (tmp_path / "tsc.add.xml").write_text(
        program_xml("A0", "tsc", program, offset=sumo_offset(plan)), encoding="utf-8")
    out = tmp_path / "states.xml"
    (tmp_path / "log.add.xml").write_text(
        f'<additional><timedEvent type="SaveTLSStates" source="A0" dest="{out}"/></additional>',
        encoding="utf-8")
    subprocess.run([str(_sumo_binary("sumo")), "-n", str(net_path), "-a",
                    f"{tmp_path / 'tsc.add.xml'},{tmp_path / 'log.add.xml'}", "--end", "120",
                    "--no-step-log"], check=True, capture_output=True)
    seen = {float(e.get("time", "")): (e.get("programID"), e.get("state"))
            for e in ET.parse(out).getroot().iter("tlsState")}
    starts, t = [], 0.0
    for state, duration in program:
        starts.append((t, state))
        t += duration
    for time, (program_id, state) in seen.items():
        position = (time - sumo_offset(plan)) % plan.cycle
        expected = [s for start, s in starts if start <= position][-1]
        assert (program_id, state) == ("tsc", expected), time
    # The reference phase (1) turns green at the plan offset, 17 s into each cycle.
    assert seen[17.0][1] == states[1] and seen[16.0][1] != states[1]
