"""Every example Bundle under examples/ parses to the facts it is meant to carry."""

import copy
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from haven.referral.v1 import referral_pb2 as pb
from services.gateway.fhir import (
    ParsedReferral,
    ReferrerContext,
    facts_from_observation,
    parse_referral_bundle,
    referral_id_from_observation,
    transaction_response_bundle,
)

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
TODAY = date(2026, 11, 23)


def load(name: str) -> Any:
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


def parse(name: str, organisation: str, kind: str) -> ParsedReferral:
    return parse_referral_bundle(load(name), referrer=ReferrerContext(organisation, kind), today=TODAY)


def expected(parsed: ParsedReferral, **fields: Any) -> pb.ReferralFacts:
    """The facts a test expects, with the server-assigned child id filled in."""
    return pb.ReferralFacts(child_id=parsed.patient_id, **fields)


def test_police_night_referral_carries_claimed_age_and_suspected_concern() -> None:
    parsed = parse("police-night-referral.json", "demo-police", "police")

    assert parsed.facts == expected(
        parsed,
        dates_of_birth=[pb.DateOfBirthStatement(date="2011-05-01", basis=pb.DATE_OF_BIRTH_BASIS_CLAIMED)],
        sex=pb.SEX_MALE,
        trafficking_concern=pb.TRAFFICKING_CONCERN_SUSPECTED,
        local_authority_gss="E08000003",
        referrer=pb.Referrer(organisation_id="demo-police", kind=pb.REFERRER_KIND_POLICE),
        urgency=pb.URGENCY_URGENT,
        service_asked=pb.SERVICE_ASKED_ANY,
        referral_date="2026-11-12",
    )
    assert parsed.referrer_identifier == "https://police.example.org/id/occurrence|GMP-261112-0042"


def test_edt_emergency_keeps_claimed_and_assessed_dates_of_birth() -> None:
    parsed = parse("edt-emergency-placement.json", "demo-edt-manchester", "edt")

    assert parsed.facts == expected(
        parsed,
        dates_of_birth=[
            pb.DateOfBirthStatement(date="2011-09-14", basis=pb.DATE_OF_BIRTH_BASIS_CLAIMED),
            pb.DateOfBirthStatement(date="2011-03-02", basis=pb.DATE_OF_BIRTH_BASIS_ASSESSED),
        ],
        sex=pb.SEX_MALE,
        nationalities=["VN"],
        trafficking_concern=pb.TRAFFICKING_CONCERN_IDENTIFIED,
        trafficking_route=pb.TRAFFICKING_ROUTE_CROSS_BORDER,
        exploitation_types=[pb.EXPLOITATION_TYPE_CRIMINAL, pb.EXPLOITATION_TYPE_LABOUR],
        nrm_status=pb.NRM_STATUS_RG_POSITIVE,
        nrm_decision_date="2026-10-30",
        asylum_application_made=pb.ANSWER_YES,
        asylum_application_date="2026-09-15",
        parental_responsibility_in_uk=pb.ANSWER_NO,
        local_authority_gss="E08000003",
        referrer=pb.Referrer(organisation_id="demo-edt-manchester", kind=pb.REFERRER_KIND_EDT),
        urgency=pb.URGENCY_EMERGENCY,
        service_asked=pb.SERVICE_ASKED_SPECIALIST_ACCOMMODATION,
        referral_date="2026-11-14",
    )


