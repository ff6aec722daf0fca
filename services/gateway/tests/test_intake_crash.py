"""A referral whose intake died half way is completed, never lost, never half visible, never doubled.

Each test makes the gateway "die" at one point of the intake by failing one JetStream call there (the
rest of the intake never runs, as after a crash), against the session's real nats-server, then lets
the sweeper (or a retry with the same X-Request-ID) finish the job. The last ones make the intake's
one batch fail without a death: the gateway completes the referral in stages and answers 201.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from haven.kit import topology
from haven.kit.batch import Answer, Call, KvWrite, Publish, send_all, write_all
from haven.kit.ids import derived_id
from haven.kit.kv_keys import list_bucket_keys
from haven.referral.v1 import referral_pb2
from services.gateway import intake
from services.gateway.fhir import ReferrerContext, parse_referral_bundle
from services.gateway.security.tokens import verify_token
from services.gateway.state import GatewayState
from services.gateway.testing import bearer, in_process_app
from tests.conftest import nats_client, nats_server  # noqa: F401  (the real server these tests use)
from tests.support.clock import MovableClock

NOW = datetime(2026, 11, 23, 3, 10, tzinfo=UTC)
POLICE = bearer("demo-police", "referrer", NOW)
OPERATOR = bearer("demo-operator", "operator", NOW)
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "police-night-referral.json"
LATER = timedelta(minutes=5)


class ProcessDied(Exception):
    """Stands for the gateway process dying at this point of the intake."""


class DyingConnection:
    """The real NATS connection, except that a publish or request on a subject under ``point`` fails."""

    def __init__(self, nc: NatsClient, point: str) -> None:
        self._real = nc
        self.point = point

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    async def publish(self, subject: str, payload: bytes = b"", *args: Any, **kwargs: Any) -> None:
        if subject.startswith(self.point):
            raise ProcessDied(subject)
        await self._real.publish(subject, payload, *args, **kwargs)

    async def request(self, subject: str, payload: bytes = b"", *args: Any, **kwargs: Any) -> Any:
        if subject.startswith(self.point):
            raise ProcessDied(subject)
        return await self._real.request(subject, payload, *args, **kwargs)


def dying_jetstream(nc: NatsClient, point: str) -> JetStreamContext:
    """JetStream over a connection that fails at ``point``: the gateway dies there."""
    return JetStreamContext(cast(NatsClient, DyingConnection(nc, point)))


def a_referral() -> dict[str, Any]:
    """The police night referral of a child no other test posts (its own date of birth and case number)."""
    bundle: dict[str, Any] = json.loads(EXAMPLE.read_text())
    bundle["entry"][0]["resource"]["birthDate"] = (
        date(1990, 1, 1) + timedelta(days=secrets.randbelow(3000))
    ).isoformat()
    for entry in bundle["entry"]:
        for identifier in entry["resource"].get("identifier", []):
            identifier["value"] = f"case-{secrets.token_hex(6)}"
    return bundle


def case_number(bundle: dict[str, Any]) -> str:
    [request] = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "ServiceRequest"]
    identifier = request["identifier"][0]
    return f"{identifier['system']}|{identifier['value']}"


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock(NOW)


@pytest.fixture
async def gateway(
    nats_client: NatsClient,  # noqa: F811
    clock: MovableClock,
) -> AsyncIterator[tuple[httpx.AsyncClient, GatewayState]]:
    # A zero wait: a claim left by a dead request is stale at once, so a retry need not sleep.
    app = await in_process_app(nats_client, clock=clock, idempotency_wait_seconds=0.0)
    state: GatewayState = app.state.haven
    # A death answers 500 like any failure, instead of raising into the test.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        yield http, state


async def received_events(js: JetStreamContext, referral_id: str) -> int:
    """Count the ReferralReceived messages of one referral in the stream (newest 500 looked at)."""
    info = await js.stream_info("HAVEN_REFERRALS")
    found = 0
    for seq in range(info.state.last_seq, max(info.state.first_seq, info.state.last_seq - 500) - 1, -1):
        try:
            message = await js.get_msg("HAVEN_REFERRALS", seq)
        except Exception:
            continue  # removed from the stream
        if message.subject != topology.REFERRAL_RECEIVED or message.data is None:
            continue
        event = referral_pb2.ReferralReceived.FromString(message.data)
        if event.referral_id == referral_id:
            assert event.event_id == derived_id("referral-received", referral_id)
            found += 1
    return found


async def found_by_case_number(http: httpx.AsyncClient, bundle: dict[str, Any]) -> list[str]:
    answer = await http.get(
        "/fhir/ServiceRequest", params={"identifier": case_number(bundle)}, headers=POLICE
    )
    assert answer.status_code == 200, answer.text
    return [e["resource"]["id"] for e in answer.json().get("entry", [])]


async def pending_referrals(state: GatewayState) -> set[str]:
    """The referrals with an intake record still pending."""
    keys = await list_bucket_keys(state.idempotency, f"{intake.PREFIX}*")
    found = set()
    for key in keys:
        try:
            entry = await state.idempotency.get(key)
        except KeyNotFoundError:
            continue
        if entry.value:
            found.add(key.removeprefix(intake.PREFIX))
    return found


async def post_dying(
    http: httpx.AsyncClient,
    state: GatewayState,
    nc: NatsClient,
    point: str,
    bundle: dict[str, Any],
    **headers: str,
) -> str:
    """Post ``bundle`` to a gateway that dies at ``point``; return the id of the referral it was storing."""
    before = await pending_referrals(state)
    healthy = state.js
    state.js = dying_jetstream(nc, point)
    try:
        answer = await http.post("/fhir", json=bundle, headers={**POLICE, **headers})
    finally:
        state.js = healthy
    assert answer.status_code == 500, answer.text
    assert answer.json()["resourceType"] == "OperationOutcome"
    [referral_id] = await pending_referrals(state) - before
    return referral_id


async def sweep_later(state: GatewayState, clock: MovableClock) -> int:
    clock.now = NOW + LATER
    try:
        return await intake.sweep(state)
    finally:
        clock.now = NOW


async def test_a_death_right_after_the_intake_record_is_completed_by_the_sweeper(
    gateway: tuple[httpx.AsyncClient, GatewayState],
    nats_client: NatsClient,  # noqa: F811
    clock: MovableClock,
) -> None:
    http, state = gateway
    bundle = a_referral()
    referral_id = await post_dying(http, state, nats_client, "$KV.haven_resources.", bundle)
    assert await state.store.read("ServiceRequest", referral_id) is None
    assert await found_by_case_number(http, bundle) == []

    await intake.sweep(state)  # at once: the record is too young, its request may still be in flight
    assert referral_id in await pending_referrals(state)
    assert await sweep_later(state, clock) >= 1

    assert await found_by_case_number(http, bundle) == [referral_id]
    assert await received_events(state.js, referral_id) == 1
    assert referral_id not in await pending_referrals(state)


async def test_stored_but_not_announced_is_unreachable_until_the_sweeper_announces_it(
    gateway: tuple[httpx.AsyncClient, GatewayState],
    nats_client: NatsClient,  # noqa: F811
    clock: MovableClock,
) -> None:
    http, state = gateway
    bundle = a_referral()
    referral_id = await post_dying(http, state, nats_client, topology.REFERRAL_RECEIVED, bundle)
    stored = await state.store.read("ServiceRequest", referral_id)
    assert stored is not None, "the resources were written before the death"
    assert await found_by_case_number(http, bundle) == [], "but no search finds them"
    assert await received_events(state.js, referral_id) == 0

    assert await sweep_later(state, clock) >= 1

    assert await found_by_case_number(http, bundle) == [referral_id]
    assert await received_events(state.js, referral_id) == 1
    audits = await http.get(
        "/fhir/AuditEvent", params={"entity": f"ServiceRequest/{referral_id}"}, headers=OPERATOR
    )
    assert audits.status_code == 200, audits.text
    assert [e["resource"]["action"] for e in audits.json()["entry"]].count("C") == 1
    # The resources written before the death were kept as they were, not written again.
    again = await state.store.read("ServiceRequest", referral_id)
    assert again is not None and again.version == stored.version


async def test_a_death_after_the_announcement_announces_once(
    gateway: tuple[httpx.AsyncClient, GatewayState],
    nats_client: NatsClient,  # noqa: F811
    clock: MovableClock,
) -> None:
    http, state = gateway
    bundle = a_referral()
    referral_id = await post_dying(http, state, nats_client, topology.AUDIT_RECORDED, bundle)
    assert await received_events(state.js, referral_id) == 1

    assert await sweep_later(state, clock) >= 1

    assert await received_events(state.js, referral_id) == 1, "the repeat is dropped by its Nats-Msg-Id"
    assert await found_by_case_number(http, bundle) == [referral_id]
    audits = await http.get(
        "/fhir/AuditEvent", params={"entity": f"ServiceRequest/{referral_id}"}, headers=OPERATOR
    )
    assert [e["resource"]["action"] for e in audits.json()["entry"]].count("C") == 1


async def test_a_retry_of_a_dead_request_finishes_its_referral_instead_of_making_another(
    gateway: tuple[httpx.AsyncClient, GatewayState],
    nats_client: NatsClient,  # noqa: F811
) -> None:
    http, state = gateway
    bundle = a_referral()
    request_id = {"X-Request-ID": f"retry-{secrets.token_hex(8)}"}
    referral_id = await post_dying(http, state, nats_client, topology.REFERRAL_RECEIVED, bundle, **request_id)

    retried = await http.post("/fhir", json=bundle, headers={**POLICE, **request_id})

    assert retried.status_code == 201, retried.text
    assert retried.headers["Location"] == f"ServiceRequest/{referral_id}"
    assert await found_by_case_number(http, bundle) == [referral_id]
    assert await received_events(state.js, referral_id) == 1
    again = await http.post("/fhir", json=bundle, headers={**POLICE, **request_id})
    assert (again.status_code, again.json()) == (201, retried.json())


async def test_the_sweeper_answers_the_request_id_of_the_dead_request(
    gateway: tuple[httpx.AsyncClient, GatewayState],
    nats_client: NatsClient,  # noqa: F811
    clock: MovableClock,
) -> None:
    http, state = gateway
    bundle = a_referral()
    request_id = {"X-Request-ID": f"swept-{secrets.token_hex(8)}"}
    referral_id = await post_dying(http, state, nats_client, "$KV.haven_resources.", bundle, **request_id)
    assert await sweep_later(state, clock) >= 1

    retried = await http.post("/fhir", json=bundle, headers={**POLICE, **request_id})

    assert retried.status_code == 201, retried.text
    assert retried.headers["Location"] == f"ServiceRequest/{referral_id}"
    assert await found_by_case_number(http, bundle) == [referral_id]


async def test_a_death_before_the_intake_record_leaves_nothing_and_the_retry_is_taken(
    gateway: tuple[httpx.AsyncClient, GatewayState],
    nats_client: NatsClient,  # noqa: F811
) -> None:
    http, state = gateway
    bundle = a_referral()
    request_id = {"X-Request-ID": f"early-{secrets.token_hex(8)}"}
    before = await pending_referrals(state)
    healthy = state.js
    state.js = dying_jetstream(nats_client, f"$KV.haven_idempotency.{intake.PREFIX}")
    try:
        died = await http.post("/fhir", json=bundle, headers={**POLICE, **request_id})
    finally:
        state.js = healthy
    assert died.status_code == 500
    assert await pending_referrals(state) == before
    assert await found_by_case_number(http, bundle) == []

    retried = await http.post("/fhir", json=bundle, headers={**POLICE, **request_id})

    assert retried.status_code == 201, retried.text
    referral_id = retried.headers["Location"].removeprefix("ServiceRequest/")
    assert await found_by_case_number(http, bundle) == [referral_id]


async def test_the_sweeper_leaves_young_records_and_unreadable_ones_alone(
    gateway: tuple[httpx.AsyncClient, GatewayState], clock: MovableClock
) -> None:
    _, state = gateway
    young = stored_intake(state, a_referral())
    await intake.begin(state, young)
    garbage = f"{intake.PREFIX}{secrets.token_hex(8)}"
    await state.idempotency.put(garbage, b"not an intake record")
    try:
        await intake.sweep(state)  # at NOW: the young record may belong to a request in flight
        assert await state.store.read("ServiceRequest", young.parsed.referral_id) is None
        assert young.parsed.referral_id in await pending_referrals(state)

        await sweep_later(state, clock)

        assert await state.store.read("ServiceRequest", young.parsed.referral_id) is not None
        assert young.parsed.referral_id not in await pending_referrals(state)
        assert (await state.idempotency.get(garbage)).value == b"not an intake record", "left for an operator"
    finally:
        await intake.forget(state, garbage)


async def test_an_intake_record_keeps_everything_needed_to_finish_the_referral(
    gateway: tuple[httpx.AsyncClient, GatewayState],
) -> None:
    _, state = gateway
    record = stored_intake(state, a_referral(), "request.demo-police.abc")
    again = intake.Intake.from_json(record.to_json())
    assert again == record
    with pytest.raises((ValueError, KeyError)):
        intake.Intake.from_json(b'{"referral_id": "x"}')


async def test_a_batch_tells_created_from_already_there(nats_client: NatsClient) -> None:  # noqa: F811
    js = nats_client.jetstream()
    key = f"batch-{secrets.token_hex(6)}"
    first = await write_all(js, [KvWrite(topology.BUCKET_INDEX, key, b"1", create=True)])
    second = await write_all(
        js,
        [
            KvWrite(topology.BUCKET_INDEX, key, b"2", create=True),
            KvWrite(topology.BUCKET_INDEX, f"{key}-other", b"3"),
        ],
    )
    assert first[0] is not None
    assert second[0] is None, "a create of an existing key reports it, and does not overwrite"
    assert second[1] is not None
    bucket = await js.key_value(topology.BUCKET_INDEX)
    assert (await bucket.get(key)).value == b"1"


def stored_intake(state: GatewayState, bundle: dict[str, Any], *claims: str) -> intake.Intake:
    """The intake record the gateway writes for ``bundle`` posted by the police."""
    parsed = parse_referral_bundle(
        bundle, referrer=ReferrerContext("demo-police", "police"), today=state.clock().date()
    )
    token = POLICE["Authorization"].removeprefix("Bearer ")
    principal = verify_token(state.verifier, token, now=state.clock())
    return intake.Intake(parsed, principal, state.clock(), "", "transaction", claims)


class _BatchGoesWrong:
    """``intake.send_all`` whose first one-wait batch of a referral goes wrong after ``sent`` of its calls.

    The calls before the cut are really sent to nats-server (a batch cut short, or one whose answers
    are lost when ``sent`` is all of it); the caller is told it failed, and the gateway carries on.
    """

    def __init__(self, sent: int | None) -> None:
        self.sent = sent
        self.failed = False

    async def __call__(
        self, js: JetStreamContext, calls: Sequence[Call], timeout: float = 5.0
    ) -> list[Answer]:
        # The one-wait batch holds the announcement among other calls (the stages send it alone).
        one_wait = len(calls) > 1 and any(
            isinstance(c, Publish) and c.subject == topology.REFERRAL_RECEIVED for c in calls
        )
        if self.failed or not one_wait:
            return await send_all(js, calls, timeout)
        self.failed = True
        await send_all(js, calls[: self.sent], timeout)
        raise TimeoutError("JetStream answers missing")


def cut_after_announcement(bundle: dict[str, Any], state: GatewayState) -> int:
    """How many calls of the one-wait batch of ``bundle`` come before the search index entries."""
    writes = intake._writes(state, stored_intake(state, bundle))
    return 1 + len(writes.all) - len(writes.searchable)  # the intake record first


@pytest.mark.parametrize("keyed", [False, True], ids=["no request id", "X-Request-ID"])
@pytest.mark.parametrize("cut", ["answers lost", "after the announcement"])
async def test_a_failed_batch_is_completed_in_stages_and_stored_once(
    gateway: tuple[httpx.AsyncClient, GatewayState],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    cut: str,
    keyed: bool,
) -> None:
    http, state = gateway
    bundle = a_referral()
    # With a request key or without, the record is the batch's first call (ADR 14).
    sent = None if cut == "answers lost" else cut_after_announcement(bundle, state)
    goes_wrong = _BatchGoesWrong(sent)
    monkeypatch.setattr(intake, "send_all", goes_wrong)
    headers = {**POLICE, **({"X-Request-ID": f"batch-{secrets.token_hex(8)}"} if keyed else {})}

    answer = await http.post("/fhir", json=bundle, headers=headers)

    assert answer.status_code == 201, answer.text
    assert goes_wrong.failed
    referral_id = answer.headers["Location"].removeprefix("ServiceRequest/")
    assert await found_by_case_number(http, bundle) == [referral_id]
    assert await received_events(state.js, referral_id) == 1
    audits = await http.get(
        "/fhir/AuditEvent", params={"entity": f"ServiceRequest/{referral_id}"}, headers=OPERATOR
    )
    assert [e["resource"]["action"] for e in audits.json()["entry"]].count("C") == 1
    assert "intake batch failed; completing it in stages" in caplog.text
    assert "Patient" not in caplog.text and bundle["entry"][0]["resource"]["birthDate"] not in caplog.text
    await intake.finish_background()
    assert referral_id not in await pending_referrals(state)
    if keyed:  # the request key was answered: a retry gets the same answer, not a second referral
        again = await http.post("/fhir", json=bundle, headers=headers)
        assert (again.status_code, again.json()) == (201, answer.json())


async def test_a_request_key_left_unanswered_after_the_201_keeps_the_record_for_the_sweeper(
    gateway: tuple[httpx.AsyncClient, GatewayState],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    clock: MovableClock,
) -> None:
    http, state = gateway
    bundle = a_referral()
    headers = {**POLICE, "X-Request-ID": f"late-{secrets.token_hex(8)}"}

    async def answer_lost(*_: object) -> None:
        raise ConnectionError("the key's answer was not stored")

    # The key gets its answer after the referrer does (ADR 14): here that store fails.
    monkeypatch.setattr(intake, "complete_if_pending", answer_lost)
    answer = await http.post("/fhir", json=bundle, headers=headers)
    await intake.finish_background()
    monkeypatch.undo()

    assert answer.status_code == 201, answer.text
    referral_id = answer.headers["Location"].removeprefix("ServiceRequest/")
    assert referral_id in await pending_referrals(state), "the record stays until its key is answered"
    assert "intake not finished after its answer; the sweeper finishes it" in caplog.text
    assert await sweep_later(state, clock) >= 1
    assert referral_id not in await pending_referrals(state)
    again = await http.post("/fhir", json=bundle, headers=headers)
    assert (again.status_code, again.json()) == (201, answer.json())
    assert await found_by_case_number(http, bundle) == [referral_id]
    assert await received_events(state.js, referral_id) == 1
