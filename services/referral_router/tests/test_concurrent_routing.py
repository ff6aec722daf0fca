"""Many routings at once against a real nats-server: grouped compare-and-sets and lanes.

A process applies the free-count changes of its concurrent routings in groups (one compare-and-set
for all the places asked for meanwhile) and handles assessments in lanes (one referral's messages in
order). Neither may give a place twice, within a process or across two, nor reorder a referral.
"""

from __future__ import annotations

import asyncio
import random

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import StreamConfig

from haven.kit import bus, topology
from haven.kit.nats_server import EmbeddedNats
from haven.kit.resources import ResourceStore
from haven.referral.v1 import referral_pb2
from services.referral_router.capacity import CapacityLedger
from services.referral_router.lanes import LaneConsumer
from services.referral_router.testing import assessed, publish_assessed, routed_log, running_router

SERVICE = "afruca-therapy"
LONDON = "E09000001"  # AFRUCA covers it (England); Rise is not eligible in these tests


async def _free(nc: NatsClient) -> int:
    entry = await (await nc.jetstream().key_value(topology.BUCKET_CAPACITY)).get(f"free.{SERVICE}")
    return int(entry.value or b"0")


async def test_a_group_of_takes_gets_exactly_the_free_places(nc: NatsClient) -> None:
    bucket = await nc.jetstream().key_value(topology.BUCKET_CAPACITY)
    await bucket.put(f"free.{SERVICE}", b"5")
    ledger = CapacityLedger(bucket)
    got = await asyncio.gather(*(ledger.take_place(SERVICE) for _ in range(20)))
    assert sum(got) == 5
    assert got[:5] == [True] * 5  # granted in the order asked
    assert await _free(nc) == 0
    # Give-backs and takes in one group: every place given back can be taken again, no more.
    changes = await asyncio.gather(
        ledger.give_places(SERVICE, 2), *(ledger.take_place(SERVICE) for _ in range(4))
    )
    assert sum(1 for ok in changes[1:] if ok) == 2
    assert await _free(nc) == 0


async def test_two_processes_taking_places_at_once_never_give_one_twice(nc: NatsClient) -> None:
    bucket = await nc.jetstream().key_value(topology.BUCKET_CAPACITY)
    await bucket.put(f"free.{SERVICE}", b"7")
    # Two ledgers: two processes' views and groups over the same bucket, racing compare-and-sets.
    first, second = CapacityLedger(bucket), CapacityLedger(bucket)
    got = await asyncio.gather(*(ledger.take_place(SERVICE) for _ in range(15) for ledger in (first, second)))
    assert sum(got) == 7
    assert await _free(nc) == 0


async def test_concurrent_routings_in_one_process_fill_the_places_exactly(
    server: EmbeddedNats, nc: NatsClient
) -> None:
    bucket = await nc.jetstream().key_value(topology.BUCKET_CAPACITY)
    await bucket.put(f"free.{SERVICE}", b"4")
    events = [
        assessed(LONDON, ["afruca"], asked=referral_pb2.SERVICE_ASKED_THERAPEUTIC_SUPPORT) for _ in range(30)
    ]
    async with running_router(server.url), routed_log(nc) as log:
        await asyncio.gather(*(publish_assessed(nc, e) for e in events))
        outcomes = [(await log.wait_for(e.referral_id, timeout=30))[0] for e in events]
    placed = [o for o in outcomes if o.tasks]
    assert len(placed) == 4
    assert await _free(nc) == 0
    # Every place taken is held by exactly one reservation record, for a stored Task.
    store = await ResourceStore.open(nc.jetstream())
    for outcome in placed:
        [task] = outcome.tasks
        assert (await bucket.get(f"reservation.{task.task_id}")).value
        assert await store.read("Task", task.task_id) is not None
    for other in outcomes:
        if not other.tasks:
            assert {u.programme_id: u.reason for u in other.unrouted}["afruca"].startswith("no capacity")


async def test_lanes_keep_each_key_in_order_while_handling_keys_at_once(nc: NatsClient) -> None:
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="LANES_TEST", subjects=["lanes.test"]))
    spec = bus.ConsumerSpec(stream="LANES_TEST", durable="lanes_test", subjects=("lanes.test",))
    keys = [f"referral-{n}" for n in range(12)]
    sent = [(key, number) for number in range(8) for key in keys]
    seen: dict[str, list[int]] = {key: [] for key in keys}
    running: set[str] = set()
    overlap = 0
    both_at_once = False
    rng = random.Random(5)

    async def handler(msg: Msg) -> None:
        nonlocal overlap, both_at_once
        key, number = msg.data.decode().split("#")
        both_at_once = both_at_once or key in running  # one key's messages must never overlap
        running.add(key)
        overlap = max(overlap, len(running))
        await asyncio.sleep(rng.uniform(0, 0.005))
        seen[key].append(int(number))
        running.discard(key)

    for key, number in sent:
        await js.publish("lanes.test", f"{key}#{number}".encode())
    stop = asyncio.Event()
    consumer = LaneConsumer(spec, handler, lambda msg: msg.data.decode().split("#")[0], lanes=6, batch=16)
    work = asyncio.create_task(consumer.run(js, stop))
    async with asyncio.timeout(30):
        while sum(len(v) for v in seen.values()) < len(sent):
            await asyncio.sleep(0.02)
    stop.set()
    await work
    assert all(numbers == list(range(8)) for numbers in seen.values()), seen
    assert not both_at_once
    assert overlap > 1  # several keys were handled at once
    info = await js.consumer_info("LANES_TEST", "lanes_test")
    assert info.num_ack_pending == 0 and info.num_pending == 0  # every message was settled
