"""``tsc-central demo``: the whole system on one machine, on embedded defaults.

What runs (all on 127.0.0.1, files in the work folder, ``out/central-demo`` by default):

* a broker: mosquitto when the binary is found, else an embedded amqtt broker
  (:class:`~optimizer.demo_setup.DemoBroker`);
* a corridor the project generates (:func:`simulation.demo_scenario.generate_corridor`, three
  intersections, demand that builds to a peak and fades) in ONE SUMO session, with one virtual
  controller (a pymodbus server) per traffic light (:class:`simulation.virtual_cabinets.VirtualCabinets`);
* one edge agent per intersection (:class:`edge_agent.runtime_agent.Agent`, threads of this
  process) over real Modbus TCP and MQTT;
* the central service (:class:`optimizer.central_service.CentralService`): ingest, the loop
  (SUMO validation of candidates with ``--validate``, off by default), signed plans, acks,
  heartbeats; and the operations API with the dashboard (uvicorn), with an admin user.

Everything runs on the simulation's clock (a POSIX time that advances with SUMO), so the
edges' measurement intervals, the centre's re-planning period and the plans' cycle boundaries
are in simulated seconds while SUMO runs ``--speed`` times faster than real time. At the end the
KPIs of this adaptive run are printed next to a fixed-time run of the same scenario, seed and
horizon (:func:`simulation.run.run_episode` with the net's own programmes, in a fresh process,
started at the beginning so that it is ready by then).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import shutil
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_OUT = "out/central-demo"


def add_demo_command(sub: Any) -> None:
    """Add ``demo`` to ``tsc-central``'s sub-commands."""
    demo = sub.add_parser(
        "demo", help="run everything on one machine: broker, SUMO corridor, virtual "
                     "controllers, edge agents, the central loop and the dashboard",
        description="Start a broker, a generated 3-intersection SUMO corridor with one virtual "
                    "Modbus controller per light, one edge agent per intersection, the central "
                    "loop and the operations dashboard; run MINUTES simulated minutes SPEED "
                    "times faster than real time; print the KPIs of the adaptive run next to "
                    "fixed time, and the dashboard URL and an admin token.")
    demo.add_argument("--minutes", type=float, default=15.0,
                      help="simulated minutes (default 15)")
    demo.add_argument("--speed", type=float, default=10.0,
                      help="simulated seconds per real second (default 10)")
    demo.add_argument("--intersections", type=int, default=3, help="corridor length (default 3)")
    demo.add_argument("--seed", type=int, default=1, help="scenario and SUMO seed (default 1)")
    demo.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                      help=f"work folder for generated files (default {DEFAULT_OUT})")
    demo.add_argument("--port", type=int, default=8080,
                      help="dashboard port (default 8080; a free one if taken)")
    demo.add_argument("--validate", action="store_true",
                      help="validate candidate plans in SUMO before publishing (slower)")
    demo.add_argument("--embedded-broker", action="store_true",
                      help="use the embedded amqtt broker even if mosquitto is installed")
    demo.add_argument("--keep-running", action="store_true",
                      help="leave the dashboard up after the run until Ctrl-C")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.add_argument("--log-level", default="warning",
                      choices=["debug", "info", "warning", "error"])
    demo.set_defaults(func=run_demo)


class _Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, enabled: bool, width: int = 30) -> None:
        self.enabled, self.width, self._last = enabled, width, ""

    def show(self, done: float, total: float, note: str) -> None:
        if not self.enabled:
            return
        frac = min(1.0, done / total) if total > 0 else 1.0
        fill = int(frac * self.width)
        line = (f"\r[{'#' * fill}{'.' * (self.width - fill)}] {done / 60:5.1f}/"
                f"{total / 60:.1f} sim min  {note}")
        if line != self._last:
            sys.stderr.write(line.ljust(len(self._last)))
            sys.stderr.flush()
            self._last = line

    def end(self) -> None:
        if self.enabled and self._last:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _fresh(folder: Path) -> None:
    """Remove what a previous demo left (databases, spools, keys); keep the scenario."""
    folder.mkdir(parents=True, exist_ok=True)
    for child in folder.iterdir():
        if child.name == "scenario":
            continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


def _plan_summary(history: Path) -> dict[str, Any]:
    """Plans published by the centre, by source and outcome (from the history database)."""
    out: dict[str, Any] = {"published": 0, "by_source": {}, "by_outcome": {}}
    try:
        with sqlite3.connect(f"file:{history}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT source, outcome, COUNT(*) FROM plans "
                              "GROUP BY source, outcome").fetchall()
    except sqlite3.Error as exc:
        log.warning("cannot read the plan history: %s", exc)
        return out
    for source, outcome, n in rows:
        out["published"] += n
        out["by_source"][source] = out["by_source"].get(source, 0) + n
        out["by_outcome"][outcome] = out["by_outcome"].get(outcome, 0) + n
    out["acknowledged"] = sum(n for k, n in out["by_outcome"].items()
                              if k in ("accepted", "rejected"))
    return out


