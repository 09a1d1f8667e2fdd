"""``tokenstore.migrate()``: copy a store to another backend (SQLite to PostgreSQL, or back).

Rows are copied as stored, ids and ABIDs included, so tokens keep working
(only their digests exist), hooks keep their secrets, and deliveries keep
their ``webhook-id``: a receiver that saw a message before the move drops
its retry after it. Everything is written in one transaction on the
destination, checked by counting, and committed only if the counts agree.
The address allowlist is the store's policy and is copied with it. Change
events and listeners belong to the processes of the old store and are not
copied; events the copy itself records are discarded with them.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import peewee

from ._allowlist import ALLOW_TABLE
from ._capture import EVENT_TABLE
from ._compat import peewee_errors
from ._errors import (
    DamagedRow,
    StoreError,
    StoreReadOnly,
    TokenstoreError,
    ValidationError,
    first_line,
)
from ._inputs import check_flag, check_path, check_text
from ._liveness import process_alive
from ._models import OWN_MODELS, SYSTEM_USERNAME, User
from ._postgres import PostgresDatabase
from ._postgres import open_database as open_postgres
from ._postgres_url import is_url, redacted_url
from ._rows import Loader, not_utf8, quote_name
from ._sqlite import SQLiteDatabase, open_database
from ._sqlite_file import LOG_FILES, refuse_log_name, unexpanded

#: Seconds a writer waits for the file's lock (or a server's) during the copy.
_BUSY_TIMEOUT = 30.0


class _NoDispatch:
    """Commit hooks that do nothing: copying rows is not a change to announce."""

    def on_begin(self, conn: Any) -> None:
        pass

    def nothing_to_claim(self, conn: Any) -> bool:
        return True

    def claim(self, conn: Any) -> None:
        return None

    def queue(self, claimed: Any) -> None:
        pass

    def after_commit(self, connection: Any) -> None:
        pass


def _location(value: object, what: str) -> str:
    """A ``postgresql://`` URL, or a file path the operating system can take."""
    if isinstance(value, str) and is_url(value):
        return check_text(value, what)
    return str(check_path(value, what))


def _same_database(
    src: SQLiteDatabase | PostgresDatabase, dst: SQLiteDatabase | PostgresDatabase
) -> bool:
    """Whether two URLs (``postgres://``, another host name, other parameters, another role)
    reach one store.

    The destination's session holds an advisory lock of a random key while
    the source's looks for it among the locks of its own database: only the
    same server and database has it (``pg_locks`` shows every role's locks,
    where ``pg_stat_activity`` hides when another role's session started).
    A store lives in its session's schema (the URL's search_path), so two
    schemas are two stores.
    """
    if not (isinstance(src, PostgresDatabase) and isinstance(dst, PostgresDatabase)):
        return False
    key = secrets.randbits(63)
    conn = dst.connection()
    (schema,) = conn.execute("SELECT current_schema() FROM pg_advisory_lock(%s)", (key,)).fetchone()
    try:
        found = (
            src.connection()
            .execute(
                "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND ((classid::bigint << 32) | objid::bigint) = %s AND objsubid = 1 "
                "AND current_schema() = %s",
                (key, schema),
            )
            .fetchone()
        )
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
    return found is not None


#: What link() says on a file system that has no hard links.
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}


def _same_file(source: str, dest: str) -> bool:
    """Whether two spellings (a symlink, a hard link, ``./``) name one file."""
    if is_url(source) or is_url(dest):
        return source == dest
    try:
        return Path(source).resolve() == Path(dest).resolve() or os.path.samefile(source, dest)
    except (OSError, RuntimeError):  # one is missing, or a symlink loop: not one file
        return False


def _companion(source: str, dest: str) -> str | None:
    """Which of the source's own -wal, -shm or -journal ``dest`` names, if any.

    While the source is open its -wal is an empty file, which would be taken
    for a new store: the copy would go into the source's live log, and be lost.
    """
    if is_url(source) or is_url(dest):
        return None
    try:
        real, wanted = str(Path(source).resolve()), Path(dest).resolve()
    except (OSError, RuntimeError):  # a symlink loop: opening it says so
        return None
    return next((s for s in LOG_FILES if Path(real + s) == wanted), None)


