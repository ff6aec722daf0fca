"""The transaction-response Bundle the gateway returns for an accepted referral."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any


def transaction_response_bundle(
    locations: Sequence[str],
    *,
    last_modified: datetime,
    version_id: str = "1",
    status: str = "201 Created",
) -> dict[str, Any]:
    """Build a `transaction-response` Bundle with one entry per created resource, in request order.

    `locations` are `Type/id` (ParsedReferral.locations). Replaying an idempotent request should
    pass status "200 OK" and the original `last_modified`.
    """
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "transaction-response",
        "entry": [
            {
                "response": {
                    "status": status,
                    "location": f"{location}/_history/{version_id}",
                    "etag": f'W/"{version_id}"',
                    "lastModified": last_modified.isoformat(),
                }
            }
            for location in locations
        ],
    }
