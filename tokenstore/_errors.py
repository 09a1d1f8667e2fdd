"""One exception hierarchy, so callers can catch everything tokenstore raises.

Every class is rooted at :class:`TokenstoreError`. Errors about bad input also
derive from :class:`ValueError` so code that already guards input keeps working.
Messages say what was wrong and where; they never contain a secret.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import peewee

#: The longest message kept whole. A longer one quotes a huge value given
#: by the caller; its middle is left out, so the message still says what was
#: wrong and stays a line a log or a terminal can hold.
_MAX_MESSAGE = 1000
_HEAD, _TAIL = 600, 300


#: Characters that show as nothing or change how the rest of a line reads, as a regular
#: expression's character class body: C0 controls but tab and line breaks, DEL and the C1
#: controls (U+009B is a terminal's CSI), bidirectional marks, overrides and isolates, the
#: Unicode line and paragraph separators, and the zero-width space, word joiner and byte
#: order mark, which make two names look alike. The command and the admin page spell them out.
HIDDEN_CHARACTERS = (
    "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u2028\u2029\u202a-\u202e"
    "\u2060\u2066-\u2069\ufeff"
)


def shown(value: object) -> str:
    """A value given by the caller, as a message quotes it: its repr, or what it is.

    The message about bad input must not fail itself: ``str()`` refuses an
    int of over 4,300 digits, and an object's own ``__repr__`` may raise.
    """
    if isinstance(value, int) and value.bit_length() > 256:
        return f"an integer of {value.bit_length()} bits"
    try:
        return repr(value)
    except Exception:
        return f"a {type(value).__name__} that cannot be shown"


def first_line(error: BaseException) -> str:
    """A driver's error as a message quotes it: its first line, without PostgreSQL's DETAIL,
    which quotes the row (and so, maybe, a secret)."""
    return str(error).strip().partition("\n")[0]


def shortened(message: str) -> str:
    """A message as shown: one of over 1,000 characters keeps its start and its end."""
    if len(message) <= _MAX_MESSAGE:
        return message
    left_out = len(message) - _HEAD - _TAIL
    return f"{message[:_HEAD]}… ({left_out} characters left out) …{message[-_TAIL:]}"


class TokenstoreError(Exception):
    """Base class of every error tokenstore raises on purpose."""

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (shortened(args[0]),)
        super().__init__(*args)


class InvalidABID(TokenstoreError, ValueError):
    """An ABID string or one of its source values is malformed."""


class ABIDDriftError(TokenstoreError, ValueError):
    """An update would change a part of a record's ABID, and the model forbids it."""


class StoreError(TokenstoreError):
    """The store file cannot be opened or used (not SQLite, newer schema, ...)."""


# The storage faults below are what SQLite reports while reading or writing the file;
# the transaction that met one was rolled back whole. They also derive from peewee's
# OperationalError, which is what code written against plain peewee already catches.
# StoreError must stay their first base: peewee re-wraps an exception whose first base
# carries one of its driver-error names.


class StoreFull(StoreError, peewee.OperationalError):
    """The disk (or the file-size limit) is full; the same write works once space is freed."""


class StoreIOError(StoreError, peewee.OperationalError):
    """The operating system failed a read or write of the file (or could not open it)."""


class StoreLocked(StoreError, peewee.OperationalError):
    """Another connection held the file's lock for the whole busy timeout; retry later."""


class StoreReadOnly(StoreError, peewee.OperationalError):
    """The file, its directory or the connection does not allow writing."""


class StoreCorrupt(StoreError, peewee.OperationalError):
    """The file is damaged; ``PRAGMA integrity_check`` tells how, a backup repairs it."""


class ValidationError(TokenstoreError, ValueError):
    """A value given to the API is not acceptable; nothing was written."""


class DamagedRow(ValidationError):
    """A stored row holds a value tokenstore never writes there (edited outside tokenstore).

    The message names the table, the row (its ABID or id) and the column,
    never the value: the column may hold a secret. A ValidationError, as
    such rows were reported before this class existed.
    """


class NotFound(TokenstoreError, LookupError):
    """No record matches the given identifier."""


class AuthenticationError(TokenstoreError):
    """A presented API token does not grant access."""


class InvalidToken(AuthenticationError):
    """The token is malformed, fails its checksum, or is unknown."""


class ExpiredToken(AuthenticationError):
    """The token was valid once but its expiry time has passed."""


class RevokedToken(AuthenticationError):
    """The token was revoked."""


class MissingScope(AuthenticationError):
    """The token is valid but lacks the scope the caller asked for."""


class WebhookVerificationError(TokenstoreError):
    """A received webhook request fails signature or timestamp checks."""


class BlockedAddress(TokenstoreError):
    """A webhook endpoint resolves to an address the network guard refuses."""


@contextmanager
def about(parameter: str) -> Iterator[None]:
    """Bad input met inside the block is reported as the value of ``parameter``.

    A lookup's own message ("no user 'x'", "not an API token ABID") does not
    say which argument held the value; the same error, named, does. A row
    found damaged is the file's fault, not the argument's: it passes as it is.
    """
    try:
        yield
    except DamagedRow:
        raise
    except (ValidationError, NotFound) as exc:
        raise type(exc)(f"{parameter}: {exc}") from None
