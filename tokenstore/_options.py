"""The options of ``tokenstore.open()``, with their defaults, in one place.

The store, its services and the ``tokenstore`` command all read the defaults
from here, so a default changed here changes everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any

from ._credentials import DEFAULT_TOKEN_PREFIX, check_prefix
from ._errors import ValidationError
from ._inputs import (
    check_flag,
    check_header_name,
    check_int,
    check_seconds,
    check_span,
    check_text,
)
from ._netguard import AddressGuard
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
    - ``busy_timeout``: seconds a writer waits for the lock (at least 5); on
      PostgreSQL, any statement waiting for another session's lock.
    - ``keep_deliveries``: finished deliveries (delivered, dead) older than
      this are deleted, a batch at a time, by the retry path and by
      ``webhooks.prune()``; each hook's latest is kept (``None``: keep all).
    - ``listener_timeout``: a process registered as a listener that has claimed
      nothing for this long is removed, and the events waiting only for it
      are dropped, with a warning in the log.
    - ``dispatch_on_open``: fire events left behind by dead processes at once
      (deliveries wait for ``dispatch()`` or ``webhooks.deliver_due()``).
    - ``create``: make the file if it is missing; with False a missing file
      is an error, so a mistyped path does not silently start an empty store.
    - ``read_only``: open without ever writing (no schema, no listener, no
      dispatch, no ``last_used_at``); writes raise StoreError. A file or
      folder this process cannot write is opened read-only anyway.

    Every option is checked here, types included (True is not a count), so a
    bad one fails at ``open()`` naming itself rather than later, elsewhere.
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
    create: bool = True
    read_only: bool = False

    def __post_init__(self) -> None:
        check_prefix(self.token_prefix)
        if self.max_tokens_per_user is not None:
            check_int(self.max_tokens_per_user, "max_tokens_per_user", minimum=1)
        check_header_name(self.api_key_header, "api_key_header")
        allow: Iterable[str] = self.webhook_allow
        if isinstance(allow, str):
            allow = [allow]
        elif isinstance(allow, bytes | bytearray) or not isinstance(allow, Iterable):
            raise ValidationError(
                f"webhook_allow must be a list of hosts or networks, got {type(allow).__name__}"
            )
        allow = tuple(check_text(entry, "webhook_allow entry") for entry in allow)
        AddressGuard(allow)  # refuses malformed entries now, naming them
        object.__setattr__(self, "webhook_allow", allow)
        check_seconds(self.connect_timeout, "connect_timeout")
        check_seconds(self.read_timeout, "read_timeout")
        check_seconds(self.delivery_deadline, "delivery_deadline")
        check_seconds(self.sync_budget, "sync_budget", allow_minimum=True)
        check_int(self.disable_after_failures, "disable_after_failures", minimum=1)
        check_span(self.disable_after, "disable_after", allow_zero=True)
        check_span(self.secret_grace, "secret_grace", allow_zero=True)
        check_span(self.claim_timeout, "claim_timeout", allow_zero=False)
        check_seconds(self.busy_timeout, "busy_timeout", minimum=5, allow_minimum=True)
        if self.keep_deliveries is not None:
            check_span(self.keep_deliveries, "keep_deliveries", allow_zero=True)
        check_span(self.listener_timeout, "listener_timeout", allow_zero=False)
        for name in ("dispatch_on_open", "create", "read_only"):
            check_flag(getattr(self, name), name)

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
