"""A tiny webhook receiver that verifies Standard Webhooks signatures.

It exists for demos, tests and local tools that want to react to a store's
webhooks without a web framework, using only the standard library. It is not
meant to face the internet: it has no TLS, and a thread per connection (up
to a bound).

Responses follow what senders expect: 2xx only after the event was handled
(so a crash in ``on_event`` leads to a retry), 4xx for requests that will
never succeed, with a short JSON reason.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from ._errors import ValidationError, WebhookVerificationError
from ._inputs import check_int
from ._servers import BoundedThreads, check_listen_host, read_within
from ._signing import signing_key, verify_webhook

__all__ = ["MAX_BODY_BYTES", "make_receiver"]

MAX_BODY_BYTES = 1024 * 1024

EventCallback = Callable[[dict[str, Any], Mapping[str, str]], None]


class ReceiverServer(BoundedThreads, HTTPServer):
    """An HTTP server with a thread per connection, up to a bound (see ``_servers``)."""


class _ReceiverServer6(ReceiverServer):
    address_family = socket.AF_INET6


def make_receiver(
    host: str,
    port: int,
    secret: str,
    on_event: EventCallback,
    *,
    tolerance: int = 300,
) -> ReceiverServer:
    """Build (and bind) a receiver; the caller runs ``serve_forever()`` where it likes.

    ``on_event`` gets the decoded payload and the request headers, with
    lower-cased names. Use port 0 to let the OS pick a free port and read it
    back from ``server.server_address``.
    """
    check_listen_host(host, "host")
    check_int(port, "port", maximum=65535)
    signing_key(secret)  # fail at start-up, not on the first request
    if not callable(on_event):
        raise ValidationError(f"on_event must be a callable, got {type(on_event).__name__}")
    check_int(tolerance, "tolerance in seconds")

    class Handler(BaseHTTPRequestHandler):
        server_version = "tokenstore-receiver"
        protocol_version = "HTTP/1.1"
        timeout = 30  # a stalled client must not pin a thread forever
        #: From its first byte, how long a request has to arrive in all (seconds).
        request_deadline = 5.0

        def setup(self) -> None:
            super().setup()
            self.rfile = read_within(self, self.request_deadline)

        def log_message(self, format: str, *args: Any) -> None:
            """Stay quiet: the application decides what to print."""

        def handle(self) -> None:
            """Serve the connection; a client that hangs up or stalls is no error of ours."""
            with contextlib.suppress(ConnectionError, TimeoutError):
                super().handle()

        def _reply(self, status: int, error: str | None = None, **headers: str) -> None:
            body = b"" if error is None else json.dumps({"error": error}).encode()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            if body:
                self.send_header("Content-Type", "application/json")
            if status != 204:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body and self.command != "HEAD":
                self.wfile.write(body)

        def send_error(
            self, code: int, message: str | None = None, explain: str | None = None
        ) -> None:
            """http.server's own refusals (a garbled request, an unknown method) in JSON too."""
            self.close_connection = True
            self._reply(code, message or HTTPStatus(code).phrase)

        def _not_allowed(self) -> None:
            self._reply(405, "only POST is accepted", Allow="POST")

        do_GET = do_HEAD = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _not_allowed

        def _refuse_body(self, status: int, error: str) -> None:
            # The body stays unread, so the connection cannot be reused.
            self.close_connection = True
            self._reply(status, error)

        def _length(self) -> int | None:
            """The body's length, or None once the request has been refused for it."""
            if self.headers.get("Transfer-Encoding"):
                self._refuse_body(411, "send the body with a Content-Length header")
                return None
            lengths = self.headers.get_all("Content-Length", [])
            if not lengths:
                self._refuse_body(411, "Content-Length header is required")
                return None
            if len(lengths) > 1:  # which one a proxy in front went by cannot be known
                self._refuse_body(400, "Content-Length header appears more than once")
                return None
            digits = lengths[0].strip()
            if not (digits.isascii() and digits.isdigit()):
                self._refuse_body(400, "Content-Length header is not a number")
                return None
            # Thousands of digits would make int() refuse: such a length is too large anyway.
            digits = digits.lstrip("0") or "0"
            if len(digits) > len(str(MAX_BODY_BYTES)) or int(digits) > MAX_BODY_BYTES:
                self._refuse_body(413, f"body is larger than {MAX_BODY_BYTES} bytes")
                return None
            return int(digits)

        def handle_expect_100(self) -> bool:
            """A sender that asks before sending hears a refusal, not an invitation."""
            if self.command == "POST" and self._length() is None:
                return False
            return super().handle_expect_100()

        def _read_body(self) -> bytes | None:
            length = self._length()
            if length is None:
                return None
            try:
                body = self.rfile.read(length)
            except TimeoutError:
                self._refuse_body(408, "the body did not arrive in time")
                return None
            if len(body) < length:
                self._refuse_body(400, f"body ended after {len(body)} of {length} bytes")
                return None
            return body

        def do_POST(self) -> None:
            body = self._read_body()
            if body is None:
                return
            try:  # the headers as received: a signed one given twice is refused
                payload = verify_webhook(secret, self.headers, body, tolerance=tolerance)
            except WebhookVerificationError as exc:
                self._reply(401, str(exc))
                return
            if not isinstance(payload, dict):
                self._reply(400, "payload must be a JSON object")
                return
            headers = {name.lower(): value for name, value in self.headers.items()}
            try:
                on_event(payload, headers)
            except BaseException:
                # Tell the sender to retry; the traceback goes to handle_error.
                self.close_connection = True
                self._reply(500, "the receiver failed to handle the event")
                raise
            self._reply(204)

    server_class = _ReceiverServer6 if ":" in host else ReceiverServer
    try:
        return server_class((host.strip("[]"), port), Handler)  # "[::1]" as in a URL
    except OSError as exc:  # a taken port, a host that is not ours or does not resolve
        raise ValidationError(f"cannot listen on {host} port {port}: {exc.strerror}") from None
    except (TypeError, UnicodeError):  # the socket module cannot encode it as a host name
        raise ValidationError(f"cannot listen on {host!r}: not a host name or address") from None
