"""Fixtures for tests that need a nats-server of their own (a fresh store, no other test's state).

``server`` starts one per test on a free port; ``nc`` connects to it with Haven's streams and buckets
created. Registered for the whole tree by the root ``conftest.py``; tests that can share the session's
server use ``nats_client`` (``tests/conftest.py``) instead, which is faster.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient

from haven.kit import bus, topology
from haven.kit.nats_server import EmbeddedNats, free_port, start_embedded_nats


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A nats-server of the test's own."""
    running = start_embedded_nats(tmp_path / "nats", port=free_port())
    yield running
    running.stop()


@pytest.fixture
async def nc(server: EmbeddedNats) -> AsyncIterator[NatsClient]:
    """A client of the test's own server, with the topology created."""
    client = await bus.connect(server.url, "haven-own-server-tests")
    await topology.ensure_topology(client.jetstream())
    yield client
    await client.drain()
