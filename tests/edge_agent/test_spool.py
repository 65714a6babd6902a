"""The SQLite store-and-forward spool: order, durable numbering, the size cap, and kill -9."""

from __future__ import annotations

import logging
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.errors import DeviceError
from edge_agent.spool import (
    PRIORITY_KEEP, PRIORITY_LOW, PRIORITY_NORMAL, Spool, SpoolItem, SpoolRecord,
)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "spool.sqlite"


def test_append_numbers_rows_in_order_and_pending_returns_them(path: Path) -> None:
    with Spool(path, first_seq=1) as spool:
        assert spool.append("a/b", b"one") == 1
        assert spool.append("a/c", b"two", qos=0, retain=True) == 2
        assert spool.append_many([SpoolItem("a/d", b"three"), SpoolItem("a/e", b"four")]) \
            == [3, 4]
        assert spool.pending() == [SpoolRecord(1, "a/b", b"one", 1, False),
                                   SpoolRecord(2, "a/c", b"two", 0, True),
                                   SpoolRecord(3, "a/d", b"three", 1, False),
                                   SpoolRecord(4, "a/e", b"four", 1, False)]
        assert [r.seq for r in spool.pending(2)] == [1, 2]
        assert [r.seq for r in spool.pending(10, after=2)] == [3, 4]
        assert len(spool) == 4 and spool.stats().pending_bytes == 15


def test_payload_function_gets_the_rows_number(path: Path) -> None:
    with Spool(path, first_seq=41) as spool:
        seqs = spool.append_many([SpoolItem("t", lambda seq: b"seq=%d" % seq)] * 3)
        assert seqs == [41, 42, 43]
        assert [r.payload for r in spool.pending()] == [b"seq=41", b"seq=42", b"seq=43"]


def test_mark_delivered_deletes_and_ignores_unknown_numbers(path: Path) -> None:
    with Spool(path, first_seq=1) as spool:
        spool.append_many([SpoolItem("t", b"x")] * 5)
        assert spool.mark_delivered([2, 4, 99]) == 2
        assert spool.mark_delivered(2) == 0  # a repeated PUBACK
        assert spool.mark_delivered([]) == 0
        assert [r.seq for r in spool.pending()] == [1, 3, 5]
        assert spool.stats().pending == 3 and spool.stats().pending_bytes == 3


def test_numbers_are_never_reused_after_delivery_and_reopening(path: Path) -> None:
    with Spool(path, first_seq=1) as spool:
        spool.append_many([SpoolItem("t", b"x")] * 3)
        spool.mark_delivered([1, 2, 3])
    with Spool(path, first_seq=1) as spool:  # first_seq applies to a new file only
        assert spool.append("t", b"y") == 4
        assert spool.stats().next_seq == 5


def test_a_new_file_starts_numbering_at_the_time_in_microseconds(path: Path) -> None:
    before = time.time_ns() // 1000
    with Spool(path) as spool:
        seq = spool.append("t", b"x")
    assert before <= seq <= time.time_ns() // 1000


def test_reopening_keeps_pending_rows_and_counters(path: Path) -> None:
    with Spool(path, first_seq=1) as spool:
        spool.append_many([SpoolItem("t", b"abc", priority=PRIORITY_KEEP)] * 3)
        spool.mark_delivered(1)
    with Spool(path) as spool:
        stats = spool.stats()
        assert (stats.pending, stats.pending_bytes, stats.next_seq) == (2, 6, 4)
        assert [r.seq for r in spool.pending()] == [2, 3]


def test_file_is_wal_with_full_sync_for_appends(path: Path) -> None:
    with Spool(path) as spool:
        spool.append("t", b"x")
        db = spool._require()  # white box: the pragmas the durability argument rests on
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        spool.mark_delivered(spool.pending()[0].seq)
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL for deletions
        spool.append("t", b"y")
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_a_second_writer_is_refused(path: Path) -> None:
    with Spool(path):
        with pytest.raises(DeviceError, match="cannot open: database is locked"):
            Spool(path)
    with Spool(path):  # released on close
        pass


