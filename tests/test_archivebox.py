"""Importing from ArchiveBox 0.8: real SQLite files made with its DDL and encodings.

The databases are built here with the statements ArchiveBox's own file holds
(verbatim from its sqlite_master) and values encoded the way Django writes them:
naive UTC times with the fraction left out when the microsecond is 0, UUIDs as
32 hex digits, booleans as 0/1, tokens in plain text, webhook auth tokens
encrypted as django-signal-webhooks does (AES-GCM, nonce first, base64).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import _db
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pytest_httpserver import HTTPServer

import tokenstore
from tokenstore import APIToken, ExpiredToken, OutboundWebhook, Store, User, ValidationError
from tokenstore._abid import abid_from_values
from tokenstore._sqlite_ddl import schema_sql

# Only ``init`` creates a store; the commands under test work on one that exists.
pytestmark = pytest.mark.usefixtures("store_file")

DDL = [
    'CREATE TABLE "api_apitoken" ("token" varchar(32) NOT NULL UNIQUE, "created_at" datetime NOT NULL, "expires" datetime NULL, "created_by_id" integer NOT NULL REFERENCES "auth_user" ("id") DEFERRABLE INITIALLY DEFERRED, "abid" varchar(30) NULL UNIQUE, "modified_at" datetime NOT NULL, "id" char(32) NOT NULL PRIMARY KEY)',  # noqa: E501
    'CREATE INDEX "api_apitoken_created_by_id_920f9908" ON "api_apitoken" ("created_by_id")',
    'CREATE INDEX "api_apitoken_created_c4654d71" ON "api_apitoken" ("created_at")',
    'CREATE TABLE "api_outboundwebhook" ("name" varchar(255) NOT NULL UNIQUE, "signal" varchar(255) NOT NULL, "ref" varchar(1023) NOT NULL, "endpoint" varchar(2047) NOT NULL, "headers" text NOT NULL CHECK ((JSON_VALID("headers") OR "headers" IS NULL)), "auth_token" varchar(8000) NOT NULL, "enabled" bool NOT NULL, "keep_last_response" bool NOT NULL, "updated" datetime NOT NULL, "last_response" varchar(8000) NOT NULL, "last_success" datetime NULL, "last_failure" datetime NULL, "abid" varchar(30) NULL UNIQUE, "created_by_id" integer NOT NULL REFERENCES "auth_user" ("id") DEFERRABLE INITIALLY DEFERRED, "id" char(32) NOT NULL PRIMARY KEY, "modified_at" datetime NOT NULL, "created_at" datetime NOT NULL, "created" datetime NOT NULL, CONSTRAINT "prevent_duplicate_hooks_api_outboundwebhook" UNIQUE ("ref", "endpoint"))',  # noqa: E501
    'CREATE INDEX "api_outboundwebhook_created_at_be314530" ON "api_outboundwebhook" ("created_at")',  # noqa: E501
    'CREATE INDEX "api_outboundwebhook_created_by_id_7f433523" ON "api_outboundwebhook" ("created_by_id")',  # noqa: E501
    'CREATE INDEX "api_outboundwebhook_ref_afd6fdf5" ON "api_outboundwebhook" ("ref")',
    'CREATE TABLE "auth_user" ("id" integer NOT NULL PRIMARY KEY AUTOINCREMENT, "password" varchar(128) NOT NULL, "last_login" datetime NULL, "is_superuser" bool NOT NULL, "username" varchar(150) NOT NULL UNIQUE, "last_name" varchar(150) NOT NULL, "email" varchar(254) NOT NULL, "is_staff" bool NOT NULL, "is_active" bool NOT NULL, "date_joined" datetime NOT NULL, "first_name" varchar(150) NOT NULL)',  # noqa: E501
    'CREATE TABLE "django_migrations" ("id" integer NOT NULL PRIMARY KEY AUTOINCREMENT, "app" varchar(255) NOT NULL, "name" varchar(255) NOT NULL, "applied" datetime NOT NULL)',  # noqa: E501
]
API_MIGRATIONS = [
    "0001_initial",
    "0002_alter_apitoken_options",
    "0003_rename_user_apitoken_created_by_apitoken_abid_and_more",
    "0004_alter_apitoken_id_alter_apitoken_uuid",
    "0005_remove_apitoken_uuid_remove_outboundwebhook_uuid_and_more",
    "0006_remove_outboundwebhook_uuid_apitoken_id_and_more",
    "0007_alter_apitoken_created_by",
    "0008_alter_apitoken_created_alter_apitoken_created_by_and_more",
    "0009_rename_created_apitoken_created_at_and_more",
]

# The vectors of docs/abid.md, as ArchiveBox stores them.
TOKEN_ID = uuid.UUID("0192c63e-6a1b-7d45-9c1e-3f2a7b8c9d0e")
TOKEN_ABID = "apt_01JAZ6BQG0D53BD22B01XRS78E"  # owner: auth_user id 1
TOKEN = "43bc580c38d8e576c0b61dec11f945de"
HOOK_ID = uuid.UUID("550e8400-e29b-41d4-a716-446655440000")
HOOK_ABID = "whk_01JAZ6BQKV9063B8A606AM8000"
T1 = datetime(2024, 10, 24, 12, 0, 0)  # microsecond 0: stored with no fraction
T2 = datetime(2024, 10, 24, 12, 0, 0, 123000)

CIPHER_KEY = base64.b64encode(bytes(range(32))).decode()
OTHER_KEY = base64.b64encode(b"another 16B key!").decode()


def django_time(value: datetime | None) -> str | None:
    """How Django writes a datetime to SQLite: naive UTC, no fraction when it is 0."""
    if value is None:
        return None
    return value.isoformat(sep=" ")


def encrypt(plain: str, key: str = CIPHER_KEY) -> str:
    """django-signal-webhooks' encryption: base64(nonce || AES-GCM ciphertext || tag)."""
    nonce = os.urandom(12)
    return base64.b64encode(
        nonce + AESGCM(base64.b64decode(key)).encrypt(nonce, plain.encode(), None)
    ).decode()


class ArchiveBox:
    """An ArchiveBox 0.8 index.sqlite3 with the rows a test asks for."""

    def __init__(self, path: Path, wal: bool = False) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None)
        if wal:
            self.conn.execute("PRAGMA journal_mode=wal")
        for statement in DDL:
            self.conn.execute(statement)
        for name in API_MIGRATIONS:
            self.conn.execute(
                "INSERT INTO django_migrations (app, name, applied) VALUES ('api', ?, ?)",
                (name, django_time(T1)),
            )
        self.user(1, "system", superuser=True, password="")

    def user(
        self, id_: int, username: str, superuser: bool = False, password: str = "pbkdf2_sha256$x"
    ) -> None:
        self.conn.execute(
            "INSERT INTO auth_user (id, password, last_login, is_superuser, username, last_name,"
            " email, is_staff, is_active, date_joined, first_name)"
            " VALUES (?, ?, NULL, ?, ?, '', '', ?, 1, ?, '')",
            (id_, password, int(superuser), username, int(superuser), django_time(T1)),
        )

    def token(
        self,
        token: str,
        owner: int = 1,
        id_: uuid.UUID | None = None,
        created: datetime = T1,
        expires: datetime | None = None,
        abid: str | None = None,
    ) -> str:
        id_ = id_ or uuid.uuid4()
        if abid is None:
            abid = str(abid_from_values("apt_", created.replace(tzinfo=UTC), owner, "01", id_))
        modified = created + timedelta(microseconds=417)
        self.conn.execute(
            "INSERT INTO api_apitoken (token, created_at, expires, created_by_id, abid,"
            " modified_at, id) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                token,
                django_time(created),
                django_time(expires),
                owner,
                abid,
                django_time(modified),
                id_.hex,
            ),
        )
        return abid

    def hook(
        self,
        name: str,
        ref: str,
        endpoint: str,
        owner: int = 1,
        id_: uuid.UUID | None = None,
        created: datetime = T1,
        auth_token: str = "",
        headers: dict[str, Any] | None = None,
        enabled: bool = True,
        abid: str | None = None,
        signal: str = "CREATE_OR_UPDATE",
    ) -> str:
        id_ = id_ or uuid.uuid4()
        if abid is None:
            abid = str(abid_from_values("whk_", created.replace(tzinfo=UTC), endpoint, ref, id_))
        self.conn.execute(
            "INSERT INTO api_outboundwebhook (name, signal, ref, endpoint, headers, auth_token,"
            " enabled, keep_last_response, updated, last_response, last_success, last_failure,"
            " abid, created_by_id, id, modified_at, created_at, created)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, 'last body', ?, NULL, ?, ?, ?, ?, ?, ?)",
            (
                name,
                signal,
                ref,
                endpoint,
                json.dumps(headers or {}),
                auth_token,
                int(enabled),
                django_time(created + timedelta(seconds=5, microseconds=1)),
                django_time(created + timedelta(minutes=1)),
                abid,
                owner,
                id_.hex,
                django_time(created + timedelta(seconds=2)),
                django_time(created),
                django_time(created + timedelta(microseconds=900)),
            ),
        )
        return abid

    def close(self) -> None:
        self.conn.close()


