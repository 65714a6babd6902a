"""Map single-ring timing plans to SUMO signal programmes and back.

A SUMO static programme is a list of ``(state, duration)``: one character per controlled link
(``G`` priority green, ``g`` permissive green, ``y`` yellow, ``r`` red, ``s`` stop then go as
for a right turn on red, ``u`` red-yellow, ``o``/``O`` no signal). An imported intersection
(:mod:`simulation.net_import`) is in the general-sequence form: one ring, one barrier group, one
phase per green state of the designer's programme, and ``phase_states[number]`` is that state.

:func:`plan_to_program` writes, for every phase ``i`` of the ring followed by phase ``j``:

* green ``S_i`` for ``split - yellow - red_clearance`` s: links the phase serves keep the
  designer's ``G``/``g``; links the designer shows ``s``, ``o`` or ``O`` keep that (a right
  turn on red stays a right turn on red); every other link is ``r``;
* yellow ``Y(i, j)`` for ``yellow`` s: links green in ``i`` and in ``j`` keep their character,
  links green in ``i`` only turn ``y``, the rest is as in ``S_i``;
* red clearance ``R(i, j)`` for ``red_clearance`` s, only if > 0: links green in both keep
  their character, the rest as in ``S_i`` (the links that were yellow are now ``r``).

:func:`program_to_plan` reads that form back exactly, for any plan timed to the millisecond
(SUMO keeps time in milliseconds, so every interval is rounded to 1 ms on the way out). Where
the next phase serves only links that continue from the previous one with the same characters,
``R(i, j)`` equals ``S_j`` and a programme may be readable two ways; it is read the one way
that uses every entry, and a programme that still fits two plans is refused (ValueError)
rather than guessed. With ``lenient=True`` it reads a designer's own programme instead:
every entry with a green and no ``y`` starts a phase, following entries with a ``y`` count as
yellow and the others as red clearance; ``apply_floors=True`` then raises yellows below the
3 s MUTCD floor as :func:`simulation.net_import.import_net` does.

Multi-ring (NEMA dual-ring) plans are refused: SUMO import produces single-ring intersections,
and exporting concurrent rings to one SUMO programme is future work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from edge_agent.guard import YELLOW_FLOOR_S
from edge_agent.model import Intersection
from edge_agent.plan import PhaseTiming, PlanSource, TimingPlan, phase_windows

__all__ = [
    "ProgramGroup",
    "green_links",
    "is_green_state",
    "plan_to_program",
    "program_to_plan",
    "program_xml",
    "split_program",
    "sumo_offset",
]

Program = Sequence[tuple[str, float]]

GREEN = "Gg"
#: Characters of a designer's green state that a phase keeps for links it does not serve.
KEPT = "soO"
STATE_CHARS = frozenset("ryGgsuoO")
_MAX_PARSES = 2  # finding a second reading is enough to call a programme ambiguous


def _ms(value: float) -> float:
    """SUMO times are whole milliseconds."""
    return round(value, 3)


def green_links(state: str) -> frozenset[int]:
    """Link indices with a green (``G`` or ``g``) in ``state``."""
    return frozenset(i for i, c in enumerate(state) if c in GREEN)


def is_green_state(state: str) -> bool:
    """A designer's green phase: some link green and none yellow."""
    return any(c in GREEN for c in state) and "y" not in state


def _rest(c: str) -> str:
    return c if c in KEPT else "r"


def _green_state(si: str) -> str:
    return "".join(c if c in GREEN else _rest(c) for c in si)


def _yellow_state(si: str, sj: str) -> str:
    return "".join(c if c in GREEN and d in GREEN else "y" if c in GREEN else _rest(c)
                   for c, d in zip(si, sj))


def _red_state(si: str, sj: str) -> str:
    return "".join(c if c in GREEN and d in GREEN else _rest(c) for c, d in zip(si, sj))


def _check_states(phase_states: Mapping[int, str], numbers: Sequence[int]) -> None:
    lengths = {len(phase_states[n]) for n in phase_states}
    if len(lengths) > 1:
        raise ValueError(f"phase_states: states differ in length {sorted(lengths)}")
    for n in numbers:
        if n not in phase_states:
            raise ValueError(f"phase {n}: no green state in phase_states")
    for n, state in phase_states.items():
        bad = set(state) - STATE_CHARS
        if bad:
            raise ValueError(f"phase {n}: state {state!r} has invalid characters {sorted(bad)}")


