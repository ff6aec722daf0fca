"""Notification policy as data: who must know what, how fast, and on which source.

One YAML file per event type in `services/notifier/policies/`, plus `fields.yaml`, the vocabulary of
facts a payload may carry. Everything is checked when loaded: an unknown key, role, field, urgency or
channel is an error, and so is a projection that gives a location or placement field to a role that
may not have it. Changing who is told is a data change that the loader and the tests then guard.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from services.notifier.domain.durations import DurationError, Period, parse_duration, parse_period

EVENT_TYPES: tuple[str, ...] = (
    "referral-received",
    "referral-routed",
    "task-rejected",
    "no-capacity",
    "emergency-without-bed",
    "eligibility-changed",
    "exit-due",
    "missing-episode-reported",
    "review-due",
    "task-not-acknowledged",
    "referral-closed",
)
"""Every event type the notifier has a policy for; each must have exactly one file."""


_E = TypeVar("_E", bound=StrEnum)


class PolicyError(ValueError):
    """Raised when the policy data is invalid; the message names the file and the problem."""


class RecipientRole(StrEnum):
    """Who a notification is for, relative to the event (resolved to organisations later)."""

    LA_CHILDRENS_SERVICES = "la-childrens-services"
    LA_EDT = "la-edt"
    TASK_OWNER = "task-owner"
    REFERRER = "referrer"
    POLICE = "police"
    ICTG = "ictg"
    NRM_COMPETENT_AUTHORITY = "nrm-competent-authority"
    LEAVING_CARE_TEAM = "leaving-care-team"
    ON_CALL_MANAGER = "on-call-manager"


class Urgency(StrEnum):
    """How urgent a notification is; the order is immediate, urgent, routine."""

    IMMEDIATE = "immediate"
    URGENT = "urgent"
    ROUTINE = "routine"

    @property
    def rank(self) -> int:
        """Return 0 for the most urgent level."""
        return list(Urgency).index(self)


class Channel(StrEnum):
    """How a notification reaches its recipient (matches haven.notification.v1.Channel)."""

    REST_HOOK = "rest-hook"
    NATS = "nats"
    EMAIL = "email"


class Basis(StrEnum):
    """Whether a source states the rule or the project decided it where the sources are silent."""

    STATED = "stated"
    DECISION = "decision"


class FieldKind(StrEnum):
    """What a payload field may hold: ids, codes, dates, counts, flags; never free text."""

    ID = "id"
    IDS = "ids"
    CODE = "code"
    CODES = "codes"
    DATE = "date"
    DATETIME = "datetime"
    BOOL = "bool"
    COUNT = "count"
    CODE_COUNTS = "code-counts"


class Anchor(StrEnum):
    """The date a scheduled event is counted from.

    There is no exit-date anchor: eligibility owns exit dates and publishes ExitApproaching, so a
    schedule here would alert twice.
    """

    PLACEMENT_START = "placement-start"
    MISSING_SINCE = "missing-since"
    TASK_ROUTED = "task-routed"


@dataclass(frozen=True, slots=True)
class Sensitivity:
    """A class of fields that only some roles may receive."""

    name: str
    roles: frozenset[RecipientRole]
    why: str
    citation: str


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One fact a payload may carry."""

    name: str
    kind: FieldKind
    description: str
    sensitivity: str = ""


@dataclass(frozen=True, slots=True)
class FieldVocabulary:
    """Every field a projection may name, and the sensitivity classes."""

    fields: Mapping[str, FieldSpec]
    sensitivities: Mapping[str, Sensitivity]


@dataclass(frozen=True, slots=True)
class RecipientRule:
    """One role to notify for an event type: projection, urgency, deadline, channel and source."""

    role: RecipientRole
    projection: str
    fields: tuple[str, ...]
    urgency: Urgency
    deadline: timedelta
    deadline_text: str
    channel: Channel
    required: bool
    basis: Basis
    citation: str
    # Fact name -> values that make the rule apply; every condition must hold (empty = always).
    when: Mapping[str, frozenset[str]]

    def applies(self, facts: Mapping[str, Any]) -> bool:
        """Return whether every `when` condition holds for these facts (a missing fact fails)."""
        return all(_matches(facts.get(name), allowed) for name, allowed in self.when.items())


