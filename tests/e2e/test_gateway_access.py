"""Who may do what, against the whole system: every role against every endpoint and another area's records.

One system start for the module. Tokens are signed with the system's dev key as `haven token`
would sign them. Also here because it needs the real HTTP server: 50 parallel copies of one request.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from haven.kit import bus
from haven.kit.resources import ResourceStore
from services.gateway.security.keys import load_or_create_dev_key
from services.gateway.security.tokens import issue_token
from tests.e2e.conftest import RunningHaven, start_haven
from tests.support.client import example, referral_id_of, subscription

pytestmark = pytest.mark.e2e

ROLES = {
    "police": ("demo-police", "referrer"),
    "edt": ("demo-edt-manchester", "referrer"),
    "la-mcr": ("demo-la-manchester", "la-platform"),
    "la-leeds": ("demo-la-leeds", "la-platform"),
    "ictg": ("ictg-provider", "provider"),
    "afruca": ("afruca", "provider"),
    "operator": ("demo-operator", "operator"),
    "admin": ("demo-operator", "admin"),
}


@dataclass
class World:
    """The running system, a token per role, and a Manchester referral by the police with its Task."""

    haven: RunningHaven
    headers: dict[str, dict[str, str]]
    referral: str
    patient: str
    observation: str
    task: dict[str, Any]
    etag: str
    subscription: str

    def url(self, path: str) -> str:
        """Return the absolute URL of a /fhir path."""
        return self.haven.fhir + path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Start the system and make the records the matrix reads."""
    haven = start_haven(tmp_path_factory.mktemp("haven-access"))
    try:
        key = load_or_create_dev_key(haven.config.data_dir)
        headers = {
            name: {
                "Authorization": f"Bearer {issue_token(key, org, role, now=datetime.now(UTC))}",
                "Content-Type": "application/fhir+json",
            }
            for name, (org, role) in ROLES.items()
        }
        posted = httpx.post(haven.fhir, headers=headers["police"], json=example("police-night-referral.json"))
        assert posted.status_code == 201, posted.text
        locations = [e["response"]["location"].rsplit("/_history", 1)[0] for e in posted.json()["entry"]]
        referral = referral_id_of(posted)
        deadline = time.monotonic() + 20
        tasks: list[dict[str, Any]] = []
        while not tasks and time.monotonic() < deadline:
            found = httpx.get(
                f"{haven.fhir}/Task",
                params={"based-on": f"ServiceRequest/{referral}"},
                headers=headers["police"],
            ).json()
            tasks = [e["resource"] for e in found.get("entry", [])]
            time.sleep(0.1)
        assert tasks, "the router made no Task"
        read = httpx.get(f"{haven.fhir}/Task/{tasks[0]['id']}", headers=headers["ictg"])
        sub = httpx.post(
            f"{haven.fhir}/Subscription", headers=headers["la-mcr"], json=subscription(haven.webhooks.url)
        )
        yield World(
            haven=haven,
            headers=headers,
            referral=referral,
            patient=next(loc for loc in locations if loc.startswith("Patient/")),
            observation=next(loc for loc in locations if loc.startswith("Observation/")),
            task=read.json(),
            etag=read.headers["etag"],
            subscription=sub.json()["id"],
        )
    finally:
        haven.system.stop()
        haven.collector.stop()
        haven.webhooks.stop()


# Who may see the police's Manchester referral: the referrer, Manchester's LA, operator and admin.
# The EDT is in Manchester too, but sees only what it referred; providers see tasks, not referrals.
REFERRAL_READERS = {"police", "la-mcr", "operator", "admin"}
TASK_READERS = REFERRAL_READERS | {"ictg"}


def expected(readers: set[str], name: str) -> int:
    """Return 200 for a reader, else 404: never 403, which would reveal that the record exists."""
    return 200 if name in readers else 404


