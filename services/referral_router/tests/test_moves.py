"""A move of local authority against a real nats-server: the router routes the referral for the new area.

The gateway re-scopes the records and eligibility publishes an EligibilityAssessed naming the new LA
(ADR 7); here the assessment is published as eligibility does and the router's production ``run``
handles it in-process.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime

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
from services.referral_router.domain import healthcare_service_to_fhir, load_directory
from services.referral_router.domain.directory import CoveragePeriod
from services.referral_router.service import CONSUMER, TASK_CONSUMER
from services.referral_router.tasks import REASON_MOVED_LOCAL_AUTHORITY
from services.referral_router.testing import (
    assessed,
    consumers_idle,
    publish_assessed,
    routed_log,
    running_router,
)

MANCHESTER = "E08000003"  # ICTG site; AFRUCA (England) covers it
LONDON = "E09000001"  # City of London: no ICTG site; AFRUCA and Rise cover it
LEEDS = "E08000035"  # Barnardo's West Yorkshire and AFRUCA
GROUPS = "barnardos-west-yorkshire-groups"
RISE = "childrens-society-rise"
THERAPY = referral_pb2.SERVICE_ASKED_THERAPEUTIC_SUPPORT


def _moved(
    first: eligibility_pb2.EligibilityAssessed, gss: str, eligible: list[str], **kwargs: object
) -> eligibility_pb2.EligibilityAssessed:
    """The re-assessment eligibility publishes for a move: same referral and child, the new LA."""
    event = assessed(
        gss,
        eligible,
        referral_id=first.referral_id,
        trigger=eligibility_pb2.TRIGGER_FACTS_UPDATED,
        **kwargs,  # type: ignore[arg-type]
    )
    event.facts.child_id = first.facts.child_id
    return event


async def _free(nc: NatsClient, service_id: str) -> int:
    ledger = CapacityLedger(await nc.jetstream().key_value(topology.BUCKET_CAPACITY))
    return (await ledger.free_places([service_id]))[service_id]


async def test_a_move_cancels_what_the_new_area_lacks_keeps_what_covers_both_and_routes_there(
    server: EmbeddedNats, nc: NatsClient
) -> None:
    js = nc.jetstream()
    store = await ResourceStore.open(js)
    # A guardian service of the same programme in London (an admin's HealthcareService).
    ictg = load_directory().get("ictg")
    assert ictg is not None
    london_ictg = replace(ictg, id="ictg-london", coverage=(CoveragePeriod(LONDON, date(2020, 1, 1)),))
    await store.create(healthcare_service_to_fhir(london_ictg), RecordScope(), datetime.now(UTC))
    statuses: list[task_pb2.TaskStatusChanged] = []
    in_london: list[routing_pb2.ReferralRouted] = []

    async def on_status(msg: Msg) -> None:
        statuses.append(task_pb2.TaskStatusChanged.FromString(msg.data))

    async def on_london(msg: Msg) -> None:
        in_london.append(routing_pb2.ReferralRouted.FromString(msg.data))

    await nc.subscribe(topology.TASK_STATUS_CHANGED, cb=on_status)
    await nc.subscribe(topology.routed_subject(LONDON), cb=on_london)
    async with running_router(server.url), routed_log(nc) as log:
        first = assessed(MANCHESTER, ["ictg", "afruca"])
        await publish_assessed(nc, first)
        [routed] = await log.wait_for(first.referral_id)
        old = {t.service_id: t for t in routed.tasks}
        assert set(old) == {"ictg", "afruca-therapy"}
        afruca_free = await _free(nc, "afruca-therapy")

        await publish_assessed(nc, _moved(first, LONDON, ["ictg", "afruca"]))
        _, again = await log.wait_for(first.referral_id, 2)
        await consumers_idle(nc, CONSUMER, TASK_CONSUMER)

        # Announced to the new LA, with the guardian task moved to the London service.
        assert [e.event_id for e in in_london] == [again.event_id]
        assert again.local_authority_gss == LONDON
        [guardian] = again.tasks
        assert (guardian.service_id, guardian.part_of_task_id) == ("ictg-london", old["ictg"].task_id)
        # The Manchester-only task is cancelled with the coded reason and announced.
        cancelled = await store.read("Task", old["ictg"].task_id)
        assert cancelled is not None and cancelled.resource["status"] == "cancelled"
        assert cancelled.resource["statusReason"]["coding"] == [
            {"system": CS_TASK_STATUS_REASON, "code": REASON_MOVED_LOCAL_AUTHORITY}
        ]
        assert [
            (s.task_id, s.status, s.status_reason_code) for s in statuses if not s.changed_by_organisation_id
        ] == [(old["ictg"].task_id, "cancelled", REASON_MOVED_LOCAL_AUTHORITY)]
        # AFRUCA covers both areas: its task stays, keeps its place, and is now the new LA's to see.
        kept = await store.read("Task", old["afruca-therapy"].task_id)
        assert kept is not None and kept.resource["status"] == "requested"
        assert kept.scope.local_authority_gss == LONDON
        in_index = await store.search("Task", "local-authority", LONDON)
        assert old["afruca-therapy"].task_id in {t.resource["id"] for t in in_index}
        assert await _free(nc, "afruca-therapy") == afruca_free

        # The area is recorded with the decision: a later re-assessment in London changes nothing.
        await publish_assessed(nc, _moved(first, LONDON, ["ictg", "afruca"]))
        await consumers_idle(nc, CONSUMER)
        assert len(log.of(first.referral_id)) == 2


async def test_a_moved_task_gives_its_place_back_and_another_programme_takes_over(
    server: EmbeddedNats, nc: NatsClient
) -> None:
    async with running_router(server.url), routed_log(nc) as log:
        first = assessed(LEEDS, ["barnardos-west-yorkshire"], asked=THERAPY)
        await publish_assessed(nc, first)
        [routed] = await log.wait_for(first.referral_id)
        [group] = routed.tasks
        assert group.service_id == GROUPS
        free = {s: await _free(nc, s) for s in (GROUPS, RISE)}

        await publish_assessed(
            nc, _moved(first, LONDON, ["barnardos-west-yorkshire", "childrens-society-rise"], asked=THERAPY)
        )
        _, again = await log.wait_for(first.referral_id, 2)
        await consumers_idle(nc, CONSUMER, TASK_CONSUMER)

        [rise] = again.tasks
        assert (rise.service_id, rise.part_of_task_id) == (RISE, "")  # another programme: no partOf
        assert await _free(nc, GROUPS) == free[GROUPS] + 1
        assert await _free(nc, RISE) == free[RISE] - 1
        ledger = CapacityLedger(await nc.jetstream().key_value(topology.BUCKET_CAPACITY))
        assert not await ledger.holds(group.task_id)
        assert await ledger.holds(rise.task_id)
