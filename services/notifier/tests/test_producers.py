"""The notifier's producers against a real nats-server: referral-received, exit-due, placement reviews and
unacknowledged tasks (closing a referral: ``test_closures.py``, on the same harness).

Source events are built by hand and published on their real subjects; the notifier's consumers (durables
renamed per test) run in this process, and the tests read the NotificationRequested work items they
publish for the subscriptions made here. Each source event is published twice under different
``Nats-Msg-Id``s (a replay JetStream cannot drop): ids derive from the event, so work items are
published once. Schedules are real JetStream message schedules; a test moves the service's clock (not
the server's) to make one fall due within a second, or publishes a fired body itself.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.message import Message
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

from haven.canonical import CS_PROGRAMME
from haven.eligibility.v1 import eligibility_pb2
from haven.kit import bus, topology
from haven.kit.resources import RecordScope, ResourceStore
from haven.notification.v1 import notification_pb2
from haven.referral.v1 import referral_pb2
from haven.routing.v1 import routing_pb2
from haven.task.v1 import task_pb2
from services.notifier.closures import CLOSURES_CONSUMER, ClosedReferrals, ReferralClosures
from services.notifier.domain import RecipientDirectory
from services.notifier.escalation import (
    ANSWERED_CONSUMER,
    DUE_CONSUMER,
    ROUTED_CONSUMER,
    Escalations,
    ScheduledAcknowledgement,
)
from services.notifier.exits import EXITS_CONSUMER, ExitAlerts
from services.notifier.missing import FACTS_CONSUMER, REVIEWS_CONSUMER, MissingEpisodes
from services.notifier.placements import (
    PLACEMENT_REVIEWS_CONSUMER,
    PLACEMENTS_CONSUMER,
    Placements,
    ScheduledPlacementReview,
)
from services.notifier.planner import NotificationPlanner
from services.notifier.received import RECEIVED_CONSUMER, ReceivedReferrals
from services.notifier.schedules import (
    ACKNOWLEDGEMENTS,
    KINDS,
    MISSING_REVIEWS,
    PLACEMENT_REVIEWS,
    SCHEDULE_STREAM,
    Scheduler,
)
from services.notifier.subscriptions import SubscriptionCache
from tests.support.clock import MovableClock

GSS = "E08000003"
LA = "demo-la-manchester"
EDT = "demo-edt-manchester"
HOME = "unseen-south-west"
ICTG = "ictg-provider"
LEAVING_CARE = "manchester-leaving-care"
POLICE = "demo-police-manchester"
ACCOMMODATION = "unseen-specialist-accommodation"
NOW = datetime.now(UTC).replace(microsecond=0)

Handler = Callable[[Msg], Awaitable[None]]


def _unique(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}"


@dataclass
class Notifier:
    """The notifier's producers in this process, with their store and scheduler."""

    js: JetStreamContext
    store: ResourceStore
    scheduler: Scheduler
    received: ReceivedReferrals
    exits: ExitAlerts
    placements: Placements
    escalations: Escalations
    missing: MissingEpisodes
    closed: ClosedReferrals
    closures: ReferralClosures


