"""Calling a running Haven as a partner would: tokens from the ``haven`` command, FHIR JSON over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
FHIR_JSON = "application/fhir+json"


def token(data_dir: Path, organisation_id: str, role: str) -> str:
    """Return a bearer token from the ``haven token`` command, as a user would get one."""
    command = [
        sys.executable,
        "-m",
        "haven.cli",
        "--data-dir",
        str(data_dir),
        "token",
        "--org",
        organisation_id,
        "--role",
        role,
    ]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def auth_headers(bearer: str) -> dict[str, str]:
    """Return the headers of an authenticated FHIR request."""
    return {"Authorization": f"Bearer {bearer}", "Content-Type": FHIR_JSON}


def example(name: str) -> dict[str, Any]:
    """Return an example Bundle or resource from examples/."""
    data: dict[str, Any] = json.loads((EXAMPLES / name).read_text())
    return data


def referral_id_of(response: httpx.Response) -> str:
    """Return the ServiceRequest id from a transaction answer."""
    return response.headers["location"].split("/")[1]


def subscription(endpoint: str) -> dict[str, Any]:
    """Return a rest-hook Subscription to routing outcomes."""
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "routing outcomes for our area",
        "criteria": "https://haven.example.org/fhir/SubscriptionTopic/referral-routed",
        "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json"},
    }
