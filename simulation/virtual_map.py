"""Register maps for any intersection: what a virtual controller of it exposes over Modbus.

:func:`register_map_for` lays out every detector, queue, status and plan register of an
:class:`~edge_agent.model.Intersection` (typically one imported from a SUMO net by
:func:`simulation.net_import.import_net`), packed contiguously per table so that the edge polls
it in the fewest requests:

* input registers from 0: cumulative counts (``uint16``, wrapping), occupancy (``scale 0.001``,
  fraction), speed (``scale 0.01`` m/s, advance and speed loops), queue length per lane with a
  queue detector (``scale 0.1`` m), then the phase of each ring, the mode and the alarms;
* discrete inputs from 0: presence per loop;
* holding registers from 0, all allow-listed: plan id (``uint32``), cycle, offset, per phase
  split, min green and max green (``scale 0.1`` s), the commit, the watchdog;
* coils from 0, allow-listed: hold and force-off per phase.

Loops (stop-bar, advance, speed detectors) are SUMO induction loops; queue detectors are SUMO
lane-area detectors and give the queue length of their lane. :func:`register_map_toml` writes a
map as a file :func:`edge_agent.config.load_toml` reads back (``RegisterMap``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import msgspec

from edge_agent.model import DetectorKind, Intersection
from edge_agent.registers import (Access, DataType, DeviceSettings, Register, RegisterMap,
                                  Signal, Table, Transport)
from simulation.site_toml import toml_value

__all__ = ["INDUCTION_KINDS", "LOOP_KINDS", "register_map_for", "register_map_toml",
           "write_register_map"]

#: Detector kinds served by an induction loop (the others, queue zones, by a lane-area detector)
LOOP_KINDS = (DetectorKind.STOP_BAR, DetectorKind.ADVANCE, DetectorKind.SPEED)
#: ... and exit detectors (spillback), whose loops sit downstream on a departure lane
INDUCTION_KINDS = (*LOOP_KINDS, DetectorKind.EXIT)
_SPEED_KINDS = (DetectorKind.ADVANCE, DetectorKind.SPEED)


def register_map_for(intersection: Intersection, *, device: DeviceSettings | None = None,
                     port: int = 502) -> RegisterMap:
    """The register map of a virtual controller for ``intersection``.

    ``device`` defaults to a TCP device named after the intersection on 127.0.0.1:``port``,
    polled every second. Raises ValueError if the intersection has more registers than a
    table's 65536 addresses (no real intersection does).
    """
    device = device or DeviceSettings(id=f"{intersection.id[:55]}-vc", transport=Transport.TCP,
                                      host="127.0.0.1", port=port)
    regs: list[Register] = []
    nxt = {t: 0 for t in Table}

    def add(name: str, table: Table, signal: Signal, *, type_: DataType = DataType.UINT16,
            access: Access = Access.READ, **extra: object) -> None:
        reg = Register(name=name, table=table, address=nxt[table], type=type_, signal=signal,
                       access=access, **extra)
        nxt[table] += reg.width
        regs.append(reg)

    loops = [d for d in intersection.detectors if d.kind in LOOP_KINDS]
    for i, d in enumerate(loops):
        add(f"count_{i}", Table.INPUT, Signal.DETECTOR_COUNT, detector=d.id, unit="veh")
    for i, d in enumerate(loops):
        add(f"occupancy_{i}", Table.INPUT, Signal.DETECTOR_OCCUPANCY, detector=d.id, scale=0.001)
    exits = [d for d in intersection.detectors if d.kind == DetectorKind.EXIT]
    for i, d in enumerate(exits):
        add(f"exit_occupancy_{i}", Table.INPUT, Signal.DETECTOR_OCCUPANCY, detector=d.id,
            scale=0.001)
    for i, d in enumerate(d for d in loops if d.kind in _SPEED_KINDS):
        add(f"speed_{i}", Table.INPUT, Signal.DETECTOR_SPEED, detector=d.id, scale=0.01,
            unit="m/s")
    queue_lanes = list(dict.fromkeys(d.lane for d in intersection.detectors
                                     if d.kind == DetectorKind.QUEUE))
    for i, lane in enumerate(queue_lanes):
        add(f"queue_{i}", Table.INPUT, Signal.QUEUE_LENGTH, lane=lane, scale=0.1, unit="m")
    for ring in range(1, len(intersection.rings) + 1):
        add(f"phase_ring{ring}", Table.INPUT, Signal.CONTROLLER_PHASE, ring=ring)
    add("mode", Table.INPUT, Signal.CONTROLLER_MODE)
    add("alarms", Table.INPUT, Signal.CONTROLLER_ALARM)
    for i, d in enumerate(loops):
        add(f"presence_{i}", Table.DISCRETE, Signal.DETECTOR_PRESENCE, type_=DataType.BOOL,
            detector=d.id)
    for i, d in enumerate(exits):
        add(f"exit_presence_{i}", Table.DISCRETE, Signal.DETECTOR_PRESENCE, type_=DataType.BOOL,
            detector=d.id)

    w = Access.WRITE
    add("plan_id", Table.HOLDING, Signal.PLAN_ID, type_=DataType.UINT32, access=w)
    add("plan_cycle", Table.HOLDING, Signal.PLAN_CYCLE, access=w, scale=0.1, unit="s")
    add("plan_offset", Table.HOLDING, Signal.PLAN_OFFSET, access=w, scale=0.1, unit="s")
    numbers = [p.number for p in intersection.phases]
    for signal, stem in ((Signal.PLAN_SPLIT, "split"), (Signal.PLAN_MIN_GREEN, "min_green"),
                         (Signal.PLAN_MAX_GREEN, "max_green")):
        for n in numbers:
            add(f"{stem}_{n}", Table.HOLDING, signal, access=w, scale=0.1, unit="s", phase=n)
    add("plan_commit", Table.HOLDING, Signal.PLAN_COMMIT, access=w)
    add("watchdog", Table.HOLDING, Signal.WATCHDOG, access=w)
    for signal, stem in ((Signal.PHASE_HOLD, "hold"), (Signal.PHASE_FORCE_OFF, "force_off"),
                         (Signal.PHASE_RECALL, "recall")):
        for n in numbers:
            add(f"{stem}_{n}", Table.COIL, signal, type_=DataType.BOOL, access=w, phase=n)
    if max(nxt.values()) > 65536:
        raise ValueError(f"intersection {intersection.id}: {max(nxt.values())} registers do "
                         f"not fit one Modbus table")
    return RegisterMap(device=device, registers=tuple(regs))


def _table(name: str, items: Iterable[tuple[str, object]]) -> list[str]:
    lines = [name]
    for key, value in items:
        text = value.value if hasattr(value, "value") else value
        lines.append(f"{key} = {toml_value(text)}")
    return lines


def register_map_toml(regmap: RegisterMap, header: Iterable[str] = ()) -> str:
    """The map as TOML in the layout of ``configs/modbus-*.toml`` (defaults left out)."""
    lines = [f"# {' '.join(h.split())}" for h in header]
    device = msgspec.to_builtins(regmap.device)
    lines += [""] + _table("[device]", device.items())
    for reg in regmap.registers:
        lines += [""] + _table("[[registers]]", msgspec.to_builtins(reg).items())
    return "\n".join(lines).lstrip("\n") + "\n"


def write_register_map(regmap: RegisterMap, path: str | Path,
                       header: Iterable[str] = ()) -> Path:
    """Write :func:`register_map_toml` to ``path``."""
    path = Path(path)
    path.write_text(register_map_toml(regmap, header), encoding="utf-8")
    return path
