"""Shared fixtures: every test gets real files in its own temporary folder."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import tokenstore
import tokenstore._store
from tokenstore import Store


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
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
