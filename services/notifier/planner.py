"""Turns routing events into one NotificationRequested per recipient subscription, by policy.

The policy decides who is told and with which fields (``services.notifier.domain``); this module
finds each recipient's subscriptions and publishes the work items that the delivery worker sends.
Ids derive from the routing event, so a redelivered event publishes nothing new.
"""

from __future__ import annotations

import logging

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from haven.canonical import TOPIC_REFERRAL_ROUTED
from haven.kit import bus, topology
from haven.kit.ids import derived_id
from haven.kit.logs import log_event
from haven.kit.resources import ResourceStore
from haven.routing.v1 import routing_pb2
from services.notifier.domain import PlannedNotification, RecipientDirectory, notifications_for
from services.notifier.domain.planning import UnresolvedRecipientError

_log = logging.getLogger(__name__)

CONSUMER = bus.ConsumerSpec(
    stream="HAVEN_ROUTING", durable="notifier-planner", subjects=(f"{topology.ROUTING_ROUTED_PREFIX}.*",)
)


class NotificationPlanner:
    """Plans the notifications of each routing event."""

    def __init__(self, js: JetStreamContext, store: ResourceStore, directory: RecipientDirectory) -> None:
        self._js = js
        self._store = store
        self._directory = directory

    async def handle(self, msg: Msg) -> None:
        """Handle one ReferralRouted message."""
        routed = routing_pb2.ReferralRouted.FromString(msg.data)
        event_types = ["referral-routed"]
        if routed.fallback.escalate_to_edt:
            event_types.append("emergency-without-bed")
        for event_type in event_types:
            try:
                planned = notifications_for(event_type, routed, directory=self._directory)
            except UnresolvedRecipientError as missing:
                # A required recipient (the LA) has no organisation in the registry: a configuration gap
                # that a person must fix; the event is kept (term) so it can be replayed once fixed.
                raise bus.Unprocessable(f"no organisation for a required recipient: {missing}") from None
            for notification in planned:
                await self._request_delivery(notification)

    async def _request_delivery(self, notification: PlannedNotification) -> None:
        subscriptions = await self._store.search(
            "Subscription", "owner", f"Organization/{notification.recipient_organisation_id}"
        )
        active = [
            s
            for s in subscriptions
            if s.resource.get("status") == "active" and s.resource.get("criteria") == TOPIC_REFERRAL_ROUTED
        ]
        if not active:
            log_event(
                _log,
                "recipient has no active subscription",
                logging.WARNING,
                referral_id=notification.referral_id,
                recipient=notification.recipient_organisation_id,
                event_type=notification.event_type,
            )
        for subscription in active:
            request = notification.to_proto(subscription_id=subscription.resource["id"])
            request.event_id = derived_id(
                "notification-requested", notification.notification_id, subscription.resource["id"]
            )
            await bus.publish_event(
                self._js, topology.NOTIFICATION_REQUESTED, request, msg_id=request.event_id
            )
