"""Checks of the plain values callers hand to the API: text, counts, seconds, spans, flags.

Each check either returns the value or raises ValidationError naming the
argument, so a bad value never reaches the driver, whose errors
(OverflowError, UnicodeEncodeError, "datatype mismatch") say neither what
nor where. Messages describe the fault, not the value: it may be a secret.
"""

from __future__ import annotations

import difflib
import itertools
import math
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from ._credentials import quoted, refuse_secret
from ._errors import ValidationError, shown

_T = TypeVar("_T")

#: The largest integer an SQLite INTEGER column holds.
MAX_INT = 2**63 - 1

#: The longest span the API accepts (expiries, grace periods, timeouts): 100 years.
MAX_SPAN = timedelta(days=36525)

#: The most seconds any timeout or interval may be: a day.
MAX_SECONDS = 86400.0


def check_text(
    value: object, what: str, *, max_length: int | None = None, kept_as: str | None = None
) -> str:
    """A string SQLite and HTTP can carry: no NUL character, no lone surrogate.

    Text the file keeps in clear and commands print (``kept_as`` says as what: "a
    name", "a reason") must hold no token or signing secret pasted by mistake.
    """
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise ValidationError(f"{what} must not contain a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _not_unicode(what, value, exc.start) from None
    if max_length is not None and len(value) > max_length:
        raise ValidationError(f"{what} must be at most {max_length} characters, got {len(value)}")
    if kept_as is not None:
        refuse_secret(value, what, kept_as)
    # The checked characters as a plain str: a str subclass's own __str__ (which drivers
    # and f-strings call) may say anything, a NUL included.
    return str.__str__(value)


#: A URL's ``user:password@`` with no scheme before it (a file name holds no such thing).
_USER_PART = re.compile(r"\s*[^:/@\s]+:[^/@]*@")

#: What a path begins with when it is a URL: a scheme, its colon, and any slashes. A scheme
#: has two letters at least, where ``C:/`` is a Windows drive; followed by a slash, it is a
#: URL given as a path (``Path("postgresql://...")`` makes its '//' one '/').
_SCHEME_COLON = re.compile(r"\s*([A-Za-z][A-Za-z0-9+.-]+):/*")


def mistyped_postgres(scheme: str) -> bool:
    """Whether a URL's scheme is a misspelling of ``postgresql`` (or another tool's name for it).

    ``pgsql``, ``postgressql``, ``postgre``, ``posgresql``, SQLAlchemy's
    ``postgresql+psycopg``: none is another database's scheme.
    """
    name = scheme.lower()
    return name.startswith(("postgres", "pg")) or bool(
        difflib.get_close_matches(name, ("postgresql", "postgres"), cutoff=0.75)
    )


def sqlite_uri(what: str) -> str:
    """Why a ``file:`` URI is refused: SQLite's URI syntax, not a path of a file."""
    return (
        f"{what} is an SQLite URI (file:...), not a file path: give a plain path "
        "(tokenstore opens the file with the options it needs; read_only=True for mode=ro)"
    )


def _not_a_path(value: object, text: str, what: str) -> str | None:
    """Why ``text`` is a URL rather than a file path (None: it may be a path).

    Taken for a path, a URL was made a file named like it in the working
    folder, and its password was in every message naming that file.
    """
    scheme = _SCHEME_COLON.match(text)
    slashed = scheme is not None and scheme[0].endswith("/")
    if not isinstance(value, str) and slashed:
        return (
            f"{what} is a URL, not a file path; a postgresql:// URL is given as a str "
            "(a pathlib.Path makes its '//' one '/')"
        )
    if text[:1] in ("\r", "\n") or text[-1:] in ("\r", "\n"):
        return (
            f"{what} begins or ends with a line end ('\\r' or '\\n'), which would be part of "
            "the file's name: a value read from a file written on Windows ends with '\\r'"
        )
    bare = text.strip()
    if len(bare) > 1 and bare[0] in "'\"" and bare[-1] == bare[0]:
        return (
            f"{what} is in quotes, which would be part of the file's name (or hide a URL): "
            "give it without them (docker's --env-file and some .env readers keep them)"
        )
    if scheme and scheme[1].lower() == "file":
        return sqlite_uri(what)
    if scheme and mistyped_postgres(scheme[1]):
        return (
            f"{what} is a mistyped PostgreSQL URL, not a file path: it begins "
            f"{scheme[0].strip()!r}, where one begins 'postgresql://'"
        )
    if _USER_PART.match(text):
        return (
            f"{what} is a mistyped PostgreSQL URL, not a file path: it begins with a user "
            "and a password (user:password@host), without the 'postgresql://' before them"
        )
    if scheme and slashed:
        return (
            f"{what} is a {scheme[1]}: URL, not a file path; tokenstore takes a postgresql:// URL"
        )
    return None


def check_path(value: object, what: str) -> Path:
    """A file path (str or path-like) the operating system can take: no NUL, encodable."""
    if not isinstance(value, str | os.PathLike) or not isinstance(os.fspath(value), str):
        raise ValidationError(f"{what} must be a str or a Path, got {type(value).__name__}")
    # Its characters as a plain str: Path() and open() call a str subclass's own __str__,
    # which may name another file than the one checked here (or hold a NUL).
    text = str.__str__(os.fspath(value))
    if not text:  # Path("") is the current folder: no name was given, e.g. an unset $VARIABLE
        raise ValidationError(f"{what} is empty: it names no file")
    why = _not_a_path(value, text, what)
    if why is not None:
        raise ValidationError(why)
    if "\x00" in text:
        raise ValidationError(f"{what} must not contain a NUL character")
    try:
        os.fsencode(text)
    except UnicodeEncodeError as exc:
        raise _not_unicode(what, text, exc.start) from None
    return Path(text)


def _not_unicode(what: str, text: str, at: int) -> ValidationError:
    """The error for text with a lone surrogate at ``at``.

    One from U+DC80 to U+DCFF is how Python holds a byte that was no UTF-8
    (in a command's argument, an environment variable, a file name): the
    message names that byte, which is what the user gave.
    """
    code = ord(text[at])
    if 0xDC80 <= code <= 0xDCFF:
        return ValidationError(f"{what} is not UTF-8 (byte 0x{code - 0xDC00:02x} at position {at})")
    return ValidationError(f"{what} is not valid Unicode (a lone surrogate at position {at})")


#: The most items a list given to tokenstore (scopes, webhook_allow) may hold, repeats included.
MAX_ITEMS = 10_000


def check_items(values: object, what: str, kind: str) -> list[object]:
    """The items of a list of ``kind`` the caller gave, at most MAX_ITEMS of them.

    Bytes iterate as numbers, a class (a peewee model) by querying, and a
    mapping by its keys with its values dropped: each is refused, as is
    anything not iterable. An iterator that never ends is refused once it
    has given more than MAX_ITEMS.
    """
    try:
        if isinstance(values, bytes | bytearray | type | Mapping):
            raise TypeError
        items = list(itertools.islice(values, MAX_ITEMS + 1))  # type: ignore[call-overload]
    except TypeError:
        raise ValidationError(
            f"{what} must be a list of {kind}, got {type(values).__name__}"
        ) from None
    if len(items) > MAX_ITEMS:
        raise ValidationError(f"{what} must be a list of at most {MAX_ITEMS} {kind}")
    return items


def check_int(value: object, what: str, *, minimum: int = 0, maximum: int = MAX_INT) -> int:
    """An int (not a bool, not a float) within ``minimum``..``maximum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{what} must be an integer, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise ValidationError(f"{what} must be between {minimum} and {maximum}, got {shown(value)}")
    return value


def check_seconds(
    value: object, what: str, *, minimum: float = 0.0, allow_minimum: bool = False
) -> float:
    """A finite number of seconds above ``minimum`` (or equal, with ``allow_minimum``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"{what} must be a number of seconds, got {type(value).__name__}")
    try:
        seconds = float(value)
    except OverflowError:  # an int past float's range: too many seconds
        seconds = math.inf
    low_ok = seconds >= minimum if allow_minimum else seconds > minimum
    if not (math.isfinite(seconds) and low_ok and seconds <= MAX_SECONDS):
        bound = "at least" if allow_minimum else "more than"
        raise ValidationError(
            f"{what} must be {bound} {minimum:g} and at most {MAX_SECONDS:g} seconds, "
            f"got {shown(value)}"
        )
    return seconds


def check_span(value: object, what: str, *, allow_zero: bool) -> timedelta:
    """A timedelta that is positive (or zero, with ``allow_zero``) and at most ``MAX_SPAN``."""
    if not isinstance(value, timedelta):
        raise ValidationError(f"{what} must be a timedelta, got {type(value).__name__}")
    low_ok = value >= timedelta(0) if allow_zero else value > timedelta(0)
    if not (low_ok and value <= MAX_SPAN):
        bound = "non-negative" if allow_zero else "positive"
        raise ValidationError(
            f"{what} must be a {bound} timedelta of at most {MAX_SPAN.days} days, got {value}"
        )
    return value


def check_instance(value: object, cls: type[_T], what: str) -> _T:
    """An instance of ``cls`` (a token, a user, a signal): what a call reads attributes of,
    where anything else was an AttributeError from inside."""
    if not isinstance(value, cls):
        raise ValidationError(f"{what} must be a {cls.__name__}, got {type(value).__name__}")
    return value


def check_flag(value: object, what: str) -> bool:
    """True or False, nothing merely truthy."""
    if not isinstance(value, bool):
        raise ValidationError(f"{what} must be true or false, got {type(value).__name__}")
    return value


def storable(text: str) -> str:
    """Text from outside (a receiver's answer, an imported row) as every backend keeps it.

    PostgreSQL's text type cannot hold NUL: it becomes U+FFFD, as undecodable bytes do.
    """
    return text.replace("\x00", "\ufffd")


#: An HTTP header name (RFC 9110 token characters).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def check_header_name(value: object, what: str) -> str:
    """A string that is a valid HTTP header name."""
    if not isinstance(value, str) or not _HEADER_NAME.fullmatch(value):
        raise ValidationError(f"{what} {quoted(value)} is not a valid HTTP header name")
    return value
