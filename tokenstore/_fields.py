"""Field types whose stored form stays readable in the sqlite3 shell."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import peewee

from ._errors import ValidationError
from ._times import format_time, parse_time


class UTCDateTimeField(peewee.Field):
    """ISO-8601 UTC text with milliseconds, e.g. ``2024-10-24T12:00:00.123Z``.

    Fixed width, so text order is time order and SQL can compare it with
    ``strftime('%Y-%m-%dT%H:%M:%fZ', 'now')``; readable in the sqlite3 shell.
    """

    field_type = "TEXT"

    def db_value(self, value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = self.python_value(value)
        return format_time(value)

    def python_value(self, value: Any) -> datetime | None:
        if value is None or isinstance(value, datetime):
            return value
        try:
            return parse_time(value)
        except ValueError:
            raise ValidationError(f"{self.name}: {value!r} is not an ISO-8601 time") from None


class JSONField(peewee.TextField):
    """JSON kept as compact text, so the sqlite3 shell and json_extract() can read it.

    A field whose default is ``list`` or ``dict`` holds that shape only: a
    value of another shape is refused on writing, and one edited in by hand
    on reading, rather than met later by code that expects a list or an object.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        default = kwargs.get("default")
        self.shape: type | None = default if default in (list, dict) else None

    def db_value(self, value: Any) -> str | None:
        if value is None:
            return None
        if self.shape is not None and not isinstance(value, self.shape):
            # Written, it would be a row tokenstore refuses to read back.
            raise ValidationError(
                f"{self.name} must be a {self.shape.__name__}, got {type(value).__name__}"
            )
        return json.dumps(value, separators=(",", ":"), sort_keys=True)

    def python_value(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:  # edited by hand; not quoted, as it may hold header credentials
                raise ValidationError(f"{self.name}: the stored value is not JSON") from None
        elif isinstance(value, bytes | int | float):  # SQLite's other types: no JSON text
            raise ValidationError(f"{self.name}: the stored value is not JSON text")
        if self.shape is not None and not isinstance(value, self.shape):
            raise ValidationError(f"{self.name}: the stored JSON is not a {self.shape.__name__}")
        return value


class UUIDField(peewee.UUIDField):
    """A UUID kept as 32 hex digits, as peewee keeps it.

    A value edited by hand into something else is an error naming the
    column, like the other fields here, rather than the ValueError of
    ``uuid.UUID`` from deep inside a query.
    """

    def python_value(self, value: Any) -> Any:
        try:
            return super().python_value(value)
        except (ValueError, TypeError, AttributeError):
            raise ValidationError(f"{self.name}: the stored value is not a UUID") from None
