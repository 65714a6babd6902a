"""The coils the edge runtime writes besides plans: recalls and local actuation.

:class:`ControllerCoils` is the part of :class:`~edge_agent.runtime.EdgeRuntime`'s report
step that drives the controller's per-phase coils:

* ``phase.recall``: the phases of failed detectors go on recall (and come off it), written
  whenever the set changes and again until a write succeeds: without its detector a phase
  must still be served every cycle. Nothing is written to a faulty controller.
* ``phase.hold`` / ``phase.force_off``: local actuation
  (:class:`~edge_agent.local_actuation.LocalActuation`) decides inside the bounds of the plan
  it is given (None: it stands aside and releases the coils it set) and only the coils whose
  value changes are written. A failed write leaves that coil unknown, so it is written again
  at the next poll; a write the allow-list refuses is a bug, said loudly, and actuation stops.

Writes go through the controller port's allow-listed ``write``; failures are logged once on
entering the error state through the runtime's write :class:`~edge_agent.modbus_core.HealthLog`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from edge_agent.errors import DeviceError
from edge_agent.local_actuation import LocalActuation
from edge_agent.modbus_core import HealthLog
from edge_agent.plan import TimingPlan
from edge_agent.registers import RegisterMap, Signal
from edge_agent.runtime_ports import ControllerPort, RuntimeStats

__all__ = ["ControllerCoils"]

log = logging.getLogger("edge_agent.runtime")  # said as the runtime's, where operators look


class ControllerCoils:
    """Recall and actuation coils of one controller (module docstring).

    ``actuation_enabled`` is the agent file's choice; actuation runs only where the register
    map also has hold/force-off coils (said once at start either way).
    """

    def __init__(self, regmap: RegisterMap, controller: ControllerPort,
                 actuation: LocalActuation, *,
                 actuation_enabled: bool, write_log: HealthLog, stats: RuntimeStats) -> None:
        self.controller, self.stats, self._log = controller, stats, write_log
        #: recall coil name -> phase, and the phases last put on recall (none of ours at start)
        self._recall_coils = {r.name: r.phase for r in regmap.registers
                              if r.signal == Signal.PHASE_RECALL and r.phase is not None}
        self._recall_written: frozenset[int] = frozenset()
        #: Local actuation: always fed the polls; deciding only while enabled.
        self.actuation = actuation
        self.actuating = actuation_enabled and actuation.available
        self._on = False
        self._refused = False
        self._said: str | None = None  # the decisions last logged, so each is said once
        if not actuation.available:
            log.info("register map has no allow-listed phase.hold/phase.force_off coils: "
                     "local actuation is off")
        elif not self.actuating:
            log.info("local actuation is off ([actuation] enabled = false)")

    def recall(self, now: float, wanted: frozenset[int], failed: Collection[str], *,
               writable: bool) -> None:
        """Put ``wanted`` phases on recall and the others off (``failed``: their detectors).

        ``writable``: the controller may be written now (not in FAULT).
        """
        if not self._recall_coils or wanted == self._recall_written:
            return
        if not self.controller.connected or not writable:
            return  # nothing is written to a faulty controller; retried once it is back
        try:
            for name, phase in self._recall_coils.items():
                self.controller.write(name, phase in wanted)
        except DeviceError as exc:
            self._log.failed(now, f"recall not written: {exc}")
            return
        self._log.ok(now)
        if wanted:
            log.warning("phases %s on recall: failed detectors %s", sorted(wanted),
                        sorted(failed))
        self._recall_written = wanted

    def actuate(self, now: float, plan: TimingPlan | None, failed: Collection[str],
                why_off: str) -> None:
        """Decide inside ``plan``'s bounds (None: stand aside, ``why_off`` says why) and write
        the coils whose value changes."""
        if self._refused:
            return
        if (plan is not None) != self._on:
            self._on = plan is not None
            log.info("local actuation %s", f"on, inside plan {plan.plan_id}" if plan else
                     f"off ({why_off}): hold/force-off coils released")
        writes = self.actuation.update(now, plan, failed)
        said = "; ".join(d.reason for d in self.actuation.decisions.values())
        if said and said != self._said:
            log.debug("actuation: %s", said)
        self._said = said
        if not writes or not self.controller.connected:
            return  # a lost link: written when it is back
        for name, value in writes:
            try:
                self.controller.write(name, value)
            except DeviceError as exc:
                self.actuation.unsure(name)
                self._log.failed(now, f"coil {name} not written: {exc}")
                return
            except PermissionError as exc:  # checked at start: a bug, said loudly, then off
                self.actuation.unsure(name)
                self.actuating, self._refused = False, True
                log.error("local actuation stopped: %s", exc)
                return
            self.actuation.written(name, value)
            self.stats.coil_writes += 1
        self._log.ok(now)
