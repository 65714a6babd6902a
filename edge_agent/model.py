"""The intersection model: approaches, lanes, movements, detectors and signal phases.

Every value object here is frozen and validates itself at construction: a bad value raises
``ValueError`` naming the field. Objects are ``msgspec.Struct`` so that the same class is the
configuration schema (TOML) and the wire schema (JSON) with strict decoding for free.

Phases follow the NEMA dual-ring form: ``Intersection.rings[r][b]`` lists the phases of ring
``r`` inside barrier group ``b``; phases in different rings of the same barrier group may run
together, phases in different barrier groups never do. A general phase sequence (for example a
SUMO programme) is the degenerate case of one ring with one barrier group. Either way the
conflict matrix is explicit: ``Intersection.conflicts`` lists the movement pairs that must never
have right of way at the same time, and the guard checks the timeline of every plan against it.
"""

from __future__ import annotations

import enum
import math
import re
from functools import cached_property
from typing import Annotated

import msgspec
import msgspec.structs

__all__ = [
    "ApproachConfig",
    "ClearancePolicy",
    "Detector",
    "DetectorKind",
    "Intersection",
    "Movement",
    "Phase",
    "Turn",
    "Contract",
]

#: Identifiers: non-empty, no whitespace or MQTT wildcards, so they are safe in topic names.
IDENT_PATTERN = r"^[A-Za-z0-9_.:\-]{1,64}$"
Ident = Annotated[str, msgspec.Meta(pattern=IDENT_PATTERN)]
_IDENT = re.compile(IDENT_PATTERN)


MAX_PHASE = 64
PhaseNumber = Annotated[int, msgspec.Meta(ge=1, le=MAX_PHASE)]


class Contract(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """Base of every contract value object: frozen, strict on decode.

    msgspec does not inherit ``kw_only``: every subclass states ``kw_only=True`` itself.
    """


def require(condition: bool, field: str, message: str) -> None:
    """Raise ``ValueError`` naming ``field`` unless ``condition`` holds."""
    if not condition:
        raise ValueError(f"{field}: {message}")


def require_finite(value: float, field: str, *, minimum: float | None = None) -> None:
    """Reject non-numbers, NaN/inf and, if given, values below ``minimum``."""
    require(isinstance(value, (int, float)) and not isinstance(value, bool), field,
            f"must be a number, got {value!r}")
    require(math.isfinite(value), field, f"must be a finite number, got {value!r}")
    if minimum is not None:
        require(value >= minimum, field, f"must be >= {minimum:g}, got {value:g}")


def require_int(value: int, field: str, low: int, high: int) -> None:
    """Reject non-integers and integers outside ``low..high``."""
    require(isinstance(value, int) and not isinstance(value, bool), field,
            f"must be an integer, got {value!r}")
    require(low <= value <= high, field, f"must be within {low}..{high}, got {value}")


def require_ident(value: str, field: str) -> None:
    """Identifiers are safe inside MQTT topics and file names: see :data:`Ident`."""
    require(isinstance(value, str) and _IDENT.fullmatch(value) is not None, field,
            f"must be 1-64 characters of A-Z a-z 0-9 _ . : -, got {value!r}")


def coerce_enum(obj: msgspec.Struct, name: str, kind: type[enum.Enum], field: str) -> None:
    """Turn a plain string given in Python into its enum member, or raise naming the field."""
    value = getattr(obj, name)
    if not isinstance(value, kind):
        try:
            msgspec.structs.force_setattr(obj, name, kind(value))
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in kind)
            raise ValueError(f"{field}: must be one of {allowed}, got {value!r}") from None


def require_unique(ids: list, field: str) -> None:
    """Reject duplicated identifiers, naming the first duplicate."""
    seen: set = set()
    for item in ids:
        require(item not in seen, field, f"duplicate id {item!r}")
        seen.add(item)


class Turn(str, enum.Enum):
    """Direction of a movement through the intersection."""

    LEFT = "left"
    THROUGH = "through"
    RIGHT = "right"
    UTURN = "uturn"
    PEDESTRIAN = "pedestrian"


