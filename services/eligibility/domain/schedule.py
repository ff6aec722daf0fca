"""Which re-assessments an assessment asks for: its next change date and the pre-exit alert dates.

Pure: the service turns each `PlannedReassessment` into a durable JetStream message schedule. Only
dates after the assessment date are planned, because the assessment already stands for its own day
and a schedule for a past instant would fire at once, a second time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from services.eligibility.domain.alerts import DEFAULT_ALERT_DAYS, pre_exit_alert_dates
from services.eligibility.domain.engine import Assessment

NEXT_CHANGE = "next-change"
PRE_EXIT_PREFIX = "pre-exit-"


@dataclass(frozen=True, slots=True)
class PlannedReassessment:
    """One re-assessment to schedule: on `due_on`, for `reason` (and the programme it belongs to)."""

    due_on: date
    reason: str
    programme_id: str = ""

    @property
    def key(self) -> tuple[str, str]:
        """Return what identifies the schedule: a later plan with the same key replaces this one."""
        return (self.reason, self.programme_id)


def planned_reassessments(
    assessment: Assessment, alert_days: Iterable[int] = DEFAULT_ALERT_DAYS
) -> list[PlannedReassessment]:
    """Return the re-assessments to schedule after `assessment`, one per key, earliest first.

    The next change date is the earliest over all programmes; once it fires, that re-assessment plans
    the one after it. Each projected exit gets an alert `days` before it (programmes.md decision: 90,
    30 and 7 days).
    """
    plans = []
    if assessment.next_change is not None and assessment.next_change > assessment.on:
        plans.append(PlannedReassessment(assessment.next_change, NEXT_CHANGE))
    plans.extend(
        PlannedReassessment(alert.alert_on, f"{PRE_EXIT_PREFIX}{alert.days_before}", alert.programme_id)
        for alert in pre_exit_alert_dates(assessment, sorted(set(alert_days)))
        if alert.alert_on > assessment.on
    )
    return sorted(plans, key=lambda p: (p.due_on, p.reason, p.programme_id))
