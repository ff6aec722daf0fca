"""The authenticated caller: one organisation acting in one role, as the registry describes it now."""

from __future__ import annotations

from dataclasses import dataclass, field

from haven.organisations import Role


@dataclass(frozen=True)
class Principal:
    """Who is calling, built by `verify_token` from a token checked against the organisation registry.

    `gss_codes` and `referrer_kind` come from the registry, not from the token, so narrowing an
    organisation's area takes effect on its next request rather than when its token expires.
    """

    organisation_id: str
    role: Role
    gss_codes: frozenset[str] = field(default_factory=frozenset)
    referrer_kind: str = ""
