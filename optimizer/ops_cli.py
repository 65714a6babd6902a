"""``tsc-central serve | users | override | audit``: the operations side of the command line.

``serve`` runs the operations API (on 127.0.0.1 only) over the site's intersections;
``users`` manages API users in the centre's database file; ``override`` talks to the running
API with a token, so that every override passes the same checks and lands in the same audit
log as one made over HTTP; ``audit`` reads and verifies the log either through the API or, with
``--db``, straight from the database file (read-only use: an auditor can check a copy offline).

Exit status: 0 done, 1 refused (by the service, the guard or a broken audit chain), 2 bad
input or the API unreachable.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge_agent.config import load_plan, load_site
from edge_agent.errors import ConfigError, DeviceError
from optimizer.client import ApiClient, ApiError

__all__ = ["add_commands", "parse_duration", "parse_time"]

DEFAULT_URL = "http://127.0.0.1:8080"
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``30m``, ``2h`` or ``1h30m``; ValueError naming the text."""
    text = text.strip()
    match = _DURATION.match(text)
    if text and re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    elif text and match:
        h, m, s = (float(g) if g else 0.0 for g in match.groups())
        seconds = h * 3600 + m * 60 + s
    else:
        raise ValueError(f"--for: expected a duration such as 90s, 30m, 2h or 1h30m, "
                         f"got {text!r}")
    if seconds <= 0:
        raise ValueError(f"--for: must be longer than 0 s, got {text!r}")
    return seconds


