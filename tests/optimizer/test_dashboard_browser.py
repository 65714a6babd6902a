"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright against a
real uvicorn server on 127.0.0.1.

An operator signs in, sees the corridor's intersections, puts an override in force through the
form, finds it in the list and in the audit log, is shown each violation of an override the
guard refuses, and cancels the override; a viewer sees the form disabled. The page must make no
request to any other origin and log no error (a Content-Security-Policy violation is one).
Set ``TSC_DASHBOARD_SCREENSHOT=path.png`` to keep a screenshot of the page.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CHROMIUM = Path(os.environ.get("TSC_CHROMIUM", "/usr/bin/chromium"))
if not CHROMIUM.exists():
    pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set "
                f"TSC_CHROMIUM)", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api",
                                     reason="playwright is not installed (pip install playwright)")
uvicorn = pytest.importorskip("uvicorn")

from dashboard_centre import Centre  # noqa: E402

expect = playwright_api.expect
# The flags Chromium needs on a machine without a network or a sandbox-capable kernel setup.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


@pytest.fixture
def server():
    """The operations API with the dashboard, served by uvicorn on a free loopback port."""
    centre = Centre()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(centre.app(tick_every_s=1.0), log_level="warning", lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.started, "uvicorn did not start"
    try:
        yield centre, f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def page(tmp_path):
    """A fresh headless Chromium profile and page (1440x900, a laptop screen)."""
    with playwright_api.sync_playwright() as p:
        profile = tmp_path / "chromium-profile"
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1440, "height": 900}, locale="en-GB", timezone_id="UTC")
        context.set_default_timeout(8000)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


def test_an_operator_signs_in_overrides_sees_it_audited_and_a_guard_refusal(server, page,
                                                                             tmp_path):
    centre, base = server
    requests, problems = [], []
    page.on("request", lambda r: requests.append(r.url))
    expected_http = "the server responded with a status of"  # the 401 and 422 tried below
    page.on("console", lambda m: problems.append(m.text)
            if m.type == "error" and expected_http not in m.text else None)
    page.on("pageerror", lambda e: problems.append(str(e)))

    # Sign in: a wrong token is refused with a message, the operator's is accepted.
    page.goto(base + "/")
    assert page.url == base + "/dashboard/"
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Access token").fill("tsc_wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#login-error")).to_contain_text("not accepted")
    page.get_by_label("Access token").fill(centre.tokens["operator"])
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#who")).to_have_text("operator-1 (operator)")

    # The intersections, their modes and health; the first one's plan, measurements and KPIs.
    rows = page.locator("#x-table tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.nth(0)).to_contain_text("Elm St & 1st Ave")
    expect(rows.nth(0)).to_contain_text("time-of-day")
    expect(rows.nth(1)).to_contain_text("degraded")
    expect(rows.nth(2)).to_contain_text("adaptive")
    expect(rows.nth(2)).to_contain_text("stale")
    expect(page.locator("#plan")).to_contain_text("local peak plan: north-south 52 s")
    expect(page.locator("#meas-table tbody tr")).to_have_count(6)
    expect(page.locator("#kpi-charts svg.chart")).to_have_count(3)
    assert "mean delay" in page.locator("#kpi-charts").inner_text()
    page.get_by_role("button", name="Elm St & 3rd Ave").click()
    expect(page.locator("#detail-title")).to_have_text("Elm St & 3rd Ave (elm-3rd)")
    expect(page.locator("#plan")).to_contain_text("green wave from elm-2nd")

    # An override through the form: in force, listed and audited.
    form = page.locator("#override-form")
    form.get_by_label("Intersection").select_option("elm-1st")
    form.get_by_label("Pattern").select_option("extend-phase")
    form.get_by_label("Phase").select_option("4")
    form.get_by_label("Extra green (s)").fill("5")
    form.get_by_label("Duration in minutes").fill("15")
    form.get_by_label("Reason").fill("crash on 1st Ave, police directing")
    form.get_by_role("button", name="Put override in force").click()
    expect(page.locator("#ov-result")).to_contain_text("Override #1 in force at elm-1st")
    active = page.locator("#ov-table tbody tr")
    expect(active).to_have_count(1)
    expect(active.first).to_contain_text("crash on 1st Ave, police directing")
    expect(active.first).to_contain_text("extend-phase 4 by 5 s")
    expect(rows.nth(0)).to_contain_text("override")
    audit = page.locator("#audit-table tbody tr")
    expect(audit.first).to_contain_text("override.create")
    expect(audit.first).to_contain_text("accepted")
    expect(audit.first).to_contain_text("crash on 1st Ave, police directing")
    assert centre.audit.entries(newest_first=True, limit=1)[0].who == "operator-1"

    # An override the guard refuses: every violation is shown, and the refusal is audited.
    form.get_by_label("Intersection").select_option("elm-2nd")
    form.get_by_label("Phase").select_option("2")
    form.get_by_label("Extra green (s)").fill("10")
    form.get_by_label("Reason").fill("stadium exit")
    form.get_by_role("button", name="Put override in force").click()
    result = page.locator("#ov-result")
    expect(result).to_contain_text("Refused by the safety guard")
    expect(result).to_contain_text("[max-green] phase 2: green 57.0 s > max green 50.0 s")
    expect(result).to_contain_text("Recorded as audit entry")
    expect(audit.first).to_contain_text("refused")
    expect(audit.first).to_contain_text("[max-green] phase 2")
    expect(active).to_have_count(1)

    path = Path(os.environ.get("TSC_DASHBOARD_SCREENSHOT") or tmp_path / "dashboard.png")
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000

    # Cancel it from the list, with a reason: handed back and audited.
    page.get_by_role("button", name="Cancel override 1 at elm-1st").click()
    dialog = page.get_by_role("dialog", name="Cancel override")
    dialog.get_by_label("Reason").fill("road cleared")
    dialog.get_by_role("button", name="Cancel override").click()
    expect(page.locator("#cancel-result")).to_contain_text("back to time-of-day")
    expect(active).to_have_count(0)
    expect(audit.first).to_contain_text("override.cancel")
    expect(audit.first).to_contain_text("road cleared")

    # A viewer reads everything but cannot change plans.
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("Access token").fill(centre.tokens["viewer"])
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#who")).to_have_text("viewer-1 (viewer)")
    expect(page.locator("#ov-role-note")).to_be_visible()
    expect(page.get_by_role("button", name="Put override in force")).to_be_disabled()

    assert problems == []
    assert all(url.startswith(base + "/") for url in requests), \
        [u for u in requests if not u.startswith(base + "/")]
