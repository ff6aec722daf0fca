"""NATS as a notification channel for LA platforms, on a real nats-server with Haven's generated users.

The notifier (planner and delivery side, in this process) logs in as ``haven-services``; each LA logs
in as its own ``la-<organisation>`` user from ``haven.system.nats_users``. Manchester reads its
projected, signed notification live; Leeds, offline when it was sent, catches up from its durable
consumer; neither can read the other's subjects or consumer. Signatures are checked with code written
here from docs/notifications.md, not with Haven's.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from haven.kit import bus
from haven.kit.nats_server import EmbeddedNats, NatsUser, free_port, start_embedded_nats
from haven.kit.topology import (
    PARTNER_STREAM,
    ensure_topology,
    partner_consumer,
    partner_subject,
    partner_subjects,
)
from haven.routing.v1 import routing_pb2
from haven.system import nats_signing_secrets, nats_users
from services.notifier.deliverer import PartnerNats, nats_key
from services.notifier.domain import load_policies, notification_id
from services.notifier.ledger import DeliveryLedger, record_key
from services.notifier.planner import NotificationPlanner
from tests.support.notifier_runtime import running_notifier

MANCHESTER, LEEDS = "E08000003", "E08000035"
LA_MANCHESTER, LA_LEEDS = "demo-la-manchester", "demo-la-leeds"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedNats, list[NatsUser], Path]]:
    data_dir: Path = tmp_path_factory.mktemp("partner")
    users = nats_users(data_dir)
    server = start_embedded_nats(data_dir / "nats", port=free_port(), users=users)
    yield server, users, data_dir
    server.stop()


def user(users: list[NatsUser], name: str) -> NatsUser:
    return next(u for u in users if u.user == name)


async def connect(server: EmbeddedNats, login: NatsUser, errors: list[Exception]) -> NatsClient:
    async def on_error(error: Exception) -> None:
        errors.append(error)

    return await nats.connect(
        login.url(server.host, server.port),
        error_cb=on_error,
        allow_reconnect=False,
        inbox_prefix=login.inbox_prefix or "_INBOX",
    )


def verify(header: str, body: bytes, secret: str) -> bool:
    """`t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`, as a platform would check it."""
    parts = [p.partition("=") for p in header.split(",")]
    stamp = next(v for k, _, v in parts if k == "t")
    expected = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, v) for k, _, v in parts if k == "v1")


def notifier(js: JetStreamContext, partners: PartnerNats) -> AbstractAsyncContextManager[NotificationPlanner]:
    """Run a notifier's planner and delivery side with the LA platforms on NATS."""
    return running_notifier(js, partners=partners)


def routed(gss: str) -> routing_pb2.ReferralRouted:
    event = routing_pb2.ReferralRouted(
        event_id=str(uuid.uuid4()),
        referral_id=str(uuid.uuid4()),
        local_authority_gss=gss,
        referrer_organisation_id="demo-police",
        sequence=1,
        trigger=routing_pb2.ROUTING_TRIGGER_ASSESSED,
    )
    event.occurred_at.FromDatetime(datetime.now(UTC))
    event.tasks.add(
        task_id="t-1",
        programme_id="ictg",
        service_id="ictg-gm",
        owner_organisation_id="ictg-provider",
        reason="plain words that must never be sent",
    )
    event.fallback.inform_local_authority = True
    event.fallback.summary = "free text summary"
    return event


def la_fields() -> set[str]:
    rule = next(r for r in load_policies()["referral-routed"].recipients if r.role == "la-childrens-services")
    return set(rule.fields)


async def wait_for_errors(errors: list[Exception], count: int) -> list[str]:
    deadline = asyncio.get_running_loop().time() + 5
    while len(errors) < count and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    return [str(e).lower() for e in errors]


