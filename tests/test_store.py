"""The store file: creation, pragmas, versions, schema agreement, and ABIDModel behaviour."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import inspect
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar

import _db
import peewee
import pytest

import tokenstore
from tokenstore import (
    ABIDDriftError,
    ABIDModel,
    InvalidABID,
    Store,
    StoreError,
    StoreReadOnly,
    ValidationError,
)
from tokenstore import _postgres_ddl as postgres_ddl
from tokenstore import _postgres_schema as postgres_schema
from tokenstore._capture import CaptureSpec
from tokenstore._models import OWN_MODELS, APIToken, OutboundWebhook, User
from tokenstore._sqlite_ddl import capture_triggers, schema_sql
from tokenstore._sqlite_schema import SCHEMA_VERSION
from tokenstore._times import format_time, parse_time, to_stored_time

ROOT = Path(__file__).resolve().parent.parent


class Note(ABIDModel):
    abid_prefix = "not_"
    title = peewee.TextField()


class Pinned(ABIDModel):
    """A model that refuses drift, with a uri source that can change."""

    abid_prefix = "pin_"
    abid_uri_src = "url"
    url = peewee.TextField()
    title = peewee.TextField(default="")


class Scripted(ABIDModel):
    """Hands out ids from a list, to force an ABID collision on purpose."""

    abid_prefix = "scr_"
    abid_uri_src = "title"
    ids: ClassVar[list[uuid.UUID]] = []
    title = peewee.TextField()

    @classmethod
    def new_id(cls) -> uuid.UUID:
        return cls.ids.pop(0) if cls.ids else uuid.uuid4()


@pytest.fixture
def app_store(store: Store) -> Iterator[Store]:
    for model in (Note, Pinned, Scripted):
        store.register(model)
    yield store


def pragma(path: Path, name: str) -> object:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        conn.close()


@pytest.mark.sqlite_only
def test_new_file_is_private_wal_and_versioned(store: Store, db_path: Path) -> None:
    assert stat.S_IMODE(os.stat(db_path).st_mode) == 0o600
    assert pragma(db_path, "journal_mode") == "wal"
    assert pragma(db_path, "user_version") == SCHEMA_VERSION
    conn = store.db.connection()
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
    assert store.system_user.username == "system"
    assert store.system_user.is_superuser


@pytest.mark.sqlite_only
def test_a_writer_that_never_waited_adds_no_statement(tmp_path: Path) -> None:
    """The busy timeout is switched off around BEGIN only once a writer has had to wait.

    A BEGIN that the machine slows past the threshold counts as a wait too (the
    first on a new file creates its WAL), so each file is made before the store
    under test opens it, and a clean save is looked for on three stores."""
    added = []
    for n in range(3):
        path = tmp_path / f"alone{n}.sqlite3"
        with tokenstore.open(path) as made:
            made.register(Note)
        with tokenstore.open(path) as store:
            store.register(Note)
            statements = _db.statements_during(store, lambda: Note.create(title="alone"))
            added.append([sql for sql in statements if "busy_timeout" in sql])
    assert [] in added, added


@pytest.mark.sqlite_only
def test_a_lone_save_with_nothing_to_claim_skips_the_transaction(app_store: Store) -> None:
    """No receivers and no enabled hook: the save's commit would claim nothing, so the
    statement runs in SQLite's implicit transaction. Anything that could claim makes
    it a transaction of tokenstore's again."""

    def begins() -> list[str]:
        # A BEGIN that a loaded machine slows past 1 ms counts as a wait, and a writer
        # that waited keeps to transactions for a while: this test is about claims.
        app_store.db._contended_until = 0.0
        statements = _db.statements_during(app_store, lambda: Note.create(title="t"))
        return [sql for sql in statements if sql.startswith(("BEGIN", "COMMIT"))]

    assert begins() == []
    hook = app_store.webhooks.create("notes", Note, "http://127.0.0.1:9/x")
    assert begins()[:2] == ["BEGIN IMMEDIATE", "COMMIT"]  # then its attempt is recorded
    statements = _db.statements_during(app_store, lambda: Note.create(title="t"))
    probes = [sql for sql in statements if "FROM tokenstore_listener" in sql]
    assert len(probes) == 1, probes  # asked by the commit's claim, not again before the write
    app_store.webhooks.update(hook, enabled=False)
    assert begins() == []

    def heard(sender: Any, **kwargs: Any) -> None:
        pass

    tokenstore.signals.row_changed.connect(heard, weak=False)
    try:
        assert begins() == ["BEGIN IMMEDIATE", "COMMIT"]
    finally:
        tokenstore.signals.row_changed.disconnect(heard)
    assert begins() == ["BEGIN IMMEDIATE", "COMMIT"]  # it takes the process off the listeners
    assert begins() == []


@pytest.mark.sqlite_only
def test_a_writer_takes_the_lock_soon_after_another_process_releases_it(
    app_store: Store, db_path: Path
) -> None:
    """SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20 ms...: a lock released after
    40 ms would be taken at 53 ms at the earliest. Once a writer has waited, writers here
    try again in short steps (the first wait below is SQLite's; the best of the
    others counts, as a loaded machine can be late to wake any of them). A receiver
    makes each save a transaction of tokenstore's: a lone write that would claim
    nothing waits as SQLite does."""

    def heard(sender: Any, **kwargs: Any) -> None:
        pass

    tokenstore.signals.row_changed.connect(heard, weak=False)
    try:
        lateness = _lock_lateness(db_path)
    finally:
        tokenstore.signals.row_changed.disconnect(heard)
    assert min(lateness) < 0.008, lateness
    # Outside its transactions the connection waits on the busy timeout again.
    assert app_store.db.connection().execute("PRAGMA busy_timeout").fetchone()[0] >= 5000


def _lock_lateness(db_path: Path) -> list[float]:
    """How long after another connection released the lock each of four saves took it."""
    lateness = []
    for _ in range(4):
        other = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        released: list[float] = []

        def release(other: sqlite3.Connection = other, released: list[float] = released) -> None:
            time.sleep(0.04)
            other.execute("COMMIT")
            released.append(time.monotonic())

        thread = threading.Thread(target=release)
        thread.start()
        Note.create(title="waited")
        taken = time.monotonic()
        thread.join(timeout=10)
        other.close()
        lateness.append(taken - released[0])
    return lateness


