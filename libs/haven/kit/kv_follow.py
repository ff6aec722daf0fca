"""Follow the keys of a KV bucket that match a pattern: the values there at start, then every change.

nats-py's watcher signals "initial values done" (a ``None`` update) by comparing the server's pending
count with the messages its client has read so far: on a loaded machine the server may have sent every
initial value without the client having read one yet, and the marker then comes *before* the values.
A router that trusted it reported ready with an empty directory and no free counts (the flaky
``test_changed_places_move_the_free_count``). Here the initial load ends at the first entry the
server sent with nothing pending after it (``delta == 0``), or at once when the pattern matches no
key (a subject-filtered stream info taken before the watch starts); the library's marker is ignored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

Apply = Callable[[KeyValue.Entry, bool], Awaitable[None]]


class InitialLoad:
    """Decides when the initial values of a watch are all in, from the server's pending counts."""

    def __init__(self, keys_at_start: int) -> None:
        self.done = keys_at_start == 0

    def see(self, entry: KeyValue.Entry | None) -> bool:
        """Take one watcher update; True when it completes the initial load (only once)."""
        if self.done or entry is None:  # the library's marker may come early: never trust it
            return False
        if entry.delta == 0:
            self.done = True
            return True
        return False


async def count_keys(js: JetStreamContext, bucket: str, pattern: str) -> int:
    """Return how many keys (live or deleted) of the bucket match ``pattern`` now."""
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=f"$KV.{bucket}.{pattern}")
    return len(info.state.subjects or {})


async def follow(
    js: JetStreamContext,
    bucket: str,
    pattern: str,
    apply: Apply,
    loaded: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
) -> None:
    """Call ``apply(entry, live)`` for every entry, ``loaded()`` once the initial values are applied.

    ``live`` is False for the values present at start and True for later changes. Returns when
    ``stop`` is set.
    """
    kv = await js.key_value(bucket)
    initial = InitialLoad(await count_keys(js, bucket, pattern))
    watcher = await kv.watch(pattern)
    try:
        if initial.done:
            await loaded()
        while not stop.is_set():
            try:
                entry = await watcher.updates(timeout=0.5)  # type: ignore[no-untyped-call]
            except TimeoutError:
                # Every key there at start was removed for good before we read it: nothing to wait for.
                if not initial.done and await count_keys(js, bucket, pattern) == 0:
                    initial.done = True
                    await loaded()
                continue
            if entry is None:
                continue
            await apply(entry, initial.done)
            if initial.see(entry):
                await loaded()
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
