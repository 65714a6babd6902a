"""Store-and-forward spool: outgoing messages kept in SQLite until the broker acknowledges them.

paho keeps QoS 1 state in memory only (FIELD-NOTES), so a restart, a crash or a power cut of
the box would lose every message the broker had not acknowledged yet. The edge therefore
appends each outgoing message here first; the publisher sends rows in sequence order and
deletes a row only after the broker's PUBACK. What was appended is sent at least once, in
order, across broker outages, reconnects and restarts of the agent.

Sequence numbers. ``append`` assigns each row the next number of a counter kept in the file,
never reused (not even after rows are delivered and deleted). The wire messages that carry a
``seq`` (measurements, events) are given this number, so a consumer that drops repeats of
``(intersection, seq)`` sees every message exactly once. A new spool file starts counting at
the current time in microseconds (unless ``first_seq`` is given), so a box whose spool was
lost or replaced keeps issuing numbers above those the centre has already seen, instead of
starting again at 1 and being taken for repeats (this needs a clock that is roughly right).

Durability. The file is in WAL mode, and opened in exclusive locking mode so that a second
agent on the same file fails at once instead of sending everything twice.

* An append commits with ``synchronous=FULL``: the WAL is fsynced before ``append`` returns,
  so a row whose number was returned survives ``kill -9``, a kernel panic and a power cut.
  Edge cabinets lose power; ``NORMAL`` would survive only a crash of the process.
* Deleting delivered rows commits with ``synchronous=NORMAL``: a power cut may undo the last
  deletions, and those rows are then sent again. That is a duplicate (removed by the
  consumer's dedup), never a loss; and it saves an fsync per acknowledgement batch. The next
  FULL commit syncs the whole WAL, deletions included.
* ``append_many`` commits a batch in one transaction (one fsync): the publisher batches what
  callers queued meanwhile (group commit), which is where the throughput comes from.

Size bound. Undelivered payloads are kept up to ``max_bytes`` (256 MiB by default: months of
one-minute measurements, days of high-resolution events). Beyond it, in the same transaction
as the append that crossed it, the oldest rows of the lowest priority are deleted until the
spool is back under 90 % of the cap: events first (``PRIORITY_LOW``), then measurements
(``PRIORITY_NORMAL``); rows with ``PRIORITY_KEEP`` (plan acks) are never dropped. Every drop
is counted in the file (``SpoolStats.dropped``, ``last_dropped_seq``) and logged: a warning
when dropping starts and a line when the spool is back under the cap.

One thread: the spool holds one SQLite connection and must be used from the thread that
opened it (sqlite3 enforces that). SQLite errors become :class:`~edge_agent.errors.DeviceError`.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence, Union

from edge_agent.errors import DeviceError

__all__ = ["Spool", "SpoolItem", "SpoolRecord", "SpoolStats", "PRIORITY_LOW",
           "PRIORITY_NORMAL", "PRIORITY_KEEP", "DEFAULT_MAX_BYTES"]

log = logging.getLogger(__name__)

PRIORITY_LOW = 0  # dropped first beyond the cap (events)
PRIORITY_NORMAL = 1  # dropped only when no low-priority rows are left (measurements)
PRIORITY_KEEP = 2  # never dropped (plan acks: the centre must learn of every rejection)
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
_LOW_WATER = 0.9  # after dropping, the spool holds at most this fraction of the cap
_MAX_SEQ = 2**63 - 1
_SCHEMA = 1

#: A payload, or a function that builds it from the sequence number the row is given.
Payload = Union[bytes, Callable[[int], bytes]]


class SpoolItem(NamedTuple):
    """One message to append (see :meth:`Spool.append`)."""

    topic: str
    payload: Payload
    qos: int = 1
    retain: bool = False
    priority: int = PRIORITY_NORMAL


class SpoolRecord(NamedTuple):
    """An undelivered row, as :meth:`Spool.pending` returns it."""

    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(frozen=True)
class SpoolStats:
    """The spool's counters; ``dropped`` and ``last_dropped_seq`` persist across restarts."""

    pending: int
    pending_bytes: int
    next_seq: int
    dropped: int
    last_dropped_seq: int | None
    max_bytes: int


