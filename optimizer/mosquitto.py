"""A private mosquitto on a loopback port: the demo's broker, the tests' and the benchmarks'.

``Mosquitto(folder).start()`` writes ``<folder>/mosquitto.conf`` and runs
``mosquitto -c <folder>/mosquitto.conf`` on a free port of 127.0.0.1; ``stop()`` ends it with
SIGTERM (it saves its persistence database first) and ``start()`` again restarts it on the same
port, as a broker outage would. Options:

* ``persistence``: keep retained messages and persistent sessions (with their queued
  messages) across a restart, as in production;
* ``max_queued_messages``: raised well above mosquitto's default of 1000, beyond which it drops
  a client's queued QoS 1 messages silently (FIELD-NOTES);
* ``cores``: pin the broker to these CPUs (a benchmark keeps it off the measured process's);
* ``extra_config``: more lines for its config file (``set_tcp_nodelay true``...).

Run as root, mosquitto switches to the user ``mosquitto``, which cannot write a private
temporary folder: the log and the persistence database would silently not be written. The
config therefore names the current user (``user root`` keeps root; for anyone else the option
is moot), and :meth:`Mosquitto.start` fails if the log file was not created.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Collection
from pathlib import Path

__all__ = ["MOSQUITTO", "Mosquitto", "find_mosquitto", "free_port"]

MOSQUITTO = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto() -> str | None:
    """The mosquitto binary on PATH or in sbin (Debian installs it there), or None."""
    for name in MOSQUITTO:
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port(preferred: int = 0) -> int:
    """``preferred`` if it is free on 127.0.0.1, else one the OS picks."""
    for port in ((preferred, 0) if preferred else (0,)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise OSError("no free port on 127.0.0.1")


class Mosquitto:
    """One broker instance under ``folder`` (module docstring); restartable on its port.

    Raises FileNotFoundError when no binary is given and none is installed.
    """

    def __init__(self, folder: Path | str, *, binary: str | None = None,
                 persistence: bool = False, max_queued_messages: int = 100_000,
                 cores: Collection[int] = (), own_session: bool = False,
                 extra_config: str = "") -> None:
        found = binary or find_mosquitto()
        if found is None:
            raise FileNotFoundError("mosquitto not found: apt-get install mosquitto")
        self.binary = found
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = self.folder / "mosquitto.conf"
        self.log = self.folder / "mosquitto.log"
        self.cores = set(cores)
        # A process group of its own keeps Ctrl-C in a terminal away from the broker, so that
        # the program that started it can stop it last (its clients say offline through it).
        self.own_session = own_session
        store = (f"persistence true\npersistence_location {self.folder}/\n" if persistence
                 else "persistence false\n")
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            f"{store}"
            f"max_queued_messages {max_queued_messages}\n"
            f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
            + (extra_config.rstrip("\n") + "\n" if extra_config else ""))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> Mosquitto:
        """Start the broker and wait until its port accepts connections (RuntimeError if not)."""
        cores = self.cores
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config)], stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, start_new_session=self.own_session,
            preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                log = self.log.read_text() if self.log.exists() else ""
                code = self.process.returncode
                self.stop()
                raise RuntimeError(f"mosquitto exited with {code}: {err}{log[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            if not self.log.exists():  # it could not write its folder (module docstring)
                self.stop()
                raise RuntimeError(f"mosquitto cannot write {self.folder}")
            return self
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout} s")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the broker (SIGTERM: it saves its persistence database first)."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, sig)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if process.stderr:
            process.stderr.close()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
