"""Match an assessed referral to services: the pure core of the referral router (docs/routing.md).

One task per category of need at most: a guardian (ICTG), therapeutic support, a specialist bed. Each
category ranks its candidates the same way (`ranking`); what differs is when a category is wanted,
which route the task names and who owns it. Everything here is a function of its arguments: the same
assessment, directory, capacity and date always give the same plan.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import date

from haven.organisations import Organisation, load_organisations
from services.referral_router.domain.assessment import (
    Answer,
    Assessment,
    Outcome,
    ProgrammeDecision,
    ReferrerKind,
    RoutingFacts,
    ServiceAsked,
    Urgency,
)
from services.referral_router.domain.directory import Directory, HealthcareService, ServiceCategory
from services.referral_router.domain.fallback import (
    fallback_summary,
    local_authority_must_refer_to_nrm,
    must_escalate_to_edt,
)
from services.referral_router.domain.plan import (
    Alternative,
    Fallback,
    PlannedTask,
    RoutingPlan,
    Unrouted,
    UnroutedCode,
)
from services.referral_router.domain.ranking import Candidate, rank_candidates, why_ranked_below

DIRECT_WORKER = "direct-worker"
REGIONAL_PRACTICE_COORDINATOR = "regional-practice-coordinator"
EMERGENCY_PLACEMENT = "emergency-placement"
PLANNED_PLACEMENT = "planned-placement"

# Categories in the order their tasks appear in a plan.
CATEGORY_ORDER = (
    ServiceCategory.GUARDIANSHIP,
    ServiceCategory.THERAPEUTIC_SUPPORT,
    ServiceCategory.SPECIALIST_ACCOMMODATION,
)

# Only LA commissioning teams and EDTs may place a child in the home (002 L975); the child's social
# worker is part of the LA.
_MAY_PLACE = frozenset({ReferrerKind.LOCAL_AUTHORITY, ReferrerKind.EDT})


@dataclass
class _CategoryResult:
    tasks: list[PlannedTask] = field(default_factory=list)
    alternatives: list[Alternative] = field(default_factory=list)
    unrouted: list[Unrouted] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)


def category_wanted(category: ServiceCategory, facts: RoutingFacts) -> bool:
    """Whether the referral asks for this category of service.

    "Any" asks for a guardian and therapeutic support. A bed is planned only when asked for or when the
    referral is an emergency (a placement needed now, 002 L973).
    """
    asked = facts.service_asked
    if category is ServiceCategory.SPECIALIST_ACCOMMODATION:
        return asked is ServiceAsked.SPECIALIST_ACCOMMODATION or facts.urgency is Urgency.EMERGENCY
    if category is ServiceCategory.GUARDIANSHIP:
        return asked in (ServiceAsked.ANY, ServiceAsked.ICTG)
    return asked in (ServiceAsked.ANY, ServiceAsked.THERAPEUTIC_SUPPORT)


def _routable(decision: ProgrammeDecision) -> bool:
    # An unknown outcome that the rules flag for a person (an ICTG child only "at risk") is routed for
    # confirmation rather than refused (programmes.md, ICTG "Entry" decision).
    return decision.outcome is Outcome.ELIGIBLE or (
        decision.outcome is Outcome.UNKNOWN and decision.needs_review
    )


def why_not_routable(decision: ProgrammeDecision | None) -> str:
    """Plain-words reason a programme's decision does not let the child in."""
    if decision is None:
        return "no eligibility decision for this programme"
    if decision.outcome is Outcome.INELIGIBLE:
        rules = "; ".join(f"{r.rule_id} ({r.statement}, {r.citation})" for r in decision.failed_rules)
        return f"ineligible: {rules or 'an entry rule failed'}"
    if decision.outcome is Outcome.UNKNOWN:
        return f"unknown: needs {', '.join(decision.missing_facts) or 'more facts'}"
    return "not decided"


def _free_places(service: HealthcareService, free_places: Mapping[str, int]) -> int | None:
    # A capacity-limited service missing from the live counts has had no place taken yet.
    if service.places is None:
        return None
    return max(0, free_places.get(service.id, service.places.count))


def _waiting_position(candidate: Candidate) -> int:
    return 0 if candidate.has_free_place else candidate.waiting + 1


