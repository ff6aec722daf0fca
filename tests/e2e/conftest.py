"""The whole system as real processes, started by the same code as ``make up``, once per module.

Spans from every service are exported over OTLP/HTTP to a collector run by the test, and partners'
webhooks go to a real HTTP receiver.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from haven.system import HavenSystem, SystemConfig
from tests.support.receivers import HttpReceiver


@dataclass
class RunningHaven:
    """A started system with its collector and webhook receiver."""

    system: HavenSystem
    collector: HttpReceiver
    webhooks: HttpReceiver

    @property
    def config(self) -> SystemConfig:
        """Return the system's configuration."""
        return self.system.config

    @property
    def fhir(self) -> str:
        """Return the FHIR base URL."""
        return self.system.config.gateway_url


def start_haven(data_dir: Path, **extra_env: str) -> RunningHaven:
    """Start the system with tracing to a local collector; the caller stops it."""
    collector = HttpReceiver().start()
    webhooks = HttpReceiver().start()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "HAVEN_RETRY_SCHEDULE": "200ms,400ms,800ms",
        **extra_env,
    }
    config = SystemConfig.with_free_ports(data_dir, log_dir=data_dir / "logs", extra_env=env)
    system = HavenSystem(config)
    try:
        system.start(timeout=60)
    except BaseException:
        system.stop()
        collector.stop()
        webhooks.stop()
        raise
    return RunningHaven(system, collector, webhooks)


@pytest.fixture(scope="module")
def haven(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHaven]:
    """A running system shared by the tests of one module."""
    running = start_haven(tmp_path_factory.mktemp("haven"))
    yield running
    running.system.stop()
    running.collector.stop()
    running.webhooks.stop()