def standard(tmp_path: Path, wal: bool = False) -> Path:
    """The common case: system and admin, the vector token and hook, and a few more."""
    box = ArchiveBox(tmp_path / "index.sqlite3", wal=wal)
    box.user(2, "admin", superuser=True)
    box.token(TOKEN, owner=1, id_=TOKEN_ID, abid=TOKEN_ABID)
    box.token("0123456789abcdef0123456789abcdef", owner=2)
    box.hook(
        "snapshots",
        "core.models.Snapshot",
        "https://example.com/webhook/receiver",
        id_=HOOK_ID,
        created=T2,
        abid=HOOK_ABID,
    )
    box.close()
    return box.path


def one_hook(tmp_path: Path, name: str, ref: str, endpoint: str, **row: Any) -> ArchiveBox:
    """An ArchiveBox file holding one hook (``row``: its other columns), closed."""
    box = ArchiveBox(tmp_path / "index.sqlite3")
    box.hook(name, ref, endpoint, **row)
    box.close()
    return box


def rows(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Everything the import may write, to compare before and after."""
    conn = store.db.connection()
    return {
        table: conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
        for table in ("tokenstore_user", "tokenstore_api_token", "tokenstore_outbound_webhook")
    }


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the common case ------------------------------------------------------------------------


def test_users_tokens_and_hooks_come_over_with_ids_and_abids(store: Store, tmp_path: Path) -> None:
    source = standard(tmp_path)
    report = store.import_archivebox(source)

    assert {t: vars(c) for t, c in report.counts.items()} == {
        "auth_user": {"imported": 1, "present": 1, "refused": 0},
        "api_apitoken": {"imported": 2, "present": 0, "refused": 0},
        "api_outboundwebhook": {"imported": 1, "present": 0, "refused": 0},
    }
    admin = store.users.get("admin")
    assert admin.is_superuser
    assert admin.created_at == T1.replace(tzinfo=UTC)

    token = APIToken.get_by_id(TOKEN_ID)
    assert token.abid == TOKEN_ABID
    assert store.tokens.get(TOKEN_ABID.lower()).id == TOKEN_ID  # the TypeID spelling finds it
    assert token.created_by_id == store.system_user.id
    assert token.created_at == T1.replace(tzinfo=UTC)  # stored without a fraction
    assert token.modified_at == T1.replace(tzinfo=UTC)  # 417 µs, cut to the millisecond
    assert token.expires is None
    assert token.token_redacted == "************45de"
    assert token.scopes == []

    hook = OutboundWebhook.get_by_id(HOOK_ID)
    assert hook.abid == HOOK_ABID
    assert hook.created_at == T2.replace(tzinfo=UTC)
    assert hook.ABID.datetime == hook.created_at


def test_a_legacy_token_authenticates_and_is_stored_only_as_its_digest(
    store: Store, tmp_path: Path
) -> None:
    store.import_archivebox(standard(tmp_path))
    token = store.tokens.authenticate(TOKEN)
    assert (token.id, token.abid) == (TOKEN_ID, TOKEN_ABID)
    with pytest.raises(tokenstore.InvalidToken, match="not recognised"):
        store.tokens.authenticate(TOKEN[:-1] + "0")
    store.close()
    if store.path is None:  # PostgreSQL: every stored row, as text
        rows = _db.rows(store, "SELECT t::text FROM tokenstore_api_token AS t")
        assert rows and all(TOKEN not in text for (text,) in rows)
        return
    files = [store.path, *store.path.parent.glob(store.path.name + "-*")]
    for path in files:
        assert TOKEN.encode() not in path.read_bytes()


def test_a_short_token_typed_into_archiveboxs_admin_keeps_working(
    store: Store, tmp_path: Path
) -> None:
    """ArchiveBox's admin lets the token be edited to any text up to 32 chars.

    Too short for tokenstore to show its last four characters without giving much
    of it away, it is imported with no hint rather than refused.
    """
    box = ArchiveBox(tmp_path / "index.sqlite3")
    abid = box.token("letmein")
    box.close()
    report = store.import_archivebox(box.path)
    assert report.refused == []
    token = store.tokens.authenticate("letmein")
    assert (token.abid, token.token_redacted) == (abid, "*" * 12)


def test_an_expired_token_stays_expired(store: Store, tmp_path: Path) -> None:
    box = ArchiveBox(tmp_path / "index.sqlite3")
    box.token("f" * 32, expires=datetime(2025, 1, 1, 0, 0, 0, 1))
    box.close()
    store.import_archivebox(box.path)
    with pytest.raises(ExpiredToken, match="2025-01-01T00:00:00"):
        store.tokens.authenticate("f" * 32)


def test_an_imported_row_saves_although_its_owner_id_differs_from_its_abid(
    store: Store, tmp_path: Path
) -> None:
    store.users.create("carol")  # takes id 2 here, so ArchiveBox's admin (2) becomes 3
    box = ArchiveBox(tmp_path / "index.sqlite3")
    box.user(2, "admin")
    abid = box.token("a" * 32, owner=2)
    box.close()
    store.import_archivebox(box.path)

    token = store.tokens.get(abid)
    assert token.created_by_id == store.users.get("admin").id == 3
    assert token.compute_abid().uri != token.ABID.uri  # hashed from ArchiveBox's id 2
    store.tokens.revoke(token)
    assert APIToken.get_by_id(token.id).abid == abid
    assert APIToken.get_by_id(token.id).revoked_at is not None


def test_users_are_matched_by_username(store: Store, tmp_path: Path) -> None:
    store.users.create("admin", superuser=False)
    store.import_archivebox(standard(tmp_path))
    assert [u.username for u in store.users.list()] == ["system", "admin"]
    assert not store.users.get("admin").is_superuser  # the existing user is left as it was


def test_a_user_named_in_another_script_comes_over_with_their_tokens(
    store: Store, tmp_path: Path
) -> None:
    """Django takes letters of any script in a username, so ArchiveBox users may have them."""
    box = ArchiveBox(tmp_path / "index.sqlite3")
    box.user(2, "josé")
    abid = box.token("b" * 32, owner=2)
    box.close()
    report = store.import_archivebox(box.path)
    assert report.refused == []
    token = store.tokens.authenticate("b" * 32)
    assert token.abid == abid and token.created_by_id == store.users.get("josé").id


@pytest.mark.parametrize("username", ["Jane Doe", "admin ", "ops/lead#1", "x" * 150])
def test_a_username_outside_djangos_rule_comes_over_with_their_tokens(
    store: Store, tmp_path: Path, username: str
) -> None:
    """``archivebox init`` makes its ADMIN_USERNAME a superuser without Django's check.

    A real 0.7.4 folder given ``ADMIN_USERNAME='Jane Doe'`` and upgraded by
    0.8.5rc51 holds that user, and her token.
    """
    box = ArchiveBox(tmp_path / "index.sqlite3")
    box.user(2, username, superuser=True)
    abid = box.token("b" * 32, owner=2)
    box.close()
    report = store.import_archivebox(box.path)
    assert report.refused == []
    token = store.tokens.authenticate("b" * 32)
    assert token.abid == abid and token.created_by.username == username
    assert store.users.get(username).is_superuser


# -- webhooks -------------------------------------------------------------------------------


def test_every_hook_field_carries_over_and_the_hook_delivers(
    store: Store, tmp_path: Path, httpserver: HTTPServer
) -> None:
    box = ArchiveBox(tmp_path / "index.sqlite3")
    hook_id = uuid.uuid4()
    abid = box.hook(
        "tokens",
        "api.models.APIToken",
        httpserver.url_for("/in"),
        id_=hook_id,
        auth_token=encrypt("Bearer s3cret"),
        headers={"X-Archive-Source": "x", "X-Api-Version": "1"},
        signal="CREATE_UPDATE_OR_DELETE",
    )
    box.close()
    report = store.import_archivebox(box.path, cipher_key=CIPHER_KEY)
    assert report.disabled == []
    (hook,) = report.hooks
    assert (hook.id, hook.abid, hook.name) == (hook_id, abid, "tokens")
    assert hook.ref == "tokenstore.APIToken"
    assert hook.signal == "CREATE_UPDATE_OR_DELETE"
    assert hook.endpoint == httpserver.url_for("/in")
    assert hook.headers == {"X-Archive-Source": "x", "X-Api-Version": "1"}
    assert hook.auth_token == "Bearer s3cret"
    assert hook.enabled and hook.keep_last_response and hook.disabled_reason == ""
    assert hook.last_response == "last body"
    assert hook.last_success == (T1 + timedelta(minutes=1)).replace(tzinfo=UTC)
    assert hook.last_failure is None
    assert hook.created == T1.replace(tzinfo=UTC)
    assert hook.updated == (T1 + timedelta(seconds=5)).replace(tzinfo=UTC)  # the later one
    assert hook.secret.startswith("whsec_")

    httpserver.expect_request("/in", method="POST").respond_with_data("ok")
    store.tokens.create(store.system_user)
    (request,) = [r for r, _ in httpserver.log]
    assert request.headers["Authorization"] == "Bearer s3cret"
    assert request.headers["X-Archive-Source"] == "x"
    assert json.loads(request.data)["type"] == "apitoken.created"


def test_an_unmapped_ref_imports_the_hook_disabled_until_mapped(
    store: Store, tmp_path: Path
) -> None:
    source = standard(tmp_path)
    report = store.import_archivebox(source)
    (note,) = report.disabled
    assert note.row == f"{HOOK_ABID} ('snapshots')"
    assert "core.models.Snapshot is not mapped" in note.reason
    hook = OutboundWebhook.get_by_id(HOOK_ID)
    assert not hook.enabled
    assert hook.ref == "core.models.Snapshot"
    assert hook.disabled_reason == note.reason


def test_map_points_a_ref_at_a_registered_model(tmp_path: Path) -> None:
    from _app_models import Bookmark

    source = standard(tmp_path)
    with tokenstore.open(tmp_path / "store.sqlite3") as store:
        store.register(Bookmark)
        report = store.import_archivebox(
            source, ref_map={"core.models.Snapshot": "_app_models.Bookmark"}
        )
        assert report.disabled == []
        hook = OutboundWebhook.get_by_id(HOOK_ID)
        assert (hook.ref, hook.enabled, hook.abid) == ("_app_models.Bookmark", True, HOOK_ABID)
        store.webhooks.update(hook, name="bookmarks")  # a later save: drift is allowed
        assert OutboundWebhook.get_by_id(HOOK_ID).abid == HOOK_ABID


def test_a_map_to_an_unknown_model_is_refused_before_anything_is_written(
    store: Store, tmp_path: Path
) -> None:
    source = standard(tmp_path)
    before = rows(store)
    with pytest.raises(ValidationError, match=r"cannot map core\.models\.Snapshot to app\.Nope"):
        store.import_archivebox(source, ref_map={"core.models.Snapshot": "app.Nope"})
    assert rows(store) == before


@pytest.mark.parametrize(
    ("old", "message"),
    [
        (b"core.models.Snapshot", "ref_map key must be a string, got bytes"),
        (5, "ref_map key must be a string, got int"),
        ("core\x00models", "ref_map key must not contain a NUL character"),
    ],
)
def test_a_map_from_something_no_ref_can_be_is_refused(
    store: Store, tmp_path: Path, old: Any, message: str
) -> None:
    """It mapped nothing: the hooks it was meant for came over disabled, as unmapped."""
    source = standard(tmp_path)
    before = rows(store)
    with pytest.raises(ValidationError, match=f"^{message}"):
        store.import_archivebox(source, ref_map={old: "tokenstore.User"})
    assert rows(store) == before


def test_a_refused_endpoint_imports_the_hook_disabled(store: Store, tmp_path: Path) -> None:
    box = one_hook(tmp_path, "metadata", "api.models.APIToken", "http://169.254.169.254/latest")
    (note,) = store.import_archivebox(box.path).disabled
    assert "its endpoint is refused" in note.reason
    hook = store.webhooks.get("metadata")
    assert (hook.enabled, hook.endpoint) == (False, "http://169.254.169.254/latest")


def test_credentials_in_a_hook_url_become_its_basic_auth(store: Store, tmp_path: Path) -> None:
    """What httpx made of ``user:password@`` in ArchiveBox, tokenstore keeps privately.

    They won over the hook's auth token and its own Authorization header (httpx
    sets the header last), so those were never sent and are not kept either; see
    tests/test_archivebox_real.py for what ArchiveBox really sent.
    """
    box = ArchiveBox(tmp_path / "index.sqlite3")
    box.hook("basic", "api.models.APIToken", "https://bob:s%40cret@hooks.example/in")
    box.hook(
        "both",
        "api.models.APIToken",
        "https://bob:s3cret@b.example/",
        auth_token="Token x",  # not even encrypted: it is not read at all
        headers={"authorization": "Bearer y", "X-Kept": "1"},
    )
    box.close()
    report = store.import_archivebox(box.path)
    assert report.disabled == []
    basic = store.webhooks.get("basic")
    expected = "Basic " + base64.b64encode(b"bob:s@cret").decode()
    assert (basic.enabled, basic.endpoint, basic.auth_token) == (
        True,
        "https://hooks.example/in",
        expected,
    )
    both = store.webhooks.get("both")
    assert (both.enabled, both.endpoint, both.auth_token, both.headers) == (
        True,
        "https://b.example/",
        "Basic " + base64.b64encode(b"bob:s3cret").decode(),
        {"X-Kept": "1"},
    )
    shown = repr(report) + repr(store.webhooks.list())
    assert "cret" not in shown


def test_an_empty_user_and_password_in_a_hook_url_is_no_credential(
    store: Store, tmp_path: Path
) -> None:
    """httpx sends Basic auth only for a non-empty user or password; else the hook's own."""
    box = ArchiveBox(tmp_path / "index.sqlite3")
    box.hook("at", "api.models.APIToken", "https://@a.example/", auth_token=encrypt("Token a"))
    box.hook("colon", "api.models.APIToken", "https://:@b.example/")
    box.hook("password", "api.models.APIToken", "https://:pw@c.example/")
    box.close()
    store.import_archivebox(box.path, cipher_key=CIPHER_KEY)
    hooks = {h.name: (h.endpoint, h.auth_token, h.enabled) for h in store.webhooks.list()}
    assert hooks == {
        "at": ("https://a.example/", "Token a", True),
        "colon": ("https://b.example/", "", True),
        "password": ("https://c.example/", "Basic " + base64.b64encode(b":pw").decode(), True),
    }


