"""The eligibility assessment as the router reads it: plain typed values, converted from the wire once.

`EligibilityAssessed` carries every fact and every rule evaluation; the router needs only the decision
per programme and the handful of facts that steer routing (area, urgency, what was asked, who referred,
NRM status, parental responsibility). Keeping them as frozen dataclasses lets the matcher and its tests
run without protobuf.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from haven.eligibility.v1 import eligibility_pb2
from haven.referral.v1 import referral_pb2


class Outcome(StrEnum):
    """Whether the child can enter a programme (eligibility_pb2.Outcome)."""

    UNSPECIFIED = "unspecified"
    ELIGIBLE = "eligible"
    INELIGIBLE = "ineligible"
    UNKNOWN = "unknown"


class Continuation(StrEnum):
    """For a child already in a programme: stay or leave (eligibility_pb2.Continuation)."""

    NONE = "none"
    CONTINUE = "continue"
    EXIT = "exit"


class Urgency(StrEnum):
    """How soon a service is needed (002 L973); unspecified is read as routine."""

    ROUTINE = "routine"
    URGENT = "urgent"
    EMERGENCY = "emergency"


class ServiceAsked(StrEnum):
    """The service the referrer asked for; unspecified is read as any."""

    ANY = "any"
    ICTG = "ictg"
    THERAPEUTIC_SUPPORT = "therapeutic-support"
    SPECIALIST_ACCOMMODATION = "specialist-accommodation"


class ReferrerKind(StrEnum):
    """The kind of organisation that referred the child (002 L975)."""

    UNSPECIFIED = "unspecified"
    POLICE = "police"
    EDT = "edt"
    LOCAL_AUTHORITY = "local-authority"
    BORDER_FORCE = "border-force"
    NGO = "ngo"
    HEALTH = "health"
    OTHER = "other"


class NrmStatus(StrEnum):
    """The child's status in the National Referral Mechanism."""

    UNSPECIFIED = "unspecified"
    NOT_REFERRED = "not-referred"
    AWAITING_RG = "awaiting-rg"
    RG_POSITIVE = "rg-positive"
    RG_NEGATIVE = "rg-negative"
    CG_POSITIVE = "cg-positive"
    CG_NEGATIVE = "cg-negative"


class Answer(StrEnum):
    """A yes / no / unknown fact."""

    UNKNOWN = "unknown"
    YES = "yes"
    NO = "no"


@dataclass(frozen=True)
class FailedRule:
    """An entry rule that failed, kept so an unrouted programme can say which rule excluded the child."""

    rule_id: str
    statement: str
    citation: str


@dataclass(frozen=True)
class ProgrammeDecision:
    """The eligibility decision for one programme."""

    programme_id: str
    outcome: Outcome
    route: str = ""
    needs_review: bool = False
    review_reason: str = ""
    failed_rules: tuple[FailedRule, ...] = ()
    missing_facts: tuple[str, ...] = ()
    continuation: Continuation = Continuation.NONE
    exit_reason: str = ""


@dataclass(frozen=True)
class RoutingFacts:
    """The facts of the referral that steer routing (not eligibility)."""

    local_authority_gss: str
    urgency: Urgency = Urgency.ROUTINE
    service_asked: ServiceAsked = ServiceAsked.ANY
    referrer_kind: ReferrerKind = ReferrerKind.UNSPECIFIED
    referrer_organisation_id: str = ""
    nrm_status: NrmStatus = NrmStatus.UNSPECIFIED
    parental_responsibility_in_uk: Answer = Answer.UNKNOWN


@dataclass(frozen=True)
class Assessment:
    """An assessed referral: the routing facts and one decision per programme."""

    referral_id: str
    facts: RoutingFacts
    decisions: tuple[ProgrammeDecision, ...] = field(default_factory=tuple)

    def decision_for(self, programme_id: str) -> ProgrammeDecision | None:
        """Return the decision for a programme, or None when the assessment has none."""
        return next((d for d in self.decisions if d.programme_id == programme_id), None)


