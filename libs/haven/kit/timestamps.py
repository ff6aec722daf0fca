"""Conversions between datetimes and protobuf Timestamps."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp


def to_timestamp(moment: datetime) -> Timestamp:
    """Return a protobuf Timestamp for an aware datetime."""
    stamp = Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def from_timestamp(stamp: Timestamp) -> datetime:
    """Return an aware UTC datetime for a protobuf Timestamp."""
    return stamp.ToDatetime(tzinfo=UTC)
