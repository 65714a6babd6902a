"""``tsc-central``: the central side's command line.

Plan-signing keys: ``keygen`` makes a key pair (the public half goes into every edge's
configuration), ``sign-plan`` checks a plan with the guard and signs it for a site. Operations
(:mod:`optimizer.ops_cli`): ``serve`` runs the operations API, ``users`` manages its users,
``override`` and ``audit`` are the terminal side of it. ``run`` runs the whole central service
(:mod:`optimizer.central_service`): ingest, the re-planning loop and the operations API.
``demo`` (:mod:`optimizer.demo`) runs everything on one machine on a generated SUMO corridor.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_agent.config import load_intersection, load_plan
from edge_agent.errors import ConfigError, TscError
from edge_agent.guard import check_plan
from edge_agent.messages import encode
from edge_agent.signatures import generate_key, load_private_key, sign_plan
from optimizer.demo import add_demo_command
from optimizer.ops_cli import add_commands


def _keygen(args: argparse.Namespace) -> int:
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    private, public = generate_key()
    secret = folder / f"{args.key_id}.key"
    if secret.exists() and not args.force:
        print(f"tsc-central: {secret} exists; --force to replace it", file=sys.stderr)
        return 2
    secret.write_bytes(private)
    secret.chmod(0o600)  # the signing key never leaves the centre
    (folder / f"{args.key_id}.pub").write_bytes(public)
    print(f"{secret} (private, keep at the centre)\n{folder / (args.key_id + '.pub')} "
          f"(public, give to every edge)")
    return 0


def _sign(args: argparse.Namespace) -> int:
    plan = load_plan(args.plan)
    intersection = load_intersection(args.intersection, plan.intersection_id)
    violations = check_plan(plan, intersection)
    if violations:  # never sign what the guard refuses: the edge would refuse it anyway
        print(f"tsc-central: plan {plan.plan_id} fails the guard, not signed:", file=sys.stderr)
        for v in violations:
            print(f"  {v}", file=sys.stderr)
        return 1
    key = load_private_key(Path(args.key).read_bytes())
    message = sign_plan(args.site, plan, key, args.key_id or Path(args.key).stem)
    sys.stdout.buffer.write(encode(message) + b"\n")
    return 0


def _run(args: argparse.Namespace) -> int:
    import logging

    from optimizer.central_config import load_central_config
    from optimizer.central_service import CentralService

    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return CentralService(load_central_config(args.config)).serve()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(prog="tsc-central",
                                     description="Central service of the traffic-signal "
                                                 "control system: plan signing keys and "
                                                 "operations (overrides, audit).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    keygen = sub.add_parser("keygen", help="make an Ed25519 key pair for signing plans")
    keygen.add_argument("--out", required=True, metavar="DIR")
    keygen.add_argument("--key-id", default="central", help="key name (default: central)")
    keygen.add_argument("--force", action="store_true", help="replace an existing key")
    keygen.set_defaults(func=_keygen)
    sign = sub.add_parser("sign-plan", help="check a plan with the guard and sign it",
                          description="Print the signed plan message (JSON) for the plan's "
                                      "topic; refuses (exit 1) a plan the guard rejects.")
    sign.add_argument("plan", metavar="PLAN", help="plan file (.toml or .json)")
    sign.add_argument("--intersection", required=True, metavar="CONFIG", help="site file")
    sign.add_argument("--site", required=True, help="site id the plan is for")
    sign.add_argument("--key", required=True, metavar="FILE", help="private key (PEM)")
    sign.add_argument("--key-id", help="key name the edges know it by (default: file stem)")
    sign.set_defaults(func=_sign)
    run = sub.add_parser("run", help="run the central service: ingest, re-planning loop, API",
                         description="Ingest the edges' measurements, re-plan every region on "
                                     "its schedule, publish signed plans and heartbeats, "
                                     "follow acks, and serve the operations API.")
    run.add_argument("--config", required=True, metavar="FILE",
                     help="central config (see configs/central.toml)")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    run.set_defaults(func=_run)
    add_commands(sub)
    add_demo_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tsc-central``."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError, OSError, TscError) as exc:
        print(f"tsc-central: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
