"""The transaction-response Bundle the gateway returns for an accepted referral."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from haven.kit.ids import derived_id


def transaction_response_bundle(
    locations: Sequence[str],
    *,
    last_modified: datetime,
    version_id: str = "1",
    status: str = "201 Created",
) -> dict[str, Any]:
    """Build a `transaction-response` Bundle with one entry per created resource, in request order.

    `locations` are `Type/id` (ParsedReferral.locations). Replaying an idempotent request should
    pass status "200 OK" and the original `last_modified`. The Bundle's id is derived from what it
    says: a referral completed again (by the sweeper, for a retry) answers byte for byte as first.
    """
    stamp = last_modified.isoformat()
    return {
        "resourceType": "Bundle",
        "id": derived_id("transaction-response", status, version_id, stamp, *locations),
        "type": "transaction-response",
        "entry": [
            {
                "response": {
                    "status": status,
                    "location": f"{location}/_history/{version_id}",
                    "etag": f'W/"{version_id}"',
                    "lastModified": stamp,
                }
            }
            for location in locations
        ],
    }