@asynccontextmanager
async def running(
    js: JetStreamContext, organisations: list[str], *, clock: MovableClock | None = None
) -> AsyncIterator[tuple[Notifier, set[str]]]:
    """Run the producers' consumers with subscriptions for ``organisations``; yield them and their ids.

    ``clock`` is the service's clock: moving it ahead of the server's makes a schedule fire sooner.
    """
    kv = await js.key_value(topology.BUCKET_SUBSCRIPTIONS)
    subscriptions = SubscriptionCache(js)
    await subscriptions.start()
    wanted = []
    for organisation_id in organisations:
        subscription_id = str(uuid.uuid4())
        record = {
            "secret": "s" * 40,
            "organisation_id": organisation_id,
            "endpoint": "http://x/h",
            "topic": "t",
        }
        await kv.put(subscription_id, json.dumps(record).encode())
        wanted.append(subscription_id)
    deadline = time.monotonic() + 5
    while not all(subscriptions.cached(s) for s in wanted):
        assert time.monotonic() < deadline, "subscriptions not seen"
        await asyncio.sleep(0.02)
    directory = RecipientDirectory(
        leaving_care_by_gss={GSS: LEAVING_CARE},
        police_by_gss={GSS: POLICE},
        nrm_competent_authority="single-competent-authority",
    )
    planner = NotificationPlanner(js, subscriptions, directory)
    store = await ResourceStore.open(js)
    clock = clock or MovableClock(datetime.now(UTC))
    scheduler = await Scheduler.open(js, clock)
    closed = await ClosedReferrals.open(js, store)
    missing = await MissingEpisodes.open(js, planner, clock, closed=closed)
    notifier = Notifier(
        js,
        store,
        scheduler,
        ReceivedReferrals(planner),
        ExitAlerts(planner, store, closed),
        Placements(planner, store, scheduler, closed),
        Escalations(planner, store, scheduler, closed),
        missing,
        closed,
        ReferralClosures(closed, planner, store, scheduler, missing),
    )
    consumers: list[tuple[bus.ConsumerSpec, Handler]] = [
        (RECEIVED_CONSUMER, notifier.received.handle),
        (EXITS_CONSUMER, notifier.exits.handle),
        (PLACEMENTS_CONSUMER, notifier.placements.handle_task_status),
        (PLACEMENT_REVIEWS_CONSUMER, notifier.placements.handle_review),
        (ROUTED_CONSUMER, notifier.escalations.handle_routed),
        (ANSWERED_CONSUMER, notifier.escalations.handle_task_status),
        (DUE_CONSUMER, notifier.escalations.handle_due),
        (FACTS_CONSUMER, notifier.missing.handle_facts),
        (REVIEWS_CONSUMER, notifier.missing.handle_review),
        (CLOSURES_CONSUMER, notifier.closures.handle),
    ]
    stop = asyncio.Event()
    suffix = uuid.uuid4().hex[:8]
    tasks = [
        asyncio.create_task(bus.consume(js, replace(spec, durable=f"{spec.durable}-{suffix}"), handler, stop))
        for spec, handler in consumers
    ]
    try:
        yield notifier, set(wanted)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await subscriptions.stop()
        for subscription_id in wanted:
            await kv.delete(subscription_id)


async def publish_twice(js: JetStreamContext, subject: str, event: Message) -> None:
    """Publish an event, then replay it under another message id (as a re-publisher would)."""
    for _ in range(2):
        await bus.publish_event(js, subject, event, msg_id=str(uuid.uuid4()))


async def requested_for(
    js: JetStreamContext, referral_id: str, ours: set[str], expected: int, settle: float = 1.0
) -> list[notification_pb2.NotificationRequested]:
    """Return a referral's work items to ``ours`` once ``expected`` came and none more for ``settle`` s."""
    sub = await js.pull_subscribe(
        topology.NOTIFICATION_REQUESTED, durable=_unique("t"), stream="HAVEN_NOTIFICATIONS"
    )
    found: list[notification_pb2.NotificationRequested] = []
    deadline = time.monotonic() + 20
    quiet_until = None
    try:
        while True:
            try:
                messages = await sub.fetch(100, timeout=0.2)
            except TimeoutError:
                messages = []
            for msg in messages:
                await msg.ack()
                item = notification_pb2.NotificationRequested.FromString(msg.data)
                if item.referral_id == referral_id and item.subscription_id in ours:
                    found.append(item)
            now = time.monotonic()
            if len(found) >= expected:
                quiet_until = quiet_until or now + settle
                if now >= quiet_until:
                    return found
            elif now > deadline:
                raise AssertionError(f"{len(found)} of {expected} work items for the referral")
    finally:
        await sub.unsubscribe()


