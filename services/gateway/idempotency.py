"""Answer a repeated request with the answer the first one got, even when copies arrive at once.

The first request to claim a key (KV create, which only one writer can win) does the work and then
stores its answer under the key; a copy that loses the claim waits for that answer and returns it.
A claim left by a request that died is taken over once it is older than the wait limit; when the
claim names the referral that request was storing, ``on_stale`` may finish that referral instead (its
intake record holds all of it) so the retry gets the answer the first request would have given.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue


@dataclass(frozen=True)
class StoredAnswer:
    """The answer given to the first request with a key."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str]


class IdempotencyTimeoutError(Exception):
    """The first request with this key has not answered within the wait limit."""


def idempotency_key(kind: str, organisation_id: str, value: str) -> str:
    """Return the KV key for a request key of one organisation (hashed: it may hold any characters)."""
    digest = hashlib.sha256(value.encode()).hexdigest()[:40]
    return f"{kind}.{organisation_id}.{digest}"


class IdempotencyClaim:
    """A claim on one key. ``answer`` is set when another request got there first and has answered."""

    def __init__(self, bucket: KeyValue, key: str, revision: int | None, answer: StoredAnswer | None) -> None:
        self._bucket = bucket
        self.key = key
        self._revision = revision
        self.answer = answer

    async def complete(self, answer: StoredAnswer) -> None:
        """Store the answer for every later copy."""
        await self._bucket.put(self.key, _record(answer))

    async def release(self) -> None:
        """Give the key up (the request was rejected: a corrected retry must be free to proceed)."""
        await self._bucket.delete(self.key)


def _record(answer: StoredAnswer) -> bytes:
    return json.dumps(
        {"state": "done", "status": answer.status, "body": answer.body, "headers": answer.headers}
    ).encode()


async def complete_if_pending(bucket: KeyValue, key: str, referral_id: str, answer: StoredAnswer) -> None:
    """Store ``answer`` under ``key`` if the claim there is still the pending one of ``referral_id``.

    Used when a referral is completed on behalf of a request that died: a claim answered since, or
    taken over by a retry that is storing another referral, is left alone.
    """
    try:
        entry = await bucket.get(key)
    except KeyNotFoundError:
        return
    record = json.loads(entry.value or b"{}")
    if record.get("state") != "pending" or record.get("referral") != referral_id or entry.revision is None:
        return
    # Only if unchanged since read: a retry taking the claim over at this moment wins.
    with contextlib.suppress(KeyWrongLastSequenceError):
        await bucket.update(key, _record(answer), last=entry.revision)


StaleClaimHandler = Callable[[str], Awaitable[StoredAnswer | None]]


async def claim(
    bucket: KeyValue,
    key: str,
    wait_seconds: float,
    *,
    referral_id: str = "",
    on_stale: StaleClaimHandler | None = None,
) -> IdempotencyClaim:
    """Claim ``key``, or return the answer already given for it (waiting for one in progress).

    ``referral_id`` is the referral this request would store, kept in the claim; ``on_stale`` is
    called with the one a dead request's claim names, and returns that referral's answer if it can
    finish it (None: the dead request stored nothing, and this one takes the claim over).
    """
    deadline = time.monotonic() + wait_seconds
    pending = json.dumps({"state": "pending", "since": time.time(), "referral": referral_id}).encode()
    while True:
        try:
            revision = await bucket.create(key, pending)
            return IdempotencyClaim(bucket, key, revision, None)
        except KeyWrongLastSequenceError:
            pass
        try:
            entry = await bucket.get(key)
        except KeyNotFoundError:
            continue  # released between our create and our get: try to claim again
        record = json.loads(entry.value or b"{}")
        if record.get("state") == "done":
            answer = StoredAnswer(int(record["status"]), record["body"], dict(record.get("headers", {})))
            return IdempotencyClaim(bucket, key, entry.revision, answer)
        if time.time() - float(record.get("since", 0)) > wait_seconds and entry.revision is not None:
            stale_referral = str(record.get("referral") or "")
            finished = await on_stale(stale_referral) if on_stale is not None and stale_referral else None
            if finished is not None:
                with contextlib.suppress(KeyWrongLastSequenceError):
                    await bucket.update(key, _record(finished), last=entry.revision)
                return IdempotencyClaim(bucket, key, entry.revision, finished)
            try:
                revision = await bucket.update(key, pending, last=entry.revision)
                return IdempotencyClaim(bucket, key, revision, None)
            except KeyWrongLastSequenceError:
                continue
        if time.monotonic() > deadline:
            raise IdempotencyTimeoutError(key)
        await asyncio.sleep(0.02)
