"""Task workflow through the gateway in-process over real NATS: If-Match, the state machine, the event.

Tasks are stored the way the router stores them (its own `store_tasks`), then driven with PUTs.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NatsClient

from haven.canonical import CS_TASK_STATUS_REASON
from haven.kit import topology
from haven.kit.ids import new_id
from haven.kit.resources import ResourceStore
from haven.routing.v1 import routing_pb2
from haven.task.v1 import task_pb2
from services.gateway.testing import bearer, in_process_app
from services.referral_router.tasks import store_tasks

NOW = datetime(2026, 11, 23, 21, 30, tzinfo=UTC)
ICTG = bearer("ictg-provider", "provider", NOW)
AFRUCA = bearer("afruca", "provider", NOW)
MANCHESTER = bearer("demo-la-manchester", "la-platform", NOW)
OPERATOR = bearer("demo-operator", "operator", NOW)


@pytest.fixture
async def client(nats_client: NatsClient) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the in-process gateway."""
    app = await in_process_app(nats_client, clock=lambda: NOW)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        yield http


async def routed_task(nats_client: NatsClient, owner: str = "ictg-provider") -> str:
    """Store one requested Task for Manchester owned by `owner`, as the router does; return its id."""
    event = routing_pb2.ReferralRouted(
        referral_id=new_id(), local_authority_gss="E08000003", referrer_organisation_id="demo-police"
    )
    task_id = new_id()
    event.tasks.add(
        task_id=task_id,
        programme_id="ictg",
        service_id="ictg-service",
        owner_organisation_id=owner,
        route="direct",
        reason="eligible for ICTG in Manchester",
    )
    await store_tasks(await ResourceStore.open(nats_client.jetstream()), event, new_id(), NOW)
    return task_id


def reason(code: str) -> dict[str, Any]:
    """Return a coded statusReason."""
    return {"coding": [{"system": CS_TASK_STATUS_REASON, "code": code}]}


async def put(
    client: httpx.AsyncClient, task: dict[str, Any], headers: dict[str, str], etag: str | None, **changes: Any
) -> httpx.Response:
    """PUT the Task with `changes`, sending `etag` as If-Match (none when None)."""
    extra = {"If-Match": etag} if etag is not None else {}
    return await client.put(
        f"/fhir/Task/{task['id']}", headers={**headers, **extra}, content=json.dumps({**task, **changes})
    )


async def status_events(nats_client: NatsClient, task_id: str) -> list[task_pb2.TaskStatusChanged]:
    """Return every TaskStatusChanged on the stream for one task."""
    js = nats_client.jetstream()
    sub = await js.subscribe(topology.TASK_STATUS_CHANGED, ordered_consumer=True)
    info = await js.stream_info("HAVEN_TASKS")
    found = []
    for _ in range(info.state.messages):
        event = task_pb2.TaskStatusChanged.FromString((await sub.next_msg(timeout=2)).data)
        if event.task_id == task_id:
            found.append(event)
    await sub.unsubscribe()
    return found


async def test_provider_accepts_starts_and_completes(
    client: httpx.AsyncClient, nats_client: NatsClient
) -> None:
    task_id = await routed_task(nats_client)
    read = await client.get(f"/fhir/Task/{task_id}", headers=ICTG)
    assert read.status_code == 200
    task, etag = read.json(), read.headers["etag"]
    for status in ("accepted", "in-progress", "completed"):
        answer = await put(client, task, ICTG, etag, status=status)
        assert answer.status_code == 200, answer.text
        task, etag = answer.json(), answer.headers["etag"]
        assert task["status"] == status and etag == f'W/"{task["meta"]["versionId"]}"'
    assert (
        await put(client, task, ICTG, etag, status="cancelled", statusReason=reason("other"))
    ).status_code == 409
    events = await status_events(nats_client, task_id)
    assert [(e.previous_status, e.status) for e in events] == [
        ("requested", "accepted"),
        ("accepted", "in-progress"),
        ("in-progress", "completed"),
    ]
    assert {e.changed_by_organisation_id for e in events} == {"ictg-provider"}
    assert events[0].local_authority_gss == "E08000003" and events[0].programme_id == "ictg"
    assert len({e.event_id for e in events}) == 3


