"""Which exit rule ends a programme on the projected exit date, and the kind of exit it is."""

from datetime import date, timedelta

import pytest

from services.eligibility.domain import Rule, Rulebook, assess, facts_from_mapping
from services.eligibility.domain.exits import (
    ExitKind,
    alert_still_holds,
    exit_cause,
    exit_kind,
    projected_exit,
)


def _rule(rulebook: Rulebook, rule_id: str) -> Rule:
    return next(r for rs in rulebook.in_force(date(2026, 11, 23)) for r in rs.rules if r.rule_id == rule_id)


@pytest.mark.parametrize(
    ("rule_id", "kind"),
    [
        ("ictg.exit.under-18", ExitKind.TURNS_18),
        ("afruca.exit.under-18", ExitKind.TURNS_18),
        ("ictg.exit.within-18-months", ExitKind.TIME_LIMIT),
        ("unseen-specialist-accommodation.exit.within-12-months", ExitKind.TIME_LIMIT),
        ("afruca.exit.asylum-window", ExitKind.TIME_LIMIT),
        ("ictg.exit.not-long-term-missing", ExitKind.OTHER),
        ("ictg.exit.no-negative-nrm-decision", ExitKind.OTHER),
    ],
)
def test_exit_kind_is_read_from_the_rule_data(rulebook: Rulebook, rule_id: str, kind: ExitKind) -> None:
    assert exit_kind(_rule(rulebook, rule_id)) is kind


def test_a_child_turning_18_before_the_cap_leaves_ictg_for_turning_18(rulebook: Rulebook) -> None:
    # Enrolled 2026-10-01 (cap 2028-04-01), 18 on 2027-03-01: the birthday comes first.
    facts = facts_from_mapping({"date_of_birth": "2009-03-01", "enrolments": {"ictg": "2026-10-01"}})
    today = date(2026, 11, 23)

    exit_on = projected_exit(assess(facts, today, rulebook), "ictg")
    cause = exit_cause(facts, "ictg", date(2027, 3, 1), rulebook)

    assert exit_on == date(2027, 3, 1)
    assert cause is not None
    assert (cause.rule_id, cause.kind, cause.reason) == (
        "ictg.exit.under-18",
        ExitKind.TURNS_18,
        "turned 18 (004 L766)",
    )


def test_the_18_month_cap_before_the_birthday_is_a_time_limit(rulebook: Rulebook) -> None:
    facts = facts_from_mapping({"date_of_birth": "2012-01-01", "enrolments": {"ictg": "2026-01-15"}})

    exit_on = projected_exit(assess(facts, date(2026, 11, 23), rulebook), "ictg")
    assert exit_on == date(2027, 7, 15)
    cause = exit_cause(facts, "ictg", exit_on, rulebook)

    assert cause is not None and (cause.rule_id, cause.kind) == (
        "ictg.exit.within-18-months",
        ExitKind.TIME_LIMIT,
    )


def test_no_cause_on_a_day_the_child_stays(rulebook: Rulebook) -> None:
    facts = facts_from_mapping({"date_of_birth": "2009-03-01", "enrolments": {"ictg": "2026-10-01"}})

    assert exit_cause(facts, "ictg", date(2027, 2, 28), rulebook) is None
    assert exit_cause(facts, "no-such-programme", date(2027, 3, 1), rulebook) is None


def test_an_alert_is_stale_when_the_exit_moved_or_the_child_left(rulebook: Rulebook) -> None:
    enrolled = {"date_of_birth": "2009-03-01", "enrolments": {"ictg": "2026-10-01"}}
    alert_on = date(2027, 3, 1) - timedelta(days=30)
    today = assess(facts_from_mapping(enrolled), alert_on, rulebook)
    # An age assessment a month later: the exit moves to 2027-04-01.
    moved = assess(
        facts_from_mapping(
            {
                **enrolled,
                "dates_of_birth": [
                    {"date": "2009-03-01", "basis": "claimed"},
                    {"date": "2009-04-01", "basis": "assessed"},
                ],
            }
        ),
        alert_on,
        rulebook,
    )
    left = assess(facts_from_mapping({"date_of_birth": "2009-03-01"}), alert_on, rulebook)

    assert alert_still_holds(today, "ictg", alert_on, 30)
    assert not alert_still_holds(today, "ictg", alert_on, 7)
    assert not alert_still_holds(moved, "ictg", alert_on, 30)
    assert not alert_still_holds(left, "ictg", alert_on, 30)
