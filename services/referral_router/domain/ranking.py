"""How the router chooses between services that could all take the child (docs/routing.md, "Ranking").

Area is a gate, not a weight: a service that does not cover the child's LA on the date is never a
candidate. Among candidates, in order:

1. a confirmed eligible decision before one a person must still confirm;
2. a service with a free place now before one with a waiting list (a child should not wait when
   another fitting service can start);
3. higher specificity: the service built most closely for this child (directory data, with its basis);
4. more free places (a service without a place limit counts as having the most);
5. service id, so that equal candidates always rank the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.referral_router.domain.assessment import Outcome, ProgrammeDecision
from services.referral_router.domain.directory import HealthcareService


@dataclass(frozen=True)
class Candidate:
    """A service whose programme admits the child and which covers the child's area."""

    service: HealthcareService
    decision: ProgrammeDecision
    free_places: int | None
    waiting: int = 0

    @property
    def confirmed(self) -> bool:
        """Whether eligibility is settled (not waiting for a person to confirm it)."""
        return self.decision.outcome is Outcome.ELIGIBLE

    @property
    def has_free_place(self) -> bool:
        """Whether the service can take the child now (None = not capacity-limited)."""
        return self.free_places is None or self.free_places > 0


def rank_key(candidate: Candidate) -> tuple[bool, bool, int, float, str]:
    """Sort key: the best candidate sorts first."""
    free = float("inf") if candidate.free_places is None else float(candidate.free_places)
    return (
        not candidate.confirmed,
        not candidate.has_free_place,
        -candidate.service.specificity,
        -free,
        candidate.service.id,
    )


def rank_candidates(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Return the candidates best first."""
    return sorted(candidates, key=rank_key)


def why_ranked_below(loser: Candidate, winner: Candidate) -> str:
    """Say in plain words the first ranking criterion on which `loser` lost to `winner`."""
    if loser.confirmed != winner.confirmed:
        return f"eligibility still to be confirmed by a person, {winner.service.id} is confirmed"
    if loser.has_free_place != winner.has_free_place:
        return f"no free place now, {winner.service.id} has one"
    if loser.service.specificity != winner.service.specificity:
        return (
            f"less specific for this child than {winner.service.id} "
            f"(specificity {loser.service.specificity} < {winner.service.specificity})"
        )
    if loser.free_places != winner.free_places:
        return f"fewer free places than {winner.service.id}"
    return f"ranked after {winner.service.id} by service id"
