"""The dashboard without a browser: its files are served locally with a strict CSP and name
nothing outside this server, the read endpoints it plots from, and the state history behind
them. The browser test is test_dashboard_browser.py."""

from __future__ import annotations

import configparser
import fnmatch
import re
import shutil
import subprocess

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from edge_agent.messages import LaneMeasurement, Measurement
from optimizer.dashboard import DASHBOARD_DIR, SECURITY_HEADERS, mount_dashboard
from optimizer.state import KpiSnapshot, MemoryState, StateHistory

from conftest import REPO, ManualClock
from dashboard_centre import KPI_POINTS, Centre

T0 = 1_796_112_000.0
FILES = sorted(p.name for p in DASHBOARD_DIR.iterdir() if p.is_file())


@pytest.fixture
def centre():
    return Centre(ManualClock(T0))


@pytest.fixture
def client(centre):
    return TestClient(centre.app())


def auth(centre, role="viewer"):
    return {"Authorization": f"Bearer {centre.tokens[role]}"}


# --- the static pages ------------------------------------------------------------------------
def test_the_root_redirects_to_the_dashboard_which_is_served_with_a_strict_policy(client):
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"] == "/dashboard/"
    page = client.get("/dashboard/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for name, value in SECURITY_HEADERS.items():
        assert page.headers[name] == value
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert client.get("/dashboard", follow_redirects=True).url.path == "/dashboard/"


def test_every_file_is_served_with_its_type_and_the_pages_need_no_token(client):
    types = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
    assert {"index.html", "app.js", "charts.js", "style.css"} <= set(FILES)
    for name in FILES:
        response = client.get(f"/dashboard/{name}")
        suffix = name[name.rindex("."):]
        assert response.status_code == 200, name
        assert response.headers["content-type"].startswith(types[suffix]), name
        assert response.headers["x-content-type-options"] == "nosniff"
    assert client.get("/api/v1/intersections").status_code == 401  # the data still needs one
    assert client.get("/dashboard/missing.js").status_code == 404
    assert client.get("/dashboard/../api.py").status_code == 404
    assert client.get("/dashboard/%2e%2e/api.py").status_code == 404


def test_the_pages_load_nothing_from_elsewhere_and_everything_they_name_exists(client):
    html = (DASHBOARD_DIR / "index.html").read_text(encoding="utf-8")
    for name in FILES:
        text = (DASHBOARD_DIR / name).read_text(encoding="utf-8")
        # No absolute URL but the SVG namespace (an identifier, never fetched).
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"'`)]*", text))
        assert urls <= {"http://www.w3.org/2000/svg"}, (name, urls)
        assert "@import" not in text and "innerHTML" not in text, name
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), f"{name}: inline script"
        assert " style=" not in text, f"{name}: inline style (blocked by the CSP)"
    for ref in re.findall(r'(?:src|href)="([^"]+)"', html):
        if ref.startswith(("data:", "#")):
            continue
        assert (DASHBOARD_DIR / ref).is_file(), ref
    for name in FILES:
        if name.endswith(".js"):
            text = (DASHBOARD_DIR / name).read_text(encoding="utf-8")
            for ref in re.findall(r'from "\./([^"]+)"', text):
                assert (DASHBOARD_DIR / ref).is_file(), (name, ref)


def test_every_form_control_has_a_label():
    html = (DASHBOARD_DIR / "index.html").read_text(encoding="utf-8")
    labelled = set(re.findall(r'<label[^>]*\bfor="([^"]+)"', html))
    controls = re.findall(r"<(input|select|textarea)\b([^>]*)>", html)
    assert controls
    for tag, attrs in controls:
        ident = re.search(r'\bid="([^"]+)"', attrs)
        assert ident and (ident.group(1) in labelled or "aria-label=" in attrs), (tag, attrs)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_scripts_parse(tmp_path):
    for name in FILES:
        if name.endswith(".js"):
            module = tmp_path / (name[:-3] + ".mjs")
            module.write_text((DASHBOARD_DIR / name).read_text(encoding="utf-8"))
            result = subprocess.run(["node", "--check", str(module)], capture_output=True,
                                    text=True, timeout=60)
            assert result.returncode == 0, result.stderr


def test_the_package_ships_every_dashboard_file():
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    patterns = config["options.package_data"]["optimizer"].split()
    for name in FILES:
        assert any(fnmatch.fnmatch(f"dashboard/{name}", p) for p in patterns), name


def test_mounting_without_the_files_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="index.html is missing"):
        mount_dashboard(FastAPI(), directory=tmp_path)


