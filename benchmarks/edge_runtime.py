"""Figures for the edge agent (``tsc-edge run``): throughput, resident memory, plan latency.

1. Throughput of the runtime's reading path on one core (this process pinned to ``--core``):
   :class:`~edge_agent.runtime.EdgeRuntime` steps back to back on a fake clock, one simulated
   second a step, against a controller port that hands it a fresh poll of the example
   cabinet map (``configs/modbus-elm-1st.toml``: 22 detector and queue values, 4 status
   registers) with varying traffic, and an uplink that only counts. Every reading is turned
   into a sample, bucketed by the aggregator and judged by detector health; every step also
   runs the controller check, the mode machine, plan due-ness and the status; every simulated
   minute closes a measurement. ``readings/s`` is per CPU second of this process, with the
   cost of building the synthetic polls (measured alone) subtracted, and gross.
2. The same steps with a real :class:`~edge_agent.modbus_link.ModbusLink` polling a virtual
   controller over Modbus TCP (a pymodbus server in another process, on another core): what a
   box spends per poll, so what one poll a second costs it.
3. Latency from a plan's arrival over MQTT to the commit register written: a real mosquitto
   and the virtual controller in other processes (other core), the agent's own loop
   (:class:`~edge_agent.runtime_agent.Agent`) here. A centre publishes signed plans one at a
   time; "arrival" is the link handing the decoded message to the agent, "written" is the
   controller's answer to the commit write (after 15 staging writes, each a round trip).
   The wait for a safe boundary (up to a cycle, by design) is left out: the agent's clock is
   held inside the switch window after a cycle boundary. ``publish ->`` adds the broker hop
   (``--tcp-nodelay`` runs mosquitto with ``set_tcp_nodelay true``: its default leaves
   Nagle's algorithm on, which holds small packets back for tens of milliseconds).
4. Resident memory (VmRSS, and the peak VmHWM) after start-up, after the reading-path run
   (hours of simulated operation) and with both links running.

    .venv/bin/python benchmarks/edge_runtime.py [--seconds 5] [--plans 50] [--core 0]
        [--tcp-nodelay] [--json]

Part 3 needs mosquitto (``apt-get install mosquitto``); without it, it is skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import msgspec

REPO = Path(__file__).resolve().parents[1]
# This file is named like the package it measures: its own folder must not shadow it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]
sys.path.insert(0, str(REPO))

from edge_agent.agent_config import AgentConfig, load_agent_config  # noqa: E402
from edge_agent.errors import DeviceError  # noqa: E402
from edge_agent.messages import EdgeMode, Heartbeat, Message, PlanMessage, Status, encode  # noqa: E402
from edge_agent.modbus_core import Reading as RegisterReading  # noqa: E402
from edge_agent.modbus_link import ModbusLink  # noqa: E402
from edge_agent.plan import PhaseTiming, TimingPlan  # noqa: E402
from edge_agent.registers import Signal  # noqa: E402
from edge_agent.runtime import EdgeRuntime  # noqa: E402
from edge_agent.runtime_agent import Agent  # noqa: E402
from edge_agent.runtime_inputs import polled_registers  # noqa: E402
from simulation.virtual_controller import serve_in_process  # noqa: E402
from optimizer.mosquitto import Mosquitto  # noqa: E402
from edge_agent.signatures import generate_key, load_private_key, sign_plan  # noqa: E402
from edge_agent.topics import TopicKind, topic  # noqa: E402

_spec = importlib.util.spec_from_file_location("edge_mqtt", REPO / "benchmarks" / "edge_mqtt.py")
assert _spec is not None and _spec.loader is not None
_edge_mqtt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_edge_mqtt)
memory_kib = _edge_mqtt.memory_kib  # /proc reader

AGENT_FILE = REPO / "configs" / "edge-elm-1st.toml"
T0 = 1_800_000_000.0


def pin(cpu: int) -> str:
    if hasattr(os, "sched_setaffinity") and cpu in os.sched_getaffinity(0):
        os.sched_setaffinity(0, {cpu})
        return f"cpu {cpu}"
    return "unpinned"


def other_cores(cpu: int) -> set[int]:
    cores = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()
    return (cores - {cpu}) or cores


# --- 1. the reading path ------------------------------------------------------------------
class SyntheticController:
    """A controller port that serves a fresh poll of varying traffic at every step."""

    def __init__(self, config: AgentConfig, clock: Any, seed: int = 1) -> None:
        self.clock = clock
        rnd = random.Random(seed)
        regs = [r for r in config.register_map.registers
                if r.name in set(polled_registers(config.register_map))]
        counters = {r.name: 0 for r in regs if r.signal == Signal.DETECTOR_COUNT}
        self.templates: list[list[tuple[str, float]]] = []
        for _ in range(600):  # ten minutes of traffic, replayed
            row = []
            for r in regs:
                if r.signal == Signal.DETECTOR_COUNT:
                    counters[r.name] = (counters[r.name] + (rnd.random() < 0.3)) % 65536
                    value = float(counters[r.name])
                elif r.signal == Signal.DETECTOR_OCCUPANCY:
                    value = round(rnd.uniform(0.0, 0.5), 3)
                elif r.signal == Signal.DETECTOR_PRESENCE:
                    value = float(rnd.random() < 0.3)
                elif r.signal == Signal.DETECTOR_SPEED:
                    value = round(rnd.uniform(5.0, 15.0), 2)
                elif r.signal == Signal.QUEUE_LENGTH:
                    value = round(rnd.uniform(0.0, 60.0), 1)
                elif r.signal == Signal.CONTROLLER_MODE:
                    value = 2.0
                else:
                    value = 0.0
                row.append((r.name, value))
            self.templates.append(row)
        self.polls = 0
        self.connected = True

    def poll_now(self, timeout: float | None = None) -> bool:
        self.polls += 1
        return True

    def readings(self) -> dict[str, RegisterReading]:
        t = self.clock()
        row = self.templates[self.polls % len(self.templates)]
        return {name: RegisterReading(name, value, t, 0, False) for name, value in row}

    def write_plan(self, plan: TimingPlan, intersection: Any) -> None:
        pass

    def write(self, name: str, value: float | bool) -> None:
        pass  # recall, hold and force-off coils: taken, like plans

    def kick_watchdog(self) -> float:
        return 1.0


class CountingUplink:
    """An uplink that takes everything and keeps nothing."""

    def __init__(self) -> None:
        self.messages = self.statuses = 0

    def submit(self, message: Message) -> Future[int]:
        self.messages += 1
        done: Future[int] = Future()
        done.set_result(self.messages)
        return done

    def update_status(self, status: Status) -> None:
        self.statuses += 1


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def reading_path(config: AgentConfig, seconds: float) -> dict[str, Any]:
    clock = Clock(T0)
    port, uplink = SyntheticController(config, clock), CountingUplink()
    runtime = EdgeRuntime(config, port, uplink, clock=clock)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    while time.perf_counter() - wall0 < seconds:
        for _ in range(200):
            clock.t += 1.0
            runtime.step()
    cpu, steps = time.process_time() - cpu0, runtime.stats.steps
    # What building the synthetic polls costs alone, to take it out again.
    probe = SyntheticController(config, clock)
    c0 = time.process_time()
    for _ in range(steps):
        probe.poll_now()
        probe.readings()
    port_cpu = time.process_time() - c0
    samples = runtime.stats.samples
    return dict(steps=steps, simulated_h=steps / 3600.0, readings=samples,
                readings_per_step=samples / steps, cpu_s=cpu, port_cpu_s=port_cpu,
                readings_per_cpu_s=samples / (cpu - port_cpu),
                readings_per_cpu_s_gross=samples / cpu, us_per_step=(cpu - port_cpu) / steps * 1e6,
                measurements=runtime.stats.measurements, statuses=uplink.statuses,
                rss_kib=memory_kib()["VmRSS"])


# --- 2. with a real Modbus link -------------------------------------------------------------
def on_port(config: AgentConfig, port: int, **changes: Any) -> AgentConfig:
    regmap = config.register_map
    regmap = msgspec.structs.replace(regmap, device=msgspec.structs.replace(regmap.device,
                                                                             port=port))
    return dataclasses.replace(config, register_map=regmap, **changes)


def with_modbus(config: AgentConfig, port: int, seconds: float) -> dict[str, Any]:
    config = on_port(config, port)
    clock = Clock(T0)
    link = ModbusLink(config.register_map, clock=clock, poll=polled_registers(config.register_map),
                      autopoll=False).start()
    try:
        runtime = EdgeRuntime(config, link, CountingUplink(), clock=clock)
        runtime.step()  # connect
        cpu0, wall0, steps0 = time.process_time(), time.perf_counter(), runtime.stats.steps
        samples0 = runtime.stats.samples
        while time.perf_counter() - wall0 < seconds:
            clock.t += 1.0
            runtime.step()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        steps, samples = runtime.stats.steps - steps0, runtime.stats.samples - samples0
        if not runtime.controller_ok:
            raise RuntimeError("the virtual controller stopped answering")
    finally:
        link.stop()
    return dict(steps=steps, steps_per_s=steps / wall, readings_per_s=samples / wall,
                cpu_ms_per_step=cpu / steps * 1e3, reads_per_step=len(link.blocks),
                core_share_at_1hz=cpu / steps)


# --- 3. plan latency ----------------------------------------------------------------------
def plan(plan_id: int, split2: float) -> TimingPlan:
    def t(n: int, split: float, yellow: float, lo: float, hi: float, walk: float = 0.0,
          ped: float = 0.0) -> PhaseTiming:
        return PhaseTiming(phase=n, split=split, yellow=yellow, red_clearance=1.5, min_green=lo,
                           max_green=hi, walk=walk, ped_clearance=ped)

    return TimingPlan(
        plan_id=plan_id, intersection_id="elm-1st", cycle=80.0, offset=0.0, offset_reference=2,
        activation=0.0, source="adaptive", author="benchmark",
        rings=((t(2, split2, 3.5, 8, 50, 7, 11.3), t(4, 80 - split2, 3.0, 6, 40, 7, 13.1)),
               (t(6, split2, 3.5, 8, 50), t(8, 80 - split2, 3.0, 6, 40))))


class TimedAgent(Agent):
    """The agent, noting when each plan arrives from the link and when its commit is written."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrived: dict[int, float] = {}
        self.written: dict[int, float] = {}
        self.done = threading.Condition()
        write = self.modbus.write_plan

        def timed_write(p: TimingPlan, intersection: Any) -> None:
            write(p, intersection)
            with self.done:
                self.written[p.plan_id] = time.time()
                self.done.notify_all()

        self.modbus.write_plan = timed_write  # type: ignore[method-assign]

    def _inbound(self, inbound: Any) -> None:
        if isinstance(inbound.message, PlanMessage):
            self.arrived[inbound.message.plan.plan_id] = time.time()
        super()._inbound(inbound)


