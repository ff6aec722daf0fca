"""The gateway benchmark's floor server does the least a full POST must, and no more.

Its figures are read as the lowest the gateway's could be (``benchmarks/gateway.py``): that holds only
if it really checks the token and validates the referral as the gateway does, and if it really waits
for one acknowledged publish while storing nothing of Haven's.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
from nats.aio.client import Client as NatsClient

from benchmarks.gateway import FLOOR_STREAM, floor_app, referral_bodies
from services.gateway.state import GatewayState
from services.gateway.testing import bearer
from tests.conftest import nats_client, nats_server  # noqa: F401  (the real server these tests use)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
async def floor(nats_client: NatsClient) -> AsyncIterator[tuple[httpx.AsyncClient, GatewayState]]:  # noqa: F811
    app = await floor_app(nats_client)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://floor") as http:
        yield http, app.state.haven


async def floor_messages(nats_client: NatsClient) -> int:  # noqa: F811
    return (await nats_client.jetstream().stream_info(FLOOR_STREAM)).state.messages


async def test_a_referral_is_validated_and_published_once_and_nothing_of_havens_is_stored(
    floor: tuple[httpx.AsyncClient, GatewayState],
    nats_client: NatsClient,  # noqa: F811
) -> None:
    http, state = floor
    before = await floor_messages(nats_client)
    [body] = referral_bodies(1)
    answer = await http.post("/fhir", content=body, headers=bearer("demo-police", "referrer"))
    assert answer.status_code == 201
    referral_id = answer.json()["id"]
    assert await floor_messages(nats_client) == before + 1
    last = await nats_client.jetstream().get_last_msg(FLOOR_STREAM, "bench.floor.referral")
    published = orjson.loads(last.data or b"[]")
    assert [r["resourceType"] for r in published] == ["Patient", "ServiceRequest", "Observation"]
    assert published[1]["id"] == referral_id
    assert await state.store.read("ServiceRequest", referral_id) is None


async def test_it_checks_the_token_and_the_profile_as_the_gateway_does(
    floor: tuple[httpx.AsyncClient, GatewayState],
    nats_client: NatsClient,  # noqa: F811
) -> None:
    http, _ = floor
    before = await floor_messages(nats_client)
    bundle = json.loads((EXAMPLES / "police-night-referral.json").read_text())
    no_token = await http.post("/fhir", json=bundle, headers={"Content-Type": "application/fhir+json"})
    assert no_token.status_code == 401
    provider = await http.post("/fhir", json=bundle, headers=bearer("ictg-provider", "provider"))
    assert provider.status_code == 403
    bundle["entry"][0]["resource"]["birthDate"] = "not a date"
    invalid = await http.post("/fhir", json=bundle, headers=bearer("demo-police", "referrer"))
    assert invalid.status_code == 400
    [issue] = invalid.json()["issue"]
    assert issue["expression"] == ["Bundle.entry[0].resource.birthDate"]
    assert await floor_messages(nats_client) == before
