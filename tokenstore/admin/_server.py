"""``tokenstore serve``: the admin page on a threaded wsgiref server.

Loopback only unless the caller says otherwise: the page carries sessions
in cookies and secrets shown once, which must not cross a network in clear
text, so any other address needs ``public=True`` and gets a warning to put
TLS in front.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import sys
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import tokenstore
from tokenstore._servers import BoundedThreads

from ._app import make_app

#: C0 and C1 control characters, written as ``\\xNN`` in the log as http.server does its own:
#: a request line holding ESC must not drive the operator's terminal.
_CONTROL = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))}


class _QuietHandler(WSGIRequestHandler):
    timeout = 30  # a client that stalls mid-request must not hold its thread for good

    def log_message(self, format: str, *args: Any) -> None:
        """One line per request on stderr, as wsgiref does, but without the query string."""
        path = getattr(self, "path", "")  # unset when the request line could not be read
        line = f"{self.command or '-'} {path.split('?')[0]}".translate(_CONTROL)
        sys.stderr.write(f"{self.address_string()} {line}\n")

    def handle(self) -> None:
        """Serve the connection; a client that hangs up or stalls is no error of the page's."""
        with contextlib.suppress(ConnectionError, TimeoutError):
            super().handle()


class AdminServer(BoundedThreads, WSGIServer):
    """A connection per thread, up to a bound; each thread's database connection is closed."""

    store: tokenstore.Store

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.store.webhooks.close()
            self.store.db.close()


class _AdminServer6(AdminServer):
    address_family = socket.AF_INET6


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def public_warning(host: str) -> str | None:
    """What to tell the operator when the page listens beyond this machine."""
    if is_loopback(host):
        return None
    return (
        f"warning: the admin page listens on {host}, beyond this machine: put TLS in front "
        "of it (session cookies and secrets shown once travel in clear text)"
    )


def make_admin_server(
    store: tokenstore.Store, host: str = "127.0.0.1", port: int = 8787, public: bool = False
) -> AdminServer:
    """A server for the admin page of ``store``, bound but not yet serving.

    Refuses any address but loopback unless ``public``; port 0 picks a free one.
    """
    if not is_loopback(host) and not public:
        raise tokenstore.ValidationError(
            f"--host {host!r} is not a loopback address: the admin page listens on "
            "127.0.0.1 unless --public is given (then put TLS in front of it)"
        )
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise tokenstore.ValidationError(f"--port must be between 0 and 65535, got {port!r}")
    server_class = _AdminServer6 if ":" in host else AdminServer
    try:
        server = make_server(
            host.strip("[]"), port, make_app(store), server_class, handler_class=_QuietHandler
        )
    except OSError as exc:  # a taken port, an address that is not this machine's
        raise tokenstore.ValidationError(
            f"cannot listen on {host} port {port}: {exc.strerror}"
        ) from None
    except (TypeError, UnicodeError):  # the socket module cannot encode it as a host name
        raise tokenstore.ValidationError(f"--host {host!r} is not a host name or address") from None
    server.store = store
    return server
