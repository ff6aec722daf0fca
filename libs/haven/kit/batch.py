"""One wait for a batch of JetStream calls: KV writes, stream publishes and reads of a key.

Through nats-py each ``KeyValue.put``, ``js.publish`` or ``KeyValue.get`` is a request of its own, with
its own response future, timer and task. ``send_all`` sends every call of a batch with a reply subject
under one inbox per connection and waits once for all the answers: fewer objects and event-loop turns
per call (the services are CPU-bound), with the same calls, in the same order, all acknowledged before
it returns. (nats-py's own ``publish_async`` would do for writes, but it loses a refused write: its
reply handler raises the error instead of handing it to the waiting future.)

Answers, in the order of the calls: a ``KvWrite`` gives its revision (None for a create whose key
exists or existed); a ``Publish`` its stream sequence; a ``LastValue`` the key's value (None when
absent, deleted or empty). Any other refusal raises, once every answer is in. ``write_all`` is the
same for a batch of KV writes only.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from weakref import WeakKeyDictionary

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError

from haven.kit.handles import connection_of

# JetStream's "wrong last sequence" codes: the key of a create was written already.
_WRONG_LAST_SEQUENCE = (10071, 10164)
_NO_RESPONDERS = "503"
# An acknowledgement that stored the message: stream name, then sequence, nothing else.
_PLAIN_ACK = re.compile(rb'\{"stream":"[^"]*","seq":(\d+)\}')
# JetStream's "no message found": the key was never written.
_NO_MESSAGE = 10037
# The header a KV delete or purge leaves on the key's last message.
_REMOVED = re.compile(rb"^KV-Operation:\s*(DEL|PURGE)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class KvWrite:
    """One KV write of a batch: ``create`` only if the key has never been written."""

    bucket: str
    key: str
    value: bytes
    create: bool = False


@dataclass(frozen=True)
class Publish:
    """A message published to a stream, acknowledged with its stream sequence."""

    subject: str
    data: bytes
    headers: Mapping[str, str] | None = None


@dataclass(frozen=True)
class LastValue:
    """A read of the current value of a KV key (the stream's last message on the key's subject)."""

    bucket: str
    key: str


Call = KvWrite | Publish | LastValue
Answer = int | bytes | None


class _Batch:
    """The answers awaited by one ``send_all``: one future for the whole batch, not one per call."""

    def __init__(self, size: int, deadline: float) -> None:
        self.answers: list[Msg | None] = [None] * size
        self.remaining = size
        self.deadline = deadline  # on the event loop's clock
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def arrived(self, index: int, msg: Msg) -> None:
        """Keep one answer; complete the batch once every call is answered."""
        if self.answers[index] is None:
            self.answers[index] = msg
            self.remaining -= 1
            if self.remaining == 0 and not self.done.done():
                self.done.set_result(None)

    def expire(self) -> None:
        """Give up on the answers still missing (the batch's time is up)."""
        if not self.done.done():
            self.done.set_exception(TimeoutError(f"{self.remaining} JetStream answers missing"))


class _Replies:
    """The answers of one connection's calls, routed by reply subject to their batch."""

    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox()
        self._waiting: dict[str, tuple[_Batch, int]] = {}
        self._numbers = itertools.count()
        self._subscribed: asyncio.Task[object] | None = None
        self.pending: set[_Batch] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def ready(self) -> None:
        """Subscribe to the inbox once (concurrent first callers wait for the same subscription)."""
        if self._subscribed is None:
            subscribing = self._nc.subscribe(f"{self._prefix}.*", cb=self._arrived)
            self._subscribed = asyncio.ensure_future(subscribing)
            self._sweeper = asyncio.create_task(self._sweep())
        if not self._subscribed.done():  # after the first time: no shield, no wait
            await asyncio.shield(self._subscribed)
        self._subscribed.result()

    async def _sweep(self) -> None:
        """Fail the batches past their deadline, a few times a second, until the connection closes.

        One task for every batch instead of a timer each: with a timer per batch, the event loop's
        timer heap (compared in Python) cost the router about a tenth of the CPU of its calls.
        """
        loop = asyncio.get_running_loop()
        while not self._nc.is_closed:
            await asyncio.sleep(_SWEEP_EVERY)
            now = loop.time()
            for batch in [b for b in self.pending if b.deadline <= now]:
                batch.expire()

    def expect(self, batch: _Batch, index: int) -> str:
        """Return a fresh reply subject whose answer goes to ``batch`` as its ``index``-th."""
        reply = f"{self._prefix}.{next(self._numbers)}"
        self._waiting[reply] = (batch, index)
        return reply

    def forget(self, reply: str) -> None:
        """Stop waiting for ``reply`` (answered, or given up on)."""
        self._waiting.pop(reply, None)

    async def _arrived(self, msg: Msg) -> None:
        waiting = self._waiting.pop(msg.subject, None)
        if waiting is not None:
            waiting[0].arrived(waiting[1], msg)


# How often the batches are checked against their deadline: a batch fails at most this much late.
_SWEEP_EVERY = 0.25

_replies: WeakKeyDictionary[NatsClient, _Replies] = WeakKeyDictionary()


async def send_all(js: JetStreamContext, calls: Sequence[Call], timeout: float = 5.0) -> list[Answer]:
    """Send every call at once, wait for all the answers and return them in order.

    Raises TimeoutError when an answer is still missing ``timeout`` seconds on (up to ``_SWEEP_EVERY``
    later).
    """
    if not calls:
        return []
    nc = connection_of(js)
    replies = _replies.get(nc)
    if replies is None:
        replies = _replies[nc] = _Replies(nc)
    await replies.ready()
    batch = _Batch(len(calls), asyncio.get_running_loop().time() + timeout)
    subjects: list[str] = []
    replies.pending.add(batch)  # the sweeper fails it after ``timeout`` (no timer of its own)
    try:
        for index, call in enumerate(calls):
            reply = replies.expect(batch, index)
            subjects.append(reply)
            if isinstance(call, KvWrite):
                headers = {"Nats-Expected-Last-Subject-Sequence": "0"} if call.create else None
                await nc.publish(f"$KV.{call.bucket}.{call.key}", call.value, reply=reply, headers=headers)
            elif isinstance(call, Publish):
                await nc.publish(
                    call.subject, call.data, reply=reply, headers=dict(call.headers) if call.headers else None
                )
            else:
                request = json.dumps({"last_by_subj": f"$KV.{call.bucket}.{call.key}"}).encode()
                await nc.publish(f"$JS.API.STREAM.MSG.GET.KV_{call.bucket}", request, reply=reply)
        await batch.done
    except BaseException:
        for reply in subjects:  # an answered reply is forgotten as it arrives
            replies.forget(reply)
        raise
    finally:
        replies.pending.discard(batch)
    answers = [answer for answer in batch.answers if answer is not None]  # all of them, once done
    return [_answer(call, answer) for call, answer in zip(calls, answers, strict=True)]


async def write_all(
    js: JetStreamContext, writes: Sequence[KvWrite], timeout: float = 5.0
) -> list[int | None]:
    """Send every KV write at once and wait for all their acknowledgements; return each revision.

    A create whose key exists (or existed: a deleted key counts) gives None in its place instead of a
    revision, so a caller repeating a batch can tell "already there" from "stored now". Any other
    refusal raises (the first, once all are in), as does a batch not acknowledged within ``timeout``.
    """
    answers = await send_all(js, writes, timeout)
    return [answer if isinstance(answer, int) else None for answer in answers]


def _answer(call: Call, answer: Msg) -> Answer:
    if answer.headers and answer.headers.get("Status") == _NO_RESPONDERS:
        raise NoStreamResponseError
    if not isinstance(call, LastValue) and (seq := _plain_ack(answer.data)) is not None:
        return seq
    data = json.loads(answer.data)
    error = data.get("error")
    if error is None:
        return _value(data["message"]) if isinstance(call, LastValue) else int(data["seq"])
    if isinstance(call, LastValue) and error.get("err_code") == _NO_MESSAGE:
        return None
    if isinstance(call, KvWrite) and call.create and error.get("err_code") in _WRONG_LAST_SEQUENCE:
        return None
    APIError.from_error(error)  # raises the error as its own class (BadRequestError, ...)
    raise APIError(**error)  # not reached


def _plain_ack(data: bytes) -> int | None:
    """Read the sequence of an acknowledgement without an error, such as ``{"stream":"S","seq":7}``.

    Most answers of a routing are these; reading the number where it is saves a JSON decode each.
    None for anything else (an error, a duplicate, a domain): the caller decodes it in full.
    """
    match = _PLAIN_ACK.fullmatch(data)
    return int(match[1]) if match else None


def _value(message: dict[str, str]) -> bytes | None:
    """Return the value of a KV entry read with STREAM.MSG.GET; None when its last message removed it."""
    if _REMOVED.search(base64.b64decode(message.get("hdrs") or "")):
        return None
    return base64.b64decode(message.get("data") or "") or None
