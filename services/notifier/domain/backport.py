"""FHIR R4 Subscriptions Backport notification bodies: handshake, heartbeat, event notification, status.

A Subscription that claims the backport profile gets its notifications as a Bundle of type
`history` whose first entry is the `SubscriptionStatus` (as R4 `Parameters`), as in the
Subscriptions Backport IG. The recipient's projection is carried unchanged inside it, as a
`Binary` entry of content type `application/json` (base64 data), so what a receiver may see is still
decided by the policy alone. Pure: the caller passes ids, numbers and times.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

BACKPORT: Final = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
BACKPORT_SUBSCRIPTION_PROFILE: Final = f"{BACKPORT}/backport-subscription"
BACKPORT_STATUS_PROFILE: Final = f"{BACKPORT}/backport-subscription-status-r4"
HEARTBEAT_EXTENSION: Final = f"{BACKPORT}/backport-heartbeat-period"

HANDSHAKE: Final = "handshake"
HEARTBEAT: Final = "heartbeat"
EVENT_NOTIFICATION: Final = "event-notification"
QUERY_STATUS: Final = "query-status"
QUERY_EVENT: Final = "query-event"


@dataclass(frozen=True, slots=True)
class SubscriptionEvent:
    """One notification as numbered for one subscription: what `$events` can send again."""

    event_number: int
    notification_id: str
    event_type: str
    referral_id: str
    occurred_at: datetime
    payload_json: bytes

    def to_json(self) -> dict[str, Any]:
        """Return the event as JSON-ready data (the payload base64-encoded, as it is sent)."""
        return {
            "event_number": self.event_number,
            "notification_id": self.notification_id,
            "event_type": self.event_type,
            "referral_id": self.referral_id,
            "occurred_at": _instant(self.occurred_at),
            "payload": base64.b64encode(self.payload_json).decode("ascii"),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SubscriptionEvent:
        """Read an event written by `to_json`."""
        return cls(
            event_number=int(data["event_number"]),
            notification_id=str(data["notification_id"]),
            event_type=str(data["event_type"]),
            referral_id=str(data["referral_id"]),
            occurred_at=datetime.fromisoformat(str(data["occurred_at"]).replace("Z", "+00:00")),
            payload_json=base64.b64decode(str(data["payload"])),
        )


def is_backport(subscription: dict[str, Any]) -> bool:
    """Return whether a Subscription asks for backport-style notifications (by its meta.profile)."""
    profiles = (subscription.get("meta") or {}).get("profile") or []
    return BACKPORT_SUBSCRIPTION_PROFILE in profiles


def heartbeat_seconds(subscription: dict[str, Any]) -> int:
    """Return the channel's heartbeat period in seconds (0: no heartbeat)."""
    channel = subscription.get("channel") or {}
    for extension in channel.get("extension") or []:
        if extension.get("url") == HEARTBEAT_EXTENSION:
            value = extension.get("valueUnsignedInt", 0)
            return int(value) if isinstance(value, int) and value > 0 else 0
    return 0


def status_parameters(
    *,
    subscription_id: str,
    topic: str,
    status: str,
    kind: str,
    events_since_start: int,
    events: Sequence[SubscriptionEvent] = (),
) -> dict[str, Any]:
    """Return the R4 `SubscriptionStatus` Parameters of one notification or status query."""
    parameters: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": f"Subscription/{subscription_id}"}},
        {"name": "topic", "valueCanonical": topic},
        {"name": "status", "valueCode": status},
        {"name": "type", "valueCode": kind},
        # A string in the R4 backport (the count is an int64 in R5).
        {"name": "events-since-subscription-start", "valueString": str(events_since_start)},
    ]
    for event in events:
        parameters.append(
            {
                "name": "notification-event",
                "part": [
                    {"name": "event-number", "valueString": str(event.event_number)},
                    {"name": "timestamp", "valueInstant": _instant(event.occurred_at)},
                    {"name": "focus", "valueReference": {"reference": f"ServiceRequest/{event.referral_id}"}},
                ],
            }
        )
    return {
        "resourceType": "Parameters",
        "meta": {"profile": [BACKPORT_STATUS_PROFILE]},
        "parameter": parameters,
    }


def notification_bundle(
    *,
    bundle_id: str,
    subscription_id: str,
    topic: str,
    status: str,
    kind: str,
    events_since_start: int,
    now: datetime,
    events: Sequence[SubscriptionEvent] = (),
) -> dict[str, Any]:
    """Return a notification Bundle (history): the status first, then each event's projection."""
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"urn:uuid:{bundle_id}",
            "resource": status_parameters(
                subscription_id=subscription_id,
                topic=topic,
                status=status,
                kind=kind,
                events_since_start=events_since_start,
                events=events,
            ),
            "request": {"method": "GET", "url": f"Subscription/{subscription_id}/$status"},
            "response": {"status": "200"},
        }
    ]
    for event in events:
        entries.append(
            {
                "fullUrl": f"urn:uuid:{event.notification_id}",
                "resource": {
                    "resourceType": "Binary",
                    "id": event.notification_id,
                    "contentType": "application/json",
                    "data": base64.b64encode(event.payload_json).decode("ascii"),
                },
                "request": {"method": "POST", "url": "Binary"},
                "response": {"status": "201"},
            }
        )
    return {
        "resourceType": "Bundle",
        "id": bundle_id,
        "type": "history",
        "timestamp": _instant(now),
        "entry": entries,
    }


def canonical_json(document: dict[str, Any]) -> bytes:
    """Return the exact bytes that are signed and sent: sorted keys, no spaces, UTF-8."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