def latency(config: AgentConfig, port: int, plans: int, core: int, directory: Path,
            nodelay: bool) -> dict[str, Any]:
    import paho.mqtt.client as mqtt

    private, public = generate_key()
    key = load_private_key(private)
    # mosquitto leaves Nagle's algorithm on by default
    broker = Mosquitto(directory / f"broker-nodelay-{nodelay}", cores=other_cores(core),
                       extra_config="set_tcp_nodelay true" if nodelay else "").start()
    mqtt_settings = msgspec.structs.replace(config.file.mqtt, port=broker.port)
    config = on_port(config, port, trusted_keys={"central": public},
                     file=msgspec.structs.replace(config.file, mqtt=mqtt_settings),
                     spool_path=directory / "spool.sqlite")
    # Held 0.5 s after a cycle boundary of every plan here (80 s, offset 0): the switch window
    # is always open, so what is measured is the agent, not the wait for a boundary.
    boundary, m0 = (time.time() // 80.0) * 80.0, time.monotonic()
    agent = TimedAgent(config, clock=lambda: boundary + 0.5 + (time.monotonic() - m0) * 1e-4)
    centre = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-centre")
    centre.connect("127.0.0.1", broker.port)
    centre.loop_start()
    agent.start()
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    try:
        site, x = config.file.site, config.intersection.id
        if not agent.link.wait_connected(10):
            raise RuntimeError("the agent did not connect to mosquitto")
        for seq in range(1, 4):  # the centre is alive
            centre.publish(topic(site, x, TopicKind.HEARTBEAT),
                           encode(Heartbeat(site=site, seq=seq, t=time.time(), source="bench")))
            time.sleep(0.1)
        messages = [encode(sign_plan(site, plan(i, 45.0 - (i % 2)), key, "central"))
                    for i in range(2, plans + 3)]
        published: dict[int, float] = {}
        for i, payload in zip(range(2, plans + 3), messages):
            published[i] = time.time()
            centre.publish(topic(site, x, TopicKind.PLAN), payload, qos=1)
            with agent.done:
                if not agent.done.wait_for(lambda: i in agent.written, timeout=10):
                    raise RuntimeError(f"plan {i} was not written within 10 s "
                                       f"(mode {agent.runtime.mode.value})")
            time.sleep(0.05)
        rss = memory_kib()["VmRSS"]
        assert agent.runtime.mode == EdgeMode.CENTRAL
    finally:
        agent.stop()
        runner.join(10)
        agent.close()
        centre.disconnect()
        centre.loop_stop()
        broker.stop()
    first = 3  # the first plan is the switch from STARTUP; the rest are plans in force replaced
    arrival = [(agent.written[i] - agent.arrived[i]) * 1e3 for i in range(first, plans + 3)]
    hop = [(agent.written[i] - published[i]) * 1e3 for i in range(first, plans + 3)]

    def summary(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return dict(p50=statistics.median(ordered),
                    p95=ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
                    max=ordered[-1])

    return dict(plans=len(arrival), arrival_to_commit_ms=summary(arrival),
                publish_to_commit_ms=summary(hop), rss_kib=rss,
                writes_per_plan=1 + sum(1 for r in config.register_map.registers
                                        if r.signal.value.startswith("plan.")
                                        and r.signal != Signal.PLAN_COMMIT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="per throughput run")
    p.add_argument("--plans", type=int, default=50)
    p.add_argument("--core", type=int, default=0, help="the core the agent is pinned to")
    p.add_argument("--tcp-nodelay", action="store_true",
                   help="run mosquitto with set_tcp_nodelay true (its default is false)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    where = pin(args.core)
    config = load_agent_config(AGENT_FILE)
    results: dict[str, Any] = dict(pinned=where, rss_start_kib=memory_kib()["VmRSS"])
    results["reading_path"] = reading_path(config, args.seconds)
    with tempfile.TemporaryDirectory(prefix="tsc-bench-agent-") as tmp:
        directory = Path(tmp)
        map_path = directory / "map.toml"
        shutil.copy(REPO / "configs" / "modbus-elm-1st.toml", map_path)
        server, port = serve_in_process(map_path, site=REPO / "configs" / "nema-4phase.toml",
                                        cores=sorted(other_cores(args.core)))
        try:
            results["with_modbus"] = with_modbus(config, port, args.seconds)
            if shutil.which("mosquitto") or os.path.exists("/usr/sbin/mosquitto"):
                results["latency"] = latency(config, port, args.plans, args.core, directory,
                                             args.tcp_nodelay)
        except DeviceError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            server.terminate()
            server.communicate(timeout=10)
    results["rss_peak_kib"] = max(memory_kib()["VmHWM"], results["reading_path"]["rss_kib"],
                                  results.get("latency", {}).get("rss_kib", 0))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    r, m, mib = results["reading_path"], results["with_modbus"], 1024.0
    print(f"edge agent benchmark ({where}; configs/edge-elm-1st.toml, "
          f"{r['readings_per_step']:.0f} readings a poll)")
    print(f"reading path:   {r['readings_per_cpu_s']:,.0f} readings/s per CPU second "
          f"({r['readings_per_cpu_s_gross']:,.0f} with the synthetic polls); "
          f"{r['us_per_step']:.0f} us a step; {r['simulated_h']:.1f} h simulated, "
          f"{r['measurements']} measurements")
    print(f"with Modbus:    {m['steps_per_s']:,.0f} polls/s back to back over TCP "
          f"({m['reads_per_step']} reads and the watchdog write each), "
          f"{m['readings_per_s']:,.0f} readings/s; "
          f"{m['cpu_ms_per_step']:.2f} ms CPU a poll = {m['core_share_at_1hz'] * 100:.2f} % "
          f"of a core at one poll a second")
    if "latency" in results:
        lat = results["latency"]
        a, h = lat["arrival_to_commit_ms"], lat["publish_to_commit_ms"]
        print(f"plan latency:   arrival -> commit written p50 {a['p50']:.1f} ms, "
              f"p95 {a['p95']:.1f} ms, max {a['max']:.1f} ms; publish -> commit p50 "
              f"{h['p50']:.1f} ms, p95 {h['p95']:.1f} ms ({lat['plans']} plans, "
              f"{lat['writes_per_plan']} register writes each; mosquitto "
              f"set_tcp_nodelay {'true' if args.tcp_nodelay else 'false (its default)'})")
    else:
        print("plan latency:   skipped (mosquitto not found)")
    print(f"resident memory: {results['rss_start_kib'] / mib:.1f} MiB after start-up, "
          f"{r['rss_kib'] / mib:.1f} MiB after {r['simulated_h']:.1f} h of readings"
          + (f", {results['latency']['rss_kib'] / mib:.1f} MiB with both links running"
             if "latency" in results else "")
          + f"; peak {results['rss_peak_kib'] / mib:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