def test_an_encrypted_auth_token_without_the_key_disables_the_hook(
    store: Store, tmp_path: Path
) -> None:
    box = ArchiveBox(tmp_path / "index.sqlite3")
    box.hook("a", "api.models.APIToken", "https://a.example/", auth_token=encrypt("k1"))
    box.hook("b", "api.models.APIToken", "https://b.example/", auth_token=encrypt("k2", OTHER_KEY))
    box.hook("c", "api.models.APIToken", "https://c.example/", enabled=False)
    box.close()
    report = store.import_archivebox(box.path)
    reasons = {note.row.split(" ")[1]: note.reason for note in report.disabled}
    assert "no cipher key was given: set it again" in reasons["('a')"]
    assert "no cipher key" in reasons["('b')"]
    assert reasons["('c')"] == "disabled in ArchiveBox"
    assert [h.auth_token for h in store.webhooks.list()] == ["", "", ""]


def test_an_authorization_header_in_any_case_needs_no_cipher_key(
    store: Store, tmp_path: Path
) -> None:
    """Header names are case-insensitive: tokenstore sends ``authorization`` in place of
    the auth token as it does ``Authorization``, so an unreadable token stops nothing."""
    box = ArchiveBox(tmp_path / "index.sqlite3")
    box.hook(
        "lower",
        "api.models.APIToken",
        "https://a.example/",
        auth_token=encrypt("k1"),
        headers={"authorization": "Token mine"},
    )
    box.close()
    report = store.import_archivebox(box.path)
    hook = store.webhooks.get("lower")
    assert (hook.enabled, hook.auth_token) == (True, ""), hook.disabled_reason
    assert hook.headers == {"authorization": "Token mine"} and report.disabled == []


