"""A referral moved to another local authority, and a referral closed, over real NATS.

The gateway runs in-process with the eligibility service beside it, so a move is re-assessed and a
close cancels the re-assessments for real. The referral is taken in the way the gateway's intake
stores it (the example Bundle parsed by the profile, every record with the referral's scope), so
these tests do not depend on the intake path's own machinery.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from haven.eligibility.v1 import eligibility_pb2
from haven.kit import topology
from haven.kit.batch import write_all
from haven.kit.ids import new_id
from haven.kit.resources import RecordScope, ResourceStore
from haven.referral.v1 import referral_pb2 as pb
from haven.routing.v1 import routing_pb2
from services.eligibility.scheduler import SCHEDULE_STREAM
from services.gateway.fhir.bundle import ReferrerContext, parse_referral_bundle
from services.gateway.observations import facts_creation
from services.gateway.testing import bearer, in_process_app
from services.referral_router.tasks import task_resource, task_scope
from tests.integration.test_eligibility_service import eligibility_service
from tests.support.client import example
from tests.support.clock import MovableClock
from tests.support.jetstream_probes import eventually, stored_messages

NOW = datetime(2026, 11, 23, 21, 30, tzinfo=UTC)
MANCHESTER, LEEDS = "E08000003", "E08000035"
POLICE = bearer("demo-police", "referrer", NOW)
MANCHESTER_LA = bearer("demo-la-manchester", "la-platform", NOW)
LEEDS_LA = bearer("demo-la-leeds", "la-platform", NOW)
OPERATOR = bearer("demo-operator", "operator", NOW)
ICTG = bearer("ictg-provider", "provider", NOW)
GSS = "http://statistics.data.gov.uk/id/statistical-geography"
FACT = "https://haven.example.org/fhir/CodeSystem/referral-fact"


@dataclass(frozen=True)
class Referral:
    """The ids of one referral taken in for a test."""

    referral_id: str
    patient_id: str
    observation_ids: tuple[str, ...]
    task_id: str


@pytest.fixture
async def client(nats_client: NatsClient) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client to the in-process gateway, with the eligibility service running beside it."""
    app = await in_process_app(nats_client, clock=lambda: NOW)
    async with (
        eligibility_service(nats_client, MovableClock(NOW)),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http,
    ):
        yield http


async def take_in(nats_client: NatsClient) -> Referral:
    """Store the police night referral (Manchester) and one routed ICTG Task, as intake and router do."""
    js = nats_client.jetstream()
    store = await ResourceStore.open(js)
    parsed = parse_referral_bundle(
        example("police-night-referral.json"),
        referrer=ReferrerContext(organisation_id="demo-police", kind="police"),
        today=NOW.date(),
    )
    scope = RecordScope(
        local_authority_gss=parsed.facts.local_authority_gss, referrer_organisation_id="demo-police"
    )
    for resource in parsed.resources:
        await store.create(resource, scope, NOW)
    reference = f"ServiceRequest/{parsed.referral_id}"
    observations = tuple(str(r["id"]) for r in parsed.resources if r["resourceType"] == "Observation")
    for observation_id in observations:
        await store.add_index("Observation", "based-on", reference, observation_id)
    await write_all(js, [facts_creation(parsed.referral_id, parsed.facts)])
    received = pb.ReferralReceived(event_id=new_id(), referral_id=parsed.referral_id, facts=parsed.facts)
    await js.publish(topology.REFERRAL_RECEIVED, received.SerializeToString())
    routed = routing_pb2.ReferralRouted(
        referral_id=parsed.referral_id, local_authority_gss=MANCHESTER, referrer_organisation_id="demo-police"
    )
    task_id = new_id()
    routed.tasks.add(
        task_id=task_id, programme_id="ictg", service_id="ictg-service", owner_organisation_id="ictg-provider"
    )
    # Stored as the router stores a routed Task: its resource, its scope and its three index entries.
    [task] = routed.tasks
    await store.create(task_resource(routed, task, parsed.patient_id, NOW), task_scope(routed, task), NOW)
    await store.add_index("Task", "based-on", reference, task_id)
    await store.add_index("Task", "local-authority", MANCHESTER, task_id)
    await store.add_index("Task", "owner", "Organization/ictg-provider", task_id)
    assert parsed.facts.local_authority_gss == MANCHESTER
    return Referral(parsed.referral_id, parsed.patient_id, observations, task_id)


