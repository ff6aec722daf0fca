"""The compiled plans and their memos decide exactly as the rule-by-rule reference does.

The plans reuse answers keyed on the facts each predicate declares it reads, and age answers keyed on
(date of birth, date); a predicate reading an undeclared fact would make children share a wrong answer.
These tests compare whole decisions, explanations included, against `_decide_generic`.
"""

from dataclasses import replace
from datetime import date

from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.eligibility import synthetic_children
from services.eligibility.domain import (
    Context,
    DateOfBirthBasis,
    DateOfBirthStatement,
    Enrolment,
    Rulebook,
    load_rulebook,
    settle_date_of_birth,
)
from services.eligibility.domain.engine import _decide_generic, _plan_for, decide_programme

RULEBOOK: Rulebook = load_rulebook()
CHILDREN = synthetic_children(400, seed=11)


def _both(facts_index: int, on: date) -> None:
    facts = CHILDREN[facts_index]
    for rule_set in RULEBOOK.in_force(on):
        assert _plan_for(rule_set) is not None, rule_set.programme_id
        dob = settle_date_of_birth(facts.dates_of_birth).date_of_birth
        planned = decide_programme(rule_set, Context(facts, on, dob))
        reference_ctx = Context(facts, on, dob)
        reference_ctx.started_on = facts.enrolment_started_on(rule_set.programme_id)
        reference = _decide_generic(rule_set, reference_ctx, reference_ctx.started_on is not None)
        assert planned == reference, (rule_set.programme_id, facts, on)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=0, max_value=len(CHILDREN) - 1),
    st.dates(min_value=date(2017, 1, 1), max_value=date(2026, 12, 31)),
)
def test_plans_match_the_reference_on_any_date(index: int, on: date) -> None:
    _both(index, on)


def test_plans_match_the_reference_for_many_children_on_one_date() -> None:
    """Many children on the same dates: this is where memoised answers are shared between children."""
    for on in (date(2019, 3, 31), date(2024, 3, 1)):
        for index in range(len(CHILDREN)):
            _both(index, on)


def test_children_sharing_fact_values_do_not_share_dated_answers() -> None:
    """Children alike but for date of birth and enrolment, decided in turn, each keep their own answers."""
    on = date(2024, 3, 1)
    first = CHILDREN[0]
    for born, started in ((date(2007, 3, 1), None), (date(2006, 3, 2), date(2023, 1, 1)), (None, on)):
        statements = frozenset({DateOfBirthStatement(born, DateOfBirthBasis.DOCUMENTED)} if born else ())
        enrolments = frozenset({Enrolment("ictg", started)} if started else ())
        CHILDREN.append(replace(first, dates_of_birth=statements, enrolments=enrolments))
        _both(len(CHILDREN) - 1, on)
