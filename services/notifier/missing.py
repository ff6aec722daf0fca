"""Missing children: `missing-episode-reported` from ReferralFactsUpdated, and the reviews it schedules.

The gateway's ``POST /fhir/Observation`` (a missing-episode Observation) publishes ReferralFactsUpdated
with ``facts.missing_since`` set, or cleared when the child is found. This module consumes those events
(durable ``notifier-missing`` on HAVEN_REFERRALS) and compares them with the open episode it keeps in KV
``haven_deliveries`` (key ``missing.<referral id>``), so a repeated or unrelated facts update raises
nothing:

- missing_since set and no open episode for that date: `missing-episode-reported` (episode_status
  `missing`) to police, the LA and its EDT, the ICTG, the NRM competent authority and task owners as
  the policy says; then the policy's missing-since schedule (the multi-agency review at four weeks,
  the long-term-missing closure at six months, confirmed by a person) is published as JetStream
  message schedules;
- missing_since cleared while an episode is open: `missing-episode-reported` with episode_status
  `found` and ``found_at``; the episode's schedules are removed.

Schedules live in the stream ``HAVEN_NOTIFIER_SCHEDULES`` (``allow_msg_schedules``), one subject per
referral and schedule entry, ``haven.notification.v1.schedule.<referral>.<schedule id>``, with
``Nats-Schedule: @at <UTC>`` and ``Nats-Schedule-Target: haven.notification.v1.review-due``; the body is a
small JSON ``ScheduledReview`` (ids, codes and times only). The server keeps them across restarts and
fires each once; the consumer ``notifier-reviews`` raises `review-due` for a fired one whose episode is
still open. Every id derives from the referral, the episode and the schedule entry, so redelivery
publishes nothing twice.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import BadRequestError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from haven.kit import bus, topology
from haven.kit.clock import Clock, system_clock
from haven.kit.ids import derived_id
from haven.kit.logs import log_event
from haven.kit.resources import ResourceStore
from haven.referral.v1 import referral_pb2
from services.notifier.changes import open_tasks
from services.notifier.domain import SourceEvent, TaskRef, scheduled_events
from services.notifier.domain.policy import Anchor
from services.notifier.domain.recipients import referral_facts
from services.notifier.planner import NotificationPlanner

_log = logging.getLogger(__name__)

MISSING_EVENT = "missing-episode-reported"
REVIEW_EVENT = "review-due"
SCHEDULE_STREAM = "HAVEN_NOTIFIER_SCHEDULES"
SCHEDULE_PREFIX = "haven.notification.v1.schedule"  # + ".<referral id>.<schedule id>"
REVIEW_DUE = "haven.notification.v1.review-due"  # ScheduledReview JSON, fired by the server

FACTS_CONSUMER = bus.ConsumerSpec(
    stream="HAVEN_REFERRALS", durable="notifier-missing", subjects=(topology.REFERRAL_FACTS_UPDATED,)
)
REVIEWS_CONSUMER = bus.ConsumerSpec(
    stream=SCHEDULE_STREAM, durable="notifier-reviews", subjects=(REVIEW_DUE,)
)


async def ensure_schedule_stream(js: JetStreamContext) -> None:
    """Create the notifier's schedule stream if it does not exist (its data is left alone)."""
    config = StreamConfig(
        name=SCHEDULE_STREAM,
        subjects=[f"{SCHEDULE_PREFIX}.>", REVIEW_DUE],
        storage=StorageType.FILE,
        duplicate_window=topology.DUPLICATE_WINDOW_SECONDS,
        allow_msg_schedules=True,
    )
    try:
        await js.stream_info(SCHEDULE_STREAM)
    except NotFoundError:
        try:
            await js.add_stream(config)
        except BadRequestError:
            await js.stream_info(SCHEDULE_STREAM)  # another notifier made it first


