"""The FastAPI application of the FHIR API: routes, error answers, tracing, health."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from haven.kit.handles import connection_of
from haven.kit.http_tracing import TracingMiddleware
from services.gateway import (
    closures,
    directory_routes,
    eligibility_ops,
    notification_routes,
    observations,
    reads,
    referrals,
    searches,
    subscriptions,
    tasks,
    validate,
)
from services.gateway.capability import capability_statement
from services.gateway.errors import (
    ApiError,
    fhir_response,
    handle_api_error,
    handle_http_error,
    handle_input_error,
    handle_unexpected,
    outcome_response,
)
from services.gateway.fhir import FhirInputError, Issue, IssueType
from services.gateway.path_ids import MalformedIdGuard
from services.gateway.state import GatewayState

if TYPE_CHECKING:  # only for the annotation: FastAPI before its telemetry takes the dict as extra
    from fastapi.telemetry import TelemetryConfig

VERSION = "0.1.0"
# FastAPI's own OpenTelemetry (on by itself once a tracer provider is set, as the service sets one)
# would add a second server span per request, three internal ones and metrics: work on every request,
# and its spans carry `url.path` (record ids). TracingMiddleware is the one span, with the route only.
_NO_FASTAPI_TELEMETRY: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
}


async def _handle_query_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    issues = [
        Issue(
            code=IssueType.VALUE,
            expression=".".join(str(p) for p in e.get("loc", ())[1:]),
            diagnostics=str(e.get("msg", "invalid value")),
        )
        for e in error.errors()
    ]
    return outcome_response(400, issues)


def create_app(state: GatewayState) -> FastAPI:
    """Build the app around a ready GatewayState."""
    app = FastAPI(
        title="Haven FHIR API",
        version=VERSION,
        docs_url="/docs",
        redoc_url=None,
        telemetry=_NO_FASTAPI_TELEMETRY,
    )
    app.state.haven = state
    app.add_middleware(MalformedIdGuard)
    app.add_middleware(TracingMiddleware)
    app.add_exception_handler(ApiError, handle_api_error)
    app.add_exception_handler(FhirInputError, handle_input_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
    app.add_exception_handler(RequestValidationError, _handle_query_error)
    app.add_exception_handler(Exception, handle_unexpected)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "alive"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        """Readiness: NATS is connected and the service is not shutting down."""
        ready = state.readiness.ready and connection_of(state.js).is_connected
        return JSONResponse({"status": "ready" if ready else "not ready"}, status_code=200 if ready else 503)

    @app.get("/fhir/metadata", summary="The CapabilityStatement")
    async def metadata(request: Request) -> JSONResponse:
        """Describe what this server serves."""
        return fhir_response(capability_statement(app, str(request.base_url).rstrip("/") + "/fhir", VERSION))

    for module in (
        referrals,
        reads,
        searches,
        tasks,
        validate,
        subscriptions,
        eligibility_ops,
        notification_routes,
        observations,
        directory_routes,
        closures,
    ):
        app.include_router(module.router)
    return app