@pytest.mark.parametrize("name", sorted(ROLES))
def test_reads_are_scoped(world: World, name: str) -> None:
    headers = world.headers[name]
    for path, readers in [
        (f"/ServiceRequest/{world.referral}", REFERRAL_READERS),
        (f"/{world.patient}", REFERRAL_READERS),
        (f"/{world.observation}", REFERRAL_READERS),
        (f"/Task/{world.task['id']}", TASK_READERS),
    ]:
        answer = httpx.get(world.url(path), headers=headers)
        assert answer.status_code == expected(readers, name), (path, answer.text)
        if answer.status_code == 404:
            assert answer.json()["resourceType"] == "OperationOutcome"
    search = httpx.get(
        world.url("/Task"), params={"based-on": f"ServiceRequest/{world.referral}"}, headers=headers
    )
    assert search.status_code == 200
    assert search.json()["total"] == (1 if name in TASK_READERS else 0)


@pytest.mark.parametrize("name", sorted(ROLES))
def test_writes_and_operations_by_role(world: World, name: str) -> None:
    headers = world.headers[name]
    refer = httpx.post(world.haven.fhir, headers=headers, json={})
    assert refer.status_code == (400 if ROLES[name][1] == "referrer" else 403)
    # A move the state machine forbids: only the owner gets as far as the state machine (409).
    update = httpx.put(
        world.url(f"/Task/{world.task['id']}"),
        headers={**headers, "If-Match": world.etag},
        json={**world.task, "status": "completed"},
    )
    assert update.status_code == {"ictg": 409}.get(name, 403 if name in TASK_READERS else 404), update.text
    subscribe = httpx.post(
        world.url("/Subscription"), headers=headers, json=subscription(world.haven.webhooks.url)
    )
    assert subscribe.status_code == (201 if ROLES[name][1] in ("la-platform", "provider", "admin") else 403)
    own = httpx.get(world.url(f"/Subscription/{world.subscription}"), headers=headers)
    assert own.status_code == (200 if name in ("la-mcr", "admin") else 404)
    audit = httpx.get(world.url("/AuditEvent"), params={"entity": world.patient}, headers=headers)
    assert audit.status_code == (200 if name in ("operator", "admin") else 403)


def test_every_endpoint_refuses_missing_and_bad_tokens(world: World) -> None:
    schema = httpx.get(world.haven.fhir.removesuffix("/fhir") + "/openapi.json").json()
    checked = 0
    for path, methods in schema["paths"].items():
        if path == "/fhir/metadata":
            continue
        concrete = path.replace("{", "").replace("}", "")
        for method in methods:
            for headers in ({}, {"Authorization": "Bearer not.a.token"}):
                answer = httpx.request(
                    method.upper(), world.haven.fhir.removesuffix("/fhir") + concrete, headers=headers
                )
                assert answer.status_code == 401, (method, path, answer.text)
                assert answer.json()["issue"][0]["code"] == "login"
                assert answer.headers["www-authenticate"].startswith("Bearer")
            checked += 1
    assert checked >= 10


def test_audit_trail_names_who_read_the_child(world: World) -> None:
    answer = httpx.get(
        world.url("/AuditEvent"), params={"entity": world.patient}, headers=world.headers["admin"]
    )
    agents = {e["resource"]["agent"][0]["who"]["reference"] for e in answer.json()["entry"]}
    assert {
        "Organization/demo-police",
        "Organization/demo-la-manchester",
        "Organization/ictg-provider",
    } <= agents


async def test_fifty_parallel_copies_make_one_referral(world: World) -> None:
    nc = await bus.connect(world.haven.system.nats_url, "access-test")
    js = nc.jetstream()
    store = await ResourceStore.open(js)
    before_requests = len(await store.all_of_type("ServiceRequest"))
    before_events = (await js.stream_info("HAVEN_REFERRALS")).state.messages
    headers = {**world.headers["police"], "X-Request-ID": str(uuid.uuid4())}
    bundle = example("police-night-referral.json")
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=50)) as http:
        answers = await asyncio.gather(
            *(http.post(world.haven.fhir, headers=headers, json=bundle) for _ in range(50))
        )
    assert {a.status_code for a in answers} == {201}
    assert len({a.content for a in answers}) == 1
    assert len({a.headers["location"] for a in answers}) == 1
    assert len(await store.all_of_type("ServiceRequest")) == before_requests + 1
    assert (await js.stream_info("HAVEN_REFERRALS")).state.messages == before_events + 1
    await nc.drain()
