"""The operations audit log: append-only, tamper-evident, in SQLite.

Every entry records who did what (an action, the intersection it concerns and a JSON object of
details), when, why (the reason given) and the outcome, plus the SHA-256 hash of the entry
before it. An entry's own hash covers a canonical encoding of all of those fields *including*
the previous hash, so the entries form a chain: changing, inserting or deleting any entry breaks
every link after it, and :meth:`AuditLog.verify` names the first broken one.

There is no update or delete API, and SQLite triggers refuse ``UPDATE`` and ``DELETE`` on the
table as a second line. Someone with write access to the file can still drop the triggers and
rewrite it; the chain is what makes that visible. Cutting entries off the *end* of the chain
leaves a shorter chain that is still consistent: keep the head (``VerifyResult.head_seq`` and
``head_hash``) somewhere else, e.g. in a ticket or a second log, and pass it to ``verify`` as
``anchor`` to detect that too.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sqlite3
from dataclasses import dataclass
from typing import Any, Mapping

from edge_agent.errors import TscError
from optimizer.sqlite_db import SqliteStore, immediate

__all__ = ["GENESIS_HASH", "AuditEntry", "AuditError", "AuditLog", "VerifyResult",
           "entry_hash"]

GENESIS_HASH = "0" * 64  # the "previous hash" of the first entry
_ACTION = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*$")
_MAX_TEXT = 2000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq          INTEGER PRIMARY KEY,
    t            REAL    NOT NULL,
    who          TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    intersection TEXT,
    details      TEXT    NOT NULL,
    reason       TEXT    NOT NULL,
    outcome      TEXT    NOT NULL,
    prev_hash    TEXT    NOT NULL,
    hash         TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_intersection ON audit (intersection, seq);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: entries cannot be changed'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: entries cannot be deleted'); END;
"""
_COLUMNS = "seq, t, who, action, intersection, details, reason, outcome, prev_hash, hash"


class AuditError(TscError):
    """The audit log could not be opened, read or written (wraps the SQLite error)."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry of the log. ``details`` is the JSON text exactly as stored and hashed."""

    seq: int
    t: float
    who: str
    action: str
    intersection: str | None
    details: str
    reason: str
    outcome: str
    prev_hash: str
    hash: str

    @property
    def details_obj(self) -> Any:
        """The details decoded from JSON."""
        return json.loads(self.details)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict for JSON output (details decoded)."""
        return {"seq": self.seq, "t": self.t, "who": self.who, "action": self.action,
                "intersection": self.intersection, "details": self.details_obj,
                "reason": self.reason, "outcome": self.outcome, "prev_hash": self.prev_hash,
                "hash": self.hash}


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """What :meth:`AuditLog.verify` found: ``ok``, or the first broken entry and why."""

    ok: bool
    checked: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None = None
    problem: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A plain dict for JSON output."""
        return {"ok": self.ok, "checked": self.checked, "head_seq": self.head_seq,
                "head_hash": self.head_hash, "first_bad_seq": self.first_bad_seq,
                "problem": self.problem}


