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

Schedules are kept by ``services.notifier.schedules`` (kind ``MISSING_REVIEWS``): one message schedule
per referral and entry, ``haven.notification.v1.schedule.<referral>.<schedule id>``, fired onto
``haven.notification.v1.review-due`` with a small JSON ``ScheduledReview`` (ids, codes and times only).
The server keeps them across restarts and fires each once; the consumer ``notifier-reviews`` raises
`review-due` for a fired one whose episode is still open. Every id derives from the referral, the
episode and the schedule entry, so redelivery publishes nothing twice.

A closed referral (``services.notifier.closures``) raises nothing here: neither a late missing or
found report nor a review that fires after the close; the close purges the schedules and forgets the
open episode (``forget``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from haven.kit import bus, topology
from haven.kit.clock import Clock, system_clock
from haven.kit.ids import derived_id
from haven.kit.logs import log_event
from haven.kit.resources import ResourceStore
from haven.kit.schedules import is_subject_token
from haven.referral.v1 import referral_pb2
from services.notifier.changes import open_tasks
from services.notifier.closures import ClosedReferrals
from services.notifier.domain import ProjectionError, SourceEvent, TaskRef
from services.notifier.domain.policy import Anchor
from services.notifier.domain.recipients import referral_facts
from services.notifier.planner import NotificationPlanner
from services.notifier.schedules import (
    MISSING_REVIEWS,
    SCHEDULE_STREAM,
    JsonBody,
    Scheduler,
    due_entries,
    entry_for,
    parse_instant,
)

_log = logging.getLogger(__name__)

MISSING_EVENT = "missing-episode-reported"
REVIEW_EVENT = "review-due"
SCHEDULE_PREFIX = MISSING_REVIEWS.prefix  # + ".<referral id>.<schedule id>"
REVIEW_DUE = MISSING_REVIEWS.target  # ScheduledReview JSON, fired by the server
__all__ = [
    "FACTS_CONSUMER",
    "MISSING_EVENT",
    "REVIEWS_CONSUMER",
    "REVIEW_DUE",
    "REVIEW_EVENT",
    "SCHEDULE_PREFIX",
    "SCHEDULE_STREAM",
    "MissingEpisodes",
    "ScheduledReview",
    "missing_since_instant",
]

FACTS_CONSUMER = bus.ConsumerSpec(
    stream="HAVEN_REFERRALS", durable="notifier-missing", subjects=(topology.REFERRAL_FACTS_UPDATED,)
)
REVIEWS_CONSUMER = MISSING_REVIEWS.consumer


@dataclass(frozen=True)
class ScheduledReview(JsonBody):
    """What a fired schedule carries: enough to raise `review-due` without reading the child's facts."""

    event_id: str
    referral_id: str
    episode_id: str
    schedule_id: str
    anchor_at: str
    local_authority_gss: str
    referrer_organisation_id: str


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
        store: ResourceStore,
        planner: NotificationPlanner,
        episodes: KeyValue,
        scheduler: Scheduler,
        closed: ClosedReferrals,
    ) -> None:
        self._store = store
        self._planner = planner
        self._episodes = episodes
        self._scheduler = scheduler
        self._closed = closed

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        planner: NotificationPlanner,
        clock: Clock = system_clock,
        wall_clock: Clock = system_clock,
        closed: ClosedReferrals | None = None,
    ) -> MissingEpisodes:
        """Bind to the buckets and make sure the schedule stream exists."""
        store = await ResourceStore.open(js)
        return cls(
            store,
            planner,
            await js.key_value(topology.BUCKET_DELIVERIES),
            await Scheduler.open(js, clock, wall_clock),
            closed or await ClosedReferrals.open(js, store),
        )

    # ---- facts updated -----------------------------------------------------------------------------

    async def handle_facts(self, msg: Msg) -> None:
        """Handle one ReferralFactsUpdated."""
        event = referral_pb2.ReferralFactsUpdated.FromString(msg.data)
        referral_id = event.referral_id
        if not is_subject_token(referral_id):
            raise bus.Unprocessable("referral id is not a subject token")
        episode = await self._open_episode(referral_id)
        occurred_at = event.occurred_at.ToDatetime(tzinfo=UTC)
        since = event.facts.missing_since
        if since:
            if episode is not None and episode.get("missing_since") == since:
                return  # already reported (a repeat, or another fact changed)
            try:
                anchor = missing_since_instant(since)
            except ValueError:
                raise bus.Unprocessable("missing_since is not an ISO date or date-time") from None
            episode_id = derived_id("missing-episode", referral_id, since)
            facts: dict[str, Any] = {"episode_status": "missing", "missing_since": anchor}
        elif episode is not None:
            episode_id = str(episode["episode_id"])
            anchor = missing_since_instant(str(episode["missing_since"]))
            facts = {"episode_status": "found", "missing_since": anchor, "found_at": occurred_at}
        else:
            return
        if await self._closed.is_closed(referral_id):
            # Facts published just before the close: the episode of a closed referral is not reported.
            log_event(_log, "missing episode of a closed referral ignored", referral_id=referral_id)
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
        try:
            await self._planner.plan(MISSING_EVENT, source)
        except ProjectionError as bad:
            raise bus.Unprocessable(f"missing episode facts refused: {bad}") from None
        if since:
            await self._schedule(source, episode_id, anchor)
            await self._episodes.put(
                _episode_key(referral_id),
                json.dumps({"episode_id": episode_id, "missing_since": since}).encode(),
            )
            # Closed while this ran (the close's purge may have come before these schedules)? Then
            # remove them again: whichever of the two finishes last leaves nothing behind.
            if await self._closed.is_closed(referral_id):
                await self.forget(referral_id)
        else:
            await self.forget(referral_id)
        log_event(
            _log,
            "missing episode reported",
            referral_id=referral_id,
            episode_id=episode_id,
            episode_status=str(facts["episode_status"]),
        )

    async def forget(self, referral_id: str) -> None:
        """Cancel the referral's missing reviews and remove its open episode (found, or closed)."""
        await self._scheduler.cancel(MISSING_REVIEWS, (referral_id,))
        await self._episodes.delete(_episode_key(referral_id))

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

    async def _schedule(self, source: SourceEvent, episode_id: str, anchor: datetime) -> None:
        for planned in due_entries(Anchor.MISSING_SINCE, anchor, source.facts):
            review = ScheduledReview(
                event_id=planned.event_id(source.referral_id),
                referral_id=source.referral_id,
                episode_id=episode_id,
                schedule_id=planned.schedule_id,
                anchor_at=anchor.isoformat(),
                local_authority_gss=source.local_authority_gss,
                referrer_organisation_id=source.referrer_organisation_id,
            )
            await self._scheduler.schedule(
                MISSING_REVIEWS,
                (source.referral_id, planned.schedule_id),
                review,
                planned.raise_at,
                review.event_id,
            )

    async def handle_review(self, msg: Msg) -> None:
        """Raise `review-due` for a fired schedule whose missing episode is still open."""
        review = ScheduledReview.from_bytes(msg.data)
        if not is_subject_token(review.referral_id):
            raise bus.Unprocessable("referral id is not a subject token")
        episode = await self._open_episode(review.referral_id)
        if episode is None or episode.get("episode_id") != review.episode_id:
            return  # the child was found (or a newer episode began): nothing is due for this one
        if await self._closed.is_closed(review.referral_id):
            return  # fired as the referral was closed: its reviews are over
        match = entry_for(Anchor.MISSING_SINCE, parse_instant(review.anchor_at), review.schedule_id)
        source = SourceEvent(
            event_id=review.event_id,
            occurred_at=self._scheduler.now(),
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
