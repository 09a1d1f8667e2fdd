"""The retry thread: the retry path run in the background, for applications that want that.

It drives anything with the retry path's calls (``Webhooks``), so it knows
nothing of deliveries itself.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from ._backend import Backend
from ._inputs import check_seconds

logger = logging.getLogger("tokenstore.webhooks")


class RetryPath(Protocol):
    """What the thread runs: ``store.webhooks``."""

    db: Backend

    def deliver_due(self) -> int: ...

    def close(self) -> None: ...


class RetryThread(threading.Thread):
    """Sends due retries in the background for applications that want that."""

    def __init__(self, webhooks: RetryPath, interval: float) -> None:
        super().__init__(name="tokenstore-webhook-retries", daemon=True)
        self.webhooks = webhooks
        self.interval = interval
        self._stopping = threading.Event()

    def run(self) -> None:
        """Send what is due every ``interval`` until ``stop()``; a failed round is logged."""
        try:
            while not self._stopping.wait(self.interval):
                try:
                    self.webhooks.deliver_due()
                except Exception:
                    logger.exception("sending due webhook retries failed")
        finally:
            self.webhooks.close()
            self.webhooks.db.close()  # this thread's connection

    def stop(self, timeout: float | None = None) -> None:
        """Ask the thread to end, and wait up to ``timeout`` seconds (None: until it has).

        Called from the thread itself (a signal receiver, say), it only asks.
        """
        if timeout is not None:
            timeout = check_seconds(timeout, "timeout", allow_minimum=True)
        self._stopping.set()
        if self is not threading.current_thread():
            self.join(timeout)
