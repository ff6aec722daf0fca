"""The organisations Haven knows and the roles each may take (data in `data/organisations.yaml`).

Owned by the shared kit because the gateway (who may call), the router (who owns a task) and the
notifier (who is told) all read the same registry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any

import yaml

_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


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
    # An LA platform that takes its notifications over NATS: the GSS code its partner subjects name.
    nats_gss: str = ""


class UnknownOrganisationError(LookupError):
    """Raised for an organisation id that is not in the registry."""


class RegistryError(ValueError):
    """Raised for a registry entry that contradicts itself (so it fails at start, not at delivery)."""


def _parse(entry: dict[str, Any]) -> Organisation:
    org = Organisation(
        id=str(entry["id"]),
        name=str(entry["name"]),
        kind=str(entry["kind"]),
        roles=frozenset(Role(r) for r in entry.get("roles", [])),
        referrer_kind=str(entry.get("referrer_kind", "")),
        gss_codes=frozenset(str(c) for c in entry.get("gss_codes", [])),
        nats_gss=str(entry.get("nats_gss", "")),
    )
    if org.nats_gss and (Role.LA_PLATFORM not in org.roles or org.nats_gss not in org.gss_codes):
        # The partner subject names one LA: only that LA's own platform may be given it.
        raise RegistryError(f"{org.id}: nats_gss must be one of its gss_codes, on an la-platform")
    if org.nats_gss and not (_TOKEN.fullmatch(org.id) and _TOKEN.fullmatch(org.nats_gss)):
        # Both become NATS subject tokens and a consumer name (no dots, wildcards or spaces).
        raise RegistryError(f"{org.id!r}: an organisation on NATS needs an id and nats_gss of [A-Za-z0-9_-]")
    return org


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
