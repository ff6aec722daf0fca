"""Listing KV keys from the server's subject index, against a real nats-server."""

from __future__ import annotations

import uuid

from nats.aio.client import Client as NatsClient

from haven.kit.kv_keys import list_bucket_keys, list_keys
from haven.kit.topology import BUCKET_INDEX


async def test_lists_every_matching_key_and_only_those(nats_client: NatsClient) -> None:
    kv = await nats_client.jetstream().key_value(BUCKET_INDEX)
    prefix = f"Test.keys.{uuid.uuid4().hex}"
    wanted = {f"{prefix}.{n}" for n in range(250)}
    for key in wanted:
        await kv.put(key, b"")
    await kv.put(f"Test.other.{uuid.uuid4().hex}.1", b"")
    assert set(await list_keys(nats_client, BUCKET_INDEX, f"{prefix}.*")) == wanted
    assert set(await list_bucket_keys(kv, f"{prefix}.*")) == wanted
    assert await list_keys(nats_client, BUCKET_INDEX, f"Test.keys.{uuid.uuid4().hex}.*") == []


async def test_deleted_keys_are_listed_for_the_caller_to_skip(nats_client: NatsClient) -> None:
    kv = await nats_client.jetstream().key_value(BUCKET_INDEX)
    key = f"Test.deleted.{uuid.uuid4().hex}"
    await kv.put(key, b"")
    await kv.delete(key)
    assert await list_keys(nats_client, BUCKET_INDEX, key) == [key]
