"""Importing users, API tokens and webhooks from an ArchiveBox 0.8 database.

ArchiveBox keeps its API tokens in plain text and its webhooks' auth tokens
encrypted with a key of its own; tokenstore keeps only token digests and signs
every delivery. The import bridges the two without losing what identifies a
record to its users: ids and ABIDs are kept byte for byte, so links, logs and
scripts that name them stay right, and each token string keeps working.

The source file is only read: it is opened read-only, or as immutable when it
is a WAL-mode file with no ``-wal`` beside it, so that opening it leaves no
``-wal``/``-shm`` files in the ArchiveBox folder. Everything is written in one
transaction; rows are matched by id (users by username, since integer ids
differ between the two), so importing again changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sqlite3
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

import peewee

from ._abid import ABID
from ._credentials import token_digest, token_hint
from ._errors import InvalidABID, TokenstoreError, ValidationError
from ._inputs import storable
from ._models import APIToken, OutboundWebhook, User
from ._signing import new_signing_secret
from ._times import to_stored_time

if TYPE_CHECKING:
    from ._tokens import Users
    from ._webhooks import HookValidator

__all__ = ["DEFAULT_REF_MAP", "ArchiveBoxImport", "RowNote", "TableCounts", "import_archivebox"]

#: Refs of ArchiveBox models that tokenstore has an equivalent of, which the import fills.
DEFAULT_REF_MAP: Mapping[str, str] = {
    "api.models.APIToken": "tokenstore.APIToken",
    "django.contrib.auth.models.User": "tokenstore.User",
}

USERS = "auth_user"
TOKENS = "api_apitoken"
HOOKS = "api_outboundwebhook"

#: The columns the import reads; a file without them is not an ArchiveBox 0.8 database.
_COLUMNS: Mapping[str, tuple[str, ...]] = {
    USERS: ("id", "username", "is_superuser", "date_joined"),
    TOKENS: ("id", "abid", "token", "created_at", "modified_at", "expires", "created_by_id"),
    HOOKS: (
        "id",
        "abid",
        "name",
        "signal",
        "ref",
        "endpoint",
        "headers",
        "auth_token",
        "enabled",
        "keep_last_response",
        "last_response",
        "last_success",
        "last_failure",
        "created_at",
        "modified_at",
        "updated",
        "created_by_id",
    ),
}
#: The ``api`` app's migrations that made the tables as 0.8 has them.
_API_MIGRATIONS = tuple(f"{n:04d}" for n in range(1, 10))

_SQLITE_HEADER = b"SQLite format 3\x00"
_WAL_FORMAT = 2  # bytes 18 and 19 of the header: 1 for rollback journal, 2 for WAL
_NONCE_BYTES = 12


@dataclass
class TableCounts:
    """What became of one ArchiveBox table's rows."""

    imported: int = 0
    present: int = 0  # matched a row tokenstore already had, left as it was
    refused: int = 0


@dataclass(frozen=True)
class RowNote:
    """A row the import refused, or took with a caveat, and why (never with a secret in it)."""

    table: str
    row: str
    reason: str


@dataclass
class ArchiveBoxImport:
    """The outcome of ``Store.import_archivebox``.

    ``disabled`` lists hooks imported switched off, with the reason (also kept
    in each hook's ``disabled_reason``). ``hooks`` are the hooks written, with
    their new signing secrets; it is empty for a dry run, which writes nothing.
    """

    source: Path
    dry_run: bool
    counts: dict[str, TableCounts] = field(
        default_factory=lambda: {USERS: TableCounts(), TOKENS: TableCounts(), HOOKS: TableCounts()}
    )
    refused: list[RowNote] = field(default_factory=list)
    disabled: list[RowNote] = field(default_factory=list)
    hooks: list[OutboundWebhook] = field(default_factory=list)


class _RowRefused(Exception):
    """This row cannot be taken; the message says why."""


