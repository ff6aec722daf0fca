"""Routing again: after a provider rejects a task, after the child's eligibility changes, after a move.

Both reuse `plan_routing` with the declined services left out or the categories already served kept,
so the ranking and the fallback stay the same rules as for a first routing.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date
from typing import Final

from haven.organisations import Organisation
from services.referral_router.domain.assessment import Assessment, Continuation, Outcome
from services.referral_router.domain.directory import Directory, ServiceCategory
from services.referral_router.domain.matching import decide_fallback, plan_routing, why_not_routable
from services.referral_router.domain.plan import PlannedTask, RoutingPlan

# FHIR Task statuses before the owner has taken the work on: closing such a task cancels it.
NOT_STARTED: Final = frozenset({"draft", "requested", "received", "ready"})
# Statuses in which a task is still live.
ACTIVE: Final = NOT_STARTED | {"accepted", "in-progress", "on-hold"}


@dataclass(frozen=True)
class ExistingTask:
    """A task created by an earlier routing, as it stands now."""

    task_id: str
    programme_id: str
    service_id: str
    route: str
    status: str


@dataclass(frozen=True)
class TaskClosure:
    """A task to close: `cancelled` before work started, `completed` once the child was in the service.

    `moved` when it closes because another local authority is responsible and its service does not
    cover that area (always `cancelled`: the work was not done).
    """

    task_id: str
    status: str
    reason: str
    moved: bool = False


@dataclass(frozen=True)
class TaskReview:
    """A live task a person must look at, because the sources do not say what should happen to it."""

    task_id: str
    reason: str


@dataclass(frozen=True)
class EligibilityChangePlan:
    """Tasks to close, tasks to review, and the routing for what is not served any more."""

    closures: tuple[TaskClosure, ...]
    reviews: tuple[TaskReview, ...]
    routing: RoutingPlan


def plan_reroute_after_rejection(
    assessment: Assessment,
    directory: Directory,
    free_places: Mapping[str, int],
    waiting: Mapping[str, int],
    on: date,
    *,
    rejected: ExistingTask,
    previously_rejected_services: Collection[str] = (),
    organisations: Mapping[str, Organisation] | None = None,
) -> RoutingPlan:
    """Route the rejected task's category again to the next candidate; the new task is part of the old.

    Only the rejected category is routed: the child's other tasks stand. When no other service fits,
    the plan has no task and its unrouted entry and fallback say so (an emergency escalates to the EDT).
    """
    service = directory.get(rejected.service_id)
    if service is None:
        raise ValueError(f"rejected task names an unknown service {rejected.service_id!r}")
    return plan_routing(
        assessment,
        directory,
        free_places,
        waiting,
        on,
        organisations=organisations,
        categories=(service.category,),
        excluded_services={rejected.service_id, *previously_rejected_services},
        part_of={service.category: rejected.task_id},
    )


def _close(task: ExistingTask, reason: str) -> TaskClosure:
    return TaskClosure(task.task_id, "cancelled" if task.status in NOT_STARTED else "completed", reason)


def plan_after_eligibility_change(
    previous_tasks: Sequence[ExistingTask],
    assessment: Assessment,
    directory: Directory,
    free_places: Mapping[str, int],
    waiting: Mapping[str, int],
    on: date,
    *,
    organisations: Mapping[str, Organisation] | None = None,
) -> EligibilityChangePlan:
    """Close tasks the new assessment ends, keep the rest, and route the categories left unserved.

    - Continuation EXIT: close with the exit reason (004 L355-378, L787-797 for ICTG).
    - Not yet started and no longer eligible: cancel with the failing rule.
    - Started, no longer eligible, no exit decided: keep and flag for a person; the sources do not say
      what happens after a negative NRM decision outside ICTG (programmes.md, "do not invent").
    - ICTG route changed (parental responsibility learnt): close and create the new route's task,
      part of the old one.
    """
    closures: list[TaskClosure] = []
    reviews: list[TaskReview] = []
    kept_categories: set[ServiceCategory] = set()
    replaced: dict[ServiceCategory, str] = {}
    for task in previous_tasks:
        service = directory.get(task.service_id)
        if task.status not in ACTIVE or service is None:
            continue
        decision = assessment.decision_for(task.programme_id)
        if decision is not None and decision.continuation is Continuation.EXIT:
            closures.append(_close(task, f"exit: {decision.exit_reason or 'the child leaves the programme'}"))
        elif decision is None or decision.outcome is not Outcome.ELIGIBLE:
            if task.status in NOT_STARTED and decision is not None and decision.outcome is Outcome.INELIGIBLE:
                closures.append(_close(task, why_not_routable(decision)))
            else:
                kept_categories.add(service.category)
                reviews.append(TaskReview(task.task_id, f"eligibility changed: {why_not_routable(decision)}"))
        elif decision.route and decision.route != task.route and decision.route in service.routes:
            closures.append(_close(task, f"route changed from {task.route} to {decision.route}"))
            replaced[service.category] = task.task_id
        else:
            kept_categories.add(service.category)
    routing = plan_routing(
        assessment,
        directory,
        free_places,
        waiting,
        on,
        organisations=organisations,
        categories=[c for c in ServiceCategory if c not in kept_categories],
        part_of=replaced,
    )
    kept_bed = ServiceCategory.SPECIALIST_ACCOMMODATION in kept_categories
    if kept_bed:
        # A child still placed is not an emergency without a bed: recompute the fallback with the bed.
        routing = replace(
            routing,
            fallback=decide_fallback(
                assessment.facts, routing.tasks, directory, routing.unrouted, bed_already_held=True
            ),
        )
    return EligibilityChangePlan(closures=tuple(closures), reviews=tuple(reviews), routing=routing)


def plan_after_move(
    previous_tasks: Sequence[ExistingTask],
    assessment: Assessment,
    directory: Directory,
    free_places: Mapping[str, int],
    waiting: Mapping[str, int],
    on: date,
    *,
    organisations: Mapping[str, Organisation] | None = None,
) -> EligibilityChangePlan:
    """Route a referral again for the local authority its assessment now names (ADR 7).

    - A live task whose service does not cover the new area on the date is cancelled (`moved`), and
      its category is routed again in the new area; the new task is part of the old one when it is
      for the same programme (the same work carried on by another service), else it stands alone.
    - A live task whose service covers the new area stays, and the eligibility rules of
      `plan_after_eligibility_change` apply to it as to any re-assessment (the move may come with
      changed decisions).
    - **Decision**: a started task (accepted, in progress) is cancelled too when its service does not
      cover the new area: the child can no longer be served there, and the new area's service carries
      the work on (the sources do not say; programmes.md "do not invent" leaves it to the new LA).
    """
    gss = assessment.facts.local_authority_gss
    moving: list[ExistingTask] = []
    staying: list[ExistingTask] = []
    for task in previous_tasks:
        service = directory.get(task.service_id)
        if task.status in ACTIVE and service is not None and not service.covers(gss, on):
            moving.append(task)
        else:
            staying.append(task)
    change = plan_after_eligibility_change(
        staying, assessment, directory, free_places, waiting, on, organisations=organisations
    )
    if not moving:
        return change
    moved_from: dict[ServiceCategory, ExistingTask] = {}
    for task in moving:
        service = directory.get(task.service_id)
        if service is not None:
            moved_from.setdefault(service.category, task)
    routing = replace(
        change.routing, tasks=tuple(_part_of_moved(t, directory, moved_from) for t in change.routing.tasks)
    )
    closures = tuple(
        TaskClosure(
            task.task_id,
            "cancelled",
            f"moved: {task.service_id} does not cover {gss or 'the new local authority'}",
            moved=True,
        )
        for task in moving
    )
    return EligibilityChangePlan(closures=closures + change.closures, reviews=change.reviews, routing=routing)


def _part_of_moved(
    planned: PlannedTask, directory: Directory, moved_from: Mapping[ServiceCategory, ExistingTask]
) -> PlannedTask:
    """Make a new task part of the task the move cancelled in its category, if for the same programme."""
    service = directory.get(planned.service_id)
    old = None if service is None else moved_from.get(service.category)
    if planned.part_of_task_id or old is None or old.programme_id != planned.programme_id:
        return planned
    return replace(planned, part_of_task_id=old.task_id)
