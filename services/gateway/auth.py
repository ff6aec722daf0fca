"""Authentication of each request: a bearer token naming an organisation and its role.

401 and 403 answer with an OperationOutcome that says what is wrong with the credentials and
nothing about whether any record exists.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from haven.organisations import Role
from services.gateway.errors import ApiError, api_error
from services.gateway.fhir import Issue, IssueType
from services.gateway.security.errors import AuthenticationError, KeySourceUnavailableError
from services.gateway.security.principal import Principal
from services.gateway.security.tokens import token_from_authorization, verify_token_async
from services.gateway.state import GatewayState, gateway_state

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="haven"'}


async def authenticate(request: Request, state: Annotated[GatewayState, Depends(gateway_state)]) -> Principal:
    """Return the caller's Principal, or answer 401 (503 if the identity provider's keys are unreachable)."""
    # async: a plain function dependency costs a worker-thread round trip on every request.
    try:
        token = token_from_authorization(request.headers.get("authorization"))
        principal = await verify_token_async(state.verifier, token, now=state.clock())
    except KeySourceUnavailableError:
        raise api_error(503, IssueType.TRANSIENT, "cannot check tokens now; retry later") from None
    except AuthenticationError as error:
        raise ApiError(
            401,
            [Issue(code=IssueType.LOGIN, expression="", diagnostics=f"authentication failed: {error}")],
            headers=_CHALLENGE,
        ) from None
    request.state.principal = principal
    return principal


async def authenticated(request: Request) -> tuple[GatewayState, Principal]:
    """Return the gateway state and the caller's Principal, answering as ``CurrentPrincipal`` does.

    For the endpoints served without FastAPI's dependency injection (``referrals.py``, the intake).
    """
    state = await gateway_state(request)
    return state, await authenticate(request, state)


def require_role(principal: Principal, *roles: Role) -> None:
    """Answer 403 unless the caller acts in one of ``roles``."""
    if principal.role not in roles:
        allowed = ", ".join(r.value for r in roles)
        raise api_error(403, IssueType.FORBIDDEN, f"this interaction needs one of the roles: {allowed}")


CurrentPrincipal = Annotated[Principal, Depends(authenticate)]
State = Annotated[GatewayState, Depends(gateway_state)]
