"""OpenTelemetry set-up and trace-context propagation through NATS headers and HTTP calls.

One trace per referral: the gateway's HTTP span is the root, every publish injects ``traceparent``
into the NATS headers, every consumer continues the trace from them, and the notifier's webhook call
carries it to the partner. Exporting follows the standard ``OTEL_*`` variables: spans go to an OTLP/HTTP
endpoint when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the traces-specific variable) is set, nowhere
otherwise. Span attributes are ids and codes only, never personal data.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

_provider: TracerProvider | None = None


def _otlp_exporter() -> SpanExporter | None:
    endpoint_set = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    if not endpoint_set or os.environ.get("OTEL_TRACES_EXPORTER", "otlp") == "none":
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def configure_tracing(service: str, exporter: SpanExporter | None = None) -> TracerProvider:
    """Install the process's tracer provider, exporting to ``exporter`` or to OTLP when configured."""
    global _provider
    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", service)})
    provider = TracerProvider(resource=resource)
    chosen = exporter or _otlp_exporter()
    if chosen is not None:
        provider.add_span_processor(BatchSpanProcessor(chosen))
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def shutdown_tracing() -> None:
    """Flush and stop the exporter, so the last spans of a stopping service are not lost."""
    if _provider is not None:
        _provider.force_flush()
        _provider.shutdown()


def tracer(name: str) -> trace.Tracer:
    """Return a tracer for a module."""
    return trace.get_tracer(name)


def inject_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """Return headers carrying the current trace context (``traceparent``)."""
    carrier: dict[str, str] = dict(headers or {})
    propagate.inject(carrier)
    return carrier


def extract_context(headers: Mapping[str, str] | None) -> context.Context:
    """Return the trace context carried by message or request headers."""
    return propagate.extract(dict(headers or {}))


def current_trace_id() -> str:
    """Return the current trace id as 32 hex characters, or an empty string outside a span."""
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else ""
