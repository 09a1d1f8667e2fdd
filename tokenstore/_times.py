"""Times as tokenstore stores them: aware UTC, cut to milliseconds, fixed-width text.

Fixed width makes text order time order, so SQL compares stored times as
strings and the sqlite3 shell shows them readably (``2024-10-24T12:00:00.123Z``).
Every time that reaches the file or a message passes through here.
"""

from __future__ import annotations

from datetime import UTC, datetime

from ._errors import ValidationError


def utcnow() -> datetime:
    """The current time as stored: aware UTC, cut to milliseconds."""
    return to_stored_time(datetime.now(UTC))


def to_stored_time(value: datetime) -> datetime:
    """Aware UTC with millisecond precision: what a round trip through the file gives back."""
    if not isinstance(value, datetime):
        raise ValidationError(f"expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(
            f"naive datetime {value.isoformat()} refused: pass a timezone-aware time"
        )
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        raise ValidationError(f"{value.isoformat()} is out of range in UTC") from None
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def format_time(value: datetime) -> str:
    """The stored text of a time: fixed-width ISO-8601 UTC with milliseconds.

    ``strftime`` does not pad years before 1000 to four digits, so those are
    formatted by hand; a time already in stored form skips the conversion.
    """
    if not (type(value) is datetime and value.tzinfo is UTC and value.microsecond % 1000 == 0):
        value = to_stored_time(value)
    if value.year >= 1000:
        return value.isoformat(timespec="milliseconds")[:-6] + "Z"
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def parse_time(text: object) -> datetime:
    """A stored (or any ISO-8601) time as aware UTC; a time without offset is taken as UTC."""
    parsed = datetime.fromisoformat(str(text))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)
