"""Stored rows into Python values and model instances: the one row loader.

Rows come from several places: SELECTs written by hand on the hot paths
(authenticating a token, sending a webhook), and the JSON rows that capture
triggers record. All of them become values through the same per-field
converters, which take shortcuts for the forms tokenstore itself writes and
hand anything else (a time typed into the sqlite3 shell) to the field.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Generic, TypeVar

import peewee

from . import _compat
from ._errors import DamagedRow
from ._fields import JSONField, UTCDateTimeField, UUIDField

M = TypeVar("M", bound=peewee.Model)

logger = logging.getLogger("tokenstore.store")

Converter = Callable[[Any], Any]

_parse_iso = datetime.fromisoformat
#: The stored text of an empty JSON field of each shape (see ``JSONField.shape``).
_EMPTY_JSON: dict[Any, str] = {list: "[]", dict: "{}"}
# A UUID keeps its value in two slots, which its __init__ sets past the class's refusal of
# assignment (UUIDs are immutable). Setting them through the slots' own descriptors builds
# the same UUID without the constructor's parsing and checks, which are most of its cost.
_new_object = object.__new__
_set_uuid_int = vars(uuid.UUID)["int"].__set__
_set_uuid_safety = vars(uuid.UUID)["is_safe"].__set__
_UNKNOWN_SAFETY = uuid.SafeUUID.unknown


def quote_name(name: str) -> str:
    """A table or column name as an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def select_by_key(sql: Callable[[str], str], model: type[peewee.Model], columns: str) -> str:
    """``SELECT columns`` of ``model``'s row by its stored primary key, in a driver's style.

    ``sql`` translates the ``?`` placeholder; the names are put in after it, so
    a ``?`` in an application's table or column name stays part of the name.
    """
    table, key = model._meta.table_name, model._meta.primary_key.column_name  # type: ignore[union-attr]
    return sql("SELECT {} FROM {} WHERE {} = ?").format(columns, quote_name(table), quote_name(key))


def column_list(fields: Iterable[peewee.Field]) -> str:
    """The fields' columns, quoted, as a SELECT list (``Loader.columns``)."""
    return ", ".join(quote_name(f.column_name) for f in fields)


def holds_bytes(field: peewee.Field) -> bool:
    """Whether a field's column holds a blob: a BlobField, or a foreign key to one.

    Capture records such a column as hex (JSON has no bytes); a foreign key's
    column holds what the key it refers to holds.
    """
    while isinstance(field, peewee.ForeignKeyField):
        field = field.rel_field
    return isinstance(field, peewee.BlobField)


def value_kind(field: peewee.Field) -> str | type | None:
    """How a field reads stored values: ``"time"``, ``"uuid"``, ``"json"``, ``str``/``int``.

    None means only the field itself knows. A foreign key reads its values as
    the field it references does.
    """
    if isinstance(field, peewee.ForeignKeyField):
        field = field.rel_field
    if type(field).python_value is UTCDateTimeField.python_value:
        return "time"
    if type(field).python_value in (UUIDField.python_value, peewee.UUIDField.python_value):
        return "uuid"
    if type(field).python_value is JSONField.python_value:
        return "json"
    return _compat.plain_python_type(field)


