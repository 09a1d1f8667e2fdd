"""The store file on disk: permissions, odd file types, damage, read-only access, secrets at rest.

Tests run as root, where permission bits do not stop writes. Read-only
files and folders are made with ``chattr +i`` (immutable: not even root may
change them, and ``access(W_OK)`` says so); the tests that need it are
skipped where the file system or the container does not allow it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import peewee
import pytest
from conftest import Clock

import tokenstore
from tokenstore import DamagedRow, Store, StoreCorrupt, StoreError, StoreReadOnly, ValidationError
from tokenstore._models import ABIDModel, OutboundWebhook
from tokenstore._sqlite_schema import SCHEMA_VERSION

#: All about the SQLite file itself (PostgreSQL's create and read_only: tests/test_store.py).
pytestmark = pytest.mark.sqlite_only


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def make_store(path: Path) -> None:
    with tokenstore.open(path) as store:
        alice = store.users.create("alice")
        store.tokens.create(alice, name="ci")


def with_companions(path: Path) -> list[Path]:
    return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


def chattr(flag: str, *paths: Path) -> bool:
    """Set or clear the immutable flag; False where this machine does not allow it."""
    if shutil.which("chattr") is None:
        return False
    done = subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True, check=False)
    return done.returncode == 0


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    if not chattr("+i", *paths):
        pytest.skip("chattr +i is not available here")
    try:
        yield
    finally:
        chattr("-i", *paths)


# -- permissions ----------------------------------------------------------------------------


def test_group_and_other_bits_are_taken_off_the_file_and_its_companions(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_store(db_path)
    keeper = sqlite3.connect(db_path)  # an open reader keeps -wal and -shm in place
    try:
        keeper.execute("SELECT count(*) FROM tokenstore_user").fetchone()
        files = with_companions(db_path)
        assert all(f.exists() for f in files)
        for f in files:
            os.chmod(f, 0o644)
        with caplog.at_level(logging.WARNING, logger="tokenstore"):
            tokenstore.open(db_path).close()
        assert [mode(f) for f in files] == [0o600, 0o600, 0o600]
    finally:
        keeper.close()
    warned = [r.getMessage() for r in caplog.records if "tightened" in r.getMessage()]
    assert len(warned) == 3
    assert "0644" in warned[0] and "0600" in warned[0]


def test_a_loose_file_that_cannot_be_tightened_is_refused(db_path: Path) -> None:
    make_store(db_path)
    os.chmod(db_path, 0o640)
    with immutable(db_path):
        with pytest.raises(StoreError, match=r"mode 0640\) and cannot be made private"):
            tokenstore.open(db_path)
        assert mode(db_path) == 0o640


# -- odd file types -------------------------------------------------------------------------


def open_in_thread(path: Path) -> BaseException | None:
    """Open in a thread and give up waiting after a while: a FIFO opened to read would block."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            tokenstore.open(path).close()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive(), "opening blocked"
    return outcome[0]


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "store.sqlite3"
    os.mkfifo(fifo)
    error = open_in_thread(fifo)
    assert isinstance(error, StoreError)
    assert "is a FIFO, not a tokenstore file" in str(error)
    assert str(fifo) in str(error)


def test_a_fifo_in_place_of_the_wal_is_refused(db_path: Path) -> None:
    make_store(db_path)
    os.mkfifo(db_path.with_name(db_path.name + "-wal"))
    error = open_in_thread(db_path)
    assert isinstance(error, StoreError)
    assert "-wal is a FIFO" in str(error)


def test_a_device_is_refused() -> None:
    with pytest.raises(StoreError, match="/dev/null is a character device"):
        tokenstore.open("/dev/null")


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="is a directory"):
        tokenstore.open(tmp_path)


@pytest.mark.parametrize("suffix", ["-wal", "-shm", "-journal"])
def test_no_store_is_made_at_the_name_of_another_databases_log(tmp_path: Path, suffix: str) -> None:
    """`tokenstore init --db app.sqlite3-journal` made a file app.sqlite3 then took for its
    own journal: app.sqlite3 could no longer be read."""
    tokenstore.open(tmp_path / "app.sqlite3").close()
    with pytest.raises(StoreError, match=f"app.sqlite3{suffix} is the {suffix} file of"):
        tokenstore.open(tmp_path / f"app.sqlite3{suffix}")
    assert not (tmp_path / f"app.sqlite3{suffix}").exists()
    with tokenstore.open(tmp_path / "app.sqlite3") as store:
        assert [user.username for user in store.users.list()] == ["system"]


