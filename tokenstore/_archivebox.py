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
import json
import os
import sqlite3
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

import peewee

from ._archivebox_keys import Keys, Known, Unstorable, lookup, row_keys, unstorable
from ._archivebox_source import (
    HOOKS,
    TOKENS,
    USERS,
    RowRefused,
    check_source,
    decrypter,
    named,
    open_source,
    optional_time,
    quoted,
    read_rows,
    reason,
    response_text,
    source_path,
    stored_flag,
    stored_text,
    stored_time,
    stored_uuid,
)
from ._credentials import token_hint
from ._errors import StoreError, TokenstoreError, ValidationError, first_line
from ._inputs import check_text, storable
from ._models import APIToken, OutboundWebhook, User
from ._sending import RESPONSE_LIMIT, redacted
from ._signing import new_signing_secret
from ._times import to_stored_time
from ._users import add_user

if TYPE_CHECKING:
    from ._backend import Backend
    from ._hook_rules import HookValidator

__all__ = ["DEFAULT_REF_MAP", "ArchiveBoxImport", "RowNote", "TableCounts", "import_archivebox"]

#: Refs of ArchiveBox models that tokenstore has an equivalent of, which the import fills.
DEFAULT_REF_MAP: Mapping[str, str] = {
    "api.models.APIToken": "tokenstore.APIToken",
    "django.contrib.auth.models.User": "tokenstore.User",
}


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


#: Django's ``auth_user.username`` is ``varchar(150)``, which SQLite does not enforce.
_USERNAME_LENGTH = 150


class _DryRun(Exception):
    """Raised at the end of a dry run, so the transaction rolls everything back."""


# -- the import -----------------------------------------------------------------------------


#: Rows taken at once: their keys looked up in one query per kind of key and the rows
#: written in one INSERT, where one of each per row took 1.2 ms a token; and no more
#: rows than this (with their values) held in memory, however big the file.
_BATCH = 500


@dataclass
class _Batch:
    """A batch of rows as they were judged: the report takes it once its rows are written.

    ``outcomes`` has one entry per row, in the file's order: ``imported``,
    ``present`` or ``refused``, with the row's note (why it was refused, or why
    an imported hook is disabled), so notes come out in the file's order.
    """

    table: str
    rows: list[sqlite3.Row]
    values: list[dict[str, Any]] = field(default_factory=list)  # what is inserted
    outcomes: list[tuple[str, RowNote | None]] = field(default_factory=list)
    read: set[tuple[str, uuid.UUID]] = field(default_factory=set)  # ids first read in it