def by_type_and_org(items: list[notification_pb2.NotificationRequested]) -> list[tuple[str, str]]:
    return sorted((i.event_type, i.recipient_organisation_id) for i in items)


def payload_to(items: list[notification_pb2.NotificationRequested], organisation_id: str) -> dict[str, Any]:
    item = next(i for i in items if i.recipient_organisation_id == organisation_id)
    body: dict[str, Any] = json.loads(item.payload_json)
    return body


async def schedules(js: JetStreamContext, prefix: str) -> set[str]:
    """Return the schedule subjects under a prefix."""
    info = await js.stream_info(SCHEDULE_STREAM, subjects_filter=f"{prefix}.>")
    return set(info.state.subjects or {})


async def store_task(
    store: ResourceStore, referral_id: str, programme_id: str, owner: str, status: str, service: str = ""
) -> str:
    task_id = _unique("task")
    task = {
        "resourceType": "Task",
        "id": task_id,
        "status": status,
        "basedOn": [{"reference": f"ServiceRequest/{referral_id}"}],
        "code": {"coding": [{"system": CS_PROGRAMME, "code": programme_id}]},
        "owner": {"reference": f"Organization/{owner}"},
        "focus": {"reference": f"HealthcareService/{service or programme_id}"},
    }
    await store.put(task, RecordScope(GSS, "", frozenset({owner})), NOW)
    await store.add_index("Task", "based-on", f"ServiceRequest/{referral_id}", task_id)
    return task_id


async def set_status(store: ResourceStore, task_id: str, status: str) -> None:
    stored = await store.read("Task", task_id)
    assert stored is not None
    await store.put({**stored.resource, "status": status}, stored.scope, NOW)


async def store_referral(store: ResourceStore, referral_id: str, priority: str = "routine") -> None:
    request = {
        "resourceType": "ServiceRequest",
        "id": referral_id,
        "priority": priority,
        "requester": {"reference": "Organization/demo-police"},
    }
    await store.put(request, RecordScope(GSS, "demo-police"), NOW)


def status_changed(
    referral_id: str, task_id: str, status: str, at: datetime = NOW
) -> task_pb2.TaskStatusChanged:
    changed = task_pb2.TaskStatusChanged(
        event_id=str(uuid.uuid4()),
        referral_id=referral_id,
        task_id=task_id,
        local_authority_gss=GSS,
        previous_status="requested" if status == "accepted" else "accepted",
        status=status,
    )
    changed.occurred_at.FromDatetime(at)
    return changed


# ---- referral-received ---------------------------------------------------------------------------


def received(referral_id: str, urgency: referral_pb2.Urgency.ValueType) -> referral_pb2.ReferralReceived:
    event = referral_pb2.ReferralReceived(event_id=str(uuid.uuid4()), referral_id=referral_id)
    event.occurred_at.FromDatetime(NOW)
    event.facts.local_authority_gss = GSS
    event.facts.urgency = urgency
    event.facts.child_id = "child-1"
    event.facts.referrer.organisation_id = "demo-police"
    event.facts.referrer.kind = referral_pb2.REFERRER_KIND_POLICE
    return event


async def test_a_received_referral_tells_the_la_and_for_an_emergency_its_edt_once(
    nats_client: NatsClient,
) -> None:
    js = nats_client.jetstream()
    emergency, routine = _unique("ref"), _unique("ref")
    async with running(js, [LA, EDT]) as (_, ours):
        # Bytes that are no ReferralReceived are refused, and the consumer goes on with the next.
        await js.publish(
            topology.REFERRAL_RECEIVED, b"\xff\xffnot a protobuf", headers={"Nats-Msg-Id": _unique("x")}
        )
        await publish_twice(
            js, topology.REFERRAL_RECEIVED, received(emergency, referral_pb2.URGENCY_EMERGENCY)
        )
        await publish_twice(js, topology.REFERRAL_RECEIVED, received(routine, referral_pb2.URGENCY_ROUTINE))
        urgent_items = await requested_for(js, emergency, ours, expected=2)
        routine_items = await requested_for(js, routine, ours, expected=1)
    assert by_type_and_org(urgent_items) == [("referral-received", EDT), ("referral-received", LA)]
    assert by_type_and_org(routine_items) == [("referral-received", LA)]
    la = payload_to(urgent_items, LA)
    assert la["urgency"] == "emergency" and la["child_id"] == "child-1" and la["referrer_kind"] == "police"


