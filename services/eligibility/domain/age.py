"""Exact calendar arithmetic for ages and time windows, and the date of birth the rules use.

**Decision** (programmes.md): a child born on 29 February reaches each birthday on 1 March in years
without one. The same rule applies to every "N months after" date that does not exist (31 August + 6
months is 1 March): the date rolls forward to the first day that exists, never back.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta

from services.eligibility.domain.facts import DateOfBirthBasis, DateOfBirthStatement

# Assessed wins (an age assessment, 004 L355); a document beats a claim; an unstated basis counts least.
_BASIS_RANK = {
    DateOfBirthBasis.ASSESSED: 3,
    DateOfBirthBasis.DOCUMENTED: 2,
    DateOfBirthBasis.CLAIMED: 1,
    DateOfBirthBasis.UNSPECIFIED: 0,
}


_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_ONE_DAY = timedelta(days=1)


def add_months(start: date, months: int) -> date:
    """Return the date `months` calendar months after `start`, rolling a missing day forward."""
    years, month_index = divmod(start.month - 1 + months, 12)
    year = start.year + years
    last_day = 29 if month_index == 1 and calendar.isleap(year) else _MONTH_DAYS[month_index]
    if start.day <= last_day:
        return date(year, month_index + 1, start.day)
    return date(year, month_index + 1, last_day) + _ONE_DAY


def age_in_months(date_of_birth: date, on: date) -> int:
    """Return the child's exact age on `on` in whole months (17 years 6 months = 210)."""
    months = (on.year - date_of_birth.year) * 12 + on.month - date_of_birth.month
    # The `months` anniversary falls in the month of `on`: on the birth day, or rolled forward to the
    # next month when that day does not exist (then the birth day is past every day of the month).
    # Either way it is after `on` exactly when the birth day is: no date needs building (one fewer
    # per new date of birth, whose age in words every age rule's inputs show).
    if months > 0 and date_of_birth.day > on.day:
        months -= 1
    return months


def describe_age(date_of_birth: date, on: date) -> str:
    """Return the age in plain words, for rule inputs ("17 years 6 months")."""
    months = age_in_months(date_of_birth, on)
    return f"{months // 12} years {months % 12} months"


@dataclass(frozen=True, slots=True)
class AgeBasis:
    """The date of birth the rules use, how it is known, and whether the statements disagree."""

    date_of_birth: date | None
    basis: DateOfBirthBasis
    disputed: bool
    statements: tuple[DateOfBirthStatement, ...]


_SINGLE_STATEMENT_LIMIT = 65536
_SINGLE_STATEMENTS: dict[tuple[date, DateOfBirthBasis], AgeBasis] = {}

# The frozen dataclass's slots, set directly: its own __init__ goes through object.__setattr__ once
# per field, which costs more than the rest of settling a new date of birth.
_SET_DATE, _SET_BASIS, _SET_DISPUTED, _SET_STATEMENTS = (
    vars(AgeBasis)[name].__set__ for name in ("date_of_birth", "basis", "disputed", "statements")
)


def _new_basis(
    date_of_birth: date, basis: DateOfBirthBasis, disputed: bool, statements: tuple[DateOfBirthStatement, ...]
) -> AgeBasis:
    """Return `AgeBasis(date_of_birth, basis, disputed, statements)`, made without its __init__."""
    settled: AgeBasis = object.__new__(AgeBasis)
    _SET_DATE(settled, date_of_birth)
    _SET_BASIS(settled, basis)
    _SET_DISPUTED(settled, disputed)
    _SET_STATEMENTS(settled, statements)
    return settled


def settle_date_of_birth(statements: Iterable[DateOfBirthStatement]) -> AgeBasis:
    """Choose the date of birth the rules use: the best-known basis wins, every statement is kept.

    Two statements of the same basis that disagree are settled by the later date (the younger age),
    **decision**: the safer reading for a child, since it keeps children's services open longer.
    """
    if isinstance(statements, frozenset) and len(statements) == 1:  # the common case, without a sort
        (only,) = statements
        key = (only.date, only.basis)
        # Shared by every child with the same statement (it is immutable): fewer objects to collect.
        settled = _SINGLE_STATEMENTS.get(key)
        if settled is None:
            if len(_SINGLE_STATEMENTS) >= _SINGLE_STATEMENT_LIMIT:
                _SINGLE_STATEMENTS.clear()
            settled = _SINGLE_STATEMENTS[key] = _new_basis(only.date, only.basis, False, (only,))
        return settled
    if isinstance(statements, frozenset) and len(statements) == 2:  # a claim and an assessment, say
        return _settle_two(*statements)
    kept = tuple(sorted(statements, key=lambda s: (-_BASIS_RANK[s.basis], s.date)))
    if not kept:
        return AgeBasis(None, DateOfBirthBasis.UNSPECIFIED, False, ())
    best_rank = _BASIS_RANK[kept[0].basis]
    chosen = max(s.date for s in kept if _BASIS_RANK[s.basis] == best_rank)
    disputed = len({s.date for s in kept}) > 1
    return AgeBasis(chosen, kept[0].basis, disputed, kept)


def _settle_two(first: DateOfBirthStatement, second: DateOfBirthStatement) -> AgeBasis:
    """Settle two statements as the general rule does, without sorting (a fifth of children have two)."""
    first_rank, second_rank = _BASIS_RANK[first.basis], _BASIS_RANK[second.basis]
    # The order the general rule sorts in: best basis first, then earlier date. Two different
    # statements never tie (a set holds each statement once).
    if (-second_rank, second.date) < (-first_rank, first.date):
        first, second, first_rank, second_rank = second, first, second_rank, first_rank
    # Same basis: the later date wins, and `second` is the later one.
    chosen = second.date if second_rank == first_rank else first.date
    return _new_basis(chosen, first.basis, first.date != second.date, (first, second))
