"""Hearing other connections' commits on PostgreSQL: LISTEN on the channel capture notifies.

``dispatch --watch`` and ``store.wait_for_changes()`` wait for a notification
instead of polling. Listening needs a connection of its own (one inside a
transaction would hear nothing until it ends), made per thread when the
thread first waits and closed when the thread ends.

Between waits the server queues notifications for it, and once its socket
is full, in its own queue (8 GB, shared: when full, every commit that
notifies fails). So a thread that stops waiting while it lives must not keep
listening: a timer closes a listening connection no thread has waited on
for ``IDLE_LISTENING`` seconds, and its thread's next wait listens anew.
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


#: Seconds a listening connection may go without a wait before it is closed (checked as
#: often, so it is closed within twice that).
IDLE_LISTENING = 60.0


class ChangeListener:
    """Per thread, a connection that LISTENs, made by ``connect`` on the first wait."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]]) -> None:
        self._connect = connect
        self._local = threading.local()
        # Every thread's listening connection, and when its last wait ended (inf: waiting).
        self._listening: dict[psycopg.Connection[Any], float] = {}
        self._lock = threading.Lock()
        self._sweeper: threading.Timer | None = None  # runs ``_sweep`` while any listens

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
            self._mark(listener, float("inf"))
            while True:
                remaining = max(0.0, deadline - time.monotonic())
                notes = list(listener.notifies(timeout=remaining, stop_after=1))
                if any(note.pid != own_pid for note in notes):
                    return True
                if not notes or time.monotonic() >= deadline:
                    return False
        except driver().OperationalError:
            # The server ended the listening connection, or it was closed idle: what
            # it would have heard since is unknown, so something may have changed. The
            # next call listens anew.
            self.close()
            return True
        finally:
            self._mark(listener, time.monotonic())

    def _mark(self, listener: psycopg.Connection[Any] | None, since: float) -> None:
        with self._lock:
            if listener is not None and not listener.closed:
                self._listening[listener] = since
                self._arm()

    def _arm(self) -> None:
        """Sweep in ``IDLE_LISTENING`` seconds, unless a sweep is set; the caller holds the lock."""
        if self._sweeper is None and self._listening:
            self._sweeper = threading.Timer(IDLE_LISTENING, self._sweep)
            self._sweeper.name = "tokenstore-idle-listeners"
            self._sweeper.daemon = True
            self._sweeper.start()

    def _sweep(self) -> None:
        """Close the listening connections no thread has waited on for ``IDLE_LISTENING`` s."""
        cutoff = time.monotonic() - IDLE_LISTENING
        with self._lock:
            self._sweeper = None
            idle = [conn for conn, since in self._listening.items() if since < cutoff]
            for conn in idle:
                del self._listening[conn]
            self._arm()
        for conn in idle:
            conn.close()

    def forget(self) -> psycopg.Connection[Any] | None:
        """In a forked child: drop this thread's listening connection unclosed, and return it.

        It is the parent's session; the next wait here listens on one of its own.
        """
        listener = getattr(self._local, "conn", None)
        self._local = threading.local()
        self._listening = {}
        self._lock = threading.Lock()
        self._sweeper = None  # the parent's timer thread is not here
        return listener

    def close(self) -> None:
        """Close this thread's listening connection, if it waited."""
        listener = getattr(self._local, "conn", None)
        if listener is not None:
            with self._lock:
                self._listening.pop(listener, None)
            listener.close()
            self._local.conn = None
