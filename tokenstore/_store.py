"""Opening the store file: pragmas, schema, versions, and the ``Store`` object.

``tokenstore.open(path)`` is the public entry point. It refuses, before
changing anything, files that are not SQLite and files written by a newer
tokenstore; it creates missing files readable by their owner only, since they
hold webhook signing secrets.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import peewee

from ._changes import CapturingDatabase, Dispatcher, install_capture, model_ref
from ._errors import StoreError, ValidationError
from ._models import OWN_MODELS, User, format_time, utcnow

if TYPE_CHECKING:
    from ._archivebox import ArchiveBoxImport

logger = logging.getLogger("tokenstore._store")

#: The ``PRAGMA user_version`` of files this code writes.
SCHEMA_VERSION = 1

#: Steps that bring a file from version N to N+1, run in one transaction each.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {}

SYSTEM_USERNAME = "system"

_SQLITE_HEADER = b"SQLite format 3\x00"


def schema_sql() -> str:
    """The canonical DDL (also at the top of the source tree as ``schema.sql``)."""
    return resources.files("tokenstore").joinpath("schema.sql").read_text(encoding="utf-8")


def _statements(script: str) -> Iterator[str]:
    """Split a script into statements; triggers hold semicolons, so ask SQLite."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statement = buffer.strip()
            buffer = ""
            if statement.strip(";").strip() and not _only_comments(statement):
                yield statement
    if buffer.strip() and not _only_comments(buffer):
        raise StoreError(f"schema.sql ends with an incomplete statement: {buffer.strip()[:60]!r}")


def _only_comments(text: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in text.splitlines())


def _check_file(path: Path) -> int:
    """Read a file's schema version without writing to it; refuse what is not ours to open."""
    if not path.exists():
        return 0
    if path.is_dir():
        raise StoreError(f"{path} is a directory, not a tokenstore file")
    with path.open("rb") as f:
        header = f.read(len(_SQLITE_HEADER))
    if not header:
        return 0
    if header != _SQLITE_HEADER:
        raise StoreError(
            f"{path} is not an SQLite database (its first bytes are not an SQLite header)"
        )
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} cannot be read as an SQLite database: {exc}") from None
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has schema version {version}, newer than this tokenstore understands "
            f"({SCHEMA_VERSION}); upgrade tokenstore to open it"
        )
    return int(version)


