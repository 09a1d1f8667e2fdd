"""The admin page as a WSGI application: routing, signing in, sessions and CSRF.

Every request but the sign-in form and the static files needs a signed-in
session, and the token behind it is read again on every request, so a
revocation or an expiry ends the session at once. Every POST must carry the
session's CSRF token. The pages themselves are in ``_pages``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from wsgiref.types import StartResponse, WSGIEnvironment

import tokenstore
from tokenstore._inputs import check_instance
from tokenstore._models import SYSTEM_USERNAME

from . import _pages as pages
from ._http import HTTPError, Request, Response, header_path, redirect, shown_path
from ._sessions import SESSION_LIFETIME, SIGN_IN_LIFETIME, Session, Sessions
from ._templates import environment
from ._throttle import SignInThrottle
from ._visit import Visit

#: The session cookie's name, followed by ``_PORT``: a browser keeps one cookie jar for a
#: host whatever the port, and two admin pages on localhost must not replace each other's.
COOKIE = "tokenstore_admin"
#: The scope a token needs to sign in (unless it is a superuser's unrestricted token).
ADMIN_SCOPE = "admin"

#: What a request that met another program's lock on the store is told (with a 503).
BUSY = (
    "The store is busy: another program held its lock for as long as this page waits. "
    "The write that met it was rolled back; try again in a few seconds."
)

_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


def grants_admin(token: tokenstore.APIToken, owner: tokenstore.User) -> bool:
    """Whether a valid token may use the admin page.

    A token issued without scopes is unrestricted for the API, but that must
    not make every plain user's key an admin key: it takes the scope
    ``admin`` listed explicitly, or a superuser's token that is not narrowed
    to other scopes. The ``system`` user is a superuser that is nobody (a
    token created without a user is its), so its tokens need the scope.
    Scopes damaged by hand into anything but a list grant nothing.
    """
    check_instance(token, tokenstore.APIToken, "token")
    check_instance(owner, tokenstore.User, "owner")
    if not token.has_scope(ADMIN_SCOPE):  # narrowed to other scopes, or damaged
        return False
    if ADMIN_SCOPE in token.scopes:
        return True
    return bool(owner.is_superuser) and owner.username != SYSTEM_USERNAME


Handler = Callable[..., Response]


@dataclass
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    #: For a POST: the page shown again, with the error, when the change is refused.
    page: Handler | None = None


def _routes() -> list[Route]:
    abid = r"(?P<abid>[A-Za-z0-9_]{1,64})"
    table: list[tuple[str, str, Handler, Handler | None]] = [
        ("GET", "/", pages.overview, None),
        ("GET", "/users", pages.users, None),
        ("POST", "/users", pages.add_user, pages.users),
        ("GET", "/tokens", pages.tokens, None),
        ("POST", "/tokens", pages.create_token, pages.tokens),
        ("GET", f"/tokens/{abid}/revoke", pages.confirm_revoke, None),
        ("POST", f"/tokens/{abid}/revoke", pages.revoke_token, None),
        ("GET", "/webhooks", pages.webhooks, None),
        ("POST", "/webhooks", pages.add_webhook, pages.webhooks),
        ("GET", f"/webhooks/{abid}", pages.webhook, None),
        ("POST", f"/webhooks/{abid}", pages.edit_webhook, pages.webhook),
        ("POST", f"/webhooks/{abid}/enable", pages.enable_webhook, pages.webhook),
        ("POST", f"/webhooks/{abid}/disable", pages.disable_webhook, pages.webhook),
        ("POST", f"/webhooks/{abid}/rotate", pages.rotate_secret, pages.webhook),
        ("POST", f"/webhooks/{abid}/ping", pages.ping_webhook, pages.webhook),
        ("GET", f"/webhooks/{abid}/delete", pages.confirm_delete, None),
        ("POST", f"/webhooks/{abid}/delete", pages.delete_webhook, pages.webhook),
        ("GET", "/deliveries", pages.deliveries, None),
        ("GET", f"/deliveries/{abid}", pages.delivery, None),
        ("POST", f"/deliveries/{abid}/redeliver", pages.redeliver, pages.delivery),
    ]
    return [Route(m, re.compile(p + r"\Z"), h, page) for m, p, h, page in table]


class AdminApp:
    """The admin page for one store; see ``make_app``."""

    def __init__(
        self,
        store: tokenstore.Store,
        sessions: Sessions | None = None,
        throttle: SignInThrottle | None = None,
    ) -> None:
        # Checked here, else the first request would fail.
        self.store = check_instance(store, tokenstore.Store, "store")
        self.sessions = (
            Sessions() if sessions is None else check_instance(sessions, Sessions, "sessions")
        )
        self.throttle = (
            SignInThrottle()
            if throttle is None
            else check_instance(throttle, SignInThrottle, "throttle")
        )
        self.templates = environment()
        self.routes = _routes()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        found = (self.sessions.get(value) for value in request.cookies(cookie_name(request)))
        session = next((s for s in found if s is not None), None)
        try:
            response = self.handle(request, session)
        except HTTPError as exc:
            response = self.error(request, exc.status, exc.message)
            response.headers.extend(exc.headers)
        except tokenstore.StoreError as exc:  # rolled back whole: no fault of the request's
            response = self.unavailable(request, exc)
        body = response.send(start_response)
        return [] if request.head else body  # HTTP allows no body after HEAD

    def handle(self, request: Request, session: Session | None) -> Response:
        if request.path.startswith("/static/"):
            return self.static(request)
        if request.method == "POST" and request.cross_site():
            raise HTTPError(403, "a form posted from another site is refused")
        if request.path == "/login":
            return self.sign_in(request, session)
        if request.path == "/logout":
            if request.method != "POST":
                raise _not_allowed(request, "POST")
            return self.sign_out(request, session)
        route, groups = self.match(request)
        visit = self.visit(request, session)
        if visit is None:
            if request.reads == "GET" and self.landing(request.path) != "/":
                return redirect(request.base + "/login", next=request.path)
            if request.reads == "GET" or self.revoked_own_token(request, session):
                return redirect(request.base + "/login")
            raise HTTPError(403, "sign in first")
        if request.method == "POST" and not visit.session.csrf_ok(request.form().get("csrf")):
            raise HTTPError(403, "the form's CSRF token is missing or stale: reload the page")
        try:
            return route.handler(visit, **groups)
        except tokenstore.NotFound as exc:
            raise HTTPError(404, str(exc)) from None
        except tokenstore.StoreError:
            raise  # not the form's fault: nothing to show again
        except tokenstore.TokenstoreError as exc:
            if route.page is None:
                raise HTTPError(400, str(exc)) from None
            error = str(exc)
        try:
            return route.page(visit, error=error, **groups)
        except tokenstore.NotFound as exc:  # a form refused for a hook that is not there either
            raise HTTPError(404, str(exc)) from None
        except tokenstore.StoreError:
            raise
        except tokenstore.TokenstoreError:  # the page cannot be shown either (a damaged row)
            raise HTTPError(400, error) from None

    def match(self, request: Request) -> tuple[Route, dict[str, str]]:
        allowed: list[str] = []
        for route in self.routes:
            found = route.pattern.match(request.path)
            if found is None:
                continue
            if route.method == request.reads:
                return route, found.groupdict()
            allowed.append(route.method)
        if allowed:
            raise _not_allowed(request, *allowed)
        raise HTTPError(404, f"no page {shown_path(request.path)}")

    def visit(self, request: Request, session: Session | None) -> Visit | None:
        """The signed-in visit, after checking its token again; None if signed out."""
        if session is None or session.token_abid is None:
            return None
        try:
            token = self.store.tokens.get(session.token_abid)
            owner = self.store.users.get(int(token.created_by_id))
        except (tokenstore.NotFound, tokenstore.DamagedRow):  # a damaged row grants nothing
            self.sessions.end(session)
            return None
        if not token.is_valid(self.store.clock()) or not grants_admin(token, owner):
            self.sessions.end(session)
            return None
        return Visit(request, session, owner, self.store, self.templates)

    def revoked_own_token(self, request: Request, session: Session | None) -> bool:
        """Whether a signed-out POST revokes the token its session signed in with, revoked
        already: the same form sent twice, whose first send revoked it and so signed out.
        What it asks for is done, and the sign-in form follows, as after the first send."""
        own = session and session.token_abid
        if request.method != "POST" or not own or request.path != f"/tokens/{own}/revoke":
            return False
        try:
            return self.store.tokens.get(own).revoked_at is not None
        except (tokenstore.NotFound, tokenstore.DamagedRow):
            return False

    # -- signing in and out -----------------------------------------------------------------

    def landing(self, target: str) -> str:
        """Where signing in leads: ``target``, the page a signed-out visit asked for, if it
        is a page to read here; else the overview.

        The visitor writes ``target`` (``/login?next=...``): another site's
        address, a form's action or a path holding a secret leads to ``/``.
        """
        if shown_path(target) == target and any(
            route.method == "GET" and route.pattern.match(target) for route in self.routes
        ):
            return target
        return "/"

    def sign_in(self, request: Request, session: Session | None) -> Response:
        if request.reads == "GET":
            landing = self.landing(request.query.get("next", ""))
            if self.visit(request, session) is not None:
                return redirect(request.base + landing)
            fresh = self.sessions.new(keep=not request.head)  # HEAD makes nobody a session
            return self.login_page(request, fresh, 200, "", landing, cookie=not request.head)
        if request.method != "POST":
            raise _not_allowed(request, "GET", "POST")
        form = request.form()
        landing = self.landing(form.get("next", ""))
        if self.visit(request, session) is not None:  # the form sent again from the history
            return redirect(request.base + landing)
        if session is None or not session.csrf_ok(form.get("csrf")):
            raise HTTPError(
                403, "the sign-in form is stale or its CSRF token is missing: reload it"
            )
        address = request.environ.get("REMOTE_ADDR", "")
        wait = self.throttle.wait(address)
        if wait:  # told before the token is looked up: that is the work it bounds
            response = self.login_page(
                request,
                session,
                429,
                f"Too many failed sign-ins from this address: try again in {wait} seconds.",
                landing,
            )
            response.headers.append(("Retry-After", str(wait)))
            return response
        try:
            token = self.store.tokens.authenticate(form.get("token", "").strip())
            owner = self.store.users.get(int(token.created_by_id))
        except (tokenstore.AuthenticationError, tokenstore.DamagedRow) as exc:
            self.throttle.failed(address)
            return self.login_page(request, session, 401, f"Not signed in: {exc}", landing)
        if not grants_admin(token, owner):
            self.throttle.failed(address)
            return self.login_page(
                request,
                session,
                403,
                f"Token {token.abid} may not use the admin page: it needs the scope "
                f"{ADMIN_SCOPE!r}, or must be a superuser's token without scopes.",
                landing,
            )
        # A new id once signed in: a planted id is worth nothing. The form's session stays,
        # as anonymous as it was, for the same form sent again (a double click): it went out
        # with this session's cookie, and signs in by the token it carries, as this one did.
        signed_in = self.sessions.new(token.abid)
        response = redirect(request.base + landing)
        response.headers.append(self.cookie(request, signed_in, SESSION_LIFETIME))
        return response

    def sign_out(self, request: Request, session: Session | None) -> Response:
        """End the session; with none (signed out already, in another tab or by a double
        click) there is nobody to sign out, and the sign-in form follows all the same."""
        if session is not None:
            if not session.csrf_ok(request.form().get("csrf")):
                raise HTTPError(403, "the form's CSRF token is missing or stale: reload the page")
            self.sessions.end(session)
        response = redirect(request.base + "/login")
        response.headers.append(self.cookie(request, None, 0))
        return response

    def login_page(
        self,
        request: Request,
        session: Session,
        status: int,
        error: str,
        landing: str,
        cookie: bool = False,
    ) -> Response:
        """The sign-in form, leading to ``landing`` (see ``landing()``) once signed in."""
        html = self.templates.get_template("login.html").render(
            base=request.base, csrf=session.csrf, error=error, landing=landing
        )
        response = Response(status, html.encode("utf-8"))
        if cookie:
            response.headers.append(self.cookie(request, session, SIGN_IN_LIFETIME))
        return response

    @staticmethod
    def cookie(request: Request, session: Session | None, max_age: int) -> tuple[str, str]:
        value = "" if session is None else session.id
        parts = [
            f"{cookie_name(request)}={value}",
            f"Path={header_path(request.base or '/')}",
            f"Max-Age={max_age}",
            "HttpOnly",
            "SameSite=Strict",
        ]
        if request.secure:
            parts.append("Secure")
        return ("Set-Cookie", "; ".join(parts))

    # -- the rest ---------------------------------------------------------------------------

    def static(self, request: Request) -> Response:
        if request.reads != "GET":
            raise _not_allowed(request, "GET")
        name = request.path.removeprefix("/static/")
        kind = _STATIC_TYPES.get(name[name.rfind(".") :] if "." in name else "")
        folder = resources.files("tokenstore.admin").joinpath("static")
        try:
            found = kind is not None and "/" not in name and folder.joinpath(name).is_file()
        except (OSError, ValueError):  # a name too long for the file system, or with a NUL
            found = False
        if kind is None or not found:
            raise HTTPError(404, f"no static file {shown_path(name)}")
        return Response(200, folder.joinpath(name).read_bytes(), content_type=kind)

    def unavailable(self, request: Request, exc: tokenstore.StoreError) -> Response:
        """503: the store cannot serve the request now (locked, gone, read-only, full...).

        Another program's lock passes within seconds, so that answer says when to
        try again; the others last until someone acts, and say what is wrong.
        """
        if isinstance(exc, tokenstore.StoreLocked):
            response = self.error(request, 503, BUSY)
            response.headers.append(("Retry-After", "5"))
            return response
        return self.error(request, 503, f"The store cannot be used now: {exc}")

    def error(self, request: Request, status: int, message: str) -> Response:
        html = self.templates.get_template("error.html").render(
            base=request.base, status=status, message=message
        )
        return Response(status, html.encode("utf-8"))


def cookie_name(request: Request) -> str:
    """The session cookie's name for the port the browser reached."""
    port = request.port()
    return f"{COOKIE}_{port}" if port else COOKIE


def _not_allowed(request: Request, *methods: str) -> HTTPError:
    """405, with the ``Allow`` header HTTP requires to name the methods that work: HEAD
    wherever GET is."""
    allowed = sorted({*methods, *(("HEAD",) if "GET" in methods else ())})
    return HTTPError(405, f"{request.method} is not allowed here", [("Allow", ", ".join(allowed))])


def make_app(store: tokenstore.Store) -> AdminApp:
    """The admin page for ``store`` as a WSGI application, to serve or mount under a path.

    Mounted under a prefix, links and the session cookie follow the
    ``SCRIPT_NAME`` the server passes. Raises ``AdminUnavailable`` when the
    optional extra ``tokenstore[admin]`` (Jinja2) is not installed.
    """
    return AdminApp(store)
