"""What change capture records: the event rows, and which columns of a model go in them.

Triggers (written by each backend from a ``CaptureSpec``) insert one
``tokenstore_change_event`` row per changed row, in the same transaction as
the change, so a rollback takes the event with it and writes from any
process, or from the sqlite3 shell, are captured alike.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import peewee

from ._errors import ValidationError
from ._rows import holds_bytes

EVENT_TABLE = "tokenstore_change_event"
LISTENER_TABLE = "tokenstore_listener"
HOOK_TABLE = "tokenstore_outbound_webhook"


class Connection(Protocol):
    """The DB-API connection of the committing transaction (sqlite3 or psycopg)."""

    def execute(self, sql: str, params: Any = ..., /) -> Any: ...


def model_ref(model: type[peewee.Model]) -> str:
    """The name hooks use for a model: ``module.ClassName``."""
    return f"{model.__module__}.{model.__qualname__}"


def _loads(text: str) -> Any:
    """A recorded row; SQLite before 3.45 writes an infinite REAL as ``Inf``, which is no JSON.

    Only then (a failed parse) is the text read again, with each ``Inf``
    outside a string written as JSON's ``Infinity``.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        parts = []
        in_string = escaped = False
        i = 0
        while i < len(text):
            char = text[i]
            if in_string:
                in_string = escaped or char != '"'
                escaped = not escaped and char == "\\"
            elif char == '"':
                in_string = True
            elif text.startswith("Inf", i) and not text.startswith("Infinity", i):
                parts.append("Infinity")
                i += 3
                continue
            parts.append(char)
            i += 1
        return json.loads("".join(parts))


def _text(value: Any) -> Any:
    """A value read back as UTF-8 bytes, as text (UnicodeDecodeError, a ValueError, if none)."""
    return value.decode() if type(value) is bytes else value


def _recorded_row(text: str) -> dict[str, Any]:
    """A row as a trigger records it: a JSON object (ValueError for anything else).

    SQLite has no booleans: its triggers record a flag as 1 or 0. PostgreSQL's
    record a BOOLEAN column as true or false, read here as the same 1 or 0, so
    an event holds the same values on both (JSON values in a row are only ever
    columns' values, never nested).
    """
    row = _loads(text)
    if not isinstance(row, dict):
        raise ValueError(f"the recorded row is a JSON {type(row).__name__}, not an object")
    return {key: int(value) if type(value) is bool else value for key, value in row.items()}


@dataclass(frozen=True)
class ChangeEvent:
    """One captured row change, as the trigger recorded it."""

    id: int
    table: str
    op: str
    pk: str | None
    old: dict[str, Any] | None
    new: dict[str, Any] | None
    created_at: str

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> ChangeEvent:
        """From ``id, table_name, op, row_pk, old_row, new_row, created_at``.

        The last four may come as UTF-8 bytes (see the SQLite claim statements);
        bytes that are no UTF-8 raise a ValueError, as other unreadable rows do.
        """
        id_, table, op, pk, old, new, created_at = map(_text, row)
        return cls(
            id=id_,
            table=table,
            op=op,
            pk=None if pk is None else str(pk),
            old=None if old is None else _recorded_row(old),
            new=None if new is None else _recorded_row(new),
            created_at=created_at,
        )

    @property
    def row(self) -> dict[str, Any]:
        """The row as it is after the change (before it, for a delete)."""
        return (self.new if self.op != "DELETE" else self.old) or {}


@dataclass(frozen=True)
class CapturedColumn:
    name: str
    is_blob: bool
    #: Holds floating-point numbers (FloatField, DecimalField): recorded to the last digit.
    is_real: bool = False
    #: Holds exact decimals (DecimalField): PostgreSQL's NUMERIC is recorded as its text,
    #: since a JSON number is read back as a float, which would round it.
    is_decimal: bool = False

    @classmethod
    def of(cls, field: peewee.Field) -> CapturedColumn:
        """How ``field``'s column is recorded; a foreign key's as the key it refers to.

        A foreign key's column holds what that key holds: a key to a
        FloatField or DecimalField recorded as a plain column lost digits
        (SQLite's json_object() writes 15, a JSON number is read as a float).
        """
        target = field
        while isinstance(target, peewee.ForeignKeyField):
            target = target.rel_field
        return cls(
            field.column_name,
            holds_bytes(field),
            isinstance(target, (peewee.FloatField, peewee.DecimalField)),
            isinstance(target, peewee.DecimalField),
        )


