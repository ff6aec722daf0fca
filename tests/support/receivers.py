"""Real HTTP receivers the tests stand up: a partner's webhook endpoint and an OTLP trace collector."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


@dataclass
class ReceivedRequest:
    """One request a receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class HttpReceiver:
    """A threaded HTTP server recording every POST; ``answer`` decides each status code."""

    answer: Callable[[ReceivedRequest], int] = lambda _: 200
    received: list[ReceivedRequest] = field(default_factory=list)
    # Sent as the Location header of a 3xx answer (a receiver that redirects its deliveries elsewhere).
    location: str | None = None
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> HttpReceiver:
        """Start serving on a free loopback port."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                request = ReceivedRequest(
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length),
                    time.time(),
                )
                status = receiver.answer(request)
                with receiver._lock:
                    receiver.received.append(request)
                self.send_response(status)
                if receiver.location and 300 <= status < 400:
                    self.send_header("location", receiver.location)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        """Return the base URL."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def requests(self, path: str | None = None) -> list[ReceivedRequest]:
        """Return a copy of what was received (on ``path`` only, when given)."""
        with self._lock:
            return [r for r in self.received if path is None or r.path == path]

    def wait_for(self, predicate: Callable[[list[ReceivedRequest]], bool], timeout: float = 15.0) -> None:
        """Block until ``predicate`` holds over the received requests, or fail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.requests()):
                return
            time.sleep(0.02)
        raise AssertionError(f"receiver condition not met in {timeout}s; got {len(self.requests())} requests")


@dataclass(frozen=True)
class ExportedSpan:
    """A span as the collector received it."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str


def exported_spans(receiver: HttpReceiver) -> list[ExportedSpan]:
    """Decode every OTLP/HTTP protobuf export the receiver got into spans."""
    spans: list[ExportedSpan] = []
    for request in receiver.requests("/v1/traces"):
        export = trace_service_pb2.ExportTraceServiceRequest.FromString(request.body)
        for resource_spans in export.resource_spans:
            service = next(
                (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"),
                "",
            )
            for scope_spans in resource_spans.scope_spans:
                spans += [
                    ExportedSpan(service, s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex())
                    for s in scope_spans.spans
                ]
    return spans
