"""A missing child end to end: a missing-episode Observation posted through the API reaches the police,
the LA and the ICTG subscribers (rest-hook, signed) and the NRM competent authority (email through a real
SMTP server), each with its own projection; the reviews are scheduled on the bus; "found" follows.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import Message
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from haven.kit import bus
from haven.kit.nats_server import free_port
from services.notifier.missing import SCHEDULE_PREFIX, SCHEDULE_STREAM
from tests.e2e.conftest import RunningHaven, start_haven
from tests.e2e.test_notifier_delivery import Partner, cached_token, refer, wait
from tests.support.client import auth_headers, subscription

pytestmark = pytest.mark.e2e

SCA = "sca@competent-authority.example.org"
REFERRAL_FACT = "https://haven.example.org/fhir/CodeSystem/referral-fact"


class Inbox:
    """An aiosmtpd handler keeping every message."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK"


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield inbox, controller.port
    controller.stop()


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, smtp: tuple[Inbox, int]) -> Iterator[RunningHaven]:
    running = start_haven(
        tmp_path_factory.mktemp("haven-missing"),
        HAVEN_SMTP_HOST="127.0.0.1",
        HAVEN_SMTP_PORT=str(smtp[1]),
        HAVEN_EMAIL_RECIPIENTS=f"single-competent-authority={SCA}",
    )
    yield running
    running.system.stop()
    running.collector.stop()
    running.webhooks.stop()


def subscribe_as(haven: RunningHaven, organisation_id: str, role: str) -> Partner:
    partner = Partner()
    answer = httpx.post(
        f"{haven.fhir}/Subscription",
        headers=auth_headers(cached_token(str(haven.config.data_dir), organisation_id, role)),
        json=subscription(f"{partner.receiver.url}/hook"),
        timeout=10,
    )
    assert answer.status_code == 201, answer.text
    partner.secret = answer.json()["extension"][0]["valueString"]
    return partner


def missing_episode(referral_id: str, start: str, end: str | None = None) -> dict[str, Any]:
    period = {"start": start, **({"end": end} if end else {})}
    return {
        "resourceType": "Observation",
        "status": "final",
        "basedOn": [{"reference": f"ServiceRequest/{referral_id}"}],
        "code": {
            "coding": [
                {
                    "system": "https://haven.example.org/fhir/CodeSystem/referral-fact",
                    "code": "missing-episode",
                }
            ]
        },
        "effectivePeriod": period,
    }


def about(partner: Partner, referral_id: str, status: str) -> list[dict[str, Any]]:
    with partner._lock:
        bodies = [json.loads(b) for b in partner.accepted.values()]
    return [b for b in bodies if b.get("referral_id") == referral_id and b.get("episode_status") == status]


async def schedules(haven: RunningHaven, referral_id: str) -> set[str]:
    client = await bus.connect(haven.system.nats_url, "e2e-schedules")
    try:
        info = await client.jetstream().stream_info(
            SCHEDULE_STREAM, subjects_filter=f"{SCHEDULE_PREFIX}.{referral_id}.>"
        )
        return set(info.state.subjects or {})
    finally:
        await client.close()


def test_a_missing_child_reaches_police_la_ictg_and_the_competent_authority(
    system: RunningHaven, smtp: tuple[Inbox, int]
) -> None:
    inbox, _ = smtp
    police = subscribe_as(system, "demo-police-manchester", "provider")
    la = subscribe_as(system, "demo-la-manchester", "la-platform")
    ictg = subscribe_as(system, "ictg-provider", "provider")
    try:
        referral_id = refer(system)
        referrer = auth_headers(cached_token(str(system.config.data_dir), "demo-police", "referrer"))
        today = datetime.now(UTC).date().isoformat()
        posted = httpx.post(
            f"{system.fhir}/Observation",
            headers=referrer,
            json=missing_episode(referral_id, today),
            timeout=10,
        )
        assert posted.status_code == 201, posted.text

        for partner in (police, la, ictg):
            wait(lambda p=partner: bool(about(p, referral_id, "missing")), what="missing episode delivered")
        police_says, la_says, ictg_says = (about(p, referral_id, "missing")[0] for p in (police, la, ictg))
        assert police_says["missing_since"] == f"{today}T00:00:00Z"
        assert police_says["episode_id"] == la_says["episode_id"] == ictg_says["episode_id"]
        # Each gets its projection: the police may see who the child is, the LA and ICTG do not need to.
        assert "child_id" in police_says and "sex" in police_says
        assert "sex" not in la_says and "nationalities" not in ictg_says
        assert police.bad == la.bad == ictg.bad == 0

        wait(
            lambda: any(referral_id in m["Subject"] for m in inbox.messages),
            what="competent authority emailed",
        )
        mail = next(m for m in inbox.messages if referral_id in m["Subject"])
        assert mail["To"] == SCA and mail["X-Haven-Event-Type"] == "missing-episode-reported"

        assert asyncio.run(schedules(system, referral_id)) == {
            f"{SCHEDULE_PREFIX}.{referral_id}.multi-agency-missing-review",
            f"{SCHEDULE_PREFIX}.{referral_id}.long-term-missing-closure",
        }

        found = httpx.post(
            f"{system.fhir}/Observation",
            headers=referrer,
            json=missing_episode(referral_id, today, end=today),
            timeout=10,
        )
        assert found.status_code == 201, found.text
        wait(lambda: bool(about(police, referral_id, "found")), what="found delivered to the police")
        assert about(police, referral_id, "found")[0]["episode_id"] == police_says["episode_id"]
        wait(lambda: not asyncio.run(schedules(system, referral_id)), what="reviews cancelled")
        assert police.repeats == 0 and len(about(police, referral_id, "missing")) == 1
    finally:
        for partner in (police, la, ictg):
            partner.receiver.stop()