# ---- exit-due ------------------------------------------------------------------------------------


def exit_approaching(referral_id: str, kind: str, days: int) -> eligibility_pb2.ExitApproaching:
    event = eligibility_pb2.ExitApproaching(
        event_id=str(uuid.uuid4()),
        referral_id=referral_id,
        programme_id="ictg",
        exit_date="2027-01-31",
        days_before_exit=days,
        exit_kind=kind,
        exit_reason="plain words about the child that must never be sent",
    )
    event.occurred_at.FromDatetime(NOW)
    event.facts.local_authority_gss = GSS
    event.facts.child_id = "child-9"
    event.facts.dates_of_birth.add(date="2009-01-31", basis=referral_pb2.DATE_OF_BIRTH_BASIS_DOCUMENTED)
    return event


async def test_an_exit_alert_tells_the_la_task_owners_and_at_18_the_leaving_care_team(
    nats_client: NatsClient,
) -> None:
    js = nats_client.jetstream()
    at_18, time_limit, bad = _unique("ref"), _unique("ref"), _unique("ref")
    async with running(js, [LA, ICTG, LEAVING_CARE]) as (notifier, ours):
        task_id = await store_task(notifier.store, at_18, "ictg", ICTG, "accepted")
        await store_task(notifier.store, at_18, "ictg", "closed-provider", "completed")
        await store_task(notifier.store, time_limit, "ictg", ICTG, "in-progress")
        # An alert with a date that is not one is refused, and the next is still handled.
        broken = exit_approaching(bad, "turns-18", 30)
        broken.exit_date = "31/01/2027"
        await publish_twice(js, topology.ELIGIBILITY_EXIT_APPROACHING, broken)
        await publish_twice(
            js, topology.ELIGIBILITY_EXIT_APPROACHING, exit_approaching(at_18, "turns-18", 30)
        )
        await publish_twice(
            js, topology.ELIGIBILITY_EXIT_APPROACHING, exit_approaching(time_limit, "time-limit", 7)
        )
        items = await requested_for(js, at_18, ours, expected=3)
        limited = await requested_for(js, time_limit, ours, expected=2)
        assert await requested_for(js, bad, ours, expected=0, settle=0.3) == []
    assert by_type_and_org(items) == [("exit-due", LA), ("exit-due", ICTG), ("exit-due", LEAVING_CARE)]
    assert by_type_and_org(limited) == [("exit-due", LA), ("exit-due", ICTG)]
    la, provider, leaving = (payload_to(items, org) for org in (LA, ICTG, LEAVING_CARE))
    assert la == {
        "referral_id": at_18,
        "local_authority_gss": GSS,
        "programme_id": "ictg",
        "exit_kind": "turns-18",
        "exit_date": "2027-01-31",
        "days_before_exit": 30,
        "schedule_id": "exit-30-days",
    }
    assert provider["own_task_ids"] == [task_id] and "child_id" not in provider
    assert leaving["child_id"] == "child-9" and leaving["date_of_birth"] == "2009-01-31"
    assert all(b"plain words" not in i.payload_json for i in items + limited)
    assert payload_to(limited, LA)["schedule_id"] == "exit-7-days"


# ---- placement reviews ---------------------------------------------------------------------------

PLACEMENT_ENTRIES = {
    "isa-72-hour",
    "risk-needs-1-week",
    "pep-2-weeks",
    "review-1-month",
    "review-3-months",
    "review-6-months",
    "stay-limit-12-months",
}


