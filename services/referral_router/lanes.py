"""Several referrals at once per process, each referral's messages one after another: lanes.

``bus.consume`` handles a fetched batch one message after another, so a process would route one
referral per round trip. Here one fetch loop sorts each message into a lane by a hash of its referral
id, and the lanes run side by side, each settling its messages in stream order through
``bus.handle_message`` (ack after the side effects, nak with a delay, term: as every consumer does).
A process thus routes up to ``lanes`` referrals at once, while two messages of one referral never
overlap in it and keep the order the stream gave them.

The fetch loop takes more once no more than half of ``batch`` messages are in hand (fetching in
halves rather than one message at a time, as each fetch is a round trip), so a process does not hoard
messages another router process could take, and a message never waits in a lane for long (well inside
the consumer's ack wait). On stop the fetch ends and the lanes finish what they hold,
as ``bus.consume`` finishes its batch; if the process is cancelled instead, the messages in hand are
redelivered, which every handler of the router tolerates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Callable

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import FetchTimeoutError

from haven.kit import bus

_log = logging.getLogger(__name__)

# Returns the key whose messages must stay in order (the referral id); "" when it cannot be read.
KeyOf = Callable[[Msg], str]


def lane_of(key: str, lanes: int) -> int:
    """Return the lane of a key: always the same one for the same key."""
    return zlib.crc32(key.encode()) % max(1, lanes)


class LaneConsumer:
    """Consumes one durable consumer with ``lanes`` lanes, in order per key within each lane."""

    def __init__(
        self, spec: bus.ConsumerSpec, handler: bus.Handler, key_of: KeyOf, *, lanes: int, batch: int
    ) -> None:
        self._spec = spec
        self._handler = handler
        self._key_of = key_of
        self._lanes = max(1, lanes)
        self._batch = max(1, batch)
        self._in_hand = 0
        self._room = asyncio.Event()
        self._room.set()

    async def run(self, js: JetStreamContext, stop: asyncio.Event) -> None:
        """Fetch and dispatch until ``stop`` is set, then let the lanes finish the messages in hand."""
        await bus.ensure_consumer(js, self._spec)
        subscription = await js.pull_subscribe_bind(self._spec.durable, self._spec.stream)
        queues: list[asyncio.Queue[Msg | None]] = [asyncio.Queue() for _ in range(self._lanes)]
        workers = [asyncio.create_task(self._run_lane(queue)) for queue in queues]
        try:
            while not stop.is_set():
                if self._in_hand > self._batch // 2:
                    self._room.clear()
                    await self._room.wait()
                    continue
                try:
                    messages = await subscription.fetch(self._batch - self._in_hand, timeout=0.5)
                except (TimeoutError, FetchTimeoutError, NatsTimeoutError):
                    continue
                for msg in messages:
                    self._in_hand += 1
                    queues[lane_of(self._key_of(msg), self._lanes)].put_nowait(msg)
        except BaseException:
            for worker in workers:
                worker.cancel()
            raise
        else:
            for queue in queues:
                queue.put_nowait(None)  # each lane ends after the messages it holds
            await asyncio.gather(*workers)
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def _run_lane(self, queue: asyncio.Queue[Msg | None]) -> None:
        while (msg := await queue.get()) is not None:
            try:
                await bus.handle_message(msg, self._handler, self._spec)
            except Exception:
                # Settling failed (the connection went away): JetStream redelivers after the ack wait.
                _log.exception("could not settle a message", extra={"subject": msg.subject})
            finally:
                self._in_hand -= 1
                if self._in_hand <= self._batch // 2:
                    self._room.set()
