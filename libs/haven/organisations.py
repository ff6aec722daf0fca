"""The organisations Haven knows and the roles each may take (data in `data/organisations.yaml`).

Owned by the shared kit because the gateway (who may call), the router (who owns a task) and the
notifier (who is told) all read the same registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any

import yaml


class Role(StrEnum):
    """What a caller may do; carried in its bearer token."""

    REFERRER = "referrer"
    LA_PLATFORM = "la-platform"
    PROVIDER = "provider"
    OPERATOR = "operator"
    ADMIN = "admin"


@dataclass(frozen=True)
class Organisation:
    """One organisation: a referrer, a local authority, a provider or the operator."""

    id: str
    name: str
    kind: str
    roles: frozenset[Role]
    referrer_kind: str = ""
    gss_codes: frozenset[str] = field(default_factory=frozenset)


class UnknownOrganisationError(LookupError):
    """Raised for an organisation id that is not in the registry."""


def _parse(entry: dict[str, Any]) -> Organisation:
    return Organisation(
        id=str(entry["id"]),
        name=str(entry["name"]),
        kind=str(entry["kind"]),
        roles=frozenset(Role(r) for r in entry.get("roles", [])),
        referrer_kind=str(entry.get("referrer_kind", "")),
        gss_codes=frozenset(str(c) for c in entry.get("gss_codes", [])),
    )


@cache
def load_organisations() -> dict[str, Organisation]:
    """Return every known organisation by id, read once from the packaged data file."""
    text = resources.files("haven").joinpath("data/organisations.yaml").read_text(encoding="utf-8")
    entries = yaml.safe_load(text)["organisations"]
    return {org.id: org for org in map(_parse, entries)}


def get_organisation(organisation_id: str) -> Organisation:
    """Return one organisation, or raise UnknownOrganisationError."""
    try:
        return load_organisations()[organisation_id]
    except KeyError:
        raise UnknownOrganisationError(organisation_id) from None