async def test_an_accepted_accommodation_task_schedules_reviews_until_the_task_closes(
    nats_client: NatsClient,
) -> None:
    js = nats_client.jetstream()
    referral_id = _unique("ref")
    async with running(js, [LA, HOME]) as (notifier, _):
        await store_referral(notifier.store, referral_id)
        home_task = await store_task(notifier.store, referral_id, ACCOMMODATION, HOME, "accepted")
        guardian_task = await store_task(notifier.store, referral_id, "ictg", ICTG, "accepted")
        for task_id in (guardian_task, home_task):
            await publish_twice(
                js, topology.TASK_STATUS_CHANGED, status_changed(referral_id, task_id, "accepted")
            )
        prefix = f"{PLACEMENT_REVIEWS.prefix}.{referral_id}"
        await wait_for(lambda: schedules(js, prefix), lambda found: len(found) == len(PLACEMENT_ENTRIES))
        # Only the accommodation Task starts a placement; a guardian's acceptance schedules nothing.
        assert await schedules(js, prefix) == {f"{prefix}.{home_task}.{e}" for e in PLACEMENT_ENTRIES}

        await set_status(notifier.store, home_task, "completed")
        await publish_twice(
            js, topology.TASK_STATUS_CHANGED, status_changed(referral_id, home_task, "completed")
        )
        await wait_for(lambda: schedules(js, prefix), lambda found: not found)


async def test_a_fired_placement_review_goes_to_the_la_and_the_home_only_while_it_is_open(
    nats_client: NatsClient,
) -> None:
    js = nats_client.jetstream()
    referral_id, closed_referral = _unique("ref"), _unique("ref")
    accepted_at = NOW - timedelta(hours=1)
    # The service's clock says 72 hours have (all but a second) passed: the first review fires now.
    clock = MovableClock(accepted_at + timedelta(hours=72) - timedelta(seconds=1))
    async with running(js, [LA, HOME, ICTG], clock=clock) as (notifier, ours):
        await store_referral(notifier.store, referral_id)
        task_id = await store_task(
            notifier.store, referral_id, ACCOMMODATION, HOME, "accepted", "unseen-cssw-home"
        )
        await store_task(notifier.store, referral_id, "ictg", ICTG, "accepted")
        changed = status_changed(referral_id, task_id, "accepted", at=accepted_at)
        await publish_twice(js, topology.TASK_STATUS_CHANGED, changed)
        items = await requested_for(js, referral_id, ours, expected=2)

        # A review that fires after the placement ended raises nothing.
        closed_task = await store_task(notifier.store, closed_referral, ACCOMMODATION, HOME, "cancelled")
        fired = ScheduledPlacementReview(
            event_id=str(uuid.uuid4()),
            referral_id=closed_referral,
            task_id=closed_task,
            programme_id=ACCOMMODATION,
            schedule_id="review-1-month",
            anchor_at=accepted_at.isoformat(),
            local_authority_gss=GSS,
            referrer_organisation_id="demo-police",
        )
        await js.publish(PLACEMENT_REVIEWS.target, fired.to_bytes())
        assert await requested_for(js, closed_referral, ours, expected=0, settle=0.5) == []
    assert by_type_and_org(items) == [("review-due", LA), ("review-due", HOME)]
    la, home = payload_to(items, LA), payload_to(items, HOME)
    assert la["review_kind"] == "isa-72-hour" and la["placement_task_id"] == task_id
    assert la["review_due_at"] == (accepted_at + timedelta(hours=72)).isoformat().replace("+00:00", "Z")
    assert la["programme_id"] == ACCOMMODATION and la["requires_confirmation"] is False
    assert home["own_task_ids"] == [task_id] and home["schedule_id"] == "isa-72-hour"


# ---- acknowledgement deadlines -------------------------------------------------------------------


