"""A virtual signal controller: a pymodbus server that serves a register map, over TCP on
127.0.0.1 or, for a map whose device is ``rtu``, as an RTU slave on the map's serial port.

What stands behind the registers:

* always a :class:`~simulation.virtual_bank.RegisterBank` (set values with ``bank.store``; every
  write from the wire lands in ``bank.write_log``): the in-memory fake for fast tests;
* with an ``intersection``, a :class:`~simulation.virtual_logic.ControllerLogic`: committed plans
  are checked with the guard (refused ones raise an alarm), mode and alarm registers kept;
* with a ``scenario``, a SUMO intersection (:class:`~simulation.virtual_sumo.SumoIntersection`):
  detectors measured, the light run by the committed plan or the net's own programme, hold and
  force-off coils, and the watchdog fallback.

Over TCP the server listens on 127.0.0.1 only, on the given port or one the OS picks
(``port=0``); over RTU it opens ``device.serial_port`` with the map's baud rate, parity and
stop bits (the edge's end is the other end of the line: a cable, or a pty pair in tests). It
uses pymodbus' ``SimDevice`` datastore with an action hook, so every request is answered from
the bank and every write goes through the bank's allow-list. :meth:`VirtualController.loopback_client`
gives the same device without sockets (the contract tests' fake).

Demo: ``python -m simulation.virtual_controller --scenario DIR --register-map FILE --port N``
(a missing FILE is generated for the intersection and written there).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
from pymodbus.constants import ExcCodes
from pymodbus import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice
from pymodbus.simulator.simutils import SimUtils

from edge_agent.config import load_site, load_toml
from edge_agent.errors import ConfigError, DeviceError
from edge_agent.model import Intersection
from edge_agent.registers import Access, DeviceSettings, RegisterMap, Table, Transport
from simulation.net_import import ImportedNet, import_net
from simulation.scenario import Scenario, load_scenario
from simulation.virtual_bank import BIT_TABLES, LoopbackClient, RegisterBank, RequestRefused
from simulation.virtual_logic import ControllerLogic
from simulation.virtual_map import register_map_for, write_register_map
from simulation.virtual_sumo import SumoIntersection

__all__ = ["VirtualController", "main", "serve", "serve_in_process"]

_log = logging.getLogger(__name__)
HOST = "127.0.0.1"  # a virtual controller never listens beyond this machine
_FC_TABLE = {1: Table.COIL, 5: Table.COIL, 15: Table.COIL, 2: Table.DISCRETE,
             3: Table.HOLDING, 6: Table.HOLDING, 16: Table.HOLDING, 4: Table.INPUT}
_READS = (1, 2, 3, 4)


class VirtualController:
    """A register map served over Modbus TCP on 127.0.0.1 (see the module docstring).

    Args:
        regmap: the registers to serve (its device's ``unit_id`` is the server's).
        intersection: check committed plans against it (in-memory mode).
        scenario, tls_id, imported, speed, seed, seconds: run that SUMO traffic light behind
            the registers (see :class:`SumoIntersection`); the intersection is then the
            imported one.
        port: TCP port on 127.0.0.1; 0 lets the OS pick (read :attr:`port` after start).
        watchdog_timeout_s, clock: the watchdog's limit and clock (ControllerLogic).
    """

    def __init__(self, regmap: RegisterMap, *, intersection: Intersection | None = None,
                 scenario: Scenario | str | os.PathLike[str] | None = None,
                 tls_id: str | None = None, imported: ImportedNet | None = None,
                 port: int = 0, speed: float | None = 1.0, seed: int | None = 0,
                 seconds: float | None = None, watchdog_timeout_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.regmap, self.unit_id = regmap, regmap.device.unit_id
        self.bank = RegisterBank(regmap)
        self.sim: SumoIntersection | None = None
        self.logic: ControllerLogic | None = None
        if scenario is not None and intersection is not None:
            raise ValueError("give an intersection or a scenario (which brings its own), "
                             "not both")
        if scenario is not None:
            self.sim = SumoIntersection(scenario, self.bank, tls_id=tls_id, imported=imported,
                                        speed=speed, seed=seed, seconds=seconds,
                                        watchdog_timeout_s=watchdog_timeout_s, clock=clock)
            self.logic, intersection = self.sim.logic, self.sim.intersection
        elif intersection is not None:
            self.logic = ControllerLogic(self.bank, intersection,
                                         watchdog_timeout_s=watchdog_timeout_s, clock=clock)
        self.intersection = intersection
        self._port = port
        self._generation = 0
        self._running = False
        self._muted = False
        self._tcp = True
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shutdown: asyncio.Event | None = None

    # ------------------------------------------------------------------ life cycle
    def start(self, *, tcp: bool = True) -> VirtualController:
        """Start SUMO (if any) and the server (``tcp=False``: loopback clients only)."""
        self._tcp = tcp
        if self.sim is not None:
            self.sim.start()
        try:
            self.start_server()
        except DeviceError:
            if self.sim is not None:
                self.sim.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server and SUMO. Safe to call twice."""
        self.stop_server()
        if self.sim is not None:
            self.sim.stop()

    def __enter__(self) -> VirtualController:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The TCP port (the OS's choice once started with ``port=0``)."""
        return self._port

    @property
    def running(self) -> bool:
        """True while the device answers."""
        return self._running

    @property
    def muted(self) -> bool:
        """True while the device keeps connections open but answers nothing."""
        return self._muted

    def mute(self, muted: bool = True) -> None:
        """Stop answering requests (a hung controller or a dead serial line behind a gateway)
        without closing anything; ``mute(False)`` answers again."""
        self._muted = muted

    @property
    def generation(self) -> int:
        """Incremented at every (re)start: connections do not survive a restart."""
        return self._generation

    def start_server(self) -> None:
        """Answer again after :meth:`stop_server`; over TCP on 127.0.0.1, on the same port."""
        if not self._tcp:
            self._generation += 1
            self._running = True
            return
        if self._thread is not None:
            raise RuntimeError("the server is already running")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._serve_thread, args=(ready, failure),
                                        name=f"modbus-server-{self.regmap.device.id}",
                                        daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise DeviceError(f"virtual controller cannot listen on {self._where()}: "
                              f"{failure[0]}") from failure[0]
        self._generation += 1
        self._running = True

    def stop_server(self) -> None:
        """Stop answering: close the listener and every connection."""
        self._running = False
        if self._thread is None or self._loop is None or self._shutdown is None:
            return
        self._loop.call_soon_threadsafe(self._shutdown.set)
        self._thread.join()
        self._thread = None

    def _serve_thread(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(ready))
        except (RuntimeError, OSError) as exc:  # pymodbus: "Could not start listen"
            failure.append(exc)
        finally:
            ready.set()
            loop.close()

    async def _serve(self, ready: threading.Event) -> None:
        self._shutdown = asyncio.Event()
        device = self.regmap.device
        server: ModbusTcpServer | ModbusSerialServer
        if device.transport == Transport.RTU:
            server = ModbusSerialServer(self._device(), framer=FramerType.RTU,
                                        port=device.serial_port, baudrate=device.baudrate,
                                        parity=device.parity, stopbits=device.stopbits,
                                        bytesize=8)
            await server.serve_forever(background=True)  # RuntimeError: cannot open the port
        else:
            server = ModbusTcpServer(self._device(), address=(HOST, self._port))
            await server.serve_forever(background=True)
            self._port = server.transport.sockets[0].getsockname()[1]
        ready.set()
        await self._shutdown.wait()
        await server.shutdown()
        # Requests pymodbus queued while it shut down would be left as never-awaited
        # coroutines: let them start, then cancel them with anything else still pending.
        await asyncio.sleep(0.01)
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _device(self) -> SimDevice:
        tables: dict[Table, list[SimData]] = {t: [] for t in Table}
        for reg in self.regmap.registers:
            table = Table(reg.table)
            if table in BIT_TABLES:
                tables[table].append(SimData(reg.address, values=False, datatype=SimType.BITS))
            else:
                tables[table].append(SimData(reg.address, count=reg.width, values=0,
                                             datatype=SimType.REGISTERS,
                                             readonly=reg.access != Access.WRITE))
        for table, entries in tables.items():  # pymodbus needs every table; leave it empty
            if not entries:
                entries.append(SimData(0, values=False, datatype=SimType.BITS)
                               if table in BIT_TABLES else SimData(0, datatype=SimType.INVALID))
        return SimDevice(self.unit_id, action=self._action, simdata=(
            tables[Table.COIL], tables[Table.DISCRETE], tables[Table.HOLDING],
            tables[Table.INPUT]))

    async def _action(self, fc: int, start: int, address: int, count: int,
                      registers: list[int], values: list[int] | list[bool] | None
                      ) -> ExcCodes | None:
        # pymodbus calls this before it answers from ``registers`` (or writes ``values``):
        # the bank is the truth, so reads are refreshed from it and writes go through it.
        table = _FC_TABLE.get(fc)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        while self._muted and self._running:  # hold the request: the client times out
            await asyncio.sleep(0.01)
        try:
            if values is not None and fc not in _READS:
                self.handle(table, address, values=list(values))
                return None
            if table in BIT_TABLES:  # whole block: 16 bits a register, bit 0 first
                bits = self.handle(table, start * 16, count=len(registers) * 16)
                registers[:] = SimUtils.bitsToRegisters(bits)
            else:
                words = self.handle(table, address, count=count)
                registers[address - start:address - start + count] = words
        except RequestRefused as exc:
            return exc.code
        return None

    # ------------------------------------------------------------------ requests
    def handle(self, table: Table, address: int, *, count: int = 0,
               values: Sequence[int] | Sequence[bool] | None = None) -> list:
        """Serve one request from the wire (or a loopback client); RequestRefused to refuse."""
        in_memory = self.sim is None and self.logic is not None
        if in_memory:
            self.logic.tick()  # no simulation thread ticks the logic: do it on each request
        if values is None:
            return self.bank.read(table, address, count)
        self.bank.write(table, address, values)
        if in_memory:
            self.logic.tick()
        return list(values)

    def loopback_client(self, settings: DeviceSettings | None = None) -> LoopbackClient:
        """A socket-free client of this controller (``ModbusLink(client_factory=...)``)."""
        return LoopbackClient(self, timeout=settings.timeout_s if settings else 0.5)

    def link_map(self) -> RegisterMap:
        """The register map with the address the server listens on (loopback: unchanged)."""
        device = msgspec.structs.replace(self.regmap.device, host=HOST,
                                         port=self._port or self.regmap.device.port)
        return msgspec.structs.replace(self.regmap, device=device)

    def _where(self) -> str:
        device = self.regmap.device
        return device.serial_port if device.transport == Transport.RTU else \
            f"{HOST}:{self._port}"

    def __repr__(self) -> str:
        return f"VirtualController({self.regmap.device.id!r}, {self._where()})"


def serve(register_map: RegisterMap | str | os.PathLike[str] | None = None, *,
          scenario: Scenario | str | os.PathLike[str] | None = None,
          intersection: Intersection | None = None, tls_id: str | None = None,
          port: int = 0, speed: float | None = 1.0, seed: int | None = 0,
          seconds: float | None = None, watchdog_timeout_s: float = 10.0) -> VirtualController:
    """Start a virtual controller on 127.0.0.1 and return it running (``stop()`` it after).

    ``register_map`` is a map, a TOML file, or None to generate one for the SUMO traffic light
    (:func:`~simulation.virtual_map.register_map_for`; then a ``scenario`` is needed).
    """
    imported = None
    if scenario is not None:
        scenario = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        imported = import_net(scenario.net_file)
        tls_id = tls_id or sorted(imported.intersections)[0]
        if tls_id not in imported.intersections:
            raise ValueError(f"no traffic light {tls_id!r} in {scenario.net_file}")
    if register_map is None:
        if imported is None or tls_id is None:
            raise ValueError("without a register map, give a scenario to generate one from")
        register_map = register_map_for(imported.intersections[tls_id], port=port or 502)
    elif not isinstance(register_map, RegisterMap):
        register_map = load_toml(register_map, RegisterMap)
    vc = VirtualController(register_map, intersection=intersection, scenario=scenario,
                           tls_id=tls_id, imported=imported, port=port, speed=speed, seed=seed,
                           seconds=seconds, watchdog_timeout_s=watchdog_timeout_s)
    return vc.start()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m simulation.virtual_controller",
        description="Serve a virtual signal controller over Modbus TCP on 127.0.0.1.")
    p.add_argument("--scenario", help="SUMO scenario (folder or .sumocfg) behind the registers")
    p.add_argument("--register-map", dest="register_map",
                   help="register map TOML; with --scenario a missing file is generated there")
    p.add_argument("--port", type=int, default=0, help="TCP port (default 0: the OS picks)")
    p.add_argument("--tls", help="SUMO traffic light id (default: the first)")
    p.add_argument("--site", help="site TOML: check commits against its intersection "
                                  "(without --scenario)")
    p.add_argument("--speed", type=float, default=1.0,
                   help="simulated seconds per second (0: as fast as possible)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seconds", type=float, help="episode length (default: the scenario's)")
    p.add_argument("--watchdog-s", dest="watchdog_s", type=float, default=10.0,
                   help="fall back to the own programme after this long without a watchdog change")
    return p


