"""``tokenstore.open()`` and the ``Store``: the one place the parts are put together.

The store opens the backend, then builds each service and hands it only the
collaborators it uses: the database, the clock, the model registry, the
address guard. Nothing below points back at the store.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import peewee

from ._capture import CaptureSpec, model_ref
from ._dispatch import Dispatcher
from ._errors import StoreError, ValidationError
from ._inputs import check_flag, check_seconds
from ._models import OWN_MODELS, SYSTEM_USERNAME, OutboundWebhook, User
from ._netguard import AddressGuard
from ._options import Options
from ._outbox import Outbox
from ._policy import RetryPolicy
from ._registry import Registry
from ._sending import Sender
from ._sqlite import SCHEMA_VERSION, SQLiteDatabase, open_database
from ._tokens import Tokens, Users
from ._webhooks import HookValidator, Webhooks

__all__ = ["SCHEMA_VERSION", "Store", "open"]

logger = logging.getLogger("tokenstore.store")


class Store:
    """One tokenstore file: its database, its models, tokens, users and webhooks.

    Use ``tokenstore.open()`` rather than the constructor. The Store binds
    tokenstore's models (and the application's, via ``register``) to its
    database, so one process works with one open store at a time.

    ``options`` are those of ``Options``; ``clock`` is a function returning
    the current aware UTC time, for tests that move time by hand.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], datetime] | None = None,
        **options: Any,
    ) -> None:
        self.options = opts = Options.from_kwargs(options)
        if clock is not None and not callable(clock):
            raise ValidationError(f"clock must be a function, got {type(clock).__name__}")
        if not isinstance(path, str | os.PathLike) or not isinstance(os.fspath(path), str):
            raise ValidationError(
                f"the store path must be a str or a Path, got {type(path).__name__}"
            )
        self.path = Path(path)
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        self.registry = Registry(OWN_MODELS)
        self.dispatcher = Dispatcher(self.registry, SQLiteDatabase, self.clock, opts.claim_timeout)
        self.db = open_database(
            self.path,
            self.dispatcher,
            opts.busy_timeout,
            create=opts.create,
            read_only=opts.read_only,
        )
        self.db.bind(list(OWN_MODELS), bind_refs=False, bind_backrefs=False)
        system = User.get_or_none(User.username == SYSTEM_USERNAME)
        if system is None:
            raise StoreError(f"{self.path}: the {SYSTEM_USERNAME!r} user is missing")
        self.system_user: User = system
        self.db.system_user_id = system.id

        guard = AddressGuard(opts.webhook_allow)
        OutboundWebhook.validator = HookValidator(self.registry, guard)
        self.outbox = Outbox(
            self.db,
            self.registry,
            self.clock,
            Sender(guard, opts.connect_timeout, opts.read_timeout),
            RetryPolicy(opts.disable_after_failures, opts.disable_after),
        )
        self.dispatcher.add_consumer(self.outbox.on_events, self.outbox.wants_events)
        self.users = Users()
        self.tokens = Tokens(
            self.db,
            self.users,
            self.clock,
            prefix=opts.token_prefix,
            max_tokens_per_user=opts.max_tokens_per_user,
            header=opts.api_key_header,
        )
        self.webhooks = Webhooks(self.db, self.outbox, self.clock, opts.secret_grace)
        if opts.dispatch_on_open and not self.db.read_only:
            # events only: opening a file should not wait on the network
            self.dispatch(deliver=False)

    def __repr__(self) -> str:
        return f"<Store {str(self.path)!r}>"

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close this thread's connection (other threads close theirs as they end).

        The store stops counting as a listener, so capture stops on its account.
        Signing secrets past their grace are erased and the WAL is emptied into
        the file, so erased and deleted secrets leave no copy in either.
        """
        self.webhooks.close()
        if not self.db.is_closed() and not self.db.read_only:
            try:
                self.webhooks.erase_expired_secrets()
                with self.db.write(quiet=True) as conn:
                    self.dispatcher.unregister(conn)
                self.db.checkpoint_before_close()
            except peewee.DatabaseError as exc:  # a read-only or vanished file still closes
                logger.warning("could not unregister %s as a listener: %s", self.path, exc)
        self.db.close()

    def atomic(self) -> Any:
        """A transaction (a savepoint when nested); changes dispatch as the outermost commits."""
        return self.db.atomic()

    def ref(self, model: type[peewee.Model]) -> str:
        """The name hooks use for a model: ``module.ClassName``."""
        return model_ref(model)

    def register(self, model: type[peewee.Model]) -> type[peewee.Model]:
        """Bind an application model to this store, create its table and capture its changes.

        Usable as a class decorator. Registering again is harmless and
        refreshes the triggers to match the model's current fields. A
        read-only store only binds the model, for reading.
        """
        if not (isinstance(model, type) and issubclass(model, peewee.Model)):
            raise ValidationError(f"register() takes a peewee model class, got {model!r}")
        spec = CaptureSpec.of(model)
        model.bind(self.db, bind_refs=False, bind_backrefs=False)
        added = self.registry.add(model)  # known before the commit below claims its events
        if self.db.read_only:  # readable as it is: no table or trigger can be made
            return model
        try:
            with self.db.atomic():
                self.db.create_tables([model], safe=True)
                self.db.install_capture(spec)
        except BaseException:
            if added:
                self.registry.remove(model)
            raise
        return model

    def model_for_ref(self, ref: str | type[peewee.Model]) -> type[peewee.Model]:
        """The registered model a hook's ``ref`` names; unknown refs list the known ones."""
        return self.registry.for_ref(ref)

    @property
    def models(self) -> dict[str, type[peewee.Model]]:
        """The registered models by table name, tokenstore's own included."""
        return {m._meta.table_name: m for m in self.registry}

    def dispatch(self, deliver: bool = True) -> int:
        """Fire events nobody has fired yet: other processes' writes, shell edits, crashes.

        With ``deliver`` it then sends the webhook deliveries that are due,
        those a crashed process committed but never sent among them.
        Returns how many events this call claimed. Dispatch also happens by
        itself after every commit made through this store.
        """
        check_flag(deliver, "deliver")
        before = self.dispatcher.claimed_count()
        with self.db.atomic():  # its commit claims what is unclaimed, then fires it
            conn = self.db.connection()
            self.dispatcher.forget_dead_listeners(conn)
            self.dispatcher.release(conn, self.dispatcher.stale_claimants(conn))
            self.dispatcher.drop_unheard(conn)
        claimed = self.dispatcher.claimed_count() - before
        if deliver:
            self.webhooks.deliver_due()
        return claimed

    def wait_for_changes(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for another connection to commit; True if one did."""
        return self.db.wait_for_changes(check_seconds(timeout, "timeout", allow_minimum=True))


def open(path: str | os.PathLike[str], **options: Any) -> Store:
    """Open (creating if needed) the tokenstore file at ``path``; ``options`` are ``Options``'."""
    return Store(path, **options)