def _as_code(value: Any) -> str:
    # Flags are written "true"/"false" in YAML conditions; compare them in that form.
    return str(value).lower() if isinstance(value, bool) else str(value)


def _matches(value: Any, allowed: frozenset[str]) -> bool:
    if value is None:
        return False
    if isinstance(value, list | tuple | frozenset | set):
        return any(_as_code(v) in allowed for v in value)
    return _as_code(value) in allowed


@dataclass(frozen=True, slots=True)
class ScheduleEntry:
    """When an event of this type is raised, counted from an anchor date (e.g. 72 h after placement)."""

    schedule_id: str
    anchor: Anchor
    offset: Period
    notice: timedelta
    notice_text: str
    confirm_by_person: bool
    basis: Basis
    citation: str
    # Fact name -> values that make the entry apply (e.g. only accommodation placements); empty = always.
    when: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def applies(self, facts: Mapping[str, Any]) -> bool:
        """Return whether every `when` condition holds for these facts (a missing fact fails)."""
        return all(_matches(facts.get(name), allowed) for name, allowed in self.when.items())


@dataclass(frozen=True, slots=True)
class NotificationPolicy:
    """Who is told about one event type, with what, how fast, and why."""

    event_type: str
    version: int
    summary: str
    citation: str
    projections: Mapping[str, tuple[str, ...]]
    recipients: tuple[RecipientRule, ...]
    schedule: tuple[ScheduleEntry, ...]
    path: str

    def rules_for(self, role: RecipientRole | str) -> tuple[RecipientRule, ...]:
        """Return the rules for one role, in file order."""
        return tuple(r for r in self.recipients if r.role == RecipientRole(role))

    def schedule_entry(self, schedule_id: str) -> ScheduleEntry | None:
        """Return the schedule entry with this id, if any."""
        return next((s for s in self.schedule if s.schedule_id == schedule_id), None)


_POLICY_KEYS = {"event_type", "version", "summary", "citation", "projections", "recipients", "schedule"}
_RULE_KEYS = {"role", "projection", "urgency", "deadline", "channel", "required", "basis", "citation", "when"}
_SCHEDULE_KEYS = {"id", "anchor", "offset", "notice", "confirm_by_person", "basis", "citation", "when"}
_FIELD_KEYS = {"kind", "description", "sensitivity"}
# A condition compares codes; ids, dates and counts are not categories to branch on.
_CONDITION_KINDS = {FieldKind.CODE, FieldKind.CODES, FieldKind.BOOL}


def _check_keys(where: str, entry: Any, allowed: set[str], required: set[str]) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise PolicyError(f"{where}: expected a mapping, got {type(entry).__name__}")
    unknown = set(entry) - allowed
    if unknown:
        raise PolicyError(f"{where}: unknown field(s) {sorted(unknown)}")
    missing = required - set(entry)
    if missing:
        raise PolicyError(f"{where}: missing field(s) {sorted(missing)}")
    return entry


def _enum(where: str, kind: type[_E], value: Any) -> _E:
    try:
        return kind(str(value))
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise PolicyError(f"{where}: unknown {kind.__name__} {value!r} (one of: {allowed})") from None


def _citation(where: str, entry: dict[str, Any]) -> str:
    text = str(entry.get("citation", "")).strip()
    if not text:
        raise PolicyError(f"{where}: a citation is required")
    return text


