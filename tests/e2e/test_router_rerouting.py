"""Re-routing through the real pipeline: an admin adds a service, a provider rejects, the child moves on.

One system start: the admin's ``PUT HealthcareService`` adds a second guardianship service covering
Manchester (the routers pick it up without a restart), the police refer a child, the ICTG provider
rejects the Task with a coded reason through ``PUT Task``, the router routes the child to the other
service with a Task that is ``partOf`` the rejected one, and that provider accepts it.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from haven.canonical import CS_TASK_STATUS_REASON
from services.referral_router.domain import healthcare_service_to_fhir, load_directory
from tests.e2e.conftest import RunningHaven
from tests.support.client import auth_headers, example, referral_id_of, token

pytestmark = pytest.mark.e2e

BACKUP = "ictg-backup-guardians"


def _backup_service() -> dict[str, Any]:
    """A second ICTG-programme guardianship service for Greater Manchester, run by another provider."""
    ictg = load_directory().get("ictg")
    assert ictg is not None
    resource = healthcare_service_to_fhir(ictg)
    resource.update({"id": BACKUP, "name": "Backup guardians (test)"})
    resource["providedBy"] = {"reference": "Organization/barnardos-west-yorkshire"}
    return resource


def _tasks(
    haven: RunningHaven, headers: dict[str, str], referral_id: str, count: int
) -> list[dict[str, Any]]:
    """Wait until the referral has ``count`` Tasks; return them oldest first."""
    deadline = time.monotonic() + 20
    while True:
        answer = httpx.get(
            f"{haven.fhir}/Task", params={"based-on": f"ServiceRequest/{referral_id}"}, headers=headers
        )
        assert answer.status_code == 200, answer.text
        found = [e["resource"] for e in answer.json().get("entry", [])]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _put_status(
    haven: RunningHaven, headers: dict[str, str], task_id: str, status: str, reason: str = ""
) -> None:
    read = httpx.get(f"{haven.fhir}/Task/{task_id}", headers=headers)
    assert read.status_code == 200, read.text
    task = read.json()
    task["status"] = status
    if reason:
        task["statusReason"] = {"coding": [{"system": CS_TASK_STATUS_REASON, "code": reason}]}
    answer = httpx.put(
        f"{haven.fhir}/Task/{task_id}", headers={**headers, "If-Match": read.headers["etag"]}, json=task
    )
    assert answer.status_code == 200, answer.text


def test_directory_is_read_and_changed_only_by_an_admin(haven: RunningHaven) -> None:
    police = auth_headers(token(haven.config.data_dir, "demo-police", "referrer"))
    listed = httpx.get(f"{haven.fhir}/HealthcareService", headers=police)
    assert listed.status_code == 200
    assert {e["resource"]["id"] for e in listed.json()["entry"]} >= {"ictg", "unseen-cssw-home"}
    one = httpx.get(f"{haven.fhir}/HealthcareService/unseen-cssw-home", headers=police)
    assert one.status_code == 200 and all("address" not in r for r in one.json()["contained"])
    assert (
        httpx.put(
            f"{haven.fhir}/HealthcareService/{BACKUP}", headers=police, json=_backup_service()
        ).status_code
        == 403
    )
    admin = auth_headers(token(haven.config.data_dir, "demo-operator", "admin"))
    unknown = {**_backup_service(), "providedBy": {"reference": "Organization/nobody"}}
    bad = httpx.put(f"{haven.fhir}/HealthcareService/{BACKUP}", headers=admin, json=unknown)
    assert bad.status_code == 400 and "unknown providing organisation" in bad.text


def test_post_route_reject_reroute_accept(haven: RunningHaven) -> None:
    admin = auth_headers(token(haven.config.data_dir, "demo-operator", "admin"))
    created = httpx.put(f"{haven.fhir}/HealthcareService/{BACKUP}", headers=admin, json=_backup_service())
    assert created.status_code == 201, created.text

    police = auth_headers(token(haven.config.data_dir, "demo-police", "referrer"))
    referral_id = referral_id_of(
        httpx.post(haven.fhir, headers=police, json=example("police-night-referral.json"))
    )
    [first] = _tasks(haven, police, referral_id, 1)
    assert first["focus"] == {"reference": "HealthcareService/ictg"}  # id order breaks the tie

    ictg = auth_headers(token(haven.config.data_dir, "ictg-provider", "provider"))
    _put_status(haven, ictg, first["id"], "rejected", "no-capacity")

    tasks = _tasks(haven, police, referral_id, 2)
    assert len(tasks) == 2
    second = next(t for t in tasks if t["id"] != first["id"])
    assert second["focus"] == {"reference": f"HealthcareService/{BACKUP}"}
    assert second["owner"] == {"reference": "Organization/barnardos-west-yorkshire"}
    assert second["partOf"] == [{"reference": f"Task/{first['id']}"}]
    assert second["status"] == "requested"

    backup = auth_headers(token(haven.config.data_dir, "barnardos-west-yorkshire", "provider"))
    _put_status(haven, backup, second["id"], "accepted")
    final = httpx.get(f"{haven.fhir}/Task/{second['id']}", headers=police).json()
    assert final["status"] == "accepted"
    rejected = httpx.get(f"{haven.fhir}/Task/{first['id']}", headers=police).json()
    assert rejected["status"] == "rejected"
