"""The planner's producers against a real JetStream: task-rejected, no-capacity and eligibility-changed.

Source events are published on their real subjects and streams; the notifier's consumers (durables
renamed per test) plan them, and the test reads the NotificationRequested work items they publish.
Each source event is published twice under different ``Nats-Msg-Id``s (a replay JetStream cannot
drop): the notification ids derive from the event, so the work items are published once.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime

from google.protobuf.message import Message
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from haven.canonical import CS_PROGRAMME
from haven.eligibility.v1 import eligibility_pb2
from haven.kit import bus, topology
from haven.kit.resources import RecordScope, ResourceStore
from haven.notification.v1 import notification_pb2
from haven.routing.v1 import routing_pb2
from haven.task.v1 import task_pb2
from services.notifier.changes import ELIGIBILITY_CONSUMER, TASKS_CONSUMER, ChangeNotices
from services.notifier.domain import RecipientDirectory
from services.notifier.planner import CONSUMER as PLANNER_CONSUMER
from services.notifier.planner import NotificationPlanner
from services.notifier.subscriptions import SubscriptionCache

GSS = "E08000003"
LA = "demo-la-manchester"
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _unique(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}"


async def _subscribe(js: JetStreamContext, organisation_id: str) -> str:
    subscription_id = str(uuid.uuid4())
    record = {"secret": "s" * 40, "organisation_id": organisation_id, "endpoint": "http://x/h", "topic": "t"}
    kv = await js.key_value(topology.BUCKET_SUBSCRIPTIONS)
    await kv.put(subscription_id, json.dumps(record).encode())
    return subscription_id


@asynccontextmanager
async def planning(js: JetStreamContext, organisations: list[str]) -> AsyncIterator[set[str]]:
    """Run the notifier's planning consumers in this process, with subscriptions for `organisations`.

    Yields the ids of those subscriptions (others, from earlier tests, may exist for the same LA).
    """
    subscriptions = SubscriptionCache(js)
    await subscriptions.start()
    wanted = [await _subscribe(js, org) for org in organisations]
    deadline = time.monotonic() + 5
    while not all(subscriptions.cached(s) for s in wanted):
        assert time.monotonic() < deadline, "subscriptions not seen"
        await asyncio.sleep(0.02)
    planner = NotificationPlanner(js, subscriptions, RecipientDirectory())
    changes = ChangeNotices(planner, await ResourceStore.open(js))
    stop = asyncio.Event()
    suffix = uuid.uuid4().hex[:8]
    tasks = [
        asyncio.create_task(bus.consume(js, replace(spec, durable=f"{spec.durable}-{suffix}"), handler, stop))
        for spec, handler in (
            (PLANNER_CONSUMER, planner.handle),
            (TASKS_CONSUMER, changes.handle_task_status),
            (ELIGIBILITY_CONSUMER, changes.handle_assessed),
        )
    ]
    try:
        yield set(wanted)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await subscriptions.stop()
        kv = await js.key_value(topology.BUCKET_SUBSCRIPTIONS)
        for subscription_id in wanted:
            await kv.delete(subscription_id)


async def publish_twice(js: JetStreamContext, subject: str, event: Message) -> None:
    """Publish an event, then replay it under another message id (as a re-publisher would)."""
    for _ in range(2):
        await bus.publish_event(js, subject, event, msg_id=str(uuid.uuid4()))


async def requested_for(
    js: JetStreamContext, referral_id: str, ours: set[str], expected: int, settle: float = 1.0
) -> list[notification_pb2.NotificationRequested]:
    """Return a referral's work items to `ours` once `expected` arrived and no more came for `settle` s."""
    sub = await js.pull_subscribe(
        topology.NOTIFICATION_REQUESTED, durable=_unique("t"), stream="HAVEN_NOTIFICATIONS"
    )
    found: list[notification_pb2.NotificationRequested] = []
    deadline = time.monotonic() + 15
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


def _by_type_and_org(items: list[notification_pb2.NotificationRequested]) -> list[tuple[str, str]]:
    return sorted((i.event_type, i.recipient_organisation_id) for i in items)


