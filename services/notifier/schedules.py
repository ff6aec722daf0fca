"""The notifier's JetStream message schedules: later events the server fires once, even across restarts.

Missing-episode reviews, placement reviews and task-acknowledgement deadlines are all kept the same
way: a message in the stream ``HAVEN_NOTIFIER_SCHEDULES`` (``allow_msg_schedules``) on a subject of
the kind's prefix, with ``Nats-Schedule: @at <UTC>`` and ``Nats-Schedule-Target: <the kind's target>``.
The body is a small JSON document (ids, codes and times only, never a child's facts). At the time the
server publishes the body on the target subject, where the kind's durable consumer raises the event if
it is still due. Cancelling purges the definitions under a subject prefix.

- missing reviews: ``haven.notification.v1.schedule.<referral>.<schedule id>``, fired onto
  ``haven.notification.v1.review-due``;
- placement reviews: ``haven.notification.v1.placement-schedule.<referral>.<task>.<schedule id>``,
  fired onto ``haven.notification.v1.placement-review-due``;
- acknowledgement deadlines: ``haven.notification.v1.acknowledge-schedule.<referral>.<task>.<schedule
  id>``, fired onto ``haven.notification.v1.acknowledge-due``.

Every kind has its own prefix, so cancelling one (a child found) never removes another's (a placement).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Self

from nats.js import JetStreamContext

from haven.kit import bus, topology
from haven.kit.clock import Clock, system_clock
from haven.kit.ids import derived_id
from haven.kit.schedules import at_header, is_subject_token, purge_under
from services.notifier.domain import ScheduledEvent, load_policies, scheduled_events
from services.notifier.domain.policy import Anchor

SCHEDULE_STREAM = "HAVEN_NOTIFIER_SCHEDULES"


@dataclass(frozen=True)
class ScheduleKind:
    """One family of schedules: where their definitions live and which subject they fire onto."""

    prefix: str
    target: str
    durable: str

    def subject(self, *tokens: str) -> str:
        """Return the definition subject for these key tokens (each must be a subject token)."""
        if not all(is_subject_token(t) for t in tokens):
            raise bus.Unprocessable("a schedule key is not a subject token")
        return ".".join((self.prefix, *tokens))

    @property
    def consumer(self) -> bus.ConsumerSpec:
        """Return the durable consumer of the fired messages."""
        return bus.ConsumerSpec(stream=SCHEDULE_STREAM, durable=self.durable, subjects=(self.target,))


MISSING_REVIEWS = ScheduleKind(
    topology.MISSING_REVIEW_SCHEDULE_PREFIX, topology.MISSING_REVIEW_DUE, "notifier-reviews"
)
PLACEMENT_REVIEWS = ScheduleKind(
    topology.PLACEMENT_REVIEW_SCHEDULE_PREFIX, topology.PLACEMENT_REVIEW_DUE, "notifier-placement-reviews"
)
ACKNOWLEDGEMENTS = ScheduleKind(
    topology.ACKNOWLEDGE_SCHEDULE_PREFIX, topology.ACKNOWLEDGE_DUE, "notifier-acknowledge-due"
)
KINDS = (MISSING_REVIEWS, PLACEMENT_REVIEWS, ACKNOWLEDGEMENTS)


class JsonBody:
    """A schedule body as canonical JSON: every field a string, so nothing but ids, codes and times."""

    def to_bytes(self) -> bytes:
        """Return the canonical JSON body."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()  # type: ignore[call-overload]

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Read a body written by ``to_bytes``; raise ``bus.Unprocessable`` for anything else."""
        try:
            raw = json.loads(data)
            names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
            if not isinstance(raw, dict):
                raise TypeError("not an object")
            return cls(**{k: str(v) for k, v in raw.items() if k in names})
        except (ValueError, TypeError):
            raise bus.Unprocessable(f"not a {cls.__name__}") from None


def due_entries(anchor: Anchor, anchor_at: datetime, facts: Mapping[str, Any]) -> list[ScheduledEvent]:
    """Return the policy schedule entries for ``anchor`` whose ``when`` holds for these facts."""
    policies = load_policies()
    due = []
    for planned in scheduled_events(anchor, anchor_at, policies=policies):
        entry = policies[planned.event_type].schedule_entry(planned.schedule_id)
        if entry is not None and entry.applies(facts):
            due.append(planned)
    return due


def entry_for(anchor: Anchor, anchor_at: datetime, schedule_id: str) -> ScheduledEvent:
    """Return the schedule entry a fired message names, counted from its anchor again."""
    match = next((s for s in scheduled_events(anchor, anchor_at) if s.schedule_id == schedule_id), None)
    if match is None:
        raise bus.Unprocessable(f"no {anchor} schedule entry {schedule_id} in the policies")
    return match


def parse_instant(value: str) -> datetime:
    """Return a body's ISO date-time as an aware instant; raise ``bus.Unprocessable`` when it is not one."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise bus.Unprocessable("a schedule time is not an ISO date-time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Scheduler:
    """Publishes and cancels schedules of every kind in the notifier's schedule stream.

    ``clock`` is the service's clock (what policy times are counted on); ``wall_clock`` is the server's,
    which fires the schedules. They differ only in tests that move the service's clock.
    """

    def __init__(
        self, js: JetStreamContext, clock: Clock = system_clock, wall_clock: Clock = system_clock
    ) -> None:
        self._js = js
        self._clock = clock
        self._wall_clock = wall_clock

    @classmethod
    async def open(
        cls, js: JetStreamContext, clock: Clock = system_clock, wall_clock: Clock = system_clock
    ) -> Scheduler:
        """Return a scheduler on the schedule stream (``ensure_topology`` made it, as every stream)."""
        return cls(js, clock, wall_clock)

    def now(self) -> datetime:
        """Return the service's time."""
        return self._clock()

    def fire_at(self, raise_at: datetime) -> datetime:
        """Return the server (wall-clock) instant for ``raise_at`` on the service's clock, never past."""
        wall = self._wall_clock()
        return max(wall + (raise_at - self._clock()), wall + timedelta(seconds=1))

    async def schedule(
        self, kind: ScheduleKind, key: tuple[str, ...], body: JsonBody, raise_at: datetime, dedupe: str
    ) -> None:
        """Publish one schedule; ``dedupe`` (the raised event's id) makes a repeat a no-op in the window."""
        headers = {
            "Nats-Schedule": at_header(self.fire_at(raise_at)),
            "Nats-Schedule-Target": kind.target,
            "Nats-Msg-Id": derived_id("schedule", kind.prefix, dedupe),
        }
        await self._js.publish(kind.subject(*key), body.to_bytes(), headers=headers)

    async def cancel(self, kind: ScheduleKind, key: tuple[str, ...]) -> int:
        """Remove every schedule of ``kind`` under the key prefix; return how many subjects were purged."""
        return await purge_under(self._js, SCHEDULE_STREAM, kind.subject(*key))
