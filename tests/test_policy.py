"""The retry and disable rules, tested as the pure functions they are: no clock, file or network."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tokenstore._policy import (
    MAX_RETRY_AFTER,
    RETRY_SCHEDULE,
    RetryPolicy,
    parse_retry_after,
    signal_matches,
)

NOW = datetime(2024, 10, 24, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(disable_after_failures=3, disable_after=timedelta(hours=1))


def test_the_schedule_is_followed_then_ends() -> None:
    assert POLICY.next_attempt(1, NOW) == NOW + RETRY_SCHEDULE[1]
    assert POLICY.next_attempt(len(RETRY_SCHEDULE) - 1, NOW) == NOW + RETRY_SCHEDULE[-1]
    assert POLICY.next_attempt(len(RETRY_SCHEDULE), NOW) is None


def test_a_count_below_one_written_by_hand_takes_the_first_retry_step() -> None:
    """A negative count indexed the schedule from its end, and past it: IndexError, raised
    after the POST went out, from every retry path call that reached the delivery."""
    assert POLICY.next_attempt(-100, NOW) == NOW + RETRY_SCHEDULE[1]
    assert POLICY.next_attempt(-2, NOW) == NOW + RETRY_SCHEDULE[1]


def test_retry_after_replaces_the_schedule_step() -> None:
    assert POLICY.next_attempt(1, NOW, timedelta(seconds=42)) == NOW + timedelta(seconds=42)


def test_retry_after_never_brings_an_attempt_sooner_than_the_schedule() -> None:
    """A ``Retry-After: 0`` would otherwise spend every attempt within a second."""
    assert POLICY.next_attempt(1, NOW, timedelta(0)) == NOW + RETRY_SCHEDULE[1]
    assert POLICY.next_attempt(3, NOW, timedelta(minutes=1)) == NOW + RETRY_SCHEDULE[3]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", timedelta(seconds=120)),
        (" 7 ", timedelta(seconds=7)),
        ("99999999999999", MAX_RETRY_AFTER),
        ("0000000000000007", timedelta(seconds=7)),  # leading zeros do not make it long
        ("Thu, 24 Oct 2024 12:01:00 GMT", timedelta(minutes=1)),
        ("Thu, 24 Oct 2024 11:00:00 GMT", timedelta(0)),
        ("Fri, 24 Oct 2025 12:00:00 GMT", MAX_RETRY_AFTER),
        # The two obsolete forms recipients must still accept (RFC 9110, 5.6.7), in GMT.
        ("Thursday, 24-Oct-24 12:01:00 GMT", timedelta(minutes=1)),
        ("Thu Oct 24 12:01:00 2024", timedelta(minutes=1)),
        ("soon", None),
        ("-5", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after(header: str | None, expected: timedelta | None) -> None:
    assert parse_retry_after(header, NOW) == expected


def test_410_disables_at_once() -> None:
    reason = POLICY.disabled_reason(
        now=NOW, gone=True, failure_count=1, failing_since=NOW, error="HTTP 410"
    )
    assert "410 Gone" in reason


def test_disabling_needs_both_enough_failures_and_enough_time() -> None:
    def reason(count: int, since: datetime) -> str:
        return POLICY.disabled_reason(
            now=NOW, gone=False, failure_count=count, failing_since=since, error="HTTP 500"
        )

    hour_ago = NOW - timedelta(hours=1)
    assert reason(2, hour_ago) == ""  # long enough, too few
    assert reason(50, NOW - timedelta(minutes=59)) == ""  # many, too soon
    assert reason(3, hour_ago).startswith("3 failed attempts in a row since")
    assert "last: HTTP 500" in reason(3, hour_ago)


def test_a_hook_fires_for_every_kind_its_signal_names() -> None:
    assert signal_matches("CREATE_UPDATE_OR_DELETE", "UPDATE")
    assert not signal_matches("CREATE_OR_DELETE", "UPDATE")
    assert signal_matches("UPDATE_OR_M2M", "M2M")
    assert not signal_matches("CREATE", "M2M")
