"""One wait per batch of JetStream calls (``haven.kit.batch.send_all``), on a real server.

``send_all`` must answer each call as the nats-py call it replaces would (a revision, None for a
create refused, a stream sequence, a key's value or None), raise what they raise, and give up after
its timeout.
"""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.errors import NoStreamResponseError

from haven.kit import topology
from haven.kit.batch import KvWrite, LastValue, Publish, send_all
from haven.kit.handles import bucket_name, connection_of, context_of

ROUTING = topology.BUCKET_ROUTING


async def test_each_call_is_answered_as_its_own_call_would_be(nc: NatsClient) -> None:
    js = nc.jetstream()
    bucket = await js.key_value(ROUTING)
    await bucket.put("closed.open-then-deleted", b"mark")
    await bucket.delete("closed.open-then-deleted")
    await bucket.put("closed.kept", b"mark")
    answers = await send_all(
        js,
        [
            KvWrite(ROUTING, "sequence.r1", b"1 E09000001", create=True),
            KvWrite(ROUTING, "sequence.r1", b"1 E09000001", create=True),  # exists now: refused
            KvWrite(ROUTING, "outcome.r1.t", b"decided"),
            Publish(topology.routed_subject("E09000001"), b"event", {"Nats-Msg-Id": "e1"}),
            Publish(topology.routed_subject("E09000001"), b"event", {"Nats-Msg-Id": "e1"}),  # duplicate
            LastValue(ROUTING, "closed.kept"),
            LastValue(ROUTING, "closed.never-written"),
            LastValue(ROUTING, "closed.open-then-deleted"),
        ],
    )
    created, refused, put, published, duplicate, kept, never, deleted = answers
    assert isinstance(created, int) and refused is None
    assert isinstance(put, int) and put > created
    assert isinstance(published, int) and duplicate == published
    assert (kept, never, deleted) == (b"mark", None, None)
    assert (await bucket.get("sequence.r1")).value == b"1 E09000001"


async def test_a_publish_no_stream_takes_raises_as_js_publish_does(nc: NatsClient) -> None:
    with pytest.raises(NoStreamResponseError):
        await send_all(nc.jetstream(), [Publish("no.stream.here", b"x")])


async def test_a_call_left_unanswered_times_out(nc: NatsClient) -> None:
    async def silent(msg: Msg) -> None:
        return None  # receives, never answers

    await nc.subscribe("silent.responder", cb=silent)
    with pytest.raises(TimeoutError):
        await send_all(nc.jetstream(), [Publish("silent.responder", b"x")], timeout=0.3)
    # The connection's inbox still answers the next batch.
    assert await send_all(nc.jetstream(), [LastValue(ROUTING, "closed.none")]) == [None]


async def test_the_handles_name_the_bucket_context_and_connection_nats_py_keeps_private(
    nats_client: NatsClient,
) -> None:
    js = nats_client.jetstream()
    bucket = await js.key_value(ROUTING)
    assert bucket_name(bucket) == ROUTING
    assert context_of(bucket) is js
    assert connection_of(js) is nats_client
