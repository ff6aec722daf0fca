"""Process lifecycle: start, readiness, and a clean stop on SIGTERM or Ctrl-C.

A service is an async function ``run(ctx)`` that starts its work and returns when ``ctx.stop`` is set.
On a signal: readiness goes false first (so no new work is routed here), intake stops, in-flight work
finishes within the grace period, NATS is drained, and telemetry is flushed (style.md, "A service").
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from haven.kit import bus, telemetry
from haven.kit.logs import configure_logging, log_event
from haven.kit.settings import ServiceSettings
from haven.kit.topology import ensure_topology

_log = logging.getLogger(__name__)


@dataclass
class Readiness:
    """Whether the service can take work now; health endpoints report it."""

    ready: bool = False
    listeners: list[Callable[[bool], None]] = field(default_factory=list)

    def set(self, ready: bool) -> None:
        """Change readiness and tell every listener (for example the gRPC health servicer)."""
        self.ready = ready
        for listener in self.listeners:
            listener(ready)


@dataclass
class ServiceContext:
    """What a running service gets: its connection, JetStream, the stop signal and its readiness."""

    name: str
    nc: NatsClient
    js: JetStreamContext
    stop: asyncio.Event
    readiness: Readiness


ServiceMain = Callable[[ServiceContext], Coroutine[Any, Any, None]]


async def run_service(name: str, settings: ServiceSettings, main: ServiceMain) -> None:
    """Connect, create the topology, run ``main`` until a signal, then shut down in order."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    readiness = Readiness()
    # Readiness mirrors the NATS connection: a disconnected service is not ready.
    nc = await bus.connect(
        settings.nats_url,
        name,
        on_disconnect=_on_connection_change(readiness, stop, False),
        on_reconnect=_on_connection_change(readiness, stop, True),
    )
    try:
        js = nc.jetstream()
        await ensure_topology(js)
        ctx = ServiceContext(name=name, nc=nc, js=js, stop=stop, readiness=readiness)
        work = asyncio.create_task(main(ctx))
        log_event(_log, "service started", service_name=name)
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
        # Not ready first, so nothing new is routed here, then stop intake and finish in-flight work.
        readiness.set(False)
        stop.set()
        log_event(_log, "service stopping", service_name=name)
        try:
            await asyncio.wait_for(work, timeout=settings.shutdown_grace_seconds)
        except TimeoutError:
            log_event(_log, "in-flight work did not finish in the grace period", logging.WARNING)
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()
        telemetry.shutdown_tracing()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    log_event(_log, "service stopped", service_name=name)


def _on_connection_change(
    readiness: Readiness, stop: asyncio.Event, connected: bool
) -> Callable[[], Awaitable[None]]:
    async def callback() -> None:
        if not stop.is_set():
            readiness.set(connected)

    return callback


def start(name: str, settings: ServiceSettings, main: ServiceMain) -> None:
    """Entry point of a service process: logging, tracing, then ``run_service`` until stopped."""
    configure_logging(name, settings.log_level)
    telemetry.configure_tracing(name)
    tune_garbage_collector()
    asyncio.run(run_service(name, settings, main))


def tune_garbage_collector() -> None:
    """Keep collector pauses off the request path.

    Everything loaded at start (rule data, directories, generated modules) is moved out of the
    collector's sight, and young-generation collections run less often: each event allocates a few
    hundred short-lived objects, and with the default threshold a collection lands inside most
    requests and shows up in the tail latency.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
