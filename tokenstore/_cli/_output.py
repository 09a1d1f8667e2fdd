"""How the command shows records: text tables for people, JSON with ``--json``."""

from __future__ import annotations

import json
import logging
import re
import sys
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from .._abid import ABID
from .._errors import HIDDEN_CHARACTERS, InvalidABID
from .._models import APIToken, OutboundWebhook, User, WebhookDelivery
from .._times import format_time

# -- how records are shown ----------------------------------------------------------------


def _time(value: datetime | None) -> str | None:
    """A time as the file stores it, or None."""
    return None if value is None else format_time(value)


def user_dict(user: User) -> dict[str, Any]:
    """A user as the command shows it."""
    return {
        "id": user.id,
        "username": user.username,
        "is_superuser": user.is_superuser,
        "created_at": _time(user.created_at),
    }


def token_dict(token: APIToken) -> dict[str, Any]:
    """A token as the command shows it: redacted, never its digest."""
    return {
        "abid": token.abid,
        "id": str(token.id),
        "created_by_id": token.created_by_id,
        "name": token.name,
        "token": token.token_redacted,
        "scopes": list(token.scopes or []),
        "created_at": _time(token.created_at),
        "modified_at": _time(token.modified_at),
        "expires": _time(token.expires),
        "revoked_at": _time(token.revoked_at),
        "last_used_at": _time(token.last_used_at),
        "valid": token.is_valid(),
    }


def hook_dict(hook: OutboundWebhook) -> dict[str, Any]:
    """A hook as the command shows it: header names only, no secret."""
    return {
        "abid": hook.abid,
        "id": str(hook.id),
        "created_by_id": hook.created_by_id,
        "name": hook.name,
        "signal": hook.signal,
        "ref": hook.ref,
        "endpoint": hook.endpoint,
        "headers": sorted(hook.headers or {}),
        "has_auth_token": bool(hook.auth_token),
        "enabled": hook.enabled,
        "disabled_reason": hook.disabled_reason,
        "keep_last_response": hook.keep_last_response,
        "created_at": _time(hook.created_at),
        "modified_at": _time(hook.modified_at),
        "last_success": _time(hook.last_success),
        "last_failure": _time(hook.last_failure),
        "failure_count": hook.failure_count,
        "failing_since": _time(hook.failing_since),
        "last_response": hook.last_response,
        "secret_rotating_until": _time(
            hook.previous_secret_expires if hook.previous_secret else None
        ),
    }


#: The hook a delivery is shown with once its hook is gone: deleted by another process
#: since the delivery was read, or in the sqlite3 shell, which enforces no foreign keys.
HOOK_GONE = "(deleted)"


def hook_name(hook_id: Any) -> str:
    """The name of a delivery's hook (by its id), or HOOK_GONE."""
    hook = OutboundWebhook.get_or_none(OutboundWebhook.id == hook_id)
    return HOOK_GONE if hook is None else str(hook.name)


def delivery_dict(delivery: WebhookDelivery, hook_name: str) -> dict[str, Any]:
    """A delivery as the command shows it, without its payload."""
    return {
        "webhook_id": delivery.abid,
        "hook": hook_name,
        "event_type": delivery.event_type,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "duration_ms": delivery.duration_ms,
        "created_at": _time(delivery.created_at),
        "last_attempt_at": _time(delivery.last_attempt_at),
        "next_attempt_at": _time(delivery.next_attempt_at),
        "delivered_at": _time(delivery.delivered_at),
    }


def abid_dict(abid: ABID) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """An ABID, its parts and its views; and, by the reason, the views it has not.

    A verbatim subtype or a str rand of the original may hold a ``U``, and the
    largest ts parts are past the year 9999: the ABID is valid, but such a view
    is None, and InvalidABID says why.
    """
    missing: dict[str, list[str]] = {}

    def view(name: str, read: Callable[[], Any]) -> Any:
        try:
            return read()
        except InvalidABID as exc:
            missing.setdefault(str(exc), []).append(name)
            return None

    record = {
        "abid": str(abid),
        "prefix": abid.prefix,
        "ts": abid.ts,
        "uri": abid.uri,
        "subtype": abid.subtype,
        "rand": abid.rand,
        "ulid": view("ulid", lambda: abid.ulid),
        "typeid": abid.typeid,
        "datetime": view("datetime", lambda: format_time(abid.datetime)),
        "uuid": view("uuid", lambda: str(abid.uuid)),
    }
    return record, missing


