"""Closing a referral, against a real nats-server: schedules purged, providers told, nothing raised after.

The producers run in this process on the harness of ``test_producers.py`` (real JetStream message
schedules, real KV, durables renamed per test). ReferralClosed is published on its real subject as the
gateway publishes it. Late events and fired schedules are published for a closed referral first and
then for an open one on the same subjects: each consumer handles its messages in order, so once the
open referral's notifications are in, the closed referral's messages have been handled too.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from haven.kit import bus, topology
from haven.kit.resources import RecordScope, ResourceStore
from haven.notification.v1 import notification_pb2
from haven.referral.v1 import referral_pb2
from services.notifier.closures import closed_key, closed_source
from services.notifier.escalation import ScheduledAcknowledgement
from services.notifier.missing import ScheduledReview
from services.notifier.placements import ScheduledPlacementReview
from services.notifier.schedules import ACKNOWLEDGEMENTS, MISSING_REVIEWS, PLACEMENT_REVIEWS
from services.notifier.tests.test_producers import (
    ACCOMMODATION,
    GSS,
    HOME,
    ICTG,
    LA,
    NOW,
    PLACEMENT_ENTRIES,
    POLICE,
    Notifier,
    exit_approaching,
    publish_twice,
    routed,
    running,
    schedules,
    status_changed,
    store_task,
    wait_for,
)

Items = list[notification_pb2.NotificationRequested]
PREFIXES = (MISSING_REVIEWS.prefix, PLACEMENT_REVIEWS.prefix, ACKNOWLEDGEMENTS.prefix)


def _unique(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}"


async def store_referral(store: ResourceStore, referral_id: str, status: str = "active") -> None:
    request = {
        "resourceType": "ServiceRequest",
        "id": referral_id,
        "status": status,
        "priority": "routine",
        "requester": {"reference": "Organization/demo-police"},
    }
    await store.put(request, RecordScope(GSS, "demo-police"), NOW)


def referral_closed(
    referral_id: str, closure: referral_pb2.ReferralClosure.ValueType = referral_pb2.REFERRAL_CLOSURE_REVOKED
) -> referral_pb2.ReferralClosed:
    event = referral_pb2.ReferralClosed(
        event_id=str(uuid.uuid4()),
        referral_id=referral_id,
        closure=closure,
        local_authority_gss=GSS,
        referrer_organisation_id="demo-police",
        closed_by_organisation_id=LA,
    )
    event.occurred_at.FromDatetime(NOW)
    return event


def facts_updated(referral_id: str, since: datetime) -> referral_pb2.ReferralFactsUpdated:
    update = referral_pb2.ReferralFactsUpdated(event_id=str(uuid.uuid4()), referral_id=referral_id)
    update.occurred_at.FromDatetime(NOW)
    update.facts.local_authority_gss = GSS
    update.facts.missing_since = since.isoformat()
    return update


async def collect(
    js: JetStreamContext,
    referral_id: str,
    ours: set[str],
    done: Callable[[Items], bool],
    settle: float = 1.0,
) -> Items:
    """Return a referral's work items to ``ours`` once ``done`` holds and none more came for ``settle`` s."""
    sub = await js.pull_subscribe(
        topology.NOTIFICATION_REQUESTED, durable=_unique("t"), stream="HAVEN_NOTIFICATIONS"
    )
    found: Items = []
    deadline = time.monotonic() + 20
    quiet_until: float | None = None
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
                    quiet_until = None  # something came: wait a whole quiet period again
            now = time.monotonic()
            if done(found):
                quiet_until = quiet_until or now + settle
                if now >= quiet_until:
                    return found
            elif now > deadline:
                raise AssertionError(f"not reached: {sorted(i.event_type for i in found)}")
    finally:
        await sub.unsubscribe()


def types_of(items: Items) -> set[str]:
    return {i.event_type for i in items}


async def schedules_of(js: JetStreamContext, referral_id: str) -> set[str]:
    """Return every schedule subject of a referral, of all three kinds."""
    found: set[str] = set()
    for prefix in PREFIXES:
        found |= await schedules(js, f"{prefix}.{referral_id}")
    return found


async def kv_value(kv: KeyValue, key: str) -> bytes | None:
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None
    return entry.value


