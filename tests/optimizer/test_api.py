"""The operations API over FastAPI's test client: auth, overrides, hand-back, audit."""

from __future__ import annotations

import time

import msgspec
import pytest
from fastapi.testclient import TestClient

from edge_agent.config import load_plan, load_site
from edge_agent.messages import EdgeMode, Status
from edge_agent.plan import PlanSource
from optimizer.api import create_app
from optimizer.arbitration import Arbiter, TimeOfDaySchedule
from optimizer.audit import AuditLog
from optimizer.auth import UserStore
from optimizer.operations import OperationsService
from optimizer.state import KpiSnapshot, MemoryState

from conftest import CONFIGS, ManualClock

X = "main-oak"
T0 = 1_796_112_000.0


@pytest.fixture(scope="module")
def site():
    return load_site(CONFIGS / "nema-8phase.toml")


@pytest.fixture(scope="module")
def peak():
    return load_plan(CONFIGS / "plans" / "main-oak-am-peak.toml")


class Centre:
    """Everything a test touches: service, state, clock, client and one token per role."""

    def __init__(self, site, peak, tick_every_s=None) -> None:
        self.clock, self.state = ManualClock(T0), MemoryState()
        self.audit, users = AuditLog(":memory:"), UserStore(":memory:")
        schedule = TimeOfDaySchedule(((0, peak),))
        self.service = OperationsService(
            site, audit=self.audit, state=self.state, clock=self.clock,
            arbiter=Arbiter(site.intersections, time_of_day={X: schedule}))
        self.tokens = {role: users.add(role, role, T0) for role in ("viewer", "operator",
                                                                      "admin")}
        self.app = create_app(self.service, users, tick_every_s=tick_every_s)
        self.client = TestClient(self.app)

    def as_(self, role):
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def get(self, path, role="viewer", **kw):
        return self.client.get(f"/api/v1{path}", headers=self.as_(role), **kw)

    def post(self, path, body, role="operator"):
        return self.client.post(f"/api/v1{path}", json=body, headers=self.as_(role))

    def last_audit(self):
        return self.audit.entries(newest_first=True, limit=1)[0]


@pytest.fixture
def centre(site, peak):
    return Centre(site, peak)


def extend(seconds=10.0, phase=2, **extra):
    return {"intersection_id": X, "pattern": {"kind": "extend-phase", "phase": phase,
                                              "seconds": seconds},
            "duration_s": 600, "reason": "crash on Oak Ave", **extra}


def test_the_openapi_document_lists_every_endpoint(centre):
    doc = centre.client.get("/openapi.json").json()
    paths = doc["paths"]
    assert set(paths) == {"/api/v1/me", "/api/v1/intersections",
                          "/api/v1/intersections/{intersection_id}",
                          "/api/v1/intersections/{intersection_id}/kpis",
                          "/api/v1/intersections/{intersection_id}/measurements",
                          "/api/v1/overrides",
                          "/api/v1/overrides/{override_id}/cancel", "/api/v1/audit",
                          "/api/v1/audit/verify"}
    assert "post" in paths["/api/v1/overrides"] and "get" in paths["/api/v1/overrides"]
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
    assert "OverrideBody" in doc["components"]["schemas"]


@pytest.mark.parametrize("headers, detail", [
    ({}, "missing bearer token"),
    ({"Authorization": "Basic YWxpY2U6c2VjcmV0"}, "missing bearer token"),
    ({"Authorization": "Bearer tsc_not-a-token"}, "invalid or revoked token"),
])
def test_a_missing_or_invalid_token_is_401(centre, headers, detail):
    for method, path in (("get", "/api/v1/intersections"), ("post", "/api/v1/overrides")):
        response = getattr(centre.client, method)(path, headers=headers)
        assert response.status_code == 401 and detail in response.json()["detail"]
        assert response.headers["www-authenticate"] == "Bearer"
    assert centre.audit.head()[0] == 0  # nobody to record


def test_roles_limit_what_a_user_may_do_and_refusals_of_overrides_are_audited(centre):
    assert centre.get("/me").json() == {"name": "viewer", "role": "viewer"}
    response = centre.post("/overrides", extend(), role="viewer")
    assert response.status_code == 403 and "needs operator" in response.json()["detail"]
    entry = centre.last_audit()
    assert (entry.who, entry.action, entry.outcome) == ("viewer", "override.create", "refused")
    assert centre.get("/audit/verify", role="operator").status_code == 403
    assert centre.get("/audit/verify", role="admin").json()["ok"]