def test_a_wrong_cipher_key_disables_only_the_hooks_it_cannot_read(
    store: Store, tmp_path: Path
) -> None:
    box = ArchiveBox(tmp_path / "index.sqlite3")
    box.hook("a", "api.models.APIToken", "https://a.example/", auth_token=encrypt("k1"))
    box.hook("b", "api.models.APIToken", "https://b.example/", auth_token=encrypt("k2", OTHER_KEY))
    box.close()
    report = store.import_archivebox(box.path, cipher_key=CIPHER_KEY)
    ((row, reason),) = [(n.row, n.reason) for n in report.disabled]
    assert row.endswith("('b')") and "cannot be decrypted with the given cipher key" in reason
    assert store.webhooks.get("a").auth_token == "k1"
    assert store.webhooks.get("a").enabled


@pytest.mark.parametrize(
    ("key", "message"),
    [("not base64!", "not base64"), ("QUJD", "16, 24 or 32 bytes for AES, got 3")],
)
def test_a_malformed_cipher_key_is_refused(
    store: Store, tmp_path: Path, key: str, message: str
) -> None:
    source = standard(tmp_path)
    with pytest.raises(ValidationError, match=message):
        store.import_archivebox(source, cipher_key=key)
    assert store.users.list() == [store.system_user]


# -- idempotency, dry run, refusals ---------------------------------------------------------


def test_a_second_import_changes_nothing(store: Store, tmp_path: Path) -> None:
    source = standard(tmp_path)
    store.import_archivebox(source)
    before = rows(store)
    again = store.import_archivebox(source)
    assert rows(store) == before
    assert {t: vars(c) for t, c in again.counts.items()} == {
        "auth_user": {"imported": 0, "present": 2, "refused": 0},
        "api_apitoken": {"imported": 0, "present": 2, "refused": 0},
        "api_outboundwebhook": {"imported": 0, "present": 1, "refused": 0},
    }
    assert again.hooks == [] and again.disabled == []


def test_a_dry_run_reports_the_same_and_writes_nothing(store: Store, tmp_path: Path) -> None:
    source = standard(tmp_path)
    before = rows(store)
    dry = store.import_archivebox(source, dry_run=True)
    assert rows(store) == before
    assert dry.dry_run and dry.hooks == []
    real = store.import_archivebox(source)
    assert dry.counts == real.counts
    assert dry.disabled == real.disabled
    # nor takes ids: on PostgreSQL its rolled-back inserts drew them from a sequence
    assert [u.id for u in store.users.list()] == list(range(1, len(store.users.list()) + 1))


def test_rows_that_cannot_be_taken_are_listed_with_the_reason(store: Store, tmp_path: Path) -> None:
    box = ArchiveBox(tmp_path / "index.sqlite3")
    box.user(2, "x" * 151)  # varchar(150), which SQLite does not enforce
    box.user(3, "")
    box.token("b" * 32, owner=2)
    box.token("c" * 32, abid="apt_not-an-abid")
    box.token("d" * 32, owner=1)
    gone = box.token("e" * 32, owner=9)  # its user deleted with foreign keys off
    box.hook("", "api.models.APIToken", "https://example.com/")
    box.close()
    report = store.import_archivebox(box.path)
    reasons = {(n.table, n.row.split(" ")[0]): n.reason for n in report.refused}
    users = {n.row: n.reason for n in report.refused if n.table == "auth_user"}
    assert users == {
        f"id 2 ('{'x' * 49}… (153 characters))": "username is 151 characters, at most 150",
        "id 3 ('')": "its username is empty",
    }
    assert any("auth_user id 2) was refused above" in r for r in reasons.values())
    assert reasons[("api_apitoken", gone)] == "its owner (auth_user id 9) is not in the file"
    assert "its ABID is not valid" in reasons[("api_apitoken", "apt_not-an-abid")]
    assert any("webhook name must be 1-255 characters" in r for r in reasons.values())
    assert report.counts["api_apitoken"].imported == 1
    assert report.counts["api_apitoken"].refused == 3
    for note in report.refused:
        for secret in ("b" * 32, "c" * 32):
            assert secret not in note.reason and secret not in note.row


def test_a_nul_in_a_hooks_last_response_is_kept_as_a_replacement_character(
    store: Store, tmp_path: Path
) -> None:
    """PostgreSQL text cannot hold NUL; SQLite's can, and ArchiveBox kept whatever came back."""
    box = ArchiveBox(tmp_path / "index.sqlite3")
    box.hook("snapshots", "api.models.APIToken", "https://example.com/")
    box.conn.execute("UPDATE api_outboundwebhook SET last_response = 'a' || char(0) || 'b'")
    box.close()
    store.import_archivebox(box.path)
    (hook,) = store.webhooks.list()
    assert hook.last_response == "a\ufffdb"


def test_a_kept_response_that_echoes_the_hooks_credentials_has_them_blanked(
    store: Store, tmp_path: Path
) -> None:
    """A receiver that echoed ArchiveBox's request answered with its credentials.

    tokenstore blanks a hook's own secrets out of the response it keeps, and shows
    that response where it shows no auth token or header value (``webhooks show``).
    """
    box = ArchiveBox(tmp_path / "index.sqlite3")
    box.hook(
        "echo",
        "api.models.APIToken",
        "https://mirror:hunter22@a.example/",
        headers={"X-Api-Key": "key-7f3c9e1a"},
    )
    box.hook(
        "token",
        "api.models.APIToken",
        "https://b.example/",
        auth_token=encrypt("Bearer audit-7f3c9e1a2b"),
    )
    basic = "Basic " + base64.b64encode(b"mirror:hunter22").decode()
    echoes = {
        "echo": {"Authorization": basic, "X-Api-Key": "key-7f3c9e1a"},
        "token": {"Authorization": "Bearer audit-7f3c9e1a2b", "X-Token": "audit-7f3c9e1a2b"},
    }
    for name, echo in echoes.items():
        box.conn.execute(
            "UPDATE api_outboundwebhook SET last_response = ? WHERE name = ?",
            (json.dumps({"headers": echo}), name),
        )
    box.close()
    store.import_archivebox(box.path, cipher_key=CIPHER_KEY)
    assert store.webhooks.get("echo").last_response == (
        '{"headers": {"Authorization": "***", "X-Api-Key": "***"}}'
    )
    assert store.webhooks.get("token").last_response == (
        '{"headers": {"Authorization": "***", "X-Token": "***"}}'
    )


def test_a_kept_response_is_cut_to_what_tokenstore_keeps(store: Store, tmp_path: Path) -> None:
    """django-signal-webhooks cut it to 8,000 characters, which SQLite does not enforce."""
    box = ArchiveBox(tmp_path / "index.sqlite3")
    box.hook("long", "api.models.APIToken", "https://a.example/")
    box.conn.execute("UPDATE api_outboundwebhook SET last_response = ?", ("é" * 100_000,))
    box.close()
    store.import_archivebox(box.path)
    assert store.webhooks.get("long").last_response == "é" * 8000


