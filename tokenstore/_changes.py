"""Change capture in SQL and dispatch after commit.

Triggers write a ``tokenstore_change_event`` row in the same transaction as
the change they record, so a rollback takes the event with it and writes from
any process (or the sqlite3 shell) are captured alike. Just before a
transaction commits, its events are *claimed* by this process inside the same
transaction (so capture costs no extra commit, and two processes can never both
claim one event); consumers that must survive a crash, such as webhook
deliveries, record their work there too. Right after the commit the claimed
events become blinker signals. A process that dies in between leaves its
claims behind; ``dispatch()`` in any later process takes them over.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice
from typing import Any

import peewee
from peewee import __exception_wrapper__ as _as_peewee_errors  # type: ignore[attr-defined]

from . import signals
from ._errors import ValidationError
from ._models import BaseModel
from ._rows import quote_name
from ._times import format_time

logger = logging.getLogger("tokenstore._changes")

EVENT_TABLE = "tokenstore_change_event"
LISTENER_TABLE = "tokenstore_listener"
HOOK_TABLE = "tokenstore_outbound_webhook"

_WRITE_PREFIXES = ("INSERT", "UPDATE", "DELETE", "REPLACE")
#: Whitespace and comments that may come before a statement's first keyword.
_LEADING = re.compile(r"(?:\s+|--[^\n]*|/\*.*?\*/)*", re.DOTALL)
#: A data-changing keyword anywhere in a ``WITH ...`` statement (a false positive costs
#: a transaction; a miss would leave events unclaimed, so the test errs on the safe side).
_DML_WORD = re.compile(r"\b(?:INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)

#: SQLite's default limit on function arguments bounds json_object() to this many columns.
MAX_CAPTURED_COLUMNS = 63

_DROP_UNCLAIMED = (
    f"DELETE FROM {EVENT_TABLE} WHERE NOT EXISTS (SELECT 1 FROM {LISTENER_TABLE}) "
    "AND claimed_by IS NULL AND table_name IN "
)
_REGISTER = (
    f"INSERT INTO {LISTENER_TABLE} (claimant, since) SELECT ?, ? "
    f"WHERE NOT EXISTS (SELECT 1 FROM {LISTENER_TABLE} WHERE claimant = ?)"
)
_CLAIM = (
    f"UPDATE {EVENT_TABLE} SET claimed_by = ?, claimed_at = ?, claims = claims + 1 "
    "WHERE claimed_by IS NULL AND table_name IN {tables} "
    "RETURNING id, table_name, op, row_pk, old_row, new_row, created_at, claims - 1"
)
#: Claim and finish at once, for a process with consumers but no receivers.
_CONSUME = (
    f"DELETE FROM {EVENT_TABLE} WHERE claimed_by IS NULL AND table_name IN {{tables}} "
    "RETURNING id, table_name, op, row_pk, old_row, new_row, created_at, claims"
)
#: Run consumers on new events but leave them to the processes that listen.
_CONSUME_AND_LEAVE = (
    f"UPDATE {EVENT_TABLE} SET claims = claims + 1 "
    "WHERE claimed_by IS NULL AND claims = 0 AND table_name IN {tables} "
    "RETURNING id, table_name, op, row_pk, old_row, new_row, created_at, 0"
)
_ANY_LISTENER = f"SELECT 1 FROM {LISTENER_TABLE} LIMIT 1"


@dataclass(frozen=True)
class ChangeEvent:
    """One captured row change, as the trigger recorded it."""

    id: int
    table: str
    op: str
    pk: str | None
    old: dict[str, Any] | None
    new: dict[str, Any] | None
    created_at: str

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> ChangeEvent:
        id_, table, op, pk, old, new, created_at = row
        return cls(
            id=id_,
            table=table,
            op=op,
            pk=None if pk is None else str(pk),
            old=None if old is None else json.loads(old),
            new=None if new is None else json.loads(new),
            created_at=created_at,
        )

    @property
    def row(self) -> dict[str, Any]:
        """The row as it is after the change (before it, for a delete)."""
        return (self.new if self.op != "DELETE" else self.old) or {}


#: Runs inside the committing transaction with the claimed events; what it
#: returns (if anything) runs after the commit. Webhook deliveries use this.
Consumer = Callable[[sqlite3.Connection, list["ChangeEvent"]], Callable[[], None] | None]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def model_ref(model: type[peewee.Model]) -> str:
    """The name hooks use for a model: ``module.ClassName``."""
    return f"{model.__module__}.{model.__qualname__}"


def capture_triggers(model: type[peewee.Model]) -> list[str]:
    """The CREATE TRIGGER statements that capture changes to a model's table.

    Private fields are left out of the recorded rows; an UPDATE that changes
    only quiet fields (or nothing) records no event. Rows are recorded only
    while someone can use them: a process listening for signals is registered
    in ``tokenstore_listener``, or an enabled hook watches the model. Otherwise
    a write costs the trigger's check and nothing more.
    """
    meta = model._meta
    table = meta.table_name
    pk = meta.primary_key
    if not isinstance(pk, peewee.Field) or isinstance(pk, peewee.CompositeKey):
        raise ValidationError(f"{model.__name__}: change capture needs a single-column primary key")
    private = set(getattr(model, "private_fields", ()))
    quiet = set(getattr(model, "quiet_fields", ()))
    fields = list(meta.sorted_fields)
    recorded = [f for f in fields if f.name not in private]
    if len(recorded) > MAX_CAPTURED_COLUMNS:
        raise ValidationError(
            f"{model.__name__}: change capture records at most {MAX_CAPTURED_COLUMNS} columns, "
            f"this table has {len(recorded)}"
        )
    watched = [f for f in fields if f.name not in quiet]

    def row(alias: str) -> str:
        pairs = []
        for f in recorded:
            value = f"{alias}.{quote_name(f.column_name)}"
            if isinstance(f, peewee.BlobField):
                value = f"hex({value})"
            pairs.append(f"'{f.column_name}', {value}")
        return "json_object(" + ", ".join(pairs) + ")"

    # UPDATE OF: a statement that sets only quiet columns never even runs the trigger.
    of = "OF " + ", ".join(quote_name(f.column_name) for f in watched) + " " if watched else ""
    changed = " OR ".join(
        f"OLD.{quote_name(f.column_name)} IS NOT NEW.{quote_name(f.column_name)}" for f in watched
    )
    gate = (
        f"(EXISTS (SELECT 1 FROM {LISTENER_TABLE}) OR EXISTS (SELECT 1 FROM {HOOK_TABLE} "
        f"WHERE ref = {_literal(model_ref(model))} AND enabled))"
    )
    pk_col = quote_name(pk.column_name)
    insert = f"INSERT INTO {EVENT_TABLE} (table_name, op, row_pk, old_row, new_row)"
    name = table.replace('"', "")
    values = f"VALUES ({_literal(table)}"
    on = quote_name(table)
    return [
        f"CREATE TRIGGER {quote_name(name + '_capture_insert')} AFTER INSERT ON {on}\n"
        f"WHEN {gate}\n"
        f"BEGIN\n  {insert}\n  {values}, 'INSERT', NEW.{pk_col}, NULL, {row('NEW')});\n"
        "END",
        f"CREATE TRIGGER {quote_name(name + '_capture_update')} AFTER UPDATE {of}"
        f"ON {on}\n"
        f"WHEN {gate}\n  AND ({changed or '0'})\n"
        f"BEGIN\n  {insert}\n  {values}, 'UPDATE', NEW.{pk_col}, {row('OLD')}, "
        f"{row('NEW')});\nEND",
        f"CREATE TRIGGER {quote_name(name + '_capture_delete')} AFTER DELETE ON {on}\n"
        f"WHEN {gate}\n"
        f"BEGIN\n  {insert}\n  {values}, 'DELETE', OLD.{pk_col}, {row('OLD')}, NULL);\n"
        "END",
    ]


def install_capture(conn: sqlite3.Connection, model: type[peewee.Model]) -> None:
    """(Re)create a model's capture triggers so they match its current fields."""
    name = model._meta.table_name
    for suffix in ("insert", "update", "delete"):
        conn.execute(f"DROP TRIGGER IF EXISTS {quote_name(f'{name}_capture_{suffix}')}")
    for statement in capture_triggers(model):
        conn.execute(statement)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child its parent has not reaped yet is as dead as it gets
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


