"""Possible duplicate referrals: the same child referred by two senders, linked for a person to confirm.

Police and the Emergency Duty Team often refer the same child the same night, each knowing a little.
Haven never merges two referrals (a wrong merge would hide a child); it links the later one to the
earlier one with a `Flag` that the responsible local authority and operators see and confirm.

The matching key (docs/fhir/profile.md, "Possible duplicates"):
- the same responsible local authority (GSS code), the same `Patient.gender` and the same date of
  birth in any statement (claimed, assessed, documented); one index token per statement;
- nationalities that do not contradict: when both referrals state nationalities they must share one,
  an unstated nationality (unknown) never rules a match out;
- received within 72 hours of each other.
Pure functions; `services.gateway.duplicates` does the index reads and writes around them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from haven.kit.ids import derived_id
from haven.referral.v1 import referral_pb2 as pb

from . import profile as p

MATCH_WINDOW: Final = timedelta(hours=72)
# Keep at most this many referrals per match key (the most recent): each is already linked to the
# ones before it, and a flood of identical test referrals must not grow a key without bound.
MAX_KEPT: Final = 5
CS_REFERRAL_FLAG: Final = f"{p.BASE}/CodeSystem/referral-flag"
POSSIBLE_DUPLICATE: Final = "possible-duplicate"
EXT_POSSIBLE_DUPLICATE_OF: Final = f"{p.BASE}/StructureDefinition/possible-duplicate-of"
EXT_FLAGGED_REFERRAL: Final = f"{p.BASE}/StructureDefinition/flagged-referral"
_FLAG_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/flag-category"


@dataclass(frozen=True)
class ReferralSighting:
    """One referral as the matcher sees it: ids, when Haven received it and what it says of the child."""

    referral_id: str
    patient_id: str
    received: datetime
    nationalities: frozenset[str]

    def to_json(self) -> dict[str, Any]:
        """Return the sighting as kept in the match-key record."""
        return {
            "referral": self.referral_id,
            "patient": self.patient_id,
            "received": self.received.isoformat(),
            "nationalities": sorted(self.nationalities),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReferralSighting:
        """Read a sighting written by ``to_json``."""
        return cls(
            str(data["referral"]),
            str(data["patient"]),
            datetime.fromisoformat(str(data["received"])),
            frozenset(data.get("nationalities", [])),
        )


def with_sighting(kept: list[ReferralSighting], new: ReferralSighting) -> list[ReferralSighting]:
    """Return the sightings to keep under a key once ``new`` is added: the window's most recent few."""
    recent = [
        s for s in kept if new.received - s.received <= MATCH_WINDOW and s.referral_id != new.referral_id
    ]
    return [*recent, new][-MAX_KEPT:]


def match_keys(facts: pb.ReferralFacts) -> list[str]:
    """Return the index tokens of a referral: one per date-of-birth statement; none without LA or DOB.

    Hashed so the index holds no date of birth in the clear (key names show up in NATS tooling).
    """
    if not facts.local_authority_gss or not facts.dates_of_birth:
        return []
    dates = sorted({d.date for d in facts.dates_of_birth if d.date})
    return [
        hashlib.sha256(f"{facts.local_authority_gss}\x1f{facts.sex}\x1f{day}".encode()).hexdigest()[:40]
        for day in dates
    ]


def may_be_same_child(new: ReferralSighting, earlier: ReferralSighting) -> bool:
    """Return whether two referrals that share a match key should be linked for a person to check."""
    # Referrals naming the same Patient (a re-referral of a known child) are linked by their subject.
    if new.referral_id == earlier.referral_id or new.patient_id == earlier.patient_id:
        return False
    if abs(new.received - earlier.received) > MATCH_WINDOW:
        return False
    # Unknown nationality is absence, never a difference (profile: "Unknown is absence").
    return not (new.nationalities and earlier.nationalities) or bool(
        new.nationalities & earlier.nationalities
    )


def possible_duplicate_flag(second: ReferralSighting, first: ReferralSighting) -> dict[str, Any]:
    """Return the Flag linking a referral (`second`) to one received before it (`first`).

    Its id is derived from the pair, so a retried intake writes the same Flag again, not another.
    """
    return {
        "resourceType": "Flag",
        "id": derived_id(POSSIBLE_DUPLICATE, first.referral_id, second.referral_id),
        "extension": [
            {
                "url": EXT_FLAGGED_REFERRAL,
                "valueReference": {"reference": f"ServiceRequest/{second.referral_id}"},
            },
            {
                "url": EXT_POSSIBLE_DUPLICATE_OF,
                "valueReference": {"reference": f"ServiceRequest/{first.referral_id}"},
            },
        ],
        "status": "active",
        "category": [{"coding": [{"system": _FLAG_CATEGORY, "code": "admin"}]}],
        "code": {
            "coding": [
                {
                    "system": CS_REFERRAL_FLAG,
                    "code": POSSIBLE_DUPLICATE,
                    "display": "Possible duplicate referral of the same child: confirm, never merged",
                }
            ]
        },
        "subject": {"reference": f"Patient/{second.patient_id}"},
        "period": {"start": second.received.isoformat()},
    }