def plan_to_program(plan: TimingPlan, intersection: Intersection,
                    phase_states: Mapping[int, str]) -> list[tuple[str, float]]:
    """The SUMO phases ``(state, duration)`` that run ``plan``'s single ring once.

    Raises ValueError for multi-ring plans, a plan for another intersection, phases without a
    state, and intervals SUMO cannot run (green <= 0, yellow <= 0: every phase change needs a
    yellow entry, and the guard demands >= 3 s anyway).
    """
    if len(plan.rings) != 1:
        raise ValueError(f"plan has {len(plan.rings)} rings: only single-ring plans map to a "
                         f"SUMO programme (NEMA dual-ring export is future work)")
    if plan.intersection_id != intersection.id:
        raise ValueError(f"plan is for {plan.intersection_id!r}, not {intersection.id!r}")
    ring = plan.rings[0]
    for t in ring:
        if t.phase not in intersection.phase_by_number:
            raise ValueError(f"phase {t.phase}: not a phase of {intersection.id!r}")
    _check_states(phase_states, [t.phase for t in ring])
    program: list[tuple[str, float]] = []
    for k, t in enumerate(ring):
        si, sj = phase_states[t.phase], phase_states[ring[(k + 1) % len(ring)].phase]
        green, yellow, red = _ms(t.green), _ms(t.yellow), _ms(t.red_clearance)
        if green <= 0.0:
            raise ValueError(f"phase {t.phase}: green {green:g} s must be > 0")
        if yellow <= 0.0:
            raise ValueError(f"phase {t.phase}: yellow {yellow:g} s must be > 0")
        program.append((_green_state(si), green))
        program.append((_yellow_state(si, sj), yellow))
        if red > 0.0:
            program.append((_red_state(si, sj), red))
    return program


@dataclass(frozen=True, slots=True)
class ProgramGroup:
    """One green entry of a designer's programme and the transitional entries after it."""

    phase: int  # phase number the green state belongs to
    entry: int  # index of the green entry in the programme
    state: str
    green: float
    yellow: float  # total of the following entries that show a 'y'
    red: float  # total of the following transitional entries without a 'y'


def split_program(program: Program,
                  phase_states: Mapping[int, str] | None = None) -> list[ProgramGroup]:
    """Group a designer's programme into green phases with their change intervals.

    Without ``phase_states`` the green entries are numbered 1..n in programme order (that is
    how import numbers phases); with them, each green entry is the lowest-numbered unused phase
    whose state equals it. A green entry identical to the one just before it (nothing in
    between) extends that green. Transitional entries before the first green belong to the
    last phase: the programme is a cycle.
    """
    groups: list[list] = []
    used: set[int] = set()
    lead_yellow = lead_red = 0.0
    for index, (state, duration) in enumerate(program):
        if is_green_state(state):
            last = groups[-1] if groups else None
            if last is not None and last[2] == state and last[4] == last[5] == 0.0:
                last[3] += duration
                continue
            if phase_states is None:
                number = len(groups) + 1
            else:
                candidates = sorted(n for n, s in phase_states.items() if s == state
                                    and n not in used)
                if not candidates:
                    raise ValueError(f"programme entry {index} ({state!r}) is the green state "
                                     f"of no unused phase")
                number = candidates[0]
            used.add(number)
            groups.append([number, index, state, float(duration), 0.0, 0.0])
        elif groups:
            groups[-1][4 if "y" in state else 5] += duration
        elif "y" in state:
            lead_yellow += duration
        else:
            lead_red += duration
    if not groups:
        raise ValueError("programme has no green phase (no entry with a G/g and no y)")
    groups[-1][4] += lead_yellow
    groups[-1][5] += lead_red
    return [ProgramGroup(*g) for g in groups]


def _parse_strict(program: Program,
                  phase_states: Mapping[int, str]) -> list[list[tuple[int, float, float, float]]]:
    """Every reading of ``program`` as written by :func:`plan_to_program` (up to two)."""
    by_state: dict[str, list[int]] = {}
    for number in sorted(phase_states):
        by_state.setdefault(_green_state(phase_states[number]), []).append(number)
    n = len(program)
    found: list[list[tuple[int, float, float, float]]] = []

    def next_phase(state: str, used: frozenset[int]) -> int | None:
        # Phases with identical states are indistinguishable in SUMO: take them in order.
        return next((p for p in by_state.get(state, ()) if p not in used), None)

    def walk(pos: int, cur: int, used: frozenset[int], first: int,
             acc: list[tuple[int, float, float, float]]) -> None:
        for has_red in (False, True):
            if len(found) >= _MAX_PARSES:
                return
            end = pos + 2 + has_red
            if end > n:
                continue
            nxt = first if end == n else next_phase(program[end][0], used)
            if nxt is None:
                continue
            si, sj = phase_states[cur], phase_states[nxt]
            if program[pos + 1][0] != _yellow_state(si, sj):
                continue
            if has_red and program[pos + 2][0] != _red_state(si, sj):
                continue
            red = program[pos + 2][1] if has_red else 0.0
            entry = (cur, program[pos][1], program[pos + 1][1], red)
            if end == n:
                found.append(acc + [entry])
            else:
                walk(end, nxt, used | {nxt}, first, acc + [entry])

    if n:
        first = next_phase(program[0][0], frozenset())
        if first is not None:
            walk(0, first, frozenset({first}), first, [])
    return found


