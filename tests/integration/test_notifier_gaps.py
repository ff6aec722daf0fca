"""A required recipient without an organisation: the others are told, the gap is listed and redrivable.

The planner and the delivery side run in this process over the session's nats-server, as in
``test_notifier_delivery``; receivers are real HTTP servers. The police force of the area is not
configured, so the missing-child notification reaches the LA while the police gap waits for an
operator; once the force is configured (a restarted notifier) a redrive sends it the same notification.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from haven.kit import topology
from services.notifier.domain import RecipientDirectory, SourceEvent, notification_id
from services.notifier.ledger import DeliveryLedger
from services.notifier.operations import DeadLetter, dead_letters, redrive
from services.notifier.planner import NotificationPlanner
from tests.support.notifier_runtime import running_notifier
from tests.support.receivers import HttpReceiver

GSS = "E08000003"
LA = "demo-la-manchester"
POLICE = f"police-{uuid.uuid4().hex[:6]}"
EVENT = "missing-episode-reported"


async def until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    """Wait without blocking the loop the notifier runs on."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def subscribe(js: JetStreamContext, organisation_id: str, endpoint: str) -> str:
    subscription_id = str(uuid.uuid4())
    record = {"secret": "s" * 40, "organisation_id": organisation_id, "endpoint": endpoint, "topic": "t"}
    await (await js.key_value(topology.BUCKET_SUBSCRIPTIONS)).put(
        subscription_id, json.dumps(record).encode()
    )
    return subscription_id


def notifier(
    js: JetStreamContext, directory: RecipientDirectory
) -> AbstractAsyncContextManager[NotificationPlanner]:
    """Run a notifier's planner and delivery side with this directory (its configuration)."""
    return running_notifier(js, directory=directory)


async def role_gaps(js: JetStreamContext) -> list[DeadLetter]:
    """Return the dead letters of required roles without an organisation (not of channel-less recipients)."""
    return [d for d in await dead_letters(js) if d.request.subscription_id.startswith("unresolved-")]


async def redriven_to(
    js: JetStreamContext, ledger: DeliveryLedger, letter: DeadLetter, receiver: HttpReceiver, expected_id: str
) -> None:
    """Redrive the dead letter; assert the receiver gets its payload once under ``expected_id``, resolved."""
    await redrive(js, letter.key)
    await until(lambda: len(receiver.requests()) == 1)
    sent = receiver.requests()[0]
    assert sent.headers["x-haven-notification-id"] == expected_id
    assert json.loads(sent.body) == json.loads(letter.request.payload_json)
    deadline = time.monotonic() + 10
    while (await ledger.record(letter.key)).get("state") != "resolved":
        assert time.monotonic() < deadline, f"{letter.key} not resolved"
        await asyncio.sleep(0.05)
    assert not [d for d in await dead_letters(js) if d.key == letter.key]


def missing_episode(referral_id: str) -> SourceEvent:
    occurred = datetime.now(UTC)
    return SourceEvent(
        event_id=str(uuid.uuid4()),
        occurred_at=occurred,
        referral_id=referral_id,
        local_authority_gss=GSS,
        facts={
            "episode_id": "ep-1",
            "episode_status": "missing",
            "missing_since": occurred - timedelta(hours=1),
            "nrm_status": "not-referred",
            "child_id": "c-1",
        },
    )


