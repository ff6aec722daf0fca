"""Conversion at the edge: ReferralFacts (protobuf) to `ChildFacts`, and an `Assessment` back to the wire.

Wire types stop here (style.md, "Contracts"): the domain sees only dates and string enums. A malformed
date on the wire is treated as not given, so the rules answer "unknown" rather than fail the message.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from enum import StrEnum
from typing import TypeVar

from haven.eligibility.v1 import eligibility_pb2
from haven.referral.v1 import referral_pb2
from services.eligibility.domain import (
    AgeBasis,
    Answer,
    Assessment,
    ChildFacts,
    Continuation,
    DateOfBirthBasis,
    DateOfBirthStatement,
    Enrolment,
    ExploitationType,
    NrmStatus,
    Outcome,
    ProgrammeDecision,
    ReferrerKind,
    RuleEvaluation,
    RuleResult,
    ServiceAsked,
    Sex,
    TraffickingConcern,
    TraffickingRoute,
    Urgency,
)

E = TypeVar("E", bound=StrEnum)

_OUTCOMES = {
    Outcome.ELIGIBLE: eligibility_pb2.OUTCOME_ELIGIBLE,
    Outcome.INELIGIBLE: eligibility_pb2.OUTCOME_INELIGIBLE,
    Outcome.UNKNOWN: eligibility_pb2.OUTCOME_UNKNOWN,
}
_CONTINUATIONS = {
    Continuation.NOT_ENROLLED: eligibility_pb2.CONTINUATION_UNSPECIFIED,
    Continuation.CONTINUE: eligibility_pb2.CONTINUATION_CONTINUE,
    Continuation.EXIT: eligibility_pb2.CONTINUATION_EXIT,
}
_RESULTS = {
    RuleResult.PASS: eligibility_pb2.RULE_RESULT_PASS,
    RuleResult.FAIL: eligibility_pb2.RULE_RESULT_FAIL,
    RuleResult.UNKNOWN: eligibility_pb2.RULE_RESULT_UNKNOWN,
}


def _enum(value: int, prefix: str, names: dict[int, str], target: type[E]) -> E:
    """Map a protobuf enum number to the domain enum of that name (NRM_STATUS_RG_POSITIVE: rg_positive)."""
    name = names.get(value, prefix + "UNSPECIFIED")
    return target(name.removeprefix(prefix).lower())


def _names(enum_type: object) -> dict[int, str]:
    descriptor = enum_type.DESCRIPTOR  # type: ignore[attr-defined]
    return {v.number: v.name for v in descriptor.values}


_DOB_NAMES = _names(referral_pb2.DateOfBirthBasis)
_SEX_NAMES = _names(referral_pb2.Sex)
_CONCERN_NAMES = _names(referral_pb2.TraffickingConcern)
_ROUTE_NAMES = _names(referral_pb2.TraffickingRoute)
_EXPLOITATION_NAMES = _names(referral_pb2.ExploitationType)
_NRM_NAMES = _names(referral_pb2.NrmStatus)
_ANSWER_NAMES = _names(referral_pb2.Answer)
_REFERRER_NAMES = _names(referral_pb2.ReferrerKind)
_URGENCY_NAMES = _names(referral_pb2.Urgency)
_SERVICE_NAMES = _names(referral_pb2.ServiceAsked)
_DOB_NUMBERS = {
    DateOfBirthBasis(n.removeprefix("DATE_OF_BIRTH_BASIS_").lower()): v for v, n in _DOB_NAMES.items()
}


def _date(text: str) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


def facts_from_proto(message: referral_pb2.ReferralFacts) -> ChildFacts:
    """Convert wire facts to `ChildFacts`; empty or malformed values become "not known"."""
    statements = {
        DateOfBirthStatement(day, _enum(s.basis, "DATE_OF_BIRTH_BASIS_", _DOB_NAMES, DateOfBirthBasis))
        for s in message.dates_of_birth
        if (day := _date(s.date)) is not None
    }
    enrolments = {
        Enrolment(e.programme_id, day) for e in message.enrolments if (day := _date(e.started_on)) is not None
    }
    return ChildFacts(
        child_id=message.child_id,
        dates_of_birth=frozenset(statements),
        sex=_enum(message.sex, "SEX_", _SEX_NAMES, Sex),
        nationalities=frozenset(code.strip().upper() for code in message.nationalities if code.strip()),
        trafficking_concern=_enum(
            message.trafficking_concern, "TRAFFICKING_CONCERN_", _CONCERN_NAMES, TraffickingConcern
        ),
        trafficking_route=_enum(
            message.trafficking_route, "TRAFFICKING_ROUTE_", _ROUTE_NAMES, TraffickingRoute
        ),
        exploitation_types=frozenset(
            _enum(t, "EXPLOITATION_TYPE_", _EXPLOITATION_NAMES, ExploitationType)
            for t in message.exploitation_types
        ),
        nrm_status=_enum(message.nrm_status, "NRM_STATUS_", _NRM_NAMES, NrmStatus),
        nrm_decision_date=_date(message.nrm_decision_date),
        asylum_application_made=_enum(message.asylum_application_made, "ANSWER_", _ANSWER_NAMES, Answer),
        asylum_application_date=_date(message.asylum_application_date),
        parental_responsibility_in_uk=_enum(
            message.parental_responsibility_in_uk, "ANSWER_", _ANSWER_NAMES, Answer
        ),
        local_authority_gss=message.local_authority_gss.strip().upper(),
        referrer_organisation_id=message.referrer.organisation_id,
        referrer_kind=_enum(message.referrer.kind, "REFERRER_KIND_", _REFERRER_NAMES, ReferrerKind),
        urgency=_enum(message.urgency, "URGENCY_", _URGENCY_NAMES, Urgency),
        service_asked=_enum(message.service_asked, "SERVICE_ASKED_", _SERVICE_NAMES, ServiceAsked),
        referral_date=_date(message.referral_date),
        enrolments=frozenset(enrolments),
        missing_since=_date(message.missing_since),
    )


def _iso(day: date | None) -> str:
    return day.isoformat() if day else ""


def rule_evaluation_to_proto(evaluation: RuleEvaluation) -> eligibility_pb2.RuleEvaluation:
    """Convert one rule evaluation, with its inputs as text."""
    return eligibility_pb2.RuleEvaluation(
        rule_id=evaluation.rule_id,
        statement=evaluation.rule.statement,
        result=_RESULTS[evaluation.result],
        inputs=evaluation.inputs_text(),
        citation=evaluation.rule.citation,
        missing_facts=list(evaluation.missing_facts),
        exit_rule=evaluation.rule.kind == "exit",
    )


def decision_to_proto(decision: ProgrammeDecision) -> eligibility_pb2.ProgrammeDecision:
    """Convert one programme decision."""
    return eligibility_pb2.ProgrammeDecision(
        programme_id=decision.programme_id,
        rule_set_version=decision.rule_set_version,
        outcome=_OUTCOMES[decision.outcome],
        rules=[rule_evaluation_to_proto(e) for e in decision.rules],
        missing_facts=list(decision.missing_facts),
        continuation=_CONTINUATIONS[decision.continuation],
        exit_reason=decision.exit_reason,
        next_change_date=_iso(decision.next_change),
        route=decision.route,
        needs_review=decision.needs_review,
        review_reason=decision.review_reason,
    )


def age_basis_to_proto(age_basis: AgeBasis) -> eligibility_pb2.AgeBasis:
    """Convert the age basis (the date of birth used, how it is known, whether disputed)."""
    return eligibility_pb2.AgeBasis(
        date_of_birth=_iso(age_basis.date_of_birth),
        basis=_DOB_NUMBERS[age_basis.basis],  # type: ignore[arg-type]
        disputed=age_basis.disputed,
    )


def assessment_to_proto(
    assessment: Assessment,
) -> tuple[list[eligibility_pb2.ProgrammeDecision], eligibility_pb2.AgeBasis]:
    """Convert an assessment to the decision list and age basis that EligibilityAssessed carries."""
    return [decision_to_proto(d) for d in assessment.decisions], age_basis_to_proto(assessment.age_basis)


def evaluate_response(assessment: Assessment) -> eligibility_pb2.EvaluateResponse:
    """Build the gRPC `Evaluate` answer for an assessment."""
    decisions, age_basis = assessment_to_proto(assessment)
    return eligibility_pb2.EvaluateResponse(
        decisions=decisions,
        next_change_date=_iso(assessment.next_change),
        age_basis=age_basis,
        assessed_on=assessment.on.isoformat(),
    )


def _signature(decision: eligibility_pb2.ProgrammeDecision) -> tuple[object, ...]:
    # What a partner acts on; rule inputs such as the age in months change daily and are not a change.
    return (
        decision.outcome,
        decision.continuation,
        decision.exit_reason,
        decision.route,
        decision.needs_review,
        decision.review_reason,
        tuple(decision.missing_facts),
    )


def changed_programmes(
    previous: Iterable[eligibility_pb2.ProgrammeDecision],
    current: Iterable[eligibility_pb2.ProgrammeDecision],
) -> list[str]:
    """Return the ids of programmes whose decision differs, appeared or disappeared, sorted."""
    before = {d.programme_id: _signature(d) for d in previous}
    after = {d.programme_id: _signature(d) for d in current}
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