def _open(location: str, *, must_exist: bool) -> SQLiteDatabase | PostgresDatabase:
    if is_url(location):
        return open_postgres(location, _NoDispatch(), _BUSY_TIMEOUT, create=not must_exist)
    path = Path(location)
    try:
        missing = must_exist and not path.exists()
    except OSError as exc:  # a name too long, say
        raise StoreError(f"cannot open {location}: {exc.strerror}") from None
    if missing:
        note = unexpanded(path)
        raise StoreError(
            f"migrate: the source {location} does not exist{f': {note}' if note else ''}"
        )
    # A source that holds no tokenstore (or is a folder or a device: opening judges its
    # kind) is refused, not set up, as on PostgreSQL.
    return open_database(path, _NoDispatch(), _BUSY_TIMEOUT, create=not must_exist)


def _where(location: str) -> str:
    return redacted_url(location) if is_url(location) else location


@contextmanager
def _snapshot(src: SQLiteDatabase | PostgresDatabase) -> Iterator[None]:
    """One read transaction over the whole copy: a store in use moves as it was at one moment.

    Read table by table, a token could be copied whose user was created after
    the users were read.
    """
    conn = src.connection()
    if isinstance(src, PostgresDatabase):
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    else:
        conn.execute("BEGIN")  # deferred: the first read fixes what the copy sees
    try:
        yield
    finally:
        if src.writing_here():  # a connection the server ended has no transaction to end
            conn.execute("ROLLBACK")  # it wrote nothing


def _scalar(conn: Any, sql: str) -> int:
    (value,) = conn.execute(sql).fetchone()
    return int(value)


def _count(db: SQLiteDatabase | PostgresDatabase, table: str) -> int:
    return _scalar(db.connection(), f"SELECT count(*) FROM {quote_name(table)}")


def migrate(
    source: str | os.PathLike[str], dest: str | os.PathLike[str], *, force: bool = False
) -> dict[str, int]:
    """Copy every user, token, hook and delivery, and the address allowlist, to ``dest``.

    Each is an SQLite file or a ``postgresql://`` URL. A destination that
    holds anything but its ``system`` user (and allowlist entries the source
    has too) is refused unless ``force``, which empties it first. Returns the
    number of rows copied per table.
    """
    source, dest = _location(source, "source"), _location(dest, "destination")
    check_flag(force, "force")
    if _same_file(source, dest):
        raise StoreError("migrate: the source and the destination are the same")
    if companion := _companion(source, dest):
        raise StoreError(f"migrate: the destination is the source's {companion} file")
    if not is_url(dest):  # made aside under another name, then renamed: checked here
        refuse_log_name(Path(dest))
    src = _open(source, must_exist=True)
    try:
        # A new file is made aside and put in place complete, so a migrate that
        # fails never removes a copy another one put at the same name meanwhile.
        aside = None if is_url(dest) or os.path.lexists(dest) else _aside(dest)
        if aside is not None:
            _remove_abandoned_asides(Path(dest).parent)
        copied = None
        try:
            dst = _open(dest if aside is None else aside, must_exist=False)
        except TokenstoreError as exc:  # a folder that is missing or closed: named as given
            said = str(exc)
            if aside is not None:  # what '~' would have been (see unexpanded) too
                for made, given in (
                    (aside, dest),
                    (os.path.expanduser(aside), os.path.expanduser(dest)),
                ):
                    said = said.replace(made, given)
            raise type(exc)(said) from None
        try:
            if dst.fell_back is not None:  # asked to write, it opened read-only
                raise StoreReadOnly(f"migrate: {dst.fell_back}: nothing can be copied into it")
            if _same_database(src, dst):
                raise StoreError("migrate: the source and the destination are the same")
            with _snapshot(src):
                copied = _copy(src, dst, _where(dest), force)
        finally:
            dst.close()
            if aside is not None:
                try:
                    if copied is not None:
                        _put_in_place(aside, dest)
                finally:
                    for suffix in ("", *LOG_FILES):
                        Path(aside + suffix).unlink(missing_ok=True)
        return copied
    finally:
        src.close()


#: A copy made aside, or one of its logs: this host (a hash of its name), the pid that
#: makes it, a random part.
_ASIDE = re.compile(
    r"\.tokenstore-migrate-([0-9a-f]{8})-([0-9]{1,7})-[0-9a-f]{12}"
    f"(?:{'|'.join(map(re.escape, LOG_FILES))})?"
)


