"""The central service end to end over a real mosquitto: ingest once despite duplicates, signed
retained plans, acks, an alarm on rejection, heartbeats, an override through the API that is
published, audited and handed back at expiry, a restart that resumes the persistent session and
the plan ids, the edge's last will; and two replicas sharing a subscription."""

from __future__ import annotations

import queue
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.messages import (
    Ack, EdgeMode, Heartbeat, LaneMeasurement, Measurement, PlanMessage, Status,
    ViolationRecord, decode, encode, offline_status,
)
from edge_agent.plan import PlanSource
from edge_agent.signatures import generate_key, load_public_key, verify_plan
from edge_agent.topics import TopicKind, shared_subscription, subscription, topic
from optimizer.central_config import load_central_config
from optimizer.central_service import CentralService
from optimizer.history import History
from optimizer.ingest import Ingest, IngestWorker
from optimizer.publisher import CentralLink
from optimizer.state import MemoryState

from conftest import CONFIGS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "edge_agent"))
from broker import Mosquitto  # noqa: E402  (the shared mosquitto fixture of the edge tests)

pytestmark = pytest.mark.integration
SITE, X = "downtown", "elm-1st"


def wait_for(condition: Callable[[], object], timeout: float = 10.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or condition}")


@pytest.fixture
def broker(tmp_path: Path):
    with Mosquitto(tmp_path / "broker") as running:
        yield running


def write_config(tmp_path: Path, port: int) -> Path:
    private, public = generate_key()
    (tmp_path / "central.key").write_bytes(private)
    (tmp_path / "central.pub").write_bytes(public)
    plans = CONFIGS / "plans"
    path = tmp_path / "central.toml"
    path.write_text(f"""
site_config = "{CONFIGS / 'nema-4phase.toml'}"
central_id = "central-test"
[storage]
db = "{tmp_path / 'central.sqlite'}"
history = "{tmp_path / 'history.sqlite'}"
[signing]
key = "central.key"
[mqtt]
port = {port}
[api]
enabled = false
[loop]
tick_s = 0.05
heartbeat_s = 0.3
ack_timeout_s = 1.0
max_attempts = 3
[planning]
min_change_s = 0  # every re-plan is published: the test follows one plan after another
[[regions]]
id = "elm"
intersections = ["{X}"]
replan_s = 1.5
[[time_of_day]]
intersection = "{X}"
start = "00:00"
plan = "{plans / 'elm-1st-offpeak.toml'}"
""")
    return path


class Edge:
    """A plain paho client playing the edge of elm-1st: plans and heartbeats in, acks out."""

    def __init__(self, port: int, public_pem: bytes) -> None:
        self.trusted = {"central": load_public_key(public_pem)}
        self.plans: list[PlanMessage] = []
        self.beats: list[Heartbeat] = []
        self.reject_next_adaptive = False
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edge-elm-1st")
        self.client.will_set(topic(SITE, X, "status"), encode(offline_status(SITE, X)), 1, True)
        self.client.on_connect = lambda c, *a: c.subscribe(
            [(topic(SITE, X, "plan"), 1), (topic(SITE, X, "heartbeat"), 0)])
        self.client.on_message = lambda c, u, m: self._inbox.put((m.topic, m.payload))
        self.client.connect("127.0.0.1", port, 5)
        self.client.loop_start()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def send(self, message, kind: str, retain: bool = False) -> None:
        self.client.publish(topic(SITE, X, kind), encode(message), qos=1,
                            retain=retain).wait_for_publish(5)

    def _run(self) -> None:  # acks from this thread, never from paho's callbacks
        while not self._stop:
            try:
                name, payload = self._inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            if name.endswith("/heartbeat"):
                self.beats.append(decode(payload, Heartbeat))
                continue
            message = decode(payload, PlanMessage)
            assert verify_plan(message, self.trusted), "the plan's signature does not verify"
            plan = message.plan
            if any(p.plan.plan_id == plan.plan_id for p in self.plans):
                continue  # a resend or the retained copy
            self.plans.append(message)
            reject = self.reject_next_adaptive and plan.source == PlanSource.ADAPTIVE
            if reject:
                self.reject_next_adaptive = False
            violations = (ViolationRecord(rule="min-green", phase=2,
                                          message="green 3.0 s < min green 8.0 s"),) \
                if reject else ()
            self.send(Ack(site=SITE, intersection_id=X, plan_id=plan.plan_id, t=time.time(),
                          accepted=not reject, violations=violations), "ack")

    def last(self, source: PlanSource | None = None) -> PlanMessage | None:
        found = [p for p in self.plans if source is None or p.plan.source == source]
        return found[-1] if found else None

    def close(self, *, cleanly: bool = True) -> None:
        self._stop = True
        self._thread.join(2)
        if cleanly:
            self.client.disconnect()
        else:  # vanish: the broker publishes the last will
            self.client.socket().close()
        self.client.loop_stop()


