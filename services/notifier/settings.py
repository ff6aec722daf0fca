"""Settings of the notifier (environment prefix ``HAVEN_``)."""

from __future__ import annotations

from pydantic import Field

from haven.kit.settings import ServiceSettings


class NotifierSettings(ServiceSettings):
    """What the notifier needs beyond the shared settings."""

    notifier_grpc_host: str = Field(default="127.0.0.1", description="gRPC health listen address")
    notifier_grpc_port: int = Field(default=50053, description="gRPC port of the health service")
    retry_schedule: str = Field(
        default="1s,5s,30s,2m,10m,1h,6h,1d,2d",
        description="ceilings of the waits between delivery attempts; after the last, dead-letter",
    )
    webhook_timeout_seconds: float = Field(default=5.0, description="time a receiver has to answer")
    breaker_failure_threshold: int = Field(default=5, description="failures that open an endpoint's breaker")
    breaker_reset_seconds: float = Field(default=30.0, description="how long a breaker stays open")
