"""Projections: each recipient role gets only the fields its allow-list names.

Only ids, codes, dates, counts and flags can be projected.
Facts come in as a flat dict (built from the event by `recipients.py` or by the caller). Every fact name
must be declared in `policies/fields.yaml`, and every value must fit its kind: a value with a space in
an id or code field is refused, because that is how a name or free text would slip into a payload.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any

from services.notifier.domain.policy import (
    FieldKind,
    FieldVocabulary,
    NotificationPolicy,
    RecipientRole,
    RecipientRule,
    load_policies,
    packaged_fields,
)

# No spaces and a bounded length: an id or a code can never carry a sentence.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


class ProjectionError(ValueError):
    """Raised for an undeclared fact, a value that does not fit its kind, or a role not notified."""


def _id(name: str, value: Any, pattern: re.Pattern[str] = _ID) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise ProjectionError(f"{name}: {value!r} is not an id or code (no spaces, no free text)")
    return value


def _list(name: str, value: Any, pattern: re.Pattern[str]) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ProjectionError(f"{name}: expected a list")
    return [_id(name, v, pattern) for v in value]


def _date(name: str, value: Any) -> str:
    if isinstance(value, datetime) or not isinstance(value, date | str):
        raise ProjectionError(f"{name}: expected a date")
    try:
        return (value if isinstance(value, date) else date.fromisoformat(value)).isoformat()
    except ValueError:
        raise ProjectionError(f"{name}: {value!r} is not an ISO date") from None


def _datetime(name: str, value: Any) -> str:
    try:
        moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    except ValueError:
        raise ProjectionError(f"{name}: {value!r} is not an ISO date-time") from None
    if moment.tzinfo is None:
        # A naive time is ambiguous across a clock change; partners must get an absolute instant.
        raise ProjectionError(f"{name}: a date-time needs a time zone")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProjectionError(f"{name}: expected a count (a whole number from 0)")
    return value


def _value(name: str, kind: FieldKind, value: Any) -> Any:
    match kind:
        case FieldKind.ID:
            return _id(name, value)
        case FieldKind.IDS:
            return _list(name, value, _ID)
        case FieldKind.CODE:
            return _id(name, value, _CODE)
        case FieldKind.CODES:
            return _list(name, value, _CODE)
        case FieldKind.DATE:
            return _date(name, value)
        case FieldKind.DATETIME:
            return _datetime(name, value)
        case FieldKind.BOOL:
            if not isinstance(value, bool):
                raise ProjectionError(f"{name}: expected true or false")
            return value
        case FieldKind.COUNT:
            return _count(name, value)
        case FieldKind.CODE_COUNTS:
            if not isinstance(value, Mapping):
                raise ProjectionError(f"{name}: expected a mapping of code to count")
            return {_id(name, k, _CODE): _count(name, v) for k, v in sorted(value.items())}


def check_facts(facts: Mapping[str, Any], vocabulary: FieldVocabulary | None = None) -> None:
    """Raise ProjectionError when a fact is not declared in the field vocabulary."""
    declared = (vocabulary or packaged_fields()).fields
    undeclared = sorted(set(facts) - set(declared))
    if undeclared:
        raise ProjectionError(f"undeclared fact(s) {undeclared}: declare them in policies/fields.yaml first")


def project_fields(
    fields: Iterable[str], facts: Mapping[str, Any], vocabulary: FieldVocabulary | None = None
) -> dict[str, Any]:
    """Return the allowed fields that are present in `facts`, checked and in JSON-ready form.

    A fact that is absent or None is left out rather than sent empty: absence says "not known".
    """
    vocabulary = vocabulary or packaged_fields()
    check_facts(facts, vocabulary)
    payload: dict[str, Any] = {}
    for name in fields:
        value = facts.get(name)
        if value is not None:
            payload[name] = _value(name, vocabulary.fields[name].kind, value)
    return payload


def rule_for(
    policy: NotificationPolicy, role: RecipientRole | str, facts: Mapping[str, Any]
) -> RecipientRule:
    """Return the first rule for `role` whose conditions hold, or raise ProjectionError."""
    rules = policy.rules_for(role)
    if not rules:
        raise ProjectionError(f"{policy.event_type}: role {role} is not notified")
    for rule in rules:
        if rule.applies(facts):
            return rule
    raise ProjectionError(f"{policy.event_type}: role {role} is not notified for these facts")


def project(
    event_type: str,
    role: RecipientRole | str,
    facts: Mapping[str, Any],
    *,
    policies: Mapping[str, NotificationPolicy] | None = None,
) -> dict[str, Any]:
    """Return what `role` is sent about an event of `event_type`: its allow-list applied to `facts`."""
    policies = policies or load_policies()
    if event_type not in policies:
        raise ProjectionError(f"unknown event type {event_type!r}")
    try:
        role = RecipientRole(role)
    except ValueError:
        raise ProjectionError(f"unknown role {role!r}") from None
    return project_fields(rule_for(policies[event_type], role, facts).fields, facts)
