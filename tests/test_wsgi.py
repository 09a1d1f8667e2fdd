"""TokenAuthMiddleware behind a real WSGI server on 127.0.0.1, called with requests."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import pytest
import requests
from conftest import Clock

import tokenstore._store
from tokenstore import Store
from tokenstore._errors import ValidationError
from tokenstore._wsgi import TokenAuthMiddleware

START = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """The access log would print query strings, api_key included; tests keep stderr clean."""


def echo(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The protected application: says which token the middleware handed it."""
    token = environ["tokenstore.token"]
    body = json.dumps({"abid": token.abid, "scopes": token.scopes}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


def serve(app: WSGIApplication) -> Iterator[str]:
    server = make_server(
        "127.0.0.1", 0, app, server_class=ThreadingWSGIServer, handler_class=QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def url(ts: Store) -> Iterator[str]:
    yield from serve(TokenAuthMiddleware(echo, ts))


@pytest.fixture
def scoped_url(ts: Store) -> Iterator[str]:
    yield from serve(TokenAuthMiddleware(echo, ts, scope="write", header="X-ArchiveBox-API-Key"))


def refused(response: requests.Response, status: int) -> str:
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    message: str = response.json()["error"]
    assert message
    return message


def test_missing_token_is_401_with_a_json_error(url: str) -> None:
    message = refused(requests.get(url, timeout=5), 401)
    assert "X-API-Key" in message and "Bearer" in message and "api_key" in message
    placeholder = requests.get(url, headers={"X-API-Key": "null"}, timeout=5)
    assert refused(placeholder, 401) == message


@pytest.mark.parametrize("where", ["header", "archivebox", "bearer", "query"])
def test_a_valid_token_reaches_the_app_from_every_place(ts: Store, url: str, where: str) -> None:
    token, secret = ts.tokens.create()
    sent: dict[str, Any] = {
        "header": {"headers": {"X-API-Key": secret}},
        "archivebox": {"headers": {"X-ArchiveBox-API-Key": secret}},  # docs/archivebox.md
        "bearer": {"headers": {"Authorization": f"bearer {secret}"}},
        "query": {"params": {"api_key": secret}},
    }[where]
    response = requests.get(url, timeout=5, **sent)
    assert response.status_code == 200
    assert response.json()["abid"] == token.abid


def test_invalid_expired_and_revoked_tokens_are_401(ts: Store, clock: Clock, url: str) -> None:
    _, secret = ts.tokens.create()
    changed = secret[:10] + ("B" if secret[10] != "B" else "C") + secret[11:]
    response = requests.get(url, headers={"X-API-Key": changed}, timeout=5)
    assert "checksum" in refused(response, 401)
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert changed not in response.text and secret[4:34] not in response.text

    _, expiring_secret = ts.tokens.create(expires=timedelta(minutes=5))
    revoked, revoked_secret = ts.tokens.create()
    ts.tokens.revoke(revoked)
    clock.now = START + timedelta(minutes=5, milliseconds=1)
    response = requests.get(url, headers={"X-API-Key": expiring_secret}, timeout=5)
    assert "expired" in refused(response, 401) and expiring_secret not in response.text
    response = requests.get(url, headers={"Authorization": f"Bearer {revoked_secret}"}, timeout=5)
    assert "revoked" in refused(response, 401) and revoked_secret not in response.text


def test_missing_scope_is_403(ts: Store, scoped_url: str) -> None:
    _, reader = ts.tokens.create(scopes=["read"])
    writer, writer_secret = ts.tokens.create(scopes=["read", "write"])
    _, unrestricted = ts.tokens.create()
    response = requests.get(scoped_url, headers={"X-ArchiveBox-API-Key": reader}, timeout=5)
    assert "lacks scope 'write'" in refused(response, 403)
    assert response.headers["WWW-Authenticate"] == (
        'Bearer error="insufficient_scope", scope="write"'
    )
    response = requests.get(scoped_url, headers={"X-ArchiveBox-API-Key": writer_secret}, timeout=5)
    assert response.status_code == 200 and response.json()["abid"] == writer.abid
    response = requests.get(scoped_url, headers={"X-ArchiveBox-API-Key": unrestricted}, timeout=5)
    assert response.status_code == 200
    # The default header is not read when another is configured.
    refused(requests.get(scoped_url, headers={"X-API-Key": writer_secret}, timeout=5), 401)


def test_concurrent_requests(ts: Store, url: str) -> None:
    issued = [ts.tokens.create() for _ in range(4)]
    failures: list[str] = []

    def client(n: int) -> None:
        with requests.Session() as session:
            for i in range(25):
                token, secret = issued[(n + i) % len(issued)]
                response = session.get(url, headers={"X-API-Key": secret}, timeout=5)
                if response.status_code != 200 or response.json()["abid"] != token.abid:
                    failures.append(f"{response.status_code} {response.text}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_a_bad_scope_is_refused_at_construction(ts: Store) -> None:
    with pytest.raises(ValidationError, match="scope"):
        TokenAuthMiddleware(echo, ts, scope="Write Access")


def test_the_store_s_api_key_header_is_the_default(db_path: Path, clock: Clock) -> None:
    store = tokenstore._store.open(db_path, clock=clock, api_key_header="X-ArchiveBox-API-Key")
    try:
        _, secret = store.tokens.create()
        for url in serve(TokenAuthMiddleware(echo, store)):
            response = requests.get(url, headers={"X-ArchiveBox-API-Key": secret}, timeout=5)
            assert response.status_code == 200
            response = requests.get(url, headers={"X-API-Key": secret}, timeout=5)
            assert "X-ArchiveBox-API-Key header" in refused(response, 401)
    finally:
        store.close()


def test_what_is_not_an_app_or_a_store_is_refused_at_construction(ts: Store) -> None:
    with pytest.raises(ValidationError, match="app must be a WSGI application"):
        TokenAuthMiddleware(None, ts)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"store must be a tokenstore\.Store"):
        TokenAuthMiddleware(echo, None)  # type: ignore[arg-type]


def test_an_environ_without_a_text_query_string_is_a_401(ts: Store) -> None:
    """A server that puts bytes (or None) there breaks PEP 3333, but is no 500 of ours."""
    middleware = TokenAuthMiddleware(echo, ts)
    started: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started.append(status)

    for query in (b"api_key=x", None):
        body = middleware({"QUERY_STRING": query, "REQUEST_METHOD": "GET"}, start_response)
        assert started.pop() == "401 Unauthorized"
        assert "API token required" in json.loads(b"".join(body))["error"]