def test_reopening_keeps_records_and_the_system_user(db_path: Path) -> None:
    with tokenstore.open(db_path) as first:
        first.register(Note)
        note = Note.create(title="kept")
        system_id = first.system_user.id
    with tokenstore.open(db_path) as second:
        second.register(Note)
        assert Note.get_by_id(note.id).abid == note.abid
        assert second.system_user.id == system_id
        assert User.select().where(User.username == "system").count() == 1


@pytest.mark.sqlite_only
def test_newer_schema_version_is_refused_and_file_left_alone(db_path: Path) -> None:
    tokenstore.open(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    before = db_path.read_bytes()
    newer = rf"schema version {SCHEMA_VERSION + 1}, newer than .* \({SCHEMA_VERSION}\)"
    with pytest.raises(StoreError, match=newer):
        tokenstore.open(db_path)
    assert db_path.read_bytes() == before


def test_a_newer_postgres_schema_is_refused_and_left_alone(pg_url: str) -> None:
    tokenstore.open(pg_url).close()
    with _db.Raw(pg_url) as raw:
        raw.execute(
            "INSERT INTO tokenstore_schema_version (version, applied_at) VALUES (?, ?)",
            (postgres_schema.SCHEMA_VERSION + 1, "2030-01-01T00:00:00.000Z"),
        )
    version = postgres_schema.SCHEMA_VERSION
    with pytest.raises(StoreError, match=rf"schema version {version + 1}, newer .* \({version}\)"):
        tokenstore.open(pg_url)
    assert _db.rows(pg_url, "SELECT version FROM tokenstore_schema_version ORDER BY 1") == [
        (version,),
        (version + 1,),
    ]


def test_a_negative_postgres_schema_version_is_refused_as_sqlites_is(pg_url: str) -> None:
    """No tokenstore writes one: opening looked up its migration and raised a bare KeyError."""
    tokenstore.open(pg_url).close()
    with _db.Raw(pg_url) as raw:
        raw.execute("UPDATE tokenstore_schema_version SET version = -1")
    for options in ({}, {"create": False}, {"read_only": True}):
        with pytest.raises(StoreError, match="schema version -1, which no tokenstore writes"):
            tokenstore.open(pg_url, **options)
    assert _db.rows(pg_url, "SELECT version FROM tokenstore_schema_version") == [(-1,)]


def test_a_postgres_migration_step_runs_once_under_the_lock(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenstore.open(pg_url).close()
    ran: list[int] = []

    def step(conn: Any) -> None:
        ran.append(1)
        conn.execute("ALTER TABLE tokenstore_listener ADD COLUMN note TEXT")

    current = postgres_schema.SCHEMA_VERSION
    monkeypatch.setattr(postgres_schema, "SCHEMA_VERSION", current + 1)
    monkeypatch.setitem(postgres_schema.MIGRATIONS, current, step)
    tokenstore.open(pg_url).close()
    tokenstore.open(pg_url).close()
    assert ran == [1]
    assert _db.rows(pg_url, "SELECT version FROM tokenstore_schema_version ORDER BY 1") == [
        (current,),
        (current + 1,),
    ]
    assert _db.rows(pg_url, "SELECT note FROM tokenstore_listener") == []


def test_concurrent_first_opens_create_the_schema_once(pg_url: str) -> None:
    """Processes opening an empty database at once queue on the advisory lock."""
    script = "import sys, tokenstore; tokenstore.open(sys.argv[1]).close()"
    procs = [
        subprocess.Popen([sys.executable, "-c", script, pg_url], stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    errors = [proc.communicate(timeout=60)[1].decode() for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, errors
    assert _db.rows(pg_url, "SELECT version FROM tokenstore_schema_version") == [
        (postgres_schema.SCHEMA_VERSION,)
    ]
    assert _db.rows(pg_url, "SELECT count(*) FROM tokenstore_user") == [(1,)]


def test_a_postgres_url_that_does_not_answer_is_a_clear_error(pg_url: str) -> None:
    wrong = pg_url.replace("app-password", "wrong-password")
    with pytest.raises(StoreError, match="cannot connect to postgresql://app:\\*\\*\\*@") as caught:
        tokenstore.open(wrong)
    assert "wrong-password" not in str(caught.value)


def test_a_file_that_is_not_sqlite_is_refused_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"just some text, certainly not a database\n" * 10)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not an SQLite database"):
        tokenstore.open(path)
    assert path.read_bytes() == before
    assert not (tmp_path / "notes.txt-wal").exists()


def test_memory_databases_and_short_busy_timeouts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="file path"):
        tokenstore.open(":memory:")
    with pytest.raises(ValidationError, match="busy_timeout must be at least 5"):
        tokenstore.open(tmp_path / "x.sqlite3", busy_timeout=1)


def test_schema_sql_at_the_top_is_the_one_the_package_applies() -> None:
    assert (ROOT / "schema.sql").read_text() == schema_sql()
    assert (ROOT / "schema-postgres.sql").read_text() == postgres_ddl.schema_sql()


def _table_shape(conn: sqlite3.Connection, table: str) -> tuple[object, ...]:
    columns = tuple(
        (name, ctype.upper(), bool(notnull), bool(pk))
        for _, name, ctype, notnull, _, pk in conn.execute(f'PRAGMA table_info("{table}")')
    )
    indexes = set()
    for _, name, unique, origin, _ in conn.execute(f'PRAGMA index_list("{table}")'):
        if origin == "pk":
            continue
        cols = tuple(r[2] for r in conn.execute(f'PRAGMA index_info("{name}")'))
        indexes.add((cols, bool(unique)))
    fks = {
        (r[3], r[2], r[4], r[6].upper())
        for r in conn.execute(f'PRAGMA foreign_key_list("{table}")')
    }
    return columns, frozenset(indexes), frozenset(fks)


@pytest.mark.sqlite_only
def test_models_agree_with_schema_sql(store: Store, tmp_path: Path) -> None:
    """peewee's idea of each table must match what schema.sql created, column for column."""
    from_models = peewee.SqliteDatabase(str(tmp_path / "models.sqlite3"))
    with from_models.bind_ctx(list(OWN_MODELS), bind_refs=False, bind_backrefs=False):
        from_models.create_tables(list(OWN_MODELS))
    theirs = from_models.connection()
    ours = store.db.connection()
    for model in OWN_MODELS:
        table = model._meta.table_name
        expected = _table_shape(theirs, table)
        actual = _table_shape(ours, table)
        # schema.sql adds a partial index the models cannot express; compare the rest.
        assert actual[0] == expected[0], table
        assert expected[1] <= actual[1], table
        assert actual[2] == expected[2], table
    from_models.close()


def _pg_table_shape(raw: _db.Raw, table: str) -> tuple[object, ...]:
    """The same shape as ``_table_shape``, read from PostgreSQL's catalogs, in SQLite's words."""
    pk = {
        name
        for (name,) in raw.rows(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = ?::regclass AND i.indisprimary",
            (table,),
        )
    }
    words = {"boolean": "INTEGER", "bigint": "INTEGER", "character varying": "VARCHAR"}
    columns = tuple(
        (
            name,
            words.get(kind, kind.upper()) + (f"({length})" if length else ""),
            nullable == "NO" and name not in pk,
            name in pk,
        )
        for name, kind, length, nullable in raw.rows(
            "SELECT column_name, data_type, character_maximum_length, is_nullable "
            "FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
            (table,),
        )
    )
    indexes = {
        (tuple(cols), unique)
        for cols, unique in raw.rows(
            "SELECT array(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY AS k(n, o) "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n ORDER BY k.o), "
            "i.indisunique FROM pg_index i WHERE i.indrelid = ?::regclass AND NOT i.indisprimary",
            (table,),
        )
    }
    fks = {
        (column, ref_table, ref_column, action)
        for column, ref_table, ref_column, action in raw.rows(
            "SELECT k.column_name, c.table_name, c.column_name, r.delete_rule "
            "FROM information_schema.referential_constraints r "
            "JOIN information_schema.key_column_usage k ON k.constraint_name = r.constraint_name "
            "JOIN information_schema.constraint_column_usage c "
            "ON c.constraint_name = r.unique_constraint_name WHERE k.table_name = ?",
            (table,),
        )
    }
    return columns, frozenset(indexes), frozenset(fks)


def test_both_schemas_have_the_same_tables_columns_indexes_and_keys(
    pg_url: str, tmp_path: Path
) -> None:
    """schema-postgres.sql says what schema.sql says; SQLite's INTEGER PRIMARY KEY is NOT NULL."""
    tokenstore.open(tmp_path / "s.sqlite3").close()
    tokenstore.open(pg_url).close()
    lite = sqlite3.connect(tmp_path / "s.sqlite3")
    raw = _db.Raw(pg_url)
    try:
        tables = {"tokenstore_change_event", "tokenstore_listener", "tokenstore_webhook_allow"}
        tables |= {model._meta.table_name for model in OWN_MODELS}
        for table in sorted(tables):
            columns, indexes, fks = _table_shape(lite, table)
            columns = tuple(
                (name, kind, notnull and not pk, pk) for name, kind, notnull, pk in columns
            )
            assert (columns, indexes, fks) == _pg_table_shape(raw, table), table
        views = "SELECT table_name FROM information_schema.views WHERE table_schema = 'public'"
        assert sorted(raw.rows(views)) == [
            ("tokenstore_delivery_log",),
            ("tokenstore_webhook_overview",),
        ]
        pg_tables = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        assert {t for (t,) in raw.rows(pg_tables)} == tables | {"tokenstore_schema_version"}
    finally:
        raw.close()
        lite.close()


def test_schema_postgres_sql_holds_the_generated_capture() -> None:
    script = " ".join(postgres_ddl.schema_sql().split())
    for model in (User, APIToken, OutboundWebhook):
        for statement in postgres_ddl.capture_triggers(CaptureSpec.of(model)):
            assert " ".join(statement.split()) + ";" in script


@pytest.mark.sqlite_only
def test_schema_sql_triggers_are_the_generated_ones(store: Store) -> None:
    conn = store.db.connection()
    stored = {
        name: sql
        for name, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
    }
    for model in (User, APIToken, OutboundWebhook):
        for statement in capture_triggers(CaptureSpec.of(model)):
            name = statement.split('"')[1]
            assert " ".join(stored[name].split()) == " ".join(statement.split()), name


def test_an_abid_on_a_column_of_another_name_is_inserted(store: Store) -> None:
    """The insert's ON CONFLICT named a column "abid", which such a table lacks."""

    class Badge(ABIDModel):
        abid_prefix = "bdg_"
        abid_uri_src = "label"
        abid = peewee.CharField(column_name="badge abid", unique=True)
        label = peewee.TextField()

    store.register(Badge)
    first, second = Badge.create(label="a"), Badge.create(label="b")
    assert [(b.label, b.abid) for b in Badge.select().order_by(Badge.label)] == [
        ("a", first.abid),
        ("b", second.abid),
    ]


def test_abid_is_issued_on_insert_from_its_sources(app_store: Store) -> None:
    note = Note.create(title="hello")
    assert note.abid.startswith("not_") and len(note.abid) == 30
    assert note.created_at == note.modified_at
    assert note.created_at.microsecond % 1000 == 0
    assert note.created_by_id == app_store.system_user.id
    expected = tokenstore.abid_from_values(
        "not_", note.created_at, app_store.system_user.id, "Note", note.id
    )
    assert note.abid == str(expected)
    assert note.ABID.datetime == note.created_at


def test_naive_created_at_is_refused(app_store: Store) -> None:
    with pytest.raises(ValidationError, match="naive datetime"):
        Note.create(title="x", created_at=datetime(2024, 1, 1))
    assert Note.select().count() == 0


def test_drift_is_refused_with_field_values_and_part(app_store: Store) -> None:
    pin = Pinned.create(url="https://example.com/a")
    pin.title = "title changes are fine"
    pin.save()
    pin.url = "https://other.example/a"
    with pytest.raises(ABIDDriftError) as caught:
        pin.save()
    message = str(caught.value)
    assert "Pinned.url from 'https://example.com/a' to 'https://other.example/a'" in message
    assert "Pinned.ABID.uri from" in message
    assert Pinned.get_by_id(pin.id).url == "https://example.com/a"


def test_drift_is_refused_for_a_row_read_back_from_the_file(app_store: Store) -> None:
    pin = Pinned.create(url="https://example.com/a")
    again = Pinned.get_by_id(pin.id)
    again.url = "https://elsewhere.example/"
    with pytest.raises(ABIDDriftError, match=r"would change Pinned\.ABID\.uri"):
        again.save()


def test_regenerate_abid_is_the_explicit_way(app_store: Store) -> None:
    pin = Pinned.create(url="https://example.com/a")
    old = pin.abid
    pin.url = "https://other.example/a"
    new = pin.regenerate_abid()
    assert str(new) != old and new.uri != old[12:20]
    assert Pinned.get_by_id(pin.id).abid == str(new)


def test_drift_is_allowed_where_the_model_says_so(store: Store) -> None:
    user = store.users.create("owner")
    token, _ = store.tokens.create(user)
    original = token.abid
    token.created_by = store.system_user
    token.save()
    assert APIToken.get_by_id(token.id).abid == original


def test_abid_collision_retries_with_a_new_id(app_store: Store) -> None:
    when = datetime(2024, 10, 24, 12, 0, tzinfo=UTC)
    low_bits = 0x2BADBEEF
    first_id = uuid.UUID(int=(1 << 100) | low_bits)
    clash_id = uuid.UUID(int=(2 << 100) | low_bits)  # same low 30 bits: same rand part
    Scripted.ids[:] = [first_id, clash_id]
    first = Scripted.create(title="same", created_at=when)
    second = Scripted.create(title="same", created_at=when)
    assert first.id == first_id
    assert second.id not in (first_id, clash_id)
    assert second.abid != first.abid
    assert Scripted.select().count() == 2


def test_bulk_create_issues_each_record_its_abid_and_captures_each_once(
    app_store: Store,
) -> None:
    when = datetime(2024, 10, 24, 12, 0, tzinfo=UTC)
    clash = uuid.UUID(int=(1 << 100) | 0x2BADBEEF)
    Scripted.ids[:] = [clash, uuid.UUID(int=(2 << 100) | 0x2BADBEEF)]  # the second collides
    heard: list[tuple[str, bool]] = []

    def receiver(sender: Any, instance: Any, created: bool, **extra: Any) -> None:
        heard.append((instance.title, created))

    tokenstore.signals.post_save.connect(receiver, sender=Scripted, weak=False)
    try:
        Scripted.bulk_create([Scripted(title="same", created_at=when) for _ in range(2)])
    finally:
        tokenstore.signals.post_save.disconnect(receiver, sender=Scripted)
    rows = list(Scripted.select().order_by(Scripted.abid))
    assert len(rows) == 2 and len({r.abid for r in rows}) == 2
    assert clash in [r.id for r in rows]
    assert all(r.compute_abid() == r.ABID for r in rows)
    assert heard == [("same", True), ("same", True)]
    loose = _abid_model("Loose")
    with pytest.raises(StoreError, match="Loose is not registered"):
        loose.bulk_create([loose(v="x")])


def test_an_explicit_id_that_collides_is_not_silently_replaced(app_store: Store) -> None:
    when = datetime(2024, 10, 24, 12, 0, tzinfo=UTC)
    Scripted.create(id=uuid.UUID(int=(1 << 100) | 7), title="same", created_at=when)
    with pytest.raises(peewee.IntegrityError, match="abid"):
        Scripted.create(id=uuid.UUID(int=(2 << 100) | 7), title="same", created_at=when)


def _abid_model(name: str, **attributes: Any) -> type[ABIDModel]:
    """An ABIDModel of table ``sources`` with a text field ``v`` and these class attributes."""
    meta = type("Meta", (), {"table_name": "sources"})
    body = {"__module__": __name__, "v": peewee.TextField(null=True), "Meta": meta}
    return type(name, (ABIDModel,), {**body, **attributes})


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"abid_prefix": "ab"}, r"Wrong\.abid_prefix: prefix must be 3 letters a-z"),
        ({"abid_prefix": 5}, r"Wrong\.abid_prefix: prefix must be a str"),
        ({"abid_ts_src": "created"}, r"Wrong\.abid_ts_src names 'created'.*ABID ts part"),
        ({"abid_uri_src": "owner"}, r"Wrong\.abid_uri_src names 'owner'.*ABID uri part"),
        ({"abid_subtype_src": "kind"}, r"Wrong\.abid_subtype_src names 'kind'.*subtype part"),
        ({"abid_rand_src": "uuid"}, r"Wrong\.abid_rand_src names 'uuid'.*ABID rand part"),
        ({"abid_rand_src": 7}, r"Wrong\.abid_rand_src must be the name .* got int"),
        ({"abid_salt": b"salt"}, r"Wrong\.abid_salt must be a str, got bytes"),
        ({"id": peewee.AutoField()}, r"Wrong\.id is an AutoField, but Wrong\.new_id\(\) makes"),
        # every insert ends ON CONFLICT ("abid"): without a unique abid, each create() failed
        ({"abid": peewee.CharField(max_length=30)}, r"Wrong\.abid must be unique"),
        ({"abid": peewee.CharField(max_length=30, index=True)}, r"Wrong\.abid must be unique"),
        ({"abid": None}, r"Wrong\.abid must be unique"),
    ],
)
def test_register_refuses_abid_sources_that_cannot_be_read(
    store: Store, attributes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        store.register(_abid_model("Wrong", **attributes))
    assert not store.db.table_exists("sources")


def test_an_abid_made_unique_by_an_index_of_the_model_is_fine(store: Store) -> None:
    meta = type("Meta", (), {"table_name": "sources", "indexes": ((("abid",), True),)})
    model = _abid_model("Indexed", abid=peewee.CharField(max_length=30), Meta=meta)
    store.register(model)
    first = model.create(v="x")
    assert model.get_by_id(first.id).abid == first.abid


def test_a_str_subclass_prefix_and_salt_are_taken_as_their_text(store: Store) -> None:
    class Text(str):
        __slots__ = ()

    model = _abid_model("Salted", abid_prefix=Text("sal"), abid_salt=Text("x"))
    store.register(model)
    record = model.create(v="x")
    owner = str(record.created_by_id).encode()
    assert record.ABID.prefix == "sal_"
    assert record.ABID.uri == hashlib.sha256(owner + b"x").hexdigest()[:8].upper()


def test_an_integer_id_is_fine_with_a_new_id_of_its_own(store: Store) -> None:
    numbers = iter(range(7, 100))
    model = _abid_model(
        "Numbered",
        id=peewee.IntegerField(primary_key=True),
        new_id=classmethod(lambda c: next(numbers)),
    )
    store.register(model)
    record = model.create(v="x")
    assert record.id == 7 and record.ABID.rand == "000007"


@pytest.mark.parametrize(
    ("source", "value", "message"),
    [
        ("abid_subtype_src", "a_", r"Odd\.ABID 'odd_\w{18}a_\w{6}' could not be parsed back"),
        ("abid_rand_src", "a_b_cd", r"Odd\.ABID 'odd_\w{20}A_B_CD' could not be parsed back"),
        ("abid_subtype_src", "\n\t", r"Odd\.ABID .*not a printable character"),
        ("abid_rand_src", "ßßßßßß", r"Odd\.ABID .*expected 26 chars for the suffix, got 32"),
    ],
)
def test_an_abid_that_could_not_be_read_back_is_never_stored(
    store: Store, source: str, value: str, message: str
) -> None:
    # The sources copy these characters verbatim, as the original does; its parser refused
    # them too (two '_', or 36 chars), so the record would fail every later read and update.
    model = store.register(_abid_model("Odd", abid_prefix="odd_", **{source: "v"}))
    with pytest.raises(InvalidABID, match=message):
        model.create(v=value)
    assert model.select().count() == 0
    kept = model.create(v="ok")
    assert model.get_by_id(kept.id).ABID == kept.ABID


def test_an_abid_source_value_refused_names_the_model(store: Store) -> None:
    model = store.register(_abid_model("Unowned", abid_uri_src="v"))
    with pytest.raises(InvalidABID, match=r"^Unowned\.ABID: uri source must not be empty"):
        model.create(v=" ")
    assert model.select().count() == 0


def test_register_refuses_a_second_model_for_one_table(store: Store) -> None:
    store.register(Note)

    class Impostor(ABIDModel):
        abid_prefix = "imp_"

        class Meta:
            table_name = "note"

    with pytest.raises(ValidationError, match="already belongs to"):
        store.register(Impostor)
    with pytest.raises(ValidationError, match="peewee model class"):
        store.register("note")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"table_name": "sqlite_notes"}, r"named like SQLite's own tables \(sqlite_\*\)"),
        ({"table_name": "SQLite_Notes"}, r"named like SQLite's own tables"),
        ({"table_name": "notes", "schema": "other"}, r"in schema 'other' \(Meta.schema\)"),
        ({"table_name": "notes", "temporary": True}, r"is temporary \(Meta.temporary\)"),
    ],
)
def test_register_refuses_a_table_capture_cannot_watch(
    store: Store, meta: dict[str, str], message: str
) -> None:
    model = type(
        "Elsewhere",
        (peewee.Model,),
        {"__module__": __name__, "v": peewee.TextField(), "Meta": type("Meta", (), meta)},
    )
    with pytest.raises(ValidationError, match=rf"table '{meta['table_name']}' of .*Elsewhere"):
        store.register(model)
    with pytest.raises(ValidationError, match=message):
        store.register(model)
    assert model not in store.models.values()
    assert not store.db.table_exists(meta["table_name"])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"v": peewee.TextField(column_name="a\0b")},
            r"Odd\.v: its column name 'a\\x00b' holds NUL",
        ),
        (
            {"v": peewee.TextField(), "w": peewee.TextField(column_name="V")},
            r"Odd\.v and Odd\.w are both on column 'V' of table 'odd'",
        ),
    ],
)
def test_register_refuses_columns_no_table_could_have(
    store: Store, fields: dict[str, peewee.Field], message: str
) -> None:
    meta = type("Meta", (), {"table_name": "odd"})
    model = type("Odd", (peewee.Model,), {"__module__": __name__, "Meta": meta, **fields})
    with pytest.raises(ValidationError, match=message):
        store.register(model)
    assert not store.db.table_exists("odd")


