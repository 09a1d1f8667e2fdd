"""The SQL that SQLite runs: the schema file, change capture's triggers, the dispatcher's claims.

The schema file is canonical: migrations take their statements from it. The
triggers and claims are generated from the backend-neutral descriptions in
``_capture`` (which columns a table's triggers record, which relation a join
table holds); a PostgreSQL backend writes the same in its own dialect.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from importlib import resources

from ._backend import quote_literal
from ._capture import (
    EVENT_TABLE,
    HOOK_TABLE,
    LISTENER_TABLE,
    CapturedColumn,
    CaptureSpec,
    RelationSpec,
)
from ._dispatch import ClaimStatements
from ._errors import StoreError
from ._policy import RELATION_KIND
from ._rows import quote_name

#: SQLite's default limit on function arguments bounds json_object() to this many columns.
MAX_CAPTURED_COLUMNS = 63

# -- the schema file ------------------------------------------------------------------------


def schema_sql() -> str:
    """The canonical DDL (also at the top of the source tree as ``schema.sql``)."""
    return resources.files("tokenstore").joinpath("schema.sql").read_text(encoding="utf-8")


def statements(script: str) -> Iterator[str]:
    """Split a script into statements; triggers hold semicolons, so ask SQLite."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statement = buffer.strip()
            buffer = ""
            if statement.strip(";").strip() and not _only_comments(statement):
                yield statement
    if buffer.strip() and not _only_comments(buffer):
        raise StoreError(f"schema.sql ends with an incomplete statement: {buffer.strip()[:60]!r}")


def _only_comments(text: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in text.splitlines())


_CREATES = re.compile(r'CREATE (?:UNIQUE )?(?:TABLE|INDEX|VIEW|TRIGGER) "([^"]+)"')


def schema_statement(name: str) -> str:
    """The statement of schema.sql that creates ``name``: migrations reuse the canonical DDL."""
    for statement in statements(schema_sql()):
        code = "\n".join(line for line in statement.splitlines() if not line.startswith("--"))
        match = _CREATES.match(code.strip())
        if match and match[1] == name:
            return code
    raise StoreError(f"schema.sql creates nothing named {name!r}")


# -- capture --------------------------------------------------------------------------------


def trigger_name(table: str, kind: str, op: str) -> str:
    """The quoted name of a table's trigger: the table's whole name, so no two tables share it.

    ``kind`` is "capture" or "relation", ``op`` "insert", "update" or "delete".
    """
    return quote_name(f"{table}_{kind}_{op}")


def trigger_names(table: str, kind: str) -> list[str]:
    """Every name a table's triggers of one kind have, or had (unquoted).

    Files written before named them after the table without its double
    quotes, a name another table could have too: both spellings are looked
    for, among that table's own triggers, when they are replaced.
    """
    spellings = dict.fromkeys((table, table.replace('"', "")))
    return [f"{name}_{kind}_{op}" for name in spellings for op in ("insert", "update", "delete")]


def capture_triggers(spec: CaptureSpec) -> list[str]:
    """The CREATE TRIGGER statements that record a table's changes (see ``CaptureSpec``)."""
    spec.check_width(MAX_CAPTURED_COLUMNS)

    def row(alias: str) -> str:
        pairs = []
        for column in spec.recorded:
            value = f"{alias}.{quote_name(column.name)}"
            if column.is_blob:  # hex(NULL) is '', which would read back as b''
                value = f"CASE WHEN {value} IS NULL THEN NULL ELSE hex({value}) END"
            elif column.is_real:
                value = _exact_real(value)
            pairs.append(f"{quote_literal(column.name)}, {value}")
        return "json_object(" + ", ".join(pairs) + ")"

    watched = [quote_name(c) for c in spec.watched]
    # UPDATE OF: a statement that sets only quiet columns never even runs the trigger.
    of = "OF " + ", ".join(watched) + " " if watched else ""
    changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in watched)
    gate = (
        f"(EXISTS (SELECT 1 FROM {LISTENER_TABLE}) OR EXISTS (SELECT 1 FROM {HOOK_TABLE} "
        f"WHERE ref = {quote_literal(spec.ref)} AND enabled))"
    )
    pk = quote_name(spec.pk_column)

    def key(alias: str) -> str:
        return f"hex({alias}.{pk})" if spec.pk_is_blob else f"{alias}.{pk}"

    insert = f"INSERT INTO {EVENT_TABLE} (table_name, op, row_pk, old_row, new_row)"
    values = f"VALUES ({quote_literal(spec.table)}"
    on = quote_name(spec.table)
    return [
        f"CREATE TRIGGER {trigger_name(spec.table, 'capture', 'insert')} AFTER INSERT ON {on}\n"
        f"WHEN {gate}\n"
        f"BEGIN\n  {insert}\n  {values}, 'INSERT', {key('NEW')}, NULL, {row('NEW')});\n"
        "END",
        f"CREATE TRIGGER {trigger_name(spec.table, 'capture', 'update')} AFTER UPDATE {of}"
        f"ON {on}\n"
        f"WHEN {gate}\n  AND ({changed or '0'})\n"
        f"BEGIN\n  {insert}\n  {values}, 'UPDATE', {key('NEW')}, {row('OLD')}, "
        f"{row('NEW')});\nEND",
        f"CREATE TRIGGER {trigger_name(spec.table, 'capture', 'delete')} AFTER DELETE ON {on}\n"
        f"WHEN {gate}\n"
        f"BEGIN\n  {insert}\n  {values}, 'DELETE', {key('OLD')}, {row('OLD')}, NULL);\n"
        "END",
    ]


