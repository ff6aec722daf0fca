"""The gateway app in-process over a real NATS connection, for integration tests and the benchmark.

Everything but the process boundary is the production code: the same buckets, streams, token
verification and handlers. The clock is injected so tests move time instead of sleeping, and tokens
are signed with a fixed test secret instead of the dev key file.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import grpc
from fastapi import FastAPI
from nats.aio.client import Client as NatsClient

from haven.eligibility.v1 import eligibility_pb2_grpc
from haven.kit import topology
from haven.kit.clock import Clock, system_clock
from haven.kit.lifecycle import Readiness
from haven.kit.resources import ResourceStore
from haven.organisations import Role
from services.gateway.app import create_app
from services.gateway.security.keys import HmacTokenVerifier
from services.gateway.security.tokens import issue_token
from services.gateway.settings import GatewaySettings
from services.gateway.state import GatewayState

TEST_SECRET = "haven-test-secret-of-at-least-32-bytes!"


async def in_process_app(
    nc: NatsClient, clock: Clock = system_clock, data_dir: Path = Path(".haven-test"), **settings: object
) -> FastAPI:
    """Return the gateway app bound to ``nc`` (topology must exist), ready to serve."""
    js = nc.jetstream()
    config = GatewaySettings(nats_url="nats://in-process", data_dir=data_dir, **settings)  # type: ignore[arg-type]
    readiness = Readiness()
    readiness.set(True)
    state = GatewayState(
        settings=config,
        js=js,
        store=await ResourceStore.open(js),
        idempotency=await js.key_value(topology.BUCKET_IDEMPOTENCY),
        assessments=await js.key_value(topology.BUCKET_ASSESSMENTS),
        subscription_secrets=await js.key_value(topology.BUCKET_SUBSCRIPTIONS),
        verifier=HmacTokenVerifier(TEST_SECRET),
        # No eligibility service behind it: the $eligibility operations answer 503 here.
        eligibility=eligibility_pb2_grpc.EligibilityServiceStub(grpc.aio.insecure_channel("127.0.0.1:9")),
        readiness=readiness,
        clock=clock,
    )
    return create_app(state)


def bearer(organisation_id: str, role: Role | str, now: datetime | None = None) -> dict[str, str]:
    """Return the headers of a FHIR request by ``organisation_id`` acting as ``role``."""
    token = issue_token(TEST_SECRET, organisation_id, role, now=now or datetime.now(UTC))
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
