"""The PostgreSQL backend where it differs from a file: URLs, the server, its connections.

The behaviour both backends share is tested everywhere else, on both; here
is what only a server has: URLs libpq parses, connections that time out, are
refused or are ended by the server, sessions that may only read.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import _db
import peewee
import psycopg
import pytest
from _http import free_port, wait_listening
from _pg_server import AS_POSTGRES
from conftest import missing, new_database

import tokenstore
from tokenstore import (
    ABIDModel,
    Store,
    StoreCorrupt,
    StoreError,
    StoreIOError,
    StoreLocked,
    StoreReadOnly,
    ValidationError,
)
from tokenstore import _postgres as postgres
from tokenstore import _postgres_schema as postgres_schema
from tokenstore._postgres_url import redacted_url


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:SEK%ZZRIT@127.0.0.1:1/db",  # a broken %-escape in the password
        "postgresql://u:SEKRIT@[::1/db",  # an unclosed IPv6 bracket: libpq quotes the URL
        "postgresql://u:SEKRIT@127.0.0.1:1/db?bogus=1",  # a parameter libpq does not know
        "postgresql://u:SEKRIT@127.0.0.1:1/db?application_name=%ff",  # not UTF-8
        "postgresql://u:SEKRIT@127.0.0.1:1/db\x00",  # libpq would cut the name at the NUL
        "postgresql://u:SEKRIT@127.0.0.1:1/db\udc80",
        # A '/' in the password: libpq ends the user part there, URL parsers end it at '@'.
        "postgresql://u:SE/KRIT@127.0.0.1:1/db",
        "postgresql://u:12/SEKRIT@127.0.0.1:1/db",
        "postgresql://u:S@E/KRIT@127.0.0.1:1/db",
        "postgresql://u:S/E?KRIT@127.0.0.1:1/db",
        # Values libpq refuses only as it connects: still the URL's fault, not the server's.
        "postgresql://u:SEKRIT@127.0.0.1:99999/db",
        "postgresql://u:SEKRIT@127.0.0.1:1/db?sslmode=bogus",
        "postgresql://u:SEKRIT@127.0.0.1:1/db?connect_timeout=abc",
        "postgresql://u:SEKRIT@127.0.0.1:1/db?target_session_attrs=bogus",
        # Refused per host as it connects, or in words of their own: the URL's fault too.
        "postgresql://u:SEKRIT@127.0.0.1:1/db?keepalives=x",
        "postgresql://u:SEKRIT@127.0.0.1:1/db?tcp_user_timeout=1.5",
        "postgresql://u:SEKRIT@127.0.0.1:1/db?ssl_min_protocol_version=bogus",
        "postgresql://u:SEKRIT@127.0.0.1:1/db?hostaddr=bad",
        "postgresql://u:SEKRIT@127.0.0.1:1/db?host=a,b&port=1,2,3",
        # A host name no DNS name can be (psycopg looks it up itself, and Python's IDNA
        # codec refuses it): a label over 63 characters, an empty one.
        f"postgresql://u:SEKRIT@{'h' * 64}.example:1/db",
        "postgresql://u:SEKRIT@a..b:1/db",
        "postgresql://u:SEKRIT@127.0.0.1:1/db?host=.",
    ],
)
def test_a_url_libpq_cannot_take_is_a_validation_error_without_its_password(url: str) -> None:
    with pytest.raises(ValidationError, match="PostgreSQL URL") as caught:
        tokenstore.open(url)
    assert "SEKRIT" not in str(caught.value) and "KRIT" not in str(caught.value)


@pytest.mark.parametrize("password", ["SE?KRIT", "SE#KRIT", "SE?K#RIT"])
def test_a_password_holding_a_query_or_fragment_mark_is_not_shown(password: str) -> None:
    """libpq reads the user part up to the '@'; a URL parser stops at '?' or '#', showing it."""
    with pytest.raises(StoreIOError, match="cannot connect") as caught:
        tokenstore.open(f"postgresql://u:{password}@127.0.0.1:1/db")
    assert "KRIT" not in str(caught.value) and "postgresql://u:***@127.0.0.1:1/db" in str(
        caught.value
    )


def refused_making_nothing(folder: Path, location: str, match: str) -> str:
    """The message of ``open(location)`` refused as ``match`` says, in the working ``folder``:
    it shows no password, and nothing was made there."""
    with pytest.raises(ValidationError, match=match) as caught:
        tokenstore.open(location)
    assert "KRIT" not in str(caught.value)
    assert list(folder.iterdir()) == []
    return str(caught.value)


@pytest.mark.parametrize(
    "location",
    [
        "postgresql+psycopg://u:SEKRIT@127.0.0.1:1/db",  # SQLAlchemy's spelling
        "pgsql://u:SEKRIT@127.0.0.1:1/db",
        "host=127.0.0.1 port=1 password=SEKRIT",  # libpq's key=value string
        "host=127.0.0.1 password='SE KRIT'",
        # Led by another of libpq's keywords: the file was made, the password in its name.
        "sslmode=disable host=127.0.0.1 password=SEKRIT",
        "application_name=x password=SEKRIT",
        "Connect_Timeout = 5 user=u password=SEKRIT",
    ],
)
def test_a_server_address_that_is_no_postgresql_url_is_refused_not_made_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, location: str
) -> None:
    """Taken for a file path, it was created in the working folder, the password in its name."""
    monkeypatch.chdir(tmp_path)
    refused_making_nothing(tmp_path, location, "tokenstore takes a postgresql:// URL")


@pytest.mark.parametrize(
    "location",
    [
        Path("postgresql://u:SEKRIT@127.0.0.1:1/db"),  # a Path makes '//' one '/'
        "postgresql:/u:SEKRIT@127.0.0.1:1/db",
        Path("POSTGRES://u:SEKRIT@127.0.0.1:1/db"),
        Path("postgresql+psycopg://u:SEKRIT@127.0.0.1:1/db"),  # SQLAlchemy's spelling
    ],
)
def test_a_url_whose_slashes_a_path_collapsed_is_refused_without_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, location: Path | str
) -> None:
    """Taken for a file path, its password was in the error ('cannot create postgresql:/u:...')."""
    monkeypatch.chdir(tmp_path)
    calls: list[Callable[[], object]] = [
        lambda: tokenstore.open(location),
        lambda: tokenstore.migrate(location, tmp_path / "copy.sqlite3"),
        lambda: tokenstore.migrate(tmp_path / "store.sqlite3", location),
    ]
    for call in calls:
        with pytest.raises(ValidationError, match="URL, not a file path") as caught:
            call()
        assert "KRIT" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "location",
    [
        "postgres:/host/db",  # one slash
        "postgresql:/",
        "postgres:/u:SEKRIT@127.0.0.1:1/db",
        "postgresql:u:SEKRIT@127.0.0.1:1/db",  # no slash: it was a file path holding a '/'
        "postgresql:SEKRIT",  # ... or a file in the working folder, named like the URL
        "postgressql://u:SEKRIT@127.0.0.1:1/db",  # a letter too many
        "postgre://u:SEKRIT@127.0.0.1:1/db",
        "posgresql://u:SEKRIT@127.0.0.1:1/db",
        "pgsql://u:SEKRIT@127.0.0.1:1/db",
        "PG://u:SEKRIT@127.0.0.1:1/db",
        "u:SEKRIT@127.0.0.1",  # no scheme: a file of that name was made
        "u:SEKRIT@127.0.0.1:1/db",
    ],
)
def test_a_mistyped_postgresql_url_is_refused_as_one_without_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, location: str
) -> None:
    """'postgres:/host/db' was told a pathlib.Path had collapsed its '//' (a str was given),
    'postgressql://' was 'a postgressql:// URL' as if another database's, and
    'postgresql:SEKRIT' was made an SQLite file of that name."""
    monkeypatch.chdir(tmp_path)
    assert "postgresql://" in refused_making_nothing(
        tmp_path, location, "a mistyped PostgreSQL URL"
    )


@pytest.mark.parametrize(
    ("location", "said"),
    [
        ("mysql://u:SEKRIT@127.0.0.1/db", "is a URL (mysql://)"),
        ("http://127.0.0.1/db", "is a URL (http://)"),
        ("sqlite:///store.sqlite3", "is an SQLite URL (sqlite://)"),
        ("pgsql://u:SEKRIT@127.0.0.1:1/db", "a mistyped PostgreSQL URL"),
        ("postgresql:/u:SEKRIT@127.0.0.1:1/db", "a mistyped PostgreSQL URL"),
    ],
)
def test_a_url_that_is_no_postgresql_url_is_refused_as_such_without_the_postgres_extra(
    tmp_path: Path, location: str, said: str
) -> None:
    """Without psycopg, 'mysql://...' was told to pip install 'tokenstore[postgres]'."""
    script = (
        "import sys\n"
        "sys.modules['psycopg'] = None  # as if the extra were not installed\n"
        "import tokenstore\n"
        "tokenstore.open(sys.argv[1])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, location],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("tokenstore._errors.ValidationError: ") and said in last, last
    assert "pip install" not in done.stderr and "KRIT" not in last
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "location",
    [
        "'postgresql://u:SEKRIT@127.0.0.1:1/db'",  # docker's --env-file keeps the quotes
        '"postgresql://u:SEKRIT@127.0.0.1:1/db"',
        "'app.sqlite3'",
        ' "app.sqlite3" ',
    ],
)
def test_a_location_in_quotes_is_refused_without_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, location: str
) -> None:
    """Taken for a file path, the quoted URL was 'no store at 'postgresql:/u:SEKRIT@...'',
    its password in the message, and a quoted file name a new store named with its quotes."""
    monkeypatch.chdir(tmp_path)
    refused_making_nothing(tmp_path, location, "is in quotes")


@pytest.mark.parametrize(
    ("url", "meant"),
    [
        ("sqlite:///app.sqlite3", "'app.sqlite3'"),  # SQLAlchemy's: three slashes, relative
        ("sqlite:////srv/app.sqlite3", "'/srv/app.sqlite3'"),
        ("SQLite3:///app.sqlite3", "'app.sqlite3'"),
    ],
)
def test_an_sqlalchemy_sqlite_url_is_told_the_path_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, meant: str
) -> None:
    """It was 'a URL (sqlite://): tokenstore takes a postgresql:// URL (or an SQLite
    file's path)', leaving the user to work out which part is the path."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError, match=f"did you mean {re.escape(meant)}"):
        tokenstore.open(url)
    assert list(tmp_path.iterdir()) == []