async def test_a_rejected_task_tells_the_la_and_the_referrer_once(nats_client: NatsClient) -> None:
    js = nats_client.jetstream()
    referral_id, referrer = _unique("ref"), _unique("referrer")
    store = await ResourceStore.open(js)
    request = {
        "resourceType": "ServiceRequest",
        "id": referral_id,
        "requester": {"reference": f"Organization/{referrer}"},
    }
    await store.put(request, RecordScope(GSS, referrer), NOW)
    async with planning(js, [LA, referrer, "ictg-provider"]) as ours:
        for status, reason in (("accepted", ""), ("rejected", "no-capacity")):
            changed = task_pb2.TaskStatusChanged(
                event_id=str(uuid.uuid4()),
                referral_id=referral_id,
                task_id="task-1",
                programme_id="ictg",
                service_id="ictg-gm",
                owner_organisation_id="ictg-provider",
                local_authority_gss=GSS,
                previous_status="requested",
                status=status,
                status_reason_code=reason,
                changed_by_organisation_id="ictg-provider",
            )
            changed.occurred_at.FromDatetime(NOW)
            await publish_twice(js, topology.TASK_STATUS_CHANGED, changed)
        items = await requested_for(js, referral_id, ours, expected=2)
    assert _by_type_and_org(items) == [("task-rejected", LA), ("task-rejected", referrer)]
    la = next(i for i in items if i.recipient_organisation_id == LA)
    payload = json.loads(la.payload_json)
    assert payload["rejected_task_ids"] == ["task-1"] and payload["rejection_reason_code"] == "no-capacity"
    assert la.notification_id != next(i for i in items if i != la).notification_id


async def test_a_routing_with_no_free_place_raises_no_capacity(nats_client: NatsClient) -> None:
    js = nats_client.jetstream()
    referral_id, referrer = _unique("ref"), _unique("referrer")
    routed = routing_pb2.ReferralRouted(
        event_id=str(uuid.uuid4()),
        referral_id=referral_id,
        local_authority_gss=GSS,
        referrer_organisation_id=referrer,
        trigger=routing_pb2.ROUTING_TRIGGER_ASSESSED,
        sequence=1,
        alternatives=[
            routing_pb2.Alternative(
                service_id="cssw", programme_id="unseen", reason="full", waiting_position=2
            )
        ],
        unrouted=[routing_pb2.Unrouted(programme_id="unseen", reason="no capacity: no covering service")],
        fallback=routing_pb2.Fallback(inform_local_authority=True),
    )
    routed.occurred_at.FromDatetime(NOW)
    async with planning(js, [LA, referrer]) as ours:
        await publish_twice(js, topology.routed_subject(GSS), routed)
        items = await requested_for(js, referral_id, ours, expected=4)
    assert _by_type_and_org(items) == [
        ("no-capacity", LA),
        ("no-capacity", referrer),
        ("referral-routed", LA),
        ("referral-routed", referrer),
    ]
    la = next(i for i in items if i.event_type == "no-capacity" and i.recipient_organisation_id == LA)
    assert json.loads(la.payload_json)["waiting_list"] == {"unseen": 2}


def _assessed(
    referral_id: str, trigger: eligibility_pb2.Trigger.ValueType
) -> eligibility_pb2.EligibilityAssessed:
    event = eligibility_pb2.EligibilityAssessed(
        event_id=str(uuid.uuid4()),
        referral_id=referral_id,
        assessed_on="2026-03-02",
        trigger=trigger,
        changed_programmes=["ictg"],
    )
    event.facts.local_authority_gss = GSS
    event.occurred_at.FromDatetime(NOW)
    return event


async def test_a_changed_eligibility_tells_the_la_and_the_task_owner(nats_client: NatsClient) -> None:
    js = nats_client.jetstream()
    referral_id, first_assessment = _unique("ref"), _unique("ref")
    store = await ResourceStore.open(js)
    task = {
        "resourceType": "Task",
        "id": _unique("task"),
        "status": "accepted",
        "code": {"coding": [{"system": CS_PROGRAMME, "code": "ictg"}]},
        "owner": {"reference": "Organization/ictg-provider"},
    }
    await store.put(task, RecordScope(GSS, "", frozenset({"ictg-provider"})), NOW)
    await store.add_index("Task", "based-on", f"ServiceRequest/{referral_id}", str(task["id"]))
    async with planning(js, [LA, "ictg-provider"]) as ours:
        await publish_twice(
            js,
            topology.ELIGIBILITY_ASSESSED,
            _assessed(first_assessment, eligibility_pb2.TRIGGER_REFERRAL_RECEIVED),
        )
        await publish_twice(
            js, topology.ELIGIBILITY_ASSESSED, _assessed(referral_id, eligibility_pb2.TRIGGER_FACTS_UPDATED)
        )
        items = await requested_for(js, referral_id, ours, expected=2)
        assert await requested_for(js, first_assessment, ours, expected=0, settle=0.5) == []
    assert _by_type_and_org(items) == [("eligibility-changed", LA), ("eligibility-changed", "ictg-provider")]
    provider = json.loads(
        next(i for i in items if i.recipient_organisation_id == "ictg-provider").payload_json
    )
    assert provider["own_programme_ids"] == ["ictg"] and provider["changed_programme_ids"] == ["ictg"]
