"""Every rule's own cases, from the rule data: at least one pass and one fail per rule."""

import pytest

from services.eligibility.domain import (
    Context,
    Rule,
    RuleResult,
    evaluate_rule,
    facts_from_mapping,
    load_rulebook,
    settle_date_of_birth,
)

RULES = [rule for rule_set in load_rulebook().rule_sets for rule in rule_set.rules]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.rule_id)
def test_rule_answers_its_cases(rule: Rule) -> None:
    for case in rule.cases:
        facts = facts_from_mapping(case.facts)
        ctx = Context(facts, case.on, settle_date_of_birth(facts.dates_of_birth).date_of_birth)
        ctx.started_on = facts.enrolment_started_on(rule.rule_id.split(".")[0])
        evaluation = evaluate_rule(rule, ctx)
        assert evaluation.result is case.expect, f"{rule.rule_id}: {case.name or case.facts} on {case.on}"


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.rule_id)
def test_rule_has_a_passing_and_a_failing_case(rule: Rule) -> None:
    expected = {case.expect for case in rule.cases}
    assert {RuleResult.PASS, RuleResult.FAIL} <= expected


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.rule_id)
def test_rule_cites_a_seed_line_or_a_decision(rule: Rule) -> None:
    assert rule.citation.startswith(("000 ", "001 ", "002 ", "003 ", "004 ", "decision: ")), rule.citation
    assert rule.statement.strip()
