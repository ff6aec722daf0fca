"""Email for people (Haven's on-call manager, a competent authority's inbox) over SMTP.

An email says that something needs a person and where to look: the event type, the notification id
(also the ``Message-ID``, so a mail system can drop a repeat), the due time, the link to the FHIR
referral and the recipient's projection, which holds ids, codes, dates and flags only (the policy
loader and ``domain.projection`` guarantee that no name or free text can be in it). Sending uses the
standard library's SMTP client in a worker thread; the deliverer retries a failed send on the same
schedule, breaker and dead-letter path as a rest-hook.
"""

from __future__ import annotations

import asyncio
import json
import smtplib
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import format_datetime

from haven.notification.v1 import notification_pb2

# The delivery record's "subscription" for an email recipient: a lane and record key of its own.
EMAIL_KEY_PREFIX = "email-"
SMTP_OK = 250


def email_key(recipient_id: str) -> str:
    """Return the lane and record key of an email recipient (stands where a subscription id would)."""
    return f"{EMAIL_KEY_PREFIX}{recipient_id}"


def parse_mapping(text: str) -> dict[str, str]:
    """Parse configuration such as ``"E08000003=gmp,E08000035=wyp"`` (spaces ignored)."""
    found: dict[str, str] = {}
    for item in text.split(","):
        name, sep, value = item.strip().partition("=")
        if not item.strip():
            continue
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"expected name=value, got {item.strip()!r}")
        found[name.strip()] = value.strip()
    return found


@dataclass(frozen=True)
class Mailer:
    """Sends notification emails through one SMTP server to configured addresses."""

    host: str
    port: int = 25
    sender: str = "haven-notifier@localhost"
    timeout: float = 10.0
    fhir_base_url: str = ""
    addresses: Mapping[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        """Return the key of the SMTP server's circuit breaker."""
        return f"smtp://{self.host}:{self.port}"

    def address_for(self, recipient_id: str) -> str | None:
        """Return the configured address of a recipient (an organisation or person id), or None."""
        return self.addresses.get(recipient_id) or None

    def message(self, request: notification_pb2.NotificationRequested, to: str) -> EmailMessage:
        """Return the email for one notification: ids, codes, dates and the link, nothing else."""
        payload = json.loads(request.payload_json or b"{}")
        link = f"{self.fhir_base_url.rstrip('/')}/ServiceRequest/{request.referral_id}"
        mail = EmailMessage()
        mail["From"] = self.sender
        mail["To"] = to
        mail["Subject"] = f"[Haven] {request.event_type}: referral {request.referral_id}"
        mail["Message-ID"] = f"<{request.notification_id}@haven.notifications>"
        mail["Date"] = format_datetime(request.occurred_at.ToDatetime().astimezone())
        mail["X-Haven-Notification-Id"] = request.notification_id
        mail["X-Haven-Event-Type"] = request.event_type
        lines = [
            f"Haven notification: {request.event_type}",
            "",
            f"Referral: {link}",
            f"Notification id: {request.notification_id}",
            f"Due by: {request.due_by.ToDatetime().isoformat()}Z",
            "",
        ]
        lines += [f"{name}: {_plain(value)}" for name, value in sorted(payload.items())]
        lines += ["", "Open the referral in Haven for what to do next. This email holds no names."]
        mail.set_content("\n".join(lines))
        return mail

    async def send(self, request: notification_pb2.NotificationRequested, to: str) -> tuple[int, str, bool]:
        """Send one notification; return (SMTP code or 0, detail, whether it timed out)."""
        mail = self.message(request, to)
        try:
            await asyncio.to_thread(self._send_now, mail)
        except smtplib.SMTPResponseException as refused:
            return int(refused.smtp_code), f"SMTP {refused.smtp_code}", False
        except TimeoutError:
            return 0, "SMTPTimeout", True
        except (smtplib.SMTPException, OSError) as error:
            return 0, type(error).__name__, False
        return SMTP_OK, f"SMTP {SMTP_OK}", False

    def _send_now(self, mail: EmailMessage) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            smtp.send_message(mail)


def _plain(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in sorted(value.items()))
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