@dataclass(frozen=True)
class ScheduledReview:
    """What a fired schedule carries: enough to raise `review-due` without reading the child's facts."""

    event_id: str
    referral_id: str
    episode_id: str
    schedule_id: str
    anchor_at: str
    local_authority_gss: str
    referrer_organisation_id: str

    def to_bytes(self) -> bytes:
        """Return the canonical JSON body."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ScheduledReview:
        """Read a body written by ``to_bytes``."""
        return cls(**{k: str(v) for k, v in json.loads(data).items()})


def _is_token(value: str) -> bool:
    return bool(value) and len(value) <= 128 and all(c.isalnum() or c in "-_" for c in value)


def at_header(instant: datetime) -> str:
    """Return the ``Nats-Schedule`` value of a one-off schedule, whole seconds, never early."""
    utc = instant.astimezone(UTC)
    if utc.microsecond:
        utc = utc.replace(microsecond=0) + timedelta(seconds=1)
    return f"@at {utc.strftime('%Y-%m-%dT%H:%M:%SZ')}"


def missing_since_instant(value: str) -> datetime:
    """Return ``facts.missing_since`` (an ISO date or date-time) as an absolute instant (UTC)."""
    if len(value) == 10:
        return datetime.combine(date.fromisoformat(value), time(0), UTC)
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class MissingEpisodes:
    """Raises missing-episode notifications and keeps each open episode's review schedules."""

    def __init__(
        self,
        js: JetStreamContext,
        store: ResourceStore,
        planner: NotificationPlanner,
        episodes: KeyValue,
        clock: Clock = system_clock,
        wall_clock: Clock = system_clock,
    ) -> None:
        self._js = js
        self._store = store
        self._planner = planner
        self._episodes = episodes
        self._clock = clock
        self._wall_clock = wall_clock

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        planner: NotificationPlanner,
        clock: Clock = system_clock,
        wall_clock: Clock = system_clock,
    ) -> MissingEpisodes:
        """Bind to the buckets and make sure the schedule stream exists."""
        await ensure_schedule_stream(js)
        return cls(
            js,
            await ResourceStore.open(js),
            planner,
            await js.key_value(topology.BUCKET_DELIVERIES),
            clock,
            wall_clock,
        )

    # ---- facts updated -----------------------------------------------------------------------------

    async def handle_facts(self, msg: Msg) -> None:
        """Handle one ReferralFactsUpdated."""
        event = referral_pb2.ReferralFactsUpdated.FromString(msg.data)
        referral_id = event.referral_id
        if not _is_token(referral_id):
            raise bus.Unprocessable("referral id is not a subject token")
        episode = await self._open_episode(referral_id)
        occurred_at = event.occurred_at.ToDatetime(tzinfo=UTC)
        since = event.facts.missing_since
        if since:
            if episode is not None and episode.get("missing_since") == since:
                return  # already reported (a repeat, or another fact changed)
            anchor = missing_since_instant(since)
            episode_id = derived_id("missing-episode", referral_id, since)
            facts: dict[str, Any] = {"episode_status": "missing", "missing_since": anchor}
        elif episode is not None:
            episode_id = str(episode["episode_id"])
            anchor = missing_since_instant(str(episode["missing_since"]))
            facts = {"episode_status": "found", "missing_since": anchor, "found_at": occurred_at}
        else:
            return
        base = {k: v for k, v in referral_facts(event.facts).items() if k != "missing_on_referral"}
        source = SourceEvent(
            event_id=derived_id(MISSING_EVENT, episode_id, str(facts["episode_status"])),
            occurred_at=occurred_at,
            referral_id=referral_id,
            local_authority_gss=event.facts.local_authority_gss,
            referrer_organisation_id=event.facts.referrer.organisation_id,
            tasks=await self._tasks(referral_id),
            facts={**base, "referral_id": referral_id, "episode_id": episode_id, **facts},
        )
        await self._planner.plan(MISSING_EVENT, source)
        if since:
            await self._schedule(source, episode_id, anchor)
            await self._episodes.put(
                _episode_key(referral_id),
                json.dumps({"episode_id": episode_id, "missing_since": since}).encode(),
            )
        else:
            await self._cancel(referral_id)
            await self._episodes.delete(_episode_key(referral_id))
        log_event(
            _log,
            "missing episode reported",
            referral_id=referral_id,
            episode_id=episode_id,
            episode_status=str(facts["episode_status"]),
        )

    async def _open_episode(self, referral_id: str) -> dict[str, Any] | None:
        try:
            entry = await self._episodes.get(_episode_key(referral_id))
        except KeyNotFoundError:
            return None
        return dict(json.loads(entry.value)) if entry.value else None

    async def _tasks(self, referral_id: str) -> tuple[TaskRef, ...]:
        """Return the referral's open tasks (their owners may be told; the ICTG holding one is)."""
        return await open_tasks(self._store, referral_id)

    # ---- schedules ---------------------------------------------------------------------------------

    def fire_at(self, raise_at: datetime) -> datetime:
        """Return the server (wall-clock) instant for ``raise_at`` on the service's clock, never past."""
        wall = self._wall_clock()
        return max(wall + (raise_at - self._clock()), wall + timedelta(seconds=1))

    async def _schedule(self, source: SourceEvent, episode_id: str, anchor: datetime) -> None:
        for planned in scheduled_events(Anchor.MISSING_SINCE, anchor):
            review = ScheduledReview(
                event_id=planned.event_id(source.referral_id),
                referral_id=source.referral_id,
                episode_id=episode_id,
                schedule_id=planned.schedule_id,
                anchor_at=anchor.isoformat(),
                local_authority_gss=source.local_authority_gss,
                referrer_organisation_id=source.referrer_organisation_id,
            )
            headers = {
                "Nats-Schedule": at_header(self.fire_at(planned.raise_at)),
                "Nats-Schedule-Target": REVIEW_DUE,
                "Nats-Msg-Id": derived_id("review-schedule", review.event_id),
            }
            subject = f"{SCHEDULE_PREFIX}.{source.referral_id}.{planned.schedule_id}"
            await self._js.publish(subject, review.to_bytes(), headers=headers)

    async def _cancel(self, referral_id: str) -> None:
        prefix = f"{SCHEDULE_PREFIX}.{referral_id}"
        info = await self._js.stream_info(SCHEDULE_STREAM, subjects_filter=f"{prefix}.>")
        for subject in info.state.subjects or {}:
            await self._js.purge_stream(SCHEDULE_STREAM, subject=subject)

    async def handle_review(self, msg: Msg) -> None:
        """Raise `review-due` for a fired schedule whose missing episode is still open."""
        try:
            review = ScheduledReview.from_bytes(msg.data)
        except (ValueError, TypeError):
            raise bus.Unprocessable("not a ScheduledReview") from None
        episode = await self._open_episode(review.referral_id)
        if episode is None or episode.get("episode_id") != review.episode_id:
            return  # the child was found (or a newer episode began): nothing is due for this one
        match = next(
            (
                s
                for s in scheduled_events(Anchor.MISSING_SINCE, datetime.fromisoformat(review.anchor_at))
                if s.schedule_id == review.schedule_id
            ),
            None,
        )
        if match is None:
            raise bus.Unprocessable(f"no schedule entry {review.schedule_id} in the policies")
        source = SourceEvent(
            event_id=review.event_id,
            occurred_at=self._clock(),
            referral_id=review.referral_id,
            local_authority_gss=review.local_authority_gss,
            referrer_organisation_id=review.referrer_organisation_id,
            tasks=await self._tasks(review.referral_id),
            facts={
                **match.facts(),
                "referral_id": review.referral_id,
                "episode_id": review.episode_id,
                "local_authority_gss": review.local_authority_gss,
            },
        )
        await self._planner.plan(REVIEW_EVENT, source)
        log_event(_log, "review due raised", referral_id=review.referral_id, schedule_id=review.schedule_id)


def _episode_key(referral_id: str) -> str:
    return f"missing.{referral_id}"
