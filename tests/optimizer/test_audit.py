"""The append-only, hash-chained audit log."""

from __future__ import annotations

import sqlite3

import pytest

from optimizer.audit import GENESIS_HASH, AuditError, AuditLog, entry_hash


def add(log: AuditLog, n: int = 1, **changes) -> list:
    entries = []
    for i in range(n):
        fields = dict(t=1000.0 + i, who="alice", action="override.create",
                      intersection="main-oak", details={"phase": 2, "seconds": 10.5},
                      reason="incident on Main St", outcome="accepted")
        fields.update(changes)
        entries.append(log.append(**fields))
    return entries


@pytest.fixture
def log_file(tmp_path):
    return tmp_path / "central.sqlite"


def tamper(path, sql: str, *args) -> None:
    """What someone with write access to the file can do: drop the guards and rewrite."""
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("DROP TRIGGER audit_no_delete")
    db.execute(sql, args)
    db.commit()
    db.close()


def test_entries_chain_by_hash_and_record_who_what_when_why_outcome():
    log = AuditLog(":memory:")
    first, second = add(log, 2)
    assert (first.seq, second.seq) == (1, 2)
    assert first.prev_hash == GENESIS_HASH and second.prev_hash == first.hash
    assert first.hash == entry_hash(1, 1000.0, "alice", "override.create", "main-oak",
                                    first.details, "incident on Main St", "accepted",
                                    GENESIS_HASH)
    read = log.entries()
    assert read == [first, second]
    assert read[0].to_dict()["details"] == {"phase": 2, "seconds": 10.5}
    assert log.head() == (2, second.hash)
    result = log.verify()
    assert result.ok and result.checked == 2 and result.head_hash == second.hash


def test_reading_filters_pages_and_orders():
    log = AuditLog(":memory:")
    add(log, 3)
    add(log, 2, intersection="elm-1st")
    add(log, 1, intersection=None, action="user.add", reason="")
    assert [e.seq for e in log.entries(intersection="elm-1st")] == [4, 5]
    assert [e.seq for e in log.entries(after=4, limit=1)] == [5]
    assert [e.seq for e in log.entries(limit=2, newest_first=True)] == [6, 5]
    assert AuditLog(":memory:").verify().ok and AuditLog(":memory:").head() == (0, GENESIS_HASH)


def test_there_is_no_update_or_delete_api_and_sqlite_refuses_both(log_file):
    assert not any(hasattr(AuditLog, name) for name in ("update", "delete", "remove", "clear"))
    add(AuditLog(log_file), 2)
    db = sqlite3.connect(log_file)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE audit SET outcome = 'refused' WHERE seq = 1")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM audit WHERE seq = 1")


def test_a_row_changed_in_the_file_is_found(log_file):
    add(AuditLog(log_file), 4)
    tamper(log_file, "UPDATE audit SET reason = 'routine' WHERE seq = 2")
    result = AuditLog(log_file).verify()
    assert not result.ok and result.first_bad_seq == 2 and result.checked == 1
    assert "altered" in result.problem


def test_a_row_rehashed_after_the_change_breaks_the_next_link(log_file):
    entries = add(AuditLog(log_file), 3)
    e = entries[1]
    forged = entry_hash(e.seq, e.t, "mallory", e.action, e.intersection, e.details, e.reason,
                        e.outcome, e.prev_hash)
    tamper(log_file, "UPDATE audit SET who = 'mallory', hash = ? WHERE seq = 2", forged)
    result = AuditLog(log_file).verify()
    assert result.first_bad_seq == 3 and "prev_hash" in result.problem


def test_deleted_rows_and_wrongly_typed_values_are_found(log_file):
    add(AuditLog(log_file), 3)
    tamper(log_file, "DELETE FROM audit WHERE seq = 2")
    result = AuditLog(log_file).verify()
    assert result.first_bad_seq == 3 and "deleted" in result.problem

    other = log_file.with_name("other.sqlite")
    add(AuditLog(other), 2)
    tamper(other, "UPDATE audit SET t = 'noon' WHERE seq = 1")
    assert "wrong type" in AuditLog(other).verify().problem


def test_a_cut_off_end_is_found_against_a_recorded_anchor(log_file):
    log = AuditLog(log_file)
    add(log, 3)
    anchor = log.head()
    assert log.verify(anchor).ok
    tamper(log_file, "DELETE FROM audit WHERE seq = 3")
    assert AuditLog(log_file).verify().ok  # a shorter chain is consistent by itself...
    result = AuditLog(log_file).verify(anchor)  # ...but not with the recorded head
    assert not result.ok and result.first_bad_seq == 3 and "cut off" in result.problem
    wrong = AuditLog(log_file).verify((2, "f" * 64))
    assert not wrong.ok and wrong.first_bad_seq == 2 and "anchor" in wrong.problem


def test_writers_sharing_a_file_keep_one_chain(log_file):
    a, b = AuditLog(log_file), AuditLog(log_file)
    for i in range(3):
        add(a, who="alice")
        add(b, who="bob")
    a.close()
    reopened = AuditLog(log_file)
    assert [e.seq for e in reopened.entries()] == list(range(1, 7))
    assert reopened.verify().ok


@pytest.mark.parametrize("changes, message", [
    ({"t": float("nan")}, "audit t"),
    ({"t": True}, "audit t"),
    ({"who": ""}, "audit who"),
    ({"who": 7}, "audit who"),
    ({"action": "Override Create"}, "audit action"),
    ({"intersection": " "}, "audit intersection"),
    ({"details": ["not", "an", "object"]}, "audit details"),
    ({"details": {"x": float("inf")}}, "audit details"),
    ({"details": {"x": object()}}, "audit details"),
    ({"outcome": ""}, "audit outcome"),
    ({"reason": "x" * 5000}, "audit reason"),
])
def test_bad_entries_are_refused_naming_the_field(changes, message):
    log = AuditLog(":memory:")
    with pytest.raises(ValueError, match=message):
        add(log, **changes)
    assert log.head() == (0, GENESIS_HASH)


def test_bad_queries_and_unusable_files_raise_clear_errors(tmp_path):
    log = AuditLog(":memory:")
    with pytest.raises(ValueError, match="after"):
        log.entries(after=-1)
    with pytest.raises(ValueError, match="limit"):
        log.entries(limit=0)
    with pytest.raises(AuditError, match="cannot open"):
        AuditLog(tmp_path / "missing-dir" / "x.sqlite")
    log.close()
    with pytest.raises(AuditError, match="cannot read"):
        log.entries()
    with pytest.raises(AuditError, match="cannot read"):
        log.verify()
    with pytest.raises(AuditError, match="cannot append"):
        add(log)
