"""Runs every routing scenario in scenarios.yaml: one parametrised test, the cases are data."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.referral_router.domain import (
    Answer,
    Assessment,
    Continuation,
    Directory,
    ExistingTask,
    FailedRule,
    NrmStatus,
    Outcome,
    ProgrammeDecision,
    ReferrerKind,
    RoutingFacts,
    RoutingPlan,
    ServiceAsked,
    Urgency,
    load_directory,
    plan_after_eligibility_change,
    plan_reroute_after_rejection,
    plan_routing,
)

DOCUMENT = yaml.safe_load((Path(__file__).parent / "scenarios.yaml").read_text(encoding="utf-8"))
DEFAULTS: dict[str, Any] = DOCUMENT["defaults"]
PROGRAMMES = (
    "ictg",
    "barnardos-west-yorkshire",
    "afruca",
    "childrens-society-rise",
    "unseen-specialist-accommodation",
)
DIRECTORY: Directory = load_directory()


def _facts(given: dict[str, Any]) -> RoutingFacts:
    return RoutingFacts(
        local_authority_gss=given.get("local_authority_gss", DEFAULTS["local_authority_gss"]),
        urgency=Urgency(given.get("urgency", "routine")),
        service_asked=ServiceAsked(given.get("service_asked", "any")),
        referrer_kind=ReferrerKind(given.get("referrer_kind", "local-authority")),
        referrer_organisation_id=given.get("referrer_organisation_id", "demo-la-manchester"),
        nrm_status=NrmStatus(given.get("nrm_status", "awaiting-rg")),
        parental_responsibility_in_uk=Answer(given.get("parental_responsibility_in_uk", "unknown")),
    )


def _decision(programme_id: str, given: dict[str, Any]) -> ProgrammeDecision:
    return ProgrammeDecision(
        programme_id=programme_id,
        outcome=Outcome(given["outcome"]),
        route=given.get("route", ""),
        needs_review=given.get("needs_review", False),
        review_reason=given.get("review_reason", ""),
        failed_rules=tuple(FailedRule(r, f"statement of {r}", "000 L1") for r in given.get("failed", [])),
        missing_facts=tuple(given.get("missing", [])),
        continuation=Continuation(given.get("continuation", "none")),
        exit_reason=given.get("exit_reason", ""),
    )


def _assessment(scenario: dict[str, Any]) -> Assessment:
    given = dict(scenario.get("decisions") or {})
    for programme_id in PROGRAMMES:
        given.setdefault(programme_id, {"outcome": "ineligible", "failed": [f"{programme_id}.entry.test"]})
    return Assessment(
        referral_id="ref-1",
        facts=_facts(scenario.get("facts") or {}),
        decisions=tuple(_decision(p, d) for p, d in sorted(given.items())),
    )


def _check_tasks(plan: RoutingPlan, expected: list[dict[str, Any]]) -> None:
    assert len(plan.tasks) == len(expected), plan.tasks
    for task, want in zip(plan.tasks, expected, strict=True):
        assert task.service_id == want["service"]
        for key, field in (
            ("route", "route"),
            ("owner", "owner_organisation_id"),
            ("manual_review", "manual_review"),
            ("reserves_place", "reserves_place"),
            ("part_of", "part_of_task_id"),
        ):
            if key in want:
                assert getattr(task, field) == want[key], (key, task)
        assert want.get("reason_contains", "") in task.reason


def _check_plan(plan: RoutingPlan, expect: dict[str, Any]) -> None:
    if "tasks" in expect:
        _check_tasks(plan, expect["tasks"])
    if "alternatives" in expect:
        assert len(plan.alternatives) == len(expect["alternatives"]), plan.alternatives
        for alternative, want in zip(plan.alternatives, expect["alternatives"], strict=True):
            assert alternative.service_id == want["service"]
            assert alternative.waiting_position == want.get("waiting_position", 0)
            assert want.get("reason_contains", "") in alternative.reason
    if "unrouted" in expect:
        reasons = {u.programme_id: u.reason for u in plan.unrouted}
        assert set(reasons) == set(expect["unrouted"]), reasons
        for programme_id, fragment in expect["unrouted"].items():
            assert fragment in reasons[programme_id], reasons[programme_id]
    for flag, value in (expect.get("fallback") or {}).items():
        if flag == "summary_contains":
            assert value in plan.fallback.summary
        else:
            assert getattr(plan.fallback, flag) == value, (flag, plan.fallback)
    assert plan.fallback.inform_local_authority, "the LA is always informed"


def _on(scenario: dict[str, Any]) -> date:
    value = scenario.get("on_date", DEFAULTS["on_date"])
    return value if isinstance(value, date) else date.fromisoformat(value)


@pytest.mark.parametrize("scenario", DOCUMENT["scenarios"], ids=lambda s: s["name"])
def test_scenario(scenario: dict[str, Any]) -> None:
    assessment = _assessment(scenario)
    free = scenario.get("free_places") or {}
    waiting = scenario.get("waiting") or {}
    expect = scenario["expect"]
    kind = scenario.get("kind", "route")
    if kind == "route":
        plan = plan_routing(assessment, DIRECTORY, free, waiting, _on(scenario))
        assert plan == plan_routing(assessment, DIRECTORY, free, waiting, _on(scenario)), "deterministic"
    elif kind == "reroute":
        plan = plan_reroute_after_rejection(
            assessment, DIRECTORY, free, waiting, _on(scenario), rejected=ExistingTask(**scenario["rejected"])
        )
    else:
        change = plan_after_eligibility_change(
            [ExistingTask(**t) for t in scenario["previous"]],
            assessment,
            DIRECTORY,
            free,
            waiting,
            _on(scenario),
        )
        plan = change.routing
        if "closures" in expect:
            assert len(change.closures) == len(expect["closures"]), change.closures
            for closure, want in zip(change.closures, expect["closures"], strict=True):
                assert (closure.task_id, closure.status) == (want["task_id"], want["status"])
                assert want["reason_contains"] in closure.reason
        if "reviews" in expect:
            assert len(change.reviews) == len(expect["reviews"]), change.reviews
            for review, want in zip(change.reviews, expect["reviews"], strict=True):
                assert review.task_id == want["task_id"]
                assert want["reason_contains"] in review.reason
    _check_plan(plan, expect)
