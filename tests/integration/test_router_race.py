"""The last-bed race: three router processes, one nats-server, many emergencies wanting one free bed.

Exactly one child gets the bed; every other gets the documented fallback: no bed task, the home listed
with a waiting position or the bed unrouted for capacity, and the emergency escalated to the EDT at
once (docs/routing.md, "When nothing fits"). The routers share one durable consumer.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from nats.aio.client import Client as NatsClient

from haven.kit import bus, topology
from haven.kit.nats_server import EmbeddedNats
from haven.referral.v1 import referral_pb2
from services.referral_router.testing import assessed, publish_assessed, routed_log, start_router_process

HOME = "unseen-cssw-home"
ROUTERS = 3
REFERRALS = 24


def _start_routers(server: EmbeddedNats, tmp_path: Path) -> list[tuple[subprocess.Popen[bytes], Path]]:
    logs = [tmp_path / f"router-{index}.log" for index in range(ROUTERS)]
    return [(start_router_process(server.url, tmp_path, log), log) for log in logs]


async def test_the_last_bed_goes_to_exactly_one_child(server: EmbeddedNats, tmp_path: Path) -> None:
    nc: NatsClient = await bus.connect(server.url, "race-test")
    js = nc.jetstream()
    await topology.ensure_topology(js)
    # Two of the home's three beds are taken: one free place for everyone.
    await (await js.key_value(topology.BUCKET_CAPACITY)).put(f"free.{HOME}", b"1")
    routers = await asyncio.to_thread(_start_routers, server, tmp_path)
    try:
        async with routed_log(nc) as log:
            events = [
                assessed(
                    "E08000003",
                    ["unseen-specialist-accommodation"],
                    asked=referral_pb2.SERVICE_ASKED_SPECIALIST_ACCOMMODATION,
                    urgency=referral_pb2.URGENCY_EMERGENCY,
                )
                for _ in range(REFERRALS)
            ]
            await asyncio.gather(*(publish_assessed(nc, e) for e in events))
            outcomes = [(await log.wait_for(e.referral_id, timeout=30))[0] for e in events]
        with_bed = [o for o in outcomes if any(t.service_id == HOME for t in o.tasks)]
        assert len(with_bed) == 1
        for other in outcomes:
            if other is with_bed[0]:
                continue
            assert other.fallback.escalate_to_edt
            waiting = {a.service_id: a.waiting_position for a in other.alternatives}
            unrouted = {u.programme_id: u.reason for u in other.unrouted}
            assert waiting.get(HOME, 0) >= 1 or "unseen-specialist-accommodation" in unrouted
        free = await (await js.key_value(topology.BUCKET_CAPACITY)).get(f"free.{HOME}")
        assert free.value == b"0"
        # A router acks after it has published the outcome: give the last acks a moment to land.
        async with asyncio.timeout(10):
            while True:
                info = await js.consumer_info("HAVEN_ELIGIBILITY", "referral_router")
                if info.num_pending == 0 and info.num_ack_pending == 0:
                    break
                await asyncio.sleep(0.05)
    finally:
        for process, _ in routers:
            process.terminate()
        for process, _ in routers:
            process.wait(20)
        await nc.drain()
    handled = [log.read_text().count("referral routed") for _, log in routers]
    assert sum(handled) >= REFERRALS
    assert sum(1 for count in handled if count) >= 2, handled  # the durable consumer is shared