def _exact_real(value: str) -> str:
    """A column's value for json_object(), a finite REAL written with all 17 digits.

    json_object() writes a REAL with 15 significant digits (SQLite 3.40 does):
    ``123456789.12345679`` was recorded as ``123456789.123457``, and receivers
    and webhooks got a value the row does not hold. An infinity keeps SQLite's
    own ``Inf`` (which ``_capture`` reads), and other types stay as they are.
    """
    return (
        f"CASE WHEN typeof({value}) = 'real' AND abs({value}) <= 1.7976931348623157e308 "
        f"THEN json(printf('%!.17g', {value})) ELSE {value} END"
    )


def relation_triggers(spec: RelationSpec) -> list[str]:
    """The CREATE TRIGGER statements that record a join table's changes (see ``RelationSpec``)."""
    refs = ", ".join(quote_literal(ref) for ref in spec.refs)
    gate = (
        f"(EXISTS (SELECT 1 FROM {LISTENER_TABLE}) OR EXISTS (SELECT 1 FROM {HOOK_TABLE} "
        f"WHERE ref IN ({refs}) AND enabled AND instr(signal, {quote_literal(RELATION_KIND)})))"
    )
    first, second = (quote_name(c.name) for c in spec.columns)

    def key(column: CapturedColumn, alias: str) -> str:
        value = f"{alias}.{quote_name(column.name)}"
        return f"{quote_literal(column.name)}, {_exact_real(value) if column.is_real else value}"

    def event(op: str, alias: str) -> str:
        pk = "NULL" if spec.pk_column is None else f"{alias}.{quote_name(spec.pk_column)}"
        pair = f"json_object({', '.join(key(c, alias) for c in spec.columns)})"
        old, new = (pair, "NULL") if op == "DELETE" else ("NULL", pair)
        return (
            f"  INSERT INTO {EVENT_TABLE} (table_name, op, row_pk, old_row, new_row)\n"
            f"  VALUES ({quote_literal(spec.table)}, '{op}', {pk}, {old}, {new});\n"
        )

    on = quote_name(spec.table)
    return [
        f"CREATE TRIGGER {trigger_name(spec.table, 'relation', 'insert')} AFTER INSERT ON {on}\n"
        f"WHEN {gate}\nBEGIN\n{event('INSERT', 'NEW')}END",
        f"CREATE TRIGGER {trigger_name(spec.table, 'relation', 'update')} "
        f"AFTER UPDATE OF {first}, {second} ON {on}\n"
        f"WHEN {gate}\n  AND (OLD.{first} IS NOT NEW.{first} OR OLD.{second} IS NOT NEW.{second})\n"
        f"BEGIN\n{event('DELETE', 'OLD')}{event('INSERT', 'NEW')}END",
        f"CREATE TRIGGER {trigger_name(spec.table, 'relation', 'delete')} AFTER DELETE ON {on}\n"
        f"WHEN {gate}\nBEGIN\n{event('DELETE', 'OLD')}END",
    ]


# The recorded text comes back as bytes: a row edited into text that is no UTF-8 (the
# sqlite3 shell takes any bytes) is recorded as it is, and the sqlite3 module refuses
# to read such text at all, failing the whole claim; ChangeEvent.from_row decodes it.
_RETURNED = (
    "RETURNING id, table_name, op, CAST(row_pk AS BLOB), CAST(old_row AS BLOB), "
    "CAST(new_row AS BLOB), CAST(created_at AS BLOB)"
)


def claim_statements(tables: tuple[str, ...]) -> ClaimStatements:
    """The dispatcher's claim statements for these tables (see ``ClaimStatements``)."""
    among = "table_name IN (" + ",".join(quote_literal(t) for t in tables) + ")"
    return ClaimStatements(
        drop_unheard=(
            f"DELETE FROM {EVENT_TABLE} WHERE NOT EXISTS (SELECT 1 FROM {LISTENER_TABLE}) "
            f"AND claimed_by IS NULL AND {among}"
        ),
        claim=(
            f"UPDATE {EVENT_TABLE} SET claimed_by = ?, claimed_at = ?, claims = claims + 1 "
            f"WHERE claimed_by IS NULL AND {among} {_RETURNED}, claims - 1"
        ),
        consume=(
            f"DELETE FROM {EVENT_TABLE} WHERE claimed_by IS NULL AND {among} {_RETURNED}, claims"
        ),
        consume_and_leave=(
            f"UPDATE {EVENT_TABLE} SET claims = claims + 1 "
            f"WHERE claimed_by IS NULL AND claims = 0 AND {among} {_RETURNED}, 0"
        ),
    )
