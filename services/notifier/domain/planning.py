"""Planning: from one event and its policy to one notification per recipient organisation.

An organisation that holds several roles for the same event (a placing LA that is also the referrer)
gets one notification: the union of its roles' allow-lists, the most urgent level and the earliest
deadline. Its id is a uuid5 of the source event id, the organisation and the event type, so a
redelivered event plans the same ids and receivers can de-duplicate on them.

A required role with no organisation (a police force not configured for the area) does not stop the
others being told: ``plan_notifications`` returns it as a ``RecipientGap`` beside the notifications,
holding that role's projection, so the service records it for operators and can send it once the
organisation is known.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from google.protobuf.timestamp_pb2 import Timestamp

from haven.eligibility.v1 import eligibility_pb2
from haven.notification.v1 import notification_pb2
from haven.referral.v1 import referral_pb2
from haven.routing.v1 import routing_pb2
from services.notifier.domain.policy import (
    Anchor,
    Channel,
    NotificationPolicy,
    RecipientRole,
    RecipientRule,
    Urgency,
    load_policies,
)
from services.notifier.domain.projection import check_facts, project_fields
from services.notifier.domain.recipients import (
    RecipientDirectory,
    SourceEvent,
    own_task_facts,
    resolve_role,
    source_event_from_assessed,
    source_event_from_received,
    source_event_from_routed,
)

NOTIFICATION_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "https://haven.example.org/notifications")
SCHEDULED_EVENT_NAMESPACE: Final = uuid.uuid5(
    uuid.NAMESPACE_URL, "https://haven.example.org/events/scheduled"
)

_CHANNELS = {
    Channel.REST_HOOK: notification_pb2.CHANNEL_REST_HOOK,
    Channel.NATS: notification_pb2.CHANNEL_NATS,
    Channel.EMAIL: notification_pb2.CHANNEL_EMAIL,
}

_OWN_FACTS = frozenset(
    {"own_task_ids", "own_programme_ids", "own_service_ids", "own_routes", "manual_review"}
)

AnyEvent = (
    SourceEvent
    | routing_pb2.ReferralRouted
    | referral_pb2.ReferralReceived
    | eligibility_pb2.EligibilityAssessed
)


class UnknownEventTypeError(LookupError):
    """Raised for an event type that has no policy."""


class UnresolvedRecipientError(LookupError):
    """Raised when a role the policy marks required has no organisation (fix the registry or config)."""

    def __init__(self, event_type: str, role: RecipientRole, event_id: str) -> None:
        """Name what could not be resolved, never any personal data."""
        super().__init__(f"{event_type}: no organisation for required role {role} (event {event_id})")
        self.event_type = event_type
        self.role = role
        self.event_id = event_id


def gap_notification_id(source_event_id: str, role: RecipientRole, event_type: str) -> str:
    """Return the id of a required role's missing notification (stable, so a replay records it once)."""
    return notification_id(source_event_id, f"unresolved:{role}", event_type)


def notification_id(source_event_id: str, recipient_organisation_id: str, event_type: str) -> str:
    """Return the deterministic notification id, which is also the receiver's idempotency key."""
    return str(
        uuid.uuid5(NOTIFICATION_NAMESPACE, f"{source_event_id}|{recipient_organisation_id}|{event_type}")
    )


@dataclass(frozen=True, slots=True)
class PlannedNotification:
    """One notification to one organisation, ready for delivery."""

    notification_id: str
    event_type: str
    source_event_id: str
    referral_id: str
    recipient_organisation_id: str
    roles: tuple[RecipientRole, ...]
    channel: Channel
    urgency: Urgency
    deadline: timedelta
    occurred_at: datetime
    payload: Mapping[str, Any] = field(default_factory=dict)
    policy_version: int = 1

    @property
    def due_by(self) -> datetime:
        """Return when it must be delivered by: the event time plus the deadline."""
        return self.occurred_at + self.deadline

    @property
    def payload_json(self) -> bytes:
        """Return the payload as canonical JSON (sorted keys, no spaces): the exact bytes signed and sent."""
        return _canonical_json(self.payload)

    def to_proto(self, subscription_id: str = "") -> notification_pb2.NotificationRequested:
        """Return the NotificationRequested event; its event id derives from the notification id."""
        message = notification_pb2.NotificationRequested(
            event_id=str(uuid.uuid5(NOTIFICATION_NAMESPACE, f"requested|{self.notification_id}")),
            referral_id=self.referral_id,
            notification_id=self.notification_id,
            recipient_organisation_id=self.recipient_organisation_id,
            subscription_id=subscription_id,
            channel=_CHANNELS[self.channel],
            event_type=self.event_type,
            payload_json=self.payload_json,
        )
        message.occurred_at.CopyFrom(_timestamp(self.occurred_at))
        message.due_by.CopyFrom(_timestamp(self.due_by))
        return message


