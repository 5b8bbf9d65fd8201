"""JSON values, timestamps and durations between protobuf and Python."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2

from promptgate.errors import InvalidArgument

# JSON values


def _plain(value: Any) -> Any:
    """protobuf JSON numbers are doubles; give integral ones back as ints.

    NaN and infinities are not JSON: they are INVALID_ARGUMENT.
    """
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(
                "JSON numbers must be finite (no NaN or Infinity)", reason="INVALID_PARAMETERS"
            )
        if value.is_integer() and abs(value) < 2**53:
            return int(value)
        return value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _to_json(message: struct_pb2.Struct | struct_pb2.Value) -> Any:
    try:
        return json_format.MessageToDict(message)
    except (ValueError, json_format.SerializeToJsonError):
        # NaN or Infinity somewhere inside: not JSON.
        raise InvalidArgument(
            "JSON numbers must be finite (no NaN or Infinity)", reason="INVALID_PARAMETERS"
        ) from None


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as a plain dict."""
    result: dict[str, Any] = _plain(_to_json(struct))
    return result


def value_to_python(value: struct_pb2.Value) -> Any:
    """A Value as a plain Python value."""
    return _plain(_to_json(value))


def dict_to_struct(data: dict[str, Any] | None) -> struct_pb2.Struct:
    """A plain dict as a Struct."""
    struct = struct_pb2.Struct()
    if data:
        json_format.ParseDict(data, struct)
    return struct


def python_to_value(data: Any) -> struct_pb2.Value:
    """A plain Python value as a Value."""
    value = struct_pb2.Value()
    json_format.ParseDict(data, value)
    return value


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(when: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A datetime as a Timestamp (None stays unset)."""
    if when is None:
        return None
    if when.tzinfo is None:
        ts = timestamp_pb2.Timestamp()
        ts.FromDatetime(when)
        return ts
    # Aware datetimes (all of the domain's): plain arithmetic, several times
    # faster than FromDatetime (which goes through calendar.timegm).
    elapsed = when - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=elapsed.days * 86_400 + elapsed.seconds, nanos=elapsed.microseconds * 1000
    )


def now_timestamp() -> timestamp_pb2.Timestamp:
    """The current time as a Timestamp."""
    ns = time.time_ns()
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def duration(seconds: float | None) -> duration_pb2.Duration | None:
    """Seconds as a Duration (None stays unset)."""
    if seconds is None:
        return None
    d = duration_pb2.Duration()
    d.FromTimedelta(timedelta(seconds=seconds))
    return d


MAX_SECONDS = 10 * 365 * 86_400.0


def _seconds(value: duration_pb2.Duration, field: str = "duration") -> float:
    """A Duration in seconds; INVALID_ARGUMENT if negative or beyond ten years."""
    seconds = value.seconds + value.nanos / 1e9
    if not 0 <= seconds <= MAX_SECONDS:
        raise InvalidArgument.field(field, "must be between 0 and ten years")
    return seconds


def to_datetime(value: timestamp_pb2.Timestamp, field: str) -> datetime:
    """A Timestamp as an aware datetime; INVALID_ARGUMENT if out of range."""
    try:
        return value.ToDatetime(tzinfo=UTC)
    except (OverflowError, ValueError):
        raise InvalidArgument.field(field, "is not a valid time") from None
