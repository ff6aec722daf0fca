"""Which re-assessments an assessment plans, and how a due date becomes a server schedule."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from haven.kit.schedules import at_header
from services.eligibility.domain import (
    ChildFacts,
    DateOfBirthBasis,
    DateOfBirthStatement,
    Enrolment,
    Rulebook,
    TraffickingConcern,
    assess,
)
from services.eligibility.domain.schedule import NEXT_CHANGE, PlannedReassessment, planned_reassessments
from services.eligibility.scheduler import (
    ReassessmentScheduler,
    reassessment_due,
    schedule_subject,
)

TODAY = date(2026, 11, 23)


def _child(born: date, enrolled_on: date | None = None) -> ChildFacts:
    return ChildFacts(
        child_id="c1",
        dates_of_birth=frozenset({DateOfBirthStatement(born, DateOfBirthBasis.DOCUMENTED)}),
        trafficking_concern=TraffickingConcern.IDENTIFIED,
        local_authority_gss="E08000003",
        referral_date=enrolled_on or TODAY,
        enrolments=frozenset({Enrolment("ictg", enrolled_on)}) if enrolled_on else frozenset(),
    )


def test_an_enrolled_child_gets_the_next_change_and_three_pre_exit_alerts(rulebook: Rulebook) -> None:
    assessment = assess(_child(date(2009, 3, 1), enrolled_on=date(2026, 10, 1)), TODAY, rulebook)
    exit_on = assessment.decision("ictg").exit_on
    assert exit_on == date(2027, 3, 1)  # the 18th birthday comes before 18 months in the service
    plans = planned_reassessments(assessment)
    assert PlannedReassessment(assessment.next_change, NEXT_CHANGE) in plans  # type: ignore[arg-type]
    alerts = {(p.reason, p.programme_id): p.due_on for p in plans if p.reason != NEXT_CHANGE}
    assert alerts == {
        ("pre-exit-90", "ictg"): exit_on - timedelta(days=90),
        ("pre-exit-30", "ictg"): exit_on - timedelta(days=30),
        ("pre-exit-7", "ictg"): exit_on - timedelta(days=7),
    }
    assert [p.due_on for p in plans] == sorted(p.due_on for p in plans)


def test_alert_days_are_configurable_and_past_or_present_dates_are_never_planned(rulebook: Rulebook) -> None:
    assessment = assess(_child(date(2009, 3, 1), enrolled_on=date(2026, 10, 1)), TODAY, rulebook)
    reasons = {p.reason for p in planned_reassessments(assessment, [14, 98, 14])}
    assert reasons == {NEXT_CHANGE, "pre-exit-14"}  # 98 days before the exit is already past
    on_alert_day = assess(_child(date(2009, 3, 1), date(2026, 10, 1)), date(2027, 2, 22), rulebook)
    assert "pre-exit-7" not in {p.reason for p in planned_reassessments(on_alert_day)}


def test_a_child_not_enrolled_gets_only_the_next_change(rulebook: Rulebook) -> None:
    assessment = assess(_child(date(2011, 5, 1)), TODAY, rulebook)
    plans = planned_reassessments(assessment)
    assert [p.reason for p in plans] == [NEXT_CHANGE]
    assert plans[0].due_on == assessment.next_change


def test_schedule_subject_and_event_id_depend_only_on_what_identifies_the_plan() -> None:
    plan = PlannedReassessment(date(2027, 1, 30), "pre-exit-30", "ictg")
    assert schedule_subject("r-1", plan) == "haven.eligibility.v1.schedule.r-1.pre-exit-30.ictg"
    assert schedule_subject("r-1", PlannedReassessment(date(2027, 1, 30), NEXT_CHANGE)).endswith(
        ".r-1.next-change"
    )
    first = reassessment_due("r-1", plan, datetime(2026, 11, 23, tzinfo=UTC))
    again = reassessment_due("r-1", plan, datetime(2026, 12, 1, tzinfo=UTC))
    moved = reassessment_due(
        "r-1",
        PlannedReassessment(date(2027, 1, 31), "pre-exit-30", "ictg"),
        again.occurred_at.ToDatetime(tzinfo=UTC),
    )
    assert first.event_id == again.event_id != moved.event_id


def test_at_header_is_rfc3339_utc_and_never_early() -> None:
    assert at_header(datetime(2027, 3, 1, 0, 5, tzinfo=UTC)) == "@at 2027-03-01T00:05:00Z"
    assert at_header(datetime(2027, 3, 1, 0, 5, 0, 1, tzinfo=UTC)) == "@at 2027-03-01T00:05:01Z"


def test_fire_at_keeps_the_distance_measured_on_the_service_clock() -> None:
    service_now = datetime(2027, 2, 28, 23, 59, 50, tzinfo=UTC)
    wall_now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    scheduler = ReassessmentScheduler(
        None,  # type: ignore[arg-type]  # fire_at does not touch NATS
        lambda: service_now,
        fire_after_midnight=timedelta(seconds=3),
        wall_clock=lambda: wall_now,
    )
    assert scheduler.fire_at(date(2027, 3, 1)) == wall_now + timedelta(seconds=13)
