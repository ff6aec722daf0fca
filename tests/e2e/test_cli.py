"""``haven up`` as a user runs it: it prints what runs where, stops cleanly on SIGTERM, and a second
start finds the data of the first. With ``HAVEN_NATS_URL`` it uses that server instead of its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from haven.kit.nats_server import EmbeddedNats, free_port
from tests.support.client import auth_headers, example, referral_id_of, token

pytestmark = pytest.mark.e2e


def _start(
    data_dir: Path, port: int, nats_port: int, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    command = [
        sys.executable,
        "-m",
        "haven.cli",
        "--data-dir",
        str(data_dir),
        "up",
        "--port",
        str(port),
        "--nats-port",
        str(nats_port),
    ]
    ports = {
        "HAVEN_ELIGIBILITY_GRPC_PORT": str(free_port()),
        "HAVEN_ROUTER_GRPC_PORT": str(free_port()),
        "HAVEN_NOTIFIER_GRPC_PORT": str(free_port()),
    }
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **ports, **(env or {})},
    )


def _wait_until_running(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    lines = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Press Ctrl-C"):
            return "".join(lines)
    raise AssertionError("haven up did not report running:\n" + "".join(lines))


def _stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=60)


def test_up_prints_stops_cleanly_and_keeps_data(tmp_path: Path) -> None:
    port, nats_port = free_port(), free_port()
    first = _start(tmp_path, port, nats_port)
    try:
        banner = _wait_until_running(first)
        for name in ("NATS JetStream", "gateway", "eligibility", "referral_router", "notifier"):
            assert name in banner
        assert f"http://127.0.0.1:{port}/fhir" in banner
        assert "@127.0.0.1" not in banner, "the services' NATS credentials must not be printed"
        police = auth_headers(token(tmp_path, "demo-police", "referrer"))
        answer = httpx.post(
            f"http://127.0.0.1:{port}/fhir", headers=police, json=example("police-night-referral.json")
        )
        assert answer.status_code == 201
        referral_id = referral_id_of(answer)
    finally:
        assert _stop(first) == 0
    assert first.stdout is not None and "stopped" in first.stdout.read()

    second = _start(tmp_path, port, nats_port)
    try:
        _wait_until_running(second)
        again = httpx.get(f"http://127.0.0.1:{port}/fhir/ServiceRequest/{referral_id}", headers=police)
        assert again.status_code == 200
        assert again.json()["id"] == referral_id
    finally:
        assert _stop(second) == 0


def test_up_uses_an_existing_nats(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    process = _start(tmp_path, free_port(), free_port(), env={"HAVEN_NATS_URL": nats_server.url})
    try:
        banner = _wait_until_running(process)
        assert nats_server.url in banner
        assert "embedded" not in banner
        assert not (tmp_path / "nats").exists()
    finally:
        assert _stop(process) == 0
