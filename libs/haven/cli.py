"""The ``haven`` command: start the whole system, or issue a development token.

``haven up`` is what ``make up`` runs. ``haven token --org demo-police --role referrer`` prints a
bearer token signed with the local development key under the data folder, which the gateway checks.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from haven.organisations import load_organisations
from haven.system import SERVICE_NAMES, HavenSystem, SystemConfig


def _up(args: argparse.Namespace) -> int:
    config = SystemConfig(
        data_dir=Path(args.data_dir),
        gateway_host=args.host,
        gateway_port=args.port,
        nats_url=os.environ.get("HAVEN_NATS_URL") or None,
        nats_port=args.nats_port,
    )
    system = HavenSystem(config)
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    print(f"starting Haven (data in {config.data_dir.resolve()}) ...", flush=True)
    try:
        system.start()
        _print_running(system)
        while not stopping:
            _restart_crashed(system)
            time.sleep(0.5)
    finally:
        print("stopping Haven ...", flush=True)
        system.stop()
        print("stopped", flush=True)
    return 0


def _print_running(system: HavenSystem) -> None:
    c = system.config
    nats = _without_credentials(system.nats_url)
    nats += "" if c.nats_url else f" (embedded, JetStream data in {c.data_dir / 'nats'})"
    rows = [
        ("NATS JetStream", nats),
        ("gateway", f"{c.gateway_url}  (health: http://{c.gateway_host}:{c.gateway_port}/readyz)"),
        ("eligibility", f"gRPC 127.0.0.1:{c.eligibility_grpc_port}  (EligibilityService, health)"),
        ("referral_router", f"gRPC 127.0.0.1:{c.router_grpc_port}  (health)"),
        ("notifier", f"gRPC 127.0.0.1:{c.notifier_grpc_port}  (health)"),
    ]
    print("Haven is running:")
    for name, where in rows:
        pid = (
            system.processes[name].pid
            if name in system.processes
            else (system.nats.process.pid if system.nats else "-")
        )
        print(f"  {name:<16} pid {pid!s:<8} {where}")
    print("Get a token: haven token --org demo-police --role referrer")
    print("Press Ctrl-C to stop.", flush=True)


def _without_credentials(url: str) -> str:
    """Return a NATS URL safe to print: the user and password of the services are not shown."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _restart_crashed(system: HavenSystem) -> None:
    for name in SERVICE_NAMES:
        process = system.processes.get(name)
        if process is not None and process.poll() is not None:
            print(f"{name} exited with code {process.returncode}; restarting it", file=sys.stderr, flush=True)
            system.processes.pop(name)
            system.start_service(name)


def _token(args: argparse.Namespace) -> int:
    from services.gateway.security.keys import load_or_create_dev_key
    from services.gateway.security.tokens import TokenRequestError, issue_token

    secret = os.environ.get("HAVEN_JWT_SECRET", "").encode() or load_or_create_dev_key(Path(args.data_dir))
    try:
        token = issue_token(
            secret, args.org, args.role, now=datetime.now(UTC), ttl=timedelta(hours=args.hours)
        )
    except TokenRequestError as error:
        print(f"haven token: {error}", file=sys.stderr)
        return 2
    print(token)
    return 0


def _orgs(_: argparse.Namespace) -> int:
    for org in load_organisations().values():
        roles = ", ".join(sorted(r.value for r in org.roles))
        print(f"{org.id:<28} {org.kind:<16} roles: {roles}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(prog="haven", description=__doc__)
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("HAVEN_DATA_DIR", ".haven"),
        help="local state: NATS data, the dev signing key (default .haven)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start NATS and the four services; Ctrl-C stops them")
    up.add_argument("--host", default="127.0.0.1", help="gateway listen address")
    up.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("HAVEN_GATEWAY_PORT", "8080")),
        help="gateway port (default 8080)",
    )
    up.add_argument("--nats-port", type=int, default=4222, help="port of the embedded NATS (default 4222)")
    up.set_defaults(func=_up)
    token = sub.add_parser("token", help="print a development bearer token")
    token.add_argument("--org", required=True, help="organisation id, e.g. demo-police")
    token.add_argument("--role", required=True, help="referrer, la-platform, provider, operator or admin")
    token.add_argument("--hours", type=float, default=12, help="lifetime in hours (default 12)")
    token.set_defaults(func=_token)
    orgs = sub.add_parser("orgs", help="list the organisations and their roles")
    orgs.set_defaults(func=_orgs)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