def test_register_refuses_a_table_name_holding_nul(store: Store) -> None:
    meta = type("Meta", (), {"table_name": "a\0b"})
    model = type("Odd", (peewee.Model,), {"__module__": __name__, "Meta": meta})
    with pytest.raises(ValidationError, match=r"table 'a\\x00b' of .*Odd: a table name cannot"):
        store.register(model)


def test_register_refuses_a_join_table_capture_cannot_watch(store: Store) -> None:
    class Label(peewee.Model):
        name = peewee.TextField()

        class Meta:
            table_name = "label"

    through = peewee.DeferredThroughModel()

    class Album(peewee.Model):
        labels = peewee.ManyToManyField(Label, backref="albums", through_model=through)

        class Meta:
            table_name = "album"

    class AlbumLabel(peewee.Model):
        album = peewee.ForeignKeyField(Album)
        label = peewee.ForeignKeyField(Label)

        class Meta:
            table_name = "album_label"
            schema = "other"

    through.set_model(AlbumLabel)
    with pytest.raises(ValidationError, match=r"join table of Album.labels.*Meta.schema"):
        store.register(Album)
    assert not store.db.table_exists("album")


def test_register_refuses_the_abid_base_class(store: Store) -> None:
    with pytest.raises(ValidationError, match="subclass"):
        store.register(ABIDModel)
    assert not store.db.table_exists(ABIDModel._meta.table_name)