def routed(referral_id: str, tasks: list[tuple[str, str, str]], at: datetime) -> routing_pb2.ReferralRouted:
    event = routing_pb2.ReferralRouted(
        event_id=str(uuid.uuid4()),
        referral_id=referral_id,
        local_authority_gss=GSS,
        referrer_organisation_id="demo-police",
        trigger=routing_pb2.ROUTING_TRIGGER_ASSESSED,
        sequence=1,
    )
    event.occurred_at.FromDatetime(at)
    for task_id, programme_id, owner in tasks:
        event.tasks.add(
            task_id=task_id,
            programme_id=programme_id,
            service_id=f"{programme_id}-service",
            owner_organisation_id=owner,
            status="requested",
        )
    return event


async def test_an_emergency_bed_not_answered_in_time_goes_to_the_la_and_its_edt(
    nats_client: NatsClient,
) -> None:
    js = nats_client.jetstream()
    referral_id = _unique("ref")
    routed_at = NOW - timedelta(minutes=5)
    # Two hours (all but a second) after routing on the service's clock: the bed's deadline falls due
    # now; the ICTG's 24 hours are far off.
    clock = MovableClock(routed_at + timedelta(hours=2) - timedelta(seconds=1))
    async with running(js, [LA, EDT, HOME, ICTG], clock=clock) as (notifier, ours):
        await store_referral(notifier.store, referral_id, priority="stat")
        bed = await store_task(notifier.store, referral_id, ACCOMMODATION, HOME, "requested")
        guardian = await store_task(notifier.store, referral_id, "ictg", ICTG, "requested")
        event = routed(referral_id, [(bed, ACCOMMODATION, HOME), (guardian, "ictg", ICTG)], routed_at)
        await publish_twice(js, topology.routed_subject(GSS), event)
        items = await requested_for(js, referral_id, ours, expected=2)

        prefix = f"{ACKNOWLEDGEMENTS.prefix}.{referral_id}"
        guardian_deadline = f"{prefix}.{guardian}.ictg-24-hours"
        assert guardian_deadline in await schedules(js, prefix)
        await set_status(notifier.store, guardian, "accepted")
        await publish_twice(
            js, topology.TASK_STATUS_CHANGED, status_changed(referral_id, guardian, "accepted")
        )
        await wait_for(lambda: schedules(js, prefix), lambda found: guardian_deadline not in found)
    assert by_type_and_org(items) == [("task-not-acknowledged", EDT), ("task-not-acknowledged", LA)]
    la, edt = payload_to(items, LA), payload_to(items, EDT)
    due = (routed_at + timedelta(hours=2)).isoformat().replace("+00:00", "Z")
    assert la == {
        "referral_id": referral_id,
        "local_authority_gss": GSS,
        "urgency": "emergency",
        "programme_id": ACCOMMODATION,
        "unacknowledged_task_ids": [bed],
        "service_ids": [f"{ACCOMMODATION}-service"],
        "schedule_id": "accommodation-emergency-2-hours",
        "acknowledge_due_at": due,
    }
    assert edt["acknowledge_due_at"] == due and "schedule_id" not in edt


async def test_a_deadline_for_an_answered_task_or_a_routine_bed_raises_nothing(
    nats_client: NatsClient,
) -> None:
    js = nats_client.jetstream()
    answered, routine = _unique("ref"), _unique("ref")
    async with running(js, [LA, EDT]) as (notifier, ours):
        await store_referral(notifier.store, routine, priority="routine")
        bed = await store_task(notifier.store, routine, ACCOMMODATION, HOME, "requested")
        await publish_twice(
            js, topology.routed_subject(GSS), routed(routine, [(bed, ACCOMMODATION, HOME)], NOW)
        )

        task_id = await store_task(notifier.store, answered, "ictg", ICTG, "accepted")
        fired = ScheduledAcknowledgement(
            event_id=str(uuid.uuid4()),
            referral_id=answered,
            task_id=task_id,
            programme_id="ictg",
            service_id="ictg",
            schedule_id="ictg-24-hours",
            due_at=NOW.isoformat(),
            local_authority_gss=GSS,
            urgency="routine",
        )
        await js.publish(ACKNOWLEDGEMENTS.target, fired.to_bytes())
        await js.publish(ACKNOWLEDGEMENTS.target, b"not json")  # refused, never retried
        assert await requested_for(js, answered, ours, expected=0, settle=0.5) == []
        # A routine placement has no deadline of its own (only an emergency one does).
        assert await schedules(js, f"{ACKNOWLEDGEMENTS.prefix}.{routine}") == set()


