"""Claiming change events inside the committing transaction, and firing them after it.

Just before a transaction commits, its events are *claimed* by this process
inside the same transaction (so capture costs no extra commit, and two
processes can never both claim one event); consumers that must survive a
crash, such as webhook deliveries, record their work there too. Right after
the commit the claimed events become blinker signals. A process that dies in
between leaves its claims behind; a later ``dispatch()`` in any process takes
them over.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple, Protocol

from . import signals
from ._capture import EVENT_TABLE, LISTENER_TABLE, ChangeEvent, Connection, private_names
from ._liveness import Liveness
from ._m2m import RelationChange, runs
from ._registry import Registry
from ._rows import Converter, Loader, build, refused_as_not_utf8, select_by_key
from ._times import format_time

logger = logging.getLogger("tokenstore.dispatch")


#: Runs inside the committing transaction with the events it claimed first; what it
#: returns (if anything) runs after the commit. Webhook deliveries use this.
Consumer = Callable[[Connection, list[ChangeEvent]], Callable[[], None] | None]

_LISTENING = f"EXISTS (SELECT 1 FROM {LISTENER_TABLE})"

#: How many rounds of changes, each written by receivers of the round before, one save
#: may set off before receivers stop hearing them: a receiver that saves the model it
#: listens to would otherwise keep the writing thread busy for good.
MAX_RECEIVER_ROUNDS = 100


class ClaimStatements(NamedTuple):
    """The statements that take events, limited to the tables one process knows.

    Each backend writes them in its own dialect; all return event rows as
    ``id, table_name, op, row_pk, old_row, new_row, created_at, claims``
    (``claims`` counted before this claim: 0 the first time).
    """

    drop_unheard: str  #: delete unclaimed events while nobody listens
    claim: str  #: (claimant, claimed_at): take the unclaimed events
    consume: str  #: take and delete them at once (consumers, no receivers, no listeners)
    consume_and_leave: str  #: let consumers see new events, leave them to the listeners


class Statements(Protocol):
    """What the dispatcher needs of a backend."""

    def sql(self, text: str) -> str: ...

    def claim_statements(self, tables: tuple[str, ...]) -> ClaimStatements: ...


@dataclass
class Claimed:
    """What one transaction claimed: the events to fire, and the work to do after commit."""

    events: list[ChangeEvent] = field(default_factory=list)
    followups: list[Callable[[], None]] = field(default_factory=list)
    round: int = 0  #: 0 for an application's commit, n for one written by round n-1's receivers

    def __bool__(self) -> bool:
        return bool(self.events or self.followups)


class _ThreadState(threading.local):
    """Per thread: what committed transactions claimed, and whether it is being fired."""

    def __init__(self) -> None:
        self.pending: list[Claimed] = []
        self.running = False
        self.round = 0  # of the claim whose events are being fired
        self.claimed = 0  # events this thread has claimed, ever: dispatch() counts by it


class Dispatcher:
    """Claims events inside committing transactions and fires them after commit.

    The database calls ``on_begin``, ``claim``, ``queue`` and ``after_commit``
    around each of its transactions; nothing else here knows about SQL dialects.
    """

    def __init__(
        self,
        registry: Registry,
        statements: Statements,
        clock: Callable[[], datetime],
        liveness: Liveness,
    ) -> None:
        self.registry = registry
        self.clock = clock
        self.liveness = liveness
        self._next_housekeeping = 0.0  # time.monotonic() of the next look at the listeners
        # The consumers and the probe asking about them, replaced together in one assignment:
        # a thread committing while another adds a consumer sees both before or both after.
        self._consumers: tuple[tuple[Consumer, ...], str] = ((), f"SELECT {_LISTENING}")
        # What the last probe found: some consumer wanted events. A hint only, so that a
        # write whose commit will claim anyway does not ask the probe twice.
        self._wanted_lately = True
        # Whether this process has put itself in the listener table (``on_begin``), so the
        # first commit after its last receiver left takes it out again.
        self._registered = False
        self._local = _ThreadState()
        self._backend = statements
        self._claims: tuple[tuple[str, ...], ClaimStatements] | None = None
        self._loaders: dict[type[Any], Loader[Any]] = {}
        sql = statements.sql
        # ON CONFLICT: two threads of this process may both find no row (PostgreSQL's
        # transactions do not wait for each other's reads); the second then adds nothing.
        self._register = sql(
            f"INSERT INTO {LISTENER_TABLE} (claimant, since, seen) SELECT ?, ?, ? "
            f"WHERE NOT EXISTS (SELECT 1 FROM {LISTENER_TABLE} WHERE claimant = ?) "
            "ON CONFLICT (claimant) DO NOTHING"
        )
        self._seen = sql(
            f"UPDATE {LISTENER_TABLE} SET seen = ? "
            "WHERE claimant = ? AND (seen IS NULL OR seen < ?)"
        )
        self._finish = sql(f"DELETE FROM {EVENT_TABLE} WHERE claimed_by = ? AND id IN ({{marks}})")
        self._drop = sql(f"DELETE FROM {EVENT_TABLE} WHERE id IN ({{marks}})")

    @property
    def claimant(self) -> str:
        """This process's name in its claims and in the listener table."""
        return self.liveness.claimant

    def start_afresh(self) -> None:
        """In a forked child: claim and listen under a name of its own (``Liveness``)."""
        self.liveness.start_afresh()
        self._registered = False
        self._local = _ThreadState()

    def _statements(self) -> ClaimStatements:
        """This process's claim statements, built again only when its tables change."""
        tables = self.registry.tables()
        built = self._claims
        if built is None or built[0] != tables:
            built = (tables, self._backend.claim_statements(tables))
            self._claims = built  # one assignment: threads never see a half-built pair
        return built[1]

    def add_consumer(self, consumer: Consumer, wants_events: str) -> None:
        """Register work that must be made durable with the events it reacts to.

        ``wants_events`` is an SQL condition, true while the consumer has a
        use for events: every commit asks it, together with the others and
        whether any process listens, in one statement.
        """
        consumers, probe = self._consumers
        self._consumers = ((*consumers, consumer), f"{probe}, {wants_events}")

    @property
    def consumers(self) -> tuple[Consumer, ...]:
        """The work registered with ``add_consumer``, in its order."""
        return self._consumers[0]

    def _listening_and_wanted(self, conn: Connection) -> tuple[bool, list[Consumer]]:
        """Whether any process listens, and the consumers that want events now."""
        consumers, probe = self._consumers
        row = conn.execute(probe).fetchone()
        wanted = [c for c, want in zip(consumers, row[1:], strict=True) if want]
        self._wanted_lately = bool(wanted)
        return bool(row[0]), wanted

    # -- inside the transaction ---------------------------------------------------------

    def on_begin(self, conn: Connection) -> None:
        """Register this process as a listener before its first write, if it has receivers.

        The triggers record rows only while someone listens; registering
        inside the transaction means its own writes are already captured.
        Registering again is a read: no page is written once the row is there.
        """
        if signals.any_event_receivers():
            now = format_time(self.clock())
            conn.execute(self._register, (self.claimant, now, now, self.claimant))
            self._registered = True

    def unregister(self, conn: Connection) -> None:
        """Stop capture on this process's account (its store is closing, its receivers left)."""
        self.liveness.forget(conn, self.claimant)
        self._registered = False
        self.drop_unheard(conn)

    def drop_unheard(self, conn: Connection) -> bool:
        """Delete unclaimed events nobody will hear: no process listens, no hook wants them.

        Events are recorded only while someone listens, so these are the few
        left over when the last listener went away or a hook was disabled.
        Whether no hook wants events, so that only listeners would take them.
        """
        if self._listening_and_wanted(conn)[1]:
            return False
        conn.execute(self._statements().drop_unheard)
        return True

    def nothing_to_claim(self, conn: Connection) -> bool:
        """Whether a lone write may skip its transaction: nothing would be claimed at its commit.

        True when this process has no receivers, no consumer wants events
        and no housekeeping is due. Events its triggers record meanwhile (a
        listener or hook that appeared in between) are left for the
        processes and commits that take them, as ``claim`` would leave them.
        While the last probe found events wanted (a hook is enabled), the
        answer is no without asking: the commit's claim asks anyway.
        """
        if self._registered or time.monotonic() >= self._next_housekeeping:
            return False
        if signals.any_event_receivers():
            return False
        if not self.consumers:
            return True
        return not self._wanted_lately and not self._listening_and_wanted(conn)[1]

    def claim(self, conn: Connection) -> Claimed:
        """Take the unclaimed events (this transaction's, and any left by others).

        If nothing in this process listens, they are left for the processes
        that do, and the commit runs no statement at all. With consumers but
        no receivers, the consumers run on the new events, which are then left
        for the listening processes if there are any, or else deleted here,
        inside the transaction. Consumers see an event only once: on its
        first claim, whose transaction also commits their work.
        """
        if time.monotonic() >= self._next_housekeeping:
            self.housekeeping(conn)
        receivers = signals.any_event_receivers()
        if self._registered and not receivers:  # its last receiver left: it no longer listens
            self.unregister(conn)
        if not receivers and not self.consumers:
            return Claimed()  # they are a listening process's to take (see drop_unheard)
        listening, wanted = self._listening_and_wanted(conn)
        if not wanted and not receivers:
            return Claimed()
        statements = self._statements()
        if receivers:
            now = self.clock()
            conn.execute(  # writes only once a minute: this listener is alive
                self._seen,
                (format_time(now), self.claimant, format_time(now - timedelta(minutes=1))),
            )
            rows = conn.execute(statements.claim, (self.claimant, format_time(now))).fetchall()
        elif listening:
            rows = conn.execute(statements.consume_and_leave).fetchall()
        else:
            rows = conn.execute(statements.consume).fetchall()
        if not rows:
            return Claimed()
        rows.sort(key=lambda row: row[0])
        self._local.claimed += len(rows)
        events, first = self._readable(conn, rows)
        followups = [f for f in (c(conn, first) for c in wanted) if f is not None] if first else []
        return Claimed(events if receivers else [], followups)

    def _readable(
        self, conn: Connection, rows: list[Any]
    ) -> tuple[list[ChangeEvent], list[ChangeEvent]]:
        """The claimed rows' events, and those claimed for the first time.

        A row that is no event (written into the table by hand or by another
        program) is deleted with an error in the log: left there, it would
        fail every commit that claims it.
        """
        events, first, unreadable = [], [], []
        for row in rows:
            try:
                event = ChangeEvent.from_row(row[:-1])
            except (ValueError, TypeError) as exc:
                logger.error("change event %s cannot be read (%s); it is dropped", row[0], exc)
                unreadable.append(row[0])
                continue
            events.append(event)
            if row[-1] == 0:
                first.append(event)
        self._delete(conn, self._drop, unreadable)
        return events, first

    def waiting(self, conn: Connection) -> dict[str, int]:
        """Events of tables this process has no model for, by table: they wait for one that has."""
        tables = self.registry.tables()
        return self._by_table(conn, self._not_among(tables), tables)

    def _not_among(self, tables: tuple[str, ...]) -> str:
        return f"table_name NOT IN ({','.join([self._backend.sql('?')] * len(tables))})"

    def _by_table(self, conn: Connection, where: str, params: tuple[Any, ...]) -> dict[str, int]:
        """How many events meet ``where``, by table name."""
        sql = f"SELECT table_name, count(*) FROM {EVENT_TABLE} WHERE {where} GROUP BY table_name"
        try:  # sorted here, by code point: PostgreSQL's ORDER BY follows its collation
            return dict(sorted(conn.execute(sql, params)))
        except Exception as exc:  # a name written by hand, in text that is no UTF-8 (SQLite)
            if refused_as_not_utf8(exc) is None:
                raise
        rows = conn.execute(sql.replace("table_name,", "CAST(table_name AS BLOB),", 1), params)
        return dict(sorted((table.decode(errors="replace"), count) for table, count in rows))

    def drop_unclaimed(self, conn: Connection) -> None:
        """Delete events no listener claimed within ``listener_timeout`` of their capture.

        Every listener still registered has claimed since (one silent that
        long is removed), and left them: none has a model for their table, so
        they would wait for ever while it listens. The tables this process
        claims itself, if it listens, are left to its own claim. Called only
        while no hook is enabled (``drop_unheard`` says): a hook's events wait
        for a process with their model however long, as a row changed in the
        sqlite3 shell while the application is away is sent once it is back.
        """
        where = f"claimed_by IS NULL AND created_at < {self._backend.sql('?')}"
        params: tuple[Any, ...] = (format_time(self.clock() - self.liveness.listener_timeout),)
        if signals.any_event_receivers():
            tables = self.registry.tables()
            where, params = f"{where} AND {self._not_among(tables)}", (*params, *tables)
        dropped = self._by_table(conn, where, params)
        if dropped:
            logger.warning(
                "change events that no listener claimed within %s are dropped (no listening "
                "process has a model for their table): %s",
                self.liveness.listener_timeout,
                ", ".join(f"{count} of {table[:200]!r}" for table, count in dropped.items()),
            )
            conn.execute(f"DELETE FROM {EVENT_TABLE} WHERE {where}", params)

    def claimed_count(self) -> int:
        """How many events this thread has claimed so far."""
        return self._local.claimed

    def queue(self, claimed: Claimed) -> None:
        """Remember what a transaction claimed, once its commit has succeeded."""
        if claimed:
            state = self._local
            claimed.round = state.round + 1 if state.running else 0
            state.pending.append(claimed)

    # -- after the commit ---------------------------------------------------------------

    def after_commit(self, connection: Callable[[], Connection]) -> None:
        """Fire what committed transactions claimed. Never raises: the commit is done.

        ``connection`` gives this thread's connection, asked for at each use: a
        receiver may have closed the store, and the events it heard must still
        be deleted, or they would be fired again once this process is gone.
        """
        state = self._local
        if state.running or not state.pending:  # a receiver that wrote: the loop below has it
            return
        state.running = True
        try:
            while state.pending:
                claimed = state.pending.pop(0)
                state.round = claimed.round
                # Past the limit the post-commit work is not done either: a webhook_delivered
                # receiver that saves what a hook hears sets off a delivery per round. What it
                # would send is written, and goes out through the retry path.
                cut = claimed.round >= MAX_RECEIVER_ROUNDS
                if not cut:
                    self.fire_all(connection, claimed.events)
                else:
                    logger.error(
                        "signal receivers kept writing for %d rounds, each round's saves "
                        "causing the next (a receiver that saves what it hears?): %d events "
                        "of round %d are dropped without firing, and its webhook deliveries "
                        "are left to the retry path",
                        MAX_RECEIVER_ROUNDS,
                        len(claimed.events),
                        claimed.round,
                    )
                try:
                    self.finish(connection(), [e.id for e in claimed.events])
                except Exception:
                    logger.exception("could not delete %d dispatched events", len(claimed.events))
                for followup in () if cut else claimed.followups:
                    try:
                        followup()
                    except Exception:
                        logger.exception("post-commit work %r failed", followup)
        finally:
            state.running = False
            state.round = 0

    def fire_all(self, connection: Callable[[], Connection], events: list[ChangeEvent]) -> None:
        """Fire a claim's events in order; a run of relation events also fires ``m2m_changed``."""
        for item in runs(events, self.registry.relation_for):
            if isinstance(item, ChangeEvent):
                self.fire(item)
                continue
            for event in item.events:
                self.fire(event)
            if signals.m2m_changed.receivers:
                for change in item.changes(self.registry.knows):
                    self.fire_relation(connection, change)

    def fire_relation(self, connection: Callable[[], Connection], change: RelationChange) -> None:
        """Send ``m2m_changed`` for one instance; the instance is read as it is now.

        A row deleted since (its relations removed by the delete's cascade,
        say) comes as an instance holding only its primary key.
        """
        model = change.side.model
        if not signals.m2m_changed.has_receivers_for(model):
            return
        try:
            instance = self._current(connection(), model, change.key, change.side.convert)
            pks = {change.other.convert(key) for key in change.keys}
        except Exception:
            logger.exception("could not rebuild %s from event %d", model.__name__, change.event.id)
            return
        signals.send_isolated(
            signals.m2m_changed,
            model,
            instance=instance,
            field=change.side.field,
            action=change.action,
            pks=pks,
        )

    def _current(self, conn: Connection, model: type[Any], key: Any, convert: Converter) -> Any:
        """The row of ``model`` whose primary key is stored as ``key``, or just its key.

        Its private fields are left out, as they are of every signal's instance.
        """
        loader = self._loader(model)
        statement = select_by_key(self._backend.sql, model, loader.columns)
        row = conn.execute(statement, (key,)).fetchone()
        if row is None:
            return build(model, {model._meta.primary_key.name: convert(key)})
        values = loader.values(row)
        return build(model, {k: v for k, v in values.items() if k not in loader.leave_out})

    def forget(self, model: type[Any]) -> None:
        """Drop what was built from a model's fields: registering it again may have changed them."""
        self._loaders.pop(model, None)

    def _loader(self, model: type[Any]) -> Loader[Any]:
        """The model's loader for signals' instances, which never hold its private fields.

        Events recorded before a field was made private (by the triggers of the
        model as another process, or this one earlier, had it) still hold it.
        """
        loader = self._loaders.get(model)
        if loader is None:
            loader = self._loaders[model] = Loader(model, leave_out=private_names(model))
        return loader

    def fire(self, event: ChangeEvent) -> None:
        """Turn one event into blinker signals; the sender is the model class."""
        model = self.registry.for_table(event.table)
        sender: Any = model if model is not None else event.table
        signals.send_isolated(signals.row_changed, sender, event=event)
        if model is None:
            return
        signal = signals.post_delete if event.op == "DELETE" else signals.post_save
        if not signal.has_receivers_for(model):
            return
        try:
            instance = self._loader(model).from_columns(event.row)
        except Exception:
            logger.exception("could not rebuild %s from event %d", model.__name__, event.id)
            return
        if event.op == "DELETE":
            signals.send_isolated(signal, model, instance=instance, event=event)
        else:
            signals.send_isolated(
                signal, model, instance=instance, created=event.op == "INSERT", event=event
            )

    def finish(self, conn: Connection, ids: list[int]) -> None:
        """Delete events that have been fired, only if this process still holds their claim."""
        self._delete(conn, self._finish, ids, self.claimant)

    def _delete(self, conn: Connection, statement: str, ids: list[int], *params: Any) -> None:
        """Run a DELETE of events by id (its ``{marks}``), 500 ids at a time."""
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join([self._backend.sql("?")] * len(chunk))
            conn.execute(statement.format(marks=marks), (*params, *chunk))

    # -- recovery -----------------------------------------------------------------------

    def housekeeping(self, conn: Connection) -> None:
        """Forget dead and silent listeners, and drop what nobody will hear; once a minute.

        Run by every process's commits, so events cannot pile up for a
        listener that stopped listening, even where nothing calls ``dispatch``.
        """
        self._next_housekeeping = time.monotonic() + 60
        self.liveness.forget_dead_listeners(conn)
        self.liveness.rewind(conn)  # after: a row no listener wrote is gone, not made alive
        if self.drop_unheard(conn):  # no hook wants events: they serve listeners alone
            self.drop_unclaimed(conn)
