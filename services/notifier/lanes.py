"""Concurrent delivery across endpoints, in order per referral: lanes (a task and a queue each).

``bus.consume`` handles a fetched batch one message after another, so one slow receiver would make
every other wait for its timeout. Here the fetch loop only sorts messages into lanes: a subscription
has ``stripes`` lanes and a referral always goes to the same one (a hash of its id), so each lane
delivers one message at a time (keeping a recipient's order per referral) while a busy subscription
still gets several deliveries at once, and lanes run side by side. A lane that is full (a slow
receiver with a backlog) refuses more for a short while (nak with a
delay), so its backlog stays in JetStream and cannot take up the consumer's whole ack window. A lane
whose endpoint is known to be down (``parked_for``: its circuit breaker is open) refuses new items at
once, without a KV read or an attempt, with a delay until the breaker lets a probe through: a dead
endpoint's backlog costs one cheap nak per item per breaker period, not fetch slots on every fetch.
Messages queued in a lane are kept alive with in-progress acks. On stop, the fetch loop ends, each lane
finishes the message in hand, and queued ones are handed back (nak) for the next process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import FetchTimeoutError

from haven.kit import bus
from haven.kit.logs import log_event
from haven.notification.v1 import notification_pb2

_log = logging.getLogger(__name__)

# Lanes per subscription. A lane delivers one item at a time, and an item's turn is mostly KV round
# trips (a few milliseconds on a quiet machine, tens when the CPU is contended), so with few lanes a
# busy subscription's items queue behind each other's round trips (head-of-line blocking between
# unrelated referrals) and near saturation every extra load (a dead receiver's items) multiplies the
# wait. 16 lanes keep a subscription well below that at hundreds of items a second; the POST itself is
# still capped per endpoint by the deliverer (``endpoint_in_flight``).
DEFAULT_STRIPES = 16
# Items queued per lane before more are sent back (16 x 8: the same 128 per subscription as 4 x 32).
DEFAULT_LANE_CAPACITY = 8
# Seconds a message refused by a full lane waits in JetStream before it is offered again.
OVERFLOW_DELAY_SECONDS = 1.0
# How far past the time it was refused for a refused message may come back before a lane stops waiting.
_REFUSAL_MARGIN_SECONDS = 10.0

# Seconds a work item must wait before its endpoint may be called (0: go now).
ParkedFor = Callable[[notification_pb2.NotificationRequested], float]


def lane_key(request: notification_pb2.NotificationRequested, stripes: int) -> str:
    """Return the lane of a work item: its subscription and the stripe its referral hashes to."""
    stripe = zlib.crc32(request.referral_id.encode()) % max(1, stripes)
    return f"{request.subscription_id}#{stripe}"


@dataclass
class _Lane:
    queue: asyncio.Queue[tuple[Msg, notification_pb2.NotificationRequested]]
    task: asyncio.Task[None] | None = None
    current: Msg | None = None
    # The first message a full lane refused, and until when later ones are refused behind it: so a
    # newer message cannot overtake one that was sent back while the lane was full.
    refused_from: int | None = None
    refused_until: float = 0.0


class LaneRunner:
    """Runs the handler with one sequential lane per subscription and the lanes concurrently."""

    def __init__(
        self,
        spec: bus.ConsumerSpec,
        handler: bus.Handler,
        *,
        lane_capacity: int = DEFAULT_LANE_CAPACITY,
        batch: int = 64,
        parked_for: ParkedFor | None = None,
        stripes: int = DEFAULT_STRIPES,
    ) -> None:
        self._spec = spec
        self._handler = handler
        self._capacity = lane_capacity
        self._batch = batch
        self._parked_for = parked_for
        self._stripes = stripes
        self._lanes: dict[str, _Lane] = {}
        self._rng = random.Random()

    async def run(self, js: JetStreamContext, stop: asyncio.Event) -> None:
        """Fetch and dispatch until ``stop`` is set, then let the lanes finish the message in hand."""
        await bus.ensure_consumer(js, self._spec)
        subscription = await js.pull_subscribe_bind(self._spec.durable, self._spec.stream)
        keep_alive = asyncio.create_task(self._keep_alive(stop))
        try:
            while not stop.is_set():
                try:
                    messages = await subscription.fetch(self._batch, timeout=0.5)
                except (TimeoutError, FetchTimeoutError, NatsTimeoutError):
                    continue
                for msg in messages:
                    await self._dispatch(msg)
        finally:
            keep_alive.cancel()
            await self._drain()
            await subscription.unsubscribe()

    async def _dispatch(self, msg: Msg) -> None:
        try:
            request = notification_pb2.NotificationRequested.FromString(msg.data)
            key = lane_key(request, self._stripes)
        except Exception:
            log_event(_log, "terminated undecodable work item", logging.ERROR, subject=msg.subject)
            await msg.term()
            return
        lane = self._lanes.get(key)
        if lane is None:
            lane = _Lane(asyncio.Queue())
            lane.task = asyncio.create_task(self._run_lane(lane))
            self._lanes[key] = lane
        sequence = int(msg.metadata.sequence.stream)
        now = time.monotonic()
        if lane.refused_from is not None and now > lane.refused_until:
            lane.refused_from = None  # it went to another process, or was settled: stop waiting for it
        behind_refused = lane.refused_from is not None and sequence > lane.refused_from
        delay = self._parked_delay(request)
        if not delay and (behind_refused or lane.queue.qsize() >= self._capacity):
            delay = OVERFLOW_DELAY_SECONDS
        if delay > 0:
            await self._refuse(lane, msg, delay)
            return
        if sequence == lane.refused_from:
            lane.refused_from = None
        lane.queue.put_nowait((msg, request))

    def _parked_delay(self, request: notification_pb2.NotificationRequested) -> float:
        parked = self._parked_for(request) if self._parked_for is not None else 0.0
        # Spread a backlog's return over a tenth of the wait, so it does not all come back at once.
        return parked + self._rng.uniform(0.0, parked / 10) if parked > 0 else 0.0

    async def _refuse(self, lane: _Lane, msg: Msg, delay: float) -> None:
        """Send a message back to wait in JetStream; later ones of its lane may not overtake it."""
        sequence = int(msg.metadata.sequence.stream)
        if lane.refused_from is None or sequence < lane.refused_from:
            lane.refused_from = sequence
        if sequence <= lane.refused_from:
            lane.refused_until = max(lane.refused_until, time.monotonic() + delay + _REFUSAL_MARGIN_SECONDS)
        with contextlib.suppress(Exception):
            await msg.nak(delay=delay)

    async def _run_lane(self, lane: _Lane) -> None:
        while True:
            msg, request = await lane.queue.get()
            lane.current = msg
            try:
                # The endpoint may have gone down while this waited: send it back without a try.
                delay = self._parked_delay(request)
                if delay > 0:
                    await self._refuse(lane, msg, delay)
                else:
                    await bus.handle_message(msg, self._handler, self._spec)
            except Exception:
                _log.exception("lane failed to settle a message")
            finally:
                lane.current = None

    async def _keep_alive(self, stop: asyncio.Event) -> None:
        """Tell JetStream that queued messages are still being worked on, well inside the ack wait."""
        period = max(1.0, self._spec.ack_wait_seconds / 3)
        while not stop.is_set():
            await asyncio.sleep(period)
            for lane in list(self._lanes.values()):
                queued = [m for m, _ in list(lane.queue._queue)]  # type: ignore[attr-defined]
                for msg in [lane.current, *queued]:
                    if msg is not None:
                        with contextlib.suppress(Exception):
                            await msg.in_progress()

    async def _drain(self) -> None:
        for lane in self._lanes.values():
            while not lane.queue.empty():
                msg, _ = lane.queue.get_nowait()
                with contextlib.suppress(Exception):
                    await msg.nak()
        # Each lane now finishes only the message in hand (its queue is empty), then waits idle.
        while any(lane.current is not None for lane in self._lanes.values()):
            await asyncio.sleep(0.02)
        for lane in self._lanes.values():
            if lane.task is not None:
                lane.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await lane.task
