"""psycopg, loaded when first needed, and what its errors mean for a store.

The PostgreSQL backend's statements all pass a cursor of ``cursor_class``,
which raises a failure that is the store's (a lost connection, a read-only
session, a full disk, a lock held too long, a value the server refuses) as
the tokenstore error the SQLite backend raises for the same; other errors
(a constraint, a syntax error) stay the driver's. psycopg is an optional
extra, so nothing here imports it before it is used.
"""

from __future__ import annotations

import select
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, NoReturn, Self

from ._errors import (
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreIOError,
    StoreLocked,
    StoreReadOnly,
    TokenstoreError,
    ValidationError,
)

if TYPE_CHECKING:
    import psycopg

_INSTALL_HINT = "PostgreSQL support needs psycopg: pip install 'tokenstore[postgres]'"


def driver() -> Any:
    """The psycopg module; without it, a StoreError saying which extra brings it."""
    try:
        import psycopg
    except ImportError:
        raise StoreError(_INSTALL_HINT) from None
    return psycopg


def driver_errors() -> tuple[type[Exception], ...]:
    """psycopg's base exception class, if psycopg is installed (a raw statement's errors)."""
    try:
        import psycopg
    except ImportError:
        return ()
    return (psycopg.Error,)


def in_transaction(conn: psycopg.Connection[Any]) -> bool:
    """Whether a transaction is open on the server (a lost connection has none)."""
    status = driver().pq.TransactionStatus
    return conn.info.transaction_status not in (status.IDLE, status.UNKNOWN)


#: Reads of what waits on an idle connection's socket: a message, then the end of the stream.
_FAREWELL_READS = 4
#: Milliseconds the end of the stream may lag behind the message read before it.
_FAREWELL_WAIT = 100
#: ``select.poll``, where the platform has it (not on Windows).
_POLL = getattr(select, "poll", None)


def ended_while_idle(conn: psycopg.Connection[Any]) -> bool:
    """Whether the server ended a connection that sits outside a transaction.

    A restart, an administrator or ``idle_session_timeout`` ends a session
    between two calls; the client hears of it only when it next reads. An
    idle connection is sent nothing else (notifications go to the listening
    one), so anything waiting on its socket is read at once: a farewell
    marks the connection closed, and the call gets a new one instead of
    failing, at the cost of one ``poll()`` rather than a round trip. A
    message read waits up to ``_FAREWELL_WAIT`` for the end that follows it;
    a notification (to a ``LISTEN`` the application ran on this connection)
    is a message with no end after it, so the call after one starts that
    much later; the notification is kept, as psycopg keeps it.
    Where the platform has no ``poll()``, the first statement finds out, as
    it does for a connection lost without a word.
    """
    if conn.closed:
        return True
    if _POLL is None or in_transaction(conn):
        return False
    waiting = _POLL()
    waiting.register(conn.pgconn.socket, select.POLLIN)
    wait = 0  # milliseconds
    for _ in range(_FAREWELL_READS):  # the server's last message, then the end of the stream
        if conn.closed or not waiting.poll(wait):
            break
        with suppress(driver().OperationalError):  # "server closed the connection"
            conn.pgconn.consume_input()
        wait = _FAREWELL_WAIT
    return bool(conn.closed)


#: What a failed statement means for the store, by SQLSTATE or its two-character class.
#: Other errors (a constraint, a syntax error) are the caller's business and stay peewee's.
_FAULTS: dict[str, tuple[type[TokenstoreError], str]] = {
    "25006": (StoreReadOnly, "the server lets this session only read"),
    "25P02": (
        StoreError,
        "an earlier statement of this transaction failed, and PostgreSQL runs nothing more "
        "in it (SQLite undoes only that statement): run a statement that may fail in a "
        "store.atomic() of its own",
    ),
    "42501": (StoreError, "the role of the URL may not do this"),
    "3F000": (StoreError, "the search_path names no schema that exists"),
    "53100": (StoreFull, "the server's disk is full"),
    "55P03": (StoreLocked, "the database stayed locked for {timeout:g} s"),
    "40P01": (StoreLocked, "a deadlock with another transaction; retry"),
    # Under REPEATABLE READ or SERIALIZABLE (the database's or the URL's default).
    "40001": (StoreLocked, "another transaction changed what this one read or wrote; retry"),
    # The URL may set statement_timeout below the lock wait: then it ends a wait for a lock.
    "57014": (
        StoreLocked,
        "the statement was cancelled before it finished, by the session's statement_timeout "
        "or by an administrator; retry",
    ),
    "58030": (StoreIOError, "the server failed to read or write its files"),
    "XX001": (StoreCorrupt, "the server found damaged data"),
    "XX002": (StoreCorrupt, "the server found a damaged index"),
}

#: SQLSTATEs (and classes) of a connection the server ended or lost.
_LOST = ("08", "57P01", "57P02", "57P03")