_OUTCOMES = {
    eligibility_pb2.OUTCOME_ELIGIBLE: Outcome.ELIGIBLE,
    eligibility_pb2.OUTCOME_INELIGIBLE: Outcome.INELIGIBLE,
    eligibility_pb2.OUTCOME_UNKNOWN: Outcome.UNKNOWN,
}
_CONTINUATIONS = {
    eligibility_pb2.CONTINUATION_CONTINUE: Continuation.CONTINUE,
    eligibility_pb2.CONTINUATION_EXIT: Continuation.EXIT,
}
_URGENCIES = {
    referral_pb2.URGENCY_URGENT: Urgency.URGENT,
    referral_pb2.URGENCY_EMERGENCY: Urgency.EMERGENCY,
}
_SERVICES_ASKED = {
    referral_pb2.SERVICE_ASKED_ICTG: ServiceAsked.ICTG,
    referral_pb2.SERVICE_ASKED_THERAPEUTIC_SUPPORT: ServiceAsked.THERAPEUTIC_SUPPORT,
    referral_pb2.SERVICE_ASKED_SPECIALIST_ACCOMMODATION: ServiceAsked.SPECIALIST_ACCOMMODATION,
}
_REFERRER_KINDS = {
    referral_pb2.REFERRER_KIND_POLICE: ReferrerKind.POLICE,
    referral_pb2.REFERRER_KIND_EDT: ReferrerKind.EDT,
    referral_pb2.REFERRER_KIND_LOCAL_AUTHORITY: ReferrerKind.LOCAL_AUTHORITY,
    referral_pb2.REFERRER_KIND_BORDER_FORCE: ReferrerKind.BORDER_FORCE,
    referral_pb2.REFERRER_KIND_NGO: ReferrerKind.NGO,
    referral_pb2.REFERRER_KIND_HEALTH: ReferrerKind.HEALTH,
    referral_pb2.REFERRER_KIND_OTHER: ReferrerKind.OTHER,
}
_NRM_STATUSES = {
    referral_pb2.NRM_STATUS_NOT_REFERRED: NrmStatus.NOT_REFERRED,
    referral_pb2.NRM_STATUS_AWAITING_RG: NrmStatus.AWAITING_RG,
    referral_pb2.NRM_STATUS_RG_POSITIVE: NrmStatus.RG_POSITIVE,
    referral_pb2.NRM_STATUS_RG_NEGATIVE: NrmStatus.RG_NEGATIVE,
    referral_pb2.NRM_STATUS_CG_POSITIVE: NrmStatus.CG_POSITIVE,
    referral_pb2.NRM_STATUS_CG_NEGATIVE: NrmStatus.CG_NEGATIVE,
}
_ANSWERS = {referral_pb2.ANSWER_YES: Answer.YES, referral_pb2.ANSWER_NO: Answer.NO}


def _decision_from_proto(message: eligibility_pb2.ProgrammeDecision) -> ProgrammeDecision:
    failed = tuple(
        FailedRule(rule_id=r.rule_id, statement=r.statement, citation=r.citation)
        for r in message.rules
        if r.result == eligibility_pb2.RULE_RESULT_FAIL and not r.exit_rule
    )
    return ProgrammeDecision(
        programme_id=message.programme_id,
        outcome=_OUTCOMES.get(message.outcome, Outcome.UNSPECIFIED),
        route=message.route,
        needs_review=message.needs_review,
        review_reason=message.review_reason,
        failed_rules=failed,
        missing_facts=tuple(message.missing_facts),
        continuation=_CONTINUATIONS.get(message.continuation, Continuation.NONE),
        exit_reason=message.exit_reason,
    )


def assessment_from_proto(event: eligibility_pb2.EligibilityAssessed) -> Assessment:
    """Convert an `EligibilityAssessed` event into the router's domain values."""
    facts = event.facts
    return Assessment(
        referral_id=event.referral_id,
        facts=RoutingFacts(
            local_authority_gss=facts.local_authority_gss,
            urgency=_URGENCIES.get(facts.urgency, Urgency.ROUTINE),
            service_asked=_SERVICES_ASKED.get(facts.service_asked, ServiceAsked.ANY),
            referrer_kind=_REFERRER_KINDS.get(facts.referrer.kind, ReferrerKind.UNSPECIFIED),
            referrer_organisation_id=facts.referrer.organisation_id,
            nrm_status=_NRM_STATUSES.get(facts.nrm_status, NrmStatus.UNSPECIFIED),
            parental_responsibility_in_uk=_ANSWERS.get(facts.parental_responsibility_in_uk, Answer.UNKNOWN),
        ),
        decisions=tuple(_decision_from_proto(d) for d in event.decisions),
    )