def test_register_refuses_peewee_s_own_base_class(store: Store) -> None:
    """peewee.Model has no ``_meta``: registering it raised AttributeError."""
    with pytest.raises(ValidationError, match=r"Model is a base class .* register a subclass"):
        store.register(peewee.Model)


def _default_text(value: Any) -> str:
    """An option's default as help(tokenstore.open) writes it."""
    if isinstance(value, timedelta):
        seconds = int(value.total_seconds())
        for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
            if seconds % size == 0:
                return f"timedelta({unit}={seconds // size})"
        return f"timedelta(seconds={seconds})"
    return repr(list(value) if isinstance(value, tuple) else value).replace("'", '"')


def test_help_of_open_lists_every_option_with_its_default() -> None:
    doc = inspect.getdoc(tokenstore.open) or ""  # indented as written before Python 3.13
    lines = {line.split("``")[1]: line for line in doc.splitlines() if line.startswith("- ``")}
    for option in dataclasses.fields(tokenstore.Options):
        assert option.name in lines, option.name
        assert f"= {_default_text(option.default)}" in lines[option.name], lines[option.name]
    # clock is open()'s one keyword beside the options: it is a function, not a setting.
    assert sorted(lines) == sorted(
        [f.name for f in dataclasses.fields(tokenstore.Options)] + ["clock"]
    )


