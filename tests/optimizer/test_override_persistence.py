"""Operator overrides survive a restart of the central service (optimizer.override_store).

Each test runs the real :class:`CentralService` on files in ``tmp_path`` (no broker: the loop
publishes into a fake link), stops it, and starts a new one on the same files, with an
injected clock.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import msgspec
import pytest
from fastapi.testclient import TestClient

from edge_agent.config import load_plan, load_site
from edge_agent.messages import PlanMessage, decode
from edge_agent.plan import PlanSource
from edge_agent.signatures import generate_key
from edge_agent.topics import parse_topic
from optimizer.arbitration import Arbiter, GuardRefused, OverrideConflict, TimeOfDaySchedule
from optimizer.audit import AuditError, AuditLog
from optimizer.auth import UserStore
from optimizer.central_config import load_central_config
from optimizer.central_service import CentralService
from optimizer.operations import OperationsService, Restored
from optimizer.override_store import OverrideStore, OverrideStoreError
from optimizer.overrides import ExtendPhase
from optimizer.state import MemoryState

from conftest import CONFIGS, ManualClock

X = "elm-1st"
T0 = 1_800_000_000.0  # 2027-01-15 08:00 UTC
HOUR = 3600.0


class FakeLink:
    """Collects what the loop publishes; checks that every plan is in the history first."""

    def __init__(self, service: CentralService) -> None:
        self.service = service
        self.plans: list[PlanMessage] = []

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if parse_topic(topic).kind.value == "plan":
            message = decode(payload, PlanMessage)
            # A plan id reaches an edge only once the history holds it (ids after a restart
            # continue from the history).
            assert self.service.history.plan(X, message.plan.plan_id) is not None
            self.plans.append(message)


def write_files(folder: Path, *, cycle_max: int = 120) -> Path:
    """A one-intersection central config (and its site file) in ``folder``."""
    site = (CONFIGS / "nema-4phase.toml").read_text()
    assert "cycle_max = 120" in site
    (folder / "site.toml").write_text(site.replace("cycle_max = 120", f"cycle_max = {cycle_max}"))
    key = folder / "central.key"
    if not key.exists():
        key.write_bytes(generate_key()[0])
    path = folder / "central.toml"
    path.write_text(f"""
