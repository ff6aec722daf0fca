"""Referral intake beyond the Bundle: possible duplicates, a lone ServiceRequest, and the searches.

In-process gateway over the session's real nats-server, with a clock the tests move.
"""

from __future__ import annotations

import copy
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NatsClient

from services.gateway.fhir.duplicates import EXT_FLAGGED_REFERRAL, EXT_POSSIBLE_DUPLICATE_OF
from services.gateway.testing import bearer, in_process_app
from tests.support.client import example
from tests.support.clock import MovableClock

NOW = datetime(2026, 11, 23, 2, 40, tzinfo=UTC)
# Each test posts its own child (a_child): the session nats-server keeps every earlier referral.
POLICE = bearer("demo-police", "referrer", NOW)
EDT = bearer("demo-edt-manchester", "referrer", NOW)
MANCHESTER = bearer("demo-la-manchester", "la-platform", NOW)
LEEDS = bearer("demo-la-leeds", "la-platform", NOW)
OPERATOR = bearer("demo-operator", "operator", NOW)
ICTG = bearer("ictg-provider", "provider", NOW)


Clock = MovableClock


@pytest.fixture
def clock() -> Clock:
    """The gateway's clock."""
    return MovableClock(NOW)


@pytest.fixture
async def client(nats_client: NatsClient, clock: Clock) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the in-process gateway."""
    app = await in_process_app(nats_client, clock=clock)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        yield http


_USED_BIRTH_DATES: set[str] = set()


def a_child() -> str:
    """Return a date of birth no other test uses (the NATS server is shared by the whole run).

    Drawn from 15 years of dates, never one already drawn in this run, and never the date the
    examples (posted by other modules on the same server) carry.
    """
    examples = (
        "police-night-referral.json",
        "edt-emergency-placement.json",
        "local-authority-full-referral.json",
    )
    taken = {example(name)["entry"][0]["resource"]["birthDate"] for name in examples} | _USED_BIRTH_DATES
    while True:
        born = (date(2009, 1, 1) + timedelta(days=secrets.randbelow(15 * 365))).isoformat()
        if born not in taken:
            _USED_BIRTH_DATES.add(born)
            return born


def police_referral(born: str) -> dict[str, Any]:
    """The police night referral (no nationality known) of a child born on ``born``."""
    bundle = example("police-night-referral.json")
    bundle["entry"][0]["resource"]["birthDate"] = born
    return bundle


def edt_referral(born: str, nationality: str = "VN", gss: str = "E08000003") -> dict[str, Any]:
    """The EDT emergency placement request, adapted to a child claiming to be born on ``born``."""
    bundle = example("edt-emergency-placement.json")
    patient = bundle["entry"][0]["resource"]
    patient["birthDate"] = born
    # The age assessment in the example: a date of its own, else every EDT example would match.
    bundle["entry"][2]["resource"]["valueDateTime"] = a_child()
    for ext in patient["extension"]:
        if ext["url"].endswith("patient-nationality"):
            ext["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] = nationality
    bundle["entry"][1]["resource"]["extension"][0]["valueIdentifier"]["value"] = gss
    return bundle


def ids(answer: httpx.Response) -> tuple[str, str]:
    """Return (referral id, patient id) from a transaction response."""
    assert answer.status_code == 201, answer.text
    locations = [e["response"]["location"].split("/") for e in answer.json()["entry"]]
    by_type = {loc[0]: loc[1] for loc in locations}
    return by_type["ServiceRequest"], by_type["Patient"]


async def flags_of(client: httpx.AsyncClient, headers: dict[str, str], patient: str) -> list[dict[str, Any]]:
    """Return the Flags the caller finds for ``Patient/<patient>``."""
    answer = await client.get("/fhir/Flag", params={"patient": f"Patient/{patient}"}, headers=headers)
    assert answer.status_code == 200
    return [e["resource"] for e in answer.json()["entry"]]


def linked(flag: dict[str, Any]) -> dict[str, str]:
    """Return {extension url: reference} of a Flag."""
    return {e["url"]: e["valueReference"]["reference"] for e in flag["extension"]}


async def test_police_then_edt_same_child_is_flagged_never_merged(
    client: httpx.AsyncClient, clock: Clock
) -> None:
    born = a_child()
    police_referral_id, police_patient = ids(
        await client.post("/fhir", headers=POLICE, json=police_referral(born))
    )
    clock.now = NOW + timedelta(hours=3)
    edt_referral_id, edt_patient = ids(await client.post("/fhir", headers=EDT, json=edt_referral(born)))
    # Never merged: two referrals, two Patient records, both readable by the LA.
    assert police_patient != edt_patient
    for referral in (police_referral_id, edt_referral_id):
        assert (await client.get(f"/fhir/ServiceRequest/{referral}", headers=MANCHESTER)).status_code == 200

    [flag] = await flags_of(client, MANCHESTER, edt_patient)
    assert linked(flag) == {
        EXT_FLAGGED_REFERRAL: f"ServiceRequest/{edt_referral_id}",
        EXT_POSSIBLE_DUPLICATE_OF: f"ServiceRequest/{police_referral_id}",
    }
    assert flag["status"] == "active" and flag["subject"]["reference"] == f"Patient/{edt_patient}"
    # Its creation is audited once, with the child it was raised for (its own AuditEvent: the Flag is
    # known only after the referral's writes are acknowledged).
    audits = await client.get("/fhir/AuditEvent", params={"entity": f"Flag/{flag['id']}"}, headers=OPERATOR)
    assert audits.status_code == 200, audits.text
    [created] = [e["resource"] for e in audits.json()["entry"] if e["resource"]["action"] == "C"]
    named = {e["what"]["reference"] for e in created["entity"]}
    assert {f"Flag/{flag['id']}", f"Patient/{edt_patient}"} <= named
    # Found from either child record, by the LA and by operators; read back by id.
    assert [f["id"] for f in await flags_of(client, MANCHESTER, police_patient)] == [flag["id"]]
    assert [f["id"] for f in await flags_of(client, OPERATOR, police_patient)] == [flag["id"]]
    assert (await client.get(f"/fhir/Flag/{flag['id']}", headers=OPERATOR)).status_code == 200
    # Neither referrer learns of the other's referral; another area and providers see nothing.
    for outsider in (POLICE, EDT, LEEDS, ICTG):
        assert await flags_of(client, outsider, edt_patient) == []
        assert (await client.get(f"/fhir/Flag/{flag['id']}", headers=outsider)).status_code == 404
    listed = await client.get("/fhir/Flag", params={"_summary": "count"}, headers=MANCHESTER)
    assert listed.json()["total"] >= 1
    assert (await client.get("/fhir/Flag", params={"_summary": "count"}, headers=POLICE)).json()["total"] == 0


@pytest.mark.parametrize(
    ("later", "change"),
    [
        (timedelta(hours=73), {}),  # outside the 72-hour window
        (timedelta(hours=1), {"gss": "E08000025"}),  # another local authority (Birmingham)
    ],
)
async def test_no_flag_outside_the_key(
    client: httpx.AsyncClient, clock: Clock, later: timedelta, change: dict[str, str]
) -> None:
    born = a_child()
    _, police_patient = ids(await client.post("/fhir", headers=POLICE, json=police_referral(born)))
    clock.now = NOW + later
    edt, operator = (
        bearer("demo-edt-manchester", "referrer", clock.now),
        bearer("demo-operator", "operator", clock.now),
    )
    _, edt_patient = ids(await client.post("/fhir", headers=edt, json=edt_referral(born, **change)))
    assert await flags_of(client, operator, edt_patient) == []
    assert await flags_of(client, operator, police_patient) == []


async def test_contradicting_nationalities_are_not_linked_but_shared_ones_are(
    client: httpx.AsyncClient,
) -> None:
    born = a_child()
    _, first = ids(await client.post("/fhir", headers=EDT, json=edt_referral(born, nationality="VN")))
    _, albanian = ids(await client.post("/fhir", headers=POLICE, json=edt_referral(born, nationality="AL")))
    assert await flags_of(client, OPERATOR, albanian) == []
    _, vietnamese = ids(await client.post("/fhir", headers=POLICE, json=edt_referral(born, nationality="VN")))
    [flag] = await flags_of(client, OPERATOR, vietnamese)
    assert flag["subject"]["reference"] == f"Patient/{vietnamese}"
    assert [f["id"] for f in await flags_of(client, OPERATOR, first)] == [flag["id"]]


def lone_request(patient: str, identifier: str | None = None) -> dict[str, Any]:
    """A referral ServiceRequest for a known child, from the police example."""
    resource: dict[str, Any] = copy.deepcopy(example("police-night-referral.json")["entry"][1]["resource"])
    resource["subject"] = {"reference": f"Patient/{patient}"}
    resource["identifier"][0]["value"] = identifier or str(uuid.uuid4())
    return resource


async def test_lone_service_request_for_a_known_child(
    client: httpx.AsyncClient, nats_client: NatsClient
) -> None:
    _, patient = ids(await client.post("/fhir", headers=POLICE, json=police_referral(a_child())))
    js = nats_client.jetstream()
    before = (await js.stream_info("HAVEN_REFERRALS")).state.messages
    created = await client.post("/fhir/ServiceRequest", headers=POLICE, json=lone_request(patient))
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["resourceType"] == "ServiceRequest"
    assert body["requester"] == {"reference": "Organization/demo-police"}
    assert created.headers["location"] == f"ServiceRequest/{body['id']}/_history/{body['meta']['versionId']}"
    assert (await js.stream_info("HAVEN_REFERRALS")).state.messages == before + 1
    read = await client.get(f"/fhir/ServiceRequest/{body['id']}", headers=MANCHESTER)
    assert read.status_code == 200
    found = await client.get("/fhir/ServiceRequest", params={"patient": f"Patient/{patient}"}, headers=POLICE)
    assert found.json()["total"] == 2
    # The same child is linked by its subject: no possible-duplicate Flag for a re-referral.
    assert await flags_of(client, OPERATOR, patient) == []


async def test_lone_service_request_retries_and_refusals(
    client: httpx.AsyncClient, nats_client: NatsClient
) -> None:
    _, patient = ids(await client.post("/fhir", headers=POLICE, json=police_referral(a_child())))
    case = str(uuid.uuid4())
    conditional = {
        **POLICE,
        "If-None-Exist": f"identifier=https://police.example.org/id/occurrence|{case}",
    }
    first = await client.post("/fhir/ServiceRequest", headers=conditional, json=lone_request(patient, case))
    again = await client.post("/fhir/ServiceRequest", headers=conditional, json=lone_request(patient, case))
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    request_id = {**POLICE, "X-Request-ID": str(uuid.uuid4())}
    copies = [
        await client.post("/fhir/ServiceRequest", headers=request_id, json=lone_request(patient))
        for _ in range(2)
    ]
    assert copies[0].json()["id"] == copies[1].json()["id"]

    js = nats_client.jetstream()
    before = (await js.stream_info("HAVEN_REFERRALS")).state.messages
    unknown = await client.post("/fhir/ServiceRequest", headers=POLICE, json=lone_request(str(uuid.uuid4())))
    # Another referrer may not name a child it did not refer: the same answer as an unknown one.
    foreign = await client.post("/fhir/ServiceRequest", headers=EDT, json=lone_request(patient))
    for refused in (unknown, foreign):
        assert refused.status_code == 400
        assert refused.json()["issue"][0]["code"] == "not-found"
        assert refused.json()["issue"][0]["expression"] == ["ServiceRequest.subject.reference"]
    bad = lone_request(patient)
    bad["priority"] = "whenever"
    bad["extension"][0]["valueIdentifier"]["value"] = "E07000001"
    answer = await client.post("/fhir/ServiceRequest", headers=POLICE, json=bad)
    assert answer.status_code == 400
    assert {i["expression"][0] for i in answer.json()["issue"]} >= {
        "ServiceRequest.priority",
        "ServiceRequest.extension[0].valueIdentifier.value",
    }
    assert (
        await client.post("/fhir/ServiceRequest", headers=MANCHESTER, json=lone_request(patient))
    ).status_code == 403
    assert (await js.stream_info("HAVEN_REFERRALS")).state.messages == before


async def test_searches_page_count_and_scope(client: httpx.AsyncClient) -> None:
    bundle = police_referral(a_child())
    case = str(uuid.uuid4())
    bundle["entry"][1]["resource"]["identifier"][0]["value"] = case
    referral, patient = ids(await client.post("/fhir", headers=POLICE, json=bundle))
    for _ in range(2):
        assert (
            await client.post("/fhir/ServiceRequest", headers=POLICE, json=lone_request(patient))
        ).status_code == 201

    by_patient = {"patient": f"Patient/{patient}"}
    count = await client.get(
        "/fhir/ServiceRequest", params={**by_patient, "_summary": "count"}, headers=MANCHESTER
    )
    assert count.json() == {"resourceType": "Bundle", "type": "searchset", "total": 3}
    page = await client.get("/fhir/ServiceRequest", params={**by_patient, "_count": 2}, headers=MANCHESTER)
    assert len(page.json()["entry"]) == 2
    [next_link] = [link["url"] for link in page.json()["link"] if link["relation"] == "next"]
    rest = await client.get(next_link.replace("http://gw", ""), headers=MANCHESTER)
    assert len(rest.json()["entry"]) == 1 and "next" not in {link["relation"] for link in rest.json()["link"]}
    # Out of scope: another area, another referrer, a provider without a task.
    for outsider in (LEEDS, EDT, ICTG):
        answer = await client.get("/fhir/ServiceRequest", params=by_patient, headers=outsider)
        assert answer.json()["total"] == 0
    by_case = {"identifier": f"https://police.example.org/id/occurrence|{case}"}
    found = await client.get("/fhir/ServiceRequest", params=by_case, headers=MANCHESTER)
    assert [e["resource"]["id"] for e in found.json()["entry"]] == [referral]

    facts = await client.get(
        "/fhir/Observation", params={"based-on": f"ServiceRequest/{referral}"}, headers=POLICE
    )
    assert [e["resource"]["code"]["coding"][0]["code"] for e in facts.json()["entry"]] == [
        "trafficking-concern"
    ]
    hidden = await client.get(
        "/fhir/Observation", params={"based-on": referral, "_summary": "count"}, headers=LEEDS
    )
    assert hidden.json()["total"] == 0

    refusals: list[tuple[str, dict[str, str | int]]] = [
        ("/fhir/ServiceRequest", {}),
        ("/fhir/ServiceRequest", {"patient": "Patient/../x"}),
        ("/fhir/Observation", {}),
        ("/fhir/ServiceRequest", {**by_patient, "_count": 201}),
    ]
    # A path id no record can have (not ASCII) never reaches the store, which could not take it as a key.
    unstorable = await client.get("/fhir/Patient/é", headers=MANCHESTER)
    assert unstorable.status_code == 404 and unstorable.json()["issue"][0]["code"] == "not-found"
    for path, params in refusals:
        refused = await client.get(path, params=params, headers=MANCHESTER)
        assert refused.status_code == 400, (path, params)
        assert refused.json()["resourceType"] == "OperationOutcome"
