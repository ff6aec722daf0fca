"""The router against a real nats-server: rejections, acceptance, expiry, eligibility changes, directory.

Each test gets its own nats-server (capacity counts and durable consumers are per server) and runs the
router's production ``run`` in-process; events go in and come out through JetStream as in production.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from haven.canonical import CS_TASK_STATUS_REASON
from haven.eligibility.v1 import eligibility_pb2
from haven.kit import topology
from haven.kit.nats_server import EmbeddedNats
from haven.kit.resources import RecordScope, ResourceStore
from haven.referral.v1 import referral_pb2
from haven.routing.v1 import routing_pb2
from haven.task.v1 import task_pb2
from services.referral_router.capacity import CapacityLedger
from services.referral_router.domain import healthcare_service_from_fhir
from services.referral_router.testing import (
    assessed,
    publish_assessed,
    publish_status,
    routed_log,
    running_router,
)

LONDON = "E09000001"  # City of London: AFRUCA (England) and Rise (London) both cover it
LEEDS = "E08000035"  # Barnardo's West Yorkshire, AFRUCA; no ICTG site
MANCHESTER = "E08000003"  # ICTG
THERAPY = referral_pb2.SERVICE_ASKED_THERAPEUTIC_SUPPORT
BED = referral_pb2.SERVICE_ASKED_SPECIALIST_ACCOMMODATION
HOME = "unseen-cssw-home"


async def _ledger(nc: NatsClient) -> CapacityLedger:
    return CapacityLedger(await nc.jetstream().key_value(topology.BUCKET_CAPACITY))


async def _free(nc: NatsClient, service_id: str) -> int:
    return (await (await _ledger(nc)).free_places([service_id]))[service_id]


async def _eventually(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.05)


async def test_rejection_gives_the_place_back_and_routes_to_the_next_candidate(
    server: EmbeddedNats, nc: NatsClient
) -> None:
    async with running_router(server.url), routed_log(nc) as log:
        before = {s: await _free(nc, s) for s in ("afruca-therapy", "childrens-society-rise")}
        event = assessed(LONDON, ["afruca", "childrens-society-rise"], asked=THERAPY)
        await publish_assessed(nc, event)
        [first] = await log.wait_for(event.referral_id)
        [afruca] = first.tasks
        assert afruca.service_id == "afruca-therapy"  # most specific first (docs/routing.md, Ranking)
        assert await _free(nc, "afruca-therapy") == before["afruca-therapy"] - 1

        await publish_status(nc, first, afruca, "rejected", "no-capacity")
        _, second = await log.wait_for(event.referral_id, 2)
        assert second.trigger == routing_pb2.ROUTING_TRIGGER_TASK_REJECTED
        assert second.sequence > first.sequence
        [rise] = second.tasks
        assert (rise.service_id, rise.part_of_task_id) == ("childrens-society-rise", afruca.task_id)
        assert await _free(nc, "afruca-therapy") == before["afruca-therapy"]
        assert await _free(nc, "childrens-society-rise") == before["childrens-society-rise"] - 1
        store = await ResourceStore.open(nc.jetstream())
        stored = await store.read("Task", rise.task_id)
        assert stored is not None and stored.resource["partOf"] == [{"reference": f"Task/{afruca.task_id}"}]

        # The same rejection again (a new message): the child was already moved on, nothing new.
        await publish_status(nc, first, afruca, "rejected", "no-capacity")
        # Rise declines too: AFRUCA declined before, so nothing is left and the plan says so.
        await publish_status(nc, second, rise, "rejected", "not-compatible")
        *_, third = await log.wait_for(event.referral_id, 3)
        assert not third.tasks
        assert {u.programme_id for u in third.unrouted} >= {"childrens-society-rise"}
        assert third.fallback.inform_local_authority
        assert len({e.event_id for e in log.of(event.referral_id)}) == 3
        assert await _free(nc, "childrens-society-rise") == before["childrens-society-rise"]


async def test_accepted_keeps_the_place_and_completion_gives_it_back(
    server: EmbeddedNats, nc: NatsClient
) -> None:
    async with running_router(server.url), routed_log(nc) as log:
        free = await _free(nc, HOME)
        event = assessed(MANCHESTER, ["unseen-specialist-accommodation"], asked=BED)
        await publish_assessed(nc, event)
        [routed] = await log.wait_for(event.referral_id)
        [bed] = routed.tasks
        assert bed.service_id == HOME and await _free(nc, HOME) == free - 1
        ledger = await _ledger(nc)

        await publish_status(nc, routed, bed, "accepted")

        async def accepted() -> bool:
            held = await ledger.reservation(bed.task_id)
            return held is not None and held.accepted

        await _eventually(accepted)
        schedules = await nc.jetstream().stream_info("HAVEN_ROUTER_SCHEDULES", subjects_filter=">")
        assert f"{topology.RESERVATION_EXPIRY_PREFIX}.{bed.task_id}" not in (schedules.state.subjects or {})
        assert await _free(nc, HOME) == free - 1

        await publish_status(nc, routed, bed, "completed")

        async def released() -> bool:
            return await _free(nc, HOME) == free

        await _eventually(released)
        assert not await ledger.holds(bed.task_id)


async def test_an_unaccepted_reservation_expires_and_the_child_is_routed_on(
    server: EmbeddedNats, nc: NatsClient
) -> None:
    tasks_seen: list[task_pb2.TaskStatusChanged] = []

    async def on_status(msg: Msg) -> None:
        tasks_seen.append(task_pb2.TaskStatusChanged.FromString(msg.data))

    await nc.subscribe(topology.TASK_STATUS_CHANGED, cb=on_status)
    async with running_router(server.url, reservation_timeout_seconds=1), routed_log(nc) as log:
        free = await _free(nc, HOME)
        event = assessed(
            MANCHESTER,
            ["unseen-specialist-accommodation"],
            urgency=referral_pb2.URGENCY_EMERGENCY,
            asked=BED,
        )
        await publish_assessed(nc, event)
        first, second = await log.wait_for(event.referral_id, 2, timeout=15)
        [bed] = first.tasks
        assert second.trigger == routing_pb2.ROUTING_TRIGGER_RESERVATION_EXPIRED
        # The only home did not answer: no bed, so the emergency goes to the EDT at once.
        assert not second.tasks and second.fallback.escalate_to_edt
        assert await _free(nc, HOME) == free
        stored = await (await ResourceStore.open(nc.jetstream())).read("Task", bed.task_id)
        assert stored is not None and stored.resource["status"] == "cancelled"
        assert stored.resource["statusReason"]["coding"] == [
            {"system": CS_TASK_STATUS_REASON, "code": "reservation-expired"}
        ]
        assert [(t.task_id, t.status, t.status_reason_code) for t in tasks_seen] == [
            (bed.task_id, "cancelled", "reservation-expired")
        ]


async def test_changed_eligibility_closes_tasks_and_routes_what_opened(
    server: EmbeddedNats, nc: NatsClient
) -> None:
    async with running_router(server.url), routed_log(nc) as log:
        # Leeds, awaiting a reasonable-grounds decision: ICTG does not cover Leeds, Barnardo's not yet open.
        event = assessed(LEEDS, [], referral_id="ref-change", asked=THERAPY)
        await publish_assessed(nc, event)
        [first] = await log.wait_for("ref-change")
        assert not first.tasks
        # A positive RG decision opens Barnardo's West Yorkshire.
        opened = assessed(
            LEEDS,
            ["barnardos-west-yorkshire"],
            referral_id="ref-change",
            asked=THERAPY,
            trigger=eligibility_pb2.TRIGGER_FACTS_UPDATED,
            changed=["barnardos-west-yorkshire"],
        )
        await publish_assessed(nc, opened)
        _, second = await log.wait_for("ref-change", 2)
        [group] = second.tasks
        assert group.service_id == "barnardos-west-yorkshire-groups"
        free = await _free(nc, group.service_id)

        # The 18th birthday ends it: the task closes with the exit reason and its place comes back.
        exit_decision = eligibility_pb2.ProgrammeDecision(
            programme_id="barnardos-west-yorkshire",
            outcome=eligibility_pb2.OUTCOME_INELIGIBLE,
            continuation=eligibility_pb2.CONTINUATION_EXIT,
            exit_reason="turned 18",
        )
        ended = assessed(
            LEEDS,
            [],
            referral_id="ref-change",
            asked=THERAPY,
            decisions=[exit_decision],
            trigger=eligibility_pb2.TRIGGER_SCHEDULED,
            changed=["barnardos-west-yorkshire"],
        )
        await publish_assessed(nc, ended)
        *_, third = await log.wait_for("ref-change", 3)
        assert not third.tasks
        stored = await (await ResourceStore.open(nc.jetstream())).read("Task", group.task_id)
        assert stored is not None and stored.resource["status"] == "cancelled"  # not started yet
        assert stored.resource["statusReason"]["coding"][0]["code"] == "programme-exit"
        assert "turned 18" in stored.resource["statusReason"]["text"]
        assert await _free(nc, group.service_id) == free + 1

        # A re-assessment that changed nothing publishes nothing.
        same = assessed(LEEDS, [], referral_id="ref-change", trigger=eligibility_pb2.TRIGGER_SCHEDULED)
        await publish_assessed(nc, same)
        marker = assessed(LONDON, ["afruca"], asked=THERAPY)
        await publish_assessed(nc, marker)
        await log.wait_for(marker.referral_id)  # handled in order after `same`
        assert len(log.of("ref-change")) == 3


async def test_directory_change_is_picked_up_without_a_restart(server: EmbeddedNats, nc: NatsClient) -> None:
    async with running_router(server.url), routed_log(nc) as log:
        store = await ResourceStore.open(nc.jetstream())
        before = assessed(LEEDS, ["ictg"], asked=referral_pb2.SERVICE_ASKED_ICTG)
        await publish_assessed(nc, before)
        [routed] = await log.wait_for(before.referral_id)
        assert not routed.tasks
        assert (
            "no ictg service covers E08000035" in {u.programme_id: u.reason for u in routed.unrouted}["ictg"]
        )

        stored = await store.read("HealthcareService", "ictg")
        assert stored is not None
        resource = json.loads(json.dumps(stored.resource))
        resource["coverageArea"].append(
            {
                "identifier": {
                    "system": "http://statistics.data.gov.uk/id/statistical-geography",
                    "value": LEEDS,
                },
                "extension": [
                    {
                        "url": "https://haven.example.org/fhir/StructureDefinition/coverage-period",
                        "valuePeriod": {"start": "2020-01-01"},
                    }
                ],
            }
        )
        healthcare_service_from_fhir(resource)  # what the gateway checks before it stores
        await store.update(resource, RecordScope(), datetime.now(UTC), stored.version)
        # The watch applies the change asynchronously: route until the new coverage shows.
        async with asyncio.timeout(10):
            while True:
                after = assessed(LEEDS, ["ictg"], asked=referral_pb2.SERVICE_ASKED_ICTG)
                await publish_assessed(nc, after)
                [answer] = await log.wait_for(after.referral_id)
                if answer.tasks:
                    break
        assert answer.tasks[0].service_id == "ictg"


async def test_changed_places_move_the_free_count(server: EmbeddedNats, nc: NatsClient) -> None:
    async with running_router(server.url):
        store = await ResourceStore.open(nc.jetstream())
        free = await _free(nc, HOME)
        stored = await store.read("HealthcareService", HOME)
        assert stored is not None
        resource = json.loads(json.dumps(stored.resource))
        places = next(e for e in resource["extension"] if e["url"].endswith("service-places"))
        count = next(e for e in places["extension"] if e["url"] == "count")
        count["valueInteger"] += 2
        await store.update(resource, RecordScope(), datetime.now(UTC), stored.version)

        async def moved() -> bool:
            return await _free(nc, HOME) == free + 2

        await _eventually(moved)