@dataclass(frozen=True)
class CaptureSpec:
    """What the triggers of one table record, whatever SQL dialect writes them.

    Private fields are left out of the recorded rows (``recorded``); an
    UPDATE that changes none of the ``watched`` columns (only quiet fields,
    or nothing) records no event. ``ref`` is what enabled hooks name the
    model by: while no process listens and no enabled hook has that ref, a
    write records nothing.
    """

    table: str
    ref: str
    pk_column: str
    recorded: tuple[CapturedColumn, ...]
    watched: tuple[str, ...]
    #: A BLOB key is recorded as hex, as BLOB columns are: an event's key is text.
    pk_is_blob: bool = False

    def check_width(self, most: int) -> None:
        """Refuse a table whose recorded row needs more columns than a backend can build."""
        if len(self.recorded) > most:
            raise ValidationError(
                f"{self.ref}: change capture records at most {most} columns, "
                f"this table has {len(self.recorded)}"
            )

    @classmethod
    def of(cls, model: type[peewee.Model]) -> CaptureSpec:
        meta = model._meta
        pk = meta.primary_key
        if not isinstance(pk, peewee.Field) or isinstance(pk, peewee.CompositeKey):
            raise ValidationError(
                f"{model.__name__}: change capture needs a single-column primary key"
            )
        private = private_names(model)
        if pk.name in private:
            raise ValidationError(
                f"{model.__name__}.private_fields names the primary key {pk.name!r}: every "
                "event, signal and webhook names its row by it, so it cannot be private"
            )
        quiet = _field_names(model, "quiet_fields")
        fields = list(meta.sorted_fields)
        return cls(
            table=meta.table_name,
            ref=model_ref(model),
            pk_column=pk.column_name,
            recorded=tuple(CapturedColumn.of(f) for f in fields if f.name not in private),
            watched=tuple(f.column_name for f in fields if f.name not in quiet),
            pk_is_blob=holds_bytes(pk),
        )


def private_names(model: type[peewee.Model]) -> set[str]:
    """The fields a model keeps out of every event, signal and webhook body (checked)."""
    return _field_names(model, "private_fields")


def _field_names(model: type[peewee.Model], attribute: str) -> set[str]:
    """The field names a model lists in ``private_fields`` or ``quiet_fields``, checked.

    A name that is no field's (misspelt, or a column name) would leave the
    field it meant captured: a private one's value would reach every event,
    signal and webhook body. A plain string would be taken for its letters.
    """
    names = getattr(model, attribute, ())
    if not isinstance(names, tuple | list | set | frozenset) or not all(
        isinstance(name, str) for name in names
    ):
        raise ValidationError(
            f"{model.__name__}.{attribute} must be a tuple of field names, got {names!r}"
        )
    unknown = [name for name in names if name not in model._meta.fields]
    if unknown:
        raise ValidationError(
            f"{model.__name__}.{attribute} names {', '.join(map(repr, unknown))}, which is no "
            f"field of {model.__name__} (its fields: {', '.join(model._meta.fields)})"
        )
    return set(names)


@dataclass(frozen=True)
class RelationSpec:
    """What the triggers of a join table record, whatever SQL dialect writes them.

    A join table's rows are relations between two models: adding a row
    records an INSERT event of the join table, removing one a DELETE event,
    and an UPDATE that moves a row records both (the old pair removed, the
    new one added). Each event carries both foreign keys (``columns``) and
    nothing else, so the dispatcher can name both sides. ``refs`` are the
    refs of the sides that have a field for the relation: while no process
    listens and no enabled hook on one of them has M2M in its signal, a
    write records nothing.
    """

    table: str
    pk_column: str | None
    #: The two foreign keys' columns, recorded as the keys they refer to are.
    columns: tuple[CapturedColumn, CapturedColumn]
    refs: tuple[str, ...]
