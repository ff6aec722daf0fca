"""A dead receiver beside healthy ones, on a real nats-server with real sockets (issue 6).

A "dead" receiver accepts TCP connections and never answers, so every attempt costs the whole
webhook timeout. What must hold: items that queued for its endpoint while its first attempts were
timing out are not each sent once its breaker is open; its connections do not take a healthy
receiver's; its heartbeat does not hold the other subscriptions' heartbeats; and event numbers stay
contiguous when the counter is cached and two processes number at once.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import httpx
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from haven.kit import bus, topology
from haven.kit.clock import system_clock
from haven.notification.v1 import notification_pb2
from services.notifier.deliverer import Deliverer, delivery_consumer
from services.notifier.domain.backport import SubscriptionEvent
from services.notifier.domain.delivery import EndpointBreakers, RetrySchedule
from services.notifier.heartbeat import Heartbeats
from services.notifier.lanes import LaneRunner, lane_key
from services.notifier.ledger import DeliveryLedger, record_key
from services.notifier.subscriptions import SubscriptionCache
from tests.support.receivers import HttpReceiver

SECRET = "d" * 40


@dataclass
class BlackHole:
    """Accepts connections and never answers; counts them and keeps them open until closed."""

    connections: list[socket.socket] = field(default_factory=list)
    _sock: socket.socket = field(default_factory=socket.socket)

    def start(self) -> BlackHole:
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections.append(conn)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}/dead"

    def close(self) -> None:
        self._sock.close()
        for conn in self.connections:
            conn.close()


async def until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    """Wait without blocking the loop until ``predicate`` holds (the bound only stops a hung test)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def subscribe(js: JetStreamContext, endpoint: str, **extra: object) -> str:
    subscription_id = str(uuid.uuid4())
    record = {"secret": SECRET, "organisation_id": "org-d", "endpoint": endpoint, "topic": "t", **extra}
    bucket = await js.key_value(topology.BUCKET_SUBSCRIPTIONS)
    await bucket.put(subscription_id, json.dumps(record).encode())
    return subscription_id


async def request(js: JetStreamContext, subscription_id: str, referral_id: str) -> str:
    notification_id = str(uuid.uuid4())
    message = notification_pb2.NotificationRequested(
        event_id=str(uuid.uuid4()),
        referral_id=referral_id,
        notification_id=notification_id,
        recipient_organisation_id="org-d",
        subscription_id=subscription_id,
        channel=notification_pb2.CHANNEL_REST_HOOK,
        event_type="referral-routed",
        payload_json=b'{"n":1}',
    )
    message.occurred_at.FromDatetime(datetime.now(UTC))
    await bus.publish_event(js, topology.NOTIFICATION_REQUESTED, message, msg_id=message.event_id)
    return notification_id


def referrals_in_distinct_lanes(subscription_id: str, count: int) -> list[str]:
    """Referral ids whose items go to ``count`` different lanes, so they are handled side by side."""
    found: dict[str, str] = {}
    while len(found) < count:
        referral_id = str(uuid.uuid4())
        probe = notification_pb2.NotificationRequested(
            subscription_id=subscription_id, referral_id=referral_id
        )
        found.setdefault(lane_key(probe, 16), referral_id)
    return list(found.values())


@asynccontextmanager
async def delivering(
    js: JetStreamContext, http: httpx.AsyncClient, breakers: EndpointBreakers, in_flight: int
) -> AsyncIterator[DeliveryLedger]:
    """Run the delivery side (lanes + deliverer) in this process with a durable consumer of its own."""
    await js.purge_stream("HAVEN_NOTIFICATIONS")
    subscriptions = SubscriptionCache(js)
    await subscriptions.start()
    ledger = await DeliveryLedger.open(js)
    schedule = RetrySchedule.parse("30s,60s")  # no retry comes back during a test
    deliverer = Deliverer(
        js, ledger, subscriptions, http, schedule, breakers, system_clock, endpoint_in_flight=in_flight
    )
    await deliverer.warm_up()
    spec = replace(delivery_consumer(schedule), durable=f"test-dead-{uuid.uuid4().hex[:8]}")
    stop = asyncio.Event()
    task = asyncio.create_task(
        LaneRunner(spec, deliverer.handle, parked_for=deliverer.parked_for).run(js, stop)
    )
    try:
        yield ledger
    finally:
        stop.set()
        await task
        await deliverer.aclose()
        await subscriptions.stop()


