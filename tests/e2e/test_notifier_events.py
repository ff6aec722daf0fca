"""The LA hears of a referral from the moment it arrives, through the real processes.

One system start: the LA subscribes; the police post an example Bundle through the gateway; the LA's
endpoint receives `referral-received` and then `referral-routed`, each signed and named in
``X-Haven-Event-Type``. The ICTG provider then rejects its Task through ``PUT /fhir/Task/<id>`` with a
coded reason, and the LA receives `task-rejected` naming that Task.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import RunningHaven
from tests.e2e.test_notifier_delivery import Partner, cached_token, refer, subscribe, wait
from tests.e2e.test_router_rerouting import _put_status, _tasks
from tests.support.client import auth_headers
from tests.support.receivers import ReceivedRequest

pytestmark = pytest.mark.e2e


class TypedPartner(Partner):
    """A Partner (verifies signatures, de-duplicates) that also keeps each event type and body."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, dict[str, object]]] = []
        self._events_lock = threading.Lock()

    def answer(self, request: ReceivedRequest) -> int:
        status = super().answer(request)
        if status == 200:
            with self._events_lock:
                self.events.append((request.headers["x-haven-event-type"], json.loads(request.body)))
        return status

    def about(self, referral_id: str) -> list[tuple[str, dict[str, object]]]:
        with self._events_lock:
            return [(t, b) for t, b in self.events if b.get("referral_id") == referral_id]

    def types(self, referral_id: str) -> set[str]:
        return {t for t, _ in self.about(referral_id)}


@pytest.fixture(scope="module")
def la(haven: RunningHaven) -> Iterator[TypedPartner]:
    partner = TypedPartner()
    subscribe(haven, partner)  # as demo-la-manchester, the LA of the example referral
    yield partner
    partner.receiver.stop()


def test_the_la_hears_of_a_referral_its_routing_and_a_rejected_task(
    haven: RunningHaven, la: TypedPartner
) -> None:
    referral_id = refer(haven)  # examples/police-night-referral.json, a Manchester child
    wait(
        lambda: {"referral-received", "referral-routed"} <= la.types(referral_id),
        what="referral-received and referral-routed delivered to the LA",
    )
    received = next(b for t, b in la.about(referral_id) if t == "referral-received")
    assert received["local_authority_gss"] == "E08000003" and received["referrer_kind"] == "police"

    police = auth_headers(cached_token(str(haven.config.data_dir), "demo-police", "referrer"))
    [task] = _tasks(haven, police, referral_id, 1)
    assert task["owner"] == {"reference": "Organization/ictg-provider"}
    ictg = auth_headers(cached_token(str(haven.config.data_dir), "ictg-provider", "provider"))
    _put_status(haven, ictg, task["id"], "rejected", "no-capacity")

    wait(lambda: "task-rejected" in la.types(referral_id), what="task-rejected delivered to the LA")
    rejected = next(b for t, b in la.about(referral_id) if t == "task-rejected")
    assert rejected["rejected_task_ids"] == [task["id"]]
    assert rejected["rejection_reason_code"] == "no-capacity"
    assert la.bad == 0 and la.repeats == 0
