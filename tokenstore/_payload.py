"""The body of a webhook message, built from a captured change.

The body is the exact text that is signed and stored with the delivery, so
it is built once, as compact JSON. Private fields were never captured, so
they cannot appear in it.
"""

from __future__ import annotations

import base64
import decimal
import json
import math
import re
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import peewee

from ._capture import ChangeEvent, private_names
from ._m2m import RelationChange
from ._rows import holds_bytes, value_kind
from ._times import format_time

#: The event type's last word for each captured operation.
TYPE_BY_OP = {"INSERT": "created", "UPDATE": "updated", "DELETE": "deleted"}

#: The event type's last word for each relation change.
TYPE_BY_ACTION = {"add": "added", "remove": "removed"}

_CANONICAL_TIME = re.compile(
    r"[1-9][0-9]{3}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z"
)
_UUID_HEX = re.compile(r"[0-9a-f]{32}")


def jsonable(value: Any) -> Any:
    """A field value as JSON: times as ISO-8601, UUIDs dashed, bytes base64.

    An aware time is sent as stored times are, in UTC; a naive one as it is
    (``isoformat``), not as the backend keeps it: SQLite's text has a space
    where PostgreSQL's JSON has a ``T``.
    """
    if isinstance(value, datetime):
        return value.isoformat() if value.tzinfo is None else format_time(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return str(value)
    return value


def dumps(payload: Any) -> str:
    """Compact JSON, the exact bytes that are signed and sent.

    JSON has no NaN or infinity, and Python's ``NaN`` and ``Infinity`` words
    are refused by most parsers (JavaScript's, Go's), so such floats are sent
    by name, as strings: ``"NaN"``, ``"Infinity"``, ``"-Infinity"``, as
    PostgreSQL's JSON writes them.
    """
    try:
        return _compact(payload)
    except ValueError:  # a float no JSON number can hold, somewhere in it
        return _compact(_named_floats(payload))


def _compact(payload: Any) -> str:
    return json.dumps(
        payload, separators=(",", ":"), ensure_ascii=False, default=str, allow_nan=False
    )


def _named_floats(value: Any) -> Any:
    """``value`` with every NaN and infinity, however deep, replaced by its name."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: _named_floats(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_named_floats(item) for item in value]
    return value


def json_converter(field: peewee.Field) -> Callable[[Any], Any]:
    """The function that turns one captured value of ``field`` into JSON.

    A value the field cannot read (a row edited into nonsense in the sqlite3
    shell), or whose Python value JSON cannot hold, is sent as stored: the
    conversion runs inside the commit of whatever transaction claims the
    event, and must not fail it. Values that are already their own JSON (text
    of a text field, a time in stored form) are passed through; the output is
    the same as the general path's.
    """

    def general(raw: Any) -> Any:
        try:
            value = jsonable(field.python_value(raw))
            if not isinstance(value, str | int | float | None):
                dumps(value)  # JSON may refuse it (a key that is no text, a loop)
            return value
        except Exception:
            return raw

    if holds_bytes(field):  # captured as hex (JSON has no bytes), sent in base64

        def blob_json(raw: Any) -> Any:
            try:
                return None if raw is None else jsonable(bytes.fromhex(raw))
            except (TypeError, ValueError):
                return raw

        return blob_json
    kind = value_kind(field)
    if kind == "time":

        def time_json(raw: Any) -> Any:
            if raw is None or (type(raw) is str and _CANONICAL_TIME.fullmatch(raw)):
                return raw
            return general(raw)

        return time_json
    if kind == "uuid":

        def uuid_json(raw: Any) -> Any:
            if type(raw) is str and _UUID_HEX.fullmatch(raw):
                return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"
            return None if raw is None else general(raw)

        return uuid_json
    if isinstance(kind, type):
        same: type = kind

        def plain_json(raw: Any) -> Any:
            return raw if raw is None or type(raw) is same else general(raw)

        return plain_json
    return general


class PayloadBuilder:
    """Builds message bodies, keeping each model's converters once made."""

    def __init__(self) -> None:
        self._converters: dict[type[peewee.Model], dict[str, tuple[str, Callable[[Any], Any]]]] = {}

    def forget(self, model: type[peewee.Model]) -> None:
        """Drop a model's converters: registering it again may have changed its fields."""
        self._converters.pop(model, None)

    def _for(
        self, model: type[peewee.Model], *, registered: bool = True
    ) -> dict[str, tuple[str, Callable[[Any], Any]]]:
        """Each column's field name and converter; a registered model's private fields left out.

        Events recorded before a field was made private still hold it. A
        through model is no registered model: its private_fields are not read.
        """
        known = self._converters.get(model)
        if known is None:
            private = private_names(model) if registered else set()
            known = self._converters[model] = {
                f.column_name: (f.name, json_converter(f))
                for f in model._meta.sorted_fields
                if f.name not in private
            }
        return known

    def change(self, model: type[peewee.Model], ref: str, event: ChangeEvent) -> dict[str, Any]:
        """``{"type", "timestamp", "data": {"model", "pk", "abid", "fields"}}`` for one change."""
        converters = self._for(model)
        fields: dict[str, Any] = {}
        for column, raw in event.row.items():
            known = converters.get(column)
            if known is not None:
                fields[known[0]] = known[1](raw)
        pk = fields.get(model._meta.primary_key.name, event.pk)  # type: ignore[union-attr]
        return {
            "type": f"{model.__name__.lower()}.{TYPE_BY_OP[event.op]}",
            "timestamp": event.created_at,
            "data": {
                "model": ref,
                "pk": None if pk is None else str(pk),
                "abid": fields.get("abid"),
                "fields": fields,
            },
        }

    def relation(self, change: RelationChange, ref: str, abid: str | None) -> dict[str, Any]:
        """``{"type", "timestamp", "data": {"model", "pk", "abid", "field", "action", "pks"}}``.

        ``type`` is ``<model>.<field>.added`` or ``.removed``; ``pks`` are the
        related primary keys, as text like ``pk``, in the order they were changed.
        """
        converters = self._for(change.relation.through, registered=False)
        key = converters[change.side.column][1]
        related = converters[change.other.column][1]
        model = change.side.model
        return {
            "type": f"{model.__name__.lower()}.{change.side.field}.{TYPE_BY_ACTION[change.action]}",
            "timestamp": change.event.created_at,
            "data": {
                "model": ref,
                "pk": str(key(change.key)),
                "abid": abid,
                "field": change.side.field,
                "action": change.action,
                "pks": [str(related(k)) for k in change.keys],
            },
        }
