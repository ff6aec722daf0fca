"""The router lanes' own pull requests, on a real server of the test's own.

The pull must hand over every message once, settle nak'd ones for redelivery and stop promptly on an
empty stream.
"""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import StreamConfig

from haven.kit import bus, topology
from services.referral_router.lanes import LaneConsumer

ROUTING = topology.BUCKET_ROUTING


async def test_the_lanes_pull_hands_over_every_message_once_and_redelivers_a_nak(nc: NatsClient) -> None:
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="PULL_TEST", subjects=["pull.test"]))
    spec = bus.ConsumerSpec(stream="PULL_TEST", durable="pull_test", subjects=("pull.test",))
    for number in range(40):
        await js.publish("pull.test", str(number).encode())
    seen: list[int] = []
    retried = False

    async def handler(msg: Msg) -> None:
        nonlocal retried
        number = int(msg.data)
        if number == 7 and not retried:
            retried = True
            raise bus.RetryLater("once", delay=0.05)
        seen.append(number)

    stop = asyncio.Event()
    consumer = LaneConsumer(spec, handler, lambda msg: msg.data.decode(), lanes=4, batch=8)
    work = asyncio.create_task(consumer.run(js, stop))
    async with asyncio.timeout(20):
        while len(seen) < 40:
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.6)  # a pull or two more, on an empty stream: nothing new comes
    stop.set()
    async with asyncio.timeout(5):  # one pull's expiry and its grace at most
        await work
    assert sorted(seen) == list(range(40))
    info = await js.consumer_info("PULL_TEST", "pull_test")
    assert info.num_pending == 0 and info.num_ack_pending == 0
