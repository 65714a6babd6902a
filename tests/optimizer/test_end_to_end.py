"""The whole loop end to end on the demo's small scenario, over real mosquitto and Modbus.

``tsc-central demo`` (:func:`optimizer.demo.run_demo`, in this process, through its test
``hook``) starts mosquitto, the generated 3-intersection SUMO corridor behind one virtual
Modbus controller per light, one edge agent per intersection, the central service with the SUMO
validation gate ON (1 seed, short horizon) and the operations API on a real HTTP port. While the
simulation runs, in this order:

1. measurements flow up: the centre's history holds measurements of every edge;
2. a plan that passed the validation gate reaches a controller: the region's validator ran on
   SUMO and accepted, and a virtual controller committed an adaptive plan published after that;
3. an override issued through the HTTP API (an operator's token) takes effect: the edge acks it,
   the virtual controller commits the override plan, and the audit log says who, why, outcome;
4. after its short expiry (simulated seconds: everything runs on the simulation's clock) the
   intersection hands back to adaptive: a later adaptive plan is published, acked, committed.
"""

from __future__ import annotations

import threading
import time
from argparse import ArgumentParser
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from optimizer.demo_setup import find_mosquitto

# Part of the default run; `pytest -m e2e` runs it alone.
pytestmark = [pytest.mark.integration, pytest.mark.e2e]

BUDGET_S = 300.0  # wall seconds for the whole test; every wait below is bounded by it
# Simulated minutes the demo may run: far more than the steps need (about 10), so that a slow
# validation or a rejected first candidate cannot end the simulation before the last step.
# The test stops the demo as soon as everything is checked.
MINUTES = 60
OVERRIDE_S = 120.0  # simulated seconds the override lasts


