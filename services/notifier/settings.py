"""Settings of the notifier (environment prefix ``HAVEN_``)."""

from __future__ import annotations

from pydantic import Field

from haven.kit.settings import ServiceSettings


class NotifierSettings(ServiceSettings):
    """What the notifier needs beyond the shared settings."""

    notifier_grpc_host: str = Field(default="127.0.0.1", description="gRPC health listen address")
    notifier_grpc_port: int = Field(default=50053, description="gRPC port of the health service")
    retry_schedule: str = Field(
        default="1s,5s,30s,2m,10m,1h,6h,1d,2d",
        description="ceilings of the waits between delivery attempts; after the last, dead-letter",
    )
    webhook_timeout_seconds: float = Field(default=5.0, description="time a receiver has to answer")
    breaker_failure_threshold: int = Field(default=5, description="failures that open an endpoint's breaker")
    breaker_reset_seconds: float = Field(default=30.0, description="how long a breaker stays open")
    max_connections: int = Field(
        default=200,
        description="open HTTP connections for heartbeats, in all (each endpoint's deliveries have a pool "
        "of endpoint_in_flight connections of their own)",
    )
    lane_capacity: int = Field(
        default=8, description="work items queued per lane before more are sent back for later"
    )
    delivery_ack_wait_seconds: float = Field(
        default=30.0, description="how soon a work item held by a notifier that died is offered again"
    )
    webhook_connect_timeout_seconds: float = Field(
        default=1.0, description="time a receiver has to accept the connection (within the webhook timeout)"
    )
    breaker_timeout_threshold: int = Field(
        default=2, description="timeouts in a row that open an endpoint's breaker (a hanging receiver)"
    )
    lanes_per_subscription: int = Field(
        default=16, description="lanes per subscription (a referral always uses the same one, in order)"
    )
    endpoint_in_flight: int = Field(default=4, description="attempts in flight at once to one endpoint")
    delivery_max_ack_pending: int = Field(
        default=100_000, description="work items the delivery consumer may have out (waiting ones count)"
    )
    # Email (SMTP) for people: the on-call manager, and any recipient given an address below.
    smtp_host: str = Field(default="", description="SMTP server; empty: no email is sent")
    smtp_port: int = Field(default=25, description="SMTP port")
    smtp_from: str = Field(default="haven-notifier@localhost", description="sender address")
    smtp_timeout_seconds: float = Field(default=10.0, description="time the SMTP server has to answer")
    on_call_email: str = Field(default="", description="address of Haven's on-call manager")
    email_recipients: str = Field(
        default="", description="more addresses, recipient id=address, comma-separated"
    )
    fhir_base_url: str = Field(
        default="http://127.0.0.1:8080/fhir", description="FHIR base URL for links in emails"
    )
    # Recipients the organisation registry does not name (RecipientDirectory), GSS code=organisation id.
    police_by_gss: str = Field(
        default="E08000003=demo-police-manchester,E08000035=demo-police-leeds",
        description="police force per LA (GSS=organisation id, comma-separated)",
    )
    ictg_by_gss: str = Field(
        default="E08000003=ictg-provider,E08000035=ictg-provider",
        description="ICTG site per LA when no ICTG holds a task (GSS=organisation id)",
    )
    leaving_care_by_gss: str = Field(default="", description="leaving-care team per LA (GSS=organisation id)")
    nrm_competent_authority: str = Field(
        default="single-competent-authority", description="recipient id of the NRM competent authority"
    )
    on_call_manager: str = Field(default="haven-on-call", description="recipient id of the on-call manager")
    nats_signing_secrets: str = Field(
        default="",
        description="signing secret per LA platform on NATS, organisation id=secret (haven up sets it)",
    )
