"""Settings of the referral router (environment prefix ``HAVEN_``)."""

from __future__ import annotations

from pydantic import Field

from haven.kit.settings import ServiceSettings


class RouterSettings(ServiceSettings):
    """What the router needs beyond the shared settings."""

    router_grpc_host: str = Field(default="127.0.0.1", description="gRPC health listen address")
    router_grpc_port: int = Field(default=50052, description="gRPC port of the health service")
