"""AuditEvents are valid FHIR, name organisation, role, record and purpose, and carry no free text."""

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from haven.organisations import Role
from services.gateway.security import Outcome, Principal, Purpose, audit, audit_event, outcome_for_status
from services.gateway.security.access import Action

AT = datetime(2026, 11, 23, 2, 30, 15, 123456, tzinfo=UTC)
LA = Principal("demo-la-manchester", Role.LA_PLATFORM, frozenset({"E08000003"}), "local-authority")
ACTIONS: list[tuple[Action, str]] = [
    ("C", "create"),
    ("R", "read"),
    ("U", "update"),
    ("D", "delete"),
    ("E", "operation"),
]


def event(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "principal": LA,
        "action": "R",
        "entity_reference": "Task/t-1",
        "outcome": Outcome.SUCCESS,
        "purpose": Purpose.COORDINATION_OF_CARE,
        "at": AT,
        "request_id": "req-42",
        "interaction_id": "6f1c2a52-0c52-4f57-9d6b-3c3c6d1b6a10",
    }
    return audit_event(**(arguments | overrides))


@pytest.mark.parametrize(("action", "interaction"), ACTIONS)
def test_every_action_is_a_valid_r4_audit_event(action: Action, interaction: str) -> None:
    built = event(action=action)
    AuditEvent.model_validate(built)
    assert built["action"] == action
    assert built["subtype"] == [{"system": "http://hl7.org/fhir/restful-interaction", "code": interaction}]


def test_the_event_names_who_what_why_and_when() -> None:
    built = event(patient_reference="Patient/p-9")
    assert built["type"]["code"] == "rest"
    assert built["recorded"] == "2026-11-23T02:30:15.123Z"
    assert built["outcome"] == "0"
    assert built["purposeOfEvent"][0]["coding"][0]["code"] == "COC"
    (agent,) = built["agent"]
    assert agent["who"] == {"reference": "Organization/demo-la-manchester"}
    assert agent["role"][0]["coding"][0]["code"] == "la-platform"
    assert agent["requestor"] is True
    record, patient, request = built["entity"]
    assert record["what"] == {"reference": "Task/t-1"} and record["type"]["code"] == "Task"
    assert patient["what"] == {"reference": "Patient/p-9"} and patient["role"]["code"] == "1"
    assert request["what"] == {"identifier": {"value": "req-42"}}
    AuditEvent.model_validate(built)


def test_a_search_records_the_type_searched_and_not_the_query() -> None:
    built = event(action="E", entity_reference="Task", interaction="search-type")
    assert built["subtype"][0]["code"] == "search-type"
    assert built["entity"][0] == {
        "type": {"system": "http://hl7.org/fhir/resource-types", "code": "Task"},
        "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4"},
    }
    AuditEvent.model_validate(built)


def test_the_time_is_recorded_in_utc() -> None:
    local = AT.astimezone(timezone(timedelta(hours=1)))
    assert event(at=local)["recorded"] == "2026-11-23T02:30:15.123Z"


def test_the_id_is_stable_for_the_same_event_and_differs_for_another() -> None:
    assert event()["id"] == event()["id"]
    assert event()["id"] != event(at=AT + timedelta(milliseconds=1))["id"]
    assert event()["id"] != event(entity_reference="Task/t-2")["id"]


def test_the_id_is_derived_from_the_canonical_json_dumps_form_as_it_always_was() -> None:
    recorded = event()
    without_id = {k: v for k, v in recorded.items() if k != "id"}
    canonical = json.dumps(without_id, sort_keys=True, separators=(",", ":"))
    interaction = "6f1c2a52-0c52-4f57-9d6b-3c3c6d1b6a10"
    assert recorded["id"] == str(uuid.uuid5(audit._AUDIT_NAMESPACE, f"{interaction}|{canonical}"))


@pytest.mark.parametrize("text", ["plain", "Zoë", "\u00e9\u4e2d", 'quote " and \\ slash', "\n\t"])
def test_the_canonical_form_is_json_dumps_for_any_text(text: str) -> None:
    value = {"b": [text, 1, True, None], "a": {"z": text, "y": {}}}
    assert audit.canonical_json(value) == json.dumps(value, sort_keys=True, separators=(",", ":"))


def test_two_interactions_alike_to_the_millisecond_have_different_ids() -> None:
    other = event(interaction_id="0b6a3f5e-8d7e-4a8f-9e55-1d2c3b4a5f60")
    assert other["id"] != event()["id"]
    assert {k: v for k, v in other.items() if k != "id"} == {k: v for k, v in event().items() if k != "id"}


def test_an_interaction_without_an_id_is_refused() -> None:
    with pytest.raises(ValueError, match="interaction_id"):
        event(interaction_id="")


def test_a_request_id_that_is_not_a_plain_token_is_kept_only_as_a_digest() -> None:
    given = "Jane Doe looked this up"
    built = event(request_id=given)
    recorded = built["entity"][-1]["what"]["identifier"]["value"]
    assert recorded.startswith("sha256:") and "Jane" not in str(built)
    assert recorded == event(request_id=given)["entity"][-1]["what"]["identifier"]["value"]
    assert all(e["type"]["code"] != "XrequestId" for e in event(request_id="")["entity"])


@pytest.mark.parametrize(
    "overrides",
    [
        {"purpose": "looking into the child's family"},
        {"outcome": "success"},
        {"entity_reference": "Patient/John Smith"},
        {"entity_reference": "https://elsewhere.example/Patient/1"},
        {"patient_reference": "Task/t-1"},
        {"interaction": "browse"},
        {"action": "X"},
        {"at": datetime(2026, 11, 23, 2, 30)},
    ],
)
def test_free_text_and_bad_codes_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        event(**overrides)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, Outcome.SUCCESS), (201, Outcome.SUCCESS), (304, Outcome.SUCCESS), (403, Outcome.MINOR_FAILURE),
     (404, Outcome.MINOR_FAILURE), (500, Outcome.SERIOUS_FAILURE), (503, Outcome.SERIOUS_FAILURE)],
)  # fmt: skip
def test_outcome_for_status(status: int, outcome: Outcome) -> None:
    assert outcome_for_status(status) is outcome