def test_blanks_around_a_url_are_not_part_of_it(pg_url: str) -> None:
    """A variable set with a stray space: taken for a file path, its password was in the error.
    One read from a file written on Windows ends with '\r': the database's name ended with it,
    and 'database "app\r" does not exist' showed nothing wrong."""
    with tokenstore.open(f"  {pg_url}") as store:
        store.users.create("alice")
        assert "app-password" not in repr(store)
    with tokenstore.open(pg_url, create=False) as again:
        assert again.users.get("alice").username == "alice"
    with tokenstore.open(f"{pg_url}\r\n", create=False) as again:
        assert again.users.get("alice").username == "alice"
        assert again.location == redacted_url(pg_url)


def test_the_postgres_scheme_opens_the_same_database(pg_url: str) -> None:
    with tokenstore.open(pg_url) as store:
        store.users.create("alice")
    for scheme in ("postgres", "POSTGRES", "PostgreSQL"):
        other = scheme + pg_url[len("postgresql") :]
        with tokenstore.open(other, create=False) as again:
            assert again.users.get("alice").username == "alice"


def test_a_server_that_never_answers_is_given_up_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Something listens but never speaks (a stopped server): the wait is bounded."""
    monkeypatch.setattr(postgres, "CONNECT_TIMEOUT", 2)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"postgresql://u:SEKRIT@127.0.0.1:{silent.getsockname()[1]}/db"
        started = time.monotonic()
        with pytest.raises(StoreError, match=r"cannot connect to .*timeout") as caught:
            tokenstore.open(url)
        assert time.monotonic() - started < 10
        # the URL's own connect_timeout wins over the default
        monkeypatch.setattr(postgres, "CONNECT_TIMEOUT", 60)
        started = time.monotonic()
        with pytest.raises(StoreError, match="timeout"):
            tokenstore.open(url + "?connect_timeout=2")
        assert time.monotonic() - started < 10
    assert "SEKRIT" not in str(caught.value)
    # what code written against plain peewee catches, as it did before (Store.close() too)
    assert isinstance(caught.value, peewee.OperationalError)


# -- the server ends a connection -----------------------------------------------------------


class Memo(ABIDModel):
    abid_prefix = "mmo_"
    abid_uri_src = "text"
    text = peewee.TextField(default="memo")
    count = peewee.IntegerField(default=0)


def pg(store: Store) -> postgres.PostgresDatabase:
    assert isinstance(store.db, postgres.PostgresDatabase)
    return store.db


def terminate(store: Store, pg_admin_url: str, conn: Any = None) -> None:
    """End a connection of the store from the server's side, as an administrator (or a restart)."""
    pid = (conn or pg(store).connection()).info.backend_pid
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    for _ in range(100):  # until the server has really let it go
        if not _db.rows(pg_admin_url, "SELECT 1 FROM pg_stat_activity WHERE pid = ?", (pid,)):
            return
        time.sleep(0.01)


def test_a_connection_the_server_ended_while_idle_is_replaced_before_the_next_call(
    pg_url: str, pg_admin_url: str
) -> None:
    """A restart, an administrator or ``idle_session_timeout`` ends a connection between calls.

    Nothing of a transaction went with it, so the next call runs on a new one
    instead of failing once; one lost while a statement ran fails that call.
    """
    store = tokenstore.open(pg_url)
    try:
        store.register(Memo)
        alice = store.users.create("alice")
        _, secret = store.tokens.create(alice, name="ci")
        calls: list[Callable[[], object]] = [
            lambda: store.users.get("alice"),  # peewee's query
            lambda: store.tokens.authenticate(secret),  # a statement on the raw connection
            lambda: store.users.create("bob"),  # a write of tokenstore's own
            lambda: Memo.create(text="lone"),  # an application's write
            lambda: store.dispatch(),
        ]
        for call in calls:
            ended = pg(store).connection().info.backend_pid
            terminate(store, pg_admin_url)
            call()
            assert pg(store).connection().info.backend_pid != ended
        with pytest.raises(StoreIOError, match="connection to the server was lost") as lost:
            pg(store).execute_sql("SELECT pg_terminate_backend(pg_backend_pid())")
        assert "app-password" not in str(lost.value)
        assert store.users.get("alice").username == "alice"  # the next call connects again
        terminate(store, pg_admin_url)
        with store.atomic():  # begun after the loss: on a new connection
            Memo.create(text="begun after")
        committed = pytest.raises(StoreIOError, match="lost before the transaction committed")
        with committed, store.atomic():  # a block that goes on after the loss cannot commit
            Memo.create(text="second")
            terminate(store, pg_admin_url)
            with pytest.raises(StoreIOError, match="lost"):
                Memo.create(text="third")
            with pytest.raises(StoreIOError, match="lost in the middle of a transaction"):
                Memo.create(text="fourth")
        assert sorted(m.text for m in Memo.select()) == ["begun after", "lone"]
    finally:
        store.close()
    assert _db.rows(pg_url, "SELECT username FROM tokenstore_user ORDER BY 1") == [
        ("alice",),
        ("bob",),
        ("system",),
    ]