site_config = "site.toml"
central_id = "central-test"
[storage]
db = "central.sqlite"
history = "history.sqlite"
[signing]
key = "central.key"
[api]
enabled = false
[[regions]]
id = "elm"
intersections = ["{X}"]
replan_s = 100000
[[time_of_day]]
intersection = "{X}"
start = "00:00"
plan = "{CONFIGS / 'plans' / 'elm-1st-offpeak.toml'}"
""")
    return path


class Centre:
    """One run of the central service on the files of ``folder``."""

    def __init__(self, folder: Path, clock: ManualClock, tokens: dict[str, str]) -> None:
        self.clock, self.tokens = clock, tokens
        self.service = CentralService(load_central_config(folder / "central.toml"),
                                      clock=clock)
        self.link = FakeLink(self.service)
        self.service.loop.publisher = self.link
        self.client = TestClient(self.service.app(tick_every_s=None))

    def get(self, path: str) -> dict:
        response = self.client.get(f"/api/v1{path}", headers=self._auth())
        assert response.status_code == 200, response.text
        return response.json()

    def post(self, path: str, body: dict):
        return self.client.post(f"/api/v1{path}", json=body, headers=self._auth())

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens['operator']}"}

    def publish(self) -> PlanMessage:
        """Tick the loop once; the plan it published for X."""
        self.link.plans.clear()
        self.service.loop.tick()
        [message] = self.link.plans
        return message

    def audit(self, action: str) -> list:
        return [e for e in self.service.audit.entries(limit=1000) if e.action == action]

    def stop(self) -> None:
        self.service.stop()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_files(tmp_path)
    return tmp_path


@pytest.fixture
def tokens(folder: Path) -> dict[str, str]:
    users = UserStore(folder / "central.sqlite")
    try:
        return {"operator": users.add("operator", "operator", T0)}
    finally:
        users.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


def start(folder: Path, clock: ManualClock, tokens: dict[str, str]) -> Centre:
    return Centre(folder, clock, tokens)


def extend(seconds: float = 10.0, duration_s: float = 2 * HOUR) -> dict:
    return {"intersection_id": X, "pattern": {"kind": "extend-phase", "phase": 2,
                                              "seconds": seconds},
            "duration_s": duration_s, "reason": "parade on Elm St"}


def create(centre: Centre, **kw) -> dict:
    response = centre.post("/overrides", extend(**kw))
    assert response.status_code == 201, response.text
    return response.json()


# --- restart --------------------------------------------------------------------------------
def test_an_override_is_back_in_force_after_a_restart_with_the_same_plan_and_expiry(
        folder, clock, tokens):
    first = start(folder, clock, tokens)
    assert first.publish().plan.source == PlanSource.TIME_OF_DAY
    body = create(first)
    before = first.publish().plan
    assert before.source == PlanSource.OVERRIDE and before.cycle == 70.0
    record = first.service.service.arbiter.override(body["override"]["override_id"])
    first.stop()

    clock.now += 600  # the centre was down for ten minutes
    again = start(folder, clock, tokens)
    assert again.service.restored.restored == (record,)  # rebuilt exactly
    assert again.service.restored.expired == () and again.service.restored.dropped == ()
    [listed] = again.get("/overrides")["overrides"]
    assert listed == body["override"]
    view = again.get(f"/intersections/{X}")
    assert view["mode"] == "override" and view["override"]["override_id"] == listed["override_id"]

    after = again.publish().plan
    # The same plan until the same expiry, under a plan id the edge has not seen.
    assert after.plan_id > before.plan_id
    assert (after.rings, after.cycle, after.offset, after.expiry, after.source) == \
        (before.rings, before.cycle, before.offset, before.expiry, before.source)
    [restore] = again.audit("override.restore")
    assert (restore.who, restore.intersection, restore.outcome) == ("system", X, "restored")
    assert restore.details_obj["override_id"] == record.override_id
    assert restore.details_obj["plan_id"] == after.plan_id
    assert again.service.audit.verify().ok
    again.stop()


def test_cancel_after_a_restart_hands_back_is_audited_and_ids_keep_rising(folder, clock, tokens):
    first = start(folder, clock, tokens)
    first.publish()
    override_id = create(first)["override"]["override_id"]
    first.publish()
    first.stop()

    clock.now += 60
    again = start(folder, clock, tokens)
    response = again.post(f"/overrides/{override_id}/cancel", {"reason": "parade over"})
    assert response.status_code == 200, response.text
    assert response.json()["mode"] == "time-of-day"
    [cancel] = again.audit("override.cancel")
    assert (cancel.who, cancel.outcome, cancel.details_obj["override_id"]) == \
        ("operator", "cancelled", override_id)
    assert again.publish().plan.source == PlanSource.TIME_OF_DAY
    assert again.get("/overrides")["overrides"] == []
    stored = again.service.overrides.get(override_id)
    assert (stored.outcome, stored.ended, stored.end_reason) == \
        ("cancelled", clock.now, "parade over")
    again.stop()

    clock.now += 60
    third = start(folder, clock, tokens)
    assert third.service.restored.restored == ()  # a cancelled override stays cancelled
    assert third.get(f"/intersections/{X}")["mode"] == "time-of-day"
    # Every override has ended, yet the next id is above the last one: never reused.
    assert create(third)["override"]["override_id"] == override_id + 1
    third.stop()


def test_an_override_that_ran_out_while_the_centre_was_down_expires_and_hands_back(
        folder, clock, tokens):
    first = start(folder, clock, tokens)
    first.publish()
    override_id = create(first, duration_s=1800)["override"]["override_id"]
    before = first.publish().plan
    first.stop()

    clock.now += HOUR  # down past the expiry
    again = start(folder, clock, tokens)
    restored = again.service.restored
    assert restored.restored == () and [o.override_id for o in restored.expired] == \
        [override_id]
    [expire] = again.audit("override.expire")
    assert (expire.who, expire.outcome, expire.reason) == ("system", "expired", "expiry reached")
    assert expire.details_obj["handed_back_to"] == "time-of-day"
    assert expire.details_obj["expiry"] == T0 + 1800
    assert again.get("/overrides")["overrides"] == []
    assert again.get(f"/intersections/{X}")["mode"] == "time-of-day"
    plan = again.publish().plan
    assert plan.source == PlanSource.TIME_OF_DAY and plan.plan_id > before.plan_id
    assert again.service.overrides.get(override_id).outcome == "expired"
    again.stop()

    third = start(folder, clock, tokens)  # expired once, not again
    assert third.service.restored.expired == () and len(third.audit("override.expire")) == 1
    third.stop()


def test_a_stored_plan_that_fails_the_guard_after_a_config_change_is_dropped_and_audited(
        folder, clock, tokens, caplog):
    first = start(folder, clock, tokens)
    first.publish()
    override_id = create(first, seconds=20.0)["override"]["override_id"]  # cycle 80 s
    before = first.publish().plan
    assert before.cycle == 80.0
    first.stop()

    write_files(folder, cycle_max=75)  # the intersection now allows cycles up to 75 s only
    caplog.set_level(logging.INFO)
    again = start(folder, clock, tokens)
    [(record, why)] = again.service.restored.dropped
    assert record.override_id == override_id and "cycle" in why
    [drop] = again.audit("override.drop")
    assert (drop.who, drop.intersection, drop.outcome) == ("system", X, "dropped")
    assert drop.details_obj["override_id"] == override_id
    assert {v["rule"] for v in drop.details_obj["violations"]} == {"cycle-range"}
    assert "not restored after a restart" in drop.reason
    assert any(r.levelno == logging.ERROR and f"override {override_id}" in r.getMessage()
               and "not restored" in r.getMessage() for r in caplog.records)
    assert again.get("/overrides")["overrides"] == []
    plan = again.publish().plan
    assert plan.source == PlanSource.TIME_OF_DAY and plan.plan_id > before.plan_id
    assert again.service.overrides.get(override_id).outcome == "dropped"
    again.stop()

    third = start(folder, clock, tokens)  # dropped once, not at every start
    assert third.service.restored.dropped == () and len(third.audit("override.drop")) == 1
    third.stop()


def test_plan_ids_stay_above_the_override_plan_even_when_the_history_is_replaced(
        folder, clock, tokens):
    first = start(folder, clock, tokens)
    first.publish()
    create(first)
    before = first.publish().plan
    first.stop()
    for name in ("history.sqlite", "history.sqlite-wal", "history.sqlite-shm"):
        (folder / name).unlink(missing_ok=True)  # e.g. restored from an old backup

    again = start(folder, clock, tokens)
    assert again.publish().plan.plan_id > before.plan_id  # the store's floor
    again.stop()


# --- an unreadable store --------------------------------------------------------------------
def test_a_store_that_is_not_a_database_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "central.sqlite"
    path.write_bytes(b"this is not an SQLite file, whatever its name says" * 100)
    with pytest.raises(OverrideStoreError, match=str(path)):
        OverrideStore(path)


def test_a_stored_override_that_does_not_decode_stops_the_start_naming_file_and_override(
        folder, clock, tokens):
    first = start(folder, clock, tokens)
    first.publish()
    override_id = create(first)["override"]["override_id"]
    first.stop()
    db = folder / "central.sqlite"
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE overrides SET plan = '{\"cycle\": ' WHERE override_id = ?",
                    (override_id,))
    with pytest.raises(OverrideStoreError) as caught:
        CentralService(load_central_config(folder / "central.toml"), clock=clock)
    message = str(caught.value)
    assert str(db) in message and f"override {override_id} ({X}) does not decode" in message


# --- the store, the service and the arbiter underneath ----------------------------------------
@pytest.fixture(scope="module")
def site():
    return load_site(CONFIGS / "nema-4phase.toml")


@pytest.fixture(scope="module")
def offpeak():
    return load_plan(CONFIGS / "plans" / "elm-1st-offpeak.toml")


def operations(site, offpeak, store, audit, clock, last_override_id=0) -> OperationsService:
    arbiter = Arbiter(site.intersections, time_of_day={X: TimeOfDaySchedule(((0, offpeak),))},
                      last_override_id=last_override_id)
    return OperationsService(site, audit=audit, state=MemoryState(), arbiter=arbiter,
                             clock=clock, store=store)


def test_an_override_the_audit_log_refuses_is_withdrawn_from_the_store(site, offpeak, tmp_path,
                                                                      clock):
    store = OverrideStore(tmp_path / "o.sqlite")
    audit = AuditLog(tmp_path / "o.sqlite")
    service = operations(site, offpeak, store, audit, clock)
    service.tick()

    def broken(**kw):
        raise AuditError("audit log: disk full")

    audit.append = broken
    with pytest.raises(AuditError):
        service.create_override(user="ana", intersection_id=X, pattern=ExtendPhase(2, 5.0),
                                expiry=T0 + 600, reason="parade")
    assert service.arbiter.overrides() == [] and store.active() == []
    assert store.get(1).outcome == "withdrawn"  # nothing comes back after a restart


def test_a_store_that_cannot_be_written_refuses_the_override_whole(site, offpeak, tmp_path,
                                                                    clock):
    store = OverrideStore(tmp_path / "o.sqlite")
    service = operations(site, offpeak, store, AuditLog(":memory:"), clock)
    service.tick()

    def full(record, plan_id):
        raise OverrideStoreError(f"override store {store.path}: cannot save override: full")

    store.save = full
    with pytest.raises(OverrideStoreError, match="o.sqlite"):
        service.create_override(user="ana", intersection_id=X, pattern=ExtendPhase(2, 5.0),
                                expiry=T0 + 600, reason="parade")
    assert service.arbiter.overrides() == []  # an override a restart would lose never runs
    assert service.audit.entries() == []  # nor is it reported as accepted
    store.close()  # nor can an id be reserved: refused before anything changes
    with pytest.raises(OverrideStoreError, match="o.sqlite"):
        service.create_override(user="ana", intersection_id=X, pattern=ExtendPhase(2, 5.0),
                                expiry=T0 + 600, reason="parade")
    assert service.arbiter.overrides() == []


def test_processes_sharing_a_store_never_hand_out_the_same_override_id(tmp_path):
    a, b = OverrideStore(tmp_path / "o.sqlite"), OverrideStore(tmp_path / "o.sqlite")
    ids = [a.next_id(), b.next_id(), a.next_id(), b.next_id()]
    assert ids == [1, 2, 3, 4]
    assert OverrideStore(tmp_path / "o.sqlite").last_override_id() == 4


def test_the_arbiter_restores_an_override_checked_again_and_never_reuses_its_id(site, offpeak):
    arbiter = Arbiter(site.intersections)
    plan = msgspec.structs.replace(offpeak, source=PlanSource.OVERRIDE, expiry=T0 + 600,
                                   activation=T0)
    record = arbiter.add_override(plan, user="ana", reason="parade", now=T0,
                                  next_id=lambda: 7)
    assert record.override_id == 7
    arbiter.cancel_override(7)
    with pytest.raises(ValueError, match="never reused"):
        arbiter.add_override(plan, user="ana", reason="parade", now=T0, next_id=lambda: 3)

    fresh = Arbiter(site.intersections)
    fresh.restore_override(record, T0 + 60)
    assert fresh.override(7) == record
    with pytest.raises(OverrideConflict):
        fresh.restore_override(record, T0 + 60)
    fresh.cancel_override(7)
    again = fresh.add_override(plan, user="ana", reason="parade", now=T0 + 60)
    assert again.override_id == 8  # counted on from the restored id

    narrow = load_site(CONFIGS / "nema-4phase.toml")
    tight = msgspec.structs.replace(
        narrow, intersections=(msgspec.structs.replace(narrow.intersections[0],
                                                       cycle_max=50.0),))
    with pytest.raises(GuardRefused):  # cycle 60 s no longer allowed
        Arbiter(tight.intersections).restore_override(record, T0 + 60)
    # Past its expiry it is not judged: the next decision expires it and hands back.
    late = Arbiter(tight.intersections)
    late.restore_override(record, T0 + 600)
    decision = late.decide(X, T0 + 600)
    assert decision.expired == (record,) and decision.override is None


def test_restoring_twice_or_for_another_process_leaves_the_override_alone(site, offpeak,
                                                                         tmp_path, clock):
    store, audit = OverrideStore(tmp_path / "o.sqlite"), AuditLog(tmp_path / "o.sqlite")
    first = operations(site, offpeak, store, audit, clock)
    first.tick()
    record, _, _ = first.create_override(user="ana", intersection_id=X,
                                         pattern=ExtendPhase(2, 5.0), expiry=T0 + 600,
                                         reason="parade")
    assert first.restore_overrides().restored == ()  # in force here already: not dropped
    elsewhere = operations(site, offpeak, store, audit, clock)
    assert elsewhere.restore_overrides(others={X}) == Restored()  # another process serves X
    assert [s.record for s in store.active()] == [record]
    again = operations(site, offpeak, store, audit, clock, last_override_id=0)
    assert again.restore_overrides().restored == (record,)
    assert [e.action for e in audit.entries()] == ["override.create", "override.restore"]


def test_the_api_answers_503_naming_the_file_when_the_store_cannot_be_written(folder, clock,
                                                                             tokens):
    centre = start(folder, clock, tokens)
    centre.publish()
    store = centre.service.overrides

    def full(record, plan_id):
        raise OverrideStoreError(f"override store {store.path}: cannot save override: full")

    store.save = full
    response = centre.post("/overrides", extend())
    assert response.status_code == 503
    assert str(folder / "central.sqlite") in response.json()["detail"]
    assert centre.get("/overrides")["overrides"] == []
    assert centre.get(f"/intersections/{X}")["mode"] == "time-of-day"
    centre.stop()
