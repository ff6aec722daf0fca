"""Transition-planning alerts before a child must leave a programme.

The evaluation's concern is the cliff edge at 18 (004 L125, L775-783); **decision** (programmes.md):
alert 90, 30 and 7 days before the exit date, configurable by the caller.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta

from services.eligibility.domain.engine import Assessment

DEFAULT_ALERT_DAYS = (90, 30, 7)


@dataclass(frozen=True, slots=True)
class PreExitAlert:
    """A date on which to re-assess and warn that a child will leave a programme."""

    programme_id: str
    alert_on: date
    exit_on: date
    days_before: int


def pre_exit_alert_dates(
    assessment: Assessment, days: Iterable[int] = DEFAULT_ALERT_DAYS
) -> list[PreExitAlert]:
    """Return the alert dates (not before the assessment date) for each projected exit, earliest first."""
    alerts = [
        PreExitAlert(
            decision.programme_id, decision.exit_on - timedelta(days=before), decision.exit_on, before
        )
        for decision in assessment.decisions
        if decision.exit_on is not None
        for before in days
        if decision.exit_on - timedelta(days=before) >= assessment.on
    ]
    return sorted(alerts, key=lambda a: (a.alert_on, a.programme_id))
