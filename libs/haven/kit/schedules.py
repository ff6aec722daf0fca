"""JetStream message schedules: the pieces every service that schedules work needs.

A service schedules a message by publishing it on a subject of a stream with ``allow_msg_schedules``,
with ``Nats-Schedule: @at <UTC time>`` and ``Nats-Schedule-Target: <subject>``; the server keeps one
schedule per subject and publishes the body on the target at that time. Eligibility (re-assessments),
the router (reservation expiry) and the notifier (reviews and deadlines) all do this; the header's
format, the subject-token rule and the purge of a subject prefix live here once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from nats.js import JetStreamContext

MAX_TOKEN_LENGTH = 128


def at_header(instant: datetime) -> str:
    """Return the ``Nats-Schedule`` value of a one-off schedule: RFC 3339 UTC, whole seconds, never early."""
    utc = instant.astimezone(UTC)
    if utc.microsecond:
        utc = utc.replace(microsecond=0) + timedelta(seconds=1)
    return f"@at {utc.strftime('%Y-%m-%dT%H:%M:%SZ')}"


def is_subject_token(value: str) -> bool:
    """Return whether ``value`` can be one NATS subject token (and a KV key part).

    ASCII letters, digits, ``-`` and ``_`` only, at most 128 characters.
    """
    allowed = (c.isascii() and (c.isalnum() or c in "-_") for c in value)
    return bool(value) and len(value) <= MAX_TOKEN_LENGTH and all(allowed)


async def subjects_under(js: JetStreamContext, stream: str, prefix: str) -> set[str]:
    """Return the subjects of ``stream`` that hold a message under ``prefix`` (``<prefix>.>``)."""
    info = await js.stream_info(stream, subjects_filter=f"{prefix}.>")
    return set((info.state.subjects or {}).keys())


async def purge_under(js: JetStreamContext, stream: str, prefix: str) -> int:
    """Remove every schedule under ``prefix`` (each subject is purged); return how many subjects."""
    subjects = await subjects_under(js, stream, prefix)
    for subject in subjects:
        await js.purge_stream(stream, subject=subject)
    return len(subjects)
