"""Age rules answered by band of dates of birth, and static parts put together rule by rule.

On one date every age limit is a cut-off on the date of birth (`_AgeBands`); a new date of birth
then only costs its own inputs and change days. These tests check the cut-offs against a plain scan,
and whole assessments against the rule-by-rule reference (`_decide_generic`) for every date of birth
around every cut-off, on dates that stress the calendar (29 February, month ends), enrolled or not.
"""

from dataclasses import replace
from datetime import date, timedelta

from benchmarks.eligibility import synthetic_children
from services.eligibility.domain import (
    ChildFacts,
    Context,
    DateOfBirthBasis,
    DateOfBirthStatement,
    Enrolment,
    Rulebook,
    add_months,
    assess,
    load_rulebook,
    settle_date_of_birth,
)
from services.eligibility.domain.engine import _cutoff, _decide_generic, decide_programme
from services.eligibility.domain.predicates import AgePredicate

RULEBOOK: Rulebook = load_rulebook()
CHILDREN = synthetic_children(24, seed=53)
DATES = (date(2024, 2, 29), date(2023, 2, 28), date(2025, 3, 1), date(2026, 8, 31), date(2019, 12, 31))
LIMITS = (144, 156, 210, 216)  # 12, 13, 17 and a half, 18 years: every limit the rule data uses


def _reference(facts: ChildFacts, on: date) -> list[object]:
    dob = settle_date_of_birth(facts.dates_of_birth).date_of_birth
    decisions: list[object] = []
    for rule_set in RULEBOOK.in_force(on):
        ctx = Context(facts, on, dob)
        ctx.started_on = facts.enrolment_started_on(rule_set.programme_id)
        decisions.append(_decide_generic(rule_set, ctx, ctx.started_on is not None))
    return decisions


def _born(facts: ChildFacts, dob: date) -> ChildFacts:
    return replace(facts, dates_of_birth=frozenset({DateOfBirthStatement(dob, DateOfBirthBasis.CLAIMED)}))


def test_each_cutoff_is_the_last_date_of_birth_on_its_side_of_the_answer() -> None:
    """The search by halving finds what a scan of every day finds, for each comparison and limit."""
    for on in DATES:
        for months in (0, 6, *LIMITS):
            for comparison in ("below", "at_least", "at_most"):
                predicate = AgePredicate(comparison, months)
                last = on - timedelta(days=1) if comparison == "at_most" else on
                cutoff = _cutoff(predicate, on)
                assert add_months(cutoff, months) <= last < add_months(cutoff + timedelta(days=1), months)


def test_every_date_of_birth_around_every_cutoff_decides_as_the_reference() -> None:
    """Days either side of each limit (and 29 February births): the band's answers are the child's."""
    for on in DATES:
        born = [
            add_months(on, -months) + timedelta(days=shift) for months in LIMITS for shift in range(-3, 4)
        ]
        born += [date(2008, 2, 29), date(2012, 2, 29), date(2007, 8, 31)]
        for index, dob in enumerate(born):
            facts = _born(CHILDREN[index % len(CHILDREN)], dob)
            assert list(assess(facts, on, RULEBOOK).decisions) == _reference(facts, on), (facts, on)


def test_enrolled_children_around_the_cutoffs_decide_as_the_reference() -> None:
    """An enrolled child's programme reads its own band (exit rules too); the others read the row."""
    programmes = [rule_set.programme_id for rule_set in RULEBOOK.in_force(DATES[0])]
    for on in DATES:
        for step, months in enumerate(LIMITS):
            for shift in (-1, 0, 1):
                dob = add_months(on, -months) + timedelta(days=shift)
                for number, programme in enumerate(programmes):
                    child = CHILDREN[(step + number) % len(CHILDREN)]
                    started = on - timedelta(days=40 * (number + 1))
                    facts = replace(_born(child, dob), enrolments=frozenset({Enrolment(programme, started)}))
                    assert list(assess(facts, on, RULEBOOK).decisions) == _reference(facts, on), (facts, on)


def test_children_without_a_date_of_birth_decide_as_the_reference() -> None:
    """No date of birth: no band applies, the age rules are answered one by one (unknown)."""
    for on in DATES:
        for facts in CHILDREN:
            unknown = replace(facts, dates_of_birth=frozenset())
            assert list(assess(unknown, on, RULEBOOK).decisions) == _reference(unknown, on), unknown


def test_a_date_at_the_edge_of_the_calendar_falls_back_to_rule_by_rule() -> None:
    """No cut-off can be searched before year 1: the age rules are answered one by one, alike."""
    on = date(1, 3, 1)
    for rule_set in RULEBOOK.rule_sets:
        for facts in CHILDREN[:6]:
            child = _born(facts, date(1, 1, 1))
            for started_on in (None, date(1, 2, 1)):
                enrolments = (
                    frozenset() if started_on is None else {Enrolment(rule_set.programme_id, started_on)}
                )
                child = replace(child, enrolments=frozenset(enrolments))
                planned = decide_programme(rule_set, Context(child, on, date(1, 1, 1)))
                reference_ctx = Context(child, on, date(1, 1, 1))
                reference_ctx.started_on = started_on
                assert planned == _decide_generic(rule_set, reference_ctx, started_on is not None), child