def _candidates(
    category: ServiceCategory,
    assessment: Assessment,
    context: _Inputs,
    result: _CategoryResult,
) -> list[Candidate]:
    """Candidates of a category; programmes that yield none are recorded as unrouted with the reason."""
    facts = assessment.facts
    services = context.directory.in_category(category)
    candidates: list[Candidate] = []
    for programme_id in sorted({s.programme_id for s in services}):
        decision = assessment.decision_for(programme_id)
        if decision is None or not _routable(decision):
            result.unrouted.append(
                Unrouted(programme_id, why_not_routable(decision), UnroutedCode.NOT_ELIGIBLE)
            )
            continue
        covering = [
            s
            for s in services
            if s.programme_id == programme_id and s.covers(facts.local_authority_gss, context.on)
        ]
        open_to_child = [s for s in covering if s.id not in context.excluded]
        if not open_to_child:
            if covering:
                reason = (
                    f"every {programme_id} service covering {facts.local_authority_gss} has declined the "
                    "referral"
                )
                code = UnroutedCode.CANDIDATES_EXHAUSTED
            else:
                reason = f"no {programme_id} service covers {facts.local_authority_gss} on {context.on}"
                code = UnroutedCode.NO_SERVICE_IN_AREA
            result.unrouted.append(Unrouted(programme_id, reason, code))
            continue
        candidates.extend(
            Candidate(
                service=s,
                decision=decision,
                free_places=_free_places(s, context.free_places),
                waiting=context.waiting.get(s.id, 0),
            )
            for s in open_to_child
        )
    return rank_candidates(candidates)


def _ictg_route(
    decision: ProgrammeDecision, facts: RoutingFacts, service: HealthcareService
) -> tuple[str, str]:
    """Return the route and its reason (004 L69, L157; programmes.md "Which worker")."""
    route = decision.route if decision.route in service.routes else ""
    if not route:
        route = (
            REGIONAL_PRACTICE_COORDINATOR
            if facts.parental_responsibility_in_uk is Answer.YES
            else DIRECT_WORKER
        )
    if route == REGIONAL_PRACTICE_COORDINATOR:
        return (
            route,
            "regional practice co-ordinator: someone holds parental responsibility in the UK (004 L69, L157)",
        )
    if facts.parental_responsibility_in_uk is Answer.UNKNOWN:
        return route, (
            "direct worker pending confirmation: parental responsibility in the UK is unknown, the safer "
            "default until a person confirms it (programmes.md, 'Which worker' decision)"
        )
    return route, "direct worker: no one holds parental responsibility in the UK (004 L69)"


def edt_organisation_for(gss: str, organisations: Mapping[str, Organisation]) -> str:
    """Return who acts out of hours for an LA: its EDT, else its children's services, else "" (unknown)."""
    for kind in ("edt", "local-authority"):
        found = sorted(o.id for o in organisations.values() if o.kind == kind and gss in o.gss_codes)
        if found:
            return found[0]
    return ""


def _task_for(candidate: Candidate, facts: RoutingFacts, context: _Inputs) -> PlannedTask:
    service, decision = candidate.service, candidate.decision
    review = decision.needs_review
    notes = [f"review: {decision.review_reason}"] if decision.review_reason else []
    owner = service.provided_by
    if service.category is ServiceCategory.GUARDIANSHIP:
        route, why = _ictg_route(decision, facts, service)
        review = review or facts.parental_responsibility_in_uk is Answer.UNKNOWN
    elif service.category is ServiceCategory.SPECIALIST_ACCOMMODATION:
        route = EMERGENCY_PLACEMENT if facts.urgency is Urgency.EMERGENCY else PLANNED_PLACEMENT
        why = f"{route} in {service.id}; compatibility with the children placed is for a person (002 L902)"
        review = True
        if facts.referrer_kind not in _MAY_PLACE:
            owner = edt_organisation_for(facts.local_authority_gss, context.organisations)
            why = (
                f"only LA commissioning teams and EDTs may place (002 L975) and police cannot place directly "
                f"(002 L1856): the {facts.local_authority_gss} EDT ({owner or 'not registered in Haven'}) "
                f"is asked to make the placement in {service.id}; compatibility is for a person (002 L902)"
            )
    else:
        route = service.routes[0]
        why = f"{service.id}: eligible for {decision.programme_id} and covers {facts.local_authority_gss}"
    if decision.outcome is Outcome.UNKNOWN:
        review = True
        notes.append(
            f"eligibility to be confirmed by a person, needs {', '.join(decision.missing_facts) or 'review'}"
        )
    return PlannedTask(
        programme_id=decision.programme_id,
        service_id=service.id,
        owner_organisation_id=owner,
        route=route,
        reason="; ".join([why, *notes]),
        manual_review=review,
        reserves_place=service.places is not None,
        part_of_task_id=context.part_of.get(service.category, ""),
    )


