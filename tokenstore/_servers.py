"""Thread-per-connection servers with a bound on the threads and on each request's time,
and the host they listen on.

The receiver and the admin page serve each connection in a thread of its
own, as the standard library's threading servers do. Without a bound, a
flood of connections (or a client that opens many and sends nothing) grows
the process by a thread each. Here a connection beyond the bound is closed
at once, unanswered: the client may try again, and the ones being served
are not slowed. A client that trickles its request in, a byte just within
each read's timeout, would hold its thread for good: a request has a
deadline in all (``read_within``).
"""

from __future__ import annotations

import io
import socket
import threading
import time
from socketserver import StreamRequestHandler, ThreadingMixIn
from typing import Any

from ._credentials import refuse_secret
from ._errors import ValidationError
from ._inputs import check_text

#: Connections served at once; more are closed when accepted.
MAX_CONNECTIONS = 64


def check_listen_host(host: object, name: str, everywhere: str = "0.0.0.0 for all") -> None:
    """Refuse an empty host to listen on, ``[]`` too: the brackets of ``[::1]`` are dropped
    before the socket reads the rest, which would then listen on every address.

    Brackets go in a pair around the whole address or not at all: ``[::1`` was read
    as ``::1``, an address the user did not quite write.
    """
    text = check_text(host, name).strip()
    refuse_secret(text, name, "a host to listen on")  # a message about it would quote it
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if "[" in inner or "]" in inner:
        raise ValidationError(
            f"{name} {text!r} has a stray bracket: write an IPv6 address as ::1 or [::1]"
        )
    if not inner.strip():
        raise ValidationError(f"{name} is empty: name the address to listen on ({everywhere})")


class _Deadline(io.RawIOBase):
    """The request's side of a connection, read against one deadline for the whole request.

    Each read waits at most the socket's timeout, but a client that sends a
    byte just within it, again and again, would hold its thread for good. From
    the request's first byte, no read waits past ``limit`` seconds in all: then
    it times out, as the read of a silent client does. What arrived in time is
    still read after it (a handler may read the body once it has done other work).
    """

    def __init__(self, sock: socket.socket, limit: float) -> None:
        self.sock = sock
        self.limit = limit
        self.ends: float | None = None  # set when the first byte arrives

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        patience = self.sock.gettimeout()  # the handler's wait for one read
        wait = patience
        if self.ends is not None:
            wait = max(self.ends - time.monotonic(), 0.0)  # 0: only what has arrived
            wait = wait if patience is None else min(wait, patience)
        self.sock.settimeout(wait)
        try:
            count = self.sock.recv_into(buffer)
        except BlockingIOError:  # nothing had arrived: the deadline has passed
            raise TimeoutError("the request did not arrive within its deadline") from None
        finally:
            self.sock.settimeout(patience)
        if self.ends is None and count:
            self.ends = time.monotonic() + self.limit
        return count


def read_within(handler: StreamRequestHandler, limit: float) -> io.BufferedReader:
    """A reader for ``handler``'s request that gives it ``limit`` seconds in all (``_Deadline``),
    in place of the plain one ``StreamRequestHandler.setup`` made, which it closes."""
    handler.rfile.close()  # the socket stays open
    return io.BufferedReader(_Deadline(handler.connection, limit))


class BoundedThreads(ThreadingMixIn):
    """A ``ThreadingMixIn`` that serves at most ``max_connections`` connections at once.

    A connection's place is given back exactly once: by its thread when it
    ends, or by the serving thread when starting that thread failed. Ctrl-C
    can land in ``Thread.start()`` after the new thread has already run (on a
    busy machine); both giving it back made the semaphore raise a ValueError,
    which socketserver prints and swallows along with the KeyboardInterrupt.
    """

    daemon_threads = True
    max_connections = MAX_CONNECTIONS
    _connection_slots: threading.BoundedSemaphore | None = None  # made at the first connection
    # The connections holding a place, by id (a socket is alive, so its id unique, while it is
    # served); whoever pops one gives its place back. dict.pop is atomic.
    _holding: dict[int, bool] | None = None

    def process_request(self, request: Any, client_address: Any) -> None:
        slots = self._slots()
        if not slots.acquire(blocking=False):
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        self._held()[id(request)] = True
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._give_back(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._give_back(request)

    def _give_back(self, request: Any) -> None:
        """Free the place ``request`` holds, unless it was freed already."""
        if self._held().pop(id(request), False):
            self._slots().release()

    def _held(self) -> dict[int, bool]:
        """The connections holding a place; made by the serving thread at the first one."""
        if self._holding is None:
            self._holding = {}
        return self._holding

    def _slots(self) -> threading.BoundedSemaphore:
        """The free places; only the serving thread makes them, so no lock is needed here."""
        if self._connection_slots is None:
            self._connection_slots = threading.BoundedSemaphore(self.max_connections)
        return self._connection_slots
