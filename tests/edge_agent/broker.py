"""A real mosquitto for integration tests: own config file, data dir and loopback port.

``Mosquitto(tmp_dir).start()`` runs ``mosquitto -c <dir>/mosquitto.conf`` on a free port of
127.0.0.1 with persistence on (so a consumer's persistent session and its queued messages
survive a restart, as in production) and ``max_queued_messages`` raised above the default
1000 (mosquitto drops the excess silently, FIELD-NOTES). ``stop()`` ends it with SIGTERM (it
saves its database); ``start()`` again restarts it on the same port. Tests skip, with the
reason, when the binary is missing.

Run as root, mosquitto switches to the user ``mosquitto``, which cannot write a private
temporary directory: the log and the persistence database would silently not be written, and a
consumer's session would not survive a restart. The config therefore names the current user
(``user root`` keeps root; for anyone else the option is moot), and :meth:`Mosquitto.start`
fails if the log file was not created.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto() -> str | None:
    """The mosquitto binary on PATH or in sbin (Debian installs it there), or None."""
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_mosquitto() -> str:
    """The binary, or skip the calling test with a clear reason."""
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto not installed (apt-get install mosquitto): integration tests "
                    "need a real broker")
    return binary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Mosquitto:
    """One broker instance under ``directory``; restartable on the same port."""

    def __init__(self, directory: Path, binary: str | None = None, *,
                 max_queued_messages: int = 100_000) -> None:
        self.binary = binary or require_mosquitto()
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = self.directory / "mosquitto.conf"
        self.log = self.directory / "mosquitto.log"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.directory}/\n"
            f"max_queued_messages {max_queued_messages}\n"
            f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            f"user {pwd.getpwuid(os.getuid()).pw_name}\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> Mosquitto:
        """Start the broker and wait until its port accepts connections."""
        self.process = subprocess.Popen([self.binary, "-c", str(self.config)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                log = self.log.read_text() if self.log.exists() else ""
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}: "
                                   f"{err}{log[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            if not self.log.exists():  # it could not write its directory (see above)
                self.stop()
                raise RuntimeError(f"mosquitto cannot write {self.directory}")
            return self
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout} s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the broker (SIGTERM: it saves its persistence database first)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
