"""The central service's ingest throughput and the wall time of one re-plan of a city.

Ingest: ``--edges`` simulated edges (1,000), each its own MQTT connection with its own client
id, publish ``--messages`` measurements each (6 lanes, about 600 B of JSON) with QoS 1 to a
real mosquitto, and re-send a share ``--dup`` of them (as an edge's spool does after a
reconnect). The centre's real ingest path takes them: ``CentralLink`` (MQTT 5, persistent
session, manual PUBACK after the commit) -> ``IngestWorker`` -> SQLite history, deduplicated by
(intersection, seq). Timed from the first publish until every unique measurement is stored and
every duplicate recognised. The edges run in ``--procs`` processes (paho threads each).

Re-plan: a site of ``--intersections`` 4-phase dual-ring intersections (Elm St & 1st Ave,
repeated) in corridors of 10, with 15 one-minute measurements each in the history; one tick of
the central loop re-plans them all (read the window from SQLite, estimate demand, optimise
cycles and splits, coordinate the corridors, guard-check), arbitrates, signs every plan with
Ed25519 and hands it to the publisher. The breakdown is printed.

    python benchmarks/central.py [--edges 1000] [--messages 20] [--dup 0.02] [--procs 4]
                                 [--intersections 1000] [--json]

Needs mosquitto (``apt-get install mosquitto``); it runs its own instance on a loopback port.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from optimizer.mosquitto import Mosquitto

SITE = "bench"
LANES = (("elm-1st_N_0", 10), ("elm-1st_N_1", 9), ("elm-1st_S_0", 11), ("elm-1st_S_1", 8),
         ("elm-1st_E_0", 4), ("elm-1st_W_0", 5))


def measurement(x: str, seq: int, start: float) -> Any:
    from edge_agent.messages import LaneMeasurement, Measurement
    return Measurement(site=SITE, intersection_id=x, seq=seq, interval_start=start,
                       interval_s=60.0, lanes=tuple(
                           LaneMeasurement(lane=lane, count=c, flow_vph=c * 60.0,
                                           occupancy=0.15, queue_veh=2.0) for lane, c in LANES))


def edge_process(port: int, ids: list[str], messages: int, dup: float, start: Any,
                 ready: Any) -> None:
    """Connect one MQTT client per edge, wait for the start, publish, wait for the PUBACKs."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edge_agent.messages import encode
    from edge_agent.topics import topic

    now = time.time()
    rng = random.Random(ids[0])
    clients = []
    for x in ids:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-{x}")
        client.max_inflight_messages_set(100)
        client.connect("127.0.0.1", port, 60)
        client.loop_start()
        payloads = [encode(measurement(x, 1000 + k, now - 60 * (messages - k)))
                    for k in range(messages)]
        payloads += [p for p in payloads if rng.random() < dup]
        clients.append((client, topic(SITE, x, "measurements"), payloads))
    ready.put(sum(len(p) for _, _, p in clients))
    start.wait()
    infos = []
    for k in range(max(len(p) for _, _, p in clients)):  # edges publish side by side
        for client, name, payloads in clients:
            if k < len(payloads):
                infos.append(client.publish(name, payloads[k], qos=1))
    for info in infos:
        info.wait_for_publish(120)
    for client, _, _ in clients:
        client.disconnect()
        client.loop_stop()


def bench_ingest(folder: Path, edges: int, messages: int, dup: float, procs: int) -> dict:
    from optimizer.history import History
    from optimizer.ingest import Ingest, IngestWorker
    from optimizer.publisher import CentralLink
    from optimizer.state import MemoryState

    try:
        broker = Mosquitto(folder, max_queued_messages=1_000_000).start()
    except FileNotFoundError as exc:
        sys.exit(str(exc))
    ids = [f"x{i:04d}" for i in range(edges)]
    history = History(folder / "ingest.sqlite")
    ingest = Ingest(history, MemoryState(), site=SITE, intersections=ids)
    holder: dict = {}
    link = CentralLink(client_id="tsc-central-bench", port=broker.port,
                       subscriptions=[f"tsc/v1/{SITE}/+/measurements"],
                       sink=lambda item: holder["worker"].offer(item))
    worker = holder["worker"] = IngestWorker(ingest, settle=link.settle)
    worker.start()
    link.start()
    assert link.wait_connected(10), "the centre could not connect"
    ctx = multiprocessing.get_context("spawn")
    start, ready = ctx.Event(), ctx.Queue()
    chunks = [ids[i::procs] for i in range(procs)]
    workers = [ctx.Process(target=edge_process, args=(broker.port, chunk, messages, dup, start,
                                                      ready)) for chunk in chunks]
    for p in workers:
        p.start()
    total = sum(ready.get(timeout=300) for _ in workers)
    unique = edges * messages
    cpu = time.process_time()
    t0 = time.perf_counter()
    start.set()
    deadline = t0 + 600
    while (ingest.stats.measurements < unique or
           ingest.stats.measurements + ingest.stats.duplicates < total):
        if time.perf_counter() > deadline:
            raise RuntimeError(f"ingest stalled: {ingest.stats}")
        time.sleep(0.01)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu
    for p in workers:
        p.join(60)
    link.close()
    worker.stop()
    stored = history.count("measurements")
    history.close()
    broker.stop()
    return {"edges": edges, "messages": total, "unique": unique,
            "duplicates": ingest.stats.duplicates, "stored": stored, "wall_s": round(wall, 2),
            "msg_per_s": round(total / wall), "stored_per_s": round(unique / wall),
            "centre_cpu_us_per_msg": round(cpu / total * 1e6, 1),
            "batches": ingest.stats.batches}


