"""The options of ``tokenstore.open()``, with their defaults, in one place.

The store, its services and the ``tokenstore`` command all read the defaults
from here, so a default changed here changes everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any

from ._credentials import DEFAULT_TOKEN_PREFIX
from ._errors import ValidationError
from ._tokens import DEFAULT_API_KEY_HEADER


@dataclass(frozen=True, kw_only=True)
class Options:
    """How a store behaves; ``tokenstore.open(path, **options)`` takes these by name.

    - ``token_prefix``: the scannable prefix of new API token secrets.
    - ``max_tokens_per_user``: at most this many live tokens per user; creating
      one more is refused (``None``: no limit).
    - ``api_key_header``: the header ``tokens.token_from_request`` reads first.
    - ``webhook_allow``: hosts or networks hooks may reach although the
      address guard refuses them by default (``["127.0.0.1/32"]``).
    - ``connect_timeout`` / ``read_timeout``: seconds, per wait of a webhook request.
    - ``delivery_deadline``: seconds one delivery attempt may take in all:
      connecting, sending, and reading the status line, headers and body. An
      attempt past it is recorded as failed and retried.
    - ``sync_budget``: seconds the writing thread may spend, after a commit,
      sending the webhooks that commit produced. What does not fit is left to
      the retry path (``dispatch()``, ``webhooks.deliver_due()``, the retry
      thread, ``tokenstore dispatch --watch``). A hook whose last attempt
      failed is never tried from the writing thread.
    - ``disable_after_failures`` / ``disable_after``: a hook failing that many
      times in a row, over at least that long, is disabled.
    - ``secret_grace``: how long a rotated-out signing secret still signs.
    - ``claim_timeout``: after this long, another process may take over change
      events a live process claimed but never finished.
    - ``busy_timeout``: seconds a writer waits for the lock (at least 5).
    - ``keep_deliveries``: finished deliveries (delivered, dead) older than
      this are deleted, a batch at a time, by the retry path and by
      ``webhooks.prune()``; each hook's latest is kept (``None``: keep all).
    - ``listener_timeout``: a process registered as a listener that has claimed
      nothing for this long is removed, and the events waiting only for it
      are dropped, with a warning in the log.
    - ``dispatch_on_open``: fire events left behind by dead processes at once
      (deliveries wait for ``dispatch()`` or ``webhooks.deliver_due()``).
    """

    token_prefix: str = DEFAULT_TOKEN_PREFIX
    max_tokens_per_user: int | None = None
    api_key_header: str = DEFAULT_API_KEY_HEADER
    webhook_allow: tuple[str, ...] = ()
    connect_timeout: float = 3.0
    read_timeout: float = 10.0
    delivery_deadline: float = 10.0
    sync_budget: float = 5.0
    disable_after_failures: int = 10
    disable_after: timedelta = timedelta(days=1)
    secret_grace: timedelta = timedelta(hours=24)
    claim_timeout: timedelta = timedelta(hours=1)
    busy_timeout: float = 10.0
    keep_deliveries: timedelta | None = timedelta(days=30)
    listener_timeout: timedelta = timedelta(hours=1)
    dispatch_on_open: bool = True

    def __post_init__(self) -> None:
        allow: Iterable[str] = self.webhook_allow
        if isinstance(allow, str):
            allow = [allow]
        object.__setattr__(self, "webhook_allow", tuple(allow))
        if self.busy_timeout < 5:
            raise ValidationError(
                f"busy_timeout must be at least 5 seconds, got {self.busy_timeout}"
            )

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> Options:
        """The options given by name; an unknown name is refused with the known ones listed."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValidationError(
                f"unknown option {', '.join(unknown)}; options are: {', '.join(sorted(known))}"
            )
        return cls(**options)
