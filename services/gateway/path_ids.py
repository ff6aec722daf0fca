"""Refuse a path id that no record can have before any handler or store sees it.

An id with a character outside printable ASCII (a non-ASCII letter, a space, a control character)
is not a FHIR id and is not even valid in a NATS KV key, where the store would fail with a 500. One
check here covers every route, so no handler can forget it. Answered like any unknown id (404);
other malformed ids reach the handlers, which authenticate first and answer 404 as for any unknown id.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from services.gateway.errors import outcome_response
from services.gateway.fhir import Issue, IssueType

_ID_IN_PATH = re.compile(r"^/fhir/(?P<type>[A-Z][A-Za-z]+)/(?P<id>[^/$][^/]*)")
_STORABLE_ID = re.compile(r"[\x21-\x7e]{1,128}")


def malformed_id(path: str) -> tuple[str, str] | None:
    """Return (resource type, id) when ``path`` names a resource by an id no record can have."""
    match = _ID_IN_PATH.match(path)
    if match is None or _STORABLE_ID.fullmatch(match["id"]):
        return None
    return match["type"], match["id"]


class MalformedIdGuard:
    """ASGI middleware answering 404 ``not-found`` for a malformed id (plain ASGI: no per-request task)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, unless its path names a malformed id."""
        found = malformed_id(scope["path"]) if scope["type"] == "http" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        resource_type, _ = found
        issue = Issue(
            IssueType.NOT_FOUND,
            resource_type,
            f"{resource_type} ids are 1-64 letters, digits, '-' or '.'; no record has this one",
        )
        await outcome_response(404, [issue])(scope, receive, send)
