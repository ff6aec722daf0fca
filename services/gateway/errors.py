"""Every error the API gives is a FHIR OperationOutcome naming the field and an issue-type code."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.gateway.fhir import FhirInputError, Issue, IssueType, operation_outcome

FHIR_JSON = "application/fhir+json"
_log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answer: HTTP status plus the OperationOutcome issues."""

    def __init__(self, status: int, issues: list[Issue], headers: dict[str, str] | None = None) -> None:
        super().__init__(", ".join(i.diagnostics for i in issues))
        self.status = status
        self.issues = issues
        self.headers = headers or {}


def api_error(status: int, code: IssueType, diagnostics: str, expression: str = "") -> ApiError:
    """Return an ApiError with one issue."""
    return ApiError(status, [Issue(code=code, expression=expression, diagnostics=diagnostics)])


def fhir_response(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> JSONResponse:
    """Return a FHIR JSON response."""
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON, headers=headers)


def outcome_response(status: int, issues: list[Issue], headers: dict[str, str] | None = None) -> JSONResponse:
    """Return an OperationOutcome response."""
    return fhir_response(operation_outcome(issues), status, headers)


async def handle_api_error(_: Request, error: Exception) -> JSONResponse:
    """Answer an ApiError."""
    assert isinstance(error, ApiError)
    return outcome_response(error.status, error.issues, error.headers)


async def handle_input_error(_: Request, error: Exception) -> JSONResponse:
    """Answer invalid FHIR input with 400 and every issue found."""
    assert isinstance(error, FhirInputError)
    return outcome_response(400, list(error.issues))


_HTTP_CODES: dict[int, IssueType] = {
    404: IssueType.NOT_FOUND,
    405: IssueType.NOT_SUPPORTED,
    413: IssueType.TOO_LONG,
    415: IssueType.NOT_SUPPORTED,
}


async def handle_http_error(request: Request, error: Exception) -> JSONResponse:
    """Answer routing errors (unknown path, wrong method) as OperationOutcomes."""
    assert isinstance(error, StarletteHTTPException)
    unknown = _unserved_type(request) if error.status_code == 404 else None
    if unknown:
        return outcome_response(
            404,
            [
                Issue(
                    code=IssueType.NOT_SUPPORTED,
                    expression=unknown,
                    diagnostics=f"this server does not serve the resource type {unknown!r}; "
                    "GET /fhir/metadata lists those it does",
                )
            ],
        )
    code = _HTTP_CODES.get(error.status_code, IssueType.PROCESSING)
    return outcome_response(
        error.status_code, [Issue(code=code, expression="", diagnostics=str(error.detail))]
    )


async def handle_unexpected(request: Request, error: Exception) -> JSONResponse:
    """Answer an unexpected failure with 500, saying nothing of the internals (the log has them)."""
    _log.error("unexpected error", exc_info=error, extra={"path": request.url.path})
    return outcome_response(
        500, [Issue(code=IssueType.EXCEPTION, expression="", diagnostics="internal error; retry later")]
    )


_TYPE_IN_PATH = re.compile(r"^/fhir/(?P<type>[A-Za-z]+)(/|$)")


def _unserved_type(request: Request) -> str | None:
    """Return the resource type named by a /fhir path when no route of the app serves that type."""
    match = _TYPE_IN_PATH.match(request.url.path)
    if match is None or match["type"] == "metadata":
        return None
    served = {m["type"] for r in request.app.routes if (m := _TYPE_IN_PATH.match(getattr(r, "path", "")))}
    return None if match["type"] in served else match["type"]
