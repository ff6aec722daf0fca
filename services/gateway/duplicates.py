"""Linking a new referral to earlier referrals of what may be the same child (written at intake).

`fhir.duplicates` decides; this module keeps the match-key index and stores the Flags. The index is
one record per match key in the resource store (type ``DuplicateKey``, served by no route), listing
the recent referrals under that key. It is read by key and updated by compare-and-set: no search
consumer per intake (a KV watch each time exhausts the server's consumer limit under load), and two
referrals of one child arriving at the same moment are serialised, so the second always sees the first.

Most referrals are of a child no earlier referral shares a key with, so the intake first tries to
create each key's record with this referral as its only sighting (``first_sighting_writes``), in the
same batch as the referral's resources: no read and no round trip of its own. Only a key that exists
already is then read and updated by compare-and-set, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from haven.kit.batch import KvWrite
from haven.kit.resources import AlreadyExistsError, RecordScope, VersionConflictError
from services.gateway.fhir import ParsedReferral
from services.gateway.fhir.duplicates import (
    POSSIBLE_DUPLICATE,
    ReferralSighting,
    match_keys,
    may_be_same_child,
    possible_duplicate_flag,
    with_sighting,
)
from services.gateway.state import GatewayState

KEY_TYPE = "DuplicateKey"
_CAS_ATTEMPTS = 10


def first_sighting_writes(state: GatewayState, parsed: ParsedReferral, now: datetime) -> list[KvWrite]:
    """Return, per match key, the create of its record holding only this referral (for a batch).

    The revisions ``write_all`` gives them go to ``link_possible_duplicates`` as ``created``.
    """
    new = _sighting(parsed, now)
    return [
        state.store.creation(_key_record(key, with_sighting([], new)), RecordScope(), now)
        for key in match_keys(parsed.facts)
    ]


async def link_possible_duplicates(
    state: GatewayState,
    parsed: ParsedReferral,
    now: datetime,
    created: Sequence[int | None] | None = None,
) -> list[str]:
    """Record the new referral under its match keys and flag each earlier one it may duplicate.

    ``created`` holds the outcome of the ``first_sighting_writes`` already sent, one per match key: a
    revision where the record was created (no earlier referral under that key), None where the key
    existed (read it and add this referral by compare-and-set). Without it, every key is read first.
    Returns the references of the Flags written (none in the usual case).
    """
    new = _sighting(parsed, now)
    keys = match_keys(parsed.facts)
    outcomes = list(created) if created is not None else [None] * len(keys)
    if len(outcomes) != len(keys):
        raise ValueError(f"{len(outcomes)} creation outcomes for {len(keys)} match keys")
    existing = [key for key, revision in zip(keys, outcomes, strict=True) if revision is None]
    earlier: dict[str, ReferralSighting] = {}
    # A created record had nothing before this referral: only the keys that existed can link it.
    found = await asyncio.gather(*(_record(state, key, new, now) for key in existing)) if existing else []
    for seen in found:
        earlier.update({s.referral_id: s for s in seen})
    flags = []
    # The LA's record: the responsible LA and operators see it; neither referrer sees the other's
    # referral (the scope names no referrer), nor does any provider.
    scope = RecordScope(local_authority_gss=parsed.facts.local_authority_gss)
    for candidate in earlier.values():
        if not may_be_same_child(new, candidate):
            continue
        flag = possible_duplicate_flag(new, candidate)
        await state.store.put(flag, scope, now)
        indexes = [("code", POSSIBLE_DUPLICATE)] + [
            ("patient", f"Patient/{s.patient_id}") for s in (new, candidate)
        ]
        await asyncio.gather(*(state.store.add_index("Flag", p, v, flag["id"]) for p, v in indexes))
        flags.append(f"Flag/{flag['id']}")
    return flags


async def _record(
    state: GatewayState, key: str, new: ReferralSighting, now: datetime
) -> list[ReferralSighting]:
    """Add ``new`` under ``key`` by compare-and-set; return the sightings that were there before it."""
    for _ in range(_CAS_ATTEMPTS):
        stored = await state.store.read(KEY_TYPE, key)
        kept = [ReferralSighting.from_json(s) for s in stored.resource["sightings"]] if stored else []
        record = _key_record(key, with_sighting(kept, new))
        try:
            if stored is None:
                await state.store.create(record, RecordScope(), now)
            else:
                await state.store.update(record, RecordScope(), now, expected_version=stored.version)
            return kept
        except (AlreadyExistsError, VersionConflictError):
            continue  # another referral under the same key got there first: read it and retry
    # Never refuse a referral for its duplicate check: it is received, only not linked.
    return []


def _sighting(parsed: ParsedReferral, now: datetime) -> ReferralSighting:
    return ReferralSighting(parsed.referral_id, parsed.patient_id, now, frozenset(parsed.facts.nationalities))


def _key_record(key: str, sightings: list[ReferralSighting]) -> dict[str, Any]:
    """Return the ``DuplicateKey`` record of one match key holding ``sightings``."""
    return {"resourceType": KEY_TYPE, "id": key, "sightings": [s.to_json() for s in sightings]}
