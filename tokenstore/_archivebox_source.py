"""Reading an ArchiveBox 0.8 ``index.sqlite3``: opening it without writing, checking it, its values.

What the file holds and how Django wrote it (naive UTC times, ids as 32 hex
digits, encrypted auth tokens) is described in docs/archivebox.md; this
module turns it into rows and Python values, or says why it cannot.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ._abid import ABID
from ._errors import InvalidABID, ValidationError, shown

USERS = "auth_user"
TOKENS = "api_apitoken"
HOOKS = "api_outboundwebhook"

#: The columns the import reads; a file without them is not an ArchiveBox 0.8 database.
COLUMNS: Mapping[str, tuple[str, ...]] = {
    USERS: ("id", "username", "is_superuser", "date_joined"),
    TOKENS: ("id", "abid", "token", "created_at", "modified_at", "expires", "created_by_id"),
    HOOKS: (
        "id",
        "abid",
        "name",
        "signal",
        "ref",
        "endpoint",
        "headers",
        "auth_token",
        "enabled",
        "keep_last_response",
        "last_response",
        "last_success",
        "last_failure",
        "created_at",
        "modified_at",
        "updated",
        "created_by_id",
    ),
}
#: The ``api`` app's migrations that made the tables as 0.8 has them.
_API_MIGRATIONS = tuple(f"{n:04d}" for n in range(1, 10))

_SQLITE_HEADER = b"SQLite format 3\x00"
_WAL_FORMAT = 2  # bytes 18 and 19 of the header: 1 for rollback journal, 2 for WAL
_NONCE_BYTES = 12


class RowRefused(Exception):
    """This row cannot be taken; the message says why."""


# -- reading the source ---------------------------------------------------------------------


def source_path(path: str | os.PathLike[str]) -> Path:
    source = Path(path)
    try:
        if source.is_dir():
            source = source / "index.sqlite3"  # an ArchiveBox data folder
        found, regular = source.exists(), source.is_file()
    except OSError as exc:  # a name too long, say
        raise ValidationError(f"cannot read {source}: {exc.strerror}") from None
    if not found:
        raise ValidationError(f"{source}: no such file (expected ArchiveBox's index.sqlite3)")
    if not regular:  # a device, a FIFO, a socket
        raise ValidationError(
            f"{source} is not a regular file (expected ArchiveBox's index.sqlite3)"
        )
    return source


@contextmanager
def open_source(source: Path) -> Iterator[sqlite3.Connection]:
    """The file opened for reading only, leaving nothing beside it; closed on leaving.

    A WAL-mode file with no ``-wal`` (or an empty one and no ``-shm``: no
    program has it open) has nothing outside the main file, and SQLite would
    create ``-wal`` and ``-shm`` files to open it even read-only: it is opened
    as immutable instead. A ``-wal`` with no ``-shm`` (no program
    has the file open: ArchiveBox stopped without closing it, or the folder was
    copied) would get one made beside it: a private copy of the two is read.
    Otherwise read-only, so that changes still in a ``-wal`` are seen; if that
    fails (a read-only folder), immutable too, unless the ``-wal`` holds changes
    that immutable would miss, or a ``-journal`` holds a change its writer left
    unfinished.
    """
    try:
        with source.open("rb") as f:
            header = f.read(100)
    except OSError as exc:  # not allowed to, or an I/O error
        raise ValidationError(f"cannot read {source}: {exc.strerror}") from None
    if len(header) < 100 or not header.startswith(_SQLITE_HEADER):
        raise ValidationError(f"{source} is not an ArchiveBox 0.8 database: it is not SQLite")
    real = source.resolve()  # a symbolic link's -wal and -shm are beside the file it names
    wal = real.with_name(real.name + "-wal")
    pending = wal.exists() and wal.stat().st_size > 0
    shm = real.with_name(real.name + "-shm").exists()
    if pending and not shm:
        with tempfile.TemporaryDirectory(prefix="tokenstore-archivebox-") as folder:
            copy = Path(folder) / real.name
            try:
                shutil.copyfile(real, copy)
                shutil.copyfile(wal, copy.with_name(wal.name))
            except OSError as exc:  # a full disk
                raise ValidationError(
                    f"cannot copy {source} and its -wal to read them: {exc.strerror}"
                ) from None
            with closing(_connect(f"{copy.as_uri()}?mode=ro")) as conn:
                yield conn
        return
    quiet = header[18] == _WAL_FORMAT and not pending and not (wal.exists() and shm)
    with closing(_open(source, real, quiet, pending)) as conn:
        yield conn


def _open(source: Path, real: Path, quiet: bool, pending: bool) -> sqlite3.Connection:
    uri = real.as_uri()
    immutable = f"{uri}?mode=ro&immutable=1"
    if quiet:
        return _connect(immutable)
    conn = _connect(f"{uri}?mode=ro")
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.DatabaseError as exc:
        conn.close()
        if exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            # Read as immutable under a writer, the file may hold half of its change.
            raise ValidationError(
                f"{source} is locked by another program (ArchiveBox writing to it?): "
                "try again when it has finished"
            ) from None
        if exc.sqlite_errorcode == sqlite3.SQLITE_READONLY_ROLLBACK:
            # A writer stopped mid-change (a crash): only a writer may roll it back, and
            # read as immutable, the file holds part of a change that never happened.
            raise ValidationError(
                f"{source} holds a change its writer left unfinished (a -journal beside "
                "it, from ArchiveBox stopping mid-write): open it once with ArchiveBox or "
                "sqlite3, which rolls the change back, then import"
            ) from None
        if pending:
            raise ValidationError(
                f"{source} cannot be opened read-only ({exc}) and its -wal file holds "
                "changes that would be missed: copy the folder somewhere writable and "
                "import the copy"
            ) from None
    return _connect(immutable)


def _connect(uri: str) -> sqlite3.Connection:
    conn = sqlite3.connect(uri, uri=True)
    # Text that is no UTF-8 comes through (as lone surrogates) to check_values, which
    # refuses its row naming the column, instead of failing the whole table's SELECT.
    conn.text_factory = _lenient_text
    return conn


def _lenient_text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _older(tables: set[str], table: str) -> str:
    """Why an ArchiveBox file lacks an ``api`` table, when it is 0.7's: most folders began there.

    ArchiveBox 0.7 and older had no ``api`` app, but their snapshots' table.
    """
    if not table.startswith("api_") or "core_snapshot" not in tables:
        return ""
    return (
        ": it is from ArchiveBox 0.7 or older, which kept no API tokens or webhooks "
        "(run ArchiveBox 0.8's archivebox init on its folder first)"
    )


def check_source(conn: sqlite3.Connection, source: Path) -> None:
    """Refuse, before anything is written, a file that is not an ArchiveBox 0.8 database."""
    not_it = f"{source} is not an ArchiveBox 0.8 database"
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    except sqlite3.DatabaseError as exc:
        raise ValidationError(f"{not_it}: {exc}") from None
    for table in ("django_migrations", *COLUMNS):
        if table not in tables:
            raise ValidationError(f"{not_it}: it has no {table} table{_older(tables, table)}")
    try:
        _check_tables(conn, not_it)
    except sqlite3.Error as exc:  # a damaged page, a view over a table that is gone
        raise ValidationError(f"{source} cannot be read: {exc}") from None


def _check_tables(conn: sqlite3.Connection, not_it: str) -> None:
    applied = {
        str(name)[:4]
        for (name,) in conn.execute("SELECT name FROM django_migrations WHERE app = 'api'")
    }
    missing = [number for number in _API_MIGRATIONS if number not in applied]
    if missing:
        raise ValidationError(
            f"{not_it}: the api app's migrations {', '.join(missing)} were not applied "
            "(older ArchiveBox versions keep no ABIDs; run ArchiveBox 0.8 on it first)"
        )
    for table, wanted in COLUMNS.items():
        have = {row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')}
        lacking = [column for column in wanted if column not in have]
        if lacking:
            raise ValidationError(f"{not_it}: {table} has no column {', '.join(lacking)}")


def read_rows(
    conn: sqlite3.Connection, source: Path, table: str, batch: int
) -> Iterator[list[sqlite3.Row]]:
    """The table's rows in the import's order, ``batch`` at a time: a big file is never
    held whole, and one failing to read (a damaged page) is a ValidationError."""
    columns = ", ".join(f'"{column}"' for column in COLUMNS[table])
    order = "id" if table == USERS else "created_at, id"
    try:
        cursor = conn.execute(f'SELECT {columns} FROM "{table}" ORDER BY {order}')
        while rows := cursor.fetchmany(batch):
            yield rows
    except sqlite3.Error as exc:  # a damaged page; a writer that took the lock meanwhile
        raise ValidationError(f"{source} cannot be read: {exc}") from None


def check_values(row: sqlite3.Row) -> None:
    """Refuse a row with a BLOB or with text that is no UTF-8, which Django never writes.

    A hook's ``last_response`` is what a receiver answered, whatever it was:
    ``response_text`` keeps it readable instead.
    """
    for column, value in zip(row.keys(), row, strict=True):
        if column == "last_response":
            continue
        if isinstance(value, bytes):
            raise RowRefused(f"{column} holds a BLOB")
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise RowRefused(f"{column} holds text that is not UTF-8") from None
            if "\x00" in value:  # PostgreSQL's text cannot hold it; SQLite's alike
                raise RowRefused(f"{column} holds a NUL character")


def response_text(value: Any) -> str:
    """A hook's last response as text, any bytes that are no UTF-8 replaced."""
    if value is None:
        return ""
    data = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
    return data.decode("utf-8", "replace")


