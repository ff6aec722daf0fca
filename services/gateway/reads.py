"""Reads and searches: each scoped to what the caller's organisation may see, each audited.

A record outside the caller's scope answers exactly like a record that does not exist (404), so a
caller learns nothing about other areas' children.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from haven.kit.resources import StoredResource
from haven.organisations import Role
from services.gateway.audit_log import patient_of, record_audit
from services.gateway.auth import CurrentPrincipal, State
from services.gateway.errors import api_error, fhir_response
from services.gateway.fhir import IssueType
from services.gateway.security.access import can_read, can_read_audit
from services.gateway.security.principal import Principal
from services.gateway.state import GatewayState

router = APIRouter()

READABLE_TYPES = ("Patient", "ServiceRequest", "Observation", "Task", "Flag")
MAX_PAGE = 200
_REFERENCE = re.compile(r"[A-Z][A-Za-z]+/[A-Za-z0-9\-_=]{1,64}")


@dataclass(frozen=True)
class Paging:
    """``_count``, ``_offset`` (the ``next`` link) and ``_summary`` of a search."""

    count: int
    offset: int
    summary: str | None


CountParam = Annotated[int, Query(alias="_count", ge=0, le=MAX_PAGE)]
OffsetParam = Annotated[int, Query(alias="_offset", ge=0)]
SummaryParam = Annotated[str | None, Query(alias="_summary")]


def reference_param(value: str, resource_type: str, param: str) -> str:
    """Return ``Type/id`` from a search value ``Type/id`` or a bare id; 400 for anything else."""
    reference = value if "/" in value else f"{resource_type}/{value}"
    if not re.fullmatch(f"{resource_type}/[A-Za-z0-9\\-]{{1,64}}", reference):
        raise api_error(
            400, IssueType.VALUE, f"{param} must be {resource_type}/<id> (or the id alone)", expression=param
        )
    return reference


async def read_visible(
    state: GatewayState, principal: Principal, resource_type: str, resource_id: str
) -> StoredResource:
    """Return a resource the caller may see, or answer 404 (also when it exists but is out of scope)."""
    stored = await state.store.read(resource_type, resource_id)
    if stored is None or not can_read(principal, stored.scope):
        raise api_error(
            404, IssueType.NOT_FOUND, f"{resource_type}/{resource_id} is not known", expression=resource_type
        )
    return stored


def _read_route(resource_type: str) -> Any:
    async def read(
        resource_id: str, request: Request, principal: CurrentPrincipal, state: State
    ) -> JSONResponse:
        stored = await read_visible(state, principal, resource_type, resource_id)
        await record_audit(
            state,
            principal,
            "R",
            [stored.reference],
            request,
            purpose="COC",
            patient=patient_of(stored.resource),
        )
        return fhir_response(stored.resource, headers={"ETag": f'W/"{stored.version}"'})

    read.__name__ = f"read_{resource_type.lower()}"
    read.__doc__ = f"Read one {resource_type} the caller may see."
    return read


for _type in READABLE_TYPES:
    router.add_api_route(
        f"/fhir/{_type}/{{resource_id}}", _read_route(_type), methods=["GET"], summary=f"Read a {_type}"
    )


@router.get("/fhir/Task", summary="Search Tasks")
async def search_tasks(
    request: Request,
    principal: CurrentPrincipal,
    state: State,
    based_on: Annotated[str | None, Query(alias="based-on")] = None,
    owner: str | None = None,
    status: str | None = None,
    count: CountParam = 50,
    offset: OffsetParam = 0,
    summary: SummaryParam = None,
    last_updated: Annotated[list[str] | None, Query(alias="_lastUpdated")] = None,
) -> JSONResponse:
    """Search Tasks by ``based-on``, ``owner``, ``status`` and ``_lastUpdated``, within the caller's scope."""
    window = [_date_bound(value) for value in last_updated or []]
    based_on = reference_param(based_on, "ServiceRequest", "based-on") if based_on else None
    owner = reference_param(owner, "Organization", "owner") if owner else None
    if based_on:
        found = await state.store.search("Task", "based-on", based_on)
    elif owner:
        found = await state.store.search("Task", "owner", owner)
    elif principal.role is Role.PROVIDER:
        found = await state.store.search("Task", "owner", f"Organization/{principal.organisation_id}")
    elif principal.role is Role.LA_PLATFORM:
        found = [
            t
            for gss in sorted(principal.gss_codes)
            for t in await state.store.search("Task", "local-authority", gss)
        ]
    else:
        raise api_error(
            400, IssueType.REQUIRED, "give based-on or owner to search Tasks", expression="based-on"
        )
    if owner and based_on:
        found = [t for t in found if t.resource.get("owner", {}).get("reference") == owner]
    if status:
        found = [t for t in found if t.resource.get("status") == status]
    visible = [t for t in found if can_read(principal, t.scope) and _within(t, window)]
    return await search_answer(request, state, principal, visible, Paging(count, offset, summary))


