"""The notifier's subscription cache is complete when ``start`` returns, then follows every change.

Each test uses a bucket of its own on the session's nats-server, so "every record" is known exactly.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from services.notifier.subscriptions import SubscriptionCache


async def fresh_bucket(js: JetStreamContext) -> tuple[str, KeyValue]:
    name = f"test_subscriptions_{uuid.uuid4().hex[:8]}"
    return name, await js.create_key_value(KeyValueConfig(bucket=name, history=5))


def record(organisation_id: str, status: str = "active") -> bytes:
    return json.dumps(
        {"organisation_id": organisation_id, "endpoint": "http://x/h", "status": status}
    ).encode()


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_start_returns_with_every_subscription_loaded(nats_client: NatsClient) -> None:
    js = nats_client.jetstream()
    name, kv = await fresh_bucket(js)
    ids = [str(uuid.uuid4()) for _ in range(300)]
    await asyncio.gather(*(kv.put(i, record(f"org-{n % 7}")) for n, i in enumerate(ids)))
    await kv.delete(ids[0])  # a deleted one is not a subscription
    await kv.put("unreadable", b"{not json")
    cache = SubscriptionCache(js, bucket=name)
    try:
        await cache.start()
        # No waiting here: ready means loaded.
        assert cache.loaded
        assert {i for i, _ in cache.all()} == set(ids[1:])
        assert len(cache.active_for("org-3")) == len([n for n in range(1, 300) if n % 7 == 3])

        # Then every change, live.
        new = str(uuid.uuid4())
        await kv.put(new, record("org-new"))
        await kv.put(ids[1], record("org-1", status="off"))
        await kv.delete(ids[2])
        await until(lambda: cache.cached(new) is not None and cache.cached(ids[2]) is None)
        await until(lambda: ids[1] not in cache.active_for("org-1"))
        assert cache.active_for("org-new") == [new]
    finally:
        await cache.stop()
        await js.delete_key_value(name)


async def test_an_empty_bucket_is_loaded_at_once_and_an_unknown_id_reads_as_none(
    nats_client: NatsClient,
) -> None:
    js = nats_client.jetstream()
    name, kv = await fresh_bucket(js)
    cache = SubscriptionCache(js, bucket=name)
    try:
        await asyncio.wait_for(cache.start(), timeout=10)
        assert cache.all() == []
        subscription_id = str(uuid.uuid4())
        await kv.put(subscription_id, record("org-x"))
        await until(lambda: cache.active_for("org-x") == [subscription_id])
        # A record the watch has not brought yet is read from KV on demand.
        assert await cache.get(str(uuid.uuid4())) is None
    finally:
        await cache.stop()
        await js.delete_key_value(name)
