"""``tokenstore.open()`` and the ``Store``: the one place the parts are put together.

The store opens the backend, then builds each service and hands it only the
collaborators it uses: the database, the clock, the model registry, the
address guard. Nothing below points back at the store.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import peewee

from ._abid_sources import check_sources
from ._allowlist import AllowList
from ._backend import Backend
from ._capture import CaptureSpec, model_ref
from ._compat import current_connection, forget_connection
from ._credentials import quoted
from ._dispatch import Dispatcher
from ._errors import StoreError, ValidationError
from ._fork import keep, on_fork_in_child
from ._hook_rules import HookValidator
from ._inputs import check_flag, check_path, check_seconds, check_text
from ._liveness import Liveness
from ._m2m import Relation
from ._models import (
    OWN_MODELS,
    SYSTEM_USERNAME,
    ABIDModel,
    BaseModel,
    OutboundWebhook,
    User,
    WebhookDelivery,
)
from ._netguard import AddressGuard
from ._options import Options
from ._outbox import Outbox
from ._outcomes import Outcomes
from ._policy import RetryPolicy
from ._postgres import PostgresDatabase
from ._postgres import open_database as open_postgres
from ._postgres_url import is_url, redacted_url
from ._registry import Registry
from ._retry_path import RetryPath
from ._sending import Sender
from ._sqlite import SQLiteDatabase, open_database
from ._sqlite_schema import SCHEMA_VERSION
from ._times import checked_clock
from ._tokens import Tokens
from ._users import Users
from ._webhooks import Webhooks

__all__ = ["SCHEMA_VERSION", "Store", "open"]

if TYPE_CHECKING:
    from ._archivebox import ArchiveBoxImport

logger = logging.getLogger("tokenstore.store")

#: The models applications build theirs on: they are classes to subclass, not tables.
_BASES = (peewee.Model, BaseModel, ABIDModel)


@dataclass(frozen=True)
class Dispatched:
    """What one ``store.dispatch()`` did.

    ``events`` it fired; webhook attempts it made, ``delivered`` or
    ``failed``; and events ``waiting`` for a process that has a model for
    their table (by table), which this process cannot fire.
    """

    events: int
    delivered: int
    failed: int
    waiting: dict[str, int]


class Store:
    """One tokenstore database: its models, tokens, users and webhooks.

    Use ``tokenstore.open()`` rather than the constructor. The Store binds
    tokenstore's models (and the application's, via ``register``) to its
    database, so one process works with one open store at a time.

    ``path`` is an SQLite file or a ``postgresql://`` URL; ``options`` are
    those ``help(tokenstore.open)`` lists; ``clock`` is a function returning
    the current aware time, for tests that move time by hand. Each answer is
    checked: a naive time, another type, a time before 1970 or within 100
    years of ``datetime.max``, or an exception from the clock raises
    ValidationError (at ``open()`` already, which reads it once).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], datetime] | None = None,
        **options: Any,
    ) -> None:
        self.options = opts = Options.from_kwargs(options, beside=("clock",))
        if clock is not None and not callable(clock):
            raise ValidationError(f"clock must be a function, got {type(clock).__name__}")
        self.clock: Callable[[], datetime] = partial(datetime.now, UTC)
        if clock is not None:
            self.clock = checked_clock(clock)
            self.clock()  # a clock that cannot answer fails here, before anything is opened
        self._registry = Registry(OWN_MODELS)
        self.db: SQLiteDatabase | PostgresDatabase
        #: The SQLite file (None on PostgreSQL).
        self.path: Path | None
        if isinstance(path, str) and is_url(path):
            self.path = None
            #: Where the store is, for people: the file, or the URL without its password.
            self.location = redacted_url(path.strip())
            self._liveness = Liveness(
                PostgresDatabase.sql, self.clock, opts.claim_timeout, opts.listener_timeout
            )
            self._dispatcher = Dispatcher(
                self._registry, PostgresDatabase, self.clock, self._liveness
            )
            self.db = open_postgres(
                path,
                self._dispatcher,
                opts.busy_timeout,
                create=opts.create,
                read_only=opts.read_only,
            )
        else:
            self.path = check_path(path, "the store path")
            self.location = str(self.path)
            self._liveness = Liveness(
                SQLiteDatabase.sql, self.clock, opts.claim_timeout, opts.listener_timeout
            )
            self._dispatcher = Dispatcher(
                self._registry, SQLiteDatabase, self.clock, self._liveness
            )
            self.db = open_database(
                self.path,
                self._dispatcher,
                opts.busy_timeout,
                create=opts.create,
                read_only=opts.read_only,
            )
        try:
            self._assemble(opts)
        except BaseException:  # a file refused once open (no system user, say) is not left open
            self.db.close()
            raise
        on_fork_in_child(self._start_afresh)

    def _start_afresh(self) -> None:
        """In a child forked from this process: the parent's connections stay the parent's.

        They are dropped unclosed (see ``_fork``), with the cursors, HTTP
        sessions, claimant name and listener registration made on them (the
        token uses not yet written are dropped by ``Tokens`` itself); the
        child opens its own on first use. Retry threads are not carried over.
        """
        keep(current_connection(self.db))
        forget_connection(self.db)
        if isinstance(self.db, PostgresDatabase):
            keep(self.db.forget_listener())
        self._dispatcher.start_afresh()
        self._outbox.sender.start_afresh()

    def _assemble(self, opts: Options) -> None:
        """Bind the models, check the store's own rows, and build each service on the database."""
        self.db.bind(list(OWN_MODELS), bind_refs=False, bind_backrefs=False)
        system = User.get_or_none(User.username == SYSTEM_USERNAME)
        if system is None:
            raise StoreError(f"{self.location}: the {SYSTEM_USERNAME!r} user is missing")
        self.system_user: User = system
        self.db.system_user_id = system.id

        guard = AddressGuard()
        allowlist = AllowList(self.db, guard, self.clock)
        if opts.webhook_allow and not self.db.read_only:  # a read-only store sends nothing
            allowlist.add(opts.webhook_allow)  # into the file: every process applies it
        allowlist.refresh()
        self._hook_validator = HookValidator(self._registry, allowlist)
        OutboundWebhook.validator = self._hook_validator
        self._outcomes = Outcomes(
            self.db, RetryPolicy(opts.disable_after_failures, opts.disable_after)
        )
        self._outbox = Outbox(
            self.db,
            self._registry,
            self.clock,
            Sender(guard, opts.connect_timeout, opts.read_timeout, opts.delivery_deadline),
            self._outcomes,
            opts.sync_budget,
            allowlist,
        )
        self._dispatcher.add_consumer(self._outbox.on_events, self._outbox.wants_events)
        self._users = Users()
        self._tokens = Tokens(
            self.db,
            self._users,
            self.clock,
            prefix=opts.token_prefix,
            max_tokens_per_user=opts.max_tokens_per_user,
            header=opts.api_key_header,
        )
        self._webhooks = Webhooks(
            self.db,
            self._outbox,
            RetryPath(self._outbox),
            self._outcomes,
            allowlist,
            self.clock,
            opts.secret_grace,
            opts.keep_deliveries,
        )
        if opts.dispatch_on_open and not self.db.read_only:
            self.dispatch(deliver=False)  # opening a file does not wait on the network

    def __repr__(self) -> str:
        return f"<Store {self.location!r}>"

    @property
    def users(self) -> Users:
        """The users tokens and hooks belong to."""
        self._in_charge()
        return self._users

    @property
    def tokens(self) -> Tokens:
        """API tokens: issue, authenticate, revoke, list."""
        self._in_charge()
        return self._tokens

    @property
    def webhooks(self) -> Webhooks:
        """Outbound hooks, their deliveries and the address allowlist."""
        self._in_charge()
        return self._webhooks

    def _superseded_by(self) -> Backend | None:
        """The database of a store opened later on another file or database, if any.

        peewee binds a model class to one database, and each store binds
        tokenstore's models to its own as it opens. A later store on the same
        file or database changes nothing; one on another would have this
        store's calls read and write that store's rows.
        """
        bound: Backend = User._meta.database
        if bound is self.db or bound.identity == self.db.identity:
            return None
        return bound

    def _in_charge(self) -> None:
        """Refuse a call that would go to another store's rows (see ``_superseded_by``)."""
        later = self._superseded_by()
        if later is not None:
            raise StoreError(
                f"{self.location}: a store opened later in this process, on {later.location}, "
                "has tokenstore's models bound to it (one store per process): "
                "open this one again (tokenstore.open) to use it"
            )

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
        the file, so erased and deleted secrets leave no copy in either. Retry
        threads started by ``webhooks.start_retry_thread`` are stopped. Inside
        a transaction of this thread it raises StoreError and does nothing: the
        connection cannot close under it, and its rollback would undo the rest.
        """
        if self.db.in_transaction():
            raise StoreError(
                f"{self.location}: close() was called inside a transaction (atomic()); "
                "close the store once the block has ended"
            )
        self._webhooks.stop_retry_threads()
        self._webhooks.close()
        self._tokens._flush(retry=False)
        if not self.db.is_closed() and not self.db.read_only:
            try:
                if self._superseded_by() is None:  # the models would reach the other store
                    self._webhooks.erase_expired_secrets()
                with self.db.write(quiet=True) as conn:
                    self._dispatcher.unregister(conn)
            except peewee.DatabaseError as exc:  # a read-only or vanished file still closes
                logger.warning("could not unregister %s as a listener: %s", self.location, exc)
            self.db.checkpoint_before_close()
        self.db.close()

    def atomic(self) -> Any:
        """A transaction (a savepoint when nested); changes dispatch as the outermost commits."""
        return self.db.atomic()

    def ref(self, model: type[peewee.Model]) -> str:
        """The name hooks use for a model: ``module.ClassName``."""
        if not (isinstance(model, type) and issubclass(model, peewee.Model)):
            raise ValidationError(f"ref() takes a peewee model class, got {quoted(model)}")
        return model_ref(model)

    def register(self, model: type[peewee.Model]) -> type[peewee.Model]:
        """Bind an application model to this store, create its table and capture its changes.

        Usable as a class decorator. Registering again is harmless and
        refreshes the triggers, the signals' instances and the webhook bodies
        to match the model's current fields. Each of
        its many-to-many fields (its own, and the backrefs of other models'
        fields) gets its join table and triggers that capture every relation
        added or removed (``signals.m2m_changed``, hooks with M2M). A
        read-only store only binds the model, for reading. Refused, with
        nothing written: an ABIDModel whose prefix or sources are wrong (a
        source naming no field or attribute), a DeferredForeignKey not
        resolved yet, a table that lacks some of the model's columns, a view,
        and relations ``docs/m2m.md`` lists. Inside a transaction of this
        thread it raises StoreError and does nothing: a rollback would undo
        the table and triggers, and the model would look captured while nothing is.
        """
        self._in_charge()
        if self.db.in_transaction():
            raise StoreError(
                f"{self.location}: register() was called inside a transaction (atomic()), "
                "whose rollback would undo its table and triggers; register the model "
                "before the block"
            )
        return self._register(model)

    def _register(self, model: type[peewee.Model]) -> type[peewee.Model]:
        """``register()``, inside a transaction too: for a dry run that rolls it back.

        The command's dry runs register ``--app`` models in the transaction
        they roll back, so their tables are not left behind; the store is
        closed right after, while it still counts them as registered.
        """
        if not (isinstance(model, type) and issubclass(model, peewee.Model)):
            raise ValidationError(f"register() takes a peewee model class, got {quoted(model)}")
        if model is WebhookDelivery:
            raise ValidationError(
                f"{model_ref(model)} cannot be registered: its changes are not captured "
                "(every delivery and every outcome would become a change event)"
            )
        if model in _BASES:
            raise ValidationError(
                f"{model.__name__} is a base class with no table of its own: register a subclass"
            )
        for field in model._meta.sorted_fields:
            if isinstance(field, peewee.DeferredForeignKey):  # no type, no final column name yet
                raise ValidationError(
                    f"{model.__name__}.{field.name} is a DeferredForeignKey to "
                    f"{field.rel_model_name!r}, which is not defined yet: define it before "
                    f"registering {model.__name__}"
                )
        if issubclass(model, ABIDModel):
            check_sources(model, ABIDModel.new_id)
        spec = CaptureSpec.of(model)
        relations = [Relation.of(m2m) for m2m in model._meta.manytomany.values()]
        self._registry.check_relations(relations)
        bound_before = model._meta.database
        model.bind(self.db, bind_refs=False, bind_backrefs=False)
        added = self._registry.add(model)
        if self.db.read_only:  # readable as it is: no table or trigger can be made
            return model
        try:
            with self.db.write(quiet=True):  # DDL only: its events wait for a dispatch
                self._refuse_view(model)  # before its indexes are made: a view has none
                self.db.create_tables([model], safe=True)
                self._check_columns(model)
                self.db.install_capture(spec)
                for relation in relations:
                    self._registry.add_relation(relation)
                # with those, any relation whose other side has no field here (backref="+")
                for relation in self._registry.relations_of(model):
                    self._capture_relation(relation)
        except BaseException:
            if added:  # refused: as it was, so saving it says it is not registered
                self._registry.remove(model)
                model.bind(bound_before, bind_refs=False, bind_backrefs=False)
            raise
        self._dispatcher.forget(model)
        self._outbox.payloads.forget(model)
        return model

    def _refuse_view(self, model: type[peewee.Model]) -> None:
        """Refuse a model on a view: it has no row triggers to capture it by."""
        table = model._meta.table_name
        if table in {view.name for view in self.db.get_views()}:
            raise ValidationError(
                f"{model.__name__}: {table!r} is a view, which has no triggers to capture "
                "changes by; register models of tables"
            )

    def _check_columns(self, model: type[peewee.Model]) -> None:
        """Refuse a model whose table lacks some of its columns (a field added since).

        Triggers naming a missing column would make every write to the table fail.
        """
        table = model._meta.table_name
        present = {column.name for column in self.db.get_columns(table)}
        missing = [f.column_name for f in model._meta.sorted_fields if f.column_name not in present]
        if missing:
            raise ValidationError(
                f"{model.__name__}: its table {table!r} has no column "
                f"{', '.join(repr(c) for c in missing)}; bring the table up to date with the "
                "model, then register it again"
            )

    def _capture_relation(self, relation: Relation) -> None:
        """Create a relation's join table and (re)install its triggers for the registered sides.

        The table waits until both sides' tables exist (PostgreSQL checks a
        foreign key's table when it is created; on SQLite the relation is
        unusable before that anyway): registering the other side, or this one
        again, creates it then. The triggers count the hooks of both sides
        that have a field, registered here or not: every process shares them,
        and one that has no use for a side must not close them to its hooks.
        Such a side's table is checked against its model as a registered one's
        is: this process makes deliveries to its hooks, reading its ABID.
        """
        relation.through.bind(self.db, bind_refs=False, bind_backrefs=False)
        if not all(self.db.table_exists(s.model._meta.table_name) for s in relation.sides):
            return
        self._refuse_view(relation.through)
        self.db.create_tables([relation.through], safe=True)
        self._check_columns(relation.through)
        hooked = [s.model for s in relation.sides if s.field is not None]
        for model in hooked:  # a registered side was checked as it was registered
            if not self._registry.knows(model):
                self._check_columns(model)
        refs = tuple(model_ref(model) for model in hooked)
        self.db.install_relation_capture(relation.spec(refs))

    def model_for_ref(self, ref: str | type[peewee.Model]) -> type[peewee.Model]:
        """The registered model a hook's ``ref`` names; unknown refs list the known ones."""
        return self._registry.for_ref(ref)

    @property
    def models(self) -> dict[str, type[peewee.Model]]:
        """The registered models by table name, tokenstore's own included."""
        return {m._meta.table_name: m for m in self._registry}

    def dispatch(self, deliver: bool = True) -> Dispatched:
        """Fire events nobody has fired yet: other processes' writes, shell edits, crashes.

        With ``deliver`` it then sends the webhook deliveries that are due,
        those a crashed process committed but never sent among them; without
        it nothing is sent, and the deliveries the events make are due at once.
        Dispatch also happens by itself after every commit made through this
        store; this call is for what happened elsewhere.
        """
        self._in_charge()
        if check_flag(deliver, "deliver"):
            self._outbox.refuse_in_transaction("store.dispatch()")
        claimed_before = self._dispatcher.claimed_count()
        delivered_before, failed_before = self._outcomes.attempts_recorded()
        with (
            nullcontext() if deliver else self._outbox.unsent(),
            self.db.atomic(),  # its commit claims what is unclaimed, then fires it
        ):
            conn = self.db.connection()
            self._liveness.release(conn, self._liveness.stale_claimants(conn))
            self._dispatcher.housekeeping(conn)
        if deliver:
            self._webhooks.deliver_due()
        delivered, failed = self._outcomes.attempts_recorded()
        return Dispatched(
            events=self._dispatcher.claimed_count() - claimed_before,
            delivered=delivered - delivered_before,
            failed=failed - failed_before,
            waiting=self._dispatcher.waiting(self.db.connection()),
        )

    def wait_for_changes(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for another connection to commit; True if one did."""
        return self.db.wait_for_changes(check_seconds(timeout, "timeout", allow_minimum=True))

    def import_archivebox(
        self,
        path: str | os.PathLike[str],
        *,
        ref_map: Mapping[str, str | type[peewee.Model]] | None = None,
        cipher_key: str | None = None,
        dry_run: bool = False,
    ) -> ArchiveBoxImport:
        """Copy users, API tokens and webhooks from ArchiveBox 0.8's ``index.sqlite3``.

        The file is only read. Ids and ABIDs are kept; each plain-text token is
        stored as its digest, so the same string authenticates here. A hook's
        ``ref`` (a Django model path) is mapped through ``ref_map`` to a
        registered model (``api.models.APIToken`` maps to ``tokenstore.APIToken``);
        a hook whose ref is unmapped, whose endpoint the address guard refuses, or
        whose encrypted auth token cannot be read (``cipher_key`` is ArchiveBox's
        ``SIGNAL_WEBHOOKS["CIPHER_KEY"]``; it needs ``tokenstore[archivebox]``) is
        imported disabled, saying why. Each imported hook gets a new signing
        secret. All in one transaction; rows already here are left alone, so a
        second import changes nothing; ``dry_run`` reports and writes nothing.
        """
        from ._archivebox import import_archivebox

        self._in_charge()
        if ref_map is not None and not isinstance(ref_map, Mapping):
            raise ValidationError(f"ref_map must be a mapping, got {type(ref_map).__name__}")
        if cipher_key is not None:
            check_text(cipher_key, "cipher_key")
        return import_archivebox(
            check_path(path, "path"),
            db=self.db,
            validator=self._hook_validator,
            ref_map=ref_map,
            cipher_key=cipher_key,
            dry_run=check_flag(dry_run, "dry_run"),
        )


def open(path: str | os.PathLike[str], **options: Any) -> Store:
    """Open (creating if needed) the tokenstore file at ``path``, or a ``postgresql://`` URL.

    Every option is passed by name, checked here (a bad or unknown one raises
    ValidationError naming it), and kept in ``store.options``. Seconds are
    numbers (at most a day); spans are ``timedelta`` (at most 100 years).

    - ``token_prefix`` = "tsk": the scannable prefix of new token secrets.
    - ``max_tokens_per_user`` = None: live tokens a user may hold; one more is
      refused (None: no limit).
    - ``api_key_header`` = "X-API-Key": the header ``token_from_request``
      and ``TokenAuthMiddleware`` read first.
    - ``webhook_allow`` = []: hosts or networks (``"127.0.0.1/32"``,
      ``"hooks.internal"``) added to the file's allowlist, which lets every
      process's hooks reach them although the address guard refuses them.
    - ``connect_timeout`` = 3.0: seconds to wait for a receiver to accept.
    - ``read_timeout`` = 10.0: seconds to wait for each read of its answer.
    - ``delivery_deadline`` = 10.0: seconds one attempt may take in all
      (connecting, sending, the whole answer); past it, it failed.
    - ``sync_budget`` = 5.0: seconds the writing thread spends after a commit
      sending what it produced (0: none); the rest waits for the retry path.
    - ``disable_after_failures`` = 10: failures in a row that disable a hook,
    - ``disable_after`` = timedelta(days=1): over at least this long.
    - ``secret_grace`` = timedelta(days=1): how long a rotated-out signing
      secret still signs.
    - ``claim_timeout`` = timedelta(hours=1): after this, events a process
      on another machine claimed and never finished are taken over.
    - ``busy_timeout`` = 10.0: seconds a write waits for the lock (at least 5).
    - ``keep_deliveries`` = timedelta(days=30): finished deliveries older
      than this are deleted by the retry path, each hook's latest kept
      (None: keep all); without a retry path, call ``webhooks.prune()``.
    - ``listener_timeout`` = timedelta(hours=1): a listening process that
      claims nothing this long is removed, its waiting events dropped; while
      no hook is enabled, an event no listener claims this long is dropped too.
    - ``dispatch_on_open`` = True: fire the events dead processes left.
    - ``create`` = True: make a missing file, or set up a file holding no
      tokenstore (False: both are errors, so a mistyped path starts no store).
    - ``read_only`` = False: never write; writes raise StoreError. A file
      this process cannot write is opened read-only anyway, with a warning.
    - ``clock`` = None: a function returning the current aware time, for
      tests that move time by hand (None: the system's). Each answer is
      checked, at ``open()`` already: a naive time, another type, a time
      before 1970 or within 100 years of ``datetime.max``, or an exception
      from the clock raises ValidationError.
    """
    return Store(path, **options)
