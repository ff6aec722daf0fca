"""Turns events into one NotificationRequested per recipient channel, by policy.

The policy decides who is told and with which fields (``services.notifier.domain``); this module
finds each recipient's channels and publishes the work items that the delivery lanes send:

- rest-hook: one item per active Subscription of the organisation (from ``SubscriptionCache``, in
  memory: no search on the event's path). Haven offers one Subscription topic; every event type goes
  to it and ``X-Haven-Event-Type`` tells them apart.
- email (the policy says ``channel: email``): one item keyed ``email-<recipient>`` when an SMTP server
  and an address for the recipient are configured; otherwise the organisation's rest-hook
  Subscriptions, as for any other recipient.

Routing events arrive here (durable ``notifier-planner``): `referral-routed`, plus `no-capacity` and
`emergency-without-bed` when ``event_types_for_routed`` says so. Missing episodes and scheduled reviews
call ``plan`` from ``services.notifier.missing``; declined tasks and changed eligibility from
``services.notifier.changes``. Ids derive from the source event, so a redelivered
event publishes nothing new (JetStream drops the repeated ``Nats-Msg-Id``).
"""

from __future__ import annotations

import logging

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from haven.kit import bus, topology
from haven.kit.ids import derived_id
from haven.kit.logs import log_event
from haven.notification.v1 import notification_pb2
from haven.routing.v1 import routing_pb2
from services.notifier.domain import (
    PlannedNotification,
    RecipientDirectory,
    event_types_for_routed,
    notifications_for,
)
from services.notifier.domain.planning import AnyEvent, UnresolvedRecipientError
from services.notifier.domain.policy import Channel
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
    ) -> None:
        self._js = js
        self._subscriptions = subscriptions
        self._directory = directory
        self._mailer = mailer

    async def handle(self, msg: Msg) -> None:
        """Handle one ReferralRouted message."""
        routed = routing_pb2.ReferralRouted.FromString(msg.data)
        for event_type in event_types_for_routed(routed):
            await self.plan(event_type, routed)

    async def plan(self, event_type: str, event: AnyEvent) -> list[notification_pb2.NotificationRequested]:
        """Plan one event under ``event_type``'s policy and publish a work item per channel."""
        try:
            planned = notifications_for(event_type, event, directory=self._directory)
        except UnresolvedRecipientError as missing:
            # A required recipient has no organisation in the registry or configuration: a gap that a
            # person must fix; the event is kept (term) so it can be replayed once fixed.
            raise bus.Unprocessable(f"no organisation for a required recipient: {missing}") from None
        published: list[notification_pb2.NotificationRequested] = []
        for notification in planned:
            published += await self._request_delivery(notification)
        return published

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
        if not keys:
            log_event(
                _log,
                "recipient has no channel",
                logging.WARNING,
                referral_id=notification.referral_id,
                recipient=recipient,
                event_type=notification.event_type,
                channel=str(notification.channel),
            )
        published = []
        for key, channel in keys:
            request = notification.to_proto(subscription_id=key)
            request.channel = channel
            request.event_id = derived_id("notification-requested", notification.notification_id, key)
            await bus.publish_event(
                self._js, topology.NOTIFICATION_REQUESTED, request, msg_id=request.event_id
            )
            published.append(request)
        return published
