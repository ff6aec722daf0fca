"""A closed referral against a real nats-server: its tasks cancelled, its places free, nothing routed.

The router's production ``run`` in-process; ReferralClosed goes in on HAVEN_REFERRALS as the gateway
publishes it, and everything the router does is read back from JetStream and KV.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError

from haven.canonical import CS_TASK_STATUS_REASON
from haven.eligibility.v1 import eligibility_pb2
from haven.kit import topology
from haven.kit.nats_server import EmbeddedNats
from haven.kit.resources import ResourceStore
from haven.referral.v1 import referral_pb2
from haven.routing.v1 import routing_pb2
from haven.task.v1 import task_pb2
from services.referral_router.capacity import CapacityLedger
from services.referral_router.records import RoutingRecords
from services.referral_router.service import (
    CLOSURE_CONSUMER,
    CONSUMER,
    EXPIRY_CONSUMER,
    TASK_CONSUMER,
)
from services.referral_router.tasks import REASON_REFERRAL_CLOSED, close_task
from services.referral_router.testing import (
    assessed,
    consumers_idle,
    publish_assessed,
    publish_closed,
    publish_status,
    routed_log,
    running_router,
)

MANCHESTER = "E08000003"  # ICTG site; AFRUCA and the home (England) cover it
LONDON = "E09000001"
HOME = "unseen-cssw-home"
AFRUCA = "afruca-therapy"
EVERYTHING = ["ictg", "afruca", "unseen-specialist-accommodation"]
EMERGENCY = referral_pb2.URGENCY_EMERGENCY
ALL_CONSUMERS = (CONSUMER, TASK_CONSUMER, EXPIRY_CONSUMER, CLOSURE_CONSUMER)


class StatusLog:
    """Every TaskStatusChanged published while a test runs."""

    def __init__(self) -> None:
        self.events: list[task_pb2.TaskStatusChanged] = []

    async def on_message(self, msg: Msg) -> None:
        """Record one event."""
        self.events.append(task_pb2.TaskStatusChanged.FromString(msg.data))

    def closures_of(self, task_ids: set[str]) -> dict[str, set[tuple[str, str, str, str]]]:
        """Per task, the distinct (event id, previous status, status, reason) the router announced."""
        seen: dict[str, set[tuple[str, str, str, str]]] = {}
        for e in self.events:
            if e.task_id in task_ids and not e.changed_by_organisation_id:
                seen.setdefault(e.task_id, set()).add(
                    (e.event_id, e.previous_status, e.status, e.status_reason_code)
                )
        return seen


@pytest.fixture
async def statuses(nc: NatsClient) -> AsyncIterator[StatusLog]:
    """The TaskStatusChanged events of the test."""
    log = StatusLog()
    subscription = await nc.subscribe(topology.TASK_STATUS_CHANGED, cb=log.on_message)
    yield log
    await subscription.unsubscribe()


async def _free(nc: NatsClient, service_id: str) -> int:
    ledger = CapacityLedger(await nc.jetstream().key_value(topology.BUCKET_CAPACITY))
    return (await ledger.free_places([service_id]))[service_id]


async def _accept(nc: NatsClient, routed: routing_pb2.ReferralRouted, task: routing_pb2.RoutedTask) -> None:
    """The owner accepts the task, as the gateway stores and announces it."""
    store = await ResourceStore.open(nc.jetstream())
    stored = await store.read("Task", task.task_id)
    assert stored is not None
    await store.update(
        {**stored.resource, "status": "accepted"}, stored.scope, datetime.now(UTC), stored.version
    )
    await publish_status(nc, routed, task, "accepted")


async def _task(nc: NatsClient, task_id: str) -> dict[str, object]:
    stored = await (await ResourceStore.open(nc.jetstream())).read("Task", task_id)
    assert stored is not None
    return stored.resource


async def test_closing_cancels_every_open_task_and_frees_its_place_for_another_child(
    server: EmbeddedNats, nc: NatsClient, statuses: StatusLog
) -> None:
    capacity = await nc.jetstream().key_value(topology.BUCKET_CAPACITY)
    await capacity.put(f"free.{HOME}", b"1")  # one bed left: the router keeps the live count it finds
    async with running_router(server.url), routed_log(nc) as log:
        first = assessed(MANCHESTER, EVERYTHING, urgency=EMERGENCY)
        await publish_assessed(nc, first)
        [routed] = await log.wait_for(first.referral_id)
        tasks = {t.service_id: t for t in routed.tasks}
        assert set(tasks) == {"ictg", AFRUCA, HOME}
        await _accept(nc, routed, tasks[HOME])  # accepted: the place no longer expires
        await consumers_idle(nc, TASK_CONSUMER)

        # Another emergency finds no bed while the first child holds it.
        second = assessed(MANCHESTER, ["unseen-specialist-accommodation"], urgency=EMERGENCY)
        await publish_assessed(nc, second)
        [waiting] = await log.wait_for(second.referral_id)
        assert not waiting.tasks and waiting.fallback.escalate_to_edt
        assert await _free(nc, HOME) == 0

        await publish_closed(nc, first.referral_id, MANCHESTER)
        await consumers_idle(nc, CLOSURE_CONSUMER, TASK_CONSUMER)

        for task in routed.tasks:
            resource = await _task(nc, task.task_id)
            assert resource["status"] == "cancelled"
            assert resource["statusReason"] == {
                "coding": [{"system": CS_TASK_STATUS_REASON, "code": REASON_REFERRAL_CLOSED}],
                "text": "the referral was closed",
            }
        announced = statuses.closures_of({t.task_id for t in routed.tasks})
        assert {task_id: {(p, s, r) for _, p, s, r in seen} for task_id, seen in announced.items()} == {
            tasks["ictg"].task_id: {("requested", "cancelled", REASON_REFERRAL_CLOSED)},
            tasks[AFRUCA].task_id: {("requested", "cancelled", REASON_REFERRAL_CLOSED)},
            tasks[HOME].task_id: {("accepted", "cancelled", REASON_REFERRAL_CLOSED)},
        }
        assert await _free(nc, HOME) == 1

        # The bed is free again: the next emergency gets it.
        third = assessed(MANCHESTER, ["unseen-specialist-accommodation"], urgency=EMERGENCY)
        await publish_assessed(nc, third)
        [placed] = await log.wait_for(third.referral_id)
        assert [t.service_id for t in placed.tasks] == [HOME]
        assert await _free(nc, HOME) == 0


async def test_a_closed_referral_is_not_routed_by_late_assessments_rejections_or_expiries(
    server: EmbeddedNats, nc: NatsClient
) -> None:
    async with running_router(server.url), routed_log(nc) as log:
        event = assessed(
            LONDON, ["afruca", "childrens-society-rise"], asked=referral_pb2.SERVICE_ASKED_THERAPEUTIC_SUPPORT
        )
        await publish_assessed(nc, event)
        [routed] = await log.wait_for(event.referral_id)
        [afruca] = routed.tasks
        free = {s: await _free(nc, s) for s in (AFRUCA, "childrens-society-rise")}

        await publish_closed(nc, event.referral_id, LONDON, referral_pb2.REFERRAL_CLOSURE_COMPLETED)
        await consumers_idle(nc, *ALL_CONSUMERS)
        assert await _free(nc, AFRUCA) == free[AFRUCA] + 1

        # Late news for the closed referral: a re-assessment that changed a decision, the provider's
        # rejection, and the reservation's expiry firing. None of them may route the child again.
        late = assessed(
            LONDON,
            ["childrens-society-rise"],
            referral_id=event.referral_id,
            asked=referral_pb2.SERVICE_ASKED_THERAPEUTIC_SUPPORT,
            trigger=eligibility_pb2.TRIGGER_FACTS_UPDATED,
            changed=["afruca"],
        )
        await publish_assessed(nc, late)
        await publish_status(nc, routed, afruca, "rejected", "no-capacity")
        await nc.jetstream().publish(topology.RESERVATION_EXPIRED, afruca.task_id.encode())
        await consumers_idle(nc, *ALL_CONSUMERS)

        assert [e.event_id for e in log.of(event.referral_id)] == [routed.event_id]
        store = await ResourceStore.open(nc.jetstream())
        tasks = await store.search("Task", "based-on", f"ServiceRequest/{event.referral_id}")
        assert [t.resource["id"] for t in tasks] == [afruca.task_id]
        assert await _free(nc, AFRUCA) == free[AFRUCA] + 1  # given back once, not again
        assert await _free(nc, "childrens-society-rise") == free["childrens-society-rise"]


async def test_a_closure_that_stopped_part_way_is_finished_by_its_redelivery(
    server: EmbeddedNats, nc: NatsClient, statuses: StatusLog
) -> None:
    async with running_router(server.url), routed_log(nc) as log:
        event = assessed(MANCHESTER, EVERYTHING, urgency=EMERGENCY)
        await publish_assessed(nc, event)
        [routed] = await log.wait_for(event.referral_id)
        bed = next(t for t in routed.tasks if t.service_id == HOME)
        free = await _free(nc, HOME)

        # What a router that crashed part-way leaves: the mark, and the bed's task cancelled with its
        # old status noted, but no place given back and nothing announced.
        js = nc.jetstream()
        records = RoutingRecords(await js.key_value(topology.BUCKET_ROUTING))
        closed = referral_pb2.ReferralClosed(event_id="closed-x", referral_id=event.referral_id)
        await records.mark_closed(js, closed)
        await records.note_cancelled_from(bed.task_id, "requested")
        store = await ResourceStore.open(js)
        done = await close_task(
            store,
            bed.task_id,
            "cancelled",
            REASON_REFERRAL_CLOSED,
            "the referral was closed",
            datetime.now(UTC),
        )
        assert done is not None

        # The closure is delivered (again), twice over: the work is finished once.
        await publish_closed(nc, event.referral_id, MANCHESTER, msg_id="delivery-1")
        await publish_closed(nc, event.referral_id, MANCHESTER, msg_id="delivery-2")
        await consumers_idle(nc, CLOSURE_CONSUMER, TASK_CONSUMER)

        assert await _free(nc, HOME) == free + 1
        for task in routed.tasks:
            assert (await _task(nc, task.task_id))["status"] == "cancelled"
        announced = statuses.closures_of({t.task_id for t in routed.tasks})
        assert set(announced) == {t.task_id for t in routed.tasks}
        # One event per task (a repeat has the same id, which JetStream drops); the bed's names the
        # status it had before the crash.
        assert all(len({event_id for event_id, *_ in seen}) == 1 for seen in announced.values())
        assert {p for _, p, _, _ in announced[bed.task_id]} == {"requested"}
        assert len(log.of(event.referral_id)) == 1


async def test_a_routing_that_raced_the_closure_cancels_its_own_tasks(
    server: EmbeddedNats, nc: NatsClient
) -> None:
    async with running_router(server.url), routed_log(nc) as log:
        event = assessed(MANCHESTER, ["unseen-specialist-accommodation"], urgency=EMERGENCY)
        free = await _free(nc, HOME)
        # The closure's mark is in, but the referral's first assessment is handled as if it was read
        # before it: only the mark, not the sequence the closure also writes.
        routing = await nc.jetstream().key_value(topology.BUCKET_ROUTING)
        await routing.create(f"closed.{event.referral_id}", b"closed")
        await publish_assessed(nc, event)
        [routed] = await log.wait_for(event.referral_id)
        [bed] = routed.tasks
        await consumers_idle(nc, CONSUMER, TASK_CONSUMER)

        resource = await _task(nc, bed.task_id)
        assert resource["status"] == "cancelled"
        assert await _free(nc, HOME) == free
        ledger = CapacityLedger(await nc.jetstream().key_value(topology.BUCKET_CAPACITY))
        assert not await ledger.holds(bed.task_id)


async def test_closed_referral_leaves_every_waiting_list(server: EmbeddedNats, nc: NatsClient) -> None:
    capacity = await nc.jetstream().key_value(topology.BUCKET_CAPACITY)
    await capacity.put(f"free.{HOME}", b"0")
    async with running_router(server.url), routed_log(nc) as log:
        event = assessed(MANCHESTER, ["unseen-specialist-accommodation"], urgency=EMERGENCY)
        await publish_assessed(nc, event)
        await log.wait_for(event.referral_id)
        entry = await capacity.get(f"waiting.{HOME}.{event.referral_id}")
        assert entry.value  # on the home's list

        await publish_closed(nc, event.referral_id, MANCHESTER)
        await consumers_idle(nc, CLOSURE_CONSUMER)

        # Deleted: the list no longer counts the child. Polled, because a consumer's pending counts can
        # read zero a moment before its handler's last write is visible on a loaded machine.
        async def still_waiting() -> bool:
            try:
                await capacity.get(f"waiting.{HOME}.{event.referral_id}")
            except KeyNotFoundError:
                return False
            return True

        async with asyncio.timeout(10):
            while await still_waiting():
                await asyncio.sleep(0.05)
