"""``tokenstore serve``: the admin page on a threaded wsgiref server.

Loopback only unless the caller says otherwise: the page carries sessions
in cookies and secrets shown once, which must not cross a network in clear
text, so any other address needs ``public=True`` and gets a warning to put
TLS in front.

On loopback it also answers only to names of this machine. A web page can
point a name of its own at 127.0.0.1 (DNS rebinding) and then reach the
admin page as its own origin; the ``Host`` header its requests carry is
that name. A TLS proxy in front that passes its own public name as
``Host`` is the one honest sender of such requests: ``public=True`` says
the page is reached that way, and lifts the check.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import re
import socket
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import tokenstore
from tokenstore._inputs import check_flag, check_int, check_text
from tokenstore._servers import BoundedThreads, check_listen_host, read_within

from ._app import make_app
from ._http import shown_path

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

#: C0 and C1 control characters, written as ``\\xNN`` in the log as http.server does its own:
#: a request line holding ESC must not drive the operator's terminal.
_CONTROL = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))}


class _Answer(io.BufferedIOBase):
    """The stream a response is written to, where a client that stops reading has hung up.

    A write that times out (the client read nothing while the socket's
    timeout ran) is a ``ConnectionAbortedError``, which wsgiref takes for a
    client gone, quietly: its own handling of a ``TimeoutError`` would print a
    traceback and try to answer 500 on a connection nobody reads.
    """

    def __init__(self, stream: io.BufferedIOBase) -> None:
        self.stream = stream

    def write(self, data: Any) -> int:
        try:
            return self.stream.write(data)
        except TimeoutError:
            raise ConnectionAbortedError("the client stopped reading the answer") from None

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        super().close()  # flushes first
        self.stream.close()


class _QuietHandler(WSGIRequestHandler):
    timeout = 30  # a client that stalls mid-request must not hold its thread for good
    #: Once the request's head is in, the longest silence of the client (seconds). A form
    #: body is a few hundred bytes sent with the head: one that stops arriving gets its
    #: 408 now, rather than when the idle wait for a request would end; and a client that
    #: reads nothing of the answer for that long is taken to have hung up.
    body_timeout = 2.0
    #: From its first byte, how long a request has to arrive in all, head and body
    #: (seconds): one trickled in a byte at a time is cut off then.
    request_deadline = 5.0
    #: What an error found before the request line's version is read is answered as: the
    #: standard library's default, HTTP/0.9, sends the error page without a status line.
    default_request_version = "HTTP/1.0"
    raw_requestline: bytes  # set by WSGIRequestHandler.handle, which typeshed does not say

    def setup(self) -> None:
        super().setup()
        self.rfile = read_within(self, self.request_deadline)
        self.wfile = _Answer(self.wfile)

    def parse_request(self) -> bool:
        """Refuse HTTP/0.9 at once (it has no headers to wait for); then read the head.

        Two Content-Length headers that differ are refused too (RFC 9112): the
        page would read the body by the first, which wsgiref passes on, while
        whatever framed the request may have gone by the other. So is an
        HTTP/1.1 request without ``Host`` (RFC 9112, section 3.2).
        """
        if len(self.raw_requestline.split()) == 2:
            self.command = ""
            self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
            return self._refuse_http_0_9()
        if not super().parse_request():
            return False
        major, minor = self.request_version.removeprefix("HTTP/").split(".")  # super() checked
        version = (int(major), int(minor))
        if version < (1, 0):  # named, as in "GET / HTTP/0.9": wsgiref would answer headerless
            return self._refuse_http_0_9()
        if len({length.strip() for length in self.headers.get_all("Content-Length", [])}) > 1:
            self.send_error(400, "Content-Length headers that differ")
            return False
        if version >= (1, 1) and "Host" not in self.headers:
            self.send_error(400, f"an {self.request_version} request needs a Host header")
            return False
        if not self._take_absolute_form():
            return False
        self.connection.settimeout(self.body_timeout)
        return True

    def _take_absolute_form(self) -> bool:
        """Serve a target in absolute form (``GET http://host/path``) as its path on its host.

        Servers must accept the form (RFC 9112, section 3.2.2), and its
        authority then stands for ``Host``, whatever the header says: so it is
        the name the check of this machine's names (``_ThisMachineOnly``)
        judges. False once a target that cannot be split has been answered.
        """
        scheme, separator, _ = self.path.partition("://")
        if not separator or scheme.lower() not in ("http", "https"):
            return True
        try:
            target = urlsplit(self.path)
        except ValueError:  # an authority such as [::1 that is no address
            self.send_error(400, "a request target in absolute form that is not a URL")
            return False
        self.path = (target.path or "/") + (f"?{target.query}" if target.query else "")
        del self.headers["Host"]
        self.headers["Host"] = target.netloc
        return True

    def _refuse_http_0_9(self) -> bool:
        """A 400 with a status line and headers, which an HTTP/0.9 answer would not have."""
        self.request_version = self.default_request_version
        self.send_error(400, "HTTP/0.9 requests are not served")
        return False

    def log_message(self, format: str, *args: Any) -> None:
        """One line per request on stderr, as wsgiref does, but without the query string."""
        path = getattr(self, "path", "")  # unset when the request line could not be read
        line = f"{self.command or '-'} {shown_path(path.split('?')[0])}".translate(_CONTROL)
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


#: ``Host`` as HTTP has it: a name or a bracketed IPv6 address, then an optional port of digits.
#: Nothing else: user information, a path or a second port are no part of a Host, nor is
#: a comma, which is how wsgiref joins two Host headers (RFC 9112 refuses a second one).
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+(?:%[\w.~-]+)?\]|[^\s\[\]:@/?#\\,]*)(?::[0-9]*)?")


def _names_this_machine(host: str) -> bool:
    """Whether a ``Host`` names this machine: localhost, ``*.localhost``, a loopback address.

    A Host a browser would not send (``attacker.example@127.0.0.1``) is not
    parsed leniently into one of ours: it names nothing, and is refused.
    """
    found = _HOST.fullmatch(host)
    if found is None:
        return False
    name = found[1].lower().removesuffix(".")  # a fully qualified name ends in one dot
    if name.endswith(".localhost"):
        return all(name.split("."))  # no empty label
    return is_loopback(name)  # is_loopback knows localhost


class _ThisMachineOnly:
    """Refuse a request whose ``Host`` is another name (see the module's docstring).

    A request without ``Host`` (HTTP/1.0) comes from no browser, and passes.
    """

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        host = environ.get("HTTP_HOST")
        if host is None or _names_this_machine(host):
            return self.app(environ, start_response)
        body = (
            f"Host {host[:100]!a} is not a name of this machine: the admin page on a "
            "loopback address answers only to localhost and loopback addresses (behind a "
            "proxy that passes its own Host, serve it with --public)\n"
        ).encode()
        start_response(
            "400 Bad Request",
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("X-Content-Type-Options", "nosniff"),
            ],
        )
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]  # no body after HEAD


def public_warning(host: str) -> str | None:
    """What to tell the operator when the page listens beyond this machine."""
    check_text(host, "host")
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
    On loopback, requests that name another host are refused with 400 unless
    ``public`` (the page is reached through a proxy that passes its own name).
    """
    check_listen_host(host, "--host", "0.0.0.0 for all, with --public")
    check_flag(public, "public")
    if not is_loopback(host) and not public:
        raise tokenstore.ValidationError(
            f"--host {host!r} is not a loopback address: the admin page listens on "
            "127.0.0.1 unless --public is given (then put TLS in front of it)"
        )
    check_int(port, "--port", maximum=65535)
    server_class = _AdminServer6 if ":" in host else AdminServer
    app: WSGIApplication = make_app(store)
    if is_loopback(host) and not public:
        app = _ThisMachineOnly(app)
    try:
        server = make_server(host.strip("[]"), port, app, server_class, handler_class=_QuietHandler)
    except OSError as exc:  # a taken port, an address that is not this machine's
        raise tokenstore.ValidationError(
            f"cannot listen on {host} port {port}: {exc.strerror}"
        ) from None
    except (TypeError, UnicodeError):  # the socket module cannot encode it as a host name
        raise tokenstore.ValidationError(f"--host {host!r} is not a host name or address") from None
    server.store = store
    return server
