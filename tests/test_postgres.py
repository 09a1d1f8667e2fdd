"""The PostgreSQL backend where it differs from a file: URLs, the server, its connections.

The behaviour both backends share is tested everywhere else, on both; here
is what only a server has: URLs libpq parses, connections that time out, are
refused or are ended by the server, sessions that may only read.
"""

from __future__ import annotations

import socket
import time

import pytest

import tokenstore
from tokenstore import StoreError, ValidationError
from tokenstore import _postgres as postgres


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:SEK%ZZRIT@127.0.0.1:1/db",  # a broken %-escape in the password
        "postgresql://u:SEKRIT@[::1/db",  # an unclosed IPv6 bracket: libpq quotes the URL
        "postgresql://u:SEKRIT@127.0.0.1:1/db?bogus=1",  # a parameter libpq does not know
        "postgresql://u:SEKRIT@127.0.0.1:1/db?application_name=%ff",  # not UTF-8
        "postgresql://u:SEKRIT@127.0.0.1:1/db\x00",  # libpq would cut the name at the NUL
        "postgresql://u:SEKRIT@127.0.0.1:1/db\udc80",
    ],
)
def test_a_url_libpq_cannot_take_is_a_validation_error_without_its_password(url: str) -> None:
    with pytest.raises(ValidationError, match="PostgreSQL URL") as caught:
        tokenstore.open(url)
    assert "SEKRIT" not in str(caught.value) and "KRIT" not in str(caught.value)


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
