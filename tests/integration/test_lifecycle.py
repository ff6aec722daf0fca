"""The service lifecycle against a real nats-server: ready while working, not ready before work stops."""

from __future__ import annotations

import asyncio
import os
import signal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from haven.kit.health import start_grpc_server
from haven.kit.lifecycle import ServiceContext, run_service
from haven.kit.nats_server import EmbeddedNats, free_port
from haven.kit.settings import ServiceSettings


async def test_sigterm_turns_readiness_false_before_work_stops(nats_server: EmbeddedNats) -> None:
    settings = ServiceSettings(nats_url=nats_server.url, shutdown_grace_seconds=5)
    port = free_port()
    seen: dict[str, object] = {}

    async def health_status() -> int:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
            return int(answer.status)

    async def main(ctx: ServiceContext) -> None:
        server = await start_grpc_server(port, ctx.readiness, ["test.Service"])
        ctx.readiness.set(True)
        await asyncio.sleep(0.1)
        seen["while_running"] = await health_status()
        os.kill(os.getpid(), signal.SIGTERM)
        await ctx.stop.wait()
        # In-flight work still runs here: the service must already report itself not ready.
        await asyncio.sleep(0.05)
        seen["ready_flag_on_stop"] = ctx.readiness.ready
        seen["while_stopping"] = await health_status()
        seen["connected_while_stopping"] = ctx.nc.is_connected
        await server.stop(grace=0)

    await asyncio.wait_for(run_service("lifecycle-test", settings, main), timeout=20)
    assert seen["while_running"] == health_pb2.HealthCheckResponse.SERVING
    assert seen["ready_flag_on_stop"] is False
    assert seen["while_stopping"] == health_pb2.HealthCheckResponse.NOT_SERVING
    assert seen["connected_while_stopping"] is True


async def test_work_that_overruns_the_grace_period_is_cancelled(nats_server: EmbeddedNats) -> None:
    settings = ServiceSettings(nats_url=nats_server.url, shutdown_grace_seconds=0.2)
    cancelled = asyncio.Event()

    async def main(ctx: ServiceContext) -> None:
        ctx.stop.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    await asyncio.wait_for(run_service("grace-test", settings, main), timeout=10)
    assert cancelled.is_set()
