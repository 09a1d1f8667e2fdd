"""What the rest of tokenstore needs of a database backend (SQLite or PostgreSQL).

Services are typed against ``Backend`` rather than one backend's class, so
the same service code runs on either; the helpers here are the few pieces of
SQL handling both backends share.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Callable, Hashable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

from ._capture import CaptureSpec, RelationSpec
from ._dispatch import ClaimStatements
from ._errors import StoreError, ValidationError, first_line, shown


def to_version_2(execute: Callable[[str], object], statement: Callable[[str], str]) -> None:
    """What version 2 changes on either backend (``statement`` reads that backend's schema).

    Own models' refs by their public name; the delivery log's indexes;
    listeners' ``seen``; the allowlist table; the hooks' overview without secrets.
    """
    execute(
        "UPDATE tokenstore_outbound_webhook SET ref = 'tokenstore.' || substr(ref, 19) "
        "WHERE substr(ref, 1, 18) = 'tokenstore.models.'"  # not LIKE: SQLite's ignores case
    )
    execute('DROP INDEX IF EXISTS "tokenstore_webhook_delivery_hook_id"')
    execute('ALTER TABLE "tokenstore_listener" ADD COLUMN "seen" TEXT')
    for name in (
        "tokenstore_webhook_delivery_created_at_abid",
        "tokenstore_webhook_delivery_hook_id_created_at_abid",
        "tokenstore_webhook_allow",
        "tokenstore_webhook_overview",
    ):
        execute(statement(name))


def not_that_version(where: str, version: int, current: int, error: Exception) -> StoreError:
    """The error for a store whose tables are not those of the schema version it says it has.

    A migration step met them (a version set back by hand on a newer file):
    the step's own error says where.
    """
    detail = first_line(error)
    return StoreError(
        f"{where} has schema version {version}, but its tables are not that version's: "
        f"bringing them to version {current} failed ({detail}); the version was changed "
        "outside tokenstore"
    )


def tables_created(script: str) -> frozenset[str]:
    """The tables a schema script creates: tokenstore's own, in either backend's schema file."""
    return frozenset(re.findall(r'^CREATE TABLE "(\w+)"', script, re.MULTILINE))


class CommitHooks(Protocol):
    """What the database tells the change dispatcher about each of its transactions."""

    def on_begin(self, conn: Any) -> None: ...

    def nothing_to_claim(self, conn: Any) -> bool: ...

    def claim(self, conn: Any) -> Any: ...

    def queue(self, claimed: Any) -> None: ...

    def after_commit(self, connection: Callable[[], Any]) -> None: ...


#: The warning of a store asked to write that opens read-only: ``%s`` is why (``fell_back``).
FELL_BACK = "%s; opening it read-only"


class Backend(Protocol):
    """A peewee database that runs tokenstore's transactions, schema and capture.

    Besides peewee's own API (``connection()``, ``execute_sql()``, ``atomic()``,
    ...), every backend offers these.
    """

    #: The id of the ``system`` user, owner of records nobody else owns.
    system_user_id: int | None
    #: Opened read-only: nothing is written.
    read_only: bool
    #: Why a store asked to write was opened read-only instead (None: it was not).
    fell_back: str | None
    #: What ends a SELECT whose rows must not be deleted before its transaction ends.
    keep_rows: str
    #: Which store this is, whatever path or URL spelling opened it: two database objects
    #: with the same identity read and write the same rows.
    identity: Hashable
    #: Where the store is, for people: the file, or the URL without its password.
    location: str

    def sql(self, text: str) -> str:
        """A statement written with ``?`` placeholders, in this driver's style."""

    def write(self, *, quiet: bool = False) -> AbstractContextManager[Any]:
        """A write transaction of tokenstore's own (joining one already open)."""

    def write_pair(
        self, first: str, first_params: tuple[Any, ...], then: str, then_params: tuple[Any, ...]
    ) -> Any:
        """Two quiet writes as one transaction, ``first`` first; the row ``then`` returns."""

    def connection(self) -> Any: ...

    def writing_here(self) -> bool:
        """Whether this thread's connection is in a transaction."""

    def refuse_if_read_only(self) -> None:
        """Raise StoreReadOnly when the store was opened read-only."""

    def execute_sql(self, sql: str, params: Any = None) -> Any: ...

    def atomic(self) -> Any: ...

    def close(self) -> bool: ...

    def apply_schema(self) -> None: ...

    def claim_statements(self, tables: tuple[str, ...]) -> ClaimStatements: ...

    def install_capture(self, spec: CaptureSpec) -> None: ...

    def install_relation_capture(self, spec: RelationSpec) -> None: ...

    def wait_for_changes(self, timeout: float) -> bool: ...

    def ids_given_back(self, table: str) -> AbstractContextManager[None]:
        """For a block that ends rolled back: the ids its inserts into ``table`` drew
        are given to the next rows, as if it never ran."""


class Writer(Protocol):
    """A database object that can tell whether this thread's transaction on it is open."""

    def writing_here(self) -> bool: ...


class _Writers(threading.local):
    """Per thread: the database object that last began a write, by the store it writes to."""

    def __init__(self) -> None:
        self.by_store: dict[Hashable, weakref.ref[Writer]] = {}


_WRITERS = _Writers()


