"""The operations dashboard: static pages served beside the operations API.

The dashboard is plain HTML, CSS and JavaScript in ``optimizer/dashboard/`` (no build step, no
third-party script, nothing fetched from anywhere but this server). It is served without
authentication at ``/dashboard/`` (``/`` redirects there): the pages hold no data. The browser
asks for a token at sign-in, keeps it in ``sessionStorage`` (gone when the tab closes) and reads
the operations API with it, so the dashboard can do exactly what the token's role may:

- intersections with their mode (override, adaptive, time-of-day, none), edge health and KPIs;
- for the selected one, the plan in force with its explanation and a ring diagram, the latest
  measurements per lane and the KPIs over time, drawn as SVG plots by ``charts.js``;
- the active overrides and a form to create one (extend a phase, re-time to a cycle, or a
  complete plan; duration or end time; a reason) and to cancel one (with a reason); a refusal by
  the guard shows each violation;
- the audit log, newest first.

Every response carries a Content-Security-Policy that allows only this origin, so the pages
cannot load or send anything elsewhere.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["DASHBOARD_DIR", "DASHBOARD_PATH", "SECURITY_HEADERS", "mount_dashboard"]

DASHBOARD_DIR = Path(__file__).resolve().with_name("dashboard")
DASHBOARD_PATH = "/dashboard"

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # The pages change with the software: always revalidate (they are small).
    "Cache-Control": "no-cache",
}


class _WithHeaders:
    """ASGI wrapper that adds fixed headers to every HTTP response of ``app``."""

    def __init__(self, app: ASGIApp, headers: dict[str, str]) -> None:
        self.app = app
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1"))
                        for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k for k, _ in self.headers}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": kept + self.headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def mount_dashboard(app: FastAPI, *, path: str = DASHBOARD_PATH,
                    directory: Path = DASHBOARD_DIR) -> None:
    """Serve the dashboard's files at ``path`` on ``app`` and redirect ``/`` to it."""
    if not (directory / "index.html").is_file():
        raise FileNotFoundError(f"dashboard: {directory / 'index.html'} is missing (was the "
                                f"package installed without its data files?)")
    static = StaticFiles(directory=directory, html=True, follow_symlink=False)
    app.mount(path, _WithHeaders(static, SECURITY_HEADERS), name="dashboard")

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse(f"{path}/", status_code=307)