async def search_answer(
    request: Request,
    state: GatewayState,
    principal: Principal,
    matches: list[StoredResource],
    paging: Paging,
    *,
    purpose: str = "COC",
    audited: list[str] | None = None,
    patient: str | None = None,
) -> JSONResponse:
    """Answer a search with the matches the caller may see: a count alone, or one audited page of them.

    `audited` names what the AuditEvent records (default: the records on the page).
    """
    if paging.summary == "count":
        return fhir_response({"resourceType": "Bundle", "type": "searchset", "total": len(matches)})
    page = matches[paging.offset : paging.offset + paging.count]
    references = audited if audited is not None else [m.reference for m in page]
    await record_audit(state, principal, "R", references, request, purpose=purpose, patient=patient)
    return fhir_response(_searchset(request, matches, page, paging.offset, paging.count))


def _searchset(
    request: Request, matches: list[StoredResource], page: list[StoredResource], offset: int, count: int
) -> dict[str, Any]:
    base = str(request.url).split("?")[0]
    params = [(k, v) for k, v in request.query_params.multi_items() if k not in ("_offset",)]
    query = "&".join(f"{k}={v}" for k, v in params)
    links = [{"relation": "self", "url": str(request.url)}]
    if offset + count < len(matches):
        links.append({"relation": "next", "url": f"{base}?{query}&_offset={offset + count}"})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(matches),
        "link": links,
        "entry": [
            {
                "fullUrl": f"{base.rsplit('/', 1)[0]}/{t.reference}",
                "resource": t.resource,
                "search": {"mode": "match"},
            }
            for t in page
        ],
    }


_PREFIXES = ("ge", "le", "gt", "lt", "eq")


def _date_bound(value: str) -> tuple[str, datetime]:
    """Read ``_lastUpdated=ge2026-11-23`` (or le, gt, lt, eq; no prefix means eq) into (prefix, instant)."""
    prefix = value[:2] if value[:2] in _PREFIXES else "eq"
    text = value[2:] if value[:2] in _PREFIXES else value
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise api_error(
            400,
            IssueType.VALUE,
            "_lastUpdated must be a date or dateTime with an optional prefix ge, le, gt, lt or eq",
            expression="_lastUpdated",
        ) from None
    return prefix, moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _within(stored: StoredResource, window: list[tuple[str, datetime]]) -> bool:
    if not window:
        return True
    updated = datetime.fromisoformat(str(stored.resource["meta"]["lastUpdated"]).replace("Z", "+00:00"))
    checks = {
        "ge": lambda bound: updated >= bound,
        "le": lambda bound: updated <= bound,
        "gt": lambda bound: updated > bound,
        "lt": lambda bound: updated < bound,
        "eq": lambda bound: updated == bound,
    }
    return all(checks[prefix](bound) for prefix, bound in window)


@router.get("/fhir/AuditEvent", summary="Search AuditEvents by entity (operators and admin)")
async def search_audit_events(
    request: Request,
    principal: CurrentPrincipal,
    state: State,
    entity: str | None = None,
    count: CountParam = 50,
    offset: OffsetParam = 0,
    summary: SummaryParam = None,
) -> JSONResponse:
    """Who touched a record: the AuditEvents naming ``entity`` (``Type/id``), oldest first."""
    if not can_read_audit(principal):
        raise api_error(403, IssueType.FORBIDDEN, "only operators and admin read the audit log")
    if not entity or not _REFERENCE.fullmatch(entity):
        raise api_error(
            400, IssueType.REQUIRED, "give entity=<Type>/<id>, e.g. entity=Patient/<id>", expression="entity"
        )
    found = await state.store.search("AuditEvent", "entity", entity)
    patient = entity if entity.startswith("Patient/") else None
    return await search_answer(
        request,
        state,
        principal,
        found,
        Paging(count, offset, summary),
        purpose="HSYSADMIN",
        audited=["AuditEvent"],
        patient=patient,
    )