def test_an_unknown_option_is_refused_naming_every_keyword_open_takes(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as caught:
        tokenstore.open(tmp_path / "x.db", create=True, clok=lambda: datetime.now(UTC))
    message = str(caught.value)
    assert message.startswith("unknown option clok (did you mean clock?); options are: ")
    for name in [f.name for f in dataclasses.fields(tokenstore.Options)] + ["clock"]:
        assert name in message.partition("options are: ")[2].split(", "), name
    assert not (tmp_path / "x.db").exists()


def test_saving_a_model_never_registered_says_to_register_it(store: Store) -> None:
    class Unregistered(ABIDModel):
        abid_prefix = "unr_"
        title = peewee.TextField()

    with pytest.raises(StoreError, match=r"Unregistered is not registered.*store\.register"):
        Unregistered.create(title="t")


@pytest.mark.parametrize("bad_id", [2**70, "not-a-uuid", 5, b"x" * 16, 1.5, "\x00"])
def test_an_id_that_is_no_uuid_is_refused_clearly(app_store: Store, bad_id: Any) -> None:
    with pytest.raises(ValidationError, match=r"Note\.id"):
        Note.create(title="t", id=bad_id)
    assert Note.select().count() == 0


def test_times_are_stored_as_fixed_width_utc_text(app_store: Store, db_path: Path) -> None:
    note = Note.create(
        title="t", created_at=datetime(2024, 10, 24, 14, 0, 0, 123456, tzinfo=timedelta_tz(2))
    )
    [(stored,)] = _db.rows(db_path, "SELECT created_at FROM note WHERE abid = ?", (note.abid,))
    assert stored == "2024-10-24T12:00:00.123Z"


@pytest.mark.sqlite_only
def test_stored_times_keep_their_width_and_read_back_in_every_year() -> None:
    for when in (
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2024, 10, 24, 14, 0, 0, 123456, tzinfo=timedelta_tz(2)),
        datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
    ):
        text = format_time(when)
        assert len(text) == len("2024-10-24T12:00:00.123Z"), text
        assert format_time(when) == text  # asked again (the last answer is kept)
        assert parse_time(text) == to_stored_time(when)
    ordered = [datetime(y, 6, 1, tzinfo=UTC) for y in (5, 50, 500, 999, 1000, 2024)]
    assert sorted(ordered, key=format_time) == ordered


