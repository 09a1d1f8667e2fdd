"""Moving a store between SQLite and PostgreSQL: everything kept, ids and secrets included."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import _db
import pytest

import tokenstore
from tokenstore import StoreError, StoreIOError, StoreReadOnly, ValidationError
from tokenstore import _cli as cli

LOOPBACK = ["127.0.0.1/32"]
TABLES = (
    "tokenstore_user",
    "tokenstore_api_token",
    "tokenstore_outbound_webhook",
    "tokenstore_webhook_delivery",
    "tokenstore_webhook_allow",  # the file's address policy: its hooks rely on it
)


def fill(location: Path | str) -> dict[str, Any]:
    """A store with a user, a live and a revoked token, a rotated hook and a failed delivery."""
    with tokenstore.open(location, webhook_allow=LOOPBACK, connect_timeout=1) as store:
        alice = store.users.create("alice")
        token, secret = store.tokens.create(alice, name="ci", scopes=["read"])
        revoked, _ = store.tokens.create(alice, name="old")
        store.tokens.revoke(revoked)
        hook = store.webhooks.create("users", tokenstore.User, "http://127.0.0.1:9/never")
        store.users.create("bob")  # its delivery fails: nothing listens on port 9
        [delivery] = store.webhooks.deliveries(hook)
        assert delivery.status == "failed"
        first_secret = hook.secret
        hook = store.webhooks.rotate_secret(hook)  # the old secret still signs for a while
        assert hook.previous_secret == first_secret
        return {
            "secret": secret,
            "token": token.abid,
            "hook_secret": hook.secret,
            "previous_secret": first_secret,
            "delivery": (delivery.abid, delivery.status, delivery.next_attempt_at),
        }


def snapshot(location: Path | str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every copied table, booleans as 0/1."""
    raw = _db.Raw(location)
    try:
        return {
            table: [
                tuple(int(v) if isinstance(v, bool) else v for v in row)
                for row in raw.rows(f"SELECT * FROM {table} ORDER BY 1")
            ]
            for table in TABLES
        }
    finally:
        raw.close()


def test_a_store_moves_to_postgres_and_back_unchanged(tmp_path: Path, pg_url: str) -> None:
    source = tmp_path / "source.sqlite3"
    made = fill(source)
    before = snapshot(source)

    copied = tokenstore.migrate(source, pg_url)
    assert copied == {table: len(before[table]) for table in TABLES}
    assert snapshot(pg_url) == before
    assert _db.rows(pg_url, "SELECT count(*) FROM tokenstore_change_event") == [(0,)]

    with tokenstore.open(pg_url, webhook_allow=LOOPBACK) as moved:
        assert moved.tokens.authenticate(made["secret"], scope="read").abid == made["token"]
        hook = moved.webhooks.get("users")
        assert (hook.secret, hook.previous_secret) == (made["hook_secret"], made["previous_secret"])
        [delivery] = moved.webhooks.deliveries(hook)
        assert (delivery.abid, delivery.status, delivery.next_attempt_at) == made["delivery"]
        carol = moved.users.create("carol")  # new ids continue after the copied ones
        assert carol.id == max(row[0] for row in before["tokenstore_user"]) + 1

    back = tmp_path / "back.sqlite3"
    tokenstore.migrate(pg_url, back)
    after = snapshot(back)
    assert {t: rows for t, rows in after.items() if t != "tokenstore_user"} == {
        t: rows for t, rows in snapshot(pg_url).items() if t != "tokenstore_user"
    }
    assert [row[1] for row in after["tokenstore_user"]] == ["system", "alice", "bob", "carol"]


def refused_unless_forced(source: Path, dest: Path | str, message: str) -> None:
    """``migrate`` refuses ``dest`` (saying ``message``) and leaves it as it was; forced, copies."""
    held = snapshot(dest)
    with pytest.raises(StoreError, match=message):
        tokenstore.migrate(source, dest)
    assert snapshot(dest) == held
    tokenstore.migrate(source, dest, force=True)
    assert snapshot(dest) == snapshot(source)


