"""Waiting for a service running beside the test, and reading what it stored in a stream.

``eventually`` polls a probe until it returns something; ``stored_messages`` reads every message kept
on a subject with an ephemeral consumer that acknowledges nothing, so what it reads stays for the
services' own durable consumers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import FetchTimeoutError

T = TypeVar("T")


async def eventually(probe: Callable[[], Awaitable[T | None]], timeout: float = 10.0) -> T:
    """Return the probe's first answer that is not None; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = await probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def stored_messages(js: JetStreamContext, stream: str, subject: str) -> list[bytes]:
    """Return every message stored on `subject` (an ephemeral consumer; nothing is acknowledged)."""
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.NONE,
        filter_subject=subject,
        inactive_threshold=5,
    )
    subscription = await js.pull_subscribe(subject, stream=stream, config=config)
    found: list[bytes] = []
    try:
        while True:
            try:
                found.extend(m.data for m in await subscription.fetch(256, timeout=0.3))
            except (TimeoutError, FetchTimeoutError):
                return found
    finally:
        await subscription.unsubscribe()
