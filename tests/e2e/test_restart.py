"""A service that restarts loses nothing and repeats nothing visible.

The eligibility service is stopped while referrals are posted, then started again: every referral
gets its Task exactly once, and each partner gets one notification per referral.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import RunningHaven, start_haven
from tests.support.client import auth_headers, example, referral_id_of, subscription, token
from tests.support.receivers import ReceivedRequest

pytestmark = pytest.mark.e2e

REFERRALS = 12


@pytest.fixture(scope="module")
def haven(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHaven]:
    """A system of its own: this module stops and starts services."""
    running = start_haven(Path(tmp_path_factory.mktemp("restart")))
    yield running
    running.system.stop()
    running.collector.stop()
    running.webhooks.stop()


def _tasks_for(haven: RunningHaven, headers: dict[str, str], referral_id: str) -> list[dict[str, object]]:
    answer = httpx.get(
        f"{haven.fhir}/Task", params={"based-on": f"ServiceRequest/{referral_id}"}, headers=headers
    )
    assert answer.status_code == 200
    return [entry["resource"] for entry in answer.json().get("entry", [])]


@pytest.mark.parametrize("service", ["eligibility", "referral_router", "notifier"])
def test_service_restart_loses_and_repeats_nothing(haven: RunningHaven, service: str) -> None:
    la = auth_headers(token(haven.config.data_dir, "demo-la-manchester", "la-platform"))
    hook = f"/{service}"
    assert (
        httpx.post(
            f"{haven.fhir}/Subscription", headers=la, json=subscription(f"{haven.webhooks.url}{hook}")
        ).status_code
        == 201
    )
    police = auth_headers(token(haven.config.data_dir, "demo-police", "referrer"))

    assert haven.system.stop_service(service) == 0, "a SIGTERM stop should exit cleanly"
    referral_ids = []
    for _ in range(REFERRALS):
        answer = httpx.post(haven.fhir, headers=police, json=example("police-night-referral.json"))
        assert answer.status_code == 201
        referral_ids.append(referral_id_of(answer))
    haven.system.start_service(service)
    haven.system.wait_ready(service)

    wanted = set(referral_ids)
    haven.webhooks.wait_for(
        lambda got: wanted <= {json.loads(r.body)["referral_id"] for r in _routed(got) if r.path == hook},
        timeout=30,
    )
    time.sleep(1.0)  # time for any duplicate delivery to show itself
    # Each referral raises `referral-received` and `referral-routed`: exactly one of each reaches the LA.
    for event_type in ("referral-received", "referral-routed"):
        deliveries = Counter(
            json.loads(r.body)["referral_id"]
            for r in haven.webhooks.requests(hook)
            if r.headers.get("x-haven-event-type") == event_type
        )
        assert all(deliveries[r] == 1 for r in referral_ids), (event_type, deliveries)
    for referral_id in referral_ids:
        tasks = _tasks_for(haven, police, referral_id)
        assert len(tasks) == 1
        assert tasks[0]["status"] == "requested"


def _routed(requests: Iterable[ReceivedRequest]) -> list[ReceivedRequest]:
    return [r for r in requests if r.headers.get("x-haven-event-type") == "referral-routed"]
