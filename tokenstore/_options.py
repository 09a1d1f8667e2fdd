"""The options of ``tokenstore.open()``, with their defaults, in one place.

The store, its services and the ``tokenstore`` command all read the defaults
from here, so a default changed here changes everywhere.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any

from ._credentials import DEFAULT_TOKEN_PREFIX, check_prefix
from ._errors import ValidationError
from ._inputs import (
    check_flag,
    check_header_name,
    check_int,
    check_items,
    check_seconds,
    check_span,
    check_text,
)
from ._netguard import AddressGuard
from ._request_token import DEFAULT_API_KEY_HEADER


@dataclass(frozen=True, kw_only=True)
class Options:
    """How a store behaves; ``tokenstore.open(path, **options)`` takes these by name.

    ``help(tokenstore.open)`` says what each does, with its default and unit.
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
        given: object = self.webhook_allow
        if isinstance(given, str):  # one entry
            given = [given]
        items = check_items(given, "webhook_allow", "hosts or networks")
        allow = tuple(check_text(entry, "webhook_allow entry") for entry in items)
        for entry in allow:  # refuses malformed entries now, naming them (a secret unnamed)
            AddressGuard.canonical(entry)
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
    def from_kwargs(cls, options: dict[str, Any], beside: Collection[str] = ()) -> Options:
        """The options given by name; an unknown name is refused with the known ones listed.

        ``beside`` names the caller's other keywords (``open()``'s ``clock``),
        listed too: the message is the caller's whole list of what it takes.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            takes = sorted(known | set(beside))
            close = difflib.get_close_matches(unknown[0], takes, n=1)
            hint = f" (did you mean {close[0]}?)" if len(unknown) == 1 and close else ""
            raise ValidationError(
                f"unknown option {', '.join(unknown)}{hint}; options are: {', '.join(takes)}"
            )
        return cls(**options)
