"""The intersection model: field-naming validation at construction and the derived views."""

from __future__ import annotations

import re
from typing import Any, Callable

import msgspec
import pytest

from edge_agent.config import load_intersection
from edge_agent.model import (
    ApproachConfig,
    ClearancePolicy,
    Detector,
    DetectorKind,
    Intersection,
    Movement,
    Phase,
    Turn,
)

from conftest import CONFIGS

NAN, INF = float("nan"), float("inf")


# --- a small valid 4-phase crossing, varied one field at a time ---------------------------
def approach(id: str = "N", **changes: Any) -> ApproachConfig:
    fields: dict[str, Any] = {"id": id, "speed_mps": 13.9, "lanes": (f"{id}_0",)}
    return ApproachConfig(**(fields | changes))


def phase(number: int = 2, movements: tuple[str, ...] = ("NB",), **changes: Any) -> Phase:
    fields: dict[str, Any] = {"number": number, "movements": movements, "min_green": 8.0,
                              "max_green": 50.0, "yellow": 3.5, "red_clearance": 1.5}
    return Phase(**(fields | changes))


def crossing_fields() -> dict[str, Any]:
    return {
        "id": "x-1",
        "approaches": tuple(approach(a) for a in "NSEW"),
        "movements": (
            Movement(id="NB", approach="S", turn="through", lanes=("S_0",)),
            Movement(id="SB", approach="N", turn="through", lanes=("N_0",)),
            Movement(id="EB", approach="W", turn="through", lanes=("W_0",)),
            Movement(id="WB", approach="E", turn="through", lanes=("E_0",)),
            Movement(id="P_NS", approach="E", turn="pedestrian"),
        ),
        "phases": (phase(2, ("NB", "P_NS")), phase(4, ("EB",)), phase(6, ("SB",)),
                   phase(8, ("WB",))),
        "rings": (((2,), (4,)), ((6,), (8,))),
        "conflicts": (("NB", "EB"), ("NB", "WB"), ("SB", "EB"), ("SB", "WB"),
                      ("P_NS", "EB"), ("P_NS", "WB")),
        "detectors": (Detector(id="S_0_stop", kind="stop_bar", lane="S_0"),),
    }


def crossing(**changes: Any) -> Intersection:
    return Intersection(**(crossing_fields() | changes))


def named(field: str) -> str:
    """A ``match`` pattern: the message starts with the field it is about."""
    return "^" + re.escape(f"{field}: ")


BAD_IDS = ["", "a b", "a/b", "a+b", "a#", "é", "x" * 65, 5, None]


# --- construction ----------------------------------------------------------------------
def test_a_valid_crossing_builds_and_is_frozen() -> None:
    x = crossing()
    assert x.id == "x-1" and len(x.phases) == 4
    with pytest.raises(AttributeError):
        x.id = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        ApproachConfig("N", 13.9)  # type: ignore[misc]


def test_enum_strings_are_converted_to_members() -> None:
    x = crossing(clearance_policy="hard-floors")
    assert x.clearance_policy is ClearancePolicy.HARD_FLOORS
    assert crossing().clearance_policy is ClearancePolicy.ITE_KINEMATIC
    assert x.movement_by_id["P_NS"].turn is Turn.PEDESTRIAN
    assert x.detectors[0].kind is DetectorKind.STOP_BAR
    # members are kept as they are
    assert Movement(id="m", approach="N", turn=Turn.LEFT).turn is Turn.LEFT


@pytest.mark.parametrize("value", ["sideways", "LEFT", "", 3, None, ["left"]])
def test_wrong_enum_strings_are_rejected_naming_the_field_and_choices(value: Any) -> None:
    with pytest.raises(ValueError, match=named("movement m.turn") + "must be one of 'left'"):
        Movement(id="m", approach="N", turn=value)


@pytest.mark.parametrize(("build", "field"), [
    (lambda: Detector(id="d", kind="loop", lane="N_0"), "detector d.kind"),
    (lambda: crossing(clearance_policy="ite"), "intersection x-1.clearance_policy"),
])
def test_wrong_enum_strings_elsewhere(build: Callable[[], Any], field: str) -> None:
    with pytest.raises(ValueError, match=named(field) + "must be one of"):
        build()