def make_not_archivebox(kind: str, path: Path) -> Path:
    if kind == "text":
        path.write_text("hello, I am not a database\n" * 10)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "tokenstore":  # not opened as a store: that would rebind the models
        with sqlite3.connect(path) as conn:
            conn.executescript(schema_sql())
    elif kind == "no migrations":
        ArchiveBox(path).conn.execute("DELETE FROM django_migrations").connection.close()
    elif kind == "archivebox 0.7":  # snapshots, and no api app at all
        box = ArchiveBox(path)
        box.conn.execute("DROP TABLE api_apitoken")
        box.conn.execute("DROP TABLE api_outboundwebhook")
        box.conn.execute("DELETE FROM django_migrations")
        box.conn.execute('CREATE TABLE "core_snapshot" ("id" char(32) NOT NULL PRIMARY KEY)')
        box.close()
    elif kind == "no abid column":
        box = ArchiveBox(path)  # with the api_apitoken of an early 0.8 development version
        box.conn.execute("DROP TABLE api_apitoken")
        box.conn.execute(
            'CREATE TABLE "api_apitoken" ("id" integer NOT NULL PRIMARY KEY AUTOINCREMENT,'
            ' "token" varchar(32) NOT NULL UNIQUE, "created" datetime NOT NULL,'
            ' "expires" datetime NULL, "user_id" integer NOT NULL)'
        )
        box.close()
    return path


NOT_ARCHIVEBOX = {
    "text": "not SQLite",
    "empty": "not SQLite",
    "tokenstore": "it has no django_migrations table",
    "no migrations": "the api app's migrations 0001, 0002",
    "archivebox 0.7": (
        "it has no api_apitoken table: it is from ArchiveBox 0.7 or older, which kept no "
        "API tokens or webhooks (run ArchiveBox 0.8's archivebox init on its folder first)"
    ),
    "no abid column": "api_apitoken has no column abid, created_at, modified_at, created_by_id",
}


@pytest.mark.parametrize("kind", NOT_ARCHIVEBOX)
def test_a_file_that_is_not_archivebox_08_is_refused(
    store: Store, tmp_path: Path, kind: str
) -> None:
    source = make_not_archivebox(kind, tmp_path / "other.sqlite3")
    before = rows(store)
    with pytest.raises(ValidationError, match=r"is not an ArchiveBox 0\.8 database") as caught:
        store.import_archivebox(source)
    assert NOT_ARCHIVEBOX[kind] in str(caught.value)
    assert rows(store) == before


def test_a_missing_file_is_refused(store: Store, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no such file"):
        store.import_archivebox(tmp_path / "nowhere.sqlite3")


def test_a_source_that_is_no_regular_file_is_called_so(store: Store) -> None:
    """/dev/zero exists: "no such file" would send its user looking for a typo."""
    with pytest.raises(ValidationError) as caught:
        store.import_archivebox("/dev/zero")
    assert str(caught.value) == (
        "/dev/zero is not a regular file (expected ArchiveBox's index.sqlite3)"
    )


def test_a_data_folder_means_its_index(store: Store, tmp_path: Path) -> None:
    standard(tmp_path)
    assert store.import_archivebox(tmp_path).counts["api_apitoken"].imported == 2


# -- reading without writing ----------------------------------------------------------------


@pytest.mark.parametrize("empty_wal", [False, True], ids=["no -wal", "empty -wal"])
def test_a_wal_file_without_its_wal_is_read_and_left_as_it_was(
    store: Store, tmp_path: Path, empty_wal: bool
) -> None:
    """Closed cleanly, or with an empty -wal and no -shm: no program has it open."""
    folder = tmp_path / "data"
    folder.mkdir()
    source = standard(folder, wal=True)
    assert source.read_bytes()[18] == 2  # WAL mode, closed cleanly: no -wal beside it
    if empty_wal:
        (folder / "index.sqlite3-wal").touch()
    before = (digest(source), sorted(p.name for p in folder.iterdir()))
    assert store.import_archivebox(source).counts["api_apitoken"].imported == 2
    assert (digest(source), sorted(p.name for p in folder.iterdir())) == before


def test_changes_still_in_the_wal_are_read(store: Store, tmp_path: Path) -> None:
    box = ArchiveBox(tmp_path / "index.sqlite3", wal=True)
    box.conn.execute("PRAGMA wal_autocheckpoint=0")
    box.token("e" * 32)  # committed, but only in the -wal while box stays open
    try:
        assert (tmp_path / "index.sqlite3-wal").stat().st_size > 0
        store.import_archivebox(box.path)
        assert store.tokens.authenticate("e" * 32)
    finally:
        box.close()


def test_changes_in_the_wal_of_a_linked_file_are_read(store: Store, tmp_path: Path) -> None:
    """An index.sqlite3 that is a symbolic link: SQLite keeps the -wal beside the file."""
    box = ArchiveBox(tmp_path / "index.sqlite3", wal=True)
    box.conn.execute("PRAGMA wal_autocheckpoint=0")
    box.token("e" * 32)  # committed, but only in the -wal while box stays open
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "index.sqlite3").symlink_to(box.path)
    try:
        store.import_archivebox(linked)
        assert store.tokens.authenticate("e" * 32)
    finally:
        box.close()


def test_a_wal_left_without_its_shm_is_read_and_the_folder_left_as_it_was(
    store: Store, tmp_path: Path
) -> None:
    """No program has the file open (it would have a -shm): ArchiveBox was stopped, or the
    folder copied. SQLite reading the -wal there would make a -shm beside it."""
    box = ArchiveBox(tmp_path / "index.sqlite3", wal=True)
    box.conn.execute("PRAGMA wal_autocheckpoint=0")
    box.token("e" * 32)  # committed, but only in the -wal while box stays open
    left = tmp_path / "left"
    left.mkdir()
    for name in ("index.sqlite3", "index.sqlite3-wal"):
        shutil.copy(tmp_path / name, left / name)
    box.close()
    before = {p.name: digest(p) for p in left.iterdir()}
    store.import_archivebox(left)
    assert store.tokens.authenticate("e" * 32)
    assert {p.name: digest(p) for p in left.iterdir()} == before


def test_a_read_only_copy_is_read(store: Store, tmp_path: Path) -> None:
    source = standard(tmp_path)
    copy = tmp_path / "copy" / "index.sqlite3"
    copy.parent.mkdir()
    shutil.copy(source, copy)
    copy.chmod(stat.S_IRUSR | stat.S_IRGRP)
    copy.parent.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        before = digest(copy)
        assert store.import_archivebox(copy).counts["api_apitoken"].imported == 2
        assert digest(copy) == before
        assert sorted(p.name for p in copy.parent.iterdir()) == ["index.sqlite3"]
    finally:
        copy.parent.chmod(stat.S_IRWXU)


# -- the command ----------------------------------------------------------------------------

COMMAND = [sys.executable, "-m", "tokenstore"]


