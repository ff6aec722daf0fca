"""New facts end to end: a police referral, then an NRM decision posted as an Observation.

The ``$eligibility`` answer changes and the eligibility service announces which programmes changed,
as the router and the notifier see it on the bus. Only the referrer and the responsible local
authority may post facts, and only about a referral they can see.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from haven.eligibility.v1 import eligibility_pb2
from haven.kit import bus, topology
from tests.e2e.conftest import RunningHaven
from tests.support.client import auth_headers, example, referral_id_of, token
from tests.support.jetstream_probes import stored_messages

pytestmark = pytest.mark.e2e


def _nrm_decision(referral_id: str) -> dict[str, Any]:
    text = json.dumps(example("nrm-decision-observation.json")).replace("{referral_id}", referral_id)
    observation: dict[str, Any] = json.loads(text)
    observation["effectiveDateTime"] = datetime.now(UTC).date().isoformat()  # never in the future
    return observation


def _missing(parameters: dict[str, Any], programme_id: str) -> list[str]:
    """Return the missing facts the Parameters answer lists for one programme."""
    for decision in parameters.get("parameter", []):
        parts = {p["name"]: p for p in decision.get("part", [])}
        if parts.get("programme", {}).get("valueCode") == programme_id:
            return [p["valueString"] for p in decision.get("part", []) if p["name"] == "missingFact"]
    raise AssertionError(f"no decision for {programme_id}: {json.dumps(parameters)[:400]}")


def _wait_for(probe: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while (found := probe()) is None:
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return found


async def _bus_messages(haven: RunningHaven, stream: str, subject: str) -> list[bytes]:
    client = await bus.connect(haven.system.nats_url, "e2e-observer")
    try:
        return await stored_messages(client.jetstream(), stream, subject)
    finally:
        await client.close()


def _assessed(haven: RunningHaven, referral_id: str) -> list[eligibility_pb2.EligibilityAssessed]:
    messages = asyncio.run(_bus_messages(haven, "HAVEN_ELIGIBILITY", topology.ELIGIBILITY_ASSESSED))
    events = [eligibility_pb2.EligibilityAssessed.FromString(m) for m in messages]
    return [e for e in events if e.referral_id == referral_id]


def test_an_nrm_decision_changes_the_eligibility_answer_and_is_announced(haven: RunningHaven) -> None:
    police = auth_headers(token(haven.config.data_dir, "demo-police", "referrer"))
    answer = httpx.post(haven.fhir, headers=police, json=example("police-night-referral.json"))
    assert answer.status_code == 201, answer.text
    referral_id = referral_id_of(answer)
    url = f"{haven.fhir}/ServiceRequest/{referral_id}/$eligibility"

    def latest() -> dict[str, Any] | None:
        got = httpx.get(url, headers=police)
        return got.json() if got.status_code == 200 else None

    before = _wait_for(latest)
    assert "needs NRM status" in _missing(before, "afruca")

    posted = httpx.post(f"{haven.fhir}/Observation", headers=police, json=_nrm_decision(referral_id))
    assert posted.status_code == 201, posted.text
    observation = posted.json()
    assert posted.headers["location"] == f"Observation/{observation['id']}"
    assert observation["basedOn"] == [{"reference": f"ServiceRequest/{referral_id}"}]
    assert observation["subject"]["reference"].startswith("Patient/")

    def changed() -> dict[str, Any] | None:
        now = latest()
        return now if now is not None and now != before else None

    after = _wait_for(changed)
    assert "needs NRM status" not in _missing(after, "afruca")

    events = _wait_for(lambda: events if len(events := _assessed(haven, referral_id)) >= 2 else None)
    assert [e.trigger for e in events] == [
        eligibility_pb2.TRIGGER_REFERRAL_RECEIVED,
        eligibility_pb2.TRIGGER_FACTS_UPDATED,
    ]
    assert "afruca" in events[1].changed_programmes
    assert "ictg" not in events[1].changed_programmes
    assert events[1].facts.nrm_status != events[0].facts.nrm_status

    stored = httpx.get(f"{haven.fhir}/Observation/{observation['id']}", headers=police)
    assert stored.status_code == 200
    assert stored.json()["valueCodeableConcept"] == observation["valueCodeableConcept"]
    audits = asyncio.run(_bus_messages(haven, "HAVEN_AUDIT", topology.AUDIT_RECORDED))
    created = [
        event
        for event in map(json.loads, audits)
        if any(
            e.get("what", {}).get("reference") == f"Observation/{observation['id']}" for e in event["entity"]
        )
    ]
    assert created, "the creation of the Observation is audited"

    # The responsible local authority may post facts too; a second identical fact changes nothing.
    la = auth_headers(token(haven.config.data_dir, "demo-la-manchester", "la-platform"))
    again = httpx.post(f"{haven.fhir}/Observation", headers=la, json=_nrm_decision(referral_id))
    assert again.status_code == 201, again.text


def test_only_those_who_may_see_the_referral_may_post_facts_and_bad_facts_are_refused(
    haven: RunningHaven,
) -> None:
    police = auth_headers(token(haven.config.data_dir, "demo-police", "referrer"))
    answer = httpx.post(haven.fhir, headers=police, json=example("police-night-referral.json"))
    assert answer.status_code == 201, answer.text
    referral_id = referral_id_of(answer)

    provider = auth_headers(token(haven.config.data_dir, "ictg-provider", "provider"))
    assert (
        httpx.post(f"{haven.fhir}/Observation", headers=provider, json=_nrm_decision(referral_id)).status_code
        == 403
    )
    other_area = auth_headers(token(haven.config.data_dir, "demo-la-leeds", "la-platform"))
    refused = httpx.post(f"{haven.fhir}/Observation", headers=other_area, json=_nrm_decision(referral_id))
    assert refused.status_code == 404  # as if it did not exist
    unknown = httpx.post(f"{haven.fhir}/Observation", headers=police, json=_nrm_decision("no-such-referral"))
    assert unknown.status_code == 404

    no_referral = _nrm_decision(referral_id)
    del no_referral["basedOn"]
    bad = httpx.post(f"{haven.fhir}/Observation", headers=police, json=no_referral)
    assert bad.status_code == 400
    assert bad.json()["resourceType"] == "OperationOutcome"
    unknown_code = _nrm_decision(referral_id)
    unknown_code["valueCodeableConcept"]["coding"][0]["code"] = "maybe"
    bad_value = httpx.post(f"{haven.fhir}/Observation", headers=police, json=unknown_code)
    assert bad_value.status_code == 400
    assert any(
        "valueCodeableConcept" in issue.get("expression", [""])[0] for issue in bad_value.json()["issue"]
    )
