"""Reading a request body: media type (415), size (413) and JSON syntax (400), each with its outcome."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from services.gateway.errors import api_error
from services.gateway.fhir import IssueType

_ACCEPTED_MEDIA_TYPES = ("application/fhir+json", "application/json")


async def read_json_body(request: Request, max_bytes: int) -> Any:
    """Return the parsed JSON body, or answer 415, 413 or 400."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in _ACCEPTED_MEDIA_TYPES:
        raise api_error(
            415,
            IssueType.NOT_SUPPORTED,
            f"Content-Type must be application/fhir+json, not {media_type or 'missing'!r}",
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise api_error(413, IssueType.TOO_LONG, f"the body is larger than the limit of {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > max_bytes:
            raise api_error(
                413, IssueType.TOO_LONG, f"the body is larger than the limit of {max_bytes} bytes"
            )
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise api_error(400, IssueType.STRUCTURE, f"the body is not valid JSON: {error}") from None
