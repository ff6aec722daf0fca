"""Why a child will leave a programme: the exit rule that fires on the exit date, and its kind.

Pure, and outside the engine on purpose: it only reads what `assess` returns. The kind is what the
notifier words a transition alert by (programmes.md, the cliff edge at 18, 004 L125, L775-783):

- ``turns-18``: an age rule at 18 years (``age_below``/``age_at_most`` with ``years: 18``);
- ``time-limit``: a support period or window measured from a dated fact about the service
  (``months_since_*`` on the enrolment, the referral or the asylum application);
- ``other``: anything else that ends support on a date (long-term missing, 004 L657).

The kind comes from the rule's predicate data, not from its id, so a new programme file gets the
right kind without a code change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum
from typing import Any

from services.eligibility.domain.engine import Assessment, Continuation, ProgrammeDecision, assess
from services.eligibility.domain.facts import ChildFacts
from services.eligibility.domain.predicates import RuleResult
from services.eligibility.domain.rulebook import Rule, Rulebook

_AGE_KINDS = frozenset({"age_below", "age_at_most"})
_WINDOW_KINDS = frozenset({"months_since_below", "months_since_at_most"})
# Dated facts whose window is a limit on the service itself, not an event in the child's life.
_SERVICE_PERIOD_FACTS = frozenset({"enrolment_started_on", "referral_date", "asylum_application_date"})


class ExitKind(StrEnum):
    """What ends a child's time in a programme (ExitApproaching.exit_kind)."""

    TURNS_18 = "turns-18"
    TIME_LIMIT = "time-limit"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class ExitCause:
    """The exit rule that takes the child out of a programme on `exit_on`, and its kind."""

    programme_id: str
    exit_on: date
    rule_id: str
    kind: ExitKind
    reason: str


def exit_kind(rule: Rule) -> ExitKind:
    """Return the kind of exit an exit rule stands for, read from its predicate data."""
    predicate, params = next(iter(rule.predicate_spec.items()), ("", {}))
    params = params if isinstance(params, Mapping) else {}
    if predicate in _AGE_KINDS and _whole_years(params) == 18:
        return ExitKind.TURNS_18
    if predicate in _WINDOW_KINDS and params.get("fact") in _SERVICE_PERIOD_FACTS:
        return ExitKind.TIME_LIMIT
    return ExitKind.OTHER


def _whole_years(params: Mapping[str, Any]) -> int | None:
    if params.get("months"):
        return None
    years = params.get("years")
    return years if isinstance(years, int) else None


def projected_exit(assessment: Assessment, programme_id: str) -> date | None:
    """Return the date the enrolled child is projected to leave `programme_id`, or None."""
    decision = _decision(assessment, programme_id)
    if decision is None or decision.continuation is not Continuation.CONTINUE:
        return None
    return decision.exit_on


def exit_cause(facts: ChildFacts, programme_id: str, exit_on: date, rulebook: Rulebook) -> ExitCause | None:
    """Return the exit rule that fires for `programme_id` on `exit_on` (the first, in rule order).

    None when the child is not projected to exit that day after all (no exit rule fails then).
    """
    decision = _decision(assess(facts, exit_on, rulebook), programme_id)
    if decision is None or decision.continuation is not Continuation.EXIT:
        return None
    for evaluation in decision.rules:
        if evaluation.rule.kind == "exit" and evaluation.result is RuleResult.FAIL:
            rule = evaluation.rule
            return ExitCause(programme_id, exit_on, rule.rule_id, exit_kind(rule), rule.exit_reason)
    return None


def alert_still_holds(assessment: Assessment, programme_id: str, due_on: date, days_before: int) -> bool:
    """Return whether a pre-exit alert planned for `due_on` still stands after today's re-assessment.

    It stands when the child is still in the programme and still projected to leave on the date the
    alert was planned for (`due_on` + `days_before`); new facts that moved the exit make it stale.
    """
    return projected_exit(assessment, programme_id) == due_on + timedelta(days=days_before)


def _decision(assessment: Assessment, programme_id: str) -> ProgrammeDecision | None:
    try:
        return assessment.decision(programme_id)
    except KeyError:
        return None
