"""Settings of the referral router (environment prefix ``HAVEN_``)."""

from __future__ import annotations

from pydantic import Field

from haven.kit.settings import ServiceSettings


class RouterSettings(ServiceSettings):
    """What the router needs beyond the shared settings."""

    router_grpc_host: str = Field(default="127.0.0.1", description="gRPC health listen address")
    router_grpc_port: int = Field(default=50052, description="gRPC port of the health service")
    router_concurrency: int = Field(
        default=64,
        ge=1,
        description="assessments handled at once per process (lanes: one referral's messages in order)",
    )
    reservation_timeout_seconds: float = Field(
        default=4 * 3600.0,
        gt=0,
        description="an unaccepted place is released after this long and the child re-routed",
    )
