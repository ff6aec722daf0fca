"""Updating a stored resource on the version the caller read: ``If-Match``, compare-and-set, publish.

``PUT /fhir/Task/<id>`` (tasks.py) and ``PUT /fhir/ServiceRequest/<id>`` (closures.py) share this
mechanism: the caller names the version it read (428 when it does not, 400 when malformed), the
write is a compare-and-set on that version (412 when the resource moved on), and the event of the
change is published only after the write, retried a few times, with a Nats-Msg-Id derived from the
resource and its new version so a repeat that did land is dropped as a duplicate.
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from typing import Any

from fastapi import Request
from google.protobuf.message import Message

from haven.kit import bus
from haven.kit.resources import StoredResource, VersionConflictError
from services.gateway.auth import State
from services.gateway.errors import ApiError, api_error
from services.gateway.fhir import IssueType

_IF_MATCH = re.compile(r'^(W/)?"(?P<version>\d+)"$')
_PUBLISH_ATTEMPTS = 3


def expected_version(request: Request) -> int:
    """Return the version named by ``If-Match: W/"<n>"``; 428 when missing, 400 when malformed."""
    header = request.headers.get("if-match", "").strip()
    if not header:
        raise api_error(
            428,
            IssueType.REQUIRED,
            'an update needs If-Match: W/"<versionId>" with the version you read (the ETag of the read)',
            expression="If-Match",
        )
    match = _IF_MATCH.match(header)
    if match is None:
        raise api_error(400, IssueType.VALUE, 'If-Match must look like W/"3"', expression="If-Match")
    return int(match["version"])


def stale_version(reference: str, current: int | None) -> ApiError:
    """Return the 412 for an update whose If-Match names a version that is no longer current."""
    now = f" (it is now at version {current})" if current is not None else ""
    return api_error(
        412,
        IssueType.CONFLICT,
        f"{reference} changed since the version in If-Match{now}; read it again and retry",
        expression="If-Match",
    )


async def save_if_match(
    state: State, stored: StoredResource, resource: dict[str, Any], version: int, now: datetime
) -> StoredResource:
    """Store ``resource`` over ``stored`` only if it is still at ``version``; 412 when another write won."""
    try:
        return await state.store.update(resource, stored.scope, now, expected_version=version)
    except VersionConflictError:
        raise stale_version(stored.reference, None) from None


async def publish_stored(state: State, subject: str, event: Message, event_id: str) -> None:
    """Publish the event of a change already stored, retrying a failed publish a few times.

    ``event_id`` is its Nats-Msg-Id, so a publish that did land but whose ack was lost is harmless to
    repeat. Raises the last error when every attempt failed.
    """
    for attempt in range(_PUBLISH_ATTEMPTS):
        try:
            await bus.publish_event(state.js, subject, event, msg_id=event_id)
            return
        except Exception:
            if attempt == _PUBLISH_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.2 * (attempt + 1))
