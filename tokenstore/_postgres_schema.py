"""A PostgreSQL database's tokenstore schema: which version it is at, and bringing it there.

Processes on several machines may open one database at the same moment, and
may register the same model at once: whatever changes tables, triggers or
the version row runs under one advisory lock, so they queue instead of
colliding in the catalogs. The version is a row in its own table, as
``PRAGMA user_version`` is on SQLite; a database without that table but
with tables named like tokenstore's is another program's, and is refused
before anything is created in it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

import peewee

from ._backend import not_that_version, tables_created, to_version_2
from ._errors import StoreCorrupt, StoreError, ValidationError, first_line
from ._models import SYSTEM_USERNAME
from ._postgres_ddl import LONGEST_NAME, schema_sql, schema_statement
from ._postgres_driver import driver
from ._rows import quote_name
from ._times import format_time, utcnow

if TYPE_CHECKING:
    import psycopg

#: The schema version this code writes, kept in ``tokenstore_schema_version``.
SCHEMA_VERSION = 2

#: The table that records which schema version a database is at.
VERSION_TABLE = "tokenstore_schema_version"

#: Advisory lock key held while a database's schema is created or migrated.
_SCHEMA_LOCK = 0x746F6B656E  # "token"

#: The most columns a PostgreSQL table can have.
MAX_COLUMNS = 1600


def check_names(model: type[peewee.Model]) -> None:
    """Refuse a table or column name longer than PostgreSQL keeps (63 bytes), or too many columns.

    The server would cut a name without a word: two long table names could
    become one table, two long column names one column. A name holding ``%``
    is refused too: psycopg reads it in a statement as a placeholder's start,
    so peewee could not write the table, nor tokenstore claim its events.
    """
    if len(model._meta.sorted_fields) > MAX_COLUMNS:
        raise ValidationError(
            f"{model.__name__} has {len(model._meta.sorted_fields)} columns; a PostgreSQL "
            f"table can have at most {MAX_COLUMNS}"
        )
    names = [model._meta.table_name, *(f.column_name for f in model._meta.sorted_fields)]
    for name in names:
        if "%" in name:
            raise ValidationError(
                f"{model.__name__}: {name!r} holds %, which psycopg reads in a statement as "
                "a placeholder's start; give it a name without %"
            )
        if len(name.encode()) > LONGEST_NAME:
            raise ValidationError(
                f"{model.__name__}: {name!r} is {len(name.encode())} bytes long, and PostgreSQL "
                f"keeps only the first {LONGEST_NAME} of a name; give it a shorter name"
            )


def refuse_missing_references(conn: Any, models: list[type[peewee.Model]]) -> None:
    """Refuse a model about to be made whose foreign key names a table that is not there.

    PostgreSQL looks the name up as it makes the table (through the
    search_path, or in the referenced model's schema), and so does this.
    """
    made = {m._meta.table_name for m in models}
    for model in models:
        for field in model._meta.refs:
            other = field.rel_model
            name = quote_name(other._meta.table_name)
            if other._meta.schema is not None:
                name = f"{quote_name(other._meta.schema)}.{name}"
            if other._meta.table_name in made and other._meta.schema is None:
                continue
            (found,) = conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()
            if found is None:
                raise ValidationError(
                    f"{model.__name__}.{field.name} refers to {other.__name__}, whose table "
                    f"{other._meta.table_name!r} does not exist yet, and PostgreSQL checks a "
                    f"foreign key's table as it makes the table: register {other.__name__} first"
                )


def our_tables() -> frozenset[str]:
    """tokenstore's own tables, as the schema file names them."""
    return tables_created(schema_sql())


def refuse_missing_tables(shown_url: str, tables: Collection[str]) -> None:
    """Refuse a database at the current version without all its tables: every call would fail."""
    missing = sorted(our_tables() - set(tables))
    if missing:
        raise StoreCorrupt(
            f"{shown_url} has schema version {SCHEMA_VERSION} but lacks "
            f"{', '.join(missing)}; restore it from a backup"
        )


def _refuse_clashing_tables(shown_url: str, tables: Collection[str]) -> None:
    """Refuse tables named like tokenstore's in a database without its version table.

    Another program's (or a version table dropped): creating the schema
    would fail on the first of them, half-way through.
    """
    clash = sorted(our_tables() & set(tables))
    if clash:
        raise StoreError(
            f"{shown_url} has tables named like tokenstore's ({', '.join(clash)}) "
            f"but no tokenstore schema version ({VERSION_TABLE}): another program's, or its "
            "version table was dropped"
        )


def _to_version_2(conn: psycopg.Connection[Any]) -> None:
    """Version 2 (see ``to_version_2``); version 1 triggers here already name public refs."""
    to_version_2(conn.execute, schema_statement)


#: Steps that bring a database from version N to N+1, run under the schema lock.
MIGRATIONS: dict[int, Callable[[psycopg.Connection[Any]], None]] = {1: _to_version_2}


def schema_version(conn: psycopg.Connection[Any], shown_url: str) -> int:
    """The database's schema version; 0 for a database tokenstore has not set up.

    A version table whose ``version`` is not a whole number is another program's.
    """
    # A plain query of the catalog sees what committed before it started (to_regclass
    # may answer from a catalog cache older than the advisory lock just taken).
    # The catalog, not information_schema, which hides the columns of a table the role
    # has no rights on: then the SELECT below says so.
    row = conn.execute(
        "SELECT (SELECT format_type(a.atttypid, NULL) FROM pg_catalog.pg_attribute AS a "
        "WHERE a.attrelid = c.oid AND a.attname = 'version' AND NOT a.attisdropped) "
        "FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n "
        "ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relname = %s "
        "AND c.relkind IN ('r', 'p')",
        (VERSION_TABLE,),
    ).fetchone()
    if row is None:
        return 0
    if row[0] not in ("integer", "bigint", "smallint"):
        raise StoreError(
            f"{shown_url} has a table {VERSION_TABLE} that tokenstore did not make (its "
            "version column is missing or not a number): another program's"
        )
    (version,) = conn.execute(f"SELECT max(version) FROM {VERSION_TABLE}").fetchone() or (0,)
    return int(version or 0)


def lock_schema(conn: psycopg.Connection[Any]) -> None:
    """Wait for other processes changing tables or triggers, until this transaction ends.

    Concurrent DDL on the same objects deadlocks or collides in the catalogs
    (several processes registering one model at once); under the lock it queues.
    """
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))


