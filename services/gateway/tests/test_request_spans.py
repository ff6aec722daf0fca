"""One server span per request, from TracingMiddleware alone: FastAPI's own telemetry stays off.

FastAPI traces by itself once a tracer provider is set (the service sets one): a second server span,
internal spans per request, and ``url.path`` with record ids in its attributes.
"""

from __future__ import annotations

import httpx
from nats.aio.client import Client as NatsClient
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from haven.kit import telemetry
from services.gateway.testing import bearer, in_process_app
from services.gateway.tests.test_intake_crash import NOW, a_referral
from tests.conftest import nats_client, nats_server  # noqa: F401  (the real server these tests use)


async def test_a_referral_is_one_server_span_with_the_route_only(nats_client: NatsClient) -> None:  # noqa: F811
    telemetry.configure_tracing("gateway-test")  # the first provider set stays the global one
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    app = await in_process_app(nats_client, clock=lambda: NOW)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
            answer = await http.post(
                "/fhir", json=a_referral(), headers=bearer("demo-police", "referrer", NOW)
            )
        assert answer.status_code == 201, answer.text
        # Every span since the processor was added: FastAPI's would not share TracingMiddleware's trace.
        finished = spans.get_finished_spans()
    finally:
        spans.shutdown()
    [server] = [s for s in finished if s.kind is SpanKind.SERVER]
    assert server.context is not None and f"{server.context.trace_id:032x}" == answer.headers["x-trace-id"]
    assert server.name == "POST /fhir"
    assert dict(server.attributes or {}) == {
        "http.request.method": "POST",
        "http.response.status_code": 201,
        "http.route": "/fhir",
    }
    assert not [s for s in finished if s.name.startswith("fastapi.")]
