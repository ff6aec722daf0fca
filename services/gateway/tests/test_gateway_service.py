"""The gateway process as it runs: uvicorn (httptools) serving the intake, and the sweeper at start.

``service.run`` against the session's real nats-server, on a free port. A referral left half stored by
a "previous process" (its intake record written, nothing else) is completed when the service starts;
a referral posted over real HTTP is answered 201 and leaves no intake record behind.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from nats.aio.client import Client as NatsClient

from haven.kit.kv_keys import list_bucket_keys
from haven.kit.lifecycle import Readiness, ServiceContext
from haven.kit.nats_server import free_port
from services.gateway import intake, service
from services.gateway.fhir import ReferrerContext, parse_referral_bundle
from services.gateway.security.tokens import verify_token
from services.gateway.settings import GatewaySettings
from services.gateway.state import GatewayState
from services.gateway.testing import TEST_SECRET, bearer, in_process_app
from tests.conftest import nats_client, nats_server  # noqa: F401  (the real server these tests use)
from tests.support.clock import MovableClock

NOW = datetime(2026, 11, 23, 4, 30, tzinfo=UTC)
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "police-night-referral.json"
# How long the test waits for the service to do what it must; never a measure of speed.
PATIENCE_SECONDS = 30.0


def a_referral() -> dict[str, Any]:
    bundle: dict[str, Any] = json.loads(EXAMPLE.read_text())
    bundle["entry"][0]["resource"]["birthDate"] = (
        date(1992, 1, 1) + timedelta(days=secrets.randbelow(3000))
    ).isoformat()
    return bundle


async def eventually(check: Any) -> None:
    """Wait until ``check()`` (a coroutine function) returns true, or fail after PATIENCE_SECONDS."""
    deadline = asyncio.get_running_loop().time() + PATIENCE_SECONDS
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "the service never got there"
        await asyncio.sleep(0.05)


async def test_the_service_completes_what_a_crash_left_and_serves_referrals(
    nats_client: NatsClient,  # noqa: F811
    tmp_path: Path,
) -> None:
    # A previous gateway wrote this referral's intake record, then died.
    helper: GatewayState = (await in_process_app(nats_client, clock=MovableClock(NOW))).state.haven
    parsed = parse_referral_bundle(
        a_referral(), referrer=ReferrerContext("demo-police", "police"), today=NOW.date()
    )
    principal = verify_token(
        helper.verifier, bearer("demo-police", "referrer", NOW)["Authorization"][7:], now=NOW
    )
    left = intake.Intake(parsed, principal, NOW, "", "transaction")
    await intake.begin(helper, left)

    settings = GatewaySettings(
        nats_url="nats://in-process",  # unused: the context below carries the connection
        data_dir=tmp_path,
        gateway_port=free_port(),
        jwt_secret=TEST_SECRET,
        intake_sweep_seconds=3600,
        intake_sweep_after_seconds=60,
    )
    ctx = ServiceContext("gateway", nats_client, nats_client.jetstream(), asyncio.Event(), Readiness())
    running = asyncio.create_task(service.run(ctx, settings, clock=MovableClock(NOW + timedelta(minutes=5))))
    try:
        await eventually(lambda: _ready(ctx, running))

        async def swept() -> bool:
            return await helper.store.read("ServiceRequest", parsed.referral_id) is not None

        await eventually(swept)

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.gateway_port}") as http:
            answer = await http.post(
                "/fhir",
                json=a_referral(),
                headers=bearer("demo-police", "referrer", NOW + timedelta(minutes=5)),
            )
        assert answer.status_code == 201, answer.text
        posted = answer.headers["Location"].removeprefix("ServiceRequest/")
        assert await helper.store.read("ServiceRequest", posted) is not None
    finally:
        ctx.stop.set()
        await running
    # A clean stop waits for the purges: no record is left for the next start to sweep.
    pending = await list_bucket_keys(helper.idempotency, f"{intake.PREFIX}*")
    assert left.key not in pending
    assert f"{intake.PREFIX}{posted}" not in pending


async def _ready(ctx: ServiceContext, running: asyncio.Task[None]) -> bool:
    if running.done():
        running.result()  # the service stopped: show why
    return ctx.readiness.ready