def timedelta_tz(hours: int) -> timezone:
    return timezone(timedelta(hours=hours))


def _shape(path: Path) -> dict[str, object]:
    """Everything a file's schema says: columns of each table, and every index, view, trigger."""
    conn = sqlite3.connect(path)
    try:
        objects = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE type != 'table' "
            "AND name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        columns = {t: conn.execute(f'PRAGMA table_info("{t}")').fetchall() for t in tables}
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()
    return {"objects": objects, "columns": columns, "version": version}


def test_a_version_1_file_is_brought_to_the_current_schema(tmp_path: Path) -> None:
    """A file written by the first release opens, migrated, as if it had been made today."""
    old = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(old)
    conn.executescript((ROOT / "tests" / "schema-v1.sql").read_text())
    conn.execute(
        "INSERT INTO tokenstore_user (username, is_superuser, created_at) "
        "VALUES ('system', 1, '2024-01-01T00:00:00.000Z')"
    )
    conn.execute(
        "INSERT INTO tokenstore_outbound_webhook VALUES ('00000000000000000000000000000001', "
        "'whk_01HNZ2X4ZG0000000000000001', 1, '2024-01-01T00:00:00.000Z', "
        "'2024-01-01T00:00:00.000Z', 'h', 'CREATE', 'tokenstore.models.APIToken', "
        "'https://example.com/', '{}', '', 1, 0, '', NULL, NULL, "
        "'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', NULL, NULL, 0, NULL, '')"
    )
    # an application's package named so but for case is left alone, as on PostgreSQL
    conn.execute(
        "INSERT INTO tokenstore_outbound_webhook VALUES ('00000000000000000000000000000002', "
        "'whk_01HNZ2X4ZG0000000000000002', 1, '2024-01-01T00:00:00.000Z', "
        "'2024-01-01T00:00:00.000Z', 'i', 'CREATE', 'TokenStore.Models.Memo', "
        "'https://example.com/', '{}', '', 1, 0, '', NULL, NULL, "
        "'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', NULL, NULL, 0, NULL, '')"
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()

    tokenstore.open(old).close()
    fresh = tmp_path / "fresh.sqlite3"
    tokenstore.open(fresh).close()
    assert _shape(old) == _shape(fresh)
    conn = sqlite3.connect(old)
    try:
        refs = conn.execute("SELECT ref FROM tokenstore_outbound_webhook ORDER BY name").fetchall()
    finally:
        conn.close()
    assert refs == [("tokenstore.APIToken",), ("TokenStore.Models.Memo",)]


def test_a_postgres_version_set_back_by_hand_is_refused_saying_the_tables_do_not_match(
    pg_url: str,
) -> None:
    tokenstore.open(pg_url).close()
    with _db.Raw(pg_url) as raw:
        raw.execute("DELETE FROM tokenstore_schema_version")
        raw.execute("INSERT INTO tokenstore_schema_version VALUES (1, '2024-01-01T00:00:00.000Z')")
    with pytest.raises(StoreError) as info:
        tokenstore.open(pg_url)
    message = str(info.value)
    assert "has schema version 1, but its tables are not" in message
    assert '"seen" of relation "tokenstore_listener" already exists' in message
    assert "changed outside tokenstore" in message
    with _db.Raw(pg_url) as raw:  # rolled back: the version is as it was
        assert raw.rows("SELECT version FROM tokenstore_schema_version") == [(1,)]


def _pg_shape(url: str) -> dict[str, object]:
    """Everything a PostgreSQL database's schema says: columns, indexes, views, triggers."""
    with _db.Raw(url) as raw:
        return {
            "columns": raw.rows(
                "SELECT table_name, column_name, data_type, is_nullable, column_default "
                "FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2"
            ),
            "indexes": raw.rows(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
            ),
            "views": raw.rows(
                "SELECT table_name, view_definition FROM information_schema.views "
                "WHERE table_schema = 'public' ORDER BY 1"
            ),
            "triggers": raw.rows(
                "SELECT trigger_name, event_manipulation, action_statement "
                "FROM information_schema.triggers ORDER BY 1, 2"
            ),
            "version": raw.rows("SELECT max(version) FROM tokenstore_schema_version"),
        }


def test_a_version_1_postgres_database_is_brought_to_the_current_schema(
    pg_url: str, pg_admin_url: str
) -> None:
    """A database set up by the first release opens, migrated, as if it had been made today."""
    with _db.Raw(pg_url) as raw:
        raw.execute((ROOT / "tests" / "schema-postgres-v1.sql").read_text())
        raw.execute("INSERT INTO tokenstore_schema_version VALUES (1, '2024-01-01T00:00:00.000Z')")
        raw.execute(
            "INSERT INTO tokenstore_user (username, is_superuser, created_at) "
            "VALUES ('system', true, '2024-01-01T00:00:00.000Z')"
        )
        raw.execute(
            "INSERT INTO tokenstore_outbound_webhook VALUES ('00000000000000000000000000000001', "
            "'whk_01HNZ2X4ZG0000000000000001', 1, '2024-01-01T00:00:00.000Z', "
            "'2024-01-01T00:00:00.000Z', 'h', 'CREATE', 'tokenstore.models.APIToken', "
            "'https://example.com/', '{}', '', true, false, '', NULL, NULL, "
            "'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', NULL, NULL, 0, NULL, '')"
        )
    tokenstore.open(pg_url).close()
    fresh = pg_url.rpartition("/")[0] + "/" + pg_url.rpartition("/")[2] + "_fresh"
    with psycopg_admin(pg_admin_url) as admin:
        admin.execute(f'CREATE DATABASE "{fresh.rpartition("/")[2]}"')
    try:
        tokenstore.open(fresh).close()
        assert _pg_shape(pg_url) == _pg_shape(fresh)
    finally:
        with psycopg_admin(pg_admin_url) as admin:
            admin.execute(f'DROP DATABASE "{fresh.rpartition("/")[2]}" WITH (FORCE)')
    assert _db.rows(pg_url, "SELECT ref FROM tokenstore_outbound_webhook") == [
        ("tokenstore.APIToken",)
    ]


def psycopg_admin(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True)


def test_postgres_create_false_and_read_only(pg_url: str) -> None:
    """As for a file: an empty database is not set up when asked not to; read-only never writes."""
    for options in ({"create": False}, {"read_only": True}):
        # the same words as for a file of another program, with the same advice
        with pytest.raises(StoreError, match=r"holds no tokenstore.*`tokenstore init` sets one up"):
            tokenstore.open(pg_url, **options)
    assert _db.rows(pg_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    with tokenstore.open(pg_url) as writer:
        writer.users.create("alice")
    with tokenstore.open(pg_url, create=False) as again:
        assert again.users.get("alice").username == "alice"
    with tokenstore.open(pg_url, read_only=True) as reader:
        assert sorted(u.username for u in reader.users.list()) == ["alice", "system"]
        with pytest.raises(StoreReadOnly):
            reader.users.create("bob")
    assert _db.rows(pg_url, "SELECT username FROM tokenstore_user ORDER BY 1") == [
        ("alice",),
        ("system",),
    ]


@pytest.mark.parametrize("given", [None, int, "tokenstore.User", Note()])
def test_ref_takes_only_a_model_class(store: Store, given: Any) -> None:
    with pytest.raises(ValidationError, match="peewee model class"):
        store.ref(given)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://127.0.0.1:1/db?password=SEKRIT",  # libpq's own parameter
        "postgresql://u:SE@KRIT@127.0.0.1:1/db",  # an @ in the password, not percent-encoded
        "POSTGRESQL://u:SEKRIT@127.0.0.1:1/db",  # schemes have no case; read as a file path
    ],
)
def test_a_postgresql_password_never_reaches_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.chdir(tmp_path)  # where a URL misread as a path would be looked for
    with pytest.raises(tokenstore.TokenstoreError) as info:
        tokenstore.open(url)
    assert "SEKRIT" not in str(info.value) and "KRIT" not in str(info.value)


