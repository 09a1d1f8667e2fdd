"""Importing a database that ArchiveBox 0.8 made itself, not one built from its DDL.

How tests/data/archivebox-0.8.5rc51.sql was made (Linux, Python 3.11, TZ=UTC, offline
but for the package registry):

    python3 -m venv /tmp/abx-venv
    /tmp/abx-venv/bin/pip install archivebox==0.8.5rc51
    # Its loose pins now resolve to releases it cannot start with (pydantic 2.14 breaks
    # pydantic-pkgr 0.5.4; toml and uuid6 are imported but not declared):
    /tmp/abx-venv/bin/pip install 'pydantic==2.9.2' 'pydantic-settings<2.7' \
        'django>=5.1.1,<5.2' 'django-ninja<1.4' 'django-charid-field==0.4' toml uuid6
    mkdir data && cd data          # as a user other than root: ArchiveBox refuses root
    archivebox init
    ABX_FACTS=facts.json archivebox manage shell -c \
        "exec(open('tests/data/archivebox-0.8.5rc51-seed.py').read())"
    sqlite3 index.sqlite3 .dump > tests/data/archivebox-0.8.5rc51.sql    # every table

It ran ArchiveBox 0.8.5rc51, Django 5.1.15, django-signal-webhooks 0.3.1 (which sends
with httpx 0.28.1), django-charid-field 0.4, pydantic 2.9.2. The seed script made its
records through ArchiveBox's models: users (one superuser besides ``system``, one
deactivated), API tokens (never expiring, expired, expiring, one made the way
ArchiveBox's CLI makes them, one typed in as its admin allows), webhooks (every kind of
ref, one disabled, auth tokens, which django-signal-webhooks stores encrypted under the
``CIPHER_KEY`` the seed set, since stock ArchiveBox sets none; custom headers, one an
Authorization; credentials in URLs; one edited after creation, so its ABID no longer
matches its endpoint), snapshots and a tag.
Hooks pointed at the seed's receiver on 127.0.0.1 really fired, so their
``last_success``, ``last_failure`` and ``last_response`` are ArchiveBox's own.
tests/data/archivebox-0.8.5rc51.json holds what the file cannot show: the plaintexts,
the cipher key, and the requests the receiver got.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import _db
import pytest
from pytest_httpserver import HTTPServer
from test_archivebox import digest, rows, run

import tokenstore
from tokenstore import APIToken, ExpiredToken, OutboundWebhook, Store
from tokenstore._abid import abid_from_values

pytestmark = pytest.mark.usefixtures("store_file")

DATA = Path(__file__).parent / "data"
DUMP = DATA / "archivebox-0.8.5rc51.sql"
FACTS: dict[str, Any] = json.loads((DATA / "archivebox-0.8.5rc51.json").read_text())
CIPHER_KEY: str = FACTS["cipher_key"]
TOKENS: dict[str, dict[str, Any]] = FACTS["tokens"]
HOOKS: dict[str, dict[str, Any]] = FACTS["hooks"]


def sent(path: str, header: str) -> str | None:
    """The header ArchiveBox sent to the seed's receiver at ``path`` (the same every time)."""
    (value,) = {r["headers"].get(header) for r in FACTS["received"] if r["path"] == path}
    return value


def archivebox(folder: Path, wal: bool = False, dump: Path = DUMP) -> Path:
    """The dump as a file again; ``wal`` leaves it in WAL mode, as ArchiveBox does."""
    folder.mkdir(exist_ok=True)
    path = folder / "index.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(dump.read_text())
    if wal:
        conn.execute("PRAGMA journal_mode=wal")
    conn.close()
    return path


def source_rows(path: Path, table: str) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return list(conn.execute(f'SELECT * FROM "{table}"'))
    finally:
        conn.close()