class DetectorKind(str, enum.Enum):
    """What a detector measures and where it sits."""

    STOP_BAR = "stop_bar"  # presence/count loop at the stop line
    ADVANCE = "advance"  # count/speed loop upstream, used for gap-out and arrivals
    QUEUE = "queue"  # lane-area detector (camera/radar zone) measuring queue length
    SPEED = "speed"  # per-lane spot speed
    EXIT = "exit"  # presence loop on a departure lane, watched for spillback (its movements)


class ClearancePolicy(str, enum.Enum):
    """How the guard sizes the yellow change interval.

    ``ite-kinematic`` (the default for new configurations) requires yellow >= the ITE kinematic
    change interval for the approach speed as well as the 3.0 s MUTCD floor. ``hard-floors``
    keeps a designer's own clearance times (imported networks) and enforces only the floors.
    """

    ITE_KINEMATIC = "ite-kinematic"
    HARD_FLOORS = "hard-floors"


class ApproachConfig(Contract, kw_only=True):
    """One approach (leg) of the intersection.

    ``speed_mps`` is the 85th-percentile or posted approach speed used for the ITE change
    interval; ``grade`` is the approach grade as a fraction (+0.02 uphill, -0.03 downhill).
    """

    id: Ident
    speed_mps: float
    grade: float = 0.0
    lanes: tuple[Ident, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        require_ident(self.id, "approach.id")
        require_finite(self.speed_mps, f"approach {self.id}.speed_mps", minimum=0.0)
        require(self.speed_mps <= 60.0, f"approach {self.id}.speed_mps", "must be <= 60 m/s")
        require_finite(self.grade, f"approach {self.id}.grade")
        require(-0.2 <= self.grade <= 0.2, f"approach {self.id}.grade",
                f"must be a fraction within -0.2..0.2, got {self.grade:g}")
        for lane in self.lanes:
            require_ident(lane, f"approach {self.id}.lanes")
        require_unique(list(self.lanes), f"approach {self.id}.lanes")


class Movement(Contract, kw_only=True):
    """A stream of traffic (or pedestrians) from one approach, served by one or more phases."""

    id: Ident
    approach: Ident
    turn: Turn
    lanes: tuple[Ident, ...] = ()

    def __post_init__(self) -> None:
        require_ident(self.id, "movement.id")
        require_ident(self.approach, f"movement {self.id}.approach")
        coerce_enum(self, "turn", Turn, f"movement {self.id}.turn")
        for lane in self.lanes:
            require_ident(lane, f"movement {self.id}.lanes")


class Detector(Contract, kw_only=True):
    """A detector on a lane: ``position_m`` is its distance upstream of the stop line.

    An ``exit`` detector sits on a departure lane instead, ``position_m`` downstream of the
    intersection, and names the ``movements`` that discharge over it: a vehicle standing on it
    means that lane is full back to the intersection (spillback), and those movements are not
    given green into it. Only exit detectors name movements, and every one must.
    """

    id: Ident
    kind: DetectorKind
    lane: Ident
    position_m: float = 0.0
    length_m: float = 2.0
    movements: tuple[Ident, ...] = ()

    def __post_init__(self) -> None:
        require_ident(self.id, "detector.id")
        coerce_enum(self, "kind", DetectorKind, f"detector {self.id}.kind")
        require_ident(self.lane, f"detector {self.id}.lane")
        if self.kind == DetectorKind.EXIT:
            require(len(self.movements) > 0, f"detector {self.id}.movements",
                    "an exit detector must name the movements that discharge over it")
        else:
            require(not self.movements, f"detector {self.id}.movements",
                    f"only exit detectors name movements (this one is {self.kind.value})")
        for m in self.movements:
            require_ident(m, f"detector {self.id}.movements")
        require_unique(list(self.movements), f"detector {self.id}.movements")
        require_finite(self.position_m, f"detector {self.id}.position_m", minimum=0.0)
        require_finite(self.length_m, f"detector {self.id}.length_m", minimum=0.0)
        require(self.length_m > 0.0, f"detector {self.id}.length_m", "must be > 0")


class Phase(Contract, kw_only=True):
    """A signal phase (NEMA phase / signal group) and its configured timing.

    Timing fields are the intersection's own settings: the bounds an engineer allows and the
    default change and clearance intervals. Plans carry their own values, which the guard checks
    against these and against the hard floors.
    """

    number: PhaseNumber
    movements: tuple[Ident, ...]
    min_green: float
    max_green: float
    yellow: float
    red_clearance: float
    name: str = ""
    walk: float = 0.0
    ped_clearance: float = 0.0
    crossing_length_m: float = 0.0  # 0: the phase serves no pedestrian crossing

    def __post_init__(self) -> None:
        require_int(self.number, "phase.number", 1, MAX_PHASE)
        where = f"phase {self.number}"
        for mid in self.movements:
            require_ident(mid, f"{where}.movements")
        require(len(self.movements) > 0, f"{where}.movements", "must name at least one movement")
        require_unique(list(self.movements), f"{where}.movements")
        for name in ("min_green", "max_green", "yellow", "red_clearance", "walk",
                     "ped_clearance", "crossing_length_m"):
            require_finite(getattr(self, name), f"{where}.{name}", minimum=0.0)
        require(self.min_green <= self.max_green, f"{where}.max_green",
                f"must be >= min_green ({self.min_green:g}), got {self.max_green:g}")
        require(self.max_green > 0.0, f"{where}.max_green", "must be > 0")

    @property
    def has_crossing(self) -> bool:
        """True when the phase times a pedestrian crossing."""
        return self.crossing_length_m > 0.0


class Intersection(Contract, kw_only=True, dict=True):
    """A signalised intersection: geometry, detectors, phases, rings/barriers and conflicts.

    ``rings[r][b]`` is the ordered tuple of phase numbers of ring ``r`` in barrier group ``b``;
    every ring has the same number of barrier groups. ``conflicts`` lists movement pairs that
    must never have right of way together. ``cycle_min``/``cycle_max`` bound every plan's cycle.
    """

    id: Ident
    approaches: tuple[ApproachConfig, ...]
    movements: tuple[Movement, ...]
    phases: tuple[Phase, ...]
    rings: tuple[tuple[tuple[int, ...], ...], ...]
    conflicts: tuple[tuple[Ident, Ident], ...]
    cycle_min: float = 30.0
    cycle_max: float = 180.0
    clearance_policy: ClearancePolicy = ClearancePolicy.ITE_KINEMATIC
    detectors: tuple[Detector, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        require_ident(self.id, "intersection.id")
        where = f"intersection {self.id}"
        coerce_enum(self, "clearance_policy", ClearancePolicy, f"{where}.clearance_policy")
        require(len(self.approaches) > 0, f"{where}.approaches", "must not be empty")
        require(len(self.phases) > 0, f"{where}.phases", "must not be empty")
        require_unique([a.id for a in self.approaches], f"{where}.approaches")
        require_unique([m.id for m in self.movements], f"{where}.movements")
        require_unique([p.number for p in self.phases], f"{where}.phases")
        require_unique([d.id for d in self.detectors], f"{where}.detectors")
        approach_ids = {a.id for a in self.approaches}
        for m in self.movements:
            require(m.approach in approach_ids, f"{where}.movements.{m.id}.approach",
                    f"unknown approach {m.approach!r}")
            approach_lanes = self.approach_by_id[m.approach].lanes
            for lane in m.lanes:
                require(not approach_lanes or lane in approach_lanes,
                        f"{where}.movements.{m.id}.lanes",
                        f"lane {lane!r} is not a lane of approach {m.approach!r}")
        movement_ids = {m.id for m in self.movements}
        for p in self.phases:
            for mid in p.movements:
                require(mid in movement_ids, f"{where}.phases.{p.number}.movements",
                        f"unknown movement {mid!r}")
        for a, b in self.conflicts:
            for mid in (a, b):
                require(mid in movement_ids, f"{where}.conflicts", f"unknown movement {mid!r}")
            require(a != b, f"{where}.conflicts", f"movement {a!r} cannot conflict with itself")
        lanes = {lane for a in self.approaches for lane in a.lanes}
        vehicle_ids = {m.id for m in self.movements if m.turn != Turn.PEDESTRIAN}
        for d in self.detectors:
            if d.kind == DetectorKind.EXIT:  # on a departure lane: not an approach's
                require(d.lane not in lanes, f"{where}.detectors.{d.id}.lane",
                        f"an exit detector sits on a departure lane, {d.lane!r} is an "
                        f"approach lane")
                for mid in d.movements:
                    require(mid in vehicle_ids, f"{where}.detectors.{d.id}.movements",
                            f"unknown vehicle movement {mid!r}")
                continue
            require(not lanes or d.lane in lanes, f"{where}.detectors.{d.id}.lane",
                    f"unknown lane {d.lane!r}")
        for p in self.phases:
            for i, a in enumerate(p.movements):
                for b in p.movements[i + 1:]:
                    require(not self.movements_conflict(a, b), f"{where}.phases.{p.number}",
                            f"serves conflicting movements {a!r} and {b!r}")
        self._validate_rings(where)
        for name in ("cycle_min", "cycle_max"):
            require_finite(getattr(self, name), f"{where}.{name}", minimum=1.0)
        require(self.cycle_min <= self.cycle_max, f"{where}.cycle_max",
                f"must be >= cycle_min ({self.cycle_min:g}), got {self.cycle_max:g}")
        self._validate_rings_concurrency(where)

    def _validate_rings(self, where: str) -> None:
        require(len(self.rings) > 0, f"{where}.rings", "must have at least one ring")
        groups = len(self.rings[0])
        require(groups > 0, f"{where}.rings", "every ring needs at least one barrier group")
        placed: list[int] = []
        for r, ring in enumerate(self.rings):
            require(len(ring) == groups, f"{where}.rings[{r}]",
                    f"has {len(ring)} barrier groups, ring 0 has {groups}")
            for g, group in enumerate(ring):
                require(len(group) > 0, f"{where}.rings[{r}][{g}]", "barrier group is empty")
                placed.extend(group)
        require_unique(placed, f"{where}.rings")
        numbers = {p.number for p in self.phases}
        for n in placed:
            require(n in numbers, f"{where}.rings", f"unknown phase {n}")
        missing = sorted(numbers - set(placed))
        require(not missing, f"{where}.rings", f"phases {missing} are in no ring")

    def _validate_rings_concurrency(self, where: str) -> None:
        # Phases that the ring structure lets run together must not conflict: such a
        # configuration could never be timed safely, so it is refused at load time.
        for group in range(len(self.rings[0])):
            for r1 in range(len(self.rings)):
                for r2 in range(r1 + 1, len(self.rings)):
                    for a in self.rings[r1][group]:
                        for b in self.rings[r2][group]:
                            require(not self.phases_conflict(a, b), f"{where}.rings",
                                    f"phases {a} and {b} share barrier group {group} in "
                                    f"different rings but serve conflicting movements")

    # --- derived views (cached: the object is immutable) -------------------------------
    @cached_property
    def phase_by_number(self) -> dict[int, Phase]:
        """Phases keyed by their number."""
        return {p.number: p for p in self.phases}

    @cached_property
    def approach_by_id(self) -> dict[str, ApproachConfig]:
        """Approaches keyed by id."""
        return {a.id: a for a in self.approaches}

    @cached_property
    def movement_by_id(self) -> dict[str, Movement]:
        """Movements keyed by id."""
        return {m.id: m for m in self.movements}

    @cached_property
    def _conflict_set(self) -> frozenset[frozenset[str]]:
        return frozenset(frozenset(pair) for pair in self.conflicts)

    def movements_conflict(self, a: str, b: str) -> bool:
        """True when movements ``a`` and ``b`` must never have right of way together."""
        return frozenset((a, b)) in self._conflict_set

    def phases_conflict(self, a: int, b: int) -> bool:
        """True when any movement of phase ``a`` conflicts with any movement of phase ``b``."""
        pa, pb = self.phase_by_number[a], self.phase_by_number[b]
        return any(self.movements_conflict(x, y) for x in pa.movements for y in pb.movements)

    def phase_location(self, number: int) -> tuple[int, int]:
        """(ring, barrier group) of a phase."""
        for r, ring in enumerate(self.rings):
            for g, group in enumerate(ring):
                if number in group:
                    return r, g
        raise KeyError(number)

    def vehicle_approaches(self, number: int) -> list[ApproachConfig]:
        """The approaches a phase's vehicle movements come from (pedestrians excluded)."""
        ids = {
            self.movement_by_id[m].approach
            for m in self.phase_by_number[number].movements
            if self.movement_by_id[m].turn != Turn.PEDESTRIAN
        }
        return [a for a in self.approaches if a.id in ids]