@dataclass
class _Importer:
    db: Backend
    validator: HookValidator
    ref_map: dict[str, str]
    decrypt: Callable[[str], str] | None
    report: ArchiveBoxImport
    owners: dict[int, int] = field(default_factory=dict)  # ArchiveBox user id -> tokenstore's
    written: list[uuid.UUID] = field(default_factory=list)
    # (table, id) of the rows read: one short key per token and hook of the file
    read: set[tuple[str, uuid.UUID]] = field(default_factory=set)
    user_ids: set[Any] = field(default_factory=set)  # every auth_user id of the file

    def first_read(self, batch: _Batch, row: sqlite3.Row) -> uuid.UUID:
        """The row's id, unless an earlier row of the file had it (a copy without its keys).

        Taken as "present", the second row would be lost without a word.
        """
        row_id = stored_uuid(row["id"])
        key = (batch.table, row_id)
        if key in self.read or key in batch.read:
            raise RowRefused(f"another row of {batch.table} has the same id")
        batch.read.add(key)
        return row_id

    def run(self, conn: sqlite3.Connection) -> None:
        source = self.report.source
        for rows in read_rows(conn, source, USERS, _BATCH):
            self.user_ids.update(row["id"] for row in rows)
            self.take_users(rows)
        for table in (TOKENS, HOOKS):
            for rows in read_rows(conn, source, table, _BATCH):
                self.take_rows(table, rows)

    def owner(self, row: sqlite3.Row) -> int:
        owner = self.owners.get(row["created_by_id"])
        if owner is None:
            owner_id = quoted(row["created_by_id"])
            if row["created_by_id"] in self.user_ids:
                raise RowRefused(f"its owner (auth_user id {owner_id}) was refused above")
            # Django deletes a user's tokens and hooks with them, unless foreign keys were off.
            raise RowRefused(f"its owner (auth_user id {owner_id}) is not in the file")
        return owner

    def take_users(self, rows: list[sqlite3.Row]) -> None:
        """Users one at a time, each under a savepoint, their names looked up at once.

        A user is made as ``users.create`` makes one (its signals, its capture
        events); ArchiveBox has a handful.
        """
        checked = [(row, unstorable(row)) for row in rows]
        # Text only: PostgreSQL refuses to compare a text column with a number.
        names = [row["username"] for row, bad in checked if bad is None]
        names = [name for name in names if isinstance(name, str)]
        pairs: Any = User.select(User.username, User.id).where(User.username.in_(names)).tuples()
        existing: dict[str, int] = dict(pairs)
        for row, bad in checked:
            try:
                if bad is not None:
                    raise bad
                with self.db.atomic():  # a savepoint: a refused row takes back only itself
                    imported = self.take_user(row, existing)
            except StoreError:  # the store failing (disk full, server gone), not the row
                raise
            except _ROW_ERRORS as exc:
                self.tally(USERS, "refused", _note(USERS, row, _refusal(exc)))
                continue
            self.tally(USERS, "imported" if imported else "present")

    def take_user(self, row: sqlite3.Row, existing: dict[str, int]) -> bool:
        """Users are matched by username: ArchiveBox's ``system`` is tokenstore's."""
        if row["username"] in existing:
            self.owners[row["id"]] = existing[row["username"]]
            return False
        username = stored_text(row["username"], "username", _USERNAME_LENGTH)
        if not username:
            raise RowRefused("its username is empty")
        joined = stored_time(row["date_joined"], "date_joined")
        superuser = stored_flag(row["is_superuser"], "is_superuser")
        # Not Users.create's rule: ArchiveBox's ADMIN_USERNAME ('Jane Doe') skipped Django's.
        user = add_user(username, superuser)
        user.created_at = to_stored_time(joined)
        user.save()
        self.owners[row["id"]] = existing[username] = user.id
        return True

    def take_rows(self, table: str, rows: list[sqlite3.Row]) -> None:
        """Judge a batch of tokens or hooks, then write the rows taken in one INSERT.

        The INSERT runs under a savepoint; should the database refuse it (on
        PostgreSQL, a hook whose ref and endpoint overflow an index entry), it
        is taken back and the batch taken again a row at a time, so that only
        the row the database refuses is refused, saying why.
        """
        batch = self.judge(table, rows)
        model = APIToken if table == TOKENS else OutboundWebhook
        try:
            if batch.values:
                with self.db.atomic():
                    model.insert_many(batch.values).execute()
        except StoreError:
            raise
        except _ROW_ERRORS as exc:
            if len(rows) > 1:
                for row in rows:
                    self.take_rows(table, [row])
                return
            batch.outcomes = [("refused", _note(table, rows[0], _refusal(exc)))]
            batch.values.clear()
        self.read |= batch.read
        for outcome, note in batch.outcomes:
            self.tally(table, outcome, note)
        if table == HOOKS:
            self.written.extend(values["id"] for values in batch.values)

    def tally(self, table: str, outcome: str, note: RowNote | None = None) -> None:
        """Count a row's outcome (``imported``, ``present`` or ``refused``) in the report,
        with its note: why it was refused, or why an imported hook is disabled."""
        counts = self.report.counts[table]
        setattr(counts, outcome, getattr(counts, outcome) + 1)
        if note is not None:
            (self.report.refused if outcome == "refused" else self.report.disabled).append(note)

    def judge(self, table: str, rows: list[sqlite3.Row]) -> _Batch:
        """What becomes of each row, against the store's rows read in one query per key."""
        batch = _Batch(table, rows)
        take = self.take_token if table == TOKENS else self.take_hook
        checked = [(row, unstorable(row) or row_keys(table, row)) for row in rows]
        known = lookup(
            table,
            [row for row, keys in checked if not isinstance(keys, Unstorable)],
            [keys for _, keys in checked if isinstance(keys, Keys)],
        )
        for row, keys in checked:
            try:
                if isinstance(keys, Unstorable):
                    raise keys
                values = take(batch, row, keys, known)
            except StoreError:
                raise
            except _ROW_ERRORS as exc:
                batch.outcomes.append(("refused", _note(table, row, _refusal(exc))))
                continue
            if values is None:
                batch.outcomes.append(("present", None))
                continue
            batch.values.append(values)
            reasons = values["disabled_reason"] if table == HOOKS else ""
            note = _note(HOOKS, row, reasons) if reasons else None
            batch.outcomes.append(("imported", note))
        return batch

    def take_token(
        self, batch: _Batch, row: sqlite3.Row, keys: Keys | RowRefused, known: Known
    ) -> dict[str, Any] | None:
        """The plain-text token becomes its digest and hint; the string keeps working.

        A token too short to show its last characters safely gets no hint: it still
        authenticates, and is shown as twelve stars.
        """
        token_id = self.first_read(batch, row)
        if token_id in known.ids:
            return None
        if isinstance(keys, RowRefused):
            raise keys
        if keys.abid in known.abids:
            raise RowRefused(f"another API token ({keys.abid}) already has this ABID")
        secret, digest = row["token"], keys.digest
        if digest in known.digests:
            raise RowRefused(f"another API token ({known.digests[digest]}) already has this token")
        try:
            hint = token_hint(secret)
        except ValidationError:  # ArchiveBox's admin takes any token; too short to show a part
            hint = ""
        values = {
            "id": token_id,
            "abid": keys.abid,
            "created_by": self.owner(row),
            "created_at": keys.created,
            "modified_at": stored_time(row["modified_at"], "modified_at"),
            "token_digest": digest,
            "token_hint": hint,
            "expires": optional_time(row["expires"], "expires"),
            "scopes": [],
        }
        known.abids.add(keys.abid)
        known.digests[digest] = keys.abid
        return values

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
        except RowRefused as exc:
            reasons.append(str(exc))
            return ""

    def take_hook(
        self, batch: _Batch, row: sqlite3.Row, keys: Keys | RowRefused, known: Known
    ) -> dict[str, Any] | None:
        """Every field carries over; what cannot work here yet is imported disabled."""
        hook_id = self.first_read(batch, row)
        if hook_id in known.ids:
            return None
        if isinstance(keys, RowRefused):
            raise keys
        abid = keys.abid
        if abid in known.abids:
            raise RowRefused(f"another webhook already has the ABID {abid}")
        enabled = stored_flag(row["enabled"], "enabled")
        keep_last_response = stored_flag(row["keep_last_response"], "keep_last_response")
        reasons = [] if enabled else ["disabled in ArchiveBox"]
        ref = stored_text(row["ref"], "ref", OutboundWebhook.ref.max_length)
        target = self.ref_map.get(ref)
        if target is None:
            reasons.append(
                f"its model {named(ref)} is not mapped to a registered one (map it with "
                f"--map {named(ref)}=module.Model or ref_map; afterwards point the hook at a "
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
            raise RowRefused("its headers are not JSON") from None
        if url_auth:
            # httpx, which django-signal-webhooks sends with, puts a URL's credentials in
            # the Authorization header over the hook's auth token and any Authorization
            # header of its own: the receiver only ever got these.
            auth_token = url_auth
            if isinstance(headers, dict):
                headers = {k: v for k, v in headers.items() if not _is_authorization(k)}
        elif isinstance(headers, dict) and any(map(_is_authorization, headers)):
            # django-signal-webhooks sent this header in place of the auth token (before
            # it, in any other case), and tokenstore sends it in place of the auth token
            # whatever its case: a token that cannot be read stops nothing that worked.
            auth_token = self.auth_token(row["auth_token"] or "", reasons=[])
        else:
            auth_token = self.auth_token(row["auth_token"] or "", reasons)
        modified = max(
            stored_time(row["modified_at"], "modified_at"), stored_time(row["updated"], "updated")
        )
        hook = OutboundWebhook(
            id=hook_id,
            abid=abid,
            created_by=self.owner(row),
            created_at=keys.created,
            modified_at=modified,
            name=row["name"],
            signal=row["signal"],
            ref=ref,
            endpoint=endpoint,
            headers=headers,
            auth_token=auth_token,
            enabled=not reasons,
            keep_last_response=keep_last_response,
            last_response=storable(response_text(row["last_response"])),
            last_success=optional_time(row["last_success"], "last_success"),
            last_failure=optional_time(row["last_failure"], "last_failure"),
            secret=new_signing_secret(),
            failure_count=0,
            disabled_reason="; ".join(reasons),
        )
        # A receiver that echoed the request answered with the hook's credentials: blanked
        # out, then cut, as tokenstore keeps every response (it is shown; they are not).
        hook.last_response = redacted(hook.last_response, hook)[:RESPONSE_LIMIT]
        # The ref and endpoint were judged above: a refusal disables the hook, not the row.
        self.validator(hook, judge_target=False)
        known.abids.add(abid)
        return dict(hook.__data__)


#: What refuses one row, not the import: the row's values (RowRefused, tokenstore's checks)
#: or the database refusing them (PostgreSQL's limits, such as an index entry's size).
_ROW_ERRORS = (RowRefused, TokenstoreError, peewee.DatabaseError)


def _refusal(exc: Exception) -> str:
    if isinstance(exc, RowRefused | TokenstoreError):
        return str(exc)
    return f"the database refused it: {first_line(exc)}"


def _note(table: str, row: sqlite3.Row, why: str) -> RowNote:
    return RowNote(table, _DESCRIBE[table](row), reason(why))


def _is_authorization(header: Any) -> bool:
    return str(header).lower() == "authorization"


def _describe_user(row: sqlite3.Row) -> str:
    return f"id {named(row['id'])} ({quoted(row['username'])})"


def _describe_abid_row(row: sqlite3.Row) -> str:
    """A token or hook by its ABID, else its id: never by the token itself."""
    return named(row["abid"]) if row["abid"] else f"id {named(row['id'])}"


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
        return _without_userinfo(url), ""
    if user is None and password is None:
        return (url, "") if parts.netloc else (_without_userinfo(url), "")
    bare = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    if not user and not password:  # a bare "@" or ":@": httpx sends no Basic auth for it
        return bare, ""
    pair = f"{unquote(user or '')}:{unquote(password or '')}".encode()
    return bare, "Basic " + base64.b64encode(pair).decode()


def _without_userinfo(url: Any) -> Any:
    """A URL no parser takes (so httpx sent nothing) without what looks like ``user:pass@``.

    The hook is imported disabled, its URL refused; the URL is still shown in
    lists, so a password in it is dropped all the same.
    """
    if not isinstance(url, str):
        return url
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    if "@" not in rest[:end]:
        return url
    return f"{scheme}{sep}{rest[:end].rpartition('@')[2]}{rest[end:]}"


def _describe_hook(row: sqlite3.Row) -> str:
    return f"{_describe_abid_row(row)} ({quoted(row['name'])})"


#: How a report names a row of each table.
_DESCRIBE = {USERS: _describe_user, TOKENS: _describe_abid_row, HOOKS: _describe_hook}


def import_archivebox(
    path: str | os.PathLike[str],
    *,
    db: Backend,
    validator: HookValidator,
    ref_map: Mapping[str, str | type[peewee.Model]] | None = None,
    cipher_key: str | None = None,
    dry_run: bool = False,
) -> ArchiveBoxImport:
    """Copy users, API tokens and webhooks from an ArchiveBox 0.8 database (see ``Store``)."""
    source = source_path(path)
    decrypt = decrypter(cipher_key)
    refs = dict(DEFAULT_REF_MAP)
    for old, new in (ref_map or {}).items():
        check_text(old, "ref_map key")  # anything else maps no hook's ref
        try:
            refs[old] = validator.check_ref(new)
        except ValidationError as exc:
            raise ValidationError(f"cannot map {old} to {new}: {exc}") from None
    with open_source(source) as conn:
        conn.row_factory = sqlite3.Row
        check_source(conn, source)
        report = ArchiveBoxImport(source=source, dry_run=dry_run)
        importer = _Importer(db, validator, refs, decrypt, report)
        validator.allowlist.refresh()  # as the file holds it now: another process may have added
        try:
            with db.atomic():
                if not dry_run:
                    importer.run(conn)
                else:  # the same inserts, rolled back, ids and all
                    with db.ids_given_back(User._meta.table_name):
                        importer.run(conn)
                    raise _DryRun
        except _DryRun:
            return report
    if importer.written:
        report.hooks = list(
            OutboundWebhook.select()
            .where(OutboundWebhook.id.in_(importer.written))
            .order_by(OutboundWebhook.created_at, OutboundWebhook.abid)
        )
    return report
