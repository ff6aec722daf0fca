"""The notifier's delivery against real HTTP receivers and a real JetStream: retries, dead letters, order.

The delivery machinery (lanes, deliverer, ledger) runs in this process over the session's nats-server;
receivers are real HTTP servers. Signatures are checked with an implementation written here from
docs/notifications.md, not with Haven's code.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from haven.kit import bus, topology
from haven.notification.v1 import notification_pb2
from services.notifier.ledger import DeliveryLedger, record_key
from services.notifier.mailer import Mailer
from services.notifier.operations import dead_letters, redrive
from tests.support.notifier_runtime import running_notifier
from tests.support.receivers import HttpReceiver, ReceivedRequest

SECRET = "s" * 40


def independent_verify(header: str, body: bytes, secret: str) -> bool:
    """Check `t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>` as a partner would."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        name, _, value = part.partition("=")
        fields.setdefault(name, []).append(value)
    stamp = fields["t"][0]
    expected = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return abs(time.time() - int(stamp)) < 300 and any(
        hmac.compare_digest(expected, v) for v in fields.get("v1", [])
    )


class DedupingPartner:
    """A receiver as the docs ask partners to write it: verify, de-duplicate on the key, then accept."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.calls = 0
        self.accepted: list[tuple[str, bytes]] = []  # (key, body) of each first acceptance
        self.repeats = 0
        self.bad_signatures = 0
        self.down = False
        self.receiver = HttpReceiver(answer=self.answer).start()

    def answer(self, request: ReceivedRequest) -> int:
        self.calls += 1
        if self.down or self.calls <= self.fail_first:
            return 503
        if not independent_verify(request.headers["x-haven-signature"], request.body, SECRET):
            self.bad_signatures += 1
            return 401
        key = request.headers["x-haven-notification-id"]
        if any(k == key for k, _ in self.accepted):
            self.repeats += 1
        else:
            self.accepted.append((key, request.body))
        return 200


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait (without blocking the loop the notifier runs on) until `predicate` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def notifier(
    js: JetStreamContext,
    schedule: str = "100ms,200ms",
    breaker: tuple[int, float] = (5, 30.0),
    mailer: Mailer | None = None,
) -> AsyncIterator[None]:
    """Run the delivery side of the notifier in this process on an empty work-item stream."""
    await js.purge_stream("HAVEN_NOTIFICATIONS")
    async with running_notifier(js, schedule=schedule, breaker=breaker, mailer=mailer, webhook_timeout=1.0):
        yield


async def subscribe(js: JetStreamContext, endpoint: str) -> str:
    subscription_id = str(uuid.uuid4())
    record = {"secret": SECRET, "organisation_id": "org-x", "endpoint": endpoint, "topic": "t"}
    await (await js.key_value(topology.BUCKET_SUBSCRIPTIONS)).put(
        subscription_id, json.dumps(record).encode()
    )
    return subscription_id


async def request(js: JetStreamContext, subscription_id: str, referral_id: str, n: int = 0) -> str:
    notification_id = str(uuid.uuid4())
    message = notification_pb2.NotificationRequested(
        event_id=str(uuid.uuid4()),
        referral_id=referral_id,
        notification_id=notification_id,
        recipient_organisation_id="org-x",
        subscription_id=subscription_id,
        channel=notification_pb2.CHANNEL_REST_HOOK,
        event_type="referral-routed",
        payload_json=json.dumps({"referral_id": referral_id, "n": n}, separators=(",", ":")).encode(),
    )
    message.occurred_at.FromDatetime(datetime.now(UTC))
    message.due_by.FromDatetime(datetime.now(UTC))
    await bus.publish_event(js, topology.NOTIFICATION_REQUESTED, message, msg_id=message.event_id)
    return notification_id


async def outcomes(js: JetStreamContext, notification_id: str) -> list[tuple[int, int]]:
    """Return (attempt, outcome) of every NotificationDelivered about one notification."""
    sub = await js.subscribe(topology.NOTIFICATION_DELIVERED, ordered_consumer=True)
    found = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.3)
            except Exception:
                break
            event = notification_pb2.NotificationDelivered.FromString(msg.data)
            if event.notification_id == notification_id:
                found.append((event.attempt, int(event.outcome)))
    finally:
        await sub.unsubscribe()
    return sorted(found)


async def test_fails_twice_then_accepts_exactly_once_with_a_valid_signature(nats_client: NatsClient) -> None:
    js = nats_client.jetstream()
    partner = DedupingPartner(fail_first=2)
    try:
        subscription_id = await subscribe(js, f"{partner.receiver.url}/hook")
        async with notifier(js):
            notification_id = await request(js, subscription_id, str(uuid.uuid4()))
            await until(lambda: len(partner.accepted) == 1)
            ledger = await DeliveryLedger.open(js)
            key = record_key(notification_id, subscription_id)
            await until_async(lambda: ledger.record(key), lambda r: r.get("state") == "delivered")
        assert partner.calls == 3 and partner.repeats == 0 and partner.bad_signatures == 0
        assert partner.accepted[0][0] == notification_id
        record = await ledger.record(key)
        assert record["attempts"] == 3 and record["last_status"] == 200 and record["event_number"] == 1
        assert await outcomes(js, notification_id) == [
            (1, notification_pb2.DELIVERY_OUTCOME_RETRYING),
            (2, notification_pb2.DELIVERY_OUTCOME_RETRYING),
            (3, notification_pb2.DELIVERY_OUTCOME_DELIVERED),
        ]
    finally:
        partner.receiver.stop()


async def until_async(
    read: Callable[[], object], holds: Callable[[dict[str, object]], bool], timeout: float = 10.0
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        value = await read()  # type: ignore[misc]
        if holds(value):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in time: {value}")
        await asyncio.sleep(0.05)


async def test_dead_letter_after_the_schedule_then_redrive_delivers_once(nats_client: NatsClient) -> None:
    js = nats_client.jetstream()
    partner = DedupingPartner()
    partner.down = True
    try:
        subscription_id = await subscribe(js, f"{partner.receiver.url}/hook")
        async with notifier(js):
            notification_id = await request(js, subscription_id, str(uuid.uuid4()))
            key = record_key(notification_id, subscription_id)
            ledger = await DeliveryLedger.open(js)
            await until_async(lambda: ledger.record(key), lambda r: r.get("state") == "dead")
            assert partner.calls == 3  # the first attempt and the two retries of the schedule
            letters = [d for d in await dead_letters(js) if d.key == key]
            assert len(letters) == 1
            summary = letters[0].summary()
            assert summary["attempts"] == 3 and summary["last_status"] == 503
            assert "payload" not in json.dumps(summary)

            partner.down = False
            await redrive(js, key)
            await until(lambda: len(partner.accepted) == 1)
            await until_async(lambda: ledger.record(key), lambda r: r.get("state") == "delivered")
            assert not [d for d in await dead_letters(js) if d.key == key]
        record = await ledger.record(key)
        assert record["attempts"] == 4 and record["redrives"] == 1
        assert partner.accepted[0][0] == notification_id and partner.repeats == 0
        assert [o for _, o in await outcomes(js, notification_id)] == [
            notification_pb2.DELIVERY_OUTCOME_RETRYING,
            notification_pb2.DELIVERY_OUTCOME_RETRYING,
            notification_pb2.DELIVERY_OUTCOME_DEAD_LETTERED,
            notification_pb2.DELIVERY_OUTCOME_DELIVERED,
        ]
    finally:
        partner.receiver.stop()


async def test_a_redirect_is_a_failed_attempt_and_is_never_followed(nats_client: NatsClient) -> None:
    # A child's signed projection goes to the registered URL only, whatever the receiver answers.
    js = nats_client.jetstream()
    elsewhere = HttpReceiver().start()
    redirecting = HttpReceiver(answer=lambda _: 307, location=f"{elsewhere.url}/other").start()
    try:
        subscription_id = await subscribe(js, f"{redirecting.url}/hook")
        async with notifier(js, schedule="100ms"):
            notification_id = await request(js, subscription_id, str(uuid.uuid4()))
            key = record_key(notification_id, subscription_id)
            ledger = await DeliveryLedger.open(js)
            await until_async(lambda: ledger.record(key), lambda r: r.get("state") == "dead")
        record = await ledger.record(key)
        assert record["last_status"] == 307 and record["attempts"] == 2
        assert len(redirecting.requests("/hook")) == 2 and elsewhere.requests() == []
    finally:
        redirecting.stop()
        elsewhere.stop()


async def test_order_per_referral_holds_while_the_first_is_retried(nats_client: NatsClient) -> None:
    js = nats_client.jetstream()
    partner = DedupingPartner(fail_first=2)
    try:
        subscription_id = await subscribe(js, f"{partner.receiver.url}/hook")
        referral_id = str(uuid.uuid4())
        async with notifier(js, schedule="200ms,400ms,800ms"):
            sent = [await request(js, subscription_id, referral_id, n) for n in range(4)]
            await until(lambda: len(partner.accepted) == 4)
        assert [key for key, _ in partner.accepted] == sent
    finally:
        partner.receiver.stop()


async def test_a_hanging_endpoint_does_not_slow_a_healthy_one(nats_client: NatsClient) -> None:
    js = nats_client.jetstream()

    def hang(_: ReceivedRequest) -> int:
        time.sleep(0.9)
        return 200

    hanging = HttpReceiver(answer=hang).start()
    healthy = DedupingPartner()
    try:
        slow_id = await subscribe(js, f"{hanging.url}/slow")
        fast_id = await subscribe(js, f"{healthy.receiver.url}/fast")
        async with notifier(js):
            for n in range(5):
                await request(js, slow_id, str(uuid.uuid4()), n)
            started = time.monotonic()
            for n in range(5):
                await request(js, fast_id, str(uuid.uuid4()), n)
            await until(lambda: len(healthy.accepted) == 5, timeout=5)
            healthy_seconds = time.monotonic() - started
        # Sequential delivery would put the healthy ones behind 5 x 0.9 s of the hanging receiver.
        assert healthy_seconds < 0.8, healthy_seconds
    finally:
        hanging.stop()
        healthy.receiver.stop()