def move(referral_id: str, gss: str) -> dict[str, Any]:
    """Return the Observation that moves a referral to the local authority `gss`."""
    observation = copy.deepcopy(example("local-authority-move-observation.json"))
    observation["basedOn"] = [{"reference": f"ServiceRequest/{referral_id}"}]
    observation["valueCodeableConcept"]["coding"][0]["code"] = gss
    return observation


async def _assessed_in(
    js: JetStreamContext, referral_id: str, gss: str
) -> eligibility_pb2.EligibilityAssessed | None:
    for data in await stored_messages(js, "HAVEN_ELIGIBILITY", topology.ELIGIBILITY_ASSESSED):
        event = eligibility_pb2.EligibilityAssessed.FromString(data)
        if event.referral_id == referral_id and event.facts.local_authority_gss == gss:
            return event
    return None


async def _schedules(js: JetStreamContext, referral_id: str) -> dict[str, int]:
    prefix = f"{topology.REASSESSMENT_SCHEDULE_PREFIX}.{referral_id}"
    info = await js.stream_info(SCHEDULE_STREAM, subjects_filter=f"{prefix}.>")
    return dict(info.state.subjects or {})


async def _has_schedules(js: JetStreamContext, referral_id: str, wanted: bool) -> bool | None:
    return True if bool(await _schedules(js, referral_id)) is wanted else None


def _issue(response: httpx.Response) -> dict[str, Any]:
    assert response.json()["resourceType"] == "OperationOutcome", response.text
    issue: dict[str, Any] = response.json()["issue"][0]
    return issue


