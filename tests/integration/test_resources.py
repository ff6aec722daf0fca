"""FHIR resources in KV against a real nats-server: versions, compare-and-set, search index."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from nats.aio.client import Client as NatsClient

from haven.kit.resources import AlreadyExistsError, RecordScope, ResourceStore, VersionConflictError

NOW = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
SCOPE = RecordScope(local_authority_gss="E08000003", referrer_organisation_id="demo-police")


def _task(task_id: str, status: str = "requested") -> dict[str, object]:
    return {"resourceType": "Task", "id": task_id, "status": status, "intent": "order"}


async def test_create_read_and_version(nats_client: NatsClient) -> None:
    store = await ResourceStore.open(nats_client.jetstream())
    task_id = str(uuid.uuid4())
    created = await store.create(_task(task_id), SCOPE, NOW)
    read = await store.read("Task", task_id)
    assert read is not None
    assert read.resource["meta"]["versionId"] == str(created.version)
    assert read.resource["meta"]["lastUpdated"] == "2026-11-23T03:00:00.000Z"
    assert read.scope == SCOPE
    with pytest.raises(AlreadyExistsError):
        await store.create(_task(task_id), SCOPE, NOW)


async def test_update_needs_the_current_version(nats_client: NatsClient) -> None:
    store = await ResourceStore.open(nats_client.jetstream())
    task_id = str(uuid.uuid4())
    created = await store.create(_task(task_id), SCOPE, NOW)
    updated = await store.update(_task(task_id, "accepted"), SCOPE, NOW, expected_version=created.version)
    assert updated.version > created.version
    with pytest.raises(VersionConflictError):
        await store.update(_task(task_id, "rejected"), SCOPE, NOW, expected_version=created.version)
    current = await store.read("Task", task_id)
    assert current is not None and current.resource["status"] == "accepted"


async def test_search_index_finds_only_matches(nats_client: NatsClient) -> None:
    store = await ResourceStore.open(nats_client.jetstream())
    referral, other = str(uuid.uuid4()), str(uuid.uuid4())
    ids = [str(uuid.uuid4()) for _ in range(3)]
    for index, task_id in enumerate(ids):
        await store.create(_task(task_id), SCOPE, NOW)
        await store.add_index(
            "Task", "based-on", f"ServiceRequest/{referral if index < 2 else other}", task_id
        )
    found = await store.search("Task", "based-on", f"ServiceRequest/{referral}")
    assert [r.resource["id"] for r in found] == ids[:2]
    assert await store.search("Task", "based-on", f"ServiceRequest/{uuid.uuid4()}") == []


async def test_unsafe_ids_are_not_found(nats_client: NatsClient) -> None:
    store = await ResourceStore.open(nats_client.jetstream())
    assert await store.read("Task", "a.b") is None
    assert await store.read("Task", "*") is None


async def test_non_ascii_ids_are_not_found(nats_client: NatsClient) -> None:
    store = await ResourceStore.open(nats_client.jetstream())
    assert await store.read("Task", "tâche") is None
    with pytest.raises(ValueError, match="cannot be indexed"):
        await store.search("Task", "owner", "Organization/écrou")
