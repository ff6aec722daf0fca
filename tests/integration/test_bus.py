"""The bus kit against a real nats-server: de-duplication, ack, retry and term outcomes, topology."""

from __future__ import annotations

import asyncio
import uuid

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from haven.kit import bus
from haven.kit.topology import REFERRAL_RECEIVED, ensure_topology
from haven.referral.v1 import referral_pb2


def _event(referral_id: str) -> referral_pb2.ReferralReceived:
    return referral_pb2.ReferralReceived(event_id=str(uuid.uuid4()), referral_id=referral_id)


async def _run_consumer(nats_client: NatsClient, durable: str, handler: bus.Handler, seconds: float) -> None:
    stop = asyncio.Event()
    spec = bus.ConsumerSpec(stream="HAVEN_REFERRALS", durable=durable, subjects=(REFERRAL_RECEIVED,))
    task = asyncio.create_task(bus.consume(nats_client.jetstream(), spec, handler, stop))
    await asyncio.sleep(seconds)
    stop.set()
    await task


async def test_topology_is_idempotent(nats_client: NatsClient) -> None:
    js = nats_client.jetstream()
    await ensure_topology(js)
    await ensure_topology(js)
    info = await js.stream_info("HAVEN_REFERRALS")
    assert REFERRAL_RECEIVED in (info.config.subjects or [])


async def test_repeated_msg_id_is_stored_once(nats_client: NatsClient) -> None:
    js = nats_client.jetstream()
    event = _event(str(uuid.uuid4()))
    first = await bus.publish_event(js, REFERRAL_RECEIVED, event, msg_id=event.event_id)
    second = await bus.publish_event(js, REFERRAL_RECEIVED, event, msg_id=event.event_id)
    assert first == second


async def test_publish_carries_trace_context_header(nats_client: NatsClient) -> None:
    from haven.kit import telemetry

    telemetry.configure_tracing("test")
    js = nats_client.jetstream()
    event = _event("traced")
    with telemetry.tracer("test").start_as_current_span("root"):
        trace_id = telemetry.current_trace_id()
        sequence = await bus.publish_event(js, REFERRAL_RECEIVED, event, msg_id=event.event_id)
    stored = await js.get_msg("HAVEN_REFERRALS", sequence)
    assert stored.headers is not None
    assert stored.headers["traceparent"].split("-")[1] == trace_id
    assert stored.headers["Nats-Msg-Id"] == event.event_id


async def test_retry_later_redelivers_and_unprocessable_terminates(nats_client: NatsClient) -> None:
    js = nats_client.jetstream()
    retried, poisoned = f"retry-{uuid.uuid4()}", f"poison-{uuid.uuid4()}"
    durable = f"test-{uuid.uuid4().hex[:8]}"
    for referral_id in (retried, poisoned):
        event = _event(referral_id)
        await bus.publish_event(js, REFERRAL_RECEIVED, event, msg_id=event.event_id)
    seen: dict[str, int] = {}

    async def handler(msg: Msg) -> None:
        referral_id = referral_pb2.ReferralReceived.FromString(msg.data).referral_id
        seen[referral_id] = seen.get(referral_id, 0) + 1
        if referral_id == retried and seen[referral_id] == 1:
            raise bus.RetryLater("not yet", delay=0.1)
        if referral_id == poisoned:
            raise bus.Unprocessable("can never be handled")

    await _run_consumer(nats_client, durable, handler, seconds=1.5)
    assert seen[retried] == 2
    assert seen[poisoned] == 1
    info = await js.consumer_info("HAVEN_REFERRALS", durable)
    assert info.num_ack_pending == 0
    assert info.num_pending == 0