def test_a_session_the_server_ends_for_idling_is_replaced(pg_url: str) -> None:
    """``idle_session_timeout``, as a managed server or a pooler sets it, ends sessions between
    calls: the next call runs on a new one."""
    url = pg_url + ("&" if "?" in pg_url else "?") + "options=-c%20idle_session_timeout%3D200"
    with tokenstore.open(url) as store:
        store.users.create("alice")
        first = pg(store).connection().info.backend_pid
        time.sleep(0.6)
        assert store.users.get("alice").username == "alice"
        assert pg(store).connection().info.backend_pid != first


def test_a_notification_waiting_on_the_connection_does_not_end_it(pg_url: str) -> None:
    """Something the server sends unasked that is not a farewell: the connection is kept."""
    with tokenstore.open(pg_url) as store:
        store.users.create("alice")
        conn = pg(store).connection()
        pg(store).execute_sql("LISTEN app_channel")  # the application's own, on this connection
        _db.edit(pg_url, "NOTIFY app_channel, 'hello'")
        time.sleep(0.2)
        started = time.monotonic()
        assert store.users.get("alice").username == "alice"
        assert time.monotonic() - started < 1
        assert pg(store).connection() is conn
        assert [n.payload for n in conn.notifies(timeout=0.5, stop_after=1)] == ["hello"]


