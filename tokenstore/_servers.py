"""Thread-per-connection servers with a bound on the threads.

The receiver and the admin page serve each connection in a thread of its
own, as the standard library's threading servers do. Without a bound, a
flood of connections (or a client that opens many and sends nothing) grows
the process by a thread each. Here a connection beyond the bound is closed
at once, unanswered: the client may try again, and the ones being served
are not slowed.
"""

from __future__ import annotations

import threading
from socketserver import ThreadingMixIn
from typing import Any

#: Connections served at once; more are closed when accepted.
MAX_CONNECTIONS = 64


class BoundedThreads(ThreadingMixIn):
    """A ``ThreadingMixIn`` that serves at most ``max_connections`` connections at once."""

    daemon_threads = True
    max_connections = MAX_CONNECTIONS
    _connection_slots: threading.BoundedSemaphore | None = None  # made at the first connection

    def process_request(self, request: Any, client_address: Any) -> None:
        slots = self._slots()
        if not slots.acquire(blocking=False):
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots().release()

    def _slots(self) -> threading.BoundedSemaphore:
        """The free places; only the serving thread makes them, so no lock is needed here."""
        if self._connection_slots is None:
            self._connection_slots = threading.BoundedSemaphore(self.max_connections)
        return self._connection_slots
