"""Shared fixtures: every test gets real files in its own temporary folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import tokenstore.store
from tokenstore.store import Store


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store.sqlite3"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    """A fresh store on a real file; loopback is allowed so tests can run local receivers."""
    s = tokenstore.store.open(db_path, webhook_allow=["127.0.0.1/32", "::1/128", "localhost"])
    try:
        yield s
    finally:
        s.close()