def converter(field: peewee.Field) -> Converter:
    """The function that turns one stored value of ``field`` into its Python value."""
    general: Converter = field.python_value
    kind = value_kind(field)
    if kind == "time":

        def time_value(raw: Any) -> Any:
            if raw is None:
                return None
            if type(raw) is str and raw[-1:] == "Z":  # as tokenstore writes it
                try:
                    return _parse_iso(raw)
                except ValueError:
                    pass
            return general(raw)

        return time_value
    if kind == "uuid":

        def uuid_value(raw: Any) -> Any:
            if type(raw) is str and len(raw) == 32:  # 32 hex digits, as peewee writes it
                try:
                    number = int(raw, 16)
                except ValueError:
                    number = -1
                if number >= 0:  # then it is what UUID(hex=raw) gives
                    value = _new_object(uuid.UUID)
                    _set_uuid_int(value, number)
                    _set_uuid_safety(value, _UNKNOWN_SAFETY)
                    return value
            return general(raw)

        return uuid_value
    if kind == "json":
        shape = getattr(field, "shape", None)
        empty = _EMPTY_JSON.get(shape)

        def json_value(raw: Any) -> Any:
            if raw == empty:  # no scopes, no headers: the usual case, and a new object each time
                return shape()  # type: ignore[misc]
            return general(raw)

        return json_value
    if kind is int:

        def whole_value(raw: Any) -> Any:
            if raw is None or type(raw) is int:
                return raw
            value = general(raw)  # int(): text that is no number stays text
            if type(value) is not int or isinstance(raw, float):
                raise ValueError(f"{field.name}: the stored value is not a whole number")
            return value

        return whole_value
    if isinstance(field, peewee.BooleanField):

        def flag_value(raw: Any) -> Any:
            if raw is not None and not isinstance(raw, int):  # bool('no') would be True
                raise ValueError(f"{field.name}: the stored value is not 0 or 1")
            return general(raw)

        return flag_value
    if isinstance(kind, type):
        same: type = kind

        def plain_value(raw: Any) -> Any:
            return raw if raw is None or type(raw) is same else general(raw)

        return plain_value
    return general


class Loader(Generic[M]):
    """Turns rows of one model's table into values and instances.

    ``columns`` is the SELECT list that rows given to ``values`` and
    ``instance`` must follow; ``at`` gives a column's position in it by field name.
    Fields named in ``leave_out`` (a model's private fields, for signals) are
    ignored by ``from_columns``, as unknown columns are.

    Fields named in ``given`` are the ones a query's caller holds already
    (the key it looked the row up by): they are not in ``columns``, and
    ``values`` takes their Python values after the row, in the order named.
    Reading back a value the WHERE clause has just matched costs a column
    for nothing, on a path (checking a token) where each column counts.
    """

    def __init__(
        self, model: type[M], leave_out: Collection[str] = (), given: Sequence[str] = ()
    ) -> None:
        self.model = model
        self.leave_out = frozenset(leave_out)
        self._by_column = {
            f.column_name: (f, converter(f))
            for f in model._meta.sorted_fields
            if f.name not in self.leave_out
        }
        fields = [f for f in model._meta.sorted_fields if f.name not in given]
        self.columns = column_list(fields)
        self.at = {f.name: i for i, f in enumerate(fields)}
        names = [f.column_name for f in fields]

        def damaged(row: Sequence[Any], error: Exception) -> DamagedRow:
            return damaged_row(model, dict(zip(names, row, strict=True)), error)

        self.values = _row_reader(model._meta.sorted_fields, given, damaged)
        """A row of ``columns`` (then the ``given`` values) as Python values keyed by field name.

        A value that does not convert raises ``DamagedRow`` naming the row and the column.
        """

    def instance(self, row: Sequence[Any]) -> M:
        """A row of ``columns`` as a model instance, as if a SELECT had loaded it."""
        return build(self.model, self.values(row))

    def from_columns(self, row: Mapping[str, Any]) -> M:
        """An instance from stored values keyed by column (a captured row).

        Blobs arrive hex-encoded (JSON has no bytes); unknown columns are ignored.
        """
        values = {}
        try:
            for column, raw in row.items():
                known = self._by_column.get(column)
                if known is None:
                    continue
                field, convert = known
                if raw is not None and holds_bytes(field):
                    raw = bytes.fromhex(raw)
                values[field.name] = convert(raw)
        except Exception as exc:
            raise damaged_row(self.model, row, exc) from None
        return build(self.model, values)


