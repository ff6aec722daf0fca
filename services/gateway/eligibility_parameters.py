"""Eligibility decisions as a FHIR Parameters resource: the answer of the ``$eligibility`` operations."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from haven.eligibility.v1 import eligibility_pb2


def _code(enum_name: str, prefix: str) -> str:
    return enum_name.removeprefix(prefix).lower().replace("_", "-")


def _rule_part(rule: eligibility_pb2.RuleEvaluation) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"name": "id", "valueString": rule.rule_id},
        {"name": "statement", "valueString": rule.statement},
        {"name": "result", "valueCode": _code(eligibility_pb2.RuleResult.Name(rule.result), "RULE_RESULT_")},
        {"name": "citation", "valueString": rule.citation},
        {"name": "kind", "valueCode": "exit" if rule.exit_rule else "entry"},
    ]
    parts += [
        {"name": "input", "part": [{"name": "fact", "valueString": k}, {"name": "value", "valueString": v}]}
        for k, v in sorted(rule.inputs.items())
    ]
    parts += [{"name": "missingFact", "valueString": fact} for fact in rule.missing_facts]
    return {"name": "rule", "part": parts}


def _decision_part(decision: eligibility_pb2.ProgrammeDecision) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"name": "programme", "valueCode": decision.programme_id},
        {"name": "ruleSetVersion", "valueString": decision.rule_set_version},
        {"name": "outcome", "valueCode": _code(eligibility_pb2.Outcome.Name(decision.outcome), "OUTCOME_")},
    ]
    if decision.continuation:
        parts.append(
            {
                "name": "continuation",
                "valueCode": _code(eligibility_pb2.Continuation.Name(decision.continuation), "CONTINUATION_"),
            }
        )
    optional = {
        "exitReason": decision.exit_reason,
        "route": decision.route,
        "reviewReason": decision.review_reason,
    }
    parts += [{"name": name, "valueString": value} for name, value in optional.items() if value]
    if decision.next_change_date:
        parts.append({"name": "nextChangeDate", "valueDate": decision.next_change_date})
    parts.append({"name": "needsReview", "valueBoolean": decision.needs_review})
    parts += [{"name": "missingFact", "valueString": fact} for fact in decision.missing_facts]
    parts += [_rule_part(rule) for rule in decision.rules]
    return {"name": "decision", "part": parts}


def decisions_to_parameters(
    decisions: Iterable[eligibility_pb2.ProgrammeDecision],
    *,
    assessed_on: str,
    next_change_date: str,
    age_basis: eligibility_pb2.AgeBasis,
) -> dict[str, Any]:
    """Return a Parameters resource with one ``decision`` per programme, each rule explained."""
    parameters: list[dict[str, Any]] = [{"name": "assessedOn", "valueDate": assessed_on}]
    if next_change_date:
        parameters.append({"name": "nextChangeDate", "valueDate": next_change_date})
    age: list[dict[str, Any]] = [{"name": "disputed", "valueBoolean": age_basis.disputed}]
    if age_basis.date_of_birth:
        age.append({"name": "dateOfBirth", "valueDate": age_basis.date_of_birth})
    parameters.append({"name": "ageBasis", "part": age})
    parameters += [_decision_part(d) for d in decisions]
    return {"resourceType": "Parameters", "parameter": parameters}
