"""Shared fixtures: every test gets a real store of its own, on SQLite and on PostgreSQL.

Tests that use ``db_path`` (directly or through ``store``) run twice: once
on an SQLite file in their temporary folder, once on a fresh database of a
PostgreSQL server. The server is a throwaway cluster started for the session
from the machine's binaries (see ``_pg_server``), or the one named by
``TOKENSTORE_TEST_PG_URL`` (its role must be allowed to create databases).
Without either, the PostgreSQL half is skipped, except under ``CI=true``,
where that is a failure. Tests about the SQLite file itself carry the
``sqlite_only`` mark.
"""

from __future__ import annotations

import itertools
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import _pg_server
import pytest

import tokenstore
import tokenstore._store
from tokenstore import Store

BACKENDS = ("sqlite", "postgres")
_database_numbers = itertools.count()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only: about the SQLite file itself")
    _compile_for_children()


def _compile_for_children() -> None:
    """Compile tokenstore and the tests' helpers once, for the processes the tests start.

    Where PYTHONDONTWRITEBYTECODE is set (as on these machines), no process
    keeps what it compiled, so every ``tokenstore`` command a test ran
    compiled the whole package from source again: a third of each command's
    time, and minutes of the suite's. compileall writes the ``__pycache__``
    folders Python would have written without the setting (git ignores
    them); a cache prefix instead would leave the tree alone but hide every
    other module's compiled files from the children.
    """
    sources = [Path(tokenstore.__file__).parent, Path(__file__).parent]
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", *map(str, sources)],
        stdout=subprocess.DEVNULL,
        check=True,
        timeout=120,
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        only_sqlite = metafunc.definition.get_closest_marker("sqlite_only") is not None
        metafunc.parametrize("backend", BACKENDS[:1] if only_sqlite else BACKENDS)


def missing(what: str) -> NoReturn:
    """Skip a test for a program the machine lacks; under ``CI=true``, fail it: CI has them all."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI needs {what}")
    pytest.skip(what)


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A URL whose role may create databases: the given server's, or a throwaway one's."""
    given = os.environ.get("TOKENSTORE_TEST_PG_URL")
    if given:
        yield given
        return
    if _pg_server.binaries() is None:
        missing("PostgreSQL: no binaries (apt-get install postgresql, or TOKENSTORE_TEST_PG_URL)")
    server = _pg_server.start()
    try:
        yield server.url
    finally:
        server.stop()


def _admin(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True)


class _Databases:
    """Databases made ahead of the tests, and used ones dropped behind them.

    Making a database costs the server a tenth of a second or more, longer
    than most tests take, and a thousand tests each need one: ``WORKERS``
    threads of their own make and drop them while the tests run, on the
    other core. A database is made when a test takes one, so ``WORKERS``
    are on their way when the next test asks.
    """

    WORKERS = 3

    def __init__(self, admin_url: str, options: str = "") -> None:
        self.admin_url = admin_url
        self.options = options
        self._ready: queue.Queue[str | BaseException] = queue.Queue()
        # A name to drop; "" to make one; None to stop.
        self._jobs: queue.Queue[str | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._work, name="test-databases", daemon=True)
            for _ in range(self.WORKERS)
        ]
        for thread in self._threads:
            self._jobs.put("")
            thread.start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                if job:
                    _drop(self.admin_url, job)
                else:
                    self._ready.put(_create(self.admin_url, self.options))
            except BaseException as exc:  # the waiting test raises it
                self._ready.put(exc)

    def take(self) -> str:
        self._jobs.put("")
        made = self._ready.get(timeout=120)
        if isinstance(made, BaseException):
            raise made
        return made

    def give_back(self, name: str) -> None:
        self._jobs.put(name)

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=120)
        while not self._ready.empty():
            made = self._ready.get()
            if isinstance(made, str):
                _drop(self.admin_url, made)


@pytest.fixture(scope="session")
def _databases_ahead(pg_admin_url: str) -> Iterator[_Databases]:
    databases = _Databases(pg_admin_url)
    try:
        yield databases
    finally:
        databases.close()


