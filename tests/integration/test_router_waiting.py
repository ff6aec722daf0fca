"""Waiting lists against a real nats-server: positions in the order children were put on a list,
kept on re-routing, and the child taken off when it gets a place there or elsewhere.

Each test has its own nats-server and runs the router's production ``run`` in-process.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from nats.aio.client import Client as NatsClient
from nats.js.errors import KeyNotFoundError

from haven.eligibility.v1 import eligibility_pb2
from haven.kit import topology
from haven.kit.ids import new_id
from haven.kit.nats_server import EmbeddedNats
from haven.kit.resources import RecordScope, ResourceStore
from haven.referral.v1 import referral_pb2
from haven.routing.v1 import routing_pb2
from services.referral_router.testing import (
    RoutedLog,
    assessed,
    publish_assessed,
    publish_status,
    routed_log,
    running_router,
)

MANCHESTER = "E08000003"
LONDON = "E09000001"  # AFRUCA and Rise both cover it
HOME = "unseen-cssw-home"
AFRUCA, RISE = "afruca-therapy", "childrens-society-rise"
BED = referral_pb2.SERVICE_ASKED_SPECIALIST_ACCOMMODATION
THERAPY = referral_pb2.SERVICE_ASKED_THERAPEUTIC_SUPPORT


async def _set_free(nc: NatsClient, service_id: str, free: int) -> None:
    """Set a free count before the router starts (it keeps an existing count)."""
    await (await nc.jetstream().key_value(topology.BUCKET_CAPACITY)).put(
        f"free.{service_id}", str(free).encode()
    )


async def _free(nc: NatsClient, service_id: str) -> int:
    entry = await (await nc.jetstream().key_value(topology.BUCKET_CAPACITY)).get(f"free.{service_id}")
    return int(entry.value or b"0")


async def _waiting(nc: NatsClient, service_id: str, referral_id: str) -> bool:
    try:
        await (await nc.jetstream().key_value(topology.BUCKET_CAPACITY)).get(
            f"waiting.{service_id}.{referral_id}"
        )
    except KeyNotFoundError:
        return False
    return True


async def _eventually(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.02)


def _positions(routed: routing_pb2.ReferralRouted) -> dict[str, int]:
    return {a.service_id: a.waiting_position for a in routed.alternatives if a.waiting_position}


async def _route(
    nc: NatsClient, log: RoutedLog, event: eligibility_pb2.EligibilityAssessed, count: int = 1
) -> routing_pb2.ReferralRouted:
    await publish_assessed(nc, event)
    return (await log.wait_for(event.referral_id, count))[-1]


def _again(event: eligibility_pb2.EligibilityAssessed, programme: str) -> eligibility_pb2.EligibilityAssessed:
    """The same referral re-assessed (facts updated), the programme's decision reported as changed."""
    again = eligibility_pb2.EligibilityAssessed()
    again.CopyFrom(event)
    again.event_id = new_id()
    again.trigger = eligibility_pb2.TRIGGER_FACTS_UPDATED
    again.changed_programmes[:] = [programme]
    return again


async def test_children_wait_in_the_order_they_were_listed_and_leave_when_given_the_place(
    server: EmbeddedNats, nc: NatsClient
) -> None:
    await _set_free(nc, HOME, 1)
    async with running_router(server.url), routed_log(nc) as log:

        def emergency() -> eligibility_pb2.EligibilityAssessed:
            return assessed(
                MANCHESTER,
                ["unseen-specialist-accommodation"],
                asked=BED,
                urgency=referral_pb2.URGENCY_EMERGENCY,
            )

        placed = emergency()
        first = await _route(nc, log, placed)
        [bed] = first.tasks
        assert bed.service_id == HOME and not await _waiting(nc, HOME, placed.referral_id)

        a, b, c = emergency(), emergency(), emergency()
        for child, position in ((a, 1), (b, 2), (c, 3)):
            routed = await _route(nc, log, child)
            assert not routed.tasks and routed.fallback.escalate_to_edt
            assert _positions(routed) == {HOME: position}
            assert await _waiting(nc, HOME, child.referral_id)

        # Routed again while the home is still full: B keeps its place in line.
        assert _positions(await _route(nc, log, _again(b, "unseen-specialist-accommodation"), 2)) == {HOME: 2}

        # The bed comes back (the placed child's task completes); B, routed again, takes it.
        await publish_status(nc, first, bed, "completed")

        async def bed_free() -> bool:
            return await _free(nc, HOME) == 1

        await _eventually(bed_free)
        routed = await _route(nc, log, _again(b, "unseen-specialist-accommodation"), 3)
        assert [t.service_id for t in routed.tasks] == [HOME]
        assert not await _waiting(nc, HOME, b.referral_id)

        # B left the line: A is still first, C moved up, a newcomer joins behind them.
        assert _positions(await _route(nc, log, _again(c, "unseen-specialist-accommodation"), 2)) == {HOME: 2}
        newcomer = emergency()
        assert _positions(await _route(nc, log, newcomer)) == {HOME: 3}
        assert await _waiting(nc, HOME, a.referral_id)


async def test_a_child_routed_elsewhere_leaves_every_list_of_that_category(
    server: EmbeddedNats, nc: NatsClient
) -> None:
    await _set_free(nc, AFRUCA, 0)
    await _set_free(nc, RISE, 0)
    async with running_router(server.url), routed_log(nc) as log:
        child = assessed(LONDON, ["afruca", "childrens-society-rise"], asked=THERAPY)
        routed = await _route(nc, log, child)
        assert not routed.tasks
        assert _positions(routed) == {AFRUCA: 1, RISE: 1}
        assert await _waiting(nc, AFRUCA, child.referral_id) and await _waiting(nc, RISE, child.referral_id)

        # An admin gives Rise one more place; routed again, the child takes it and leaves both lists.
        store = await ResourceStore.open(nc.jetstream())
        stored = await store.read("HealthcareService", RISE)
        assert stored is not None
        resource = json.loads(json.dumps(stored.resource))
        places = next(e for e in resource["extension"] if e["url"].endswith("service-places"))
        next(e for e in places["extension"] if e["url"] == "count")["valueInteger"] += 1
        await store.update(resource, RecordScope(), datetime.now(UTC), stored.version)

        async def place_at_rise() -> bool:
            return await _free(nc, RISE) == 1

        await _eventually(place_at_rise)
        routed = await _route(nc, log, _again(child, "childrens-society-rise"), 2)
        assert [t.service_id for t in routed.tasks] == [RISE]
        assert not await _waiting(nc, RISE, child.referral_id)
        assert not await _waiting(nc, AFRUCA, child.referral_id)