@pytest.mark.parametrize("bad", BAD_IDS)
@pytest.mark.parametrize(("build", "field"), [
    (lambda v: approach(v), "approach.id"),
    (lambda v: approach(lanes=(v,)), "approach N.lanes"),
    (lambda v: Movement(id=v, approach="N", turn="left"), "movement.id"),
    (lambda v: Movement(id="m", approach=v, turn="left"), "movement m.approach"),
    (lambda v: Movement(id="m", approach="N", turn="left", lanes=(v,)), "movement m.lanes"),
    (lambda v: Detector(id=v, kind="queue", lane="N_0"), "detector.id"),
    (lambda v: Detector(id="d", kind="queue", lane=v), "detector d.lane"),
    (lambda v: phase(2, (v,)), "phase 2.movements"),
    (lambda v: crossing(id=v), "intersection.id"),
])
def test_bad_identifiers_are_rejected(build: Callable[[Any], Any], field: str, bad: Any) -> None:
    with pytest.raises(ValueError, match=named(field) + "must be 1-64 characters"):
        build(bad)


def test_identifiers_may_use_the_whole_allowed_alphabet() -> None:
    assert approach("Az09_.:-" + "x" * 56, lanes=()).id.startswith("Az09")


@pytest.mark.parametrize(("build", "expected"), [
    # approaches
    (lambda: approach(speed_mps="fast"), named("approach N.speed_mps") + "must be a number"),
    (lambda: approach(speed_mps=True), named("approach N.speed_mps") + "must be a number"),
    (lambda: approach(speed_mps=None), named("approach N.speed_mps") + "must be a number"),
    (lambda: approach(speed_mps=NAN), named("approach N.speed_mps") + "must be a finite"),
    (lambda: approach(speed_mps=INF), named("approach N.speed_mps") + "must be a finite"),
    (lambda: approach(speed_mps=-1.0), named("approach N.speed_mps") + "must be >= 0"),
    (lambda: approach(speed_mps=60.5), named("approach N.speed_mps") + "must be <= 60"),
    (lambda: approach(grade=NAN), named("approach N.grade") + "must be a finite"),
    (lambda: approach(grade=0.25), named("approach N.grade") + "must be a fraction"),
    (lambda: approach(grade=-0.21), named("approach N.grade") + "must be a fraction"),
    (lambda: approach(lanes=("a", "a")), named("approach N.lanes") + "duplicate id 'a'"),
    # detectors
    (lambda: Detector(id="d", kind="queue", lane="l", position_m=-1.0),
     named("detector d.position_m") + "must be >= 0"),
    (lambda: Detector(id="d", kind="queue", lane="l", position_m=NAN),
     named("detector d.position_m") + "must be a finite"),
    (lambda: Detector(id="d", kind="queue", lane="l", length_m=0.0),
     named("detector d.length_m") + "must be > 0"),
    (lambda: Detector(id="d", kind="queue", lane="l", length_m="6"),
     named("detector d.length_m") + "must be a number"),
    # phases
    (lambda: phase(0), named("phase.number") + "must be within 1..64"),
    (lambda: phase(65), named("phase.number") + "must be within 1..64"),
    (lambda: phase(2.0), named("phase.number") + "must be an integer"),
    (lambda: phase(True), named("phase.number") + "must be an integer"),
    (lambda: phase(2, ()), named("phase 2.movements") + "must name at least one"),
    (lambda: phase(2, ("NB", "NB")), named("phase 2.movements") + "duplicate id 'NB'"),
    (lambda: phase(min_green=20.0, max_green=10.0),
     named("phase 2.max_green") + r"must be >= min_green \(20\), got 10"),
    (lambda: phase(min_green=0.0, max_green=0.0), named("phase 2.max_green") + "must be > 0"),
])
def test_bad_values_are_rejected_naming_the_field(build: Callable[[], Any], expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        build()


@pytest.mark.parametrize("name", ["min_green", "max_green", "yellow", "red_clearance", "walk",
                                  "ped_clearance", "crossing_length_m"])
@pytest.mark.parametrize(("value", "expected"), [
    (-0.5, "must be >= 0"), (NAN, "must be a finite"), (INF, "must be a finite"),
    ("3", "must be a number"), (None, "must be a number"),
])
def test_phase_times_must_be_finite_and_non_negative(name: str, value: Any,
                                                     expected: str) -> None:
    with pytest.raises(ValueError, match=named(f"phase 2.{name}") + expected):
        phase(**{name: value})


def test_phase_has_crossing_only_with_a_crossing_length() -> None:
    assert not phase().has_crossing
    assert phase(crossing_length_m=12.0, walk=7.0, ped_clearance=11.3).has_crossing


# --- intersection-level references and structure ---------------------------------------
def movements_with(**replace: Movement) -> tuple[Movement, ...]:
    return tuple(replace.get(m.id, m) for m in crossing_fields()["movements"])


@pytest.mark.parametrize(("changes", "expected"), [
    ({"approaches": ()}, named("intersection x-1.approaches") + "must not be empty"),
    ({"phases": ()}, named("intersection x-1.phases") + "must not be empty"),
    ({"approaches": (approach("N"), approach("N"), approach("S"), approach("E"),
                     approach("W"))},
     named("intersection x-1.approaches") + "duplicate id 'N'"),
    ({"movements": crossing_fields()["movements"]
      + (Movement(id="NB", approach="S", turn="left"),)},
     named("intersection x-1.movements") + "duplicate id 'NB'"),
    ({"phases": crossing_fields()["phases"] + (phase(2, ("SB",)),)},
     named("intersection x-1.phases") + "duplicate id 2"),
    ({"detectors": (Detector(id="d", kind="queue", lane="S_0"),) * 2},
     named("intersection x-1.detectors") + "duplicate id 'd'"),
    ({"movements": movements_with(NB=Movement(id="NB", approach="Q", turn="through"))},
     named("intersection x-1.movements.NB.approach") + "unknown approach 'Q'"),
    ({"phases": (phase(2, ("NB", "NBL")),) + crossing_fields()["phases"][1:]},
     named("intersection x-1.phases.2.movements") + "unknown movement 'NBL'"),
    ({"conflicts": (("NB", "EB"), ("NB", "XX"))},
     named("intersection x-1.conflicts") + "unknown movement 'XX'"),
    ({"conflicts": (("NB", "NB"),)},
     named("intersection x-1.conflicts") + "movement 'NB' cannot conflict with itself"),
    ({"detectors": (Detector(id="d", kind="queue", lane="Z_9"),)},
     named("intersection x-1.detectors.d.lane") + "unknown lane 'Z_9'"),
    ({"detectors": (Detector(id="d", kind="exit", lane="S_0", movements=("SB",)),)},
     named("intersection x-1.detectors.d.lane") + "an exit detector sits on a departure lane"),
    ({"detectors": (Detector(id="d", kind="exit", lane="N_out", movements=("XB",)),)},
     named("intersection x-1.detectors.d.movements") + "unknown vehicle movement 'XB'"),
    ({"detectors": (Detector(id="d", kind="exit", lane="N_out", movements=("P_NS",)),)},
     named("intersection x-1.detectors.d.movements") + "unknown vehicle movement 'P_NS'"),
    ({"phases": (phase(2, ("NB", "EB")),) + crossing_fields()["phases"][1:]},
     named("intersection x-1.phases.2") + "serves conflicting movements 'NB' and 'EB'"),
    ({"cycle_min": 0.5}, named("intersection x-1.cycle_min") + "must be >= 1"),
    ({"cycle_max": NAN}, named("intersection x-1.cycle_max") + "must be a finite"),
    ({"cycle_min": 120.0, "cycle_max": 90.0},
     named("intersection x-1.cycle_max") + r"must be >= cycle_min \(120\), got 90"),
])
def test_bad_intersections_are_rejected(changes: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        crossing(**changes)


@pytest.mark.parametrize(("rings", "expected"), [
    ((), named("intersection x-1.rings") + "must have at least one ring"),
    (((),), named("intersection x-1.rings") + "every ring needs at least one barrier group"),
    ((((2,), (4,)), ((6, 8),)),
     named("intersection x-1.rings[1]") + "has 1 barrier groups, ring 0 has 2"),
    ((((2,), (4,)), ((6, 8), ())),
     named("intersection x-1.rings[1][1]") + "barrier group is empty"),
    ((((2,), (4,)), ((6,), (8, 2))), named("intersection x-1.rings") + "duplicate id 2"),
    ((((2,), (4,)), ((6,), (8, 9))), named("intersection x-1.rings") + "unknown phase 9"),
    ((((2,), (4,)),), named("intersection x-1.rings") + r"phases \[6, 8\] are in no ring"),
    # 2 (NB) and 8 (WB) would be allowed to run together: refused at load time
    ((((2,), (4,)), ((8,), (6,))),
     named("intersection x-1.rings") + "phases 2 and 8 share barrier group 0 in different "
                                      "rings but serve conflicting movements"),
])
def test_bad_ring_structures_are_rejected(rings: Any, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        crossing(rings=rings)


def test_a_single_ring_sequence_is_the_degenerate_case() -> None:
    x = crossing(rings=(((2, 4, 6, 8),),))
    assert [x.phase_location(n) for n in (2, 4, 6, 8)] == [(0, 0)] * 4


def test_an_exit_detector_names_the_movements_discharging_over_it() -> None:
    x = crossing(detectors=(Detector(id="N_out_0", kind="exit", lane="N_out_0",
                                     position_m=15.0, movements=("NB",)),))
    assert x.detectors[0].kind is DetectorKind.EXIT and x.detectors[0].movements == ("NB",)
    with pytest.raises(ValueError, match="must name the movements"):
        Detector(id="e", kind="exit", lane="N_out_0")
    with pytest.raises(ValueError, match="only exit detectors name movements"):
        Detector(id="q", kind="queue", lane="S_0", movements=("NB",))
    with pytest.raises(ValueError, match="duplicate id 'NB'"):
        Detector(id="e", kind="exit", lane="N_out_0", movements=("NB", "NB"))


def test_detectors_need_no_lane_list_when_approaches_have_none() -> None:
    bare = tuple(approach(a, lanes=()) for a in "NSEW")
    x = crossing(approaches=bare, detectors=(Detector(id="d", kind="queue", lane="any"),))
    assert x.detectors[0].lane == "any"


def test_construction_through_msgspec_converts_and_validates() -> None:
    data = msgspec.to_builtins(crossing())
    assert msgspec.convert(data, Intersection, strict=True) == crossing()
    data["phases"][0]["movements"] = ["NB", "EB"]
    with pytest.raises(msgspec.ValidationError, match="serves conflicting movements"):
        msgspec.convert(data, Intersection, strict=True)


# --- derived views on the shipped 8-phase intersection ---------------------------------
@pytest.fixture(scope="module")
def nema8() -> Intersection:
    return load_intersection(CONFIGS / "nema-8phase.toml")


def test_phase_location_follows_the_nema_layout(nema8: Intersection) -> None:
    assert {n: nema8.phase_location(n) for n in range(1, 9)} == {
        1: (0, 0), 2: (0, 0), 3: (0, 1), 4: (0, 1),
        5: (1, 0), 6: (1, 0), 7: (1, 1), 8: (1, 1)}
    with pytest.raises(KeyError):
        nema8.phase_location(9)


def test_vehicle_approaches_exclude_pedestrian_movements(nema8: Intersection) -> None:
    # phase 2 serves NBT (from the south) and crossing PE (on the east leg)
    assert [a.id for a in nema8.vehicle_approaches(2)] == ["S"]
    assert [a.id for a in nema8.vehicle_approaches(3)] == ["E"]
    # several approaches come back in configuration order
    both = crossing(phases=(phase(2, ("NB", "SB", "P_NS")), phase(4, ("EB",)), phase(8, ("WB",))),
                    rings=(((2,), (4, 8)),))
    assert [a.id for a in both.vehicle_approaches(2)] == ["N", "S"]
    walk_only = crossing(phases=crossing_fields()["phases"] + (phase(9, ("P_NS",)),),
                         rings=(((2, 9), (4,)), ((6,), (8,))))
    assert walk_only.vehicle_approaches(9) == []


def test_phases_conflict_and_movements_conflict(nema8: Intersection) -> None:
    assert nema8.phases_conflict(2, 4) and nema8.phases_conflict(4, 2)
    assert nema8.phases_conflict(1, 2)  # SBL against NBT: same ring, never together anyway
    assert not nema8.phases_conflict(2, 6)  # NBT and SBT
    assert not nema8.phases_conflict(1, 5)  # the two lefts of the north-south group
    assert nema8.movements_conflict("PE", "EBT") and nema8.movements_conflict("EBT", "PE")
    assert not nema8.movements_conflict("PE", "NBT")


def test_lookups_by_key(nema8: Intersection) -> None:
    assert sorted(nema8.phase_by_number) == list(range(1, 9))
    assert nema8.phase_by_number[4].name == "EB through"
    assert nema8.approach_by_id["E"].grade == -0.02
    assert nema8.movement_by_id["WBL"].turn is Turn.LEFT
    assert nema8.clearance_policy is ClearancePolicy.ITE_KINEMATIC