def _route_category(category: ServiceCategory, assessment: Assessment, context: _Inputs) -> _CategoryResult:
    result = _CategoryResult()
    ranked = _candidates(category, assessment, context, result)
    if not category_wanted(category, assessment.facts):
        asked = assessment.facts.service_asked
        result.alternatives.extend(
            Alternative(
                c.service.id, c.decision.programme_id, f"not asked for (asked: {asked})", _waiting_position(c)
            )
            for c in ranked
        )
        result.unrouted.extend(
            Unrouted(
                programme_id,
                f"not asked for (asked: {asked}): its services are listed as alternatives",
                UnroutedCode.NOT_ASKED,
            )
            for programme_id in sorted({c.decision.programme_id for c in ranked})
        )
        return result
    chosen = next((c for c in ranked if c.has_free_place), None)
    if chosen is not None:
        result.tasks.append(_task_for(chosen, assessment.facts, context))
    for candidate in ranked:
        if candidate is chosen:
            continue
        if chosen is None:
            reason = f"no free place; waiting position {_waiting_position(candidate)}"
        else:
            reason = why_ranked_below(candidate, chosen)
        result.alternatives.append(
            Alternative(
                candidate.service.id, candidate.decision.programme_id, reason, _waiting_position(candidate)
            )
        )
    if chosen is None:
        result.waiting.extend(c.service.id for c in ranked)
        for programme_id in sorted({c.decision.programme_id for c in ranked}):
            result.unrouted.append(
                Unrouted(
                    programme_id,
                    "no capacity: no covering service has a free place",
                    UnroutedCode.NO_CAPACITY,
                )
            )
    return result


@dataclass(frozen=True)
class _Inputs:
    directory: Directory
    free_places: Mapping[str, int]
    waiting: Mapping[str, int]
    on: date
    organisations: Mapping[str, Organisation]
    excluded: Collection[str] = frozenset()
    part_of: Mapping[ServiceCategory, str] = field(default_factory=dict)


def plan_routing(
    assessment: Assessment,
    directory: Directory,
    free_places: Mapping[str, int],
    waiting: Mapping[str, int],
    on: date,
    *,
    organisations: Mapping[str, Organisation] | None = None,
    categories: Collection[ServiceCategory] = CATEGORY_ORDER,
    excluded_services: Collection[str] = frozenset(),
    part_of: Mapping[ServiceCategory, str] | None = None,
) -> RoutingPlan:
    """Plan the tasks, alternatives, unrouted programmes and fallback for one assessed referral.

    `free_places` are the live counts per service id (a capacity-limited service absent from it has
    all its places free); `waiting` is, per service id, how many children are ahead of this one on the
    service's waiting list (all of them when the child is not on it), so a full service lists the
    child at position `waiting + 1`; the plan's `waiting_at` names the lists the child belongs on.
    `categories`, `excluded_services` and `part_of` serve re-routing: route only some categories, skip
    services that declined, link new tasks to old ones.
    """
    context = _Inputs(
        directory=directory,
        free_places=free_places,
        waiting=waiting,
        on=on,
        organisations=load_organisations() if organisations is None else organisations,
        excluded=frozenset(excluded_services),
        part_of=dict(part_of or {}),
    )
    routed = tuple(c for c in CATEGORY_ORDER if c in categories)
    results = [_route_category(c, assessment, context) for c in routed]
    tasks = tuple(t for r in results for t in r.tasks)
    handled = {s.programme_id for s in directory.services}
    unrouted = [u for r in results for u in r.unrouted]
    unrouted += [
        Unrouted(
            d.programme_id,
            "no service for this programme in the directory",
            UnroutedCode.NO_SERVICE_IN_AREA,  # no service anywhere, so none in the child's area
        )
        for d in assessment.decisions
        if d.programme_id not in handled
    ]
    return RoutingPlan(
        referral_id=assessment.referral_id,
        local_authority_gss=assessment.facts.local_authority_gss,
        referrer_organisation_id=assessment.facts.referrer_organisation_id,
        tasks=tasks,
        alternatives=tuple(a for r in results for a in r.alternatives),
        unrouted=tuple(sorted(unrouted, key=lambda u: (u.programme_id, u.reason))),
        fallback=decide_fallback(assessment.facts, tasks, directory, tuple(unrouted)),
        categories=routed,
        waiting_at=tuple(s for r in results for s in r.waiting),
    )


def decide_fallback(
    facts: RoutingFacts,
    tasks: tuple[PlannedTask, ...],
    directory: Directory,
    unrouted: tuple[Unrouted, ...],
    *,
    bed_already_held: bool = False,
) -> Fallback:
    """Work out the fallback from the facts and the tasks planned (`bed_already_held`: kept from before)."""
    bed_planned = bed_already_held or any(
        (s := directory.get(t.service_id)) is not None
        and s.category is ServiceCategory.SPECIALIST_ACCOMMODATION
        for t in tasks
    )
    escalate = must_escalate_to_edt(facts, bed_planned)
    first_responder = local_authority_must_refer_to_nrm(facts)
    # A programme of a kind the referral did not ask for is not an unmet need.
    unmet = tuple(sorted({u.programme_id for u in unrouted if u.code is not UnroutedCode.NOT_ASKED}))
    return Fallback(
        escalate_to_edt=escalate,
        local_authority_first_responder=first_responder,
        summary=fallback_summary(facts, escalate=escalate, first_responder=first_responder, unmet=unmet),
    )