def test_local_authority_referral_with_full_facts() -> None:
    parsed = parse("local-authority-full-referral.json", "demo-la-leeds", "local-authority")

    assert parsed.facts == expected(
        parsed,
        dates_of_birth=[pb.DateOfBirthStatement(date="2012-04-18", basis=pb.DATE_OF_BIRTH_BASIS_DOCUMENTED)],
        sex=pb.SEX_FEMALE,
        nationalities=["GB"],
        trafficking_concern=pb.TRAFFICKING_CONCERN_IDENTIFIED,
        trafficking_route=pb.TRAFFICKING_ROUTE_INTERNAL,
        exploitation_types=[pb.EXPLOITATION_TYPE_SEXUAL, pb.EXPLOITATION_TYPE_CRIMINAL],
        nrm_status=pb.NRM_STATUS_CG_POSITIVE,
        nrm_decision_date="2026-08-12",
        asylum_application_made=pb.ANSWER_NO,
        parental_responsibility_in_uk=pb.ANSWER_YES,
        local_authority_gss="E08000035",
        referrer=pb.Referrer(organisation_id="demo-la-leeds", kind=pb.REFERRER_KIND_LOCAL_AUTHORITY),
        urgency=pb.URGENCY_ROUTINE,
        service_asked=pb.SERVICE_ASKED_THERAPEUTIC_SUPPORT,
        referral_date="2026-11-10",
    )


def test_server_assigns_ids_and_rewrites_every_reference() -> None:
    body = load("edt-emergency-placement.json")
    original = copy.deepcopy(body)
    parsed = parse_referral_bundle(body, referrer=ReferrerContext("demo-edt-manchester", "edt"), today=TODAY)

    assert body == original, "the posted body must not be modified"
    assert [r["resourceType"] for r in parsed.resources] == [
        e["resource"]["resourceType"] for e in body["entry"]
    ]
    ids = [r["id"] for r in parsed.resources]
    assert len(set(ids)) == len(ids)
    request = parsed.resources[1]
    assert request["id"] == parsed.referral_id
    assert request["subject"] == {"reference": f"Patient/{parsed.patient_id}"}
    assert request["requester"] == {"reference": "Organization/demo-edt-manchester"}
    for observation in parsed.resources[2:]:
        assert observation["subject"] == {"reference": f"Patient/{parsed.patient_id}"}
        assert observation["basedOn"] == [{"reference": f"ServiceRequest/{parsed.referral_id}"}]
    assert "urn:uuid:" not in json.dumps(parsed.resources)
    assert parsed.locations[0] == f"Patient/{parsed.patient_id}"
    for resource in parsed.resources:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def test_same_bundle_twice_gets_new_ids() -> None:
    first = parse("police-night-referral.json", "demo-police", "police")
    second = parse("police-night-referral.json", "demo-police", "police")

    assert first.referral_id != second.referral_id


def test_nrm_decision_posted_later_updates_status_and_date() -> None:
    referral = parse("police-night-referral.json", "demo-police", "police")
    observation = json.loads(
        (EXAMPLES / "nrm-decision-observation.json")
        .read_text(encoding="utf-8")
        .replace("{referral_id}", referral.referral_id)
    )

    assert referral_id_from_observation(observation) == referral.referral_id
    facts, changed = facts_from_observation(observation, referral.facts, today=TODAY)

    assert facts.nrm_status == pb.NRM_STATUS_RG_POSITIVE
    assert facts.nrm_decision_date == "2026-11-20"
    assert changed == ["nrm_status", "nrm_decision_date"]
    assert referral.facts.nrm_status == pb.NRM_STATUS_UNSPECIFIED, "input facts must not change"


def test_transaction_response_lists_locations_in_request_order() -> None:
    parsed = parse("police-night-referral.json", "demo-police", "police")
    stamp = datetime(2026, 11, 12, 2, 40, 5, tzinfo=UTC)

    response = transaction_response_bundle(parsed.locations, last_modified=stamp)

    assert response["type"] == "transaction-response"
    assert [e["response"]["location"] for e in response["entry"]] == [
        f"Patient/{parsed.patient_id}/_history/1",
        f"ServiceRequest/{parsed.referral_id}/_history/1",
        f"Observation/{parsed.resources[2]['id']}/_history/1",
    ]
    assert {e["response"]["status"] for e in response["entry"]} == {"201 Created"}
    assert transaction_response_bundle(parsed.locations, last_modified=stamp) == response, "completed again"
    replayed = transaction_response_bundle(parsed.locations, last_modified=stamp, status="200 OK")
    assert replayed["id"] != response["id"]


def test_unknown_referrer_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown referrer kind"):
        ReferrerContext("demo-police", "constabulary")
