"""``tsc-edge``: the edge agent's command line.

Exit status: 0 when everything checked is clean, 1 when a plan or configuration breaks a rule,
2 when the input cannot be read at all (a missing file, bad TOML, an unknown key).
``tsc-edge run`` exits 0 after a clean shutdown (SIGTERM, SIGINT), 1 when a link cannot start,
2 for a configuration it refuses.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

from edge_agent.agent_config import load_agent_config
from edge_agent.config import (
    SiteConfig,
    load_intersection,
    load_plan,
    load_site,
    load_toml,
)
from edge_agent.errors import ConfigError
from edge_agent.guard import check_plan
from edge_agent.registers import RegisterMap

EXIT_CLEAN, EXIT_VIOLATIONS, EXIT_BAD_INPUT = 0, 1, 2


def _check_plan(args: argparse.Namespace) -> int:
    intersection = load_intersection(args.intersection, args.id)
    plan = load_plan(args.plan)
    violations = check_plan(plan, intersection)
    if args.json:
        print(json.dumps({
            "plan_id": plan.plan_id,
            "intersection_id": intersection.id,
            "accepted": not violations,
            "violations": [{"rule": v.rule.value, "phase": v.phase, "value": v.value,
                            "limit": v.limit, "message": v.message} for v in violations],
        }))
    elif violations:
        print(f"plan {plan.plan_id} for {intersection.id}: REJECTED, "
              f"{len(violations)} violation{'s' if len(violations) != 1 else ''}")
        for violation in violations:
            print(f"  {violation}")
    else:
        print(f"plan {plan.plan_id} for {intersection.id}: OK (cycle {plan.cycle:g} s, "
              f"{len(plan.timings)} phases)")
    return EXIT_VIOLATIONS if violations else EXIT_CLEAN


def _check_config(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        try:
            print(f"{path}: OK, {_describe_config(path)}")
        except ConfigError as exc:  # report it and go on: one run shows every broken file
            print(f"tsc-edge: {exc}", file=sys.stderr)
            failed += 1
    return EXIT_BAD_INPUT if failed else EXIT_CLEAN


def _describe_config(path: str) -> str:
    """Load one site or register-map file as the agent would; a one-line summary of it."""
    try:
        keys = set(tomllib.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        keys = set()  # let the site loader report the read or syntax error in full
    if "site_config" in keys:
        agent = load_agent_config(path)
        return (f"edge agent for {agent.file.site}/{agent.intersection.id}: "
                f"{len(agent.time_of_day)} time-of-day plans, "
                f"{len(agent.trusted_keys)} trusted key(s)")
    if "device" in keys:
        registers = load_toml(path, RegisterMap)
        writable = sum(1 for r in registers.registers if r.access.value == "write")
        return (f"register map of {registers.device.id}: {len(registers.registers)} registers, "
                f"{writable} writable")
    site: SiteConfig = load_site(path)
    corridors = ", ".join(c.id for c in site.corridors)
    return (f"site {site.site}: {', '.join(i.id for i in site.intersections)}"
            + (f"; corridors {corridors}" if corridors else ""))


def _run(args: argparse.Namespace) -> int:
    config = load_agent_config(args.config)  # everything checked before anything starts
    try:  # the adapters need the edge extra (pymodbus, paho-mqtt); checking plans does not
        from edge_agent.runtime_agent import run_agent
    except ImportError as exc:
        print(f"tsc-edge: run needs the edge extra (pip install 'tsc-edge[edge]'): {exc}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    return run_agent(config, log_level=args.log_level)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="tsc-edge",
        description="Edge agent of the adaptive traffic-signal control service: runs the "
                    "agent, checks timing plans and configuration files against the safety "
                    "guard.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser(
        "check-plan", help="check a timing plan against an intersection's safety rules",
        description="Print every safety rule a timing plan breaks (conflicting greens, yellow "
                    "and red clearance, minimum greens, pedestrian timings, cycle, barriers, "
                    "offset). Exits 1 if there is any, 0 if the plan is clean.")
    check.add_argument("plan", metavar="PLAN", help="plan file (.toml, or .json wire form)")
    check.add_argument("--intersection", required=True, metavar="CONFIG",
                       help="site file (TOML) describing the intersection")
    check.add_argument("--id", metavar="ID",
                       help="which intersection of the site file (needed if it holds several)")
    check.add_argument("--json", action="store_true", help="print one JSON object instead")
    check.set_defaults(func=_check_plan)

    config = sub.add_parser(
        "check-config", help="validate site and register-map files",
        description="Load configuration files as the agent would at start-up and report the "
                    "first problem of each with its file, key and line.")
    config.add_argument("files", nargs="+", metavar="FILE")
    config.set_defaults(func=_check_config)

    run = sub.add_parser(
        "run", help="run the edge agent of one intersection",
        description="Poll the controller over Modbus, publish measurements and status over "
                    "MQTT, take signed plans from the centre and write them to the controller "
                    "through the safety guard, fall back to the local time-of-day plan when "
                    "the centre is silent. Runs until SIGTERM or SIGINT.")
    run.add_argument("--config", required=True, metavar="FILE",
                     help="the agent file (TOML), e.g. configs/edge-elm-1st.toml")
    run.add_argument("--log-level", default="INFO",
                     choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="default INFO")
    run.set_defaults(func=_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tsc-edge``."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"tsc-edge: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
