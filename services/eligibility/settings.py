"""Settings of the eligibility service (environment prefix ``HAVEN_``)."""

from __future__ import annotations

from pydantic import Field

from haven.kit.settings import ServiceSettings
from services.eligibility.domain import DEFAULT_ALERT_DAYS


class EligibilitySettings(ServiceSettings):
    """What the eligibility service needs beyond the shared settings."""

    eligibility_grpc_host: str = Field(default="127.0.0.1", description="gRPC listen address")
    eligibility_grpc_port: int = Field(default=50051, description="gRPC port: Evaluate and health")
    eligibility_pre_exit_alert_days: tuple[int, ...] = Field(
        default=DEFAULT_ALERT_DAYS,
        description="days before a projected exit to re-assess and alert, as JSON, e.g. [90,30,7]",
    )
    eligibility_reassess_after_midnight_seconds: float = Field(
        default=300.0,
        ge=0,
        lt=86400,
        description="a re-assessment due on a date fires this long after that date's midnight UTC",
    )
