"""LA platforms on NATS: each may subscribe to its own area's routing events and to nothing else.

A real nats-server started with the configuration Haven generates (``haven.system.nats_users``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient

from haven.kit.nats_server import EmbeddedNats, NatsUser, free_port, start_embedded_nats
from haven.kit.topology import routed_subject
from haven.system import nats_users

MANCHESTER = "E08000003"
LEEDS = "E08000035"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedNats, list[NatsUser]]]:
    data_dir: Path = tmp_path_factory.mktemp("secured")
    users = nats_users(data_dir)
    server = start_embedded_nats(data_dir / "nats", port=free_port(), users=users)
    yield server, users
    server.stop()


def user(users: list[NatsUser], name: str) -> NatsUser:
    return next(u for u in users if u.user == name)


async def connect(server: EmbeddedNats, login: NatsUser, errors: list[Exception]) -> NatsClient:
    async def on_error(error: Exception) -> None:
        errors.append(error)

    return await nats.connect(login.url(server.host, server.port), error_cb=on_error, allow_reconnect=False)


async def test_la_reads_its_own_area_and_is_refused_another(
    secured: tuple[EmbeddedNats, list[NatsUser]],
) -> None:
    server, users = secured
    service_errors: list[Exception] = []
    services = await connect(server, users[0], service_errors)
    manchester_errors: list[Exception] = []
    manchester = await connect(server, user(users, "la-demo-la-manchester"), manchester_errors)
    try:
        # Its own area first, on a connection that has seen no refusal yet.
        own = await manchester.subscribe(routed_subject(MANCHESTER))
        await manchester.flush()
        await services.publish(routed_subject(MANCHESTER), b"manchester event")
        await services.flush()
        assert (await own.next_msg(timeout=5)).data == b"manchester event"

        # Another area, and everything: the server refuses both subscriptions and delivers nothing.
        other = await manchester.subscribe(routed_subject(LEEDS))
        wildcard = await manchester.subscribe("haven.>")
        await manchester.flush()
        await services.publish(routed_subject(LEEDS), b"leeds event")
        await services.flush()
        for refused in (other, wildcard):
            with pytest.raises(nats.errors.TimeoutError):
                await refused.next_msg(timeout=0.3)
        deadline = asyncio.get_running_loop().time() + 5
        while len(manchester_errors) < 2 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        violations = [str(e).lower() for e in manchester_errors]
        assert any("permissions violation" in v and routed_subject(LEEDS).lower() in v for v in violations)
        assert any("permissions violation" in v and "haven.>" in v for v in violations)

        # Nor may a platform publish (inject or forge events).
        await manchester.publish(routed_subject(MANCHESTER), b"forged")
        await manchester.flush()
        with pytest.raises(nats.errors.TimeoutError):
            await own.next_msg(timeout=0.3)
        assert service_errors == []
    finally:
        await manchester.close()
        await services.close()


async def test_connecting_without_credentials_is_refused(
    secured: tuple[EmbeddedNats, list[NatsUser]],
) -> None:
    server, _ = secured
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await nats.connect(
            f"nats://{server.host}:{server.port}", allow_reconnect=False, max_reconnect_attempts=0
        )


async def test_credentials_survive_a_restart(tmp_path: Path) -> None:
    first = {u.user: u.password for u in nats_users(tmp_path)}
    second = {u.user: u.password for u in nats_users(tmp_path)}
    assert first == second and "la-demo-la-leeds" in first
    assert (tmp_path / "nats-credentials.json").stat().st_mode & 0o077 == 0