def test_intersections_show_mode_plan_health_and_kpis(centre):
    body = centre.get("/intersections").json()
    assert body["site"] == "downtown"
    [view] = body["intersections"]
    assert (view["id"], view["mode"], view["health"]) == (X, "time-of-day", "unknown")
    assert view["plan"]["plan_id"] == 1 and view["edge"] is None and view["kpis"] is None
    centre.state.set_status(Status(site="downtown", intersection_id=X, t=T0, online=True,
                                   mode=EdgeMode.CENTRAL, controller_ok=True, plan_id=1))
    centre.state.set_kpis(X, KpiSnapshot(T0, 900, {"mean_delay_s": 31.5}))
    view = centre.get(f"/intersections/{X}").json()
    assert view["health"] == "ok" and view["edge"]["mode"] == "central"
    assert view["kpis"] == {"t": T0, "window_s": 900, "values": {"mean_delay_s": 31.5}}
    assert centre.get("/intersections/nowhere").status_code == 404


def test_an_accepted_override_is_in_force_listed_and_audited(centre):
    response = centre.post("/overrides", extend())
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["mode"] == "override" and body["plan"]["plan_id"] == 2
    assert body["plan"]["cycle"] == 130.0 and body["plan"]["source"] == "override"
    assert body["override"]["expiry"] == T0 + 600
    view = centre.get(f"/intersections/{X}").json()
    assert view["mode"] == "override" and view["override"]["user"] == "operator"
    [listed] = centre.get("/overrides").json()["overrides"]
    assert listed["override_id"] == body["override"]["override_id"]
    entry = centre.last_audit()
    assert entry.seq == body["audit_seq"]
    assert (entry.who, entry.action, entry.intersection, entry.reason, entry.outcome) == \
        ("operator", "override.create", X, "crash on Oak Ave", "accepted")
    assert entry.details_obj["pattern"] == {"kind": "extend-phase", "phase": 2,
                                            "seconds": 10.0}
    assert entry.details_obj["plan_id"] == 2 and entry.t == T0
    assert entry.details_obj["plan"] == body["plan"]  # exactly what was put in force
    assert centre.post("/overrides", extend()).status_code == 409  # one at a time


def test_a_plan_that_fails_the_guard_is_refused_with_422_and_audited(centre):
    response = centre.post("/overrides", extend(seconds=40, phase=1))
    assert response.status_code == 422
    body = response.json()
    assert "fails the guard" in body["detail"]
    assert {v["rule"] for v in body["violations"]} >= {"max-green"}
    entry = centre.last_audit()
    assert entry.seq == body["audit_seq"] and entry.outcome == "refused"
    assert entry.details_obj["violations"] == body["violations"]
    assert centre.get(f"/intersections/{X}").json()["mode"] == "time-of-day"


def test_malformed_requests_are_refused_and_audited(centre, peak):
    cases = [
        ({"intersection_id": X, "pattern": {"kind": "flash"}, "duration_s": 60,
          "reason": "x"}, 422),
        ({**extend(), "reason": None}, 422),
        (extend(expiry=T0 + 60), 422),  # both expiry and duration
        ({**extend(), "duration_s": -5}, 422),
        ({**extend(), "intersection_id": "nowhere"}, 404),
        ({"intersection_id": X, "pattern": {"kind": "plan", "plan": {"cycle": "long"}},
          "duration_s": 60, "reason": "x"}, 422),
        ({"intersection_id": X, "pattern": {"kind": "fixed-cycle", "cycle": 10},
          "duration_s": 60, "reason": "x"}, 422),
        ({**extend(), "duration_s": 3 * 86400}, 422),
    ]
    for body, status in cases:
        before = centre.audit.head()[0]
        response = centre.post("/overrides", body)
        assert response.status_code == status, (body, response.text)
        entry = centre.last_audit()
        assert entry.seq == before + 1 == response.json()["audit_seq"]
        assert entry.outcome == "refused" and entry.who == "operator"
    assert "exactly one of expiry" in centre.audit.entries(after=2, limit=1)[0].details_obj[
        "error"]
    bad_json = centre.client.post("/api/v1/overrides", content=b"{not json",
                                  headers={**centre.as_("operator"),
                                           "Content-Type": "application/json"})
    assert bad_json.status_code == 422 and centre.last_audit().outcome == "refused"
    assert centre.last_audit().details_obj["body"] == "{not json"
    stranger = centre.client.post("/api/v1/overrides", content=b"{not json",
                                  headers={"Content-Type": "application/json"})
    assert stranger.status_code == 401
    viewer = centre.client.post("/api/v1/overrides", content=b"{not json",
                                headers={**centre.as_("viewer"),
                                         "Content-Type": "application/json"})
    assert viewer.status_code == 403
    assert centre.get("/audit", params={"limit": 0}).status_code == 422  # not an override


