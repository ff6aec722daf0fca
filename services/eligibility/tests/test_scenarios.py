"""Whole assessments from the sources (scenarios.yaml): the four children Unseen placed, ICTG routes, caps."""

from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.eligibility.domain import Rulebook, assess, facts_from_mapping

SCENARIOS = yaml.safe_load((Path(__file__).parent / "scenarios.yaml").read_text(encoding="utf-8"))[
    "scenarios"
]


def _as_text(value: Any) -> str:
    return value.isoformat() if isinstance(value, date) else str(value)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s["name"][:60])
def test_scenario(scenario: dict[str, Any], rulebook: Rulebook) -> None:
    assessment = assess(facts_from_mapping(scenario["facts"]), scenario["assessed_on"], rulebook)
    for programme_id, expected in scenario["expect"].items():
        decision = assessment.decision(programme_id)
        actual: dict[str, Any] = {
            "outcome": str(decision.outcome),
            "route": decision.route,
            "needs_review": decision.needs_review,
            "continuation": str(decision.continuation),
            "exit_reason": decision.exit_reason,
            "exit_on": _as_text(decision.exit_on),
            "next_change": _as_text(decision.next_change),
            "excluded_by": list(decision.excluded_by),
            "missing_facts": list(decision.missing_facts),
        }
        for key, value in expected.items():
            want = [str(v) for v in value] if isinstance(value, list) else value
            want = _as_text(want) if isinstance(want, date) else want
            got = sorted(actual[key]) if isinstance(want, list) else actual[key]
            assert got == (sorted(want) if isinstance(want, list) else want), f"{programme_id}.{key}"