@pytest.fixture(scope="session")
def _stores_ahead(pg_admin_url: str) -> Iterator[_Databases]:
    """As ``_databases_ahead``, but each database a copy of one a store was opened on once.

    Opening a store on an empty database makes its schema, about a tenth
    of a second, and most tests only want a store to work with. They get a
    copy (``CREATE DATABASE ... TEMPLATE``) of a database that
    ``tokenstore.open`` prepared at the start of the session; the tests
    that ask for ``pg_url`` alone still see the schema made from nothing.
    """
    template = _create(pg_admin_url)
    tokenstore.open(_url_of(pg_admin_url, template)).close()
    with _admin(pg_admin_url) as conn:  # a copy fails while anyone (autovacuum) is in it
        conn.execute(f'ALTER DATABASE "{template}" ALLOW_CONNECTIONS false')
    databases = _Databases(pg_admin_url, f'TEMPLATE "{template}"')
    try:
        yield databases
    finally:
        databases.close()
        _drop(pg_admin_url, template)


# The fixtures that open a store on the test's database: it may already hold the schema.
_OPENING_FIXTURES = frozenset({"store", "ts", "store_file"})


@pytest.fixture
def pg_url(pg_admin_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database on the test server, dropped after the test.

    It is empty, unless the test opens its store through a fixture: then
    it is a copy of one holding the schema (see ``_stores_ahead``).
    """
    opens = not _OPENING_FIXTURES.isdisjoint(request.fixturenames)
    databases = request.getfixturevalue("_stores_ahead" if opens else "_databases_ahead")
    name = databases.take()
    try:
        yield _url_of(pg_admin_url, name)
    finally:
        databases.give_back(name)


def _create(admin_url: str, options: str = "") -> str:
    name = f"tokenstore_test_{os.getpid()}_{next(_database_numbers)}"
    with _admin(admin_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}" {options}')
    return name


def _url_of(admin_url: str, name: str) -> str:
    return urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))


@contextmanager
def new_database(admin_url: str, options: str = "") -> Iterator[str]:
    """The URL of a new database made with these ``CREATE DATABASE`` options, then dropped."""
    name = _create(admin_url, options)
    try:
        yield _url_of(admin_url, name)
    finally:
        _drop(admin_url, name)


def _drop(admin_url: str, name: str) -> None:
    """Drop a test database; FORCE ends the test's leftover connections.

    It cannot end an autovacuum worker (a superuser's) that happens to be in
    the database: those finish quickly, so try again a few times.
    """
    import psycopg

    with _admin(admin_url) as conn:
        for attempt in range(50):
            try:
                conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
                return
            except psycopg.errors.InsufficientPrivilege:
                if attempt == 49:
                    raise
                time.sleep(0.1)


@pytest.fixture
def db_path(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Path | str:
    """Where the test's store lives: an SQLite file, or a PostgreSQL URL."""
    if backend == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return tmp_path / "store.sqlite3"


@pytest.fixture
def store_file(db_path: Path) -> Path:
    """An existing store at ``db_path``: every command but ``init`` needs one."""
    tokenstore.open(db_path).close()
    return db_path


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    """A fresh store on a real file; loopback is allowed so tests can run local receivers."""
    s = tokenstore._store.open(db_path, webhook_allow=["127.0.0.1/32", "::1/128", "localhost"])
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home folder of the test's own (``$HOME``), the working folder its parent: what a
    path beginning with '~' would have meant."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    monkeypatch.chdir(tmp_path)
    return folder


class Clock:
    """A store clock the test moves by hand (``tokenstore.open(..., clock=clock)``).

    It starts at ``now`` (default: the real time in whole seconds, which HTTP
    dates can express) and moves only when told.
    """

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta | None = None, **parts: float) -> datetime:
        self.now += (delta or timedelta()) + timedelta(**parts)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ts(db_path: Path, clock: Clock) -> Iterator[Store]:
    """A store on a real file whose clock the test controls."""
    s = tokenstore._store.open(db_path, clock=clock)
    try:
        yield s
    finally:
        s.close()