def _row_reader(
    fields: Sequence[peewee.Field],
    given: Sequence[str],
    damaged: Callable[[Sequence[Any], Exception], DamagedRow],
) -> Callable[..., dict[str, Any]]:
    """A function turning a row into ``{name: convert(value), ...}``, with the dict written out.

    Checking a token converts one whole row per call, and on a row this
    short a loop over its columns (zip, map, a call to pair each value with
    its converter) costs more than the conversions do. So the loop is
    unrolled once per model, as ``dataclasses`` writes out an ``__init__``.
    The fields named in ``given`` are not in the row: the function takes
    their values as further arguments, unconverted, and the dict keeps the
    fields' order. The unpacking fails, as a strict zip would, on a row of
    another length; a value that fails to convert becomes ``damaged(row,
    error)``, raised (a try costs nothing until something in it raises).
    """
    read = [f for f in fields if f.name not in given]
    scope: dict[str, Any] = {f"convert{i}": converter(f) for i, f in enumerate(read)}
    scope["damaged"] = damaged
    unpack = "".join(f"value{i}, " for i in range(len(read)))
    arguments = "".join(f", given{i}" for i in range(len(given)))
    at = {f.name: i for i, f in enumerate(read)}
    pairs = ", ".join(
        f"{f.name!r}: given{given.index(f.name)}"
        if f.name in given
        else f"{f.name!r}: convert{at[f.name]}(value{at[f.name]})"
        for f in fields
    )
    exec(
        f"def values(row{arguments}):\n    {unpack}= row\n    try:\n        return {{{pairs}}}\n"
        "    except Exception as exc:\n        raise damaged(row, exc) from None\n",
        scope,
    )
    reader: Callable[..., dict[str, Any]] = scope["values"]
    return reader


def build(model: type[M], values: dict[str, Any]) -> M:
    """An instance holding ``values`` as loaded state (``from_stored`` where the model has it)."""
    from_stored = getattr(model, "from_stored", None)
    if from_stored is not None:
        return from_stored(values)  # type: ignore[no-any-return]
    return _compat.instance_without_defaults(model, values)


# What a stored value is, in SQLite's words, and what a column of each kind should hold.
_STORED_TYPE = {
    type(None): "NULL",
    bytes: "a blob",
    str: "text",
    int: "an integer",
    float: "a real",
}
_JSON_SHAPE: dict[Any, str] = {list: "a JSON list", dict: "a JSON object"}
_EXPECTED: dict[Any, str] = {
    "time": "an ISO-8601 time",
    "uuid": "a UUID (32 hex digits)",
    int: "a whole number",
}
_OUTSIDE = "the row was changed outside tokenstore"


def _expected(field: peewee.Field) -> str:
    kind = value_kind(field)
    if kind == "json":
        shape = getattr(field, "shape", None)
        return _JSON_SHAPE.get(shape, "JSON")
    if isinstance(field, peewee.BooleanField):
        return "0 or 1"
    return _EXPECTED.get(kind, "UTF-8 text" if kind is str else "a value its field reads")


def row_name(model: type[peewee.Model], row: Mapping[str, Any]) -> str:
    """How a message names a stored row: its ABID, else its primary key, as far as readable."""
    pk = model._meta.primary_key
    for column in ("abid", getattr(pk, "column_name", None)):
        raw = row.get(column) if column else None
        if isinstance(raw, int) or (isinstance(raw, str) and raw.isprintable() and raw):
            text = str(raw)
            return text if len(text) <= 64 else text[:60] + "…"
    return "(its id unreadable)"


def damaged_row(model: type[peewee.Model], row: Mapping[str, Any], error: Exception) -> DamagedRow:
    """The error for a row (stored values by column) that ``error`` kept from converting.

    Each value is converted again to find the column at fault. The message
    says what the column holds by type only: the value may be a secret.
    """
    if isinstance(error, DamagedRow):
        return error
    table = model._meta.table_name
    name = row_name(model, row)
    for field in model._meta.sorted_fields:
        if field.column_name not in row:
            continue
        raw = row[field.column_name]
        try:
            converter(field)(raw)
        except Exception:
            held = _STORED_TYPE.get(type(raw), type(raw).__name__)
            return DamagedRow(
                f"{table} row {name}: column {field.column_name} holds {held}, "
                f"not {_expected(field)}; {_OUTSIDE}"
            )
    return DamagedRow(f"{table} row {name} cannot be read ({type(error).__name__}); {_OUTSIDE}")


# How the sqlite3 module refuses to read stored text that is no UTF-8. It quotes the text,
# which may be a secret: the message is never passed on.
_NOT_UTF8 = re.compile(r"Could not decode to UTF-8 column '(.*?)' with text")


