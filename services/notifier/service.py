"""The notifier process: plans notifications from the bus and from its own schedules; delivers them.

Sources: referrals received, routing, task changes, eligibility changes and exit alerts, missing
episodes, closed referrals, and the schedules it keeps (missing and placement reviews,
acknowledgement deadlines).
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys

import httpx

from haven.kit import bus
from haven.kit.clock import Clock, system_clock
from haven.kit.health import start_grpc_server
from haven.kit.lifecycle import ServiceContext, start
from haven.kit.resources import ResourceStore
from services.notifier.changes import ELIGIBILITY_CONSUMER, TASKS_CONSUMER, ChangeNotices
from services.notifier.closures import CLOSURES_CONSUMER, ClosedReferrals, ReferralClosures
from services.notifier.deliverer import Deliverer, PartnerNats, delivery_consumer
from services.notifier.domain import RecipientDirectory
from services.notifier.domain.delivery import EndpointBreakers, RetrySchedule
from services.notifier.escalation import ANSWERED_CONSUMER, DUE_CONSUMER, ROUTED_CONSUMER, Escalations
from services.notifier.exits import EXITS_CONSUMER, ExitAlerts
from services.notifier.heartbeat import Heartbeats
from services.notifier.lanes import LaneRunner
from services.notifier.ledger import DeliveryLedger
from services.notifier.mailer import Mailer, parse_mapping
from services.notifier.missing import FACTS_CONSUMER, REVIEWS_CONSUMER, MissingEpisodes
from services.notifier.placements import PLACEMENT_REVIEWS_CONSUMER, PLACEMENTS_CONSUMER, Placements
from services.notifier.planner import CONSUMER as PLANNER_CONSUMER
from services.notifier.planner import NotificationPlanner
from services.notifier.received import RECEIVED_CONSUMER, ReceivedReferrals
from services.notifier.schedules import Scheduler
from services.notifier.settings import NotifierSettings
from services.notifier.subscriptions import SubscriptionCache


def directory_from(settings: NotifierSettings) -> RecipientDirectory:
    """Return the recipient directory: the organisation registry plus the configured recipients."""
    return RecipientDirectory(
        police_by_gss=parse_mapping(settings.police_by_gss),
        ictg_by_gss=parse_mapping(settings.ictg_by_gss),
        leaving_care_by_gss=parse_mapping(settings.leaving_care_by_gss),
        nrm_competent_authority=settings.nrm_competent_authority,
        on_call_manager=settings.on_call_manager,
    )


def mailer_from(settings: NotifierSettings) -> Mailer | None:
    """Return the SMTP mailer, or None when no SMTP server is configured."""
    if not settings.smtp_host:
        return None
    addresses = parse_mapping(settings.email_recipients)
    if settings.on_call_email:
        addresses[settings.on_call_manager] = settings.on_call_email
    return Mailer(
        host=settings.smtp_host,
        port=settings.smtp_port,
        sender=settings.smtp_from,
        timeout=settings.smtp_timeout_seconds,
        fhir_base_url=settings.fhir_base_url,
        addresses=addresses,
    )


def webhook_timeout(settings: NotifierSettings) -> httpx.Timeout:
    """Return the receivers' timeouts: a short connect, the whole answer within the webhook timeout."""
    total = settings.webhook_timeout_seconds
    return httpx.Timeout(total, connect=min(total, settings.webhook_connect_timeout_seconds))


