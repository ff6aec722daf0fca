"""Settings of the eligibility service (environment prefix ``HAVEN_``)."""

from __future__ import annotations

from pydantic import Field

from haven.kit.settings import ServiceSettings


class EligibilitySettings(ServiceSettings):
    """What the eligibility service needs beyond the shared settings."""

    eligibility_grpc_host: str = Field(default="127.0.0.1", description="gRPC listen address")
    eligibility_grpc_port: int = Field(default=50051, description="gRPC port: Evaluate and health")
