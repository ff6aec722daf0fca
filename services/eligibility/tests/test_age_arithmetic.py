"""The age in whole months, worked out without building dates, agrees with counting anniversaries.

`age_in_months` compares the birth day with the day of the month instead of building the
anniversary date (programmes.md decision: a birthday that does not exist rolls forward to the first
of the next month). These tests check it exhaustively where that matters most: children born at the
end of a month and on 29 February, assessed on every day of a leap and a common year.
"""

from datetime import date, timedelta

from services.eligibility.domain import add_months, age_in_months
from services.eligibility.domain.age import describe_age


def _anniversaries_reached(date_of_birth: date, on: date) -> int:
    """Return how many monthly anniversaries the child has reached by `on`, by building each one."""
    months = 0
    while add_months(date_of_birth, months + 1) <= on:
        months += 1
    return months


def _days(start: date, count: int) -> list[date]:
    return [start + timedelta(days=offset) for offset in range(count)]


# Born at the end of a month (days that some months lack) and on the first, in leap and common years.
BIRTHS = [
    date(2008, 2, 29),
    date(2008, 1, 31),
    date(2007, 8, 31),
    date(2007, 3, 30),
    date(2007, 2, 28),
    date(2008, 3, 1),
    date(2006, 12, 31),
]


def test_age_in_months_counts_the_anniversaries_reached_on_every_day_of_two_years() -> None:
    """Every assessment day of 2024 (leap) and 2025 (common): the same age as counting anniversaries."""
    for born in BIRTHS:
        for on in _days(date(2024, 1, 1), 731):
            assert age_in_months(born, on) == _anniversaries_reached(born, on), (born, on)


def test_a_child_born_on_29_february_gains_a_month_on_1_march_in_a_common_year() -> None:
    """The 29 February birthday rolls forward: 17 years 11 months on 28 February, 18 years on 1 March."""
    born = date(2008, 2, 29)
    assert describe_age(born, date(2026, 2, 28)) == "17 years 11 months"
    assert describe_age(born, date(2026, 3, 1)) == "18 years 0 months"
    assert describe_age(born, date(2024, 2, 29)) == "16 years 0 months"


def test_the_first_month_counts_only_from_the_first_anniversary() -> None:
    """Born on 31 January: no whole month until 1 March (there is no 31 February), then one."""
    born = date(2025, 1, 31)
    assert {age_in_months(born, on) for on in _days(born, 29)} == {0}  # 31 January to 28 February
    assert age_in_months(born, date(2025, 3, 1)) == 1
