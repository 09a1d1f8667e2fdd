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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import _pg_server
import pytest

import tokenstore
import tokenstore._store
from tokenstore import Store

BACKENDS = ("sqlite", "postgres")
_databases = itertools.count()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only: about the SQLite file itself")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        only_sqlite = metafunc.definition.get_closest_marker("sqlite_only") is not None
        metafunc.parametrize("backend", BACKENDS[:1] if only_sqlite else BACKENDS)


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A URL whose role may create databases: the given server's, or a throwaway one's."""
    given = os.environ.get("TOKENSTORE_TEST_PG_URL")
    if given:
        yield given
        return
    if _pg_server.binaries() is None:
        reason = "no PostgreSQL binaries (apt-get install postgresql, or TOKENSTORE_TEST_PG_URL)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs PostgreSQL: {reason}")
        pytest.skip(reason)
    server = _pg_server.start()
    try:
        yield server.url
    finally:
        server.stop()


def _admin(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True)


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty database on the test server, dropped after the test."""
    with new_database(pg_admin_url) as url:
        yield url


@contextmanager
def new_database(admin_url: str, options: str = "") -> Iterator[str]:
    """The URL of a new database made with these ``CREATE DATABASE`` options, then dropped."""
    name = f"tokenstore_test_{os.getpid()}_{next(_databases)}"
    with _admin(admin_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}" {options}')
    try:
        yield urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
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
