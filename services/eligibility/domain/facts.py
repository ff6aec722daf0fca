"""The child's facts as plain typed values: what the rules read (programmes.md, "Facts the rules read").

`ChildFacts` mirrors `haven.referral.v1.ReferralFacts` with `datetime.date` fields and string enums, so
the engine and its tests need no protobuf. An enum's `UNSPECIFIED` (and a referrer's "unknown") means
the fact is missing: the rules answer "unknown" for it, never a silent "no".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Any


class DateOfBirthBasis(StrEnum):
    """How a date of birth is known; an age assessment wins over the others."""

    UNSPECIFIED = "unspecified"
    DOCUMENTED = "documented"
    CLAIMED = "claimed"
    ASSESSED = "assessed"


class Sex(StrEnum):
    """Sex or gender as recorded by the referrer."""

    UNSPECIFIED = "unspecified"
    MALE = "male"
    FEMALE = "female"
    OTHER = "other"
    UNKNOWN = "unknown"


class TraffickingConcern(StrEnum):
    """The trafficking concern about the child (000 L1766-1768; 004 L809 for "none")."""

    UNSPECIFIED = "unspecified"
    IDENTIFIED = "identified"
    SUSPECTED = "suspected"
    AT_RISK = "at_risk"
    NONE = "none"


class TraffickingRoute(StrEnum):
    """Where the trafficking took place (000 L1504-1505)."""

    UNSPECIFIED = "unspecified"
    INTERNAL = "internal"
    CROSS_BORDER = "cross_border"
    UNKNOWN = "unknown"


class ExploitationType(StrEnum):
    """Exploitation types as the NRM categorises them (000 L195-207)."""

    UNSPECIFIED = "unspecified"
    SEXUAL = "sexual"
    CRIMINAL = "criminal"
    LABOUR = "labour"
    DOMESTIC_SERVITUDE = "domestic_servitude"
    OTHER = "other"
    UNKNOWN = "unknown"


class NrmStatus(StrEnum):
    """The child's status in the National Referral Mechanism."""

    UNSPECIFIED = "unspecified"
    NOT_REFERRED = "not_referred"
    AWAITING_RG = "awaiting_rg"
    RG_POSITIVE = "rg_positive"
    RG_NEGATIVE = "rg_negative"
    CG_POSITIVE = "cg_positive"
    CG_NEGATIVE = "cg_negative"


class Answer(StrEnum):
    """A yes / no answer; unspecified means unknown."""

    UNSPECIFIED = "unspecified"
    YES = "yes"
    NO = "no"


class ReferrerKind(StrEnum):
    """The kind of organisation that referred the child (002 L975)."""

    UNSPECIFIED = "unspecified"
    POLICE = "police"
    EDT = "edt"
    LOCAL_AUTHORITY = "local_authority"
    BORDER_FORCE = "border_force"
    NGO = "ngo"
    HEALTH = "health"
    OTHER = "other"


class Urgency(StrEnum):
    """How soon the child needs a service (002 L973); unspecified reads as routine."""

    UNSPECIFIED = "unspecified"
    ROUTINE = "routine"
    URGENT = "urgent"
    EMERGENCY = "emergency"


class ServiceAsked(StrEnum):
    """The service the referrer asked for; unspecified means any."""

    UNSPECIFIED = "unspecified"
    ANY = "any"
    ICTG = "ictg"
    THERAPEUTIC_SUPPORT = "therapeutic_support"
    SPECIALIST_ACCOMMODATION = "specialist_accommodation"


@dataclass(frozen=True, slots=True)
class DateOfBirthStatement:
    """One statement of the date of birth and how it is known."""

    date: date
    basis: DateOfBirthBasis


@dataclass(frozen=True, slots=True)
class Enrolment:
    """A programme the child is already in, from the date referred to or entering it."""

    programme_id: str
    started_on: date