def test_library_errors_become_device_errors(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-spool"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DeviceError, match=f"spool {bad}: cannot open"):
        Spool(bad)
    with pytest.raises(DeviceError, match="cannot open"):
        Spool(tmp_path / "no-such-dir" / "spool.sqlite")
    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('schema', 99)")
    db.commit()
    db.close()
    with pytest.raises(DeviceError, match="spool schema 99"):
        Spool(other)


def test_a_closed_spool_refuses_work(path: Path) -> None:
    spool = Spool(path)
    spool.close()
    spool.close()  # idempotent
    for call in (lambda: spool.append("t", b"x"), lambda: spool.pending(),
                 lambda: spool.mark_delivered(1)):
        with pytest.raises(DeviceError, match="closed"):
            call()


def test_append_many_is_all_or_nothing(path: Path) -> None:
    def broken(seq: int) -> bytes:
        raise RuntimeError("encoder bug")

    with Spool(path, first_seq=1) as spool:
        with pytest.raises(RuntimeError, match="encoder bug"):
            spool.append_many([SpoolItem("t", b"ok"), SpoolItem("t", broken)])
        with pytest.raises(TypeError, match="payload: expected bytes"):
            spool.append("t", lambda seq: "text")  # type: ignore[arg-type, return-value]
        assert spool.pending() == [] and spool.append("t", b"x") == 1
        assert spool.append_many([]) == []


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_bytes=0), "max_bytes: must be >= 1"),
    (dict(first_seq=-1), "first_seq: must be within"),
])
def test_bad_arguments_are_refused(path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Spool(path, **kwargs)


def test_bad_items_are_refused(path: Path) -> None:
    with Spool(path) as spool:
        with pytest.raises(ValueError, match="qos: must be 0, 1 or 2"):
            spool.append("t", b"x", qos=3)
        with pytest.raises(ValueError, match="priority: must be 0, 1 or 2"):
            spool.append("t", b"x", priority=7)


def test_over_the_cap_oldest_events_go_first_then_measurements_never_acks(
        path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.spool")
    with Spool(path, max_bytes=1000, first_seq=1) as spool:
        # 4 acks, 3 measurements, 3 events of 100 bytes: exactly at the cap
        for priority in [PRIORITY_KEEP] * 4 + [PRIORITY_NORMAL] * 3 + [PRIORITY_LOW] * 3:
            spool.append("t", b"m" * 100, priority=priority)
        assert spool.stats().dropped == 0 and not caplog.records
        spool.append("t", b"n" * 100, priority=PRIORITY_NORMAL)  # seq 11: over the cap
        # back under 90 %: the two oldest events (8, 9) go
        assert [r.seq for r in spool.pending(100)] == [1, 2, 3, 4, 5, 6, 7, 10, 11]
        for _ in range(4):
            spool.append("t", b"o" * 100, priority=PRIORITY_NORMAL)  # 12..15
        stats = spool.stats()
        assert [r.seq for r in spool.pending(100)] == [1, 2, 3, 4, 11, 12, 13, 14, 15]
        assert (stats.dropped, stats.last_dropped_seq, stats.pending_bytes) == (6, 10, 900)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "over its cap" in warnings[0].getMessage()
        spool.mark_delivered([1, 2, 3])
        recovered = [r for r in caplog.records if "back under its cap" in r.getMessage()]
        assert len(recovered) == 1 and "6 messages dropped in all" in recovered[0].getMessage()
    with Spool(path, max_bytes=1000) as spool:  # the count survives a restart
        assert spool.stats().dropped == 6 and spool.stats().last_dropped_seq == 10


def test_acks_are_kept_even_beyond_the_cap(path: Path) -> None:
    with Spool(path, max_bytes=100, first_seq=1) as spool:
        spool.append_many([SpoolItem("t", b"a" * 60, priority=PRIORITY_KEEP)] * 3)
        assert len(spool) == 3 and spool.stats().dropped == 0


# --- a model-based check: any mix of appends, deliveries and restarts -----------------------
operations = st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(1, 5)),
    st.tuples(st.just("deliver"), st.lists(st.integers(0, 40), max_size=6)),
    st.tuples(st.just("reopen"), st.none()),
), max_size=25)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations)
def test_spool_behaves_like_an_ordered_dict_of_undelivered_rows(tmp_path: Path, ops) -> None:
    path = tmp_path / f"model-{time.monotonic_ns()}.sqlite"
    model: dict[int, bytes] = {}
    next_seq = 1
    spool = Spool(path, first_seq=1)
    try:
        for op, arg in ops:
            if op == "append":
                seqs = spool.append_many([SpoolItem("t", lambda s: b"p%d" % s)] * arg)
                assert seqs == list(range(next_seq, next_seq + arg))
                model.update({s: b"p%d" % s for s in seqs})
                next_seq += arg
            elif op == "deliver":
                expected = len({s for s in arg if s in model})
                assert spool.mark_delivered(arg) == expected
                for s in arg:
                    model.pop(s, None)
            else:
                spool.close()
                spool = Spool(path)
            assert [(r.seq, r.payload) for r in spool.pending(1000)] == sorted(model.items())
            assert spool.stats().pending_bytes == sum(len(p) for p in model.values())
    finally:
        spool.close()


# --- kill -9 --------------------------------------------------------------------------------
WRITER = textwrap.dedent("""
    import sys
    from edge_agent.spool import Spool, SpoolItem
    spool = Spool(sys.argv[1], first_seq=1)
    n = 0
    while True:  # single appends and batches of 7, each number printed once it is durable
        items = [SpoolItem("t/x", lambda seq: b"payload-%d" % seq)] * (1 if n % 2 else 7)
        for seq in spool.append_many(items):
            print(seq, flush=True)
        n += 1
""")


def _run_until_killed(path: Path, script: Path, at_least: int) -> list[int]:
    writer = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE,
                              text=True)
    printed: list[int] = []
    try:
        assert writer.stdout is not None
        for line in writer.stdout:
            printed.append(int(line))
            if len(printed) >= at_least:
                writer.send_signal(signal.SIGKILL)  # mid-run: it is appending right now
                break
        rest = writer.stdout.read()  # lines already written before the kill count too
        printed.extend(int(x) for x in rest.split() if x.strip())
    finally:
        writer.kill()
        writer.wait(10)
    assert writer.returncode == -signal.SIGKILL
    return printed


def test_nothing_acknowledged_is_lost_to_kill_9(tmp_path: Path) -> None:
    path, script = tmp_path / "spool.sqlite", tmp_path / "writer.py"
    script.write_text(WRITER)
    acknowledged: list[int] = []
    for at_least in (150, 90, 200):  # three kills, each run continuing the same file
        acknowledged += _run_until_killed(path, script, at_least)
        with Spool(path) as spool:
            rows = {r.seq: r.payload for r in spool.pending(100_000)}
        missing = sorted(set(acknowledged) - set(rows))
        assert not missing, f"{len(missing)} acknowledged rows lost to kill -9: {missing[:10]}"
        assert all(rows[s] == b"payload-%d" % s for s in acknowledged)
        # numbers are never reused: a killed run's unprinted rows are kept, not renumbered
        assert sorted(rows) == list(range(1, max(rows) + 1))
    assert len(acknowledged) == len(set(acknowledged)) >= 440
