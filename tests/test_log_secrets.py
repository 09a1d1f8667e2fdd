"""No secret reaches a log record, at any level, from any logger, peewee's query log included.

The root logger is set to DEBUG with a handler that keeps every record, and
a store (on each backend) goes through everything that handles secrets: tokens issued, checked
and revoked, hooks made, changed, rotated, pinged, delivered (to a receiver
that answers, one that fails and a closed port) and deleted.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import peewee
import pytest
from _http import free_port

import tokenstore
from tokenstore import AuthenticationError, ValidationError
from tokenstore._credentials import token_digest
from tokenstore._models import ABIDModel


class Memo(ABIDModel):
    abid_prefix = "mem_"
    text = peewee.TextField(default="")


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def kept() -> Iterator[Keep]:
    root = logging.getLogger()
    handler = Keep()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def serve(status: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def everything_in(record: logging.LogRecord) -> str:
    parts = [record.getMessage(), repr(record.msg), repr(record.args)]
    if record.exc_info:
        parts.append("".join(traceback.format_exception(*record.exc_info)))
    return "\n".join(parts)


def test_no_secret_in_any_log_record(db_path: Path | str, kept: Keep) -> None:
    ok, failing = serve(204), serve(500)
    # on PostgreSQL, the URL's password too
    secrets: list[str] = [p for p in [urlsplit(str(db_path)).password] if p]
    try:
        store = tokenstore.open(
            db_path,
            webhook_allow=["127.0.0.1/32"],
            connect_timeout=0.5,
            read_timeout=0.5,
        )
        store.register(Memo)
        alice = store.users.create("alice")
        token, secret = store.tokens.create(alice, name="ci", scopes=["memos:read"])
        _, other_secret = store.tokens.create(alice, name="other")
        secrets += [secret, other_secret, token_digest(secret), token_digest(other_secret)]
        store.tokens.authenticate(secret, scope="memos:read")
        with pytest.raises(AuthenticationError):
            store.tokens.authenticate(secret, scope="memos:write")
        store.tokens.revoke(token)
        with pytest.raises(AuthenticationError):
            store.tokens.authenticate(secret)
        with pytest.raises(ValidationError):
            store.tokens.get(other_secret)

        hooks = []
        for name, port in (
            ("ok", ok.server_address[1]),
            ("failing", failing.server_address[1]),
            ("closed", free_port()),
        ):
            hook = store.webhooks.create(
                name,
                Memo,
                f"http://127.0.0.1:{port}/hook",
                auth_token=f"Bearer auth-{name}-5d1e9a",
                headers={"X-Api-Key": f"header-{name}-0c4f2b"},
            )
            hooks.append(hook)
            secrets += [hook.secret, f"auth-{name}-5d1e9a", f"header-{name}-0c4f2b"]
        first = hooks[0]
        store.webhooks.update(first, auth_token="Bearer changed-7e21aa")
        store.webhooks.update(first, headers={"X-Api-Key": "changed-header-91bd3c"})
        secrets += ["changed-7e21aa", "changed-header-91bd3c"]
        with pytest.raises(ValidationError):
            store.webhooks.update(first, auth_token="Bearer refused-2b7f4e\n")
        secrets.append("refused-2b7f4e")
        with pytest.raises(tokenstore.NotFound):
            store.webhooks.get(first.secret)

        Memo.create(text="hello")  # delivered to all three hooks
        for hook in hooks:
            store.webhooks.ping(hook)
            store.webhooks.rotate_secret(hook)
            secrets.append(hook.secret)
        Memo.create(text="again")
        store.webhooks.deliver_due()
        store.dispatch()
        store.webhooks.delete(hooks[1])
        store.close()
    finally:
        ok.shutdown()
        failing.shutdown()

    records = kept.records
    assert any(r.name == "peewee" and "tokenstore_outbound_webhook" in str(r.msg) for r in records)
    # an application's own statements keep their values
    assert any(r.name == "peewee" and "'again'" in str(r.msg) for r in records)
    leaks = [
        (r.name, r.levelname, secret)
        for r in records
        for secret in secrets
        if secret in everything_in(r)
    ]
    assert leaks == []