def parse_fields(data: Any, where: str = "fields.yaml") -> FieldVocabulary:
    """Parse the field vocabulary."""
    top = _check_keys(where, data, {"sensitivities", "fields"}, {"sensitivities", "fields"})
    sensitivities = {}
    for name, entry in top["sensitivities"].items():
        spot = f"{where}: sensitivity {name}"
        body = _check_keys(spot, entry, {"roles", "why", "citation"}, {"roles", "why", "citation"})
        roles = frozenset(_enum(spot, RecipientRole, r) for r in body["roles"])
        sensitivities[name] = Sensitivity(
            name, roles, " ".join(str(body["why"]).split()), _citation(spot, body)
        )
    fields = {}
    for name, entry in top["fields"].items():
        spot = f"{where}: field {name}"
        body = _check_keys(spot, entry, _FIELD_KEYS, {"kind", "description"})
        sensitivity = str(body.get("sensitivity", ""))
        if sensitivity and sensitivity not in sensitivities:
            raise PolicyError(f"{spot}: unknown sensitivity {sensitivity!r}")
        fields[name] = FieldSpec(
            name, _enum(spot, FieldKind, body["kind"]), str(body["description"]), sensitivity
        )
    return FieldVocabulary(fields, sensitivities)


def _conditions(where: str, raw: Any, vocabulary: FieldVocabulary) -> dict[str, frozenset[str]]:
    """Parse a `when` mapping: declared code or flag fields, each with a non-empty list of values."""
    if raw is not None and not isinstance(raw, dict):
        raise PolicyError(f"{where}: when must map field names to lists of values")
    when: dict[str, frozenset[str]] = {}
    for name, values in (raw or {}).items():
        spec = vocabulary.fields.get(name)
        if spec is None or spec.kind not in _CONDITION_KINDS:
            raise PolicyError(f"{where}: condition on {name!r}, which is not a declared code or flag field")
        if not isinstance(values, list) or not values:
            raise PolicyError(f"{where}: condition on {name!r} needs a non-empty list of values")
        when[name] = frozenset(_as_code(v) for v in values)
    return when


def _parse_rule(
    where: str, entry: Any, projections: Mapping[str, tuple[str, ...]], vocabulary: FieldVocabulary
) -> RecipientRule:
    body = _check_keys(where, entry, _RULE_KEYS, _RULE_KEYS - {"when"})
    role = _enum(where, RecipientRole, body["role"])
    where = f"{where} ({role})"
    projection = str(body["projection"])
    if projection not in projections:
        raise PolicyError(f"{where}: unknown projection {projection!r}")
    fields = projections[projection]
    for name in fields:
        sensitivity = vocabulary.fields[name].sensitivity
        if sensitivity and role not in vocabulary.sensitivities[sensitivity].roles:
            raise PolicyError(f"{where}: field {name!r} is {sensitivity}-sensitive and may not go to {role}")
    try:
        deadline = parse_duration(str(body["deadline"]))
    except DurationError as exc:
        raise PolicyError(f"{where}: {exc}") from None
    channel = _enum(where, Channel, body["channel"])
    if role is RecipientRole.ON_CALL_MANAGER and channel is not Channel.EMAIL:
        raise PolicyError(f"{where}: the on-call manager is a person and is reached by email")
    when = _conditions(where, body.get("when"), vocabulary)
    if not isinstance(body["required"], bool):
        raise PolicyError(f"{where}: required must be true or false")
    return RecipientRule(
        role=role,
        projection=projection,
        fields=fields,
        urgency=_enum(where, Urgency, body["urgency"]),
        deadline=deadline,
        deadline_text=str(body["deadline"]),
        channel=channel,
        required=body["required"],
        basis=_enum(where, Basis, body["basis"]),
        citation=_citation(where, body),
        when=when,
    )


def _parse_schedule(where: str, entry: Any, vocabulary: FieldVocabulary) -> ScheduleEntry:
    body = _check_keys(where, entry, _SCHEDULE_KEYS, {"id", "anchor", "offset", "basis", "citation"})
    where = f"{where} {body['id']}"
    try:
        offset = parse_period(str(body["offset"]))
        notice = parse_duration(str(body["notice"])) if "notice" in body else timedelta(0)
    except DurationError as exc:
        raise PolicyError(f"{where}: {exc}") from None
    return ScheduleEntry(
        schedule_id=str(body["id"]),
        anchor=_enum(where, Anchor, body["anchor"]),
        offset=offset,
        notice=notice,
        notice_text=str(body.get("notice", "")),
        confirm_by_person=bool(body.get("confirm_by_person", False)),
        basis=_enum(where, Basis, body["basis"]),
        citation=_citation(where, body),
        when=_conditions(where, body.get("when"), vocabulary),
    )


