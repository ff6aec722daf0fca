"""Property tests: exact age cut-offs, next-change dates, fact order, and unknown never turning eligible."""

from dataclasses import replace
from datetime import date, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from services.eligibility.domain import (
    ChildFacts,
    DateOfBirthBasis,
    DateOfBirthStatement,
    NrmStatus,
    Outcome,
    Rulebook,
    TraffickingConcern,
    add_months,
    age_in_months,
    assess,
    facts_from_mapping,
    load_rulebook,
    settle_date_of_birth,
)

RULEBOOK: Rulebook = load_rulebook()
FAST = settings(max_examples=60, deadline=None)
births = st.dates(min_value=date(2000, 1, 1), max_value=date(2012, 12, 31))
days = st.dates(min_value=date(2019, 4, 1), max_value=date(2026, 12, 31))


def _ictg_child(dob: date) -> ChildFacts:
    return facts_from_mapping(
        {"date_of_birth": dob, "trafficking_concern": "identified", "local_authority_gss": "E08000003"}
    )


@FAST
@given(births)
def test_under_18_flips_exactly_on_the_18th_birthday(dob: date) -> None:
    birthday = add_months(dob, 216)
    facts = _ictg_child(dob)
    before = assess(facts, birthday - timedelta(days=1), RULEBOOK).decision("ictg")
    on = assess(facts, birthday, RULEBOOK).decision("ictg")
    after = assess(facts, birthday + timedelta(days=1), RULEBOOK).decision("ictg")
    assert before.outcome is Outcome.ELIGIBLE and before.next_change == birthday
    assert on.outcome is Outcome.INELIGIBLE and after.outcome is Outcome.INELIGIBLE


@FAST
@given(st.dates(min_value=date(2000, 1, 1), max_value=date(2012, 12, 31)))
def test_afruca_17_and_a_half_is_inclusive(dob: date) -> None:
    half = add_months(dob, 210)
    facts = facts_from_mapping(
        {
            "date_of_birth": dob,
            "nationalities": ["NG"],
            "nrm_status": "rg_positive",
            "asylum_application_date": half - timedelta(days=30),
        }
    )
    assert assess(facts, half - timedelta(days=1), RULEBOOK).decision("afruca").outcome is Outcome.ELIGIBLE
    on = assess(facts, half, RULEBOOK).decision("afruca")
    assert on.outcome is Outcome.ELIGIBLE and on.next_change == half + timedelta(days=1)
    assert assess(facts, half + timedelta(days=1), RULEBOOK).decision("afruca").outcome is Outcome.INELIGIBLE


@FAST
@given(births, days)
def test_age_in_months_agrees_with_anniversaries(dob: date, on: date) -> None:
    months = age_in_months(dob, on)
    if on >= dob:
        assert add_months(dob, months) <= on < add_months(dob, months + 1)


def test_29_february_birthday_is_1_march_in_common_years() -> None:
    assert add_months(date(2004, 2, 29), 216) == date(2022, 3, 1)
    assert add_months(date(2004, 2, 29), 192) == date(2020, 2, 29)
    facts = _ictg_child(date(2004, 2, 29))
    assert assess(facts, date(2022, 2, 28), RULEBOOK).decision("ictg").outcome is Outcome.ELIGIBLE
    assert assess(facts, date(2022, 3, 1), RULEBOOK).decision("ictg").outcome is Outcome.INELIGIBLE


@FAST
@given(births, days)
def test_next_change_date_is_when_the_decision_changes(dob: date, on: date) -> None:
    facts = replace(_ictg_child(dob), nationalities=frozenset({"NG"}), nrm_status=NrmStatus.RG_POSITIVE)
    assessment = assess(facts, on, RULEBOOK)
    for decision in assessment.decisions:
        if decision.next_change is None:
            continue
        day_before = assess(facts, decision.next_change - timedelta(days=1), RULEBOOK).decision(
            decision.programme_id
        )
        changed = assess(facts, decision.next_change, RULEBOOK).decision(decision.programme_id)
        assert day_before.outcome is decision.outcome
        assert changed.outcome is not decision.outcome or changed.continuation is not decision.continuation


