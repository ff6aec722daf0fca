"""The profile's later facts and status changes of a referral: a move of local authority, a closure."""

import copy
import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from haven.referral.v1 import referral_pb2 as pb
from services.gateway.fhir import FhirInputError, facts_from_observation
from services.gateway.fhir.bundle import ReferrerContext, parse_referral_bundle
from services.gateway.fhir.observation import states_fact
from services.gateway.fhir.referral_status import decide_status_update
from services.gateway.fhir.task_workflow import TransitionError

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
TODAY = date(2026, 11, 23)
GSS = "http://statistics.data.gov.uk/id/statistical-geography"
STORED = pb.ReferralFacts(child_id="c0ffee00-0000-4000-8000-000000000001", local_authority_gss="E08000003")
REQUEST = {
    "resourceType": "ServiceRequest",
    "id": "ref-1",
    "status": "active",
    "intent": "order",
    "subject": {"reference": "Patient/p-1"},
    "note": [{"text": "from the referrer"}],
}


def example(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / name).read_text(encoding="utf-8"))
    return data


def move(*codings: dict[str, Any]) -> dict[str, Any]:
    observation = example("local-authority-move-observation.json")
    observation["basedOn"] = [{"reference": "ServiceRequest/ref-1"}]
    observation["valueCodeableConcept"] = {"coding": list(codings)}
    return observation


def issues(body: Any) -> list[tuple[str, str]]:
    with pytest.raises(FhirInputError) as raised:
        facts_from_observation(body, STORED, today=TODAY)
    return [(str(i.code), i.expression) for i in raised.value.issues]


def test_the_example_moves_the_referral_to_leeds() -> None:
    body = example("local-authority-move-observation.json")
    body["basedOn"] = [{"reference": "ServiceRequest/ref-1"}]

    facts, changed = facts_from_observation(body, STORED, today=TODAY)

    assert states_fact(body, "responsible-local-authority")
    assert (facts.local_authority_gss, changed) == ("E08000035", ["local_authority_gss"])
    assert STORED.local_authority_gss == "E08000003"  # the stored facts are not modified


def test_a_move_to_the_same_authority_changes_nothing() -> None:
    facts, changed = facts_from_observation(move({"system": GSS, "code": "E08000003"}), STORED, today=TODAY)

    assert (facts, changed) == (STORED, [])


@pytest.mark.parametrize(
    ("code", "issue"),
    [
        ("E08000999", "code-invalid"),  # well formed, no such authority
        ("E07000117", "value"),  # a district: no children's services
        ("Leeds", "value"),  # not a GSS code at all
        ("", "value"),
    ],
)
def test_a_bad_gss_code_is_refused_at_the_coding(code: str, issue: str) -> None:
    assert issues(move({"system": GSS, "code": code})) == [
        (issue, "Observation.valueCodeableConcept.coding[0].code")
    ]


def test_the_gss_coding_must_be_there_once() -> None:
    no_value = move()
    del no_value["valueCodeableConcept"]
    other_system = move({"system": "urn:example", "code": "E08000035"}, {"system": GSS, "code": "E08000035"})

    assert issues(no_value) == [("required", "Observation.valueCodeableConcept")]
    assert issues(move({"system": "urn:example", "code": "E08000035"})) == [
        ("code-invalid", "Observation.valueCodeableConcept.coding")
    ]
    facts, _ = facts_from_observation(other_system, STORED, today=TODAY)
    assert facts.local_authority_gss == "E08000035"


def test_a_referral_bundle_cannot_state_a_move() -> None:
    bundle = example("police-night-referral.json")
    observation = move({"system": GSS, "code": "E08000035"})
    del observation["basedOn"]
    observation["subject"] = bundle["entry"][0]["resource"].get("subject") or {
        "reference": bundle["entry"][0]["fullUrl"]
    }
    bundle["entry"].append(
        {
            "fullUrl": "urn:uuid:5b0c6c4e-6f60-4c4b-9b0e-2f1c7a0d9e11",
            "resource": observation,
            "request": {"method": "POST", "url": "Observation"},
        }
    )

    with pytest.raises(FhirInputError) as raised:
        parse_referral_bundle(
            bundle, referrer=ReferrerContext(organisation_id="demo-police", kind="police"), today=TODAY
        )

    index = len(bundle["entry"]) - 1
    assert ("invalid", f"Bundle.entry[{index}].resource.code") in {
        (str(i.code), i.expression) for i in raised.value.issues
    }


@pytest.mark.parametrize("status", ["completed", "revoked"])
def test_an_active_referral_closes_and_keeps_the_server_elements(status: str) -> None:
    body = {**REQUEST, "status": status, "subject": {"reference": "Patient/someone-else"}}
    del body["note"]

    change = decide_status_update(REQUEST, body, resource_id="ref-1")

    assert (change.previous_status, change.status) == ("active", status)
    assert (
        change.closure
        == {"completed": pb.REFERRAL_CLOSURE_COMPLETED, "revoked": pb.REFERRAL_CLOSURE_REVOKED}[status]
    )
    assert change.resource["subject"] == REQUEST["subject"]  # not taken from the body
    assert change.resource["note"] == REQUEST["note"]  # left out of the body: kept
    assert REQUEST["status"] == "active"


def test_a_closed_referral_stays_closed() -> None:
    closed = {**REQUEST, "status": "revoked"}

    with pytest.raises(TransitionError) as refused:
        decide_status_update(closed, {**REQUEST, "status": "active"}, resource_id="ref-1")

    assert refused.value.issue.expression == "ServiceRequest.status"
    assert "none (the referral is closed)" in refused.value.issue.diagnostics


def test_bad_status_updates_name_the_element() -> None:
    def refused(body: Any) -> list[tuple[str, str]]:
        with pytest.raises(FhirInputError) as raised:
            decide_status_update(REQUEST, body, resource_id="ref-1")
        return [(str(i.code), i.expression) for i in raised.value.issues]

    no_status = copy.deepcopy(REQUEST)
    del no_status["status"]
    assert refused({**REQUEST, "status": "finished"}) == [("code-invalid", "ServiceRequest.status")]
    assert refused(no_status) == [("required", "ServiceRequest.status")]
    assert refused({**REQUEST, "id": "other", "status": "completed"}) == [("value", "ServiceRequest.id")]
    assert refused({"resourceType": "Task"}) == [("structure", "ServiceRequest")]
    with pytest.raises(TransitionError):
        decide_status_update(REQUEST, {**REQUEST, "status": "on-hold"}, resource_id="ref-1")