def measurement(seq: int, start: float) -> Measurement:
    lanes = tuple(LaneMeasurement(lane=lane, count=c, flow_vph=c * 60.0, occupancy=0.15,
                                  queue_veh=2.0)
                  for lane, c in (("elm-1st_N_0", 10), ("elm-1st_N_1", 9), ("elm-1st_S_0", 11),
                                  ("elm-1st_S_1", 8), ("elm-1st_E_0", 4), ("elm-1st_W_0", 5)))
    return Measurement(site=SITE, intersection_id=X, seq=seq, interval_start=start,
                       interval_s=60.0, lanes=lanes)


def test_the_central_service_end_to_end(tmp_path: Path, broker: Mosquitto) -> None:
    config = load_central_config(write_config(tmp_path, broker.port))
    edge = Edge(broker.port, (tmp_path / "central.pub").read_bytes())
    central = CentralService(config)
    central.start()
    try:
        assert central.link.wait_connected(10)
        now = time.time()
        edge.send(Status(site=SITE, intersection_id=X, t=now, online=True,
                         mode=EdgeMode.CENTRAL, controller_ok=True), "status", retain=True)
        for k in range(10):
            edge.send(measurement(1000 + k, now - 600 + 60 * k), "measurements")
        edge.send(measurement(1005, now - 300), "measurements")  # a duplicate (QoS 1 resend)
        wait_for(lambda: central.ingest.stats.duplicates == 1, what="the duplicate")
        assert central.history.count("measurements") == 10
        assert central.ingest.stats.measurements == 10

        # A plan is computed, signed, published retained; the ack is recorded.
        first = wait_for(edge.last, what="a first plan")
        wait_for(lambda: central.history.plan(X, first.plan.plan_id).outcome == "accepted",
                 what="the ack recorded")
        adaptive = wait_for(lambda: edge.last(PlanSource.ADAPTIVE), what="an adaptive plan")
        assert "Webster" in adaptive.plan.explanation
        retained = []
        probe = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="probe")
        probe.on_message = lambda c, u, m: retained.append(m.retain)
        probe.connect("127.0.0.1", broker.port)
        probe.subscribe(topic(SITE, X, "plan"), 1)
        probe.loop_start()
        wait_for(lambda: retained, what="the retained plan")
        probe.loop_stop()
        assert retained[0] is True

        # A rejected ack raises an alarm, audited.
        edge.reject_next_adaptive = True
        wait_for(lambda: any(a["kind"] == "rejected" for a in central.loop.alarms),
                 what="the alarm")
        assert any(e.action == "plan.rejected" for e in central.audit.entries())
        assert len(edge.beats) >= 2 and edge.beats[-1].source == "central-test"

        # An override through the API: published, audited, handed back at expiry.
        token = central.users.add("olga", "operator", time.time())
        api = TestClient(central.app(tick_every_s=None))
        headers = {"Authorization": f"Bearer {token}"}
        answer = api.post("/api/v1/overrides", headers=headers, json={
            "intersection_id": X, "pattern": {"kind": "extend-phase", "phase": 2,
                                              "seconds": 10},
            "duration_s": 3, "reason": "parade on Elm St"})
        assert answer.status_code == 201, answer.text
        override = wait_for(lambda: edge.last(PlanSource.OVERRIDE), what="the override plan")
        assert override.plan.plan_id == answer.json()["plan"]["plan_id"]
        create = [e for e in central.audit.entries() if e.action == "override.create"]
        assert create[0].who == "olga" and create[0].outcome == "accepted"
        back = wait_for(lambda: (p := edge.last()) and p.plan.source == PlanSource.ADAPTIVE
                        and p.plan.plan_id > override.plan.plan_id and p, 10, "the hand-back")
        expired = [e for e in central.audit.entries() if e.action == "override.expire"]
        assert expired and expired[0].details_obj["handed_back_to"] == "adaptive"
        view = api.get("/api/v1/intersections", headers=headers).json()["intersections"][0]
        assert view["mode"] == "adaptive" and view["health"] == "ok"
        assert view["kpis"]["values"]["throughput_vph"] == 47 * 60
        loop = api.get("/api/v1/central", headers=headers).json()
        assert loop["ingest"]["duplicates"] == 1 and loop["alarms"][0]["kind"] == "rejected"
        assert api.get("/api/v1/central").status_code == 401
        last_id = max(p.plan.plan_id for p in edge.plans)
        assert back.plan.plan_id <= last_id
    finally:
        central.stop()

    # While the centre is down the broker queues for its persistent session; a restart
    # ingests what it missed and continues the plan ids.
    for k in range(3):
        edge.send(measurement(2000 + k, time.time() - 120 + 60 * k), "measurements")
    central = CentralService(config)
    central.start()
    try:
        wait_for(lambda: central.history.count("measurements") == 13, what="queued messages")
        newer = wait_for(lambda: [p for p in edge.plans if p.plan.plan_id > last_id],
                         what="a plan after the restart")
        assert newer[0].plan.plan_id == last_id + 1
        edge.close(cleanly=False)  # the edge vanishes: its last will arrives
        wait_for(lambda: (s := central.state.status(X)) is not None and not s.online,
                 what="the last will")
    finally:
        central.stop()