@FAST
@given(
    st.permutations(["VN", "GB", "ER"]),
    st.permutations([date(2005, 1, 1), date(2004, 6, 1), date(2006, 3, 3)]),
)
def test_decisions_do_not_depend_on_the_order_of_facts(codes: list[str], dobs: list[date]) -> None:
    bases = [DateOfBirthBasis.CLAIMED, DateOfBirthBasis.DOCUMENTED, DateOfBirthBasis.ASSESSED]
    statements = [DateOfBirthStatement(d, bases[i % 3]) for i, d in enumerate(sorted(dobs))]
    reference = ChildFacts(
        dates_of_birth=frozenset(statements),
        nationalities=frozenset(["VN", "GB", "ER"]),
        trafficking_concern=TraffickingConcern.IDENTIFIED,
    )
    shuffled = replace(
        reference, nationalities=frozenset(codes), dates_of_birth=frozenset(reversed(statements))
    )
    on = date(2020, 1, 1)
    assert assess(shuffled, on, RULEBOOK) == assess(reference, on, RULEBOOK)


def test_assessed_date_of_birth_wins_and_a_disagreement_is_a_dispute() -> None:
    basis = settle_date_of_birth(
        [
            DateOfBirthStatement(date(2006, 1, 1), DateOfBirthBasis.CLAIMED),
            DateOfBirthStatement(date(2003, 1, 1), DateOfBirthBasis.ASSESSED),
        ]
    )
    assert (basis.date_of_birth, basis.basis, basis.disputed) == (
        date(2003, 1, 1),
        DateOfBirthBasis.ASSESSED,
        True,
    )
    assert len(basis.statements) == 2


FACT_VALUES = {
    "date_of_birth": st.dates(min_value=date(2000, 1, 1), max_value=date(2010, 1, 1)),
    "sex": st.sampled_from(["male", "female", "other"]),
    "nationalities": st.sampled_from([["GB"], ["NG"], ["VN"], ["ER", "GB"]]),
    "trafficking_concern": st.sampled_from(["identified", "suspected", "at_risk", "none"]),
    "trafficking_route": st.sampled_from(["internal", "cross_border"]),
    "nrm_status": st.sampled_from([s.value for s in NrmStatus if s is not NrmStatus.UNSPECIFIED]),
    "asylum_application_made": st.sampled_from(["yes", "no"]),
    "asylum_application_date": st.dates(min_value=date(2016, 1, 1), max_value=date(2019, 6, 1)),
    "parental_responsibility_in_uk": st.sampled_from(["yes", "no"]),
    "local_authority_gss": st.sampled_from(["E08000003", "E08000035", "E09000025", "E06000024"]),
}


@FAST
@given(st.data())
def test_unknown_never_becomes_eligible_by_adding_a_fact_that_fails_a_rule(data: st.DataObject) -> None:
    known = data.draw(st.sets(st.sampled_from(sorted(FACT_VALUES)), max_size=6))
    values = {name: data.draw(FACT_VALUES[name]) for name in known}
    on = date(2019, 6, 1)
    before = assess(facts_from_mapping(values), on, RULEBOOK)
    added = data.draw(st.sampled_from(sorted(set(FACT_VALUES) - known)))
    values[added] = data.draw(FACT_VALUES[added])
    after = assess(facts_from_mapping(values), on, RULEBOOK)
    for old in before.decisions:
        new = after.decision(old.programme_id)
        if old.outcome is Outcome.UNKNOWN and new.excluded_by:
            assert new.outcome is Outcome.INELIGIBLE
        if old.outcome is Outcome.INELIGIBLE:  # a fact can only add failures, never remove one
            assert new.outcome is Outcome.INELIGIBLE


def test_rise_does_not_depend_on_nrm(rulebook: Rulebook) -> None:
    base = {
        "date_of_birth": "2004-01-01",
        "sex": "male",
        "nationalities": ["VN"],
        "trafficking_concern": "at_risk",
    }
    base["local_authority_gss"] = "E09000008"
    outcomes = {
        assess(facts_from_mapping({**base, "nrm_status": s.value}), date(2019, 1, 1), rulebook)
        .decision("childrens-society-rise")
        .outcome
        for s in NrmStatus
    }
    assert outcomes == {Outcome.ELIGIBLE}
