"""What the router decided for one referral: tasks to create, alternatives, unrouted programmes, fallback.

Plain values; `to_proto.plan_to_proto` turns a plan into the `ReferralRouted` event. A task that takes
a place names its service (`reserves_place`); the caller reserves it with a compare-and-set and routes
again when the place has gone in the meantime.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from services.referral_router.domain.directory import ServiceCategory


@dataclass(frozen=True)
class PlannedTask:
    """A FHIR Task to create for one service."""

    programme_id: str
    service_id: str
    owner_organisation_id: str
    route: str
    reason: str
    manual_review: bool = False
    reserves_place: bool = False
    part_of_task_id: str = ""


@dataclass(frozen=True)
class Alternative:
    """A service that could also take the child, or could later, and why it was not chosen."""

    service_id: str
    programme_id: str
    reason: str
    waiting_position: int = 0


class UnroutedCode(StrEnum):
    """Why a programme was not routed to, as a code (``routing.v1.UnroutedReason`` on the wire)."""

    NOT_ELIGIBLE = "not-eligible"  # ineligible, unknown without review, or no decision
    NO_SERVICE_IN_AREA = "no-service-in-area"  # no service of the programme covers the LA on the date
    NO_CAPACITY = "no-capacity"  # services cover the area but none has a free place
    NOT_ASKED = "not-asked"  # eligible and covered, but the referral asked for another kind of service
    CANDIDATES_EXHAUSTED = "candidates-exhausted"  # every covering service declined or let it lapse


@dataclass(frozen=True)
class Unrouted:
    """A programme the child was not routed to, and why (in plain words and as a code)."""

    programme_id: str
    reason: str
    code: UnroutedCode


@dataclass(frozen=True)
class Fallback:
    """What Haven does when not every need is met. The LA is always informed: the duty is theirs."""

    escalate_to_edt: bool
    local_authority_first_responder: bool
    summary: str
    inform_local_authority: bool = True


@dataclass(frozen=True)
class RoutingPlan:
    """The routing decision for one referral."""

    referral_id: str
    local_authority_gss: str
    referrer_organisation_id: str
    tasks: tuple[PlannedTask, ...]
    alternatives: tuple[Alternative, ...]
    unrouted: tuple[Unrouted, ...]
    fallback: Fallback
    # The categories this plan routed (a re-routing routes only some), and the services of those
    # categories whose waiting list the child belongs on: asked for, and no fitting service has a place.
    categories: tuple[ServiceCategory, ...] = ()
    waiting_at: tuple[str, ...] = ()

    @property
    def places_to_reserve(self) -> tuple[str, ...]:
        """Service ids whose free place the caller must take (compare-and-set) before publishing."""
        return tuple(t.service_id for t in self.tasks if t.reserves_place)
