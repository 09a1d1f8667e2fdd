"""The store's file on disk, before SQLite opens it: its kind, its mode, its state.

A store file holds secrets, so it must be a regular file readable by its
owner only; it must be SQLite, of a version this code understands, and
whole. All of this is judged with ``stat`` and a read-only connection, so a
refused file is left as it was (its mode too: only a file that opens is made
private), a FIFO is never opened, and a file nobody may write can still be read.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import stat
from pathlib import Path

from ._backend import FELL_BACK
from ._errors import StoreCorrupt, StoreError, StoreIOError, StoreLocked, StoreReadOnly
from ._rows import quote_name

logger = logging.getLogger("tokenstore.store")

_SQLITE_HEADER = b"SQLite format 3\x00"

#: The files SQLite keeps beside a WAL-mode database, which hold its data too.
COMPANIONS = ("-wal", "-shm")

#: Every file SQLite keeps beside a database, named after it (a rollback journal too).
LOG_FILES = (*COMPANIONS, "-journal")

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _companion(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _stat_regular(path: Path) -> os.stat_result | None:
    """A file's status, None if missing; anything but a regular file is refused.

    Only ``stat`` is used: opening a FIFO to read its header would block.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot open {path}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise StoreError(f"{path} is a directory, not a tokenstore file")
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        raise StoreError(f"{path} is {kind}, not a tokenstore file")
    return st


def make_private(path: Path, st: os.stat_result) -> None:
    """Take group and other permissions off a store file, or refuse it.

    The file holds hook secrets and credentials, so it must not stay
    readable by others; where the mode cannot be changed (another owner, a
    read-only mount, an immutable file), opening it is refused.
    """
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077:
        return
    try:
        os.chmod(path, mode & 0o700)
    except OSError as exc:
        raise StoreError(
            f"{path} is open to group or others (mode {mode:04o}) and cannot be made "
            f"private: {exc.strerror}; run `chmod 600 {path}` as its owner"
        ) from None
    logger.warning(
        "%s was open to group or others (mode %04o); tightened to %04o",
        path,
        mode,
        mode & 0o700,
    )


def make_files_private(path: Path) -> None:
    """Make the store file and the companions beside it private (see ``make_private``).

    Run once the file is accepted, before SQLite writes to it; the companions
    are looked at again, since reading the file may have made them.
    """
    for file in (path, *(_companion(path, suffix) for suffix in COMPANIONS)):
        st = _stat_regular(file)
        if st is not None:
            make_private(file, st)


def connect_uri(path: Path, read_only: bool) -> str:
    """The URI SQLite opens ``path`` by (a URI takes any file name, percent-encoded).

    A WAL-mode file opened read-only needs its ``-shm`` file; in a folder
    nobody may write that file cannot be made, and no writer can be at work
    there either, so the file is opened as immutable instead.
    """
    uri = path.resolve().as_uri()
    if not read_only:
        return f"{uri}?mode=rw"
    folder_writable = os.access(path.parent, os.W_OK)
    if not folder_writable and not _companion(path, "-shm").exists():
        return f"{uri}?mode=ro&immutable=1"
    return f"{uri}?mode=ro"


def writable(path: Path) -> bool:
    """Whether this process may change the file and create its companions beside it."""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


def _damaged(path: Path, what: str) -> StoreCorrupt:
    return StoreCorrupt(
        f'{path} {what}; check it with `sqlite3 {path} "PRAGMA integrity_check"` '
        "and restore it from a backup"
    )


def refuse_log_name(path: Path) -> None:
    """Refuse to make a store named as the -wal, -shm or -journal of a database that exists:
    SQLite would take the new file for that database's log, and it could not be read."""
    for suffix in LOG_FILES:
        name = path.name.removesuffix(suffix)
        if name not in ("", path.name) and path.with_name(name).exists():
            owner = path.with_name(name)
            raise StoreError(f"{path} is the {suffix} file of {owner}: name another file")