async def run(ctx: ServiceContext, settings: NotifierSettings, clock: Clock = system_clock) -> None:
    """Plan and deliver until the service is told to stop."""
    schedule = RetrySchedule.parse(settings.retry_schedule)
    mailer = mailer_from(settings)
    subscriptions = SubscriptionCache(ctx.js)
    await subscriptions.start()
    partners = PartnerNats(parse_mapping(settings.nats_signing_secrets))  # LA platforms on NATS
    planner = NotificationPlanner(ctx.js, subscriptions, directory_from(settings), mailer, partners)
    store = await ResourceStore.open(ctx.js)
    closed = await ClosedReferrals.open(ctx.js, store)  # what every producer asks before raising
    missing = await MissingEpisodes.open(ctx.js, planner, clock, closed=closed)
    scheduler = await Scheduler.open(ctx.js, clock)
    changes = ChangeNotices(planner, store, closed)
    received = ReceivedReferrals(planner)
    exits = ExitAlerts(planner, store, closed)
    placements = Placements(planner, store, scheduler, closed)
    escalations = Escalations(planner, store, scheduler, closed)
    closures = ReferralClosures(closed, planner, store, scheduler, missing)
    limits = httpx.Limits(max_connections=settings.max_connections, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=webhook_timeout(settings), limits=limits) as http:
        ledger = await DeliveryLedger.open(ctx.js)
        heartbeats = Heartbeats(subscriptions, ledger, http, clock)
        breakers = EndpointBreakers(
            settings.breaker_failure_threshold,
            settings.breaker_reset_seconds,
            settings.breaker_timeout_threshold,
        )
        deliverer = Deliverer(
            ctx.js,
            ledger,
            subscriptions,
            http,
            schedule,
            breakers,
            clock,
            on_sent=heartbeats.note_sent,
            mailer=mailer,
            endpoint_in_flight=settings.endpoint_in_flight,
            partners=partners,
            resolve_gap=planner.resolve_gap,  # a redriven recipient gap is planned again
        )
        await deliverer.warm_up()
        consumer = delivery_consumer(
            schedule, settings.delivery_ack_wait_seconds, settings.delivery_max_ack_pending
        )
        lanes = LaneRunner(
            consumer,
            deliverer.handle,
            lane_capacity=settings.lane_capacity,
            parked_for=deliverer.parked_for,
            stripes=settings.lanes_per_subscription,
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
                bus.consume(ctx.js, FACTS_CONSUMER, missing.handle_facts, ctx.stop),
                bus.consume(ctx.js, REVIEWS_CONSUMER, missing.handle_review, ctx.stop),
                bus.consume(ctx.js, TASKS_CONSUMER, changes.handle_task_status, ctx.stop),
                bus.consume(ctx.js, ELIGIBILITY_CONSUMER, changes.handle_assessed, ctx.stop),
                bus.consume(ctx.js, RECEIVED_CONSUMER, received.handle, ctx.stop),
                bus.consume(ctx.js, EXITS_CONSUMER, exits.handle, ctx.stop),
                bus.consume(ctx.js, PLACEMENTS_CONSUMER, placements.handle_task_status, ctx.stop),
                bus.consume(ctx.js, PLACEMENT_REVIEWS_CONSUMER, placements.handle_review, ctx.stop),
                bus.consume(ctx.js, ROUTED_CONSUMER, escalations.handle_routed, ctx.stop),
                bus.consume(ctx.js, ANSWERED_CONSUMER, escalations.handle_task_status, ctx.stop),
                bus.consume(ctx.js, DUE_CONSUMER, escalations.handle_due, ctx.stop),
                bus.consume(ctx.js, CLOSURES_CONSUMER, closures.handle, ctx.stop),
                lanes.run(ctx.js, ctx.stop),
                heartbeats.run(ctx.stop),
            )
        finally:
            await server.stop(grace=2)
            await deliverer.aclose()
            await subscriptions.stop()


def _fast_missing_sniffio() -> None:
    """Make httpcore's per-request ``import sniffio`` fail fast when sniffio is not installed.

    httpcore tries the import on every request; a module that is not installed is searched for on
    the whole path each time (about a tenth of the notifier's CPU at 200 deliveries/s). ``None`` in
    ``sys.modules`` makes the same ImportError immediate, and httpcore then assumes asyncio, as before.
    """
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


def main() -> None:
    """Entry point: read settings and run until SIGTERM."""
    _fast_missing_sniffio()
    settings = NotifierSettings()  # type: ignore[call-arg]  # required values come from the environment
    start("notifier", settings, lambda ctx: run(ctx, settings))