#: What one transaction claimed: its events, and the work to do after it commits.
Claimed = tuple[list[ChangeEvent], list[Callable[[], None]]]
_NOTHING: Claimed = ([], [])


class _ThreadState(threading.local):
    """Per thread: what committed transactions claimed, and whether it is being fired."""

    def __init__(self) -> None:
        self.pending: list[Claimed] = []
        self.running = False
        self.claimed = 0  # events this thread has claimed, ever: dispatch() counts by it


class Dispatcher:
    """Claims events inside committing transactions and fires them after commit."""

    def __init__(
        self,
        models_by_table: dict[str, type[peewee.Model]],
        clock: Callable[[], datetime],
        claim_timeout: timedelta,
    ) -> None:
        self.models_by_table = models_by_table
        self.clock = clock
        self.claim_timeout = claim_timeout
        self.consumers: list[tuple[Consumer, Callable[[sqlite3.Connection], bool]]] = []
        self.claimant = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._local = _ThreadState()
        self._statements_for: tuple[tuple[str, ...], str, str, str, str] | None = None

    def _statements(self) -> tuple[str, str, str, str]:
        """The drop, claim and two consume statements, limited to the tables this process knows.

        An event of a table this process knows nothing of (an application model
        the ``tokenstore`` command was not told about) waits for one that does.
        Built again only when the registered tables change, not on every commit.
        """
        names = tuple(self.models_by_table)
        built = self._statements_for
        if built is None or built[0] != names:
            tables = "(" + ",".join(_literal(n) for n in names) + ")"
            built = (
                names,
                _DROP_UNCLAIMED + tables,
                _CLAIM.format(tables=tables),
                _CONSUME.format(tables=tables),
                _CONSUME_AND_LEAVE.format(tables=tables),
            )
            self._statements_for = built  # one assignment: threads never see a half-built set
        return built[1], built[2], built[3], built[4]

    def add_consumer(
        self, consumer: Consumer, wants_events: Callable[[sqlite3.Connection], bool]
    ) -> None:
        """Register work that must be made durable with the events it reacts to."""
        self.consumers.append((consumer, wants_events))

    # -- inside the transaction ---------------------------------------------------------

    def on_begin(self, conn: sqlite3.Connection) -> None:
        """Register this process as a listener before its first write, if it has receivers.

        The triggers record rows only while someone listens; registering
        inside the transaction means its own writes are already captured.
        Registering again is a read: no page is written once the row is there.
        """
        if any(s.receivers for s in signals.EVENT_SIGNALS):
            conn.execute(_REGISTER, (self.claimant, format_time(self.clock()), self.claimant))

    def unregister(self, conn: sqlite3.Connection) -> None:
        """Stop capture on this process's account (its store is closing)."""
        conn.execute(f"DELETE FROM {LISTENER_TABLE} WHERE claimant = ?", (self.claimant,))
        self.drop_unheard(conn)

    def drop_unheard(self, conn: sqlite3.Connection) -> None:
        """Delete unclaimed events nobody will hear: no process listens, no hook wants them.

        Events are recorded only while someone listens, so these are the few
        left over when the last listener went away or a hook was disabled.
        """
        if not any(wants(conn) for _, wants in self.consumers):
            conn.execute(self._statements()[0])

    def claim(self, conn: sqlite3.Connection) -> Claimed:
        """Take the unclaimed events (this transaction's, and any left by others).

        If nothing in this process listens, they are left for the processes
        that do; this costs the commit no statement at all. With consumers but
        no receivers, the consumers run on the new events, which are then left
        for the listening processes if there are any, or else deleted here,
        inside the transaction (one commit fewer than claiming them and
        deleting them after it). Consumers see an event only once: on its
        first claim, whose transaction also commits their work.
        """
        _, claim, consume, consume_and_leave = self._statements()
        wanted = [c for c, wants in self.consumers if wants(conn)]
        receivers = any(s.receivers for s in signals.EVENT_SIGNALS)
        if not wanted and not receivers:
            return _NOTHING  # they are a listening process's to take (see drop_unheard)
        if receivers:
            rows = conn.execute(claim, (self.claimant, format_time(self.clock()))).fetchall()
        elif conn.execute(_ANY_LISTENER).fetchone() is not None:
            rows = conn.execute(consume_and_leave).fetchall()
        else:
            rows = conn.execute(consume).fetchall()
        if not rows:
            return _NOTHING
        rows.sort(key=lambda row: row[0])
        self._local.claimed += len(rows)
        events = [ChangeEvent.from_row(row[:-1]) for row in rows]
        first = [event for event, row in zip(events, rows, strict=True) if row[-1] == 0]
        followups = [f for f in (c(conn, first) for c in wanted) if f is not None] if first else []
        return (events if receivers else []), followups

    def claimed_count(self) -> int:
        """How many events this thread has claimed so far."""
        return self._local.claimed

    def queue(self, claimed: Claimed) -> None:
        """Remember what a transaction claimed, once its commit has succeeded."""
        if claimed[0] or claimed[1]:
            self._local.pending.append(claimed)

    # -- after the commit ---------------------------------------------------------------

    def after_commit(self, conn: sqlite3.Connection) -> None:
        """Fire what committed transactions claimed. Never raises: the commit is done."""
        state = self._local
        if state.running or not state.pending:  # a receiver that wrote: the loop below has it
            return
        state.running = True
        try:
            while state.pending:
                events, followups = state.pending.pop(0)
                for event in events:
                    self.fire(event)
                try:
                    self.finish(conn, [e.id for e in events])
                except Exception:
                    logger.exception("could not delete %d dispatched events", len(events))
                for followup in followups:
                    try:
                        followup()
                    except Exception:
                        logger.exception("post-commit work %r failed", followup)
        finally:
            state.running = False

    def fire(self, event: ChangeEvent) -> None:
        """Turn one event into blinker signals; the sender is the model class."""
        model = self.models_by_table.get(event.table)
        sender: Any = model if model is not None else event.table
        signals.send_isolated(signals.row_changed, sender, event=event)
        if model is None:
            return
        signal = signals.post_delete if event.op == "DELETE" else signals.post_save
        if not signals.has_receivers(signal, model):
            return
        try:
            instance = instance_from_row(model, event.row)
        except Exception:
            logger.exception("could not rebuild %s from event %d", model.__name__, event.id)
            return
        if event.op == "DELETE":
            signals.send_isolated(signal, model, instance=instance, event=event)
        else:
            signals.send_isolated(
                signal, model, instance=instance, created=event.op == "INSERT", event=event
            )

    def finish(self, conn: sqlite3.Connection, ids: list[int]) -> None:
        """Delete events that have been fired, only if this process still holds their claim."""
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            conn.execute(
                f"DELETE FROM {EVENT_TABLE} WHERE claimed_by = ? AND id IN ({marks})",
                (self.claimant, *chunk),
            )

    # -- recovery -----------------------------------------------------------------------

    def _gone(self, claimant: str) -> bool:
        """Whether a claimant's process has ended (on this host; others cannot be asked)."""
        if claimant == self.claimant:
            return False
        claim_host, _, rest = claimant.partition(":")
        pid = rest.partition(":")[0]
        return claim_host == socket.gethostname() and pid.isdigit() and not _process_alive(int(pid))

    def stale_claimants(self, conn: sqlite3.Connection) -> list[str]:
        """Claimants whose process is gone (or has held its claim past the timeout)."""
        cutoff = format_time(self.clock() - self.claim_timeout)
        return [
            claimant
            for claimant, oldest in conn.execute(
                f"SELECT claimed_by, min(claimed_at) FROM {EVENT_TABLE} "
                "WHERE claimed_by IS NOT NULL GROUP BY claimed_by"
            )
            if claimant != self.claimant and (self._gone(claimant) or oldest < cutoff)
        ]

    def release(self, conn: sqlite3.Connection, claimants: Iterable[str]) -> None:
        """Hand abandoned claims back, so the enclosing transaction claims them anew."""
        for claimant in claimants:
            conn.execute(
                f"UPDATE {EVENT_TABLE} SET claimed_by = NULL WHERE claimed_by = ?", (claimant,)
            )

    def forget_dead_listeners(self, conn: sqlite3.Connection) -> None:
        """Listeners whose process ended without closing its store no longer keep capture on."""
        for (claimant,) in conn.execute(f"SELECT claimant FROM {LISTENER_TABLE}").fetchall():
            if self._gone(claimant):
                conn.execute(f"DELETE FROM {LISTENER_TABLE} WHERE claimant = ?", (claimant,))


