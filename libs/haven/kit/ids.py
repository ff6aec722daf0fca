"""Deterministic ids derived from the event that caused them.

A redelivered message must produce the same downstream ids, so that JetStream's ``Nats-Msg-Id``
de-duplication and idempotent KV writes make a retry invisible.
"""

from __future__ import annotations

import uuid

_HAVEN_NAMESPACE = uuid.UUID("1f0c3a52-6a0e-4f8e-9b4c-2d1d7f6e9a10")


def derived_id(*parts: str) -> str:
    """Return a stable UUID (version 5) for the given parts."""
    return str(uuid.uuid5(_HAVEN_NAMESPACE, "\x1f".join(parts)))


def new_id() -> str:
    """Return a fresh random UUID for something that has no cause to derive from."""
    return str(uuid.uuid4())