async def schedule_everything(js: JetStreamContext, notifier: Notifier, referral_id: str) -> tuple[str, str]:
    """Give a referral every kind of schedule: missing reviews, placement reviews, an ICTG deadline.

    Return the accommodation and ICTG task ids once all ten schedules exist.
    """
    await store_referral(notifier.store, referral_id)
    await publish_twice(
        js, topology.REFERRAL_FACTS_UPDATED, facts_updated(referral_id, NOW - timedelta(hours=1))
    )
    home = await store_task(notifier.store, referral_id, ACCOMMODATION, HOME, "accepted")
    await publish_twice(js, topology.TASK_STATUS_CHANGED, status_changed(referral_id, home, "accepted"))
    guardian = await store_task(notifier.store, referral_id, "ictg", ICTG, "requested")
    await publish_twice(
        js, topology.routed_subject(GSS), routed(referral_id, [(guardian, "ictg", ICTG)], NOW)
    )
    expected = (
        {
            f"{MISSING_REVIEWS.prefix}.{referral_id}.{e}"
            for e in ("multi-agency-missing-review", "long-term-missing-closure")
        }
        | {f"{PLACEMENT_REVIEWS.prefix}.{referral_id}.{home}.{e}" for e in PLACEMENT_ENTRIES}
        | {f"{ACKNOWLEDGEMENTS.prefix}.{referral_id}.{guardian}.ictg-24-hours"}
    )
    await wait_for(lambda: schedules_of(js, referral_id), lambda found: found == expected)
    return home, guardian


async def test_a_close_purges_every_schedule_of_the_referral_and_tells_its_providers_once(
    nats_client: NatsClient,
) -> None:
    js = nats_client.jetstream()
    deliveries = await js.key_value(topology.BUCKET_DELIVERIES)
    closing, other = _unique("ref"), _unique("ref")
    async with running(js, [LA, POLICE, HOME, ICTG]) as (notifier, ours):
        home, guardian = await schedule_everything(js, notifier, closing)
        await schedule_everything(js, notifier, other)
        others_before = await schedules_of(js, other)
        assert await kv_value(deliveries, f"missing.{closing}") is not None

        # Bytes that are no ReferralClosed, and closes naming no usable referral, are refused; the
        # consumer goes on with the next.
        await js.publish(
            topology.REFERRAL_CLOSED, b"\xff\xffnot a protobuf", headers={"Nats-Msg-Id": _unique("x")}
        )
        for bad_id in ("", "not a token"):
            bad = referral_closed(closing)
            bad.referral_id = bad_id
            await bus.publish_event(js, topology.REFERRAL_CLOSED, bad, msg_id=bad.event_id)
        first = referral_closed(closing, referral_pb2.REFERRAL_CLOSURE_REVOKED)
        await publish_twice(js, topology.REFERRAL_CLOSED, first)  # a redelivery
        # A second close of the same referral (as if at another version): it closes nothing new.
        second = referral_closed(closing, referral_pb2.REFERRAL_CLOSURE_COMPLETED)
        await bus.publish_event(js, topology.REFERRAL_CLOSED, second, msg_id=second.event_id)

        await wait_for(lambda: schedules_of(js, closing), lambda found: not found)
        items = await collect(
            js, closing, ours, lambda found: sum(i.event_type == "referral-closed" for i in found) >= 2
        )
        # The other referral keeps every schedule and its episode, and is not closed.
        assert await schedules_of(js, other) == others_before
        assert await kv_value(deliveries, f"missing.{other}") is not None
        assert await kv_value(deliveries, closed_key(other)) is None
        assert not await notifier.closed.is_closed(other)
        assert await notifier.closed.is_closed(closing)
        other_items = await collect(js, other, ours, lambda found: True, settle=0.3)

    assert await kv_value(deliveries, f"missing.{closing}") is None
    mark = await kv_value(deliveries, closed_key(closing))
    assert mark is not None and referral_pb2.ReferralClosed.FromString(mark) == first
    closed_items = [i for i in items if i.event_type == "referral-closed"]
    # Once per provider holding an open task, under the first close's ids; the LA closed it itself.
    assert sorted(i.recipient_organisation_id for i in closed_items) == sorted([HOME, ICTG])
    by_owner = {i.recipient_organisation_id: json.loads(i.payload_json) for i in closed_items}
    closed_at = NOW.isoformat().replace("+00:00", "Z")
    assert by_owner[HOME] == {
        "referral_id": closing,
        "closure": "revoked",
        "closed_at": closed_at,
        "own_task_ids": [home],
    }
    assert by_owner[ICTG]["own_task_ids"] == [guardian]
    assert "referral-closed" not in types_of(other_items)


