"""The centre's history in SQLite: measurements, events, edge statuses, acks and plans.

What arrives from the edges is kept here, deduplicated, for the planner (a window of recent
measurements per intersection), for the operations API and for later analysis; what the centre
publishes is kept too, so that plan ids keep rising across restarts (an edge refuses a plan
whose id is not above the last it accepted).

* Measurements and events are keyed by ``(intersection, seq)``: ``seq`` is the edge's spool
  sequence number (never reused, gaps normal), so a QoS 1 redelivery or a spool replay is an
  ``INSERT OR IGNORE`` that inserts nothing and is counted as a duplicate. Order of arrival
  does not matter; windows are read by the measurement's own ``interval_start``.
* Retention: rows whose data time (``interval_start``; for events the first event's time;
  for acks and plans the time received or published) is older than ``retention_s`` are
  deleted by :meth:`History.prune`; data older than that is refused on arrival (it would be
  deleted at once and come back with every redelivery). The latest plan of every
  intersection is never pruned: it carries the plan-id sequence.
* One connection, WAL, ``synchronous=NORMAL``: a crash of the process loses nothing
  committed; a power cut may lose the last commits, which the edges then send again (the
  centre acknowledges a message to the broker only after its commit, see
  :mod:`optimizer.ingest`). Thread-safe (a lock around the connection): the ingest worker
  writes, the loop and the API read.

SQLite errors become :class:`~edge_agent.errors.DeviceError`.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import msgspec

from edge_agent.errors import DeviceError
from edge_agent.messages import Ack, Events, Measurement, Status

__all__ = ["History", "PlanRecord"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS measurements (
    intersection TEXT NOT NULL, seq INTEGER NOT NULL, interval_start REAL NOT NULL,
    interval_s REAL NOT NULL, received REAL NOT NULL, payload BLOB NOT NULL,
    PRIMARY KEY (intersection, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS measurements_time ON measurements (intersection, interval_start);
CREATE TABLE IF NOT EXISTS events (
    intersection TEXT NOT NULL, seq INTEGER NOT NULL, t_first REAL NOT NULL,
    t_last REAL NOT NULL, received REAL NOT NULL, payload BLOB NOT NULL,
    PRIMARY KEY (intersection, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS status (
    intersection TEXT PRIMARY KEY, received REAL NOT NULL, online INTEGER NOT NULL,
    payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS status_log (
    intersection TEXT NOT NULL, received REAL NOT NULL, online INTEGER NOT NULL,
    mode TEXT NOT NULL, detail TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS acks (
    intersection TEXT NOT NULL, plan_id INTEGER NOT NULL, t REAL NOT NULL,
    received REAL NOT NULL, accepted INTEGER NOT NULL, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS plans (
    intersection TEXT NOT NULL, plan_id INTEGER NOT NULL, source TEXT NOT NULL,
    published REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 1,
    outcome TEXT NOT NULL DEFAULT 'pending', reason TEXT NOT NULL DEFAULT '',
    answered REAL, payload BLOB NOT NULL,
    PRIMARY KEY (intersection, plan_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alarms (
    id INTEGER PRIMARY KEY AUTOINCREMENT, t REAL NOT NULL, intersection TEXT,
    kind TEXT NOT NULL, message TEXT NOT NULL);
"""

_MEASUREMENT = msgspec.json.Decoder(Measurement)


@dataclass(frozen=True)
class PlanRecord:
    """A plan the centre published, and what the edge answered."""

    intersection: str
    plan_id: int
    source: str
    published: float
    attempts: int
    outcome: str  # pending, accepted, rejected, unanswered, superseded
    reason: str
    answered: float | None


