"""Who an event concerns: the source event in plain typed form, and the organisations behind each role.

Protobuf stops here: `source_event_from_*` turn bus events into a `SourceEvent` (ids, codes and dates
only), and `resolve_role` finds the organisations for a recipient role from the event (task owners,
referrer), the organisation registry (local authority, EDT and police by GSS code) and configuration
(competent authority, leaving-care teams, on-call manager), which the caller passes in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from haven.eligibility.v1 import eligibility_pb2
from haven.organisations import Organisation, load_organisations
from haven.referral.v1 import referral_pb2
from haven.routing.v1 import routing_pb2
from haven.task.v1 import task_pb2
from services.notifier.domain.policy import RecipientRole

ICTG_PROGRAMME = "ictg"


@dataclass(frozen=True, slots=True)
class TaskRef:
    """A task the event concerns: who owns it, for which programme and service."""

    task_id: str
    programme_id: str
    service_id: str
    owner_organisation_id: str
    route: str = ""
    manual_review: bool = False


@dataclass(frozen=True, slots=True)
class SourceEvent:
    """An event to notify about, free of wire types.

    `facts` holds the event's fields by the names in `policies/fields.yaml`; `tasks` the tasks whose
    owners may be told (each owner also gets its own tasks as `own_*` facts).
    """

    event_id: str
    occurred_at: datetime
    referral_id: str
    local_authority_gss: str
    referrer_organisation_id: str = ""
    tasks: tuple[TaskRef, ...] = ()
    facts: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, order=True)
class Recipient:
    """One organisation, in one role, for one event."""

    organisation_id: str
    role: RecipientRole


@dataclass(frozen=True, slots=True)
class RecipientDirectory:
    """Where recipients that the event does not name are found.

    Local authorities, EDTs and police forces come from the organisation registry by GSS code; the
    mappings here are configuration for what the registry does not hold, keyed by GSS code.
    """

    organisations: Mapping[str, Organisation] = field(default_factory=load_organisations)
    police_by_gss: Mapping[str, str] = field(default_factory=dict)
    ictg_by_gss: Mapping[str, str] = field(default_factory=dict)
    leaving_care_by_gss: Mapping[str, str] = field(default_factory=dict)
    # Since 29 April 2019 one Single Competent Authority decides every NRM case (004 L535).
    nrm_competent_authority: str = ""
    on_call_manager: str = ""

    def by_kind(self, kind: str, gss: str) -> list[str]:
        """Return the ids of organisations of `kind` that cover the LA with this GSS code."""
        return sorted(o.id for o in self.organisations.values() if o.kind == kind and gss in o.gss_codes)


def _unique(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(i for i in ids if i))


def _or_config(found: list[str], configured: str | None) -> list[str]:
    return found or _unique([configured or ""])


def _task_owners(event: SourceEvent) -> list[str]:
    return _unique([t.owner_organisation_id for t in event.tasks])


def _ictg(event: SourceEvent, d: RecipientDirectory) -> list[str]:
    # The ICTG already holding the child's task is the one to tell; else the site for the area.
    owners = _unique([t.owner_organisation_id for t in event.tasks if t.programme_id == ICTG_PROGRAMME])
    return _or_config(owners, d.ictg_by_gss.get(event.local_authority_gss))


_RESOLVERS: dict[RecipientRole, Callable[[SourceEvent, RecipientDirectory], list[str]]] = {
    RecipientRole.LA_CHILDRENS_SERVICES: lambda e, d: d.by_kind("local-authority", e.local_authority_gss),
    RecipientRole.LA_EDT: lambda e, d: d.by_kind("edt", e.local_authority_gss),
    RecipientRole.TASK_OWNER: lambda e, d: _task_owners(e),
    RecipientRole.REFERRER: lambda e, d: _unique([e.referrer_organisation_id]),
    RecipientRole.POLICE: lambda e, d: _or_config(
        d.by_kind("police", e.local_authority_gss), d.police_by_gss.get(e.local_authority_gss)
    ),
    RecipientRole.ICTG: _ictg,
    RecipientRole.NRM_COMPETENT_AUTHORITY: lambda e, d: _unique([d.nrm_competent_authority]),
    RecipientRole.LEAVING_CARE_TEAM: lambda e, d: _unique(
        [d.leaving_care_by_gss.get(e.local_authority_gss, "")]
    ),
    RecipientRole.ON_CALL_MANAGER: lambda e, d: _unique([d.on_call_manager]),
}


def resolve_role(role: RecipientRole, event: SourceEvent, directory: RecipientDirectory) -> list[str]:
    """Return the organisation ids that hold `role` for this event (empty when none is known)."""
    return _RESOLVERS[role](event, directory)


def own_task_facts(event: SourceEvent, organisation_id: str) -> dict[str, Any]:
    """Return the `own_*` facts of one organisation: its tasks only, never another provider's."""
    own = [t for t in event.tasks if t.owner_organisation_id == organisation_id]
    if not own:
        return {}
    return {
        "own_task_ids": [t.task_id for t in own],
        "own_programme_ids": _unique([t.programme_id for t in own]),
        "own_service_ids": _unique([t.service_id for t in own]),
        "own_routes": _unique([t.route for t in own]),
        "manual_review": any(t.manual_review for t in own),
    }


