"""What operators do with notifications that could not be delivered: list dead letters, redrive them.

Used by the gateway's `$dead-letters` operations. A dead letter is a NotificationRequested on the
HAVEN_DEAD_LETTERS stream whose delivery record is still `dead`; redriving it sets the record to
`redriven` (the retry schedule starts again, attempt numbers go on) and publishes the work item again.
A listing shows ids, states, codes and times only: never the payload, which holds a child's facts.

A recipient gap (a required role had no organisation when the event was planned) is listed the same
way, keyed ``<notification id>.unresolved-<role>``, with ``unresolved_role`` and the detail "no
organisation for required role <role>"; redriving it after the organisation is configured plans the
role's notification for it (``services.notifier.planner``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from haven.kit import bus, topology
from haven.kit.ids import derived_id
from haven.notification.v1 import notification_pb2
from services.notifier.ledger import DEAD, REDRIVEN, record_key

DEAD_LETTER_STREAM = "HAVEN_DEAD_LETTERS"
# The newest dead letters a listing looks at; older ones stay in the stream.
LISTING_WINDOW = 1000


@dataclass(frozen=True)
class DeadLetter:
    """A notification whose last attempt failed and that no one has redriven yet."""

    key: str
    request: notification_pb2.NotificationRequested
    record: dict[str, Any]
    stream_sequence: int

    def summary(self) -> dict[str, Any]:
        """Return what an operator sees: ids, event type, attempts, last answer and times."""
        r = self.record
        return {
            "key": self.key,
            "notification_id": self.request.notification_id,
            "subscription_id": self.request.subscription_id,
            "recipient_organisation_id": self.request.recipient_organisation_id,
            "referral_id": self.request.referral_id,
            "event_type": self.request.event_type,
            "attempts": r.get("attempts", 0),
            "last_status": r.get("last_status", 0),
            "last_detail": r.get("last_detail", ""),
            "dead_at": r.get("dead_at", ""),
            "redrives": r.get("redrives", 0),
            # A recipient gap: which required role had no organisation (fix it, then redrive).
            **({"unresolved_role": r["unresolved_role"]} if r.get("unresolved_role") else {}),
        }


class RedriveError(Exception):
    """The dead letter is unknown, or no longer dead (delivered or already redriven)."""


async def dead_letters(js: JetStreamContext) -> list[DeadLetter]:
    """Return the dead letters still dead, oldest first (one per notification and subscription)."""
    deliveries = await js.key_value(topology.BUCKET_DELIVERIES)
    try:
        info = await js.stream_info(DEAD_LETTER_STREAM)
    except NotFoundError:
        return []
    if info.state.messages == 0:
        return []
    first = max(1, info.state.first_seq, info.state.last_seq - LISTING_WINDOW + 1)
    latest: dict[str, tuple[int, notification_pb2.NotificationRequested]] = {}
    for sequence in range(first, info.state.last_seq + 1):
        try:
            raw = await js.get_msg(DEAD_LETTER_STREAM, seq=sequence)
        except NotFoundError:
            continue
        request = notification_pb2.NotificationRequested.FromString(raw.data or b"")
        latest[record_key(request.notification_id, request.subscription_id)] = (sequence, request)
    found = []
    for key, (sequence, request) in latest.items():
        try:
            entry = await deliveries.get(key)
        except KeyNotFoundError:
            continue
        record = dict(json.loads(entry.value or b"{}"))
        if record.get("state") == DEAD:
            found.append(DeadLetter(key, request, record, sequence))
    return sorted(found, key=lambda d: d.stream_sequence)


async def redrive(js: JetStreamContext, key: str) -> DeadLetter:
    """Send a dead letter again from the first step of the retry schedule; return it as it was."""
    letter = next((d for d in await dead_letters(js) if d.key == key), None)
    if letter is None:
        raise RedriveError(f"no dead letter {key}")
    deliveries = await js.key_value(topology.BUCKET_DELIVERIES)
    entry = await deliveries.get(key)
    record = dict(json.loads(entry.value or b"{}"))
    if record.get("state") != DEAD:
        raise RedriveError(f"{key} is no longer dead")
    redrives = int(record.get("redrives", 0)) + 1
    record.update(state=REDRIVEN, redrives=redrives, redrive_from=int(record.get("attempts", 0)))
    try:
        # Compare-and-set: two operators pressing redrive at once send it once.
        await deliveries.update(key, json.dumps(record, sort_keys=True).encode(), last=entry.revision)
    except KeyWrongLastSequenceError:
        raise RedriveError(f"{key} changed while redriving; look again") from None
    await bus.publish_event(
        js,
        topology.NOTIFICATION_REQUESTED,
        letter.request,
        msg_id=derived_id("redrive", key, str(redrives)),
    )
    return letter
