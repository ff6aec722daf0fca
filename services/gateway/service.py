"""The gateway process: the FHIR API served by uvicorn inside the shared service lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator
from datetime import timedelta

import grpc
import uvicorn
import uvloop

from haven.eligibility.v1 import eligibility_pb2_grpc
from haven.kit import topology
from haven.kit.clock import Clock, system_clock
from haven.kit.lifecycle import ServiceContext, start
from haven.kit.resources import ResourceStore
from services.gateway import intake
from services.gateway.app import create_app
from services.gateway.security.keys import (
    HmacTokenVerifier,
    JwksTokenVerifier,
    TokenVerifier,
    load_or_create_dev_key,
)
from services.gateway.settings import GatewaySettings
from services.gateway.state import GatewayState


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the service lifecycle owns SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def token_verifier(settings: GatewaySettings) -> TokenVerifier:
    """Return the verifier the settings ask for: JWKS in production, else a secret or the dev key."""
    if settings.jwt_jwks_url:
        return JwksTokenVerifier(settings.jwt_jwks_url)
    secret = (
        settings.jwt_secret.encode() if settings.jwt_secret else load_or_create_dev_key(settings.data_dir)
    )
    return HmacTokenVerifier(secret)


async def run(ctx: ServiceContext, settings: GatewaySettings, clock: Clock = system_clock) -> None:
    """Serve HTTP until the service is told to stop; in-flight requests finish first."""
    channel = grpc.aio.insecure_channel(settings.eligibility_grpc_target)
    state = GatewayState(
        settings=settings,
        js=ctx.js,
        store=await ResourceStore.open(ctx.js),
        idempotency=await ctx.js.key_value(topology.BUCKET_IDEMPOTENCY),
        assessments=await ctx.js.key_value(topology.BUCKET_ASSESSMENTS),
        subscription_secrets=await ctx.js.key_value(topology.BUCKET_SUBSCRIPTIONS),
        verifier=token_verifier(settings),
        eligibility=eligibility_pb2_grpc.EligibilityServiceStub(channel),
        readiness=ctx.readiness,
        clock=clock,
    )
    config = uvicorn.Config(
        create_app(state),
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_config=None,
        access_log=False,
        # The C HTTP parser (a dependency): uvicorn would pick it anyway, named so a missing one fails.
        http="httptools",
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
    )
    server = _EmbeddedServer(config)
    serving = server.serve()
    # Completes the referrals a crash left half stored (intake.py): at once, then periodically.
    sweeper = asyncio.create_task(
        intake.sweep_forever(
            state,
            every=timedelta(seconds=settings.intake_sweep_seconds),
            older_than=timedelta(seconds=settings.intake_sweep_after_seconds),
        )
    )

    task = asyncio.create_task(serving)
    while not server.started and not task.done():
        await asyncio.sleep(0.02)
    ctx.readiness.set(True)
    await ctx.stop.wait()
    # Readiness is already false (the lifecycle set it); now stop accepting and finish what is in flight.
    server.should_exit = True
    await task
    await intake.finish_background()
    sweeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeper
    await channel.close()


def main() -> None:
    """Entry point: read settings and serve until SIGTERM."""
    settings = GatewaySettings()  # type: ignore[call-arg]  # required values come from the environment
    # uvloop: the event loop in C; with httptools it is most of what a bare uvicorn endpoint is faster by.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    start("gateway", settings, lambda ctx: run(ctx, settings))
