"""Delivers NotificationRequested work items to rest-hook endpoints, and proves each attempt.

At least once, with the notification id as the receiver's idempotency key; a delivery already made
is never sent again (the delivery record in KV is checked first). Failures wait by the retry schedule
(backoff with jitter); a dead endpoint's breaker opens so its items wait without being tried; after
the last attempt the item goes to the dead-letter stream. Every attempt publishes NotificationDelivered
and updates the delivery record.

Order: a recipient's notifications about one referral arrive in the order they were requested. While
one waits for a retry it holds its (subscription, referral) lane (``DeliveryLedger.set_hold``); later
ones wait behind it until it is delivered or dead-lettered. Concurrency across endpoints is the job of
``services.notifier.lanes``; here each endpoint also has a cap on attempts in flight at once (several
subscriptions may share one URL) and a connection pool of its own, and ``parked_for`` tells the lanes
when an endpoint's breaker is open.

Email work items (channel EMAIL, key ``email-<recipient>``) go the same way through ``mailer.Mailer``:
the SMTP server has its own breaker, and the record, retries and dead letter are those of a rest-hook.

NATS work items (channel NATS, key ``nats-<organisation>``) are for LA platforms (``PartnerNats``):
the same bytes and headers as a rest-hook (the projection, signed with the platform's secret; the
notification id also as ``Nats-Msg-Id``) are published to ``haven.partner.v1.<GSS>.notification.<event
type>`` in the stream HAVEN_PARTNER, where only that LA may read them, live or from its durable
consumer ``partner-<organisation>`` after being offline. JetStream's ack is the receipt.

Recipient gaps (key ``unresolved-<role>``: a required role had no organisation when the event was
planned; key ``no-channel-<organisation>``: the recipient had no Subscription, NATS or email) reach the
deliverer only when an operator redrives one: ``resolve_gap`` (the planner) looks for the organisation
or its channels again and plans the notification; if there is still none, it is dead again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import Any, NoReturn
from urllib.parse import urlsplit

import aiohttp
import httpx
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from haven.canonical import TOPIC_REFERRAL_ROUTED
from haven.kit import bus, telemetry, topology
from haven.kit.batch import Publish, send_all
from haven.kit.clock import Clock
from haven.kit.ids import derived_id
from haven.kit.logs import log_event
from haven.kit.timestamps import to_timestamp
from haven.notification.v1 import notification_pb2
from haven.organisations import Organisation, load_organisations
from services.notifier.domain.backport import (
    EVENT_NOTIFICATION,
    SubscriptionEvent,
    canonical_json,
    notification_bundle,
)
from services.notifier.domain.delivery import CircuitBreaker, EndpointBreakers, RetrySchedule
from services.notifier.domain.signing import delivery_headers
from services.notifier.ledger import (
    DEAD,
    DELIVERED,
    FINAL_STATES,
    RESOLVED,
    RETRYING,
    DeliveryLedger,
    record_key,
)
from services.notifier.mailer import EMAIL_KEY_PREFIX, Mailer
from services.notifier.subscriptions import SubscriptionCache

_log = logging.getLogger(__name__)

# How long a later notification waits, past the hold's end, before looking again.
_HOLD_MARGIN_SECONDS = 0.05
# How long past its time a hold's holder may stay away before the lane goes on without it.
_STALE_HOLD_SECONDS = 120.0


# Attempts in flight at once to one endpoint (URL or SMTP server), over all its subscriptions.
DEFAULT_ENDPOINT_IN_FLIGHT = 4
# Items waiting for a retry or an open breaker stay pending on the consumer (nak with delay); a dead
# endpoint's backlog must never use up the window that the healthy endpoints' items need.
DEFAULT_MAX_ACK_PENDING = 100_000

# The delivery record's "subscription" of an LA platform on NATS, and of a required role that had no
# organisation: a lane and record key of their own, like ``email-<recipient>``.
NATS_KEY_PREFIX = "nats-"
UNRESOLVED_KEY_PREFIX = "unresolved-"
# The record key of a recipient that had no channel at all (no Subscription, NATS or email): kept as a
# dead letter, not lost; a redrive once the recipient has a channel plans it for that channel.
NO_CHANNEL_KEY_PREFIX = "no-channel-"
# Work items that reach the deliverer only by a redrive, to be planned again rather than sent.
REPLANNED_KEY_PREFIXES = (UNRESOLVED_KEY_PREFIX, NO_CHANNEL_KEY_PREFIX)
# The "endpoint" of every NATS delivery (for its breaker and in-flight cap): JetStream itself.
NATS_ENDPOINT = f"nats://{topology.PARTNER_STREAM}"
# Seconds JetStream has to acknowledge a partner notification.
_NATS_PUBLISH_TIMEOUT = 5.0

# Looks for a gap's organisation again and plans its notification; returns the organisations found.
GapResolver = Callable[[notification_pb2.NotificationRequested, dict[str, Any]], Awaitable[list[str]]]


def nats_key(organisation_id: str) -> str:
    """Return the lane and record key of an LA platform's NATS channel."""
    return f"{NATS_KEY_PREFIX}{organisation_id}"


