"""Reaching a store's database the way another program would, on either backend.

Tests look at what is committed, and edit rows behind tokenstore's back, with
the plain driver: sqlite3 for a file, psycopg for a PostgreSQL URL.
Statements are written with ``?`` placeholders and SQLite's spelling where the
two differ only in placeholders.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from tokenstore import Store

Target = Store | Path | str


def location(target: Target) -> str:
    """The file path or the full URL (password included) of a store or fixture value."""
    if isinstance(target, Store):
        return target.db.url if target.path is None else str(target.path)
    return str(target)


def is_postgres(target: Target) -> bool:
    return location(target).startswith("postgresql://")


class Raw:
    """A plain driver connection; like sqlite3's, ``with`` commits (or rolls back)."""

    def __init__(self, target: Target) -> None:
        self.postgres = is_postgres(target)
        if self.postgres:
            import psycopg

            self.conn: Any = psycopg.connect(location(target))
            #: The driver's exception classes (``raw.errors.IntegrityError``).
            self.errors: Any = psycopg
        else:
            import sqlite3

            self.conn = sqlite3.connect(location(target))
            self.errors = sqlite3

    def execute(self, sql: str, params: Any = ()) -> Any:
        if self.postgres:
            sql = sql.replace("%", "%%").replace("?", "%s") if params else sql
            return self.conn.execute(sql, params or None)
        return self.conn.execute(sql, params)

    def rows(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self.execute(sql, params).fetchall()]

    def dicts(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        cursor = self.execute(sql, params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Raw:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.rollback()


def rows(target: Target, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
    """What a fresh connection reads: only committed rows."""
    raw = Raw(target)
    try:
        return raw.rows(sql, params)
    finally:
        raw.close()


def edit(target: Target, *statements: str) -> None:
    """Run statements and commit, in another process, as a person in a shell might."""
    script = (
        "import os, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "import _db\n"
        "with _db.Raw(os.environ['TOKENSTORE_TEST_TARGET']) as raw:\n"
        "    for statement in sys.argv[2:]:\n"
        "        raw.execute(statement)\n"
    )
    subprocess.run(  # the URL (password and all) goes by the environment, not argv
        [sys.executable, "-c", script, str(Path(__file__).parent), *statements],
        env={**os.environ, "TOKENSTORE_TEST_TARGET": location(target)},
        check=True,
        timeout=30,
    )


def statements_during(store: Store, action: Callable[[], Any]) -> list[str]:
    """The SQL this thread's connection runs while ``action()`` runs."""
    seen: list[str] = []
    conn = store.db.connection()
    if store.path is not None:
        conn.set_trace_callback(seen.append)
        try:
            action()
        finally:
            conn.set_trace_callback(None)
        return seen
    # Every statement goes through the store's cursor class (Connection.execute makes one
    # too), cursors made before this call included: its execute is traced, for this
    # connection's cursors only.
    factory = conn.cursor_factory
    original = factory.execute

    def execute(self: Any, sql: Any, *args: Any, **kwargs: Any) -> Any:
        if self.connection is conn:
            seen.append(str(sql))
        return original(self, sql, *args, **kwargs)

    factory.execute = execute
    try:
        action()
    finally:
        factory.execute = original
    return seen


def in_transaction(store: Store) -> bool:
    """Whether this thread's connection has a transaction open (not peewee's own count)."""
    conn = store.db.connection()
    if store.path is not None:
        return bool(conn.in_transaction)
    import psycopg

    return bool(conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE)


def at_once(store: Store, count: int, action: Callable[[int], Any]) -> list[Any]:
    """``action(n)`` in ``count`` threads let go together; each closes its connections.

    Returns what each returned, or the exception it raised, in thread order.
    """
    go = threading.Barrier(count, timeout=30)
    outcomes: list[Any] = [None] * count

    def run(n: int) -> None:
        try:
            go.wait()
            outcomes[n] = action(n)
        except BaseException as exc:
            outcomes[n] = exc
        finally:
            store.webhooks.close()
            store.db.close()

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    return outcomes


def while_held(
    store: Store, first: Callable[[Callable[[], None]], Any], second: Callable[[], Any]
) -> dict[str, Any]:
    """``first(hold)`` in a thread; where it calls ``hold()``, ``second()`` starts in another
    and is given half a second to wait for what the first holds, then the first goes on.

    Returns what each returned, or the exception it raised, as ``first`` and ``second``.
    """
    held, go_on = threading.Event(), threading.Event()
    outcomes: dict[str, Any] = {}

    def hold() -> None:
        held.set()
        go_on.wait(30)

    def run(name: str, action: Callable[[], Any]) -> None:
        try:
            outcomes[name] = action()
        except BaseException as exc:
            outcomes[name] = exc
        finally:
            store.db.close()

    one = threading.Thread(target=run, args=("first", lambda: first(hold)), daemon=True)
    one.start()
    assert held.wait(30)
    other = threading.Thread(target=run, args=("second", second), daemon=True)
    other.start()
    other.join(0.5)  # it waits for what the first holds
    go_on.set()
    one.join(30)
    other.join(30)
    assert not one.is_alive() and not other.is_alive()
    return outcomes


def one_after_another(store: Store, action: Callable[[], Any]) -> dict[str, Any]:
    """``action`` in two threads, each in a transaction; the second starts while the first's
    is still open, and is given half a second to wait for it before the first commits."""

    def first(hold: Callable[[], None]) -> Any:
        with store.atomic():
            result = action()
            hold()
        return result

    def second() -> Any:
        with store.atomic():
            return action()

    return while_held(store, first, second)