def entry_hash(seq: int, t: float, who: str, action: str, intersection: str | None,
               details: str, reason: str, outcome: str, prev_hash: str) -> str:
    """SHA-256 (hex) of the canonical encoding of an entry, which includes ``prev_hash``.

    The encoding is a JSON array in a fixed order; floats are written in their shortest
    round-trip form, so the hash depends on the values alone and survives SQLite's REAL.
    """
    canonical = json.dumps(["tsc-audit-v1", seq, t, who, action, intersection, details, reason,
                            outcome, prev_hash], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _text(value: Any, field: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ValueError(f"audit {field}: must be text, got {value!r}")
    if not allow_empty and not value.strip():
        raise ValueError(f"audit {field}: must not be empty")
    if len(value) > _MAX_TEXT:
        raise ValueError(f"audit {field}: at most {_MAX_TEXT} characters, got {len(value)}")
    return value


class AuditLog(SqliteStore):
    """The append-only, hash-chained audit log in an SQLite file (``":memory:"`` for tests).

    Safe to share between threads; several processes may append to the same file (each append
    is one ``BEGIN IMMEDIATE`` transaction, so two writers cannot both chain onto one head).
    """

    what = "audit log"
    error = AuditError
    schema = _SCHEMA

    def append(self, *, t: float, who: str, action: str, intersection: str | None,
               details: Mapping[str, Any], reason: str, outcome: str) -> AuditEntry:
        """Add one entry at the head of the chain and return it.

        ``action`` is a dotted lower-case name (``override.create``); ``details`` must be
        JSON-serialisable; ``reason`` may be empty only where there is none (a system action).
        """
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise ValueError(f"audit t: must be a finite POSIX time, got {t!r}")
        who = _text(who, "who")
        if not isinstance(action, str) or not _ACTION.match(action):
            raise ValueError(f"audit action: must be a dotted lower-case name such as "
                             f"'override.create', got {action!r}")
        if intersection is not None:
            intersection = _text(intersection, "intersection")
        if not isinstance(details, Mapping):
            raise ValueError(f"audit details: must be a JSON object, got {type(details).__name__}")
        try:
            details_text = json.dumps(details, sort_keys=True, ensure_ascii=False,
                                      separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"audit details: not JSON-serialisable: {exc}") from exc
        reason = _text(reason, "reason", allow_empty=True)
        outcome = _text(outcome, "outcome")
        t = float(t)
        with self._lock:
            try:
                with immediate(self._db):
                    row = self._db.execute(
                        "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
                    seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS_HASH)
                    digest = entry_hash(seq, t, who, action, intersection, details_text, reason,
                                        outcome, prev)
                    self._db.execute(f"INSERT INTO audit ({_COLUMNS}) VALUES "
                                     f"(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                     (seq, t, who, action, intersection, details_text, reason,
                                      outcome, prev, digest))
            except sqlite3.Error as exc:
                raise AuditError(f"audit log {self.path}: cannot append: {exc}") from exc
        return AuditEntry(seq, t, who, action, intersection, details_text, reason, outcome,
                          prev, digest)

    def entries(self, *, after: int = 0, limit: int = 100, intersection: str | None = None,
                newest_first: bool = False) -> list[AuditEntry]:
        """Entries with ``seq > after`` (optionally of one intersection), at most ``limit``.

        Oldest first by default; ``newest_first`` gives the latest ``limit`` entries.
        """
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise ValueError(f"audit after: must be an integer >= 0, got {after!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise ValueError(f"audit limit: must be an integer within 1..10000, got {limit!r}")
        where, args = "seq > ?", [after]
        if intersection is not None:
            where += " AND intersection = ?"
            args.append(intersection)
        order = "DESC" if newest_first else "ASC"
        rows = self._query(f"SELECT {_COLUMNS} FROM audit WHERE {where} ORDER BY seq {order} "
                           f"LIMIT ?", (*args, limit))
        return [AuditEntry(*row) for row in rows]

    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last entry; (0, GENESIS_HASH) for an empty log."""
        rows = self._query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", ())
        return (rows[0][0], rows[0][1]) if rows else (0, GENESIS_HASH)

    def verify(self, anchor: tuple[int, str] | None = None) -> VerifyResult:
        """Walk the chain from the first entry; report the first entry that breaks it.

        An entry is broken when its sequence number is not the next one (an entry was deleted
        or inserted), its ``prev_hash`` is not the previous entry's hash, or its own hash does
        not match its contents. ``anchor`` = (seq, hash) recorded earlier from
        :meth:`head`: the chain must still hold that entry with that hash (catches an end cut
        off).
        """
        prev_seq, prev_hash, checked = 0, GENESIS_HASH, 0
        with self._lock:
            try:
                cursor = self._db.execute(f"SELECT {_COLUMNS} FROM audit ORDER BY seq")
                for row in cursor:
                    entry = AuditEntry(*row)
                    problem = self._check(entry, prev_seq, prev_hash)
                    if problem:
                        return VerifyResult(False, checked, prev_seq, prev_hash, entry.seq,
                                            problem)
                    if anchor is not None and entry.seq == anchor[0] and entry.hash != anchor[1]:
                        return VerifyResult(False, checked, prev_seq, prev_hash, entry.seq,
                                            f"hash differs from the anchor recorded for "
                                            f"entry {anchor[0]}")
                    prev_seq, prev_hash, checked = entry.seq, entry.hash, checked + 1
            except sqlite3.Error as exc:
                raise AuditError(f"audit log {self.path}: cannot read: {exc}") from exc
        if anchor is not None and prev_seq < anchor[0]:
            return VerifyResult(False, checked, prev_seq, prev_hash, prev_seq + 1,
                                f"the chain ends at entry {prev_seq} but the anchor records "
                                f"entry {anchor[0]}: entries were cut off the end")
        return VerifyResult(True, checked, prev_seq, prev_hash)

    @staticmethod
    def _check(entry: AuditEntry, prev_seq: int, prev_hash: str) -> str:
        if entry.seq != prev_seq + 1:
            return (f"sequence jumps from {prev_seq} to {entry.seq}: an entry was deleted or "
                    f"inserted")
        if entry.prev_hash != prev_hash:
            return f"prev_hash does not match the hash of entry {prev_seq}"
        if not isinstance(entry.t, float) or not all(
                isinstance(v, str) for v in (entry.who, entry.action, entry.details,
                                             entry.reason, entry.outcome)):
            return "a column holds a value of the wrong type"
        expected = entry_hash(entry.seq, entry.t, entry.who, entry.action, entry.intersection,
                              entry.details, entry.reason, entry.outcome, entry.prev_hash)
        if expected != entry.hash:
            return "contents do not match the entry's hash: the entry was altered"
        return ""

    def _query(self, sql: str, args: tuple) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise AuditError(f"audit log {self.path}: cannot read: {exc}") from exc