def stored(text: str | None) -> datetime | None:
    """A Django time as tokenstore keeps it: aware UTC, cut to the millisecond."""
    if text is None:
        return None
    value = datetime.fromisoformat(text).replace(tzinfo=UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def owners(path: Path) -> dict[int, str]:
    return {row["id"]: row["username"] for row in source_rows(path, "auth_user")}


def users_came_over(store: Store, source: Path) -> None:
    """Each auth_user row is the user of its name, as superuser, and joined when it did.

    ``system`` is tokenstore's own, which keeps its own time.
    """
    for row in source_rows(source, "auth_user"):
        user = store.users.get(row["username"])
        assert user.is_superuser == bool(row["is_superuser"])
        if row["username"] != "system":
            assert user.created_at == stored(row["date_joined"])


def tokens_came_over(store: Store, source: Path, tokens: dict[str, dict[str, Any]]) -> None:
    """Each recorded token authenticates as its row: id, ABID, owner, times and expiry."""
    names = owners(source)
    by_id = {row["id"]: row for row in source_rows(source, "api_apitoken")}
    for recorded in tokens.values():
        row = by_id[recorded["id"]]
        token = authenticated(store, recorded)
        assert (token.id, token.abid) == (uuid.UUID(recorded["id"]), recorded["abid"])
        assert token.created_by.username == names[recorded["created_by_id"]]
        assert token.created_at == stored(row["created_at"])
        assert token.modified_at == stored(row["modified_at"])
        assert token.expires == stored(row["expires"])
        hint = recorded["token"][-4:] if len(recorded["token"]) >= 16 else ""  # letmein-ci
        assert token.token_redacted == "*" * 12 + hint
        assert store.tokens.get(recorded["abid"]).id == token.id


def authenticated(store: Store, recorded: dict[str, Any]) -> APIToken:
    """The imported token, as its recorded plaintext authenticates it today.

    One whose expiry has passed is refused as expired, naming its ABID. Which
    ones have depends on the day: ArchiveBox made some to expire 30 days or a
    year after the dump was made, and the tests must not fail from then on.
    """
    token: APIToken = APIToken.get_by_id(uuid.UUID(recorded["id"]))
    if token.expires is None or token.expires > datetime.now(UTC):
        return store.tokens.authenticate(recorded["token"])
    with pytest.raises(ExpiredToken, match=recorded["abid"]):
        store.tokens.authenticate(recorded["token"])
    return token


# -- the file itself ------------------------------------------------------------------------


def test_the_fixture_is_what_archivebox_wrote(tmp_path: Path) -> None:
    """Ids as 32 hex digits, naive UTC times, encrypted auth tokens: nothing retouched."""
    source = archivebox(tmp_path)
    tokens = source_rows(source, "api_apitoken")
    assert {row["id"] for row in tokens} == {t["id"] for t in TOKENS.values()}
    assert all(len(row["id"]) == 32 and row["created_at"][10] == " " for row in tokens)
    audit = {row["name"]: row for row in source_rows(source, "api_outboundwebhook")}["token-audit"]
    assert audit["auth_token"] not in ("", HOOKS["token-audit"]["auth_token"])
    assert sent("/tokens", "Authorization") == HOOKS["token-audit"]["auth_token"]


# -- users and tokens -----------------------------------------------------------------------


def test_every_user_comes_over_matched_by_username(store: Store, tmp_path: Path) -> None:
    source = archivebox(tmp_path)
    report = store.import_archivebox(source)
    assert (report.refused, vars(report.counts["auth_user"])) == (
        [],
        {"imported": 4, "present": 1, "refused": 0},  # system is tokenstore's own
    )
    users_came_over(store, source)
    assert [u.username for u in store.users.list()] == list(FACTS["users"])


def test_every_recorded_token_authenticates_with_its_id_abid_owner_and_expiry(
    store: Store, tmp_path: Path
) -> None:
    source = archivebox(tmp_path)
    report = store.import_archivebox(source)
    assert vars(report.counts["api_apitoken"]) == {"imported": 7, "present": 0, "refused": 0}
    tokens_came_over(store, source, TOKENS)


def test_no_plaintext_token_reaches_the_store(store: Store, tmp_path: Path) -> None:
    store.import_archivebox(archivebox(tmp_path), cipher_key=CIPHER_KEY)
    store.close()
    secrets = [t["token"] for t in TOKENS.values()]
    if store.path is None:  # PostgreSQL: every imported row, as text
        texts = [
            text for (text,) in _db.rows(store, "SELECT t::text FROM tokenstore_api_token AS t")
        ]
    else:
        texts = [
            p.read_bytes().decode("latin-1")
            for p in [store.path, *store.path.parent.glob(store.path.name + "-*")]
        ]
    assert texts and not [s for s in secrets for text in texts if s in text]


# -- ABIDs ----------------------------------------------------------------------------------

# (table, prefix, the uri source column, the subtype: the ref column or a constant)
ABID_SOURCES = [
    ("api_apitoken", "apt_", "created_by_id", "01"),
    ("api_outboundwebhook", "whk_", "endpoint", "ref"),
    ("core_snapshot", "snp_", "url", "01"),
    ("core_tag", "tag_", "slug", "03"),
]


@pytest.mark.parametrize(("table", "prefix", "uri", "subtype"), ABID_SOURCES)
def test_tokenstore_computes_every_abid_archivebox_gave(
    tmp_path: Path, table: str, prefix: str, uri: str, subtype: str
) -> None:
    """Real vectors: each row's ABID from its own created_at, owner or URL, type and id.

    The one exception is the hook edited after creation (ArchiveBox allows that
    drift): its ABID holds the hash of the endpoint it was created with.
    """
    edited = HOOKS["tag-cleanup"]["abid"]
    checked = 0
    for row in source_rows(archivebox(tmp_path), table):
        created = datetime.fromisoformat(row["created_at"]).replace(tzinfo=UTC)
        kind = row["ref"] if subtype == "ref" else subtype
        source = row[uri]
        if row["abid"] == edited:
            assert (
                abid_from_values(prefix, created, source, kind, uuid.UUID(row["id"])).uri
                != (edited[14:22])
            )
            source = FACTS["tag_cleanup_endpoint_at_creation"]
        assert (
            str(abid_from_values(prefix, created, source, kind, uuid.UUID(row["id"])))
            == (row["abid"])
        )
        checked += 1
    assert checked


def test_abids_are_kept_and_parse_back_to_the_rows_creation_time(
    store: Store, tmp_path: Path
) -> None:
    store.import_archivebox(archivebox(tmp_path))
    for model, recorded in [(APIToken, TOKENS), (OutboundWebhook, HOOKS)]:
        for facts in recorded.values():
            record = model.get_by_id(uuid.UUID(facts["id"]))
            assert record.abid == facts["abid"]
            assert record.ABID.datetime == record.created_at


# -- webhooks -------------------------------------------------------------------------------

# name -> (enabled after import with the cipher key, endpoint without credentials,
#          headers, a phrase of the reason when disabled)
EXPECTED_HOOKS: dict[str, tuple[bool, str, dict[str, str], str]] = {
    "archive-results": (
        False,
        "https://hooks.example.com/archivebox/results",
        {},
        "its model core.models.ArchiveResult is not mapped",
    ),
    "token-audit": (True, "http://127.0.0.1:{port}/tokens", {"X-Archive-Source": "archivebox"}, ""),
    "tag-cleanup": (
        False,
        "https://tags.example.net:9443/hooks/tags",
        {},
        "disabled in ArchiveBox; its model core.models.Tag is not mapped",
    ),
    "user-sync": (  # the import fills tokenstore.User from auth_user
        True,
        "https://sync.example.org/users",
        {"X-Api-Version": "2", "X-Team": "ops"},
        "",
    ),
    "snapshot-mirror": (
        False,
        "http://127.0.0.1:{port}/snapshots",
        {},
        "its model core.models.Snapshot is not mapped",
    ),
    "dead-receiver": (True, "http://127.0.0.1:9/gone", {}, ""),
    "relay-both": (True, "http://127.0.0.1:{port}/both", {"X-Relay": "1"}, ""),
    "header-auth": (
        True,
        "http://127.0.0.1:{port}/header",
        {"Authorization": "Token from-headers"},
        "",
    ),
}

# The refs of the models the import fills; the others stay until mapped.
MAPPED_REFS = {
    "api.models.APIToken": "tokenstore.APIToken",
    "django.contrib.auth.models.User": "tokenstore.User",
}

# The Authorization each hook's requests carry: what ArchiveBox's own deliveries carried.
AUTHORIZATION = {
    "token-audit": sent("/tokens", "Authorization"),
    "snapshot-mirror": sent("/snapshots", "Authorization"),  # from the URL's credentials
    "relay-both": sent("/both", "Authorization"),  # the URL's won over its auth token
    "header-auth": HOOKS["header-auth"]["auth_token"],  # kept, though its header wins
}


def test_every_hook_field_carries_over(store: Store, tmp_path: Path) -> None:
    source = archivebox(tmp_path)
    report = store.import_archivebox(source, cipher_key=CIPHER_KEY)
    assert report.refused == []
    assert vars(report.counts["api_outboundwebhook"]) == {
        "imported": 8,
        "present": 0,
        "refused": 0,
    }
    names = owners(source)
    disabled = {note.row: note.reason for note in report.disabled}
    assert {hook.name for hook in report.hooks} == set(EXPECTED_HOOKS)
    for row in source_rows(source, "api_outboundwebhook"):
        enabled, endpoint, headers, reason = EXPECTED_HOOKS[row["name"]]
        hook = store.webhooks.get(row["name"])
        assert (hook.id, hook.abid) == (uuid.UUID(row["id"]), row["abid"])
        assert hook.endpoint == endpoint.format(port=FACTS["receiver_port"])
        assert hook.enabled is enabled, hook.disabled_reason
        assert hook.disabled_reason.startswith(reason)
        assert disabled.get(f"{row['abid']} ({row['name']!r})", "") == hook.disabled_reason
        assert hook.signal == row["signal"]
        assert hook.ref == MAPPED_REFS.get(row["ref"], row["ref"])
        assert hook.headers == headers
        assert hook.auth_token == AUTHORIZATION.get(row["name"], "")
        assert hook.created_by.username == names[row["created_by_id"]]
        assert hook.created_at == stored(row["created_at"])
        assert hook.modified_at == max(stored(row["modified_at"]), stored(row["updated"]))  # type: ignore[type-var]
        assert hook.keep_last_response is bool(row["keep_last_response"])
        assert hook.last_response == row["last_response"]
        assert hook.last_success == stored(row["last_success"])
        assert hook.last_failure == stored(row["last_failure"])
        assert hook.secret.startswith("whsec_")
    assert store.webhooks.get("token-audit").last_response == "received /tokens"
    assert store.webhooks.get("dead-receiver").last_failure is not None


def test_without_the_cipher_key_the_encrypted_auth_token_disables_only_its_hook(
    store: Store, tmp_path: Path
) -> None:
    report = store.import_archivebox(archivebox(tmp_path))
    audit = store.webhooks.get("token-audit")
    assert (audit.enabled, audit.auth_token) == (False, "")
    assert audit.disabled_reason == (
        "its auth token is encrypted and no cipher key was given: set it again with "
        "webhooks.update(hook, auth_token=...), then enable the hook"
    )
    assert [n.row for n in report.disabled if "cipher key" in n.reason] == [
        f"{HOOKS['token-audit']['abid']} ('token-audit')"
    ]
    # relay-both's auth token never went out (its URL's credentials did), nor did
    # header-auth's (its Authorization header did): they need no key.
    both = store.webhooks.get("relay-both")
    assert (both.enabled, both.auth_token) == (True, AUTHORIZATION["relay-both"])
    header = store.webhooks.get("header-auth")
    assert (header.enabled, header.auth_token) == (True, "")
    assert header.headers == {"Authorization": sent("/header", "Authorization")}


def test_a_wrong_cipher_key_is_told_apart_from_none(store: Store, tmp_path: Path) -> None:
    wrong = base64.b64encode(bytes(32)).decode()
    store.import_archivebox(archivebox(tmp_path), cipher_key=wrong)
    audit = store.webhooks.get("token-audit")
    assert (audit.enabled, audit.auth_token) == (False, "")
    assert "cannot be decrypted with the given cipher key" in audit.disabled_reason


def test_refused_endpoints_are_imported_disabled(tmp_path: Path) -> None:
    """Without loopback in the allowlist, the hooks ArchiveBox sent to 127.0.0.1 wait."""
    with tokenstore.open(tmp_path / "store.sqlite3") as store:
        store.import_archivebox(archivebox(tmp_path / "abx"), cipher_key=CIPHER_KEY)
        for name in ("token-audit", "dead-receiver", "relay-both"):
            hook = store.webhooks.get(name)
            assert not hook.enabled
            assert "its endpoint is refused" in hook.disabled_reason
        assert store.webhooks.get("token-audit").auth_token == AUTHORIZATION["token-audit"]


def test_imported_hooks_send_what_archivebox_sent(
    store: Store, tmp_path: Path, httpserver: HTTPServer
) -> None:
    """The receiver sees the Authorization and headers ArchiveBox's deliveries had."""
    store.import_archivebox(archivebox(tmp_path), cipher_key=CIPHER_KEY)
    store.webhooks.update(  # it was on a Snapshot hook; a token's creation fires it here
        "snapshot-mirror", ref="tokenstore.APIToken", enabled=True
    )
    for name, path in [
        ("token-audit", "/tokens"),
        ("snapshot-mirror", "/snapshots"),
        ("relay-both", "/both"),
        ("header-auth", "/header"),
        ("dead-receiver", "/gone"),
    ]:
        store.webhooks.update(name, endpoint=httpserver.url_for(path))
        httpserver.expect_request(path, method="POST").respond_with_data("ok")
    store.tokens.create(store.users.get("admin"))

    got = {request.path: request.headers for request, _ in httpserver.log}
    assert sorted(got) == ["/both", "/gone", "/header", "/snapshots", "/tokens"]
    for path in ("/tokens", "/snapshots", "/both", "/header"):
        for name in ("Authorization", "X-Archive-Source", "X-Relay", "Content-Type"):
            assert got[path].get(name) == sent(path, name), (path, name)
    assert "Authorization" not in got["/gone"]


# -- again, dry, read-only ------------------------------------------------------------------


def test_a_second_import_changes_nothing(store: Store, tmp_path: Path) -> None:
    source = archivebox(tmp_path)
    first = store.import_archivebox(source, cipher_key=CIPHER_KEY)
    before = rows(store)
    again = store.import_archivebox(source, cipher_key=CIPHER_KEY)
    assert rows(store) == before
    assert {t: (c.imported, c.refused) for t, c in again.counts.items()} == {
        "auth_user": (0, 0),
        "api_apitoken": (0, 0),
        "api_outboundwebhook": (0, 0),
    }
    assert {t: c.present for t, c in again.counts.items()} == {
        t: c.imported + c.present for t, c in first.counts.items()
    }
    assert again.hooks == [] and again.disabled == []


def test_a_dry_run_reports_the_same_and_writes_nothing(store: Store, tmp_path: Path) -> None:
    source = archivebox(tmp_path)
    before = rows(store)
    dry = store.import_archivebox(source, cipher_key=CIPHER_KEY, dry_run=True)
    assert rows(store) == before
    assert dry.dry_run and dry.hooks == []
    real = store.import_archivebox(source, cipher_key=CIPHER_KEY)
    assert (dry.counts, dry.disabled, dry.refused) == (real.counts, real.disabled, real.refused)
    assert len(real.hooks) == 8


@pytest.mark.parametrize("wal", [True, False], ids=["wal", "rollback"])
def test_the_archivebox_file_is_never_written(store: Store, tmp_path: Path, wal: bool) -> None:
    source = archivebox(tmp_path / "data", wal=wal)
    assert source.read_bytes()[18] == (2 if wal else 1)

    def state() -> tuple[str, int, list[str]]:
        return digest(source), source.stat().st_mtime_ns, sorted(os_listing(source.parent))

    before = state()
    store.import_archivebox(source.parent, cipher_key=CIPHER_KEY, dry_run=True)
    store.import_archivebox(source.parent, cipher_key=CIPHER_KEY)
    store.import_archivebox(source.parent, cipher_key=CIPHER_KEY)
    assert state() == before


def os_listing(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir()]


# -- the command ----------------------------------------------------------------------------


def test_the_command_dry_run_then_import_then_again(tmp_path: Path, store_file: Path) -> None:
    folder = archivebox(tmp_path / "data", wal=True).parent
    before = digest(folder / "index.sqlite3")
    db = store_file

    dry = run(db, "--json", "import", "archivebox", str(folder), "--dry-run")
    shown = json.loads(dry.stdout)
    assert shown["dry_run"] is True and shown["hooks"] == []
    with tokenstore.open(db) as store:
        assert store.tokens.list() == [] and store.webhooks.list() == []

    done = run(
        db,
        "--allow",
        "127.0.0.1/32",
        "--json",
        "import",
        "archivebox",
        str(folder),
        "--cipher-key",
        "-",
        stdin=CIPHER_KEY,
    )
    result = json.loads(done.stdout)
    assert result["counts"] == shown["counts"]
    assert {c["table"]: c["imported"] for c in result["counts"]} == {
        "auth_user": 4,
        "api_apitoken": 7,
        "api_outboundwebhook": 8,
    }
    assert {h["abid"] for h in result["hooks"]} == {h["abid"] for h in HOOKS.values()}
    everything = dry.stdout + dry.stderr + done.stdout + done.stderr
    for secret in [t["token"] for t in TOKENS.values()] + [CIPHER_KEY, "audit-7f3c9e1a2b"]:
        assert secret not in everything

    with tokenstore.open(db) as store:
        for recorded in TOKENS.values():
            assert authenticated(store, recorded).abid == recorded["abid"]
        assert store.webhooks.get("token-audit").auth_token == AUTHORIZATION["token-audit"]

    again = json.loads(run(db, "--json", "import", "archivebox", str(folder)).stdout)
    assert {c["table"]: c["present"] for c in again["counts"]} == {
        "auth_user": 5,
        "api_apitoken": 7,
        "api_outboundwebhook": 8,
    }
    assert digest(folder / "index.sqlite3") == before
    assert sorted(os_listing(folder)) == ["index.sqlite3"]
