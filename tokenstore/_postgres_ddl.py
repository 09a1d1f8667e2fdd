"""The SQL that PostgreSQL runs: the schema file, PL/pgSQL capture triggers, the claims.

The schema file is canonical: migrations take their statements from it. The
triggers and claims are generated from the backend-neutral descriptions in
``_capture``, as the SQLite backend generates its own; the rows recorded are
the same.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from importlib import resources

from ._backend import quote_literal as plain_literal
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


def quote_literal(text: str) -> str:
    """A string as a literal PostgreSQL reads alike whatever ``standard_conforming_strings`` is.

    With it off (a database's or role's setting; PostgreSQL's default before 9.1) a
    backslash in a plain literal is an escape, in each session a trigger runs in too, so a
    table named with one was recorded under another name. Text holding one is written as
    an escape string (``E'...'``), which reads the same either way; other text stays a
    plain literal, so the triggers of existing stores keep their digest.
    """
    plain = plain_literal(text)
    return "E" + plain.replace("\\", "\\\\") if "\\" in text else plain


#: The channel capture triggers notify when they record an event.
CHANNEL = "tokenstore_changes"

#: json_build_object takes at most 100 arguments: a name and a value per column.
_COLUMNS_PER_OBJECT = 50

#: A capture function names tokenstore's tables without a schema; run with the search_path
#: of the session that wrote (psql's, another program's), it found no such tables, or
#: another store's in ``public``. It keeps the one it was made with, the store's.
_TRIGGER_FUNCTION = "RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT"

# -- the schema file ------------------------------------------------------------------------


def schema_sql() -> str:
    """The canonical DDL (also at the top of the source tree as ``schema-postgres.sql``)."""
    return resources.files("tokenstore").joinpath("schema-postgres.sql").read_text(encoding="utf-8")


def _statements(script: str) -> Iterator[str]:
    """Split a script into statements; function bodies between ``$$`` hold semicolons."""
    buffer: list[str] = []
    quoted = False
    for line in script.splitlines():
        if not buffer and (not line.strip() or line.startswith("--")):
            continue
        buffer.append(line)
        quoted ^= line.count("$$") % 2 == 1
        if not quoted and line.rstrip().endswith(";"):
            yield "\n".join(buffer)
            buffer = []


_CREATES = re.compile(r'CREATE (?:UNIQUE )?(?:TABLE|INDEX|VIEW) "([^"]+)"')


def schema_statement(name: str) -> str:
    """The statement of schema-postgres.sql that creates ``name``: migrations reuse it."""
    for statement in _statements(schema_sql()):
        match = _CREATES.match(statement)
        if match and match[1] == name:
            return statement
    raise StoreError(f"schema-postgres.sql creates nothing named {name!r}")


# -- capture --------------------------------------------------------------------------------


#: PostgreSQL keeps the first 63 bytes of a name and drops the rest.
LONGEST_NAME = 63


def _name(table: str, suffix: str) -> str:
    """``table + suffix`` as a name PostgreSQL keeps whole (quotes left out).

    Cut at 63 bytes, a long table's three trigger names would be one name,
    and two long tables would share a function; so a long table name is cut
    and followed by a digest of the whole. So is one whose quotes were left
    out: ``a"b`` and ``ab`` would share a function too.
    """
    base = table.replace('"', "")
    if base == table and len((base + suffix).encode()) <= LONGEST_NAME:
        return base + suffix
    digest = hashlib.sha256(table.encode()).hexdigest()[:8]
    room = LONGEST_NAME - len(suffix.encode()) - len(digest) - 1
    return f"{base.encode()[:room].decode(errors='ignore')}_{digest}{suffix}"


def _kind(spec: CaptureSpec | RelationSpec) -> str:
    return "relation" if isinstance(spec, RelationSpec) else "capture"


def function_name(spec: CaptureSpec | RelationSpec) -> str:
    """The PL/pgSQL function a table's three capture triggers share (one per table)."""
    return quote_name(_name(spec.table, f"_{_kind(spec)}"))


def trigger_name(spec: CaptureSpec | RelationSpec, op: str) -> str:
    """The trigger that records a table's ``op`` (insert, update, delete)."""
    return quote_name(_name(spec.table, f"_{_kind(spec)}_{op}"))


def trigger_names(spec: CaptureSpec | RelationSpec, op: str) -> list[str]:
    """``trigger_name``, and the name it had before a quoted table's names took a digest.

    Registering again drops both, so the old trigger does not record twice.
    """
    names = [trigger_name(spec, op)]
    before = spec.table.replace('"', "") + f"_{_kind(spec)}_{op}"
    if quote_name(before) != names[0] and len(before.encode()) <= LONGEST_NAME:
        names.append(quote_name(before))
    return names


#: The start of the statement that records an event.
_RECORD = f"INSERT INTO {EVENT_TABLE} (table_name, op, row_pk, old_row, new_row)"


def _function(function: str, spec: CaptureSpec | RelationSpec, recording: str) -> str:
    """A trigger function that runs ``recording`` behind the table's gate, then wakes dispatchers.

    The body is dollar-quoted with a tag it does not hold: it names the
    table and its columns, and a name may hold ``$$``, which would end a body
    quoted with it.
    """
    body = (
        "BEGIN\n"
        f"  IF NOT ({_gate(spec)}) THEN\n"
        "    RETURN NULL;\n"
        "  END IF;\n"
        f"{recording}"
        f"  PERFORM pg_notify('{CHANNEL}', '');\n"
        "  RETURN NULL;\n"
        "END\n"
    )
    tag, n = "$$", 0
    while tag in body:
        n += 1
        tag = f"$q{n}$"
    return f"CREATE OR REPLACE FUNCTION {function}() {_TRIGGER_FUNCTION} AS {tag}\n{body}{tag}"


def _gate(spec: CaptureSpec | RelationSpec) -> str:
    """The condition under which a table's triggers record: someone listens, or a hook wants it."""
    if isinstance(spec, RelationSpec):
        refs = ", ".join(quote_literal(ref) for ref in spec.refs) or "NULL"
        wanted = (
            f"ref IN ({refs}) AND enabled AND strpos(signal, {quote_literal(RELATION_KIND)}) > 0"
        )
    else:
        wanted = f"ref = {quote_literal(spec.ref)} AND enabled"
    return (
        f"EXISTS (SELECT 1 FROM {LISTENER_TABLE}) OR EXISTS (SELECT 1 FROM {HOOK_TABLE} "
        f"WHERE {wanted})"
    )


def _row(spec: CaptureSpec, alias: str) -> str:
    """The recorded row of ``alias`` as JSON text (see ``CaptureSpec``)."""
    pairs = []
    for column in spec.recorded:
        value = f"{alias}.{quote_name(column.name)}"
        if column.is_blob:  # in upper case, as SQLite's hex() writes it
            value = f"upper(encode({value}, 'hex'))"
        elif column.is_decimal:
            value = f"{value}::text"
        pairs.append(f"{quote_literal(column.name)}, {value}")
    step = _COLUMNS_PER_OBJECT
    parts = [
        "json_build_object(" + ", ".join(pairs[i : i + step]) + ")"
        for i in range(0, len(pairs), step)
    ] or ["json_build_object()"]
    if len(parts) == 1:
        return parts[0] + "::text"
    return "(" + " || ".join(f"{part}::jsonb" for part in parts) + ")::text"


def _key(spec: CaptureSpec, alias: str) -> str:
    """The recorded primary key of ``alias`` as text."""
    pk = quote_name(spec.pk_column)
    return f"upper(encode({alias}.{pk}, 'hex'))" if spec.pk_is_blob else f"{alias}.{pk}::text"


def _pair(spec: RelationSpec, alias: str) -> tuple[str, str]:
    """The recorded primary key of a join row ``alias``, and its two keys as JSON text."""
    pk = "NULL" if spec.pk_column is None else f"{alias}.{quote_name(spec.pk_column)}::text"

    def key(column: CapturedColumn) -> str:  # a NUMERIC as its text, as _row records it
        value = f"{alias}.{quote_name(column.name)}"
        return f"{quote_literal(column.name)}, {value}{'::text' if column.is_decimal else ''}"

    return pk, f"json_build_object({', '.join(key(c) for c in spec.columns)})::text"


def capture_triggers(spec: CaptureSpec) -> list[str]:
    """The function and triggers that record a table's changes (see ``CaptureSpec``).

    The gate (someone listens, or an enabled hook has the ref) needs a
    subquery, which a trigger's WHEN cannot hold, so the function checks it;
    the WHEN of the UPDATE trigger skips updates of quiet columns alone. A
    row of more than 50 columns is built in parts, joined as ``jsonb``.
    """
    function = function_name(spec)
    table = quote_literal(spec.table)
    on = quote_name(spec.table)
    watched = [quote_name(c) for c in spec.watched]
    of = "OF " + ", ".join(watched) + " " if watched else ""
    changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in watched) or "false"
    recording = (
        "  IF TG_OP = 'INSERT' THEN\n"
        f"    {_RECORD}\n"
        f"    VALUES ({table}, 'INSERT', {_key(spec, 'NEW')}, NULL, {_row(spec, 'NEW')});\n"
        "  ELSIF TG_OP = 'UPDATE' THEN\n"
        f"    {_RECORD}\n"
        f"    VALUES ({table}, 'UPDATE', {_key(spec, 'NEW')}, {_row(spec, 'OLD')}, "
        f"{_row(spec, 'NEW')});\n"
        "  ELSE\n"
        f"    {_RECORD}\n"
        f"    VALUES ({table}, 'DELETE', {_key(spec, 'OLD')}, {_row(spec, 'OLD')}, NULL);\n"
        "  END IF;\n"
    )
    return [
        _function(function, spec, recording),
        f"CREATE TRIGGER {trigger_name(spec, 'insert')} AFTER INSERT ON {on}\n"
        f"FOR EACH ROW EXECUTE FUNCTION {function}()",
        f"CREATE TRIGGER {trigger_name(spec, 'update')} AFTER UPDATE {of}ON {on}\n"
        f"FOR EACH ROW WHEN ({changed})\nEXECUTE FUNCTION {function}()",
        f"CREATE TRIGGER {trigger_name(spec, 'delete')} AFTER DELETE ON {on}\n"
        f"FOR EACH ROW EXECUTE FUNCTION {function}()",
    ]