def program_to_plan(program: Program, intersection: Intersection,
                    phase_states: Mapping[int, str], *, plan_id: int,
                    offset: float = 0.0, offset_reference: int | None = None,
                    activation: float = 0.0, source: PlanSource = PlanSource.TIME_OF_DAY,
                    author: str = "sumo-program", expiry: float | None = None,
                    explanation: str = "", cycle: float | None = None,
                    bounds: Mapping[int, tuple[float, float]] | None = None,
                    lenient: bool = False, apply_floors: bool = False) -> TimingPlan:
    """The single-ring plan a SUMO programme runs; the inverse of :func:`plan_to_program`.

    A programme carries states and durations only. The rest comes from the arguments: the
    actuation bounds ``bounds[phase] = (min_green, max_green)`` and the pedestrian timings
    default to the intersection's configured values; ``cycle`` defaults to the programme's
    total (give it to keep a plan cycle that differs from the sum of its splits by rounding);
    ``offset_reference`` defaults to the first phase. ``lenient``/``apply_floors``: see the
    module docstring. Raises ValueError for a programme that is not in the form
    :func:`plan_to_program` writes (unless lenient) or that reads as two different plans.
    """
    if not program:
        raise ValueError("programme is empty")
    _check_states(phase_states, list(phase_states))
    if lenient:
        entries = [(g.phase, g.green, g.yellow, g.red)
                   for g in split_program(program, phase_states)]
    else:
        readings = _parse_strict(program, phase_states)
        if not readings:
            raise ValueError("programme is not in the form plan_to_program writes for these "
                             "phase states (pass lenient=True for a designer's programme)")
        if len(readings) > 1:
            raise ValueError("programme reads as two different plans: a red clearance equals "
                             "the next phase's green state")
        entries = readings[0]
    bounds = bounds or {}
    timings = []
    for number, green, yellow, red in entries:
        phase = intersection.phase_by_number.get(number)
        if phase is None:
            raise ValueError(f"phase {number}: not a phase of {intersection.id!r}")
        if apply_floors:
            yellow = max(yellow, YELLOW_FLOOR_S)
        low, high = bounds.get(number, (phase.min_green, phase.max_green))
        timings.append(PhaseTiming(
            phase=number, split=_ms(green + yellow + red), yellow=_ms(yellow),
            red_clearance=_ms(red), min_green=low, max_green=high, walk=phase.walk,
            ped_clearance=phase.ped_clearance))
    total = _ms(sum(t.split for t in timings))
    return TimingPlan(
        plan_id=plan_id, intersection_id=intersection.id,
        cycle=total if cycle is None else cycle, offset=offset,
        offset_reference=timings[0].phase if offset_reference is None else offset_reference,
        rings=(tuple(timings),), activation=activation, source=source, author=author,
        expiry=expiry, explanation=explanation)


def sumo_offset(plan: TimingPlan) -> float:
    """The ``tlLogic`` offset that runs :func:`plan_to_program`'s output on the plan's offset.

    SUMO starts a programme's first entry at every time ``t`` with ``t % cycle == offset`` (a
    positive offset delays the programme), and the first entry is the green of the ring's
    first phase; the plan wants its reference phase's green to start at ``plan.offset``.
    """
    windows = phase_windows(plan)
    if plan.offset_reference not in windows:
        raise ValueError(f"offset reference phase {plan.offset_reference} is not in the plan")
    start = windows[plan.offset_reference][0]
    return _ms((plan.offset - start) % plan.cycle)


def _fmt(seconds: float) -> str:
    text = f"{_ms(seconds):.3f}".rstrip("0").rstrip(".")
    return text or "0"


def program_xml(tls_id: str, program_id: str, phases: Program, offset: float = 0.0) -> str:
    """An ``<additional>`` document with one static ``<tlLogic>`` SUMO can load (``-a``).

    SUMO makes the last programme it loads for a traffic light the active one, so loading this
    file after the net switches ``tls_id`` to ``program_id`` from the start.
    """
    if not phases:
        raise ValueError("a SUMO programme needs at least one phase")
    lengths = {len(state) for state, _ in phases}
    if len(lengths) != 1:
        raise ValueError(f"phase states differ in length {sorted(lengths)}")
    lines = ["<additional>",
             f"    <tlLogic id={quoteattr(tls_id)} type=\"static\" "
             f"programID={quoteattr(program_id)} offset=\"{_fmt(offset)}\">"]
    for state, duration in phases:
        if set(state) - STATE_CHARS:
            raise ValueError(f"state {state!r} has invalid characters")
        if _ms(duration) <= 0.0:
            raise ValueError(f"phase {state!r}: duration {duration!r} must be > 0")
        lines.append(f"        <phase duration=\"{_fmt(duration)}\" state={quoteattr(state)}/>")
    lines += ["    </tlLogic>", "</additional>", ""]
    return "\n".join(lines)
