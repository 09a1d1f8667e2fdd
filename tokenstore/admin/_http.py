"""Just enough HTTP on top of WSGI: a request with its form and cookies, a response.

The admin page has a handful of plain forms, so the standard library is all
it needs; bodies are capped so a large POST cannot tie up the server.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, quote, urlencode, urlsplit
from wsgiref.types import StartResponse, WSGIEnvironment

from tokenstore._credentials import looks_like_secret

#: The largest form body read; the admin forms are far smaller.
MAX_FORM_BYTES = 64 * 1024

#: Sent with every page: nothing is cached, framed, loaded from elsewhere, or
#: left reachable from (or loadable by) a window of another site.
SECURITY_HEADERS = [
    ("Cache-Control", "no-store"),
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
]


class HTTPError(Exception):
    """Ends a request with this status and message (shown on an error page)."""

    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        #: Extra response headers, such as the ``Allow`` a 405 must carry.
        self.headers = headers or []


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)

    def send(self, start_response: StartResponse) -> Iterable[bytes]:
        phrase = HTTPStatus(self.status).phrase
        headers = [
            ("Content-Type", self.content_type),
            ("Content-Length", str(len(self.body))),
            *SECURITY_HEADERS,
            *self.headers,
        ]
        start_response(f"{self.status} {phrase}", headers)
        return [self.body]


def redirect(location: str, **query: str) -> Response:
    """303 See Other: after a POST the browser GETs the result, so a reload resends nothing."""
    where = header_path(location) + (f"?{urlencode(query)}" if query else "")
    return Response(303, headers=[("Location", where)])


def header_path(path: str) -> str:
    """A URL path fit for a header: line breaks, spaces, ``;`` and the rest percent-encoded.

    Paths are built from the mount point and from stored ABIDs and names,
    which a row edited by hand can fill with a line break: written into a
    header as they are, they would add headers of their own choosing.
    """
    return quote(path, safe="/%")


def shown_path(path: str) -> str:
    """A path as a message or the request log shows it: left out if a part of it looks like
    a secret (a token pasted into the address bar), as the API's messages leave them out.
    Its parts are what lies between slashes and dots, which no secret holds."""
    if looks_like_secret(path.replace("/", " ").replace(".", " ")):
        return "(a path holding a secret, not shown)"
    return path


def _names_host(source: str, host: str) -> bool:
    """Whether an ``Origin`` or ``Referer`` names ``host``; ``null`` or an unparseable
    one is no proof of coming from here."""
    try:
        return bool(host) and urlsplit(source.strip()).netloc.lower() == host
    except ValueError:
        return False


def _as_sent(text: str) -> str:
    """A path as the browser sent it: PEP 3333 hands over its bytes as Latin-1, not UTF-8.

    Routes are ASCII, so this changes only what a page says: "no page /é", not
    "/Ã©". Bytes that are not UTF-8 show as U+FFFD.
    """
    try:
        return text.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a server that decoded it already
        return text


class Request:
    """The parts of a WSGI environ the admin page reads."""

    def __init__(self, environ: WSGIEnvironment) -> None:
        self.environ = environ
        self.method: str = environ.get("REQUEST_METHOD", "GET")  # case-sensitive (RFC 9110)
        #: HEAD asks what GET would answer, headers only (RFC 9110): answered as GET is, it must
        #: leave nothing changed, neither the store nor the session.
        self.head = self.method == "HEAD"
        #: The method the page answers: GET's for a HEAD.
        self.reads = "GET" if self.head else self.method
        self.base: str = environ.get("SCRIPT_NAME", "").rstrip("/")
        self.path: str = _as_sent(environ.get("PATH_INFO", "")) or "/"
        self.query = {
            key: values[0] for key, values in parse_qs(environ.get("QUERY_STRING", "")).items()
        }
        self.secure = environ.get("wsgi.url_scheme") == "https"
        self._form: dict[str, str] | None = None

    def cross_site(self) -> bool:
        """Whether the browser says this request was started by another site.

        The CSRF token already stops forged forms; this refuses them even
        before, as Django does. ``Sec-Fetch-Site`` is set by the browser
        itself, so a proxy that rewrites ``Host`` does not confuse it. Only
        without it are ``Origin`` and ``Referer`` compared with ``Host``, each
        that is sent: an ``Origin`` of ``null`` (a sandboxed frame, a
        ``data:`` page) names no host of ours and is refused, and a foreign
        ``Referer`` is refused whatever ``Origin`` says. The page sends
        ``Referrer-Policy: same-origin``, so its own forms carry both.
        """
        fetch_site: str | None = self.environ.get("HTTP_SEC_FETCH_SITE")
        if fetch_site is not None:
            return fetch_site.strip().lower() not in ("same-origin", "none")
        host: str = self.environ.get("HTTP_HOST", "").strip().lower()
        sources = (self.environ.get(name) for name in ("HTTP_ORIGIN", "HTTP_REFERER"))
        return any(source and not _names_host(source, host) for source in sources)

    def port(self) -> str:
        """The port the browser reached: the one its ``Host`` names (what its cookie jar
        sees, behind a proxy too), else the server's; digits, or "" if neither says."""
        host: str = self.environ.get("HTTP_HOST", "")
        name, sep, port = host.rpartition(":")
        if not sep or (":" in name and name[-1:] != "]"):  # none, or a bare IPv6 address
            port = str(self.environ.get("SERVER_PORT", ""))
        return port if port.isascii() and port.isdigit() else ""

    def cookies(self, name: str) -> list[str]:
        """Every value sent for the cookie ``name``, in the order the browser sent them.

        The header carries the cookies of every application on this host (on
        localhost, of every port), so one this page cannot parse must not hide
        its own: ``SimpleCookie`` drops the lot at a value with a space or a
        quote, and JSON has both. A browser sends the cookie of the longest
        ``Path`` first, and another admin page on this host may have set one of
        the same name: the caller tries each.
        """
        values = []
        for pair in self.environ.get("HTTP_COOKIE", "").split(";"):
            key, sep, value = pair.partition("=")
            if sep and key.strip() == name:
                values.append(value.strip().strip('"'))
        return values

    def form(self) -> dict[str, str]:
        """The URL-encoded body of a POST; repeated names keep their first value."""
        if self._form is None:
            self._form = {key: values[0] for key, values in self.form_lists().items()}
        return self._form

    def form_lists(self) -> dict[str, list[str]]:
        kind = self.environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            raise HTTPError(415, "forms must be sent as application/x-www-form-urlencoded")
        raw = self.body(self.content_length())
        try:  # the body, and what its %-escapes stand for: never U+FFFD in place of a byte
            return parse_qs(raw.decode("utf-8"), keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            raise HTTPError(400, "form body is not UTF-8") from None

    def body(self, length: int) -> bytes:
        """``length`` bytes of the body, read in as many calls as the server's stream needs."""
        stream, raw = self.environ["wsgi.input"], b""
        try:
            while len(raw) < length:
                chunk = stream.read(length - len(raw))
                if not chunk:
                    raise HTTPError(400, f"form body ended after {len(raw)} of {length} bytes")
                raw += chunk
        except TimeoutError:
            raise HTTPError(408, "the form body did not arrive in time") from None
        return raw

    def content_length(self) -> int:
        """The body's length, from a Content-Length of plain digits within the cap.

        A chunked body is refused rather than read as empty, so its fields
        are never silently lost; and refused when a Content-Length comes
        with it too, since Transfer-Encoding wins and the bytes that length
        covers are chunks, not the form.
        """
        if self.environ.get("HTTP_TRANSFER_ENCODING", "identity").strip().lower() != "identity":
            raise HTTPError(
                411, "send the form with a Content-Length header and no Transfer-Encoding"
            )
        text = (self.environ.get("CONTENT_LENGTH") or "").strip()
        if not text:
            return 0
        if not (text.isascii() and text.isdigit()):
            raise HTTPError(400, "Content-Length is not a number")
        digits = text.lstrip("0") or "0"
        if len(digits) > len(str(MAX_FORM_BYTES)) or int(digits) > MAX_FORM_BYTES:
            raise HTTPError(413, f"form body over {MAX_FORM_BYTES} bytes")
        return int(digits)
