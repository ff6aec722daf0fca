"""The notifier process: plans notifications from routing events and delivers them."""

from __future__ import annotations

import asyncio

import httpx

from haven.kit import bus, topology
from haven.kit.clock import Clock, system_clock
from haven.kit.health import start_grpc_server
from haven.kit.lifecycle import ServiceContext, start
from haven.kit.resources import ResourceStore
from services.notifier.deliverer import Deliverer, delivery_consumer
from services.notifier.domain import RecipientDirectory
from services.notifier.domain.delivery import EndpointBreakers, RetrySchedule
from services.notifier.planner import CONSUMER as PLANNER_CONSUMER
from services.notifier.planner import NotificationPlanner
from services.notifier.settings import NotifierSettings


async def run(ctx: ServiceContext, settings: NotifierSettings, clock: Clock = system_clock) -> None:
    """Plan and deliver until the service is told to stop."""
    schedule = RetrySchedule.parse(settings.retry_schedule)
    planner = NotificationPlanner(ctx.js, await ResourceStore.open(ctx.js), RecipientDirectory())
    async with httpx.AsyncClient(timeout=settings.webhook_timeout_seconds) as http:
        deliverer = Deliverer(
            ctx.js,
            await ctx.js.key_value(topology.BUCKET_DELIVERIES),
            await ctx.js.key_value(topology.BUCKET_SUBSCRIPTIONS),
            http,
            schedule,
            EndpointBreakers(settings.breaker_failure_threshold, settings.breaker_reset_seconds),
            clock,
        )
        server = await start_grpc_server(
            settings.notifier_grpc_port,
            ctx.readiness,
            ["haven.notification.v1.Notifier"],
            host=settings.notifier_grpc_host,
        )
        ctx.readiness.set(True)
        try:
            await asyncio.gather(
                bus.consume(ctx.js, PLANNER_CONSUMER, planner.handle, ctx.stop),
                bus.consume(ctx.js, delivery_consumer(schedule), deliverer.handle, ctx.stop),
            )
        finally:
            await server.stop(grace=2)


def main() -> None:
    """Entry point: read settings and run until SIGTERM."""
    settings = NotifierSettings()  # type: ignore[call-arg]  # required values come from the environment
    start("notifier", settings, lambda ctx: run(ctx, settings))