async def test_reject_needs_a_coded_reason(client: httpx.AsyncClient, nats_client: NatsClient) -> None:
    task_id = await routed_task(nats_client)
    read = await client.get(f"/fhir/Task/{task_id}", headers=ICTG)
    task, etag = read.json(), read.headers["etag"]
    missing = await put(client, task, ICTG, etag, status="rejected")
    assert missing.status_code == 400
    assert missing.json()["issue"][0]["expression"] == ["Task.statusReason"]
    unknown = await put(client, task, ICTG, etag, status="rejected", statusReason=reason("too-busy"))
    assert unknown.status_code == 400 and unknown.json()["issue"][0]["code"] == "code-invalid"
    answer = await put(client, task, ICTG, etag, status="rejected", statusReason=reason("uk-national"))
    assert answer.status_code == 200
    assert answer.json()["statusReason"]["coding"][0]["code"] == "uk-national"
    [event] = await status_events(nats_client, task_id)
    assert event.status == "rejected" and event.status_reason_code == "uk-national"


async def test_if_match_missing_stale_and_malformed(
    client: httpx.AsyncClient, nats_client: NatsClient
) -> None:
    task_id = await routed_task(nats_client)
    read = await client.get(f"/fhir/Task/{task_id}", headers=ICTG)
    task, etag = read.json(), read.headers["etag"]
    assert (await put(client, task, ICTG, None, status="accepted")).status_code == 428
    assert (await put(client, task, ICTG, "version-one", status="accepted")).status_code == 400
    assert (await put(client, task, ICTG, etag, status="accepted")).status_code == 200
    stale = await put(client, task, ICTG, etag, status="in-progress")
    assert stale.status_code == 412
    assert stale.json()["issue"][0]["code"] == "conflict"
    assert [e.status for e in await status_events(nats_client, task_id)] == ["accepted"]


async def test_forbidden_moves_and_server_owned_elements(
    client: httpx.AsyncClient, nats_client: NatsClient
) -> None:
    task_id = await routed_task(nats_client)
    read = await client.get(f"/fhir/Task/{task_id}", headers=ICTG)
    task, etag = read.json(), read.headers["etag"]
    skip = await put(client, task, ICTG, etag, status="completed")
    assert skip.status_code == 409 and skip.json()["issue"][0]["expression"] == ["Task.status"]
    moved = await put(client, task, ICTG, etag, status="accepted", owner={"reference": "Organization/afruca"})
    assert moved.status_code == 200
    assert moved.json()["owner"] == {"reference": "Organization/ictg-provider"}


async def test_only_the_owner_may_update(client: httpx.AsyncClient, nats_client: NatsClient) -> None:
    task_id = await routed_task(nats_client)
    read = await client.get(f"/fhir/Task/{task_id}", headers=ICTG)
    task, etag = read.json(), read.headers["etag"]
    # Manchester and the operator may read it, so refusing them reveals nothing: 403.
    assert (await put(client, task, MANCHESTER, etag, status="accepted")).status_code == 403
    assert (await put(client, task, OPERATOR, etag, status="accepted")).status_code == 403
    # Another provider may not even know it exists: 404.
    other = await put(client, task, AFRUCA, etag, status="accepted")
    assert other.status_code == 404 and other.json()["resourceType"] == "OperationOutcome"
    assert (await client.get(f"/fhir/Task/{task_id}", headers=ICTG)).json()["status"] == "requested"
    assert await status_events(nats_client, task_id) == []


async def test_every_update_is_audited(client: httpx.AsyncClient, nats_client: NatsClient) -> None:
    task_id = await routed_task(nats_client)
    read = await client.get(f"/fhir/Task/{task_id}", headers=ICTG)
    answer = await put(client, read.json(), ICTG, read.headers["etag"], status="accepted")
    assert answer.status_code == 200
    js = nats_client.jetstream()
    sub = await js.subscribe(topology.AUDIT_RECORDED, ordered_consumer=True)
    info = await js.stream_info("HAVEN_AUDIT")
    updates = []
    for _ in range(info.state.messages):
        event = json.loads((await sub.next_msg(timeout=2)).data)
        if event["action"] == "U" and event["entity"][0]["what"]["reference"] == f"Task/{task_id}":
            updates.append(event)
    await sub.unsubscribe()
    assert len(updates) == 1
    assert updates[0]["agent"][0]["who"] == {"reference": "Organization/ictg-provider"}
    assert updates[0]["entity"][1]["what"]["reference"] == answer.json()["for"]["reference"]