OPEN_AND_SAY = """
import sys, tokenstore
try:
    tokenstore.open(sys.argv[1])
except tokenstore.StoreError as exc:
    print(exc)
"""


@pytest.mark.skipif(os.geteuid() == 0 and not shutil.which("setpriv"), reason="needs setpriv")
def test_a_file_this_user_cannot_read_is_a_store_error() -> None:
    """Its header was read unguarded: a PermissionError, not a StoreError, and a raw message."""
    with tempfile.TemporaryDirectory() as name:  # pytest's folders are closed to other users
        folder = Path(name)
        folder.chmod(0o755)  # the user below reaches the file, and cannot read it
        tokenstore.open(folder / "store.sqlite3").close()
        (folder / "store.sqlite3").chmod(0)
        # root reads any file: the child runs as nobody, as tests/_pg_server.py runs postgres
        as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        done = subprocess.run(
            [*(as_user if os.geteuid() == 0 else []), sys.executable, "-c", OPEN_AND_SAY,
             str(folder / "store.sqlite3")],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        assert done.stdout == f"cannot open {folder / 'store.sqlite3'}: Permission denied\n", done


def test_a_link_to_a_missing_file_is_refused_naming_it(tmp_path: Path) -> None:
    link = tmp_path / "store.sqlite3"
    link.symlink_to(tmp_path / "gone" / "store.sqlite3")
    with pytest.raises(StoreError, match="symbolic link to a missing file") as error:
        tokenstore.open(link)
    assert str(link) in str(error.value)
    assert link.is_symlink() and not link.exists()


# -- damage ---------------------------------------------------------------------------------


def test_a_truncated_file_is_refused_naming_it_and_integrity_check(db_path: Path) -> None:
    make_store(db_path)
    with db_path.open("r+b") as f:
        f.truncate(4096)  # the first page survives, the tables' pages are gone
    before = db_path.read_bytes()
    with pytest.raises(StoreCorrupt, match="is corrupt") as info:
        tokenstore.open(db_path)
    assert str(db_path) in str(info.value)
    assert "PRAGMA integrity_check" in str(info.value)
    assert db_path.read_bytes() == before


def test_a_garbled_file_is_refused(db_path: Path) -> None:
    make_store(db_path)
    with db_path.open("r+b") as f:
        f.seek(100)  # after the 100-byte header: the schema page
        f.write(bytes(range(256)) * 12)
    with pytest.raises(StoreError, match=r"is corrupt.*PRAGMA integrity_check"):
        tokenstore.open(db_path)


def test_our_version_without_our_tables_is_refused(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE unrelated (x)")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.close()
    with pytest.raises(StoreCorrupt) as info:
        tokenstore.open(db_path)
    message = str(info.value)
    assert f"has schema version {SCHEMA_VERSION} but lacks" in message
    assert "tokenstore_api_token" in message and "tokenstore_user" in message
    assert "PRAGMA integrity_check" in message and str(db_path) in message


@pytest.mark.parametrize("reset", [True, False])
def test_tables_named_like_ours_without_our_version_are_refused_untouched(
    db_path: Path, reset: bool
) -> None:
    if reset:  # a store whose PRAGMA user_version was set back to 0
        make_store(db_path)
    conn = sqlite3.connect(db_path)
    if not reset:  # another program's file that happens to use one of our names
        conn.execute("CREATE TABLE tokenstore_user (x)")
    conn.execute("PRAGMA user_version = 0")
    conn.commit()
    conn.close()
    before = db_path.read_bytes()
    with pytest.raises(StoreError, match=r"tables named like tokenstore's \(.*tokenstore_user"):
        tokenstore.open(db_path)
    assert db_path.read_bytes() == before


def test_a_version_set_back_by_hand_is_refused_saying_the_tables_do_not_match(
    db_path: Path,
) -> None:
    """A file of this version stamped 1: migrating it fails on what is there already."""
    make_store(db_path)
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    with pytest.raises(StoreError) as info:
        tokenstore.open(db_path)
    message = str(info.value)
    assert message.startswith(f"{db_path} has schema version 1, but its tables are not")
    assert "duplicate column name" in message and "changed outside tokenstore" in message
    conn = sqlite3.connect(db_path)
    try:  # nothing half-done: the version and the tables are as they were
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)
        columns = [row[1] for row in conn.execute("PRAGMA table_info(tokenstore_listener)")]
        assert columns.count("seen") == 1
    finally:
        conn.close()


@pytest.mark.parametrize("version", [-1, -(2**31)])
def test_a_negative_schema_version_is_refused(db_path: Path, version: int) -> None:
    make_store(db_path)
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.close()
    with pytest.raises(StoreError, match=f"has schema version {version}, which no tokenstore"):
        tokenstore.open(db_path)


def _loose_file(path: Path, kind: str) -> None:
    """A file open to others that opening refuses (a StoreError)."""
    if kind == "newer":
        make_store(path)
        conn = sqlite3.connect(path)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.close()
    elif kind == "truncated":
        make_store(path)
        with path.open("r+b") as f:
            f.truncate(4096)
    else:  # an empty file, which only a writer may set up
        path.touch()
    os.chmod(path, 0o644)


@pytest.mark.parametrize("kind", ["newer", "truncated", "empty"])
def test_a_refused_file_keeps_its_mode_and_no_warning_is_logged(
    db_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """Only a file that opens is made private: a refusal changes nothing and says one thing."""
    _loose_file(db_path, kind)
    with caplog.at_level(logging.WARNING, logger="tokenstore"), pytest.raises(StoreError):
        tokenstore.open(db_path, read_only=True)
    assert mode(db_path) == 0o644
    assert not [r for r in caplog.records if "tightened" in r.getMessage()]


def test_the_command_refuses_a_loose_file_in_one_line(db_path: Path) -> None:
    _loose_file(db_path, "empty")
    done = subprocess.run(
        [sys.executable, "-m", "tokenstore", "--db", str(db_path), "users", "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "holds no tokenstore" in done.stderr


@pytest.mark.parametrize(
    ("table", "column", "listed"),
    [
        ("tokenstore_api_token", "scopes", lambda s: s.tokens.list()),
        ("tokenstore_outbound_webhook", "headers", lambda s: s.webhooks.list()),
    ],
)
def test_a_json_column_edited_into_nonsense_is_named_not_shown(
    db_path: Path, table: str, column: str, listed: Any
) -> None:
    with tokenstore.open(db_path, webhook_allow=["127.0.0.1/32"]) as store:
        store.tokens.create(store.users.create("alice"))
        store.webhooks.create("h", "tokenstore.User", "http://127.0.0.1:9/")
    conn = sqlite3.connect(db_path)
    conn.execute(f"UPDATE {table} SET {column} = 'SEKRIT, not JSON'")
    conn.commit()
    conn.close()
    expected = f"{table} row .*: column {column} holds text, not a JSON"
    store = tokenstore.open(db_path, read_only=True)
    try:
        with pytest.raises(ValidationError, match=expected) as info:
            listed(store)
    finally:
        store.close()
    assert "SEKRIT" not in str(info.value)


def test_a_uuid_column_edited_into_nonsense_is_a_tokenstore_error(db_path: Path) -> None:
    with tokenstore.open(db_path) as store:
        store.tokens.create(store.users.create("alice"))
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE tokenstore_api_token SET id = 'not a uuid'")
    conn.commit()
    conn.close()
    store = tokenstore.open(db_path, read_only=True)
    try:
        with pytest.raises(tokenstore.TokenstoreError):
            store.tokens.list()
    finally:
        store.close()


def test_a_hook_whose_headers_were_edited_into_a_list_sends_nothing(db_path: Path) -> None:
    with tokenstore.open(db_path, webhook_allow=["127.0.0.1/32"]) as store:
        store.webhooks.create("h", "tokenstore.User", "http://127.0.0.1:9/")
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE tokenstore_outbound_webhook SET headers = '[1, 2]'")
    conn.commit()
    conn.close()
    with tokenstore.open(db_path, connect_timeout=0.5) as store:
        with pytest.raises(DamagedRow, match="column headers holds text, not a JSON object"):
            store.webhooks.ping("h")
        assert store.webhooks.deliveries() == []


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc/self/fd")
def test_a_store_refused_once_open_is_closed(db_path: Path) -> None:
    make_store(db_path)
    conn = sqlite3.connect(db_path)
    conn.execute("DELETE FROM tokenstore_user")
    conn.commit()
    conn.close()

    def open_files() -> list[str]:
        links = (os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd"))
        return [link for link in links if link.startswith(str(db_path.resolve()))]

    for _ in range(3):
        with pytest.raises(StoreError, match="the 'system' user is missing"):
            tokenstore.open(db_path)
    assert open_files() == []


# -- missing files and odd paths ------------------------------------------------------------


@pytest.mark.parametrize("options", [{"create": False}, {"read_only": True}])
def test_a_missing_file_is_not_created_when_asked_not_to(
    tmp_path: Path, options: dict[str, bool]
) -> None:
    path = tmp_path / "typo.sqlite3"
    with pytest.raises(StoreError, match=r"no store at .*typo.sqlite3 \(run `tokenstore init`\)"):
        tokenstore.open(path, **options)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("options", [{"create": False}, {"read_only": True}])
def test_an_sqlite_file_of_another_program_is_not_set_up_when_asked_not_to(
    tmp_path: Path, options: dict[str, bool]
) -> None:
    """As on PostgreSQL: without create, a file holding no tokenstore is refused, unchanged."""
    path = tmp_path / "other.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.commit()
    conn.close()
    path.chmod(0o600)
    before = path.read_bytes()
    with pytest.raises(StoreError, match=r"other\.sqlite3 holds no tokenstore.*tokenstore init"):
        tokenstore.open(path, **options)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.sqlite3"]


def test_create_false_opens_an_existing_store(db_path: Path) -> None:
    make_store(db_path)
    with tokenstore.open(db_path, create=False) as store:
        assert store.users.get("alice").username == "alice"


@pytest.mark.parametrize("name", ["a\x00b", "a\ud800b"])
def test_paths_the_os_cannot_take_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValidationError, match="the store path"):
        tokenstore.open(str(tmp_path / name))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("uri", ["file:store.sqlite3", "file:store.sqlite3?mode=ro", "FILE:///x"])
def test_an_sqlite_uri_is_refused_not_made_a_file_named_like_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uri: str
) -> None:
    """'file:store.sqlite3?mode=ro' was a new store in a file of that very name."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError, match=r"is an SQLite URI \(file:\.\.\.\), not a file path"):
        tokenstore.open(uri)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["app.sqlite3\r", "app.sqlite3\n", "\napp.sqlite3"])
def test_a_path_with_a_line_end_at_either_end_is_refused_saying_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """$TOKENSTORE_DB read from a file written on Windows ends with '\r': 'no store at
    app.sqlite3' (the '\r' unseen) for a file that was there, and `init` made a second one."""
    monkeypatch.chdir(tmp_path)
    make_store(tmp_path / "app.sqlite3")
    with pytest.raises(ValidationError, match="the store path begins or ends with a line end"):
        tokenstore.open(name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.sqlite3"]


def test_a_store_in_a_missing_folder_says_the_folder_is_missing(tmp_path: Path) -> None:
    """'cannot create .../typo/app.sqlite3: No such file or directory' did not say which."""
    path = tmp_path / "typo" / "app.sqlite3"
    with pytest.raises(StoreError, match=f"^cannot create {path}: its folder {path.parent} does"):
        tokenstore.open(path)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_path_that_begins_with_a_tilde_says_it_was_not_expanded(
    tmp_path: Path, home: Path
) -> None:
    """`--db '~/app.sqlite3'` (quoted, or from a config file) was 'no store at
    ~/app.sqlite3', and the user looked in their home folder, where the file is."""
    make_store(home / "app.sqlite3")
    hint = "'~' is not expanded here, as a shell expands it only unquoted at the start of a word"
    for path, create, said in [
        ("~/app.sqlite3", False, f"no store at ~/app.sqlite3: {hint}; did you mean {home}/"),
        ("~/new/app.sqlite3", True, "cannot create ~/new/app.sqlite3: its folder ~/new does "),
        ("~nobody-here/app.sqlite3", True, f"not exist; {hint}"),
    ]:
        with pytest.raises(StoreError) as caught:
            tokenstore.open(path, create=create)
        assert said in str(caught.value)
        assert hint in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_a_path_with_unusual_characters_works(tmp_path: Path) -> None:
    """Files are opened by URI: ?, # and % in a name must not be read as URI syntax."""
    path = tmp_path / "odd ?name#%20.sqlite3"
    make_store(path)
    with tokenstore.open(path) as store:
        assert store.users.get("alice").username == "alice"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


# -- read-only ------------------------------------------------------------------------------


def assert_reads_work_and_writes_are_refused(store: Store) -> None:
    alice = store.users.get("alice")
    assert [t.name for t in store.tokens.list(alice)] == ["ci"]
    for write in (
        lambda: store.users.create("bob"),
        lambda: store.tokens.create(alice, name="more"),
        lambda: store.tokens.revoke(store.tokens.list(alice)[0]),
        lambda: store.webhooks.create("h", "tokenstore.User", "http://127.0.0.1:9/"),
        lambda: store.dispatch(),
    ):
        with pytest.raises(StoreReadOnly, match="is open read-only"):
            write()
    assert [t.name for t in store.tokens.list(alice)] == ["ci"]


def test_read_only_true_reads_and_never_writes(db_path: Path) -> None:
    with tokenstore.open(db_path) as store:
        alice = store.users.create("alice")
        _, secret = store.tokens.create(alice, name="ci")
    before = db_path.read_bytes()
    store = tokenstore.open(db_path, read_only=True)
    try:
        assert store.db.read_only
        token = store.tokens.authenticate(secret)
        assert token.last_used_at is None  # use is not recorded
        assert_reads_work_and_writes_are_refused(store)
        conn = sqlite3.connect(db_path)
        try:  # no listener registration, no last_used write
            assert conn.execute("SELECT count(*) FROM tokenstore_listener").fetchone() == (0,)
            assert conn.execute("SELECT last_used_at FROM tokenstore_api_token").fetchone() == (
                None,
            )
        finally:
            conn.close()
    finally:
        store.close()
    assert db_path.read_bytes() == before


class Page(ABIDModel):
    abid_prefix = "pag_"
    title = peewee.TextField(default="")


def test_a_read_only_store_registers_models_for_reading(db_path: Path) -> None:
    with tokenstore.open(db_path) as store:
        store.register(Page)
        Page.create(title="kept")
    before = db_path.read_bytes()
    with tokenstore.open(db_path, read_only=True) as store:
        store.register(Page)
        assert [p.title for p in Page.select()] == ["kept"]
        with pytest.raises(StoreReadOnly, match="is open read-only"):
            Page.create(title="refused")
        with pytest.raises(StoreReadOnly, match="is open read-only"):
            Page.update(title="changed").execute()
    assert db_path.read_bytes() == before


def test_an_immutable_file_opens_read_only(db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_store(db_path)
    before = db_path.read_bytes()
    with immutable(db_path):
        assert not os.access(db_path, os.W_OK)
        with caplog.at_level(logging.WARNING, logger="tokenstore"):
            store = tokenstore.open(db_path)
        try:
            assert store.db.read_only
            assert_reads_work_and_writes_are_refused(store)
        finally:
            store.close()
    assert db_path.read_bytes() == before
    assert any("opening it read-only" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("where", ["file", "folder"])
def test_the_command_reads_an_unwritable_store_and_refuses_writes_in_one_line(
    tmp_path: Path, where: str
) -> None:
    path = tmp_path / "ro" / "store.sqlite3"
    path.parent.mkdir()
    make_store(path)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tokenstore", "--db", str(path), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    with immutable(path if where == "file" else path.parent):
        listed = run("users", "list")
        assert listed.returncode == 0 and "alice" in listed.stdout
        assert listed.stderr == ""
        for write in (["users", "add", "bob"], ["webhooks", "allow", "10.0.0.0/8"], ["dispatch"]):
            done = run(*write)
            assert done.returncode == 2, (write, done.stderr)
            assert done.stderr.count("\n") == 1, (write, done.stderr)
            assert done.stderr.startswith(f"tokenstore: error: {path} ")
            assert "read-only" in done.stderr
    with tokenstore.open(path) as store:
        assert [u.username for u in store.users.list()] == ["system", "alice"]


def test_the_admin_page_serves_a_store_it_cannot_write_whatever_allow_says(
    db_path: Path,
) -> None:
    """``serve`` browses a file it may not write; an --allow it cannot add is no reason
    to refuse, as no delivery is sent from it either."""
    make_store(db_path)
    command = [sys.executable, "-m", "tokenstore", "--db", str(db_path), "--allow", "127.0.0.1"]
    with immutable(db_path):
        serving = subprocess.Popen(
            [*command, "serve", "--port", "0"], stderr=subprocess.PIPE, text=True
        )
        lines = []
        try:
            assert serving.stderr is not None
            for _ in range(2):  # the warning, then the page's address (or the error)
                if select.select([serving.stderr], [], [], 20)[0]:
                    lines.append(serving.stderr.readline())
        finally:
            serving.terminate()
            serving.wait(timeout=10)
    assert len(lines) == 2 and "opening it read-only" in lines[0], lines
    assert "admin page on http://127.0.0.1:" in lines[1], lines


def test_a_store_in_an_immutable_folder_opens_read_only(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "store.sqlite3"
    make_store(path)
    assert [p.name for p in folder.iterdir()] == [path.name]  # no -wal, no -shm left
    with immutable(folder):
        with tokenstore.open(path) as store:
            assert store.db.read_only
            assert_reads_work_and_writes_are_refused(store)
        assert [p.name for p in folder.iterdir()] == [path.name]


def test_an_unset_file_cannot_be_opened_read_only(db_path: Path) -> None:
    db_path.touch(mode=0o600)
    with pytest.raises(StoreError, match="holds no tokenstore"):
        tokenstore.open(db_path, read_only=True)
    assert db_path.read_bytes() == b""


def test_an_unset_file_nobody_may_write_is_refused_without_a_warning_first(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The command shows one line for a refusal: no "opening it read-only" before it."""
    db_path.touch(mode=0o600)
    refused = pytest.raises(StoreReadOnly, match="has schema version 0")
    with immutable(db_path), caplog.at_level(logging.WARNING, logger="tokenstore"), refused:
        tokenstore.open(db_path)
    assert [r.getMessage() for r in caplog.records] == []


# -- secrets at rest ------------------------------------------------------------------------


def file_bytes(path: Path) -> bytes:
    return b"".join(f.read_bytes() for f in with_companions(path) if f.exists())


def test_a_rotated_out_secret_is_gone_from_the_bytes_after_its_grace(
    db_path: Path, clock: Clock
) -> None:
    store = tokenstore.open(db_path, clock=clock)
    hook = store.webhooks.create("h", "tokenstore.User", "https://example.com/hook")
    old = hook.secret
    store.webhooks.rotate_secret(hook, grace=timedelta(hours=1))
    store.close()
    assert old.encode() in file_bytes(db_path)  # still signing: kept
    clock.advance(hours=2)
    store = tokenstore.open(db_path, clock=clock)
    new = OutboundWebhook.get().secret
    store.close()
    data = file_bytes(db_path)
    assert old.encode() not in data
    assert new.encode() in data


def test_a_deleted_hooks_secrets_are_gone_from_the_bytes(db_path: Path) -> None:
    """Another process keeps the file open, so closing is not the last close that would
    clear the WAL by itself: the store's own checkpoint has to."""
    store = tokenstore.open(db_path)
    other = sqlite3.connect(db_path)
    other.execute("SELECT count(*) FROM tokenstore_user").fetchone()
    hook = store.webhooks.create(
        "h",
        "tokenstore.User",
        "https://example.com/hook",
        auth_token="Bearer auth-token-3f9a1c",
        headers={"X-Api-Key": "header-key-77b2e0"},
    )
    secrets = [hook.secret, "auth-token-3f9a1c", "header-key-77b2e0"]
    assert all(s.encode() in file_bytes(db_path) for s in secrets)
    store.webhooks.delete(hook)
    store.close()
    try:
        data = file_bytes(db_path)
        assert [s for s in secrets if s.encode() in data] == []
    finally:
        other.close()
