"""Searches over referrals, their facts and their possible-duplicate Flags, each scoped and audited.

Every search answers only records the caller may read (`security.access.can_read`), pages with
``_count`` / ``_offset`` and answers ``_summary=count`` with the total alone (`reads.search_answer`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from haven.kit.resources import StoredResource
from services.gateway.auth import CurrentPrincipal, State
from services.gateway.errors import api_error
from services.gateway.fhir import IssueType
from services.gateway.fhir.duplicates import POSSIBLE_DUPLICATE
from services.gateway.reads import (
    CountParam,
    OffsetParam,
    Paging,
    SummaryParam,
    reference_param,
    search_answer,
)
from services.gateway.referrals import identifier_token
from services.gateway.security.access import can_read

router = APIRouter()


@router.get("/fhir/ServiceRequest", summary="Search referrals by patient or identifier")
async def search_service_requests(
    request: Request,
    principal: CurrentPrincipal,
    state: State,
    patient: str | None = None,
    identifier: str | None = None,
    count: CountParam = 50,
    offset: OffsetParam = 0,
    summary: SummaryParam = None,
) -> JSONResponse:
    """Find the referrals of a child (``patient=Patient/<id>``) or with a case number (``system|value``)."""
    if not patient and not identifier:
        raise api_error(
            400, IssueType.REQUIRED, "give patient=Patient/<id> or identifier=<system>|<value>", "patient"
        )
    found: list[StoredResource] | None = None
    if patient:
        reference = reference_param(patient, "Patient", "patient")
        found = await state.store.search("ServiceRequest", "patient", reference)
    if identifier:
        token = identifier_token("", identifier)
        by_identifier = await state.store.search("ServiceRequest", "identifier-any", token)
        ids = {r.resource["id"] for r in by_identifier}
        found = by_identifier if found is None else [r for r in found if r.resource["id"] in ids]
    visible = [r for r in found or [] if can_read(principal, r.scope)]
    paging = Paging(count, offset, summary)
    named = reference_param(patient, "Patient", "patient") if patient else None
    return await search_answer(request, state, principal, visible, paging, patient=named)


@router.get("/fhir/Observation", summary="Search the facts of a referral")
async def search_observations(
    request: Request,
    principal: CurrentPrincipal,
    state: State,
    based_on: Annotated[str | None, Query(alias="based-on")] = None,
    count: CountParam = 50,
    offset: OffsetParam = 0,
    summary: SummaryParam = None,
) -> JSONResponse:
    """Find the Observations of one referral (``based-on=ServiceRequest/<id>``), posted in or after it."""
    if not based_on:
        raise api_error(400, IssueType.REQUIRED, "give based-on=ServiceRequest/<id>", expression="based-on")
    reference = reference_param(based_on, "ServiceRequest", "based-on")
    found = await state.store.search("Observation", "based-on", reference)
    visible = [r for r in found if can_read(principal, r.scope)]
    return await search_answer(request, state, principal, visible, Paging(count, offset, summary))


@router.get("/fhir/Flag", summary="Search possible-duplicate Flags (local authorities and operators)")
async def search_flags(
    request: Request,
    principal: CurrentPrincipal,
    state: State,
    patient: str | None = None,
    count: CountParam = 50,
    offset: OffsetParam = 0,
    summary: SummaryParam = None,
) -> JSONResponse:
    """Find the Flags naming a child (``patient=Patient/<id>``), or every Flag the caller may see."""
    if patient:
        reference = reference_param(patient, "Patient", "patient")
        found = await state.store.search("Flag", "patient", reference)
    else:
        found = await state.store.search("Flag", "code", POSSIBLE_DUPLICATE)
    # Flags carry only the local authority in their scope: referrers and providers see none.
    visible = [r for r in found if can_read(principal, r.scope)]
    return await search_answer(request, state, principal, visible, Paging(count, offset, summary))