def _fault(
    exc: Exception, conn: psycopg.Connection[Any], where: str, lock_wait: float
) -> TokenstoreError | None:
    """The tokenstore error a failed statement amounts to, or None to raise the driver's own.

    A value the server refuses (class 22: NUL in text, a number out of its
    column's range, a string too long for its column) is bad input, as the
    same value is on SQLite when its driver refuses it; the value itself is
    left out of the message, for it may be a secret.
    """
    state = getattr(exc, "sqlstate", None) or ""
    text = getattr(getattr(exc, "diag", None), "message_primary", None) or str(exc).strip()
    detail = text.partition("\n")[0] or type(exc).__name__
    if conn.closed or state.startswith(_LOST):
        return StoreIOError(
            f"{where}: the connection to the server was lost ({detail}); "
            "the next call connects again"
        )
    if isinstance(exc, driver().DataError):  # the server's class 22, or psycopg's own
        return ValidationError(
            f"a value cannot be stored in PostgreSQL: {detail.partition(': ')[0]}"
        )
    kind, what = _FAULTS.get(state, (None, ""))
    if kind is None:
        return None
    return kind(f"{where}: {what.format(timeout=lock_wait)} ({detail})")


def _raise_translated(
    exc: Exception, conn: psycopg.Connection[Any], where: str, lock_wait: float
) -> NoReturn:
    """Raise the tokenstore error a failed statement amounts to, else ``exc`` itself."""
    fault = _fault(exc, conn, where, lock_wait)
    if fault is None:
        raise exc
    raise fault from exc


@contextmanager
def translated(conn: psycopg.Connection[Any], where: str, lock_wait: float) -> Iterator[None]:
    """Raise the store's faults met in the block as tokenstore's errors (see ``_fault``)."""
    try:
        yield
    except driver().Error as exc:
        _raise_translated(exc, conn, where, lock_wait)


def cursor_class(where: str, lock_wait: float) -> type[psycopg.Cursor[Any]]:
    """psycopg's cursor, raising the store's faults as tokenstore's errors.

    Every statement goes through a cursor: peewee's queries, and tokenstore's
    own on the raw connection (``conn.execute`` makes one too), so this is
    the one place that all of them pass, as ``_raise_fault`` is on SQLite.
    Results come back from the server when read in a pipeline, so do its errors.
    """
    import psycopg

    class Cursor(psycopg.Cursor[Any]):
        def execute(self, query: Any, params: Any = None, **options: Any) -> Self:
            try:
                return super().execute(query, params, **options)
            except psycopg.Error as exc:
                _raise_translated(exc, self.connection, where, lock_wait)

        def fetchone(self) -> Any:
            try:
                return super().fetchone()
            except psycopg.Error as exc:
                _raise_translated(exc, self.connection, where, lock_wait)

        def fetchmany(self, size: int = 0) -> list[Any]:
            try:
                return super().fetchmany(size)
            except psycopg.Error as exc:
                _raise_translated(exc, self.connection, where, lock_wait)

        def fetchall(self) -> list[Any]:
            try:
                return super().fetchall()
            except psycopg.Error as exc:
                _raise_translated(exc, self.connection, where, lock_wait)

    return Cursor


def connection_class(answer_wait: float) -> type[psycopg.Connection[Any]]:
    """psycopg's connection, which waits for the server at most ``answer_wait`` s a request.

    Every request of a connection (a statement, a fetch, a pipeline's sync,
    a commit) waits for its answer in ``Connection.wait``; one the server
    does not answer in time ends the connection, so the call raises
    StoreIOError (a lost connection) and the next one connects again.
    ``wait``, its ``interval`` (psycopg's default: 0.1 s) and ``timeout``,
    and ``_WaitTimeout`` are psycopg's, undocumented: relied on here alone.
    They came with psycopg 3.3.6, the ``postgres`` extra's lower bound.
    """
    import psycopg
    from psycopg.errors import _WaitTimeout

    class Connection(psycopg.Connection[Any]):
        def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
            if timeout is not None:  # psycopg's own wait with a timeout (notifies, a cancel)
                return super().wait(gen, interval, timeout)
            try:
                return super().wait(gen, interval, answer_wait)
            except _WaitTimeout:
                self.close()
                raise psycopg.OperationalError(
                    f"the server did not answer within {answer_wait:g} s"
                ) from None

    return Connection


@contextmanager
def pipelined(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """``conn.pipeline()``, raising what failed in the block and nothing after it.

    Leaving a pipeline collects what is still pending, which fails again
    after a failed statement (or on a lost connection); psycopg would log
    that second error as a warning, a stray line on a command's stderr.
    """
    failure: BaseException | None = None
    try:
        with conn.pipeline():
            try:
                yield
            except BaseException as exc:
                failure = exc
    except driver().Error:
        if failure is None:
            raise
    if failure is not None:
        raise failure


@contextmanager
def rolled_back_on_error(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """End an open transaction with ROLLBACK if the block fails (errors of a pipeline too)."""
    try:
        yield
    except BaseException:
        if in_transaction(conn):
            conn.execute("ROLLBACK")
        raise
