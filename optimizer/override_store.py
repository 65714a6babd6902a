"""Operator overrides that outlive the process: the override store, in SQLite.

The :class:`~optimizer.arbitration.Arbiter` holds the overrides in force in memory; this store
keeps a copy of each one from the moment it is accepted, so that a restart of the centre in the
middle of a two-hour parade override puts the same override back instead of handing the
intersection to the optimiser (:meth:`optimizer.operations.OperationsService.restore_overrides`).

A row holds everything needed to rebuild the :class:`~optimizer.arbitration.Override` exactly:
its id, the intersection, the plan as it was guard-checked (the wire JSON of
:class:`~edge_agent.plan.TimingPlan`), who asked, why, when, until when and the pattern, plus
the plan id it was first issued under. Rows are never deleted: ending an override (cancelled,
expired, dropped at a restart, withdrawn because it could not be audited) stamps the row with
the time and the outcome, so the store also remembers the highest override id ever issued and
ids are never reused after a restart, even when every override has ended.

Override ids come from :meth:`OverrideStore.next_id`, one ``BEGIN IMMEDIATE`` transaction on a
counter, so that processes sharing the file (a replica per region) never hand out the same id.

It lives in the centre's database file (``storage.db``, next to the API users and the audit
log), in its own table. SQLite errors, and rows that no longer decode, become
:class:`OverrideStoreError` naming the file: an unreadable store stops the start-up rather than
losing an override silently.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import msgspec

from edge_agent.errors import TscError
from edge_agent.plan import TimingPlan
from optimizer.arbitration import Override
from optimizer.sqlite_db import SqliteStore, immediate

__all__ = ["ENDINGS", "OverrideStore", "OverrideStoreError", "StoredOverride"]

#: How an override can end (the ``outcome`` of an ended row; a running one is ``active``).
ENDINGS = ("cancelled", "expired", "dropped", "withdrawn")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS overrides (
    override_id  INTEGER PRIMARY KEY,
    intersection TEXT    NOT NULL,
    plan         TEXT    NOT NULL,
    plan_id      INTEGER,
    user_name    TEXT    NOT NULL,
    reason       TEXT    NOT NULL,
    created      REAL    NOT NULL,
    expiry       REAL    NOT NULL,
    pattern      TEXT    NOT NULL,
    outcome      TEXT    NOT NULL DEFAULT 'active',
    ended        REAL,
    end_reason   TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS overrides_outcome ON overrides (outcome, override_id);
CREATE TABLE IF NOT EXISTS override_ids (
    one  INTEGER PRIMARY KEY CHECK (one = 1),
    last INTEGER NOT NULL
);
"""
_COLUMNS = ("override_id, intersection, plan, plan_id, user_name, reason, created, expiry, "
            "pattern, outcome, ended, end_reason")
_PLAN = msgspec.json.Decoder(TimingPlan)


class OverrideStoreError(TscError):
    """The override store could not be opened, read or written, or holds a row that does not
    decode (wraps the SQLite or decoding error; the message names the file)."""


@dataclass(frozen=True, slots=True)
class StoredOverride:
    """One row: the override as accepted, the plan id it was first issued under and how (and
    whether) it ended."""

    record: Override
    plan_id: int | None
    outcome: str  # "active" or one of ENDINGS
    ended: float | None
    end_reason: str

    @property
    def active(self) -> bool:
        """True while the override has not ended."""
        return self.outcome == "active"


