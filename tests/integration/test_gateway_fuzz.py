"""A bounded, seeded schemathesis run against the gateway's own OpenAPI document.

The cases are generated first (hypothesis, derandomized: the same cases every run), then sent to the
in-process app over the session's real nats-server. For every case: no 5xx and no crash; and when
the answer is a refusal (4xx), nothing was written: the resource and index buckets, the facts
bucket and every Haven event stream hold exactly as many messages as before.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from nats.aio.client import Client as NatsClient
from schemathesis import Case

from haven.kit import topology
from services.gateway.testing import bearer, in_process_app

NOW = datetime(2026, 11, 23, 21, 30, tzinfo=UTC)
EXAMPLES = 200
# Who the fuzzer acts as, in turn: each role reaches different handlers and refusals.
CALLERS = [
    bearer("demo-police", "referrer", NOW),
    bearer("demo-la-manchester", "la-platform", NOW),
    bearer("ictg-provider", "provider", NOW),
    bearer("demo-operator", "operator", NOW),
    bearer("demo-operator", "admin", NOW),
]
# Written by nothing but an accepted request (the idempotency bucket is not: a refusal frees its key).
WATCHED_STREAMS = [
    f"KV_{topology.BUCKET_RESOURCES}",
    f"KV_{topology.BUCKET_INDEX}",
    f"KV_{topology.BUCKET_FACTS}",
    f"KV_{topology.BUCKET_SUBSCRIPTIONS}",
    "HAVEN_REFERRALS",
]
# The in-process harness has no eligibility service behind it: these answer 503 by design.
NEEDS_ELIGIBILITY = "$eligibility"


def generate_cases(app_schema: dict[str, Any]) -> list[Case[Any]]:
    """Return EXAMPLES cases over every operation, the same ones on every run (derandomized)."""
    schema = schemathesis.openapi.from_dict(app_schema)
    cases: list[Case[Any]] = []

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(schema.as_strategy())
    def collect(case: Case[Any]) -> None:
        cases.append(case)

    collect()
    return cases[:EXAMPLES]


async def written(nats_client: NatsClient) -> dict[str, int]:
    """Return the message count of every watched stream."""
    js = nats_client.jetstream()
    return {name: (await js.stream_info(name)).state.messages for name in WATCHED_STREAMS}


@pytest.fixture
async def gateway(nats_client: NatsClient) -> AsyncIterator[httpx.AsyncClient]:
    """The in-process gateway, at the test clock so the callers' tokens are valid."""
    app = await in_process_app(nats_client, clock=lambda: NOW, max_body_bytes=20_000)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        http.app_schema = app.openapi()  # type: ignore[attr-defined]
        yield http


def request_of(case: Case[Any], headers: dict[str, str]) -> httpx.Request:
    """Translate a schemathesis case into an httpx request to the in-process app."""
    sent = case.as_transport_kwargs(base_url="http://gw", headers=headers)
    content = sent.get("data")
    if "json" in sent:
        return httpx.Request(
            sent["method"], sent["url"], headers=sent["headers"], params=sent.get("params"), json=sent["json"]
        )
    return httpx.Request(
        sent["method"], sent["url"], headers=sent["headers"], params=sent.get("params"), content=content
    )


async def test_fuzzed_requests_never_fail_and_refusals_store_nothing(
    gateway: httpx.AsyncClient, nats_client: NatsClient
) -> None:
    cases = generate_cases(gateway.app_schema)  # type: ignore[attr-defined]
    assert len(cases) == EXAMPLES
    operations = {(c.method, c.path) for c in cases}
    assert len(operations) >= 20, operations  # the run reaches most of the API, not one route
    statuses: dict[int, int] = {}
    for index, case in enumerate(cases):
        before = await written(nats_client)
        sent = request_of(case, CALLERS[index % len(CALLERS)])
        try:
            answer = await gateway.send(sent)
        except Exception as crash:
            raise AssertionError(f"{sent.method} {sent.url} crashed the app") from crash
        statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
        where = (
            f"{case.method} {case.formatted_path} {case.query} -> {answer.status_code}: {answer.text[:300]}"
        )
        if NEEDS_ELIGIBILITY in case.path and answer.status_code == 503:
            continue
        assert answer.status_code < 500, where
        if answer.status_code >= 400:
            assert answer.headers["content-type"].startswith("application/fhir+json"), where
            assert answer.json()["resourceType"] == "OperationOutcome", where
            assert await written(nats_client) == before, where
    # Most cases are refusals, but not all: some reach a handler's happy path.
    assert any(200 <= s < 300 for s in statuses), statuses