@dataclass(frozen=True, slots=True)
class RecipientGap:
    """A required role that has no organisation for this event: the notification it could not get.

    ``payload`` is the role's projection (without ``own_*`` facts: no organisation owns anything), so
    once an operator has configured the organisation the same notification can be sent to it.
    """

    notification_id: str
    event_type: str
    source_event_id: str
    referral_id: str
    role: RecipientRole
    local_authority_gss: str
    channel: Channel
    urgency: Urgency
    deadline: timedelta
    occurred_at: datetime
    payload: Mapping[str, Any] = field(default_factory=dict)
    policy_version: int = 1

    @property
    def reason(self) -> str:
        """Return what an operator reads: which role has no organisation (ids and codes only)."""
        return f"no organisation for required role {self.role}"

    @property
    def due_by(self) -> datetime:
        """Return when it should have been delivered by."""
        return self.occurred_at + self.deadline

    def planned_for(self, organisation_id: str) -> PlannedNotification:
        """Return the notification to send once ``organisation_id`` holds the role.

        Its id is the one a plan made with the organisation known would have given it, so a receiver
        de-duplicates a redrive and a replay of the event alike.
        """
        return PlannedNotification(
            notification_id=notification_id(self.source_event_id, organisation_id, self.event_type),
            event_type=self.event_type,
            source_event_id=self.source_event_id,
            referral_id=self.referral_id,
            recipient_organisation_id=organisation_id,
            roles=(self.role,),
            channel=self.channel,
            urgency=self.urgency,
            deadline=self.deadline,
            occurred_at=self.occurred_at,
            payload=self.payload,
            policy_version=self.policy_version,
        )

    def to_proto(self, key: str) -> notification_pb2.NotificationRequested:
        """Return the work item that stands for the gap (no recipient) under the record key ``key``."""
        message = notification_pb2.NotificationRequested(
            event_id=str(uuid.uuid5(NOTIFICATION_NAMESPACE, f"requested|{self.notification_id}")),
            referral_id=self.referral_id,
            notification_id=self.notification_id,
            subscription_id=key,
            channel=_CHANNELS[self.channel],
            event_type=self.event_type,
            payload_json=_canonical_json(self.payload),
        )
        message.occurred_at.CopyFrom(_timestamp(self.occurred_at))
        message.due_by.CopyFrom(_timestamp(self.due_by))
        return message


@dataclass(frozen=True, slots=True)
class Plan:
    """What one event raises: a notification per organisation, and each required role left without one."""

    notifications: list[PlannedNotification]
    gaps: list[RecipientGap]


def _canonical_json(payload: Mapping[str, Any]) -> bytes:
    # Sorted keys, no spaces: the exact bytes signed and sent, the same for a gap sent later.
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _strongest(rules: list[RecipientRule]) -> tuple[RecipientRule, list[str], timedelta]:
    """Return the most urgent of the rules, the union of their fields and the earliest deadline."""
    strongest = min(rules, key=lambda r: (r.urgency.rank, r.deadline))
    fields = list(dict.fromkeys(f for r in rules for f in r.fields))
    return strongest, fields, min(r.deadline for r in rules)


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def to_source_event(event: AnyEvent) -> SourceEvent:
    """Return the event as a SourceEvent (protobuf events are converted, a SourceEvent is returned as is)."""
    if isinstance(event, SourceEvent):
        return event
    if isinstance(event, routing_pb2.ReferralRouted):
        return source_event_from_routed(event)
    if isinstance(event, referral_pb2.ReferralReceived):
        return source_event_from_received(event)
    return source_event_from_assessed(event)


def _with_schedule_facts(policy: NotificationPolicy, facts: Mapping[str, Any]) -> dict[str, Any]:
    enriched = dict(facts)
    entry = policy.schedule_entry(str(facts.get("review_kind") or facts.get("schedule_id") or ""))
    if entry is not None and "requires_confirmation" not in enriched:
        # The policy, not the caller, decides that closing a long-term-missing case needs a person.
        enriched["requires_confirmation"] = entry.confirm_by_person
    return enriched


def _merge(
    organisation_id: str,
    rules: list[RecipientRule],
    policy: NotificationPolicy,
    source: SourceEvent,
    facts: Mapping[str, Any],
) -> PlannedNotification:
    strongest, fields, deadline = _strongest(rules)
    # `own_*` facts are computed per organisation here, never taken from the caller: one provider's
    # task must not reach another because a caller put it in the shared facts.
    shared = {k: v for k, v in facts.items() if k not in _OWN_FACTS}
    own = {**shared, **own_task_facts(source, organisation_id)}
    return PlannedNotification(
        notification_id=notification_id(source.event_id, organisation_id, policy.event_type),
        event_type=policy.event_type,
        source_event_id=source.event_id,
        referral_id=source.referral_id,
        recipient_organisation_id=organisation_id,
        roles=tuple(dict.fromkeys(r.role for r in rules)),
        channel=strongest.channel,
        urgency=strongest.urgency,
        deadline=deadline,
        occurred_at=source.occurred_at,
        payload=project_fields(fields, own),
        policy_version=policy.version,
    )