def test_a_destination_with_data_is_refused_unless_forced(tmp_path: Path, pg_url: str) -> None:
    source = tmp_path / "source.sqlite3"
    fill(source)
    with tokenstore.open(pg_url) as other:
        other.users.create("someone-else")
    refused_unless_forced(source, pg_url, r"already holds data \(2 tokenstore_user\).*force")


def test_a_destination_whose_only_data_is_its_allowlist_is_refused_unless_forced(
    tmp_path: Path, db_path: Path
) -> None:
    """The allowlist is data too: copying over it silently would drop the entries it held."""
    source = tmp_path / "source.sqlite3"
    fill(source)
    with tokenstore.open(db_path, webhook_allow=LOOPBACK) as other:
        other.webhooks.allow("10.1.0.0/16")
    refused_unless_forced(source, db_path, r"already holds data \(.*1 tokenstore_webhook_allow\)")


def test_a_new_destination_holding_only_entries_the_source_has_is_empty_enough(
    tmp_path: Path, db_path: Path
) -> None:
    """As made by ``tokenstore init`` in a shell that exports TOKENSTORE_WEBHOOK_ALLOW."""
    source = tmp_path / "source.sqlite3"
    fill(source)
    tokenstore.open(db_path, webhook_allow=LOOPBACK).close()
    tokenstore.migrate(source, db_path)
    assert snapshot(db_path) == snapshot(source)


def test_a_missing_source_is_refused_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        tokenstore.migrate(tmp_path / "nothing.sqlite3", tmp_path / "dest.sqlite3")
    assert not (tmp_path / "nothing.sqlite3").exists()


def test_a_path_that_begins_with_a_tilde_is_said_not_to_be_expanded(
    tmp_path: Path, home: Path
) -> None:
    """A missing '~/source' did not say why; a '~/copy' destination was said to mean the
    hidden file made aside, '/root/.tokenstore-migrate-8095211e0a22'."""
    fill(home / "source.sqlite3")
    hint = "'~' is not expanded here"
    with pytest.raises(StoreError) as caught:
        tokenstore.migrate("~/source.sqlite3", tmp_path / "copy.sqlite3")
    assert hint in str(caught.value) and f"did you mean {home}/source.sqlite3?" in str(caught.value)
    with pytest.raises(StoreError) as caught:
        tokenstore.migrate(home / "source.sqlite3", "~/copy.sqlite3")
    said = str(caught.value)
    assert said.startswith("cannot create ~/copy.sqlite3: its folder ~ does not exist"), said
    assert hint in said and f"did you mean {home}/copy.sqlite3?" in said, said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


@pytest.mark.parametrize(
    ("source", "kind"), [("folder", "a directory"), ("/dev/null", "a character device")]
)
def test_a_source_that_is_no_file_is_refused_as_what_it_is(
    tmp_path: Path, source: str, kind: str
) -> None:
    """It exists: "does not exist" would send its owner looking for the wrong fault."""
    (tmp_path / "folder").mkdir()
    given = tmp_path / source if source == "folder" else Path(source)
    with pytest.raises(StoreError, match=f"^{given} is {kind}, not a tokenstore file$"):
        tokenstore.migrate(given, tmp_path / "dest.sqlite3")
    assert not (tmp_path / "dest.sqlite3").exists()


@pytest.mark.parametrize("spelled", ["{0}/", "{1}/./{2}", "{1}/link.sqlite3", "{1}/hard.sqlite3"])
def test_the_same_file_spelled_another_way_is_refused(tmp_path: Path, spelled: str) -> None:
    """With force, copying a file onto itself would first empty it: everything would be lost."""
    source = tmp_path / "source.sqlite3"
    fill(source)
    (tmp_path / "link.sqlite3").symlink_to(source)
    os.link(source, tmp_path / "hard.sqlite3")
    held = snapshot(source)
    dest = spelled.format(source, tmp_path, source.name)
    with pytest.raises(StoreError, match="the source and the destination are the same"):
        tokenstore.migrate(source, dest, force=True)
    assert snapshot(source) == held