def apply_schema(
    conn: psycopg.Connection[Any], shown_url: str, tables: Callable[[], Collection[str]]
) -> None:
    """Bring the database to SCHEMA_VERSION, inside the caller's transaction.

    The advisory lock makes concurrent openers wait for the first, which
    creates the tables; the others then find them there. ``tables`` lists
    the database's tables, asked only for a database not set up yet.
    """
    lock_schema(conn)
    version = schema_version(conn, shown_url)
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{shown_url} has schema version {version}, newer than this "
            f"tokenstore understands ({SCHEMA_VERSION}); upgrade tokenstore to open it"
        )
    if version == 0:  # under the lock: another opener may just have made them
        _refuse_clashing_tables(shown_url, tables())
        try:
            conn.execute(schema_sql())
        except driver().Error as exc:  # nothing of it stays: the transaction is rolled back
            raise StoreError(
                f"{shown_url}: tokenstore cannot be set up in it ({first_line(exc)}): another "
                "program's view, index, sequence, type or function has a name tokenstore uses"
            ) from None
    else:
        for step in range(version, SCHEMA_VERSION):
            try:
                MIGRATIONS[step](conn)
            except driver().Error as exc:
                if not (exc.sqlstate or "").startswith("42"):  # class 42: a column there, or not
                    raise
                raise not_that_version(shown_url, version, SCHEMA_VERSION, exc) from None
    conn.execute(
        f"INSERT INTO {VERSION_TABLE} (version, applied_at) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (SCHEMA_VERSION, format_time(utcnow())),
    )
    conn.execute(
        "INSERT INTO tokenstore_user (username, is_superuser, created_at) "
        "VALUES (%s, true, %s) ON CONFLICT DO NOTHING",
        (SYSTEM_USERNAME, format_time(utcnow())),
    )


def only_reads(conn: Any, version: int, tables: Callable[[], Collection[str]]) -> str | None:
    """Why this session may only read the store, if it may: what an unwritable file is."""
    (setting,) = conn.execute("SHOW transaction_read_only").fetchone()
    if setting == "on":
        return "lets this session only read (a standby server, or default_transaction_read_only)"
    if version == 0:  # nothing to judge yet: setting it up says whether the role may
        return None
    (writes,) = conn.execute(
        "SELECT bool_and(has_table_privilege(t, p)) FROM unnest(%s::text[]) AS t, "
        "unnest(ARRAY['INSERT', 'UPDATE', 'DELETE']) AS p",
        (sorted(our_tables() & set(tables())),),  # an older version lacks some
    ).fetchone()
    return None if writes else "gives this role no right to change tokenstore's tables"
