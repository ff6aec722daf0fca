"""Settings of the gateway (environment prefix ``HAVEN_``)."""

from __future__ import annotations

from pydantic import Field

from haven.kit.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    """What the FHIR API needs beyond the shared settings."""

    gateway_host: str = Field(default="127.0.0.1", description="HTTP listen address")
    gateway_port: int = Field(default=8080, description="HTTP port of the FHIR API")
    eligibility_grpc_target: str = Field(default="127.0.0.1:50051", description="eligibility gRPC address")
    max_body_bytes: int = Field(default=1_000_000, description="larger request bodies answer 413")
    jwt_secret: str = Field(default="", description="HS256 signing secret; empty: the local dev key")
    jwt_jwks_url: str = Field(default="", description="JWKS URL of the production token issuer")
    idempotency_wait_seconds: float = Field(default=10.0, description="how long a repeat waits for the first")
    intake_sweep_seconds: float = Field(
        default=60.0, gt=0, description="how often unfinished intakes (a crash mid-referral) are completed"
    )
    intake_sweep_after_seconds: float = Field(
        default=30.0, ge=0, description="how old an unfinished intake must be before the sweeper takes it"
    )
