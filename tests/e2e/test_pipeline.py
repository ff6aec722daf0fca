"""One referral end to end: POST a Bundle, the Task for the ICTG service, the signed webhook, one trace.

The signature is checked with an implementation written here from the documented scheme, not with
Haven's own code.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterable

import httpx
import pytest

from tests.e2e.conftest import RunningHaven
from tests.support.client import auth_headers, example, referral_id_of, subscription, token
from tests.support.receivers import ReceivedRequest, exported_spans

pytestmark = pytest.mark.e2e


def verify_signature(header: str, body: bytes, secret: str) -> bool:
    """Check ``X-Haven-Signature: t=<unix>,v1=<hex>`` as a receiver would (docs/notifications.md)."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(secret.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - int(fields["t"])) < 300
    return fresh and hmac.compare_digest(expected, fields["v1"])


@pytest.fixture(scope="module")
def la_secret(haven: RunningHaven) -> str:
    """Register Manchester's platform for routing outcomes at the test's webhook receiver."""
    la = token(haven.config.data_dir, "demo-la-manchester", "la-platform")
    answer = httpx.post(
        f"{haven.fhir}/Subscription",
        headers=auth_headers(la),
        json=subscription(f"{haven.webhooks.url}/manchester"),
    )
    assert answer.status_code == 201, answer.text
    secret: str = answer.json()["extension"][0]["valueString"]
    return secret


def test_police_referral_reaches_task_webhook_and_one_trace(haven: RunningHaven, la_secret: str) -> None:
    police = auth_headers(token(haven.config.data_dir, "demo-police", "referrer"))
    answer = httpx.post(haven.fhir, headers=police, json=example("police-night-referral.json"))
    assert answer.status_code == 201, answer.text
    assert answer.json()["type"] == "transaction-response"
    referral_id = referral_id_of(answer)
    trace_id = answer.headers["x-trace-id"]

    def routed(got: Iterable[ReceivedRequest]) -> list[ReceivedRequest]:
        return [
            r
            for r in got
            if json.loads(r.body).get("referral_id") == referral_id
            and r.headers.get("x-haven-event-type") == "referral-routed"
        ]

    haven.webhooks.wait_for(lambda got: bool(routed(got)), timeout=20)
    delivery = routed(haven.webhooks.requests())[0]
    assert delivery.path == "/manchester"
    assert verify_signature(delivery.headers["x-haven-signature"], delivery.body, la_secret)
    assert not verify_signature(delivery.headers["x-haven-signature"], delivery.body + b" ", la_secret)
    payload = json.loads(delivery.body)
    assert payload["local_authority_gss"] == "E08000003"
    assert payload["programme_ids"] == ["ictg"]
    assert delivery.headers["x-haven-notification-id"]
    assert delivery.headers["traceparent"].split("-")[1] == trace_id

    tasks = httpx.get(
        f"{haven.fhir}/Task", params={"based-on": f"ServiceRequest/{referral_id}"}, headers=police
    )
    assert tasks.status_code == 200
    bundle = tasks.json()
    assert bundle["total"] == 1
    task = bundle["entry"][0]["resource"]
    assert task["status"] == "requested"
    assert task["owner"] == {"reference": "Organization/ictg-provider"}
    assert task["code"]["coding"][0]["code"] == "ictg"
    assert payload["task_ids"] == [task["id"]]

    deadline = time.monotonic() + 15
    services: set[str] = set()
    while time.monotonic() < deadline and len(services) < 4:
        services = {s.service for s in exported_spans(haven.collector) if s.trace_id == trace_id}
        time.sleep(0.2)
    assert services == {"gateway", "eligibility", "referral_router", "notifier"}
    spans = [s for s in exported_spans(haven.collector) if s.trace_id == trace_id]
    names = {s.name for s in spans}
    assert {
        "publish haven.referral.v1.received",
        "process haven.referral.v1.received",
        "publish haven.eligibility.v1.assessed",
        "process haven.eligibility.v1.assessed",
        "publish haven.routing.v1.routed.E08000003",
        "deliver rest-hook",
    } <= names
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if s.parent_span_id not in ids]
    assert len(roots) == 1 and roots[0].service == "gateway"


def test_latest_eligibility_explains_itself(haven: RunningHaven) -> None:
    police = auth_headers(token(haven.config.data_dir, "demo-police", "referrer"))
    referral_id = referral_id_of(
        httpx.post(haven.fhir, headers=police, json=example("police-night-referral.json"))
    )
    deadline = time.monotonic() + 15
    answer = httpx.get(f"{haven.fhir}/ServiceRequest/{referral_id}/$eligibility", headers=police)
    while answer.status_code == 404 and time.monotonic() < deadline:
        time.sleep(0.1)
        answer = httpx.get(f"{haven.fhir}/ServiceRequest/{referral_id}/$eligibility", headers=police)
    assert answer.status_code == 200
    decisions = {
        next(p["valueCode"] for p in d["part"] if p["name"] == "programme"): d["part"]
        for d in answer.json()["parameter"]
        if d["name"] == "decision"
    }
    ictg = decisions["ictg"]
    assert next(p["valueCode"] for p in ictg if p["name"] == "outcome") == "eligible"
    rules = [p for p in ictg if p["name"] == "rule"]
    assert rules and all(any(q["name"] == "citation" and q["valueString"] for q in r["part"]) for r in rules)


def test_other_area_cannot_read_the_referral(haven: RunningHaven) -> None:
    police = auth_headers(token(haven.config.data_dir, "demo-police", "referrer"))
    referral_id = referral_id_of(
        httpx.post(haven.fhir, headers=police, json=example("police-night-referral.json"))
    )
    leeds = auth_headers(token(haven.config.data_dir, "demo-la-leeds", "la-platform"))
    manchester = auth_headers(token(haven.config.data_dir, "demo-la-manchester", "la-platform"))
    assert httpx.get(f"{haven.fhir}/ServiceRequest/{referral_id}", headers=leeds).status_code == 404
    assert httpx.get(f"{haven.fhir}/ServiceRequest/{referral_id}", headers=manchester).status_code == 200
    missing = httpx.get(f"{haven.fhir}/ServiceRequest/{referral_id[:-1]}0", headers=leeds)
    assert missing.status_code == 404
    assert missing.json()["resourceType"] == "OperationOutcome"