def serve_in_process(register_map: str | os.PathLike[str], *,
                     site: str | os.PathLike[str] | None = None,
                     cores: Sequence[int] = ()) -> tuple[subprocess.Popen[str], int]:
    """Start ``python -m simulation.virtual_controller`` for ``register_map`` in its own
    process (pinned to ``cores`` with taskset when given and available) and return it with
    the TCP port it listens on. RuntimeError if it does not start."""
    cmd = [sys.executable, "-m", "simulation.virtual_controller", "--register-map",
           str(register_map)]
    if site is not None:
        cmd += ["--site", str(site)]
    if cores and shutil.which("taskset"):
        cmd = ["taskset", "-c", ",".join(map(str, sorted(cores)))] + cmd
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if f"{HOST}:" not in line:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"virtual controller did not start: {line!r}")
    return proc, int(line.split(f"{HOST}:")[1].split(",")[0])


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: start, print where it listens, serve until interrupted."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.ERROR)  # its per-request chatter
    try:
        vc, written = _start_from_args(args)
    except (ConfigError, ValueError, DeviceError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    what = f"SUMO {vc.sim.tls_id} of {vc.sim.scenario.name}" if vc.sim else "in-memory bank"
    print(f"virtual controller ({what}) on {HOST}:{vc.port}, unit {vc.unit_id}"
          + (f"; register map written to {written}" if written else ""), flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            if vc.sim is not None and vc.sim.error is not None:
                print(f"error: SUMO stopped: {vc.sim.error}", file=sys.stderr)
                return 1
    finally:
        vc.stop()
    return 0


def _start_from_args(args: Any) -> tuple[VirtualController, Path | None]:
    speed = None if args.speed == 0 else args.speed
    path = Path(args.register_map) if args.register_map else None
    if args.scenario is None:
        if path is None:
            raise ValueError("give --register-map (and --site to check plans), or --scenario")
        intersection = None
        if args.site:
            site = load_site(args.site)
            intersection = site.intersection(args.tls) if args.tls else site.intersections[0]
        return serve(path, intersection=intersection, port=args.port), None
    generate = path is None or not path.exists()
    vc = serve(None if generate else path, scenario=args.scenario, tls_id=args.tls,
               port=args.port, speed=speed, seed=args.seed, seconds=args.seconds,
               watchdog_timeout_s=args.watchdog_s)
    if generate and path is not None:
        try:
            write_register_map(vc.link_map(), path,
                               [f"Generated by simulation.virtual_controller for traffic light "
                                f"{vc.sim.tls_id} of {vc.sim.scenario.net_file}."])
        except OSError:
            vc.stop()
            raise
        return vc, path
    return vc, None


if __name__ == "__main__":
    sys.exit(main())
