"""A bound on failed sign-ins per client address, itself bounded in memory.

Tokens are too random to guess, but each sign-in looks one up: a client
that sends them without end has the page hash, query and answer for it, and
fills the request log. Past a burst of failures, an address is told to wait
(429) before its token is looked up. A sign-in that succeeds counts for
nothing, and waits for nothing.

Each address has a bucket that a failure fills by one and that drains at
``MAX_FAILURES`` per ``WINDOW``: ``MAX_FAILURES`` in a row are free, then one
more as each drains. The table keeps the ``MAX_ADDRESSES`` that failed last,
so a flood from ever new addresses costs no more memory than that.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections.abc import Callable

#: Failed sign-ins an address may make in a row before it must wait.
MAX_FAILURES = 10
#: The time in which an address's failures drain away (seconds): past the burst, one more
#: try every WINDOW / MAX_FAILURES seconds.
WINDOW = 60.0
#: The most addresses remembered; past it, those that failed longest ago are forgotten.
MAX_ADDRESSES = 10_000


def client_key(address: str) -> str:
    """What counts as one client: an IPv4 address (IPv4-mapped too), or the /64 network of
    an IPv6 one, since a single host is handed a /64 and may use any address of it."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:  # a mounting server that passes no address, or another kind
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class SignInThrottle:
    """Failed sign-ins per client address; safe to use from the threads of a threaded server."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = MAX_ADDRESSES,
    ) -> None:
        self.clock = clock
        self.max_addresses = max_addresses
        #: Per client: its bucket's level and when it was last filled, least recent first.
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def wait(self, address: str) -> int:
        """Seconds the address must wait before its next sign-in is tried; 0 if none."""
        with self._lock:
            over = self._level(client_key(address)) + 1 - MAX_FAILURES
        return math.ceil(over * WINDOW / MAX_FAILURES) if over > 0 else 0

    def failed(self, address: str) -> None:
        """Count a failed sign-in against the address."""
        key = client_key(address)
        with self._lock:
            level = self._level(key) + 1
            self._buckets.pop(key, None)  # to the end: the most recent failure
            self._buckets[key] = (level, self.clock())
            while len(self._buckets) > self.max_addresses:
                del self._buckets[next(iter(self._buckets))]

    def _level(self, key: str) -> float:
        level, at = self._buckets.get(key, (0.0, 0.0))
        return max(0.0, level - (self.clock() - at) * MAX_FAILURES / WINDOW)
