from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from services.notifier.domain import (
    EVENT_TYPES,
    Anchor,
    Channel,
    PolicyError,
    RecipientRole,
    Urgency,
    load_fields,
    load_policies,
)


def test_every_event_type_has_a_policy_with_cited_recipients() -> None:
    policies = load_policies()
    assert list(policies) == list(EVENT_TYPES)
    for policy in policies.values():
        assert policy.recipients
        for rule in policy.recipients:
            assert rule.citation and rule.deadline > timedelta(0)


def test_missing_child_policy_follows_the_ictg_notes() -> None:
    policy = load_policies()["missing-episode-reported"]
    roles = {r.role for r in policy.recipients}
    assert {
        RecipientRole.POLICE,
        RecipientRole.LA_CHILDRENS_SERVICES,
        RecipientRole.ICTG,
        RecipientRole.NRM_COMPETENT_AUTHORITY,
    } <= roles
    police = policy.rules_for("police")[0]
    assert police.urgency is Urgency.IMMEDIATE and police.deadline == timedelta(minutes=15)
    assert police.required
    nrm = policy.rules_for("nrm-competent-authority")[0]
    assert nrm.channel is Channel.EMAIL and "004 L690-692" in nrm.citation
    # A child never referred to the NRM has no case to suspend.
    assert not nrm.applies({"nrm_status": "not-referred"})
    assert nrm.applies({"nrm_status": "rg-positive"})


def test_missing_reviews_four_weeks_and_six_months_with_a_person_confirming() -> None:
    review = load_policies()["review-due"]
    four_weeks = review.schedule_entry("multi-agency-missing-review")
    closure = review.schedule_entry("long-term-missing-closure")
    assert four_weeks is not None and closure is not None
    assert four_weeks.anchor is Anchor.MISSING_SINCE and four_weeks.offset.delta == timedelta(days=28)
    assert closure.offset.months == 6 and closure.confirm_by_person
    assert not four_weeks.confirm_by_person


def test_exit_dates_are_eligibilitys_so_the_exit_policy_schedules_nothing() -> None:
    # ExitApproaching arrives at eligibility_pre_exit_alert_days; a schedule here would alert twice.
    exit_due = load_policies()["exit-due"]
    assert exit_due.schedule == ()
    assert "eligibility_pre_exit_alert_days" in exit_due.summary


def test_an_exit_date_schedule_is_refused_at_load(policy_copy: Path) -> None:
    # Exit dates are eligibility's: a policy that counted from them would duplicate ExitApproaching.
    _edit(
        policy_copy,
        "exit-due.yaml",
        lambda d: d.update(
            schedule=[
                {
                    "id": "exit-30-days",
                    "anchor": "exit-date",
                    "offset": "P30D",
                    "basis": "stated",
                    "citation": "none",
                }
            ]
        ),
    )
    with pytest.raises(PolicyError, match="unknown Anchor"):
        load_policies(policy_copy)


def test_placement_reviews_apply_to_specialist_accommodation_only() -> None:
    review = load_policies()["review-due"]
    placement = [s for s in review.schedule if s.anchor is Anchor.PLACEMENT_START]
    assert [s.schedule_id for s in placement] == [
        "isa-72-hour",
        "risk-needs-1-week",
        "pep-2-weeks",
        "review-1-month",
        "review-3-months",
        "review-6-months",
        "stay-limit-12-months",
    ]
    assert all(s.applies({"programme_id": "unseen-specialist-accommodation"}) for s in placement)
    assert not any(s.applies({"programme_id": "ictg"}) or s.applies({}) for s in placement)


def test_acknowledgement_deadlines_per_programme_and_urgency() -> None:
    policy = load_policies()["task-not-acknowledged"]
    ictg = policy.schedule_entry("ictg-24-hours")
    bed = policy.schedule_entry("accommodation-emergency-2-hours")
    assert ictg is not None and bed is not None
    assert ictg.anchor is bed.anchor is Anchor.TASK_ROUTED
    assert ictg.offset.delta == timedelta(hours=24) and "004 L885" in ictg.citation
    assert bed.offset.delta == timedelta(hours=2) and "L973" in bed.citation
    assert ictg.applies({"programme_id": "ictg", "urgency": "routine"})
    assert bed.applies({"programme_id": "unseen-specialist-accommodation", "urgency": "emergency"})
    assert not bed.applies({"programme_id": "unseen-specialist-accommodation", "urgency": "urgent"})
    edt = policy.rules_for("la-edt")[0]
    assert edt.applies({"urgency": "emergency"}) and not edt.applies({"urgency": "routine"})
    assert policy.rules_for("la-childrens-services")[0].required


