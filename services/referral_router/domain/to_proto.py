"""Turn a RoutingPlan into the `ReferralRouted` event, with ids that survive redelivery.

Task and event ids are UUIDv5 of the referral id, the routing sequence and the task's place in the
plan, so a redelivered `EligibilityAssessed` routed again at the same sequence yields the same ids and
the KV writes and the publish (`Nats-Msg-Id` = event id) de-duplicate.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Final

from haven.routing.v1 import routing_pb2
from services.referral_router.domain.plan import RoutingPlan, UnroutedCode

# Fixed namespaces: changing them changes every id Haven has ever issued.
TASK_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "https://haven.example.org/fhir/Task")
EVENT_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "https://haven.example.org/events/referral-routed")
TASK_STATUS_REQUESTED: Final = "requested"
UNROUTED_REASONS: Final[dict[UnroutedCode, routing_pb2.UnroutedReason.ValueType]] = {
    UnroutedCode.NOT_ELIGIBLE: routing_pb2.UNROUTED_REASON_NOT_ELIGIBLE,
    UnroutedCode.NO_SERVICE_IN_AREA: routing_pb2.UNROUTED_REASON_NO_SERVICE_IN_AREA,
    UnroutedCode.NO_CAPACITY: routing_pb2.UNROUTED_REASON_NO_CAPACITY,
    UnroutedCode.NOT_ASKED: routing_pb2.UNROUTED_REASON_NOT_ASKED,
    UnroutedCode.CANDIDATES_EXHAUSTED: routing_pb2.UNROUTED_REASON_CANDIDATES_EXHAUSTED,
}


def task_id_for(referral_id: str, sequence: int, service_id: str, index: int) -> str:
    """Deterministic FHIR Task id for the `index`-th task of routing `sequence` of a referral."""
    return str(uuid.uuid5(TASK_NAMESPACE, f"{referral_id}|{sequence}|{service_id}|{index}"))


def routed_event_id_for(referral_id: str, sequence: int) -> str:
    """Deterministic event id of the ReferralRouted for routing `sequence` of a referral."""
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{referral_id}|{sequence}"))


def plan_to_proto(
    plan: RoutingPlan,
    referral_id: str,
    *,
    sequence: int,
    occurred_at: datetime,
    trigger: routing_pb2.RoutingTrigger.ValueType = routing_pb2.ROUTING_TRIGGER_ASSESSED,
) -> routing_pb2.ReferralRouted:
    """Build the ReferralRouted event for a plan (pure: the caller gives the time and the sequence)."""
    event = routing_pb2.ReferralRouted(
        event_id=routed_event_id_for(referral_id, sequence),
        referral_id=referral_id,
        local_authority_gss=plan.local_authority_gss,
        trigger=trigger,
        referrer_organisation_id=plan.referrer_organisation_id,
        sequence=sequence,
        fallback=routing_pb2.Fallback(
            inform_local_authority=plan.fallback.inform_local_authority,
            escalate_to_edt=plan.fallback.escalate_to_edt,
            local_authority_first_responder=plan.fallback.local_authority_first_responder,
            summary=plan.fallback.summary,
        ),
    )
    event.occurred_at.FromDatetime(occurred_at)
    for index, task in enumerate(plan.tasks):
        event.tasks.append(
            routing_pb2.RoutedTask(
                task_id=task_id_for(referral_id, sequence, task.service_id, index),
                programme_id=task.programme_id,
                service_id=task.service_id,
                owner_organisation_id=task.owner_organisation_id,
                route=task.route,
                status=TASK_STATUS_REQUESTED,
                manual_review=task.manual_review,
                reason=task.reason,
                part_of_task_id=task.part_of_task_id,
            )
        )
    event.alternatives.extend(
        routing_pb2.Alternative(
            service_id=a.service_id,
            programme_id=a.programme_id,
            reason=a.reason,
            waiting_position=a.waiting_position,
        )
        for a in plan.alternatives
    )
    event.unrouted.extend(
        routing_pb2.Unrouted(programme_id=u.programme_id, reason=u.reason, code=UNROUTED_REASONS[u.code])
        for u in plan.unrouted
    )
    return event