def parse_time(text: str) -> float:
    """POSIX seconds of an ISO 8601 time with a UTC offset (``2026-12-01T18:00+01:00``)."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--until: expected an ISO 8601 time such as "
                         f"2026-12-01T18:00+01:00, got {text!r}") from None
    if moment.tzinfo is None:
        raise ValueError(f"--until: {text!r} has no UTC offset; add one (+01:00 or Z)")
    return moment.timestamp()


def _iso(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _local_who() -> str:
    """Who runs a local admin command, for the audit log."""
    try:
        return f"local:{getpass.getuser()}"
    except (OSError, KeyError):  # no login name in this environment: use the numeric id
        return f"local:uid-{os.getuid()}"


def _client(args: argparse.Namespace) -> ApiClient:
    if args.token_file:
        token = Path(args.token_file).read_text(encoding="utf-8").strip()
    else:
        token = os.environ.get("TSC_CENTRAL_TOKEN", "")
    return ApiClient(args.url, token)


def _api_failure(exc: Exception) -> int:
    if isinstance(exc, ApiError):
        print(f"tsc-central: refused: {exc}", file=sys.stderr)
        body = exc.body if isinstance(exc.body, dict) else {}
        for v in body.get("violations", []):
            where = f"phase {v['phase']}: " if v.get("phase") is not None else ""
            print(f"  [{v['rule']}] {where}{v['message']}", file=sys.stderr)
        if "audit_seq" in body:
            print(f"  recorded as audit entry {body['audit_seq']}", file=sys.stderr)
        return 1
    print(f"tsc-central: {exc}", file=sys.stderr)
    return 2


# --- serve -----------------------------------------------------------------------------------
def _serve(args: argparse.Namespace) -> int:
    import uvicorn  # the server only where it runs

    from optimizer.api import create_app
    from optimizer.arbitration import Arbiter, TimeOfDaySchedule
    from optimizer.audit import AuditLog
    from optimizer.auth import UserStore
    from optimizer.operations import OperationsService
    from optimizer.override_store import OverrideStore
    from optimizer.state import MemoryState
    from edge_agent.agent_config import load_agent_config

    site = load_site(args.site)
    schedules = {}
    for path in args.edge:
        agent = load_agent_config(path)
        if agent.file.intersection not in {x.id for x in site.intersections}:
            raise ConfigError(f"intersection {agent.file.intersection!r} is not in site file "
                              f"{args.site}", file=str(path), key="intersection")
        schedules[agent.file.intersection] = TimeOfDaySchedule(agent.time_of_day,
                                                               args.timezone)
    # Overrides outlive the server in the same file (optimizer.override_store).
    overrides = OverrideStore(args.db)
    arbiter = Arbiter(site.intersections, time_of_day=schedules,
                      max_override_s=args.max_override_h * 3600.0,
                      last_plan_ids=overrides.last_plan_ids(),
                      last_override_id=overrides.last_override_id())
    users = UserStore(args.db)
    service = OperationsService(site, audit=AuditLog(args.db), state=MemoryState(),
                                arbiter=arbiter, store=overrides)
    restored = service.restore_overrides()
    for o in restored.restored:
        print(f"tsc-central: override {o.override_id} on {o.intersection_id} restored until "
              f"{_iso(o.expiry)}", file=sys.stderr)
    for o, why in restored.dropped:
        print(f"tsc-central: override {o.override_id} on {o.intersection_id} NOT restored: "
              f"{why}", file=sys.stderr)
    if not users.users():
        print(f"tsc-central: no API users yet; add one with: tsc-central users add NAME "
              f"--role admin --db {args.db}", file=sys.stderr)
    print(f"tsc-central: operations API for site {site.site} on http://127.0.0.1:{args.port} "
          f"(OpenAPI at /openapi.json)", file=sys.stderr)
    uvicorn.run(create_app(service, users, tick_every_s=1.0), host="127.0.0.1",
                port=args.port, log_level="warning")
    return 0


# --- users -----------------------------------------------------------------------------------
def _users(args: argparse.Namespace) -> int:
    from optimizer.audit import AuditLog
    from optimizer.auth import AuthError, Role, UserStore

    store = UserStore(args.db)
    if args.users_command == "list":
        for user in store.users():
            print(f"{user.name:<24} {user.role.value:<9} added {_iso(user.created)}")
        return 0
    details: dict[str, Any] = {"user": args.name}
    try:
        if args.users_command == "add":
            details["role"] = Role.parse(args.role).value
            token = store.add(args.name, args.role, time.time())
        elif args.users_command == "rotate":
            token = store.rotate(args.name)
        else:
            store.remove(args.name)
            token = ""
    except AuthError as exc:
        print(f"tsc-central: {exc}", file=sys.stderr)
        return 1
    AuditLog(args.db).append(t=time.time(), who=_local_who(),
                             action=f"user.{args.users_command}", intersection=None,
                             details=details, reason=args.reason, outcome="accepted")
    if token:
        print(f"token for {args.name} (shown once; keep it secret):", file=sys.stderr)
        print(token)
    else:
        print(f"removed {args.name}", file=sys.stderr)
    return 0


# --- override --------------------------------------------------------------------------------
def _override(args: argparse.Namespace) -> int:
    try:
        client = _client(args)
        if args.override_command == "create":
            return _override_create(client, args)
        if args.override_command == "cancel":
            answer = client.post(f"/overrides/{args.override_id}/cancel",
                                 {"reason": args.reason})
            plan = answer["plan"]
            print(f"override {args.override_id} cancelled; {answer['mode']} in force"
                  + (f" (plan {plan['plan_id']})" if plan else "")
                  + f", audit entry {answer['audit_seq']}")
            return 0
        overrides = client.get("/overrides")["overrides"]
        if args.json:
            print(json.dumps(overrides, indent=2))
            return 0
        for o in overrides:
            print(f"{o['override_id']:>5} {o['intersection_id']:<16} {o['user']:<12} until "
                  f"{_iso(o['expiry'])}  {o['pattern']}: {o['reason']}")
        return 0
    except (ApiError, DeviceError) as exc:
        return _api_failure(exc)


def _override_create(client: ApiClient, args: argparse.Namespace) -> int:
    if args.extend_phase is not None:
        if args.seconds is None:
            raise ValueError("--extend-phase needs --seconds")
        pattern: dict[str, Any] = {"kind": "extend-phase", "phase": args.extend_phase,
                                   "seconds": args.seconds}
    elif args.fixed_cycle is not None:
        pattern = {"kind": "fixed-cycle", "cycle": args.fixed_cycle, "offset": args.offset}
    else:
        import msgspec
        pattern = {"kind": "plan", "plan": msgspec.to_builtins(load_plan(args.plan))}
    body: dict[str, Any] = {"intersection_id": args.intersection, "pattern": pattern,
                            "reason": args.reason}
    if args.duration is not None:
        body["duration_s"] = parse_duration(args.duration)
    else:
        body["expiry"] = parse_time(args.until)
    answer = client.post("/overrides", body)
    o = answer["override"]
    print(f"override {o['override_id']} on {o['intersection_id']} accepted: {o['pattern']} "
          f"until {_iso(o['expiry'])}; plan {answer['plan']['plan_id']} in force, "
          f"audit entry {answer['audit_seq']}")
    return 0


# --- audit -----------------------------------------------------------------------------------
def _audit(args: argparse.Namespace) -> int:
    anchor = None
    if getattr(args, "anchor", None):
        seq, _, digest = args.anchor.partition(":")
        if not seq.isdigit() or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"--anchor: expected SEQ:SHA256HEX, got {args.anchor!r}")
        anchor = (int(seq), digest)
    try:
        if args.db:
            result = _audit_local(args, anchor)
        else:
            result = _audit_remote(args, anchor)
    except (ApiError, DeviceError) as exc:
        return _api_failure(exc)
    if args.audit_command == "show":
        if args.json:
            print(json.dumps(result, indent=2, ensure_ascii=False))
            return 0
        for e in result:
            where = e["intersection"] or "-"
            print(f"{e['seq']:>6} {_iso(e['t'])} {e['who']:<14} {e['action']:<16} "
                  f"{where:<14} {e['outcome']:<9} {e['reason']}")
        return 0
    if result["ok"]:
        print(f"audit chain OK: {result['checked']} entries, head {result['head_seq']}:"
              f"{result['head_hash']}")
        return 0
    print(f"audit chain BROKEN at entry {result['first_bad_seq']}: {result['problem']} "
          f"({result['checked']} entries before it check out)")
    return 1


def _audit_local(args: argparse.Namespace, anchor: tuple[int, str] | None) -> Any:
    from optimizer.audit import AuditLog

    if not Path(args.db).is_file():
        raise ConfigError("no such database file", file=args.db)
    log = AuditLog(args.db)
    if args.audit_command == "verify":
        return log.verify(anchor).to_dict()
    # Without --after: the latest --limit entries, shown oldest first like the rest.
    entries = [e.to_dict() for e in log.entries(after=args.after, limit=args.limit,
                                                 intersection=args.intersection,
                                                 newest_first=not args.after)]
    return entries if args.after else entries[::-1]


def _audit_remote(args: argparse.Namespace, anchor: tuple[int, str] | None) -> Any:
    client = _client(args)
    if args.audit_command == "verify":
        return client.get("/audit/verify", {"anchor_seq": anchor[0] if anchor else None,
                                            "anchor_hash": anchor[1] if anchor else None})
    entries = client.get("/audit", {"after": args.after, "limit": args.limit,
                                    "intersection": args.intersection,
                                    "newest_first": not args.after})["entries"]
    return entries if args.after else entries[::-1]


# --- parsers ---------------------------------------------------------------------------------
def _connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("TSC_CENTRAL_URL", DEFAULT_URL),
                        help=f"operations API (default: $TSC_CENTRAL_URL or {DEFAULT_URL})")
    parser.add_argument("--token-file", metavar="FILE",
                        help="file holding your API token (default: $TSC_CENTRAL_TOKEN)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``serve``, ``users``, ``override`` and ``audit`` on ``tsc-central``."""
    serve = sub.add_parser("serve", help="run the operations API on 127.0.0.1")
    serve.add_argument("--site", required=True, metavar="FILE", help="site file")
    serve.add_argument("--db", required=True, metavar="FILE", help="centre database (SQLite)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--edge", action="append", default=[], metavar="AGENT.toml",
                       help="an edge agent file: its time-of-day plans become the centre's "
                            "(repeatable)")
    serve.add_argument("--timezone", default="UTC", help="local time zone of the "
                                                         "time-of-day plans (default UTC)")
    serve.add_argument("--max-override-h", type=float, default=24.0,
                       help="longest override allowed, hours (default 24)")
    serve.set_defaults(func=_serve)

    users = sub.add_parser("users", help="API users and their tokens")
    usub = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    for name, text in (("add", "add a user and print their token once"),
                       ("rotate", "give a user a new token"), ("remove", "remove a user"),
                       ("list", "list users")):
        p = usub.add_parser(name, help=text)
        if name != "list":
            p.add_argument("name", metavar="NAME")
            p.add_argument("--reason", default="", help="recorded in the audit log")
        if name == "add":
            p.add_argument("--role", required=True, choices=["viewer", "operator", "admin"])
        p.add_argument("--db", required=True, metavar="FILE", help="centre database (SQLite)")
        p.set_defaults(func=_users)

    override = sub.add_parser("override", help="create, cancel or list overrides (via the API)")
    osub = override.add_subparsers(dest="override_command", required=True, metavar="ACTION")
    create = osub.add_parser("create", help="override an intersection's plan until a time")
    create.add_argument("intersection", metavar="INTERSECTION")
    what = create.add_mutually_exclusive_group(required=True)
    what.add_argument("--extend-phase", type=int, metavar="N", help="give phase N more green")
    what.add_argument("--fixed-cycle", type=float, metavar="C", help="re-time to cycle C s")
    what.add_argument("--plan", metavar="FILE", help="a complete plan file (.toml or .json)")
    create.add_argument("--seconds", type=float, help="extra green for --extend-phase")
    create.add_argument("--offset", type=float, help="offset for --fixed-cycle")
    until = create.add_mutually_exclusive_group(required=True)
    until.add_argument("--for", dest="duration", metavar="DURATION", help="e.g. 30m, 2h")
    until.add_argument("--until", metavar="TIME", help="ISO 8601 with offset")
    create.add_argument("--reason", required=True)
    cancel = osub.add_parser("cancel", help="cancel an override (hands back at once)")
    cancel.add_argument("override_id", type=int, metavar="ID")
    cancel.add_argument("--reason", required=True)
    listing = osub.add_parser("list", help="active overrides")
    listing.add_argument("--json", action="store_true")
    for p in (create, cancel, listing):
        _connection(p)
        p.set_defaults(func=_override)

    audit = sub.add_parser("audit", help="read or verify the audit log")
    asub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    show = asub.add_parser("show", help="entries (the latest --limit, or those after --after)")
    show.add_argument("--limit", type=int, default=50)
    show.add_argument("--after", type=int, default=0, metavar="SEQ")
    show.add_argument("--intersection")
    show.add_argument("--json", action="store_true")
    verify = asub.add_parser("verify", help="walk the hash chain (admin over the API)")
    verify.add_argument("--anchor", metavar="SEQ:HASH", help="a head recorded earlier")
    for p in (show, verify):
        _connection(p)
        p.add_argument("--db", metavar="FILE", help="read this database file instead of the API")
        p.set_defaults(func=_audit)
