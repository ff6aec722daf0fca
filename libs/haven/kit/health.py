"""The standard gRPC health service (grpc.health.v1), following the service's readiness."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from haven.kit.lifecycle import Readiness

_pending: set[asyncio.Task[None]] = set()


def add_health_service(server: grpc.aio.Server, readiness: Readiness, service_names: list[str]) -> None:
    """Register the health service on ``server``; SERVING only while the service is ready."""
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)

    async def publish(ready: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *service_names]:
            await servicer.set(name, status)

    def on_change(ready: bool) -> None:
        task = asyncio.get_running_loop().create_task(publish(ready))
        _pending.add(task)
        task.add_done_callback(_pending.discard)

    readiness.listeners.append(on_change)
    on_change(readiness.ready)


async def start_grpc_server(
    port: int,
    readiness: Readiness,
    service_names: list[str],
    *,
    add_servicers: Callable[[grpc.aio.Server], None] | None = None,
    host: str = "127.0.0.1",
) -> grpc.aio.Server:
    """Start a gRPC server on ``host:port`` with the health service and any other servicers."""
    server = grpc.aio.server()
    add_health_service(server, readiness, service_names)
    if add_servicers is not None:
        add_servicers(server)
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    await server.start()
    return server
