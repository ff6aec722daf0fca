"""Reads and searches: each scoped to what the caller's organisation may see, each audited.

A record outside the caller's scope answers exactly like a record that does not exist (404), so a
caller learns nothing about other areas' children.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from haven.kit.resources import StoredResource
from haven.organisations import Role
from services.gateway.audit_log import record_audit
from services.gateway.auth import CurrentPrincipal, State
from services.gateway.errors import api_error, fhir_response
from services.gateway.fhir import IssueType
from services.gateway.security.access import can_read
from services.gateway.security.principal import Principal
from services.gateway.state import GatewayState

router = APIRouter()

READABLE_TYPES = ("Patient", "ServiceRequest", "Observation", "Task")
MAX_PAGE = 200


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
        await record_audit(state, principal, "R", [stored.reference], request, purpose="COC")
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
    count: Annotated[int, Query(alias="_count", ge=0, le=MAX_PAGE)] = 50,
    offset: Annotated[int, Query(alias="_offset", ge=0)] = 0,
    summary: Annotated[str | None, Query(alias="_summary")] = None,
) -> JSONResponse:
    """Search Tasks by ``based-on``, ``owner`` and ``status``, within the caller's scope."""
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
    visible = [t for t in found if can_read(principal, t.scope)]
    if summary == "count":
        return fhir_response({"resourceType": "Bundle", "type": "searchset", "total": len(visible)})
    page = visible[offset : offset + count]
    await record_audit(state, principal, "R", [t.reference for t in page], request, purpose="COC")
    return fhir_response(_searchset(request, visible, page, offset, count))


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
