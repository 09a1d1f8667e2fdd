"""Storage faults reach the caller as StoreError subclasses, and leave nothing half-done.

The faults are real: a small tmpfs mounted by the test and filled up (needs
root, or CAP_SYS_ADMIN; where mounting is refused those tests skip and the
file-size-limit tests, which run everywhere, stand in for them), a file-size
limit in a child process (RLIMIT_FSIZE), a lock held by another connection
past the busy timeout, ``PRAGMA query_only`` and a damaged page. After each
one: the exception's type and message, ``PRAGMA integrity_check``, no event
or delivery left behind by the failed write, no signal or request for it,
and the same Store object working again once the fault is gone.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import peewee
import pytest
from _storage_child import Entry, store_files

import tokenstore
from tokenstore import (
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreIOError,
    StoreLocked,
    StoreReadOnly,
    TokenstoreError,
    signals,
)

CHILD = str(Path(__file__).with_name("_storage_child.py"))
COMMAND = [sys.executable, "-m", "tokenstore"]


# -- the parts ----------------------------------------------------------------------------


@dataclass
class Disk:
    """A mounted tmpfs that the test fills to the last block and frees again."""

    root: Path

    @property
    def filler(self) -> Path:
        return self.root / "filler"

    def fill(self) -> None:
        with self.filler.open("ab", buffering=0) as f:
            for _ in range(100_000):  # far more blocks than the disk has
                try:
                    f.write(b"\0" * 4096)
                except OSError as exc:
                    assert exc.errno == 28, exc  # ENOSPC: full
                    return
        raise AssertionError(f"{self.root} never filled up")

    def free(self) -> None:
        self.filler.unlink()


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    root = tmp_path / "disk"
    root.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(root)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        refused = mounted.stderr.strip() if mounted.returncode != 0 else ""
    except FileNotFoundError:
        refused = "no mount command"
    if refused:
        pytest.skip(
            f"cannot mount a tmpfs here ({refused}); "
            "the file-size-limit tests cover a write that finds no room"
        )
    try:
        yield Disk(root)
    finally:
        if subprocess.run(["umount", str(root)], timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(root)], timeout=30, check=True)


class Counter(BaseHTTPRequestHandler):
    """Counts the webhook requests it answers."""

    count = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).count += 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Receiver:
    url: str
    handler: type[Counter]

    @property
    def count(self) -> int:
        return self.handler.count


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    handler = type("Handler", (Counter,), {"count": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Receiver(f"http://127.0.0.1:{server.server_address[1]}/hook", handler)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def saved() -> Iterator[list[str]]:
    """The keys of the entries whose post_save signal fired."""
    keys: list[str] = []

    def on_save(sender: Any, instance: Entry, **extra: Any) -> None:
        keys.append(instance.key)

    signals.post_save.connect(on_save, sender=Entry, weak=False)
    try:
        yield keys
    finally:
        signals.post_save.disconnect(on_save)  # from every sender: blinker forgets it


@dataclass
class World:
    """A store with an application model, a hook on it and a user, and what it sent."""

    store: tokenstore.Store
    path: Path
    receiver: Receiver
    saved: list[str]
    alice: tokenstore.User

    def state(self) -> dict[str, Any]:
        """What the file holds, read through a connection of its own."""
        conn = sqlite3.connect(self.path)
        try:

            def rows(sql: str) -> list[Any]:
                return conn.execute(sql).fetchall()

            return {
                "integrity": rows("PRAGMA integrity_check"),
                "entries": [k for (k,) in rows("SELECT key FROM test_storage_entry ORDER BY key")],
                "body_chars": rows("SELECT total(length(body)) FROM test_storage_entry")[0][0],
                "users": [u for (u,) in rows("SELECT username FROM tokenstore_user ORDER BY id")],
                "tokens": rows("SELECT count(*) FROM tokenstore_api_token")[0][0],
                "hooks": rows("SELECT count(*) FROM tokenstore_outbound_webhook")[0][0],
                "events": rows("SELECT count(*) FROM tokenstore_change_event")[0][0],
                "deliveries": rows("SELECT count(*) FROM tokenstore_webhook_delivery")[0][0],
            }
        finally:
            conn.close()


def make_world(path: Path, receiver: Receiver, saved: list[str], **options: Any) -> World:
    store = tokenstore.open(path, webhook_allow=["127.0.0.1/32"], **options)
    store.register(Entry)
    store.webhooks.create("entries", Entry, receiver.url)
    alice = store.users.create("alice")
    Entry.create(key="before")
    assert saved == ["before"] and receiver.count == 1
    return World(store, path, receiver, saved, alice)


@pytest.fixture
def on_disk(disk: Disk, receiver: Receiver, saved: list[str]) -> Iterator[World]:
    world = make_world(disk.root / "store.sqlite3", receiver, saved)
    try:
        yield world
    finally:
        world.store.close()


def expect_fault(kind: type[StoreError], write: Callable[[], object], *words: str) -> str:
    """Run a write that must fail with ``kind``; return its message, checked for ``words``."""
    with pytest.raises(kind) as caught:
        write()
    message = str(caught.value)
    assert isinstance(caught.value, TokenstoreError)
    assert isinstance(caught.value, peewee.OperationalError)  # what plain peewee code catches
    for word in words:
        assert word in message, (word, message)
    assert "rollback" not in message.lower(), message
    return message


def one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tokenstore: error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def cli(db: Path, *args: str, **run: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, "--db", str(db), *args], capture_output=True, text=True, timeout=60, **run
    )


# -- a full disk ----------------------------------------------------------------------------


def test_every_kind_of_write_on_a_full_disk_raises_store_full_and_leaves_nothing(
    on_disk: World, disk: Disk
) -> None:
    world, store = on_disk, on_disk.store
    token, secret = store.tokens.create(world.alice, name="old")
    before = world.state()
    disk.fill()

    def in_one_transaction() -> None:
        with store.atomic():
            Entry.create(key="a1", body="a" * 5000)
            Entry.create(key="a2", body="b" * 5000)

    writes: list[Callable[[], object]] = [
        lambda: Entry.create(key="big", body="x" * 20000),
        lambda: Entry.update(body="y" * 20000).where(Entry.key == "before").execute(),
        lambda: store.users.create("bob"),
        lambda: store.tokens.create(world.alice, name="ci"),
        lambda: store.webhooks.create("more", Entry, world.receiver.url + "/more"),
        in_one_transaction,
    ]
    for write in writes:
        message = expect_fault(StoreFull, write, str(world.path), "the disk is full", "SQLITE_FULL")
        assert message.endswith("during COMMIT)"), message
        assert not store.db.connection().in_transaction
        assert world.state() == before
    assert world.saved == ["before"] and world.receiver.count == 1

    # Reads keep working: the rows, and authentication (its last-used stamp cannot be written).
    assert [e.key for e in Entry.select()] == ["before"]
    assert store.tokens.authenticate(secret).abid == token.abid

    disk.free()
    Entry.create(key="after", body="x" * 20000)
    store.users.create("bob")
    after = world.state()
    assert after["integrity"] == [("ok",)]
    assert after["entries"] == ["after", "before"]
    assert after["users"] == ["system", "alice", "bob"]
    assert after["deliveries"] == before["deliveries"] + 1 and after["events"] == 0
    assert world.saved == ["before", "after"] and world.receiver.count == 2


def test_a_statement_that_finds_no_room_ends_the_transaction_and_says_so(
    on_disk: World, disk: Disk
) -> None:
    """A transaction bigger than the page cache writes pages before COMMIT, and fails there.

    SQLite then rolls back the whole transaction: nested ``atomic()`` blocks
    report the fault itself (not "no such savepoint"), and code that swallows
    it and carries on gets a StoreError at commit instead of a half-saved mix.
    """
    world, store = on_disk, on_disk.store
    store.db.execute_sql("PRAGMA cache_size = 5")  # pages spill to the WAL mid-transaction
    before = world.state()
    disk.fill()

    def nested() -> None:
        with store.atomic(), store.atomic():
            for n in range(50):
                Entry.create(key=f"n{n}", body=os.urandom(3000).hex())

    expect_fault(StoreFull, nested, str(world.path), "the disk is full (SQLITE_FULL during INSERT)")
    assert not store.db.connection().in_transaction and not store.db.in_transaction()

    def carries_on() -> None:
        with store.atomic():
            try:
                for n in range(50):
                    Entry.create(key=f"c{n}", body=os.urandom(3000).hex())
            except StoreFull:
                pass
            disk.free()
            Entry.create(key="orphan")  # no transaction left: must not commit on its own

    with pytest.raises(StoreError, match="already rolled back by SQLite") as caught:
        carries_on()
    assert not isinstance(caught.value, StoreFull)
    state = world.state()
    assert state == {**before, "integrity": [("ok",)]}
    assert world.saved == ["before"] and world.receiver.count == 1

    Entry.create(key="after")
    assert world.state()["entries"] == ["after", "before"]
    assert world.saved == ["before", "after"]


def test_a_checkpoint_on_a_full_disk_raises_store_full(on_disk: World, disk: Disk) -> None:
    world, store = on_disk, on_disk.store
    for n in range(5):  # pages in the WAL that the main file has no room for yet
        Entry.create(key=f"e{n}", body="x" * 3000)
    disk.fill()
    expect_fault(
        StoreFull,
        lambda: store.db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)"),
        str(world.path),
        "SQLITE_FULL during PRAGMA wal_checkpoint",
    )
    assert world.state()["integrity"] == [("ok",)]
    disk.free()
    (busy, _, _) = store.db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0
    assert Path(f"{world.path}-wal").stat().st_size == 0
    assert len(world.state()["entries"]) == 6


def test_a_store_that_cannot_be_made_on_a_full_disk_leaves_no_file(disk: Disk) -> None:
    """An empty file left behind would be "a file that holds no tokenstore" to every command."""
    path = disk.root / "new.sqlite3"
    disk.fill()
    expect_fault(StoreFull, lambda: tokenstore.open(path), str(path), "the disk is full")
    one_line_error(cli(path, "init"), str(path), "the disk is full")
    assert sorted(p.name for p in disk.root.iterdir()) == ["filler"]
    one_line_error(cli(path, "users", "list"), f"no store at {path} (run `tokenstore init`)")
    disk.free()
    assert cli(path, "init").returncode == 0
    with tokenstore.open(path, create=False) as store:
        assert [u.username for u in store.users.list()] == ["system"]


def test_the_command_on_a_full_disk_exits_2_with_one_line_and_still_reads(
    on_disk: World, disk: Disk
) -> None:
    """The store stays open here, as in an application, so the WAL index already exists.

    (A WAL-mode file whose last connection closed needs room for a new
    ``-shm`` before anyone can read it; on a disk with no free block at all
    that first open fails, as StoreIOError.)
    """
    world = on_disk
    disk.fill()
    one_line_error(cli(world.path, "users", "add", "bob"), str(world.path), "the disk is full")
    one_line_error(cli(world.path, "tokens", "create", "alice"), "the disk is full")
    listed = cli(world.path, "--json", "users", "list")
    assert listed.returncode == 0, listed.stderr
    assert [u["username"] for u in json.loads(listed.stdout)] == ["system", "alice"]
    assert world.state()["users"] == ["system", "alice"]
    disk.free()
    assert cli(world.path, "users", "add", "bob").returncode == 0
    world.store.users.create("carol")
    assert world.state()["users"] == ["system", "alice", "bob", "carol"]


def test_dispatch_watch_outlives_a_full_disk(on_disk: World, disk: Disk) -> None:
    """The retry path of a deployment: a full disk is retried after freeing space, not fatal.

    The watcher fires a change and sends it; the disk fills up while the
    receiver answers, so recording the outcome meets the full disk.
    """
    world = on_disk
    world.store.webhooks.create("users", "tokenstore.User", world.receiver.url + "/users")
    arrived, answer = threading.Event(), threading.Event()
    plain = world.receiver.handler.do_POST

    def held(handler: Counter) -> None:
        arrived.set()
        answer.wait(30)
        plain(handler)

    def change(superuser: int) -> None:  # a change no tokenstore process has seen
        conn = sqlite3.connect(world.path)
        with conn:
            conn.execute("UPDATE tokenstore_user SET is_superuser = ? WHERE id = 2", (superuser,))
        conn.close()

    world.receiver.handler.do_POST = held  # type: ignore[method-assign]
    watcher = subprocess.Popen(
        [*COMMAND, "--db", str(world.path), "dispatch", "--watch", "--interval", "1s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        change(1)
        assert arrived.wait(30)
        disk.fill()
        answer.set()
        time.sleep(3)  # the outcome meets the full disk; the watcher says so and waits
        assert watcher.poll() is None, watcher.communicate(timeout=10)
        disk.free()
        world.receiver.handler.do_POST = plain  # type: ignore[method-assign]
        change(0)
        deadline = time.monotonic() + 30
        while world.receiver.count < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert world.receiver.count >= 3  # the watcher carried on once there was room
    finally:
        answer.set()
        watcher.send_signal(signal.SIGINT)
        _, stderr = watcher.communicate(timeout=60)
    assert "the disk is full (SQLITE_FULL during COMMIT)" in stderr, stderr
    assert "Traceback" not in stderr, stderr
    assert world.state()["integrity"] == [("ok",)]


# -- a file-size limit ----------------------------------------------------------------------


def test_a_file_size_limit_fails_writes_with_store_io_error_in_a_child_process(
    tmp_path: Path, receiver: Receiver
) -> None:
    path, out = tmp_path / "store.sqlite3", tmp_path / "report.json"
    subprocess.run(
        [sys.executable, CHILD, str(path), str(out), receiver.url], check=True, timeout=120
    )
    report = json.loads(out.read_text(encoding="utf-8"))
    for name, fault in report["faults"].items():
        assert fault["type"] == StoreIOError.__name__, (name, fault)
        assert fault["tokenstore_error"], name
        message = fault["message"]
        assert message.startswith(f"{path}: I/O error (SQLITE_IOERR_WRITE during "), message
    assert report["in_transaction"] is False
    assert report["readable"] == ["before"]
    assert report["saved"] == ["before", "after"]
    assert receiver.count == 2
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        entries = conn.execute("SELECT key FROM test_storage_entry ORDER BY key").fetchall()
        assert entries == [("after",), ("before",)]
        users = conn.execute("SELECT username FROM tokenstore_user ORDER BY id").fetchall()
        assert users == [("system",), ("alice",), ("bob",)]
        assert conn.execute("SELECT count(*) FROM tokenstore_api_token").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM tokenstore_change_event").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM tokenstore_webhook_delivery").fetchone() == (2,)
    finally:
        conn.close()


def test_the_command_under_a_file_size_limit_exits_2_with_one_line(
    tmp_path: Path, receiver: Receiver, saved: list[str]
) -> None:
    world = make_world(tmp_path / "store.sqlite3", receiver, saved)
    try:
        limit = max(p.stat().st_size for p in store_files(world.path))

        def limited() -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

        result = cli(world.path, "users", "add", "bob", preexec_fn=limited)
        one_line_error(result, str(world.path), "I/O error (SQLITE_IOERR_WRITE during COMMIT)")
        assert "Traceback" not in result.stderr
        listed = cli(world.path, "users", "list", preexec_fn=limited)
        assert listed.returncode == 0 and "alice" in listed.stdout, listed.stderr
        assert world.state()["users"] == ["system", "alice"]
        assert cli(world.path, "users", "add", "bob").returncode == 0
        assert world.state()["users"] == ["system", "alice", "bob"]
    finally:
        world.store.close()


# -- a lock, a read-only connection, a damaged page -----------------------------------------


def test_a_lock_held_past_the_busy_timeout_raises_store_locked(
    tmp_path: Path, receiver: Receiver, saved: list[str]
) -> None:
    world = make_world(tmp_path / "store.sqlite3", receiver, saved, busy_timeout=5)
    store = world.store
    before = world.state()
    other = sqlite3.connect(world.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        expect_fault(
            StoreLocked,
            lambda: Entry.create(key="late"),
            str(world.path),
            "the database stayed locked for 5 s (SQLITE_BUSY during BEGIN)",
        )
        waited = time.monotonic() - started
        assert 4.5 <= waited < 30, waited
        assert not store.db.connection().in_transaction
        assert store.db.connection().execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    finally:
        other.execute("ROLLBACK")
        other.close()
    try:
        assert world.state() == before
        Entry.create(key="late")
        assert world.state()["entries"] == ["before", "late"]
        assert world.saved == ["before", "late"] and world.receiver.count == 2
    finally:
        store.close()


def test_opening_a_file_another_program_holds_locked_raises_store_locked(
    tmp_path: Path,
) -> None:
    """Opening reads the file first (its version, its tables); a lock held all the while
    is the same fault as at a write: StoreLocked after busy_timeout (not Python's own 5 s),
    not an I/O error."""
    busy_timeout = 6
    path = tmp_path / "store.sqlite3"
    tokenstore.open(path).close()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("PRAGMA journal_mode=DELETE")  # as another program may leave it
        other.execute("BEGIN EXCLUSIVE")  # readers too are kept out
        started = time.monotonic()
        with pytest.raises(StoreLocked) as raised:
            tokenstore.open(path, busy_timeout=busy_timeout)
        waited = time.monotonic() - started
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert str(raised.value) == (
        f"{path}: the database stayed locked for {busy_timeout} s (SQLITE_BUSY during open)"
    )
    assert busy_timeout - 0.5 <= waited < busy_timeout + 5, waited


def test_a_read_only_connection_raises_store_read_only(
    tmp_path: Path, receiver: Receiver, saved: list[str]
) -> None:
    world = make_world(tmp_path / "store.sqlite3", receiver, saved)
    store = world.store
    try:
        before = world.state()
        store.db.execute_sql("PRAGMA query_only = 1")
        expect_fault(
            StoreReadOnly,
            lambda: store.users.create("bob"),
            str(world.path),
            "the store is read-only (SQLITE_READONLY during ",
        )
        assert world.state() == before
        store.db.execute_sql("PRAGMA query_only = 0")
        store.users.create("bob")
        assert world.state()["users"] == ["system", "alice", "bob"]
    finally:
        store.close()


def damage_table(path: Path, table: str) -> None:
    """Give a closed store's table a root page of a type that does not exist."""
    conn = sqlite3.connect(path)
    try:
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)
        ).fetchone()
    finally:
        conn.close()
    with path.open("r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xff")


