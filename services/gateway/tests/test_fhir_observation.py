"""A fact posted after the referral is validated and merged into the stored facts."""

from datetime import date
from typing import Any

import pytest

from haven.referral.v1 import referral_pb2 as pb
from services.gateway.fhir import FhirInputError, facts_from_observation, referral_id_from_observation

TODAY = date(2026, 11, 23)
FACT = "https://haven.example.org/fhir/CodeSystem/referral-fact"
STORED = pb.ReferralFacts(
    child_id="c0ffee00-0000-4000-8000-000000000001",
    dates_of_birth=[pb.DateOfBirthStatement(date="2011-05-01", basis=pb.DATE_OF_BIRTH_BASIS_CLAIMED)],
    trafficking_concern=pb.TRAFFICKING_CONCERN_SUSPECTED,
    nrm_status=pb.NRM_STATUS_AWAITING_RG,
    local_authority_gss="E08000003",
)


def observation(fact: str, **value: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "basedOn": [{"reference": "ServiceRequest/ref-1"}],
        "code": {"coding": [{"system": FACT, "code": fact}]},
        **value,
    }


def coded(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": f"https://haven.example.org/fhir/CodeSystem/{system}", "code": code}]}


def nrm(code: str, **value: Any) -> dict[str, Any]:
    return observation("nrm-status", valueCodeableConcept=coded("nrm-status", code), **value)


NO_ASYLUM = observation("asylum-application", valueBoolean=False)
DATA_ABSENT_REASON = "http://terminology.hl7.org/CodeSystem/data-absent-reason"


def issues(body: Any) -> set[tuple[str, str]]:
    with pytest.raises(FhirInputError) as raised:
        facts_from_observation(body, STORED, today=TODAY)
    return {(str(i.code), i.expression) for i in raised.value.issues}


def test_negative_conclusive_grounds_decision() -> None:
    body = nrm("cg-negative", effectiveDateTime="2026-11-21T10:00:00Z")

    facts, changed = facts_from_observation(body, STORED, today=TODAY)

    assert (facts.nrm_status, facts.nrm_decision_date) == (pb.NRM_STATUS_CG_NEGATIVE, "2026-11-21")
    assert changed == ["nrm_status", "nrm_decision_date"]


def test_age_assessment_adds_a_date_of_birth_and_keeps_the_claim() -> None:
    assessed = coded("date-of-birth-basis", "assessed")
    body = observation("date-of-birth", valueDateTime="2008-02-01", method=assessed)

    facts, changed = facts_from_observation(body, STORED, today=TODAY)

    assert [(d.date, d.basis) for d in facts.dates_of_birth] == [
        ("2011-05-01", pb.DATE_OF_BIRTH_BASIS_CLAIMED),
        ("2008-02-01", pb.DATE_OF_BIRTH_BASIS_ASSESSED),
    ]
    assert changed == ["dates_of_birth"]


def test_missing_episode_sets_and_clears_missing_since() -> None:
    went = observation("missing-episode", effectivePeriod={"start": "2026-11-20T22:00:00Z"})
    missing, changed = facts_from_observation(went, STORED, today=TODAY)
    found = observation("missing-episode", effectivePeriod={"start": "2026-11-20", "end": "2026-11-22"})
    back, changed_back = facts_from_observation(found, missing, today=TODAY)

    assert (missing.missing_since, changed) == ("2026-11-20", ["missing_since"])
    assert (back.missing_since, changed_back) == ("", ["missing_since"])


def test_parental_responsibility_unknown_by_data_absent_reason() -> None:
    body = observation(
        "parental-responsibility-in-uk",
        dataAbsentReason={"coding": [{"system": DATA_ABSENT_REASON, "code": "unknown"}]},
    )

    facts, changed = facts_from_observation(body, STORED, today=TODAY)

    assert facts.parental_responsibility_in_uk == pb.ANSWER_UNSPECIFIED
    assert changed == []


def test_a_fact_already_known_changes_nothing() -> None:
    body = observation("trafficking-concern", valueCodeableConcept=coded("trafficking-concern", "suspected"))

    facts, changed = facts_from_observation(body, STORED, today=TODAY)

    assert facts == STORED
    assert changed == []


def test_referral_id_comes_from_based_on() -> None:
    assert referral_id_from_observation(observation("nrm-status")) == "ref-1"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            nrm("rg-positive", effectiveDateTime="2026-12-01"),
            ("value", "Observation.effectiveDateTime"),
        ),
        (
            nrm("rg-maybe"),
            ("code-invalid", "Observation.valueCodeableConcept.coding[0].code"),
        ),
        (
            {**NO_ASYLUM, "basedOn": [{"reference": "Patient/x"}]},
            ("required", "Observation.basedOn"),
        ),
        (
            {**NO_ASYLUM, "subject": {"reference": "Patient/someone-else"}},
            ("value", "Observation.subject.reference"),
        ),
        (observation("asylum-application"), ("required", "Observation.value[x]")),
        (observation("missing-episode"), ("required", "Observation.effectivePeriod.start")),
        ({**observation("trafficking-route"), "status": "entered-in-error"}, ("value", "Observation.status")),
        ({"resourceType": "Observation", "status": "final"}, ("required", "Observation.code")),
        ({"resourceType": "Patient"}, ("structure", "Observation")),
    ],
    ids=[
        "future decision",
        "unknown NRM code",
        "basedOn not a ServiceRequest",
        "another child",
        "asylum without value",
        "missing episode without start",
        "entered in error",
        "no code",
        "not an Observation",
    ],
)
def test_bad_observation(body: dict[str, Any], expected: tuple[str, str]) -> None:
    assert expected in issues(body)