def unresolved_key(role: str) -> str:
    """Return the lane and record key of a required role that has no organisation."""
    return f"{UNRESOLVED_KEY_PREFIX}{role}"


def no_channel_key(organisation_id: str) -> str:
    """Return the lane and record key of a recipient that had no channel to be told on."""
    return f"{NO_CHANNEL_KEY_PREFIX}{organisation_id}"


@dataclass(frozen=True)
class PartnerNats:
    """LA platforms that take notifications on NATS: the GSS code of their subjects and their secret.

    An organisation is on NATS when the registry gives it ``nats_gss`` (an LA platform's own GSS code)
    and a signing secret is configured for it (``HAVEN_NATS_SIGNING_SECRETS``; ``haven up`` makes them
    and hands them out with the platform's NATS credentials).
    """

    secrets: Mapping[str, str]
    organisations: Mapping[str, Organisation] = field(default_factory=load_organisations)

    def gss_for(self, organisation_id: str) -> str | None:
        """Return the GSS code the organisation's partner subjects name, or None when it is not on NATS."""
        organisation = self.organisations.get(organisation_id)
        if organisation is None or not organisation.nats_gss or not self.secrets.get(organisation_id):
            return None
        return organisation.nats_gss

    def secret_for(self, organisation_id: str) -> bytes:
        """Return the organisation's signing secret (empty when none is configured)."""
        return self.secrets.get(organisation_id, "").encode()


def delivery_consumer(
    schedule: RetrySchedule,
    ack_wait_seconds: float = 30.0,
    max_ack_pending: int = DEFAULT_MAX_ACK_PENDING,
) -> bus.ConsumerSpec:
    """Return the consumer of work items; it allows more deliveries than the schedule has attempts.

    ``ack_wait_seconds`` is how soon an item held by a process that died is offered again; the lanes
    keep items they still hold alive with in-progress acks, so it can be short. ``max_ack_pending`` is
    large because waiting items (retries, open breakers) count against it while they wait in JetStream;
    what the process takes in at once is bounded by the fetch batch and the lanes' capacity instead.
    """
    return bus.ConsumerSpec(
        stream="HAVEN_NOTIFICATIONS",
        durable="notifier-delivery",
        subjects=(topology.NOTIFICATION_REQUESTED,),
        max_deliver=-1,
        ack_wait_seconds=ack_wait_seconds,
        max_ack_pending=max_ack_pending,
        log_retries=False,  # every failed attempt is already recorded as NotificationDelivered
    )


