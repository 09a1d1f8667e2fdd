"""What the admin page's tests share: a WSGI client, a loopback receiver, `tokenstore serve`."""

from __future__ import annotations

import html
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlencode, urlsplit
from wsgiref.util import setup_testing_defaults

import tokenstore
from tokenstore import admin

Received = list[tuple[dict[str, str], bytes]]
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
FORM = re.compile(r'<form method="post" action="([^"]*)".*?</form>', re.S)
HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


class Page:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.text = body.decode("utf-8")

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    @property
    def csrf(self) -> str:
        found = CSRF.search(self.text)
        assert found, self.text
        return found[1]

    def form(self, action: str) -> dict[str, str]:
        """The hidden fields of the page's form that posts to ``action``, as a browser sends
        them (CSRF token, versions, one-time form id)."""
        for found in FORM.finditer(self.text):
            if found[1] == action:
                return {name: html.unescape(value) for name, value in HIDDEN.findall(found[0])}
        raise AssertionError(f"no form posting to {action}: {self.text}")


class Client:
    """A browser of sorts: keeps the session cookie, follows nothing by itself."""

    def __init__(self, app: admin.AdminApp, script_name: str = "") -> None:
        self.app = app
        self.script_name = script_name
        self.cookie: str | None = None
        #: The session cookie's name: it carries the port (wsgiref's test defaults say 80).
        self.cookie_name = "tokenstore_admin_80"
        self.csrf = ""

    def request(
        self,
        method: str,
        path: str,
        form: dict[str, str] | None = None,
        csrf: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> Page:
        """``extra`` environ entries (headers, a raw body) override what the form would set."""
        target = urlsplit(path)
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": self.script_name,
            "PATH_INFO": target.path,
            "QUERY_STRING": target.query,
        }
        if self.cookie:
            environ["HTTP_COOKIE"] = f"{self.cookie_name}={self.cookie}"
        if method == "POST":
            fields = dict(form or {})
            if csrf:
                fields.setdefault("csrf", self.csrf)
            body = urlencode(fields).encode()
            environ["CONTENT_TYPE"] = "application/x-www-form-urlencoded"
            environ["CONTENT_LENGTH"] = str(len(body))
            environ["wsgi.input"] = io.BytesIO(body)
        environ.update(extra or {})
        setup_testing_defaults(environ)
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None):
            started.extend([status, headers])

        body = b"".join(self.app(environ, start_response))
        page = Page(int(started[0].split()[0]), started[1], body)
        cookie = page.header("Set-Cookie")
        if cookie:
            self.cookie_name, _, value = cookie.split(";")[0].partition("=")
            self.cookie = value or None
        found = CSRF.search(page.text)
        if found:
            self.csrf = found[1]
        return page

    def get(self, path: str) -> Page:
        return self.request("GET", path)

    def post(
        self,
        path: str,
        form: dict[str, str] | None = None,
        csrf: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> Page:
        return self.request("POST", path, form, csrf, extra)

    def sign_in(self, secret: str) -> Page:
        self.get("/login")
        page = self.post("/login", {"token": secret})
        if page.status == 303:
            self.get("/")  # the signed-in session's pages carry its own CSRF token
        return page


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[Received]
    status: ClassVar[list[int]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((dict(self.headers), body))
        self.send_response(self.status[0])
        self.send_header("Content-Length", "8")
        self.end_headers()
        self.wfile.write(b"received")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def signed_in(app: admin.AdminApp, store: tokenstore.Store) -> Client:
    """A client signed in with a new ``admin`` token of a new user ``root``."""
    _, secret = store.tokens.create(store.users.create("root"), name="admin", scopes=["admin"])
    browser = Client(app)
    assert browser.sign_in(secret).status == 303
    return browser


@contextmanager
def receiving() -> Iterator[tuple[str, Received, list[int]]]:
    """An endpoint on 127.0.0.1: its URL, what it received, and ``[status]`` it answers."""
    received: Received = []
    status = [200]
    handler = type("Handler", (_Receiver,), {"received": received, "status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received, status
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def running(store: tokenstore.Store) -> Iterator[Any]:
    """The admin page's server on a free loopback port, serving in a thread until the block ends."""
    server = admin.make_admin_server(store, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def connected(store: tokenstore.Store, timeout: float = 10) -> Iterator[socket.socket]:
    """A socket to the admin page's server (``running``), for requests no client would send."""
    with (
        running(store) as server,
        socket.create_connection(server.server_address[:2], timeout=timeout) as sock,
    ):
        yield sock


@contextmanager
def serving(db: Path, log: Path) -> Iterator[str]:
    """`tokenstore serve` on a free loopback port, loopback hooks allowed; yields its URL."""
    env = {**os.environ, "TOKENSTORE_DB": str(db)}
    env.pop("TOKENSTORE_WEBHOOK_ALLOW", None)
    tokenstore.open(db).close()  # only `init` creates a store
    command = [sys.executable, "-m", "tokenstore", "--allow", "127.0.0.1/32", "serve"]
    with log.open("w") as output:  # a file, not a pipe: a full pipe would stall the server
        server = subprocess.Popen([*command, "--port", "0"], stdout=output, stderr=output, env=env)
    try:
        deadline = time.monotonic() + 30
        while not (
            found := re.search(r"admin page on (http://127\.0\.0\.1:\d+)/", log.read_text())
        ):
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"serve did not start: {log.read_text()}"
            time.sleep(0.05)
        yield found[1]
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
