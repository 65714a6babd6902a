"""Plans for the gate's tests on the generated corridor (imported by test_gate*.py)."""

from __future__ import annotations

from edge_agent.model import Intersection
from edge_agent.plan import PhaseTiming, TimingPlan
from simulation.net_import import ImportedNet

#: The corridor's main street (netgenerate's names: west end "left0", east end "right0").
MAIN_EDGES = {"left0A0", "B0A0", "A0B0", "right0B0"}


def main_phase(imported: ImportedNet, x: Intersection) -> int:
    """The phase of ``x`` that serves the main street."""
    approach = {m.id: imported.edges[m.approach] for m in x.movements}
    (number,) = [p.number for p in x.phases if any(approach[m] in MAIN_EDGES for m in p.movements)]
    return number


def two_phase(iid: str, *, side_green: float, main_green: float, main: int, yellow: float = 4.0,
              offset: float = 0.0) -> TimingPlan:
    """A two-phase plan giving ``main_green`` to phase ``main`` and ``side_green`` to the other."""
    greens = {main: main_green, 3 - main: side_green}
    timings = tuple(PhaseTiming(phase=n, split=greens[n] + yellow, yellow=yellow, red_clearance=0.0,
                                min_green=5.0, max_green=60.0) for n in (1, 2))
    return TimingPlan(plan_id=7, intersection_id=iid, cycle=sum(t.split for t in timings),
                      offset=offset, offset_reference=1, rings=(timings,), activation=0.0,
                      source="adaptive", author="test-gate")
