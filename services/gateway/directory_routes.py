"""The service directory through the API: read and search HealthcareService, and PUT one (admin only).

Entries are FHIR HealthcareService resources in the resource store (``HealthcareService.<id>``); the
referral routers watch those keys and use a change at once, without a restart. A PUT is checked with
the router's own reader (``healthcare_service_from_fhir``, providers against the organisation
registry), so nothing the routers cannot use is stored. ``If-Match`` makes the write a
compare-and-set on the version read; without it the write replaces whatever is there. The directory
holds no personal data: every authenticated caller may read it.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from haven.kit.resources import RecordScope, VersionConflictError
from services.gateway.audit_log import record_audit
from services.gateway.auth import CurrentPrincipal, State
from services.gateway.body import read_json_body
from services.gateway.errors import api_error, fhir_response
from services.gateway.fhir import IssueType
from services.gateway.security.access import can_edit_directory
from services.referral_router.domain import DirectoryError, healthcare_service_from_fhir
from services.referral_router.domain.directory import make_directory

router = APIRouter()

HEALTHCARE_SERVICE = "HealthcareService"
_MAX_BODY_BYTES = 256 * 1024
_IF_MATCH = re.compile(r'^(W/)?"(?P<version>\d+)"$')


def _not_found(resource_id: str) -> Exception:
    return api_error(
        404,
        IssueType.NOT_FOUND,
        f"HealthcareService/{resource_id} is not known",
        expression=HEALTHCARE_SERVICE,
    )


@router.get("/fhir/HealthcareService", summary="List the service directory")
async def search_healthcare_services(
    request: Request, principal: CurrentPrincipal, state: State
) -> JSONResponse:
    """Return every HealthcareService of the directory, in id order."""
    found = sorted(await state.store.all_of_type(HEALTHCARE_SERVICE), key=lambda s: str(s.resource["id"]))
    base = str(request.url).split("?")[0]
    return fhir_response(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "link": [{"relation": "self", "url": str(request.url)}],
            "entry": [
                {"fullUrl": f"{base}/{s.resource['id']}", "resource": s.resource, "search": {"mode": "match"}}
                for s in found
            ],
        }
    )


@router.get("/fhir/HealthcareService/{resource_id}", summary="Read one service of the directory")
async def read_healthcare_service(
    resource_id: str, principal: CurrentPrincipal, state: State
) -> JSONResponse:
    """Return one HealthcareService with its version as ETag."""
    stored = await state.store.read(HEALTHCARE_SERVICE, resource_id)
    if stored is None:
        raise _not_found(resource_id)
    return fhir_response(stored.resource, headers={"ETag": f'W/"{stored.version}"'})


def _checked(body: Any, resource_id: str) -> dict[str, Any]:
    """Return the resource to store, or answer 400 saying what the routers could not use."""
    if not isinstance(body, dict) or body.get("resourceType") != HEALTHCARE_SERVICE:
        raise api_error(400, IssueType.STRUCTURE, "the body must be a HealthcareService", "resourceType")
    if body.get("id") != resource_id:
        raise api_error(
            400, IssueType.VALUE, "the resource id must match the id in the URL", "HealthcareService.id"
        )
    try:
        make_directory([healthcare_service_from_fhir(body)])
    except DirectoryError as error:
        raise api_error(400, IssueType.VALUE, f"the directory cannot use this service: {error}") from None
    resource = dict(body)
    resource.pop("meta", None)
    return resource


@router.put("/fhir/HealthcareService/{resource_id}", summary="Create or replace a service (admin only)")
async def put_healthcare_service(
    resource_id: str, request: Request, principal: CurrentPrincipal, state: State
) -> JSONResponse:
    """Store a service of the directory; every router uses it for its next routing."""
    if not can_edit_directory(principal):
        raise api_error(403, IssueType.FORBIDDEN, "only an admin may change the service directory")
    resource = _checked(await read_json_body(request, _MAX_BODY_BYTES), resource_id)
    existing = await state.store.read(HEALTHCARE_SERVICE, resource_id)
    if_match = request.headers.get("if-match", "").strip()
    now = state.clock()
    if if_match:
        match = _IF_MATCH.match(if_match)
        if match is None:
            raise api_error(400, IssueType.VALUE, 'If-Match must look like W/"3"', expression="If-Match")
        if existing is None:
            raise _not_found(resource_id)
        try:
            stored = await state.store.update(resource, RecordScope(), now, int(match["version"]))
        except VersionConflictError:
            raise api_error(
                412,
                IssueType.CONFLICT,
                "the service changed since the version you read",
                expression="If-Match",
            ) from None
    else:
        stored = await state.store.put(resource, RecordScope(), now)
    await record_audit(
        state, principal, "U" if existing else "C", [stored.reference], request, purpose="HOPERAT"
    )
    return fhir_response(
        stored.resource,
        status=200 if existing else 201,
        headers={
            "ETag": f'W/"{stored.version}"',
            "Location": f"HealthcareService/{resource_id}/_history/{stored.version}",
        },
    )