def test_a_complete_plan_and_a_fixed_cycle_as_overrides(centre, peak):
    plan = msgspec.to_builtins(msgspec.structs.replace(peak, source=PlanSource.TIME_OF_DAY))
    response = centre.post("/overrides", {"intersection_id": X, "reason": "special event",
                                          "pattern": {"kind": "plan", "plan": plan},
                                          "expiry": T0 + 3600})
    assert response.status_code == 201, response.text
    assert response.json()["plan"]["author"] == "operator"
    centre.post(f"/overrides/{response.json()['override']['override_id']}/cancel",
                {"reason": "event over"})
    fixed = centre.post("/overrides", {"intersection_id": X, "reason": "detour",
                                       "pattern": {"kind": "fixed-cycle", "cycle": 100},
                                       "duration_s": 60})
    assert fixed.status_code == 201 and fixed.json()["plan"]["cycle"] == 100


def test_cancel_hands_back_and_is_audited(centre):
    created = centre.post("/overrides", extend()).json()
    oid = created["override"]["override_id"]
    response = centre.post(f"/overrides/{oid}/cancel", {"reason": "road cleared"})
    assert response.status_code == 200
    assert response.json()["mode"] == "time-of-day" and response.json()["plan"]["plan_id"] == 3
    entry = centre.last_audit()
    assert (entry.action, entry.reason, entry.outcome) == ("override.cancel", "road cleared",
                                                          "cancelled")
    assert entry.details_obj["override_user"] == "operator"
    again = centre.post(f"/overrides/{oid}/cancel", {"reason": "again"})
    assert again.status_code == 404 and centre.last_audit().outcome == "refused"
    blank = centre.post(f"/overrides/{oid}/cancel", {"reason": " "})
    assert blank.status_code == 422 and "needs a reason" in blank.json()["detail"]
    assert centre.post("/overrides/abc/cancel", {"reason": "x"}).status_code == 422
    assert centre.last_audit().action == "override.cancel"
    assert centre.post(f"/overrides/{oid}/cancel", {"reason": "x"}, role="viewer"
                       ).status_code == 403


def test_an_override_expires_back_to_adaptive_and_the_expiry_is_audited(centre, peak):
    adaptive = msgspec.structs.replace(peak, source=PlanSource.ADAPTIVE, offset=5.0,
                                       activation=T0, expiry=None)
    centre.service.arbiter.submit_adaptive(adaptive, T0)
    centre.post("/overrides", extend())
    assert centre.get(f"/intersections/{X}").json()["mode"] == "override"
    centre.clock.now = T0 + 600
    view = centre.get(f"/intersections/{X}").json()
    assert view["mode"] == "adaptive" and view["plan"]["offset"] == 5.0
    assert view["plan"]["plan_id"] == 3 and "expired" in view["reason"]
    entry = centre.last_audit()
    assert (entry.who, entry.action, entry.outcome) == ("system", "override.expire", "expired")
    assert entry.details_obj["handed_back_to"] == "adaptive"
    assert centre.get("/overrides").json()["overrides"] == []


def test_a_new_override_after_an_unnoticed_expiry_records_the_expiry_first(centre):
    first = centre.post("/overrides", extend()).json()
    centre.clock.now = T0 + 700  # nobody has looked since the first expired
    second = centre.post("/overrides", extend(seconds=5))
    assert second.status_code == 201
    expire, create = centre.audit.entries(after=first["audit_seq"])
    assert (expire.action, create.action) == ("override.expire", "override.create")
    assert create.details_obj["base_plan_id"] == 3  # the time-of-day plan handed back to


def test_the_audit_log_reads_pages_and_verifies(centre):
    centre.post("/overrides", extend())
    centre.post("/overrides", extend())
    entries = centre.get("/audit").json()["entries"]
    assert [e["outcome"] for e in entries] == ["accepted", "refused"]
    assert entries[1]["prev_hash"] == entries[0]["hash"]
    assert centre.get("/audit", params={"after": 1}).json()["entries"][0]["seq"] == 2
    assert centre.get("/audit", params={"intersection": "elm"}).json()["entries"] == []
    assert centre.get("/audit", params={"newest_first": True, "limit": 1}).json()[
        "entries"][0]["seq"] == 2
    result = centre.get("/audit/verify", role="admin").json()
    assert result["ok"] and result["checked"] == 2
    anchor = {"anchor_seq": 2, "anchor_hash": entries[1]["hash"]}
    assert centre.get("/audit/verify", role="admin", params=anchor).json()["ok"]
    moved = {"anchor_seq": 1, "anchor_hash": entries[1]["hash"]}
    assert not centre.get("/audit/verify", role="admin", params=moved).json()["ok"]
    half = centre.get("/audit/verify", role="admin", params={"anchor_seq": 1})
    assert half.status_code == 422


def test_a_background_tick_expires_overrides_when_nobody_asks(site, peak):
    centre = Centre(site, peak, tick_every_s=0.01)
    with centre.client:
        centre.post("/overrides", extend())
        centre.clock.now = T0 + 601
        deadline = time.monotonic() + 5
        while centre.last_audit().action != "override.expire" and time.monotonic() < deadline:
            time.sleep(0.01)
    assert centre.last_audit().action == "override.expire"
