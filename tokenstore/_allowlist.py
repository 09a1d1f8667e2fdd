"""The file's webhook allowlist: one address policy for every process that opens it.

Which addresses hooks may reach is kept in the file (``tokenstore_webhook_allow``)
rather than in each process's settings, so the application, the
``tokenstore`` command and a dispatcher elsewhere judge a hook's endpoint
alike: a delivery one of them would block is blocked by all of them, and a
"blocked" failure is never one process's opinion. ``webhook_allow=`` given to
``tokenstore.open`` (or ``--allow``) adds to the list.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime

from ._backend import Backend
from ._errors import ValidationError
from ._netguard import AddressGuard
from ._rows import refused_as_not_utf8
from ._times import format_time

#: Where the list is kept (``tokenstore.migrate`` copies it with the store).
ALLOW_TABLE = "tokenstore_webhook_allow"

logger = logging.getLogger("tokenstore.webhooks")


class AllowList:
    """Keeps ``guard`` in step with the file's list: read again for each check, and at most
    a second before each send."""

    def __init__(self, db: Backend, guard: AddressGuard, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.guard = guard
        self.clock = clock
        self._entries: tuple[str, ...] = ()
        self._read_at = float("-inf")  # time.monotonic() of the last read
        # Sorted here, by code point: PostgreSQL's ORDER BY follows the database's collation.
        self._select = f"SELECT entry FROM {ALLOW_TABLE}"
        # SQLite only: an entry edited into text that is no UTF-8, which sqlite3 cannot read.
        self._select_bytes = f"SELECT CAST(entry AS BLOB) FROM {ALLOW_TABLE}"
        self._insert = db.sql(
            f"INSERT INTO {ALLOW_TABLE} (entry, added_at) VALUES (?, ?) ON CONFLICT DO NOTHING"
        )
        self._delete = db.sql(f"DELETE FROM {ALLOW_TABLE} WHERE entry = ?")

    def entries(self) -> list[str]:
        """The entries in force, as stored."""
        self.refresh()
        return list(self._entries)

    def refresh(self, at_most_every: float = 0.0) -> None:
        """Read the list again (another process may have changed it).

        With ``at_most_every`` (seconds), a list read that recently stands: a
        sender on its hot path judges by the list as it was a moment ago.
        """
        now = time.monotonic()
        if now - self._read_at < at_most_every:
            return
        self._read_at = now
        conn = self.db.connection()
        try:
            stored = [row[0] for row in conn.execute(self._select)]
        except Exception as exc:
            if refused_as_not_utf8(exc) is None:
                raise
            raw = [row[0] for row in conn.execute(self._select_bytes)]
            stored = [entry.decode() for entry in raw if _utf8(entry)]
            logger.error(
                "%s: %d entries hold text that is not UTF-8 and are ignored; the rows "
                "were changed outside tokenstore",
                ALLOW_TABLE,
                len(raw) - len(stored),
            )
        # A row edited by hand (a blob, a malformed name) is ignored like one that is no
        # UTF-8: it failed every send after its commit, and open() refused the store.
        entries = tuple(sorted(entry for entry in stored if _readable(entry)))
        if len(entries) < len(stored):
            logger.error(
                "%s: %d entries are no address, network or host name and are ignored; "
                "the rows were changed outside tokenstore",
                ALLOW_TABLE,
                len(stored) - len(entries),
            )
        if entries != self._entries:
            self.guard.replace(entries)
            self._entries = entries

    def add(self, entries: Iterable[str]) -> list[str]:
        """Allow these entries from now on, in every process; returns the list."""
        canonical = [AddressGuard.canonical(entry) for entry in entries]  # all valid, or none
        stamp = format_time(self.clock())
        with self.db.write(quiet=True) as conn:
            for entry in canonical:
                conn.execute(self._insert, (entry, stamp))
        return self.entries()

    def remove(self, entry: str) -> list[str]:
        """Stop allowing an entry, in every process; returns the list.

        A row edited by hand into another spelling of the entry (``LOCALHOST``)
        is applied as the entry, so it goes with it.
        """
        target = AddressGuard.canonical(entry)
        self.refresh()
        spellings = {target, *(e for e in self._entries if AddressGuard.canonical(e) == target)}
        with self.db.write(quiet=True) as conn:
            for spelling in spellings:
                conn.execute(self._delete, (spelling,))
        return self.entries()


def _readable(entry: object) -> bool:
    """Whether a stored entry is one the guard can apply (tokenstore writes no other)."""
    if not isinstance(entry, str):
        return False
    try:
        AddressGuard.canonical(entry)
    except ValidationError:
        return False
    return True


def _utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True
