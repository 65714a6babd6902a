"""A serial null-modem cable for tests: two pseudo-terminals whose traffic is crossed over.

``with NullModem() as (a, b):`` gives two device paths (``/dev/pts/N``); bytes written to one
arrive at the other, as on a cable between two serial ports, so a Modbus RTU slave on ``a``
and a master on ``b`` talk through real serial ports (pyserial, termios) with no hardware and
nothing outside the machine. A thread copies between the two pty masters until closed.
"""

from __future__ import annotations

import os
import select
import threading
import time
import tty

__all__ = ["NullModem"]


class NullModem:
    """Two linked pty device paths (see the module docstring)."""

    def __init__(self) -> None:
        self._fds: list[int] = []
        masters, self.paths = [], []
        for _ in range(2):
            master, slave = os.openpty()
            tty.setraw(master)
            tty.setraw(slave)  # no echo, no line editing: bytes pass as they are
            self._fds += [master, slave]
            masters.append(master)
            self.paths.append(os.ttyname(slave))
        self._masters = masters
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._cross, name="null-modem", daemon=True)
        self._thread.start()

    def _cross(self) -> None:
        a, b = self._masters
        while not self._stop.is_set():
            ready, _, _ = select.select([a, b], [], [], 0.05)
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:  # EIO: no one holds this end open now (a port closed)
                    time.sleep(0.02)  # select keeps saying "readable" until it is reopened
                    continue
                os.write(b if fd == a else a, data)

    def close(self) -> None:
        """Stop crossing and close both ptys."""
        self._stop.set()
        self._thread.join(2)
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def __enter__(self) -> tuple[str, str]:
        return self.paths[0], self.paths[1]

    def __exit__(self, *exc_info: object) -> None:
        self.close()
