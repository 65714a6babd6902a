"""``tsc-edge run``: the runtime on real protocols, its loop, and a clean shutdown.

:class:`Agent` builds the adapters from an :class:`~edge_agent.agent_config.AgentConfig`: a
:class:`~edge_agent.modbus_link.ModbusLink` to the controller (polled by the runtime, one poll
a step, so a step always sees one consistent poll) and an
:class:`~edge_agent.mqtt_link.EdgeLink` to the broker (SQLite spool, retained status, last
will), and runs an :class:`~edge_agent.runtime.EdgeRuntime` between them:

* a full step every ``poll_period_s`` of the register map (a step that overran is not
  repeated in a burst: the next one is a period later);
* in between, as soon as something arrives from the broker, a step without a poll, so a plan
  is acknowledged, and written when the switch window is open, without waiting for the poll.

:meth:`Agent.stop` (what SIGTERM and SIGINT call) ends the loop; :meth:`Agent.close` then
stops polling and closes the MQTT link, which delivers what it can, publishes the retained
offline status ("shut down cleanly") and closes the spool (anything undelivered is sent by the
next start). pymodbus logs every failed request at ERROR/WARNING on its own logger: the run
raises it to ERROR; the link already logs a lost device once and its recovery once.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from edge_agent.agent_config import AgentConfig
from edge_agent.errors import DeviceError
from edge_agent.link_wire import Inbound
from edge_agent.modbus_core import HealthLog
from edge_agent.modbus_link import ModbusLink, pymodbus_client
from edge_agent.mqtt_link import EdgeLink
from edge_agent.runtime import EdgeRuntime
from edge_agent.runtime_inputs import polled_registers

__all__ = ["Agent", "run_agent"]

log = logging.getLogger(__name__)


class Agent:
    """The runtime between a Modbus link and an MQTT link; see the module docstring.

    ``client_factory`` is the Modbus client factory (pymodbus by default; tests pass the
    virtual controller's loopback client); ``link_factory`` builds the uplink with
    :class:`EdgeLink`'s keywords (``FakeLink`` in tests). ``time_scale``: seconds of
    ``clock`` per wall-clock second (1; the speed of a simulation's clock run faster than
    real time, as in ``tsc-central demo``): polls are paced on the wall clock, everything
    else is timed on ``clock``.
    """

    def __init__(self, config: AgentConfig, *, clock: Callable[[], float] = time.time,
                 client_factory: Callable[[Any], Any] = pymodbus_client,
                 link_factory: Callable[..., Any] = EdgeLink, time_scale: float = 1.0) -> None:
        self.config = config
        f = config.file
        self.modbus = ModbusLink(config.register_map, clock=clock, client_factory=client_factory,
                                 poll=polled_registers(config.register_map), autopoll=False,
                                 time_scale=time_scale)
        self.link = link_factory(
            site=f.site, intersection=f.intersection, spool_path=config.spool_path,
            on_inbound=self._inbound, host=f.mqtt.host, port=f.mqtt.port,
            client_id=f.mqtt.client_id, keepalive_s=f.mqtt.keepalive_s,
            sensor_prefix=f.mqtt.sensor_prefix, clock=clock)
        self.runtime = EdgeRuntime(config, self.modbus, self.link, clock=clock,
                                   time_scale=time_scale)
        self.period = config.register_map.device.poll_period_s
        self._stop = threading.Event()
        self._started = False
        self._errors = HealthLog(log, "runtime step")

    def _inbound(self, inbound: Inbound) -> None:
        self.runtime.on_inbound(inbound)

    def start(self) -> Agent:
        """Start both links (the broker and the controller may still be unreachable)."""
        self.modbus.start()
        try:
            self.link.start()
        except DeviceError:
            self.modbus.stop()
            raise
        self._started = True
        return self

    def stop(self) -> None:
        """End :meth:`run` (any thread; safe in a signal handler)."""
        self._stop.set()
        self.runtime.wake()

    def run(self) -> None:
        """Step until :meth:`stop`."""
        next_step = time.monotonic()
        while not self._stop.is_set():
            wait = next_step - time.monotonic()
            if wait > 0 and self.runtime.wait(wait):
                self._step(poll=False)
                continue
            self._step(poll=True)
            next_step += self.period
            now = time.monotonic()
            if next_step < now:  # a step overran (a mute device): skip, don't burst
                next_step = now + self.period

    def _step(self, *, poll: bool) -> None:
        if self._stop.is_set():
            return
        try:
            self.runtime.step(poll=poll)
        except Exception as exc:  # a bug must not stop the box: said once, the loop goes on
            if not self._errors.failing:
                log.exception("runtime step failed")
            self._errors.failed(time.time(), repr(exc))
        else:
            self._errors.ok(time.time())

    def close(self, timeout: float = 5.0) -> None:
        """Stop polling; deliver, say offline and close the spool. Idempotent."""
        if self._started:
            self._started = False
            self.modbus.stop()
            self.link.close(timeout)

    def __enter__(self) -> Agent:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def run_agent(config: AgentConfig, *, log_level: str = "INFO") -> int:
    """Run the agent in the foreground until SIGTERM or SIGINT; the exit status.

    0 after a clean shutdown, 1 when a link cannot start (the spool is locked by another agent
    or unwritable).
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=log_level, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.ERROR)  # one line per failed request
    agent = Agent(config)
    handlers = {sig: signal.signal(sig, lambda *_: agent.stop())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            agent.start()
        except DeviceError as exc:
            log.error("cannot start: %s", exc)
            return 1
        f = config.file
        log.info("edge agent %s/%s running: controller %s every %g s, broker %s:%d",
                 f.site, f.intersection, config.register_map.device.id, agent.period,
                 f.mqtt.host, f.mqtt.port)
        agent.run()
        log.info("shutting down")
        return 0
    finally:
        agent.close()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
