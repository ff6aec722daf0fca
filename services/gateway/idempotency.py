"""Answer a repeated request with the answer the first one got, even when copies arrive at once.

The first request to claim a key (KV create, which only one writer can win) does the work and then
stores its answer under the key; a copy that loses the claim waits for that answer and returns it.
A claim left by a request that died is taken over once it is older than the wait limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
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
        record = {"state": "done", "status": answer.status, "body": answer.body, "headers": answer.headers}
        await self._bucket.put(self.key, json.dumps(record).encode())

    async def release(self) -> None:
        """Give the key up (the request was rejected: a corrected retry must be free to proceed)."""
        await self._bucket.delete(self.key)


async def claim(bucket: KeyValue, key: str, wait_seconds: float) -> IdempotencyClaim:
    """Claim ``key``, or return the answer already given for it (waiting for one in progress)."""
    deadline = time.monotonic() + wait_seconds
    pending = json.dumps({"state": "pending", "since": time.time()}).encode()
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
            try:
                revision = await bucket.update(key, pending, last=entry.revision)
                return IdempotencyClaim(bucket, key, revision, None)
            except KeyWrongLastSequenceError:
                continue
        if time.monotonic() > deadline:
            raise IdempotencyTimeoutError(key)
        await asyncio.sleep(0.02)
