"""The retry path: deliveries that are due sent oldest first, and the log pruned.

What a commit wrote goes out from the writing thread (the outbox); what
failed, did not fit in the writer's budget, or was left by a process that
died waits here, for ``webhooks.deliver_due()``, ``store.dispatch()``,
``tokenstore dispatch --watch`` or a retry thread. The same calls keep the
delivery log within ``keep_deliveries``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from ._errors import DamagedRow
from ._models import OutboundWebhook, WebhookDelivery
from ._outbox import TAKE, Outbox
from ._policy import MAX_RETRY_AFTER, RETRY_SCHEDULE
from ._rows import not_utf8, readable_rows, text_as_bytes
from ._sending import refused
from ._times import format_time, to_stored_time

logger = logging.getLogger("tokenstore.webhooks")

_DELIVERY_TABLE = WebhookDelivery._meta.table_name
_HOOK_TABLE = OutboundWebhook._meta.table_name

# A delivery whose row cannot be read is never sent: it is given up, saying why.
_BURY_DAMAGED = (
    f'UPDATE "{_DELIVERY_TABLE}" SET "status" = \'dead\', "next_attempt_at" = NULL, '
    '"last_error" = ? WHERE "id" = ?'
)
# Due, or scheduled further ahead than any retry or hold is: the clock has gone back since.
_DUE = '("next_attempt_at" <= ? OR "next_attempt_at" > ?)'
_NEVER = format_time(datetime.max.replace(tzinfo=UTC))  # no stored time is after it
_TAKE_DUE = TAKE + _DUE
_DUE_COLUMNS = ("id", "hook_id")
_SELECT_DUE = (
    f'SELECT "id", "hook_id" FROM "{_DELIVERY_TABLE}" '
    "WHERE \"status\" IN ('pending', 'failed') AND \"next_attempt_at\" <= ? "
    # One commit's deliveries share both times: they go in the order of its events.
    'ORDER BY "next_attempt_at", "created_at", coalesce("event_id", 0), "abid" LIMIT ?'
)
# A separate statement, not an OR: each is one range of the index, read only up to its limit.
_SELECT_STRANDED = _SELECT_DUE.replace('"next_attempt_at" <= ?', '"next_attempt_at" > ?')
_AS_BYTES = ('"id", "hook_id"', text_as_bytes(WebhookDelivery, _DUE_COLUMNS), 1)
# A batch of a hook's due deliveries put off until its retry; the backlog of a hook down
# for hours is many batches, one short transaction each, so writers never wait long. Read
# through the due index, not the hook's (which holds all its log, finished deliveries
# too): the hook's id is compared as an expression, which SQLite looks up by no index.
_WAIT_BEHIND = (
    f'UPDATE "{_DELIVERY_TABLE}" SET "next_attempt_at" = ? WHERE "id" IN ('
    f'SELECT "id" FROM "{_DELIVERY_TABLE}" '
    "WHERE \"status\" IN ('pending', 'failed') AND \"next_attempt_at\" <= ? "
    # Those moved already are not counted: the batches end, even when the retry is in range.
    'AND "next_attempt_at" != ? AND "hook_id" || \'\' = ? LIMIT ?)'
)
_WAIT_BEHIND_STRANDED = _WAIT_BEHIND.replace('"next_attempt_at" <= ?', '"next_attempt_at" > ?')
#: How many deliveries one transaction of ``_WAIT_BEHIND`` moves.
WAIT_BATCH = 500
_FORGET_ORPHAN = (
    f'DELETE FROM "{_DELIVERY_TABLE}" WHERE "id" = ? AND NOT EXISTS '
    f'(SELECT 1 FROM "{_HOOK_TABLE}" AS h WHERE h."id" = "{_DELIVERY_TABLE}"."hook_id")'
)
# Finished deliveries created before a time, but never a hook's latest finished one.
_PRUNE = (
    f'DELETE FROM "{_DELIVERY_TABLE}" WHERE "id" IN ('
    f'SELECT d."id" FROM "{_DELIVERY_TABLE}" AS d '
    "WHERE d.\"created_at\" < ? AND d.\"status\" IN ('delivered', 'dead') "
    f'AND d."id" != (SELECT k."id" FROM "{_DELIVERY_TABLE}" AS k '
    'WHERE k."hook_id" = d."hook_id" AND k."status" IN (\'delivered\', \'dead\') '
    'ORDER BY k."created_at" DESC, k."abid" DESC LIMIT 1) '
    "LIMIT ?)"
)


class RetryPath:
    """Sends what is due through the outbox, and prunes what is finished."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.db = outbox.db
        sql = self.db.sql
        self._take_due = sql(_TAKE_DUE)
        self._select_due = sql(_SELECT_DUE)
        self._select_stranded = sql(_SELECT_STRANDED)
        self._wait_behind = sql(_WAIT_BEHIND)
        self._wait_behind_stranded = sql(_WAIT_BEHIND_STRANDED)
        self._prune = sql(_PRUNE)
        self._bury_damaged = sql(_BURY_DAMAGED)
        self._forget_orphan = sql(_FORGET_ORPHAN)

    @property
    def horizon(self) -> timedelta:
        """The furthest ahead of its clock a sender schedules a delivery (a retry or a hold).

        A delivery due later than this from now was scheduled by a clock that
        has since been set back (an NTP step, a laptop's clock put right): it
        is due now rather than once the clock catches up, a year later maybe.
        """
        return max(MAX_RETRY_AFTER, *RETRY_SCHEDULE, self.outbox.lease) + timedelta(minutes=1)

    def prune(self, older_than: timedelta, batches: int | None = None, batch: int = 500) -> int:
        """Delete finished deliveries created over ``older_than`` ago; returns how many.

        In batches of ``batch`` rows, one short transaction each, so writers
        never wait long behind it; ``batches`` caps how many (None: until done).
        """
        cutoff = format_time(self.outbox.now() - older_than)
        deleted = 0
        done = 0
        while batches is None or done < batches:
            with self.db.write(quiet=True) as conn:
                cursor = conn.execute(self._prune, (cutoff, batch))
            count = cursor.rowcount  # known once the block has ended (PostgreSQL's pipeline)
            deleted += count
            done += 1
            if count < batch:
                break
        return deleted

    def deliver_due(self, now: datetime | None = None, limit: int = 100) -> int:
        """Attempt every delivery whose time has come, oldest first; returns how many.

        Each is taken with a conditional update first, so two processes
        running this at once never both send it. Without ``now`` the clock is
        read again for each one: sending the others took time, and a hold
        counted from the start could run out before the attempt ends. Once an
        attempt to a hook fails, the hook's other due deliveries wait behind
        its retry instead of being tried one after another. By the clock,
        deliveries scheduled beyond the ``horizon`` count as due, after the
        others; a ``now`` given is the caller's, and only the schedule counts.
        """
        self.outbox.refuse_in_transaction("webhooks.deliver_due()")
        fixed = now is not None
        start = self.outbox.now() if now is None else to_stored_time(now)
        stamp = format_time(start)
        due_range = (stamp, _NEVER if fixed else format_time(start + self.horizon))
        due = self._due_rows(self._select_due, (stamp, limit))
        if not fixed and len(due) < limit:
            due += self._due_rows(self._select_stranded, (due_range[1], limit - len(due)))
        failing: dict[str, str | None] = {}  # hook id -> when its retry is due (None: none)
        attempted = 0
        for delivery_id, hook_id in due:
            if hook_id in failing:
                continue
            at = start if fixed else self.outbox.now()
            if not self.outbox.take(self._take_due, delivery_id, at, due_range):
                continue
            try:
                delivery = self.outbox.delivery(delivery_id)
            except DamagedRow as exc:
                logger.error("%s; the delivery is not sent and is marked dead", exc)
                with self.db.write(quiet=True) as conn:
                    conn.execute(self._bury_damaged, (str(exc), delivery_id))
                continue
            if delivery is None:
                continue
            try:
                hook = self.outbox.hook(delivery.hook_id)
            except DamagedRow as exc:  # its hook's row: the delivery waits for it to be mended
                logger.error("%s; delivery %s is not sent", exc, delivery.abid)
                continue
            if hook is None:
                # Deleted where foreign keys are not enforced (the sqlite3 shell, by default):
                # the delivery goes as the hook's deletion would have taken it.
                with self.db.write(quiet=True) as conn:
                    cursor = conn.execute(self._forget_orphan, (delivery_id,))
                if cursor.rowcount:  # known once the block has ended (PostgreSQL's pipeline)
                    logger.warning("delivery %s: its hook is gone; it is deleted", delivery.abid)
                continue
            sends = delivery.attempts
            self.outbox.attempt(delivery, at, hook)
            if delivery.attempts == sends:  # not sent: given up (its hook off), or held back
                continue
            attempted += 1
            if delivery.status != "delivered" and not refused(
                delivery.last_status_code, delivery.last_error
            ):
                # It was sent and failed for want of an answer; one that died on its last
                # attempt has no retry to wait behind, but the receiver is as down as for
                # the others. One the receiver refused does not hold up the next.
                retry = delivery.next_attempt_at
                failing[hook_id] = None if retry is None else format_time(retry)
        for hook_id, retry_at in sorted(failing.items()):  # hooks in one order, as all take them
            if retry_at:
                self._wait_behind_retry(hook_id, retry_at, due_range)
        return attempted

    def _wait_behind_retry(self, hook_id: str, retry_at: str, due_range: tuple[str, str]) -> None:
        """Put a failing hook's due deliveries off until its retry, a batch at a time."""
        statements = (self._wait_behind, self._wait_behind_stranded)
        for statement, bound in zip(statements, due_range, strict=True):
            batch = (retry_at, bound, retry_at, hook_id, WAIT_BATCH)
            while True:
                with self.db.write(quiet=True) as conn:
                    self.outbox.lock_hook(hook_id)
                    cursor = conn.execute(statement, batch)
                if cursor.rowcount < WAIT_BATCH:  # known once the block ended (PostgreSQL)
                    break

    def _due_rows(self, sql: str, params: tuple[str, int]) -> list[Any]:
        """The (id, hook id) rows a due query selects; rows it cannot read are left out."""
        try:
            return list(self.db.execute_sql(sql, params).fetchall())
        except Exception as exc:  # an id edited into text that is no UTF-8: the others go on
            conn = self.db.connection()
            if not_utf8(WebhookDelivery, exc, conn) is None:
                raise
            return readable_rows(
                conn, WebhookDelivery, sql.replace(*_AS_BYTES), params, _DUE_COLUMNS
            )
