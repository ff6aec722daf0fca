from __future__ import annotations

from datetime import datetime

import pytest

from services.notifier.domain import (
    FieldKind,
    ProjectionError,
    RecipientRole,
    load_fields,
    load_policies,
    project,
)
from services.notifier.domain.projection import project_fields
from services.notifier.tests.conftest import every_fact

LOCATION_OR_PLACEMENT = {
    f.name for f in load_fields().fields.values() if f.sensitivity in {"location", "placement"}
}

_CASES = [
    pytest.param(policy.event_type, name, fields, id=f"{policy.event_type}:{name}")
    for policy in load_policies().values()
    for name, fields in policy.projections.items()
]


@pytest.mark.parametrize(("event_type", "projection", "fields"), _CASES)
def test_each_projection_sends_its_allow_list_and_nothing_else(
    event_type: str, projection: str, fields: tuple[str, ...]
) -> None:
    policy = load_policies()[event_type]
    rule = next(r for r in policy.recipients if r.projection == projection)
    facts = every_fact()
    kinds = load_fields().fields
    for name, values in rule.when.items():  # satisfy the rule's condition with a value it accepts
        facts[name] = True if kinds[name].kind is FieldKind.BOOL else sorted(values)[0]
    payload = project(event_type, rule.role, facts)
    assert set(payload) == set(fields)
    assert set(facts) - set(fields) - set(rule.when), "the fixture must offer fields to leave out"
    assert not set(payload) & (set(facts) - set(fields))


def test_referrer_never_gets_location_or_placement_in_any_policy() -> None:
    for policy in load_policies().values():
        for rule in policy.rules_for(RecipientRole.REFERRER):
            assert not set(rule.fields) & LOCATION_OR_PLACEMENT, policy.event_type


def test_routed_referrer_gets_the_outcome_not_the_placement() -> None:
    payload = project("referral-routed", "referrer", every_fact())
    assert {"outcome", "programme_ids", "referral_id"} <= set(payload)
    assert not {"service_ids", "task_ids", "own_service_ids", "child_id", "date_of_birth"} & set(payload)


def test_routed_provider_gets_its_task_but_not_the_child_profile() -> None:
    payload = project("referral-routed", "task-owner", every_fact())
    assert {"own_task_ids", "own_service_ids", "own_routes"} <= set(payload)
    assert not {"task_ids", "service_ids", "referrer_organisation_id", "nationalities"} & set(payload)


def test_missing_child_police_get_where_last_seen_and_nrm_authority_does_not() -> None:
    police = project("missing-episode-reported", "police", every_fact())
    nrm = project(
        "missing-episode-reported", "nrm-competent-authority", {**every_fact(), "nrm_status": "unknown"}
    )
    assert {"last_seen_site_id", "missing_since", "sex", "nationalities"} <= set(police)
    assert {"episode_status", "nrm_status", "missing_since"} <= set(nrm)
    assert not {"last_seen_site_id", "service_ids", "local_authority_gss"} & set(nrm)


def test_on_call_email_carries_no_child_data() -> None:
    payload = project("emergency-without-bed", "on-call-manager", every_fact())
    assert not {"child_id", "date_of_birth", "sex", "nationalities"} & set(payload)


def test_values_are_normalised_to_json_ready_forms() -> None:
    payload = project_fields(
        ["date_of_birth", "missing_since", "waiting_list"],
        {
            "date_of_birth": "2008-02-29",
            "missing_since": datetime.fromisoformat("2024-03-01T03:00:00+01:00"),
            "waiting_list": {"unseen": 2, "afruca": 1},
        },
    )
    assert payload == {
        "date_of_birth": "2008-02-29",
        "missing_since": "2024-03-01T02:00:00Z",
        "waiting_list": {"afruca": 1, "unseen": 2},
    }


@pytest.mark.parametrize(
    ("facts", "message"),
    [
        ({"child_id": "Jane Doe"}, "no free text"),
        ({"rejection_reason_code": "the child seemed fine to us"}, "no free text"),
        ({"child_name": "Jane"}, "undeclared"),
        ({"date_of_birth": "1 March 2008"}, "ISO date"),
        ({"missing_since": "2024-03-01T02:00:00"}, "time zone"),
        ({"sequence": -1}, "count"),
        ({"escalate_to_edt": "yes"}, "true or false"),
        ({"programme_ids": "ictg"}, "list"),
    ],
)
def test_names_free_text_and_ill_formed_values_are_refused(facts: dict[str, object], message: str) -> None:
    with pytest.raises(ProjectionError, match=message):
        project_fields(list(load_fields().fields), facts)


def test_absent_facts_are_left_out_not_sent_empty() -> None:
    assert project("referral-routed", "referrer", {"referral_id": "ref-1", "outcome": None}) == {
        "referral_id": "ref-1"
    }


def test_a_role_the_policy_does_not_notify_gets_nothing() -> None:
    with pytest.raises(ProjectionError, match="not notified"):
        project("referral-routed", "police", every_fact())
    with pytest.raises(ProjectionError, match="not notified for these facts"):
        project("referral-received", "la-edt", {**every_fact(), "urgency": "routine"})
    with pytest.raises(ProjectionError, match="unknown role"):
        project("referral-routed", "family-contact", every_fact())
