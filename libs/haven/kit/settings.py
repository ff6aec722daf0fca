"""Settings every service shares, read from the environment (prefix ``HAVEN_``).

Each service subclasses ``ServiceSettings`` with its own fields. A value without a default is
required, so a service started without it stops at once with a message naming the variable.
Telemetry reads the standard ``OTEL_*`` variables itself and is not configured here.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """What every Haven service needs to start."""

    model_config = SettingsConfigDict(env_prefix="HAVEN_", extra="ignore")

    nats_url: str = Field(description="NATS server URL, e.g. nats://127.0.0.1:4222 (required)")
    data_dir: Path = Field(default=Path(".haven"), description="local state: keys, embedded NATS data")
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR")
    shutdown_grace_seconds: float = Field(default=15.0, description="time to finish in-flight work")
