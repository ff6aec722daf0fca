"""The notifier in the running system: restarts lose nothing, dead letters are redriven through the API,
and backport Subscriptions get a handshake, heartbeats, numbered events, `$status` and `$events`.

Receivers are real HTTP servers that verify signatures with code written here (docs/notifications.md)
and de-duplicate on the idempotency key, as the docs ask partners to.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import RunningHaven, start_haven
from tests.support.client import auth_headers, example, referral_id_of, subscription, token
from tests.support.receivers import HttpReceiver, ReceivedRequest

pytestmark = pytest.mark.e2e

BACKPORT_PROFILE = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription"
HEARTBEAT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-heartbeat-period"


def verify(header: str, body: bytes, secret: str) -> bool:
    fields = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(secret.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return abs(time.time() - int(fields["t"])) < 300 and hmac.compare_digest(expected, fields["v1"])


class Partner:
    """Verifies, de-duplicates on X-Haven-Notification-Id, optionally answers slowly or 503."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.down = False
        self.secret = ""
        self.accepted: dict[str, bytes] = {}
        self.event_types: dict[str, str] = {}
        self.repeats = 0
        self.bad = 0
        self._lock = threading.Lock()
        self.receiver = HttpReceiver(answer=self.answer).start()

    def answer(self, request: ReceivedRequest) -> int:
        if self.down:
            return 503
        time.sleep(self.delay)
        if not verify(request.headers["x-haven-signature"], request.body, self.secret):
            self.bad += 1
            return 401
        with self._lock:
            key = request.headers["x-haven-notification-id"]
            if key in self.accepted:
                self.repeats += 1
            else:
                self.accepted[key] = request.body
                self.event_types[key] = request.headers.get("x-haven-event-type", "")
        return 200

    def referrals(self, event_type: str = "referral-routed") -> list[str]:
        """Referral ids of the accepted notifications of one event type (each referral also raises others)."""
        with self._lock:
            bodies = [b for k, b in self.accepted.items() if self.event_types[k] == event_type]
        return [json.loads(b).get("referral_id", "") for b in bodies]


def wait(predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met in {timeout}s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHaven]:
    running = start_haven(
        tmp_path_factory.mktemp("haven-notifier"),
        HAVEN_BREAKER_RESET_SECONDS="0.5",
        HAVEN_WEBHOOK_TIMEOUT_SECONDS="2",
        HAVEN_DELIVERY_ACK_WAIT_SECONDS="2",
    )
    yield running
    running.system.stop()
    running.collector.stop()
    running.webhooks.stop()


def subscribe(haven: RunningHaven, partner: Partner, body: dict[str, Any] | None = None) -> dict[str, Any]:
    la = token(haven.config.data_dir, "demo-la-manchester", "la-platform")
    answer = httpx.post(
        f"{haven.fhir}/Subscription",
        headers=auth_headers(la),
        json=body or subscription(f"{partner.receiver.url}/hook"),
        timeout=10,
    )
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    partner.secret = created["extension"][0]["valueString"]
    return created


@functools.cache
def cached_token(data_dir: str, organisation_id: str, role: str) -> str:
    return token(Path(data_dir), organisation_id, role)


def refer(haven: RunningHaven) -> str:
    police = auth_headers(cached_token(str(haven.config.data_dir), "demo-police", "referrer"))
    answer = httpx.post(haven.fhir, headers=police, json=example("police-night-referral.json"), timeout=10)
    assert answer.status_code == 201, answer.text
    return referral_id_of(answer)


@pytest.fixture(scope="module")
def steady(system: RunningHaven) -> Iterator[Partner]:
    partner = Partner(delay=0.15)
    subscribe(system, partner)
    yield partner
    partner.receiver.stop()


@pytest.fixture(scope="module")
def flaky(system: RunningHaven) -> Iterator[Partner]:
    """A second Manchester endpoint that is down until a test brings it back."""
    partner = Partner()
    partner.down = True
    subscribe(system, partner)
    yield partner
    partner.receiver.stop()


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_notifier_restart_mid_delivery_loses_nothing(
    system: RunningHaven, steady: Partner, how: signal.Signals
) -> None:
    referrals = [refer(system) for _ in range(8)]
    # Kill while the slow receiver is part-way through: some delivered, others queued or in hand.
    wait(lambda: len(set(steady.referrals()) & set(referrals)) >= 2, what="first deliveries")
    assert len(set(steady.referrals()) & set(referrals)) < len(referrals)
    process = system.system.processes["notifier"]
    process.send_signal(how)
    process.wait(20)
    system.system.processes.pop("notifier")
    system.system.start_service("notifier")
    system.system.wait_ready("notifier", 30)
    wait(lambda: set(referrals) <= set(steady.referrals()), what="every referral delivered")
    delivered = [r for r in steady.referrals() if r in referrals]
    assert sorted(delivered) == sorted(referrals)  # each referral's notification accepted exactly once
    assert steady.bad == 0