def parse_policy(data: Any, path: str, vocabulary: FieldVocabulary) -> NotificationPolicy:
    """Parse and check one policy file's content; `path` names it in errors."""
    required = _POLICY_KEYS - {"schedule"}
    body = _check_keys(path, data, _POLICY_KEYS, required)
    event_type = str(body["event_type"])
    if Path(path).stem != event_type:
        raise PolicyError(f"{path}: event_type {event_type!r} does not match the file name")
    if event_type not in EVENT_TYPES:
        raise PolicyError(f"{path}: unknown event type {event_type!r}")
    projections: dict[str, tuple[str, ...]] = {}
    for name, fields in (body["projections"] or {}).items():
        if not isinstance(fields, list) or len(set(fields)) != len(fields):
            raise PolicyError(f"{path}: projection {name}: expected a list of distinct field names")
        unknown = [f for f in fields if f not in vocabulary.fields]
        if unknown:
            raise PolicyError(f"{path}: projection {name}: unknown field(s) {unknown}")
        projections[str(name)] = tuple(str(f) for f in fields)
    rules = tuple(
        _parse_rule(f"{path}: recipient {i + 1}", entry, projections, vocabulary)
        for i, entry in enumerate(body["recipients"] or [])
    )
    if not rules:
        raise PolicyError(f"{path}: no recipients")
    unused = set(projections) - {r.projection for r in rules}
    if unused:
        raise PolicyError(f"{path}: projection(s) {sorted(unused)} used by no recipient")
    schedule = tuple(_parse_schedule(f"{path}: schedule", e, vocabulary) for e in body.get("schedule") or [])
    ids = [s.schedule_id for s in schedule]
    if len(set(ids)) != len(ids):
        raise PolicyError(f"{path}: duplicate schedule id")
    version = body["version"]
    if not isinstance(version, int) or version < 1:
        raise PolicyError(f"{path}: version must be a positive integer")
    return NotificationPolicy(
        event_type=event_type,
        version=version,
        summary=" ".join(str(body["summary"]).split()),
        citation=_citation(path, body),
        projections=projections,
        recipients=rules,
        schedule=schedule,
        path=Path(path).name,
    )


def _default_folder() -> Traversable:
    return resources.files("services.notifier").joinpath("policies")


def _read_yaml(file: Traversable) -> Any:
    return yaml.safe_load(file.read_text(encoding="utf-8"))


def load_fields(folder: Traversable | None = None) -> FieldVocabulary:
    """Load `fields.yaml` from the policy folder (the packaged one by default)."""
    return parse_fields(_read_yaml((folder or _default_folder()).joinpath("fields.yaml")))


def load_policies(folder: Traversable | None = None) -> dict[str, NotificationPolicy]:
    """Load and check every policy file; return them by event type.

    Raises PolicyError for any invalid file, an unknown event type, or an event type without a file.
    The packaged policies are read once and cached.
    """
    if folder is None:
        return dict(_packaged_policies())
    return _load(folder)


@cache
def _packaged_policies() -> dict[str, NotificationPolicy]:
    return _load(_default_folder())


@cache
def packaged_fields() -> FieldVocabulary:
    """Return the packaged field vocabulary, read once."""
    return load_fields()


def _load(folder: Traversable) -> dict[str, NotificationPolicy]:
    vocabulary = load_fields(folder)
    policies: dict[str, NotificationPolicy] = {}
    for file in sorted(folder.iterdir(), key=lambda f: f.name):
        if not file.name.endswith(".yaml") or file.name == "fields.yaml":
            continue
        policy = parse_policy(_read_yaml(file), file.name, vocabulary)
        policies[policy.event_type] = policy
    missing = set(EVENT_TYPES) - set(policies)
    if missing:
        raise PolicyError(f"no policy file for event type(s) {sorted(missing)}")
    return {event_type: policies[event_type] for event_type in EVENT_TYPES}
