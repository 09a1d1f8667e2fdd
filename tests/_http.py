"""A recording HTTP/1.1 server on 127.0.0.1 for the delivery tests: real sockets, no mocks."""

from __future__ import annotations

import contextlib
import select
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Hit:
    """One request as the server saw it."""

    method: str
    path: str
    headers: Message
    body: bytes
    client_port: int

    def header_dict(self) -> dict[str, str]:
        return {name: value for name, value in self.headers.items()}


def answer(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> None:
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def ok(handler: BaseHTTPRequestHandler) -> None:
    answer(handler, 200, b"thanks")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real receivers do
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        receiver = self.server.receiver
        receiver.hits.append(
            Hit(self.command, self.path, self.headers, body, self.client_address[1])
        )
        receiver.respond(self)

    do_GET = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def handle(self) -> None:
        # The sender may hang up early, on purpose in some tests.
        with contextlib.suppress(ConnectionError, TimeoutError):
            super().handle()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: Receiver


@dataclass
class Receiver:
    """A stdlib HTTP/1.1 server on 127.0.0.1 that records requests and answers as told."""

    respond: Callable[[BaseHTTPRequestHandler], None] = ok
    hits: list[Hit] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.receiver = self
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,))
        self.thread.daemon = True
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (it was just bound, then given back)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def taken_port() -> Iterator[int]:
    """A port held on both 127.0.0.1 and ::1 for the block: a server started there fails at once.

    The port is free on ::1 when drawn, but may be in use on 127.0.0.1 (another test's
    client socket, a database connection); another is drawn then, a bounded number of times.
    """
    for _ in range(50):
        with socket.create_server(("::1", 0), family=socket.AF_INET6) as six:
            port = int(six.getsockname()[1])
            try:
                four = socket.create_server(("127.0.0.1", port))
            except OSError:
                continue
            with four:
                yield port
                return
    raise RuntimeError("no port was free on both 127.0.0.1 and ::1 in 50 draws")


def wait_listening(port: int, proc: subprocess.Popen[str] | None = None) -> None:
    """Until something takes connections on 127.0.0.1:``port`` (at most 20 s).

    ``proc``, the process that is to listen there, must not end meanwhile.
    """
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert proc is None or proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, f"nothing listens on port {port}"
            time.sleep(0.1)


def trickled(sock: socket.socket, data: bytes, within: float) -> bytes | None:
    """Send ``data`` a byte every 20 ms: what the server answered once it did (b"" for
    closing), or None if it still waited for more after ``within`` seconds."""
    started = time.monotonic()
    for byte in data:
        if select.select([sock], [], [], 0.02)[0]:
            break
        try:
            sock.sendall(bytes([byte]))
        except OSError:  # closed: what it answered before is still there to read
            break
        if time.monotonic() - started > within:
            return None
    try:
        return sock.recv(4096)
    except ConnectionResetError:
        return b""
