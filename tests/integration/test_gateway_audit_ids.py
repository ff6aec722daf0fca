"""Each interaction is its own AuditEvent, even when two are alike to the millisecond; a repeat is not.

The gateway's clock is held still, so two reads in a row are identical in everything an AuditEvent
records (who, what, when, even the caller's X-Request-ID); only the interaction tells them apart.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from nats.aio.client import Client as NatsClient

from haven.kit.batch import send_all
from haven.organisations import Role
from services.gateway.audit_log import audit_record
from services.gateway.security.principal import Principal
from services.gateway.state import GatewayState
from services.gateway.testing import bearer, in_process_app
from tests.support.client import example
from tests.support.clock import MovableClock

NOW = datetime(2026, 11, 24, 9, 15, tzinfo=UTC)
POLICE = bearer("demo-police", "referrer", NOW)
OPERATOR = bearer("demo-operator", "operator", NOW)


@pytest.fixture
async def app(nats_client: NatsClient) -> FastAPI:
    """The in-process gateway, its clock held at NOW."""
    return await in_process_app(nats_client, clock=MovableClock(NOW))


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to ``app``."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        yield http


async def audit_messages(nats_client: NatsClient) -> int:
    """Return how many AuditEvents the HAVEN_AUDIT stream holds."""
    return int((await nats_client.jetstream().stream_info("HAVEN_AUDIT")).state.messages)


async def audit_events(client: httpx.AsyncClient, entity: str) -> list[dict[str, Any]]:
    """Return the stored AuditEvents naming ``entity``, oldest first."""
    found = await client.get("/fhir/AuditEvent", params={"entity": entity, "_count": 100}, headers=OPERATOR)
    assert found.status_code == 200
    return [e["resource"] for e in found.json().get("entry", [])]


def without_id(event: dict[str, Any]) -> dict[str, Any]:
    """Return the event without what the store and the id add, to compare what it records."""
    return {k: v for k, v in event.items() if k not in ("id", "meta")}


async def test_two_identical_reads_in_a_row_are_two_audit_events(
    client: httpx.AsyncClient, nats_client: NatsClient
) -> None:
    created = await client.post("/fhir", headers=POLICE, json=example("police-night-referral.json"))
    assert created.status_code == 201
    referral = created.headers["location"].split("/_history")[0]
    before = await audit_messages(nats_client)
    same = {**POLICE, "X-Request-ID": "same-request-twice"}
    reads = [await client.get(f"/fhir/{referral}", headers=same) for _ in range(2)]
    assert [r.status_code for r in reads] == [200, 200]

    assert await audit_messages(nats_client) == before + 2
    events = await audit_events(client, referral)
    read_events = [e for e in events if e["action"] == "R"]
    assert len(read_events) == 2
    first, second = read_events
    assert first["id"] != second["id"]
    # Nothing else tells them apart: the same who, what, when and request id.
    assert without_id(first) == without_id(second)


async def test_a_repeated_write_of_one_interaction_is_one_audit_event(
    app: FastAPI, client: httpx.AsyncClient, nats_client: NatsClient
) -> None:
    state: GatewayState = app.state.haven
    operator = Principal("demo-operator", Role.OPERATOR, frozenset(), "")
    task = f"Task/{uuid.uuid4()}"
    interaction = str(uuid.uuid4())

    def build() -> Any:
        return audit_record(
            state, operator, "R", [task], purpose="HOPERAT", at=NOW, request_id="", interaction_id=interaction
        )

    before = await audit_messages(nats_client)
    for record in (build(), build()):  # a retry, and the same interaction built again (a sweep)
        await send_all(state.js, [record.publish_call(), *record.writes])

    assert await audit_messages(nats_client) == before + 1
    assert [e["id"] for e in await audit_events(client, task)] == [build().event["id"]]
    # Another interaction with the same content is a record of its own.
    other = audit_record(
        state,
        operator,
        "R",
        [task],
        purpose="HOPERAT",
        at=NOW,
        request_id="",
        interaction_id=str(uuid.uuid4()),
    )
    assert other.event["id"] != build().event["id"]