# -- converting values ----------------------------------------------------------------------

#: The most characters of a value a note shows; the rest is left out (it may be 100 kB).
_SHOWN = 60
#: The most characters of a reason a note keeps (other modules' messages quote values too).
_REASON = 400


def quoted(value: Any) -> str:
    """A value as a note shows it: quoted (so a line break stays ``\\n``), and cut."""
    text = shown(value)
    if len(text) <= _SHOWN:
        return text
    return f"{text[: _SHOWN - 10]}… ({len(text)} characters)"


def named(value: Any) -> str:
    """An ABID, id or model path as it is, unless it is odd: then ``quoted``."""
    if isinstance(value, str) and value.isprintable() and " " not in value and value:
        return value if len(value) <= _SHOWN else quoted(value)
    return quoted(value)


def reason(text: str) -> str:
    """A reason for a note, cut; the start says what was wrong and where."""
    return text if len(text) <= _REASON else f"{text[: _REASON - 1]}…"


def stored_time(value: Any, column: str) -> datetime:
    """Django's ``YYYY-MM-DD HH:MM:SS[.ffffff]``, naive UTC, as tokenstore's aware UTC.

    The fraction is missing when the microsecond is 0; ``fromisoformat`` takes both.
    """
    if not isinstance(value, str):
        raise RowRefused(f"{column} is not a date and time: {quoted(value)}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise RowRefused(f"{column} is not a date and time: {quoted(value)}") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # an offset that moves it before year 1 or past 9999
        raise RowRefused(f"{column} is out of range: {quoted(value)}") from None


def stored_flag(value: Any, column: str) -> bool:
    """Django's 0 or 1; anything else (``'yes'``, ``' '``) is not read as true."""
    if value not in (0, 1) or isinstance(value, float):
        raise RowRefused(f"{column} is not 0 or 1: {quoted(value)}")
    return bool(value)


def stored_text(value: Any, column: str, max_length: int) -> str:
    """Text of a column Django bounds (``varchar(N)``), which SQLite does not enforce."""
    if not isinstance(value, str):
        raise RowRefused(f"{column} is not text: {quoted(value)}")
    if len(value) > max_length:
        raise RowRefused(f"{column} is {len(value)} characters, at most {max_length}")
    return value


def optional_time(value: Any, column: str) -> datetime | None:
    return None if value is None else stored_time(value, column)


def stored_uuid(value: Any) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise RowRefused(f"id {quoted(value)} is not a UUID") from None


def stored_abid(value: Any, prefix: str, sources: Callable[[], ABID]) -> str:
    """The row's ABID; a missing one (NULL, ``''``) made from ``sources`` as ArchiveBox does.

    The column is nullable, and ArchiveBox fills an empty one from the row's
    own values when it saves the row: the ABID it would show. Either is stored
    in its canonical spelling, as tokenstore's tables keep ABIDs and look them
    up: a lower-case one (the TypeID spelling) is the same ABID.
    """
    if value is None or value == "":
        try:
            return sources().canonical
        except InvalidABID as exc:  # a time before 1970, an endpoint that is no URL
            raise RowRefused(f"it has no ABID, and none can be made from it: {exc}") from None
    try:
        return ABID.parse(value, prefix=prefix).canonical
    except InvalidABID as exc:
        raise RowRefused(f"its ABID is not valid: {exc}") from None


def decrypter(cipher_key: str | None) -> Callable[[str], str] | None:
    """How django-signal-webhooks' encrypted auth tokens are read, given its CIPHER_KEY.

    The stored value is ``base64(nonce (12 bytes) || AES-GCM ciphertext || tag)``,
    the key ``base64decode(CIPHER_KEY)``.
    """
    if cipher_key is None:
        return None
    try:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        raise ValidationError(
            "decrypting webhook auth tokens (the cipher key) needs the cryptography "
            "package: pip install 'tokenstore[archivebox]'"
        ) from None
    try:
        key = base64.b64decode(cipher_key, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError("the cipher key is not base64 (SIGNAL_WEBHOOKS CIPHER_KEY)") from None
    if len(key) not in (16, 24, 32):
        raise ValidationError(
            f"the cipher key must decode to 16, 24 or 32 bytes for AES, got {len(key)}"
        )
    cipher = AESGCM(key)

    def decrypt(stored: str) -> str:
        try:
            data = base64.b64decode(stored, validate=True)
            plain = cipher.decrypt(data[:_NONCE_BYTES], data[_NONCE_BYTES:], None)
            return plain.decode("utf-8")
        except (binascii.Error, ValueError, InvalidTag):
            raise RowRefused(
                "its auth token cannot be decrypted with the given cipher key: set it "
                "again with webhooks.update(hook, auth_token=...), then enable the hook"
            ) from None

    return decrypt
