"""Publish throughput of the edge's MQTT link through its SQLite spool to a real mosquitto, and
the agent's resident memory.

Each message is a measurement of 8 lanes (about 1 KB of JSON). Figures, side by side:

* ``spool, 1 per commit``: ``Spool.append`` alone, one fsync per message (the floor for a
  caller that waits for each message to be durable before the next);
* ``spool, 100 per commit``: ``Spool.append_many``, one fsync per 100 messages;
* ``link, publish() each``: ``EdgeLink.publish`` in a loop: the caller waits until each
  message is on disk, then the next; timed until the broker has acknowledged them all;
* ``link, submit() pipelined``: ``EdgeLink.submit`` with up to 1000 messages not yet on disk;
  the publisher thread group-commits what has queued up; timed until the broker has
  acknowledged them all;
* ``link, backlog after outage``: N messages spooled while the broker is down, then the broker
  starts: the time to deliver the backlog.

``msg/s`` is messages over wall time; ``cpu us/msg`` is this process's CPU time (every thread)
per message. The agent runs pinned to one core (``--core``) and mosquitto to the others, as on
a box with one core to spare. Resident memory (VmRSS) is read from /proc before the first link
starts and after each link run; ``peak`` is VmHWM over the whole benchmark.

    python benchmarks/edge_mqtt.py [--messages 20000] [--core 0] [--json]

Needs mosquitto (``apt-get install mosquitto``); it runs its own instance on a loopback port.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

from edge_agent.messages import LaneMeasurement, Measurement, encode
from edge_agent.mqtt_link import EdgeLink
from edge_agent.spool import Spool, SpoolItem
from optimizer.mosquitto import Mosquitto

SITE, CROSSING = "bench", "main-oak"
OUTSTANDING = 1000


def measurement() -> Measurement:
    lanes = tuple(LaneMeasurement(lane=f"lane-{i}", count=12 + i, flow_vph=720.0 + i,
                                  occupancy=0.18, mean_speed_mps=11.5, queue_veh=3.0,
                                  queue_m=21.0) for i in range(8))
    return Measurement(site=SITE, intersection_id=CROSSING, seq=0, interval_start=1.7e9,
                       interval_s=60.0, lanes=lanes)


def memory_kib() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def timed(n: int, run: Callable[[], None]) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"messages": n, "wall_s": round(wall, 3), "msg_per_s": round(n / wall),
            "cpu_us_per_msg": round(cpu / n * 1e6, 1)}


def bench_spool(directory: Path, n: int, batch: int) -> dict[str, float]:
    payload = encode(measurement())
    with Spool(directory / f"spool-{batch}.sqlite", first_seq=1) as spool:
        def run() -> None:
            for _ in range(n // batch):
                spool.append_many([SpoolItem("t", payload)] * batch)
        return timed(n // batch * batch, run)


def new_link(directory: Path, name: str, port: int) -> EdgeLink:
    return EdgeLink(site=SITE, intersection=CROSSING, spool_path=str(directory / name),
                    on_inbound=lambda m: None, port=port)


def submit_all(link: EdgeLink, m: Measurement, n: int) -> None:
    """Submit ``n`` messages, at most OUTSTANDING not yet on disk (a caller with backpressure)."""
    futures: deque[Future[int]] = deque()
    for _ in range(n):
        if len(futures) >= OUTSTANDING:
            futures.popleft().result(60)
        futures.append(link.submit(m))
    futures[-1].result(60)


def bench_link(directory: Path, broker: Mosquitto, n: int, pipelined: bool) -> dict[str, Any]:
    link = new_link(directory, f"link-{pipelined}.sqlite", broker.port)
    link.start()
    assert link.wait_connected(10), "no broker"
    m = measurement()

    def run() -> None:
        if pipelined:
            submit_all(link, m, n)
        else:
            for _ in range(n):
                link.publish(m)
        assert link.wait_delivered(120), "not delivered"

    result = timed(n, run)
    result["rss_after_kib"] = memory_kib()["VmRSS"]
    link.close()
    return result


def bench_backlog(directory: Path, broker: Mosquitto, n: int) -> dict[str, Any]:
    broker.stop()
    link = new_link(directory, "backlog.sqlite", broker.port)
    link.start()
    m = measurement()
    submit_all(link, m, n)
    broker.start()
    assert link.wait_connected(30), "no broker"
    result = timed(n, lambda: link.wait_delivered(300) or sys.exit("backlog not delivered"))
    result["rss_after_kib"] = memory_kib()["VmRSS"]
    link.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--core", type=int, default=0, help="the one core the agent runs on")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the outage below is on purpose: no warnings
    n = args.messages
    available = os.sched_getaffinity(0)
    others = available - {args.core} or available
    os.sched_setaffinity(0, {args.core})
    results: dict[str, Any] = {"payload_bytes": len(encode(measurement())),
                               "agent_core": args.core, "broker_cores": sorted(others)}
    with tempfile.TemporaryDirectory(prefix="tsc-bench-mqtt-") as tmp:
        directory = Path(tmp)
        results["spool, 1 per commit"] = bench_spool(directory, min(n, 2000), 1)
        results["spool, 100 per commit"] = bench_spool(directory, n, 100)
        try:
            broker = Mosquitto(directory / "broker", cores=others).start()
        except FileNotFoundError as exc:
            sys.exit(str(exc))
        try:
            results["rss_before_link_kib"] = memory_kib()["VmRSS"]
            results["link, publish() each"] = bench_link(directory, broker, min(n, 2000), False)
            results["link, submit() pipelined"] = bench_link(directory, broker, n, True)
            results["link, backlog after outage"] = bench_backlog(directory, broker, n)
            # the kernel updates VmHWM lazily: never report less than an RSS seen on the way
            results["rss_peak_kib"] = max([memory_kib()["VmHWM"]] + [
                v["rss_after_kib"] for v in results.values()
                if isinstance(v, dict) and "rss_after_kib" in v])
        finally:
            broker.stop()
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"payload {results['payload_bytes']} B; agent on core {args.core}, mosquitto on "
          f"{results['broker_cores']}")
    print(f"{'':28} {'messages':>8} {'msg/s':>8} {'cpu us/msg':>10}")
    for key, value in results.items():
        if isinstance(value, dict):
            print(f"{key:28} {value['messages']:>8} {value['msg_per_s']:>8} "
                  f"{value['cpu_us_per_msg']:>10}")
    mib = 1024
    each, piped = results["link, publish() each"], results["link, submit() pipelined"]
    print(f"resident memory: {results['rss_before_link_kib'] / mib:.1f} MiB before the link, "
          f"{each['rss_after_kib'] / mib:.1f} MiB after {each['messages']} publish() calls, "
          f"{piped['rss_after_kib'] / mib:.1f} MiB after {piped['messages']} pipelined, "
          f"peak {results['rss_peak_kib'] / mib:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