def _this_host() -> str:
    """This host's part of an aside's name: short, and only letters and digits whatever its name."""
    return hashlib.sha256(socket.gethostname().encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _aside(dest: str) -> str:
    """A name beside ``dest`` that no other call uses, short whatever ``dest`` is.

    It names this host and process, so a later migrate can tell a copy whose
    maker was killed (SIGKILL, a crash: no ``finally`` ran) from one in progress.
    """
    name = f".tokenstore-migrate-{_this_host()}-{os.getpid()}-{secrets.token_hex(6)}"
    return str(Path(dest).parent / name)


def _remove_abandoned_asides(folder: Path) -> None:
    """Delete the copies, and their logs, that a migrate killed midway left in ``folder``.

    Each can be as large as the store it copied, and nothing else would ever
    remove them. Only this host's are judged, by their maker's pid: a process
    on another host sharing the folder cannot be asked, so its copies stay.
    """
    host = _this_host()
    try:
        names = os.listdir(folder)
    except OSError:
        return  # a folder that cannot be listed is reported by the open that follows
    for name in names:
        found = _ASIDE.fullmatch(name)
        if found is None or found[1] != host or process_alive(int(found[2])):
            continue
        try:
            (folder / name).unlink()
        except FileNotFoundError:
            pass  # another migrate removed it first
        except OSError:
            return  # a folder this process may not change: the copy is refused there anyway


def _put_in_place(aside: str, dest: str) -> None:
    """Give the finished copy its name, unless something took that name meanwhile."""
    taken = StoreError(
        f"migrate: {dest} was created by someone else during the copy; nothing was written"
    )
    try:
        os.link(aside, dest)  # never replaces a file, unlike a rename
    except FileExistsError:
        raise taken from None
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise StoreError(f"migrate: cannot name the copy {dest}: {exc.strerror}") from None
        # A file system without hard links (FAT, some network shares): a rename, once
        # the name is seen free; only a copy finishing in that instant could be replaced.
        if os.path.lexists(dest):
            raise taken from None
        os.rename(aside, dest)


def _copy(
    src: SQLiteDatabase | PostgresDatabase,
    dst: SQLiteDatabase | PostgresDatabase,
    where: str,
    force: bool,
) -> dict[str, int]:
    tables = [model._meta.table_name for model in OWN_MODELS]
    copied: dict[str, int] = {}
    with _refused(f"{ALLOW_TABLE} cannot be read"):  # an entry edited into text no UTF-8
        allowed = src.connection().execute(f"SELECT entry, added_at FROM {ALLOW_TABLE}").fetchall()
    with dst.write(quiet=True) as conn:
        held = {table: _count(dst, table) for table in tables}
        # Entries the source also has are not lost (``tokenstore init`` adds
        # $TOKENSTORE_WEBHOOK_ALLOW's); any other would be dropped by the copy.
        with _refused(f"{ALLOW_TABLE} of {where} cannot be read"):
            entries = {row[0] for row in conn.execute(f"SELECT entry FROM {ALLOW_TABLE}")}
        held[ALLOW_TABLE] = len(entries - {row[0] for row in allowed})
        if not force and _holds_data(conn, dst, held):
            raise StoreError(
                f"migrate: {where} already holds data "
                f"({', '.join(f'{n} {t}' for t, n in held.items() if n)}); "
                "use --force (force=True) to replace it"
            )
        last_event = _scalar(conn, f"SELECT coalesce(max(id), 0) FROM {EVENT_TABLE}")
        for model in reversed(OWN_MODELS):
            table = model._meta.table_name
            # An application's table may keep its rows' users (ON DELETE RESTRICT).
            with _refused(f"force cannot empty {table} in {where}"):
                conn.execute(f"DELETE FROM {quote_name(table)}")
                _count(dst, table)  # on PostgreSQL, a refusal comes back now
        for model in OWN_MODELS:
            copied[model._meta.table_name] = _copy_table(src, dst, conn, model)
        copied[ALLOW_TABLE] = _copy_allowlist(dst, conn, allowed)
        # The inserts above may have been captured (an enabled hook watches users):
        # they are not changes anybody made.
        conn.execute(dst.sql(f"DELETE FROM {EVENT_TABLE} WHERE id > ?"), (last_event,))
        if isinstance(dst, PostgresDatabase):
            dst.sync_identity("tokenstore_user", "id")
        for table, count in copied.items():
            if _count(dst, table) != count or _count(src, table) != count:
                raise StoreError(
                    f"migrate: {table} has {_count(src, table)} rows in the source but "
                    f"{_count(dst, table)} were written; nothing was committed"
                )
    return copied


def _holds_data(conn: Any, dst: SQLiteDatabase | PostgresDatabase, held: dict[str, int]) -> bool:
    """Whether the destination holds more than a new store does: its ``system`` user."""
    users = User._meta.table_name
    if any(count for table, count in held.items() if table != users):
        return True
    others = conn.execute(
        dst.sql(f"SELECT count(*) FROM {quote_name(users)} WHERE username <> ?"),
        (SYSTEM_USERNAME,),
    ).fetchone()[0]
    return int(others) > 0


def _copy_table(
    src: SQLiteDatabase | PostgresDatabase,
    dst: SQLiteDatabase | PostgresDatabase,
    conn: Any,
    model: type[peewee.Model],
) -> int:
    """Copy one table's rows as stored; only booleans need converting (0/1 or true/false).

    Each row is first read as tokenstore reads it, so a row edited outside
    tokenstore is refused naming its column, not copied for the new store to
    choke on. What the destination itself refuses (a key to a row that is not
    there, a status it does not know) is named by table and row, never with
    the driver's detail, which quotes the whole row, secrets and all.
    """
    fields = model._meta.sorted_fields
    flags = [i for i, f in enumerate(fields) if isinstance(f, peewee.BooleanField)]
    table = model._meta.table_name
    loader = Loader(model)
    columns = loader.columns
    insert = dst.sql(
        f"INSERT INTO {quote_name(table)} ({columns}) VALUES ({', '.join('?' * len(fields))})"
    )
    cursor = src.connection().execute(f"SELECT {columns} FROM {quote_name(table)} ORDER BY 1")
    count = 0
    while rows := _fetch(src, cursor, model):
        for row in rows:
            _check(loader, row)
            values = list(row)
            for i in flags:
                values[i] = None if values[i] is None else bool(values[i])
            with _refused(f"row {values[0]!r} of {table} cannot be copied"):
                conn.execute(insert, values)
        count += len(rows)
    with _refused(f"{table} cannot be copied"):  # on PostgreSQL, a refusal comes back now
        _count(dst, table)
    return count


def _copy_allowlist(dst: SQLiteDatabase | PostgresDatabase, conn: Any, rows: list[Any]) -> int:
    """Copy the file's address policy: the hooks that rely on it would be blocked without it."""
    conn.execute(f"DELETE FROM {ALLOW_TABLE}")
    insert = dst.sql(f"INSERT INTO {ALLOW_TABLE} (entry, added_at) VALUES (?, ?)")
    with _refused(f"{ALLOW_TABLE} cannot be copied"):
        for row in rows:
            conn.execute(insert, tuple(row))
        _count(dst, ALLOW_TABLE)  # on PostgreSQL, a refusal comes back now
    return len(rows)


def _fetch(src: SQLiteDatabase | PostgresDatabase, cursor: Any, model: type[peewee.Model]) -> Any:
    """The next rows; text that is no UTF-8 (SQLite cannot hand it over) is a DamagedRow."""
    try:
        with peewee_errors:  # the driver's own errors as peewee's
            return cursor.fetchmany(500)
    except peewee.OperationalError as exc:
        damaged = not_utf8(model, exc, src.connection())
        if damaged is None:
            raise
        raise DamagedRow(f"migrate: {damaged}; nothing was written") from None


def _check(loader: Loader[Any], row: Any) -> None:
    """Refuse a row tokenstore itself could not read (a blob, text in a time or a flag)."""
    try:
        loader.values(row)
    except DamagedRow as exc:
        raise DamagedRow(f"migrate: {exc}; nothing was written") from None


@contextmanager
def _refused(what: str) -> Iterator[None]:
    """The destination's refusal in the block as a ValidationError: ``what``, and why."""
    try:
        with peewee_errors:  # the driver's own errors as peewee's
            yield
    except ValidationError as exc:  # NUL in text, a number out of range, on PostgreSQL
        raise ValidationError(f"migrate: {what} ({exc}); nothing was written") from None
    except peewee.DatabaseError as exc:
        if isinstance(exc, TokenstoreError):  # the store's own faults: disk full, lost server
            raise
        raise ValidationError(f"migrate: {what} ({first_line(exc)}); nothing was written") from None