@dataclass(frozen=True, slots=True)
class ChildFacts:
    """Every coded fact about a child that the rules read; sets make the order of facts irrelevant."""

    child_id: str = ""
    dates_of_birth: frozenset[DateOfBirthStatement] = frozenset()
    sex: Sex = Sex.UNSPECIFIED
    nationalities: frozenset[str] = frozenset()
    trafficking_concern: TraffickingConcern = TraffickingConcern.UNSPECIFIED
    trafficking_route: TraffickingRoute = TraffickingRoute.UNSPECIFIED
    exploitation_types: frozenset[ExploitationType] = frozenset()
    nrm_status: NrmStatus = NrmStatus.UNSPECIFIED
    nrm_decision_date: date | None = None
    asylum_application_made: Answer = Answer.UNSPECIFIED
    asylum_application_date: date | None = None
    parental_responsibility_in_uk: Answer = Answer.UNSPECIFIED
    local_authority_gss: str = ""
    referrer_organisation_id: str = ""
    referrer_kind: ReferrerKind = ReferrerKind.UNSPECIFIED
    urgency: Urgency = Urgency.UNSPECIFIED
    service_asked: ServiceAsked = ServiceAsked.UNSPECIFIED
    referral_date: date | None = None
    enrolments: frozenset[Enrolment] = field(default=frozenset())
    missing_since: date | None = None

    def enrolment_started_on(self, programme_id: str) -> date | None:
        """Return when the child's current stay in `programme_id` started (the latest enrolment)."""
        starts = [e.started_on for e in self.enrolments if e.programme_id == programme_id]
        return max(starts) if starts else None


_ENUM_FIELDS: dict[str, type[StrEnum]] = {
    "sex": Sex,
    "trafficking_concern": TraffickingConcern,
    "trafficking_route": TraffickingRoute,
    "nrm_status": NrmStatus,
    "asylum_application_made": Answer,
    "parental_responsibility_in_uk": Answer,
    "referrer_kind": ReferrerKind,
    "urgency": Urgency,
    "service_asked": ServiceAsked,
}
_DATE_FIELDS = ("nrm_decision_date", "asylum_application_date", "referral_date", "missing_since")


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _dates_of_birth(value: Any) -> frozenset[DateOfBirthStatement]:
    # A bare date is a documented date of birth: the commonest case in rule cases.
    if not isinstance(value, list):
        return frozenset({DateOfBirthStatement(_as_date(value), DateOfBirthBasis.DOCUMENTED)})
    return frozenset(
        DateOfBirthStatement(_as_date(item["date"]), DateOfBirthBasis(item.get("basis", "documented")))
        for item in value
    )


def facts_from_mapping(values: Mapping[str, Any]) -> ChildFacts:
    """Build `ChildFacts` from plain data, as written in rule cases and scenarios (YAML).

    Keys are `ChildFacts` field names, with two shorthands: `date_of_birth: <date>` (documented)
    and `enrolments: {<programme id>: <started on>}`. Unknown keys raise `ValueError`.
    """
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key in ("date_of_birth", "dates_of_birth"):
            kwargs["dates_of_birth"] = _dates_of_birth(value)
        elif key in _ENUM_FIELDS:
            kwargs[key] = _ENUM_FIELDS[key](value)
        elif key in _DATE_FIELDS:
            kwargs[key] = _as_date(value)
        elif key == "nationalities":
            kwargs[key] = frozenset(str(code).upper() for code in _as_list(value))
        elif key == "exploitation_types":
            kwargs[key] = frozenset(ExploitationType(v) for v in _as_list(value))
        elif key == "enrolments":
            kwargs[key] = frozenset(Enrolment(str(p), _as_date(d)) for p, d in dict(value).items())
        elif key in ("child_id", "local_authority_gss", "referrer_organisation_id"):
            kwargs[key] = str(value)
        else:
            raise ValueError(f"unknown fact {key!r}")
    return ChildFacts(**kwargs)


def _as_list(value: Any) -> Iterable[Any]:
    return value if isinstance(value, list | tuple | set | frozenset) else [value]
