"""Linking a new referral to earlier referrals of what may be the same child (written at intake).

`fhir.duplicates` decides; this module keeps the match-key index and stores the Flags. The index is
one record per match key in the resource store (type ``DuplicateKey``, served by no route), listing
the recent referrals under that key. It is read by key and updated by compare-and-set: no search
consumer per intake (a KV watch each time exhausts the server's consumer limit under load), and two
referrals of one child arriving at the same moment are serialised, so the second always sees the first.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

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


async def link_possible_duplicates(state: GatewayState, parsed: ParsedReferral, now: datetime) -> list[str]:
    """Record the new referral under its match keys and flag each earlier one it may duplicate.

    Returns the references of the Flags written (none in the usual case).
    """
    new = ReferralSighting(parsed.referral_id, parsed.patient_id, now, frozenset(parsed.facts.nationalities))
    earlier: dict[str, ReferralSighting] = {}
    for seen in await asyncio.gather(*(_record(state, key, new, now) for key in match_keys(parsed.facts))):
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
        record: dict[str, Any] = {
            "resourceType": KEY_TYPE,
            "id": key,
            "sightings": [s.to_json() for s in with_sighting(kept, new)],
        }
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
