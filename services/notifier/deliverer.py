"""Delivers NotificationRequested work items to rest-hook endpoints, and proves each attempt.

At least once, with the notification id as the receiver's idempotency key; a delivery already made
is never sent again (the delivery record in KV is checked first). Failures wait by the retry schedule
(backoff with jitter); a dead endpoint's breaker opens so its items wait without being tried; after
the last attempt the item goes to the dead-letter stream. Every attempt publishes NotificationDelivered.
"""

from __future__ import annotations

import json
import logging
import random
import time

import httpx
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from haven.kit import bus, telemetry, topology
from haven.kit.clock import Clock
from haven.kit.ids import derived_id
from haven.kit.logs import log_event
from haven.kit.timestamps import to_timestamp
from haven.notification.v1 import notification_pb2
from services.notifier.domain.delivery import EndpointBreakers, RetrySchedule
from services.notifier.domain.signing import delivery_headers

_log = logging.getLogger(__name__)


def delivery_consumer(schedule: RetrySchedule) -> bus.ConsumerSpec:
    """Return the consumer of work items; it allows more deliveries than the schedule has attempts."""
    return bus.ConsumerSpec(
        stream="HAVEN_NOTIFICATIONS",
        durable="notifier-delivery",
        subjects=(topology.NOTIFICATION_REQUESTED,),
        max_deliver=-1,
        ack_wait_seconds=60.0,
    )


class Deliverer:
    """Sends one work item per call and decides what happens after a failure."""

    def __init__(
        self,
        js: JetStreamContext,
        deliveries: KeyValue,
        subscription_secrets: KeyValue,
        http: httpx.AsyncClient,
        schedule: RetrySchedule,
        breakers: EndpointBreakers,
        clock: Clock,
        rng: random.Random | None = None,
    ) -> None:
        self._js = js
        self._deliveries = deliveries
        self._secrets = subscription_secrets
        self._http = http
        self._schedule = schedule
        self._breakers = breakers
        self._clock = clock
        self._rng = rng or random.Random()

    async def handle(self, msg: Msg) -> None:
        """Deliver one NotificationRequested."""
        request = notification_pb2.NotificationRequested.FromString(msg.data)
        record_key = f"{request.notification_id}.{request.subscription_id}"
        if await self._already_delivered(record_key):
            return
        subscription = await self._subscription(request.subscription_id)
        if subscription is None:
            raise bus.Unprocessable("subscription no longer exists")
        endpoint = str(subscription["endpoint"])
        breaker = self._breakers.for_endpoint(endpoint)
        if not breaker.allow(time.monotonic()):
            # Not an attempt: the endpoint is known to be down; look again when the breaker may close.
            raise bus.RetryLater("endpoint circuit open", delay=self._breakers.reset_after)
        attempt = await self._next_attempt(record_key)
        status, detail = await self._post(request, endpoint, str(subscription["secret"]).encode())
        if 200 <= status < 300:
            breaker.record_success()
            await self._deliveries.put(
                record_key, json.dumps({"state": "delivered", "attempts": attempt}).encode()
            )
            await self._record(request, attempt, notification_pb2.DELIVERY_OUTCOME_DELIVERED, status, "")
            return
        breaker.record_failure(time.monotonic())
        delay = self._schedule.delay_for(attempt, self._rng)
        if delay is None:
            await bus.publish_event(
                self._js,
                topology.NOTIFICATION_DEAD_LETTER,
                request,
                msg_id=derived_id("dead-letter", record_key),
            )
            await self._deliveries.put(
                record_key, json.dumps({"state": "dead", "attempts": attempt}).encode()
            )
            await self._record(
                request, attempt, notification_pb2.DELIVERY_OUTCOME_DEAD_LETTERED, status, detail
            )
            log_event(
                _log,
                "notification dead-lettered",
                logging.ERROR,
                notification_id=request.notification_id,
                recipient=request.recipient_organisation_id,
                attempts=attempt,
            )
            return
        await self._deliveries.put(
            record_key, json.dumps({"state": "retrying", "attempts": attempt}).encode()
        )
        await self._record(request, attempt, notification_pb2.DELIVERY_OUTCOME_RETRYING, status, detail)
        raise bus.RetryLater(f"delivery attempt {attempt} failed ({detail})", delay=delay)

    async def _post(
        self, request: notification_pb2.NotificationRequested, endpoint: str, secret: bytes
    ) -> tuple[int, str]:
        body = request.payload_json
        headers = delivery_headers(
            request.notification_id, request.event_type, body, secret, int(self._clock().timestamp())
        )
        with telemetry.tracer(__name__).start_as_current_span("deliver rest-hook") as span:
            span.set_attribute("haven.notification_id", request.notification_id)
            span.set_attribute("haven.recipient", request.recipient_organisation_id)
            try:
                answer = await self._http.post(
                    endpoint, content=body, headers=telemetry.inject_headers(headers)
                )
            except httpx.HTTPError as error:
                span.set_attribute("haven.delivery_error", type(error).__name__)
                return 0, type(error).__name__
            span.set_attribute("http.response.status_code", answer.status_code)
            return answer.status_code, f"HTTP {answer.status_code}"

    async def _already_delivered(self, record_key: str) -> bool:
        state = await self._state(record_key)
        return state.get("state") in ("delivered", "dead")

    async def _next_attempt(self, record_key: str) -> int:
        attempts = (await self._state(record_key)).get("attempts", 0)
        return (attempts if isinstance(attempts, int) else 0) + 1

    async def _state(self, record_key: str) -> dict[str, object]:
        try:
            entry = await self._deliveries.get(record_key)
        except KeyNotFoundError:
            return {}
        return dict(json.loads(entry.value or b"{}"))

    async def _subscription(self, subscription_id: str) -> dict[str, object] | None:
        try:
            entry = await self._secrets.get(subscription_id)
        except KeyNotFoundError:
            return None
        return dict(json.loads(entry.value or b"{}"))

    async def _record(
        self,
        request: notification_pb2.NotificationRequested,
        attempt: int,
        outcome: notification_pb2.DeliveryOutcome.ValueType,
        status: int,
        detail: str,
    ) -> None:
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
        await bus.publish_event(self._js, topology.NOTIFICATION_DELIVERED, event, msg_id=event.event_id)
