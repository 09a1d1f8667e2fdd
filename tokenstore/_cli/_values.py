"""Values given on the command line: durations, times, headers, secrets."""

from __future__ import annotations

import argparse
import getpass
import re
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TypeVar

from .._errors import ValidationError
from .._inputs import MAX_SPAN

T = TypeVar("T")

# -- durations and other values -----------------------------------------------------------

_DURATION = re.compile(r"(-?)([0-9]+(?:\.[0-9]+)?)([smhd])")  # not \d: other scripts' digits
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION_SYNTAX = "a number and a unit: 90s, 15m, 12h, 30d"


def parse_duration(text: str, option: str, allow_zero: bool = False) -> timedelta:
    """The one duration syntax of every option: ``90s``, ``15m``, ``12h``, ``30d``.

    Written out in full so a negative, zero, not-a-number or absurd value
    stops the command with a message naming the option, not a traceback.
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValidationError(f"{option} {text!r} is not a duration: use {DURATION_SYNTAX}")
    if match[1]:
        raise ValidationError(f"{option} {text!r} is negative: durations count forward")
    seconds = float(match[2]) * _UNIT_SECONDS[match[3]]
    if seconds > MAX_SPAN.total_seconds():  # the API's own limit, named here
        raise ValidationError(f"{option} {text!r} is too long: at most {MAX_SPAN.days}d")
    if seconds == 0 and not allow_zero:
        raise ValidationError(f"{option} {text!r} must be longer than zero")
    return timedelta(seconds=seconds)


def parse_expiry(text: str) -> datetime | timedelta:
    """A duration from now (``30d``) or an ISO-8601 time with a timezone, spaces around allowed."""
    if _DURATION.fullmatch(text.strip()):
        return parse_duration(text, "--expires")
    return parse_time(text, "--expires", f"neither a duration ({DURATION_SYNTAX}) nor")


def parse_time(text: str, option: str, wrong: str = "not") -> datetime:
    """An ISO-8601 time with a timezone (``2030-01-01T00:00:00Z``), spaces around allowed."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValidationError(
            f"{option} {text!r} is {wrong} an ISO-8601 time like 2030-01-01T00:00:00Z"
        ) from None
    if when.tzinfo is None:  # the advice written out in full: a bare date takes no Z
        raise ValidationError(f"{option} {text!r} needs a timezone, e.g. {when.isoformat()}Z")
    return when


def _duration_type(option: str, allow_zero: bool = False) -> Callable[[str], timedelta]:
    """An argparse type for a duration option (``90s``, ``15m``, ``12h``, ``30d``)."""
    return _argument_type(lambda text: parse_duration(text, option, allow_zero))


def _time_type(option: str) -> Callable[[str], datetime]:
    """An argparse type for a time option (ISO-8601, with a timezone)."""
    return _argument_type(lambda text: parse_time(text, option))


def _argument_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """``parse`` as argparse wants a type: its refusal is argparse's, said with the usage."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValidationError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _positive_int(text: str) -> int:
    """An argparse type for a whole number of at least 1."""
    return _number(text, 1, "a whole number of at least 1")


def _port(text: str) -> int:
    """An argparse type for a port to listen on, whose range the server checks."""
    return _number(text, 0, "a port number")


def _number(text: str, least: int, what: str) -> int:
    """A whole number in ASCII digits: int() also reads other scripts' digits, ``_`` and ``+``."""
    if not (text.isascii() and text.isdecimal()):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    try:
        number = int(text)
    except ValueError:  # past the 4,300 digits int() takes, and so past any bound
        raise argparse.ArgumentTypeError(f"{text!r} is too large a number") from None
    if number < least:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return number


def _header(text: str) -> tuple[str, str]:
    """A ``Name=value`` header option as a pair; ``Name=-`` reads the value from stdin.

    A header often carries a credential, which argv would show to ``ps``.
    """
    name, sep, value = text.partition("=")
    if not sep or not name:
        # Not quoted back: the text is likely a credential typed as "Name: value".
        raise ValidationError("--header must look like Name=value (the value given is not shown)")
    return name.strip(), _secret(value)


#: The longest secret read from stdin: tokens, keys and auth headers are far shorter.
_SECRET_CHARS = 65536


def _secret(value: str) -> str:
    """``-`` reads the value from stdin, which keeps a secret out of argv and shell history.

    At a terminal it is asked for without echo, so it stays off the screen too.
    """
    if value != "-":
        return value
    if sys.stdin is None:
        raise ValidationError("- reads the secret from stdin, but stdin is closed")
    try:
        if sys.stdin.isatty():
            line = getpass.getpass("secret (not shown): ")
        else:
            line = sys.stdin.readline(_SECRET_CHARS + 1)  # < /dev/zero has no line end
            if not line:  # an empty secret would be stored as if one were given
                raise ValidationError(
                    "- reads the secret from stdin, but stdin ended before a line"
                )
    except UnicodeDecodeError:
        raise ValidationError("the secret read from stdin is not UTF-8 text") from None
    if len(line) > _SECRET_CHARS:
        raise ValidationError(f"the secret read from stdin is over {_SECRET_CHARS} characters")
    if not line.strip():  # `echo "$SECRET" |` with $SECRET unset: no secret was given either
        raise ValidationError(
            "- reads the secret from stdin, but the line read from stdin is blank"
        )
    return line.strip()