def test_a_damaged_page_raises_store_corrupt(
    tmp_path: Path, receiver: Receiver, saved: list[str]
) -> None:
    path = tmp_path / "store.sqlite3"
    world = make_world(path, receiver, saved)
    for n in range(50):
        Entry.create(key=f"e{n}", body="x" * 200)
    world.store.close()
    damage_table(path, "test_storage_entry")
    store = tokenstore.open(path)
    try:
        store.register(Entry)
        expect_fault(
            StoreCorrupt,
            lambda: list(Entry.select()),
            str(path),
            "the file is damaged (see PRAGMA integrity_check) (SQLITE_CORRUPT",
        )
        assert store.users.get("alice").username == "alice"  # the rest of the file still reads
    finally:
        store.close()


def test_a_constraint_is_the_callers_data_and_stays_an_integrity_error(
    tmp_path: Path, receiver: Receiver, saved: list[str]
) -> None:
    world = make_world(tmp_path / "store.sqlite3", receiver, saved)
    try:
        with pytest.raises(peewee.IntegrityError) as caught:
            Entry.create(key="before")
        assert not isinstance(caught.value, TokenstoreError)
        assert world.state()["entries"] == ["before"]
        Entry.create(key="next")
        assert world.saved == ["before", "next"]
    finally:
        world.store.close()