def instance_from_row(model: type[peewee.Model], row: dict[str, Any]) -> peewee.Model:
    """A model instance from a captured row, as if it had been read from the table."""
    columns = model._meta.columns
    values = {}
    for column, raw in row.items():
        f = columns.get(column)
        if f is None:
            continue
        if isinstance(f, peewee.BlobField) and raw is not None:
            raw = bytes.fromhex(raw)
        values[f.name] = f.python_value(raw)
    if issubclass(model, BaseModel):
        return model.from_stored(values)
    return model(__no_default__=True, **values)


def _is_write(sql: str) -> bool:
    """Whether a statement may change rows, and so fire capture triggers.

    peewee's own statements are decided by their first word; hand-written SQL
    may start with whitespace or comments, and a ``WITH`` prefix may lead to
    a write or to a plain read.
    """
    head = sql[:7].upper()
    if head.startswith(_WRITE_PREFIXES):
        return True
    if head.startswith("SELECT"):
        return False
    match = _LEADING.match(sql)
    start = match.end() if match else 0
    head = sql[start : start + 7].upper()
    if head.startswith(_WRITE_PREFIXES):
        return True
    return head.startswith("WITH") and _DML_WORD.search(sql, start) is not None


class _FetchedCursor:
    """The rows of a finished statement, read the way peewee reads a cursor.

    A lone ``... RETURNING`` write must run to its end before its transaction
    can commit, yet peewee reads the returned rows only after ``execute_sql``.
    """

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        rows = cursor.fetchall()
        self.description = cursor.description
        self.rowcount = cursor.rowcount
        self.lastrowid = cursor.lastrowid
        self.arraysize = cursor.arraysize
        self._rows: Iterator[Any] = iter(rows)
        cursor.close()

    def fetchone(self) -> Any:
        return next(self._rows, None)

    def fetchmany(self, size: int | None = None) -> list[Any]:
        return list(islice(self._rows, self.arraysize if size is None else size))

    def fetchall(self) -> list[Any]:
        return list(self._rows)

    def __iter__(self) -> Iterator[Any]:
        return self._rows

    def close(self) -> None:
        self._rows = iter(())