async def test_la_platforms_get_their_projection_on_nats_live_or_after_being_offline(
    secured: tuple[EmbeddedNats, list[NatsUser], Path],
) -> None:
    server, users, data_dir = secured
    secrets = nats_signing_secrets(data_dir)
    services = await bus.connect(server.url, "haven-tests")
    js = services.jetstream()
    await ensure_topology(js)
    manchester_errors: list[Exception] = []
    manchester = await connect(server, user(users, f"la-{LA_MANCHESTER}"), manchester_errors)
    try:
        live = await manchester.subscribe(partner_subjects(MANCHESTER))
        await manchester.flush()
        to_manchester, to_leeds = routed(MANCHESTER), routed(LEEDS)
        async with notifier(js, PartnerNats(secrets)) as planner:
            items = await planner.plan("referral-routed", to_manchester)
            await planner.plan("referral-routed", to_leeds)  # Leeds is offline
            assert nats_key(LA_MANCHESTER) in {i.subscription_id for i in items}

            msg = await live.next_msg(timeout=10)
            expected_id = notification_id(to_manchester.event_id, LA_MANCHESTER, "referral-routed")
            assert msg.subject == partner_subject(MANCHESTER, "referral-routed")
            headers = msg.headers or {}
            assert headers["X-Haven-Notification-Id"] == headers["Nats-Msg-Id"] == expected_id
            assert headers["X-Haven-Event-Type"] == "referral-routed"
            assert verify(headers["X-Haven-Signature"], msg.data, secrets[LA_MANCHESTER])
            assert not verify(headers["X-Haven-Signature"], msg.data, secrets[LA_LEEDS])
            body = json.loads(msg.data)
            # Only the LA projection's fields: no other provider's route, no free text.
            assert set(body) <= la_fields() and body["referral_id"] == to_manchester.referral_id
            assert body["task_ids"] == ["t-1"] and "own_routes" not in body
            assert "plain words" not in msg.data.decode() and "free text" not in msg.data.decode()
            ledger = await DeliveryLedger.open(js)
            key = record_key(expected_id, nats_key(LA_MANCHESTER))
            deadline = asyncio.get_running_loop().time() + 10
            while (record := await ledger.record(key)).get("state") != "delivered":
                assert asyncio.get_running_loop().time() < deadline, record
                await asyncio.sleep(0.05)
            assert record["last_detail"].startswith(f"JetStream {PARTNER_STREAM} ")

        # Leeds comes online after the notifier stopped and reads its backlog from its consumer.
        leeds_errors: list[Exception] = []
        leeds = await connect(server, user(users, f"la-{LA_LEEDS}"), leeds_errors)
        try:
            backlog = await leeds.jetstream().pull_subscribe_bind(partner_consumer(LA_LEEDS), PARTNER_STREAM)
            (caught_up,) = await backlog.fetch(1, timeout=10)
            assert caught_up.subject == partner_subject(LEEDS, "referral-routed")
            assert json.loads(caught_up.data)["referral_id"] == to_leeds.referral_id
            assert verify((caught_up.headers or {})["X-Haven-Signature"], caught_up.data, secrets[LA_LEEDS])
            await caught_up.ack()
            assert leeds_errors == []
        finally:
            await leeds.close()

        # Manchester may neither subscribe to Leeds' subjects nor read Leeds' consumer.
        other = await manchester.subscribe(partner_subjects(LEEDS))
        await manchester.flush()
        with pytest.raises(nats.errors.TimeoutError):
            await other.next_msg(timeout=0.3)
        violations = await wait_for_errors(manchester_errors, 1)
        assert any("permissions violation" in v and partner_subjects(LEEDS).lower() in v for v in violations)
        stolen = await manchester.jetstream().pull_subscribe_bind(partner_consumer(LA_LEEDS), PARTNER_STREAM)
        with pytest.raises(nats.errors.TimeoutError):
            await stolen.fetch(1, timeout=1)
        violations = await wait_for_errors(manchester_errors, 2)
        assert any("permissions violation" in v and partner_consumer(LA_LEEDS) in v for v in violations)
    finally:
        await manchester.close()
        await services.close()


async def test_a_platform_cannot_forge_a_notification_on_its_own_subject(
    secured: tuple[EmbeddedNats, list[NatsUser], Path],
) -> None:
    server, users, _ = secured
    services = await bus.connect(server.url, "haven-tests")
    errors: list[Exception] = []
    manchester = await connect(server, user(users, f"la-{LA_MANCHESTER}"), errors)
    try:
        watch = await services.subscribe(partner_subjects(MANCHESTER))
        await services.flush()
        await manchester.publish(partner_subject(MANCHESTER, "referral-routed"), b"forged")
        await manchester.flush()
        with pytest.raises(nats.errors.TimeoutError):
            await watch.next_msg(timeout=0.3)
        violations = await wait_for_errors(errors, 1)
        assert any("permissions violation" in v and "publish" in v for v in violations)
    finally:
        await manchester.close()
        await services.close()