# --- the read endpoints the dashboard plots from ----------------------------------------------
def test_kpis_over_time_oldest_first_with_since_and_limit(centre, client):
    body = client.get("/api/v1/intersections/elm-1st/kpis", headers=auth(centre)).json()
    series = body["kpis"]
    assert body["intersection_id"] == "elm-1st" and len(series) == KPI_POINTS
    assert [k["t"] for k in series] == sorted(k["t"] for k in series)
    assert series[-1]["t"] == T0 and set(series[-1]["values"]) == {
        "mean_delay_s", "throughput_vph", "max_queue_veh"}
    last3 = client.get("/api/v1/intersections/elm-1st/kpis", headers=auth(centre),
                       params={"limit": 3}).json()["kpis"]
    assert last3 == series[-3:]
    recent = client.get("/api/v1/intersections/elm-1st/kpis", headers=auth(centre),
                        params={"since": T0 - 600}).json()["kpis"]
    assert [k["t"] for k in recent] == [T0 - 600, T0 - 300, T0]
    for params in ({"limit": 0}, {"since": -1}, {"limit": 6000}):
        assert client.get("/api/v1/intersections/elm-1st/kpis", headers=auth(centre),
                          params=params).status_code == 422


def test_latest_measurements_in_their_wire_form(centre, client):
    body = client.get("/api/v1/intersections/elm-2nd/measurements",
                      headers=auth(centre)).json()
    [m] = body["measurements"]
    assert (m["intersection_id"], m["seq"], m["interval_s"]) == ("elm-2nd", 101, 60.0)
    assert m["failed_detectors"] == ["elm-2nd_N_queue"] and len(m["lanes"]) == 6
    assert m["lanes"][0]["healthy"] is False


@pytest.mark.parametrize("path", ["kpis", "measurements"])
def test_history_needs_a_token_and_a_known_intersection(centre, client, path):
    assert client.get(f"/api/v1/intersections/elm-1st/{path}").status_code == 401
    missing = client.get(f"/api/v1/intersections/nowhere/{path}", headers=auth(centre))
    assert missing.status_code == 404 and "nowhere" in missing.json()["detail"]


def test_a_state_store_without_history_gives_the_latest_kpis_and_no_measurements(centre):
    class LatestOnly:  # the CentralState interface alone
        def status(self, intersection_id):
            return None

        def kpis(self, intersection_id):
            return KpiSnapshot(T0, 300, {"mean_delay_s": 12.0}) \
                if intersection_id == "elm-1st" else None

    assert not isinstance(LatestOnly(), StateHistory)
    centre.service.state = LatestOnly()
    client = TestClient(centre.app())
    kpis = client.get("/api/v1/intersections/elm-1st/kpis", headers=auth(centre)).json()
    assert kpis["kpis"] == [{"t": T0, "window_s": 300, "values": {"mean_delay_s": 12.0}}]
    assert client.get("/api/v1/intersections/elm-1st/kpis", headers=auth(centre),
                      params={"since": T0 + 1}).json()["kpis"] == []
    assert client.get("/api/v1/intersections/elm-2nd/kpis",
                      headers=auth(centre)).json()["kpis"] == []
    assert client.get("/api/v1/intersections/elm-1st/measurements",
                      headers=auth(centre)).json()["measurements"] == []


def test_the_openapi_document_describes_the_history_routes_but_not_the_pages(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert "/api/v1/intersections/{intersection_id}/kpis" in paths
    assert "/api/v1/intersections/{intersection_id}/measurements" in paths
    assert not any(p == "/" or p.startswith("/dashboard") for p in paths)


# --- MemoryState's history ----------------------------------------------------------------
def measurement(seq, start, xid="elm-1st"):
    return Measurement(site="s", intersection_id=xid, seq=seq, interval_start=start,
                       interval_s=60.0, lanes=(LaneMeasurement(lane="l1", count=1, flow_vph=60.0,
                                                               occupancy=0.1),))


def test_memory_state_keeps_a_bounded_ordered_kpi_history():
    state = MemoryState(history=3)
    assert isinstance(state, StateHistory)
    for t in (10.0, 30.0, 20.0, 40.0):
        state.set_kpis("x", KpiSnapshot(t, 10, {"q": t}))
    assert [k.t for k in state.kpi_history("x")] == [20.0, 30.0, 40.0]
    state.set_kpis("x", KpiSnapshot(30.0, 10, {"q": -1.0}))  # the same time replaces
    assert [k.values["q"] for k in state.kpi_history("x")] == [20.0, -1.0, 40.0]
    assert state.kpis("x").t == 30.0  # the latest set, as before
    assert [k.t for k in state.kpi_history("x", since=25.0, limit=1)] == [40.0]
    assert state.kpi_history("x", limit=0) == [] and state.kpi_history("y") == []


def test_memory_state_keeps_recent_measurements_in_order_without_repeats():
    state = MemoryState(history=3)
    for seq, start in ((1, 0.0), (3, 120.0), (2, 60.0), (3, 120.0), (4, 180.0)):
        state.add_measurement(measurement(seq, start))
    assert [m.seq for m in state.measurements("elm-1st", limit=10)] == [2, 3, 4]
    assert [m.seq for m in state.measurements("elm-1st")] == [4]
    assert state.measurements("elm-1st", limit=0) == []
    assert state.measurements("elm-2nd", limit=5) == []


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10"])
def test_memory_state_refuses_a_bad_history_length(bad):
    with pytest.raises(ValueError, match="history"):
        MemoryState(history=bad)


def test_memory_state_refuses_what_is_not_a_measurement():
    with pytest.raises(ValueError, match="Measurement"):
        MemoryState().add_measurement({"seq": 1})
