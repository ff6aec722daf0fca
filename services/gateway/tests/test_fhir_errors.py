"""Bad input gives issues with the right FHIR issue code and FHIRPath, all of them, and no result."""

import json
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from services.gateway.fhir import (
    FhirInputError,
    IssueType,
    ReferrerContext,
    is_known_local_authority,
    operation_outcome,
    parse_referral_bundle,
)

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
TODAY = date(2026, 11, 23)
POLICE = ReferrerContext("demo-police", "police")

Mutation = Callable[[dict[str, Any]], None]


def police_bundle() -> dict[str, Any]:
    body: dict[str, Any] = json.loads((EXAMPLES / "police-night-referral.json").read_text(encoding="utf-8"))
    return body


def issues_for(body: Any) -> set[tuple[str, str]]:
    with pytest.raises(FhirInputError) as raised:
        parse_referral_bundle(body, referrer=POLICE, today=TODAY)
    return {(str(i.code), i.expression) for i in raised.value.issues}


def patient(body: dict[str, Any]) -> dict[str, Any]:
    resource: dict[str, Any] = body["entry"][0]["resource"]
    return resource


def request(body: dict[str, Any]) -> dict[str, Any]:
    resource: dict[str, Any] = body["entry"][1]["resource"]
    return resource


def concern(body: dict[str, Any]) -> dict[str, Any]:
    resource: dict[str, Any] = body["entry"][2]["resource"]
    return resource


def set_gss(value: str) -> Mutation:
    return lambda body: request(body)["extension"][0]["valueIdentifier"].update(value=value)


def add_entry(resource: dict[str, Any]) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        body["entry"].append(
            {
                "fullUrl": "urn:uuid:9d7c1f7e-0000-4000-8000-00000000abcd",
                "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"]},
            }
        )

    return mutate


GSS_VALUE = "Bundle.entry[1].resource.extension[0].valueIdentifier.value"
HAVEN = "https://haven.example.org/fhir/CodeSystem"
NATIONALITY = "http://hl7.org/fhir/StructureDefinition/patient-nationality"
ALPHA_3_UK = {"coding": [{"system": "urn:iso:std:iso:3166", "code": "GBR"}]}


