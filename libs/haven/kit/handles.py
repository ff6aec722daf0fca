"""What nats-py knows but does not expose: a bucket's name, a context's connection.

nats-py (2.x) keeps a ``KeyValue``'s bucket name in ``_name``, its JetStream context in ``_js``, and a
``JetStreamContext``'s connection in ``_nc``, with no public accessor. Batches (``haven.kit.batch``)
publish to ``$KV.<bucket>.<key>`` on the connection itself, so they need all three. Every read of
those private attributes is here, so an upgrade that renames one breaks this module and its test
(``tests/integration/test_kit_batch.py``), not a dozen call sites.
"""

from __future__ import annotations

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.kv import KeyValue


def bucket_name(bucket: KeyValue) -> str:
    """Return the KV bucket's name (the ``<bucket>`` of its subjects ``$KV.<bucket>.<key>``)."""
    return str(bucket._name)


def context_of(bucket: KeyValue) -> JetStreamContext:
    """Return the JetStream context the bucket was bound with."""
    js: JetStreamContext = bucket._js
    return js


def connection_of(js: JetStreamContext) -> NatsClient:
    """Return the NATS connection a JetStream context sends on."""
    nc: NatsClient = js._nc
    return nc
