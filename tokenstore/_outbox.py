"""The outbox: webhook deliveries written with the change they report, then sent and recorded.

A delivery row is written in the same transaction as the change it reports
(inside the commit, as a consumer of the change dispatcher), so a committed
change is never lost and a rolled-back one is never sent. The first attempt
is made right after the commit, in the writing thread; later attempts follow
the retry policy and are made by the retry path (``_retry_path.py``).

A delivery is *held* while an attempt may be running: its ``next_attempt_at``
is moved one lease ahead before it is sent, with a conditional update, so two
senders never take it at once, and a sender that dies leaves it due again
once the lease runs out.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from ._allowlist import AllowList
from ._backend import Backend, changed_meanwhile, row_lock
from ._capture import ChangeEvent, Connection, model_ref, private_names
from ._compat import peewee_errors
from ._errors import DamagedRow, StoreError, StoreLocked
from ._m2m import RelationRun, runs
from ._models import ON_ABID_CONFLICT, OutboundWebhook, WebhookDelivery, insert_with_fresh_ids
from ._outcomes import Outcomes, given_up
from ._payload import PayloadBuilder, dumps
from ._policy import KIND_BY_OP, RELATION_KIND, signal_matches
from ._registry import Registry
from ._rows import Loader, not_utf8, quote_name, readable_rows, select_by_key, text_as_bytes
from ._sending import Outcome, Sender, message_headers, redacted, refused
from ._times import format_time, to_stored_time

logger = logging.getLogger("tokenstore.webhooks")

_HOOKS = Loader(OutboundWebhook)
_DELIVERIES = Loader(WebhookDelivery)
_HOOK_TABLE = OutboundWebhook._meta.table_name
_DELIVERY_TABLE = WebhookDelivery._meta.table_name

# The hot path (one delivery per matching hook on every save) runs these
# statements directly rather than through peewee's query builder.
_SELECT_HOOK = f'SELECT {_HOOKS.columns} FROM "{_HOOK_TABLE}" WHERE "id" = ?'
# Ties go by ABID, here and below: PostgreSQL returns tied rows in the order it finds
# them, which updates change, where SQLite keeps insertion order; both must agree.
_ENABLED_HOOKS = (
    f'SELECT {_HOOKS.columns} FROM "{_HOOK_TABLE}" WHERE "enabled" ORDER BY "created_at", "abid"'
)
_ENABLED_HOOKS_AS_BYTES = _ENABLED_HOOKS.replace(_HOOKS.columns, text_as_bytes(OutboundWebhook))
_SELECT_DELIVERY = f'SELECT {_DELIVERIES.columns} FROM "{_DELIVERY_TABLE}" WHERE "id" = ?'
# A delivery's hook, as it is now, if the delivery is still to be sent (not deleted
# with its hook, nor given up by disable()).
_LIVE_HOOK = _SELECT_HOOK.replace(
    '"id" = ?',
    f'"id" = (SELECT "hook_id" FROM "{_DELIVERY_TABLE}" '
    "WHERE \"id\" = ? AND \"status\" IN ('pending', 'failed'))",
)
_INSERT_DELIVERY = (
    f'INSERT INTO "{_DELIVERY_TABLE}" ("id", "abid", "created_by_id", "created_at", '
    '"modified_at", "hook_id", "event_id", "event_type", "payload", "next_attempt_at", '
    '"status", "attempts", "last_error") '
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, '')" + ON_ABID_CONFLICT
)
#: How long after its commit a writer sends a delivery to its hook as the commit read
#: it. An edit committed that soon after could as well have come just after the send
#: began; later (a slow signal receiver, an earlier attempt of the same commit) the
#: hook is read again, with the delivery's state.
FRESH_READ = 0.1

#: The start of a conditional update that holds a delivery for an attempt.
TAKE = (
    f'UPDATE "{_DELIVERY_TABLE}" SET "next_attempt_at" = ? '
    "WHERE \"id\" = ? AND \"status\" IN ('pending', 'failed') AND "
)
_TAKE_HELD = TAKE + '"attempts" = 0 AND "next_attempt_at" = ?'
# Deliveries this writer held but did not send: due at the given time instead.
_RELEASE = (
    f'UPDATE "{_DELIVERY_TABLE}" SET "next_attempt_at" = ? '
    'WHERE "next_attempt_at" = ? AND "attempts" = 0 AND "id" IN ({marks})'
)
# The hook's earliest retry, read in the due index's order up to the first of its own: its
# own index holds all its log, and a backlog of 300,000 made every save wait a second.
# Its id is compared as an expression, which SQLite looks up by no index.
_NEXT_RETRY = (
    f'SELECT "next_attempt_at", "last_status_code", "last_error" FROM "{_DELIVERY_TABLE}" '
    "WHERE \"status\" IN ('pending', 'failed') AND \"status\" = 'failed' "
    'AND "next_attempt_at" IS NOT NULL AND "hook_id" || \'\' = ? '
    'ORDER BY "next_attempt_at" LIMIT 1'
)
# The hook's row lock, taken before its deliveries' as recording an outcome takes them:
# on PostgreSQL two senders moving one hook's backlog at once each locked its rows in
# its own order, and deadlocked.
_LOCK_HOOK = row_lock(_HOOK_TABLE)


class Outbox:
    """Creates, sends and records deliveries.

    ``sync_budget`` is how long the writing thread may spend sending what its
    commit produced; the rest goes out through ``deliver_due``.
    """

    def __init__(
        self,
        db: Backend,
        registry: Registry,
        clock: Callable[[], datetime],
        sender: Sender,
        outcomes: Outcomes,
        sync_budget: float,
        allowlist: AllowList,
    ) -> None:
        self.db = db
        self.sync_budget = sync_budget
        self.allowlist = allowlist
        self.registry = registry
        self.clock = clock
        self.sender = sender
        self.outcomes = outcomes
        self.payloads = PayloadBuilder()
        self._unsent = threading.local()
        sql = db.sql
        # The hooks a commit makes deliveries for stay until it ends: on PostgreSQL a hook
        # deleted in between failed the delivery's foreign key, and the application's save.
        self._enabled_hooks = _ENABLED_HOOKS + db.keep_rows
        self._select_hook = sql(_SELECT_HOOK)
        self._select_delivery = sql(_SELECT_DELIVERY)
        self._live_hook = sql(_LIVE_HOOK)
        self._insert_delivery = sql(_INSERT_DELIVERY)
        self._take_held = sql(_TAKE_HELD)
        self._release_sql = sql(_RELEASE)
        self._next_retry = sql(_NEXT_RETRY)
        self._lock_hook = sql(_LOCK_HOOK)

    @property
    def lease(self) -> timedelta:
        """How long a delivery is held for an attempt: its whole deadline, and a margin."""
        return timedelta(seconds=self.sender.deadline + 5)

    def now(self) -> datetime:
        return to_stored_time(self.clock())

    @contextmanager
    def unsent(self) -> Iterator[None]:
        """Commits of this thread inside the block send nothing: what they make is due at once.

        Opening a store fires the events others left, and must not wait on the
        network for them; the retry path sends them, as it does any backlog.
        """
        self._unsent.on = True
        try:
            yield
        finally:
            self._unsent.on = False

    def hook(self, hook_id: uuid.UUID) -> OutboundWebhook | None:
        return self._fetch_hook(self._select_hook, hook_id.hex)

    def _fetch_hook(self, sql: str, key: str) -> OutboundWebhook | None:
        row = self._fetch_one(OutboundWebhook, sql, key)
        return None if row is None else _HOOKS.instance(row)

    def delivery(self, delivery_id: str) -> WebhookDelivery | None:
        """A delivery by its stored id (hex)."""
        row = self._fetch_one(WebhookDelivery, self._select_delivery, delivery_id)
        return None if row is None else _DELIVERIES.instance(row)

    def _fetch_one(self, model: type[Any], sql: str, key: str) -> Any:
        """The row of ``model`` that ``sql`` selects by ``key``; DamagedRow if it is unreadable."""
        conn = self.db.connection()
        try:
            return conn.execute(sql, (key,)).fetchone()
        except Exception as exc:
            if (damaged := not_utf8(model, exc, conn)) is None:
                raise
            raise damaged from None

    # -- inside the committing transaction ----------------------------------------------

    #: The SQL condition under which deliveries are made from events: some hook is enabled.
    wants_events = f'EXISTS (SELECT 1 FROM "{_HOOK_TABLE}" WHERE "enabled")'

    def on_events(self, conn: Connection, events: list[ChangeEvent]) -> Callable[[], None] | None:
        """Write a pending delivery per matching hook and event; send them after commit.

        Hooks are matched on their ``ref`` and ``signal`` columns; a hook
        that matches is made into an instance, once per commit. A hook whose
        row cannot be read is skipped with an error in the log: the others
        still get their deliveries, and the commit goes on. A relation change
        (see ``_m2m``) is one delivery per hook with M2M in its signal on the
        side's model, whether or not this process registered that side.
        """
        try:
            rows = conn.execute(self._enabled_hooks).fetchall()
        except Exception as exc:
            if (damaged := not_utf8(OutboundWebhook, exc, conn)) is None:
                raise
            logger.error("%s; no delivery is made for it", damaged)
            rows = readable_rows(conn, OutboundWebhook, _ENABLED_HOOKS_AS_BYTES)
        if not rows:
            return None
        ref_at, signal_at = _HOOKS.at["ref"], _HOOKS.at["signal"]
        candidates = [(row[ref_at], row[signal_at]) for row in rows]
        hooks: dict[int, OutboundWebhook | None] = {}
        created: list[tuple[WebhookDelivery, OutboundWebhook]] = []
        now = self.now()
        unsent = getattr(self._unsent, "on", False)
        # The creator holds the delivery for one lease, so deliver_due elsewhere
        # does not send it at the same time; if this process dies, it is due after that.
        held_until = now if unsent else now + self.lease
        stamps = (format_time(now), format_time(held_until))

        def hook_at(i: int) -> OutboundWebhook | None:
            if i not in hooks:
                try:
                    hooks[i] = _HOOKS.instance(rows[i])
                except DamagedRow as exc:
                    logger.error("%s; no delivery is made for it", exc)
                    hooks[i] = None
            return hooks[i]

        def matching(ref: str, kind: str) -> list[OutboundWebhook]:
            return [
                hook
                for i, (hook_ref, signal) in enumerate(candidates)
                if hook_ref == ref
                and (type(signal) is not str or signal_matches(signal, kind))
                and (hook := hook_at(i)) is not None
                and signal_matches(hook.signal, kind)
            ]

        def write(found: list[OutboundWebhook], payload: dict[str, Any], event_id: int) -> None:
            body = dumps(payload)
            for hook in found:
                delivery = self._new_delivery(hook.id, payload["type"], body, now, event_id)
                self._insert(conn, delivery, stamps)
                created.append((delivery, hook))

        for item in runs(events, self.registry.relation_for):
            if isinstance(item, RelationRun):
                # Every side, registered here or not: hooks live in the file, and this
                # claim takes the events from processes that registered the other side.
                for change in item.changes(lambda model: True):
                    ref = model_ref(change.side.model)
                    found = matching(ref, RELATION_KIND)
                    if found:
                        abid = self._abid(conn, change.side.model, change.key)
                        write(found, self.payloads.relation(change, ref, abid), change.event.id)
                continue
            model = self.registry.for_table(item.table)
            if model is None:
                continue
            ref = model_ref(model)
            found = matching(ref, KIND_BY_OP[item.op])
            if found:
                write(found, self.payloads.change(model, ref, item), item.id)
        if not created or unsent:
            return None
        fresh_until = time.monotonic() + FRESH_READ
        return lambda: self.attempt_all(created, held_until, fresh_until)

    def _abid(self, conn: Connection, model: type[Any], key: Any) -> str | None:
        """The ABID of a row by its stored primary key; None if it has none, is gone or private."""
        field = model._meta.fields.get("abid")
        if field is None or field.name in private_names(model):
            return None
        statement = select_by_key(self.db.sql, model, quote_name(field.column_name))
        row = conn.execute(statement, (key,)).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def _new_delivery(
        self,
        hook_id: uuid.UUID,
        event_type: str,
        body: str,
        now: datetime,
        event_id: int | None = None,
    ) -> WebhookDelivery:
        """A pending delivery, made as ABIDModel would make it on insert (which follows)."""
        delivery = WebhookDelivery.from_stored(
            {
                "id": WebhookDelivery.new_id(),
                "abid": "",
                "created_by": self.db.system_user_id,
                "created_at": now,
                "modified_at": now,
                "hook": hook_id,
                "event_id": event_id,
                "event_type": event_type,
                "payload": body,
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now + self.lease,
                "last_attempt_at": None,
                "last_status_code": None,
                "last_error": "",
                "duration_ms": None,
                "delivered_at": None,
            }
        )
        delivery.abid = str(delivery.compute_abid())
        return delivery

    def _insert(self, conn: Connection, delivery: WebhookDelivery, stamps: tuple[str, str]) -> None:
        """Insert a new delivery, drawing a new id if its ABID collides.

        ``stamps`` are its ``created_at`` and ``next_attempt_at`` as stored,
        formatted once by the caller for all the deliveries of one commit.
        """
        created, next_attempt = stamps

        def insert() -> int:
            with peewee_errors:
                return int(
                    conn.execute(
                        self._insert_delivery,
                        (
                            delivery.id.hex,
                            delivery.abid,
                            delivery.created_by_id,
                            created,
                            created,
                            delivery.hook_id.hex,
                            delivery.event_id,
                            delivery.event_type,
                            delivery.payload,
                            next_attempt,
                        ),
                    ).rowcount
                )

        def renew() -> None:
            delivery.id = WebhookDelivery.new_id()
            delivery.abid = str(delivery.compute_abid())

        insert_with_fresh_ids(_DELIVERY_TABLE, insert, renew)

    def refuse_in_transaction(self, call: str) -> None:
        """Raise StoreError if this thread's transaction is open: ``call`` sends webhooks.

        A send waits for the receiver, up to the delivery deadline, and the
        transaction's locks would be held all that time: on SQLite the
        file's, which every other writer waits for.
        """
        if self.db.writing_here():
            raise StoreError(
                f"{call} sends webhooks, and was called inside a transaction, whose locks "
                "it would hold while each receiver answers: call it after the transaction"
            )

    def create_ping(self, hook: OutboundWebhook, body: str, now: datetime) -> WebhookDelivery:
        """A delivery that no change caused (``ping``): written now, sent by the caller."""
        self.refuse_in_transaction("webhooks.ping()")
        delivery = self._new_delivery(hook.id, "webhook.ping", body, now)
        stamps = (format_time(delivery.created_at), format_time(delivery.next_attempt_at))
        with self.db.atomic():
            self._insert(self.db.connection(), delivery, stamps)
        return delivery

    # -- sending ------------------------------------------------------------------------

    def attempt_all(
        self,
        deliveries: Iterable[tuple[WebhookDelivery, OutboundWebhook]],
        held_until: datetime,
        fresh_until: float,
    ) -> None:
        """Send, in the writing thread, what one commit wrote and held until ``held_until``.

        Each comes with its hook as that commit read it, which serves until
        ``fresh_until`` (``time.monotonic()``) unless an attempt was made
        since; past that the hook is read again, so a delivery is sent as
        its hook is now: not at all if the hook was deleted or it was given
        up (``disable()``) meanwhile. The thread spends at
        most ``sync_budget`` seconds here: what does not fit goes to the retry
        path at once, oldest first. A hook whose last attempt failed is not
        tried here at all, nor again after one of these attempts fails: its
        deliveries wait behind its retry, so a dead receiver costs the writer
        one deadline, not one per save.

        A delivery whose hold could run out during its attempt is taken again
        first, as ``deliver_due`` takes it, and skipped if a retry runner
        elsewhere took it meanwhile: sending it here too would deliver it twice.
        """
        stop_at = time.monotonic() + self.sync_budget
        behind: dict[uuid.UUID, list[str]] = {}  # per failing hook, what waits behind its retry
        later: list[str] = []
        attempted = False
        for delivery, hook in deliveries:
            if attempted or time.monotonic() > fresh_until:
                current = self._fetch_hook(self._live_hook, delivery.id.hex)
                if current is None:  # deleted with its hook, or given up: not to be sent
                    continue
                hook = current
            if hook.failing_since is not None or hook.id in behind:
                behind.setdefault(hook.id, []).append(delivery.id.hex)
                continue
            left = stop_at - time.monotonic()
            if left <= 0:
                later.append(delivery.id.hex)
                continue
            now = self.now()
            could_end = now + timedelta(seconds=min(left, self.sender.deadline))
            if could_end >= held_until and not self.take(
                self._take_held, delivery.id.hex, now, (format_time(held_until),)
            ):
                continue
            self.attempt(delivery, now, hook, deadline=left)
            attempted = True
            if delivery.status != "delivered":
                behind.setdefault(hook.id, [])
        if later or any(behind.values()):
            self._release(later, behind, held_until)

    def _release(
        self, later: list[str], behind: dict[uuid.UUID, list[str]], held_until: datetime
    ) -> None:
        """Hand unsent deliveries (still held by this writer) to the retry path.

        ``later`` are due now; those ``behind`` a failing hook are due with its
        next retry, so they go out together once the receiver is back. When
        that retry is of a message the receiver refused (``refused``), the
        receiver is up: they are due now too.
        """
        held = format_time(held_until)
        now = format_time(self.now())
        with self.db.write(quiet=True) as conn:
            groups = [(now, later)]
            for hook_id, ids in behind.items():
                if ids:
                    row = conn.execute(self._next_retry, (hook_id.hex,)).fetchone()
                    wait = row is not None and not refused(row[1], row[2])
                    groups.append((max(row[0], now) if wait else now, ids))
            for when, ids in groups:
                for start in range(0, len(ids), 500):
                    chunk = ids[start : start + 500]
                    marks = ",".join([self.db.sql("?")] * len(chunk))
                    conn.execute(self._release_sql.format(marks=marks), (when, held, *chunk))

    def take(self, sql: str, delivery_id: str, now: datetime, condition: tuple[str, ...]) -> bool:
        """Hold an unsent delivery (by stored id) for one lease from ``now``, if ``sql`` agrees.

        A row another process changed while this waited for it is taken, as READ
        COMMITTED would find it: a database whose transactions are REPEATABLE READ or
        SERIALIZABLE refuses the update instead, which must not end the caller's round.
        """
        hold = format_time(now + self.lease)
        try:
            with self.db.atomic():
                cursor = self.db.execute_sql(sql, (hold, delivery_id, *condition))
                return bool(cursor.rowcount)
        except StoreLocked as exc:
            if self.db.writing_here() or not changed_meanwhile(exc):
                raise
            return False

    def attempt(
        self,
        delivery: WebhookDelivery,
        now: datetime | None = None,
        hook: OutboundWebhook | None = None,
        deadline: float | None = None,
    ) -> WebhookDelivery:
        """Send one delivery and record the outcome on it and on its hook.

        ``now`` (default: the clock) is the time the attempt is made and
        recorded at, and the ``webhook-timestamp`` it is signed with. ``hook``
        is the delivery's hook when the caller has just read it. ``deadline``
        shortens the sender's deadline (seconds).
        """
        if hook is None:
            hook = self.hook(delivery.hook_id)
        if hook is None:  # deleted meanwhile, and its deliveries with it
            return delivery
        now = self.now() if now is None else to_stored_time(now)
        if not hook.enabled:
            self.outcomes.bury(delivery, given_up(hook.disabled_reason))
            return delivery
        body = delivery.payload.encode("utf-8")
        try:
            headers = message_headers(hook, delivery.abid, body, now)
        except Exception as exc:
            # A hook edited outside the API (the sqlite3 shell) may not make a request.
            outcome = Outcome(False, error=f"cannot build the request: {str(exc)[:500]}")
        else:
            self.allowlist.refresh(at_most_every=1.0)  # the file's list, a second old at most
            outcome = self.sender.post(hook.endpoint, body, headers, deadline)
        if outcome.error:
            outcome.error = redacted(outcome.error, hook)
        if outcome.body and hook.keep_last_response:  # an echo of the request holds secrets
            outcome.body = redacted(outcome.body, hook)
        self.outcomes.record(hook, delivery, outcome, now)
        return delivery

    def lock_hook(self, hook_id: str) -> None:
        """Take a hook's row lock (by stored id) in this thread's transaction.

        Writers of a hook's rows take it first, and so one after another: a
        rotation behind another rotation, a sender behind another sender.
        """
        self.db.execute_sql(self._lock_hook, (hook_id,))
