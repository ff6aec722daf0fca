"""Pure parts of the kit: derived ids, JSON log lines, trace propagation, the organisation registry."""

from __future__ import annotations

import json
import logging

import pytest

from haven.kit import telemetry
from haven.kit.ids import derived_id, new_id
from haven.kit.logs import JsonFormatter
from haven.organisations import Role, UnknownOrganisationError, get_organisation, load_organisations


def test_derived_ids_are_stable_and_distinct() -> None:
    assert derived_id("routed", "abc") == derived_id("routed", "abc")
    assert derived_id("routed", "abc") != derived_id("routed", "abd")
    # Parts are separated, so moving a boundary makes a different id.
    assert derived_id("ab", "c") != derived_id("a", "bc")
    assert new_id() != new_id()


def test_log_line_is_json_with_fields_and_trace_id() -> None:
    telemetry.configure_tracing("unit")
    record = logging.makeLogRecord(
        {"msg": "referral accepted", "levelname": "INFO", "name": "x", "referral_id": "r-1"}
    )
    with telemetry.tracer("unit").start_as_current_span("span"):
        line = json.loads(JsonFormatter("gateway").format(record))
        trace_id = telemetry.current_trace_id()
    assert line["msg"] == "referral accepted"
    assert line["service"] == "gateway"
    assert line["referral_id"] == "r-1"
    assert line["trace_id"] == trace_id


def test_trace_context_round_trips_through_headers() -> None:
    telemetry.configure_tracing("unit")
    with telemetry.tracer("unit").start_as_current_span("producer"):
        headers = telemetry.inject_headers({"Nats-Msg-Id": "1"})
        trace_id = telemetry.current_trace_id()
    assert headers["Nats-Msg-Id"] == "1"
    with telemetry.tracer("unit").start_as_current_span(
        "consumer", context=telemetry.extract_context(headers)
    ):
        assert telemetry.current_trace_id() == trace_id


def test_registry_knows_the_demo_organisations() -> None:
    police = get_organisation("demo-police")
    assert police.roles == {Role.REFERRER}
    assert get_organisation("demo-la-manchester").gss_codes == {"E08000003"}
    assert all(org.roles for org in load_organisations().values())
    with pytest.raises(UnknownOrganisationError):
        get_organisation("nobody")