_ROWS = (("mean delay (s)", "mean_delay_s", True), ("mean travel time (s)",
                                                     "mean_travel_time_s", True),
         ("mean waiting (s)", "mean_waiting_s", True), ("stops per vehicle", "stops_mean", True),
         ("throughput (veh)", "throughput", False), ("unfinished trips", "unfinished", True),
         ("teleports", "teleports", True))


def kpi_table(adaptive: dict[str, Any] | None, fixed: dict[str, Any] | None) -> str:
    """The KPI comparison as text (``None`` values show as n/a)."""
    def fmt(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "n/a"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = [f"{'KPI':<22}{'adaptive':>12}{'fixed time':>12}{'change':>10}"]
    for label, key, _lower_better in _ROWS:
        a = (adaptive or {}).get(key)
        f = (fixed or {}).get(key)
        change = ""
        if isinstance(a, (int, float)) and isinstance(f, (int, float)) and f and \
                not (math.isnan(a) or math.isnan(f)):
            change = f"{100.0 * (a - f) / abs(f):+.1f} %"
        lines.append(f"{label:<22}{fmt(a):>12}{fmt(f):>12}{change:>10}")
    return "\n".join(lines)


def _fixed_run(cfg: str, seed: int, seconds: float) -> dict[str, Any]:
    """The fixed-time run (the net's own programmes); in a child process."""
    from simulation.run import run_episode
    return run_episode(cfg, None, seed=seed, seconds=seconds, queue_every=None).kpis.to_dict()


@dataclass(frozen=True)
class DemoRun:
    """The running demo's parts, handed to ``run_demo``'s ``hook`` (tests drive it)."""

    service: Any  # optimizer.central_service.CentralService
    cabinets: Any  # simulation.virtual_cabinets.VirtualCabinets
    broker: Any  # optimizer.demo_setup.DemoBroker
    agents: list[Any]  # edge_agent.runtime_agent.Agent, one per intersection
    url: str
    admin_token: str
    clock: Callable[[], float]
    stop: threading.Event


def run_demo(args: argparse.Namespace,
             hook: Callable[[DemoRun], None] | None = None) -> int:
    """Run the demo (see the module docstring); the exit status.

    ``hook`` (tests): called with the :class:`DemoRun` once simulated time runs, in this
    thread; the simulation goes on meanwhile, and the demo carries on when it returns (an
    exception it raises stops the demo and propagates).
    """
    if not args.minutes > 0 or not args.speed > 0:
        print("tsc-central demo: --minutes and --speed must be > 0", file=sys.stderr)
        return 2
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    stop = threading.Event()
    handlers: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, lambda *_: stop.set())
    closers: list[tuple[str, Callable[[], None]]] = []
    try:
        return _demo(args, stop, closers, hook)
    finally:
        for what, close in reversed(closers):
            try:
                close()
            except Exception:
                log.exception("closing %s failed", what)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _demo(args: argparse.Namespace, stop: threading.Event,
          closers: list[tuple[str, Callable[[], None]]],
          hook: Callable[[DemoRun], None] | None = None) -> int:
    import uvicorn

    from edge_agent.agent_config import load_agent_config
    from edge_agent.runtime_agent import Agent
    from optimizer.central_config import load_central_config
    from optimizer.central_service import CentralService
    from optimizer.demo_setup import DemoBroker, free_port, write_demo_files
    from simulation.demo_scenario import generate_corridor
    from simulation.virtual_cabinets import VirtualCabinets

    work = Path(args.out).resolve()
    _fresh(work)
    seconds = args.minutes * 60.0
    say = lambda text: print(text, file=sys.stderr, flush=True)
    cfg = generate_corridor(work / "scenario", intersections=args.intersections, seed=args.seed)
    say(f"scenario: {cfg} ({args.intersections} intersections, {args.minutes:g} simulated "
        f"minutes at {args.speed:g}x)")

    # The fixed-time reference, in a fresh process, while the adaptive run goes on.
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    closers.append(("the fixed-time run", lambda: pool.shutdown(wait=True,
                                                                cancel_futures=True)))
    fixed: Future = pool.submit(_fixed_run, str(cfg), args.seed, seconds)

    broker = DemoBroker(work / "broker", embedded=args.embedded_broker).start()
    closers.append(("the broker", broker.stop))
    say(f"broker: {broker.kind} on 127.0.0.1:{broker.port}")

    poll = max(0.1, min(1.0, 5.0 / args.speed))  # about every 5 simulated seconds
    cabinets = VirtualCabinets(cfg, speed=args.speed, seed=args.seed, seconds=seconds,
                               poll_period_s=poll, output_dir=work / "sumo-adaptive")
    cabinets.start(paused=True)
    closers.append(("the virtual controllers", cabinets.stop))
    maps = cabinets.link_maps()
    say("virtual controllers: " + ", ".join(f"{x} on 127.0.0.1:{m.device.port}"
                                            for x, m in maps.items()))
    t0 = time.time()

    def clock() -> float:  # the simulation's clock, as POSIX time
        return t0 + cabinets.sim_time

    api_port = free_port(args.port)
    files = write_demo_files(work, cabinets.imported, maps, scenario=cfg,
                             broker_port=broker.port, api_port=api_port, validate=args.validate)

    service = CentralService(load_central_config(files.central), clock=clock,
                             protocol=broker.protocol)
    service.start()
    closers.append(("the central service", service.stop))
    token = service.users.add("admin", "admin", clock())
    server = uvicorn.Server(uvicorn.Config(service.app(), host="127.0.0.1", port=api_port,
                                           log_level="warning", lifespan="off"))
    api = threading.Thread(target=server.run, name="tsc-demo-api", daemon=True)
    api.start()

    def stop_api() -> None:
        server.should_exit = True
        api.join(10)

    closers.append(("the API", stop_api))

    agents: list[tuple[Agent, threading.Thread]] = []

    def stop_agents() -> None:
        for agent, _ in agents:
            agent.stop()
        for agent, thread in agents:
            thread.join(10)
            agent.close()

    closers.append(("the edge agents", stop_agents))
    for x, path in files.agents.items():
        # The agents poll on the wall clock and time everything else on the simulation's,
        # which runs --speed times as fast.
        agent = Agent(load_agent_config(path), clock=clock, time_scale=args.speed)
        agent.start()
        thread = threading.Thread(target=agent.run, name=f"edge-{x}", daemon=True)
        agents.append((agent, thread))
        thread.start()

    if not service.link.wait_connected(10):
        say("tsc-central demo: the centre cannot reach the broker")
        return 1
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{api_port}/"
    say(f"dashboard: {url} (admin token below); validation "
        f"{'on' if args.validate else 'off'}")

    cabinets.resume()
    if hook is not None:
        hook(DemoRun(service=service, cabinets=cabinets, broker=broker,
                     agents=[agent for agent, _ in agents], url=url, admin_token=token,
                     clock=clock, stop=stop))
    progress = _Progress(not args.no_progress)
    while not stop.is_set() and not cabinets.finished.wait(0.25):
        counts = service.loop.counts
        progress.show(cabinets.sim_time, seconds,
                      f"plans {counts.get('plans_published', 0)} published, "
                      f"{counts.get('acks_accepted', 0)} acked, "
                      f"{len(cabinets.commits)} committed")
    progress.show(cabinets.sim_time, seconds, "done" if not stop.is_set() else "interrupted")
    progress.end()
    if cabinets.error is not None:
        say(f"tsc-central demo: SUMO stopped: {cabinets.error!r}")
        return 1
    if stop.is_set():
        say("tsc-central demo: interrupted")
        return 130

    # Give the last acks a moment, then read the centre's record.
    time.sleep(min(2.0, 20.0 / args.speed))
    plans = _plan_summary(service.config.history_path)
    commits = [c.__dict__ for c in cabinets.commits]
    adaptive = cabinets.kpis.to_dict() if cabinets.kpis is not None else None
    try:
        reference = fixed.result(timeout=120)
    except Exception as exc:  # noqa: BLE001 - show the adaptive run anyway
        say(f"tsc-central demo: the fixed-time run failed: {exc!r}")
        reference = None
    summary = {"minutes": args.minutes, "speed": args.speed, "seed": args.seed,
               "intersections": list(maps), "broker": broker.kind,
               "validation": args.validate, "plans": plans, "commits": commits,
               "loop_counts": dict(service.loop.counts),
               "kpis": {"adaptive": adaptive, "fixed": reference},
               "dashboard": url}
    (work / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")

    by_source = ", ".join(f"{n} {s}" for s, n in sorted(plans["by_source"].items()))
    by_outcome = ", ".join(f"{n} {s}" for s, n in sorted(plans["by_outcome"].items()))
    per_x = {x: sum(1 for c in commits if c["intersection"] == x) for x in maps}
    print(f"\ntsc-central demo: {args.minutes:g} simulated minutes of a {len(maps)}-"
          f"intersection corridor at {args.speed:g}x, seed {args.seed}, broker {broker.kind}, "
          f"validation {'on' if args.validate else 'off'}")
    print(f"plans published: {plans['published']} ({by_source or 'none'}); "
          f"acknowledged: {plans.get('acknowledged', 0)} ({by_outcome or 'none'})")
    print("plans committed by the controllers: " + ", ".join(f"{x} {n}"
                                                            for x, n in per_x.items()))
    print()
    print(kpi_table(adaptive, reference))
    print()
    print(f"dashboard: {url}")
    print(f"admin token: {token}")
    print(f"files: {work} (summary.json, central.toml, edges/, history.sqlite)")
    sys.stdout.flush()
    if args.keep_running:
        say("the dashboard stays up (the simulation has ended); Ctrl-C to stop")
        stop.wait()
    return 0
