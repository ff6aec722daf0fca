"""Subscription management: partners register a rest-hook endpoint for the notifications meant for them.

A Subscription belongs to the caller's organisation; its notifications carry only what that
organisation may see. The signing secret is kept apart from the resource and shown only once, in
the answer to the create (or given by the caller in the create).
"""

from __future__ import annotations

import json
import secrets
from typing import Any
from urllib.parse import urlparse

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from haven.canonical import EXT_SUBSCRIPTION_SECRET, TOPIC_REFERRAL_ROUTED
from haven.kit.ids import new_id
from haven.kit.resources import RecordScope
from services.gateway.auth import CurrentPrincipal, State
from services.gateway.body import read_json_body
from services.gateway.errors import ApiError, api_error, fhir_response
from services.gateway.fhir import Issue, IssueType
from services.gateway.security.access import can_manage_subscriptions, subscription_filter_for

router = APIRouter()

SUPPORTED_TOPICS = (TOPIC_REFERRAL_ROUTED,)
_MIN_SECRET_LENGTH = 32


def _validated(body: Any) -> tuple[dict[str, Any], str]:
    """Return the Subscription to store and its secret, or raise ApiError naming each bad field."""
    issues: list[Issue] = []
    if not isinstance(body, dict) or body.get("resourceType") != "Subscription":
        raise ApiError(400, [Issue(IssueType.STRUCTURE, "resourceType", "the body must be a Subscription")])
    raw_channel = body.get("channel")
    channel: dict[str, Any] = raw_channel if isinstance(raw_channel, dict) else {}
    if body.get("criteria") not in SUPPORTED_TOPICS:
        issues.append(
            Issue(
                IssueType.VALUE,
                "Subscription.criteria",
                f"criteria must be one of the topics: {', '.join(SUPPORTED_TOPICS)}",
            )
        )
    if channel.get("type") != "rest-hook":
        issues.append(
            Issue(IssueType.NOT_SUPPORTED, "Subscription.channel.type", "only rest-hook is supported")
        )
    endpoint = str(channel.get("endpoint", ""))
    if urlparse(endpoint).scheme not in ("http", "https") or not urlparse(endpoint).netloc:
        issues.append(
            Issue(IssueType.VALUE, "Subscription.channel.endpoint", "endpoint must be an http(s) URL")
        )
    given = [
        e.get("valueString", "") for e in body.get("extension", []) if e.get("url") == EXT_SUBSCRIPTION_SECRET
    ]
    secret = str(given[0]) if given else secrets.token_urlsafe(32)
    if len(secret) < _MIN_SECRET_LENGTH:
        issues.append(
            Issue(
                IssueType.VALUE,
                "Subscription.extension",
                f"the signing secret must be at least {_MIN_SECRET_LENGTH} characters",
            )
        )
    if issues:
        raise ApiError(400, issues)
    resource = {
        "resourceType": "Subscription",
        "id": new_id(),
        "status": "active",
        "reason": str(body.get("reason") or "Haven notifications"),
        "criteria": body["criteria"],
        "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json"},
    }
    return resource, secret


@router.post("/fhir/Subscription", summary="Register a rest-hook Subscription")
async def create_subscription(request: Request, principal: CurrentPrincipal, state: State) -> JSONResponse:
    """Create a Subscription owned by the caller's organisation; the answer shows its secret once."""
    if not can_manage_subscriptions(principal, principal.organisation_id):
        raise api_error(
            403, IssueType.FORBIDDEN, "only LA platforms, providers and admins hold Subscriptions"
        )
    resource, secret = _validated(await read_json_body(request, state.settings.max_body_bytes))
    scope = RecordScope(owner_organisation_ids=frozenset({principal.organisation_id}))
    record = {
        "secret": secret,
        "organisation_id": principal.organisation_id,
        "endpoint": resource["channel"]["endpoint"],
        "topic": resource["criteria"],
    }
    await state.subscription_secrets.put(resource["id"], json.dumps(record).encode())
    stored = await state.store.create(resource, scope, state.clock())
    await state.store.add_index(
        "Subscription", "owner", f"Organization/{principal.organisation_id}", resource["id"]
    )
    shown = {**stored.resource, "extension": [{"url": EXT_SUBSCRIPTION_SECRET, "valueString": secret}]}
    return fhir_response(shown, 201, {"Location": f"Subscription/{resource['id']}"})


@router.get("/fhir/Subscription/{subscription_id}", summary="Read a Subscription")
async def read_subscription(subscription_id: str, principal: CurrentPrincipal, state: State) -> JSONResponse:
    """Read one of the caller's Subscriptions (without its secret)."""
    stored = await state.store.read("Subscription", subscription_id)
    if stored is None or not subscription_filter_for(principal).admits(stored.scope):
        raise api_error(404, IssueType.NOT_FOUND, f"Subscription/{subscription_id} is not known")
    return fhir_response(stored.resource, headers={"ETag": f'W/"{stored.version}"'})