def sole_writer(me: Writer, store: Hashable, where: str) -> None:
    """Refuse a write through ``me`` while this thread writes through another object on ``store``.

    Models are bound to the most recently opened Store, so a Store opened
    before another on the same file or database writes through both
    objects at once: on SQLite the second connection would wait, in the
    very thread that holds the lock, until busy_timeout; on PostgreSQL the
    two would commit apart, and a rollback would keep half.
    """
    held = _WRITERS.by_store.get(store)
    other = held() if held is not None else None
    if other is me:
        return
    if other is not None and other.writing_here():
        raise StoreError(
            f"{where}: this thread is already writing to it through another Store; "
            "models are bound to the most recently opened store (tokenstore.open), so "
            "two Stores open on one store in a process write through each other: "
            "keep one store per process"
        )
    if held is None:  # a store new to this thread: forget those whose objects are gone
        by_store = _WRITERS.by_store
        for gone in [key for key, ref in by_store.items() if ref() is None]:
            del by_store[gone]
    _WRITERS.by_store[store] = weakref.ref(me)


class Begun(threading.local):
    """Per thread: the connection whose transaction ``begin()`` (peewee's) opened, until it
    ends, and the one whose transaction ``write()`` (tokenstore's own) opened."""

    conn: Any = None
    writing: Any = None

    @contextmanager
    def writes(self, conn: Any) -> Iterator[None]:
        """Inside the block, ``conn``'s transaction is tokenstore's own ``write()``."""
        self.writing = conn
        try:
            yield
        finally:
            self.writing = None


def refuse_unknown_transaction(db: Any, begun: Begun, conn: Any, where: str) -> None:
    """Refuse to write in an open transaction that neither a peewee block nor ``begin()`` began.

    A BEGIN run by hand (through ``execute_sql()`` or on the connection) is
    one: tokenstore cannot tell when it commits, so its writes would be
    committed or rolled back by whatever the application does next, and its
    own ``atomic()`` cannot begin (SQLite raised a raw "cannot start a
    transaction within a transaction"; PostgreSQL only warns).
    """
    if conn is not begun.conn and conn is not begun.writing and db.top_transaction() is None:
        raise StoreError(
            f"{where}: a transaction is open that tokenstore did not begin (a BEGIN run by "
            "hand, through execute_sql() or on the connection), and it cannot tell when that "
            "commits: end it (COMMIT or ROLLBACK) and use store.atomic() instead"
        )


def refuse_begin_inside(db: Any, begun: Begun, conn: Any, where: str) -> None:
    """Refuse ``begin()`` (an outermost ``atomic()``) on a connection already in a transaction.

    SQLite raised a raw "cannot start a transaction within a transaction";
    PostgreSQL only warns, and the block's COMMIT would end the open one.
    """
    refuse_unknown_transaction(db, begun, conn, where)
    raise StoreError(
        f"{where}: a transaction begun with db.begin() is open, and atomic() cannot begin "
        "another inside it: use db.savepoint() there, or store.atomic() for the whole"
    )


def row_lock(table: str) -> str:
    """A statement that takes one row's lock (by ``id``) and changes nothing.

    Writers that must not interleave on PostgreSQL take it first and queue
    there; SQLite holds its write lock anyway. No capture trigger fires for
    it: an update records an event only when a value changed.
    """
    return f'UPDATE "{table}" SET "id" = "id" WHERE "id" = ?'


def changed_meanwhile(exc: BaseException) -> bool:
    """Whether a statement failed because another transaction changed its rows since the
    transaction's snapshot (SQLSTATE 40001: REPEATABLE READ or SERIALIZABLE on PostgreSQL).

    Under READ COMMITTED the same statement reads the new row instead and goes on; a
    conditional update that only takes a row nobody took yet may treat this as taken.
    """
    return getattr(exc.__cause__, "sqlstate", None) == "40001"


def quote_literal(text: str) -> str:
    """A string as an SQL literal."""
    return "'" + text.replace("'", "''") + "'"


#: TRUNCATE is PostgreSQL's: its capture trigger records the rows it removes.
_WRITE_PREFIXES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE", "TRUNCATE")
#: Whitespace and comments that may come before a statement's first keyword.
LEADING = re.compile(r"(?:\s+|--[^\n]*|/\*.*?\*/)*", re.DOTALL)
#: A data-changing keyword anywhere in a ``WITH ...`` statement (a false positive costs
#: a transaction; a miss would leave events unclaimed, so the test errs on the safe side).
_DML_WORD = re.compile(r"\b(?:INSERT|UPDATE|DELETE|REPLACE|MERGE)\b", re.IGNORECASE)


def check_statement(sql: object) -> None:
    """Refuse a statement that is no text: the drivers' TypeError does not say what was wrong."""
    if not isinstance(sql, str):
        raise ValidationError(f"execute_sql() takes an SQL statement as a str, got {shown(sql)}")


def is_write(sql: str) -> bool:
    """Whether a statement may change rows, and so fire capture triggers.

    peewee's own statements are decided by their first word; hand-written SQL
    may start with whitespace or comments, and a ``WITH`` prefix may lead to
    a write or to a plain read.
    """
    head = sql[:8].upper()
    if head.startswith(_WRITE_PREFIXES):
        return True
    if head.startswith("SELECT"):
        return False
    match = LEADING.match(sql)
    start = match.end() if match else 0
    head = sql[start : start + 8].upper()
    if head.startswith(_WRITE_PREFIXES):
        return True
    return head.startswith("WITH") and _DML_WORD.search(sql, start) is not None
