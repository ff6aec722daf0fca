"""The fast engine's shortcuts: next changes projected from pass/fail counts, answers shared by children.

`assess` decides every programme through one shared context and projects next changes without
evaluating later dates; both must give exactly the rule-by-rule reference decision (`_decide_generic`,
which projects by re-evaluating rules), explanations included, for enrolled children too.
"""

from dataclasses import replace
from datetime import date, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.eligibility import synthetic_children
from services.eligibility.domain import (
    ChildFacts,
    Context,
    Enrolment,
    Rulebook,
    assess,
    evaluate_rule,
    load_rulebook,
    settle_date_of_birth,
)
from services.eligibility.domain.engine import _decide_generic
from services.eligibility.domain.predicates import AgePredicate, WindowPredicate

RULEBOOK: Rulebook = load_rulebook()
PROGRAMMES = [
    "ictg",
    "afruca",
    "unseen-specialist-accommodation",
    "childrens-society-rise",
    "barnardos-west-yorkshire",
]
CHILDREN = synthetic_children(300, seed=23)


def _child(index: int, started_days_ago: int | None, missing_days_ago: int | None, on: date) -> ChildFacts:
    facts = CHILDREN[index]
    if started_days_ago is not None:
        programme = PROGRAMMES[index % len(PROGRAMMES)]
        facts = replace(
            facts, enrolments=frozenset({Enrolment(programme, on - timedelta(days=started_days_ago))})
        )
    if missing_days_ago is not None:
        facts = replace(facts, missing_since=on - timedelta(days=missing_days_ago))
    return facts


def _assert_matches_reference(facts: ChildFacts, on: date) -> None:
    assessment = assess(facts, on, RULEBOOK)
    dob = settle_date_of_birth(facts.dates_of_birth).date_of_birth
    for rule_set, decision in zip(RULEBOOK.in_force(on), assessment.decisions, strict=True):
        ctx = Context(facts, on, dob)
        ctx.started_on = facts.enrolment_started_on(rule_set.programme_id)
        reference = _decide_generic(rule_set, ctx, ctx.started_on is not None)
        assert decision == reference, (rule_set.programme_id, facts, on)
    changes = [d.next_change for d in assessment.decisions if d.next_change is not None]
    assert assessment.next_change == (min(changes) if changes else None)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=0, max_value=len(CHILDREN) - 1),
    st.one_of(st.none(), st.integers(min_value=0, max_value=700)),
    st.one_of(st.none(), st.integers(min_value=0, max_value=400)),
    st.dates(min_value=date(2017, 1, 1), max_value=date(2026, 12, 31)),
)
def test_assess_matches_the_reference_for_enrolled_and_missing_children(
    index: int, started: int | None, missing: int | None, on: date
) -> None:
    facts = _child(index, started, missing, on)
    _assert_matches_reference(facts, on)
    _assert_matches_reference(facts, on)  # the second time from shared answers only


def test_assess_matches_the_reference_around_area_openings_and_list_changes() -> None:
    """Dates where static answers change by date (an area opening, an ODA year) take the slow road."""
    for on in (date(2018, 9, 30), date(2018, 12, 31), date(2019, 3, 31), date(2020, 12, 31)):
        for index in range(0, len(CHILDREN), 3):
            _assert_matches_reference(_child(index, 100 if index % 2 else None, None, on), on)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=0, max_value=len(CHILDREN) - 1),
    st.integers(min_value=0, max_value=700),
    st.dates(min_value=date(2017, 1, 1), max_value=date(2026, 12, 31)),
)
def test_age_and_window_rules_flip_at_most_once(index: int, started: int, on: date) -> None:
    """What the projection relies on: on `next_change` a pass turns to fail (or back) for good."""
    facts = _child(index, started, 30, on)
    dob = settle_date_of_birth(facts.dates_of_birth).date_of_birth
    for rule_set in RULEBOOK.in_force(on):
        for rule in rule_set.rules:
            if not isinstance(rule.predicate, AgePredicate | WindowPredicate):
                continue
            ctx = Context(facts, on, dob)
            ctx.started_on = facts.enrolment_started_on(rule_set.programme_id)
            now = evaluate_rule(rule, ctx)
            if now.next_change is None:
                continue
            later = Context(facts, now.next_change, dob)
            later.started_on = ctx.started_on
            then = evaluate_rule(rule, later)
            assert {now.result.value, then.result.value} == {"pass", "fail"}, rule.rule_id
            assert then.next_change is None, rule.rule_id