def test_on_call_manager_is_emailed() -> None:
    rule = load_policies()["emergency-without-bed"].rules_for("on-call-manager")[0]
    assert rule.channel is Channel.EMAIL and rule.urgency is Urgency.IMMEDIATE


def _edit(folder: Path, name: str, change: object) -> None:
    path = folder / name
    data = yaml.safe_load(path.read_text())
    change(data)  # type: ignore[operator]
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.mark.parametrize(
    ("file", "change", "message"),
    [
        ("referral-routed.yaml", lambda d: d["recipients"][0].update(role="family"), "unknown RecipientRole"),
        ("referral-routed.yaml", lambda d: d["recipients"][0].update(colour="red"), "unknown field"),
        ("referral-routed.yaml", lambda d: d.update(owner="me"), "unknown field"),
        (
            "referral-routed.yaml",
            lambda d: d["projections"]["la-outcome"].append("child_name"),
            "unknown field",
        ),
        (
            "referral-routed.yaml",
            lambda d: d["recipients"][0].update(projection="nope"),
            "unknown projection",
        ),
        ("referral-routed.yaml", lambda d: d["recipients"][0].update(deadline="P1M"), "exact length"),
        ("referral-routed.yaml", lambda d: d["recipients"][0].update(deadline="soon"), "ISO 8601"),
        ("referral-routed.yaml", lambda d: d["recipients"][0].update(urgency="asap"), "unknown Urgency"),
        ("referral-routed.yaml", lambda d: d["recipients"][0].update(citation=""), "citation"),
        ("referral-routed.yaml", lambda d: d["recipients"][0].pop("required"), "missing field"),
        ("referral-routed.yaml", lambda d: d["recipients"][0].update(when={"child_id": ["x"]}), "condition"),
        (
            "referral-routed.yaml",
            lambda d: d["projections"]["referrer-outcome"].append("service_ids"),
            "location-sensitive and may not go to referrer",
        ),
        (
            "referral-routed.yaml",
            lambda d: d["projections"]["referrer-outcome"].append("task_ids"),
            "placement-sensitive and may not go to referrer",
        ),
        (
            "missing-episode-reported.yaml",
            lambda d: d["projections"]["nrm-missing"].append("last_seen_site_id"),
            "may not go to nrm-competent-authority",
        ),
        (
            "emergency-without-bed.yaml",
            lambda d: d["recipients"][1].update(channel="rest-hook"),
            "reached by email",
        ),
        ("review-due.yaml", lambda d: d["schedule"][0].update(anchor="birthday"), "unknown Anchor"),
        (
            "review-due.yaml",
            lambda d: d["schedule"][0].update(when={"child_id": ["c-1"]}),
            "condition on 'child_id'",
        ),
        ("review-due.yaml", lambda d: d["schedule"][0].update(when={"programme_id": []}), "non-empty list"),
        ("task-not-acknowledged.yaml", lambda d: d["schedule"][0].update(when="ictg"), "when must map"),
        ("review-due.yaml", lambda d: d.update(event_type="review-overdue"), "does not match"),
    ],
)
def test_invalid_policy_is_refused_at_load(
    policy_copy: Path, file: str, change: object, message: str
) -> None:
    _edit(policy_copy, file, change)
    with pytest.raises(PolicyError, match=message):
        load_policies(policy_copy)


def test_copied_policies_load_unchanged(policy_copy: Path) -> None:
    assert load_policies(policy_copy) == load_policies()


def test_a_missing_policy_file_is_an_error(policy_copy: Path) -> None:
    (policy_copy / "no-capacity.yaml").unlink()
    with pytest.raises(PolicyError, match="no-capacity"):
        load_policies(policy_copy)


def test_an_unknown_event_type_file_is_an_error(policy_copy: Path) -> None:
    text = (
        (policy_copy / "no-capacity.yaml").read_text().replace("event_type: no-capacity", "event_type: other")
    )
    (policy_copy / "other.yaml").write_text(text)
    with pytest.raises(PolicyError, match="unknown event type"):
        load_policies(policy_copy)


def test_unknown_sensitivity_in_fields_is_an_error(policy_copy: Path) -> None:
    _edit(policy_copy, "fields.yaml", lambda d: d["fields"]["child_id"].update(sensitivity="secret"))
    with pytest.raises(PolicyError, match="unknown sensitivity"):
        load_fields(policy_copy)
