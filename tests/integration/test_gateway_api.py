"""The gateway in-process over real NATS: errors, $validate, conditional create, atomicity, audit search."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NatsClient

from haven.kit.resources import ResourceStore
from services.gateway.testing import bearer, in_process_app
from tests.integration.test_gateway_tasks import routed_task
from tests.support.client import example
from tests.support.clock import MovableClock

NOW = datetime(2026, 11, 23, 21, 30, tzinfo=UTC)
POLICE = bearer("demo-police", "referrer", NOW)
OPERATOR = bearer("demo-operator", "operator", NOW)
ICTG = bearer("ictg-provider", "provider", NOW)


Clock = MovableClock


@pytest.fixture
def clock() -> Clock:
    """The gateway's clock."""
    return MovableClock(NOW)


@pytest.fixture
async def client(nats_client: NatsClient, clock: Clock) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the in-process gateway (bodies over 20 kB answer 413)."""
    app = await in_process_app(nats_client, clock=clock, max_body_bytes=20_000)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        yield http


def with_identifier(bundle: dict[str, Any], value: str, conditional: bool) -> dict[str, Any]:
    """Return the Bundle with the ServiceRequest's own identifier set (and ifNoneExist on it)."""
    bundle = copy.deepcopy(bundle)
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "ServiceRequest":
            entry["resource"]["identifier"] = [{"system": "https://police.example.org/id", "value": value}]
            if conditional:
                entry["request"]["ifNoneExist"] = f"identifier=https://police.example.org/id|{value}"
    return bundle


async def counts(nats_client: NatsClient) -> tuple[int, int, int]:
    """Return (resources stored, ServiceRequests, ReferralReceived events on the stream)."""
    js = nats_client.jetstream()
    store = await ResourceStore.open(js)
    total = 0
    for kind in ("Patient", "ServiceRequest", "Observation"):
        total += len(await store.all_of_type(kind))
    requests = len(await store.all_of_type("ServiceRequest"))
    return total, requests, (await js.stream_info("HAVEN_REFERRALS")).state.messages


def first_issue(answer: httpx.Response) -> dict[str, Any]:
    """Return the first OperationOutcome issue of an error answer."""
    body = answer.json()
    assert body["resourceType"] == "OperationOutcome"
    issue: dict[str, Any] = body["issue"][0]
    assert issue["code"] and issue["expression"]
    return issue


async def test_conditional_create_new_existing_ambiguous(client: httpx.AsyncClient) -> None:
    police = example("police-night-referral.json")
    fresh = str(uuid.uuid4())
    created = await client.post("/fhir", headers=POLICE, json=with_identifier(police, fresh, True))
    assert created.status_code == 201
    again = await client.post("/fhir", headers=POLICE, json=with_identifier(police, fresh, True))
    assert again.status_code == 200
    assert again.headers["location"] == created.headers["location"]
    # A plain POST may reuse an identifier (the same case referred again); then a conditional
    # create on it cannot choose between the two.
    reused = str(uuid.uuid4())
    for _ in range(2):
        plain = await client.post("/fhir", headers=POLICE, json=with_identifier(police, reused, False))
        assert plain.status_code == 201
    ambiguous = await client.post("/fhir", headers=POLICE, json=with_identifier(police, reused, True))
    assert ambiguous.status_code == 412
    assert first_issue(ambiguous)["code"] == "duplicate"
    # Another referrer's identical identifier is its own: a new referral.
    edt = bearer("demo-edt-manchester", "referrer", NOW)
    other = await client.post("/fhir", headers=edt, json=with_identifier(police, fresh, True))
    assert other.status_code == 201


async def test_one_bad_entry_stores_and_publishes_nothing(
    client: httpx.AsyncClient, nats_client: NatsClient
) -> None:
    bundle = example("police-night-referral.json")
    bundle["entry"][2]["resource"]["valueCodeableConcept"]["coding"][0]["code"] = "probable"
    before = await counts(nats_client)
    answer = await client.post("/fhir", headers={**POLICE, "X-Request-ID": str(uuid.uuid4())}, json=bundle)
    assert answer.status_code == 400
    assert first_issue(answer)["code"] == "code-invalid"
    assert await counts(nats_client) == before


@pytest.mark.parametrize(
    ("headers", "content", "status", "code"),
    [
        ({"Content-Type": "text/plain"}, b"{}", 415, "not-supported"),
        ({}, b"{not json", 400, "structure"),
        ({}, b"x" * 20_001, 413, "too-long"),
    ],
)
async def test_body_errors_are_operation_outcomes(
    client: httpx.AsyncClient, headers: dict[str, str], content: bytes, status: int, code: str
) -> None:
    answer = await client.post("/fhir", headers={**POLICE, **headers}, content=content)
    assert answer.status_code == status
    assert answer.json()["issue"][0]["code"] == code


