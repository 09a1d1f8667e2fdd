"""The PostgreSQL backend: the same surface as the SQLite one, on a shared server.

Many processes on many machines may use one database at once, so what the
SQLite backend gets from its single write lock is done here with row locks
and notifications: migrations and DDL run under an advisory lock
(``_postgres_schema``), events are claimed with ``FOR UPDATE SKIP LOCKED``
(each taken by exactly one transaction, none waiting on another), and
capture triggers ``NOTIFY`` a channel that dispatchers ``LISTEN`` on, so a
commit anywhere wakes them at once.
Statements are written with ``?`` like everywhere else; ``sql()`` turns
them into psycopg's ``%s``. psycopg (3) is an optional extra.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import peewee

from . import _postgres_schema as schema
from ._backend import (
    FELL_BACK,
    Begun,
    CommitHooks,
    check_statement,
    is_write,
    quote_literal,
    refuse_begin_inside,
    refuse_unknown_transaction,
    sole_writer,
)
from ._capture import CaptureSpec, RelationSpec
from ._compat import (
    ClosedWithThread,
    RedactedQueryLog,
    current_connection,
    driver_error,
    forget_connection,
    in_transaction_block,
    peewee_errors,
)
from ._dispatch import ClaimStatements
from ._errors import (
    StoreError,
    StoreIOError,
    StoreReadOnly,
    ValidationError,
)
from ._postgres_ddl import (
    capture_triggers,
    claim_statements,
    function_name,
    relation_triggers,
    trigger_names,
    truncate_triggers,
)
from ._postgres_driver import (
    connection_class,
    cursor_class,
    driver,
    ended_while_idle,
    in_transaction,
    pipelined,
    rolled_back_on_error,
    translated,
)
from ._postgres_listen import ChangeListener
from ._postgres_url import (
    answer_wait,
    connect_error,
    connection_url,
    lock_wait,
    redacted_url,
    sets,
)
from ._postgres_url import is_url as is_url  # bench/scale.py imports it from here
from ._rows import quote_name

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger("tokenstore.store")

#: Seconds a new connection may take to be answered, unless the URL says (``connect_timeout``):
#: a server that accepts but never answers (stopped, or a firewall's black hole) would
#: otherwise hold every call forever.
CONNECT_TIMEOUT = 10


# -- the database ---------------------------------------------------------------------------


#: UUIDs are text, as on SQLite; a FloatField is 8 bytes, as SQLite's REAL (peewee's
#: default, PostgreSQL's 4-byte REAL, would keep 0.1 + 0.2 as 0.3 and refuse 1e300).
_FIELD_TYPES = {"UUID": "TEXT", "FLOAT": "DOUBLE PRECISION"}


class PostgresDatabase(RedactedQueryLog, ClosedWithThread, peewee.PostgresqlDatabase):
    """PostgresqlDatabase (psycopg 3) that knows when its transactions commit.

    Like the SQLite backend: every write runs in a transaction (a lone
    statement gets one of its own), and every commit lets the change
    dispatcher claim the transaction's events first and fire them after.
    """

    def __init__(
        self, url: str, *, hooks: CommitHooks, busy_timeout: float, read_only: bool = False
    ) -> None:
        # UUID primary keys are 32 hex digits, as on SQLite.
        given = driver().conninfo.conninfo_to_dict(url)
        # The session starts with the URL's options, else PGOPTIONS (libpq's rule).
        own = given.get("options", os.environ.get("PGOPTIONS", ""))
        # A statement waits for another transaction's lock at most busy_timeout, as an
        # SQLite writer does (without it, a session left holding a lock held every call).
        # In UTC, as tokenstore's times are: a TIMESTAMP column of an application's keeps
        # an aware time converted to the session's zone, which was the server's. Both
        # yield to the URL's own; a read-only store's sessions refuse writes whatever it
        # says. They are set once the session has started, not sent as its options:
        # PgBouncer, the usual pooler, refuses a connection whose startup carries any.
        wanted = {"lock_timeout": f"{int(busy_timeout * 1000)}ms", "TimeZone": "UTC"}
        settings = {name: value for name, value in wanted.items() if not sets(own, name)}
        if read_only:
            settings["default_transaction_read_only"] = "on"
        self._settings = tuple(item for pair in settings.items() for item in pair)
        self._set_settings = "SELECT " + ", ".join(["set_config(%s, %s, false)"] * len(settings))
        self.lock_wait = lock_wait(own, busy_timeout)
        options: dict[str, Any] = {}
        if "connect_timeout" not in given:
            options["connect_timeout"] = CONNECT_TIMEOUT
        #: The URL as messages show it, without its password: every write may name it.
        self.shown_url = redacted_url(url)
        options["cursor_factory"] = cursor_class(self.shown_url, self.lock_wait)
        self._connection_class = connection_class(answer_wait(own, self.lock_wait))
        super().__init__(url, prefer_psycopg3=True, field_types=_FIELD_TYPES, **options)
        self.url = url
        self.identity: Hashable = url
        self.location = self.shown_url
        #: Opened with ``read_only``: nothing is written, writes raise StoreReadOnly.
        self.read_only = read_only
        self.fell_back: str | None = None  # why, if asked to write (set by open_database)
        self.hooks = hooks
        #: The id of the ``system`` user, owner of records nobody else owns.
        self.system_user_id: int | None = None
        self._changes = ChangeListener(self._listening_connection)
        self._begun = Begun()

    def __repr__(self) -> str:
        return f"<PostgresDatabase {self.shown_url!r}>"

    def _connect(self) -> Any:
        """A ``connection_class`` connection, made as peewee does, with tokenstore's settings;
        UTF-8 on the wire whatever the database's encoding (psycopg would return an SQL_ASCII
        database's text as bytes)."""
        conn = self._connection_class.connect(
            self.url, autocommit=True, client_encoding="utf8", **self.connect_params
        )
        if self._settings:
            try:
                conn.execute(self._set_settings, self._settings)
            except BaseException:
                conn.close()
                raise
        return conn

    def connect(self, reuse_if_open: bool = False) -> bool:
        """Open this thread's connection; one refused says why, without the password."""
        try:
            return bool(super().connect(reuse_if_open))
        except peewee.DatabaseError as exc:
            cause = driver_error(exc)
            if cause is None:  # peewee's own ("already opened")
                raise
            raise self._cannot_connect(cause) from None
        except UnicodeError as exc:  # a host name psycopg cannot look up (see connect_error)
            raise self._cannot_connect(exc) from None

    def _cannot_connect(self, cause: BaseException) -> StoreIOError | ValidationError:
        """What a refused connection raises, without the password (see connect_error)."""
        return connect_error(self.url, cause)

    def connection(self) -> Any:
        """This thread's connection; one the server ended is replaced by a new one.

        Between transactions that loses nothing, so the call goes on (see
        ``ended_while_idle``). Inside one it is not: what the transaction did
        is gone with the connection, so its next statement raises StoreIOError.
        """
        conn = current_connection(self)
        if conn is not None and ended_while_idle(conn):
            if self.in_transaction():
                raise StoreIOError(
                    f"{self.shown_url}: the connection to the server was lost in the "
                    "middle of a transaction, which was rolled back"
                )
            forget_connection(self)
        return super().connection()

    def cursor(self, named_cursor: Any = None) -> Any:
        """peewee's cursor, on a connection that is still there (see ``connection``)."""
        self.connection()
        return super().cursor(named_cursor)

    #: A delete waits for the transaction that read the rows (as for one that refers to them).
    keep_rows = " FOR KEY SHARE"

    @staticmethod
    def sql(text: str) -> str:
        """A statement written with ``?`` placeholders, in psycopg's ``%s`` style.

        Every ``?`` is a placeholder (tokenstore's statements hold none in literals).
        """
        return text.replace("%", "%%").replace("?", "%s")

    @contextmanager
    def write(self, *, quiet: bool = False) -> Iterator[psycopg.Connection[Any]]:
        """The one way tokenstore opens a write transaction of its own (see the SQLite one).

        Statements are pipelined: ``BEGIN`` travels with what follows, and a
        quiet transaction (bookkeeping, whose results are rarely read) goes to
        the server in one round trip with its ``COMMIT``. A result read on the
        way (``fetchone()``) waits for what was sent before it, as usual; row
        counts are valid once the block has ended.
        """
        self.refuse_if_read_only()
        conn = self.connection()
        if in_transaction(conn):
            refuse_unknown_transaction(self, self._begun, conn, self.shown_url)
            yield conn
            return
        sole_writer(self, self.identity, self.location)
        with peewee_errors, self._begun.writes(conn), rolled_back_on_error(conn):
            with translated(conn, self.shown_url, self.lock_wait), pipelined(conn):
                conn.execute("BEGIN")
                if not quiet:
                    self.hooks.on_begin(conn)
                yield conn
                if quiet:
                    conn.execute("COMMIT")
            if not quiet:
                self.commit()  # a claim that fails is rolled back with the rest

    def write_pair(
        self, first: str, first_params: tuple[Any, ...], then: str, then_params: tuple[Any, ...]
    ) -> Any:
        """Two quiet writes as one statement, so one transaction and one round trip.

        Both run as data-modifying ``WITH`` queries and see the rows as they
        were before the statement, so they must touch different rows. ``first``
        (no RETURNING of its own) runs before ``then`` (which returns its row):
        the row locks are taken in that order, as every writer takes a hook's
        before its deliveries'. Written plainly, ``WITH first AS (...) UPDATE``
        runs the outer update first, and met those writers in a deadlock.
        Every statement costs a round trip and the driver's work on each side;
        a delivery's outcome is two writes after every send.
        """
        self.refuse_if_read_only()
        sole_writer(self, self.identity, self.location)
        conn = self.connection()
        if in_transaction(conn):
            refuse_unknown_transaction(self, self._begun, conn, self.shown_url)
        with peewee_errors:
            cursor = conn.execute(
                f"WITH first AS ({first} RETURNING 1), later AS ({then}) "
                "SELECT * FROM later WHERE (SELECT count(*) FROM first) >= 0",  # first runs first
                (*first_params, *then_params),
            )
            return cursor.fetchone()

    def execute_sql(self, sql: str, params: Any = None) -> Any:
        """Run a statement; a write outside a transaction gets a transaction of its own."""
        check_statement(sql)
        if self.read_only and is_write(sql):
            self.refuse_if_read_only()
        conn = self.connection()
        if not is_write(sql):
            return self._execute(sql, params)
        if in_transaction(conn):
            refuse_unknown_transaction(self, self._begun, conn, self.shown_url)
            return self._execute(sql, params)
        with self.write():
            return self._execute(sql, params)

    def _execute(self, sql: str, params: Any) -> Any:
        try:
            return super().execute_sql(sql, params)
        except (OverflowError, UnicodeEncodeError) as exc:
            # A parameter the driver cannot send (an application model's field holding a
            # lone surrogate) is bad input that the API's own checks did not see.
            raise ValidationError(f"a value cannot be stored in PostgreSQL: {exc}") from None

    def refuse_if_read_only(self) -> None:
        """Raise StoreReadOnly when this store was opened read-only."""
        if self.read_only:
            raise StoreReadOnly(f"{self.shown_url} is open read-only: nothing can be written to it")

    def writing_here(self) -> bool:
        """Whether this thread's connection is in a transaction."""
        conn = current_connection(self)
        return conn is not None and not conn.closed and in_transaction(conn)

    def begin(self, isolation_level: Any = None) -> None:
        self.refuse_if_read_only()
        sole_writer(self, self.identity, self.location)
        conn = self.connection()
        if in_transaction(conn):
            refuse_begin_inside(self, self._begun, conn, self.shown_url)
        super().begin(isolation_level)
        try:
            self.hooks.on_begin(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._begun.conn = conn

    def commit(self) -> None:
        conn = current_connection(self)  # not a new one: the transaction is on this one
        if conn is None or conn.closed:
            raise StoreIOError(
                f"{self.shown_url}: the connection to the server was lost before the "
                "transaction committed; nothing of it was saved"
            )
        self._begun.conn = None
        claimed = self.hooks.claim(conn) if in_transaction(conn) else None
        with peewee_errors:
            conn.execute("COMMIT")
        if claimed is not None:
            self.hooks.queue(claimed)
        if not in_transaction_block(self):
            self.hooks.after_commit(self.connection)

    def rollback(self) -> None:
        """Roll back; what earlier commits of an explicit ``transaction()`` claimed still fires.

        A lost connection's transaction ended with it: there is nothing to roll back,
        and the error that ended it is what the caller sees.
        """
        conn = current_connection(self)
        self._begun.conn = None
        if conn is not None and not conn.closed:
            super().rollback()
        if not in_transaction_block(self):
            self.hooks.after_commit(self.connection)

    def checkpoint_before_close(self) -> None:
        """Nothing to do: the server keeps its own files (SQLite empties its WAL here)."""

    def forget_listener(self) -> psycopg.Connection[Any] | None:
        """In a forked child: the parent's listening connection, dropped unclosed (see _fork)."""
        return self._changes.forget()

    def close(self) -> bool:
        """Close this thread's connection, and its listening one if it waited."""
        self._changes.close()
        return bool(super().close())

    # -- schema and capture ---------------------------------------------------------------

    def schema_version(self) -> int:
        """The database's schema version; 0 for a database tokenstore has not set up."""
        return schema.schema_version(self.connection(), self.shown_url)

    def apply_schema(self) -> None:
        """Bring the database to its current schema, however many processes open it at once."""
        conn = self.connection()
        with peewee_errors, rolled_back_on_error(conn):  # a script cannot be pipelined
            conn.execute("BEGIN")
            schema.apply_schema(conn, self.shown_url, self.get_tables)
            conn.execute("COMMIT")

    def create_tables(self, models: Any, safe: bool = True, **options: Any) -> None:
        """Create the tables that do not exist yet.

        With ``safe``, tables that exist are skipped outright: even
        ``CREATE INDEX IF NOT EXISTS`` locks its table against writers first.
        A name PostgreSQL would cut is refused first (see ``check_names``), and
        so is a table whose foreign key refers to one not made yet: PostgreSQL
        checks it at once, and its own error would not say to register that model.
        """
        for model in models:
            schema.check_names(model)
            for m2m in model._meta.manytomany.values():  # its join table may come later
                schema.check_names(m2m.through_model)
        with self.write(quiet=True):  # joins the transaction register() writes in
            schema.lock_schema(self.connection())
            if safe:
                tables = set(self.get_tables())
                models = [m for m in models if m._meta.table_name not in tables]
            schema.refuse_missing_references(self.connection(), models)
            super().create_tables(models, safe=safe, **options)

    def install_capture(self, spec: CaptureSpec) -> None:
        """(Re)create a table's capture triggers so they match its model's current fields."""
        self._install_triggers(spec, [*capture_triggers(spec), *truncate_triggers(spec)])

    def install_relation_capture(self, spec: RelationSpec) -> None:
        """(Re)create a join table's triggers so they match the sides registered now."""
        self._install_triggers(spec, [*relation_triggers(spec), *truncate_triggers(spec)])

    def _install_triggers(self, spec: CaptureSpec | RelationSpec, statements: list[str]) -> None:
        """Replace a table's triggers of one kind with ``statements`` (a function, then triggers).

        Dropping a trigger locks its table against every reader and writer, so
        triggers that are already as they should be (their function's comment
        holds a digest of the statements) are left alone: every process
        registers its models when it starts.
        """
        digest = hashlib.sha256("\n".join(statements).encode()).hexdigest()[:32]
        function = f"{function_name(spec)}()"
        with self.write(quiet=True):
            conn = self.connection()
            schema.lock_schema(conn)
            # In this store's schema: one later in the search_path is another store's.
            (current,) = conn.execute(
                "SELECT obj_description(to_regprocedure(format('%%I.%%s', current_schema(), "
                "%s::text)), 'pg_proc')",
                (function,),
            ).fetchone() or (None,)
            if current == digest:
                return
            for op in ("insert", "update", "delete", "truncate"):
                for trigger in trigger_names(spec, op):
                    conn.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {quote_name(spec.table)}")
            for statement in statements:
                conn.execute(statement)
            conn.execute(f"COMMENT ON FUNCTION {function} IS {quote_literal(digest)}")

    @staticmethod
    def claim_statements(tables: tuple[str, ...]) -> ClaimStatements:
        return claim_statements(tables)

    def sync_identity(self, table: str, column: str) -> None:
        """Let generated ids continue after the largest one, once rows came with their own."""
        self.connection().execute(
            f"SELECT setval(pg_get_serial_sequence(%s, %s), "
            f"coalesce((SELECT max({quote_name(column)}) FROM {quote_name(table)}), 0) + 1, false)",
            (quote_name(table), column),
        )

    @contextmanager
    def ids_given_back(self, table: str) -> Iterator[None]:
        """For a block that ends rolled back: a sequence does not go back with it (SQLite's
        rowids do). The SHARE lock keeps inserters waiting, so none draws an id meanwhile."""
        conn = self.connection()
        conn.execute(f"LOCK TABLE {quote_name(table)} IN SHARE MODE")
        (seq,) = conn.execute(
            "SELECT pg_get_serial_sequence(%s, 'id')", (quote_name(table),)
        ).fetchone()
        last, called = conn.execute(f"SELECT last_value, is_called FROM {seq}").fetchone()
        yield
        conn.execute("SELECT setval(%s, %s, %s)", (seq, last, called))

    def wait_for_changes(self, timeout: float) -> bool:
        """Whether another connection committed captured changes since the last call.

        The capture triggers notify a channel; this waits for a notification
        (see ``ChangeListener``). This thread's own commits do not count.
        """
        return self._changes.wait(self.connection().info.backend_pid, timeout)

    def _listening_connection(self) -> psycopg.Connection[Any]:
        """A connection of its own, outside any transaction, for LISTEN; its answers are
        waited for as long as the others' (a server silent at the LISTEN ends it)."""
        try:
            return self._connect()  # type: ignore[no-any-return]
        except (driver().Error, UnicodeError) as exc:
            raise self._cannot_connect(exc) from None


def open_database(
    url: str,
    hooks: CommitHooks,
    busy_timeout: float,
    *,
    create: bool = True,
    read_only: bool = False,
) -> PostgresDatabase:
    """The database at ``url``, its schema created or brought up to date.

    Without ``create`` a database tokenstore has not set up is refused; with
    ``read_only`` nothing is written, so its schema must already be current.
    A server that lets the session only read (a standby, or
    ``default_transaction_read_only``) is opened read-only, with a warning,
    as a file this process cannot write is.
    """
    url = connection_url(url)  # refuses what is no PostgreSQL URL before it needs psycopg
    db = PostgresDatabase(url, hooks=hooks, busy_timeout=busy_timeout, read_only=read_only)
    try:
        version = db.schema_version()
        if version < 0:  # as on SQLite; there is no migration from it
            raise StoreError(
                f"{db.shown_url} has schema version {version}, which no tokenstore writes: "
                "it is not a tokenstore database"
            )
        if version == schema.SCHEMA_VERSION:
            schema.refuse_missing_tables(db.shown_url, db.get_tables())
        why = None if read_only else schema.only_reads(db.connection(), version, db.get_tables)
        fell_back = why is not None
        if version == 0 and (read_only or not create):
            raise StoreError(
                f"{db.shown_url} holds no tokenstore (and create=False or read_only); "
                "`tokenstore init` sets one up in it"
            )
        if version < schema.SCHEMA_VERSION and (read_only or fell_back):
            raise StoreReadOnly(
                f"{db.shown_url} has schema version {version} and needs migrating to "
                f"{schema.SCHEMA_VERSION}, which a read-only store cannot do"
            )
        if fell_back:  # said once the database is accepted: a refusal is one message
            db.fell_back = f"{db.shown_url} {why}"
            logger.warning(FELL_BACK, db.fell_back)
            db.read_only = True
        if version != schema.SCHEMA_VERSION:
            db.apply_schema()
    except BaseException:
        db.close()
        raise
    return db
