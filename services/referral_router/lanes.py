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

A fetch is one JetStream pull request (``CONSUMER.MSG.NEXT``, ``batch`` messages, expiring after
``_PULL_EXPIRES``) answered to an inbox whose callback puts each message straight into its lane; the
request is over when its last message or its status (no messages, expired) arrives. nats-py's own
``fetch`` waits for each message in a task of its own with its own timer, which cost the router about
as much CPU per message as one acknowledged write; here a message costs a queue put.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import zlib
from collections.abc import Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from haven.kit import bus
from haven.kit.handles import connection_of

_log = logging.getLogger(__name__)

# A pull request stays open this long at the server (messages flow into it as they come), as
# ``bus.consume``'s fetch timeout; then the fetch loop looks at ``stop`` and asks again.
_PULL_EXPIRES = 0.5
# How long past its expiry a pull request may go unanswered before it is taken for lost.
_PULL_GRACE = 1.0
# After the consumer refused a pull (status 409: too many waiting, consumer deleted, ...).
_REFUSED_PAUSE = 0.1

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
        nc = connection_of(js)
        queues: list[asyncio.Queue[Msg | None]] = [asyncio.Queue() for _ in range(self._lanes)]
        pull = _Pull()

        async def arrived(msg: Msg) -> None:
            if pull.settle(msg):
                self._in_hand += 1
                queues[lane_of(self._key_of(msg), self._lanes)].put_nowait(msg)

        inbox = nc.new_inbox()
        subscription = await nc.subscribe(inbox, cb=arrived)
        workers = [asyncio.create_task(self._run_lane(queue)) for queue in queues]
        next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{self._spec.stream}.{self._spec.durable}"
        try:
            while not stop.is_set():
                if self._in_hand > self._batch // 2:
                    self._room.clear()
                    await self._room.wait()
                    continue
                wanted = self._batch - self._in_hand
                pull.start(wanted)
                request = {"batch": wanted, "expires": int(_PULL_EXPIRES * 1e9)}
                await nc.publish(next_subject, json.dumps(request).encode(), reply=inbox)
                if not await pull.finished(_PULL_EXPIRES + _PULL_GRACE):
                    continue  # no answer (the connection was re-established meanwhile): ask again
                if pull.refused:
                    await asyncio.sleep(_REFUSED_PAUSE)  # the consumer said no (409): do not spin
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


class _Pull:
    """The state of the one pull request in flight: how many messages it may still bring."""

    def __init__(self) -> None:
        self._left = 0
        self._over = asyncio.Event()
        self.refused = False

    def start(self, batch: int) -> None:
        """Note that a request for ``batch`` messages is going out."""
        self._left = batch
        self.refused = False
        self._over.clear()

    def settle(self, msg: Msg) -> bool:
        """Count one answer; True for a message to handle, False for a status that ends the request.

        A message of an earlier request (one taken for lost) counts as well: it is in hand all the same.
        """
        status = msg.headers.get("Status") if msg.headers else None
        if status is not None and not msg.data:
            self.refused = status == "409"
            self._over.set()  # 404 no messages, 408 expired, 409 refused: the request is over
            return False
        self._left -= 1
        if self._left <= 0:
            self._over.set()
        return True

    async def finished(self, timeout: float) -> bool:
        """Wait until the request is over; False when nothing ended it in ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await self._over.wait()
        except TimeoutError:
            return False
        return True
