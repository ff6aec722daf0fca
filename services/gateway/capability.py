"""The CapabilityStatement, generated from the routes the app really serves, so it cannot drift."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

_RESOURCE_PATH = re.compile(r"^/fhir/(?P<type>[A-Z][A-Za-z]+)(?P<rest>/.*)?$")
_SEARCH_PARAMS = {
    "Task": {
        "based-on": "reference",
        "owner": "reference",
        "status": "token",
        "_lastUpdated": "date",
        "_count": "number",
        "_summary": "token",
    },
    "AuditEvent": {"entity": "reference", "_count": "number", "_summary": "token"},
    "ServiceRequest": {
        "patient": "reference",
        "identifier": "token",
        "_count": "number",
        "_summary": "token",
    },
    "Observation": {"based-on": "reference", "_count": "number", "_summary": "token"},
    "Flag": {"patient": "reference", "_count": "number", "_summary": "token"},
}


def _interaction(method: str, rest: str | None) -> str | None:
    if method == "GET" and rest == "/{resource_id}":
        return "read"
    if method == "GET" and rest is None:
        return "search-type"
    if method == "POST" and rest is None:
        return "create"
    if method == "PUT" and rest == "/{resource_id}":
        return "update"
    return None


def _api_routes(routes: Iterable[Any]) -> Iterator[APIRoute]:
    """Yield every APIRoute, also those of included routers (FastAPI keeps those as one route each)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (included := getattr(route, "original_router", None)) is not None:
            # The gateway includes its routers without a prefix, so their paths are the served paths.
            yield from _api_routes(included.routes)


def capability_statement(app: FastAPI, base_url: str, software_version: str) -> dict[str, Any]:
    """Return the CapabilityStatement for every FHIR route of ``app``."""
    interactions: dict[str, set[str]] = defaultdict(set)
    operations: set[str] = set()
    system: set[str] = set()
    for route in _api_routes(app.routes):
        for method in sorted(route.methods or ()):
            if route.path == "/fhir" and method == "POST":
                system.add("transaction")
            elif "$" in route.path:
                operations.add(route.path.rsplit("$", 1)[1])
            elif match := _RESOURCE_PATH.match(route.path):
                name = _interaction(method, match["rest"])
                if name:
                    interactions[match["type"]].add(name)
    resources = [
        {
            "type": resource_type,
            "interaction": [{"code": code} for code in sorted(codes)],
            "searchParam": [{"name": n, "type": t} for n, t in _SEARCH_PARAMS.get(resource_type, {}).items()],
        }
        for resource_type, codes in sorted(interactions.items())
    ]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-23",
        "kind": "instance",
        "software": {"name": "Haven", "version": software_version},
        "implementation": {"description": "Haven FHIR API", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "rest": [
            {
                "mode": "server",
                "security": {"description": "Bearer JWT naming the organisation and its role"},
                "resource": resources,
                "interaction": [{"code": code} for code in sorted(system)],
                "operation": [
                    {"name": name, "definition": f"{base_url}/OperationDefinition/{name}"}
                    for name in sorted(operations)
                ],
            }
        ],
    }
