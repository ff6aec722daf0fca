"""What every request handler of the gateway needs, built once at start and kept on ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from haven.eligibility.v1 import eligibility_pb2_grpc
from haven.kit.clock import Clock
from haven.kit.lifecycle import Readiness
from haven.kit.resources import ResourceStore
from services.gateway.security.keys import TokenVerifier
from services.gateway.settings import GatewaySettings


@dataclass
class GatewayState:
    """Connections, buckets and settings shared by the handlers."""

    settings: GatewaySettings
    js: JetStreamContext
    store: ResourceStore
    idempotency: KeyValue
    assessments: KeyValue
    subscription_secrets: KeyValue
    verifier: TokenVerifier
    eligibility: eligibility_pb2_grpc.EligibilityServiceStub
    readiness: Readiness
    clock: Clock


async def gateway_state(request: Request) -> GatewayState:
    """Return the gateway state of the app serving ``request``."""
    # async: FastAPI runs a plain function dependency in a worker thread, a round trip per request.
    state: GatewayState = request.app.state.haven
    return state
