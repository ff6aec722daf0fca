"""Start and stop the whole system: the embedded NATS (unless one is given) and the four services.

``haven up`` and the end-to-end tests use this same code, so what the tests start is what users run.
Each service is a separate process (``python -m services.<name>``); the system waits until each one
reports ready and stops them in reverse order, each given time to finish its in-flight work.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from haven.kit.nats_server import EmbeddedNats, NatsUser, free_port, start_embedded_nats
from haven.kit.topology import (
    PARTNER_STREAM,
    partner_consumer,
    partner_subjects,
    routed_subject,
)
from haven.organisations import Organisation, Role, load_organisations

SERVICE_NAMES = ("eligibility", "referral_router", "notifier", "gateway")


@dataclass
class SystemConfig:
    """Where everything listens and keeps its data."""

    data_dir: Path = Path(".haven")
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    eligibility_grpc_port: int = 50051
    router_grpc_port: int = 50052
    notifier_grpc_port: int = 50053
    nats_url: str | None = None
    nats_port: int = 4222
    extra_env: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None  # None: services log to this process's stderr

    @classmethod
    def with_free_ports(cls, data_dir: Path, **overrides: object) -> SystemConfig:
        """Return a config whose every port is free now (for tests and benchmarks)."""
        ports = {
            "gateway_port": free_port(),
            "eligibility_grpc_port": free_port(),
            "router_grpc_port": free_port(),
            "notifier_grpc_port": free_port(),
            "nats_port": free_port(),
        }
        return cls(data_dir=data_dir, **{**ports, **overrides})  # type: ignore[arg-type]

    @property
    def gateway_url(self) -> str:
        """Return the base URL of the FHIR API."""
        return f"http://{self.gateway_host}:{self.gateway_port}/fhir"

    def listen_port(self, service: str) -> int:
        """Return the port a service listens on (HTTP for the gateway, gRPC for the others)."""
        return {
            "gateway": self.gateway_port,
            "eligibility": self.eligibility_grpc_port,
            "referral_router": self.router_grpc_port,
            "notifier": self.notifier_grpc_port,
        }[service]


NATS_CREDENTIALS_FILE = "nats-credentials.json"
# The notifier's signing secret per LA platform on NATS: "<organisation id>=<secret>,...".
NATS_SIGNING_SECRETS_ENV = "HAVEN_NATS_SIGNING_SECRETS"


def _platforms() -> list[Organisation]:
    return sorted(
        (o for o in load_organisations().values() if Role.LA_PLATFORM in o.roles and o.gss_codes),
        key=lambda o: o.id,
    )


def platform_user(organisation: Organisation, password: str) -> NatsUser:
    """Return an LA platform's NATS user: its own routing events and partner notifications only.

    With ``nats_gss`` it may also read the backlog of its durable consumer (fetch, info, ack) through
    reply subjects under its own inbox prefix; nothing of another LA's, and it publishes no event.
    """
    name = f"la-{organisation.id}"
    subscribe = [routed_subject(c) for c in sorted(organisation.gss_codes)]
    publish: list[str] = []
    inbox = ""
    if organisation.nats_gss:
        consumer = partner_consumer(organisation.id)
        inbox = f"_INBOX.{name}"
        subscribe += [partner_subjects(organisation.nats_gss), f"{inbox}.>"]
        publish = [
            f"$JS.API.CONSUMER.MSG.NEXT.{PARTNER_STREAM}.{consumer}",
            f"$JS.API.CONSUMER.INFO.{PARTNER_STREAM}.{consumer}",
            f"$JS.ACK.{PARTNER_STREAM}.{consumer}.>",
        ]
    return NatsUser(name, password, tuple(subscribe), tuple(publish), inbox)


def _credentials(data_dir: Path) -> dict[str, dict[str, str]]:
    path = data_dir / NATS_CREDENTIALS_FILE
    stored = json.loads(path.read_text()) if path.exists() else {}
    return {
        "passwords": dict(stored.get("passwords", {})),
        "signing_secrets": dict(stored.get("signing_secrets", {})),
    }


def nats_users(data_dir: Path) -> list[NatsUser]:
    """Return the embedded server's users: the services (full access), then one per LA platform.

    Each LA platform may subscribe only to the routing events of its own area(s)
    (``haven.routing.v1.routed.<GSS>``) and, with ``nats_gss``, to its notifications
    (``haven.partner.v1.<GSS>.notification.>``, see ``platform_user``). Passwords and the notifier's
    signing secrets are made once and kept in ``<data dir>/nats-credentials.json`` (mode 0600), which
    is where an LA's credentials are handed out from; the subjects follow the organisation registry at
    every start.
    """
    path = data_dir / NATS_CREDENTIALS_FILE
    stored = _credentials(data_dir)
    passwords, secrets_by_org = stored["passwords"], stored["signing_secrets"]
    platforms = _platforms()
    names = ["haven-services", *(f"la-{o.id}" for o in platforms)]
    for name in names:
        passwords.setdefault(name, secrets.token_urlsafe(24))
    for o in platforms:
        if o.nats_gss:
            secrets_by_org.setdefault(o.id, secrets.token_urlsafe(32))
    users = [NatsUser(names[0], passwords[names[0]])]
    users += [platform_user(o, passwords[f"la-{o.id}"]) for o in platforms]
    listing: dict[str, dict[str, object]] = {}
    for u in users:
        listing[u.user] = {"password": u.password, "subscribe": list(u.subscribe or [">"])}
        if u.publish:
            listing[u.user]["publish"] = list(u.publish)
        if u.inbox_prefix:
            listing[u.user]["inbox_prefix"] = u.inbox_prefix
    for o in platforms:
        if o.nats_gss:
            listing[f"la-{o.id}"].update(
                signing_secret=secrets_by_org[o.id],
                consumer=partner_consumer(o.id),
                stream=PARTNER_STREAM,
            )
    path.write_text(
        json.dumps({"passwords": passwords, "signing_secrets": secrets_by_org, "users": listing}, indent=2)
    )
    path.chmod(0o600)
    return users


def nats_signing_secrets(data_dir: Path) -> dict[str, str]:
    """Return the signing secret of each LA platform on NATS (made by ``nats_users``), by organisation."""
    return _credentials(data_dir)["signing_secrets"]


def grpc_serving(target: str, timeout: float = 1.0) -> bool:
    """Whether the gRPC health service at ``target`` answers SERVING."""
    with grpc.insecure_channel(target) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


class HavenSystem:
    """The running system. Use ``start()`` and ``stop()``, or as a context manager."""

    def __init__(self, config: SystemConfig) -> None:
        self.config = config
        self.nats: EmbeddedNats | None = None
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._log_files: list[IO[bytes]] = []

    @property
    def nats_url(self) -> str:
        """Return the NATS URL every service uses."""
        if self.config.nats_url:
            return self.config.nats_url
        if self.nats is None:
            raise RuntimeError("NATS is not started")
        return self.nats.url

    def service_env(self) -> dict[str, str]:
        """Return the environment every service process gets."""
        c = self.config
        env = dict(os.environ)
        env.update(
            {
                "HAVEN_NATS_URL": self.nats_url,
                "HAVEN_DATA_DIR": str(c.data_dir.resolve()),
                "HAVEN_GATEWAY_HOST": c.gateway_host,
                "HAVEN_GATEWAY_PORT": str(c.gateway_port),
                "HAVEN_ELIGIBILITY_GRPC_PORT": str(c.eligibility_grpc_port),
                "HAVEN_ELIGIBILITY_GRPC_TARGET": f"127.0.0.1:{c.eligibility_grpc_port}",
                "HAVEN_ROUTER_GRPC_PORT": str(c.router_grpc_port),
                "HAVEN_NOTIFIER_GRPC_PORT": str(c.notifier_grpc_port),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(c.extra_env)
        return env

    def start(self, timeout: float = 60.0) -> None:
        """Start NATS (unless given) and every service, and wait until all are ready."""
        c = self.config
        c.data_dir.mkdir(parents=True, exist_ok=True)
        if not c.nats_url:
            log = c.log_dir / "nats-server.log" if c.log_dir else None
            if c.log_dir:
                c.log_dir.mkdir(parents=True, exist_ok=True)
            self.nats = start_embedded_nats(
                c.data_dir / "nats", port=c.nats_port, log_file=log, users=nats_users(c.data_dir)
            )
        for name in SERVICE_NAMES:
            self.start_service(name)
        for name in SERVICE_NAMES:
            self.wait_ready(name, timeout)

    def start_service(self, name: str) -> None:
        """Start one service process."""
        output: int | IO[bytes] | None = None
        if self.config.log_dir is not None:
            self.config.log_dir.mkdir(parents=True, exist_ok=True)
            handle = open(self.config.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
            self._log_files.append(handle)
            output = handle
        env = self.service_env()
        signing = nats_signing_secrets(self.config.data_dir) if self.nats is not None else {}
        if name == "notifier" and signing and NATS_SIGNING_SECRETS_ENV not in self.config.extra_env:
            # Only the notifier signs partner notifications: no other service gets the secrets.
            env[NATS_SIGNING_SECRETS_ENV] = ",".join(f"{org}={secret}" for org, secret in signing.items())
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"], env=env, stdout=output, stderr=output
        )

    def wait_ready(self, name: str, timeout: float = 60.0) -> None:
        """Block until a service answers ready (gateway /readyz, or its gRPC port), or raise."""
        deadline = time.monotonic() + timeout
        process = self.processes[name]
        port = self.config.listen_port(name)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"service {name} exited with code {process.returncode} while starting")
            if name == "gateway":
                try:
                    if (
                        httpx.get(f"http://{self.config.gateway_host}:{port}/readyz", timeout=1).status_code
                        == 200
                    ):
                        return
                except httpx.HTTPError:
                    pass
            elif grpc_serving(f"127.0.0.1:{port}"):
                return
            time.sleep(0.1)
        raise RuntimeError(f"service {name} not ready after {timeout:.0f}s")

    def stop_service(self, name: str, timeout: float = 20.0) -> int:
        """Stop one service with SIGTERM (killing it after ``timeout``) and return its exit code."""
        process = self.processes.pop(name)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return int(process.returncode)

    def stop(self) -> None:
        """Stop every service, gateway first so intake stops before the work behind it, then NATS."""
        for name in reversed(SERVICE_NAMES):
            if name in self.processes:
                self.stop_service(name)
        if self.nats is not None:
            self.nats.stop()
            self.nats = None
        for handle in self._log_files:
            handle.close()
        self._log_files.clear()

    def __enter__(self) -> HavenSystem:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
