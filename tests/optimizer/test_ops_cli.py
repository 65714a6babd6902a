"""tsc-central serve, users, override and audit, against a real server on 127.0.0.1."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time

import pytest
import uvicorn

from optimizer.api import create_app
from optimizer.arbitration import Arbiter, TimeOfDaySchedule
from optimizer.audit import AuditLog
from optimizer.auth import UserStore
from optimizer.cli import main
from optimizer.operations import OperationsService
from optimizer.ops_cli import parse_duration, parse_time
from optimizer.state import MemoryState
from edge_agent.config import load_plan, load_site

from conftest import CONFIGS

SITE = CONFIGS / "nema-8phase.toml"
PLAN = CONFIGS / "plans" / "main-oak-am-peak.toml"


def token_of(capsys, argv) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out.strip()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The operations API on a free port of 127.0.0.1, over a database file."""
    db = tmp_path_factory.mktemp("centre") / "central.sqlite"
    site = load_site(SITE)
    arbiter = Arbiter(site.intersections,
                      time_of_day={"main-oak": TimeOfDaySchedule(((0, load_plan(PLAN)),))})
    users = UserStore(db)
    tokens = {role: users.add(role, role, 0.0) for role in ("viewer", "operator", "admin")}
    service = OperationsService(site, audit=AuditLog(db), state=MemoryState(), arbiter=arbiter)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(create_app(service, users), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    yield url, tokens, db
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def as_role(server, monkeypatch, tmp_path):
    url, tokens, _ = server

    def use(role: str) -> list[str]:
        monkeypatch.setenv("TSC_CENTRAL_TOKEN", tokens[role])
        return ["--url", url]
    return use


def test_durations_and_times():
    assert parse_duration("90") == 90 and parse_duration("1h30m") == 5400
    assert parse_duration("2h") == 7200 and parse_duration("45s") == 45
    assert parse_time("2026-12-01T08:00Z") == 1796112000.0
    assert parse_time("2026-12-01T09:00+01:00") == 1796112000.0
    for bad in ("", "soon", "0m", "5 min"):
        with pytest.raises(ValueError, match="--for"):
            parse_duration(bad)
    with pytest.raises(ValueError, match="no UTC offset"):
        parse_time("2026-12-01T08:00")
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time("tomorrow")


def test_users_add_prints_the_token_once_and_every_change_is_audited(tmp_path, capsys):
    db = str(tmp_path / "central.sqlite")
    token = token_of(capsys, ["users", "add", "alice", "--role", "operator", "--db", db,
                              "--reason", "new shift lead"])
    assert UserStore(db).authenticate(token).name == "alice"
    assert main(["users", "add", "alice", "--role", "admin", "--db", db]) == 1
    assert "exists already" in capsys.readouterr().err
    new = token_of(capsys, ["users", "rotate", "alice", "--db", db])
    assert new != token and UserStore(db).authenticate(token) is None
    assert main(["users", "list", "--db", db]) == 0
    assert "alice" in capsys.readouterr().out and token not in str(
        sqlite3.connect(db).execute("SELECT * FROM users").fetchall())
    assert main(["users", "remove", "alice", "--db", db]) == 0
    assert main(["users", "remove", "alice", "--db", db]) == 1
    entries = AuditLog(db).entries()
    assert [e.action for e in entries] == ["user.add", "user.rotate", "user.remove"]
    assert entries[0].who.startswith("local:") and entries[0].reason == "new shift lead"
    assert entries[0].details_obj == {"user": "alice", "role": "operator"}


def test_override_create_list_cancel_through_the_api(as_role, capsys):
    conn = as_role("operator")
    assert main(["override", "create", "main-oak", "--extend-phase", "2", "--seconds", "10",
                 "--for", "30m", "--reason", "crash on Oak Ave", *conn]) == 0
    out = capsys.readouterr().out
    assert "override 1 on main-oak accepted: extend-phase 2 by 10 s" in out
    assert main(["override", "list", *conn]) == 0
    assert "crash on Oak Ave" in capsys.readouterr().out
    assert main(["override", "list", "--json", *conn]) == 0
    assert '"override_id": 1' in capsys.readouterr().out
    assert main(["override", "cancel", "1", "--reason", "cleared", *conn]) == 0
    assert "override 1 cancelled; time-of-day in force (plan 3)" in capsys.readouterr().out
    assert main(["override", "create", "main-oak", "--plan", str(PLAN), "--until",
                 "2099-01-01T00:00Z", "--reason", "event", *conn]) == 1  # past 24 h
    assert "at most 86400 s ahead" in capsys.readouterr().err
    assert main(["override", "create", "main-oak", "--fixed-cycle", "100", "--for", "10m",
                 "--reason", "detour", *conn]) == 0
    capsys.readouterr()
    assert main(["override", "cancel", "2", "--reason", "done", *conn]) == 0


def test_refusals_print_the_violations_and_the_audit_entry(as_role, capsys):
    conn = as_role("operator")
    assert main(["override", "create", "main-oak", "--extend-phase", "1", "--seconds", "40",
                 "--for", "10m", "--reason", "test", *conn]) == 1
    err = capsys.readouterr().err
    assert "HTTP 422" in err and "[max-green] phase 1" in err and "audit entry" in err
    assert main(["override", "create", "main-oak", "--extend-phase", "1", "--for", "10m",
                 "--reason", "test", *conn]) == 2
    assert "--extend-phase needs --seconds" in capsys.readouterr().err
    assert main(["override", "cancel", "99", "--reason", "x", *as_role("viewer")]) == 1
    assert "HTTP 403" in capsys.readouterr().err


def test_audit_show_and_verify_over_the_api_and_from_the_file(server, as_role, capsys):
    _, _, db = server
    assert main(["audit", "show", "--limit", "3", *as_role("viewer")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert main(["audit", "show", "--after", "1", "--json", *as_role("viewer")]) == 0
    assert '"seq": 2' in capsys.readouterr().out
    assert main(["audit", "verify", *as_role("viewer")]) == 1
    assert "HTTP 403" in capsys.readouterr().err
    assert main(["audit", "verify", *as_role("admin")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("audit chain OK")
    head = out.split("head ")[1].strip()
    assert main(["audit", "verify", "--anchor", head, "--db", str(db)]) == 0
    assert main(["audit", "verify", "--anchor", head, *as_role("admin")]) == 0
    capsys.readouterr()
    assert main(["audit", "show", "--intersection", "main-oak", "--db", str(db)]) == 0
    assert "override.create" in capsys.readouterr().out


def test_a_tampered_file_fails_verification(tmp_path, capsys):
    db = tmp_path / "central.sqlite"
    log = AuditLog(db)
    for i in range(3):
        log.append(t=float(i), who="alice", action="override.create", intersection="main-oak",
                   details={}, reason="r", outcome="accepted")
    raw = sqlite3.connect(db)
    raw.execute("DROP TRIGGER audit_no_update")
    raw.execute("UPDATE audit SET outcome = 'refused' WHERE seq = 2")
    raw.commit()
    assert main(["audit", "verify", "--db", str(db)]) == 1
    assert "BROKEN at entry 2" in capsys.readouterr().out


def test_bad_input_and_an_unreachable_api_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TSC_CENTRAL_TOKEN", "tsc_x")
    assert main(["audit", "show", "--db", str(tmp_path / "none.sqlite")]) == 2
    assert "no such database file" in capsys.readouterr().err
    assert main(["audit", "verify", "--anchor", "two:abc", "--db", "x"]) == 2
    assert main(["override", "list", "--url", "ftp://centre"]) == 2
    assert "must be http(s)" in capsys.readouterr().err
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["override", "list", "--url", f"http://127.0.0.1:{port}"]) == 2
    assert "cannot reach the operations API" in capsys.readouterr().err
    monkeypatch.delenv("TSC_CENTRAL_TOKEN")
    assert main(["override", "list"]) == 2
    assert "TSC_CENTRAL_TOKEN" in capsys.readouterr().err
    token_file = tmp_path / "token"
    token_file.write_text("tsc_wrong\n")
    assert main(["override", "list", "--token-file", str(token_file), "--url",
                 f"http://127.0.0.1:{port}"]) == 2


def test_serve_binds_loopback_with_time_of_day_from_edge_files(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_run(app, **kwargs):
        seen.update(kwargs, app=app)
    monkeypatch.setattr(uvicorn, "run", fake_run)
    db = tmp_path / "central.sqlite"
    assert main(["serve", "--site", str(CONFIGS / "nema-4phase.toml"), "--db", str(db),
                 "--edge", str(CONFIGS / "edge-elm-1st.toml"), "--port", "8099"]) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8099
    assert "no API users yet" in capsys.readouterr().err
    assert main(["serve", "--site", str(SITE), "--db", str(db), "--edge",
                 str(CONFIGS / "edge-elm-1st.toml")]) == 2
    assert "not in site file" in capsys.readouterr().err