def test_selects_of_expressions_on_own_models_read_as_peewee_reads_them(store: Store) -> None:
    """Selects of own models convert their rows with the row loader; a column that is an
    expression (a function, arithmetic, raw SQL) has no field, and peewee's own conversion
    of it stays: the loader raised AttributeError on such a column."""
    store.users.create("Alice")
    ids = [user.id for user in User.select().order_by(User.username)]
    lower = peewee.fn.LOWER(User.username)
    by_name = User.select(lower.alias("low"), (User.id + 1).alias("next")).order_by(User.username)
    assert list(by_name.tuples()) == [("alice", ids[0] + 1), ("system", ids[1] + 1)]
    assert [row["low"] for row in by_name.dicts()] == ["alice", "system"]
    assert [(user.low, user.next) for user in by_name] == [
        ("alice", ids[0] + 1),
        ("system", ids[1] + 1),
    ]
    assert list(User.select(peewee.SQL("1")).tuples()) == [(1,), (1,)]


def test_a_store_opened_before_another_refuses_a_write_split_between_them(db_path: Path) -> None:
    """Models are bound to the most recently opened store: the older one's writes would
    go through two connections, which on SQLite waited for each other in one thread until
    busy_timeout, and on PostgreSQL committed apart (a rollback kept half). Refused at once."""
    older = tokenstore.open(db_path, busy_timeout=5.0)
    newer = tokenstore.open(db_path, busy_timeout=5.0)
    try:
        newer.register(Note)
        owner = newer.users.create("alice")
        outcome: list[BaseException | None] = []

        def older_writes() -> None:
            try:
                with older.atomic():
                    Note.create(title="bound to the newer store")
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        started = time.monotonic()
        worker = threading.Thread(target=older_writes, daemon=True)
        worker.start()
        worker.join(30)
        assert not worker.is_alive()
        assert time.monotonic() - started < 2  # not busy_timeout, waiting for itself
        assert isinstance(outcome[0], StoreError)
        assert "another Store" in str(outcome[0]) and "most recently opened" in str(outcome[0])
        with pytest.raises(StoreError, match="another Store"):
            older.tokens.create(owner, name="split")
        assert Note.select().count() == 0 and APIToken.select().count() == 0
        # Each store alone still works, and the older one still closes.
        Note.create(title="newer")
        assert older.tokens.authenticate(newer.tokens.create(owner)[1]).created_by_id == owner.id
    finally:
        older.close()
        newer.close()
    with tokenstore.open(db_path) as again:
        again.register(Note)
        assert [n.title for n in Note.select()] == ["newer"]