def test_two_replicas_with_a_shared_subscription_split_the_load(tmp_path: Path,
                                                                broker: Mosquitto) -> None:
    ids = [f"x{i}" for i in range(20)]
    store = tmp_path / "shared-history.sqlite"  # both replicas write one history
    replicas = []
    for name in ("a", "b"):
        seen: list[tuple[str, int]] = []
        history = History(store)
        ingest = Ingest(history, MemoryState(), site=SITE, intersections=ids)
        holder: dict = {}

        def sink(item, seen=seen, holder=holder):
            m = decode(item.payload, Measurement)
            seen.append((m.intersection_id, m.seq))
            holder["worker"].offer(item)

        link = CentralLink(client_id=f"tsc-central-{name}", sink=sink, port=broker.port,
                           subscriptions=[shared_subscription(
                               "optimizer", subscription(SITE, "+", TopicKind.MEASUREMENTS))])
        holder["worker"] = IngestWorker(ingest, settle=link.settle)
        holder["worker"].start()
        link.start()
        replicas.append((link, holder["worker"], history, seen))
    try:
        for link, *_ in replicas:
            assert link.wait_connected(10)
        publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edges")
        publisher.connect("127.0.0.1", broker.port)
        publisher.loop_start()
        now = time.time()
        infos = [publisher.publish(topic(SITE, ids[i % 20], "measurements"),
                                   encode(measurement(i, now - 60)).replace(
                                       b'"elm-1st"', f'"{ids[i % 20]}"'.encode()), qos=1)
                 for i in range(200)]
        for info in infos:
            info.wait_for_publish(5)
        wait_for(lambda: sum(len(r[3]) for r in replicas) >= 200, what="every message")
        time.sleep(0.3)  # nothing more arrives
        a, b = (set(r[3]) for r in replicas)
        assert len(replicas[0][3]) > 0 and len(replicas[1][3]) > 0  # each gets a share
        assert len(replicas[0][3]) + len(replicas[1][3]) == 200  # ... exactly once in all
        assert not a & b and len(a | b) == 200
        for _, worker, _, _ in replicas:
            assert worker.wait_idle(5)
        assert replicas[0][2].count("measurements") == 200
        publisher.loop_stop()
    finally:
        for link, worker, history, _ in replicas:
            link.close()
            worker.stop()
            history.close()


