"""The SQLite backend: everything tokenstore does that only SQLite does.

One file holds everything. This module opens it (read-only when asked or
when it cannot be written; ``_sqlite_file`` refuses, before changing
anything, files that are not ours to open), sets its pragmas, brings its
schema up to date (``_sqlite_schema``), writes the capture triggers, runs writes in ``BEGIN
IMMEDIATE`` transactions that tell the change dispatcher when they commit (a
lone write that would claim nothing in SQLite's own), reports a full disk,
an I/O error or a lock that never came as a StoreError subclass, and tells
a watcher when another connection committed (``PRAGMA data_version``). A
PostgreSQL backend is a sibling of this module with the same surface.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Hashable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from itertools import islice
from pathlib import Path
from typing import Any

import peewee

from ._backend import (
    LEADING,
    Begun,
    CommitHooks,
    check_statement,
    is_write,
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
    in_transaction_block,
    peewee_errors,
)
from ._dispatch import ClaimStatements
from ._errors import (
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreIOError,
    StoreLocked,
    StoreReadOnly,
    ValidationError,
)
from ._rows import quote_name
from ._sqlite_ddl import (
    capture_triggers,
    claim_statements,
    relation_triggers,
    trigger_names,
)
from ._sqlite_file import connect_uri, prepare_file, remove_new_file
from ._sqlite_schema import SCHEMA_VERSION, apply_schema, our_tables

logger = logging.getLogger("tokenstore.store")


# -- the connection -------------------------------------------------------------------------

#: What a failed SQLite call means for the store, by primary result code. Other codes
#: (a constraint, a syntax error) are the caller's business and stay peewee's errors.
_FAULTS: dict[int, tuple[type[StoreError], str]] = {
    sqlite3.SQLITE_FULL: (StoreFull, "the disk is full"),
    sqlite3.SQLITE_IOERR: (StoreIOError, "I/O error"),
    sqlite3.SQLITE_CANTOPEN: (StoreIOError, "the file cannot be opened"),
    sqlite3.SQLITE_BUSY: (StoreLocked, "the database stayed locked for {timeout:g} s"),
    sqlite3.SQLITE_READONLY: (StoreReadOnly, "the store is read-only"),
    sqlite3.SQLITE_CORRUPT: (StoreCorrupt, "the file is damaged (see PRAGMA integrity_check)"),
    sqlite3.SQLITE_NOTADB: (StoreCorrupt, "the file is damaged (see PRAGMA integrity_check)"),
}


#: A statement's first keyword (a pragma's name too), to say in an error what was being done.
_VERB = re.compile(LEADING.pattern + r"(PRAGMA\s+\w+|\w+)", re.DOTALL | re.IGNORECASE)


def _verb(sql: str) -> str:
    match = _VERB.match(sql)
    return " ".join(match.group(1).split()) if match else "a statement"


#: A writer waiting for the lock tries again after this long, doubling up to the longest.
_FIRST_PAUSE = 0.0001
_LONGEST_PAUSE = 0.002
#: A BEGIN that took longer than this waited for another writer (SQLite's first sleep) ...
_WAITED = 0.001
#: ... and for this long after, writers wait for the lock in those steps.
_CONTENTION_MEMORY = 10.0


def _busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == sqlite3.SQLITE_BUSY


class _Begun(Begun):
    """Per thread: the connection whose transaction ``begin()`` (peewee's) opened, until it ends.

    If SQLite no longer has one there, a storage fault rolled it back under peewee.
    """

    #: Whether the open transaction's BEGIN turned the busy timeout off (``_take_write_lock``).
    polling = False


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


class SQLiteDatabase(RedactedQueryLog, ClosedWithThread, peewee.SqliteDatabase):
    """SqliteDatabase that knows when its transactions commit.

    Every write runs in a transaction (a lone statement gets one of its own),
    every transaction takes the write lock up front (``BEGIN IMMEDIATE``, so
    concurrent writers wait on the busy timeout instead of failing), and every
    commit lets the change dispatcher claim the transaction's events first
    and fire them after. Storage faults are translated here, the one place
    that tokenstore's calls, applications' models and ``atomic()`` all pass.
    """

    def __init__(
        self, path: Path, *, hooks: CommitHooks, busy_timeout: float, read_only: bool = False
    ) -> None:
        # secure_delete: a deleted hook's or an erased rotated-out secret's bytes are
        # overwritten, not left in free pages for anyone who reads the file.
        pragmas: dict[str, object] = {
            "synchronous": "normal",
            "foreign_keys": 1,
            "secure_delete": 1,
            "busy_timeout": int(busy_timeout * 1000),
        }
        if not read_only:
            pragmas = {"journal_mode": "wal", **pragmas}
        super().__init__(
            connect_uri(path, read_only),
            uri=True,
            lock_type="IMMEDIATE",
            timeout=busy_timeout,
            pragmas=pragmas,
        )
        self.path = path
        #: Opened with ``mode=ro``: every write raises StoreError before reaching SQLite.
        self.read_only = read_only
        self.fell_back: str | None = None  # why, if asked to write (set by open_database)
        self.hooks = hooks
        self.busy_timeout = busy_timeout
        #: The id of the ``system`` user, owner of records nobody else owns.
        self.system_user_id: int | None = None
        self._busy_timeout_pragma = f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}"
        self._contended_until = 0.0  # time.monotonic() until which writers poll for the lock
        self._seen = threading.local()  # per thread: its connection's last data_version
        self._begun = _Begun()
        stat = path.stat()
        self._file = (stat.st_dev, stat.st_ino)  # another Store's path to it may differ
        self.identity: Hashable = self._file
        self.location = str(path)
        self._resolved = str(path.resolve())  # as connections open it, whatever the cwd

    #: Nothing: SQLite has one writer at a time, so no delete can come between.
    keep_rows = ""

    @staticmethod
    def sql(text: str) -> str:
        """A statement written with ``?`` placeholders, in this driver's style (the same)."""
        return text

    @contextmanager
    def write(self, *, quiet: bool = False) -> Iterator[sqlite3.Connection]:
        """The one way tokenstore opens a write transaction of its own.

        Inside an open transaction it simply joins it. Otherwise it takes the
        write lock up front, commits at the end and rolls back on any error.
        ``quiet`` is for bookkeeping that capture never records (a delivery's
        outcome): its commit skips the dispatcher's claim. Storage faults come
        out as StoreError subclasses, other driver errors as peewee's classes.
        """
        self.refuse_if_read_only()
        conn = self.connection()
        if conn.in_transaction:
            refuse_unknown_transaction(self, self._begun, conn, self.location)
            yield conn
            return
        with self._begun.writes(conn):
            self._begin(conn, "BEGIN IMMEDIATE", announce=not quiet)
            try:
                with peewee_errors:
                    yield conn
            except BaseException as exc:
                self._abandon(conn)
                self._raise_fault(exc, "a write")
                raise
            self._commit(conn, claim=not quiet)

    def write_pair(
        self, first: str, first_params: tuple[Any, ...], then: str, then_params: tuple[Any, ...]
    ) -> Any:
        """Two quiet writes in one transaction (see ``write``); the row ``then`` returns."""
        with self.write(quiet=True) as conn:
            conn.execute(first, first_params)
            return conn.execute(then, then_params).fetchone()

    def connect(self, reuse_if_open: bool = False) -> bool:
        """Open this thread's connection (peewee opens one per thread, when first used)."""
        try:
            return bool(super().connect(reuse_if_open))
        except peewee.DatabaseError as exc:
            self._raise_fault(exc, "open")
            raise

    def execute_sql(self, sql: str, params: Any = None) -> Any:
        """Run a statement; a write outside a transaction gets a transaction of its own.

        That is tokenstore's ``write()``, unless its commit would claim
        nothing (see ``Dispatcher.nothing_to_claim``) and no writer has had
        to wait lately: then SQLite's implicit transaction.

        Inside a transaction that a storage fault rolled back under peewee,
        nothing more runs (it would commit on its own): a nested block's
        rollback has nothing left to undo, anything else raises.
        """
        check_statement(sql)
        conn: sqlite3.Connection = self.connection()
        if self.read_only and is_write(sql):
            self.refuse_if_read_only()
        if not conn.in_transaction:
            if self._begun.conn is conn:
                if sql.startswith("ROLLBACK TO SAVEPOINT"):
                    return conn.cursor()
                raise self._ended_early()
            if is_write(sql):
                if time.monotonic() >= self._contended_until and self.hooks.nothing_to_claim(conn):
                    self._may_write()
                    # Nothing to claim at its commit: the statement's own implicit
                    # transaction will do, and it waits for the lock as SQLite does.
                    return self._run_to_end(sql, params)
                with self.write():
                    return self._run_to_end(sql, params)
        elif is_write(sql):
            refuse_unknown_transaction(self, self._begun, conn, self.location)
        return self._execute(sql, params)

    def _run_to_end(self, sql: str, params: Any) -> Any:
        """Run a statement and read any RETURNING rows at once, so its transaction can end."""
        cursor = self._execute(sql, params)
        return cursor if cursor.description is None else _FetchedCursor(cursor)

    def _execute(self, sql: str, params: Any) -> Any:
        try:
            return super().execute_sql(sql, params)
        except peewee.DatabaseError as exc:
            self._raise_fault(exc, _verb(sql))
            raise
        except (OverflowError, UnicodeEncodeError) as exc:
            # A parameter the driver cannot bind (an application model's field holding a
            # lone surrogate, an int beyond 64 bits) is bad input that the API's own
            # checks did not see, not a crash.
            raise ValidationError(f"a value cannot be stored in SQLite: {exc}") from None

    def writing_here(self) -> bool:
        """Whether this thread's connection is in a transaction."""
        conn = current_connection(self)
        return conn is not None and bool(conn.in_transaction)

    def refuse_if_read_only(self) -> None:
        """Raise StoreReadOnly when this store was opened read-only."""
        if self.read_only:
            raise StoreReadOnly(f"{self.path} is open read-only: nothing can be written to it")

    def _may_write(self) -> None:
        """Refuse a write that would be lost or would wait on this very thread.

        A file deleted or replaced (a backup restored over it) while open
        stays open under the old name: SQLite refuses writes to it only with
        a rollback journal, and in WAL mode what they wrote would be gone at
        close. One stat per transaction finds it out.
        """
        sole_writer(self, self.identity, self.location)
        try:
            stat = os.stat(self._resolved)
        except OSError:
            stat = None
        if stat is None or (stat.st_dev, stat.st_ino) != self._file:
            raise StoreReadOnly(
                f"{self.path}: the file was deleted or replaced since the store opened it, "
                "so what is written now would be lost (SQLITE_READONLY_DBMOVED); "
                "open the store again"
            )

    def begin(self, lock_type: str | None = None) -> None:
        self.refuse_if_read_only()
        conn = self.connection()
        if conn.in_transaction:
            refuse_begin_inside(self, self._begun, conn, self.location)
        self._begin(conn, f"BEGIN {lock_type or 'IMMEDIATE'}", announce=True)
        self._begun.conn = conn

    def _begin(self, conn: sqlite3.Connection, statement: str, *, announce: bool) -> None:
        """Start a transaction; ``announce`` lets the dispatcher register this process first."""
        self._may_write()
        try:
            with peewee_errors:
                self._take_write_lock(conn, statement)
                try:
                    if announce:
                        self.hooks.on_begin(conn)
                except BaseException:
                    self._abandon(conn)
                    raise
        except peewee.DatabaseError as exc:
            self._raise_fault(exc, "BEGIN")
            raise

    def _take_write_lock(self, conn: sqlite3.Connection, statement: str) -> None:
        """Run ``statement`` (a BEGIN IMMEDIATE), waiting for the lock up to the busy timeout.

        SQLite's own busy handler sleeps 1 ms at its first retry and longer
        after, many times the length of a tokenstore write: with several
        writer processes the lock would stand free while they sleep. So once
        a writer of this store has had to wait, writers wait here instead for
        a while, in steps that start far shorter and grow, so that a long
        wait costs no more than SQLite's would. Until then SQLite waits, as
        turning its timeout off and on again costs two statements each time.
        """
        started = time.monotonic()
        if started >= self._contended_until:
            conn.execute(statement)
            now = time.monotonic()
            if now - started > _WAITED:
                self._contended_until = now + _CONTENTION_MEMORY
            return
        conn.execute("PRAGMA busy_timeout = 0")
        self._begun.polling = True
        pause = _FIRST_PAUSE
        give_up = time.monotonic() + self.busy_timeout
        while True:
            try:
                conn.execute(statement)
                return  # the timeout comes back when the transaction ends (_ended)
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or time.monotonic() >= give_up:
                    self._ended(conn)
                    raise
            self._contended_until = time.monotonic() + _CONTENTION_MEMORY
            time.sleep(pause)
            pause = min(pause * 2, _LONGEST_PAUSE)

    def _ended(self, conn: sqlite3.Connection) -> None:
        """After a write transaction: other statements wait on the busy timeout again.

        Inside the transaction nothing waits (this connection holds the write
        lock), so a timeout turned off to take the lock is set back only now,
        after the lock is released.
        """
        if self._begun.polling:
            self._begun.polling = False
            conn.execute(self._busy_timeout_pragma)

    def _abandon(self, conn: sqlite3.Connection) -> None:
        """Roll back what is left of a failed transaction; SQLite may have done it already."""
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        finally:
            self._ended(conn)

    def commit(self) -> None:
        """Claim the transaction's events, commit, then fire them (outside any transaction)."""
        try:
            self._commit(self.connection(), claim=True)
        finally:
            self._begun.conn = None

    def _commit(self, conn: sqlite3.Connection, *, claim: bool) -> None:
        """COMMIT; one that fails leaves nothing of its transaction and raises its own cause.

        SQLite rolls back a transaction whose COMMIT failed on a full disk or
        an I/O error, and keeps one that was refused (a busy lock, a deferred
        constraint): that one is rolled back here, so either way the
        connection is out of the transaction and nothing claimed fires.
        """
        if not conn.in_transaction:
            raise self._ended_early()
        try:
            with peewee_errors:
                claimed = self.hooks.claim(conn) if claim else None
                conn.execute("COMMIT")
        except BaseException as exc:
            self._abandon(conn)
            self._raise_fault(exc, "COMMIT")
            raise
        self._ended(conn)
        if claimed is not None:
            self.hooks.queue(claimed)
        if claim and not in_transaction_block(self):
            self.hooks.after_commit(self.connection)

    def rollback(self) -> None:
        """Roll back; what earlier commits of an explicit ``transaction()`` claimed still fires.

        SQLite may have rolled back already (a failed COMMIT, a full disk): then
        there is nothing to do, and the failure that ended it is what the caller sees.
        """
        conn = self.connection()
        self._begun.conn = None
        try:
            if conn.in_transaction:
                super().rollback()
        except peewee.DatabaseError as exc:
            self._raise_fault(exc, "ROLLBACK")
            raise
        finally:
            self._ended(conn)
        if not in_transaction_block(self):
            self.hooks.after_commit(self.connection)

    def _ended_early(self) -> StoreError:
        return StoreError(
            f"{self.path}: this transaction has ended: it was already rolled back by SQLite "
            "(as it is when one of its statements meets a full disk or an I/O error, and "
            "then nothing of it was saved), or a COMMIT or ROLLBACK run through execute_sql() "
            "ended it; nothing more runs in it"
        )

    def _raise_fault(self, exc: BaseException, doing: str) -> None:
        """Raise the StoreError that a failed SQLite call amounts to, if it is a storage fault.

        It names the file, the cause and SQLite's own name for it; returns
        (for the caller to re-raise ``exc``) on any other error.
        """
        cause = driver_error(exc)
        if not isinstance(cause, sqlite3.Error):
            return
        code = getattr(cause, "sqlite_errorcode", None)
        fault = _FAULTS.get(code & 0xFF) if code is not None else None
        if fault is None:
            return
        kind, what = fault
        name = getattr(cause, "sqlite_errorname", "")
        message = what.format(timeout=self.busy_timeout)
        raise kind(f"{self.path}: {message} ({name} during {doing})") from cause

    def checkpoint_before_close(self) -> None:
        """Copy the WAL into the file and empty it, so old page versions leave no trace.

        Run just before closing: it does not wait on the busy timeout, so a
        close is never held up by another process's long read; the WAL is then
        emptied by whichever connection checkpoints next.
        """
        conn = self.connection()
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:  # a full disk, say: the next checkpoint will do it
            logger.info("%s: the WAL was not emptied at close: %s", self.path, exc)

    # -- schema and capture ---------------------------------------------------------------

    def apply_schema(self) -> None:
        """Bring the file to SCHEMA_VERSION, once, even with several processes opening it."""
        with self.write(quiet=True) as conn:
            apply_schema(conn, str(self.path))

    def ids_given_back(self, table: str) -> AbstractContextManager[None]:
        """A rollback gives the rowids its inserts took back by itself."""
        return nullcontext()

    def install_capture(self, spec: CaptureSpec) -> None:
        """(Re)create a table's capture triggers so they match its model's current fields."""
        self._replace_triggers(spec.table, "capture", capture_triggers(spec))

    def install_relation_capture(self, spec: RelationSpec) -> None:
        """(Re)create a join table's triggers so they match the sides registered now."""
        self._replace_triggers(spec.table, "relation", relation_triggers(spec))

    def _replace_triggers(self, table: str, kind: str, statements: list[str]) -> None:
        """Drop the table's own triggers of this kind (never another table's), then create."""
        conn = self.connection()
        names = trigger_names(table, kind)
        found = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' "  # names ignore case
            "AND tbl_name = ? COLLATE NOCASE "
            f"AND name COLLATE NOCASE IN ({', '.join('?' * len(names))})",
            (table, *names),
        ).fetchall()
        for (name,) in found:
            conn.execute(f"DROP TRIGGER {quote_name(name)}")
        for statement in statements:
            conn.execute(statement)

    @staticmethod
    def claim_statements(tables: tuple[str, ...]) -> ClaimStatements:
        return claim_statements(tables)

    def wait_for_changes(self, timeout: float, poll: float = 0.01) -> bool:
        """Whether another connection committed since the last call, waiting up to ``timeout``.

        SQLite has no notifications; ``PRAGMA data_version`` changes when
        another connection commits and costs no I/O to read, so it is polled.
        Its values count one connection's view: each thread compares its own.
        """
        conn = self.connection()
        deadline = time.monotonic() + timeout
        while True:
            (version,) = conn.execute("PRAGMA data_version").fetchone()
            seen = getattr(self._seen, "version", None)  # (connection, its count)
            if seen != (conn, version):
                self._seen.version = (conn, version)
                if seen is not None and seen[0] is conn:  # a new connection only starts
                    return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(poll, remaining))


def open_database(
    path: Path,
    hooks: CommitHooks,
    busy_timeout: float,
    *,
    create: bool = True,
    read_only: bool = False,
) -> SQLiteDatabase:
    """The database of the tokenstore file at ``path``, created and brought up to date.

    ``read_only`` opens it with ``mode=ro`` and changes nothing; a file or
    folder this process cannot write is opened that way too (with a
    warning), so reading a store never needs write access.
    """
    if str(path) in ("", ":memory:") or str(path).startswith("file::memory:"):
        raise StoreError("tokenstore needs a file path; an in-memory database is not shared")
    version, fell_back, created = prepare_file(
        path,
        SCHEMA_VERSION,
        our_tables(),
        busy_timeout=busy_timeout,
        create=create,
        read_only=read_only,
    )
    read_only = read_only or fell_back is not None
    db = SQLiteDatabase(path, hooks=hooks, busy_timeout=busy_timeout, read_only=read_only)
    db.fell_back = fell_back
    try:
        db.connection()
        if version < SCHEMA_VERSION:
            db.apply_schema()
    except BaseException:
        if created:  # made here and never set up (a full disk): no store, so no file
            db.close()
            remove_new_file(path)
        raise
    return db