def _create_private(path: Path) -> None:
    """Create the file mode 0600 before SQLite does, so secrets are never world-readable."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreError(f"cannot create {path}: {exc.strerror}") from None
    os.close(fd)


def _apply_schema(conn: sqlite3.Connection) -> None:
    """Bring the file to SCHEMA_VERSION, once, even with several processes opening it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version == 0:
            for statement in _statements(schema_sql()):
                conn.execute(statement)
        else:
            for step in range(version, SCHEMA_VERSION):
                MIGRATIONS[step](conn)
        conn.execute(
            "INSERT OR IGNORE INTO tokenstore_user (username, is_superuser, created_at) "
            "VALUES (?, 1, ?)",
            (SYSTEM_USERNAME, format_time(utcnow())),
        )
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class Store:
    """One tokenstore file: its database, its models, tokens, users and webhooks.

    Use ``tokenstore.open()`` rather than the constructor. The Store binds
    tokenstore's models (and the application's, via ``register``) to its
    database, so one process works with one open store at a time.

    Options (all keyword-only):

    - ``token_prefix``: the scannable prefix of new API token secrets (``tsk``).
    - ``max_tokens_per_user``: at most this many live tokens per user; creating
      one more is refused (``None``: no limit).
    - ``api_key_header``: the header ``tokens.token_from_request`` reads first.
    - ``webhook_allow``: hosts or networks hooks may reach although the
      address guard refuses them by default (``["127.0.0.1/32"]``).
    - ``connect_timeout`` / ``read_timeout``: seconds, per webhook request.
    - ``disable_after_failures`` / ``disable_after``: a hook failing that many
      times in a row, over at least that long, is disabled.
    - ``secret_grace``: how long a rotated-out signing secret still signs.
    - ``claim_timeout``: after this long, another process may take over change
      events a live process claimed but never finished.
    - ``busy_timeout``: seconds a writer waits for the lock (at least 5).
    - ``clock``: a function returning the current aware UTC time (for tests).
    - ``dispatch_on_open``: fire events left behind by dead processes at once
      (deliveries wait for ``dispatch()`` or ``webhooks.deliver_due()``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        token_prefix: str = "tsk",
        max_tokens_per_user: int | None = None,
        api_key_header: str = "X-API-Key",
        webhook_allow: Iterable[str] = (),
        claim_timeout: timedelta = timedelta(hours=1),
        busy_timeout: float = 10.0,
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        disable_after_failures: int = 10,
        disable_after: timedelta = timedelta(days=1),
        secret_grace: timedelta = timedelta(hours=24),
        clock: Callable[[], datetime] | None = None,
        dispatch_on_open: bool = True,
    ) -> None:
        if str(path) in ("", ":memory:") or str(path).startswith("file::memory:"):
            raise StoreError("tokenstore needs a file path; an in-memory database is not shared")
        if busy_timeout < 5:
            raise ValidationError(f"busy_timeout must be at least 5 seconds, got {busy_timeout}")
        self.path = Path(path)
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        version = _check_file(self.path)
        _create_private(self.path)
        self.models: dict[str, type[peewee.Model]] = {m._meta.table_name: m for m in OWN_MODELS}
        self.dispatcher = Dispatcher(self.models, self.clock, claim_timeout)
        self.db = CapturingDatabase(
            str(self.path),
            dispatcher=self.dispatcher,
            timeout=busy_timeout,
            pragmas={
                "journal_mode": "wal",
                "synchronous": "normal",
                "foreign_keys": 1,
                "busy_timeout": int(busy_timeout * 1000),
            },
        )
        self.db.store = self
        conn = self.db.connection()
        if version < SCHEMA_VERSION:
            _apply_schema(conn)
        self.db.bind(list(OWN_MODELS), bind_refs=False, bind_backrefs=False)
        system = User.get_or_none(User.username == SYSTEM_USERNAME)
        if system is None:
            raise StoreError(f"{self.path}: the {SYSTEM_USERNAME!r} user is missing")
        self.system_user: User = system
        self.db.system_user_id = system.id

        from ._tokens import Tokens, Users
        from ._webhooks import Webhooks

        self.users = Users(self)
        self.tokens = Tokens(
            self,
            prefix=token_prefix,
            max_tokens_per_user=max_tokens_per_user,
            header=api_key_header,
        )
        self.webhooks = Webhooks(
            self,
            allow=webhook_allow,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            disable_after_failures=disable_after_failures,
            disable_after=disable_after,
            secret_grace=secret_grace,
        )
        if dispatch_on_open:  # events only: opening a file should not wait on the network
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
        """
        self.webhooks.close()
        if not self.db.is_closed():
            try:
                self.dispatcher.unregister(self.db.connection())
            except sqlite3.Error as exc:  # a read-only or vanished file still closes
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
        refreshes the triggers to match the model's current fields.
        """
        if not (isinstance(model, type) and issubclass(model, peewee.Model)):
            raise ValidationError(f"register() takes a peewee model class, got {model!r}")
        table = model._meta.table_name
        known = self.models.get(table)
        if known is not None and known is not model:
            raise ValidationError(
                f"table {table!r} already belongs to {self.ref(known)}; "
                f"cannot register {self.ref(model)} for it"
            )
        model.bind(self.db, bind_refs=False, bind_backrefs=False)
        self.models[table] = model  # known before the commit below claims its pending events
        try:
            with self.db.atomic():
                self.db.create_tables([model], safe=True)
                install_capture(self.db.connection(), model)
        except BaseException:
            if known is None:
                del self.models[table]
            raise
        return model

    def model_for_ref(self, ref: str | type[peewee.Model]) -> type[peewee.Model]:
        """The registered model a hook's ``ref`` names; unknown refs list the known ones."""
        wanted = self.ref(ref) if isinstance(ref, type) else str(ref)
        for model in self.models.values():
            if self.ref(model) == wanted:
                return model
        known = ", ".join(sorted(self.ref(m) for m in self.models.values()))
        raise ValidationError(
            f"unknown model ref {wanted!r}; registered models: {known} "
            "(the tokenstore command registers an application's models with --app MODULE)"
        )

    def dispatch(self, deliver: bool = True) -> int:
        """Fire events nobody has fired yet: other processes' writes, shell edits, crashes.

        With ``deliver`` it then sends the webhook deliveries that are due,
        those a crashed process committed but never sent among them.
        Returns how many events this call claimed. Dispatch also happens by
        itself after every commit made through this store.
        """
        conn = self.db.connection()
        before = self.dispatcher.claimed_count()
        with self.db.atomic():  # its commit claims what is unclaimed, then fires it
            self.dispatcher.forget_dead_listeners(conn)
            self.dispatcher.release(conn, self.dispatcher.stale_claimants(conn))
            self.dispatcher.drop_unheard(conn)
        claimed = self.dispatcher.claimed_count() - before
        if deliver:
            self.webhooks.deliver_due()
        return claimed

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

        return import_archivebox(
            path,
            db=self.db,
            users=self.users,
            webhooks=self.webhooks,
            ref_map=ref_map,
            cipher_key=cipher_key,
            dry_run=dry_run,
        )


def open(path: str | os.PathLike[str], **options: Any) -> Store:
    """Open (creating if needed) the tokenstore file at ``path``; see ``Store`` for options."""
    return Store(path, **options)