def test_region_validation_in_sumo_on_the_measured_demand(tmp_path: Path) -> None:
    """The gate validator the loop calls for a region with a scenario: counts from the
    window's measurements replayed in SUMO, candidate against the plans in force."""
    import msgspec

    from edge_agent.config import load_site
    from optimizer.central_config import Validation
    from optimizer.central_gate import gate_validator
    from optimizer.region_plan import RegionPlanner
    from simulation.demo_scenario import generate_corridor
    from simulation.net_import import import_net, write_site_config

    cfg = generate_corridor(tmp_path / "scenario", intersections=2, duration_s=900)
    imported = import_net(next((tmp_path / "scenario").glob("*.net.xml")))
    site = load_site(write_site_config(imported, tmp_path / "site.toml", "demo"))
    now, seq, windows = 1_800_000_000.0, 0, {}
    for x in site.intersections:
        lanes = [lane for a in x.approaches for lane in a.lanes]
        windows[x.id] = []
        for k in range(10):
            seq += 1
            windows[x.id].append(Measurement(
                site="demo", intersection_id=x.id, seq=seq, interval_start=now - 600 + 60 * k,
                interval_s=60.0, lanes=tuple(LaneMeasurement(lane=lane, count=6, flow_vph=360.0,
                                                             occupancy=0.1) for lane in lanes)))
    results = RegionPlanner(site).plan(windows, now, 900)
    candidates = {x: r.plan for x, r in results.items()}
    assert all(candidates.values())
    check = gate_validator(cfg, Validation(scenario=str(cfg), seeds=1, horizon_s=600), 900)
    accepted, reasons = check("corridor", candidates, {}, windows, now)
    assert isinstance(accepted, bool)
    assert any(r.startswith("demand: ") and "960 counted" in r for r in reasons)
    assert any(r.startswith("delay change ") for r in reasons)
    first = next(iter(candidates.values()))
    ring = first.rings[0]
    broken = msgspec.structs.replace(first, rings=((msgspec.structs.replace(
        ring[0], yellow=2.0, split=ring[0].split - 1.0), *ring[1:]),),
        cycle=first.cycle - 1.0)
    accepted, reasons = check("corridor", {first.intersection_id: broken}, {}, windows, now)
    assert not accepted and any(r.startswith("guard: ") for r in reasons)


def test_tsc_central_run_serves_and_stops_on_sigterm(tmp_path: Path, broker: Mosquitto) -> None:
    import os
    import signal
    import subprocess
    import urllib.error
    import urllib.request

    from broker import free_port

    path = write_config(tmp_path, broker.port)
    port = free_port()
    path.write_text(path.read_text().replace("enabled = false", f"enabled = true\nport = {port}"))
    process = subprocess.Popen([sys.executable, "-m", "optimizer.cli", "run", "--config",
                                str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def answers() -> int | None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/central", timeout=1)
            except urllib.error.HTTPError as exc:
                return exc.code
            except OSError:
                return None
            return 200
        assert wait_for(answers, 20, "the API") == 401  # up, and it wants a token
        history = History(tmp_path / "history.sqlite")
        wait_for(lambda: history.last_plan_ids().get(X), 10, "a plan published")
        history.close()
    finally:
        os.kill(process.pid, signal.SIGTERM)
        out = process.communicate(timeout=20)[0].decode()
    assert process.returncode == 0, out
    assert "published" in out and "stopped" in out