class History:
    """The SQLite history (see the module docstring); ``":memory:"`` for tests."""

    def __init__(self, path: str | Path, *, retention_s: float = 7 * 86400.0) -> None:
        if not retention_s > 0:
            raise ValueError(f"history.retention_s: must be > 0, got {retention_s!r}")
        self.path, self.retention_s = str(path), float(retention_s)
        self._lock = threading.RLock()
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=10000")  # a replica may share the file
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise DeviceError(f"history {self.path}: cannot open: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction around several writes (the ingest worker commits per batch)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise DeviceError(f"history {self.path}: cannot write: {exc}") from exc
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise DeviceError(f"history {self.path}: cannot commit: {exc}") from exc

    def _write(self, sql: str, args: tuple) -> int:
        with self._lock:
            try:
                return self._db.execute(sql, args).rowcount
            except sqlite3.Error as exc:
                raise DeviceError(f"history {self.path}: cannot write: {exc}") from exc

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise DeviceError(f"history {self.path}: cannot read: {exc}") from exc

    # --- edge -> centre ---------------------------------------------------------------------
    def too_old(self, data_time: float, now: float) -> bool:
        """Older than the retention: refused on arrival."""
        return data_time < now - self.retention_s

    def add_measurement(self, m: Measurement, payload: bytes, received: float) -> bool:
        """Store a measurement; False when ``(intersection, seq)`` is already stored."""
        return self._write(
            "INSERT OR IGNORE INTO measurements VALUES (?, ?, ?, ?, ?, ?)",
            (m.intersection_id, m.seq, m.interval_start, m.interval_s, received,
             payload)) == 1

    def add_events(self, e: Events, payload: bytes, received: float) -> bool:
        """Store an events batch; False when it is a repeat."""
        return self._write("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?)",
                           (e.intersection_id, e.seq, e.events[0].t, e.events[-1].t, received,
                            payload)) == 1

    def set_status(self, s: Status, payload: bytes, received: float) -> None:
        """Keep the latest status of each edge, and log every status received."""
        self._write("INSERT OR REPLACE INTO status VALUES (?, ?, ?, ?)",
                    (s.intersection_id, received, int(s.online), payload))
        self._write("INSERT INTO status_log VALUES (?, ?, ?, ?, ?)",
                    (s.intersection_id, received, int(s.online), s.mode.value, s.detail))

    def add_ack(self, a: Ack, payload: bytes, received: float) -> None:
        """Record an ack, and the answer on the plan it answers (if the centre sent it)."""
        self._write("INSERT INTO acks VALUES (?, ?, ?, ?, ?, ?)",
                    (a.intersection_id, a.plan_id, a.t, received, int(a.accepted), payload))
        reason = a.reason or "; ".join(f"[{v.rule}] {v.message}" for v in a.violations)
        self._write("UPDATE plans SET outcome = ?, reason = ?, answered = ? WHERE "
                    "intersection = ? AND plan_id = ? AND outcome IN ('pending', 'unanswered')",
                    ("accepted" if a.accepted else "rejected", reason[:2000], received,
                     a.intersection_id, a.plan_id))

    # --- reading ----------------------------------------------------------------------------
    def measurements(self, intersections: Iterable[str], since: float,
                     until: float | None = None) -> dict[str, list[Measurement]]:
        """Per intersection, measurements with ``interval_start >= since`` (and ``< until``),
        in ``interval_start`` order."""
        out: dict[str, list[Measurement]] = {}
        upper = float("inf") if until is None else until
        for x in intersections:
            rows = self._read("SELECT payload FROM measurements WHERE intersection = ? AND "
                              "interval_start >= ? AND interval_start < ? "
                              "ORDER BY interval_start, seq", (x, since, upper))
            out[x] = [_MEASUREMENT.decode(r[0]) for r in rows]
        return out

    def count(self, table: str, intersection: str | None = None) -> int:
        """Rows of ``measurements``, ``events``, ``acks``, ``plans`` or ``alarms``."""
        if table not in ("measurements", "events", "acks", "plans", "alarms", "status_log"):
            raise ValueError(f"unknown table {table!r}")
        if intersection is None:
            return self._read(f"SELECT COUNT(*) FROM {table}")[0][0]
        return self._read(f"SELECT COUNT(*) FROM {table} WHERE intersection = ?",
                          (intersection,))[0][0]

    def statuses(self) -> list[bytes]:
        """The latest status payload of every edge."""
        return [r[0] for r in self._read("SELECT payload FROM status ORDER BY intersection")]

    # --- centre -> edge ---------------------------------------------------------------------
    def record_plan(self, intersection: str, plan_id: int, source: str, payload: bytes,
                    published: float) -> None:
        """A newly published plan; earlier plans still waiting for an answer are superseded."""
        with self._lock:
            self._write("UPDATE plans SET outcome = 'superseded' WHERE intersection = ? AND "
                        "outcome = 'pending'", (intersection,))
            self._write("INSERT OR REPLACE INTO plans (intersection, plan_id, source, "
                        "published, payload) VALUES (?, ?, ?, ?, ?)",
                        (intersection, plan_id, source, published, payload))

    def plan_sent_again(self, intersection: str, plan_id: int) -> None:
        self._write("UPDATE plans SET attempts = attempts + 1 WHERE intersection = ? AND "
                    "plan_id = ?", (intersection, plan_id))

    def plan_unanswered(self, intersection: str, plan_id: int) -> None:
        self._write("UPDATE plans SET outcome = 'unanswered' WHERE intersection = ? AND "
                    "plan_id = ? AND outcome = 'pending'", (intersection, plan_id))

    def plan(self, intersection: str, plan_id: int) -> PlanRecord | None:
        rows = self._read("SELECT intersection, plan_id, source, published, attempts, outcome, "
                          "reason, answered FROM plans WHERE intersection = ? AND plan_id = ?",
                          (intersection, plan_id))
        return PlanRecord(*rows[0]) if rows else None

    def last_plan_ids(self) -> dict[str, int]:
        """The highest plan id published per intersection (the arbiter continues from it)."""
        return {x: n for x, n in self._read(
            "SELECT intersection, MAX(plan_id) FROM plans GROUP BY intersection")}

    def add_alarm(self, t: float, intersection: str | None, kind: str, message: str) -> None:
        self._write("INSERT INTO alarms (t, intersection, kind, message) VALUES (?, ?, ?, ?)",
                    (t, intersection, kind, message))

    def alarms(self, limit: int = 100) -> list[dict]:
        rows = self._read("SELECT id, t, intersection, kind, message FROM alarms ORDER BY id "
                          "DESC LIMIT ?", (limit,))
        return [dict(zip(("id", "t", "intersection", "kind", "message"), r)) for r in rows]

    # --- retention --------------------------------------------------------------------------
    def prune(self, now: float) -> dict[str, int]:
        """Delete rows older than the retention; returns the rows deleted per table."""
        cutoff = now - self.retention_s
        out = {}
        with self._lock:
            out["measurements"] = self._write(
                "DELETE FROM measurements WHERE interval_start < ?", (cutoff,))
            out["events"] = self._write("DELETE FROM events WHERE t_last < ?", (cutoff,))
            out["acks"] = self._write("DELETE FROM acks WHERE received < ?", (cutoff,))
            out["status_log"] = self._write("DELETE FROM status_log WHERE received < ?",
                                            (cutoff,))
            out["alarms"] = self._write("DELETE FROM alarms WHERE t < ?", (cutoff,))
            out["plans"] = self._write(
                "DELETE FROM plans WHERE published < ? AND plan_id < (SELECT MAX(plan_id) "
                "FROM plans AS p WHERE p.intersection = plans.intersection)", (cutoff,))
        return out