class CapturingDatabase(peewee.SqliteDatabase):
    """SqliteDatabase that knows when its transactions commit.

    Every write runs in a transaction (a lone statement gets one of its own),
    every transaction takes the write lock up front (``BEGIN IMMEDIATE``, so
    concurrent writers wait on the busy timeout instead of failing), and every
    commit claims the transaction's change events first and fires them after.
    """

    def __init__(self, database: str, *, dispatcher: Dispatcher, **kwargs: Any) -> None:
        super().__init__(database, lock_type="IMMEDIATE", **kwargs)
        self.dispatcher = dispatcher
        self.system_user_id: int | None = None
        self.store: Any = None  # the Store this database belongs to, for model validation

    def execute_sql(self, sql: str, params: Any = None) -> Any:
        """Run a statement; a write outside a transaction gets a transaction of its own.

        The lone write's transaction is opened and committed here directly
        rather than through ``atomic()``: it is the hottest path of every
        ``save()``, and nothing can run inside it but the statement itself.
        """
        conn = self.connection()
        if conn.in_transaction or not _is_write(sql):
            return super().execute_sql(sql, params)
        with _as_peewee_errors:
            conn.execute("BEGIN IMMEDIATE")
        try:
            self.dispatcher.on_begin(conn)
            cursor = super().execute_sql(sql, params)
            if cursor.description is not None:  # RETURNING rows: finish before COMMIT
                cursor = _FetchedCursor(cursor)
            self.commit()
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return cursor

    def begin(self, lock_type: str | None = None) -> None:
        super().begin(lock_type)
        conn = self.connection()
        try:
            self.dispatcher.on_begin(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def commit(self) -> None:
        conn = self.connection()
        claimed = self.dispatcher.claim(conn) if conn.in_transaction else _NOTHING
        with _as_peewee_errors:
            conn.execute("COMMIT")
        self.dispatcher.queue(claimed)
        if not self.in_transaction():
            self.dispatcher.after_commit(conn)

    def rollback(self) -> None:
        """Roll back; what earlier commits of an explicit ``transaction()`` claimed still fires."""
        super().rollback()
        if not self.in_transaction():
            self.dispatcher.after_commit(self.connection())
