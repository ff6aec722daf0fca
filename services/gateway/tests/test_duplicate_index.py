"""The possible-duplicate index as the intake writes it: a new match key is created in the first batch,
a key already there is read and updated, and completing a referral again links it to nothing new.
"""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NatsClient

from services.gateway import intake
from services.gateway.duplicates import KEY_TYPE, first_sighting_writes, link_possible_duplicates
from services.gateway.fhir.duplicates import match_keys
from services.gateway.state import GatewayState
from services.gateway.testing import in_process_app
from services.gateway.tests.test_intake_crash import NOW, a_referral, stored_intake
from tests.conftest import nats_client, nats_server  # noqa: F401  (the real server these tests use)


@pytest.fixture
async def state(nats_client: NatsClient) -> GatewayState:  # noqa: F811
    app = await in_process_app(nats_client, clock=lambda: NOW)
    gateway: GatewayState = app.state.haven
    return gateway


async def sightings(state: GatewayState, key: str) -> list[str]:
    """The referrals recorded under one match key, oldest first."""
    stored = await state.store.read(KEY_TYPE, key)
    assert stored is not None
    return [s["referral"] for s in stored.resource["sightings"]]


async def flags_naming(state: GatewayState, patient_id: str) -> list[str]:
    return [f.resource["id"] for f in await state.store.search("Flag", "patient", f"Patient/{patient_id}")]


async def test_a_new_key_is_created_with_the_referral_and_a_repeat_adds_nothing(state: GatewayState) -> None:
    record = stored_intake(state, a_referral())
    parsed = record.parsed
    [key] = match_keys(parsed.facts)
    await intake.begin(state, record)
    await intake.complete(state, record)
    assert await sightings(state, key) == [parsed.referral_id]
    # Completed again (the sweeper, a retry): the create finds the key, the update keeps one sighting.
    await intake.complete(state, record)
    await intake.forget(state, record.key)
    assert await sightings(state, key) == [parsed.referral_id]
    assert await flags_naming(state, parsed.patient_id) == []


async def test_a_second_referral_of_the_child_is_added_to_the_key_and_flagged(state: GatewayState) -> None:
    bundle = a_referral()
    first, second = stored_intake(state, bundle), stored_intake(state, bundle)
    [key] = match_keys(first.parsed.facts)
    for record in (first, second):
        await intake.begin(state, record)
        await intake.complete(state, record)
        await intake.forget(state, record.key)
    assert await sightings(state, key) == [first.parsed.referral_id, second.parsed.referral_id]
    [flag] = await flags_naming(state, second.parsed.patient_id)
    assert await flags_naming(state, first.parsed.patient_id) == [flag]


async def test_without_outcomes_every_key_is_read_as_before(state: GatewayState) -> None:
    record = stored_intake(state, a_referral())
    [write] = first_sighting_writes(state, record.parsed, NOW)
    assert write.create and write.key == f"{KEY_TYPE}.{match_keys(record.parsed.facts)[0]}"
    assert await link_possible_duplicates(state, record.parsed, NOW) == []
    assert await sightings(state, match_keys(record.parsed.facts)[0]) == [record.parsed.referral_id]
    with pytest.raises(ValueError):
        await link_possible_duplicates(state, record.parsed, NOW, [])
