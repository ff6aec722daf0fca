"""What the router decided for one referral: tasks to create, alternatives, unrouted programmes, fallback.

Plain values; `to_proto.plan_to_proto` turns a plan into the `ReferralRouted` event. A task that takes
a place names its service (`reserves_place`); the caller reserves it with a compare-and-set and routes
again when the place has gone in the meantime.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Unrouted:
    """A programme the child was not routed to, and why."""

    programme_id: str
    reason: str


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
