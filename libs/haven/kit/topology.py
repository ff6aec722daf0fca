"""Every stream, subject and KV bucket Haven uses, created idempotently at start.

One subject carries one message type (design.md, "Contracts"). Routing events name the responsible
local authority's GSS code in the subject, so NATS permissions can give each LA platform its own area.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

# Subjects, one message type each.
REFERRAL_RECEIVED = "haven.referral.v1.received"  # ReferralReceived
REFERRAL_FACTS_UPDATED = "haven.referral.v1.facts-updated"  # ReferralFactsUpdated
REFERRAL_CLOSED = "haven.referral.v1.closed"  # ReferralClosed
ELIGIBILITY_ASSESSED = "haven.eligibility.v1.assessed"  # EligibilityAssessed
REASSESSMENT_DUE = "haven.eligibility.v1.reassessment-due"  # ReassessmentDue (scheduled)
ELIGIBILITY_EXIT_APPROACHING = "haven.eligibility.v1.exit-approaching"  # ExitApproaching
TASK_STATUS_CHANGED = "haven.task.v1.status-changed"  # TaskStatusChanged
ROUTING_ROUTED_PREFIX = "haven.routing.v1.routed"  # ReferralRouted, + ".<GSS code>"
NOTIFICATION_REQUESTED = "haven.notification.v1.requested"  # NotificationRequested
NOTIFICATION_DELIVERED = "haven.notification.v1.delivered"  # NotificationDelivered
NOTIFICATION_DEAD_LETTER = "haven.notification.v1.dead-lettered"  # NotificationRequested
# Notifications to a local authority's platform over NATS: "<prefix>.<GSS>.notification.<event type>",
# body: the LA's projection (canonical JSON), signed like a rest-hook. Only that LA may read them.
PARTNER_PREFIX = "haven.partner.v1"
PARTNER_STREAM = "HAVEN_PARTNER"
# How long a platform that was offline can catch up (its durable consumer reads the backlog).
PARTNER_RETENTION_SECONDS = 14 * 24 * 3600.0
AUDIT_RECORDED = "haven.audit.v1.recorded"  # FHIR AuditEvent JSON
# Reservation expiry: one JetStream message schedule per task ("<prefix>.<task id>", body: the task id)
# fires the task id onto RESERVATION_EXPIRED when the provider has not accepted in time.
RESERVATION_EXPIRY_PREFIX = "haven.routing.v1.reservation-expiry"  # schedule definitions
RESERVATION_EXPIRED = "haven.routing.v1.reservation-expired"  # task id (UTF-8), fired by the server
# Re-assessment schedules: one JetStream message schedule per referral and reason
# ("<prefix>.<referral id>.<reason>[.<programme>]", body: ReassessmentDue) fired onto REASSESSMENT_DUE.
REASSESSMENT_SCHEDULE_PREFIX = "haven.eligibility.v1.schedule"  # schedule definitions
# The notifier's schedules: definitions under each prefix, fired onto the matching "due" subject.
MISSING_REVIEW_SCHEDULE_PREFIX = "haven.notification.v1.schedule"
MISSING_REVIEW_DUE = "haven.notification.v1.review-due"
PLACEMENT_REVIEW_SCHEDULE_PREFIX = "haven.notification.v1.placement-schedule"
PLACEMENT_REVIEW_DUE = "haven.notification.v1.placement-review-due"
ACKNOWLEDGE_SCHEDULE_PREFIX = "haven.notification.v1.acknowledge-schedule"
ACKNOWLEDGE_DUE = "haven.notification.v1.acknowledge-due"

# Window in which JetStream drops a repeated Nats-Msg-Id: long enough to cover a service restart.
DUPLICATE_WINDOW_SECONDS = 15 * 60.0


def routed_subject(local_authority_gss: str) -> str:
    """Return the subject of routing events for one local authority."""
    return f"{ROUTING_ROUTED_PREFIX}.{local_authority_gss or 'UNKNOWN'}"


def partner_subject(local_authority_gss: str, event_type: str) -> str:
    """Return the subject of one notification to an LA platform: it names that LA and nothing else."""
    return f"{PARTNER_PREFIX}.{local_authority_gss}.notification.{event_type}"


def partner_subjects(local_authority_gss: str) -> str:
    """Return the subject filter of every notification to one LA platform (its permission and consumer)."""
    return f"{PARTNER_PREFIX}.{local_authority_gss}.notification.>"


def partner_consumer(organisation_id: str) -> str:
    """Return the durable consumer an LA platform reads its backlog from (created by the notifier)."""
    return f"partner-{organisation_id}"


@dataclass(frozen=True)
class StreamSpec:
    """A stream and the subjects it holds."""

    name: str
    subjects: tuple[str, ...]
    allow_msg_schedules: bool = False  # holds JetStream message schedules (Nats-Schedule headers)
    max_age_seconds: float | None = None  # None: kept until removed


STREAMS = (
    StreamSpec("HAVEN_REFERRALS", (REFERRAL_RECEIVED, REFERRAL_FACTS_UPDATED, REFERRAL_CLOSED)),
    StreamSpec("HAVEN_ELIGIBILITY", (ELIGIBILITY_ASSESSED, ELIGIBILITY_EXIT_APPROACHING)),
    StreamSpec("HAVEN_TASKS", (TASK_STATUS_CHANGED,)),
    StreamSpec("HAVEN_ROUTING", (f"{ROUTING_ROUTED_PREFIX}.*",)),
    StreamSpec("HAVEN_NOTIFICATIONS", (NOTIFICATION_REQUESTED,)),
    StreamSpec("HAVEN_DELIVERIES", (NOTIFICATION_DELIVERED,)),
    StreamSpec("HAVEN_DEAD_LETTERS", (NOTIFICATION_DEAD_LETTER,)),
    StreamSpec("HAVEN_AUDIT", (AUDIT_RECORDED,)),
    # Payloads for partners: kept only for the catch-up window, not for ever.
    StreamSpec(
        PARTNER_STREAM, (f"{PARTNER_PREFIX}.*.notification.*",), max_age_seconds=PARTNER_RETENTION_SECONDS
    ),
    StreamSpec(
        "HAVEN_ROUTER_SCHEDULES",
        (f"{RESERVATION_EXPIRY_PREFIX}.*", RESERVATION_EXPIRED),
        allow_msg_schedules=True,
    ),
    StreamSpec(
        "HAVEN_ELIGIBILITY_SCHEDULES",
        (f"{REASSESSMENT_SCHEDULE_PREFIX}.>", REASSESSMENT_DUE),
        allow_msg_schedules=True,
    ),
    StreamSpec(
        "HAVEN_NOTIFIER_SCHEDULES",
        (
            f"{MISSING_REVIEW_SCHEDULE_PREFIX}.>",
            f"{PLACEMENT_REVIEW_SCHEDULE_PREFIX}.>",
            f"{ACKNOWLEDGE_SCHEDULE_PREFIX}.>",
            MISSING_REVIEW_DUE,
            PLACEMENT_REVIEW_DUE,
            ACKNOWLEDGE_DUE,
        ),
        allow_msg_schedules=True,
    ),
)

# KV buckets holding current state.
BUCKET_RESOURCES = "haven_resources"  # FHIR resources by "<Type>.<id>"
BUCKET_INDEX = "haven_index"  # search index keys, e.g. "Task.based-on.<referral>.<task>"
BUCKET_IDEMPOTENCY = "haven_idempotency"  # request keys -> the answer already given
BUCKET_SUBSCRIPTIONS = "haven_subscriptions"  # rest-hook subscriptions by id
BUCKET_DELIVERIES = "haven_deliveries"  # delivery record by notification id
BUCKET_CAPACITY = "haven_capacity"  # free places per service
BUCKET_ASSESSMENTS = "haven_assessments"  # latest assessment per referral
BUCKET_ROUTING = "haven_routing"  # routing outcome per referral and sequence
BUCKET_SUBSCRIPTION_EVENTS = "haven_subscription_events"  # numbered notifications per subscription
BUCKET_FACTS = "haven_facts"  # latest ReferralFacts per referral, written by the gateway

BUCKETS = (
    BUCKET_RESOURCES,
    BUCKET_INDEX,
    BUCKET_IDEMPOTENCY,
    BUCKET_SUBSCRIPTIONS,
    BUCKET_DELIVERIES,
    BUCKET_CAPACITY,
    BUCKET_ASSESSMENTS,
    BUCKET_ROUTING,
    BUCKET_SUBSCRIPTION_EVENTS,
    BUCKET_FACTS,
)


async def ensure_topology(js: JetStreamContext) -> None:
    """Create every stream and bucket that does not exist yet; leave existing ones and their data alone."""
    for spec in STREAMS:
        config = StreamConfig(
            name=spec.name,
            subjects=list(spec.subjects),
            storage=StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW_SECONDS,
            allow_msg_schedules=spec.allow_msg_schedules or None,
            max_age=spec.max_age_seconds,
        )
        try:
            await js.stream_info(spec.name)
            await js.update_stream(config)
        except NotFoundError:
            try:
                await js.add_stream(config)
            except BadRequestError:
                # Another service created it between our look and our add.
                await js.stream_info(spec.name)
    for bucket in BUCKETS:
        try:
            await js.key_value(bucket)
        except (NotFoundError, BadRequestError):
            await js.create_key_value(KeyValueConfig(bucket=bucket, history=5, storage=StorageType.FILE))
