"""Crash-safe storage of an accepted referral: an intake record first, then the writes it describes.

A referral is one transaction of many KV writes and two publishes. To leave nothing half done when
the process dies between them, the whole of it (resources, facts, scope, the referrer, the request's
idempotency keys) is first written as one *intake record* (``intake.<referral id>`` in the
idempotency bucket). Then come every write, each one idempotent, in three stages:

1. the resources, the referral's facts and its possible-duplicate match keys (ids nobody has been
   given);
2. ``ReferralReceived`` (``Nats-Msg-Id`` is its derived event id, so a repeat is dropped);
3. the search index entries and the AuditEvent: only now can anyone find the referral by searching.

``store`` sends the record and the three stages as one batch, in that order on one connection, and
waits once (ADR 13): a death part way leaves a prefix of it, the same states a death between stages
leaves. ``complete`` sends the stages one after another, each acknowledged before the next; it
finishes a referral a dead request left, and a batch that failed. The possible-duplicate Flags come
after the stages, once the match keys' outcomes are known.

Only when all of it is acknowledged is the referrer answered 201; then, off the answer's path, the
request's own idempotency keys get the answer and the record is purged (``finish_later``).
A record still there later belongs to a request that died: ``sweep`` (at start and periodically)
completes it, and ``complete_stale_claim`` lets a retry of the same ``X-Request-ID`` finish it at
once and get its answer. So a referral whose record was written is never lost and never half
visible, and one whose record was not written left nothing behind (unless nats-server refused the
record while storing later writes of its batch: ADR 13).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal, NoReturn

import orjson
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from haven.kit import bus, topology
from haven.kit.batch import Answer, Call, KvWrite, Publish, send_all, write_all
from haven.kit.handles import bucket_name
from haven.kit.ids import derived_id
from haven.kit.kv_keys import list_bucket_keys
from haven.kit.logs import log_event
from haven.kit.resources import RecordScope, StoredResource
from haven.kit.timestamps import to_timestamp
from haven.organisations import Role
from haven.referral.v1 import referral_pb2
from services.gateway.audit_log import audit_record
from services.gateway.duplicates import first_sighting_writes, link_possible_duplicates
from services.gateway.fhir import ParsedReferral, transaction_response_bundle
from services.gateway.idempotency import StoredAnswer, complete_if_pending
from services.gateway.observations import facts_creation
from services.gateway.security.principal import Principal
from services.gateway.state import GatewayState

_log = logging.getLogger(__name__)
PREFIX: Final = "intake."
# A record younger than this may belong to a request still in flight; the sweeper leaves it alone.
# (Completing it twice would be harmless, every write being idempotent, only wasted work.)
DEFAULT_SWEEP_AFTER: Final = timedelta(seconds=30)

Shape = Literal["transaction", "resource"]


@dataclass(frozen=True)
class Intake:
    """Everything needed to store and announce one accepted referral, with or without its request."""

    parsed: ParsedReferral
    principal: Principal
    received_at: datetime
    request_id: str
    shape: Shape
    claims: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The record's key in the idempotency bucket."""
        return f"{PREFIX}{self.parsed.referral_id}"

    @property
    def scope(self) -> RecordScope:
        """Who the referral's records concern: the child's local authority and the referrer."""
        return RecordScope(
            local_authority_gss=self.parsed.facts.local_authority_gss,
            referrer_organisation_id=self.principal.organisation_id,
        )

    def to_json(self) -> bytes:
        """Encode the record (facts as their protobuf bytes, so nothing is lost in translation)."""
        parsed, principal = self.parsed, self.principal
        # orjson: compact JSON like json.dumps(separators=...), UTF-8 rather than \u escapes, in a
        # fraction of the time (the record repeats every resource of the referral).
        return orjson.dumps(
            {
                "referral_id": parsed.referral_id,
                "patient_id": parsed.patient_id,
                "referrer_identifier": parsed.referrer_identifier,
                "resources": list(parsed.resources),
                "facts": base64.b64encode(parsed.facts.SerializeToString()).decode(),
                "principal": {
                    "organisation_id": principal.organisation_id,
                    "role": principal.role.value,
                    "gss_codes": sorted(principal.gss_codes),
                    "referrer_kind": principal.referrer_kind,
                },
                "received_at": self.received_at.isoformat(),
                "request_id": self.request_id,
                "shape": self.shape,
                "claims": list(self.claims),
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> Intake:
        """Read a record written by ``to_json``; raise ValueError (or KeyError) if it is not one."""
        record: dict[str, Any] = json.loads(data)
        who = record["principal"]
        shape = record["shape"]
        if shape not in ("transaction", "resource"):
            raise ValueError(f"unknown answer shape {shape!r}")
        parsed = ParsedReferral(
            referral_id=str(record["referral_id"]),
            patient_id=str(record["patient_id"]),
            referrer_identifier=record["referrer_identifier"],
            resources=tuple(record["resources"]),
            facts=referral_pb2.ReferralFacts.FromString(base64.b64decode(record["facts"])),
        )
        principal = Principal(
            organisation_id=str(who["organisation_id"]),
            role=Role(who["role"]),
            gss_codes=frozenset(who["gss_codes"]),
            referrer_kind=str(who["referrer_kind"]),
        )
        return cls(
            parsed=parsed,
            principal=principal,
            received_at=datetime.fromisoformat(record["received_at"]),
            request_id=str(record["request_id"]),
            shape=shape,
            claims=tuple(record["claims"]),
        )


def _record_write(state: GatewayState, intake: Intake) -> KvWrite:
    """Return the write of the intake record: a create, since referral ids are fresh UUIDs."""
    return KvWrite(_bucket_name(state.idempotency), intake.key, intake.to_json(), create=True)


async def begin(state: GatewayState, intake: Intake) -> None:
    """Write the intake record alone: from here on the referral is completed, by a request or the sweeper.

    ``store`` sends the record as the first call of its batch instead; this is for staging a record
    as a request that died right after writing it would leave it (the crash tests do).
    """
    [revision] = await write_all(state.js, [_record_write(state, intake)])
    if revision is None:
        _record_exists(intake)


def _record_exists(intake: Intake) -> NoReturn:
    # Referral ids are fresh UUIDs: a record already there is a bug, never a reason to overwrite.
    raise RuntimeError(f"intake record {intake.key} exists already")


@dataclass(frozen=True)
class _Writes:
    """Every write of one referral after its intake record, grouped by the stage that sends it.

    ``stored``: the resources, then the facts, then the possible-duplicate match keys; ``announced``:
    ``ReferralReceived``; ``searchable``: the search index entries, the stored AuditEvent and its
    publish. Every one is idempotent (creates, a de-duplicated publish, index entries rewritten the
    same), so a repeat after a death leaves everything as one pass would.
    """

    resources: tuple[KvWrite, ...]
    stored: tuple[KvWrite, ...]
    announced: Publish
    searchable: tuple[Call, ...]

    @property
    def all(self) -> list[Call]:
        """Every call in stage order: the order on the wire, so a batch cut short leaves a stage prefix."""
        return [*self.stored, self.announced, *self.searchable]

    def creation_outcomes(self, answers: Sequence[Answer]) -> tuple[list[int | None], list[int | None]]:
        """Split the answers of ``stored`` into the resources' revisions and the match keys' outcomes."""
        revisions = [a if isinstance(a, int) else None for a in answers[: len(self.stored)]]
        # After the resources comes the facts' create, then one create per match key.
        return revisions[: len(self.resources)], revisions[len(self.resources) + 1 :]


def _writes(state: GatewayState, intake: Intake) -> _Writes:
    parsed, now, scope = intake.parsed, intake.received_at, intake.scope
    resources = tuple(state.store.creation(r, scope, now) for r in parsed.resources)
    # The facts are created, never replaced: on a repeat, a later Observation's facts stay. The
    # possible-duplicate index rides with the creates (duplicates.py); only keys that existed already
    # then need a read and a compare-and-set, and Flags when they match.
    stored = (
        *resources,
        facts_creation(parsed.referral_id, parsed.facts),
        *first_sighting_writes(state, parsed, now),
    )
    event = referral_pb2.ReferralReceived(
        event_id=_received_event_id(parsed.referral_id),
        occurred_at=to_timestamp(now),
        referral_id=parsed.referral_id,
        facts=parsed.facts,
    )
    # Audited before the answer, as every write is. The referral's own id is the interaction's: fresh
    # per referral, and the same when a sweep or a retry completes it again, so the AuditEvent is
    # written once.
    audit = audit_record(
        state,
        intake.principal,
        "C",
        list(parsed.locations),
        purpose="COC",
        at=now,
        request_id=intake.request_id,
        interaction_id=parsed.referral_id,
        patient=f"Patient/{parsed.patient_id}",
    )
    index = [state.store.index_entry(*entry) for entry in search_entries(parsed, intake.principal)]
    return _Writes(
        resources=resources,
        stored=stored,
        announced=bus.event_call(topology.REFERRAL_RECEIVED, event, msg_id=event.event_id),
        searchable=(*index, *audit.writes, audit.publish_call()),
    )


async def store(state: GatewayState, intake: Intake) -> StoredAnswer:
    """Write the intake record and every write of the referral, with one wait.

    The calls go out in stage order (record, stored, announced, searchable) on one connection, so a
    death part way leaves what a death between stages of ``complete`` leaves, and the sweeper
    finishes it the same way (ADR 13). If the batch fails, the referral is completed in stages as
    ``complete`` does, first making sure its record is there.
    """
    with _announcing(intake):
        return await _store(state, intake)


async def _store(state: GatewayState, intake: Intake) -> StoredAnswer:
    writes = _writes(state, intake)
    record = _record_write(state, intake)
    try:
        answers = await send_all(state.js, [record, *writes.all])
    except Exception as error:
        log_event(
            _log,
            "intake batch failed; completing it in stages",
            logging.WARNING,
            referral_id=intake.parsed.referral_id,
            error=type(error).__name__,
        )
        # The batch may or may not have stored the record: created now or there already, alike.
        await write_all(state.js, [record])
        return await _complete(state, intake, writes)
    if answers[0] is None:
        _record_exists(intake)
    revisions, sightings = writes.creation_outcomes(answers[1:])
    return await _linked_and_answered(state, intake, writes, revisions, sightings)


async def complete(state: GatewayState, intake: Intake) -> StoredAnswer:
    """Do every write of the referral in three acknowledged stages and return the 201 answer.

    Each write is idempotent: safe to repeat. The sweeper and a retry use this to finish a referral a
    dead request left, as ``store`` does when its one batch fails.
    """
    with _announcing(intake):
        return await _complete(state, intake, _writes(state, intake))


def _announcing(intake: Intake) -> contextlib.AbstractContextManager[object]:
    """Return the span of the referral's ``ReferralReceived`` publish, open while its intake is sent."""
    return bus.producer_span(topology.REFERRAL_RECEIVED, _received_event_id(intake.parsed.referral_id))


def _received_event_id(referral_id: str) -> str:
    # Derived: a completion repeated publishes the same id, which the stream's duplicate window drops.
    return derived_id("referral-received", referral_id)


async def _complete(state: GatewayState, intake: Intake, writes: _Writes) -> StoredAnswer:
    # Stage 1: the resources, the facts and the match keys. Stage 2: announced only once everything
    # it names is stored. Stage 3: searchable only once announced.
    answers = await send_all(state.js, writes.stored)
    await send_all(state.js, [writes.announced])
    await send_all(state.js, writes.searchable)
    revisions, sightings = writes.creation_outcomes(answers)
    return await _linked_and_answered(state, intake, writes, revisions, sightings)


async def _linked_and_answered(
    state: GatewayState,
    intake: Intake,
    writes: _Writes,
    revisions: Sequence[int | None],
    sightings: Sequence[int | None],
) -> StoredAnswer:
    """Link the referral to earlier ones of what may be the same child, audit the Flags, answer."""
    parsed = intake.parsed
    flags = await link_possible_duplicates(state, parsed, intake.received_at, sightings)
    if flags:
        # Their own interaction (one id per referral, so a repeat writes nothing new): the Flags are
        # known only once the referral's writes are acknowledged.
        audit = audit_record(
            state,
            intake.principal,
            "C",
            flags,
            purpose="COC",
            at=intake.received_at,
            request_id=intake.request_id,
            interaction_id=derived_id("possible-duplicates", parsed.referral_id),
            patient=f"Patient/{parsed.patient_id}",
        )
        await send_all(state.js, [*audit.writes, audit.publish_call()])
    log_event(
        _log,
        "referral accepted",
        referral_id=parsed.referral_id,
        organisation=intake.principal.organisation_id,
        possible_duplicates=len(flags),
    )
    return await _answer(state, intake, writes.resources, revisions)


async def _answer(
    state: GatewayState, intake: Intake, creations: Sequence[KvWrite], revisions: Sequence[int | None]
) -> StoredAnswer:
    parsed = intake.parsed
    location = f"ServiceRequest/{parsed.referral_id}"
    if intake.shape == "transaction":
        body = transaction_response_bundle(parsed.locations, last_modified=intake.received_at)
        return StoredAnswer(201, body, {"Location": location})
    [at] = [i for i, r in enumerate(parsed.resources) if r["resourceType"] == "ServiceRequest"]
    revision = revisions[at]
    stored: StoredResource | None
    if revision is not None:
        stored = state.store.stored(creations[at], revision)
    else:  # completed before (a repeat): answer with what is stored
        stored = await state.store.read("ServiceRequest", parsed.referral_id)
    if stored is None:
        raise RuntimeError(f"{location} vanished while its intake was completed")
    headers = {"Location": f"{location}/_history/{stored.version}", "ETag": f'W/"{stored.version}"'}
    return StoredAnswer(201, stored.resource, headers)


def search_entries(parsed: ParsedReferral, principal: Principal) -> list[tuple[str, str, str, str]]:
    """Return the (type, param, value, id) search entries of a new referral."""
    referral = f"ServiceRequest/{parsed.referral_id}"
    found = [("ServiceRequest", "patient", f"Patient/{parsed.patient_id}", parsed.referral_id)]
    if parsed.referrer_identifier:
        found += [
            (
                "ServiceRequest",
                "identifier",
                identifier_token(principal.organisation_id, parsed.referrer_identifier),
                parsed.referral_id,
            ),
            # Unscoped by organisation: the LA and operators search by a referrer's case number too.
            (
                "ServiceRequest",
                "identifier-any",
                identifier_token("", parsed.referrer_identifier),
                parsed.referral_id,
            ),
        ]
    # Facts in the Bundle belong to the referral like those posted later (observations.py indexes those).
    found += [
        ("Observation", "based-on", referral, str(r["id"]))
        for r in parsed.resources
        if r["resourceType"] == "Observation"
    ]
    return found


def identifier_token(organisation_id: str, identifier: str) -> str:
    """Return the index token of a referrer's own identifier (``system|value``), within its organisation."""
    # Hashed: identifiers may hold any character, and the index key must be one safe KV token.
    return hashlib.sha256(f"{organisation_id}\x1f{identifier}".encode()).hexdigest()[:40]


async def finish(state: GatewayState, intake: Intake, answer: StoredAnswer) -> None:
    """Give the answer to every idempotency key still waiting on this referral, then drop the record."""
    await asyncio.gather(
        *(
            complete_if_pending(state.idempotency, key, intake.parsed.referral_id, answer)
            for key in intake.claims
        )
    )
    await forget(state, intake.key)


async def forget(state: GatewayState, key: str) -> None:
    """Purge an intake record with its history, so listings of the pending ones stay short."""
    await state.js.purge_stream(
        f"KV_{_bucket_name(state.idempotency)}", subject=f"$KV.{_bucket_name(state.idempotency)}.{key}"
    )


# What runs after the answer; kept referenced here so the loop does not drop it half done.
_background: set[asyncio.Task[None]] = set()


def finish_later(state: GatewayState, intake: Intake, answer: StoredAnswer) -> None:
    """After the answer, off its path: ``finish`` the intake (its keys get the answer, the record goes).

    A copy of the request waiting on one of its keys gets the answer a moment after the referrer does
    (ADR 14). The record goes only once every key has its answer: if anything here fails, the record
    stays, and the sweeper (or a retry once a key's claim is stale) answers the keys and purges it.
    """
    task = asyncio.create_task(_finish_quietly(state, intake, answer))
    _background.add(task)
    task.add_done_callback(_background.discard)


async def finish_background() -> None:
    """Wait for what still runs after answers (at shutdown: so a clean stop leaves nothing to sweep)."""
    await asyncio.gather(*_background, return_exceptions=True)


async def _finish_quietly(state: GatewayState, intake: Intake, answer: StoredAnswer) -> None:
    try:
        await finish(state, intake, answer)
    except Exception as error:  # the sweeper finds the record and finishes it: no loss
        log_event(
            _log,
            "intake not finished after its answer; the sweeper finishes it",
            logging.WARNING,
            referral_id=intake.parsed.referral_id,
            error=type(error).__name__,
        )


async def load(state: GatewayState, referral_id: str) -> Intake | None:
    """Return the intake record of a referral, or None when there is none (never written, or done)."""
    try:
        entry = await state.idempotency.get(f"{PREFIX}{referral_id}")
    except KeyNotFoundError:
        return None
    return Intake.from_json(entry.value) if entry.value else None


async def complete_stale_claim(state: GatewayState, referral_id: str) -> StoredAnswer | None:
    """Finish the intake a dead request left behind for ``referral_id``; None if it wrote nothing."""
    intake = await load(state, referral_id)
    if intake is None:
        return None
    answer = await complete(state, intake)
    await finish(state, intake, answer)
    log_event(_log, "intake completed for a retry", referral_id=referral_id)
    return answer


async def sweep(state: GatewayState, older_than: timedelta = DEFAULT_SWEEP_AFTER) -> int:
    """Complete every intake record older than ``older_than``; return how many were completed.

    A record that cannot be read is logged and left for an operator; one that fails to complete is
    retried by the next sweep.
    """
    done = 0
    cutoff = state.clock() - older_than
    for key in await list_bucket_keys(state.idempotency, f"{PREFIX}*"):
        try:
            entry = await state.idempotency.get(key)
        except KeyNotFoundError:
            continue  # purged or deleted since the listing
        if not entry.value:
            continue
        try:
            intake = Intake.from_json(entry.value)
        except (ValueError, KeyError, TypeError) as error:
            log_event(_log, "unreadable intake record", logging.ERROR, key=key, error=type(error).__name__)
            continue
        if intake.received_at > cutoff:
            continue
        try:
            answer = await complete(state, intake)
            await finish(state, intake, answer)
        except Exception as error:
            log_event(
                _log,
                "intake not completed; next sweep retries",
                logging.WARNING,
                referral_id=intake.parsed.referral_id,
                error=type(error).__name__,
            )
            continue
        log_event(_log, "orphaned intake completed", referral_id=intake.parsed.referral_id)
        done += 1
    return done


async def sweep_forever(
    state: GatewayState, every: timedelta, older_than: timedelta = DEFAULT_SWEEP_AFTER
) -> None:
    """Sweep at once, then every ``every``, until cancelled (the service stops)."""
    while True:
        try:
            await sweep(state, older_than)
        except Exception as error:  # NATS away: tried again next time
            log_event(_log, "intake sweep failed", logging.WARNING, error=type(error).__name__)
        await asyncio.sleep(every.total_seconds())


def _bucket_name(bucket: KeyValue) -> str:
    # nats-py keeps a bound bucket's name only in a private attribute.
    return bucket_name(bucket)
