"""The operations API over HTTP (FastAPI; the OpenAPI description is at ``/openapi.json``).

Every route but ``/openapi.json`` needs ``Authorization: Bearer <token>`` (see
:mod:`optimizer.auth`): a missing or unknown token is 401, a role too low for the route 403.

===========================================  ========  =============================================
route                                        role      what
===========================================  ========  =============================================
``GET  /api/v1/me``                          viewer    who the token belongs to
``GET  /api/v1/intersections``               viewer    mode, plan in force, health, recent KPIs
``GET  /api/v1/intersections/{id}``          viewer    the same for one intersection
``GET  /api/v1/intersections/{id}/kpis``     viewer    KPI snapshots over time (``since``,
                                                       ``limit``); ``.../{id}/measurements``: the
                                                       latest measurements (``limit``)
``GET  /api/v1/overrides``                   viewer    the active overrides
``POST /api/v1/overrides``                   operator  create an override (201; 422 guard/input,
                                                       404 unknown intersection, 409 one active)
``POST /api/v1/overrides/{id}/cancel``       operator  cancel an override (404 if not active)
``GET  /api/v1/audit``                       viewer    audit entries (``after``, ``limit``,
                                                       ``intersection``, ``newest_first``)
``GET  /api/v1/audit/verify``                admin     walk the hash chain, report the first break
===========================================  ========  =============================================

Every override create and cancel is audited with its outcome, refusals included: a malformed
request, a plan the guard rejects (422 with the violations), an unknown intersection or
override, a conflicting override and a caller without the operator role. The refusal's body
carries ``audit_seq``, the entry that records it. When the override store
(:mod:`optimizer.override_store`) cannot be written, a create or cancel changes nothing and
answers 503 naming the file. The interactive docs pages are off: they
load scripts from a CDN, which a control room should not depend on.

The web dashboard (:mod:`optimizer.dashboard`) is served by the same application at
``/dashboard/`` (``/`` redirects there); its pages are static and read the routes above with the
user's token.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal, Union

import msgspec
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from edge_agent.config import convert
from edge_agent.plan import TimingPlan
from optimizer.arbitration import GuardRefused, OverrideConflict, UnknownIntersection
from optimizer.auth import Role, User, UserStore
from optimizer.dashboard import mount_dashboard
from optimizer.operations import OperationsService, Refused, override_dict, plan_dict
from optimizer.override_store import OverrideStoreError
from optimizer.overrides import ExtendPhase, FixedCycle, FullPlan, Pattern
from optimizer.state import StateHistory

__all__ = ["create_app"]

log = logging.getLogger(__name__)
PREFIX = "/api/v1"
_STRICT = ConfigDict(extra="forbid", strict=True)


class ExtendPhaseBody(BaseModel):
    """Give ``phase`` ``seconds`` more green; the cycle grows by as much."""

    model_config = _STRICT
    kind: Literal["extend-phase"]
    phase: int
    seconds: float


class FixedCycleBody(BaseModel):
    """Re-time the plan in force to ``cycle`` seconds with proportional splits."""

    model_config = _STRICT
    kind: Literal["fixed-cycle"]
    cycle: float
    offset: float | None = None


class PlanBody(BaseModel):
    """A complete timing plan in its wire form (``edge_agent.plan.TimingPlan``)."""

    model_config = _STRICT
    kind: Literal["plan"]
    plan: dict[str, Any]


class OverrideBody(BaseModel):
    """An override: where, which pattern, until when (``expiry`` or ``duration_s``), why."""

    model_config = _STRICT
    intersection_id: str
    pattern: Annotated[Union[ExtendPhaseBody, FixedCycleBody, PlanBody],
                       Field(discriminator="kind")]
    reason: str
    expiry: float | None = Field(default=None, description="POSIX seconds")
    duration_s: float | None = Field(default=None, description="seconds from now")


class CancelBody(BaseModel):
    """Why the override is cancelled."""

    model_config = _STRICT
    reason: str


# Routes whose refusals are audited, by (method, path prefix): the action they record.
_AUDITED = {("POST", f"{PREFIX}/overrides"): "override.create"}


def _audited_action(request: Request) -> str | None:
    path = request.url.path.rstrip("/")
    if request.method == "POST" and path.startswith(f"{PREFIX}/overrides/") \
            and path.endswith("/cancel"):
        return "override.cancel"
    return _AUDITED.get((request.method, path))


def create_app(service: OperationsService, users: UserStore, *,
               tick_every_s: float | None = None) -> FastAPI:
    """The FastAPI application over ``service``, authenticating against ``users``.

    With ``tick_every_s`` a background task re-decides every intersection that often, so an
    override expires (and is audited) on time even when nobody is asking.
    """
    bearer = HTTPBearer(auto_error=False, description="a per-user token from "
                                                      "`tsc-central users add`")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(_ticker(service, tick_every_s)) if tick_every_s else None
        yield
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    app = FastAPI(title="tsc-central operations API", version="1", lifespan=lifespan,
                  docs_url=None, redoc_url=None,
                  description="Intersections, plans in force, operator overrides and the "
                              "audit log of the traffic-signal control centre.")

    def authorise(request: Request, credentials: HTTPAuthorizationCredentials | None,
                  needed: Role) -> User:
        if credentials is None:
            raise HTTPException(401, "missing bearer token (Authorization: Bearer <token>)",
                                headers={"WWW-Authenticate": "Bearer"})
        user = users.authenticate(credentials.credentials)
        if user is None:
            raise HTTPException(401, "invalid or revoked token",
                                headers={"WWW-Authenticate": "Bearer"})
        if not user.role.allows(needed):
            action = _audited_action(request)
            message = f"role {user.role.value} may not do this; it needs {needed.value}"
            if action is not None:
                entry = service.record_refusal(user=user.name, action=action,
                                               intersection_id=None,
                                               details={"path": request.url.path},
                                               reason="", error=message)
                raise HTTPException(403, f"{message} (audit entry {entry.seq})")
            raise HTTPException(403, message)
        return user

    def role(needed: Role):
        def dependency(request: Request,
                       credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
                       ) -> User:
            return authorise(request, credentials, needed)
        return dependency

    viewer, operator, admin = (Depends(role(r)) for r in Role)

    @app.exception_handler(OverrideStoreError)
    async def store_failed(request: Request, exc: OverrideStoreError) -> JSONResponse:
        # Not a refusal of the request: the override was not accepted because it could not be
        # kept across a restart. Say so (503, the file named) rather than a bare 500.
        log.error("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": f"override store unavailable, nothing changed: {exc}"},
                            503)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        action = _audited_action(request)
        if action is None:
            return await request_validation_exception_handler(request, exc)
        # Bodies are parsed before dependencies run: authenticate here so that a stranger
        # still gets 401, and record the refusal of an operator's malformed request.
        try:
            user = authorise(request, await bearer(request), Role.OPERATOR)
        except HTTPException as denied:
            return JSONResponse({"detail": denied.detail}, denied.status_code,
                                headers=denied.headers)
        errors = jsonable_encoder(exc.errors())
        text = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}"
                         for e in errors)
        entry = await asyncio.to_thread(
            service.record_refusal, user=user.name, action=action, intersection_id=None,
            details={"path": request.url.path, "body": _body_text(exc.body)}, reason="",
            error=f"invalid request: {text}")
        return JSONResponse({"detail": errors, "audit_seq": entry.seq}, 422)

    @app.get(f"{PREFIX}/me", summary="who the token belongs to")
    def me(user: User = viewer) -> dict[str, Any]:
        return {"name": user.name, "role": user.role.value}

    @app.get(f"{PREFIX}/intersections", summary="intersections: mode, plan, health, KPIs")
    def intersections(user: User = viewer) -> dict[str, Any]:
        return {"site": service.site.site, "intersections": service.intersections()}

    @app.get(f"{PREFIX}/intersections/{{intersection_id}}", summary="one intersection")
    def intersection(intersection_id: str, user: User = viewer) -> dict[str, Any]:
        try:
            return service.intersection(intersection_id)
        except UnknownIntersection as exc:
            raise HTTPException(404, str(exc)) from None

    # --- history for the dashboard: KPIs over time and the latest measurements --------------
    def known(intersection_id: str) -> None:
        try:
            service.arbiter.intersection(intersection_id)
        except UnknownIntersection as exc:
            raise HTTPException(404, str(exc)) from None

    @app.get(f"{PREFIX}/intersections/{{intersection_id}}/kpis",
             summary="KPI snapshots over time, oldest first")
    def kpi_history(intersection_id: str, user: User = viewer,
                    since: Annotated[float, Query(ge=0, description="POSIX seconds")] = 0.0,
                    limit: Annotated[int, Query(ge=1, le=5000)] = 500) -> dict[str, Any]:
        known(intersection_id)
        state = service.state
        if isinstance(state, StateHistory):
            series = state.kpi_history(intersection_id, since=since, limit=limit)
        else:  # a store without history: the latest snapshot is all there is
            latest = state.kpis(intersection_id)
            series = [] if latest is None or latest.t < since else [latest]
        return {"intersection_id": intersection_id, "kpis": [k.to_dict() for k in series]}

    @app.get(f"{PREFIX}/intersections/{{intersection_id}}/measurements",
             summary="the latest measurements, oldest first")
    def measurements(intersection_id: str, user: User = viewer,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 1) -> dict[str, Any]:
        known(intersection_id)
        state = service.state
        found = state.measurements(intersection_id, limit=limit) \
            if isinstance(state, StateHistory) else []
        return {"intersection_id": intersection_id,
                "measurements": [msgspec.to_builtins(m) for m in found]}

    @app.get(f"{PREFIX}/overrides", summary="active overrides")
    def overrides(user: User = viewer) -> dict[str, Any]:
        return {"overrides": [override_dict(o) for o in service.overrides()]}

    @app.post(f"{PREFIX}/overrides", status_code=201, summary="create an override",
              responses={404: {"description": "unknown intersection"},
                         409: {"description": "the intersection has an active override"},
                         422: {"description": "malformed, or the plan fails the guard"}})
    def create_override(body: OverrideBody, user: User = operator) -> Any:
        try:
            pattern = _pattern(body.pattern)
            expiry = _expiry(body, service.clock())
        except ValueError as exc:
            entry = service.record_refusal(user=user.name, action="override.create",
                                           intersection_id=body.intersection_id,
                                           details={"pattern": body.pattern.kind},
                                           reason=body.reason, error=str(exc))
            return _refusal(422, str(exc), entry.seq)
        try:
            record, decision, entry = service.create_override(
                user=user.name, intersection_id=body.intersection_id, pattern=pattern,
                expiry=expiry, reason=body.reason)
        except Refused as refused:
            return _refused(refused)
        return {"override": override_dict(record), "mode": decision.mode.value,
                "plan": plan_dict(decision.plan), "audit_seq": entry.seq}

    @app.post(f"{PREFIX}/overrides/{{override_id}}/cancel", summary="cancel an override",
              responses={404: {"description": "no active override of that id"}})
    def cancel_override(override_id: int, body: CancelBody, user: User = operator) -> Any:
        try:
            record, decision, entry = service.cancel_override(
                user=user.name, override_id=override_id, reason=body.reason)
        except Refused as refused:
            return _refused(refused)
        return {"override": override_dict(record), "mode": decision.mode.value,
                "plan": plan_dict(decision.plan), "audit_seq": entry.seq}

    @app.get(f"{PREFIX}/audit", summary="audit log entries")
    def audit(user: User = viewer, after: Annotated[int, Query(ge=0)] = 0,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100,
              intersection: str | None = None, newest_first: bool = False) -> dict[str, Any]:
        entries = service.audit.entries(after=after, limit=limit, intersection=intersection,
                                        newest_first=newest_first)
        return {"entries": [e.to_dict() for e in entries]}

    @app.get(f"{PREFIX}/audit/verify", summary="verify the audit hash chain (admin)")
    def verify(user: User = admin, anchor_seq: Annotated[int | None, Query(ge=1)] = None,
               anchor_hash: Annotated[str | None, Query(pattern="^[0-9a-f]{64}$")] = None
               ) -> dict[str, Any]:
        if (anchor_seq is None) != (anchor_hash is None):
            raise HTTPException(422, "give anchor_seq and anchor_hash together, or neither")
        anchor = None if anchor_seq is None else (anchor_seq, anchor_hash)
        return service.audit.verify(anchor).to_dict()

    mount_dashboard(app)  # the web dashboard's static pages (optimizer/dashboard.py)
    return app


def _body_text(body: Any, limit: int = 2000) -> str:
    """What was sent, as text for the audit record (clipped: refusals are kept short)."""
    if isinstance(body, bytes):
        text = body.decode("utf-8", "replace")
    elif isinstance(body, str):
        text = body
    else:
        text = json.dumps(body, default=repr, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _pattern(body: ExtendPhaseBody | FixedCycleBody | PlanBody) -> Pattern:
    if isinstance(body, ExtendPhaseBody):
        return ExtendPhase(body.phase, body.seconds)
    if isinstance(body, FixedCycleBody):
        return FixedCycle(body.cycle, body.offset)
    return FullPlan(convert(body.plan, TimingPlan))


def _expiry(body: OverrideBody, now: float) -> float:
    if (body.expiry is None) == (body.duration_s is None):
        raise ValueError("override: give exactly one of expiry (POSIX seconds) or duration_s")
    if body.duration_s is not None:
        if not body.duration_s > 0:
            raise ValueError(f"override.duration_s: must be > 0, got {body.duration_s!r}")
        return now + body.duration_s
    return body.expiry


def _refusal(status: int, detail: str, audit_seq: int, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, "audit_seq": audit_seq, **extra}, status)


def _refused(refused: Refused) -> JSONResponse:
    error, seq = refused.error, refused.entry.seq
    if isinstance(error, GuardRefused):
        return _refusal(422, f"refused: the plan fails the guard ({len(error.violations)} "
                             f"violations)", seq,
                        violations=refused.entry.details_obj.get("violations", []))
    if isinstance(error, LookupError):
        return _refusal(404, str(error), seq)
    if isinstance(error, OverrideConflict):
        return _refusal(409, str(error), seq)
    return _refusal(422, str(error), seq)


async def _ticker(service: OperationsService, every_s: float) -> None:
    failing = False
    while True:
        try:
            await asyncio.to_thread(service.tick)
            if failing:
                log.info("arbitration tick recovered")
                failing = False
        except Exception:  # keep ticking; log once on entering the error state
            if not failing:
                log.exception("arbitration tick failed; retrying every %.1f s", every_s)
                failing = True
        await asyncio.sleep(every_s)
