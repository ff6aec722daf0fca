"""The notifier's planner and delivery side, wired as the service wires them, run in the test's process.

For integration tests that drive the notifier over a real nats-server without starting its process:
each run has a durable delivery consumer of its own, so tests do not take each other's work items.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import httpx
from nats.js import JetStreamContext

from haven.kit.clock import system_clock
from services.notifier.deliverer import Deliverer, PartnerNats, delivery_consumer
from services.notifier.domain import RecipientDirectory
from services.notifier.domain.delivery import EndpointBreakers, RetrySchedule
from services.notifier.lanes import LaneRunner
from services.notifier.ledger import DeliveryLedger
from services.notifier.mailer import Mailer
from services.notifier.planner import NotificationPlanner
from services.notifier.subscriptions import SubscriptionCache


@asynccontextmanager
async def running_notifier(
    js: JetStreamContext,
    *,
    directory: RecipientDirectory | None = None,
    partners: PartnerNats | None = None,
    mailer: Mailer | None = None,
    schedule: str = "100ms",
    breaker: tuple[int, float] = (5, 30.0),
    webhook_timeout: float = 2.0,
) -> AsyncIterator[NotificationPlanner]:
    """Run a planner and the delivery lanes with this configuration; yield the planner."""
    subscriptions = SubscriptionCache(js)
    await subscriptions.start()
    planner = NotificationPlanner(
        js, subscriptions, directory or RecipientDirectory(), mailer=mailer, partners=partners
    )
    retry = RetrySchedule.parse(schedule)
    async with httpx.AsyncClient(timeout=webhook_timeout) as http:
        deliverer = Deliverer(
            js,
            await DeliveryLedger.open(js),
            subscriptions,
            http,
            retry,
            EndpointBreakers(*breaker),
            system_clock,
            mailer=mailer,
            partners=partners,
            resolve_gap=planner.resolve_gap,
        )
        spec = replace(delivery_consumer(retry), durable=f"test-delivery-{uuid.uuid4().hex[:8]}")
        stop = asyncio.Event()
        lanes = LaneRunner(spec, deliverer.handle, parked_for=deliverer.parked_for)
        task = asyncio.create_task(lanes.run(js, stop))
        try:
            yield planner
        finally:
            stop.set()
            await task
            await deliverer.aclose()
            await subscriptions.stop()