# ---- from the bus ---------------------------------------------------------------------------------


def _when(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def _code(name: str, prefix: str) -> str | None:
    """NRM_STATUS_AWAITING_RG -> awaiting-rg; the UNSPECIFIED member becomes None (not known)."""
    code = name.removeprefix(prefix).lower().replace("_", "-")
    return None if code == "unspecified" else code


def _without_empty(facts: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in facts.items() if v not in (None, "", [], {})}


_DOB_PREFERENCE = {
    referral_pb2.DATE_OF_BIRTH_BASIS_DOCUMENTED: 0,
    referral_pb2.DATE_OF_BIRTH_BASIS_ASSESSED: 1,
    referral_pb2.DATE_OF_BIRTH_BASIS_CLAIMED: 2,
}


def referral_facts(facts: referral_pb2.ReferralFacts) -> dict[str, Any]:
    """Return the notifiable facts of a referral (coded; no names or free text exist to copy)."""
    statements = sorted(facts.dates_of_birth, key=lambda s: _DOB_PREFERENCE.get(s.basis, 3))
    dob = statements[0] if statements else None
    nrm = _code(referral_pb2.NrmStatus.Name(facts.nrm_status), "NRM_STATUS_")
    return _without_empty(
        {
            "child_id": facts.child_id,
            "date_of_birth": dob.date if dob else None,
            "date_of_birth_basis": _code(
                referral_pb2.DateOfBirthBasis.Name(dob.basis), "DATE_OF_BIRTH_BASIS_"
            )
            if dob
            else None,
            "sex": _code(referral_pb2.Sex.Name(facts.sex), "SEX_"),
            "nationalities": list(facts.nationalities),
            "local_authority_gss": facts.local_authority_gss,
            "urgency": _code(referral_pb2.Urgency.Name(facts.urgency), "URGENCY_"),
            "service_asked": _code(referral_pb2.ServiceAsked.Name(facts.service_asked), "SERVICE_ASKED_"),
            "trafficking_concern": _code(
                referral_pb2.TraffickingConcern.Name(facts.trafficking_concern), "TRAFFICKING_CONCERN_"
            ),
            "exploitation_types": [
                c
                for t in facts.exploitation_types
                if (c := _code(referral_pb2.ExploitationType.Name(t), "EXPLOITATION_TYPE_"))
            ],
            # Unstated is "unknown", not "not referred": the competent authority may have a case.
            "nrm_status": nrm or "unknown",
            "parental_responsibility_in_uk": {"yes": "yes", "no": "no"}.get(
                _code(referral_pb2.Answer.Name(facts.parental_responsibility_in_uk), "ANSWER_") or "",
                "unknown",
            ),
            "referrer_organisation_id": facts.referrer.organisation_id,
            "referrer_kind": _code(referral_pb2.ReferrerKind.Name(facts.referrer.kind), "REFERRER_KIND_"),
            "missing_on_referral": bool(facts.missing_since),
        }
    )


def source_event_from_received(event: referral_pb2.ReferralReceived) -> SourceEvent:
    """Convert a ReferralReceived into a SourceEvent."""
    facts = {"referral_id": event.referral_id, **referral_facts(event.facts)}
    return SourceEvent(
        event_id=event.event_id,
        occurred_at=_when(event.occurred_at),
        referral_id=event.referral_id,
        local_authority_gss=event.facts.local_authority_gss,
        referrer_organisation_id=event.facts.referrer.organisation_id,
        facts=facts,
    )


def _tasks(event: routing_pb2.ReferralRouted) -> tuple[TaskRef, ...]:
    return tuple(
        TaskRef(t.task_id, t.programme_id, t.service_id, t.owner_organisation_id, t.route, t.manual_review)
        for t in event.tasks
    )


def waiting_list(event: routing_pb2.ReferralRouted) -> dict[str, int]:
    """Return programme -> best waiting position, for programmes that got no task (no free place)."""
    routed = {t.programme_id for t in event.tasks}
    waiting: dict[str, int] = {}
    for alt in event.alternatives:
        if alt.waiting_position > 0 and alt.programme_id not in routed:
            waiting[alt.programme_id] = min(
                alt.waiting_position, waiting.get(alt.programme_id, alt.waiting_position)
            )
    return waiting


def routed_facts(event: routing_pb2.ReferralRouted) -> dict[str, Any]:
    """Return the notifiable facts of a routing outcome."""
    waiting = waiting_list(event)
    outcome = "routed" if event.tasks else ("waiting" if waiting else "no-service")
    rejected = [t for t in event.tasks if t.part_of_task_id]
    facts: dict[str, Any] = {
        "referral_id": event.referral_id,
        "local_authority_gss": event.local_authority_gss,
        "referrer_organisation_id": event.referrer_organisation_id,
        "trigger": _code(routing_pb2.RoutingTrigger.Name(event.trigger), "ROUTING_TRIGGER_"),
        "sequence": event.sequence,
        "outcome": outcome,
        "programme_ids": _unique([t.programme_id for t in event.tasks]),
        "task_ids": [t.task_id for t in event.tasks],
        "service_ids": _unique([t.service_id for t in event.tasks]),
        "waiting_list": waiting,
        "waiting_programme_ids": sorted(waiting),
        "unrouted_programme_ids": _unique([u.programme_id for u in event.unrouted]),
        "rejected_task_ids": [t.part_of_task_id for t in rejected],
    }
    facts = _without_empty(facts)
    # Flags are facts even when false: "not escalated" is an answer the LA needs.
    facts["inform_local_authority"] = event.fallback.inform_local_authority
    facts["escalate_to_edt"] = event.fallback.escalate_to_edt
    facts["local_authority_first_responder"] = event.fallback.local_authority_first_responder
    facts["sequence"] = event.sequence
    return facts


def source_event_from_routed(event: routing_pb2.ReferralRouted) -> SourceEvent:
    """Convert a ReferralRouted into a SourceEvent."""
    return SourceEvent(
        event_id=event.event_id,
        occurred_at=_when(event.occurred_at),
        referral_id=event.referral_id,
        local_authority_gss=event.local_authority_gss,
        referrer_organisation_id=event.referrer_organisation_id,
        tasks=_tasks(event),
        facts=routed_facts(event),
    )


NO_CAPACITY_REASON = "no capacity"  # how the router's Unrouted.reason began, before the code existed


def unrouted_for_no_capacity(unrouted: routing_pb2.Unrouted) -> bool:
    """Return whether a programme was unrouted because no service had a free place.

    The code decides. Only an event written before the code existed (UNSPECIFIED) is read by its
    reason text, so a reworded reason cannot change who is told.
    """
    if unrouted.code == routing_pb2.UNROUTED_REASON_UNSPECIFIED:
        return unrouted.reason.lower().startswith(NO_CAPACITY_REASON)
    return unrouted.code == routing_pb2.UNROUTED_REASON_NO_CAPACITY


def lacks_capacity(event: routing_pb2.ReferralRouted) -> bool:
    """Return whether a programme waits for a place: a waiting position, or unrouted for no capacity."""
    return bool(waiting_list(event)) or any(unrouted_for_no_capacity(u) for u in event.unrouted)


def event_types_for_routed(event: routing_pb2.ReferralRouted) -> list[str]:
    """Return the notification event types one ReferralRouted raises, in the order to plan them.

    `task-rejected` is not among them: it comes from the TaskStatusChanged that caused the re-route
    (``source_event_from_task_rejected``), the only event with the decline's reason; the re-route's
    outcome reaches the same recipients as `referral-routed`.
    """
    types = ["referral-routed"]
    if lacks_capacity(event):
        types.append("no-capacity")
    if event.fallback.escalate_to_edt:
        types.append("emergency-without-bed")
    return types


def recipients_for_routed(
    event: routing_pb2.ReferralRouted, organisations: Mapping[str, Organisation] | None = None
) -> list[Recipient]:
    """Return who a routing outcome concerns: the responsible LA, each task owner, the referrer.

    The LA is the organisation of kind local-authority whose GSS codes include the event's; the list
    has no duplicates and keeps that order (LA, providers in task order, referrer).
    """
    directory = RecipientDirectory(organisations=organisations or load_organisations())
    source = source_event_from_routed(event)
    found: list[Recipient] = []
    for role in (RecipientRole.LA_CHILDRENS_SERVICES, RecipientRole.TASK_OWNER, RecipientRole.REFERRER):
        found += [Recipient(org, role) for org in resolve_role(role, source, directory)]
    return list(dict.fromkeys(found))


def _decision_ids(event: eligibility_pb2.EligibilityAssessed, outcome: int) -> list[str]:
    return sorted(d.programme_id for d in event.decisions if d.outcome == outcome)


def assessed_facts(event: eligibility_pb2.EligibilityAssessed) -> dict[str, Any]:
    """Return the notifiable facts of an assessment (rule ids, never the plain-words reasons)."""
    exiting = [d for d in event.decisions if d.continuation == eligibility_pb2.CONTINUATION_EXIT]
    exit_rules = [
        next((r.rule_id for r in d.rules if r.exit_rule and r.result == eligibility_pb2.RULE_RESULT_FAIL), "")
        for d in exiting
    ]
    facts = _without_empty(
        {
            "referral_id": event.referral_id,
            "local_authority_gss": event.facts.local_authority_gss,
            "assessed_on": event.assessed_on,
            "changed_programme_ids": sorted(event.changed_programmes),
            "eligible_programme_ids": _decision_ids(event, eligibility_pb2.OUTCOME_ELIGIBLE),
            "ineligible_programme_ids": _decision_ids(event, eligibility_pb2.OUTCOME_INELIGIBLE),
            "unknown_programme_ids": _decision_ids(event, eligibility_pb2.OUTCOME_UNKNOWN),
            "exiting_programme_ids": sorted(d.programme_id for d in exiting),
            "exit_rule_ids": sorted(r for r in exit_rules if r),
            "next_change_date": event.next_change_date,
        }
    )
    facts["needs_review"] = any(d.needs_review for d in event.decisions)
    return facts


def source_event_from_assessed(
    event: eligibility_pb2.EligibilityAssessed, tasks: tuple[TaskRef, ...] = ()
) -> SourceEvent:
    """Convert an EligibilityAssessed into a SourceEvent; `tasks` are the referral's open tasks."""
    return SourceEvent(
        event_id=event.event_id,
        occurred_at=_when(event.occurred_at),
        referral_id=event.referral_id,
        local_authority_gss=event.facts.local_authority_gss,
        referrer_organisation_id=event.facts.referrer.organisation_id,
        tasks=tasks,
        facts=assessed_facts(event),
    )


def event_types_for_assessed(event: eligibility_pb2.EligibilityAssessed) -> list[str]:
    """Return ["eligibility-changed"] when a later assessment changed a decision, else []."""
    later = event.trigger in (eligibility_pb2.TRIGGER_FACTS_UPDATED, eligibility_pb2.TRIGGER_SCHEDULED)
    return ["eligibility-changed"] if later and event.changed_programmes else []


def source_event_from_task_rejected(
    event: task_pb2.TaskStatusChanged, referrer_organisation_id: str = ""
) -> SourceEvent:
    """Convert a TaskStatusChanged to "rejected" into the SourceEvent of `task-rejected`.

    The declining provider is not told (it made the change); the LA and the referrer learn which task
    and programme were declined and the coded reason. The referrer is not in the event: the caller
    reads it from the referral.
    """
    facts = _without_empty(
        {
            "referral_id": event.referral_id,
            "local_authority_gss": event.local_authority_gss,
            "rejected_task_ids": [event.task_id],
            "rejected_programme_ids": _unique([event.programme_id]),
            "rejection_reason_code": event.status_reason_code,
        }
    )
    facts["escalate_to_edt"] = False  # the re-route decides an escalation and raises it itself
    return SourceEvent(
        event_id=event.event_id,
        occurred_at=_when(event.occurred_at),
        referral_id=event.referral_id,
        local_authority_gss=event.local_authority_gss,
        referrer_organisation_id=referrer_organisation_id,
        facts=facts,
    )