def run(
    db: Path, *args: str, expect: int = 0, stdin: str | None = None, python: list[str] = COMMAND
) -> subprocess.CompletedProcess[str]:
    here = str(Path(__file__).parent)
    env = {
        **os.environ,
        "TOKENSTORE_DB": str(db),
        "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("TOKENSTORE_WEBHOOK_ALLOW", None)
    result = subprocess.run(
        [*python, *args], capture_output=True, text=True, timeout=60, env=env, input=stdin
    )
    assert result.returncode == expect, (result.returncode, result.stdout, result.stderr)
    return result


def test_the_command_imports_maps_decrypts_and_shows_the_secrets(
    tmp_path: Path, store_file: Path
) -> None:
    source = standard(tmp_path)
    box = ArchiveBox(tmp_path / "more.sqlite3")
    box.hook("keyed", "api.models.APIToken", "https://k.example/", auth_token=encrypt("k1"))
    box.close()
    db = store_file  # the fixture's store, on either backend
    args = ("--app", "_app_models", "import", "archivebox")
    mapping = ("--map", "core.models.Snapshot=_app_models.Bookmark")
    shown = json.loads(run(db, "--json", *args, str(source), *mapping).stdout)
    assert shown["dry_run"] is False
    assert {c["table"]: c["imported"] for c in shown["counts"]} == {
        "auth_user": 1,
        "api_apitoken": 2,
        "api_outboundwebhook": 1,
    }
    ((hook),) = shown["hooks"]
    assert (hook["abid"], hook["enabled"]) == (HOOK_ABID, True)
    assert hook["secret"].startswith("whsec_")

    keyed = run(db, "import", "archivebox", str(box.path), "--cipher-key", "-", stdin=CIPHER_KEY)
    assert "keyed" in keyed.stdout and "whsec_" in keyed.stdout
    with tokenstore.open(db) as store:
        assert store.webhooks.get("keyed").auth_token == "k1"
        assert store.tokens.authenticate(TOKEN).abid == TOKEN_ABID

    again = run(db, *args, str(source), *mapping)
    assert "whsec_" not in again.stdout
    assert "api_apitoken" in again.stdout


def test_the_command_lists_refusals_and_a_dry_run_writes_nothing(
    tmp_path: Path, store_file: Path
) -> None:
    source = standard(tmp_path)
    db = store_file  # the fixture's store, on either backend
    dry = run(db, "import", "archivebox", str(source), "--dry-run")
    assert "dry run: nothing was written" in dry.stderr
    assert f"disabled: api_outboundwebhook {HOOK_ABID} ('snapshots'): its model" in dry.stdout
    assert "whsec_" not in dry.stdout
    with tokenstore.open(db) as store:
        assert store.users.list() == [store.system_user]
        assert store.tokens.list() == [] and store.webhooks.list() == []


def test_a_dry_run_with_app_and_allow_judges_by_them_and_writes_them_nowhere(
    tmp_path: Path, store_file: Path
) -> None:
    """The README's dry run names --app (for --map) and --allow: neither may reach the store."""
    box = one_hook(tmp_path, "local", "core.models.Snapshot", "http://127.0.0.1:9/hook")
    db = store_file  # the fixture's store, on either backend
    with tokenstore.open(db) as store:
        tables_before = set(store.db.get_tables())
    args = ("--app", "_app_models", "--allow", "127.0.0.1/32", "import", "archivebox")
    mapping = ("--map", "core.models.Snapshot=_app_models.Bookmark")
    dry = json.loads(run(db, "--json", *args, str(box.path), *mapping, "--dry-run").stdout)
    assert dry["dry_run"] is True and dry["disabled"] == [] and dry["refused"] == []
    assert {c["table"]: c["imported"] for c in dry["counts"]}["api_outboundwebhook"] == 1
    with tokenstore.open(db) as store:
        assert set(store.db.get_tables()) == tables_before  # no table of the app's
        assert store.webhooks.allowlist() == []
        assert store.webhooks.list() == []
    real = json.loads(run(db, "--json", *args, str(box.path), *mapping).stdout)
    assert [(h["name"], h["enabled"]) for h in real["hooks"]] == [("local", True)]


@pytest.mark.parametrize("kind", ["text", "tokenstore", "no migrations"])
def test_the_command_refuses_a_file_that_is_not_archivebox(
    tmp_path: Path, store_file: Path, kind: str
) -> None:
    source = make_not_archivebox(kind, tmp_path / "other.sqlite3")
    db = store_file  # the fixture's store, on either backend
    failed = run(db, "import", "archivebox", str(source), expect=2)
    assert failed.stdout == ""
    (line,) = failed.stderr.splitlines()
    assert line.startswith("tokenstore: error: ") and "not an ArchiveBox 0.8 database" in line
    with tokenstore.open(db) as store:
        assert store.users.list() == [store.system_user] and store.tokens.list() == []


def test_a_bad_map_is_refused(tmp_path: Path) -> None:
    failed = run(tmp_path / "s.sqlite3", "import", "archivebox", "x", "--map", "nope", expect=2)
    assert "--map 'nope' must look like" in failed.stderr


def test_without_cryptography_the_cipher_key_names_the_extra(
    tmp_path: Path, store_file: Path
) -> None:
    source = standard(tmp_path)
    no_cryptography = [
        sys.executable,
        "-c",
        "import sys; sys.modules['cryptography'] = None; "
        "from tokenstore._cli import main; sys.exit(main())",
    ]
    failed = run(
        store_file,
        "import",
        "archivebox",
        str(source),
        "--cipher-key",
        "-",
        stdin=CIPHER_KEY,
        expect=2,
        python=no_cryptography,
    )
    (line,) = failed.stderr.splitlines()
    assert "pip install 'tokenstore[archivebox]'" in line
    assert CIPHER_KEY not in line


def test_user_model_is_untouched_by_a_refused_import(tmp_path: Path) -> None:
    with tokenstore.open(tmp_path / "store.sqlite3") as store:
        before = list(User.select())
        with pytest.raises(ValidationError):
            store.import_archivebox(make_not_archivebox("text", tmp_path / "t"))
        assert list(User.select()) == before


# -- a damaged or busy source ---------------------------------------------------------------


def test_a_table_that_cannot_be_read_is_refused_before_anything_is_written(
    store: Store, tmp_path: Path
) -> None:
    """A view over a table that is gone: SQLite fails only when it is read."""
    box = ArchiveBox(tmp_path / "index.sqlite3")
    box.conn.execute("DROP TABLE api_apitoken")
    box.conn.execute("CREATE VIEW api_apitoken AS SELECT * FROM gone")
    box.close()
    before = rows(store)
    with pytest.raises(ValidationError, match=r"index\.sqlite3 cannot be read: .*gone"):
        store.import_archivebox(box.path)
    assert rows(store) == before


def test_a_damaged_file_is_refused_before_anything_is_written(store: Store, tmp_path: Path) -> None:
    source = standard(tmp_path)
    data = bytearray(source.read_bytes())
    data[4096:] = b"\xff" * (len(data) - 4096)  # every page but the first, the schema's
    source.write_bytes(bytes(data))
    before = rows(store)
    with pytest.raises(ValidationError, match=r"index\.sqlite3 cannot be read: .*malformed"):
        store.import_archivebox(source)
    assert rows(store) == before


def test_text_that_is_not_utf8_or_a_blob_refuses_its_row_naming_the_column(
    store: Store, tmp_path: Path
) -> None:
    box = ArchiveBox(tmp_path / "index.sqlite3")
    box.user(2, "bytes")
    box.token("a" * 32)
    box.token("b" * 32)
    box.hook("kept", "api.models.APIToken", "https://a.example/")
    box.conn.execute("UPDATE auth_user SET username = x'6279746573' WHERE id = 2")
    box.conn.execute(
        "UPDATE api_apitoken SET token = CAST(x'ff61' AS TEXT) WHERE token = ?", ("a" * 32,)
    )
    box.conn.execute("UPDATE api_outboundwebhook SET last_response = CAST(x'61ff62' AS TEXT)")
    box.close()
    report = store.import_archivebox(box.path)
    reasons = {n.table: n.reason for n in report.refused}
    assert reasons == {
        "auth_user": "username holds a BLOB",
        "api_apitoken": "token holds text that is not UTF-8",
    }
    assert store.tokens.authenticate("b" * 32)
    # ArchiveBox kept whatever a receiver answered: that much is kept, readable.
    assert store.webhooks.get("kept").last_response == "a\ufffdb"


def test_a_file_locked_by_a_writer_is_refused_not_read_under_it(
    store: Store, tmp_path: Path
) -> None:
    """ArchiveBox writing (rollback journal): what the file holds now may be half a change."""
    source = standard(tmp_path)
    writer = sqlite3.connect(source, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(ValidationError, match="is locked by another program"):
            store.import_archivebox(source)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert store.tokens.list() == []


def test_a_change_left_unfinished_by_a_crash_is_refused_not_read_half_done(
    store: Store, tmp_path: Path
) -> None:
    """A hot journal: ArchiveBox stopped mid-write, part of its change already in the file.

    The copy is taken while a writer's change has spilled into the file, as a crash
    would leave it; only a writer could roll it back, which the import must not be.
    """
    source = standard(tmp_path)
    writer = sqlite3.connect(source, isolation_level=None)
    writer.execute("PRAGMA cache_size=1")  # spill the change into the file before commit
    writer.execute("BEGIN")
    writer.execute("UPDATE auth_user SET username = 'half_' || username")
    writer.execute("CREATE TABLE pad AS SELECT zeroblob(4000) FROM pragma_table_info('auth_user')")
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for name in ("index.sqlite3", "index.sqlite3-journal"):
        shutil.copy(tmp_path / name, crashed / name)
    writer.execute("ROLLBACK")
    writer.close()
    half = sqlite3.connect(f"{(crashed / 'index.sqlite3').as_uri()}?mode=ro&immutable=1", uri=True)
    assert half.execute("SELECT username FROM auth_user WHERE id = 2").fetchone() == ("half_admin",)
    half.close()

    with pytest.raises(ValidationError, match="left unfinished"):
        store.import_archivebox(crashed)
    assert store.users.list() == [store.users.get("system")]
    assert sorted(p.name for p in crashed.iterdir()) == ["index.sqlite3", "index.sqlite3-journal"]


# -- values Django never writes -------------------------------------------------------------


def test_values_django_never_writes_refuse_their_row_naming_the_column(
    store: Store, tmp_path: Path
) -> None:
    """A time past year 9999 in UTC, a flag that is not 0/1, a ref that is NULL."""
    box = ArchiveBox(tmp_path / "index.sqlite3")
    box.user(2, "flagged")
    box.token("a" * 32)
    box.token("b" * 32)
    box.hook("nulref", "api.models.APIToken", "https://a.example/")
    box.hook("flag", "api.models.APIToken", "https://b.example/")
    box.conn.execute("UPDATE auth_user SET is_superuser = 'yes' WHERE id = 2")
    box.conn.execute(
        "UPDATE api_apitoken SET expires = '9999-12-31 23:00:00-05:00' WHERE token = ?",
        ("a" * 32,),
    )
    for statement in (  # the NOT NULL of ref, as a hand-edited copy may lack it
        "CREATE TABLE hooks AS SELECT * FROM api_outboundwebhook",
        "DROP TABLE api_outboundwebhook",
        "ALTER TABLE hooks RENAME TO api_outboundwebhook",
        "UPDATE api_outboundwebhook SET ref = NULL WHERE name = 'nulref'",
        "UPDATE api_outboundwebhook SET enabled = ' ' WHERE name = 'flag'",
    ):
        box.conn.execute(statement)
    box.close()
    report = store.import_archivebox(box.path)
    reasons = sorted((n.table, n.reason) for n in report.refused)
    assert reasons == [
        ("api_apitoken", "expires is out of range: '9999-12-31 23:00:00-05:00'"),
        ("api_outboundwebhook", "enabled is not 0 or 1: ' '"),
        ("api_outboundwebhook", "ref is not text: None"),
        ("auth_user", "is_superuser is not 0 or 1: 'yes'"),
    ]
    assert [u.username for u in store.users.list()] == ["system"]
    assert store.tokens.authenticate("b" * 32)


def test_notes_show_odd_values_quoted_on_one_line_and_cut(store: Store, tmp_path: Path) -> None:
    """A note names the row and the column; 100 kB of it, or a line break, helps nobody."""
    huge = "x" * 100_000
    box = ArchiveBox(tmp_path / "index.sqlite3")
    box.user(2, huge)
    box.token("a" * 32)
    box.token("b" * 32, abid="apt_\nforged line")
    box.hook(huge, "api.models.APIToken", "https://a.example/")
    box.hook("odd ref", "core.models.Snapshot\nforged: line", "https://b.example/")
    box.conn.execute(
        "UPDATE api_apitoken SET created_by_id = ? || char(10) || 'forged' WHERE token = ?",
        (huge, "a" * 32),
    )
    box.conn.execute("UPDATE api_outboundwebhook SET created_at = ? WHERE name = ?", (huge, huge))
    box.close()
    report = store.import_archivebox(box.path)
    notes = report.refused + report.disabled
    assert len(report.refused) == 4 and len(report.disabled) == 1
    for note in notes:
        assert "\n" not in note.row + note.reason
        assert len(note.row) < 120 and len(note.reason) < 600
    (disabled,) = report.disabled
    assert "its model 'core.models.Snapshot\\nforged: line' is not mapped" in disabled.reason


def test_a_second_row_with_an_id_already_read_is_refused_not_counted_present(
    store: Store, tmp_path: Path
) -> None:
    """A copy without its primary keys may repeat an id; the second token would be lost."""
    box = ArchiveBox(tmp_path / "index.sqlite3")
    for statement in (
        "CREATE TABLE copy AS SELECT * FROM api_apitoken",
        "DROP TABLE api_apitoken",
        "ALTER TABLE copy RENAME TO api_apitoken",
    ):
        box.conn.execute(statement)
    box.token("a" * 32, id_=TOKEN_ID, abid=TOKEN_ABID)
    box.token("b" * 32, id_=TOKEN_ID, created=T2)
    box.close()
    report = store.import_archivebox(box.path)
    assert vars(report.counts["api_apitoken"]) == {"imported": 1, "present": 0, "refused": 1}
    (note,) = report.refused
    assert note.reason == "another row of api_apitoken has the same id"
    assert store.tokens.authenticate("a" * 32).id == TOKEN_ID


def test_a_nul_or_a_ref_too_long_refuses_its_row_alike_on_both_backends(
    store: Store, tmp_path: Path
) -> None:
    """PostgreSQL cannot store either (NUL in text; an index entry over 2.7 kB)."""
    box = ArchiveBox(tmp_path / "index.sqlite3")
    box.hook("nul", "api.models.APIToken", "https://a.example/")
    box.hook("long", "x" * 4000, "https://b.example/")
    box.conn.execute(
        "UPDATE api_outboundwebhook SET endpoint = endpoint || char(0) WHERE name = 'nul'"
    )
    box.close()
    report = store.import_archivebox(box.path)
    assert sorted(n.reason for n in report.refused) == [
        "endpoint holds a NUL character",
        "ref is 4000 characters, at most 1023",
    ]
    assert store.webhooks.list() == []


def test_a_file_the_system_cannot_read_is_refused(store: Store) -> None:
    """An I/O error (here /proc/self/mem at offset 0; an unreadable file for another user)."""
    with pytest.raises(ValidationError, match="cannot read /proc/self/mem: Input/output error"):
        store.import_archivebox("/proc/self/mem")


def test_a_missing_abid_is_made_from_the_row_as_archivebox_makes_it(
    store: Store, tmp_path: Path
) -> None:
    """The column is nullable; ArchiveBox fills an empty one from the row's sources on save."""
    box = ArchiveBox(tmp_path / "index.sqlite3")
    box.user(2, "admin")
    expected_token = box.token("a" * 32, owner=2, id_=TOKEN_ID, created=T2)
    expected_hook = box.hook(
        "h", "core.models.Snapshot", "https://u:p@hooks.example:8443/in", id_=HOOK_ID
    )
    box.token("b" * 32, created=datetime(1969, 12, 31), abid="apt_set_to_null_below")
    box.conn.execute("UPDATE api_apitoken SET abid = NULL")
    box.conn.execute("UPDATE api_outboundwebhook SET abid = ''")
    box.close()
    report = store.import_archivebox(box.path)
    (note,) = report.refused
    assert note.reason.startswith("it has no ABID, and none can be made from it: ts must not")
    assert store.tokens.authenticate("a" * 32).abid == expected_token
    assert store.webhooks.get("h").abid == expected_hook


def test_an_abid_in_lower_case_is_stored_as_tokenstore_looks_it_up(
    store: Store, tmp_path: Path
) -> None:
    """A lower-case ABID (the TypeID spelling) is the same ABID, stored in its canonical form.

    Kept as written, the token could not be found by its own ABID (lookups
    use the canonical spelling), and a second token with that ABID in upper
    case was imported beside it.
    """
    box = ArchiveBox(tmp_path / "index.sqlite3")
    box.token("a" * 32, id_=TOKEN_ID, abid=TOKEN_ABID.lower())
    # created later, so the import keeps the first, though this id sorts first
    box.token("b" * 32, id_=uuid.UUID(int=1), created=T2, abid=TOKEN_ABID)
    box.hook("h", "api.models.APIToken", "https://hooks.example/in", abid=HOOK_ABID.lower())
    box.close()
    report = store.import_archivebox(box.path)
    assert [n.reason for n in report.refused] == [
        f"another API token ({TOKEN_ABID}) already has this ABID"
    ]
    assert store.tokens.get(TOKEN_ABID).id == TOKEN_ID
    assert store.tokens.get(TOKEN_ABID).abid == TOKEN_ABID
    assert store.webhooks.get(HOOK_ABID).abid == HOOK_ABID


@pytest.mark.parametrize(
    ("endpoint", "kept"),
    [
        ("https://bob:s3cret@[::1/in", "https://[::1/in"),  # no URL parser takes it
        ("bob:s3cret@hooks.example/in", "hooks.example/in"),  # no scheme: no authority
    ],
)
def test_credentials_in_a_url_that_does_not_parse_are_not_kept(
    store: Store, tmp_path: Path, endpoint: str, kept: str
) -> None:
    """The hook is disabled, its URL refused; what looks like a password is still dropped."""
    box = one_hook(
        tmp_path, "odd", "api.models.APIToken", endpoint, abid="whk_01JAZ6BQKV9063B8A606AM8000"
    )
    report = store.import_archivebox(box.path)
    hook = store.webhooks.get("odd")
    assert (hook.endpoint, hook.enabled, hook.auth_token) == (kept, False, "")
    assert "s3cret" not in repr(report) + repr(rows(store))


def test_endpoints_are_judged_by_the_allowlist_as_the_file_holds_it_now(
    store: Store, tmp_path: Path
) -> None:
    """Another process (the command, say) allowed the host after this store opened."""
    box = one_hook(tmp_path, "local", "api.models.APIToken", "http://10.1.2.3:9/in")
    run(cast(Path, _db.location(store)), "webhooks", "allow", "10.0.0.0/8")
    report = store.import_archivebox(box.path)
    assert report.disabled == []
    assert store.webhooks.get("local").enabled


def test_a_row_the_database_refuses_takes_back_only_itself(store: Store, tmp_path: Path) -> None:
    """PostgreSQL's index entries hold at most 2704 bytes; SQLite's have no such limit."""
    box = ArchiveBox(tmp_path / "index.sqlite3")
    # A ref of 1,000 characters (ArchiveBox allows 1,023), 4,000 bytes: an endpoint can no
    # longer be that wide (2,047 bytes), but a model path that no model has can.
    wide = "api.models." + "".join(chr(0x1F300 + (i * 7919) % 700) for i in range(1000))
    box.hook("wide", wide, "https://a.example/")
    box.hook("plain", "api.models.APIToken", "https://b.example/")
    box.token("a" * 32)
    box.close()
    report = store.import_archivebox(box.path)
    assert store.webhooks.get("plain").enabled
    assert store.tokens.authenticate("a" * 32)
    if store.path is not None:
        assert report.refused == [] and store.webhooks.get("wide").ref == wide
        return
    (note,) = report.refused
    assert note.row.endswith("('wide')")
    assert note.reason.startswith("the database refused it: index row size")
    assert "\n" not in note.reason


# -- many rows: taken in batches --------------------------------------------------------------


def test_rows_are_matched_across_and_within_batches_as_one_by_one(
    store: Store, tmp_path: Path
) -> None:
    """1,200 tokens, more than one batch: a repeated id, ABID or token is refused wherever
    the first one was, before or in the same batch, and the notes keep the file's order."""
    box = ArchiveBox(tmp_path / "index.sqlite3")
    for statement in (  # no primary key, as in a copy that lost it: ids may repeat
        "CREATE TABLE copy AS SELECT * FROM api_apitoken",
        "DROP TABLE api_apitoken",
        "ALTER TABLE copy RENAME TO api_apitoken",
    ):
        box.conn.execute(statement)
    ids = [uuid.UUID(int=i + 1) for i in range(1200)]
    abids: dict[int, str] = {}
    box.conn.execute("BEGIN")
    for i, id_ in enumerate(ids):
        created = T1 + timedelta(seconds=i)
        secret = f"{i:032x}"
        if i == 700:  # the id of a token of the first batch
            id_ = ids[10]
        abid = {900: abids.get(100), 300: abids.get(200)}.get(i)  # an earlier ABID
        if i == 1100:  # the token of one earlier in its own batch
            secret = f"{1050:032x}"
        abids[i] = box.token(secret, id_=id_, created=created, abid=abid)
    box.conn.execute("COMMIT")
    box.close()

    report = store.import_archivebox(box.path)
    assert [(n.row, n.reason) for n in report.refused] == [
        (abids[200], f"another API token ({abids[200]}) already has this ABID"),
        (abids[700], "another row of api_apitoken has the same id"),
        (abids[100], f"another API token ({abids[100]}) already has this ABID"),
        (abids[1100], f"another API token ({abids[1050]}) already has this token"),
    ]
    assert vars(report.counts["api_apitoken"]) == {"imported": 1196, "present": 0, "refused": 4}
    assert store.tokens.authenticate(f"{200:032x}").id == ids[200]  # the first one kept
    assert store.tokens.authenticate(f"{10:032x}").id == ids[10]
    for refused in (300, 700):
        with pytest.raises(tokenstore.InvalidToken):
            store.tokens.authenticate(f"{refused:032x}")

    again = store.import_archivebox(box.path)
    assert vars(again.counts["api_apitoken"]) == {"imported": 0, "present": 1196, "refused": 4}
    assert again.refused == report.refused


def test_a_row_the_database_refuses_among_many_takes_back_only_itself(
    store: Store, tmp_path: Path
) -> None:
    """On PostgreSQL the batch's INSERT fails; taken again row by row, only its row is
    refused, and the notes keep the file's order."""
    wide = "api.models." + "".join(chr(0x1F300 + (i * 7919) % 700) for i in range(1000))
    box = ArchiveBox(tmp_path / "index.sqlite3")
    box.conn.execute("BEGIN")
    for i in range(600):
        ref = wide if i == 250 else "api.models.APIToken"
        box.hook(
            "" if i == 260 else f"h{i}",
            ref,
            f"https://h{i}.example/",
            created=T1 + timedelta(seconds=i),
        )
    box.conn.execute("COMMIT")
    box.close()
    report = store.import_archivebox(box.path)
    reasons = [(n.row.rpartition(" ")[2], n.reason.split(":")[0]) for n in report.refused]
    empty = ("('')", "webhook name must be 1-255 characters, got ''")
    if store.path is not None:  # SQLite has no such limit
        assert reasons == [empty]
        assert len(store.webhooks.list()) == 599
        return
    assert reasons == [("('h250')", "the database refused it"), empty]
    assert report.refused[0].reason.startswith("the database refused it: index row size")
    assert len(store.webhooks.list()) == 598
    assert [h.name for h in report.hooks][249:251] == ["h249", "h251"]


def test_two_hooks_of_one_name_in_one_batch_keep_the_first(store: Store, tmp_path: Path) -> None:
    """The store's unique index refuses the batch's INSERT: taken again row by row, the
    second is refused by name, as when each row was written on its own."""
    box = ArchiveBox(tmp_path / "index.sqlite3")
    for statement in (  # no UNIQUE on name, as in a copy that lost it
        "CREATE TABLE hooks AS SELECT * FROM api_outboundwebhook",
        "DROP TABLE api_outboundwebhook",
        "ALTER TABLE hooks RENAME TO api_outboundwebhook",
    ):
        box.conn.execute(statement)
    first = box.hook("twice", "api.models.APIToken", "https://a.example/")
    box.hook("twice", "api.models.APIToken", "https://b.example/", created=T2)
    box.close()
    report = store.import_archivebox(box.path)
    assert [n.reason for n in report.refused] == ["a webhook named 'twice' already exists"]
    assert store.webhooks.get("twice").abid == first