async def test_unknown_type_and_future_date(client: httpx.AsyncClient) -> None:
    unknown = await client.get("/fhir/Foo/1", headers=POLICE)
    assert unknown.status_code == 404
    assert first_issue(unknown) | {"diagnostics": ""} == {
        "severity": "error",
        "code": "not-supported",
        "expression": ["Foo"],
        "diagnostics": "",
    }
    known = await client.get("/fhir/Patient/nobody", headers=POLICE)
    assert known.status_code == 404 and first_issue(known)["code"] == "not-found"
    bundle = example("police-night-referral.json")
    bundle["entry"][0]["resource"]["birthDate"] = (NOW + timedelta(days=2)).date().isoformat()
    future = await client.post("/fhir", headers=POLICE, json=bundle)
    assert future.status_code == 400
    assert first_issue(future)["expression"] == ["Bundle.entry[0].resource.birthDate"]


async def test_validate_checks_and_stores_nothing(client: httpx.AsyncClient, nats_client: NatsClient) -> None:
    before = await counts(nats_client)
    good = await client.post(
        "/fhir/Bundle/$validate", headers=POLICE, json=example("police-night-referral.json")
    )
    assert good.status_code == 200
    assert [i["severity"] for i in good.json()["issue"]] == ["information"]
    bad = await client.post(
        "/fhir/Bundle/$validate", headers=POLICE, json=example("invalid/several-problems.json")
    )
    assert bad.status_code == 200
    assert len(bad.json()["issue"]) >= 3 and {i["severity"] for i in bad.json()["issue"]} == {"error"}
    patient = await client.post(
        "/fhir/Patient/$validate", headers=POLICE, json={"resourceType": "Patient", "birthDate": "soon"}
    )
    assert first_issue(patient)["expression"] == ["Patient.birthDate"]
    task = await client.post("/fhir/Task/$validate", headers=POLICE, json={"resourceType": "Task"})
    assert {i["code"] for i in task.json()["issue"]} == {"required"}
    assert await counts(nats_client) == before


async def test_audit_search_for_operators(client: httpx.AsyncClient) -> None:
    created = await client.post("/fhir", headers=POLICE, json=example("police-night-referral.json"))
    referral = (await client.get(f"/fhir/{created.headers['location']}", headers=POLICE)).json()
    patient = referral["subject"]["reference"]
    await client.get(f"/fhir/{patient}", headers=OPERATOR)
    assert (
        await client.get("/fhir/AuditEvent", params={"entity": patient}, headers=POLICE)
    ).status_code == 403
    missing = await client.get("/fhir/AuditEvent", headers=OPERATOR)
    assert missing.status_code == 400 and first_issue(missing)["expression"] == ["entity"]
    found = await client.get("/fhir/AuditEvent", params={"entity": patient}, headers=OPERATOR)
    assert found.status_code == 200
    # The example child was referred by earlier tests too: the possible-duplicate Flags of this
    # referral are audited in an AuditEvent of their own (ADR 13), left out here.
    events = [
        e["resource"]
        for e in found.json()["entry"]
        if not any(x["what"]["reference"].startswith("Flag/") for x in e["resource"]["entity"])
    ]
    assert [(e["action"], e["agent"][0]["who"]["reference"]) for e in events] == [
        ("C", "Organization/demo-police"),
        ("R", "Organization/demo-police"),
        ("R", "Organization/demo-operator"),
    ]
    # One AuditEvent per interaction: the create names all three resources and the child.
    assert {
        e["what"]["reference"] for e in events[0]["entity"] if "what" in e and "reference" in e["what"]
    } >= {
        patient,
        created.headers["location"],
    }
    count = await client.get(
        "/fhir/AuditEvent", params={"entity": patient, "_summary": "count"}, headers=OPERATOR
    )
    assert count.json()["total"] >= 3
    page = await client.get("/fhir/AuditEvent", params={"entity": patient, "_count": 1}, headers=OPERATOR)
    assert len(page.json()["entry"]) == 1
    assert any(link["relation"] == "next" for link in page.json()["link"])


async def test_task_search_by_last_updated(
    client: httpx.AsyncClient, nats_client: NatsClient, clock: Clock
) -> None:
    task_id = await routed_task(nats_client)
    read = await client.get(f"/fhir/Task/{task_id}", headers=ICTG)
    clock.now = NOW + timedelta(hours=3)
    accepted = await client.put(
        f"/fhir/Task/{task_id}",
        headers={**ICTG, "If-Match": read.headers["etag"]},
        content=json.dumps({**read.json(), "status": "accepted"}),
    )
    assert accepted.status_code == 200

    async def total(*bounds: str) -> int:
        params: list[tuple[str, str | int | float | bool | None]] = [
            ("owner", "Organization/ictg-provider"),
            *(("_lastUpdated", b) for b in bounds),
        ]
        answer = await client.get("/fhir/Task", params=params, headers=ICTG)
        assert answer.status_code == 200, answer.text
        return sum(1 for e in answer.json()["entry"] if e["resource"]["id"] == task_id)

    assert await total("ge2026-11-24T00:00:00Z") == 1
    assert await total("le2026-11-24T00:00:00Z") == 0
    assert await total("ge2026-11-23", "le2026-11-25") == 1
    bad = await client.get("/fhir/Task", params={"owner": "x", "_lastUpdated": "yesterday"}, headers=ICTG)
    assert bad.status_code == 400 and first_issue(bad)["expression"] == ["_lastUpdated"]