class Deliverer:
    """Sends one work item per call and decides what happens after a failure."""

    def __init__(
        self,
        js: JetStreamContext,
        ledger: DeliveryLedger,
        subscriptions: SubscriptionCache,
        http: httpx.AsyncClient,
        schedule: RetrySchedule,
        breakers: EndpointBreakers,
        clock: Clock,
        rng: random.Random | None = None,
        on_sent: Callable[[str], None] | None = None,
        mailer: Mailer | None = None,
        endpoint_in_flight: int = DEFAULT_ENDPOINT_IN_FLIGHT,
        partners: PartnerNats | None = None,
        resolve_gap: GapResolver | None = None,
    ) -> None:
        self._js = js
        self._ledger = ledger
        self._subscriptions = subscriptions
        self._http = http
        self._schedule = schedule
        self._breakers = breakers
        self._clock = clock
        self._rng = rng or random.Random()
        self._on_sent = on_sent
        self._mailer = mailer
        self._in_flight = endpoint_in_flight
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._sessions: dict[str, tuple[aiohttp.ClientSession, str | None]] = {}
        # One TLS context for every endpoint's client: making one reads the CA bundle, tens of
        # milliseconds of the event loop that every delivery would wait for at each new endpoint.
        self._tls: ssl.SSLContext | None = None
        self._partners = partners
        self._resolve_gap = resolve_gap
        self._partner_consumers: set[str] = set()

    def parked_for(self, request: notification_pb2.NotificationRequested) -> float:
        """Return how long the item's endpoint is known to be down (0: try it), from memory only."""
        if request.subscription_id.startswith(REPLANNED_KEY_PREFIXES):
            endpoint = ""
        elif request.subscription_id.startswith(NATS_KEY_PREFIX):
            endpoint = NATS_ENDPOINT
        elif request.subscription_id.startswith(EMAIL_KEY_PREFIX):
            endpoint = self._mailer.endpoint if self._mailer is not None else ""
        else:
            record = self._subscriptions.cached(request.subscription_id)
            endpoint = str(record.get("endpoint", "")) if record else ""
        return self._breakers.closed_in(endpoint, time.monotonic()) if endpoint else 0.0

    async def handle(self, msg: Msg) -> None:
        """Deliver one NotificationRequested (raises bus.RetryLater / bus.Unprocessable as outcomes)."""
        request = notification_pb2.NotificationRequested.FromString(msg.data)
        sequence = int(msg.metadata.sequence.stream)
        key = record_key(request.notification_id, request.subscription_id)
        # Two reads in one batch: the record, and the hold that keeps this lane in order.
        record, hold = await self._ledger.record_and_hold(key, request.subscription_id, request.referral_id)
        if record.get("state") in FINAL_STATES:
            if hold is not None:
                await self._ledger.release(
                    request.subscription_id, request.referral_id, sequence, self._clock()
                )
            return
        if request.subscription_id.startswith(REPLANNED_KEY_PREFIXES):
            await self._gap(request, key, record, sequence)
            return
        email_to = ""
        partner_gss = ""
        subscription: dict[str, Any]
        if request.subscription_id.startswith(NATS_KEY_PREFIX):
            gss = self._partners.gss_for(request.recipient_organisation_id) if self._partners else None
            if gss is None:
                await self._ledger.release(
                    request.subscription_id, request.referral_id, sequence, self._clock()
                )
                raise bus.Unprocessable("recipient is not an LA platform on NATS, or has no signing secret")
            partner_gss, subscription = gss, {"endpoint": NATS_ENDPOINT}
        elif request.subscription_id.startswith(EMAIL_KEY_PREFIX):
            address = self._mailer.address_for(request.recipient_organisation_id) if self._mailer else None
            if address is None or self._mailer is None:
                await self._ledger.release(
                    request.subscription_id, request.referral_id, sequence, self._clock()
                )
                raise bus.Unprocessable("no SMTP server or email address configured for the recipient")
            email_to, subscription = address, {"endpoint": self._mailer.endpoint}
        else:
            found = await self._subscriptions.get(request.subscription_id)
            if found is None:
                await self._ledger.release(
                    request.subscription_id, request.referral_id, sequence, self._clock()
                )
                raise bus.Unprocessable("subscription no longer exists")
            subscription = found
        now = self._clock()
        if hold is not None and int(hold["sequence"]) < sequence:
            overdue = now.timestamp() - float(hold["until"])
            # A holder that has not come back long after its time (settled elsewhere, or lost) stops
            # holding: order gives way to delivery rather than block the lane for ever.
            if overdue < _STALE_HOLD_SECONDS:
                await self._ledger.wait_behind(request.subscription_id, request.referral_id, sequence)
                wait = max(0.0, -overdue) + _HOLD_MARGIN_SECONDS
                raise bus.RetryLater("an earlier notification to this recipient is waiting", delay=wait)
        endpoint = str(subscription["endpoint"])
        breaker = self._breakers.for_endpoint(endpoint)
        if breaker.closed_in(time.monotonic()) > 0:
            await self._park(request, sequence, now, breaker)  # known to be down: no KV work, no attempt
        attempt = _int(record.get("attempts")) + 1
        # Only a rest-hook Subscription numbers its events (for `$events` and the backport Bundle); a
        # NATS or email item's record is written once, after its first attempt, with its index key.
        first_write = not record.get("notification_id")
        if partner_gss or email_to:
            record = _started(request, record, self._clock().tzinfo)
        else:
            record = await self._with_event_number(request, record)
            first_write = False
        async with self._slot(endpoint):
            # Asked again once the slot is ours: items that queued for the slot while the endpoint's
            # first attempts were timing out must not each spend a full timeout after it has opened.
            # ``allow`` (not ``closed_in``) here, as it is what lets one half-open probe through.
            if not breaker.allow(time.monotonic()):
                await self._park(request, sequence, now, breaker)
            if partner_gss:
                # No status code on NATS (0, as for no answer): JetStream's ack is the receipt.
                status = 0
                delivered, detail, timed_out = await self._publish_partner(request, partner_gss)
            elif email_to and self._mailer is not None:
                status, detail, timed_out = await self._mailer.send(request, email_to)
                delivered = 200 <= status < 300
            else:
                body = await self._body(request, subscription, record, now)
                secret = str(subscription["secret"]).encode()
                status, detail, timed_out = await self._post(request, endpoint, secret, body)
                delivered = 200 <= status < 300
        record.update(
            attempts=attempt, last_status=status, last_detail=detail, last_attempt_at=now.isoformat()
        )
        if delivered:
            breaker.record_success()
            if self._on_sent is not None:
                self._on_sent(request.subscription_id)
            record.update(state=DELIVERED, delivered_at=self._clock().isoformat(), next_attempt_at=None)
            outcome = self._outcome(request, attempt, notification_pb2.DELIVERY_OUTCOME_DELIVERED, status, "")
            # The record and the outcome event in one batch: one wait, acknowledged together.
            writes = self._ledger.record_write(key, record, index=first_write)
            settle: list[Awaitable[object]] = [send_all(self._js, [*writes, outcome])]
            if hold is not None:
                # Only a hold seen at the start can be this item's to pass on: a hold is set only by
                # an item that failed, and this lane runs one item at a time, so with none seen the
                # release would be a KV read that changes nothing (most deliveries).
                now_done = self._clock()
                settle.append(
                    self._ledger.release(request.subscription_id, request.referral_id, sequence, now_done)
                )
            await asyncio.gather(*settle)
            return
        breaker.record_failure(time.monotonic(), timed_out=timed_out)
        # After a redrive the schedule starts again; attempt numbers keep counting (they name events).
        delay = self._schedule.delay_for(attempt - _int(record.get("redrive_from")), self._rng)
        if delay is None:
            await self._dead_letter(request, key, record, sequence, attempt, status, detail, first_write)
            return
        record.update(state=RETRYING, next_attempt_at=(now + timedelta(seconds=delay)).isoformat())
        outcome = self._outcome(request, attempt, notification_pb2.DELIVERY_OUTCOME_RETRYING, status, detail)
        await asyncio.gather(
            send_all(self._js, [*self._ledger.record_write(key, record, index=first_write), outcome]),
            self._hold(request, sequence, now, delay),
        )
        raise bus.RetryLater(f"delivery attempt {attempt} failed ({detail})", delay=delay)

    async def _gap(
        self, request: notification_pb2.NotificationRequested, key: str, record: dict[str, Any], sequence: int
    ) -> None:
        """Handle a redriven gap: plan it for the role's organisation (or the recipient's channels) now.

        Found none: dead-lettered again.
        """
        attempt = _int(record.get("attempts")) + 1
        found = await self._resolve_gap(request, record) if self._resolve_gap is not None else []
        now = self._clock()
        record.update(attempts=attempt, last_status=0, last_attempt_at=now.isoformat())
        if not found:
            if request.subscription_id.startswith(NO_CHANNEL_KEY_PREFIX):
                reason = f"recipient {request.recipient_organisation_id} has no channel"
            else:
                reason = f"no organisation for required role {record.get('unresolved_role', '')}"
            record.update(last_detail=reason)
            await self._dead_letter(request, key, record, sequence, attempt, 0, reason)
            return
        record.update(
            state=RESOLVED,
            resolved_to=found,
            resolved_at=now.isoformat(),
            last_detail=f"planned for {len(found)} organisation(s)",
            next_attempt_at=None,
        )
        await self._ledger.put_record(key, record)
        await self._ledger.release(request.subscription_id, request.referral_id, sequence, now)
        log_event(
            _log,
            "recipient gap resolved",
            notification_id=request.notification_id,
            referral_id=request.referral_id,
            role=str(record.get("unresolved_role", "")),
            recipients=found,
        )

    async def _publish_partner(
        self, request: notification_pb2.NotificationRequested, gss: str
    ) -> tuple[bool, str, bool]:
        """Publish the signed projection on the LA's partner subject; return (stored, detail, timed out)."""
        organisation_id = request.recipient_organisation_id
        body = bytes(request.payload_json)
        secret = self._partners.secret_for(organisation_id) if self._partners else b""
        headers = delivery_headers(
            request.notification_id, request.event_type, body, secret, int(self._clock().timestamp())
        )
        # The idempotency key is also JetStream's: a repeat inside the duplicate window is not stored.
        headers["Nats-Msg-Id"] = request.notification_id
        subject = topology.partner_subject(gss, request.event_type)
        with telemetry.tracer(__name__).start_as_current_span("deliver nats") as span:
            span.set_attribute("haven.notification_id", request.notification_id)
            span.set_attribute("haven.recipient", organisation_id)
            span.set_attribute("messaging.destination.name", subject)
            try:
                await self._ensure_partner_consumer(organisation_id, gss)
                ack = await self._js.publish(
                    subject, body, headers=telemetry.inject_headers(headers), timeout=_NATS_PUBLISH_TIMEOUT
                )
            except (nats.errors.Error, TimeoutError) as error:
                span.set_attribute("haven.delivery_error", type(error).__name__)
                timed_out = isinstance(error, (nats.errors.TimeoutError, TimeoutError))
                return False, f"NATS {type(error).__name__}", timed_out
            return True, f"JetStream {ack.stream} {ack.seq}", False

    async def _ensure_partner_consumer(self, organisation_id: str, gss: str) -> None:
        """Create the LA's durable consumer once per process, so its backlog waits for it from the start."""
        if organisation_id in self._partner_consumers:
            return
        spec = bus.ConsumerSpec(
            stream=topology.PARTNER_STREAM,
            durable=topology.partner_consumer(organisation_id),
            subjects=(topology.partner_subjects(gss),),
            max_deliver=-1,
        )
        await bus.ensure_consumer(self._js, spec)
        self._partner_consumers.add(organisation_id)

    async def _dead_letter(
        self,
        request: notification_pb2.NotificationRequested,
        key: str,
        record: dict[str, Any],
        sequence: int,
        attempt: int,
        status: int,
        detail: str,
        first_write: bool = False,
    ) -> None:
        redrives = _int(record.get("redrives"))
        await bus.publish_event(
            self._js,
            topology.NOTIFICATION_DEAD_LETTER,
            request,
            msg_id=derived_id("dead-letter", key, str(redrives)),
        )
        record.update(state=DEAD, dead_at=self._clock().isoformat(), next_attempt_at=None)
        await self._ledger.put_record(key, record, index=first_write)
        # A dead letter no longer holds its lane: later notifications go on (the receiver sees the gap
        # in event numbers), and an operator can redrive this one.
        await self._ledger.release(request.subscription_id, request.referral_id, sequence, self._clock())
        outcome = self._outcome(
            request, attempt, notification_pb2.DELIVERY_OUTCOME_DEAD_LETTERED, status, detail
        )
        await send_all(self._js, [outcome])
        log_event(
            _log,
            "notification dead-lettered",
            logging.ERROR,
            notification_id=request.notification_id,
            recipient=request.recipient_organisation_id,
            attempts=attempt,
        )

    async def _park(
        self,
        request: notification_pb2.NotificationRequested,
        sequence: int,
        now: datetime,
        breaker: CircuitBreaker,
    ) -> NoReturn:
        """Hold the item's lane and send it back until its endpoint's breaker may let a call through.

        Not an attempt (nothing is recorded as one): the endpoint is known to be down.
        """
        wait = max(0.05, breaker.closed_in(time.monotonic())) + self._rng.uniform(0.0, 0.5)
        await self._hold(request, sequence, now, wait)
        raise bus.RetryLater("endpoint circuit open", delay=wait)

    async def warm_up(self) -> None:
        """Pay the HTTP stack's first-use costs now, before work arrives, not inside the first deliveries.

        The TLS context (the CA bundle is read) and the first session's connector cost tens of
        milliseconds of the event loop on first use, which every delivery in flight then waits for:
        most of a short run's p99.
        """
        if self._tls is None:
            self._tls = httpx.create_ssl_context()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._tls)):
            await asyncio.sleep(0)

    async def aclose(self) -> None:
        """Close the endpoints' connection pools (the shared client given at start is the caller's)."""
        sessions, self._sessions = list(self._sessions.values()), {}
        await asyncio.gather(*(session.close() for session, _ in sessions), return_exceptions=True)

    def _session(self, endpoint: str) -> tuple[aiohttp.ClientSession, str | None]:
        """Return the endpoint's own HTTP session and proxy: at most ``endpoint_in_flight`` connections.

        Not one pool for every receiver: there, connections held by hanging receivers count against
        the shared limit, and enough of them make healthy requests queue for a connection. aiohttp
        rather than httpx here: less of the notifier's CPU per delivery (httpx and httpcore were a
        quarter of it), measured alternately with ``benchmarks/notifier.py``. The timeouts are those
        of the httpx client the deliverer was given (``webhook_timeout``). The proxy variables
        (``HTTPS_PROXY``, ``NO_PROXY``...) are read once per endpoint, as httpx honoured them, not
        through aiohttp's ``trust_env``, which reads ``~/.netrc`` in a thread on every request.
        """
        found = self._sessions.get(endpoint)
        if found is None:
            if self._tls is None:
                self._tls = httpx.create_ssl_context()
            timeout = self._http.timeout
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._in_flight, ssl=self._tls),
                timeout=aiohttp.ClientTimeout(total=timeout.read, connect=timeout.connect),
            )
            found = self._sessions[endpoint] = (session, proxy_for(endpoint))
        return found

    def _slot(self, endpoint: str) -> asyncio.Semaphore:
        """Return the endpoint's cap on attempts in flight (a hanging URL holds at most this many)."""
        slot = self._slots.get(endpoint)
        if slot is None:
            slot = self._slots[endpoint] = asyncio.Semaphore(self._in_flight)
        return slot

    async def _hold(
        self, request: notification_pb2.NotificationRequested, sequence: int, now: datetime, delay: float
    ) -> None:
        until = now + timedelta(seconds=delay)
        await self._ledger.set_hold(request.subscription_id, request.referral_id, sequence, until)

    async def _with_event_number(
        self, request: notification_pb2.NotificationRequested, record: dict[str, Any]
    ) -> dict[str, Any]:
        """Give the notification its subscription's event number on first sight, and start its record."""
        if record.get("event_number"):
            return record
        tz = self._clock().tzinfo
        event = SubscriptionEvent(
            event_number=0,
            notification_id=request.notification_id,
            event_type=request.event_type,
            referral_id=request.referral_id,
            occurred_at=request.occurred_at.ToDatetime().replace(tzinfo=tz),
            payload_json=request.payload_json,
        )
        number = await self._ledger.next_event_number(request.subscription_id)
        started = {**_started(request, record, tz), "event_number": number}
        key = record_key(request.notification_id, request.subscription_id)
        # The event before the record that names its number: a crash between the two leaves an unused
        # number (the next try takes another), never a record pointing at an event that was not kept.
        await self._ledger.put_event(request.subscription_id, event, number)
        await self._ledger.put_record(key, started, index=True)
        return started

    async def _body(
        self,
        request: notification_pb2.NotificationRequested,
        subscription: dict[str, Any],
        record: dict[str, Any],
        now: datetime,
    ) -> bytes:
        """Return the bytes to send: the bare projection, or a backport notification Bundle."""
        if not subscription.get("backport"):
            return bytes(request.payload_json)
        number = _int(record.get("event_number"))
        event = await self._ledger.event(request.subscription_id, number)
        events = [event] if event is not None else []
        bundle = notification_bundle(
            bundle_id=derived_id("notification-bundle", request.notification_id, request.subscription_id),
            subscription_id=request.subscription_id,
            topic=str(subscription.get("topic") or TOPIC_REFERRAL_ROUTED),
            status="active",
            kind=EVENT_NOTIFICATION,
            events_since_start=await self._ledger.events_count(request.subscription_id),
            now=now,
            events=events,
        )
        return canonical_json(bundle)

    async def _post(
        self, request: notification_pb2.NotificationRequested, endpoint: str, secret: bytes, body: bytes
    ) -> tuple[int, str, bool]:
        """POST the body; return (HTTP status or 0, detail, whether it timed out)."""
        headers = delivery_headers(
            request.notification_id, request.event_type, body, secret, int(self._clock().timestamp())
        )
        with telemetry.tracer(__name__).start_as_current_span("deliver rest-hook") as span:
            span.set_attribute("haven.notification_id", request.notification_id)
            span.set_attribute("haven.recipient", request.recipient_organisation_id)
            try:
                # No redirects: a receiver cannot send a child's signed projection on to another URL.
                session, proxy = self._session(endpoint)
                async with session.post(
                    endpoint,
                    data=body,
                    headers=telemetry.inject_headers(headers),
                    allow_redirects=False,
                    proxy=proxy,
                ) as answer:
                    await answer.read()
                    status = answer.status
            except (aiohttp.ClientError, TimeoutError) as error:
                # aiohttp's own timeouts are TimeoutErrors too (and some of them ClientErrors).
                span.set_attribute("haven.delivery_error", type(error).__name__)
                return 0, type(error).__name__, isinstance(error, TimeoutError)
            span.set_attribute("http.response.status_code", status)
            return status, f"HTTP {status}", False

    def _outcome(
        self,
        request: notification_pb2.NotificationRequested,
        attempt: int,
        outcome: notification_pb2.DeliveryOutcome.ValueType,
        status: int,
        detail: str,
    ) -> Publish:
        """Return the publish of the attempt's ``NotificationDelivered``, for a batch."""
        event = notification_pb2.NotificationDelivered(
            event_id=derived_id(
                "notification-delivered", request.notification_id, request.subscription_id, str(attempt)
            ),
            occurred_at=to_timestamp(self._clock()),
            notification_id=request.notification_id,
            recipient_organisation_id=request.recipient_organisation_id,
            attempt=attempt,
            outcome=outcome,
            http_status=status,
            detail=detail,
            referral_id=request.referral_id,
        )
        return bus.event_call(topology.NOTIFICATION_DELIVERED, event, msg_id=event.event_id)


def proxy_for(endpoint: str) -> str | None:
    """Return the proxy the environment names for the endpoint's scheme, unless ``NO_PROXY`` exempts it."""
    url = urlsplit(endpoint)
    proxy = urllib.request.getproxies_environment().get(url.scheme)
    if proxy and url.hostname and not urllib.request.proxy_bypass(url.hostname):
        return proxy
    return None


def _started(
    request: notification_pb2.NotificationRequested, record: dict[str, Any], tz: tzinfo | None
) -> dict[str, Any]:
    """Return the record with what names the work item (ids, recipient, type, times) filled in."""
    if record.get("notification_id"):
        return record
    return {
        **record,
        "notification_id": request.notification_id,
        "subscription_id": request.subscription_id,
        "referral_id": request.referral_id,
        "recipient_organisation_id": request.recipient_organisation_id,
        "event_type": request.event_type,
        "requested_at": request.occurred_at.ToDatetime().replace(tzinfo=tz).isoformat(),
        "due_by": request.due_by.ToDatetime().isoformat() + "Z",
    }


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0