async def test_after_a_close_fired_schedules_and_late_events_raise_nothing(nats_client: NatsClient) -> None:
    js = nats_client.jetstream()
    deliveries = await js.key_value(topology.BUCKET_DELIVERIES)
    # closed: ReferralClosed handled. revoked: the ServiceRequest is stored revoked but the notifier has
    # not seen the event yet. open: the control, which must raise everything the others do not.
    closed, revoked, still_open = _unique("ref"), _unique("ref"), _unique("ref")
    order = (closed, revoked, still_open)
    async with running(js, [LA, POLICE, HOME, ICTG]) as (notifier, ours):
        tasks: dict[str, tuple[str, str]] = {}
        for referral_id in order:
            await store_referral(
                notifier.store, referral_id, "revoked" if referral_id == revoked else "active"
            )
            home = await store_task(notifier.store, referral_id, ACCOMMODATION, HOME, "accepted")
            guardian = await store_task(notifier.store, referral_id, "ictg", ICTG, "requested")
            tasks[referral_id] = (home, guardian)
        await bus.publish_event(js, topology.REFERRAL_CLOSED, referral_closed(closed), msg_id=_unique("c"))
        await wait_for(lambda: _keys(deliveries, closed_key(closed)), bool)
        since = NOW - timedelta(days=28)
        for referral_id in order:
            home, guardian = tasks[referral_id]
            # An episode written as the referral was closed (after the close forgot the open one).
            episode = {"episode_id": f"ep-{referral_id}", "missing_since": since.isoformat()}
            await deliveries.put(f"missing.{referral_id}", json.dumps(episode).encode())
            # Schedules that fire now, and eligibility's alert published before the close.
            for subject, body in (
                (MISSING_REVIEWS.target, missing_review(referral_id, since)),
                (PLACEMENT_REVIEWS.target, placement_review(referral_id, home)),
                (ACKNOWLEDGEMENTS.target, deadline(referral_id, guardian)),
            ):
                await js.publish(subject, body)
            await publish_twice(
                js, topology.ELIGIBILITY_EXIT_APPROACHING, exit_approaching(referral_id, "time-limit", 7)
            )
        fired = {"review-due", "task-not-acknowledged", "exit-due"}
        await collect(js, still_open, ours, lambda found: fired <= types_of(found), settle=0)

        # Late events that would report an episode and set schedules of every kind.
        for referral_id in order:
            home, _ = tasks[referral_id]
            await publish_twice(
                js, topology.REFERRAL_FACTS_UPDATED, facts_updated(referral_id, NOW - timedelta(hours=2))
            )
            late = await store_task(notifier.store, referral_id, "ictg", ICTG, "requested")
            await publish_twice(
                js, topology.routed_subject(GSS), routed(referral_id, [(late, "ictg", ICTG)], NOW)
            )
            await publish_twice(
                js, topology.TASK_STATUS_CHANGED, status_changed(referral_id, home, "accepted")
            )
        await collect(
            js, still_open, ours, lambda found: "missing-episode-reported" in types_of(found), settle=0
        )
        await wait_for(lambda: schedules_of(js, still_open), lambda found: len(found) == 2 + 1 + 7)
        # Each consumer has handled the closed referrals' messages before the open one's.
        assert await schedules_of(js, closed) == set()
        assert await schedules_of(js, revoked) == set()
        closed_items = await collect(js, closed, ours, lambda found: True, settle=0.5)
        revoked_items = await collect(js, revoked, ours, lambda found: True, settle=0.5)

    assert types_of(closed_items) == {"referral-closed"}
    assert revoked_items == []


@pytest.mark.parametrize("stamped", [True, False])
def test_a_close_without_a_time_or_closure_is_still_a_close(stamped: bool) -> None:
    event = referral_pb2.ReferralClosed(event_id="ev-1", referral_id="ref-1", local_authority_gss=GSS)
    if stamped:
        event.occurred_at.FromDatetime(NOW)
    now = datetime(2030, 1, 1, tzinfo=UTC)
    source = closed_source(event, (), now)
    assert source.occurred_at == (NOW if stamped else now)
    assert dict(source.facts) == {"referral_id": "ref-1", **({"closed_at": NOW} if stamped else {})}


def missing_review(referral_id: str, since: datetime) -> bytes:
    return ScheduledReview(
        event_id=str(uuid.uuid4()),
        referral_id=referral_id,
        episode_id=f"ep-{referral_id}",
        schedule_id="multi-agency-missing-review",
        anchor_at=since.isoformat(),
        local_authority_gss=GSS,
        referrer_organisation_id="demo-police",
    ).to_bytes()


def placement_review(referral_id: str, task_id: str) -> bytes:
    return ScheduledPlacementReview(
        event_id=str(uuid.uuid4()),
        referral_id=referral_id,
        task_id=task_id,
        programme_id=ACCOMMODATION,
        schedule_id="review-1-month",
        anchor_at=(NOW - timedelta(days=31)).isoformat(),
        local_authority_gss=GSS,
        referrer_organisation_id="demo-police",
    ).to_bytes()


def deadline(referral_id: str, task_id: str) -> bytes:
    return ScheduledAcknowledgement(
        event_id=str(uuid.uuid4()),
        referral_id=referral_id,
        task_id=task_id,
        programme_id="ictg",
        service_id="ictg",
        schedule_id="ictg-24-hours",
        due_at=NOW.isoformat(),
        local_authority_gss=GSS,
        urgency="routine",
    ).to_bytes()


async def _keys(kv: KeyValue, key: str) -> set[str]:
    return {key} if await kv_value(kv, key) is not None else set()