def relation_triggers(spec: RelationSpec) -> list[str]:
    """The function and triggers that record a join table's changes (see ``RelationSpec``).

    The same events as SQLite's: an INSERT per pair added, a DELETE per pair
    removed, both for an UPDATE that moves a pair; each holds the two keys.
    """
    first, second = (quote_name(c.name) for c in spec.columns)

    def event(op: str, alias: str) -> str:
        pk, pair = _pair(spec, alias)
        old, new = (pair, "NULL") if op == "DELETE" else ("NULL", pair)
        return (
            f"    {_RECORD}\n"
            f"    VALUES ({quote_literal(spec.table)}, '{op}', {pk}, {old}, {new});\n"
        )

    function = function_name(spec)
    on = quote_name(spec.table)
    recording = (
        "  IF TG_OP IN ('UPDATE', 'DELETE') THEN\n"
        f"{event('DELETE', 'OLD')}"
        "  END IF;\n"
        "  IF TG_OP IN ('INSERT', 'UPDATE') THEN\n"
        f"{event('INSERT', 'NEW')}"
        "  END IF;\n"
    )
    return [
        _function(function, spec, recording),
        f"CREATE TRIGGER {trigger_name(spec, 'insert')} AFTER INSERT ON {on}\n"
        f"FOR EACH ROW EXECUTE FUNCTION {function}()",
        f"CREATE TRIGGER {trigger_name(spec, 'update')} "
        f"AFTER UPDATE OF {first}, {second} ON {on}\n"
        f"FOR EACH ROW WHEN (OLD.{first} IS DISTINCT FROM NEW.{first} "
        f"OR OLD.{second} IS DISTINCT FROM NEW.{second})\nEXECUTE FUNCTION {function}()",
        f"CREATE TRIGGER {trigger_name(spec, 'delete')} AFTER DELETE ON {on}\n"
        f"FOR EACH ROW EXECUTE FUNCTION {function}()",
    ]


