"""Turns events into one NotificationRequested per recipient channel, by policy.

The policy decides who is told and with which fields (``services.notifier.domain``); this module
finds each recipient's channels and publishes the work items that the delivery lanes send:

- rest-hook: one item per active Subscription of the organisation (from ``SubscriptionCache``, in
  memory: no search on the event's path). Haven offers one Subscription topic; every event type goes
  to it and ``X-Haven-Event-Type`` tells them apart.
- email (the policy says ``channel: email``): one item keyed ``email-<recipient>`` when an SMTP server
  and an address for the recipient are configured; otherwise the organisation's rest-hook
  Subscriptions, as for any other recipient.
- NATS: one more item keyed ``nats-<organisation>`` for an LA platform on NATS (``PartnerNats``: the
  registry's ``nats_gss`` and a signing secret), beside its rest-hook Subscriptions (not for email).

A required role with no organisation (``RecipientGap``) does not stop the others: every resolvable
recipient is planned, and the gap is recorded as a dead letter keyed ``unresolved-<role>`` (record
state ``dead``, detail "no organisation for required role <role>") that operators see in
``$dead-letters`` and ``$deliveries``, with a WARNING log (ids and codes only). Redriving it after the
organisation is configured plans the role's notification for it (``resolve_gap``). A recipient that
is known but has no channel at all is kept the same way, keyed ``no-channel-<organisation>``; a
redrive once it has a Subscription (or NATS, or an email address) plans it for that channel.

Routing events arrive here (durable ``notifier-planner``): `referral-routed`, plus `no-capacity` and
`emergency-without-bed` when ``event_types_for_routed`` says so. Missing episodes and scheduled reviews
call ``plan`` from ``services.notifier.missing``; declined tasks and changed eligibility from
``services.notifier.changes``. Ids derive from the source event, so a redelivered
event publishes nothing new (JetStream drops the repeated ``Nats-Msg-Id``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from haven.kit import bus, topology
from haven.kit.batch import send_all
from haven.kit.clock import Clock, system_clock
from haven.kit.ids import derived_id
from haven.kit.logs import log_event
from haven.kit.timestamps import to_timestamp
from haven.notification.v1 import notification_pb2
from haven.routing.v1 import routing_pb2
from services.notifier.deliverer import (
    NO_CHANNEL_KEY_PREFIX,
    PartnerNats,
    nats_key,
    no_channel_key,
    unresolved_key,
)
from services.notifier.domain import (
    PlannedNotification,
    RecipientDirectory,
    event_types_for_routed,
)
from services.notifier.domain.planning import AnyEvent, RecipientGap, plan_notifications
from services.notifier.domain.policy import Channel, RecipientRole, Urgency
from services.notifier.domain.recipients import SourceEvent, resolve_role
from services.notifier.ledger import DEAD, DeliveryLedger, record_key
from services.notifier.mailer import Mailer, email_key
from services.notifier.subscriptions import SubscriptionCache

_log = logging.getLogger(__name__)

CONSUMER = bus.ConsumerSpec(
    stream="HAVEN_ROUTING", durable="notifier-planner", subjects=(f"{topology.ROUTING_ROUTED_PREFIX}.*",)
)


class NotificationPlanner:
    """Plans the notifications of each event and publishes their work items."""

    def __init__(
        self,
        js: JetStreamContext,
        subscriptions: SubscriptionCache,
        directory: RecipientDirectory,
        mailer: Mailer | None = None,
        partners: PartnerNats | None = None,
        clock: Clock = system_clock,
    ) -> None:
        self._js = js
        self._subscriptions = subscriptions
        self._directory = directory
        self._mailer = mailer
        self._partners = partners
        self._ledger: DeliveryLedger | None = None
        self._clock = clock

    async def handle(self, msg: Msg) -> None:
        """Handle one ReferralRouted message."""
        routed = routing_pb2.ReferralRouted.FromString(msg.data)
        for event_type in event_types_for_routed(routed):
            await self.plan(event_type, routed)

    async def plan(self, event_type: str, event: AnyEvent) -> list[notification_pb2.NotificationRequested]:
        """Plan one event under ``event_type``'s policy and publish a work item per channel.

        A required role without an organisation is recorded as a gap; the others are told all the same.
        """
        plan = plan_notifications(event_type, event, directory=self._directory)
        # Every recipient's items at once: they are independent, and each repeat is dropped by its id.
        batches = await asyncio.gather(*(self._request_delivery(n) for n in plan.notifications))
        published = [request for batch in batches for request in batch]
        for gap in plan.gaps:
            await self._record_gap(gap)
        return published

    async def resolve_gap(
        self, request: notification_pb2.NotificationRequested, record: dict[str, Any]
    ) -> list[str]:
        """Plan a redriven gap for the organisations that can take it now; return them (none: still a gap).

        A role gap's role is resolved from what its record kept (the LA's GSS code), so roles found by
        area or configuration (LA, EDT, police, ICTG site, competent authority, on-call manager) can be
        resolved later; a task owner or referrer cannot (they are named by the event only). A
        no-channel gap is planned again for its recipient, whose channels may exist by now.
        """
        no_channel = request.subscription_id.startswith(NO_CHANNEL_KEY_PREFIX)
        try:
            rebuilt = _no_channel_from(request, record) if no_channel else _gap_from(request, record)
        except (KeyError, ValueError):
            log_event(
                _log,
                "unreadable recipient gap record",
                logging.WARNING,
                notification_id=request.notification_id,
            )
            return []
        if isinstance(rebuilt, PlannedNotification):
            published = await self._request_delivery(rebuilt)
            return [rebuilt.recipient_organisation_id] if published else []
        source = SourceEvent(
            event_id=rebuilt.source_event_id,
            occurred_at=rebuilt.occurred_at,
            referral_id=rebuilt.referral_id,
            local_authority_gss=rebuilt.local_authority_gss,
        )
        organisations = resolve_role(rebuilt.role, source, self._directory)
        for organisation_id in organisations:
            await self._request_delivery(rebuilt.planned_for(organisation_id))
        return organisations

    async def _record_gap(self, gap: RecipientGap) -> None:
        """Record a required role without an organisation as a dead letter operators see and can redrive."""
        key = unresolved_key(str(gap.role))
        log_event(
            _log,
            "required recipient has no organisation",
            logging.WARNING,
            event_id=gap.source_event_id,
            referral_id=gap.referral_id,
            event_type=gap.event_type,
            role=str(gap.role),
            local_authority_gss=gap.local_authority_gss,
            notification_id=gap.notification_id,
        )
        record = {
            "notification_id": gap.notification_id,
            "subscription_id": key,
            "referral_id": gap.referral_id,
            "recipient_organisation_id": "",
            "event_type": gap.event_type,
            "last_detail": gap.reason,
            "unresolved_role": str(gap.role),
            "local_authority_gss": gap.local_authority_gss,
            "source_event_id": gap.source_event_id,
            "channel": str(gap.channel),
            "urgency": str(gap.urgency),
            "requested_at": gap.occurred_at.isoformat(),
            "due_by": gap.due_by.astimezone(UTC).isoformat(),
        }
        await self._dead_on_arrival(gap.to_proto(key), record)

    async def _record_no_channel(self, notification: PlannedNotification) -> None:
        """Record a notification whose recipient has no channel as a dead letter, not a log line only.

        The organisation is known but has no active Subscription, no NATS channel and (for an email
        rule) no address: nothing could be sent. Redriven once the recipient has a channel, it is
        planned for that channel (``resolve_gap``) under the same notification id.
        """
        recipient = notification.recipient_organisation_id
        key = no_channel_key(recipient)
        log_event(
            _log,
            "recipient has no channel",
            logging.WARNING,
            referral_id=notification.referral_id,
            recipient=recipient,
            event_type=notification.event_type,
            channel=str(notification.channel),
            notification_id=notification.notification_id,
        )
        record = {
            "notification_id": notification.notification_id,
            "subscription_id": key,
            "referral_id": notification.referral_id,
            "recipient_organisation_id": recipient,
            "event_type": notification.event_type,
            "last_detail": f"recipient {recipient} has no channel (no active Subscription, NATS or email)",
            "source_event_id": notification.source_event_id,
            "channel": str(notification.channel),
            "urgency": str(notification.urgency),
            "requested_at": notification.occurred_at.isoformat(),
            "due_by": notification.due_by.astimezone(UTC).isoformat(),
        }
        await self._dead_on_arrival(notification.to_proto(subscription_id=key), record)

    async def _dead_on_arrival(
        self, request: notification_pb2.NotificationRequested, record: dict[str, Any]
    ) -> None:
        """Keep a notification that could not be planned as a dead letter: record, dead letter, outcome.

        A replayed event finds the record and adds nothing (it may have been redriven or resolved since).
        """
        record_id = record_key(request.notification_id, request.subscription_id)
        if self._ledger is None:
            self._ledger = await DeliveryLedger.open(self._js)
        if await self._ledger.record(record_id):
            return
        now = self._clock()
        record.update(
            state=DEAD, attempts=1, last_status=0, dead_at=now.isoformat(), last_attempt_at=now.isoformat()
        )
        # The record first: a dead letter is listed only while its record says dead.
        await self._ledger.put_record(record_id, record, index=True)
        delivered = notification_pb2.NotificationDelivered(
            event_id=derived_id(
                "notification-delivered", request.notification_id, request.subscription_id, "1"
            ),
            occurred_at=to_timestamp(now),
            notification_id=request.notification_id,
            recipient_organisation_id=request.recipient_organisation_id,
            attempt=1,
            outcome=notification_pb2.DELIVERY_OUTCOME_DEAD_LETTERED,
            detail=str(record["last_detail"]),
            referral_id=request.referral_id,
        )
        dead_letter_id = derived_id("dead-letter", record_id, "0")
        await send_all(
            self._js,
            [
                bus.event_call(topology.NOTIFICATION_DEAD_LETTER, request, msg_id=dead_letter_id),
                bus.event_call(topology.NOTIFICATION_DELIVERED, delivered, msg_id=delivered.event_id),
            ],
        )

    async def _request_delivery(
        self, notification: PlannedNotification
    ) -> list[notification_pb2.NotificationRequested]:
        recipient = notification.recipient_organisation_id
        keys: list[tuple[str, notification_pb2.Channel.ValueType]] = []
        if notification.channel is Channel.EMAIL and self._mailer and self._mailer.address_for(recipient):
            keys.append((email_key(recipient), notification_pb2.CHANNEL_EMAIL))
        else:
            rest_hook = notification_pb2.CHANNEL_REST_HOOK
            keys += [(s, rest_hook) for s in self._subscriptions.active_for(recipient)]
            if self._partners is not None and self._partners.gss_for(recipient):
                keys.append((nats_key(recipient), notification_pb2.CHANNEL_NATS))
        if not keys:
            await self._record_no_channel(notification)
            return []
        published = []
        for key, channel in keys:
            request = notification.to_proto(subscription_id=key)
            request.channel = channel
            request.event_id = derived_id("notification-requested", notification.notification_id, key)
            published.append(request)
        # At once, in one batch: each channel's item has its own lane, and a repeat is dropped by its
        # message id.
        requested = topology.NOTIFICATION_REQUESTED
        await send_all(self._js, [bus.event_call(requested, r, msg_id=r.event_id) for r in published])
        return published


def _gap_from(request: notification_pb2.NotificationRequested, record: dict[str, Any]) -> RecipientGap:
    """Rebuild a gap from its work item (ids, payload, times) and its record (role, GSS, source event)."""
    occurred, deadline, payload = _times_and_payload(request)
    return RecipientGap(
        notification_id=request.notification_id,
        event_type=request.event_type,
        source_event_id=str(record["source_event_id"]),
        referral_id=request.referral_id,
        role=RecipientRole(record["unresolved_role"]),
        local_authority_gss=str(record.get("local_authority_gss", "")),
        channel=Channel(record.get("channel", Channel.REST_HOOK)),
        urgency=Urgency(record.get("urgency", Urgency.ROUTINE)),
        deadline=deadline,
        occurred_at=occurred,
        payload=payload,
    )


def _no_channel_from(
    request: notification_pb2.NotificationRequested, record: dict[str, Any]
) -> PlannedNotification:
    """Rebuild a no-channel gap's notification from its work item and its record (channel, urgency)."""
    occurred, deadline, payload = _times_and_payload(request)
    return PlannedNotification(
        notification_id=request.notification_id,
        event_type=request.event_type,
        source_event_id=str(record.get("source_event_id", "")),
        referral_id=request.referral_id,
        recipient_organisation_id=request.recipient_organisation_id,
        roles=(),
        channel=Channel(record.get("channel", Channel.REST_HOOK)),
        urgency=Urgency(record.get("urgency", Urgency.ROUTINE)),
        deadline=deadline,
        occurred_at=occurred,
        payload=payload,
    )


def _times_and_payload(
    request: notification_pb2.NotificationRequested,
) -> tuple[datetime, timedelta, dict[str, Any]]:
    """Return a work item's event time, its deadline from then, and its projected payload."""
    occurred = request.occurred_at.ToDatetime(tzinfo=UTC)
    return (
        occurred,
        request.due_by.ToDatetime(tzinfo=UTC) - occurred,
        dict(json.loads(request.payload_json or b"{}")),
    )
