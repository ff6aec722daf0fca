"""List the keys of a KV bucket that match a pattern, from the server's own subject index.

nats-py's ``KeyValue.keys()`` and a watcher's "initial values done" marker are unreliable on a loaded
machine: the marker compares the server's pending count with what the client has read so far, and can
come before the values, so a listing may silently miss keys. Asking the stream for its subjects
(``STREAM.INFO`` with ``subjects_filter``, paged by ``offset``) answers from the server's index in one
request per page and creates no consumer. Deleted keys are listed too (their delete marker is a
message): callers read each key and skip what is gone.
"""

from __future__ import annotations

import json

from nats.aio.client import Client as NatsClient
from nats.js.kv import KeyValue

from haven.kit.handles import bucket_name, connection_of, context_of

_API_TIMEOUT_SECONDS = 5.0


class KeyListingError(RuntimeError):
    """The server refused the listing."""


async def list_bucket_keys(bucket: KeyValue, pattern: str = ">") -> list[str]:
    """Return the keys of a bound bucket matching ``pattern``, as ``list_keys`` does."""
    # nats-py keeps a bucket's name and connection only in private attributes: read them here, once.
    return await list_keys(connection_of(context_of(bucket)), bucket_name(bucket), pattern)


async def list_keys(nc: NatsClient, bucket: str, pattern: str = ">") -> list[str]:
    """Return the keys of ``bucket`` matching ``pattern`` (NATS wildcards), in no particular order."""
    prefix = f"$KV.{bucket}."
    subjects: list[str] = []
    while True:
        request = {"subjects_filter": prefix + pattern, "offset": len(subjects)}
        answer = await nc.request(
            f"$JS.API.STREAM.INFO.KV_{bucket}", json.dumps(request).encode(), timeout=_API_TIMEOUT_SECONDS
        )
        data = json.loads(answer.data)
        if "error" in data:
            raise KeyListingError(
                f"listing keys of {bucket}: {data['error'].get('description', data['error'])}"
            )
        page = list((data.get("state") or {}).get("subjects") or {})
        subjects += page
        if not page or len(subjects) >= int(data.get("total", 0)):
            break
    return [subject.removeprefix(prefix) for subject in subjects]