async def test_items_waiting_for_a_hanging_endpoint_are_not_sent_once_its_breaker_opens(
    nats_client: NatsClient,
) -> None:
    js = nats_client.jetstream()
    hole = BlackHole().start()
    try:
        dead_id = await subscribe(js, hole.url)
        referrals = referrals_in_distinct_lanes(dead_id, 3)
        # One attempt at a time to the endpoint, and one timeout opens its breaker for a minute.
        breakers = EndpointBreakers(failure_threshold=5, reset_after=60.0, timeout_threshold=1)
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(0.5)) as http,
            delivering(js, http, breakers, in_flight=1) as ledger,
        ):
            ids = [await request(js, dead_id, referral_id) for referral_id in referrals]
            # All three were taken in (a started record each) while the first attempt was hanging.
            records: list[dict[str, object]] = []

            async def settled() -> bool:
                nonlocal records
                records = [await ledger.record(record_key(n, dead_id)) for n in ids]
                holds = [await ledger.hold(dead_id, r) for r in referrals]
                return all(r.get("event_number") for r in records) and all(h is not None for h in holds)

            deadline = time.monotonic() + 15
            while not await settled():
                assert time.monotonic() < deadline, records
                await asyncio.sleep(0.05)
        attempts = sorted(int(str(r.get("attempts", 0))) for r in records)
        # One attempt timed out and opened the breaker; the two that waited for the slot were parked
        # (held, not attempted) instead of each spending another timeout on the dead receiver.
        assert attempts == [0, 0, 1], records
        assert len(hole.connections) == 1
    finally:
        hole.close()


async def test_a_dead_receivers_connections_do_not_take_a_healthy_receivers(nats_client: NatsClient) -> None:
    js = nats_client.jetstream()
    hole = BlackHole().start()
    healthy = HttpReceiver().start()
    try:
        dead_id = await subscribe(js, hole.url)
        healthy_id = await subscribe(js, f"{healthy.url}/hook")
        breakers = EndpointBreakers(failure_threshold=5, reset_after=60.0, timeout_threshold=5)
        # The client given to the deliverer allows one connection in all: were it the pool every
        # receiver shares, the dead receiver's hanging request would hold it for the whole timeout.
        shared = httpx.AsyncClient(timeout=httpx.Timeout(5.0), limits=httpx.Limits(max_connections=1))
        async with shared as http, delivering(js, http, breakers, in_flight=2) as ledger:
            dead_notification = await request(js, dead_id, str(uuid.uuid4()))
            await until(lambda: len(hole.connections) == 1)
            for _ in range(3):
                await request(js, healthy_id, str(uuid.uuid4()))
            await until(lambda: len(healthy.requests()) == 3)
            # Delivered while the dead receiver's one attempt is still hanging: it has no outcome yet.
            dead_record = await ledger.record(record_key(dead_notification, dead_id))
            assert "attempts" not in dead_record, dead_record
            assert len(hole.connections) == 1
    finally:
        hole.close()
        healthy.stop()


async def test_a_hanging_heartbeat_does_not_hold_the_other_subscriptions(nats_client: NatsClient) -> None:
    js = nats_client.jetstream()
    hole = BlackHole().start()
    healthy = HttpReceiver().start()
    backport = {"backport": True, "heartbeat_seconds": 1, "status": "active"}
    dead_id = await subscribe(js, hole.url, **backport)
    healthy_id = await subscribe(js, f"{healthy.url}/beat", **backport)
    subscriptions = SubscriptionCache(js)
    await subscriptions.start()
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as http:
            beats = Heartbeats(subscriptions, await DeliveryLedger.open(js), http, system_clock)
            # The dead subscription is known first, so a round that sent one heartbeat after another
            # would wait out its 30 s before the healthy one's.
            assert [s for s, _ in subscriptions.all() if s in (dead_id, healthy_id)] == [dead_id, healthy_id]
            beats.note_sent(dead_id)
            beats.note_sent(healthy_id)
            deadline = time.monotonic() + 15
            while not healthy.requests():
                assert time.monotonic() < deadline, "the healthy heartbeat never came"
                # A round only starts the heartbeats that are due; one that waited for each answer
                # would hang here for the dead receiver's 30 s (the bound stops it failing slowly).
                await asyncio.wait_for(beats.tick(), timeout=5)
                await asyncio.sleep(0.1)
            assert len(hole.connections) == 1  # the dead one's heartbeat went first and still hangs
            assert healthy.requests()[0].headers["x-haven-event-type"] == "heartbeat"
    finally:
        hole.close()
        healthy.stop()
        await subscriptions.stop()


async def test_event_numbers_stay_contiguous_when_two_processes_number_at_once(
    nats_client: NatsClient,
) -> None:
    js = nats_client.jetstream()
    subscription_id = str(uuid.uuid4())
    # Two ledgers are two processes: each caches the counter, and each is wrong after the other wrote.
    first, second = await DeliveryLedger.open(js), await DeliveryLedger.open(js)
    event = SubscriptionEvent(
        event_number=0,
        notification_id="n",
        event_type="referral-routed",
        referral_id="r",
        occurred_at=datetime.now(UTC),
        payload_json=b"{}",
    )
    numbers = await asyncio.gather(
        *(ledger.number_event(subscription_id, event) for _ in range(15) for ledger in (first, second))
    )
    assert sorted(numbers) == list(range(1, 31))
    assert await first.events_count(subscription_id) == 30
    stored = [await second.event(subscription_id, n) for n in range(1, 31)]
    assert [e.event_number for e in stored if e is not None] == list(range(1, 31))
