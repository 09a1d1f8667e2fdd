"""Matching an ArchiveBox file's tokens and hooks against the store's rows, a batch at a time.

A row is present when the store has its id, refused when another row has its
ABID (or its token). Asked row by row, that took two queries a token; here
the keys of a batch of rows are read from the rows first, then asked of the
store in one query each (see ``_archivebox``).
"""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ._abid import abid_from_values
from ._archivebox_source import (
    HOOKS,
    TOKENS,
    RowRefused,
    check_values,
    stored_abid,
    stored_time,
    stored_uuid,
)
from ._credentials import token_digest
from ._models import APIToken, OutboundWebhook

__all__ = ["Keys", "Known", "Unstorable", "lookup", "row_keys", "unstorable"]


@dataclass
class Known:
    """The keys of rows the store has, among those a batch of rows names, read at once.

    As each row of the batch is taken its keys are added, so a later row of
    the same batch meets it as it would meet a row written before it.
    """

    ids: set[uuid.UUID] = field(default_factory=set)
    abids: set[str] = field(default_factory=set)
    digests: dict[str, str] = field(default_factory=dict)  # token digest -> its token's ABID


@dataclass(frozen=True)
class Keys:
    """What a token or hook is matched by, read from its row before the store is asked."""

    id: uuid.UUID
    created: datetime
    abid: str
    digest: str = ""  # a token's; a hook has none


class Unstorable(RowRefused):
    """A value Django never writes (a BLOB, text that is no UTF-8, a NUL): the row is
    refused before anything else of it is read, or looked up."""


def unstorable(row: sqlite3.Row) -> Unstorable | None:
    """Why ``check_values`` refuses the row, if it does: its values are not even looked up
    (PostgreSQL's driver cannot send a NUL)."""
    try:
        check_values(row)
    except RowRefused as exc:
        return Unstorable(str(exc))
    return None


def row_keys(table: str, row: sqlite3.Row) -> Keys | RowRefused:
    """The row's keys, or why it has none: said only if the store does not have its id,
    as the row would be present then, whatever else it holds."""
    try:
        row_id = stored_uuid(row["id"])
        created = stored_time(row["created_at"], "created_at")
        if table == HOOKS:
            prefix = OutboundWebhook.abid_prefix
            abid = stored_abid(
                row["abid"],
                prefix,
                lambda: abid_from_values(prefix, created, row["endpoint"], row["ref"], row_id),
            )
            return Keys(row_id, created, abid)
        prefix = APIToken.abid_prefix
        abid = stored_abid(
            row["abid"],
            prefix,
            lambda: abid_from_values(prefix, created, row["created_by_id"], "01", row_id),
        )
        secret = row["token"]
        if not isinstance(secret, str) or not secret:
            raise RowRefused("its token is empty")
        return Keys(row_id, created, abid, token_digest(secret))
    except RowRefused as exc:
        return exc


def lookup(table: str, rows: list[sqlite3.Row], keys: list[Keys]) -> Known:
    """Which of these ids, ABIDs and token digests the store has: one query each."""
    model: type[APIToken | OutboundWebhook] = APIToken if table == TOKENS else OutboundWebhook
    ids = []
    for row in rows:  # a row whose other keys cannot be read is present all the same
        try:
            ids.append(stored_uuid(row["id"]))
        except RowRefused:
            continue
    known = Known()
    found: Any  # rows as tuples, which peewee's stubs do not know
    if ids:
        found = model.select(model.id).where(model.id.in_(ids)).tuples()
        known.ids.update(i for (i,) in found)
    abids = [k.abid for k in keys]
    if not abids:
        return known
    if table == HOOKS:
        found = model.select(model.abid).where(model.abid.in_(abids)).tuples()
        known.abids.update(abid for (abid,) in found)
        return known
    digests = [k.digest for k in keys]
    found = (
        APIToken.select(APIToken.abid, APIToken.token_digest)
        .where(APIToken.abid.in_(abids) | APIToken.token_digest.in_(digests))
        .tuples()
    )
    for abid, digest in found:
        known.abids.add(abid)
        known.digests[digest] = abid
    return known