def city(n: int) -> Any:
    """``n`` copies of Elm St & 1st Ave in corridors of 10."""
    import msgspec

    from edge_agent.config import Corridor, Link, SiteConfig, load_site

    base = load_site(Path(__file__).resolve().parents[1] / "configs" / "nema-4phase.toml")
    x0 = base.intersections[0]
    xs = tuple(msgspec.structs.replace(x0, id=f"x{i:04d}") for i in range(n))
    corridors = []
    for c in range(n // 10):
        members = tuple(f"x{i:04d}" for i in range(10 * c, 10 * c + 10))
        links = tuple(Link(upstream=a, downstream=b, length_m=300.0, speed_mps=13.9)
                      for a, b in zip(members, members[1:]))
        corridors.append(Corridor(id=f"c{c}", intersections=members, links=links))
    return SiteConfig(site=SITE, intersections=xs, corridors=tuple(corridors))


def bench_replan(folder: Path, n: int) -> dict:
    import msgspec

    from edge_agent.messages import encode
    from edge_agent.signatures import generate_key, load_private_key
    from optimizer.arbitration import Arbiter
    from optimizer.audit import AuditLog
    from optimizer.central_loop import CentralLoop, CentralOperations, LoopTimes, RegionJob
    from optimizer.history import History
    from optimizer.region_plan import RegionPlanner
    from optimizer.state import MemoryState

    site = city(n)
    now = time.time()
    history = History(folder / "replan.sqlite")
    with history.batch():
        for i, x in enumerate(site.intersections):
            rng = random.Random(i)
            for k in range(15):
                m = measurement(x.id, 1000 + k, now - 900 + 60 * k)
                lanes = tuple(msgspec.structs.replace(lane, count=lane.count + rng.randint(0, 6))
                              for lane in m.lanes)
                m = msgspec.structs.replace(m, lanes=lanes)
                history.add_measurement(m, encode(m), now)

    class Sink:
        sent = 0

        def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
            self.sent += 1

    state, sink = MemoryState(), Sink()
    service = CentralOperations(site, audit=AuditLog(":memory:"), state=state,
                                arbiter=Arbiter(site.intersections), clock=lambda: now)
    planner = RegionPlanner(site)
    loop = CentralLoop(service=service, history=history, state=state, publisher=sink,
                       planner=planner, regions=[RegionJob("city", tuple(x.id for x in
                                                                         site.intersections),
                                                           300)],
                       key=load_private_key(generate_key()[0]), key_id="central",
                       source="bench", times=LoopTimes(heartbeat_s=1e9), clock=lambda: now)
    t0 = time.perf_counter()
    cpu = time.process_time()
    loop.tick(now)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu
    region = loop.status()["regions"]["city"]
    t1 = time.perf_counter()
    windows = history.measurements([x.id for x in site.intersections], now - 900)
    read = time.perf_counter() - t1
    t1 = time.perf_counter()
    RegionPlanner(site).plan(windows, now, 900)
    plan = time.perf_counter() - t1
    history.close()
    return {"intersections": n, "corridors": len(site.corridors),
            "planned": len(region["planned"]), "published": sink.sent - n,  # less heartbeats
            "tick_wall_s": round(wall, 2), "tick_cpu_s": round(cpu, 2),
            "read_window_s": round(read, 2), "estimate_and_optimise_s": round(plan, 2),
            "arbitrate_sign_publish_s": round(wall - region["wall_s"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--dup", type=float, default=0.02)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--intersections", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tsc-bench-central-") as tmp:
        ingest = bench_ingest(Path(tmp), args.edges, args.messages, args.dup, args.procs)
        replan = bench_replan(Path(tmp), args.intersections)
    if args.json:
        print(json.dumps({"ingest": ingest, "replan": replan, "cores": os.cpu_count()}))
        return
    print(f"ingest  {ingest['edges']} edges, {ingest['messages']} messages "
          f"({ingest['duplicates']} duplicates dropped, {ingest['stored']} stored): "
          f"{ingest['msg_per_s']} msg/s, {ingest['stored_per_s']} stored measurements/s, "
          f"{ingest['wall_s']} s; centre CPU {ingest['centre_cpu_us_per_msg']} us/msg "
          f"({os.cpu_count()} cores, edges and broker on the same machine)")
    print(f"re-plan {replan['intersections']} intersections in {replan['corridors']} corridors: "
          f"{replan['tick_wall_s']} s wall for one tick ({replan['planned']} planned, "
          f"{replan['published']} signed and published); read window "
          f"{replan['read_window_s']} s, estimate + optimise {replan['estimate_and_optimise_s']}"
          f" s, arbitrate + sign + publish {replan['arbitrate_sign_publish_s']} s")


if __name__ == "__main__":
    main()
