"""NATS JetStream wiring: connect, publish protobuf events, consume them with explicit outcomes.

Publishing always sets ``Nats-Msg-Id`` (JetStream drops a repeat inside the duplicate window) and the
trace context. A handler signals its outcome: return normally to ack (after its side effects), raise
``RetryLater`` to nak with a delay, raise ``Unprocessable`` to term the message and record why. Any other
exception is treated as transient, with a growing delay, until ``max_deliver`` runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass

import nats
from google.protobuf.message import Message
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import FetchTimeoutError
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from haven.kit import telemetry
from haven.kit.batch import Publish
from haven.kit.logs import log_event

_log = logging.getLogger(__name__)
_tracer = telemetry.tracer(__name__)


class RetryLater(Exception):
    """Raised by a handler when the message should be redelivered after ``delay`` seconds."""

    def __init__(self, reason: str, delay: float = 1.0) -> None:
        super().__init__(reason)
        self.delay = delay


class Unprocessable(Exception):
    """Raised by a handler for a message that can never be processed; it is terminated and logged."""


async def connect(
    url: str,
    name: str,
    *,
    on_disconnect: Callable[[], Awaitable[None]] | None = None,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
) -> NatsClient:
    """Connect to NATS; once connected, reconnect for ever (a restarting server is not a crash)."""
    callbacks: dict[str, Callable[[], Awaitable[None]]] = {}
    if on_disconnect is not None:
        callbacks["disconnected_cb"] = on_disconnect
    if on_reconnect is not None:
        callbacks["reconnected_cb"] = on_reconnect
    return await nats.connect(
        servers=[url],
        name=name,
        connect_timeout=2,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        allow_reconnect=True,
        **callbacks,
    )


async def publish_event(
    js: JetStreamContext,
    subject: str,
    event: Message,
    *,
    msg_id: str,
    headers: Mapping[str, str] | None = None,
) -> int:
    """Publish a protobuf event with de-duplication and trace headers; return its stream sequence."""
    with producer_span(subject, msg_id):
        all_headers = telemetry.inject_headers(dict(headers or {}))
        all_headers["Nats-Msg-Id"] = msg_id
        ack = await js.publish(subject, event.SerializeToString(), headers=all_headers)
        return int(ack.seq)


@contextlib.contextmanager
def producer_span(subject: str, msg_id: str) -> Iterator[Span]:
    """Open the PRODUCER span of one event's publish (``publish <subject>``), current while it is open.

    ``publish_event`` opens it itself; a caller sending an ``event_call`` in a batch opens it around
    building the call (whose trace headers then name this span) and sending the batch.
    """
    with _tracer.start_as_current_span(f"publish {subject}", kind=SpanKind.PRODUCER) as span:
        span.set_attribute("messaging.system", "nats")
        span.set_attribute("messaging.destination.name", subject)
        span.set_attribute("messaging.message.id", msg_id)
        yield span


def event_call(
    subject: str, event: Message, *, msg_id: str, headers: Mapping[str, str] | None = None
) -> Publish:
    """Return a protobuf event's publish as one call of a ``batch.send_all`` batch.

    The same message as ``publish_event`` (de-duplication id, the current trace context), to be
    acknowledged together with the writes it goes with; it opens no span of its own, so it belongs to
    the caller's.
    """
    all_headers = telemetry.inject_headers(dict(headers or {}))
    all_headers["Nats-Msg-Id"] = msg_id
    return Publish(subject, event.SerializeToString(), all_headers)


Handler = Callable[[Msg], Awaitable[None]]


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer: shared by every process of a service, so they split the work."""

    stream: str
    durable: str
    subjects: tuple[str, ...]
    max_deliver: int = 20  # below 1: redeliver for ever (the handler decides when to give up)
    ack_wait_seconds: float = 30.0
    max_ack_pending: int = 1000
    log_retries: bool = True  # False where retrying is routine (delivery to a partner that is down)


async def ensure_consumer(js: JetStreamContext, spec: ConsumerSpec) -> None:
    """Create or update the durable consumer so it matches the spec."""
    config = ConsumerConfig(
        durable_name=spec.durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        filter_subjects=list(spec.subjects),
        max_deliver=spec.max_deliver,
        ack_wait=spec.ack_wait_seconds,
        max_ack_pending=spec.max_ack_pending,
    )
    await js.add_consumer(spec.stream, config)


def _retry_delay(deliveries: int) -> float:
    """Return a delay growing with the number of deliveries, capped at one minute."""
    return float(min(60.0, 0.5 * 2 ** max(0, deliveries - 1)))


async def handle_message(msg: Msg, handler: Handler, spec: ConsumerSpec) -> None:
    """Run the handler on one message inside its trace and settle the message by the outcome."""
    parent = telemetry.extract_context(msg.headers)
    deliveries = msg.metadata.num_delivered
    with _tracer.start_as_current_span(
        f"process {msg.subject}", context=parent, kind=SpanKind.CONSUMER
    ) as span:
        span.set_attribute("messaging.system", "nats")
        span.set_attribute("messaging.destination.name", msg.subject)
        span.set_attribute("messaging.consumer.group.name", spec.durable)
        span.set_attribute("messaging.message.delivery_count", deliveries)
        try:
            await handler(msg)
        except RetryLater as retry:
            span.set_attribute("haven.outcome", "retry")
            if spec.log_retries:
                log_event(_log, "retrying message", logging.WARNING, subject=msg.subject, reason=str(retry))
            await msg.nak(delay=retry.delay)
            return
        except Unprocessable as bad:
            span.set_status(trace.Status(trace.StatusCode.ERROR, "unprocessable"))
            log_event(
                _log,
                "terminated unprocessable message",
                logging.ERROR,
                subject=msg.subject,
                reason=str(bad),
                stream_sequence=msg.metadata.sequence.stream,
            )
            await msg.term()
            return
        except Exception as error:
            span.record_exception(error)
            span.set_status(trace.Status(trace.StatusCode.ERROR, type(error).__name__))
            if 0 < spec.max_deliver <= deliveries:
                log_event(
                    _log,
                    "giving up on message",
                    logging.ERROR,
                    subject=msg.subject,
                    error=type(error).__name__,
                    stream_sequence=msg.metadata.sequence.stream,
                )
                await msg.term()
            else:
                _log.exception("handler failed; will retry", extra={"subject": msg.subject})
                await msg.nak(delay=_retry_delay(deliveries))
            return
        await msg.ack()


async def consume(
    js: JetStreamContext,
    spec: ConsumerSpec,
    handler: Handler,
    stop: asyncio.Event,
    *,
    batch: int = 32,
) -> None:
    """Fetch and handle messages until ``stop`` is set; the batch in hand is finished before returning."""
    await ensure_consumer(js, spec)
    subscription = await js.pull_subscribe_bind(spec.durable, spec.stream)
    try:
        while not stop.is_set():
            try:
                messages = await subscription.fetch(batch, timeout=0.5)
            except (TimeoutError, FetchTimeoutError, NatsTimeoutError):
                continue
            for msg in messages:
                await handle_message(msg, handler, spec)
    finally:
        await subscription.unsubscribe()
