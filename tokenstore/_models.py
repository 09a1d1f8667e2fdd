"""peewee models: the ABID base class and tokenstore's own tables.

The models describe the tables that ``schema.sql`` creates; a test keeps the
two in agreement. Behaviour that needs a store (issuing tokens, delivering
webhooks) lives in the modules that own it, not here.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import nullcontext
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

import peewee

from . import _abid as abids
from . import _compat, _credentials, signals
from ._abid_sources import SOURCES, ABIDSource, source_value, storable
from ._errors import (
    ABIDDriftError,
    InvalidABID,
    NotFound,
    StoreError,
    ValidationError,
    about,
)
from ._fields import JSONField, UTCDateTimeField, UUIDField
from ._inputs import check_text
from ._rows import CheckedSelect, quote_name
from ._signing import secret_version
from ._times import format_time, to_stored_time, utcnow

#: The user that owns what nobody else owns (records made without ``created_by``).
SYSTEM_USERNAME = "system"

#: INSERT statements by model, the field names they set and the driver's placeholder
#: (see ``ABIDModel._insert_row``), at most ``INSERT_STATEMENTS``.
_INSERT_SQL: dict[tuple[type[peewee.Model], tuple[str, ...], str], str] = {}
INSERT_STATEMENTS = 1024

#: How many fresh ids an insert tries when its ABID collides with an existing one.
ABID_COLLISION_RETRIES = 5


#: Ends every INSERT of an ABID record: a taken ABID inserts nothing instead of failing,
#: so the transaction stays usable (PostgreSQL aborts a transaction on any error).
ON_ABID_CONFLICT = ' ON CONFLICT ("abid") DO NOTHING'


def unknown_owner(exc: peewee.IntegrityError, user_id: object) -> NotFound | None:
    """The error to raise when an insert failed because its owner is not in this store.

    A ``User`` instance can name a user the store does not have (deleted
    meanwhile, or read from another store); the foreign key refuses the row.
    SQLite and PostgreSQL word that refusal differently, and both name it.
    """
    if "foreign key" not in str(exc).lower():
        return None
    return NotFound(f"no user with id {user_id!r} in this store (deleted, or from another store)")


def insert_with_fresh_ids(
    table: str, insert: Callable[[], int], renew: Callable[[], None] | None
) -> None:
    """Run ``insert``; if its ABID is taken, ``renew`` the id and retry.

    ``insert`` runs an INSERT ending in ``ON CONFLICT`` on the ABID's column
    (``ON_ABID_CONFLICT`` on tokenstore's tables) and returns its row count: 0
    means the ABID was taken. An ABID keeps 30 random bits, and
    a bulk change writes many records of one kind in the same millisecond, so
    among thousands a collision is likely; it must not fail the write.
    Without ``renew`` (the caller chose the id) a collision is the caller's
    error and is raised.
    """
    for attempt in range(ABID_COLLISION_RETRIES + 1):
        if insert():
            return
        if renew is None or attempt == ABID_COLLISION_RETRIES:
            raise peewee.IntegrityError(f"{table}.abid: this ABID is taken by another record")
        renew()


class BaseModel(peewee.Model):
    """Models of tables that change capture watches.

    ``private_fields`` never leave the database: they are left out of change
    events, signal payloads and webhook bodies. A change that touches only
    ``quiet_fields`` produces no event (bookkeeping such as ``last_used_at``).
    """

    private_fields: ClassVar[tuple[str, ...]] = ()
    quiet_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def select(cls, *fields: Any) -> peewee.ModelSelect[Self]:
        """As peewee's, but a row edited into values its fields cannot hold is a DamagedRow."""
        query = CheckedSelect(cls, fields or cls._meta.sorted_fields, is_default=not fields)
        return query  # type: ignore[return-value]

    @classmethod
    def from_stored(cls, values: dict[str, Any], snapshot: dict[str, Any] | None = None) -> Self:
        """An instance as a SELECT would load it, from Python values keyed by field name.

        No defaults run and no field is marked changed; ``values`` becomes the
        instance's own. ``snapshot`` is what the row held, if the caller keeps
        an unchanging copy already (it is only ever read).
        """
        return _compat.loaded_instance(cls, values, {})

    def save(self, force_insert: bool = False, only: Any = None) -> int:
        created = force_insert or not _compat.was_saved(self)
        signals.send_isolated(signals.pre_save, type(self), instance=self, created=created)
        return int(super().save(force_insert=force_insert, only=only))

    def delete_instance(self, recursive: bool = False, delete_nullable: bool = False) -> int:
        signals.send_isolated(signals.pre_delete, type(self), instance=self)
        return int(super().delete_instance(recursive, delete_nullable))


class User(BaseModel):
    """An owner of tokens and hooks; the embedding application maps its users onto these."""

    id = peewee.AutoField()
    username = peewee.TextField(unique=True)
    is_superuser = peewee.BooleanField(default=False)
    created_at = UTCDateTimeField(default=utcnow)

    class Meta:
        table_name = "tokenstore_user"

    def __repr__(self) -> str:
        return f"<User {self.username!r} id={self.id}>"


def _class_name(instance: Any) -> str:
    """The default subtype source: the model's class name (hashed to two characters)."""
    return type(instance).__name__


class ABIDModel(BaseModel):
    """Base of every record with a prefixed, sortable ABID.

    Subclasses name the sources of each ABID part as an attribute name or a
    function of the instance. The ABID is issued once, on insert; later saves
    recompute it only to detect *drift* (a source changed), which is refused
    unless ``abid_drift_allowed``. ``regenerate_abid()`` issues a new one on
    purpose.

    The class attributes, with their defaults: ``abid_prefix`` ("obj_"; set
    your own three letters), ``abid_ts_src`` ("created_at"),
    ``abid_uri_src`` ("created_by_id"), ``abid_subtype_src`` (the class
    name), ``abid_rand_src`` ("id"), ``abid_salt`` (DEFAULT_ABID_URI_SALT),
    ``abid_drift_allowed`` (False). docs/abid.md says how each part is made.
    Register the class with ``store.register`` before saving one.
    """

    abid_prefix: ClassVar[str] = "obj_"
    abid_ts_src: ClassVar[ABIDSource] = "created_at"
    abid_uri_src: ClassVar[ABIDSource] = "created_by_id"
    abid_subtype_src: ClassVar[ABIDSource] = _class_name
    abid_rand_src: ClassVar[ABIDSource] = "id"
    abid_salt: ClassVar[str] = abids.DEFAULT_ABID_URI_SALT
    abid_drift_allowed: ClassVar[bool] = False
    quiet_fields: ClassVar[tuple[str, ...]] = ("modified_at",)

    class Meta:
        # An update writes only what this instance changed: saving a copy read
        # earlier must not put back what another writer changed meanwhile (a
        # revocation, a hook disabled after a 410).
        only_save_dirty = True

    id = UUIDField(primary_key=True)
    abid = peewee.CharField(max_length=30, unique=True)
    created_by = peewee.ForeignKeyField(
        User, column_name="created_by_id", on_delete="CASCADE", backref="+", index=True
    )
    created_by_id: Any  # peewee's accessor for the raw foreign key
    created_at = UTCDateTimeField()
    modified_at = UTCDateTimeField()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        loaded = _compat.loading(kwargs)
        generated_id = not loaded and kwargs.get("id") is None
        super().__init__(*args, **kwargs)
        # What the row held when read: drift is judged against it without a SELECT.
        self._stored: dict[str, Any] | None = dict(_compat.values_of(self)) if loaded else None
        self._id_generated = generated_id
        if generated_id:
            self.id = self.new_id()

    @classmethod
    def from_stored(cls, values: dict[str, Any], snapshot: dict[str, Any] | None = None) -> Self:
        """As ``BaseModel.from_stored``, remembering the row as stored (drift is judged on it)."""
        state = {"_stored": dict(values) if snapshot is None else snapshot, "_id_generated": False}
        return _compat.loaded_instance(cls, values, state)

    def adopt(self, other: Self) -> None:
        """Take on the stored state of another instance of the same row (a fresher read)."""
        _compat.adopt_state(self, self.from_stored(dict(_compat.values_of(other))))

    @classmethod
    def new_id(cls) -> uuid.UUID:
        """The primary key of a new record; override to choose ids yourself."""
        return uuid.uuid4()

    def compute_abid(self) -> abids.ABID:
        """The ABID the current field values give (not necessarily the stored one)."""
        cls = type(self)
        try:
            return abids.abid_from_values(
                prefix=cls.abid_prefix,
                ts=source_value(cls, self, cls.abid_ts_src),
                uri=source_value(cls, self, cls.abid_uri_src),
                subtype=source_value(cls, self, cls.abid_subtype_src),
                rand=source_value(cls, self, cls.abid_rand_src),
                salt=cls.abid_salt,
            )
        except InvalidABID as exc:  # say whose ABID it was
            raise InvalidABID(f"{cls.__name__}.ABID: {exc}") from None

    @property
    def ABID(self) -> abids.ABID:
        """The stored ABID as a value, with its ULID, UUID, TypeID and datetime views."""
        return abids.ABID.parse(self.abid, prefix=type(self).abid_prefix)

    def save(self, force_insert: bool = False, only: Any = None) -> int:
        """Insert with a new ABID, or update what changed after refusing ABID drift."""
        if type(self)._meta.database is None:  # an application model never registered
            name = type(self).__name__
            raise StoreError(
                f"{name} is not registered with a store: decorate the class with "
                f"@store.register (or call store.register({name})) before saving it"
            )
        if force_insert or self._stored is None:
            return self._insert()
        signals.send_isolated(signals.pre_save, type(self), instance=self, created=False)
        self.modified_at = utcnow()
        if only is not None:
            only = [*only, type(self).modified_at]
        if not type(self).abid_drift_allowed:
            self._refuse_drift()
        rows = int(peewee.Model.save(self, only=only))
        self._stored = dict(_compat.values_of(self))
        return rows

    def _insert(self) -> int:
        cls = type(self)
        signals.send_isolated(signals.pre_save, cls, instance=self, created=True)
        self.created_at = utcnow() if self.created_at is None else to_stored_time(self.created_at)
        if self.modified_at is None:
            self.modified_at = self.created_at
        if self.created_by_id is None:
            self.created_by_id = cls._meta.database.system_user_id
        self.abid = storable(cls, self.compute_abid())

        def renew() -> None:
            self.id = cls.new_id()
            self.abid = storable(cls, self.compute_abid())

        insert_with_fresh_ids(
            cls._meta.table_name, self._insert_row, renew if self._id_generated else None
        )
        self._stored = dict(_compat.values_of(self))
        return 1

    def _insert_row(self) -> int:
        """INSERT the instance's values with a statement built once per model and column set.

        Returns the row count: 0 when the ABID was taken (see ``insert_with_fresh_ids``).

        It is what ``Model.save(force_insert=True)`` sends (the columns the
        instance holds), without building the same SQL again on every save.
        """
        cls = type(self)
        data = _compat.values_of(self)
        names = tuple(data)
        database = cls._meta.database
        key = (cls, names, database.param)
        sql = _INSERT_SQL.get(key)
        fields = cls._meta.fields
        if sql is None:
            columns = ", ".join(quote_name(fields[name].column_name) for name in names)
            marks = ", ".join([database.param] * len(names))
            abid = quote_name(fields["abid"].column_name)  # a model may put it in another column
            sql = (
                f"INSERT INTO {quote_name(cls._meta.table_name)} ({columns}) VALUES ({marks}) "
                f"ON CONFLICT ({abid}) DO NOTHING"
            )
            if len(_INSERT_SQL) >= INSERT_STATEMENTS:  # columns named in ever new orders
                _INSERT_SQL.clear()
            _INSERT_SQL[key] = sql
        cursor = database.execute_sql(sql, [fields[name].db_value(data[name]) for name in names])
        if cursor.rowcount:
            _compat.mark_clean(self)
        return int(cursor.rowcount)

    def _refuse_drift(self) -> None:
        """Raise if this update would change a part of the stored ABID."""
        cls = type(self)
        stored = abids.ABID.parse(self.abid, prefix=cls.abid_prefix)
        current = self.compute_abid()
        for part, attribute in SOURCES:
            source = getattr(cls, attribute)
            old_part, new_part = getattr(stored, part), getattr(current, part)
            if old_part == new_part:
                continue
            if isinstance(source, str):
                field = cls._meta.combined.get(source)
                old = (self._stored or {}).get(field.name if field else source)
                what = f"{cls.__name__}.{source} from {old!r} to {getattr(self, source)!r}"
            else:
                what = f"{cls.__name__} (the source of its ABID {part} part)"
            raise ABIDDriftError(
                f"cannot update {what}: it would change {cls.__name__}.ABID.{part} "
                f"from {old_part} to {new_part}; {cls.__name__} does not allow ABID drift "
                f"(call regenerate_abid() to issue a new ABID on purpose)"
            )

    @classmethod
    def bulk_create(cls, model_list: Any, batch_size: Any = None) -> None:
        """Insert each instance as ``save()`` does, all in one transaction.

        peewee's own sends the instances' values as they are, without the
        ABID, times and owner an insert issues (the write failed on the NOT
        NULL ``abid``); each save also retries an ABID taken by another record,
        which among many records of one millisecond can happen.
        """
        database = cls._meta.database  # None: the first save says to register the model
        with nullcontext() if database is None else database.atomic():
            for instance in model_list:
                instance.save(force_insert=True)

    def regenerate_abid(self) -> abids.ABID:
        """Issue a new ABID from the current values and save it with the record."""
        new = self.compute_abid()
        self.abid = storable(type(self), new)
        self.modified_at = utcnow()
        peewee.Model.save(self)
        self._stored = dict(_compat.values_of(self))
        return new


def _token_subtype(_: Any) -> str:
    """ArchiveBox's subtype of every API token: ``01``, kept as it is."""
    return "01"


class APIToken(ABIDModel):
    """An API key. The secret itself is never stored: only its digest and a hint."""

    abid_prefix = "apt_"
    abid_ts_src = "created_at"
    abid_uri_src = "created_by_id"
    abid_subtype_src: ClassVar[ABIDSource] = staticmethod(_token_subtype)
    abid_rand_src = "id"
    abid_drift_allowed = True
    private_fields = ("token_digest",)
    quiet_fields = ("modified_at", "last_used_at")

    name = peewee.TextField(null=True)
    token_digest = peewee.CharField(max_length=64, unique=True)
    token_hint = peewee.CharField(max_length=8)
    expires = UTCDateTimeField(null=True)
    revoked_at = UTCDateTimeField(null=True)
    last_used_at = UTCDateTimeField(null=True)
    scopes = JSONField(default=list)

    class Meta:
        table_name = "tokenstore_api_token"

    @staticmethod
    def generate_secret_token(prefix: str | None = None) -> str:
        """A new secret; it exists only in the caller's hands, the table keeps its digest."""
        return _credentials.generate_token(
            _credentials.DEFAULT_TOKEN_PREFIX if prefix is None else prefix
        )

    @property
    def token_redacted(self) -> str:
        """What people see instead of the secret: 12 asterisks and the stored hint."""
        return "*" * 12 + (self.token_hint or "")

    @property
    def expires_as_iso8601(self) -> str | None:
        """ISO 8601 of ``expires``; ``None`` when it never expires.

        The original returned now + 36500 days for a token without expiry, a
        date that moved on every call; ``None`` says "never" without inventing one.
        """
        expires: datetime | None = self.expires
        return None if expires is None else expires.isoformat()

    def is_valid(self, for_date: datetime | None = None) -> bool:
        """False once revoked, or when ``expires < for_date`` (default: now, wall clock).

        As in the original, a token is still valid at the exact instant it
        expires. ``for_date`` must be timezone-aware; it is not rounded.
        """
        if for_date is None:
            for_date = datetime.now(UTC)
        else:  # checked first: a token without expiry answered True to any value at all
            with about("for_date"):
                to_stored_time(for_date)
        if self.revoked_at is not None:
            return False
        expires: datetime | None = self.expires
        return expires is None or not expires < for_date

    def has_scope(self, scope: str) -> bool:
        """A token issued without scopes is unrestricted (as every ArchiveBox token is).

        Scopes edited by hand into anything but a list of strings grant nothing
        (``authenticate`` refuses such a token): ``in`` would match part of a string.
        """
        check_text(scope, "scope")  # None or a list was a False, or a True if unrestricted
        scopes = self.scopes
        if not (isinstance(scopes, list) and all(isinstance(item, str) for item in scopes)):
            return False
        return not scopes or scope in scopes

    def save(self, force_insert: bool = False, only: Any = None) -> int:
        """Refuse to undo or move a revocation: revoked is revoked for good."""
        revoked_at = (self._stored or {}).get("revoked_at")
        if revoked_at is not None and self.revoked_at != revoked_at:
            raise ValidationError(
                f"API token {self.abid} was revoked at {format_time(revoked_at)}; "
                "revocation cannot be undone or changed"
            )
        try:
            return super().save(force_insert=force_insert, only=only)
        except peewee.IntegrityError as exc:
            # A copy read before another revoked the token: the file's trigger refuses it.
            if "revocation is final" not in str(exc):
                raise
            raise ValidationError(
                f"API token {self.abid} was revoked meanwhile; "
                "revocation cannot be undone or changed"
            ) from None

    def __str__(self) -> str:
        return self.token_redacted

    def __repr__(self) -> str:
        return f"<APIToken user={self._owner_name()} token={self.token_redacted}>"

    def _owner_name(self) -> str:
        if self.created_by_id is None:
            return "None"
        try:
            return str(self.created_by.username)
        except Exception:  # a repr must not fail: a deleted owner or closed file shows the id
            return f"#{self.created_by_id}"

    def __json__(self) -> dict[str, Any]:
        """The original's keys in its order; ``token`` is the redacted form."""
        created_at: datetime | None = self.created_at
        return {
            "TYPE": "APIToken",
            "id": None if self.id is None else str(self.id),
            "abid": self.abid,
            "created_by_id": None if self.created_by_id is None else str(self.created_by_id),
            "token": self.token_redacted,
            "created_at": None if created_at is None else created_at.isoformat(),
            "expires": self.expires_as_iso8601,
        }


class OutboundWebhook(ABIDModel):
    """A URL told about changes to one model, with the fields of django-signal-webhooks."""

    abid_prefix = "whk_"
    abid_ts_src = "created_at"
    abid_uri_src = "endpoint"
    abid_subtype_src = "ref"
    abid_rand_src = "id"
    abid_drift_allowed = True
    # headers often carry credentials of their own (an API key for the receiver).
    private_fields = ("auth_token", "secret", "previous_secret", "headers")
    quiet_fields = (
        "modified_at",
        "last_response",
        "last_success",
        "last_failure",
        "failure_count",
        "failing_since",
    )

    name = peewee.CharField(max_length=255, unique=True)
    signal = peewee.CharField(max_length=64, default="CREATE_UPDATE_OR_DELETE")
    ref = peewee.CharField(max_length=1023)
    endpoint = peewee.CharField(max_length=2047)
    headers = JSONField(default=dict)
    auth_token = peewee.TextField(default="")
    enabled = peewee.BooleanField(default=True)
    keep_last_response = peewee.BooleanField(default=False)
    last_response = peewee.TextField(default="")
    last_success = UTCDateTimeField(null=True)
    last_failure = UTCDateTimeField(null=True)
    secret = peewee.TextField()
    previous_secret = peewee.TextField(null=True)
    previous_secret_expires = UTCDateTimeField(null=True)
    failure_count = peewee.IntegerField(default=0)
    failing_since = UTCDateTimeField(null=True)
    disabled_reason = peewee.TextField(default="")

    class Meta:
        table_name = "tokenstore_outbound_webhook"
        indexes = ((("ref", "endpoint"), True),)

    @property
    def created(self) -> datetime:
        """django-signal-webhooks' name for ``created_at``."""
        return self.created_at  # type: ignore[no-any-return]

    @property
    def updated(self) -> datetime:
        """django-signal-webhooks' name for ``modified_at``."""
        return self.modified_at  # type: ignore[no-any-return]

    @property
    def secret_version(self) -> str:
        """Names the signing secret without giving it away, for ``rotate_secret(expected=)``."""
        return secret_version(self.secret)

    #: Checks a hook before every save; a store binds its ``HookValidator`` here when it opens.
    validator: ClassVar[Callable[[OutboundWebhook], None] | None] = None

    def save(self, force_insert: bool = False, only: Any = None) -> int:
        """Validate (against the registered models and the address guard), then save."""
        validator = OutboundWebhook.validator
        if validator is not None:
            validator(self)
        return super().save(force_insert=force_insert, only=only)

    def __str__(self) -> str:
        return f"[{self.abid}] {self.ref} -> {self.endpoint}"

    def __repr__(self) -> str:
        return f"<OutboundWebhook {self.name!r} {self.signal} {self.ref} -> {self.endpoint}>"


class WebhookDelivery(ABIDModel):
    """One event for one hook: the message, its attempts and its outcome.

    Its ABID is the ``webhook-id`` header, stable across retries, so receivers
    can drop duplicates of an at-least-once delivery.
    """

    abid_prefix = "msg_"
    abid_ts_src = "created_at"
    abid_uri_src = "hook_id"
    abid_subtype_src = "event_type"
    abid_rand_src = "id"

    # Always the system user: not worth an index page written on every delivery.
    created_by = peewee.ForeignKeyField(
        User, column_name="created_by_id", on_delete="CASCADE", backref="+", index=False
    )
    hook = peewee.ForeignKeyField(
        OutboundWebhook,
        column_name="hook_id",
        on_delete="CASCADE",
        backref="deliveries",
        index=False,  # the (hook_id, created_at, abid) index serves it
    )
    hook_id: Any  # peewee's accessor for the raw foreign key
    event_id = peewee.IntegerField(null=True)
    event_type = peewee.CharField(max_length=255)
    payload = peewee.TextField()
    status = peewee.CharField(max_length=16, default="pending")
    attempts = peewee.IntegerField(default=0)
    next_attempt_at = UTCDateTimeField(null=True)
    last_attempt_at = UTCDateTimeField(null=True)
    last_status_code = peewee.IntegerField(null=True)
    last_error = peewee.TextField(default="")
    duration_ms = peewee.IntegerField(null=True)
    delivered_at = UTCDateTimeField(null=True)

    class Meta:
        table_name = "tokenstore_webhook_delivery"
        # The delivery log's order, newest first, over all hooks and within one.
        indexes = ((("created_at", "abid"), False), (("hook", "created_at", "abid"), False))

    def __repr__(self) -> str:
        return f"<WebhookDelivery {self.abid} {self.event_type} {self.status}>"


#: tokenstore's own models, in creation order (each after what it references).
OWN_MODELS: tuple[type[peewee.Model], ...] = (User, APIToken, OutboundWebhook, WebhookDelivery)

# Hooks name a model by ``module.ClassName``; tokenstore's own models go by their
# public name, which does not move when the private modules behind it do.
for _model in (ABIDModel, *OWN_MODELS):
    _model.__module__ = "tokenstore"
