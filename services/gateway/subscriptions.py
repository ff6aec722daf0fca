"""Subscription management: partners register a rest-hook endpoint for the notifications meant for them.

A Subscription belongs to the caller's organisation; its notifications carry only what that
organisation may see. The signing secret is kept apart from the resource and shown only once, in
the answer to the create (or given by the caller in the create).

A Subscription that claims the Subscriptions Backport profile (`meta.profile`) gets backport-style
notifications (a history Bundle with the SubscriptionStatus first; see
``services.notifier.domain.backport``): a signed handshake on create (a receiver that does not answer
2xx leaves the Subscription in status `error`, and nothing is sent to it), heartbeats at the period
of its `backport-heartbeat-period` extension, `$status` and `$events`. Other Subscriptions get the
bare signed projection, as before.
"""

from __future__ import annotations

import json
import secrets
from typing import Any
from urllib.parse import urlparse

import httpx
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from haven.canonical import EXT_SUBSCRIPTION_SECRET, TOPIC_REFERRAL_ROUTED
from haven.kit.ids import new_id
from haven.kit.resources import RecordScope, StoredResource
from services.gateway.auth import CurrentPrincipal, State
from services.gateway.body import read_json_body
from services.gateway.errors import ApiError, api_error, fhir_response
from services.gateway.fhir import Issue, IssueType
from services.gateway.security.access import can_manage_subscriptions, subscription_filter_for
from services.gateway.security.principal import Principal
from services.gateway.state import GatewayState
from services.notifier.domain.backport import (
    BACKPORT_SUBSCRIPTION_PROFILE,
    HANDSHAKE,
    HEARTBEAT_EXTENSION,
    QUERY_EVENT,
    QUERY_STATUS,
    canonical_json,
    heartbeat_seconds,
    is_backport,
    notification_bundle,
    status_parameters,
)
from services.notifier.domain.signing import delivery_headers
from services.notifier.ledger import DeliveryLedger

router = APIRouter()

SUPPORTED_TOPICS = (TOPIC_REFERRAL_ROUTED,)
_MIN_SECRET_LENGTH = 32
_HANDSHAKE_TIMEOUT_SECONDS = 5.0
# The most events one `$events` call returns.
MAX_EVENTS_PER_CALL = 100


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
    heartbeat = heartbeat_seconds(body)
    if heartbeat and heartbeat < 1:
        issues.append(Issue(IssueType.VALUE, "Subscription.channel.extension", "heartbeat period >= 1 s"))
    if issues:
        raise ApiError(400, issues)
    resource: dict[str, Any] = {
        "resourceType": "Subscription",
        "id": new_id(),
        "status": "active",
        "reason": str(body.get("reason") or "Haven notifications"),
        "criteria": body["criteria"],
        "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json"},
    }
    if is_backport(body):
        resource["meta"] = {"profile": [BACKPORT_SUBSCRIPTION_PROFILE]}
        if heartbeat:
            resource["channel"]["extension"] = [{"url": HEARTBEAT_EXTENSION, "valueUnsignedInt": heartbeat}]
    return resource, secret


async def _handshake(resource: dict[str, Any], secret: str, state: GatewayState) -> bool:
    """Send the backport handshake to the endpoint; return whether it answered 2xx."""
    now = state.clock()
    handshake_id = new_id()
    body = canonical_json(
        notification_bundle(
            bundle_id=handshake_id,
            subscription_id=resource["id"],
            topic=resource["criteria"],
            status="requested",
            kind=HANDSHAKE,
            events_since_start=0,
            now=now,
        )
    )
    headers = delivery_headers(handshake_id, HANDSHAKE, body, secret.encode(), int(now.timestamp()))
    try:
        async with httpx.AsyncClient(timeout=_HANDSHAKE_TIMEOUT_SECONDS) as http:
            answer = await http.post(resource["channel"]["endpoint"], content=body, headers=headers)
    except httpx.HTTPError:
        return False
    return 200 <= answer.status_code < 300


@router.post("/fhir/Subscription", summary="Register a rest-hook Subscription")
async def create_subscription(request: Request, principal: CurrentPrincipal, state: State) -> JSONResponse:
    """Create a Subscription owned by the caller's organisation; the answer shows its secret once."""
    if not can_manage_subscriptions(principal, principal.organisation_id):
        raise api_error(
            403, IssueType.FORBIDDEN, "only LA platforms, providers and admins hold Subscriptions"
        )
    resource, secret = _validated(await read_json_body(request, state.settings.max_body_bytes))
    backport = is_backport(resource)
    if backport and not await _handshake(resource, secret, state):
        resource["status"] = "error"
    scope = RecordScope(owner_organisation_ids=frozenset({principal.organisation_id}))
    record = {
        "secret": secret,
        "organisation_id": principal.organisation_id,
        "endpoint": resource["channel"]["endpoint"],
        "topic": resource["criteria"],
        "backport": backport,
        "heartbeat_seconds": heartbeat_seconds(resource),
        "status": resource["status"],
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


async def _visible_subscription(
    subscription_id: str, principal: Principal, state: GatewayState
) -> StoredResource:
    stored = await state.store.read("Subscription", subscription_id)
    if stored is None or not subscription_filter_for(principal).admits(stored.scope):
        raise api_error(404, IssueType.NOT_FOUND, f"Subscription/{subscription_id} is not known")
    return stored


@router.get("/fhir/Subscription/{subscription_id}/$status", summary="A Subscription's status (backport)")
async def subscription_status(
    subscription_id: str, principal: CurrentPrincipal, state: State
) -> JSONResponse:
    """Return a searchset Bundle holding the SubscriptionStatus, with `events-since-subscription-start`."""
    stored = await _visible_subscription(subscription_id, principal, state)
    ledger = await DeliveryLedger.open(state.js)
    status = status_parameters(
        subscription_id=subscription_id,
        topic=str(stored.resource["criteria"]),
        status=str(stored.resource["status"]),
        kind=QUERY_STATUS,
        events_since_start=await ledger.events_count(subscription_id),
    )
    return fhir_response(
        {"resourceType": "Bundle", "type": "searchset", "total": 1, "entry": [{"resource": status}]}
    )


@router.get("/fhir/Subscription/{subscription_id}/$events", summary="Fetch notifications again (backport)")
async def subscription_events(
    subscription_id: str,
    principal: CurrentPrincipal,
    state: State,
    events_since: int = Query(default=1, alias="eventsSinceNumber", ge=1),
    events_until: int | None = Query(default=None, alias="eventsUntilNumber", ge=1),
) -> JSONResponse:
    """Return the numbered notifications in [eventsSinceNumber, eventsUntilNumber] as a history Bundle.

    The payloads are the recipient's own projections, as first sent; at most MAX_EVENTS_PER_CALL.
    """
    stored = await _visible_subscription(subscription_id, principal, state)
    ledger = await DeliveryLedger.open(state.js)
    count = await ledger.events_count(subscription_id)
    last = min(count, events_until or count, events_since + MAX_EVENTS_PER_CALL - 1)
    events = [e for n in range(events_since, last + 1) if (e := await ledger.event(subscription_id, n))]
    bundle = notification_bundle(
        bundle_id=new_id(),
        subscription_id=subscription_id,
        topic=str(stored.resource["criteria"]),
        status=str(stored.resource["status"]),
        kind=QUERY_EVENT,
        events_since_start=count,
        now=state.clock(),
        events=events,
    )
    return fhir_response(bundle)
