"""What the centre's SQLite stores share: how a file is opened and how a write is made atomic.

The audit log, the user store and the override store (and the history) each keep one
connection, shared by the service's threads under the store's own lock, in autocommit mode so
that a transaction is always explicit (:func:`immediate`). Files other than ``":memory:"``
run in WAL mode: readers (the API) never wait for the writer, and several processes (the
centre and ``tsc-central audit``) can share one file.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

__all__ = ["SqliteStore", "connect", "immediate"]

BUSY_TIMEOUT_S = 10.0  # another process writing the same file


def connect(path: str, schema: str) -> sqlite3.Connection:
    """Open ``path`` (autocommit, usable from any thread, WAL unless in memory) and create
    what ``schema`` creates. Raises sqlite3.Error; the caller names the store in its error."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                         timeout=BUSY_TIMEOUT_S)
    try:
        if path != ":memory:":
            db.execute("PRAGMA journal_mode=WAL")
        db.executescript(schema)
    except BaseException:
        db.close()
        raise
    return db


@contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[None]:
    """One ``BEGIN IMMEDIATE`` transaction: the write lock is taken at the start, so a read
    and the write that depends on it (the next id, the head of a chain) cannot interleave
    with another writer's; rolled back if the block raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class SqliteStore:
    """A store on one SQLite file (``":memory:"`` for tests): one connection under one lock.

    A subclass names itself (``what``), its error class (raised, naming the file, when the
    file cannot be opened) and its ``schema``; its methods use ``self._db`` under
    ``self._lock``.
    """

    what: ClassVar[str]
    error: ClassVar[type[Exception]]
    schema: ClassVar[str]

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        try:
            self._db = connect(self.path, self.schema)
        except sqlite3.Error as exc:
            raise self.error(f"{self.what} {self.path}: cannot open: {exc}") from exc

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()
