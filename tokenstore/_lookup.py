"""Looking up a hook's host name without waiting past the attempt's deadline.

``getaddrinfo`` cannot be interrupted, and the name server a hook's name
leads to is a third party: one that has gone quiet holds the asking thread
for the resolver's own timeouts (5 s per try and server by default), which
the delivery deadline's watched sockets cannot cut short. So a name is looked
up on a thread of its own, and the sending thread waits for the answer only
as long as it may.

A lookup given up on keeps running until the resolver answers or gives up
itself. Attempts at a name still being looked up wait for that lookup rather
than start another, and at most ``MAX_WAITING`` names are looked up at once:
a dead name server costs a few threads, never one per attempt. An attempt
past that limit is refused with ``ResolverBusy``: the name was never asked
about, so the refusal is this process's, not the receiver's.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from typing import Any

#: How many names may be waiting on the resolver at once; past that an attempt fails at once.
MAX_WAITING = 8

_Answer = list[tuple[Any, ...]]


class ResolverBusy(Exception):
    """``MAX_WAITING`` other names are waiting on the resolver: this one is not asked about.

    Not a ``socket.gaierror``, which says what became of the name: a send
    refused for this is no failure of its receiver. Being no ``OSError``, it
    passes through urllib3 and requests unwrapped.
    """


class _Lookup:
    """One call of ``getaddrinfo``, run on its own thread; its answer or error when done."""

    def __init__(self, key: tuple[str, int]) -> None:
        self.key = key
        self.done = threading.Event()
        self.answer: _Answer = []
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            self.answer = socket.getaddrinfo(*self.key, type=socket.SOCK_STREAM)
        except Exception as exc:  # gaierror, or a name IDNA cannot encode: the caller's to see
            self.error = exc
        finally:
            with _lock:
                if _waiting.get(self.key) is self:
                    del _waiting[self.key]
            self.done.set()


_lock = threading.Lock()
_waiting: dict[tuple[str, int], _Lookup] = {}


def _forget_lookups() -> None:
    """In a forked child: the parent's lookup threads (and the lock's holder) are not here."""
    global _lock
    _lock = threading.Lock()
    _waiting.clear()


os.register_at_fork(after_in_child=_forget_lookups)


def getaddrinfo(host: str, port: int, timeout: float | None) -> _Answer:
    """``socket.getaddrinfo(host, port, type=SOCK_STREAM)``, answered within ``timeout`` seconds.

    Raises ``socket.gaierror`` (EAI_AGAIN) when the resolver has not answered
    by then (``None``: no limit), and ``ResolverBusy`` when too many names are
    already waiting on it. An IP address is no question for a name server and
    is answered on the calling thread.
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    key = (host, port)
    with _lock:
        lookup = _waiting.get(key)
        if lookup is None:
            if len(_waiting) >= MAX_WAITING:
                raise ResolverBusy(
                    f"the name resolver has yet to answer {MAX_WAITING} earlier lookups"
                )
            lookup = _Lookup(key)
            threading.Thread(target=lookup.run, name="tokenstore-name-lookup", daemon=True).start()
            _waiting[key] = lookup  # once started: its end (which takes the lock) removes it
    if not lookup.done.wait(timeout):
        raise socket.gaierror(
            socket.EAI_AGAIN, f"the name resolver did not answer within {timeout:g} s"
        )
    if lookup.error is not None:
        raise lookup.error
    return lookup.answer
