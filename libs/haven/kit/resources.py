"""FHIR resources kept in JetStream KV, with their access scope and a small search index.

Each resource is one KV entry ``<Type>.<id>`` holding the resource and the scope that decides who may
see it (the child's local authority, the referrer, the owning organisations). ``meta.versionId`` is
the KV revision, so ``If-Match`` maps onto KV compare-and-set. Search parameters are index entries
``<Type>.<param>.<value>.<id>`` in a second bucket, listed with a server-side filtered watch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from haven.kit.batch import KvWrite
from haven.kit.handles import bucket_name
from haven.kit.kv_keys import list_bucket_keys
from haven.kit.topology import BUCKET_INDEX, BUCKET_RESOURCES


class VersionConflictError(Exception):
    """The resource changed since the version the caller read (answers 412)."""


class AlreadyExistsError(Exception):
    """A resource with this id exists already."""


@dataclass(frozen=True)
class RecordScope:
    """Who a record concerns: the basis of every access decision."""

    local_authority_gss: str = ""
    referrer_organisation_id: str = ""
    owner_organisation_ids: frozenset[str] = field(default_factory=frozenset)

    def to_json(self) -> dict[str, Any]:
        """Return the scope as JSON-ready data."""
        return {
            "local_authority_gss": self.local_authority_gss,
            "referrer_organisation_id": self.referrer_organisation_id,
            "owner_organisation_ids": sorted(self.owner_organisation_ids),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RecordScope:
        """Read a scope written by ``to_json``."""
        return cls(
            local_authority_gss=str(data.get("local_authority_gss", "")),
            referrer_organisation_id=str(data.get("referrer_organisation_id", "")),
            owner_organisation_ids=frozenset(data.get("owner_organisation_ids", [])),
        )


@dataclass(frozen=True)
class StoredResource:
    """A resource as stored, with its version and scope."""

    resource: dict[str, Any]
    scope: RecordScope
    version: int

    @property
    def reference(self) -> str:
        """Return the relative reference ``Type/id``."""
        return f"{self.resource['resourceType']}/{self.resource['id']}"


def _key(resource_type: str, resource_id: str) -> str:
    return f"{resource_type}.{resource_id}"


def _encode(resource: dict[str, Any], scope: RecordScope, now: datetime) -> bytes:
    body = dict(resource)
    meta = dict(body.get("meta") or {})
    meta.pop("versionId", None)
    meta["lastUpdated"] = now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body["meta"] = meta
    # orjson: the same compact JSON (UTF-8 rather than \u escapes) in a twentieth of json's time; a
    # referral's intake encodes about ten records.
    return orjson.dumps({"resource": body, "scope": scope.to_json()})


def _decode(value: bytes, revision: int) -> StoredResource:
    data = orjson.loads(value)
    resource = data["resource"]
    resource["meta"]["versionId"] = str(revision)
    return StoredResource(resource=resource, scope=RecordScope.from_json(data["scope"]), version=revision)


class ResourceStore:
    """Reads and writes FHIR resources in KV. Open one per process with ``ResourceStore.open``."""

    def __init__(self, resources: KeyValue, index: KeyValue) -> None:
        self._resources = resources
        self._index = index

    @classmethod
    async def open(cls, js: JetStreamContext) -> ResourceStore:
        """Bind to the buckets (created by ``ensure_topology``)."""
        return cls(await js.key_value(BUCKET_RESOURCES), await js.key_value(BUCKET_INDEX))

    async def create(self, resource: dict[str, Any], scope: RecordScope, now: datetime) -> StoredResource:
        """Store a new resource; raise AlreadyExistsError when its id is taken."""
        key = _key(resource["resourceType"], resource["id"])
        try:
            revision = await self._resources.create(key, _encode(resource, scope, now))
        except KeyWrongLastSequenceError:
            raise AlreadyExistsError(key) from None
        return _decode(_encode(resource, scope, now), revision)

    async def put(self, resource: dict[str, Any], scope: RecordScope, now: datetime) -> StoredResource:
        """Store a resource whatever its current version (idempotent writes by their owner)."""
        encoded = _encode(resource, scope, now)
        revision = await self._resources.put(_key(resource["resourceType"], resource["id"]), encoded)
        return _decode(encoded, revision)

    async def update(
        self, resource: dict[str, Any], scope: RecordScope, now: datetime, expected_version: int
    ) -> StoredResource:
        """Replace a resource only if it is still at ``expected_version``; else VersionConflictError."""
        encoded = _encode(resource, scope, now)
        try:
            revision = await self._resources.update(
                _key(resource["resourceType"], resource["id"]), encoded, last=expected_version
            )
        except KeyWrongLastSequenceError:
            raise VersionConflictError(resource["id"]) from None
        return _decode(encoded, revision)

    def creation(self, resource: dict[str, Any], scope: RecordScope, now: datetime) -> KvWrite:
        """Return the write that ``create`` makes, for a batch (``write_all``)."""
        key = _key(resource["resourceType"], resource["id"])
        return KvWrite(bucket_name(self._resources), key, _encode(resource, scope, now), create=True)

    def index_entry(self, resource_type: str, param: str, value: str, resource_id: str) -> KvWrite:
        """Return the write that ``add_index`` makes, for a batch (``write_all``)."""
        key = f"{resource_type}.{param}.{_index_token(value)}.{resource_id}"
        return KvWrite(bucket_name(self._index), key, b"")

    @staticmethod
    def stored(write: KvWrite, revision: int) -> StoredResource:
        """Return the resource a batched ``creation`` stored, at the revision ``write_all`` gave it."""
        return _decode(write.value, revision)

    async def read(self, resource_type: str, resource_id: str) -> StoredResource | None:
        """Return the current version of a resource, or None."""
        if not _is_safe_token(resource_id):
            return None
        try:
            entry = await self._resources.get(_key(resource_type, resource_id))
        except KeyNotFoundError:
            return None
        if entry.value is None or entry.revision is None:
            return None
        return _decode(entry.value, entry.revision)

    async def add_index(self, resource_type: str, param: str, value: str, resource_id: str) -> None:
        """Record that ``resource_type/resource_id`` matches ``param=value``."""
        await self._index.put(f"{resource_type}.{param}.{_index_token(value)}.{resource_id}", b"")

    async def search(self, resource_type: str, param: str, value: str) -> list[StoredResource]:
        """Return the resources indexed under ``param=value``, oldest first."""
        ids = await self._index_ids(f"{resource_type}.{param}.{_index_token(value)}.*")
        found = [await self.read(resource_type, resource_id) for resource_id in ids]
        return sorted((r for r in found if r is not None), key=lambda r: r.version)

    async def all_of_type(self, resource_type: str) -> list[StoredResource]:
        """Return every resource of a type, oldest first (for small types such as Subscription)."""
        ids = await self._keys(self._resources, f"{resource_type}.*")
        found = [await self.read(resource_type, key.split(".", 1)[1]) for key in ids]
        return sorted((r for r in found if r is not None), key=lambda r: r.version)

    async def _index_ids(self, pattern: str) -> list[str]:
        return [key.rsplit(".", 1)[1] for key in await self._keys(self._index, pattern)]

    @staticmethod
    async def _keys(bucket: KeyValue, pattern: str) -> list[str]:
        return await list_bucket_keys(bucket, pattern)


# ASCII letters and digits, "-", "_" and "=": one KV key token (a regex: checked on every write).
_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_=-]{1,128}")


def _is_safe_token(value: str) -> bool:
    return _SAFE_TOKEN.fullmatch(value) is not None


def _index_token(value: str) -> str:
    """Turn a search value into one KV key token (``/`` and ``.`` are not allowed inside one)."""
    token = value.replace("/", "_").replace(".", "=")
    if not _is_safe_token(token):
        raise ValueError("search value has characters that cannot be indexed")
    return token