class _DryRun(Exception):
    """Raised at the end of a dry run, so the transaction rolls everything back."""


# -- reading the source ---------------------------------------------------------------------


def _source_path(path: str | os.PathLike[str]) -> Path:
    source = Path(path)
    try:
        if source.is_dir():
            source = source / "index.sqlite3"  # an ArchiveBox data folder
        found = source.is_file()
    except OSError as exc:  # a name too long, say
        raise ValidationError(f"cannot read {source}: {exc.strerror}") from None
    if not found:
        raise ValidationError(f"{source}: no such file (expected ArchiveBox's index.sqlite3)")
    return source


def _open_source(source: Path) -> sqlite3.Connection:
    """Open the file for reading only, leaving nothing beside it.

    A WAL-mode file with no ``-wal`` has nothing outside the main file, and
    SQLite would create ``-wal`` and ``-shm`` files to open it even read-only:
    it is opened as immutable instead. Otherwise read-only, so that changes
    still in a ``-wal`` are seen; if that fails (a read-only folder), immutable
    too, unless the ``-wal`` holds changes that immutable would miss.
    """
    with source.open("rb") as f:
        header = f.read(100)
    if len(header) < 100 or not header.startswith(_SQLITE_HEADER):
        raise ValidationError(f"{source} is not an ArchiveBox 0.8 database: it is not SQLite")
    wal = source.with_name(source.name + "-wal")
    pending = wal.exists() and wal.stat().st_size > 0
    uri = source.resolve().as_uri()
    immutable = f"{uri}?mode=ro&immutable=1"
    if header[18] == _WAL_FORMAT and not wal.exists():
        return sqlite3.connect(immutable, uri=True)
    conn = sqlite3.connect(f"{uri}?mode=ro", uri=True)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.DatabaseError as exc:
        conn.close()
        if pending:
            raise ValidationError(
                f"{source} cannot be opened read-only ({exc}) and its -wal file holds "
                "changes that would be missed: copy the folder somewhere writable and "
                "import the copy"
            ) from None
    return sqlite3.connect(immutable, uri=True)