def refused_as_not_utf8(error: Exception) -> re.Match[str] | None:
    """Whether ``error`` is the sqlite3 module's refusal to read text that is no UTF-8.

    The match's group 1 is the column's name.
    """
    return _NOT_UTF8.match(str(error))


def not_utf8(model: type[peewee.Model], error: Exception, conn: Any) -> DamagedRow | None:
    """The DamagedRow for the sqlite3 module's refusal to read a text that is no UTF-8.

    None for any other error. The module does not say which row it was
    reading; on this path alone the table is searched for it (``conn`` is
    the SQLite connection that failed).
    """
    found = refused_as_not_utf8(error)
    if found is None:
        return None
    column, table, name = found[1], model._meta.table_name, "(not found)"
    names = {f.column_name for f in model._meta.sorted_fields}
    if column in names:  # not in a join's other table
        key = "abid" if "abid" in names else getattr(model._meta.primary_key, "column_name", "")
        rows = conn.execute(
            f"SELECT CAST({quote_name(key)} AS BLOB), CAST({quote_name(column)} AS BLOB) "
            f"FROM {quote_name(table)}"
        )
        for key_value, value in rows:
            try:
                if isinstance(value, bytes):
                    value.decode()
            except UnicodeDecodeError:
                name = row_name(model, {key: _text_if_utf8(key_value)})
                break
    return DamagedRow(
        f"{table} row {name}: column {column} holds text that is not UTF-8; {_OUTSIDE}"
    )


def text_as_bytes(model: type[peewee.Model], columns: Sequence[str] | None = None) -> str:
    """A SELECT list of ``columns`` (default: all) with text read back as bytes.

    SQLite only, for ``readable_rows``.
    """
    names = columns or [f.column_name for f in model._meta.sorted_fields]
    return ", ".join(
        f"CASE WHEN typeof({q}) = 'text' THEN CAST({q} AS BLOB) ELSE {q} END"
        for q in map(quote_name, names)
    )


def readable_rows(
    conn: Any,
    model: type[peewee.Model],
    sql: str,
    params: Sequence[Any] = (),
    columns: Sequence[str] | None = None,
) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` (selecting ``text_as_bytes(model, columns)``) that are UTF-8, decoded.

    The others are left out, each with an error in the log: what reads the
    rows goes on with the rest. For when the sqlite3 module refused to read them.
    """
    names = columns or [f.column_name for f in model._meta.sorted_fields]
    rows = []
    for row in conn.execute(sql, params):
        try:
            rows.append(tuple(v.decode() if type(v) is bytes else v for v in row))
        except UnicodeDecodeError:
            text = {name: _text_if_utf8(v) for name, v in zip(names, row, strict=True)}
            logger.error(
                "%s row %s holds text that is not UTF-8; %s, it is skipped",
                model._meta.table_name,
                row_name(model, text),
                _OUTSIDE,
            )
    return rows


def _text_if_utf8(value: Any) -> Any:
    """Bytes read back from a text column as text; left as bytes if they are no UTF-8."""
    try:
        return value.decode() if type(value) is bytes else value
    except UnicodeDecodeError:
        return value


# The attribute of a field its converter is kept in.
_KEPT_AS = "_tokenstore_converter"


def _field_converter(field: peewee.Field) -> Converter:
    """``converter(field)``, made once per field: every SELECT of a model asks for all of them.

    It is kept on the field itself, so it goes with it: a table kept beside
    would hold every field of every model ever read, made on the fly too.
    """
    kept = field.__dict__
    known: Converter | None = kept.get(_KEPT_AS)
    if known is None:
        known = kept[_KEPT_AS] = converter(field)
    return known


#: A SELECT of model rows that converts them as ``Loader`` does. peewee's own
#: conversions let a damaged value through (``int('x')`` falls back to the
#: text) or fail with an error that names nothing; here the fields' values go
#: through ``converter`` and a row that fails is a ``DamagedRow`` naming it.
#: Nothing changes for a row that converts.
CheckedSelect = _compat.checked_select_class(_field_converter, damaged_row, not_utf8)
