"""Times as tokenstore stores them: aware UTC, cut to milliseconds, fixed-width text.

Fixed width makes text order time order, so SQL compares stored times as
strings and the sqlite3 shell shows them readably (``2024-10-24T12:00:00.123Z``).
Every time that reaches the file or a message passes through here.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from ._errors import TokenstoreError, ValidationError
from ._inputs import MAX_SPAN

#: The earliest "now" tokenstore counts from: ABIDs hold milliseconds since 1970.
EARLIEST_NOW = datetime(1970, 1, 1, tzinfo=UTC)

#: The latest "now": expiries, holds and the log's cutoff are counted from it, and must fit.
LATEST_NOW = datetime.max.replace(tzinfo=UTC) - MAX_SPAN


def utcnow() -> datetime:
    """The current time as stored: aware UTC, cut to milliseconds."""
    return to_stored_time(datetime.now(UTC))


def to_stored_time(value: datetime) -> datetime:
    """Aware UTC with millisecond precision: what a round trip through the file gives back."""
    if type(value) is datetime and value.tzinfo is UTC:  # the clock's own kind: nothing to check
        return value.replace(microsecond=value.microsecond // 1000 * 1000)
    if not isinstance(value, datetime):
        raise ValidationError(f"expected a datetime, got {type(value).__name__}")
    try:
        offset = None if value.tzinfo is None else value.utcoffset()
    except Exception as exc:  # a caller's tzinfo that raises, or answers what datetime refuses
        shown = value.replace(tzinfo=None).isoformat()
        raise ValidationError(
            f"datetime {shown} has a time zone that cannot give its offset: "
            f"{type(exc).__name__}: {str(exc)[:200]}"
        ) from None
    if offset is None:
        raise ValidationError(
            f"naive datetime {value.isoformat()} refused: pass a timezone-aware time"
        )
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        raise ValidationError(f"{value.isoformat()} is out of range in UTC") from None
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def checked_clock(clock: Callable[[], datetime]) -> Callable[[], datetime]:
    """An application's clock, each answer checked and turned to aware UTC.

    A clock that answers a naive time, another type, or a time no span can
    be counted from would otherwise fail later, elsewhere, as a TypeError
    or an OverflowError from datetime; one that raises is named here.
    """

    def now() -> datetime:
        try:
            value = clock()
        except TokenstoreError:
            raise
        except Exception as exc:
            raise ValidationError(
                f"the store's clock raised {type(exc).__name__}: {str(exc)[:200]}"
            ) from exc
        try:
            stored = to_stored_time(value)
        except ValidationError as exc:
            raise ValidationError(f"the store's clock returned a bad time: {exc}") from None
        if not EARLIEST_NOW <= stored <= LATEST_NOW:
            raise ValidationError(
                f"the store's clock returned {stored.isoformat()}, outside "
                f"{EARLIEST_NOW.isoformat()} to {LATEST_NOW.isoformat()}"
            )
        return value.astimezone(UTC)

    return now


def format_time(value: datetime) -> str:
    """The stored text of a time: fixed-width ISO-8601 UTC with milliseconds.

    ``isoformat`` pads years before 1000 to four digits (``strftime`` would
    not); a time already in stored form skips the conversion. A commit
    formats its one "now" several times, so the last answer is kept.
    """
    global _last_formatted
    last = _last_formatted
    if type(value) is datetime and value == last[0]:
        return last[1]
    stored = value
    if not (type(value) is datetime and value.tzinfo is UTC and value.microsecond % 1000 == 0):
        stored = to_stored_time(value)
    text = stored.isoformat(timespec="milliseconds")[:-6] + "Z"  # the year padded to 4 digits
    _last_formatted = (value, text)  # one assignment: threads see a whole pair
    return text


_last_formatted: tuple[datetime | None, str] = (None, "")


def parse_time(text: object) -> datetime:
    """A stored (or any ISO-8601) time as aware UTC; a time without offset is taken as UTC."""
    parsed = datetime.fromisoformat(str(text))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)
