"""When to try a delivery again and when to give up on a hook: pure decisions.

Nothing here reads a clock, a file or the network; callers pass the time and
the facts, which keeps every rule testable on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from ._times import format_time

#: When each attempt is made, counted from the previous one (Standard Webhooks' schedule).
RETRY_SCHEDULE: tuple[timedelta, ...] = (
    timedelta(0),
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
)

#: How soon a delivery this process held back (see ``_lookup.ResolverBusy``) is due again.
#: It was not sent, so it counts no attempt and the schedule above does not move.
HELD_BACK = timedelta(seconds=5)

#: The longest Retry-After honoured; a receiver asking for more gets the schedule's longest step.
MAX_RETRY_AFTER = timedelta(hours=10)
_MAX_RETRY_SECONDS = int(MAX_RETRY_AFTER.total_seconds())

#: The kind of change each captured operation is, in django-signal-webhooks' signal names.
KIND_BY_OP = {"INSERT": "CREATE", "UPDATE": "UPDATE", "DELETE": "DELETE"}

#: The kind of a relation added or removed between two rows (Django's ``m2m_changed``).
RELATION_KIND = "M2M"


def signal_matches(signal: str, kind: str) -> bool:
    """django-signal-webhooks' rule: a hook fires for every kind its signal name contains."""
    return kind in signal


def parse_retry_after(value: str | None, now: datetime) -> timedelta | None:
    """Retry-After in seconds or as an HTTP date, capped; nonsense counts as absent."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        # Capped before timedelta sees it: a receiver's "99999999999999" must not overflow it
        # (its leading zeros, as in "0000000005", are no part of its size).
        digits = value.lstrip("0")
        seconds = int(digits or "0") if len(digits) <= 9 else _MAX_RETRY_SECONDS
        return timedelta(seconds=min(seconds, _MAX_RETRY_SECONDS))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # asctime's form names no zone: every HTTP date is in GMT
        when = when.replace(tzinfo=UTC)
    return max(timedelta(0), min(when - now, MAX_RETRY_AFTER))


@dataclass(frozen=True)
class RetryPolicy:
    """How long a failing hook is tried before it is disabled.

    A hook is disabled after ``disable_after_failures`` failures in a row that
    span at least ``disable_after``: a short outage with many deliveries does
    not end it, nor does one failure a week.
    """

    disable_after_failures: int
    disable_after: timedelta

    def next_attempt(
        self, attempts: int, now: datetime, retry_after: timedelta | None = None
    ) -> datetime | None:
        """When to try again after ``attempts`` failed attempts; None when the schedule is done.

        A receiver's ``retry_after`` may put the attempt off, never bring it
        sooner: a ``Retry-After: 0`` would have a retry thread spend every
        attempt within a second.
        """
        if attempts >= len(RETRY_SCHEDULE):
            return None
        # Counted after the attempt, so at least 1, but for a count edited by hand.
        step = RETRY_SCHEDULE[max(attempts, 1)]
        return now + max(step, retry_after or timedelta(0))

    def disabled_reason(
        self,
        *,
        now: datetime,
        gone: bool,
        failure_count: int,
        failing_since: datetime | None,
        error: str,
    ) -> str:
        """Why a failure ends the hook (a 410, or failing too often for too long), or ""."""
        if gone:
            return f"the endpoint answered 410 Gone at {format_time(now)}"
        since = failing_since or now
        if failure_count >= self.disable_after_failures and now - since >= self.disable_after:
            return (
                f"{failure_count} failed attempts in a row since {format_time(since)}; "
                f"last: {error}"
            )
        return ""
