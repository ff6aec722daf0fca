"""The engine's per-date tables and shortcuts decide exactly as the rule-by-rule reference does.

`assess` keeps shared answers in one table per date (a few dates at a time), an age row per date of
birth for children enrolled nowhere, and settles two date-of-birth statements without sorting. These
tests compare with the reference (`_decide_generic`) and the general settling rule across many dates
(more than the tables keep), children with and without enrolments, and every pair of statements.
"""

from datetime import date, timedelta
from itertools import permutations

from benchmarks.eligibility import synthetic_children
from services.eligibility.domain import (
    ChildFacts,
    Context,
    DateOfBirthBasis,
    DateOfBirthStatement,
    Rulebook,
    assess,
    load_rulebook,
    settle_date_of_birth,
)
from services.eligibility.domain.engine import _DAY_LIMIT, _decide_generic

RULEBOOK: Rulebook = load_rulebook()
CHILDREN = synthetic_children(120, seed=31)


def _reference(facts: ChildFacts, on: date) -> list[object]:
    dob = settle_date_of_birth(list(facts.dates_of_birth)).date_of_birth  # the general (sorting) rule
    decisions: list[object] = []
    for rule_set in RULEBOOK.in_force(on):
        ctx = Context(facts, on, dob)
        ctx.started_on = facts.enrolment_started_on(rule_set.programme_id)
        decisions.append(_decide_generic(rule_set, ctx, ctx.started_on is not None))
    return decisions


def test_assessments_match_the_reference_across_more_dates_than_the_tables_keep() -> None:
    """Dates come and go from the tables (the oldest is dropped): no answer leaks between dates."""
    dates = [date(2019, 4, 1) + timedelta(days=97 * step) for step in range(_DAY_LIMIT * 2 + 3)]
    for on in dates + dates[::-1]:  # back again: dates dropped from the tables are worked out anew
        for facts in CHILDREN:
            assert list(assess(facts, on, RULEBOOK).decisions) == _reference(facts, on), (facts, on)
    assert len(RULEBOOK.day_memo) <= _DAY_LIMIT


def test_children_born_the_same_day_share_an_age_row_but_keep_their_own_answers() -> None:
    """Same date of birth, different facts and enrolments: each decision is the child's own."""
    on = date(2024, 3, 1)
    born = frozenset({DateOfBirthStatement(date(2007, 9, 30), DateOfBirthBasis.CLAIMED)})
    for facts in CHILDREN:
        twin = ChildFacts(**{**{f: getattr(facts, f) for f in facts.__slots__}, "dates_of_birth": born})
        assert list(assess(twin, on, RULEBOOK).decisions) == _reference(twin, on), twin


def test_two_statements_settle_as_the_general_rule_settles_them() -> None:
    """Every pair of bases and order of dates: the shortcut for two statements agrees with sorting."""
    days = (date(2008, 2, 29), date(2008, 3, 1))
    statements = [DateOfBirthStatement(day, basis) for day in days for basis in DateOfBirthBasis]
    for first, second in permutations(statements, 2):
        pair = frozenset({first, second})
        assert settle_date_of_birth(pair) == settle_date_of_birth([first, second]), pair
