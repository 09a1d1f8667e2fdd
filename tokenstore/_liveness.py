"""Telling the processes that still claim and listen from those that stopped.

Each process names itself (``host:pid:random``) in the events it claims and
in the listener table. One that dies leaves both behind: the events it
claimed would never fire, and its listener row would keep capture on, with
events piling up for nobody. Every process's housekeeping looks for such
names: a pid on this host is asked about directly; on any host, a claim held
past ``claim_timeout``, or a listener that claimed nothing for
``listener_timeout``, counts as abandoned.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from ._capture import EVENT_TABLE, LISTENER_TABLE, Connection
from ._rows import refused_as_not_utf8
from ._times import format_time

logger = logging.getLogger("tokenstore.dispatch")


def process_alive(pid: int) -> bool:
    """Whether a process of this host with that pid still runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child its parent has not reaped yet is as dead as it gets
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _new_claimant() -> str:
    """This process's name in claims and the listener table: stale once its pid is gone."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Liveness:
    """This process's name, and the judging and forgetting of everyone else's.

    ``sql`` adapts a statement to the backend's placeholders.
    """

    def __init__(
        self,
        sql: Callable[[str], str],
        clock: Callable[[], datetime],
        claim_timeout: timedelta,
        listener_timeout: timedelta,
    ) -> None:
        self.clock = clock
        self.claim_timeout = claim_timeout
        self.listener_timeout = listener_timeout
        self.claimant = _new_claimant()
        self._claimants = (
            f"SELECT claimed_by, min(claimed_at) FROM {EVENT_TABLE} "
            "WHERE claimed_by IS NOT NULL GROUP BY claimed_by"
        )
        self._release = sql(f"UPDATE {EVENT_TABLE} SET claimed_by = NULL WHERE claimed_by = ?")
        self._listeners = f"SELECT claimant, coalesce(seen, since) FROM {LISTENER_TABLE}"
        self._rewind_seen = sql(
            f"UPDATE {LISTENER_TABLE} SET seen = ? WHERE coalesce(seen, since) > ?"
        )
        self._rewind_claims = sql(f"UPDATE {EVENT_TABLE} SET claimed_at = ? WHERE claimed_at > ?")
        self._forget = sql(f"DELETE FROM {LISTENER_TABLE} WHERE claimant = ?")

    def start_afresh(self) -> None:
        """In a forked child: a name of its own, not the parent's.

        Under the parent's name, the child's claims would outlive it (the
        parent's pid is alive) and its ``close()`` would unregister the parent.
        """
        self.claimant = _new_claimant()

    def forget(self, conn: Connection, claimant: str) -> None:
        """Take a listener out of the table: this process leaving, or one found dead."""
        conn.execute(self._forget, (claimant,))

    def gone(self, claimant: str) -> bool:
        """Whether a claimant's process has ended (on this host; others cannot be asked)."""
        if claimant == self.claimant:
            return False
        claim_host, _, rest = claimant.partition(":")
        pid = rest.partition(":")[0]
        return claim_host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid))

    def stale_claimants(self, conn: Connection) -> list[str]:
        """Claimants whose process is gone (or has held its claim past the timeout)."""
        cutoff = format_time(self.clock() - self.claim_timeout)
        return [
            claimant
            for claimant, oldest in conn.execute(self._claimants)
            if claimant != self.claimant and (self.gone(claimant) or oldest < cutoff)
        ]

    def release(self, conn: Connection, claimants: Iterable[str]) -> None:
        """Hand abandoned claims back, so the enclosing transaction claims them anew."""
        for claimant in claimants:
            conn.execute(self._release, (claimant,))

    def rewind(self, conn: Connection) -> None:
        """Count heartbeats and claims stamped after now from now.

        They were stamped by a clock since set back (an NTP step); judged as
        they are, a listener or claimant that died meanwhile on another host
        would be taken for alive until the clock caught up, a year on maybe,
        and its events would wait that long.
        """
        now = self.clock()
        stamps = (format_time(now), format_time(now + timedelta(minutes=1)))
        conn.execute(self._rewind_seen, stamps)
        conn.execute(self._rewind_claims, stamps)

    def _forget_not_utf8(self, conn: Connection) -> None:
        """Remove listener rows holding text that is no UTF-8 (SQLite): no listener wrote them."""
        stored = (
            f"CAST(claimant AS BLOB), CAST(coalesce(seen, since) AS BLOB) FROM {LISTENER_TABLE}"
        )
        for claimant, seen in conn.execute(f"SELECT {stored}").fetchall():
            try:
                claimant.decode(), seen.decode()
            except UnicodeDecodeError:
                logger.error("%s: a row in text that is no UTF-8 is removed", LISTENER_TABLE)
                conn.execute(
                    f"DELETE FROM {LISTENER_TABLE} WHERE CAST(claimant AS BLOB) = ?", (claimant,)
                )

    def forget_dead_listeners(self, conn: Connection) -> None:
        """Listeners whose process ended, or that claimed nothing for ``listener_timeout``.

        Such a listener no longer keeps capture on; once no listener is left,
        its backlog is dropped (the dispatcher's ``drop_unheard``).
        """
        silent_since = format_time(self.clock() - self.listener_timeout)
        try:
            listeners = conn.execute(self._listeners).fetchall()
        except Exception as exc:
            if refused_as_not_utf8(exc) is None:
                raise
            self._forget_not_utf8(conn)
            listeners = conn.execute(self._listeners).fetchall()
        for claimant, seen in listeners:
            if claimant == self.claimant:
                continue
            if not (isinstance(claimant, str) and isinstance(seen, str)):  # no listener wrote it
                logger.error("%s: a row that is no listener is removed", LISTENER_TABLE)
                self.forget(conn, claimant)
            elif self.gone(claimant):
                self.forget(conn, claimant)
            elif seen < silent_since:
                logger.warning(
                    # Shown quoted and cut: the table may have been written by hand.
                    "listener %.200r has claimed nothing since %.40r; removed, and the events "
                    "waiting only for it are dropped",
                    claimant,
                    seen,
                )
                self.forget(conn, claimant)