async def _status(client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> int:
    return (await client.get(path, headers=headers)).status_code


async def test_a_move_re_scopes_the_records_and_is_re_assessed(
    client: httpx.AsyncClient, nats_client: NatsClient
) -> None:
    js = nats_client.jetstream()
    referral = await take_in(nats_client)
    await eventually(lambda: _assessed_in(js, referral.referral_id, MANCHESTER))
    records = [
        f"/fhir/ServiceRequest/{referral.referral_id}",
        f"/fhir/Patient/{referral.patient_id}",
        *(f"/fhir/Observation/{o}" for o in referral.observation_ids),
        f"/fhir/Task/{referral.task_id}",
    ]
    assert [await _status(client, r, MANCHESTER_LA) for r in records] == [200] * len(records)
    assert [await _status(client, r, LEEDS_LA) for r in records] == [404] * len(records)

    posted = await client.post(
        "/fhir/Observation", headers=MANCHESTER_LA, json=move(referral.referral_id, LEEDS)
    )

    assert posted.status_code == 201, posted.text
    # Re-assessed: the eligibility service announces the new area even though no decision changed.
    assessed = await eventually(lambda: _assessed_in(js, referral.referral_id, LEEDS))
    assert assessed.trigger == eligibility_pb2.TRIGGER_FACTS_UPDATED
    updates = [
        pb.ReferralFactsUpdated.FromString(m)
        for m in await stored_messages(js, "HAVEN_REFERRALS", topology.REFERRAL_FACTS_UPDATED)
    ]
    [update] = [u for u in updates if u.referral_id == referral.referral_id]
    assert (update.facts.local_authority_gss, list(update.changed_facts)) == (LEEDS, ["local_authority_gss"])
    # The new LA reads every record of the referral, the move itself included; the old LA none.
    records.append(f"/fhir/Observation/{posted.json()['id']}")
    assert [await _status(client, r, LEEDS_LA) for r in records] == [200] * len(records)
    assert [await _status(client, r, MANCHESTER_LA) for r in records] == [404] * len(records)
    assert await _status(client, records[0], POLICE) == 200  # the referrer keeps its referral
    assert await _status(client, f"/fhir/Task/{referral.task_id}", ICTG) == 200  # and the provider its task
    request = (await client.get(records[0], headers=LEEDS_LA)).json()
    assert request["extension"][0]["valueIdentifier"] == {"system": GSS, "value": LEEDS}
    found = await client.get(
        "/fhir/Observation", params={"based-on": f"ServiceRequest/{referral.referral_id}"}, headers=LEEDS_LA
    )
    assert found.json()["total"] == len(referral.observation_ids) + 1
    tasks = (await client.get("/fhir/Task", headers=LEEDS_LA)).json()
    assert referral.task_id in {e["resource"]["id"] for e in tasks.get("entry", [])}
    # The old LA can no longer post about it either.
    again = await client.post(
        "/fhir/Observation", headers=MANCHESTER_LA, json=move(referral.referral_id, MANCHESTER)
    )
    assert again.status_code == 404

    audit = await client.get(
        "/fhir/AuditEvent", params={"entity": f"ServiceRequest/{referral.referral_id}"}, headers=OPERATOR
    )
    events = [e["resource"] for e in audit.json()["entry"]]
    [moved] = [e for e in events if e["action"] == "U"]
    assert moved["agent"][0]["who"]["reference"] == "Organization/demo-la-manchester"
    named = {e["what"]["reference"] for e in moved["entity"] if "reference" in e.get("what", {})}
    assert {
        f"ServiceRequest/{referral.referral_id}",
        f"Task/{referral.task_id}",
        f"Patient/{referral.patient_id}",
    } <= named


async def test_who_may_move_and_what_a_bad_code_answers(
    client: httpx.AsyncClient, nats_client: NatsClient
) -> None:
    referral = await take_in(nats_client)

    unknown = await client.post(
        "/fhir/Observation", headers=POLICE, json=move(referral.referral_id, "E08000999")
    )
    district = await client.post(
        "/fhir/Observation", headers=POLICE, json=move(referral.referral_id, "E07000117")
    )
    malformed = await client.post(
        "/fhir/Observation", headers=POLICE, json=move(referral.referral_id, "Leeds")
    )
    provider = await client.post("/fhir/Observation", headers=ICTG, json=move(referral.referral_id, LEEDS))
    other_la = await client.post(
        "/fhir/Observation", headers=LEEDS_LA, json=move(referral.referral_id, LEEDS)
    )

    where = ["Observation.valueCodeableConcept.coding[0].code"]
    assert (unknown.status_code, _issue(unknown)["code"], _issue(unknown)["expression"]) == (
        400,
        "code-invalid",
        where,
    )
    assert (district.status_code, _issue(district)["code"], _issue(district)["expression"]) == (
        400,
        "value",
        where,
    )
    assert (malformed.status_code, _issue(malformed)["expression"]) == (400, where)
    assert "E08000999" in _issue(unknown)["diagnostics"]
    assert provider.status_code == 403
    assert other_la.status_code == 404
    # Nothing moved: Manchester still reads the referral.
    assert await _status(client, f"/fhir/ServiceRequest/{referral.referral_id}", MANCHESTER_LA) == 200

    # An operator posts no other fact about a child.
    nrm = {
        **example("nrm-decision-observation.json"),
        "basedOn": [{"reference": f"ServiceRequest/{referral.referral_id}"}],
    }
    assert (await client.post("/fhir/Observation", headers=OPERATOR, json=nrm)).status_code == 403
    # An operator may move it (a referral sent to the wrong area); the referrer too.
    by_operator = await client.post(
        "/fhir/Observation", headers=OPERATOR, json=move(referral.referral_id, LEEDS)
    )
    assert by_operator.status_code == 201, by_operator.text
    assert await _status(client, f"/fhir/ServiceRequest/{referral.referral_id}", LEEDS_LA) == 200
    by_referrer = await client.post(
        "/fhir/Observation", headers=POLICE, json=move(referral.referral_id, MANCHESTER)
    )
    assert by_referrer.status_code == 201, by_referrer.text
    assert await _status(client, f"/fhir/ServiceRequest/{referral.referral_id}", MANCHESTER_LA) == 200
    assert await _status(client, f"/fhir/ServiceRequest/{referral.referral_id}", LEEDS_LA) == 404


async def test_the_responsible_la_closes_a_referral(
    client: httpx.AsyncClient, nats_client: NatsClient
) -> None:
    js = nats_client.jetstream()
    referral = await take_in(nats_client)
    path = f"/fhir/ServiceRequest/{referral.referral_id}"
    await eventually(lambda: _has_schedules(js, referral.referral_id, True))
    read = await client.get(path, headers=MANCHESTER_LA)
    request, etag = read.json(), read.headers["etag"]
    closing = {**request, "status": "revoked", "note": [{"text": "the child returned home"}]}

    missing = await client.put(path, headers=MANCHESTER_LA, json=closing)
    stale = await client.put(path, headers={**MANCHESTER_LA, "If-Match": 'W/"999"'}, json=closing)
    referrer = await client.put(path, headers={**POLICE, "If-Match": etag}, json=closing)
    other_la = await client.put(path, headers={**LEEDS_LA, "If-Match": etag}, json=closing)
    bad = await client.put(
        path, headers={**MANCHESTER_LA, "If-Match": etag}, json={**request, "status": "finished"}
    )
    reopen = await client.put(
        path, headers={**MANCHESTER_LA, "If-Match": etag}, json={**request, "status": "draft"}
    )
    assert (missing.status_code, stale.status_code, referrer.status_code, other_la.status_code) == (
        428,
        412,
        403,
        404,
    )
    assert (bad.status_code, _issue(bad)["expression"]) == (400, ["ServiceRequest.status"])
    assert (reopen.status_code, _issue(reopen)["code"]) == (409, "business-rule")

    closed = await client.put(path, headers={**MANCHESTER_LA, "If-Match": etag}, json=closing)

    assert closed.status_code == 200, closed.text
    assert closed.json()["status"] == "revoked" and closed.json()["note"] == [
        {"text": "the child returned home"}
    ]
    assert closed.json()["subject"] == request["subject"]  # the rest is the server's, unchanged
    assert closed.headers["etag"] == f'W/"{closed.json()["meta"]["versionId"]}"'
    events = [
        pb.ReferralClosed.FromString(m)
        for m in await stored_messages(js, "HAVEN_REFERRALS", topology.REFERRAL_CLOSED)
    ]
    [event] = [e for e in events if e.referral_id == referral.referral_id]
    assert (event.closure, event.local_authority_gss, event.closed_by_organisation_id) == (
        pb.REFERRAL_CLOSURE_REVOKED,
        MANCHESTER,
        "demo-la-manchester",
    )
    assert event.referrer_organisation_id == "demo-police"
    # The eligibility service cancels its re-assessments.
    await eventually(lambda: _has_schedules(js, referral.referral_id, False))
    # Closed stays closed, and takes no new facts.
    twice = await client.put(
        path, headers={**MANCHESTER_LA, "If-Match": closed.headers["etag"]}, json=closing
    )
    assert (twice.status_code, _issue(twice)["code"]) == (409, "business-rule")
    later = await client.post("/fhir/Observation", headers=POLICE, json=move(referral.referral_id, LEEDS))
    assert (later.status_code, _issue(later)["code"]) == (409, "business-rule")


async def test_an_operator_closes_a_referral_as_completed(
    client: httpx.AsyncClient, nats_client: NatsClient
) -> None:
    referral = await take_in(nats_client)
    path = f"/fhir/ServiceRequest/{referral.referral_id}"
    read = await client.get(path, headers=OPERATOR)

    closed = await client.put(
        path,
        headers={**OPERATOR, "If-Match": read.headers["etag"]},
        json={**read.json(), "status": "completed"},
    )

    assert closed.status_code == 200, closed.text
    assert (await client.get(path, headers=POLICE)).json()["status"] == "completed"
    metadata = (await client.get("/fhir/metadata")).json()
    [service_request] = [r for r in metadata["rest"][0]["resource"] if r["type"] == "ServiceRequest"]
    assert {"code": "update"} in service_request["interaction"]