def test_dead_letter_listed_and_redriven_through_the_api(system: RunningHaven, flaky: Partner) -> None:
    referral_id = refer(system)
    operator = auth_headers(token(system.config.data_dir, "demo-operator", "operator"))

    def letters() -> list[dict[str, Any]]:
        answer = httpx.get(f"{system.fhir}/$dead-letters", headers=operator, timeout=10)
        assert answer.status_code == 200, answer.text
        return [
            {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in entry["part"]}
            for entry in answer.json()["parameter"]
        ]

    def routed_letter() -> dict[str, Any] | None:
        return next(
            (
                d
                for d in letters()
                if d["referral_id"] == referral_id
                and d["event_type"] == "referral-routed"
                # The flaky partner's letter, not one of a recipient that has no channel at all.
                and not str(d["subscription_id"]).startswith("no-channel-")
            ),
            None,
        )

    wait(lambda: routed_letter() is not None, what="dead letter listed")
    letter = routed_letter()
    assert letter is not None
    assert letter["attempts"] == 4 and letter["last_status"] == 503
    assert "payload" not in letter and "child_id" not in json.dumps(letter)

    la = auth_headers(token(system.config.data_dir, "demo-la-manchester", "la-platform"))
    assert httpx.get(f"{system.fhir}/$dead-letters", headers=la).status_code == 403
    assert httpx.post(f"{system.fhir}/$dead-letters/{letter['key']}/$redrive", headers=la).status_code == 403

    flaky.down = False
    answer = httpx.post(f"{system.fhir}/$dead-letters/{letter['key']}/$redrive", headers=operator, timeout=10)
    assert answer.status_code == 202, answer.text
    again = httpx.post(f"{system.fhir}/$dead-letters/{letter['key']}/$redrive", headers=operator, timeout=10)
    assert again.status_code == 404  # no longer dead: a second press sends nothing
    wait(lambda: referral_id in flaky.referrals(), what="redriven delivery")
    assert flaky.referrals().count(referral_id) == 1 and flaky.repeats == 0

    records = httpx.get(
        f"{system.fhir}/$deliveries", params={"referral": referral_id}, headers=operator, timeout=10
    )
    assert records.status_code == 200
    states = [
        {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in e["part"]}
        for e in records.json()["parameter"]
    ]
    redriven = next(s for s in states if s.get("redrives") == 1)
    assert redriven["state"] == "delivered" and redriven["attempts"] == 5


def test_backport_subscription_handshake_heartbeat_events(system: RunningHaven) -> None:
    partner = Partner()
    body = subscription(f"{partner_url(partner)}/backport")
    body["meta"] = {"profile": [BACKPORT_PROFILE]}
    body["channel"]["extension"] = [{"url": HEARTBEAT, "valueUnsignedInt": 1}]
    # The handshake is signed with the secret given in the create, so the partner can check it.
    secret = "b" * 40
    body["extension"] = [
        {
            "url": "https://haven.example.org/fhir/StructureDefinition/subscription-signing-secret",
            "valueString": secret,
        }
    ]
    partner.secret = secret
    try:
        created = subscribe(system, partner, body)
        assert created["status"] == "active"

        def kinds() -> list[str]:
            return [str(status_of(json.loads(b))["type"]) for b in list(partner.accepted.values())]

        assert "handshake" in kinds()
        wait(lambda: "heartbeat" in kinds(), timeout=10, what="heartbeat")

        referral_id = refer(system)

        def notifications() -> list[dict[str, Any]]:
            bundles = [json.loads(b) for b in list(partner.accepted.values())]
            found = [b for b in bundles if status_of(b)["type"] == "event-notification"]
            return sorted(found, key=lambda b: int(status_of(b)["events-since-subscription-start"]))

        # The referral raises `referral-received`, then `referral-routed`: events 1 and 2, in order.
        wait(lambda: len(notifications()) == 2, what="event notifications")
        bundle = notifications()[0]
        assert bundle["type"] == "history"
        assert [status_of(b)["events-since-subscription-start"] for b in notifications()] == ["1", "2"]
        payload = json.loads(base64.b64decode(bundle["entry"][1]["resource"]["data"]))
        assert payload["referral_id"] == referral_id

        la = auth_headers(token(system.config.data_dir, "demo-la-manchester", "la-platform"))
        leeds = auth_headers(token(system.config.data_dir, "demo-la-leeds", "la-platform"))
        sub_id = created["id"]
        answer = httpx.get(f"{system.fhir}/Subscription/{sub_id}/$status", headers=la)
        assert status_of(answer.json()["entry"][0]["resource"])["events-since-subscription-start"] == "2"
        assert httpx.get(f"{system.fhir}/Subscription/{sub_id}/$status", headers=leeds).status_code == 404
        events = httpx.get(
            f"{system.fhir}/Subscription/{sub_id}/$events", params={"eventsSinceNumber": 1}, headers=la
        ).json()
        assert status_of(events)["type"] == "query-event"
        assert events["entry"][1]["resource"]["data"] == bundle["entry"][1]["resource"]["data"]

        dead = Partner()
        dead.down = True
        body["channel"]["endpoint"] = f"{dead.receiver.url}/none"
        assert subscribe(system, dead, body)["status"] == "error"
        dead.receiver.stop()
    finally:
        partner.receiver.stop()


def partner_url(partner: Partner) -> str:
    return partner.receiver.url


def status_of(bundle_or_parameters: dict[str, Any]) -> dict[str, Any]:
    """Return the SubscriptionStatus parameters of a notification Bundle (or the Parameters) by name."""
    parameters = bundle_or_parameters
    if parameters["resourceType"] == "Bundle":
        parameters = parameters["entry"][0]["resource"]
    found: dict[str, Any] = {}
    for p in parameters["parameter"]:
        found[p["name"]] = next((v for k, v in p.items() if k.startswith("value")), p.get("part"))
    return found