def _text(value: Any) -> str:
    """A value as one cell of a text table: one line, no control characters for the terminal.

    Names and a receiver's answers may hold line breaks or escape sequences.
    """
    if value is None:
        return ""
    if isinstance(value, dict):
        return one_line(", ".join(f"{k}: {v}" for k, v in value.items()))
    if isinstance(value, list):
        return one_line(", ".join(str(v) for v in value))
    return one_line(str(value))


class Output:
    """Prints records as aligned ``key  value`` blocks, rows, or JSON."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def record(self, data: dict[str, Any]) -> None:
        """One record: JSON, or one "key: value" line per field."""
        if self.as_json:
            print(json.dumps(data, indent=2))
            return
        width = max(len(k) for k in data)
        for key, value in data.items():
            print(f"{key:<{width}}  {_text(value)}".rstrip())

    def rows(self, items: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
        """Several records: a JSON list, or a text table of ``columns``."""
        if self.as_json:
            print(json.dumps(list(items), indent=2))
            return
        if not items:
            print("(none)")
            return
        table = [list(columns), *([_text(item.get(c)) for c in columns] for item in items)]
        widths = [max(_columns(row[i]) for row in table) for i in range(len(columns))]
        for row in table:
            cells = (cell + " " * (w - _columns(cell)) for cell, w in zip(row, widths, strict=True))
            print("  ".join(cells).rstrip())


def _columns(text: str) -> int:
    """How many terminal columns ``text`` takes: a CJK character two, a combining mark none."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


#: What would break an error message into several lines, hide or reorder part of it, or move
#: a table's columns (a tab), on a terminal.
_UNPRINTABLE = re.compile(f"[\t\n\r{HIDDEN_CHARACTERS}]")


def one_line(text: str) -> str:
    """An error message as one line: a value quoted in it may hold line breaks or controls."""
    return _UNPRINTABLE.sub(lambda m: repr(m[0])[1:-1], text)


class _LogLine(logging.Formatter):
    """A log record as the command prints it: its message, and its exception's, on one line.

    With no handler of the application's, Python prints a logged exception's
    traceback; a command never prints one (a post-commit send that a full disk
    kept from being recorded, say, is logged by the library and said here).
    """

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text = f"{text}: {record.exc_info[1]}"
        return one_line(text)


class _Lines(logging.Handler):
    """Prints records to stderr as ``_LogLine`` says; while ``held`` is a list, keeps them there."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.setFormatter(_LogLine())
        self.held: list[logging.LogRecord] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.held is not None:
            self.held.append(record)
        else:
            print(self.format(record), file=sys.stderr, flush=True)


_lines: _Lines | None = None  # the running command's, set by log_lines


@contextmanager
def log_lines() -> Iterator[None]:
    """While a command runs, tokenstore's warnings and errors go to stderr as single lines."""
    global _lines
    _lines = _Lines()
    logger = logging.getLogger("tokenstore")
    logger.addHandler(_lines)
    try:
        yield
    finally:
        logger.removeHandler(_lines)
        _lines = None


@contextmanager
def held_lines() -> Iterator[list[logging.LogRecord]]:
    """Keep the command's log lines back; those still in the list are printed at the end.

    A command that ends in an error because of what a warning said drops
    the warning and says it in its one error line instead.
    """
    held: list[logging.LogRecord] = []
    lines = _lines
    if lines is not None:
        lines.held = held
    try:
        yield held
    finally:
        if lines is not None:
            lines.held = None
            for record in held:
                lines.handle(record)


def _allow_hint() -> str:
    """How to allow a blocked address, for every process."""
    return (
        "to allow an address for every process that opens the file, run "
        "`tokenstore webhooks allow HOST_OR_CIDR` (e.g. 127.0.0.1/32), or pass --allow "
        "HOST_OR_CIDR or set TOKENSTORE_WEBHOOK_ALLOW once"
    )


def _warn_if_blocked(delivery: WebhookDelivery) -> None:
    """Tell on stderr how to allow an address a delivery was blocked from."""
    if delivery.last_error.startswith("blocked:"):
        print(f"tokenstore: the delivery was blocked; {_allow_hint()}", file=sys.stderr)