async def test_an_unconfigured_police_force_does_not_stop_the_la_and_the_gap_is_listed_then_redriven(
    nats_client: NatsClient,
) -> None:
    js = nats_client.jetstream()
    await js.purge_stream("HAVEN_NOTIFICATIONS")
    la_receiver = HttpReceiver().start()
    police_receiver = HttpReceiver().start()
    referral_id = str(uuid.uuid4())
    event = missing_episode(referral_id)
    ledger = await DeliveryLedger.open(js)
    try:
        la_subscription = await subscribe(js, LA, f"{la_receiver.url}/la")
        async with notifier(js, RecipientDirectory()) as planner:  # no police force for the area
            await planner.plan(EVENT, event)
            await until(lambda: len(la_receiver.requests()) == 1)
            la_body = json.loads(la_receiver.requests()[0].body)
            assert la_body["referral_id"] == referral_id and la_body["episode_status"] == "missing"

            gaps = [d for d in await role_gaps(js) if d.request.referral_id == referral_id]
            assert len(gaps) == 1
            listed = gaps[0].summary()
            assert listed["unresolved_role"] == "police"
            assert listed["last_detail"] == "no organisation for required role police"
            assert listed["recipient_organisation_id"] == "" and listed["event_type"] == EVENT
            assert "payload" not in json.dumps(listed) and "c-1" not in json.dumps(listed)
            # Who was told what about the referral shows the gap beside the LA's delivery.
            records = {r["subscription_id"]: r for r in await ledger.records_for_referral(referral_id)}
            assert records[la_subscription]["state"] == "delivered"
            assert records["unresolved-police"]["state"] == "dead"

            # A replayed event records the gap once and tells the LA nothing new.
            await planner.plan(EVENT, event)
            await asyncio.sleep(0.5)
            assert len([d for d in await role_gaps(js) if d.request.referral_id == referral_id]) == 1
            assert len(la_receiver.requests()) == 1

        # The operator configures the force, the notifier restarts, and the gap is redriven.
        await subscribe(js, POLICE, f"{police_receiver.url}/police")
        async with notifier(js, RecipientDirectory(police_by_gss={GSS: POLICE})):
            await redriven_to(
                js, ledger, gaps[0], police_receiver, notification_id(event.event_id, POLICE, EVENT)
            )
        assert (await ledger.record(gaps[0].key))["resolved_to"] == [POLICE]
        assert len(la_receiver.requests()) == 1
    finally:
        la_receiver.stop()
        police_receiver.stop()


async def test_a_gap_redriven_while_still_unconfigured_is_dead_again(nats_client: NatsClient) -> None:
    js = nats_client.jetstream()
    await js.purge_stream("HAVEN_NOTIFICATIONS")
    referral_id = str(uuid.uuid4())
    ledger = await DeliveryLedger.open(js)
    async with notifier(js, RecipientDirectory()) as planner:
        await planner.plan(EVENT, missing_episode(referral_id))
        (gap,) = [d for d in await role_gaps(js) if d.request.referral_id == referral_id]
        await redrive(js, gap.key)
        deadline = time.monotonic() + 10
        while (record := await ledger.record(gap.key)).get("state") != "dead" or record.get("redrives") != 1:
            assert time.monotonic() < deadline, f"gap not dead again: {record}"
            await asyncio.sleep(0.05)
        assert record["attempts"] == 2
        relisted = [d for d in await dead_letters(js) if d.key == gap.key]
        assert len(relisted) == 1 and relisted[0].summary()["redrives"] == 1


async def test_a_recipient_without_a_channel_is_a_dead_letter_until_it_subscribes_and_is_redriven(
    nats_client: NatsClient,
) -> None:
    # The area's EDT is configured but has no Subscription, NATS channel or email: nothing is lost.
    js = nats_client.jetstream()
    await js.purge_stream("HAVEN_NOTIFICATIONS")
    edt = "demo-edt-manchester"
    edt_receiver = HttpReceiver().start()
    referral_id = str(uuid.uuid4())
    event = missing_episode(referral_id)
    ledger = await DeliveryLedger.open(js)
    try:
        async with notifier(js, RecipientDirectory(police_by_gss={GSS: POLICE})) as planner:
            await planner.plan(EVENT, event)
            letters = [
                d
                for d in await dead_letters(js)
                if d.request.referral_id == referral_id and d.request.recipient_organisation_id == edt
            ]
            assert [d.request.subscription_id for d in letters] == [f"no-channel-{edt}"]
            listed = letters[0].summary()
            assert listed["recipient_organisation_id"] == edt and listed["attempts"] == 1
            assert "has no channel" in str(listed["last_detail"])
            assert "c-1" not in json.dumps(listed)
            await planner.plan(EVENT, event)  # a replay records it once
            assert len([d for d in await dead_letters(js) if d.key == letters[0].key]) == 1

        # The EDT registers its webhook; an operator redrives (a restarted notifier, as after a deploy).
        await subscribe(js, edt, f"{edt_receiver.url}/edt")
        async with notifier(js, RecipientDirectory(police_by_gss={GSS: POLICE})):
            await redriven_to(
                js, ledger, letters[0], edt_receiver, notification_id(event.event_id, edt, EVENT)
            )
    finally:
        edt_receiver.stop()