class FreezingProxy:
    """A TCP relay to the server whose connections, once frozen, carry nothing more.

    Bytes sent to a frozen connection are taken (the kernel acknowledges them)
    and never passed on, as a server that stops answering does: a stopped
    process, a hung disk, a machine swapping. New connections are relayed.
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self.listener = socket.create_server(("127.0.0.1", 0))
        port = self.listener.getsockname()[1]
        self.url = urlunsplit(
            parts._replace(netloc=f"{parts.netloc.rpartition('@')[0]}@127.0.0.1:{port}")
        )
        self.frozen: list[threading.Event] = []
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
                frozen = threading.Event()
                self.frozen.append(frozen)
                self.sockets += [client, server]
                for a, b in ((client, server), (server, client)):
                    threading.Thread(target=self._pipe, args=(a, b, frozen), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, frozen: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if not frozen.is_set():
                    sink.sendall(data)

    def freeze(self) -> None:
        for frozen in self.frozen:
            frozen.set()

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _raised(call: Callable[[], object]) -> BaseException | float:
    """What ``call`` raised (a float, its time, if it returned)."""
    started = time.monotonic()
    try:
        call()
    except BaseException as exc:
        return exc
    return time.monotonic() - started


def _frozen_mid_call(
    proxy: FreezingProxy, call: Callable[[], object]
) -> tuple[BaseException | float, BaseException | float]:
    """On a thread of its own: ``call`` once, then again once the proxy froze, and a third time.

    Returns what the second and third calls raised, or how long they took.
    """
    outcomes: list[BaseException | float] = []
    connected, frozen = threading.Event(), threading.Event()

    def thrice() -> None:
        call()  # this thread's connection, relayed
        connected.set()
        frozen.wait(5)
        outcomes.append(_raised(call))
        outcomes.append(_raised(call))  # on a connection of its own

    caller = threading.Thread(target=thrice, daemon=True)
    caller.start()
    assert connected.wait(5)
    proxy.freeze()
    frozen.set()
    caller.join(15)  # the test's own bound: the proxy's closing ends a call still waiting
    assert len(outcomes) == 2, "a call was still waiting after 15 s"
    return outcomes[0], outcomes[1]


def test_a_server_that_stops_answering_mid_call_holds_it_a_bounded_time(pg_url: str) -> None:
    """Connected, then silent: every call waited for ever (the server's kernel acknowledges).

    The client waits for an answer as long as the session lets a statement
    run (its statement_timeout, here 100 ms, else 60 s) or wait for a lock,
    whichever is longer, and 5 s more; then it ends the connection.
    """
    proxy = FreezingProxy(pg_url)
    quick = "options=-c%20statement_timeout%3D100%20-c%20lock_timeout%3D100"
    store = tokenstore.open(f"{proxy.url}?{quick}")
    names = (f"user{n}" for n in itertools.count())
    try:
        _, secret = store.tokens.create(store.users.create("alice"), name="ci")
        calls: list[Callable[[], object]] = [
            lambda: store.tokens.authenticate(secret),  # a statement on the raw connection
            lambda: store.users.create(next(names)),  # a pipelined write
        ]
        for call in calls:
            lost, again = _frozen_mid_call(proxy, call)
            assert isinstance(lost, StoreIOError), lost
            assert "did not answer within 5.1 s" in str(lost)
            assert "app-password" not in str(lost)
            assert isinstance(again, float) and again < 2, again
    finally:
        proxy.close()
        store.close()
    assert _db.rows(pg_url, "SELECT username FROM tokenstore_user ORDER BY 1") == [
        ("alice",),
        ("system",),
        ("user0",),
        ("user2",),  # user1's write reached the server not even in part
    ]


def test_waiting_for_changes_listens_again_after_the_server_ended_it(
    pg_url: str, pg_admin_url: str
) -> None:
    with tokenstore.open(pg_url) as store:
        assert store.wait_for_changes(0.05) is False  # now listening
        terminate(store, pg_admin_url, pg(store)._changes._local.conn)
        assert store.wait_for_changes(5) is True  # what it missed is unknown: look
        assert store.wait_for_changes(0.05) is False
        with tokenstore.open(pg_url, webhook_allow=["127.0.0.1/32"], sync_budget=0) as other:
            other.register(Memo)
            other.webhooks.create("memos", Memo, "http://127.0.0.1:9/")  # changes are captured
            Memo.create(text="elsewhere")
        assert store.wait_for_changes(5) is True


def test_the_listening_connection_waits_for_answers_as_long_as_the_others(pg_url: str) -> None:
    """It was a plain driver connection: a server silent at its LISTEN held the waiter for good
    (the relay that shows it takes 5 s; see the test above for the bound itself)."""
    with tokenstore.open(pg_url) as store:
        assert store.wait_for_changes(0.05) is False
        assert isinstance(pg(store)._changes._local.conn, pg(store)._connection_class)


# -- names PostgreSQL cuts at 63 bytes ------------------------------------------------------


_classes = itertools.count()


def named(table: str) -> type[ABIDModel]:
    """A fresh model class on a table of that name."""
    meta = type("Meta", (), {"table_name": table})
    fields = {"name": peewee.TextField(default="x"), "note": peewee.TextField(default="")}
    attrs = {"__module__": __name__, "abid_prefix": "nmd_", "abid_uri_src": "name", "Meta": meta}
    return type(f"Named{next(_classes)}", (ABIDModel,), {**attrs, **fields})


@pytest.mark.parametrize(
    "tables",
    [
        ["a" * 55],  # its triggers' names, cut at 63 bytes, were one name
        ["b" * 60 + "1", "b" * 60 + "2"],  # and two tables' functions were one
        ["ü" * 30],  # 60 bytes, its triggers' names more
        ['we"ird'],  # registering again dropped triggers of another name
    ],
)
def test_tables_with_long_or_odd_names_are_captured_and_registered_again(
    store: Store, tables: list[str]
) -> None:
    models = [store.register(named(table)) for table in tables]
    hooks = [store.webhooks.create(f"h{i}", m, "http://127.0.0.1:9/") for i, m in enumerate(models)]
    for model in models:
        model.quiet_fields = ("note",)  # other triggers: registering replaces them
        store.register(model)
        model.create(name="one")
    for hook, model in zip(hooks, models, strict=True):
        assert [d.event_type for d in store.webhooks.deliveries(hook)] == [
            f"{model._meta.name}.created"
        ]


@pytest.mark.parametrize("table", ["back\\slash", "quo'te\\'"])
def test_a_name_with_a_backslash_is_captured_where_strings_are_not_standard_conforming(
    pg_url: str, table: str
) -> None:
    """A database or role may keep standard_conforming_strings off (PostgreSQL before 9.1
    did; old applications still ask for it): a backslash in a plain literal is an escape
    there. Names were written into the triggers and the claim as plain literals, so a
    table named with a backslash had its changes recorded under another name (never sent
    to its hooks), or its trigger could not be made at all (peewee's ProgrammingError)."""
    with psycopg.connect(pg_url, autocommit=True) as admin:
        database = admin.info.dbname
        admin.execute(f'ALTER DATABASE "{database}" SET standard_conforming_strings = off')
    with tokenstore.open(pg_url, webhook_allow=["127.0.0.1/32"], sync_budget=0) as store:
        model = store.register(named(table))
        hook = store.webhooks.create("h", model, "http://127.0.0.1:9/")
        model.create(name="by tokenstore")
        quoted = '"' + table.replace('"', '""') + '"'
        _db.edit(pg_url, f"UPDATE {quoted} SET note = 'by a shell'")  # a session of its own
        store.dispatch(deliver=False)
        assert len(store.webhooks.deliveries(hook)) == 2


def test_a_table_of_sixty_columns_is_captured_on_both_backends(store: Store) -> None:
    """SQLite builds a row of up to 63 columns; PostgreSQL's json_build_object took 50."""
    columns = {f"c{i}": peewee.IntegerField(default=i) for i in range(60)}
    meta = type("Meta", (), {"table_name": "wide"})
    wide = type("Wide", (peewee.Model,), {"__module__": __name__, "Meta": meta, **columns})
    store.register(wide)
    seen: list[dict[str, Any]] = []

    def receiver(sender: Any, instance: Any, **extra: Any) -> None:
        seen.append({name: getattr(instance, name) for name in columns})

    tokenstore.signals.post_save.connect(receiver, sender=wide, weak=False)
    try:
        wide.create()
    finally:
        tokenstore.signals.post_save.disconnect(receiver, sender=wide)
    assert seen == [{f"c{i}": i for i in range(60)}]


def test_a_column_name_with_a_quote_is_captured(store: Store) -> None:
    meta = type("Meta", (), {"table_name": "quoted"})
    field = peewee.TextField(column_name="it's", default="x")
    model = type("Quoted", (peewee.Model,), {"__module__": __name__, "Meta": meta, "its": field})
    store.register(model)
    hook = store.webhooks.create("quoted", model, "http://127.0.0.1:9/")
    model.create()
    assert [d.event_type for d in store.webhooks.deliveries(hook)] == ["quoted.created"]


def test_a_name_longer_than_postgresql_keeps_is_refused_before_anything_is_made(
    pg_url: str,
) -> None:
    """The server would cut it at 63 bytes: two such tables would silently be one."""
    with tokenstore.open(pg_url) as store:
        for model in (named("c" * 64), named("ü" * 32)):
            with pytest.raises(ValidationError, match="PostgreSQL keeps only the first 63"):
                store.register(model)
        model = named("short")
        model._meta.add_field("d" * 64, peewee.TextField(default=""))
        with pytest.raises(ValidationError, match=f"'{'d' * 64}' is 64 bytes long"):
            store.register(model)
        assert store.models.keys() == {m._meta.table_name for m in tokenstore._models.OWN_MODELS}
    tables = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    tables += " AND tablename NOT LIKE 'tokenstore%'"
    assert _db.rows(pg_url, tables) == []


def test_a_model_registered_before_the_model_its_foreign_key_refers_to_is_told_so(
    pg_url: str,
) -> None:
    """PostgreSQL checks a foreign key's table when a table is created: its error came out
    raw (ProgrammingError: relation "parent" does not exist). SQLite makes the table."""

    class Parent(peewee.Model):
        name = peewee.TextField()

    class Boss(peewee.Model):  # another schema's table, which the application does not register
        class Meta:
            schema = "staff"

    class Child(peewee.Model):
        parent = peewee.ForeignKeyField(Parent)
        up = peewee.ForeignKeyField("self", null=True)  # its own table: made with it
        boss = peewee.ForeignKeyField(Boss, null=True)

    with _db.Raw(pg_url) as raw:
        raw.execute("CREATE SCHEMA staff")
        raw.execute("CREATE TABLE staff.boss (id serial PRIMARY KEY)")
    with tokenstore.open(pg_url) as store:
        with pytest.raises(
            ValidationError, match=r"Child\.parent refers to Parent.*register Parent"
        ):
            store.register(Child)
        assert not store.db.table_exists("child")
        store.register(Parent)
        store.register(Child)
        Child.create(parent=Parent.create(name="p"))


def test_a_name_holding_a_percent_sign_is_refused(pg_url: str) -> None:
    """psycopg reads ``%`` in a statement as the start of a placeholder.

    A new table so named failed register() with a raw ProgrammingError; one
    made before (by psql) was registered, and then every commit that claimed
    events failed, its claim statement naming the table.
    """
    with _db.Raw(pg_url) as raw:
        raw.execute('CREATE TABLE "made%before" (id serial PRIMARY KEY)')
    meta = type("Meta", (), {"table_name": "made%before"})
    before = type("Before", (peewee.Model,), {"__module__": __name__, "Meta": meta})
    model = named("percent")
    model._meta.add_field("rate", peewee.TextField(column_name="rate%", default=""))

    class Tag(peewee.Model):
        pass

    through = peewee.DeferredThroughModel()

    class Tagged(peewee.Model):  # its relation is known from its registration on
        tags = peewee.ManyToManyField(Tag, through_model=through)

    class Joined(peewee.Model):
        tagged = peewee.ForeignKeyField(Tagged)
        tag = peewee.ForeignKeyField(Tag)

        class Meta:
            table_name = "join%ed"

    through.set_model(Joined)

    def receiver(sender: Any, **kwargs: Any) -> None:
        pass

    tokenstore.signals.row_changed.connect(receiver, weak=False)
    try:
        with tokenstore.open(pg_url) as store:
            for refused, name in ((before, "made%before"), (model, "rate%"), (Tagged, "join%ed")):
                with pytest.raises(ValidationError, match=f"'{name}' holds %, which psycopg"):
                    store.register(refused)
            store.users.create("after")
            own = {t._meta.table_name for t in tokenstore._models.OWN_MODELS}
            assert store.models.keys() == own
    finally:
        tokenstore.signals.row_changed.disconnect(receiver)


# -- values the server refuses --------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {"text": "a\x00b"},  # PostgreSQL's text holds no NUL (SQLite's does)
        {"count": 2**31},  # peewee's IntegerField is 32 bits on PostgreSQL
        {"count": -(2**63) - 1},
    ],
)
def test_a_value_the_server_refuses_is_a_validation_error_and_nothing_is_written(
    pg_url: str, values: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with tokenstore.open(pg_url) as store:
        store.register(Memo)
        with caplog.at_level(logging.WARNING):
            with pytest.raises(ValidationError, match="cannot be stored in PostgreSQL"):
                Memo.create(**values)
            with pytest.raises(ValidationError), store.atomic():
                Memo.create(text="before")
                Memo.create(**values)
            with pytest.raises(ValidationError):
                Memo.select().where(Memo.text == "a\x00b").count()
        assert Memo.select().count() == 0
        Memo.create(text="after")  # the connection is usable
        assert [m.text for m in Memo.select()] == ["after"]
    # psycopg's warning about the pipeline the failure left behind is not logged
    assert [r.getMessage() for r in caplog.records if r.name.startswith("psycopg")] == []


def test_a_statement_after_one_that_failed_in_a_transaction_says_what_to_do(
    store: Store,
) -> None:
    """SQLite undoes the failed statement alone; PostgreSQL runs nothing more in the
    transaction. The error says so, and a savepoint (``store.atomic()``) works on both."""

    class Tag(peewee.Model):
        name = peewee.TextField(unique=True)

    store.register(Tag)
    Tag.create(name="taken")
    with store.atomic():
        with pytest.raises(peewee.IntegrityError), store.atomic():
            Tag.create(name="taken")
        Tag.create(name="after a savepoint")
    on_postgres = store.path is None
    refused = pytest.raises(StoreError, match=r"earlier statement.*store\.atomic\(\)")
    with refused if on_postgres else contextlib.nullcontext(), store.atomic():
        with pytest.raises(peewee.IntegrityError):
            Tag.create(name="taken")
        Tag.create(name="after")
    if on_postgres:  # the transaction was rolled back whole: the store goes on
        Tag.create(name="after")
    assert sorted(t.name for t in Tag.select()) == ["after", "after a savepoint", "taken"]


class Reading(ABIDModel):
    abid_prefix = "rdg_"
    abid_uri_src = "name"
    name = peewee.TextField(default="probe")
    value = peewee.FloatField()


def test_an_infinite_float_is_captured_on_both_backends(store: Store) -> None:
    """Both accept the row; its event's JSON must be readable too (PostgreSQL writes it as text)."""
    store.register(Reading)
    hook = store.webhooks.create("readings", Reading, "http://127.0.0.1:9/")
    Reading.create(value=float("inf"))
    assert [r.value for r in Reading.select()] == [float("inf")]
    assert [d.event_type for d in store.webhooks.deliveries(hook)] == ["reading.created"]


# -- a server that lets the session only read -----------------------------------------------

READ_ONLY_SESSION = "options=-c%20default_transaction_read_only%3Don"


def test_a_session_the_server_lets_only_read_opens_read_only(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with tokenstore.open(pg_url) as store:
        store.users.create("alice")
    with caplog.at_level(logging.WARNING, logger="tokenstore"):
        store = tokenstore.open(f"{pg_url}?{READ_ONLY_SESSION}")
    try:
        assert store.db.read_only
        assert store.users.get("alice").username == "alice"
        with pytest.raises(StoreReadOnly, match="is open read-only"):
            store.users.create("bob")
    finally:
        store.close()
    assert any("opening it read-only" in r.getMessage() for r in caplog.records)
    assert _db.rows(pg_url, "SELECT count(*) FROM tokenstore_user") == [(2,)]


def test_a_write_command_on_a_session_that_may_only_read_says_so_in_one_line(
    pg_url: str,
) -> None:
    with tokenstore.open(pg_url) as store:
        store.users.create("alice")
    url = f"{pg_url}?{READ_ONLY_SESSION}"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tokenstore", "--db", url, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    listed = run("users", "list")
    assert (listed.returncode, listed.stderr) == (0, "") and "alice" in listed.stdout
    for write in (["users", "add", "bob"], ["dispatch"]):
        done = run(*write)
        assert done.returncode == 2, (write, done.stderr)
        assert done.stderr.count("\n") == 1, (write, done.stderr)
        assert "lets this session only read" in done.stderr
        assert "this command writes to it" in done.stderr
    assert _db.rows(pg_url, "SELECT count(*) FROM tokenstore_user") == [(2,)]


def test_a_role_that_may_not_change_the_tables_opens_read_only(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """As a file this process cannot write: readable, with a warning (it failed on opening)."""
    with tokenstore.open(pg_url) as store:
        store.users.create("alice")
    _db.edit(
        pg_url, "REVOKE INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public FROM CURRENT_USER"
    )
    with caplog.at_level(logging.WARNING, logger="tokenstore"):
        store = tokenstore.open(pg_url)
    try:
        assert store.db.read_only
        assert [u.username for u in store.users.list()] == ["system", "alice"]
        with pytest.raises(StoreReadOnly, match="is open read-only"):
            store.users.create("bob")
    finally:
        store.close()
    assert any("no right to change" in r.getMessage() for r in caplog.records)


def test_an_empty_database_the_server_lets_only_read_is_refused_without_a_warning(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    refused = pytest.raises(StoreReadOnly, match="has schema version 0")
    with caplog.at_level(logging.WARNING, logger="tokenstore"), refused:
        tokenstore.open(f"{pg_url}?{READ_ONLY_SESSION}")
    assert [r.getMessage() for r in caplog.records] == []


def test_a_search_path_without_a_schema_is_a_store_error(pg_url: str) -> None:
    with pytest.raises(StoreError, match="search_path names no schema"):
        tokenstore.open(f"{pg_url}?options=-c%20search_path%3Dnowhere")


@pytest.mark.parametrize(
    "setting", ["lock_timeout%3Dabc", "no_such_setting%3D1", "statement_timeout%3D-5"]
)
def test_a_setting_the_server_refuses_in_the_urls_options_is_a_validation_error(
    pg_url: str, setting: str
) -> None:
    """The URL's fault, as a value libpq refuses is; it was a StoreIOError blaming the
    connection ('cannot connect to URL: ...')."""
    with pytest.raises(ValidationError, match=r"is not a valid PostgreSQL URL: .*parameter"):
        tokenstore.open(f"{pg_url}?options=-c%20{setting}")


def test_read_only_keeps_the_urls_own_options(pg_url: str) -> None:
    """The URL's ``options`` (a search_path here) hold when tokenstore adds its own."""
    _db.edit(pg_url, "CREATE SCHEMA elsewhere")
    url = f"{pg_url}?options=-c%20search_path%3Delsewhere"
    with tokenstore.open(url) as store:
        store.users.create("alice")
    assert _db.rows(pg_url, "SELECT count(*) FROM elsewhere.tokenstore_user") == [(2,)]
    with tokenstore.open(url, read_only=True) as reader:
        assert reader.users.get("alice").username == "alice"


def show(store: Store, setting: str) -> str:
    return str(pg(store).execute_sql(f"SHOW {setting}").fetchone()[0])


def test_the_session_settings_tokenstore_needs_yield_to_the_urls(pg_url: str) -> None:
    """tokenstore's session takes UTC and waits ``busy_timeout`` for a lock; the URL's own
    ``options`` win, except that a read-only store's sessions are read-only whatever they say."""
    with tokenstore.open(pg_url, busy_timeout=6) as store:
        assert (show(store, "lock_timeout"), show(store, "TimeZone")) == ("6s", "UTC")
        assert show(store, "default_transaction_read_only") == "off"
    own = "options=-c%20lock_timeout%3D200%20-c%20TimeZone%3DAsia/Kathmandu"
    with tokenstore.open(f"{pg_url}?{own}", busy_timeout=6) as store:
        assert (show(store, "lock_timeout"), show(store, "TimeZone")) == ("200ms", "Asia/Kathmandu")
        assert pg(store).lock_wait == 0.2
    url = f"{pg_url}?options=-c%20default_transaction_read_only%3Doff"
    with tokenstore.open(url, read_only=True) as reader:
        assert show(reader, "default_transaction_read_only") == "on"


@pytest.fixture
def bouncer(pg_url: str) -> Iterator[str]:
    """A PgBouncer in session mode in front of ``pg_url``'s server: a URL through it."""
    binary = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if binary is None:
        missing("PgBouncer: no pgbouncer (apt-get install pgbouncer)")
    parts = urlsplit(pg_url)
    folder = Path(tempfile.mkdtemp(prefix="tokenstore-pgbouncer-"))  # not under pytest's 0700
    if AS_POSTGRES:  # PgBouncer refuses to run as root
        shutil.chown(folder, "postgres")
    port = free_port()
    config = folder / "pgbouncer.ini"
    config.write_text(
        f"[databases]\n* = host={parts.hostname} port={parts.port} user={parts.username} "
        f"password={parts.password}\n[pgbouncer]\nlisten_addr = 127.0.0.1\n"
        f"listen_port = {port}\nunix_socket_dir =\nauth_type = any\npool_mode = session\n"
        f"logfile = {folder / 'pgbouncer.log'}\n"
    )
    config.chmod(0o644)
    proc = subprocess.Popen([*AS_POSTGRES, binary, str(config)], stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(port, proc)
        yield urlunsplit(
            parts._replace(netloc=f"{parts.netloc.rpartition('@')[0]}@127.0.0.1:{port}")
        )
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def test_a_store_works_through_pgbouncer_in_session_mode(bouncer: str) -> None:
    """PgBouncer, the usual pooler in front of PostgreSQL, refuses a connection whose startup
    packet carries ``options`` ("unsupported startup parameter"): tokenstore's settings are
    made once the session has started."""
    with tokenstore.open(bouncer, busy_timeout=6) as store:
        alice = store.users.create("alice")
        _, secret = store.tokens.create(alice, name="ci")
        assert store.tokens.authenticate(secret).name == "ci"
        assert (show(store, "lock_timeout"), show(store, "TimeZone")) == ("6s", "UTC")
    with tokenstore.open(bouncer, read_only=True) as reader:
        assert reader.users.get("alice").username == "alice"
        assert show(reader, "default_transaction_read_only") == "on"


def test_pgoptions_holds_where_the_url_sets_no_options(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libpq reads PGOPTIONS when the URL has no ``options``, as psql does; tokenstore's own
    options replaced it, so a search_path given there was dropped and the store made in
    public, where psql (``inspect_with``) did not look."""
    with _db.Raw(pg_url) as raw:
        raw.execute("CREATE SCHEMA elsewhere")
    monkeypatch.setenv("PGOPTIONS", "-c search_path=elsewhere -c lock_timeout=2s")
    with tokenstore.open(pg_url, busy_timeout=5) as store:
        store.users.create("alice")
        assert pg(store).lock_wait == 2
    assert _db.rows(pg_url, "SELECT count(*) FROM elsewhere.tokenstore_user") == [(2,)]


def test_a_store_in_a_schema_of_its_own_captures_writes_of_sessions_with_another_path(
    pg_url: str,
) -> None:
    """The capture triggers named tokenstore's tables without their schema, so they were
    looked up in the search_path of whoever wrote: psql's write of ``elsewhere.memo`` failed
    with "relation tokenstore_listener does not exist" (or, with a store in public too,
    recorded its event in that other store's queue)."""
    with _db.Raw(pg_url) as raw:
        raw.execute("CREATE SCHEMA elsewhere")
    path = f"{pg_url}?options=-c%20search_path%3Delsewhere"
    with tokenstore.open(path, webhook_allow=["127.0.0.1/32"]) as store:
        store.register(Memo)
        store.users.create("alice")
        store.webhooks.create("memos", Memo, "http://127.0.0.1:9/never")  # capture is on
        with _db.Raw(pg_url) as raw:  # a session with the default search_path
            raw.execute(
                "INSERT INTO elsewhere.memo (id, abid, created_by_id, created_at, modified_at, "
                "text, count) VALUES ('m1', 'mmo_1', 1, '2020-01-01T00:00:00.000Z', "
                "'2020-01-01T00:00:00.000Z', 'by psql', 0)"
            )
            raw.execute("UPDATE elsewhere.tokenstore_user SET username = 'bob' WHERE id = 2")
        captured = "SELECT table_name, op FROM elsewhere.tokenstore_change_event"
        assert _db.rows(pg_url, captured) == [("memo", "INSERT")]
        assert store.users.get("bob").id == 2  # tokenstore's own capture let the update be


def test_a_store_in_a_schema_of_its_own_captures_a_table_public_has_too(pg_url: str) -> None:
    """The capture function was looked up by the search_path: a store in ``elsewhere`` with
    ``public`` behind it found public's ``memo_capture``, took it for its own (the same
    digest), and left ``elsewhere.memo`` without triggers: its changes never reached a hook."""
    with tokenstore.open(pg_url) as store:
        store.register(Memo)
    with _db.Raw(pg_url) as raw:
        raw.execute("CREATE SCHEMA elsewhere")
    path = f"{pg_url}?options=-c%20search_path%3Delsewhere,public"
    with tokenstore.open(path, webhook_allow=["127.0.0.1/32"]) as store:
        store.register(Memo)
        hook = store.webhooks.create("memos", Memo, "http://127.0.0.1:9/never")
        Memo.create(text="kept in elsewhere")
        assert [d.event_type for d in store.webhooks.deliveries(hook)] == ["memo.created"]


@contextlib.contextmanager
def _users_locked_elsewhere(pg_url: str) -> Iterator[None]:
    """A session left in a transaction holding the users table's strongest lock."""
    with psycopg.connect(pg_url) as other:
        other.execute("LOCK TABLE tokenstore_user IN ACCESS EXCLUSIVE MODE")
        yield


def test_a_lock_another_session_keeps_is_waited_for_at_most_busy_timeout(pg_url: str) -> None:
    """As an SQLite writer waits for the file's lock: StoreLocked, not a wait without end,
    and the message says so as SQLite's does: how long it waited, then the server's words."""
    with tokenstore.open(pg_url, busy_timeout=5) as store:
        store.users.create("alice")
        with _users_locked_elsewhere(pg_url):
            started = time.monotonic()
            with pytest.raises(StoreLocked) as raised:
                store.users.get("alice")
            assert str(raised.value).startswith(
                f"{redacted_url(pg_url)}: the database stayed locked for 5 s ("
            ), raised.value
            assert 4 < time.monotonic() - started < 30
        assert store.users.get("alice").username == "alice"


def test_a_statement_the_urls_statement_timeout_cancels_is_a_store_error(pg_url: str) -> None:
    """A URL may set statement_timeout (README): a wait for a lock it ends, shorter than
    busy_timeout, raised psycopg's QueryCanceled through peewee, no tokenstore error, its
    message two lines long. It is StoreLocked, as the same wait ended by lock_timeout is."""
    quick = f"{pg_url}?options=-c%20statement_timeout%3D300"
    with tokenstore.open(quick, busy_timeout=5) as store:
        store.users.create("alice")
        with _users_locked_elsewhere(pg_url):
            started = time.monotonic()
            with pytest.raises(StoreLocked) as raised:
                store.users.get("alice")
            assert time.monotonic() - started < 4
        message = str(raised.value)
        assert message.startswith(f"{redacted_url(quick)}: the statement was cancelled"), message
        assert "statement_timeout" in message and "\n" not in message
        assert "app-password" not in message
        assert store.users.get("alice").username == "alice"


def test_a_serialization_failure_is_store_locked_as_a_deadlock_is(pg_url: str) -> None:
    """A database (or URL) may make transactions REPEATABLE READ or SERIALIZABLE: a write
    that meets another transaction's commit then fails with SQLSTATE 40001, which came out
    as peewee's OperationalError (or psycopg's own error), no tokenstore error at all."""
    url = f"{pg_url}?options=-c%20default_transaction_isolation%3Drepeatable%5C%20read"
    with tokenstore.open(url) as store:
        token, _ = store.tokens.create(store.users.create("alice"), name="ci")
        with pytest.raises(StoreLocked, match="retry"), store.atomic():
            store.tokens.get(token.abid)  # the transaction's snapshot is taken here
            with _db.Raw(pg_url) as raw:
                raw.execute(
                    "UPDATE tokenstore_api_token SET name = 'cd' WHERE id = ?", (token.id.hex,)
                )
            store.tokens.revoke(token)
        assert store.tokens.revoke(token).revoked_at is not None  # retried, it goes through


# -- what the database holds ----------------------------------------------------------------


def test_a_database_without_a_table_its_version_promises_is_refused(pg_url: str) -> None:
    tokenstore.open(pg_url).close()
    _db.edit(pg_url, "DROP TABLE tokenstore_change_event")
    for options in ({}, {"read_only": True}):
        with pytest.raises(
            StoreCorrupt, match="schema version 2 but lacks tokenstore_change_event"
        ):
            tokenstore.open(pg_url, **options)


def test_tables_named_like_tokenstores_without_its_version_are_refused_untouched(
    pg_url: str,
) -> None:
    """Another program's table (or a dropped version table): creating the schema would clash."""
    _db.edit(
        pg_url,
        "CREATE TABLE tokenstore_user (name TEXT)",
        "INSERT INTO tokenstore_user VALUES ('x')",
    )
    with pytest.raises(StoreError, match=r"tables named like tokenstore's \(tokenstore_user\)"):
        tokenstore.open(pg_url)
    assert _db.rows(pg_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'") == [
        ("tokenstore_user",)
    ]
    assert _db.rows(pg_url, "SELECT * FROM tokenstore_user") == [("x",)]


@pytest.mark.parametrize(
    "another_programs",
    [
        "CREATE VIEW tokenstore_user AS SELECT 1 AS x",
        "CREATE SEQUENCE tokenstore_change_event",
        "CREATE TABLE t (x INT); CREATE INDEX tokenstore_user_username ON t (x)",
        "CREATE FUNCTION tokenstore_user_capture() RETURNS INT LANGUAGE sql AS 'SELECT 1'",
    ],
)
def test_objects_named_like_tokenstores_are_refused_as_its_tables_are(
    pg_url: str, another_programs: str
) -> None:
    """Not tables, so not seen as a clash: creating the schema failed on them with peewee's
    ProgrammingError ("relation ... already exists"). Nothing of the schema is made."""
    with _db.Raw(pg_url) as raw:
        raw.execute(another_programs)
    with pytest.raises(StoreError, match="tokenstore cannot be set up in it"):
        tokenstore.open(pg_url)
    assert _db.rows(pg_url, "SELECT to_regclass('tokenstore_api_token')") == [(None,)]


@pytest.mark.parametrize(
    "version_table",
    ["(applied_at TEXT)", "(version TEXT); INSERT INTO tokenstore_schema_version VALUES ('x')"],
)
def test_a_version_table_tokenstore_did_not_make_is_refused(
    pg_url: str, version_table: str
) -> None:
    """Its version was read as tokenstore writes it: psycopg's UndefinedColumn, or int()'s
    ValueError, came out of open()."""
    with _db.Raw(pg_url) as raw:
        raw.execute(f"CREATE TABLE tokenstore_schema_version {version_table}")
    for options in ({}, {"read_only": True}):
        with pytest.raises(StoreError, match="tokenstore_schema_version that tokenstore did not"):
            tokenstore.open(pg_url, **options)


def test_an_opener_that_saw_no_schema_before_another_made_it_opens(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its first look (no version table) is older than the tables it then finds: no clash."""
    tokenstore.open(pg_url).close()  # the other opener, done between the two looks
    real = postgres.PostgresDatabase.schema_version
    looks: list[int] = []

    def first_look_before(db: postgres.PostgresDatabase) -> int:
        looks.append(1)
        return 0 if len(looks) == 1 else real(db)

    monkeypatch.setattr(postgres.PostgresDatabase, "schema_version", first_look_before)
    tokenstore.open(pg_url).close()
    assert _db.rows(pg_url, "SELECT version FROM tokenstore_schema_version") == [
        (postgres_schema.SCHEMA_VERSION,)
    ]


def test_a_database_of_another_encoding_keeps_unicode_text(pg_admin_url: str) -> None:
    """On an SQL_ASCII database psycopg returned bytes for text, and open() failed."""
    options = "ENCODING 'SQL_ASCII' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'"
    with new_database(pg_admin_url, options) as url:
        with tokenstore.open(url) as store:
            alice = store.users.create("alice")
            store.tokens.create(alice, name="é✓🎉")
        with tokenstore.open(url, read_only=True) as store:
            assert [t.name for t in store.tokens.list()] == ["é✓🎉"]


def test_a_database_of_another_collation_lists_the_allowlist_as_sqlite_does(
    pg_admin_url: str,
) -> None:
    """Sorted by code point, as SQLite's BINARY sorts: ICU's en-US puts ``::1/128`` first."""
    options = "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
    with new_database(pg_admin_url, options) as url:
        entries = ["::1/128", "127.0.0.1/32", "a-b.example", "a.example"]
        with tokenstore.open(url, webhook_allow=entries) as store:
            assert store.webhooks.allowlist() == sorted(entries)


def test_an_aware_time_of_an_application_reads_back_in_utc_whatever_the_servers_zone(
    pg_url: str,
) -> None:
    """A TIMESTAMP column keeps an aware time converted to the session's zone: the server's
    (here New York's) made 03:04 UTC read back as 22:04 the day before. Sessions use UTC."""
    with _db.Raw(pg_url) as raw:
        raw.execute(
            f"ALTER DATABASE \"{pg_url.rpartition('/')[2]}\" SET timezone = 'America/New_York'"
        )

    class Visit(peewee.Model):
        at = peewee.DateTimeField()

    with tokenstore.open(pg_url) as store:
        store.register(Visit)
        Visit.create(at=datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC))
        assert [v.at for v in Visit.select()] == [datetime(2020, 1, 2, 3, 4, 5)]


# -- the command ----------------------------------------------------------------------------


def test_the_command_reports_a_raw_statements_error_in_a_line(pg_url: str) -> None:
    """A statement tokenstore runs on the raw connection fails (a trigger refuses it here)."""
    tokenstore.open(pg_url).close()
    _db.edit(
        pg_url,
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'refused by a trigger'; END $$",
        "CREATE TRIGGER refuse BEFORE DELETE ON tokenstore_change_event "
        "FOR EACH STATEMENT EXECUTE FUNCTION refuse()",
        "INSERT INTO tokenstore_change_event (table_name, op, row_pk, new_row) "
        "VALUES ('tokenstore_user', 'INSERT', '1', '{}')",
    )
    done = subprocess.run(
        [sys.executable, "-m", "tokenstore", "dispatch"],
        env={**os.environ, "TOKENSTORE_DB": pg_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "app-password" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith("tokenstore: error: postgresql://app:***@")
    assert "refused by a trigger" in done.stderr.splitlines()[-1]


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[bytes]]]:
    """A webhook receiver on 127.0.0.1 that keeps the bodies it is sent."""
    received: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    server.server_close()


def watcher(
    pg_url: str, db: list[str], interval: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """``tokenstore [DB] dispatch --watch``, once it has its connection and its listening one."""
    command = [*db, "--allow", "127.0.0.1/32", "dispatch", "--watch", "--interval", interval]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokenstore", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    sessions = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    deadline = time.monotonic() + 20
    while _db.rows(pg_url, sessions) < [(3,)] and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc


def test_dispatch_watch_outlives_a_lock_held_past_its_busy_timeout(
    pg_url: str, receiver: tuple[str, list[bytes]]
) -> None:
    """A lock timeout or a deadlock (StoreLocked) is over once the other transaction is:
    the watcher exited with status 2 on it."""
    url, received = receiver
    with tokenstore.open(pg_url, webhook_allow=["127.0.0.1/32"]) as store:
        store.webhooks.create("users", "tokenstore.User", url)
    quick = f"{pg_url}?options=-c%20lock_timeout%3D200"  # the URL's own setting wins
    proc = watcher(pg_url, ["--db", quick], "0.1s")
    try:
        with psycopg.connect(pg_url) as holder:  # holds the lock for a few of its rounds
            holder.execute("LOCK TABLE tokenstore_change_event IN ACCESS EXCLUSIVE MODE")
            time.sleep(1.5)
            holder.rollback()
        _db.edit(
            pg_url,
            "INSERT INTO tokenstore_user (username, is_superuser, created_at) "
            "VALUES ('watched', FALSE, '2024-01-01T00:00:00.000Z')",
        )
        deadline = time.monotonic() + 20
        while not received and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert [json.loads(body)["data"]["fields"]["username"] for body in received] == ["watched"]
    assert "the database stayed locked for 0.2 s (" in err and "trying again" in err
    assert "Traceback" not in err


def test_dispatch_watch_outlives_the_server_ending_its_connections(
    pg_url: str, receiver: tuple[str, list[bytes]]
) -> None:
    """A PostgreSQL restart (here: the server ending the watcher's sessions) is ridden out."""
    url, received = receiver
    with tokenstore.open(pg_url, webhook_allow=["127.0.0.1/32"]) as store:
        store.webhooks.create("users", "tokenstore.User", url)
    proc = watcher(pg_url, [], "0.2s", env={**os.environ, "TOKENSTORE_DB": pg_url})
    try:
        _db.edit(
            pg_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        time.sleep(0.5)
        _db.edit(
            pg_url,
            "INSERT INTO tokenstore_user (username, is_superuser, created_at) "
            "VALUES ('watched', FALSE, '2024-01-01T00:00:00.000Z')",
        )
        deadline = time.monotonic() + 20
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert [json.loads(body)["data"]["fields"]["username"] for body in received] == ["watched"]
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "app-password" not in err


def test_a_delivered_attempt_is_recorded_in_one_statement(
    pg_url: str, receiver: tuple[str, list[bytes]]
) -> None:
    """Every statement is a round trip and the driver's work on both sides, after every
    send: the delivery's outcome and the hook's health go as one statement, in its own
    transaction, and both are written."""
    url, received = receiver
    with tokenstore.open(pg_url, webhook_allow=["127.0.0.1/32"]) as store:
        hook = store.webhooks.create("users", "tokenstore.User", url)
        store.users.create("first")  # the hook's first success is written
        statements = _db.statements_during(store, lambda: store.users.create("second"))
        after_send = statements[statements.index("COMMIT") + 1 :]
        assert len(after_send) == 1 and after_send[0].startswith("WITH"), after_send
        assert [d.status for d in store.webhooks.deliveries(hook)] == ["delivered"] * 2
        with store.db.connection().cursor() as cur:  # the hook's streak was reset in it
            cur.execute("UPDATE tokenstore_outbound_webhook SET failure_count = 3")
        store.users.create("third")
        assert store.webhooks.get(hook.abid).failure_count == 0
    assert len(received) == 3


def test_a_delivery_another_process_took_meanwhile_is_passed_over_under_repeatable_read(
    pg_url: str, receiver: tuple[str, list[bytes]]
) -> None:
    """Under REPEATABLE READ or SERIALIZABLE (a database's default), the update that takes a
    due delivery fails with a serialization failure when another process changed the row
    while it waited, where READ COMMITTED finds the row taken and goes on: deliver_due
    raised StoreLocked and sent nothing more, so processes running it at once kept failing."""
    url, received = receiver
    rr = f"{pg_url}?options=-c%20default_transaction_isolation%3Drepeatable%5C%20read"
    with tokenstore.open(rr, webhook_allow=["127.0.0.1/32"], sync_budget=0) as store:
        hook = store.webhooks.create("users", "tokenstore.User", url)
        store.users.create("first")
        store.users.create("second")
        taken = store.webhooks.deliveries(hook)[-1]  # the oldest: deliver_due tries it first
        with psycopg.connect(pg_url) as other:  # another process sends it meanwhile
            other.execute(
                "UPDATE tokenstore_webhook_delivery SET status = 'delivered', "
                "next_attempt_at = NULL WHERE id = %s",
                (taken.id.hex,),
            )

            def commit_once_waited_for() -> None:
                waiting = "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                deadline = time.monotonic() + 10
                while not _db.rows(pg_url, waiting) and time.monotonic() < deadline:
                    time.sleep(0.02)
                other.commit()

            committer = threading.Thread(target=commit_once_waited_for)
            committer.start()
            try:
                assert store.webhooks.deliver_due() == 1
            finally:
                committer.join()
    assert [json.loads(body)["data"]["fields"]["username"] for body in received] == ["second"]
