"""ASGI middleware: one server span per HTTP request, continuing a caller's ``traceparent``.

The trace id is returned in the ``X-Trace-Id`` header so an operator can find a referral's trace from
the answer the referrer got. Attributes are method, route and status: never a body or query value.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from haven.kit import telemetry

_tracer = telemetry.tracer(__name__)


class TracingMiddleware:
    """Wrap each HTTP request in a SERVER span."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        parent = telemetry.extract_context(headers)
        name = f"{scope['method']} {scope['path'].split('/')[1] if scope['path'] != '/' else '/'}"
        with _tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER) as span:
            span.set_attribute("http.request.method", scope["method"])
            trace_id = telemetry.current_trace_id()

            async def send_with_trace(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                    extra: list[Any] = [(b"x-trace-id", trace_id.encode())]
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
                await send(message)

            await self.app(scope, receive, send_with_trace)
            route = scope.get("route")
            if route is not None and hasattr(route, "path"):
                span.update_name(f"{scope['method']} {route.path}")
                span.set_attribute("http.route", route.path)