def test_the_whole_loop_over_mosquitto_and_modbus(tmp_path: Path) -> None:
    pytest.importorskip("libsumo", reason="needs the simulation extra")
    pytest.importorskip("uvicorn", reason="needs the central extra")
    import httpx2 as httpx  # the test extra's HTTP client (Starlette's TestClient uses it too)

    if find_mosquitto() is None:
        pytest.skip("needs mosquitto")
    from optimizer.demo import add_demo_command, run_demo

    parser = ArgumentParser()
    add_demo_command(parser.add_subparsers())
    args = parser.parse_args(["demo", "--minutes", str(MINUTES), "--speed", "25", "--out",
                              str(tmp_path / "demo"), "--port", "0", "--validate",
                              "--no-progress"])
    deadline = time.monotonic() + BUDGET_S
    seen: dict[str, Any] = {}

    def wait_for(condition: Callable[[], Any], what: str, run: Any) -> Any:
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            if run.cabinets.finished.is_set():
                raise AssertionError(f"the simulation ended before {what} "
                                     f"(error: {run.cabinets.error!r}); {diagnosis(run)}")
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what} at simulated "
                             f"{run.cabinets.sim_time:.0f} s; {diagnosis(run)}")

    def diagnosis(run: Any) -> str:
        """What the loop had done so far, for a failure message."""
        commits = [(c.intersection, c.plan_id, round(c.sim_time)) for c in run.cabinets.commits]
        return (f"gate verdicts: {seen.get('verdicts')}; commits: {commits}; "
                f"loop: {run.service.loop.status()}")

    def hook(run: Any) -> None:
        # The guard: whatever happens, the demo stops within the budget.
        guard = threading.Timer(max(1.0, deadline - time.monotonic()), run.stop.set)
        guard.daemon = True
        guard.start()
        seen["guard"] = guard
        service, cabinets = run.service, run.cabinets
        history, audit = service.history, service.audit
        edges = sorted(cabinets.controllers)
        assert len(edges) == 3 and run.broker.kind == "mosquitto"

        # Record the validation gate's verdicts (the region's validator runs SUMO).
        verdicts: list[dict[str, Any]] = []
        seen["verdicts"] = verdicts
        (rid, region), = service.loop.regions.items()
        assert region.validator is not None, "validation is on"
        validator = region.validator

        def recording(region_id, candidates, incumbent, windows, now):  # type: ignore[no-untyped-def]
            accepted, reasons = validator(region_id, candidates, incumbent, windows, now)
            verdicts.append({"t": now, "planned": sorted(candidates), "accepted": accepted,
                             "reasons": list(reasons)})
            return accepted, reasons

        from dataclasses import replace
        service.loop.regions[rid] = replace(region, validator=recording)

        # (1) Measurements flow up from every edge into the centre's history.
        wait_for(lambda: all(history.count("measurements", x) > 0 for x in edges),
                 "measurements from every edge", run)

        # (2) A plan that passed the SUMO gate reaches a controller.
        def validated_commit() -> Any:
            passed = [v for v in verdicts if v["accepted"]]
            if not passed:
                return None
            for c in list(cabinets.commits):
                record = history.plan(c.intersection, c.plan_id)
                if record is not None and record.source == "adaptive" and \
                        c.intersection in passed[0]["planned"] and \
                        record.published >= passed[0]["t"]:
                    return c, record, passed[0]
            return None

        commit, record, verdict = wait_for(validated_commit, "a validated plan committed", run)
        assert any(r.startswith("delay change ") for r in verdict["reasons"]), verdict
        assert record.outcome == "accepted"  # the edge acked it before the controller ran it
        last = service.loop.status()["regions"][rid]
        assert last["validated"] is True, last
        seen["validated"] = (commit.intersection, commit.plan_id, verdict["t"])

        # (3) An override through the HTTP API with an operator's token.
        x = commit.intersection
        token = service.users.add("olga", "operator", run.clock())
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=run.url, headers=headers, timeout=10) as api:
            view = api.get(f"/api/v1/intersections/{x}")
            assert view.status_code == 200, view.text
            # Half a cycle's offset shift: the same greens, so the guard accepts it whatever
            # the plan in force (a longer cycle scales greens past max green when the plan's
            # max green already sits at the configured cap, and is rightly refused).
            cycle, offset = view.json()["plan"]["cycle"], view.json()["plan"]["offset"]
            answer = api.post("/api/v1/overrides", json={
                "intersection_id": x, "pattern": {"kind": "fixed-cycle", "cycle": cycle,
                                                  "offset": (offset + cycle / 2) % cycle},
                "duration_s": OVERRIDE_S, "reason": "end-to-end test: parade"})
            assert answer.status_code == 201, answer.text
            oid = answer.json()["plan"]["plan_id"]
            assert answer.json()["mode"] == "override"
            wait_for(lambda: (r := history.plan(x, oid)) is not None and r.outcome == "accepted",
                     "the edge's ack of the override", run)
            wait_for(lambda: any(c.intersection == x and c.plan_id == oid
                                 for c in cabinets.commits),
                     "the controller committing the override", run)
            created = [e for e in audit.entries(limit=1000, intersection=x)
                       if e.action == "override.create"]
            assert len(created) == 1 and created[0].who == "olga"
            assert created[0].reason == "end-to-end test: parade"
            assert created[0].outcome == "accepted"
            logged = api.get("/api/v1/audit", params={"intersection": x, "limit": 1000}).json()
            assert any(e["action"] == "override.create" and e["who"] == "olga"
                       for e in logged["entries"])
            seen["override"] = (oid, cabinets.sim_time)

            # (4) The override expires and the intersection goes back to adaptive.
            expired = wait_for(lambda: [e for e in audit.entries(limit=1000, intersection=x)
                                        if e.action == "override.expire"],
                               "the override's expiry", run)
            assert expired[0].details_obj["handed_back_to"] == "adaptive", expired[0]

            def handed_back() -> Any:
                for c in list(cabinets.commits):
                    if c.intersection == x and c.plan_id > oid:
                        r = history.plan(x, c.plan_id)
                        if r is not None and r.source == "adaptive" and r.outcome == "accepted":
                            return c
                return None

            back = wait_for(handed_back, "an adaptive plan committed after the expiry", run)
            assert back.sim_time > seen["override"][1]
            assert api.get(f"/api/v1/intersections/{x}").json()["mode"] == "adaptive"
            chain = httpx.get(f"{run.url}api/v1/audit/verify", timeout=10,
                              headers={"Authorization": f"Bearer {run.admin_token}"})
            assert chain.status_code == 200 and chain.json()["ok"], chain.text
        seen["handed_back"] = (back.plan_id, back.sim_time)
        run.stop.set()  # all checked: end the demo now (it answers 130, "interrupted")

    started = time.monotonic()
    try:
        status = run_demo(args, hook=hook)
    finally:
        if "guard" in seen:
            seen["guard"].cancel()
    assert status == 130, status  # stopped by the test, not by a failure
    print("end-to-end:", {k: v for k, v in seen.items() if k in ("validated", "override",
                                                                 "handed_back")})
    assert {"validated", "override", "handed_back"} <= set(seen), seen
    assert time.monotonic() - started < BUDGET_S
