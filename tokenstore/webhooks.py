"""``store.webhooks``: outbound hooks, their deliveries, and the calls that manage them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import Store


class Webhooks:
    """Create, change and inspect outbound webhooks; send what is due."""

    def __init__(
        self,
        store: Store,
        allow: Iterable[str] = (),
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
    ) -> None:
        self.store = store

    def close(self) -> None:
        """Close this thread's HTTP session."""