def _check_source(conn: sqlite3.Connection, source: Path) -> None:
    """Refuse, before anything is written, a file that is not an ArchiveBox 0.8 database."""
    not_it = f"{source} is not an ArchiveBox 0.8 database"
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    except sqlite3.DatabaseError as exc:
        raise ValidationError(f"{not_it}: {exc}") from None
    for table in ("django_migrations", *_COLUMNS):
        if table not in tables:
            raise ValidationError(f"{not_it}: it has no {table} table")
    applied = {
        str(name)[:4]
        for (name,) in conn.execute("SELECT name FROM django_migrations WHERE app = 'api'")
    }
    missing = [number for number in _API_MIGRATIONS if number not in applied]
    if missing:
        raise ValidationError(
            f"{not_it}: the api app's migrations {', '.join(missing)} were not applied "
            "(older ArchiveBox versions keep no ABIDs; run ArchiveBox 0.8 on it first)"
        )
    for table, wanted in _COLUMNS.items():
        have = {row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')}
        lacking = [column for column in wanted if column not in have]
        if lacking:
            raise ValidationError(f"{not_it}: {table} has no column {', '.join(lacking)}")


def _rows(conn: sqlite3.Connection, table: str) -> list[sqlite3.Row]:
    columns = ", ".join(f'"{column}"' for column in _COLUMNS[table])
    order = "id" if table == USERS else "created_at, id"
    return list(conn.execute(f'SELECT {columns} FROM "{table}" ORDER BY {order}'))


# -- converting values ----------------------------------------------------------------------


def _time(value: Any, column: str) -> datetime:
    """Django's ``YYYY-MM-DD HH:MM:SS[.ffffff]``, naive UTC, as tokenstore's aware UTC.

    The fraction is missing when the microsecond is 0; ``fromisoformat`` takes both.
    """
    if not isinstance(value, str):
        raise _RowRefused(f"{column} is not a date and time: {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _RowRefused(f"{column} is not a date and time: {value!r}") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _optional_time(value: Any, column: str) -> datetime | None:
    return None if value is None else _time(value, column)


def _uuid(value: Any) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise _RowRefused(f"id {value!r} is not a UUID") from None


def _abid(value: Any, prefix: str) -> str:
    if value is None:
        raise _RowRefused("it has no ABID")
    try:
        return str(ABID.parse(value, prefix=prefix))
    except InvalidABID as exc:
        raise _RowRefused(f"its ABID is not valid: {exc}") from None


def _decrypter(cipher_key: str | None) -> Callable[[str], str] | None:
    """How django-signal-webhooks' encrypted auth tokens are read, given its CIPHER_KEY.

    The stored value is ``base64(nonce (12 bytes) || AES-GCM ciphertext || tag)``,
    the key ``base64decode(CIPHER_KEY)``.
    """
    if cipher_key is None:
        return None
    try:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        raise ValidationError(
            "decrypting webhook auth tokens (the cipher key) needs the cryptography "
            "package: pip install 'tokenstore[archivebox]'"
        ) from None
    try:
        key = base64.b64decode(cipher_key, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError("the cipher key is not base64 (SIGNAL_WEBHOOKS CIPHER_KEY)") from None
    if len(key) not in (16, 24, 32):
        raise ValidationError(
            f"the cipher key must decode to 16, 24 or 32 bytes for AES, got {len(key)}"
        )
    cipher = AESGCM(key)

    def decrypt(stored: str) -> str:
        try:
            data = base64.b64decode(stored, validate=True)
            plain = cipher.decrypt(data[:_NONCE_BYTES], data[_NONCE_BYTES:], None)
            return plain.decode("utf-8")
        except (binascii.Error, ValueError, InvalidTag):
            raise _RowRefused(
                "its auth token cannot be decrypted with the given cipher key: set it "
                "again with webhooks.update(hook, auth_token=...), then enable the hook"
            ) from None

    return decrypt


# -- the import -----------------------------------------------------------------------------


@dataclass
class _Importer:
    users: Users
    validator: HookValidator
    ref_map: dict[str, str]
    decrypt: Callable[[str], str] | None
    report: ArchiveBoxImport
    owners: dict[int, int] = field(default_factory=dict)  # ArchiveBox user id -> tokenstore's
    written: list[uuid.UUID] = field(default_factory=list)

    def run(self, conn: sqlite3.Connection) -> None:
        for table, take, describe in (
            (USERS, self.take_user, _describe_user),
            (TOKENS, self.take_token, _describe_abid_row),
            (HOOKS, self.take_hook, _describe_hook),
        ):
            counts = self.report.counts[table]
            for row in _rows(conn, table):
                try:
                    imported = take(row)
                except (_RowRefused, TokenstoreError) as exc:
                    counts.refused += 1
                    self.report.refused.append(RowNote(table, describe(row), str(exc)))
                    continue
                if imported:
                    counts.imported += 1
                else:
                    counts.present += 1

    def owner(self, row: sqlite3.Row) -> int:
        owner = self.owners.get(row["created_by_id"])
        if owner is None:
            raise _RowRefused(f"its owner (auth_user id {row['created_by_id']}) was not imported")
        return owner

    def take_user(self, row: sqlite3.Row) -> bool:
        """Users are matched by username: ArchiveBox's ``system`` is tokenstore's."""
        existing = User.get_or_none(User.username == row["username"])
        if existing is not None:
            self.owners[row["id"]] = existing.id
            return False
        joined = _time(row["date_joined"], "date_joined")
        user = self.users.create(row["username"], superuser=bool(row["is_superuser"]))
        user.created_at = to_stored_time(joined)
        user.save()
        self.owners[row["id"]] = user.id
        return True

    def take_token(self, row: sqlite3.Row) -> bool:
        """The plain-text token becomes its digest and hint; the string keeps working.

        A token too short to show its last characters safely gets no hint: it still
        authenticates, and is shown as twelve stars.
        """
        token_id = _uuid(row["id"])
        if APIToken.get_or_none(APIToken.id == token_id) is not None:
            return False
        abid = _abid(row["abid"], APIToken.abid_prefix)
        secret = row["token"]
        if not isinstance(secret, str) or not secret:
            raise _RowRefused("its token is empty")
        digest = token_digest(secret)
        try:
            hint = token_hint(secret)
        except ValidationError:  # ArchiveBox's admin takes any token; too short to show a part
            hint = ""
        clash = APIToken.get_or_none((APIToken.abid == abid) | (APIToken.token_digest == digest))
        if clash is not None:
            what = "ABID" if clash.abid == abid else "token"
            raise _RowRefused(f"another API token ({clash.abid}) already has this {what}")
        APIToken.insert(
            id=token_id,
            abid=abid,
            created_by=self.owner(row),
            created_at=_time(row["created_at"], "created_at"),
            modified_at=_time(row["modified_at"], "modified_at"),
            token_digest=digest,
            token_hint=hint,
            expires=_optional_time(row["expires"], "expires"),
            scopes=[],
        ).execute()
        return True

    def auth_token(self, stored: str, reasons: list[str]) -> str:
        """A hook's auth token in plain text, or ``""`` with the reason it could not be read."""
        if not stored:
            return ""
        if self.decrypt is None:
            reasons.append(
                "its auth token is encrypted and no cipher key was given: set it again "
                "with webhooks.update(hook, auth_token=...), then enable the hook"
            )
            return ""
        try:
            return self.decrypt(stored)
        except _RowRefused as exc:
            reasons.append(str(exc))
            return ""

    def take_hook(self, row: sqlite3.Row) -> bool:
        """Every field carries over; what cannot work here yet is imported disabled."""
        hook_id = _uuid(row["id"])
        if OutboundWebhook.get_or_none(OutboundWebhook.id == hook_id) is not None:
            return False
        abid = _abid(row["abid"], OutboundWebhook.abid_prefix)
        if OutboundWebhook.get_or_none(OutboundWebhook.abid == abid) is not None:
            raise _RowRefused(f"another webhook already has the ABID {abid}")
        reasons = [] if row["enabled"] else ["disabled in ArchiveBox"]
        ref = row["ref"]
        target = self.ref_map.get(ref)
        if target is None:
            reasons.append(
                f"its model {ref} is not mapped to a registered one (map it with "
                f"--map {ref}=module.Model or ref_map; afterwards point the hook at a "
                "model with webhooks.update(hook, ref=...) and enable it)"
            )
        else:
            ref = target
        endpoint, url_auth = _without_credentials(row["endpoint"])
        try:
            self.validator.guard.check_endpoint(endpoint)
        except TokenstoreError as exc:
            reasons.append(f"its endpoint is refused: {exc}")
        try:
            headers = json.loads(row["headers"] or "{}")
        except (TypeError, ValueError):
            raise _RowRefused("its headers are not JSON") from None
        if url_auth:
            # httpx, which django-signal-webhooks sends with, puts a URL's credentials in
            # the Authorization header over the hook's auth token and any Authorization
            # header of its own: the receiver only ever got these.
            auth_token = url_auth
            if isinstance(headers, dict):
                headers = {k: v for k, v in headers.items() if str(k).lower() != "authorization"}
        elif isinstance(headers, dict) and "Authorization" in headers:
            # django-signal-webhooks sent this header in place of the auth token, so a
            # token that cannot be read stops nothing that worked (tokenstore does the same).
            auth_token = self.auth_token(row["auth_token"] or "", reasons=[])
        else:
            auth_token = self.auth_token(row["auth_token"] or "", reasons)
        modified = max(_time(row["modified_at"], "modified_at"), _time(row["updated"], "updated"))
        hook = OutboundWebhook(
            id=hook_id,
            abid=abid,
            created_by=self.owner(row),
            created_at=_time(row["created_at"], "created_at"),
            modified_at=modified,
            name=row["name"],
            signal=row["signal"],
            ref=ref,
            endpoint=endpoint,
            headers=headers,
            auth_token=auth_token,
            enabled=not reasons,
            keep_last_response=bool(row["keep_last_response"]),
            last_response=storable(str(row["last_response"] or "")),
            last_success=_optional_time(row["last_success"], "last_success"),
            last_failure=_optional_time(row["last_failure"], "last_failure"),
            secret=new_signing_secret(),
            failure_count=0,
            disabled_reason="; ".join(reasons),
        )
        # The ref and endpoint were judged above: a refusal disables the hook, not the row.
        self.validator(hook, judge_target=False)
        OutboundWebhook.insert(hook.__data__).execute()
        if reasons:
            self.report.disabled.append(RowNote(HOOKS, _describe_hook(row), hook.disabled_reason))
        self.written.append(hook_id)
        return True


def _describe_user(row: sqlite3.Row) -> str:
    return f"id {row['id']} ({row['username']!r})"


def _describe_abid_row(row: sqlite3.Row) -> str:
    """A token or hook by its ABID, else its id: never by the token itself."""
    return str(row["abid"] or f"id {row['id']}")


def _without_credentials(url: Any) -> tuple[Any, str]:
    """A hook URL without ``user:password@``, and the Basic authorization they gave.

    httpx (django-signal-webhooks' client) sends a URL's credentials as HTTP
    Basic auth, percent-decoded; tokenstore keeps URLs free of them (they are
    shown in lists), so they move to the hook's private ``auth_token`` as the
    header value httpx sent.
    """
    try:
        parts = urlsplit(url)
        user, password = parts.username, parts.password
    except (TypeError, ValueError, AttributeError):  # the endpoint check says what is wrong
        return url, ""
    if user is None and password is None:
        return url, ""
    bare = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    if not user and not password:  # a bare "@" or ":@": httpx sends no Basic auth for it
        return bare, ""
    pair = f"{unquote(user or '')}:{unquote(password or '')}".encode()
    return bare, "Basic " + base64.b64encode(pair).decode()


def _describe_hook(row: sqlite3.Row) -> str:
    return f"{_describe_abid_row(row)} ({row['name']!r})"


def import_archivebox(
    path: str | os.PathLike[str],
    *,
    db: peewee.Database,
    users: Users,
    validator: HookValidator,
    ref_map: Mapping[str, str | type[peewee.Model]] | None = None,
    cipher_key: str | None = None,
    dry_run: bool = False,
) -> ArchiveBoxImport:
    """Copy users, API tokens and webhooks from an ArchiveBox 0.8 database (see ``Store``)."""
    source = _source_path(path)
    decrypt = _decrypter(cipher_key)
    refs = dict(DEFAULT_REF_MAP)
    for old, new in (ref_map or {}).items():
        try:
            refs[old] = validator.check_ref(new)
        except ValidationError as exc:
            raise ValidationError(f"cannot map {old} to {new}: {exc}") from None
    conn = _open_source(source)
    conn.row_factory = sqlite3.Row
    try:
        _check_source(conn, source)
        report = ArchiveBoxImport(source=source, dry_run=dry_run)
        importer = _Importer(users, validator, refs, decrypt, report)
        try:
            with db.atomic():
                importer.run(conn)
                if dry_run:
                    raise _DryRun
        except _DryRun:
            return report
    finally:
        conn.close()
    if importer.written:
        report.hooks = list(
            OutboundWebhook.select()
            .where(OutboundWebhook.id.in_(importer.written))
            .order_by(OutboundWebhook.created_at)
        )
    return report