def test_a_thread_that_cannot_open_the_file_gets_store_io_error(
    tmp_path: Path, receiver: Receiver, saved: list[str]
) -> None:
    """peewee opens a connection per thread when it is first used: here the folder is gone."""
    folder = tmp_path / "gone"
    folder.mkdir()
    world = make_world(folder / "store.sqlite3", receiver, saved)
    try:
        for p in store_files(world.path):
            p.unlink()
        folder.rmdir()
        caught: list[BaseException] = []

        def read() -> None:
            try:
                world.store.users.list()
            except BaseException as exc:
                caught.append(exc)

        thread = threading.Thread(target=read)
        thread.start()
        thread.join(30)
        assert len(caught) == 1 and isinstance(caught[0], StoreIOError), caught
        assert str(caught[0]) == (
            f"{world.path}: the file cannot be opened (SQLITE_CANTOPEN during open)"
        )
    finally:
        folder.mkdir(exist_ok=True)
        world.store.close()


def test_the_command_reading_a_damaged_page_exits_2_with_one_line(
    tmp_path: Path, receiver: Receiver, saved: list[str]
) -> None:
    """Token checks read on the raw connection, past the database class: the command still
    reports the error in one line, with the file's name."""
    path = tmp_path / "store.sqlite3"
    world = make_world(path, receiver, saved)
    _, secret = world.store.tokens.create(world.alice, name="ci")
    world.store.close()
    damage_table(path, "tokenstore_api_token")
    result = cli(path, "tokens", "verify", secret)
    one_line_error(result, f"{path}: database disk image is malformed")
    assert secret not in result.stderr