@pytest.mark.parametrize("companion", ["-wal", "-shm", "-journal"])
def test_a_destination_that_is_the_sources_own_journal_is_refused(
    tmp_path: Path, companion: str
) -> None:
    """While the source is open, its -wal is an empty file: it was taken for a new store.

    The copy was written into the source's live write-ahead log, reported as
    done, and lost the next time the source was written.
    """
    source = tmp_path / "source.sqlite3"
    fill(source)
    with tokenstore.open(source) as running:  # another process using the store
        running.users.list()
        dest = tmp_path / f"source.sqlite3{companion}"
        before = dest.read_bytes() if dest.exists() else None
        with pytest.raises(
            StoreError, match=f"^migrate: the destination is the source's {companion}"
        ):
            tokenstore.migrate(source, dest)
        assert (dest.read_bytes() if dest.exists() else None) == before
        assert not (tmp_path / f"source.sqlite3{companion}-wal").exists()


@pytest.mark.parametrize("companion", ["-wal", "-journal"])
def test_a_destination_named_as_another_databases_journal_is_refused(
    tmp_path: Path, companion: str
) -> None:
    """The copy, made aside and renamed, became a file SQLite takes for that database's log."""
    fill(tmp_path / "source.sqlite3")
    tokenstore.open(tmp_path / "app.sqlite3").close()
    dest = tmp_path / f"app.sqlite3{companion}"
    with pytest.raises(StoreError, match=f"app.sqlite3{companion} is the {companion} file of"):
        tokenstore.migrate(tmp_path / "source.sqlite3", dest)
    assert not dest.exists()


@pytest.mark.parametrize(
    ("source", "dest", "force", "message"),
    [
        (None, "dest.sqlite3", False, "source must be a str or a Path, got NoneType"),
        (5, "dest.sqlite3", False, "source must be a str or a Path, got int"),
        (b"s.sqlite3", "dest.sqlite3", False, "source must be a str or a Path, got bytes"),
        ("s.sqlite3", "a\x00b", False, "destination must not contain a NUL"),
        ("s.sqlite3", "a\ud800", False, "destination is not valid Unicode"),
        (
            "x" * 5000,
            "dest.sqlite3",
            False,
            r"cannot open x+… \(\d+ characters left out\) …x+: File name too long",
        ),
        ("s.sqlite3", "dest.sqlite3", "yes", "force must be true or false"),
    ],
)
def test_bad_arguments_are_validation_errors_and_create_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    source: Any,
    dest: Any,
    force: Any,
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    tokenstore.open("s.sqlite3").close()
    with pytest.raises(tokenstore.TokenstoreError, match=message):
        tokenstore.migrate(source, dest, force=force)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sqlite3"]