def _gap(
    role: RecipientRole,
    rules: list[RecipientRule],
    policy: NotificationPolicy,
    source: SourceEvent,
    facts: Mapping[str, Any],
) -> RecipientGap:
    strongest, fields, deadline = _strongest(rules)
    shared = {k: v for k, v in facts.items() if k not in _OWN_FACTS}
    return RecipientGap(
        notification_id=gap_notification_id(source.event_id, role, policy.event_type),
        event_type=policy.event_type,
        source_event_id=source.event_id,
        referral_id=source.referral_id,
        role=role,
        local_authority_gss=source.local_authority_gss,
        channel=strongest.channel,
        urgency=strongest.urgency,
        deadline=deadline,
        occurred_at=source.occurred_at,
        payload=project_fields(fields, shared),
        policy_version=policy.version,
    )


def plan_notifications(
    event_type: str,
    event: AnyEvent,
    *,
    directory: RecipientDirectory | None = None,
    policies: Mapping[str, NotificationPolicy] | None = None,
) -> Plan:
    """Return the notifications one event raises under `event_type`'s policy, and its recipient gaps.

    One notification per organisation; one gap per required role that has no organisation (the
    others are still planned). Raises UnknownEventTypeError for a type without a policy and
    ProjectionError for an undeclared or ill-formed fact. The order is deterministic: by the policy's
    recipient order, then organisation id.
    """
    policies = policies or load_policies()
    policy = policies.get(event_type)
    if policy is None:
        raise UnknownEventTypeError(event_type)
    source = to_source_event(event)
    directory = directory or RecipientDirectory()
    facts = _with_schedule_facts(policy, {"referral_id": source.referral_id, **source.facts})
    check_facts(facts)
    by_organisation: dict[str, list[RecipientRule]] = {}
    unresolved: dict[RecipientRole, list[RecipientRule]] = {}
    for rule in policy.recipients:
        if not rule.applies(facts):
            continue
        organisations = resolve_role(rule.role, source, directory)
        if not organisations and rule.required:
            unresolved.setdefault(rule.role, []).append(rule)
        for organisation_id in organisations:
            by_organisation.setdefault(organisation_id, []).append(rule)
    return Plan(
        notifications=[_merge(org, rules, policy, source, facts) for org, rules in by_organisation.items()],
        gaps=[_gap(role, rules, policy, source, facts) for role, rules in unresolved.items()],
    )


def notifications_for(
    event_type: str,
    event: AnyEvent,
    *,
    directory: RecipientDirectory | None = None,
    policies: Mapping[str, NotificationPolicy] | None = None,
) -> list[PlannedNotification]:
    """Return the notifications one event raises under `event_type`'s policy, one per organisation.

    The strict form of ``plan_notifications``: raises UnknownEventTypeError for a type without a
    policy, UnresolvedRecipientError when a required role has no organisation, and ProjectionError for
    an undeclared or ill-formed fact.
    """
    plan = plan_notifications(event_type, event, directory=directory, policies=policies)
    if plan.gaps:
        gap = plan.gaps[0]
        raise UnresolvedRecipientError(event_type, gap.role, gap.source_event_id)
    return plan.notifications


@dataclass(frozen=True, slots=True)
class ScheduledEvent:
    """An event a schedule raises later: which, when it is raised, and when the thing falls due."""

    event_type: str
    schedule_id: str
    anchor: Anchor
    anchor_at: datetime
    due_at: datetime
    raise_at: datetime
    confirm_by_person: bool

    def event_id(self, referral_id: str) -> str:
        """Return a deterministic event id, so re-scheduling the same anchor raises the same event."""
        key = f"{referral_id}|{self.event_type}|{self.schedule_id}|{self.anchor_at.isoformat()}"
        return str(uuid.uuid5(SCHEDULED_EVENT_NAMESPACE, key))

    def facts(self) -> dict[str, Any]:
        """Return the facts the raised event carries about its schedule entry (a review of some kind)."""
        return {
            "schedule_id": self.schedule_id,
            "review_kind": self.schedule_id,
            "review_due_at": self.due_at,
            "requires_confirmation": self.confirm_by_person,
        }


def scheduled_events(
    anchor: Anchor, anchor_at: datetime, *, policies: Mapping[str, NotificationPolicy] | None = None
) -> list[ScheduledEvent]:
    """Return every event the policies schedule from this anchor, earliest first.

    For example the missing-since anchor gives the four-week multi-agency review and the six-month
    long-term-missing closure; the placement-start anchor gives the specialist-accommodation reviews.
    Exit dates are not an anchor: eligibility owns them and publishes ExitApproaching itself.
    """
    policies = policies or load_policies()
    found = [
        ScheduledEvent(
            event_type=policy.event_type,
            schedule_id=entry.schedule_id,
            anchor=anchor,
            anchor_at=anchor_at,
            due_at=entry.offset.add_to(anchor_at),
            raise_at=entry.offset.add_to(anchor_at) - entry.notice,
            confirm_by_person=entry.confirm_by_person,
        )
        for policy in policies.values()
        for entry in policy.schedule
        if entry.anchor is anchor
    ]
    return sorted(found, key=lambda s: (s.raise_at, s.schedule_id))