# ---- missing-episode reviews (on the shared scheduling code) -------------------------------------


async def test_a_missing_review_fires_from_the_shared_schedules_while_the_child_is_missing(
    nats_client: NatsClient,
) -> None:
    js = nats_client.jetstream()
    referral_id = _unique("ref")
    since = NOW - timedelta(hours=1)
    # Four weeks (all but a second) after missing_since on the service's clock: the review fires now.
    clock = MovableClock(since + timedelta(days=28) - timedelta(seconds=1))
    update = referral_pb2.ReferralFactsUpdated(event_id=str(uuid.uuid4()), referral_id=referral_id)
    update.occurred_at.FromDatetime(NOW)
    update.facts.local_authority_gss = GSS
    update.facts.missing_since = since.isoformat()
    async with running(js, [LA, POLICE], clock=clock) as (_, ours):
        await publish_twice(js, topology.REFERRAL_FACTS_UPDATED, update)
        items = await requested_for(js, referral_id, ours, expected=4)
        prefix = f"{MISSING_REVIEWS.prefix}.{referral_id}"
        assert f"{prefix}.long-term-missing-closure" in await schedules(js, prefix)
    assert by_type_and_org(items) == [
        ("missing-episode-reported", LA),
        ("missing-episode-reported", POLICE),
        ("review-due", LA),
        ("review-due", POLICE),
    ]
    review = next(i for i in items if i.event_type == "review-due" and i.recipient_organisation_id == POLICE)
    assert json.loads(review.payload_json)["review_kind"] == "multi-agency-missing-review"


# ---- the shared schedule stream ------------------------------------------------------------------


async def test_an_older_schedule_stream_is_widened_and_keeps_its_schedules(nats_client: NatsClient) -> None:
    js = nats_client.jetstream()
    await topology.ensure_topology(js)
    await js.delete_stream(SCHEDULE_STREAM)
    # The stream as the first notifier made it: missing-episode reviews only.
    await js.add_stream(
        StreamConfig(
            name=SCHEDULE_STREAM,
            subjects=[f"{MISSING_REVIEWS.prefix}.>", MISSING_REVIEWS.target],
            storage=StorageType.FILE,
            allow_msg_schedules=True,
        )
    )
    kept = f"{MISSING_REVIEWS.prefix}.{_unique('ref')}.multi-agency-missing-review"
    await js.publish(
        kept,
        b"{}",
        headers={"Nats-Schedule": "@at 2099-01-01T00:00:00Z", "Nats-Schedule-Target": MISSING_REVIEWS.target},
    )
    await topology.ensure_topology(js)
    info = await js.stream_info(SCHEDULE_STREAM)
    assert set(info.config.subjects or ()) == {f"{k.prefix}.>" for k in KINDS} | {k.target for k in KINDS}
    assert kept in await schedules(js, MISSING_REVIEWS.prefix)


async def wait_for(read: Callable[[], Awaitable[set[str]]], done: Callable[[set[str]], bool]) -> None:
    """Poll ``read`` until ``done`` holds (the consumers work asynchronously); fail after 15 s."""
    deadline = time.monotonic() + 15
    while not done(found := await read()):
        assert time.monotonic() < deadline, f"not reached: {sorted(found)}"
        await asyncio.sleep(0.05)