@pytest.mark.sqlite_only
def test_a_store_superseded_by_one_on_another_file_refuses_instead_of_using_that_file(
    tmp_path: Path,
) -> None:
    """Models are bound to the most recently opened store: the older store's users, tokens
    and webhooks read and wrote the newer store's file (a user created through ``a``
    landed in ``b.sqlite3``). The older store now refuses, and still closes."""
    a = tokenstore.open(tmp_path / "a.sqlite3")
    b = tokenstore.open(tmp_path / "b.sqlite3")
    try:
        for call in (
            lambda: a.users.create("alice"),
            lambda: a.tokens.create(),
            lambda: a.webhooks.list(),
            lambda: a.dispatch(),
        ):
            with pytest.raises(StoreError, match=r"a\.sqlite3: a store opened later .*b\.sqlite3"):
                call()
        assert [u.username for u in b.users.list()] == ["system"]
    finally:
        a.close()
        b.close()
    assert _db.rows(tmp_path / "a.sqlite3", "SELECT username FROM tokenstore_user") == [("system",)]
    with tokenstore.open(tmp_path / "a.sqlite3") as again:  # opened anew, it is in charge
        assert again.users.create("alice").username == "alice"
    assert _db.rows(tmp_path / "b.sqlite3", "SELECT username FROM tokenstore_user") == [("system",)]


def test_stores_opened_by_several_threads_at_once_never_wait_for_themselves(
    db_path: Path,
) -> None:
    """A store per request thread (unsupported: one store per process) fails fast, clearly."""
    tokenstore.open(db_path).close()
    outcomes: list[tuple[str, float]] = []

    def requests(worker: int) -> None:
        for n in range(3):
            started = time.monotonic()
            try:
                with tokenstore.open(db_path, busy_timeout=5.0) as s:
                    s.tokens.create(s.users.create(f"u{worker}-{n}"))
                outcome = "ok"
            except StoreError as exc:
                outcome = str(exc)
            outcomes.append((outcome, time.monotonic() - started))

    threads = [threading.Thread(target=requests, args=(i,), daemon=True) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    assert len(outcomes) == 12
    assert [o for o in outcomes if o[1] > 3] == []  # busy_timeout is 5 s
    assert [o for o, _ in outcomes if o != "ok" and "another Store" not in o] == []


@pytest.mark.parametrize("waits", [False, True], ids=["reads", "waits-for-changes"])
def test_a_thread_that_ends_leaves_no_unclosed_connection_behind(store: Store, waits: bool) -> None:
    """Each thread has its own connection, which only it could close: it closes as the
    thread ends, so nothing is left for the collector to warn about (psycopg, and
    sqlite3 from Python 3.13, warn of a connection collected while open). On PostgreSQL
    a wait for changes listens on another connection of the thread's: it left that open,
    one a thread."""
    pages: list[int] = []

    def request() -> None:
        if waits:
            store.wait_for_changes(0.01)
        pages.append(len(store.users.list()))

    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(3):
            thread = threading.Thread(target=request)
            thread.start()
            thread.join(30)
        del thread
        gc.collect()
    assert pages == [1, 1, 1]
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert store.users.list()  # this thread's own connection is still open


def test_close_inside_a_transaction_is_refused_and_changes_nothing(store: Store) -> None:
    """peewee cannot close a connection in a transaction: close() says so before it has
    stopped anything or unregistered the listener inside the transaction."""
    retries = store.webhooks.start_retry_thread(interval=60)
    outcome: list[BaseException | None] = []

    def request() -> None:
        try:
            with store.atomic():
                store.users.create("before")
                try:
                    store.close()
                except BaseException as exc:
                    outcome.append(exc)
                store.users.create("after")
        finally:
            store.db.close()

    worker = threading.Thread(target=request, daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive()
    assert isinstance(outcome[0], StoreError), outcome
    assert "inside a transaction" in str(outcome[0])
    assert retries.is_alive()  # nothing of close() ran
    assert {u.username for u in store.users.list()} >= {"before", "after"}


def test_an_abid_source_value_too_big_to_show_is_a_validation_error(store: Store) -> None:
    """The message quoted the value with repr(), which refuses an int of over 4,300 digits:
    the save raised a raw ValueError from inside the error path."""
    model = store.register(_abid_model("Huge", abid_uri_src="id"))
    with pytest.raises(ValidationError, match=r"^Huge\.id: an integer of \d+ bits is not a valid"):
        model.create(id=10**5000, v="x")
    assert model.select().count() == 0


def test_a_thread_that_writes_to_many_stores_in_turn_keeps_no_note_of_the_closed_ones(
    tmp_path: Path,
) -> None:
    """An app that opens one file per project, in turn, must not grow per file it ever wrote."""
    from tokenstore import _backend

    before = len(_backend._WRITERS.by_store)
    for n in range(8):
        with tokenstore.open(tmp_path / f"project-{n}.sqlite3") as each:
            each.users.create("owner")
        del each
        gc.collect()
    # The last store's, and perhaps the one before it: the models held that one until the
    # last was opened, so it may have died only after the last one's first write.
    assert len(_backend._WRITERS.by_store) <= before + 2


@pytest.mark.parametrize("opened", ["execute_sql", "connection"])
def test_a_transaction_begun_by_hand_is_a_store_error_that_says_so(
    store: Store, opened: str
) -> None:
    """A BEGIN run by hand: SQLite's atomic() raised a raw 'cannot start a transaction
    within a transaction', and tokenstore's own writes silently joined it on both
    backends (PostgreSQL's atomic() too, with a server warning), to be committed or
    rolled back by whatever the application did next."""
    store.register(Note)
    if opened == "execute_sql":
        store.db.execute_sql("BEGIN")
    else:
        store.db.connection().execute("BEGIN")
    calls = [
        lambda: store.users.create("bob"),
        lambda: Note.create(title="x"),
        lambda: store.atomic().__enter__(),
    ]
    for call in calls:
        with pytest.raises(StoreError, match="a transaction is open that tokenstore did not begin"):
            call()
    store.db.execute_sql("ROLLBACK")
    assert store.users.create("bob").username == "bob"
    with store.atomic():
        assert Note.create(title="x").title == "x"
    store.db.begin()  # peewee's own: writes join it, and atomic() cannot begin inside it
    Note.create(title="y")
    with pytest.raises(StoreError, match=r"begun with db\.begin\(\) is open.*db\.savepoint"):
        store.users.create("carol")
    store.db.rollback()
    assert [u.username for u in store.users.list() if u.username != "system"] == ["bob"]
    assert [n.title for n in Note.select()] == ["x"]
