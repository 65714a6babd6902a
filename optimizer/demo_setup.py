"""What ``tsc-central demo`` sets up before it runs: the broker and the generated files.

* :class:`DemoBroker`: mosquitto on 127.0.0.1 and a free port when the binary is found (on
  PATH or in sbin), with its own config, data folder and log in the work folder; otherwise an
  embedded amqtt broker in this process (``pip install amqtt``; MQTT 3.1.1 only, so the centre
  then speaks 3.1.1 and plain subscriptions).
* :func:`write_demo_files`: the site file imported from the generated net, an Ed25519 key pair,
  the fallback plan of every intersection (the net's own programme), one agent file and register
  map per intersection, and the central config; all in the work folder, relative paths.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec

from edge_agent.registers import RegisterMap
from edge_agent.signatures import generate_key
from optimizer.mosquitto import Mosquitto, find_mosquitto, free_port
from simulation.net_import import ImportedNet, write_site_config
from simulation.virtual_map import write_register_map

__all__ = ["DemoBroker", "DemoFiles", "find_mosquitto", "free_port", "write_demo_files"]

SITE = "demo"


class DemoBroker:
    """mosquitto (when found) or an embedded amqtt broker on 127.0.0.1 (see the module)."""

    def __init__(self, folder: Path, *, embedded: bool = False) -> None:
        self.folder = Path(folder)
        self.binary = None if embedded else find_mosquitto()
        self.kind = "mosquitto" if self.binary else "amqtt (embedded)"
        self.protocol = 5 if self.binary else 4  # amqtt speaks MQTT 3.1.1
        # Its own process group: Ctrl-C in the terminal reaches the demo, which then stops
        # the broker last (the edges say offline through it).
        self._mosquitto = (Mosquitto(self.folder, binary=self.binary, own_session=True)
                           if self.binary else None)
        self.port = self._mosquitto.port if self._mosquitto else free_port()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None

    def start(self, timeout: float = 10.0) -> DemoBroker:
        """Start the broker and wait until its port accepts connections."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._mosquitto is not None:
            self._mosquitto.start(timeout)
            return self
        self._start_amqtt()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the {self.kind} broker did not listen on port {self.port}")

    def _start_amqtt(self) -> None:
        try:
            from amqtt.broker import Broker  # type: ignore[import-not-found]
        except ImportError as exc:
            raise RuntimeError("mosquitto is not installed and the embedded broker needs "
                               "amqtt: apt-get install mosquitto, or pip install amqtt") from exc
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._amqtt(Broker, ready))
            except BaseException as exc:  # noqa: BLE001 - reported by start()
                failure.append(exc)
            finally:
                ready.set()
                loop.close()

        self._thread = threading.Thread(target=run, name="amqtt-broker", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise RuntimeError(f"the embedded amqtt broker failed: {failure[0]!r}")

    async def _amqtt(self, broker_class: type, ready: threading.Event) -> None:
        self._stopped = asyncio.Event()
        broker = broker_class({"listeners": {"default": {
            "type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "sys_interval": 0, "auth": {"allow-anonymous": True}})
        await broker.start()
        ready.set()
        await self._stopped.wait()
        await broker.shutdown()

    def stop(self) -> None:
        """Stop the broker. Safe to call twice."""
        if self._mosquitto is not None:
            self._mosquitto.stop()
        if self._thread is not None:
            if self._loop is not None and self._stopped is not None:
                self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(10)
            self._thread = None


@dataclass(frozen=True)
class DemoFiles:
    """Where :func:`write_demo_files` put things."""

    site: Path
    central: Path
    agents: dict[str, Path]  # intersection id -> agent file


def write_demo_files(folder: Path, imported: ImportedNet, maps: dict[str, RegisterMap], *,
                     scenario: Path, broker_port: int, api_port: int,
                     validate: bool = False, measurement_interval_s: float = 30.0,
                     replan_s: float = 60.0) -> DemoFiles:
    """Write every file the edges and the centre load (see the module docstring).

    Times are simulated seconds: the demo runs everything on the simulation's clock.
    """
    folder = Path(folder)
    for sub in ("keys", "plans", "edges"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    site = write_site_config(imported, folder / "site.toml", SITE)
    private, public = generate_key()
    key = folder / "keys" / "central.key"
    key.write_bytes(private)
    key.chmod(0o600)
    (folder / "keys" / "central.pub").write_bytes(public)
    agents: dict[str, Path] = {}
    tod: list[str] = []
    for x, regmap in maps.items():
        tls = imported.tls_ids[x]
        plan = imported.designer_plan(tls)
        (folder / "plans" / f"{x}-fixed.json").write_bytes(msgspec.json.encode(plan))
        write_register_map(regmap, folder / "edges" / f"modbus-{x}.toml",
                           [f"Virtual controller of traffic light {tls} (tsc-central demo)."])
        agent = folder / "edges" / f"edge-{x}.toml"
        agent.write_text(f"""# Edge agent of {x} (generated by tsc-central demo; times in simulated s)
site = "{SITE}"
intersection = "{x}"
site_config = "../site.toml"
register_map = "modbus-{x}.toml"
spool = "spool-{x}.sqlite"
measurement_interval_s = {measurement_interval_s:g}

[mqtt]
host = "127.0.0.1"
port = {broker_port}
client_id = "edge-{x}"
keepalive_s = 30

[central]
trusted_keys = {{ central = "../keys/central.pub" }}
heartbeat_timeout_s = 60
good_heartbeats_to_resume = 2
# Longer than a cycle: the centre's first plan waits for its own cycle boundary at a
# controller running nothing of ours, and the edge should not fall back meanwhile.
startup_grace_s = 150

[[time_of_day]]
start = "00:00"
plan = "../plans/{x}-fixed.json"
""", encoding="utf-8")
        agents[x] = agent
        tod.append(f'[[time_of_day]]\nintersection = "{x}"\nstart = "00:00"\n'
                   f'plan = "plans/{x}-fixed.json"\n')
    ids = ", ".join(f'"{x}"' for x in maps)
    validation = f"""[regions.validation]
scenario = "{scenario}"
seeds = 1
horizon_s = 300
jobs = 2
""" if validate else "# validation off (tsc-central demo --validate turns it on)\n"
    central = folder / "central.toml"
    central.write_text(f"""# The centre of tsc-central demo (generated; times in simulated s)
site_config = "site.toml"
central_id = "central-demo"
timezone = "UTC"

[storage]
db = "central.sqlite"
history = "history.sqlite"

[signing]
key = "keys/central.key"
key_id = "central"

[mqtt]
host = "127.0.0.1"
port = {broker_port}
session_expiry_s = 0

[api]
enabled = true
host = "127.0.0.1"
port = {api_port}

[loop]
tick_s = 0.05
heartbeat_s = 5
ack_timeout_s = 60
max_attempts = 3
stale_after_s = 120

[planning]
window_s = 300
halflife_s = 120
plan_ttl_s = 900

[[regions]]
id = "corridor"
intersections = [{ids}]
replan_s = {replan_s:g}
{validation}
{chr(10).join(tod)}""", encoding="utf-8")
    return DemoFiles(site=site, central=central, agents=agents)
