"""The pure eligibility domain: child facts, rules as data, and the engine that applies them.

No NATS, no gRPC, no protobuf: `services.eligibility.convert` translates at the edge.
"""

from services.eligibility.domain.age import AgeBasis, add_months, age_in_months, settle_date_of_birth
from services.eligibility.domain.alerts import DEFAULT_ALERT_DAYS, PreExitAlert, pre_exit_alert_dates
from services.eligibility.domain.engine import (
    Assessment,
    Continuation,
    Outcome,
    ProgrammeDecision,
    RuleEvaluation,
    assess,
    decide_programme,
    evaluate_rule,
)
from services.eligibility.domain.facts import (
    Answer,
    ChildFacts,
    DateOfBirthBasis,
    DateOfBirthStatement,
    Enrolment,
    ExploitationType,
    NrmStatus,
    ReferrerKind,
    ServiceAsked,
    Sex,
    TraffickingConcern,
    TraffickingRoute,
    Urgency,
    facts_from_mapping,
)
from services.eligibility.domain.predicates import Context, RulebookError, RuleResult
from services.eligibility.domain.rulebook import (
    Rule,
    Rulebook,
    RuleCase,
    RuleSet,
    load_rulebook,
    load_rulebook_from,
)

__all__ = [
    "DEFAULT_ALERT_DAYS",
    "AgeBasis",
    "Answer",
    "Assessment",
    "ChildFacts",
    "Context",
    "Continuation",
    "DateOfBirthBasis",
    "DateOfBirthStatement",
    "Enrolment",
    "ExploitationType",
    "NrmStatus",
    "Outcome",
    "PreExitAlert",
    "ProgrammeDecision",
    "ReferrerKind",
    "Rule",
    "RuleCase",
    "RuleEvaluation",
    "RuleResult",
    "RuleSet",
    "Rulebook",
    "RulebookError",
    "ServiceAsked",
    "Sex",
    "TraffickingConcern",
    "TraffickingRoute",
    "Urgency",
    "add_months",
    "age_in_months",
    "assess",
    "decide_programme",
    "evaluate_rule",
    "facts_from_mapping",
    "load_rulebook",
    "load_rulebook_from",
    "pre_exit_alert_dates",
    "settle_date_of_birth",
]