def check_file(path: Path, schema_version: int, ours: frozenset[str], busy_timeout: float) -> int:
    """Read a file's schema version without writing to it; refuse what is not ours to open.

    Refused: directories, FIFOs, devices and sockets (never opened), files
    that are not SQLite, files of a newer tokenstore, and files that are
    damaged or lack tables their version promises. ``schema_version`` is
    the version this code writes, ``ours`` the tables a file of that version
    holds. A lock another connection holds is waited for up to
    ``busy_timeout``, as every statement of the store waits. Nothing is
    changed: a file that opens is made private afterwards (see
    ``make_files_private``).
    """
    st = _stat_regular(path)
    for suffix in COMPANIONS:
        _stat_regular(_companion(path, suffix))
    if st is None:
        return 0
    if st.st_size:
        try:
            with path.open("rb") as f:
                header = f.read(len(_SQLITE_HEADER))
        except OSError as exc:  # a file this user may not read, say
            raise StoreError(f"cannot open {path}: {exc.strerror}") from None
        if header != _SQLITE_HEADER:
            raise StoreError(
                f"{path} is not an SQLite database (its first bytes are not an SQLite header)"
            )
    if not st.st_size:
        return 0
    try:
        conn = sqlite3.connect(connect_uri(path, read_only=True), timeout=busy_timeout, uri=True)
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            present = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
            for table in ours & present:  # reads each table's first page
                conn.execute(f"SELECT 1 FROM {quote_name(table)} LIMIT 1").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if exc.sqlite_errorname in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
            raise _damaged(path, f"is corrupt ({exc})") from None
        if exc.sqlite_errorname == "SQLITE_BUSY":
            raise StoreLocked(
                f"{path}: the database stayed locked for {busy_timeout:g} s "
                "(SQLITE_BUSY during open)"
            ) from None
        raise StoreIOError(f"cannot read {path}: {exc}") from None
    if version < 0:
        raise StoreError(
            f"{path} has schema version {version}, which no tokenstore writes: "
            "it is not a tokenstore file"
        )
    if version > schema_version:
        raise StoreError(
            f"{path} has schema version {version}, newer than this tokenstore understands "
            f"({schema_version}); upgrade tokenstore to open it"
        )
    clash = sorted(ours & present) if version == 0 else []
    if clash:  # creating the schema would fail on them, half-way through its tables
        raise StoreError(
            f"{path} has tables named like tokenstore's ({', '.join(clash)}) but no tokenstore "
            "schema version: another program's, or its PRAGMA user_version was reset"
        )
    # Older versions lack what their migrations add; those are checked as they migrate.
    missing = sorted(ours - present) if version == schema_version else []
    if missing:
        raise _damaged(path, f"has schema version {version} but lacks {', '.join(missing)}")
    return int(version)


def prepare_file(
    path: Path,
    schema_version: int,
    ours: frozenset[str],
    *,
    busy_timeout: float,
    create: bool,
    read_only: bool,
) -> tuple[int, str | None, bool]:
    """Judge, and if need be create, the file SQLite is to open: (version, fell_back, created).

    ``fell_back`` says why a file asked to be written must be opened
    read-only (this process cannot write it or its folder), said in a
    warning once the file is accepted (a refusal is one message);
    ``created`` is whether this call made the file.
    """
    version = check_file(path, schema_version, ours, busy_timeout)
    if create and not version:  # missing, or empty as a live database's -wal can be
        refuse_log_name(path)
    fell_back: str | None = None
    created = False
    if not path.exists():
        if read_only or not create:
            note = unexpanded(path)
            raise StoreError(
                f"no store at {path}: {note}"
                if note
                else f"no store at {path} (run `tokenstore init`)"
            )
        created = create_private(path)
    elif version == 0 and (read_only or not create):  # another program's file, say
        raise StoreError(
            f"{path} holds no tokenstore (and create=False or read_only); "
            "`tokenstore init` sets one up in it"
        )
    elif not read_only and not writable(path):
        fell_back = f"{path} or its folder is not writable here"
    if (read_only or fell_back) and version < schema_version:
        raise StoreReadOnly(
            f"{path} has schema version {version} and needs version {schema_version}: "
            "open it once with write access to set it up"
        )
    make_files_private(path)
    if fell_back:
        logger.warning(FELL_BACK, fell_back)
    return version, fell_back, created


def unexpanded(path: Path) -> str | None:
    """What to say of a missing path that begins with ``~``, which no shell expanded.

    Quoted (``--db '~/app.sqlite3'``), or read from a file, it is a folder
    named ``~`` in the working folder; the user looks in their home folder.
    """
    if not str(path).startswith("~"):
        return None
    said = "'~' is not expanded here, as a shell expands it only unquoted at the start of a word"
    meant = os.path.expanduser(path)
    return said if meant == str(path) else f"{said}; did you mean {meant}?"


def create_private(path: Path) -> bool:
    """Create the file mode 0600 before SQLite does, so secrets are never world-readable.

    Returns whether this call made it (False: another process just did).
    """
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        if path.is_symlink() and not path.exists():  # O_EXCL never follows a link
            raise StoreError(
                f"cannot create {path}: it is a symbolic link to a missing file"
            ) from None
        return False
    except OSError as exc:
        missing = exc.errno == errno.ENOENT and not path.parent.is_dir()
        why = f"its folder {path.parent} does not exist" if missing else exc.strerror
        note = unexpanded(path)
        raise StoreError(f"cannot create {path}: {why}{f'; {note}' if note else ''}") from None
    os.close(fd)
    return True


def remove_new_file(path: Path) -> None:
    """Remove a file just created that could not be set up, and what SQLite made beside it."""
    for each in (path, *(_companion(path, suffix) for suffix in LOG_FILES)):
        with contextlib.suppress(FileNotFoundError):
            each.unlink()
