"""A total deadline for one delivery attempt, whatever the receiver does.

Socket timeouts bound each wait, not the whole: a receiver that sends its
status line, headers or body one byte at a time resets them with every byte
and can hold the sender for as long as it likes. So each attempt runs under a
deadline, and every socket it uses is *watched*: when the deadline passes, a
single background thread shuts those sockets down, which ends whatever read
or write the sending thread is blocked in, HTTPS included.

The sending thread sets the deadline (``limit``); the connection classes of
the guarded session report the sockets they use (``watch``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Attempt:
    """One attempt's deadline (a ``time.monotonic()`` value) and the sockets it uses."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._done = False
        self._lock = threading.Lock()

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            if self.expired:
                _shut(sock)
            elif sock not in self._sockets:
                self._sockets.append(sock)

    def expire(self) -> None:
        """Called by the reaper at the deadline: stop every read and write of this attempt."""
        with self._lock:
            if self._done:
                return
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def finish(self) -> None:
        """The attempt is over: its sockets go back to the pool and must be left alone."""
        with self._lock:
            self._done = True
            self._sockets.clear()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # closed already, or never connected
        sock.shutdown(socket.SHUT_RDWR)


class _Reaper:
    """One daemon thread that expires the attempts whose deadline has passed.

    It looks a few times a second while attempts are running, so a deadline
    is enforced within ``TICK`` of passing; sending threads never wake it, and
    it ends once nothing has run for ``IDLE`` seconds (the next attempt starts
    it again).
    """

    TICK = 0.1
    IDLE = 5.0

    def __init__(self) -> None:
        self._active: set[Attempt] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, attempt: Attempt) -> None:
        with self._lock:
            self._active.add(attempt)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="tokenstore-delivery-deadlines", daemon=True
                )
                self._thread.start()

    def forget_thread(self) -> None:
        """In a forked child: the parent's watcher thread (and its lock's holder) is not here."""
        self._active = set()
        self._lock = threading.Lock()
        self._thread = None

    def discard(self, attempt: Attempt) -> None:
        with self._lock:
            self._active.discard(attempt)

    def _run(self) -> None:
        idle_since = time.monotonic()
        while True:
            time.sleep(self.TICK)
            now = time.monotonic()
            with self._lock:
                due = [attempt for attempt in self._active if attempt.deadline <= now]
                self._active.difference_update(due)
                if self._active:
                    idle_since = now
                elif now - idle_since > self.IDLE:
                    self._thread = None
                    return
            for attempt in due:
                attempt.expire()


_reaper = _Reaper()
os.register_at_fork(after_in_child=_reaper.forget_thread)
_local = threading.local()


@contextmanager
def limit(seconds: float) -> Iterator[Attempt]:
    """Run one attempt on this thread with at most ``seconds`` in all."""
    attempt = Attempt(time.monotonic() + seconds)
    _reaper.add(attempt)
    _local.attempt = attempt
    try:
        yield attempt
    finally:
        _local.attempt = None
        attempt.finish()
        _reaper.discard(attempt)


def watch(sock: socket.socket) -> None:
    """Put a socket the current attempt uses under its deadline (no attempt: nothing)."""
    attempt: Attempt | None = getattr(_local, "attempt", None)
    if attempt is not None:
        attempt.watch(sock)


def remaining(default: float) -> float:
    """The current attempt's time left, at most ``default`` (no attempt: ``default``)."""
    attempt: Attempt | None = getattr(_local, "attempt", None)
    return default if attempt is None else min(default, attempt.remaining())
