"""Unit tests for the ranking of candidate services and its plain-words reasons."""

from __future__ import annotations

from datetime import date

from services.referral_router.domain.assessment import Outcome, ProgrammeDecision
from services.referral_router.domain.directory import (
    CoveragePeriod,
    HealthcareService,
    Places,
    PlaceUnit,
    ServiceCategory,
)
from services.referral_router.domain.ranking import Candidate, rank_candidates, why_ranked_below


def _candidate(
    service_id: str, *, specificity: int = 0, free: int | None = 5, outcome: Outcome = Outcome.ELIGIBLE
) -> Candidate:
    service = HealthcareService(
        id=service_id,
        name=service_id,
        provided_by="afruca",
        programme_id=service_id,
        category=ServiceCategory.THERAPEUTIC_SUPPORT,
        routes=("casework",),
        coverage=(CoveragePeriod("E09000025", date(2017, 1, 1)),),
        specificity=specificity,
        places=None if free is None else Places(PlaceUnit.CASELOAD, 10, "test"),
    )
    decision = ProgrammeDecision(service_id, outcome, needs_review=outcome is Outcome.UNKNOWN)
    return Candidate(service=service, decision=decision, free_places=free)


def _order(*candidates: Candidate) -> list[str]:
    return [c.service.id for c in rank_candidates(candidates)]


def test_confirmed_eligibility_beats_everything_else() -> None:
    pending = _candidate("a", specificity=9, free=9, outcome=Outcome.UNKNOWN)
    confirmed = _candidate("b", specificity=0, free=1)
    assert _order(pending, confirmed) == ["b", "a"]
    assert "confirmed" in why_ranked_below(pending, confirmed)


def test_a_free_place_beats_specificity() -> None:
    full_specific = _candidate("a", specificity=3, free=0)
    open_broad = _candidate("b", specificity=1, free=1)
    assert _order(full_specific, open_broad) == ["b", "a"]
    assert "no free place now" in why_ranked_below(full_specific, open_broad)


def test_specificity_beats_number_of_free_places() -> None:
    assert _order(_candidate("a", specificity=1, free=9), _candidate("b", specificity=2, free=1)) == [
        "b",
        "a",
    ]


def test_more_free_places_then_unlimited_rank_first_at_equal_specificity() -> None:
    assert _order(_candidate("a", free=1), _candidate("b", free=4), _candidate("c", free=None)) == [
        "c",
        "b",
        "a",
    ]
    assert "fewer free places" in why_ranked_below(_candidate("a", free=1), _candidate("b", free=4))


def test_ties_break_on_service_id_whatever_the_input_order() -> None:
    first, second = _candidate("x-service"), _candidate("a-service")
    assert _order(first, second) == _order(second, first) == ["a-service", "x-service"]
    assert "service id" in why_ranked_below(first, second)
