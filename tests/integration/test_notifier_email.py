"""Email for people: the on-call manager gets an email through a real SMTP server (aiosmtpd) started here.

The planner plans an emergency without a bed from a routing event; the policy names the on-call manager
with ``channel: email``; the lanes deliver the work item over SMTP with the rest-hooks' retries.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from nats.aio.client import Client as NatsClient

from haven.kit.nats_server import free_port
from haven.notification.v1 import notification_pb2
from haven.routing.v1 import routing_pb2
from services.notifier.domain import RecipientDirectory
from services.notifier.ledger import DeliveryLedger, record_key
from services.notifier.mailer import Mailer, email_key
from services.notifier.planner import NotificationPlanner
from services.notifier.subscriptions import SubscriptionCache
from tests.integration.test_notifier_delivery import notifier, outcomes, until, until_async

ON_CALL = "haven-on-call"
ON_CALL_ADDRESS = "on-call@haven.example.org"


@dataclass
class Inbox:
    """An SMTP server's handler: refuses the first ``fail_first`` messages (451), keeps the rest."""

    fail_first: int = 0
    tries: int = 0
    messages: list[tuple[list[str], Message]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.tries += 1
            if self.tries <= self.fail_first:
                return "451 4.3.0 try again later"
            mail = message_from_bytes(envelope.content, policy=policy.default)
            self.messages.append((list(envelope.rcpt_tos), mail))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, Controller]]:
    inbox = Inbox(fail_first=2)
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield inbox, controller
    controller.stop()


def emergency(referral_id: str) -> routing_pb2.ReferralRouted:
    event = routing_pb2.ReferralRouted(
        event_id=str(uuid.uuid4()),
        referral_id=referral_id,
        local_authority_gss="E08000003",
        referrer_organisation_id="demo-police",
        sequence=1,
    )
    event.occurred_at.FromDatetime(datetime.now(UTC))
    event.fallback.inform_local_authority = True
    event.fallback.escalate_to_edt = True
    event.fallback.summary = "free text that must never be sent"
    return event


async def test_the_on_call_manager_is_emailed_after_retries_once_and_without_child_data(
    nats_client: NatsClient, smtp: tuple[Inbox, Controller]
) -> None:
    inbox, controller = smtp
    js = nats_client.jetstream()
    mailer = Mailer(
        host="127.0.0.1",
        port=controller.port,
        sender="haven@haven.example.org",
        timeout=5,
        fhir_base_url="https://haven.example.org/fhir",
        addresses={ON_CALL: ON_CALL_ADDRESS},
    )
    subscriptions = SubscriptionCache(js)
    await subscriptions.start()
    planner = NotificationPlanner(js, subscriptions, RecipientDirectory(on_call_manager=ON_CALL), mailer)
    referral_id = str(uuid.uuid4())
    async with notifier(js, schedule="100ms,200ms,400ms", mailer=mailer):
        published = await planner.plan("emergency-without-bed", emergency(referral_id))
        emailed = [r for r in published if r.channel == notification_pb2.CHANNEL_EMAIL]
        assert [r.subscription_id for r in emailed] == [email_key(ON_CALL)]
        await until(lambda: len(inbox.messages) == 1)
        ledger = await DeliveryLedger.open(js)
        key = record_key(emailed[0].notification_id, email_key(ON_CALL))
        await until_async(lambda: ledger.record(key), lambda r: r.get("state") == "delivered")
    await subscriptions.stop()

    recipients, mail = inbox.messages[0]
    assert recipients == [ON_CALL_ADDRESS] and inbox.tries == 3
    assert mail["X-Haven-Notification-Id"] == emailed[0].notification_id
    assert " ".join(str(mail["Subject"]).split()) == f"[Haven] emergency-without-bed: referral {referral_id}"
    assert isinstance(mail, EmailMessage)
    body = str(mail.get_content())
    assert f"https://haven.example.org/fhir/ServiceRequest/{referral_id}" in body
    assert "local_authority_gss: E08000003" in body and "outcome: no-service" in body
    # The on-call projection holds ids and codes only: no facts about the child, no free text.
    payload = json.loads(emailed[0].payload_json)
    assert set(payload) <= {"referral_id", "local_authority_gss", "sequence", "outcome", "referrer_kind"}
    assert "free text" not in body and "child" not in body.lower().replace("haven", "")
    record = await ledger.record(key)
    assert record["attempts"] == 3 and record["last_status"] == 250
    assert [o for _, o in await outcomes(js, emailed[0].notification_id)] == [
        notification_pb2.DELIVERY_OUTCOME_RETRYING,
        notification_pb2.DELIVERY_OUTCOME_RETRYING,
        notification_pb2.DELIVERY_OUTCOME_DELIVERED,
    ]