def coded(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": f"{HAVEN}/{system}", "code": code}]}


def fact_observation(fact: str, value: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": coded("referral-fact", fact),
        "subject": {"reference": "urn:uuid:5f0e6a61-2b1d-4c8e-9a57-3d1b2f6c7a01"},
        "valueCodeableConcept": value,
    }


def load_invalid(name: str) -> Any:
    return json.loads((EXAMPLES / "invalid" / name).read_text(encoding="utf-8"))


CASES: dict[str, tuple[Mutation, str, str]] = {
    "not a transaction": (lambda b: b.update(type="collection"), "value", "Bundle.type"),
    "unknown element": (
        lambda b: patient(b).update(dateOfBirth="2011-05-01"),
        "structure",
        "Bundle.entry[0].resource.dateOfBirth",
    ),
    "malformed date": (
        lambda b: patient(b).update(birthDate="01/05/2011"),
        "value",
        "Bundle.entry[0].resource.birthDate",
    ),
    "partial birth date": (
        lambda b: patient(b).update(birthDate="2011"),
        "value",
        "Bundle.entry[0].resource.birthDate",
    ),
    "future birth date": (
        lambda b: patient(b).update(birthDate="2026-11-24"),
        "value",
        "Bundle.entry[0].resource.birthDate",
    ),
    "future referral date": (
        lambda b: request(b).update(authoredOn="2027-01-01T00:00:00Z"),
        "value",
        "Bundle.entry[1].resource.authoredOn",
    ),
    "unknown gender": (
        lambda b: patient(b).update(gender="boy"),
        "code-invalid",
        "Bundle.entry[0].resource.gender",
    ),
    "missing required element": (
        lambda b: concern(b).pop("code"),
        "required",
        "Bundle.entry[2].resource.code",
    ),
    "wrong resource type": (
        add_entry({"resourceType": "Condition"}),
        "not-supported",
        "Bundle.entry[3].resource.resourceType",
    ),
    "missing patient": (lambda b: b["entry"].pop(0), "required", "Bundle.entry"),
    "missing service request": (lambda b: b["entry"].pop(1), "required", "Bundle.entry"),
    "second patient": (add_entry({"resourceType": "Patient"}), "invalid", "Bundle.entry[3]"),
    "unresolved reference": (
        lambda b: concern(b)["subject"].update(reference="Patient/123"),
        "not-found",
        "Bundle.entry[2].resource.subject.reference",
    ),
    "subject points to the wrong entry": (
        lambda b: concern(b)["subject"].update(reference=b["entry"][1]["fullUrl"]),
        "value",
        "Bundle.entry[2].resource.subject.reference",
    ),
    "missing subject": (lambda b: request(b).pop("subject"), "required", "Bundle.entry[1].resource.subject"),
    "requester is another organisation": (
        lambda b: request(b).update(requester={"reference": "Organization/other-force"}),
        "forbidden",
        "Bundle.entry[1].resource.requester.reference",
    ),
    "fullUrl not a urn:uuid": (
        lambda b: b["entry"][2].update(fullUrl="Observation/1"),
        "value",
        "Bundle.entry[2].fullUrl",
    ),
    "PUT instead of POST": (
        lambda b: b["entry"][0]["request"].update(method="PUT"),
        "not-supported",
        "Bundle.entry[0].request.method",
    ),
    "unknown fact code": (
        lambda b: concern(b)["code"]["coding"][0].update(code="worry"),
        "code-invalid",
        "Bundle.entry[2].resource.code.coding[0].code",
    ),
    "unknown value code": (
        lambda b: concern(b)["valueCodeableConcept"]["coding"][0].update(code="probable"),
        "code-invalid",
        "Bundle.entry[2].resource.valueCodeableConcept.coding[0].code",
    ),
    "code from another system only": (
        lambda b: request(b)["code"]["coding"][0].update(system="http://snomed.info/sct"),
        "code-invalid",
        "Bundle.entry[1].resource.code.coding",
    ),
    "unknown priority": (
        lambda b: request(b).update(priority="whenever"),
        "code-invalid",
        "Bundle.entry[1].resource.priority",
    ),
    "alpha-3 nationality": (
        lambda b: (
            patient(b)
            .setdefault("extension", [])
            .append({"url": NATIONALITY, "extension": [{"url": "code", "valueCodeableConcept": ALPHA_3_UK}]})
        ),
        "code-invalid",
        "Bundle.entry[0].resource.extension[1].extension[0].valueCodeableConcept.coding[0].code",
    ),
    "GSS code malformed": (set_gss("E0800003"), "value", GSS_VALUE),
    "GSS code of a shire district": (set_gss("E07000117"), "value", GSS_VALUE),
    "GSS code unknown": (set_gss("E08000999"), "code-invalid", GSS_VALUE),
    "no local authority": (
        lambda b: request(b).pop("extension"),
        "required",
        "Bundle.entry[1].resource.extension",
    ),
    "same fact twice": (
        add_entry(fact_observation("trafficking-concern", coded("trafficking-concern", "identified"))),
        "duplicate",
        "Bundle.entry[3].resource.code",
    ),
    "NRM decision without its date": (
        add_entry(fact_observation("nrm-status", coded("nrm-status", "rg-positive"))),
        "required",
        "Bundle.entry[3].resource.effectiveDateTime",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_reported_with_code_and_expression(case: str) -> None:
    mutate, code, expression = CASES[case]
    body = police_bundle()
    mutate(body)

    assert (code, expression) in issues_for(body)


@pytest.mark.parametrize("body", [None, [], "Bundle", {"resourceType": "Patient"}])
def test_anything_but_a_bundle_is_a_structure_issue(body: Any) -> None:
    assert issues_for(body) == {("structure", "Bundle")}


def test_broken_bundle_shell_is_reported_from_fhir_resources() -> None:
    body = police_bundle()
    body["entry"] = {"not": "a list"}

    assert {code for code, _ in issues_for(body)} <= {"value", "structure"}


def test_all_problems_are_reported_together() -> None:
    body = load_invalid("several-problems.json")

    assert issues_for(body) == {
        ("value", "Bundle.entry[0].resource.birthDate"),
        ("code-invalid", GSS_VALUE),
        ("not-found", "Bundle.entry[2].resource.subject.reference"),
        ("code-invalid", "Bundle.entry[2].resource.valueCodeableConcept.coding[0].code"),
    }


def test_bundle_of_the_wrong_kind_without_patient() -> None:
    body = load_invalid("no-patient-not-a-transaction.json")

    found = issues_for(body)

    assert {
        ("value", "Bundle.type"),
        ("not-supported", "Bundle.entry[0].resource.resourceType"),
        ("not-supported", "Bundle.entry[1].request.method"),
        ("required", "Bundle.entry"),
        ("value", GSS_VALUE),
    } <= found


def test_operation_outcome_carries_every_issue() -> None:
    body = load_invalid("several-problems.json")
    with pytest.raises(FhirInputError) as raised:
        parse_referral_bundle(body, referrer=POLICE, today=TODAY)

    outcome = operation_outcome(raised.value.issues)

    assert outcome["resourceType"] == "OperationOutcome"
    assert len(outcome["issue"]) == len(raised.value.issues) == 4
    for issue in outcome["issue"]:
        assert issue["severity"] == "error"
        assert issue["code"] in {str(c) for c in IssueType}
        assert len(issue["expression"]) == 1
        assert issue["diagnostics"]


def test_error_text_quotes_no_values_about_the_child() -> None:
    body = police_bundle()
    patient(body)["birthDate"] = "2026-12-25"
    with pytest.raises(FhirInputError) as raised:
        parse_referral_bundle(body, referrer=POLICE, today=TODAY)

    assert "2026-12-25" not in str(raised.value)
    assert "2026-12-25" in raised.value.issues[0].diagnostics


def test_known_local_authorities() -> None:
    assert is_known_local_authority("E08000003")
    assert is_known_local_authority("W06000015")
    assert not is_known_local_authority("E07000117")
