"""Shared fixtures: a real ``nats-server -js`` on a free port for the whole run."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient

from haven.kit import bus
from haven.kit.nats_server import EmbeddedNats, free_port, start_embedded_nats
from haven.kit.topology import ensure_topology


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """A JetStream server with file storage in a temporary folder, stopped after the run."""
    store: Path = tmp_path_factory.mktemp("nats")
    server = start_embedded_nats(store, port=free_port())
    yield server
    server.stop()


@pytest.fixture
async def nats_client(nats_server: EmbeddedNats) -> AsyncIterator[NatsClient]:
    """A client connected to the test server, with Haven's streams and buckets created."""
    client = await bus.connect(nats_server.url, "haven-tests")
    await ensure_topology(client.jetstream())
    yield client
    await client.drain()
