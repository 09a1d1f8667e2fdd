"""Hearing other connections' commits on PostgreSQL: LISTEN on the channel capture notifies.

``dispatch --watch`` and ``store.wait_for_changes()`` wait for a notification
instead of polling. Listening needs a connection of its own (one inside a
transaction would hear nothing until it ends), made per thread when the
thread first waits and closed when the thread ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._compat import CloserOf
from ._postgres_ddl import CHANNEL
from ._postgres_driver import driver

if TYPE_CHECKING:
    import psycopg


class ChangeListener:
    """Per thread, a connection that LISTENs, made by ``connect`` on the first wait."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]]) -> None:
        self._connect = connect
        self._local = threading.local()

    def wait(self, own_pid: int, timeout: float) -> bool:
        """Whether another session committed captured changes since the last call.

        The first call starts listening; later calls return as soon as a
        notification arrives (or has arrived since), or False after
        ``timeout`` seconds. Notifications of ``own_pid`` (this thread's own
        session) do not count, as on SQLite.
        """
        deadline = time.monotonic() + timeout
        listener = getattr(self._local, "conn", None)
        try:
            if listener is None:
                listener = self._local.conn = self._connect()
                self._local.closer = CloserOf(listener)  # goes with the thread, closing it
                listener.execute(f"LISTEN {CHANNEL}")
            while True:
                remaining = max(0.0, deadline - time.monotonic())
                notes = list(listener.notifies(timeout=remaining, stop_after=1))
                if any(note.pid != own_pid for note in notes):
                    return True
                if not notes or time.monotonic() >= deadline:
                    return False
        except driver().OperationalError:
            # The server ended the listening connection: what it would have heard since
            # is unknown, so something may have changed. The next call listens anew.
            self.close()
            return True

    def forget(self) -> psycopg.Connection[Any] | None:
        """In a forked child: drop this thread's listening connection unclosed, and return it.

        It is the parent's session; the next wait here listens on one of its own.
        """
        listener = getattr(self._local, "conn", None)
        self._local = threading.local()
        return listener

    def close(self) -> None:
        """Close this thread's listening connection, if it waited."""
        listener = getattr(self._local, "conn", None)
        if listener is not None:
            listener.close()
            self._local.conn = None