# -- a file cut short, deleted or replaced while open ---------------------------------------

CUT_SHORT = """
import json, os, sys
import tokenstore

path = sys.argv[1]
store = tokenstore.open(path)
owner = store.users.create("alice")
secrets = [store.tokens.create(owner, name=f"t{n}")[1] for n in range(2000)]
store.db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")  # the rows are in the file itself now
store.tokens.authenticate(secrets[0])
os.truncate(path, 4096)  # another program cuts the file down to its first page
seen = []
for call in (
    lambda: store.tokens.authenticate(secrets[1]).name,
    lambda: store.tokens.authenticate(secrets[1999]).name,
    lambda: len(store.tokens.list(owner)),
):
    try:
        seen.append(call())
    except tokenstore.TokenstoreError as exc:
        seen.append(type(exc).__name__)
print(json.dumps(seen))
"""


def test_a_file_cut_short_under_an_open_store_does_not_end_the_process(tmp_path: Path) -> None:
    """The application embedding the store outlives what another program does to its file.

    A file read through a memory map would end it here with SIGBUS: the pages
    it had mapped are gone. Each call may answer from what is still readable or
    raise a TokenstoreError; the process goes on either way."""
    done = subprocess.run(
        [sys.executable, "-c", CUT_SHORT, str(tmp_path / "store.sqlite3")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    errors = {
        name
        for name in tokenstore.__all__
        if isinstance(kind := getattr(tokenstore, name), type)
        and issubclass(kind, tokenstore.TokenstoreError)
    }
    answers = json.loads(done.stdout)
    for answer, whole in zip(answers, ["t1", "t1999", 2000], strict=True):
        assert answer == whole or answer in errors, answers


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_write_to_a_file_deleted_or_replaced_while_open_raises_rather_than_vanishes(
    tmp_path: Path, receiver: Receiver, saved: list[str], how: str
) -> None:
    """The connection still holds the old file: what it wrote there nobody could open again.

    SQLite refuses such a write itself only with a rollback journal
    (SQLITE_READONLY_DBMOVED); in WAL mode it would succeed, and be lost."""
    path = tmp_path / "store.sqlite3"
    world = make_world(path, receiver, saved)
    try:
        if how == "deleted":
            path.unlink()
        else:  # a backup restored over it, say
            other = tmp_path / "other.sqlite3"
            sqlite3.connect(other).close()
            os.replace(other, path)
        writes = [
            lambda: Entry.create(key="after"),
            lambda: world.store.users.create("bob"),
            lambda: world.store.tokens.create(world.alice),
            lambda: world.store.db.execute_sql("DELETE FROM tokenstore_user WHERE id = -1"),
        ]
        for write in writes:
            expect_fault(StoreReadOnly, write, str(path), "deleted or replaced")
        assert saved == ["before"] and receiver.count == 1
    finally:
        world.store.close()


def test_a_store_opened_by_a_relative_path_still_writes_after_a_chdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is the one opened, not whatever the name means from the new folder."""
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    store = tokenstore.open("store.sqlite3")
    try:
        monkeypatch.chdir(tmp_path / "elsewhere")
        sqlite3.connect("store.sqlite3").close()  # the same name here is another file
        assert store.users.create("bob").username == "bob"
        done: list[str] = []
        thread = threading.Thread(target=lambda: done.append(store.users.create("eve").username))
        thread.start()
        thread.join(10)
        assert done == ["eve"]
    finally:
        store.close()
    conn = sqlite3.connect(tmp_path / "store.sqlite3")
    try:
        names = conn.execute("SELECT username FROM tokenstore_user ORDER BY id").fetchall()
    finally:
        conn.close()
    assert names == [("system",), ("bob",), ("eve",)]