class Spool:
    """A durable, bounded queue of outgoing messages with a never-reused sequence number.

    ``path`` is created if needed. ``first_seq`` sets the first number of a *new* file (it is
    ignored for an existing one). Raises :class:`DeviceError` if the file cannot be opened, is
    not a spool, or is held by another process.
    """

    def __init__(self, path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 first_seq: int | None = None) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes: must be >= 1, got {max_bytes}")
        if first_seq is not None and not 0 <= first_seq <= _MAX_SEQ:
            raise ValueError(f"first_seq: must be within 0..{_MAX_SEQ}, got {first_seq}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._overflowing = False
        self._db: sqlite3.Connection | None = None
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=0.5)
            self._open(first_seq)
        except sqlite3.Error as exc:
            self._abandon()
            raise DeviceError(f"spool {self.path}: cannot open: {exc}") from exc

    def _open(self, first_seq: int | None) -> None:
        db = self._require()
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"journal_mode WAL refused (got {mode})")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("BEGIN IMMEDIATE")  # takes the exclusive lock now: a second agent fails here
        try:
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, "
                       "value INTEGER NOT NULL) WITHOUT ROWID")
            db.execute("CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, "
                       "topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, "
                       "retain INTEGER NOT NULL, priority INTEGER NOT NULL, "
                       "created REAL NOT NULL)")
            db.execute("CREATE INDEX IF NOT EXISTS outbox_drop ON outbox (priority, seq)")
            start = first_seq if first_seq is not None else max(1, time.time_ns() // 1000)
            for key, value in (("schema", _SCHEMA), ("next_seq", start), ("dropped", 0),
                               ("last_dropped_seq", -1)):
                db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
            meta = dict(db.execute("SELECT key, value FROM meta"))
            if meta["schema"] != _SCHEMA:
                raise sqlite3.DatabaseError(f"spool schema {meta['schema']}, expected {_SCHEMA}")
            count, size = db.execute(
                "SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox").fetchone()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._next_seq: int = meta["next_seq"]
        self._dropped: int = meta["dropped"]
        self._last_dropped: int = meta["last_dropped_seq"]
        self._pending, self._bytes = int(count), int(size)

    def _require(self) -> sqlite3.Connection:
        if self._db is None:
            raise DeviceError(f"spool {self.path}: closed")
        return self._db

    def _abandon(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            try:
                db.close()
            except sqlite3.Error as exc:  # already failing; the caller reports the first error
                log.debug("spool %s: close after failure: %s", self.path, exc)

    # --- writing ----------------------------------------------------------------------------
    def append(self, topic: str, payload: Payload, qos: int = 1, retain: bool = False, *,
               priority: int = PRIORITY_NORMAL) -> int:
        """Append one message; return its sequence number once the row is durable.

        ``payload`` may be a function of the sequence number (to write the number into the
        message itself); it is called inside the transaction.
        """
        return self.append_many([SpoolItem(topic, payload, qos, retain, priority)])[0]

    def append_many(self, items: Iterable[SpoolItem]) -> list[int]:
        """Append several messages in one transaction (one fsync); their numbers, in order.

        All or nothing: on an error nothing is appended and :class:`DeviceError` is raised
        (a payload function's own exception propagates unchanged, after the rollback).
        """
        db = self._require()
        batch = list(items)
        for item in batch:
            if item.qos not in (0, 1, 2):
                raise ValueError(f"qos: must be 0, 1 or 2, got {item.qos!r}")
            if item.priority not in (PRIORITY_LOW, PRIORITY_NORMAL, PRIORITY_KEEP):
                raise ValueError(f"priority: must be 0, 1 or 2, got {item.priority!r}")
        if not batch:
            return []
        seq, now, added, rows = self._next_seq, time.time(), 0, []
        if seq + len(batch) - 1 > _MAX_SEQ:
            raise DeviceError(f"spool {self.path}: sequence numbers exhausted")
        try:
            db.execute("PRAGMA synchronous=FULL")
            db.execute("BEGIN IMMEDIATE")
            try:
                for offset, item in enumerate(batch):
                    data = item.payload(seq + offset) if callable(item.payload) else item.payload
                    if not isinstance(data, (bytes, bytearray)):
                        raise TypeError(f"payload: expected bytes, got {type(data).__name__}")
                    rows.append((seq + offset, item.topic, bytes(data), item.qos,
                                 int(bool(item.retain)), item.priority, now))
                    added += len(data)
                db.executemany("INSERT INTO outbox (seq, topic, payload, qos, retain, priority,"
                               " created) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                next_seq = seq + len(batch)
                db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (next_seq,))
                dropped = self._drop_if_full(db, self._bytes + added)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise DeviceError(f"spool {self.path}: append failed: {exc}") from exc
        self._next_seq = next_seq
        self._pending += len(batch) - dropped[0]
        self._bytes += added - dropped[1]
        if dropped[0]:
            self._dropped += dropped[0]
            self._last_dropped = max(self._last_dropped, dropped[2])
        return [row[0] for row in rows]

    def _drop_if_full(self, db: sqlite3.Connection, size: int) -> tuple[int, int, int]:
        """Delete the oldest droppable rows while over the cap: (rows, bytes, last seq)."""
        if size <= self.max_bytes:
            return 0, 0, -1
        target = int(self.max_bytes * _LOW_WATER)
        rows = nbytes = 0
        last = -1
        cursor = db.execute("SELECT seq, length(payload) FROM outbox WHERE priority < ? "
                            "ORDER BY priority, seq", (PRIORITY_KEEP,))
        victims = []
        for seq, length in cursor:
            if size - nbytes <= target:
                break
            victims.append((seq,))
            rows, nbytes, last = rows + 1, nbytes + length, max(last, seq)
        cursor.close()
        db.executemany("DELETE FROM outbox WHERE seq = ?", victims)
        if rows:
            db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (rows,))
            db.execute("UPDATE meta SET value = max(value, ?) WHERE key = 'last_dropped_seq'",
                       (last,))
        if not self._overflowing:
            self._overflowing = True
            log.warning("spool %s: over its cap of %d bytes; dropped the %d oldest undelivered "
                        "messages (up to seq %d); %d dropped in all", self.path, self.max_bytes,
                        rows, last, self._dropped + rows)
        return rows, nbytes, last

    def mark_delivered(self, seqs: Sequence[int] | int) -> int:
        """Delete delivered rows (after the broker's PUBACK); return how many were pending.

        Unknown or already deleted numbers are ignored (a late or repeated acknowledgement).
        """
        db = self._require()
        numbers = [seqs] if isinstance(seqs, int) else list(seqs)
        if not numbers:
            return 0
        removed = nbytes = 0
        try:
            # A deletion lost to a power cut is a resend, not a loss: no fsync here.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("BEGIN IMMEDIATE")
            try:
                for seq in numbers:
                    row = db.execute("DELETE FROM outbox WHERE seq = ? RETURNING length(payload)",
                                     (seq,)).fetchone()
                    if row is not None:
                        removed, nbytes = removed + 1, nbytes + row[0]
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise DeviceError(f"spool {self.path}: marking delivered failed: {exc}") from exc
        self._pending -= removed
        self._bytes -= nbytes
        if self._overflowing and self._bytes <= int(self.max_bytes * _LOW_WATER):
            self._overflowing = False
            log.info("spool %s: back under its cap (%d bytes pending); %d messages dropped in "
                     "all, the last seq %d", self.path, self._bytes, self._dropped,
                     self._last_dropped)
        return removed

    # --- reading ----------------------------------------------------------------------------
    def pending(self, limit: int = 100, after: int = -1) -> list[SpoolRecord]:
        """Up to ``limit`` undelivered rows with a number above ``after``, in order."""
        db = self._require()
        try:
            rows = db.execute("SELECT seq, topic, payload, qos, retain FROM outbox "
                              "WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)).fetchall()
        except sqlite3.Error as exc:
            raise DeviceError(f"spool {self.path}: read failed: {exc}") from exc
        return [SpoolRecord(seq, topic, bytes(payload), qos, bool(retain))
                for seq, topic, payload, qos, retain in rows]

    def stats(self) -> SpoolStats:
        """Counters kept in memory (exact: this object is the file's only writer)."""
        return SpoolStats(pending=self._pending, pending_bytes=self._bytes,
                          next_seq=self._next_seq, dropped=self._dropped,
                          last_dropped_seq=self._last_dropped if self._last_dropped >= 0
                          else None, max_bytes=self.max_bytes)

    def __len__(self) -> int:
        return self._pending

    def close(self) -> None:
        """Checkpoint and close the file; later calls raise DeviceError. Idempotent."""
        if self._db is None:
            return
        db, self._db = self._db, None
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.close()
        except sqlite3.Error as exc:
            raise DeviceError(f"spool {self.path}: close failed: {exc}") from exc

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