class OverrideStore(SqliteStore):
    """The overrides table in an SQLite file (``":memory:"`` for tests); thread-safe."""

    what = "override store"
    error = OverrideStoreError
    schema = _SCHEMA

    # --- writing ----------------------------------------------------------------------------
    def next_id(self) -> int:
        """Reserve the next override id (above every id this file has ever recorded)."""
        with self._lock:
            try:
                with immediate(self._db):
                    # MAX over the rows as well as the counter: a file written before the
                    # counter existed, or a counter row lost, still never yields a used id.
                    row = self._db.execute(
                        "SELECT MAX(COALESCE((SELECT last FROM override_ids WHERE one = 1), 0), "
                        "COALESCE((SELECT MAX(override_id) FROM overrides), 0))").fetchone()
                    nxt = int(row[0]) + 1
                    self._db.execute("INSERT OR REPLACE INTO override_ids (one, last) "
                                     "VALUES (1, ?)", (nxt,))
            except sqlite3.Error as exc:
                raise OverrideStoreError(f"override store {self.path}: cannot reserve an "
                                         f"override id: {exc}") from exc
        return nxt

    def save(self, record: Override, plan_id: int | None) -> None:
        """Record an accepted override (``plan_id``: the id its plan was issued under)."""
        plan = msgspec.json.encode(record.plan).decode("utf-8")
        self._execute(f"INSERT INTO overrides ({_COLUMNS}) VALUES "
                      f"(?, ?, ?, ?, ?, ?, ?, ?, ?, 'active', NULL, '')",
                      (record.override_id, record.intersection_id, plan, plan_id, record.user,
                       record.reason, record.created, record.expiry, record.pattern),
                      "save override")

    def end(self, override_id: int, outcome: str, t: float, reason: str = "") -> bool:
        """Mark an active override ended (``outcome`` one of :data:`ENDINGS`) at ``t``.

        Returns False when no active row has that id (ended already, or never stored).
        """
        if outcome not in ENDINGS:
            raise ValueError(f"override store outcome: must be one of {', '.join(ENDINGS)}, "
                             f"got {outcome!r}")
        return self._execute("UPDATE overrides SET outcome = ?, ended = ?, end_reason = ? "
                             "WHERE override_id = ? AND outcome = 'active'",
                             (outcome, t, reason[:2000], override_id), "end override") == 1

    # --- reading ----------------------------------------------------------------------------
    def active(self) -> list[StoredOverride]:
        """The overrides not ended, oldest first (what a restart puts back)."""
        rows = self._fetch(f"SELECT {_COLUMNS} FROM overrides WHERE outcome = 'active' "
                           f"ORDER BY override_id", ())
        return [self._decode(row) for row in rows]

    def get(self, override_id: int) -> StoredOverride | None:
        """The row of one override, ended or not (None if never stored)."""
        rows = self._fetch(f"SELECT {_COLUMNS} FROM overrides WHERE override_id = ?",
                           (override_id,))
        return self._decode(rows[0]) if rows else None

    def last_override_id(self) -> int:
        """The highest override id ever reserved or stored here (0 for a new file)."""
        rows = self._fetch("SELECT MAX(COALESCE((SELECT last FROM override_ids WHERE one = 1), "
                           "0), COALESCE((SELECT MAX(override_id) FROM overrides), 0))", ())
        return int(rows[0][0])

    def last_plan_ids(self) -> dict[str, int]:
        """Per intersection, the highest plan id an override of it was issued under."""
        rows = self._fetch("SELECT intersection, MAX(plan_id) FROM overrides WHERE plan_id IS "
                           "NOT NULL GROUP BY intersection", ())
        return {x: int(n) for x, n in rows}

    # --- internals --------------------------------------------------------------------------
    def _decode(self, row: tuple) -> StoredOverride:
        (override_id, intersection, plan_text, plan_id, user, reason, created, expiry, pattern,
         outcome, ended, end_reason) = row
        try:
            plan = _PLAN.decode(plan_text)
            if plan.intersection_id != intersection:
                raise ValueError(f"the plan is for {plan.intersection_id!r}, the row for "
                                 f"{intersection!r}")
            record = Override(int(override_id), str(intersection), plan, str(user), str(reason),
                              float(created), float(expiry), str(pattern))
        except (msgspec.MsgspecError, ValueError, TypeError) as exc:
            # Not skipped: an override that silently vanished would hand a parade back to the
            # optimiser. The operator repairs or ends the row and starts again.
            raise OverrideStoreError(f"override store {self.path}: override {override_id} "
                                     f"({intersection}) does not decode: {exc}") from exc
        return StoredOverride(record, None if plan_id is None else int(plan_id), str(outcome),
                              None if ended is None else float(ended), str(end_reason))

    def _execute(self, sql: str, args: tuple, what: str) -> int:
        with self._lock:
            try:
                return self._db.execute(sql, args).rowcount
            except sqlite3.Error as exc:
                raise OverrideStoreError(f"override store {self.path}: cannot {what}: "
                                         f"{exc}") from exc

    def _fetch(self, sql: str, args: tuple) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise OverrideStoreError(f"override store {self.path}: cannot read: "
                                         f"{exc}") from exc
