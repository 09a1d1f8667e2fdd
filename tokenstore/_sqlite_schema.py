"""A store file's tokenstore schema: its version, creating it, migrating it.

The version is ``PRAGMA user_version``. It is read before the file is
trusted (``_sqlite_file``) and changed only inside the opening write
transaction, whose lock makes processes that open a new or old file at the
same moment take turns: the first brings it up to date, the others find it
so.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from ._backend import not_that_version, tables_created, to_version_2
from ._models import SYSTEM_USERNAME
from ._rows import quote_name
from ._sqlite_ddl import schema_sql, schema_statement, statements
from ._times import format_time, utcnow

#: The ``PRAGMA user_version`` of files this code writes.
SCHEMA_VERSION = 2


def _to_version_2(conn: sqlite3.Connection) -> None:
    """Version 2 (see ``to_version_2``), and own tables' triggers with the models' public refs."""
    to_version_2(conn.execute, schema_statement)
    for table in ("tokenstore_user", "tokenstore_api_token", "tokenstore_outbound_webhook"):
        for suffix in ("insert", "update", "delete"):
            trigger = f"{table}_capture_{suffix}"
            conn.execute(f"DROP TRIGGER IF EXISTS {quote_name(trigger)}")
            conn.execute(schema_statement(trigger))


#: Steps that bring a file from version N to N+1, all in the opening transaction.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _to_version_2}


def our_tables() -> frozenset[str]:
    """tokenstore's own tables, as the schema file names them."""
    return tables_created(schema_sql())


def apply_schema(conn: sqlite3.Connection, path: str) -> None:
    """Bring the file at ``path`` to SCHEMA_VERSION, inside the caller's write transaction."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version == 0:
        for statement in statements(schema_sql()):
            conn.execute(statement)
    else:
        for step in range(version, SCHEMA_VERSION):
            try:
                MIGRATIONS[step](conn)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_ERROR:  # a storage fault
                    raise
                raise not_that_version(path, version, SCHEMA_VERSION, exc) from None
    conn.execute(
        "INSERT OR IGNORE INTO tokenstore_user (username, is_superuser, created_at) "
        "VALUES (?, 1, ?)",
        (SYSTEM_USERNAME, format_time(utcnow())),
    )
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
