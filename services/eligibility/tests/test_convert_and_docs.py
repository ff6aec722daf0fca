"""Wire conversion both ways, change detection, and the generated programme pages being current."""

from datetime import date

from haven.eligibility.v1 import eligibility_pb2
from haven.referral.v1 import referral_pb2
from services.eligibility import docs_gen
from services.eligibility.convert import changed_programmes, evaluate_response, facts_from_proto
from services.eligibility.domain import (
    Answer,
    DateOfBirthBasis,
    NrmStatus,
    Rulebook,
    TraffickingConcern,
    assess,
    pre_exit_alert_dates,
)


def _wire_facts(**overrides: object) -> referral_pb2.ReferralFacts:
    message = referral_pb2.ReferralFacts(
        child_id="c-1",
        dates_of_birth=[
            referral_pb2.DateOfBirthStatement(
                date="2006-01-01", basis=referral_pb2.DATE_OF_BIRTH_BASIS_CLAIMED
            ),
            referral_pb2.DateOfBirthStatement(
                date="2004-03-01", basis=referral_pb2.DATE_OF_BIRTH_BASIS_ASSESSED
            ),
            referral_pb2.DateOfBirthStatement(
                date="not-a-date", basis=referral_pb2.DATE_OF_BIRTH_BASIS_DOCUMENTED
            ),
        ],
        nationalities=["vn"],
        trafficking_concern=referral_pb2.TRAFFICKING_CONCERN_IDENTIFIED,
        nrm_status=referral_pb2.NRM_STATUS_RG_NEGATIVE,
        parental_responsibility_in_uk=referral_pb2.ANSWER_NO,
        local_authority_gss="E08000003",
        enrolments=[referral_pb2.ProgrammeEnrolment(programme_id="ictg", started_on="2019-06-01")],
    )
    for key, value in overrides.items():
        setattr(message, key, value)
    return message


def test_facts_from_proto_reads_enums_dates_and_skips_malformed_dates() -> None:
    facts = facts_from_proto(_wire_facts())
    assert facts.trafficking_concern is TraffickingConcern.IDENTIFIED
    assert facts.nrm_status is NrmStatus.RG_NEGATIVE
    assert facts.parental_responsibility_in_uk is Answer.NO
    assert facts.nationalities == frozenset({"VN"})
    assert {s.basis for s in facts.dates_of_birth} == {DateOfBirthBasis.CLAIMED, DateOfBirthBasis.ASSESSED}
    assert facts.enrolment_started_on("ictg") == date(2019, 6, 1)


def test_evaluate_response_explains_every_rule(rulebook: Rulebook) -> None:
    response = evaluate_response(assess(facts_from_proto(_wire_facts()), date(2020, 1, 1), rulebook))
    assert response.age_basis.date_of_birth == "2004-03-01"
    assert response.age_basis.basis == referral_pb2.DATE_OF_BIRTH_BASIS_ASSESSED
    assert response.age_basis.disputed
    ictg = next(d for d in response.decisions if d.programme_id == "ictg")
    assert ictg.outcome == eligibility_pb2.OUTCOME_INELIGIBLE
    assert ictg.continuation == eligibility_pb2.CONTINUATION_EXIT
    assert ictg.exit_reason == "negative NRM decision (004 L791)"
    failing = [r for r in ictg.rules if r.result == eligibility_pb2.RULE_RESULT_FAIL]
    assert {r.rule_id for r in failing} == {
        "ictg.entry.no-negative-nrm-decision",
        "ictg.exit.no-negative-nrm-decision",
    }
    assert all(r.citation and r.statement for r in ictg.rules)
    assert any(r.exit_rule for r in ictg.rules)
    under_18 = next(r for r in ictg.rules if r.rule_id == "ictg.entry.under-18")
    assert under_18.inputs["date_of_birth"] == "2004-03-01" and under_18.inputs["age"] == "15 years 10 months"


def test_changed_programmes_lists_only_decisions_that_changed(rulebook: Rulebook) -> None:
    on = date(2020, 1, 1)
    before = evaluate_response(assess(facts_from_proto(_wire_facts()), on, rulebook)).decisions
    positive = _wire_facts(nrm_status=referral_pb2.NRM_STATUS_RG_POSITIVE)
    after = evaluate_response(assess(facts_from_proto(positive), on, rulebook)).decisions
    assert changed_programmes(before, before) == []
    assert "ictg" in changed_programmes(before, after)
    assert "childrens-society-rise" not in changed_programmes(before, after)  # Rise ignores the NRM
    assert changed_programmes([], after) == sorted(d.programme_id for d in after)


def test_pre_exit_alerts_are_90_30_and_7_days_before_the_exit(rulebook: Rulebook) -> None:
    facts = facts_from_proto(_wire_facts(nrm_status=referral_pb2.NRM_STATUS_RG_POSITIVE))
    alerts = pre_exit_alert_dates(assess(facts, date(2020, 1, 1), rulebook))
    assert [(a.programme_id, a.days_before, a.alert_on) for a in alerts] == [
        ("ictg", 90, date(2020, 9, 2)),
        ("ictg", 30, date(2020, 11, 1)),
        ("ictg", 7, date(2020, 11, 24)),
    ]
    assert {a.exit_on for a in alerts} == {date(2020, 12, 1)}  # 18 months after 2019-06-01


def test_generated_programme_pages_are_current(rulebook: Rulebook) -> None:
    assert docs_gen.stale_pages(rulebook) == [], "run python -m services.eligibility.docs_gen"
    assert docs_gen.main(["--check"]) == 0