def truncate_triggers(spec: CaptureSpec | RelationSpec) -> list[str]:
    """A function and trigger that record each row a TRUNCATE removes as a DELETE event.

    PostgreSQL runs no row trigger for TRUNCATE (peewee's ``truncate_table()``),
    so its rows went without an event; SQLite has none (peewee deletes the
    rows there, an event each). This runs before it, while the rows are
    there, behind the same gate as the table's other triggers.
    """
    if isinstance(spec, RelationSpec):
        pk, row = _pair(spec, "t")
    else:
        pk, row = _key(spec, "t"), _row(spec, "t")
    function = quote_name(_name(spec.table, f"_{_kind(spec)}_truncate"))
    recording = (
        f"  {_RECORD}\n"
        f"  SELECT {quote_literal(spec.table)}, 'DELETE', {pk}, {row}, NULL "
        f"FROM {quote_name(spec.table)} AS t;\n"
    )
    return [
        _function(function, spec, recording),
        f"CREATE TRIGGER {trigger_name(spec, 'truncate')} BEFORE TRUNCATE ON "
        f"{quote_name(spec.table)}\nFOR EACH STATEMENT EXECUTE FUNCTION {function}()",
    ]


_RETURNED = "RETURNING id, table_name, op, row_pk, old_row, new_row, created_at"


def claim_statements(tables: tuple[str, ...]) -> ClaimStatements:
    """The dispatcher's claim statements: rows another transaction holds are skipped, not awaited.

    Each statement takes the rows it may take with ``FOR UPDATE SKIP LOCKED``:
    two dispatchers committing at once take disjoint sets of events, and an
    event is taken by exactly one of them.
    """
    among = "table_name IN (" + ",".join(quote_literal(t) for t in tables) + ")"

    def unclaimed(extra: str = "") -> str:
        return (
            f"id IN (SELECT id FROM {EVENT_TABLE} WHERE claimed_by IS NULL AND {among}{extra} "
            "FOR UPDATE SKIP LOCKED)"
        )

    return ClaimStatements(
        drop_unheard=(
            f"DELETE FROM {EVENT_TABLE} WHERE NOT EXISTS (SELECT 1 FROM {LISTENER_TABLE}) "
            f"AND {unclaimed()}"
        ),
        claim=(
            f"UPDATE {EVENT_TABLE} SET claimed_by = %s, claimed_at = %s, claims = claims + 1 "
            f"WHERE {unclaimed()} {_RETURNED}, claims - 1"
        ),
        consume=f"DELETE FROM {EVENT_TABLE} WHERE {unclaimed()} {_RETURNED}, claims",
        consume_and_leave=(
            f"UPDATE {EVENT_TABLE} SET claims = claims + 1 "
            f"WHERE {unclaimed(' AND claims = 0')} {_RETURNED}, 0"
        ),
    )
