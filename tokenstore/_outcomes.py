"""What an attempt came to, written down: the delivery's state, the hook's health, signals.

After each attempt the delivery is marked delivered, failed (with its next
attempt from the retry policy) or dead, the hook's failure streak is counted
in SQL (so attempts recorded at once by two threads both count), and a hook
the policy gives up on is disabled with what it still had to send.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any

from . import signals
from ._backend import Backend
from ._models import OutboundWebhook, WebhookDelivery
from ._policy import HELD_BACK, RetryPolicy, parse_retry_after
from ._sending import Outcome
from ._times import format_time, utcnow

logger = logging.getLogger("tokenstore.webhooks")

_HOOK_TABLE = OutboundWebhook._meta.table_name
_DELIVERY_TABLE = WebhookDelivery._meta.table_name

# The attempt is counted in SQL: the log counts every send, even when two senders
# held copies of one delivery (a redelivery beside a retry). A delivery given up
# (disable()) while its attempt was under way stays dead, unless the attempt delivered
# it or was a redelivery of a dead one: the first parameter says whether it stays.
_RECORD_DELIVERY = (
    f'UPDATE "{_DELIVERY_TABLE}" SET '
    "\"status\" = CASE WHEN \"status\" = 'dead' AND ? THEN 'dead' ELSE ? END, "
    '"attempts" = "attempts" + ?, '
    '"next_attempt_at" = CASE WHEN "status" = \'dead\' AND ? THEN NULL ELSE ? END, '
    '"last_attempt_at" = ?, "last_status_code" = ?, "last_error" = ?, '
    '"duration_ms" = ?, "delivered_at" = ?, "modified_at" = ? WHERE "id" = ? '
    'RETURNING "attempts", "status"'
)
# Counted in SQL, so attempts recorded at once by two threads both count. Like
# django-signal-webhooks' bulk_update of these fields, outcomes leave ``updated`` alone.
# A healthy hook's row is written at most once a second (``last_success`` is kept to
# the second): otherwise every writer would update, and on PostgreSQL lock, one row.
# A ``last_success`` after now was written by a clock since set back: it is corrected.
_HOOK_SUCCEEDED = (
    f'UPDATE "{_HOOK_TABLE}" SET "last_success" = ?, "failure_count" = 0, '
    '"failing_since" = NULL, "last_response" = '
    'CASE WHEN "keep_last_response" THEN ? ELSE "last_response" END WHERE "id" = ? AND ('
    '"failure_count" != 0 OR "failing_since" IS NOT NULL OR "keep_last_response" '
    'OR "last_success" IS NULL OR "last_success" <= ? OR "last_success" > ?)'
)
# A streak "since" a time after now began by a clock since set back: it begins now, so
# that ``disable_after`` is counted by this clock, not once it has caught up (a year on?).
_HOOK_FAILED = (
    f'UPDATE "{_HOOK_TABLE}" SET "last_failure" = ?, "failure_count" = "failure_count" + 1, '
    '"failing_since" = CASE WHEN "failing_since" IS NULL OR "failing_since" > ? THEN ? '
    'ELSE "failing_since" END, "last_response" = '
    'CASE WHEN "keep_last_response" THEN ? ELSE "last_response" END WHERE "id" = ? '
    'RETURNING "failure_count", "failing_since"'
)
# Only a hook still enabled: the failures of attempts that were under way together each
# reach the limit, and only the first disables it (and says so, once).
_STOP_HOOK = (
    f'UPDATE "{_HOOK_TABLE}" SET "enabled" = ?, "disabled_reason" = ?, "modified_at" = ? '
    'WHERE "id" = ? AND "enabled" RETURNING "id"'
)
_GIVE_UP = (
    f'UPDATE "{_DELIVERY_TABLE}" SET "status" = \'dead\', "next_attempt_at" = NULL, '
    '"last_error" = ? WHERE "hook_id" = ? AND "status" IN (\'pending\', \'failed\')'
)


def given_up(disabled_reason: str) -> str:
    """What the log says of a delivery dead because its hook was disabled."""
    return f"hook disabled: {disabled_reason or 'by hand'}"


class _Tally(threading.local):
    """Per thread: how many attempts this thread has recorded, by outcome."""

    def __init__(self) -> None:
        self.delivered = 0
        self.failed = 0


class Outcomes:
    """Records attempts' outcomes; ``disable`` stops a hook."""

    def __init__(self, db: Backend, policy: RetryPolicy) -> None:
        self.db = db
        self.policy = policy
        self._tally = _Tally()
        sql = db.sql
        self._record_delivery = sql(_RECORD_DELIVERY)
        self._hook_succeeded = sql(_HOOK_SUCCEEDED)
        self._hook_failed = sql(_HOOK_FAILED)
        self._stop_hook = sql(_STOP_HOOK)
        self._give_up = sql(_GIVE_UP)

    def attempts_recorded(self) -> tuple[int, int]:
        """Delivered and failed attempts this thread has recorded so far."""
        return self._tally.delivered, self._tally.failed

    def record(
        self, hook: OutboundWebhook, delivery: WebhookDelivery, outcome: Outcome, now: datetime
    ) -> None:
        """Write the attempt's outcome, schedule the next one, and disable hopeless hooks.

        An outcome ``held_back`` was no attempt: the delivery is only due again
        shortly, and its hook's record of failures is the receiver's, untouched.
        """
        if outcome.held_back:
            self.hold_back(delivery, outcome.error, now)
            return
        stays_dead = not outcome.ok and delivery.status != "dead"  # see _RECORD_DELIVERY
        delivery.attempts += 1  # as this sender counts; the file's count is what is stored
        delivery.last_attempt_at = now
        delivery.last_status_code = outcome.status_code
        delivery.last_error = outcome.error
        delivery.duration_ms = outcome.duration_ms
        if hook.keep_last_response:
            hook.last_response = outcome.body
        stamp = format_time(now)
        disabled_reason = ""
        if outcome.ok:
            hook.last_success = now
            hook.failure_count = 0
            hook.failing_since = None
            delivery.status = "delivered"
            delivery.delivered_at = now
            delivery.next_attempt_at = None
            # Made before the lock is taken.
            stored = self._stored_outcome(delivery, attempted=True, stays_dead=False)
            a_second_ago = format_time(now - timedelta(seconds=1))
            row = self.db.write_pair(
                self._hook_succeeded,
                (stamp, outcome.body, hook.id.hex, a_second_ago, stamp),
                self._record_delivery,
                stored,
            )
        else:
            with self.db.write(quiet=True) as conn:
                counted = conn.execute(
                    self._hook_failed, (stamp, stamp, stamp, outcome.body, hook.id.hex)
                ).fetchone()
                hook.last_failure = now
                if counted is None:  # the hook was deleted meanwhile
                    counted = (hook.failure_count + 1, stamp)
                hook.failure_count = counted[0]
                hook.failing_since = OutboundWebhook.failing_since.python_value(counted[1])
                disabled_reason = self.policy.disabled_reason(
                    now=now,
                    gone=outcome.gone,
                    failure_count=hook.failure_count,
                    failing_since=hook.failing_since,
                    error=outcome.error,
                )
                retry_after = parse_retry_after(outcome.retry_after, now)
                next_attempt = self.policy.next_attempt(delivery.attempts, now, retry_after)
                delivery.status = "dead" if disabled_reason or next_attempt is None else "failed"
                delivery.next_attempt_at = None if disabled_reason else next_attempt
                row = conn.execute(
                    self._record_delivery,
                    self._stored_outcome(delivery, attempted=True, stays_dead=stays_dead),
                ).fetchone()
                if disabled_reason:
                    # With the count it judged: an enable() since would have reset the
                    # streak, and one committed later waits for this and wins.
                    stopped = (False, disabled_reason, format_time(utcnow()), hook.id.hex)
                    if conn.execute(self._stop_hook, stopped).fetchone() is not None:
                        hook.enabled, hook.disabled_reason = False, disabled_reason
                        conn.execute(self._give_up, (given_up(disabled_reason), hook.id.hex))
                    else:  # disabled meanwhile, by another failure or by hand
                        disabled_reason = ""
        if row is not None:  # None: deleted meanwhile, with its hook
            delivery.attempts, delivery.status = row
            if delivery.status == "dead":
                delivery.next_attempt_at = None
        if outcome.ok:
            self._tally.delivered += 1
        else:
            self._tally.failed += 1
        if outcome.ok:
            signals.send_isolated(
                signals.webhook_delivered, OutboundWebhook, hook=hook, delivery=delivery
            )
        else:
            signals.send_isolated(
                signals.webhook_failed,
                OutboundWebhook,
                hook=hook,
                delivery=delivery,
                error=outcome.error,
            )
        if disabled_reason:
            signals.send_isolated(
                signals.webhook_disabled, OutboundWebhook, hook=hook, reason=disabled_reason
            )

    @staticmethod
    def _stored_outcome(
        delivery: WebhookDelivery, attempted: bool, stays_dead: bool
    ) -> tuple[Any, ...]:
        """The parameters of ``_RECORD_DELIVERY`` for a delivery's outcome fields, as stored.

        ``attempted`` counts one more attempt; ``stays_dead`` keeps a delivery
        given up meanwhile as it is. Made before the write lock is
        taken where the outcome is known by then, so the lock covers SQL only.
        """
        delivery.modified_at = utcnow()
        db_value = WebhookDelivery.last_attempt_at.db_value

        def time_value(value: Any) -> str | None:
            return format_time(value) if isinstance(value, datetime) else db_value(value)

        return (
            stays_dead,
            delivery.status,
            1 if attempted else 0,
            stays_dead,
            time_value(delivery.next_attempt_at),
            time_value(delivery.last_attempt_at),
            delivery.last_status_code,
            delivery.last_error,
            delivery.duration_ms,
            time_value(delivery.delivered_at),
            time_value(delivery.modified_at),
            delivery.id.hex,
        )

    def disable(self, hook: OutboundWebhook, reason: str) -> None:
        """Stop a hook and give up on what it still had to send."""
        with self.db.atomic():
            hook.enabled = False
            hook.disabled_reason = reason
            hook.save(only=[OutboundWebhook.enabled, OutboundWebhook.disabled_reason])
            self.db.execute_sql(self._give_up, (given_up(reason), hook.id.hex))

    def bury(self, delivery: WebhookDelivery, reason: str) -> None:
        delivery.status = "dead"
        delivery.next_attempt_at = None
        self._unsent(delivery, reason)

    def hold_back(self, delivery: WebhookDelivery, reason: str, now: datetime) -> None:
        """Keep a delivery this process did not send, for a limit of its own, due again soon."""
        logger.warning("delivery %s: %s", delivery.abid, reason)
        if delivery.status in ("pending", "failed"):  # not a redelivery of a finished one
            delivery.next_attempt_at = now + HELD_BACK
        self._unsent(delivery, reason)

    def _unsent(self, delivery: WebhookDelivery, reason: str) -> None:
        """Store a delivery's state, and why it was not sent, counting no attempt."""
        delivery.last_error = reason
        stored = self._stored_outcome(delivery, attempted=False, stays_dead=True)
        with self.db.write(quiet=True) as conn:
            conn.execute(self._record_delivery, stored).fetchone()
