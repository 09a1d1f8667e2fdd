"""What the admin page's tests share: a loopback webhook receiver and `tokenstore serve`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import tokenstore

Received = list[tuple[dict[str, str], bytes]]


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


@contextmanager
def receiving() -> Iterator[tuple[str, Received, list[int]]]:
    """An endpoint on 127.0.0.1: its URL, what it received, and ``[status]`` it answers."""
    received: Received = []
    status = [200]
    handler = type("Handler", (_Receiver,), {"received": received, "status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received, status
    finally:
        server.shutdown()
        server.server_close()


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