def test_the_command_migrates_and_refuses_in_one_line(tmp_path: Path, pg_url: str) -> None:
    source = tmp_path / "source.sqlite3"
    fill(source)
    parts = urlsplit(pg_url)
    env = {**os.environ, "PGPASSWORD": parts.password or ""}
    without_password = pg_url.replace(f":{parts.password}@", "@")
    command = [sys.executable, "-m", "tokenstore", "--json", "migrate"]
    done = subprocess.run(
        [*command, str(source), without_password], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert '"tokenstore_api_token": 2' in done.stdout
    again = subprocess.run(
        [*command, str(source), without_password], capture_output=True, text=True, env=env
    )
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1 and "already holds data" in again.stderr
    assert "Traceback" not in again.stderr


def test_a_destination_this_session_may_only_read_is_refused_saying_why_in_one_line(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """It said only 'is open read-only', which nobody asked for; the command printed the
    warning that it opened read-only before that error."""
    source = tmp_path / "source.sqlite3"
    fill(source)
    tokenstore.open(pg_url).close()
    dest = f"{pg_url}?options=-c%20default_transaction_read_only%3Don"
    with pytest.raises(StoreReadOnly, match=r"lets this session only read.*nothing can be copied"):
        tokenstore.migrate(source, dest)
    capsys.readouterr()
    assert cli.main(["migrate", str(source), dest]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lets this session only read" in err, err
    assert _db.rows(pg_url, "SELECT count(*) FROM tokenstore_user") == [(1,)]


def test_a_postgres_source_that_holds_no_store_is_refused_and_left_alone(
    tmp_path: Path, pg_url: str
) -> None:
    dest = tmp_path / "dest.sqlite3"
    with pytest.raises(StoreError, match="holds no tokenstore"):
        tokenstore.migrate(pg_url, dest)
    assert _db.rows(pg_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    assert not dest.exists()


def test_an_sqlite_source_that_holds_no_store_is_refused_and_left_alone(tmp_path: Path) -> None:
    source, dest = tmp_path / "empty.sqlite3", tmp_path / "dest.sqlite3"
    source.touch(mode=0o600)
    with pytest.raises(StoreError, match="holds no tokenstore"):
        tokenstore.migrate(source, dest)
    assert source.read_bytes() == b""  # not set up as a store on the way
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.sqlite3"]


@pytest.mark.parametrize(
    "respelled", ["postgres{0}", "POSTGRESQL{0}", "postgresql{0}?sslmode=prefer"]
)
def test_the_same_database_by_another_url_is_refused(pg_url: str, respelled: str) -> None:
    """With force, copying a database onto itself would first empty it."""
    fill(pg_url)
    held = snapshot(pg_url)
    dest = respelled.format(pg_url[len("postgresql") :])
    with pytest.raises(StoreError, match="the source and the destination are the same"):
        tokenstore.migrate(pg_url, dest, force=True)
    assert snapshot(pg_url) == held


def test_the_same_database_by_another_role_is_refused(pg_url: str) -> None:
    """pg_stat_activity hides when another role's session started, so the copy onto itself
    went ahead, and force emptied the store first: an application's rows that cascade from
    its users were gone for good."""
    parts = urlsplit(pg_url)
    role = f"other_{parts.path[1:]}"
    other = urlunsplit(
        parts._replace(netloc=f"{role}:other-password@{parts.hostname}:{parts.port}")
    )
    fill(pg_url)
    with _db.Raw(pg_url) as raw:  # the test server's role may create roles
        raw.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'other-password'")
        raw.execute(
            "CREATE TABLE note (id SERIAL PRIMARY KEY, "
            "user_id INTEGER REFERENCES tokenstore_user (id) ON DELETE CASCADE)"
        )
        for kind in ("TABLES", "SEQUENCES"):
            raw.execute(f"GRANT ALL ON ALL {kind} IN SCHEMA public TO {role}")
        raw.execute("INSERT INTO note (user_id) SELECT id FROM tokenstore_user")
    try:
        for source, dest in ((pg_url, other), (other, pg_url)):
            with pytest.raises(StoreError, match="the source and the destination are the same"):
                tokenstore.migrate(source, dest, force=True)
        assert _db.rows(pg_url, "SELECT count(*) FROM note") == [(3,)]
    finally:
        with _db.Raw(pg_url) as raw:
            for kind in ("TABLES", "SEQUENCES"):
                raw.execute(f"REVOKE ALL ON ALL {kind} IN SCHEMA public FROM {role}")
            raw.execute(f"DROP ROLE {role}")


def test_a_store_moves_to_another_schema_of_the_same_database(pg_url: str) -> None:
    """Stores in two schemas of one database (the URL's search_path) are two stores: the
    move was refused as a copy of a database onto itself."""
    with _db.Raw(pg_url) as raw:
        raw.execute("CREATE SCHEMA moved")
    fill(pg_url)
    dest = f"{pg_url}?options=-c%20search_path%3Dmoved"
    tokenstore.migrate(pg_url, dest)
    assert snapshot(dest) == snapshot(pg_url)


def test_a_source_whose_server_ends_the_session_mid_copy_is_a_store_io_error(pg_url: str) -> None:
    """The source's connection lost during the copy (a restart, an administrator, here the
    session's idle_in_transaction_session_timeout): the read transaction's ROLLBACK on the
    closed connection raised psycopg's OperationalError over the StoreIOError saying why."""
    with _db.Raw(pg_url) as raw:
        raw.execute("CREATE SCHEMA moved")
    fill(pg_url)
    source = f"{pg_url}?options=-c%20idle_in_transaction_session_timeout%3D1"
    with pytest.raises(StoreIOError, match="the connection to the server was lost"):
        tokenstore.migrate(source, f"{pg_url}?options=-c%20search_path%3Dmoved")
    assert _db.rows(pg_url, "SELECT count(*) FROM moved.tokenstore_api_token") == [(0,)]


def test_text_postgres_cannot_hold_is_refused_naming_its_row(tmp_path: Path, pg_url: str) -> None:
    """SQLite's text may hold NUL (edited in by hand), PostgreSQL's cannot: nothing is copied."""
    source = tmp_path / "source.sqlite3"
    made = fill(source)
    _db.edit(
        source,
        "UPDATE tokenstore_api_token SET name = 'c' || char(0) || 'i' "
        f"WHERE abid = '{made['token']}'",
    )
    [(token_id,)] = _db.rows(
        source, "SELECT id FROM tokenstore_api_token WHERE abid = ?", (made["token"],)
    )
    with pytest.raises(ValidationError, match=f"row '{token_id}' of tokenstore_api_token.*NUL"):
        tokenstore.migrate(source, pg_url)
    assert _db.rows(pg_url, "SELECT username FROM tokenstore_user") == [("system",)]
    assert _db.rows(pg_url, "SELECT count(*) FROM tokenstore_api_token") == [(0,)]


def rows_in(location: Path | str) -> list[int]:
    """How many rows each copied table holds (0 where the table does not exist)."""
    if isinstance(location, Path) and not location.exists():
        return [0] * len(TABLES)
    return [_db.rows(location, f"SELECT count(*) FROM {table}")[0][0] for table in TABLES]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            "UPDATE tokenstore_user SET username = CAST(x'ff' AS TEXT) WHERE username = 'bob'",
            r"tokenstore_user row \d+: column username holds text that is not UTF-8",
        ),
        (
            "UPDATE tokenstore_user SET is_superuser = 'yes' WHERE username = 'bob'",
            r"tokenstore_user row \d+: column is_superuser holds text, not 0 or 1",
        ),
        (
            "UPDATE tokenstore_api_token SET expires = 'soon' WHERE name = 'ci'",
            r"tokenstore_api_token row apt_\w+: column expires holds text, not an ISO-8601 time",
        ),
        (
            "UPDATE tokenstore_api_token SET name = x'00ff' WHERE name = 'ci'",
            r"tokenstore_api_token row apt_\w+: column name holds a blob",
        ),
        (
            "UPDATE tokenstore_webhook_delivery SET payload = CAST(x'7bff7d' AS TEXT)",
            r"tokenstore_webhook_delivery row msg_\w+: column payload holds text that is not UTF-8",
        ),
    ],
)
def test_a_damaged_source_row_is_refused_naming_it_and_nothing_is_written(
    tmp_path: Path, db_path: Path | str, edit: str, message: str
) -> None:
    source = tmp_path / "source.sqlite3"
    fill(source)
    _db.edit(source, edit)
    with pytest.raises(tokenstore.DamagedRow, match=f"^migrate: {message}.*nothing was written"):
        tokenstore.migrate(source, db_path)
    assert rows_in(db_path)[1:] == [0] * (len(TABLES) - 1)


def test_a_failed_copy_into_a_new_file_leaves_no_file(tmp_path: Path) -> None:
    """The empty store made for the copy goes with the failure: nothing half-written stays."""
    source = tmp_path / "source.sqlite3"
    fill(source)
    _db.edit(source, "UPDATE tokenstore_api_token SET expires = 'soon' WHERE name = 'ci'")
    dest = tmp_path / "new.sqlite3"
    with pytest.raises(tokenstore.DamagedRow, match="nothing was written"):
        tokenstore.migrate(source, dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source.sqlite3"]


def test_the_copy_a_killed_migrate_left_aside_is_removed_by_the_next(tmp_path: Path) -> None:
    """A migrate killed midway (SIGKILL: no ``finally`` runs) left its copy aside for good.

    The hidden file and its logs were as large as the store, nothing ever
    removed them, and each run killed so left one more. The next migrate into
    that folder removes those whose process is gone.
    """
    source = tmp_path / "source.sqlite3"
    fill(source)
    _db.edit(  # rows enough for the copy to take a while
        source,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) "
        "INSERT INTO tokenstore_user (username, is_superuser, created_at) "
        "SELECT 'user' || i, 0, '2024-01-01T00:00:00.000Z' FROM n",
    )
    folder = tmp_path / "copies"
    folder.mkdir()
    script = "import sys, tokenstore; tokenstore.migrate(sys.argv[1], sys.argv[2])"
    child = subprocess.Popen([sys.executable, "-c", script, source, folder / "first.sqlite3"])
    deadline = time.monotonic() + 60
    while not any(folder.iterdir()):  # the copy, being made aside
        assert child.poll() is None and time.monotonic() < deadline
        time.sleep(0.001)
    child.kill()
    child.wait()
    assert any(p.name.startswith(".tokenstore-migrate-") for p in folder.iterdir())

    tokenstore.migrate(source, folder / "second.sqlite3")
    left = sorted(p.name for p in folder.iterdir())
    assert left in (["second.sqlite3"], ["first.sqlite3", "second.sqlite3"]), left
    assert snapshot(folder / "second.sqlite3") == snapshot(source)


def test_a_failed_copy_never_removes_the_copy_another_migrate_made_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two copies to one new name: the one that loses leaves the winner's file alone.

    The loser found the file new when it started, so on failing it removed
    "its" new file, which by then held the other copy, committed and reported.
    """
    from tokenstore import _migrate

    source, dest = tmp_path / "source.sqlite3", tmp_path / "new.sqlite3"
    made = fill(source)
    copy = _migrate._copy

    def other_migrate_first(*args: Any) -> dict[str, int]:
        monkeypatch.setattr(_migrate, "_copy", copy)
        tokenstore.migrate(source, dest)  # another process, finishing first
        return copy(*args)

    monkeypatch.setattr(_migrate, "_copy", other_migrate_first)
    with pytest.raises(StoreError, match=f"^migrate: {dest} "):
        tokenstore.migrate(source, dest)
    assert snapshot(dest) == snapshot(source)
    with tokenstore.open(dest) as moved:
        assert moved.tokens.authenticate(made["secret"]).abid == made["token"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.sqlite3", "source.sqlite3"]


def test_a_folder_without_hard_links_still_gets_its_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FAT on a USB stick and some network shares refuse link(): the copy is renamed instead."""
    from tokenstore import _migrate

    def no_links(*args: Any) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(_migrate.os, "link", no_links)
    source, dest = tmp_path / "source.sqlite3", tmp_path / "new.sqlite3"
    made = fill(source)
    tokenstore.migrate(source, dest)
    assert snapshot(dest) == snapshot(source)
    with tokenstore.open(dest) as moved:
        assert moved.tokens.authenticate(made["secret"]).abid == made["token"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.sqlite3", "source.sqlite3"]


def test_a_failed_copy_into_an_existing_store_leaves_it_as_it_was(tmp_path: Path) -> None:
    source, dest = tmp_path / "source.sqlite3", tmp_path / "dest.sqlite3"
    fill(source)
    _db.edit(source, "UPDATE tokenstore_api_token SET expires = 'soon' WHERE name = 'ci'")
    tokenstore.open(dest).close()
    held = snapshot(dest)
    with pytest.raises(tokenstore.DamagedRow):
        tokenstore.migrate(source, dest)
    assert dest.exists() and snapshot(dest) == held


@pytest.mark.parametrize(
    "edit",
    [  # a hand-edited SQLite file breaks the rules the destination keeps
        "UPDATE tokenstore_webhook_delivery SET hook_id = '00000000000000000000000000000000'",
        "UPDATE tokenstore_webhook_delivery SET status = 'lost'",
    ],
)
def test_a_row_the_destination_refuses_is_named_without_its_values(
    tmp_path: Path, db_path: Path | str, edit: str
) -> None:
    """PostgreSQL's own message goes on to quote the whole row: the hook's secret with it."""
    source = tmp_path / "source.sqlite3"
    made = fill(source)
    _db.edit(source, "PRAGMA foreign_keys = OFF", "PRAGMA ignore_check_constraints = ON", edit)
    with pytest.raises(
        ValidationError, match=r"^migrate: (row .* of )?tokenstore_webhook_delivery"
    ) as caught:
        tokenstore.migrate(source, db_path)
    assert "nothing was written" in str(caught.value)
    assert "\n" not in str(caught.value) and made["hook_secret"] not in str(caught.value)
    assert rows_in(db_path)[1:] == [0] * (len(TABLES) - 1)


def test_force_on_a_destination_whose_users_other_tables_need_is_refused(
    tmp_path: Path, db_path: Path | str
) -> None:
    """An application's table that keeps its rows' users (ON DELETE RESTRICT) stops --force."""
    import peewee

    source = tmp_path / "source.sqlite3"
    fill(source)

    class Note(peewee.Model):
        text = peewee.TextField()
        owner = peewee.ForeignKeyField(tokenstore.User, on_delete="RESTRICT")

    with tokenstore.open(db_path) as app:
        app.register(Note)
        Note.create(text="mine", owner=app.users.create("zed"))
    held = snapshot(db_path)
    with pytest.raises(ValidationError, match=r"^migrate: force cannot empty .*tokenstore_user"):
        tokenstore.migrate(source, db_path, force=True)
    assert snapshot(db_path) == held
    assert _db.rows(db_path, "SELECT text FROM note") == [("mine",)]


def test_a_store_in_use_moves_as_it_was_at_one_moment(tmp_path: Path, db_path: Path | str) -> None:
    """Another process writing the source meanwhile neither fails the copy nor tears it.

    Tables read one after another, without one snapshot, took tokens whose
    users were created after the users were read: the copy failed with a
    FOREIGN KEY error blamed on a row, every time the source was in use.
    """
    import threading

    with tokenstore.open(db_path) as store:
        for i in range(600):  # more than one batch of reads per table
            store.users.create(f"u{i}")
    stop = threading.Event()

    def write() -> None:
        with tokenstore.open(db_path) as store:
            for i in range(5000):  # bounded; stopped as soon as the copies are made
                if stop.is_set():
                    return
                store.tokens.create(store.users.create(f"w{i}"), name="new")

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for n in range(3):
            dest = tmp_path / f"copy{n}.sqlite3"
            copied = tokenstore.migrate(db_path, dest)
            users, tokens = _db.rows(
                dest,
                "SELECT (SELECT count(*) FROM tokenstore_user), "
                "(SELECT count(*) FROM tokenstore_api_token)",
            )[0]
            assert (users, tokens) == (copied["tokenstore_user"], copied["tokenstore_api_token"])
            # Each new user was followed by its token (the last one's perhaps not yet).
            assert users - 601 - tokens in (0, 1)
    finally:
        stop.set()
        writer.join(timeout=60)
