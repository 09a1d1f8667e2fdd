"""The admin page at the WSGI level: every route, signing in, CSRF, escaping, secrets once.

The app is called directly with real environs (wsgiref's defaults) on a real
store file; webhooks go to a real receiver on 127.0.0.1.
"""

from __future__ import annotations

import gc
import html
import io
import json
import re
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import _db
import pytest
import requests
from _admin_helpers import (
    Client,
    Received,
    connected,
    receiving,
    running,
    serving,
    signed_in,
)

import tokenstore
from tokenstore import admin
from tokenstore.admin import _pages, _throttle
from tokenstore.admin._sessions import Reveal, Sessions
from tokenstore.admin._throttle import SignInThrottle


@pytest.fixture
def receiver() -> Iterator[tuple[str, Received, list[int]]]:
    """A loopback endpoint; tests set ``status[0]`` to the code it answers."""
    with receiving() as endpoint:
        yield endpoint


@pytest.fixture
def app(store: tokenstore.Store) -> admin.AdminApp:
    return admin.make_app(store)


@pytest.fixture
def admin_secret(store: tokenstore.Store) -> str:
    _, secret = store.tokens.create(store.users.create("root"), name="admin", scopes=["admin"])
    return secret


@pytest.fixture
def client(app: admin.AdminApp, admin_secret: str) -> Client:
    browser = Client(app)
    assert browser.sign_in(admin_secret).status == 303
    return browser


def abid_of(text: str, prefix: str) -> str:
    found = re.search(rf"\b{prefix}_[0-9A-Z]{{26}}\b", text)
    assert found, text
    return found[0]


GET_ROUTES = [
    "/",
    "/users",
    "/tokens",
    "/tokens/{token}/revoke",
    "/webhooks",
    "/webhooks/{hook}",
    "/webhooks/{hook}/delete",
    "/deliveries",
    "/deliveries/{delivery}",
]
POST_ROUTES = [
    "/users",
    "/tokens",
    "/tokens/{token}/revoke",
    "/webhooks",
    "/webhooks/{hook}",
    "/webhooks/{hook}/enable",
    "/webhooks/{hook}/disable",
    "/webhooks/{hook}/rotate",
    "/webhooks/{hook}/ping",
    "/webhooks/{hook}/delete",
    "/deliveries/{delivery}/redeliver",
    "/logout",
]


@pytest.fixture
def records(store: tokenstore.Store, receiver: Any) -> dict[str, str]:
    """One token, one hook and one delivery, for the routes that name one."""
    url, _, _ = receiver
    token, _ = store.tokens.create(store.users.create("alice"), name="alices-key")
    hook = store.webhooks.create("recorded-hook", tokenstore.User, url)
    delivery = store.webhooks.ping(hook)
    return {"token": token.abid, "hook": hook.abid, "delivery": delivery.abid}


# -- signing in ---------------------------------------------------------------------------


def test_signed_out_every_page_sends_to_the_sign_in_form(
    app: admin.AdminApp, records: dict[str, str]
) -> None:
    visitor = Client(app)
    for route in GET_ROUTES:
        path = route.format(**records)
        page = visitor.get(path)
        assert page.status == 303, route
        back = "" if path == "/" else "?" + urlencode({"next": path})
        assert page.header("Location") == "/login" + back
        assert "recorded-hook" not in page.text and "alices-key" not in page.text


def test_signing_in_leads_back_to_the_page_asked_for(
    app: admin.AdminApp, admin_secret: str, records: dict[str, str]
) -> None:
    """A link to a hook followed while signed out shows that hook once signed in."""
    visitor = Client(app)
    wanted = f"/webhooks/{records['hook']}"
    sent_to = visitor.get(wanted).header("Location") or ""
    form = visitor.get(sent_to)
    assert form.status == 200
    page = visitor.post("/login", {**form.form("/login"), "token": admin_secret})
    assert page.status == 303 and page.header("Location") == wanted
    assert "recorded-hook" in visitor.get(wanted).text


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/",
        "https://evil.example/",
        "/\\evil.example",
        "/webhooks/x/../../evil",
        "/tokens\r\nSet-Cookie: planted=1",
        "/logout",
        "/login",
        "/static/admin.css",
        "/users?x=1",
        "/webhooks/{secret}",  # a token pasted into the address bar
        "",
    ],
)
def test_signing_in_leads_only_to_a_page_of_its_own(
    app: admin.AdminApp, admin_secret: str, target: str
) -> None:
    """``next`` is the visitor's to write: anything but a page to read here leads to ``/``."""
    visitor = Client(app)
    target = target.replace("{secret}", admin_secret)
    form = visitor.get("/login?" + urlencode({"next": target}))
    assert form.status == 200
    assert 'name="next"' not in form.text and admin_secret not in form.text
    page = visitor.post("/login", {"token": admin_secret, "next": target})
    assert page.status == 303 and page.header("Location") == "/"
    assert visitor.get("/login?" + urlencode({"next": target})).header("Location") == "/"


def test_signed_out_every_change_is_refused(
    app: admin.AdminApp, store: tokenstore.Store, records: dict[str, str]
) -> None:
    visitor = Client(app)
    visitor.get("/login")  # an anonymous session with a CSRF token does not help
    for route in POST_ROUTES[:-1]:  # all but /logout, which ends the anonymous session
        page = visitor.post(route.format(**records), {"username": "mallory", "name": "x"})
        assert page.status == 403, route
    assert [u.username for u in store.users.list()] == ["system", "alice"]
    assert store.webhooks.get("recorded-hook").enabled
    assert store.tokens.get(records["token"]).revoked_at is None


def test_sign_in_sets_a_strict_http_only_expiring_cookie(
    app: admin.AdminApp, admin_secret: str
) -> None:
    visitor = Client(app)
    form = visitor.get("/login")
    assert form.status == 200 and 'name="token"' in form.text
    anonymous = visitor.cookie
    signed_in = visitor.post("/login", {"token": admin_secret})
    assert signed_in.status == 303 and signed_in.header("Location") == "/"
    cookie = signed_in.header("Set-Cookie") or ""
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert re.search(r"Max-Age=[1-9]\d*", cookie) and "Path=/" in cookie
    assert visitor.cookie and visitor.cookie != anonymous  # a new id once signed in
    assert admin_secret not in cookie
    assert visitor.get("/").status == 200
    assert visitor.get("/login").status == 303  # already signed in


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("127.0.0.1:8787", "tokenstore_admin_8787"),
        ("[::1]:8788", "tokenstore_admin_8788"),
        ("[::1]", "tokenstore_admin_8080"),  # no port in Host: the server's
        ("localhost", "tokenstore_admin_8080"),
        ("localhost:x", "tokenstore_admin"),  # a Host no browser sends: no port is named
    ],
)
def test_the_session_cookie_is_named_for_the_port_the_browser_reached(
    app: admin.AdminApp, host: str, name: str
) -> None:
    page = Client(app).request("GET", "/login", extra={"HTTP_HOST": host, "SERVER_PORT": "8080"})
    assert (page.header("Set-Cookie") or "").startswith(f"{name}="), page.header("Set-Cookie")
    odd = {"HTTP_HOST": "localhost", "SERVER_PORT": "80;\r\nSet-Cookie: a=b"}
    assert (Client(app).request("GET", "/login", extra=odd).header("Set-Cookie") or "").startswith(
        "tokenstore_admin="
    )


def test_a_wrong_token_is_refused_without_echoing_it(app: admin.AdminApp) -> None:
    visitor = Client(app)
    visitor.get("/login")
    page = visitor.post("/login", {"token": "tsk_not-a-real-token-at-all"})
    assert page.status == 401
    assert "not-a-real-token" not in page.text
    assert visitor.get("/").status == 303


@pytest.mark.parametrize(
    ("superuser", "scopes", "status"),
    [
        (False, ["snapshots:read"], 403),
        (False, [], 403),  # unrestricted for the API, but not an admin key
        (True, ["snapshots:read"], 403),  # a superuser's key narrowed to something else
        (True, [], 303),
        (False, ["admin"], 303),
        (False, ["admin", "snapshots:read"], 303),
    ],
)
def test_who_may_sign_in(
    app: admin.AdminApp, store: tokenstore.Store, superuser: bool, scopes: list[str], status: int
) -> None:
    user = store.users.create("someone", superuser=superuser)
    _, secret = store.tokens.create(user, scopes=scopes)
    visitor = Client(app)
    page = visitor.sign_in(secret)
    assert page.status == status
    assert visitor.get("/users").status == (200 if status == 303 else 303)
    if status == 403:
        assert "admin" in page.text and secret not in page.text


@pytest.mark.parametrize(("scopes", "status"), [([], 403), (["admin"], 303)])
def test_a_token_issued_to_nobody_needs_the_admin_scope(
    app: admin.AdminApp, store: tokenstore.Store, scopes: list[str], status: int
) -> None:
    """``tokens.create()`` without a user gives the token to ``system``, a superuser that is
    nobody: a script's key made that way must not open the admin page unasked."""
    token, secret = store.tokens.create(scopes=scopes)
    assert token.created_by.username == "system" and token.created_by.is_superuser
    assert Client(app).sign_in(secret).status == status


def test_revoking_the_token_ends_the_session_at_once(
    client: Client, store: tokenstore.Store, admin_secret: str
) -> None:
    assert client.get("/tokens").status == 200
    store.tokens.revoke(store.tokens.authenticate(admin_secret))
    assert client.get("/tokens").status == 303
    assert client.post("/users", {"username": "late"}).status == 403
    assert "late" not in [u.username for u in store.users.list()]


def test_scopes_edited_into_a_string_end_the_session(
    app: admin.AdminApp, store: tokenstore.Store
) -> None:
    """A JSON string of scopes would hold 'admin' as a part ('"badminton"'); it grants nothing."""
    token, secret = store.tokens.create(store.users.create("root"), scopes=["admin"])
    visitor = Client(app)
    assert visitor.sign_in(secret).status == 303
    assert visitor.get("/users").status == 200
    with _db.Raw(store) as raw:
        raw.execute(
            "UPDATE tokenstore_api_token SET scopes = '\"badminton\"' WHERE abid = ?",
            (token.abid,),
        )
    assert visitor.get("/users").status == 303


def test_an_expired_token_or_session_signs_out(ts: tokenstore.Store, clock: Any) -> None:
    now = [0.0]
    app = admin.AdminApp(ts, sessions=Sessions(clock=lambda: now[0]))
    _, secret = ts.tokens.create(
        ts.users.create("root"), scopes=["admin"], expires=timedelta(hours=1)
    )
    visitor = Client(app)
    visitor.sign_in(secret)
    assert visitor.get("/").status == 200
    clock.advance(hours=2)
    assert visitor.get("/").status == 303
    clock.advance(hours=-2)
    visitor.sign_in(secret)
    assert visitor.get("/").status == 200
    now[0] += 9 * 3600  # past the session's lifetime
    assert visitor.get("/").status == 303


def _from(address: str) -> dict[str, str]:
    return {"REMOTE_ADDR": address}


def test_failed_sign_ins_from_one_address_are_answered_429_without_a_lookup(
    store: tokenstore.Store, admin_secret: str
) -> None:
    """Nothing bounded them: one client could make the page look tokens up without end.
    Past a burst of failures its address waits, even with a good token (which is not
    looked up), while other addresses and signed-in sessions are served as before."""
    now = [0.0]
    app = admin.AdminApp(store, throttle=SignInThrottle(clock=lambda: now[0]))
    for _ in range(3):  # sign-ins that succeed count for nothing
        assert Client(app).sign_in(admin_secret).status == 303
    guesser = Client(app)
    guesser.get("/login")
    wrong = {"token": "tsk_not-a-real-token-at-all"}
    for _ in range(_throttle.MAX_FAILURES):
        assert guesser.post("/login", wrong, extra=_from("192.0.2.7")).status == 401
    waits = guesser.post("/login", {"token": admin_secret}, extra=_from("192.0.2.7"))
    assert waits.status == 429 and waits.header("Retry-After") == "6", waits.text
    assert "Too many failed sign-ins" in waits.text and guesser.get("/").status == 303
    assert guesser.post("/login", wrong, extra=_from("192.0.2.8")).status == 401  # another
    now[0] += 6
    assert guesser.post("/login", wrong, extra=_from("192.0.2.7")).status == 401  # one more
    assert guesser.post("/login", wrong, extra=_from("192.0.2.7")).status == 429
    now[0] += 6
    signed_in = guesser.post("/login", {"token": admin_secret}, extra=_from("192.0.2.7"))
    assert signed_in.status == 303


def test_the_sign_in_throttle_remembers_a_bounded_number_of_addresses() -> None:
    """A flood of failures from ever new addresses must not grow the table without end; an
    IPv6 client holds a /64 of addresses, and counts as one."""
    throttle = SignInThrottle(clock=lambda: 0.0, max_addresses=100)
    for number in range(1000):
        throttle.failed(f"198.51.{number // 256}.{number % 256}")
    assert len(throttle._buckets) == 100
    assert throttle.wait("198.51.0.0") == 0  # forgotten: the oldest went first
    for number in range(_throttle.MAX_FAILURES):
        throttle.failed(f"2001:db8:1:2::{number:x}")
    assert throttle.wait("2001:db8:1:2:ffff::1") == 6
    assert throttle.wait("2001:db8:1:3::1") == 0
    for _ in range(_throttle.MAX_FAILURES):
        throttle.failed("::ffff:203.0.113.9")  # an IPv4 client of a dual-stack server
    assert throttle.wait("203.0.113.9") == 6


def test_sign_out(client: Client) -> None:
    assert client.post("/logout", csrf=False).status == 403
    page = client.post("/logout")
    assert page.status == 303 and page.header("Location") == "/login"
    assert "Max-Age=0" in (page.header("Set-Cookie") or "")
    assert client.get("/").status == 303


def test_signing_out_twice_lands_on_the_sign_in_form(client: Client) -> None:
    """A double click on Sign out, or the button of another tab: the second finds no session,
    and has nobody left to sign out; it is no error."""
    cookie, csrf = client.cookie, client.csrf
    assert client.post("/logout").status == 303
    client.cookie = cookie  # the second click went out with the first's cookie
    for _ in range(2):
        page = client.post("/logout", {"csrf": csrf})
        assert page.status == 303 and page.header("Location") == "/login", page.text
        client.cookie = None
    assert client.get("/").status == 303


def test_a_sessions_repr_hides_its_secrets() -> None:
    """A session in a log line or a traceback must not hand over its cookie, its CSRF token,
    its one-time form ids or the secret it waits to show."""
    session = Sessions().new("apt_01ABC")
    session.reveal = Reveal("Secret of token apt_01ABC", "the-secret-value")
    form_id = session.keep_form()
    for shown in (repr(session), str(session), repr(session.reveal)):
        for secret in (session.id, session.csrf, form_id, "the-secret-value"):
            assert secret not in shown, shown
    assert "apt_01ABC" in repr(session)  # which token signed in is no secret


# -- CSRF -----------------------------------------------------------------------------------


def test_every_post_without_or_with_a_wrong_csrf_token_is_refused(
    client: Client, store: tokenstore.Store, records: dict[str, str]
) -> None:
    for route in POST_ROUTES:
        path = route.format(**records)
        for csrf in (None, "forged", ""):
            form = {"username": "mallory", "name": "x"}
            if csrf is not None:
                form["csrf"] = csrf
            page = client.post(path, form, csrf=False)
            assert page.status == 403, (route, csrf)
            assert "CSRF" in page.text
    assert [u.username for u in store.users.list()] == ["system", "root", "alice"]
    assert store.webhooks.get("recorded-hook").enabled
    assert store.tokens.get(records["token"]).revoked_at is None
    assert client.get("/").status == 200  # still signed in


def test_the_sign_in_form_needs_its_csrf_token(app: admin.AdminApp, admin_secret: str) -> None:
    visitor = Client(app)
    visitor.get("/login")
    assert visitor.post("/login", {"token": admin_secret}, csrf=False).status == 403
    stranger = Client(app)  # no session at all: a form posted from elsewhere
    assert stranger.post("/login", {"token": admin_secret, "csrf": "x"}, csrf=False).status == 403
    assert stranger.get("/").status == 303


def test_a_sign_in_form_sent_twice_signs_in(app: admin.AdminApp, admin_secret: str) -> None:
    """A double click: the second send went out with the first's cookie, the sign-in form's,
    which the first ended, and got a 403. Sent again from the history once signed in, it
    carries the old form's CSRF token: a 403 too. Either lands signed in now."""
    visitor = Client(app)
    visitor.get("/login")
    form_cookie, form = visitor.cookie, {"token": admin_secret, "csrf": visitor.csrf}
    assert visitor.post("/login", form, csrf=False).status == 303
    visitor.cookie = form_cookie  # the second click went out before the first was answered
    again = visitor.post("/login", form, csrf=False)
    assert again.status == 303 and again.header("Location") == "/", again.text
    assert visitor.cookie != form_cookie and visitor.get("/").status == 200
    back = visitor.post("/login", form, csrf=False)  # from the history, signed in
    assert back.status == 303 and back.header("Location") == "/", back.text
    assert visitor.get("/").status == 200


def test_a_sign_in_form_sent_again_signs_in_only_with_a_good_token(
    app: admin.AdminApp, store: tokenstore.Store, admin_secret: str
) -> None:
    """The form's session is no key of itself: whoever holds it (it may have been planted)
    still needs a token that signs in, and a form from another site is refused as ever."""
    visitor = Client(app)
    visitor.get("/login")
    form_cookie, csrf = visitor.cookie, visitor.csrf
    assert visitor.post("/login", {"token": admin_secret}).status == 303
    planted = Client(app)
    planted.cookie, planted.csrf = form_cookie, csrf
    assert planted.post("/login", {"token": "tsk_not-a-real-token-at-all"}).status == 401
    cross = {"HTTP_SEC_FETCH_SITE": "cross-site"}
    assert planted.post("/login", {"token": admin_secret}, extra=cross).status == 403
    assert planted.get("/").status == 303
    signed_in = Client(app)  # signed in, from another site: refused, not waved through
    assert signed_in.sign_in(admin_secret).status == 303
    assert signed_in.post("/login", {"token": "x"}, extra=cross).status == 403


@pytest.mark.parametrize(
    "headers",
    [
        {"HTTP_SEC_FETCH_SITE": "cross-site"},
        {"HTTP_SEC_FETCH_SITE": "same-site"},  # a sibling subdomain still gets the cookie
        {"HTTP_ORIGIN": "http://evil.example"},
        {"HTTP_REFERER": "http://evil.example/form.html"},
        {"HTTP_ORIGIN": "http://[broken"},
        # Without Sec-Fetch-Site, an opaque origin (a sandboxed frame, a data: URL) proves
        # nothing of where the form was; the page's own forms send their origin.
        {"HTTP_ORIGIN": "null"},
        {"HTTP_ORIGIN": "null", "HTTP_REFERER": "http://evil.example/form.html"},
        {"HTTP_ORIGIN": "http://127.0.0.1", "HTTP_REFERER": "http://evil.example/form.html"},
    ],
)
def test_a_form_posted_from_another_site_is_refused_even_with_its_csrf_token(
    client: Client, app: admin.AdminApp, store: tokenstore.Store, headers: dict[str, str]
) -> None:
    page = client.post("/users", {"username": "mallory"}, extra=headers)
    assert page.status == 403 and "another site" in page.text
    assert client.post("/logout", extra=headers).status == 403
    assert "mallory" not in [u.username for u in store.users.list()]
    assert client.get("/").status == 200  # still signed in
    visitor = Client(app)
    visitor.get("/login")
    _, secret = store.tokens.create(store.users.get("root"), scopes=["admin"])
    assert visitor.post("/login", {"token": secret}, extra=headers).status == 403
    assert visitor.get("/").status == 303


@pytest.mark.parametrize(
    "headers",
    [
        # What browsers send: Sec-Fetch-Site decides, whatever Host a proxy passed on.
        {"HTTP_SEC_FETCH_SITE": "same-origin", "HTTP_ORIGIN": "https://admin.example"},
        {"HTTP_ORIGIN": "http://127.0.0.1"},  # the Host wsgiref's test defaults give
        {"HTTP_ORIGIN": "http://127.0.0.1", "HTTP_REFERER": "http://127.0.0.1/users"},
        {"HTTP_REFERER": "http://127.0.0.1/users"},
        {},  # not a browser
    ],
)
def test_a_form_posted_from_this_site_is_accepted(
    client: Client, store: tokenstore.Store, headers: dict[str, str]
) -> None:
    assert client.post("/users", {"username": "bob"}, extra=headers).status == 303
    assert "bob" in [u.username for u in store.users.list()]


class _Stalled(io.BytesIO):
    def read(self, size: int | None = -1) -> bytes:
        raise TimeoutError("timed out")


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ({"CONTENT_LENGTH": "-5"}, 400),
        ({"CONTENT_LENGTH": "+20"}, 400),
        ({"CONTENT_LENGTH": "1e3"}, 400),
        ({"CONTENT_LENGTH": "9" * 5000}, 413),
        ({"CONTENT_LENGTH": "", "HTTP_TRANSFER_ENCODING": "chunked"}, 411),
        ({"CONTENT_LENGTH": "1000"}, 400),  # the body ends early: the client hung up
        ({"wsgi.input": _Stalled()}, 408),
    ],
)
def test_a_form_body_that_is_not_what_its_headers_say_is_refused(
    client: Client, store: tokenstore.Store, extra: dict[str, Any], status: int
) -> None:
    page = client.post("/users", {"username": "bob"}, extra=extra)
    assert page.status == status, page.text
    assert "bob" not in [u.username for u in store.users.list()]


class _Trickle(io.BytesIO):
    """An input stream that hands out a few bytes a call, as a WSGI server may."""

    def read(self, size: int | None = -1) -> bytes:
        return super().read(min(3, size if size is not None and size >= 0 else 3))


def test_a_form_body_read_in_pieces_is_read_whole(client: Client, store: tokenstore.Store) -> None:
    body = urlencode({"csrf": client.csrf, "username": "bob"}).encode()
    extra = {"wsgi.input": _Trickle(body), "CONTENT_LENGTH": str(len(body))}
    page = client.post("/users", extra=extra)
    assert page.status == 303, page.text
    assert "bob" in [u.username for u in store.users.list()]


def test_a_stalled_form_body_gets_an_answer_and_no_traceback(
    store: tokenstore.Store, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tokenstore.admin import _server

    monkeypatch.setattr(_server._QuietHandler, "timeout", 0.5)
    with connected(store) as sock:
        sock.sendall(
            b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 100\r\n\r\ncsrf=1"
        )
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.0 408 "), answer
    assert "Traceback" not in capfd.readouterr().err


def test_a_flood_of_sign_in_forms_leaves_administrators_signed_in(
    client: Client, app: admin.AdminApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tokenstore.admin import _sessions

    monkeypatch.setattr(_sessions, "MAX_SESSIONS", 5)
    first = Client(app)
    first.get("/login")
    for _ in range(20):
        assert Client(app).get("/login").status == 200
    assert client.get("/").status == 200
    assert first.post("/login", {"token": "x"}).status == 403  # the oldest form was dropped


def test_signed_in_sessions_are_capped_the_oldest_signed_out(
    app: admin.AdminApp, admin_secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tokenstore.admin import _sessions

    monkeypatch.setattr(_sessions, "MAX_SESSIONS", 5)
    browsers = [Client(app) for _ in range(8)]
    for browser in browsers:
        assert browser.sign_in(admin_secret).status == 303
    assert len(app.sessions._signed_in) == 5
    assert [b.get("/").status for b in browsers] == [303] * 3 + [200] * 5


def test_a_session_keeps_at_most_max_forms_one_time_form_ids(client: Client) -> None:
    """Every view of the tokens page gives its create form a one-time id: a tab left to
    reload itself must not grow its session."""
    from tokenstore.admin import _sessions

    first = re.search(r'name="form_id" value="([^"]+)"', client.get("/tokens").text)
    assert first is not None
    for _ in range(_sessions.MAX_FORMS + 20):
        assert client.get("/tokens").status == 200
    (session,) = client.app.sessions._signed_in.values()
    assert len(session.forms) == _sessions.MAX_FORMS
    assert first[1] not in session.forms  # the oldest forgotten


def test_expired_sessions_are_dropped_with_what_they_held(ts: tokenstore.Store) -> None:
    """An expired session, and the secret it still waited to show, goes at the next
    sign-in form anyone asks for, or at its own next request."""
    now = [0.0]
    app = admin.AdminApp(ts, sessions=Sessions(clock=lambda: now[0]))
    _, secret = ts.tokens.create(ts.users.create("root"), scopes=["admin"])
    browsers = [Client(app) for _ in range(3)]
    for browser in browsers:
        assert browser.sign_in(secret).status == 303
    form = re.search(r'name="form_id" value="([^"]+)"', browsers[0].get("/tokens").text)
    assert form is not None
    created = browsers[0].post("/tokens", {"user": "root", "name": "unseen", "form_id": form[1]})
    assert created.status == 303  # its secret waits to be shown on the next page, never seen
    (waiting,) = [s for s in app.sessions._signed_in.values() if s.reveal is not None]
    held = weakref.ref(waiting)
    del waiting
    now[0] += 9 * 3600  # past every session's lifetime
    assert browsers[1].get("/").status == 303  # its own request drops it
    assert len(app.sessions._signed_in) == 2
    assert Client(app).get("/login").status == 200  # anyone's new session drops the rest
    assert app.sessions._signed_in == {} and len(app.sessions._signing_in) == 1
    gc.collect()
    assert held() is None  # nothing else held the session, or the secret it kept


def test_a_method_not_allowed_names_the_ones_that_are(
    client: Client, store: tokenstore.Store
) -> None:
    for method, path, allowed in [
        ("HEAD", "/logout", "POST"),
        ("OPTIONS", "/users", "GET, HEAD, POST"),
        ("PUT", "/users", "GET, HEAD, POST"),
        ("DELETE", "/login", "GET, HEAD, POST"),
        ("GET", "/logout", "POST"),
        ("BREW", "/webhooks", "GET, HEAD, POST"),
        ("PUT", "/webhooks/x/enable", "POST"),
        ("POST", "/static/admin.css", "GET, HEAD"),
        ("PUT", "/static/admin.js", "GET, HEAD"),
    ]:
        page = client.request(method, path)
        assert page.status == 405 and page.header("Allow") == allowed, (method, path)
    assert client.get("/").status == 200  # GET /logout signed nobody out


def test_head_answers_every_page_as_get_does_without_a_body(
    client: Client, app: admin.AdminApp, records: dict[str, str]
) -> None:
    """RFC 9110: HEAD is supported wherever GET is; monitors and link checkers send it.
    It got a 405 on every page."""
    visitor = Client(app)
    asked = [(client, route.format(**records)) for route in GET_ROUTES]
    asked += [(client, "/static/admin.css"), (visitor, "/"), (visitor, "/login")]
    for browser, path in asked:
        head = browser.request("HEAD", path)
        got = browser.get(path)
        assert head.status == got.status, (path, head.status, head.text)
        assert head.text == "", path
        for name in ("Content-Type", "Content-Length", "Location", "Cache-Control"):
            assert head.header(name) == got.header(name), (path, name)
    assert client.request("HEAD", "/nowhere").status == 404


def test_head_changes_nothing(client: Client, app: admin.AdminApp) -> None:
    """HEAD is no visit: it neither takes the secret or notice waiting for the next page,
    nor keeps a one-time form id, nor makes a sign-in session, nor signs anyone out."""
    form = {**client.get("/tokens").form("/tokens"), "user": "root", "name": "shown-once"}
    assert client.post("/tokens", form).status == 303
    (session,) = app.sessions._signed_in.values()
    forms = dict(session.forms)
    for _ in range(3):
        assert client.request("HEAD", "/tokens").status == 200
    assert session.forms == forms
    shown = client.get("/tokens").text
    assert 'id="secret" class="secret"' in shown and "shown-once" in shown
    assert "created." in shown
    visitor = Client(app)
    anonymous = len(app.sessions._signing_in)
    page = visitor.request("HEAD", "/login")
    assert page.status == 200 and page.header("Set-Cookie") is None
    assert len(app.sessions._signing_in) == anonymous
    assert client.request("HEAD", "/logout").status == 405
    assert client.get("/").status == 200  # still signed in


@pytest.mark.sqlite_only  # another connection's view of the file's commits
def test_reading_a_page_writes_nothing_to_the_store(
    client: Client, store: tokenstore.Store, records: dict[str, str]
) -> None:
    """GET and HEAD of every page, and the sign-in form: no commit reaches the file."""
    assert store.path is not None
    store.tokens.flush_uses()  # the sign-in's use of its token, noted in memory till now
    watcher = sqlite3.connect(str(store.path))
    try:
        version = watcher.execute("PRAGMA data_version").fetchone()
        for method in ("GET", "HEAD"):
            for route in [*GET_ROUTES, "/login"]:
                assert client.request(method, route.format(**records)).status in (200, 303)
                assert watcher.execute("PRAGMA data_version").fetchone() == version, route
    finally:
        watcher.close()


def test_head_over_http(store: tokenstore.Store) -> None:
    """Through the server: the head of the answer, then the connection is the next request's."""
    with running(store) as server:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        for path in ("/login", "/", "/static/admin.js"):
            head = requests.head(url + path, timeout=10, allow_redirects=False)
            got = requests.get(url + path, timeout=10, allow_redirects=False)
            assert head.status_code == got.status_code, path
            assert head.content == b"" and head.headers["Content-Length"] == str(
                len(got.content)
            ), path


def test_make_app_needs_a_store() -> None:
    with pytest.raises(tokenstore.ValidationError, match=r"store must be a Store"):
        admin.make_app(None)  # type: ignore[arg-type]
    with pytest.raises(tokenstore.ValidationError, match="got str"):
        admin.AdminApp("app.sqlite3")  # type: ignore[arg-type]


# -- pages ----------------------------------------------------------------------------------


def test_every_page_shows_when_signed_in(client: Client, records: dict[str, str]) -> None:
    for route in GET_ROUTES:
        page = client.get(route.format(**records))
        assert page.status == 200, (route, page.text)
        assert page.header("Cache-Control") == "no-store"
        assert "default-src 'none'" in (page.header("Content-Security-Policy") or "")
    assert client.get("/nowhere").status == 404
    assert client.request("PUT", "/users").status == 405
    assert client.get("/tokens/apt_01JAZ6BQG0D53BD22B01XRS78E/revoke").status == 404
    assert client.get("/webhooks/no-such-hook").status == 404
    assert client.get("/deliveries/msg_01JAZ6BQG0D53BD22B01XRS78E").status == 404


def test_every_answer_carries_the_security_headers(client: Client, app: admin.AdminApp) -> None:
    """Pages, redirects, errors and static files alike: none framed, sniffed, cached or shared."""
    answers = [
        client.get("/"),
        client.get("/nowhere"),
        client.request("PUT", "/"),
        client.post("/users", {"username": "bob"}),
        client.get("/static/admin.css"),
        Client(app).get("/"),
        Client(app).get("/login"),
    ]
    for page in answers:
        assert "frame-ancestors 'none'" in (page.header("Content-Security-Policy") or "")
        assert page.header("X-Frame-Options") == "DENY"
        assert page.header("X-Content-Type-Options") == "nosniff"
        # Browsers then send Origin and Referer on the page's own POSTs, but to no other site.
        assert page.header("Referrer-Policy") == "same-origin"
        assert page.header("Cache-Control") == "no-store"
        assert page.header("Cross-Origin-Opener-Policy") == "same-origin"
        assert page.header("Cross-Origin-Resource-Policy") == "same-origin"


@pytest.mark.parametrize("bad", ["zzz", "apt_zzz", "msg_" + "U" * 26, "whk_" + "0" * 27, "_" * 64])
def test_a_malformed_or_unknown_id_is_a_400_or_404_on_every_route(
    client: Client, store: tokenstore.Store, records: dict[str, str], bad: str
) -> None:
    before = [(t.abid, t.revoked_at) for t in store.tokens.list(include_revoked=True)]
    routes = [("GET", r) for r in GET_ROUTES] + [("POST", r) for r in POST_ROUTES]
    for method, route in routes:
        if "{" not in route:
            continue
        path = re.sub(r"\{\w+\}", bad, route)
        page = client.request(method, path)
        assert page.status in (400, 404), (method, path, page.status)
        assert "Traceback" not in page.text
    assert [(t.abid, t.revoked_at) for t in store.tokens.list(include_revoked=True)] == before
    assert store.webhooks.get("recorded-hook").enabled


def test_a_refused_change_to_a_hook_that_is_not_there_is_a_404(client: Client) -> None:
    """The form is refused first (bad headers), then the page to show it on is missing too."""
    page = client.post("/webhooks/no_such_hook", {"name": "x", "headers": "no colon"})
    assert page.status == 404 and "no webhook with ABID or name 'no_such_hook'" in html.unescape(
        page.text
    )


def test_static_files(app: admin.AdminApp) -> None:
    visitor = Client(app)
    css = visitor.get("/static/admin.css")
    assert (
        css.status == 200
        and css.header(
            "Content-Type",
        )
        == "text/css; charset=utf-8"
    )
    assert visitor.get("/static/admin.js").status == 200
    assert visitor.get("/static/../_app.py").status == 404
    assert visitor.get("/static/nothing.css").status == 404
    assert visitor.get("/static/" + "a" * 300 + ".css").status == 404  # longer than a file name


def test_overview_counts_and_draws_the_last_day(
    client: Client, store: tokenstore.Store, receiver: Any
) -> None:
    url, _, status = receiver
    hook = store.webhooks.create("counted", tokenstore.User, url)
    store.webhooks.ping(hook)
    store.webhooks.ping(hook)
    status[0] = 500
    store.webhooks.ping(hook)
    page = client.get("/")
    counts = dict(re.findall(r"<dt>([a-z ]+)</dt><dd>(\d+)</dd>", page.text))
    assert counts == {
        "users": "1",
        "live tokens": "1",
        "webhooks": "1",
        "enabled webhooks": "1",
        "pending deliveries": "0",
        "failed deliveries": "1",
    }
    svg = page.text[page.text.index("<svg") : page.text.index("</svg>")]
    assert svg.count('<rect class="delivered"') == 1
    assert svg.count('<rect class="failed"') == 1
    assert "<title>the last hour: 2 delivered, 1 failed</title>" in svg
    assert "<title>2 to 1 hours ago: 0 delivered, 0 failed</title>" in svg
    # The busiest hour fills the plot: 2 delivered over 3 in all is 80 of 120 pixels.
    assert 'height="80.0"' in svg and 'height="40.0"' in svg


def test_chart_scales_to_the_busiest_hour() -> None:
    from tokenstore.admin._chart import HOURS, PLOT_HEIGHT, chart

    outcomes = [(0, 0)] * (HOURS - 2) + [(3, 1), (1, 1)]
    picture = chart(outcomes)
    assert picture.top_count == 4 and (picture.delivered, picture.failed) == (4, 2)
    busiest = picture.bars[-2]
    assert busiest.delivered_height + busiest.failed_height == PLOT_HEIGHT
    assert busiest.failed_y + busiest.failed_height == busiest.delivered_y
    assert picture.bars[-1].delivered_height == PLOT_HEIGHT / 4
    assert picture.bars[0].hours_ago == HOURS and picture.bars[-1].hours_ago == 1


def test_users_list_and_add(client: Client, store: tokenstore.Store) -> None:
    added = client.post("/users", {"username": "bob", "superuser": "on"})
    assert added.status == 303 and added.header("Location") == "/users"
    page = client.get("/users")
    assert "User bob added." in page.text and "<td>bob</td>" in page.text
    # Tokens not revoked per user: root holds the admin token, bob none yet.
    assert re.search(r"<td>root</td><td>no</td>\s*<td>1</td>", page.text), page.text
    assert re.search(r"<td>bob</td><td>yes</td>\s*<td>0</td>", page.text), page.text
    assert store.users.get("bob").is_superuser
    refused = client.post("/users", {"username": "bob"})
    assert refused.status == 400 and "already taken" in refused.text
    assert client.get("/users").text.count("<td>bob</td>") == 1


def test_users_are_shown_a_page_at_a_time_and_owners_typed_once_they_are_many(
    client: Client, store: tokenstore.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The users page pages as the tokens page does; past a page of users, the token
    form asks for the owner's name instead of listing every user in a menu."""
    monkeypatch.setattr(_pages, "PAGE_SIZE", 2)
    form = client.get("/tokens").text
    assert '<select name="user">' in form and "root</option>" in form  # root and system
    for name in ("ann", "bob", "cy"):
        store.users.create(name)
    seen: list[str] = []
    page = client.get("/users").text
    assert "Newest</a>" not in page
    while True:
        rows = re.findall(r"<tr><td>\d+</td><td>(\w+)</td>", page)
        assert len(rows) <= 2
        seen += rows
        older = re.search(r'href="(/users\?after=\d+)" rel="next"', page)
        if older is None:
            break
        page = client.get(older[1]).text
        assert "Newest</a>" in page and len(seen) < 10
    assert seen == ["cy", "bob", "ann", "root"]  # newest first; the system user is not shown
    for garbage in ("x", "-1", "9" * 40):
        assert client.get(f"/users?after={garbage}").status == 400, garbage

    form = client.get("/tokens").text
    assert '<select name="user">' not in form and 'name="user" required' in form
    made = client.post(
        "/tokens", {**client.get("/tokens").form("/tokens"), "user": "bob", "name": "typed"}
    )
    assert made.status == 303
    (token,) = [t for t in store.tokens.list() if t.name == "typed"]
    assert token.created_by_id == store.users.get("bob").id
    row = client.get("/tokens").text.split(f'<tr id="{token.abid}">')[1].split("</tr>")[0]
    assert "<td>bob</td>" in row


def test_token_secret_is_shown_once_and_revocation_asks_first(
    client: Client, store: tokenstore.Store, records: dict[str, str]
) -> None:
    alice = store.users.get("alice")
    made = client.post(
        "/tokens",
        {
            **client.get("/tokens").form("/tokens"),
            "user": str(alice.id),
            "name": "ci",
            "expires_days": "30",
            "scopes": "a:read, b:write",
        },
    )
    assert made.status == 303 and made.header("Location") == "/tokens"
    once = client.get("/tokens")
    secret = re.search(r'id="secret" class="secret" value="([^"]+)"', once.text)
    assert secret, once.text
    token = store.tokens.authenticate(secret[1])
    assert token.name == "ci" and token.scopes == ["a:read", "b:write"]
    assert token.created_by_id == alice.id and token.expires is not None
    assert f"Token {token.abid} created." in once.text
    assert token.token_redacted in once.text
    for route in GET_ROUTES:  # never again, anywhere
        assert secret[1] not in client.get(route.format(**records)).text

    ask = client.get(f"/tokens/{token.abid}/revoke")
    assert "for good?" in ask.text and store.tokens.get(token.abid).revoked_at is None
    done = client.post(f"/tokens/{token.abid}/revoke")
    assert done.status == 303
    assert store.tokens.get(token.abid).revoked_at is not None
    row = client.get("/tokens").text.split(f'<tr id="{token.abid}">')[1].split("</tr>")[0]
    assert "revoked" in row and "Revoke…" not in row


def test_the_token_owner_typed_with_blanks_around_it_is_found(
    client: Client, store: tokenstore.Store
) -> None:
    """Past 50 users the owner is typed: a name or id pasted with a space or a tab around it
    named no user; the other fields of the page are stripped the same way."""
    bob = store.users.create("bob")
    for typed in (" bob ", "\tbob", f" {bob.id}\n"):
        form = client.get("/tokens").form("/tokens")
        page = client.post("/tokens", {**form, "user": typed, "name": repr(typed)})
        assert page.status == 303, (typed, page.text)
    owners = {t.name: t.created_by_id for t in store.tokens.list() if t.name != "admin"}
    assert len(owners) == 3 and set(owners.values()) == {bob.id}


def test_a_create_token_form_sent_twice_makes_one_token(
    client: Client, store: tokenstore.Store
) -> None:
    """A double click, or the form sent again from the history: each rendered form carries
    a one-time id, and a second send is refused with a line saying so."""
    form = {**client.get("/tokens").form("/tokens"), "user": "root", "name": "once"}
    assert client.post("/tokens", form).status == 303
    again = client.post("/tokens", form)
    assert again.status == 400 and "sent already" in again.text
    assert re.search(r'id="secret" class="secret" value="[^"]+"', again.text)  # not lost
    assert [t.name for t in store.tokens.list()].count("once") == 1
    other = client.get("/tokens").form("/tokens")  # a form rendered anew is a new one
    assert other["form_id"] != form["form_id"]
    assert client.post("/tokens", {**other, "user": "root", "name": "once"}).status == 303
    without = client.post("/tokens", {"user": "root", "name": "bare"})
    assert without.status == 400 and "form_id" in without.text
    assert [t.name for t in store.tokens.list()].count("once") == 2
    assert "bare" not in [t.name for t in store.tokens.list()]


def test_a_redeliver_form_sent_twice_redelivers_once(
    client: Client, store: tokenstore.Store, receiver: Any
) -> None:
    url, received, _ = receiver
    sent = store.webhooks.ping(store.webhooks.create("twice", tokenstore.User, url))
    path = f"/deliveries/{sent.abid}/redeliver"
    form = client.get(f"/deliveries/{sent.abid}").form(path)
    assert client.post(path, form).status == 303
    again = client.post(path, form)
    assert again.status == 400 and "sent already" in again.text
    assert store.webhooks.delivery(sent.abid).attempts == 2 and len(received) == 2


def test_revoking_the_token_signed_in_with_warns_first(
    client: Client, store: tokenstore.Store, records: dict[str, str]
) -> None:
    """Revoking it ends the session at once: the page asking first says so."""
    (own,) = [token for token in store.tokens.list() if token.name == "admin"]
    ask = client.get(f"/tokens/{own.abid}/revoke")
    assert ask.status == 200 and "the token this session signed in with" in ask.text
    other = client.get(f"/tokens/{records['token']}/revoke")
    assert "signed in with" not in other.text
    done = client.post(f"/tokens/{own.abid}/revoke")
    assert done.status == 303
    assert client.get("/tokens").header("Location") == "/login?next=%2Ftokens"


def test_a_delete_or_revoke_form_sent_twice_lands_on_the_list_saying_so(
    client: Client, store: tokenstore.Store, records: dict[str, str]
) -> None:
    """Two tabs, the back button, a double click: the second delete of a hook found it gone,
    and got a 404 page. It lands on the list, which says so; a revocation sent again says it
    was revoked already. A hook that is not there, in a form that was never shown, stays a 404."""
    path = f"/webhooks/{records['hook']}/delete"
    form = client.get(path).form(path)
    assert client.post(path, form).status == 303
    again = client.post(path, form)
    assert again.status == 303 and again.header("Location") == "/webhooks", again.text
    assert "Webhook recorded-hook was deleted already" in client.get("/webhooks").text
    assert client.post(path).status == 404  # not the confirmation's form
    assert client.get(path).status == 404
    revoke = f"/tokens/{records['token']}/revoke"
    form = client.get(revoke).form(revoke)
    assert client.post(revoke, form).header("Location") == "/tokens"
    again = client.post(revoke, form)
    assert again.status == 303 and again.header("Location") == "/tokens", again.text
    listed = client.get("/tokens").text
    assert f"Token {records['token']} was revoked already" in listed


def test_revoking_the_token_signed_in_with_twice_lands_on_the_sign_in_form(
    client: Client, store: tokenstore.Store
) -> None:
    """The first send revoked it and so ended the session: the second got "sign in first"."""
    (own,) = [token for token in store.tokens.list() if token.name == "admin"]
    path = f"/tokens/{own.abid}/revoke"
    form = client.get(path).form(path)
    assert client.post(path, form).status == 303
    again = client.post(path, form)
    assert again.status == 303 and again.header("Location") == "/login", again.text
    assert client.get("/").status == 303
    other = client.post("/users", {"username": "bob"})  # any other form is refused
    assert other.status == 403 and "bob" not in [u.username for u in store.users.list()]


def test_tokens_are_shown_a_page_at_a_time_newest_first(
    client: Client, store: tokenstore.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store of many tokens is not rendered whole: a page, then "Older" to the next."""
    for i in range(4):
        store.tokens.create(name=f"t{i}")
    newest_first = [t.abid for t in reversed(store.tokens.list(include_revoked=True))]
    assert len(newest_first) == 5  # and the admin's own

    def shown(page: str) -> list[str]:
        return re.findall(r'<tr id="(apt_\w+)">', page)

    monkeypatch.setattr(_pages, "PAGE_SIZE", 2)
    seen: list[str] = []
    page = client.get("/tokens").text
    assert "Newest</a>" not in page and shown(page) == newest_first[:2]
    while True:
        seen += shown(page)
        older = re.search(r'href="(/tokens\?after=[^"]+)" rel="next"', page)
        if older is None:
            break
        page = client.get(html.unescape(older[1])).text
        assert "Newest</a>" in page and len(seen) < 10
    assert seen == newest_first
    for garbage, code in [("zzz", 400), ("apt_" + "0" * 26, 404), (newest_first[0], 200)]:
        answer = client.get(f"/tokens?after={garbage}")
        assert answer.status == code, (garbage, answer.text)


def test_token_form_errors_are_shown(client: Client, store: tokenstore.Store) -> None:
    root = store.users.get("root")
    sent = client.get("/tokens").form("/tokens")  # a refused form may be sent again, fixed
    for form, message in [
        ({"expires_days": "soon"}, "give a number of days"),
        ({"expires_days": "-1"}, "0 &lt; days"),
        ({"expires_days": "1e-300"}, "0 &lt; days"),  # above 0, but no time at all
        ({"scopes": "Bad Scope!"}, "is not valid"),
        ({"user": "nobody"}, "no user"),
        ({"user": "\u00b2"}, "no user"),  # a digit to str.isdigit(), not to int()
        ({"user": "9" * 30}, "user id must be between"),
        ({"user": "9" * 5000}, "no user"),  # past int()'s digit limit: a name, then
    ]:
        page = client.post("/tokens", {**sent, "user": str(root.id), **form})
        assert page.status in (400, 404) and message in page.text, (form, page.text)
    assert len(store.tokens.list()) == 1  # only the admin's own


def test_webhook_pages_never_show_private_values(
    client: Client, store: tokenstore.Store, receiver: Any
) -> None:
    url, received, _ = receiver
    made = client.post(
        "/webhooks",
        {
            "name": "orders",
            "ref": "tokenstore.User",
            "endpoint": url,
            "signal": "CREATE",
            "headers": "X-Api-Key: header-secret-value\n\nX-Plain: also-hidden",
            "auth_token": "Bearer auth-secret-value",
        },
    )
    assert made.status == 303
    hook = store.webhooks.get("orders")
    assert made.header("Location") == f"/webhooks/{hook.abid}"
    assert hook.headers == {"X-Api-Key": "header-secret-value", "X-Plain": "also-hidden"}
    once = client.get(f"/webhooks/{hook.abid}")
    assert hook.secret in once.text and "Signing secret of webhook orders" in once.text
    assert "X-Api-Key: ••••••" in once.text

    pinged = client.post(f"/webhooks/{hook.abid}/ping")
    delivery = pinged.header("Location") or ""
    assert delivery.startswith("/deliveries/msg_")
    shown = client.get(delivery)
    assert "Ping sent: delivered." in shown.text
    assert len(received) == 1 and received[0][0]["X-Api-Key"] == "header-secret-value"

    pages = [client.get(p) for p in ("/", "/webhooks", f"/webhooks/{hook.abid}", delivery)]
    pages.append(client.get(f"/deliveries?hook={hook.abid}"))
    for page in pages:
        for private in ("header-secret-value", "also-hidden", "auth-secret-value", hook.secret):
            assert private not in page.text, (private, page.text)


def test_delivery_page_shows_what_was_sent(
    client: Client, store: tokenstore.Store, receiver: Any
) -> None:
    url, received, _ = receiver
    hook = store.webhooks.create(
        "shown", tokenstore.User, url, headers={"X-Key": "k-value"}, keep_last_response=True
    )
    sent = store.webhooks.ping(hook)
    page = client.get(f"/deliveries/{sent.abid}")
    headers = dict(
        (html.unescape(k), html.unescape(v))
        for k, v in re.findall(r"<tr><th>([^<]+)</th><td[^>]*><code>([^<]*)</code>", page.text)
    )
    got, body = received[0]
    assert headers["X-Key"] == "••••••"
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature", "Content-Type"):
        assert headers[name] == got[name], name
    tokenstore.verify_webhook(hook.secret, headers, body)
    payload = html.unescape(page.text.split('<pre id="payload">')[1].split("</pre>")[0])
    assert json.loads(payload) == json.loads(body)
    assert '<dd id="response-status">200</dd>' in page.text
    assert "<pre>received</pre>" in page.text  # kept, and this was the hook's last attempt
    assert re.search(r"took \d+ ms", page.text)

    again = client.post(
        f"/deliveries/{sent.abid}/redeliver", page.form(f"/deliveries/{sent.abid}/redeliver")
    )
    assert again.status == 303 and again.header("Location") == f"/deliveries/{sent.abid}"
    assert "Redelivered: delivered." in client.get(f"/deliveries/{sent.abid}").text
    assert store.webhooks.delivery(sent.abid).attempts == 2
    assert len(received) == 2 and received[1][0]["webhook-id"] == sent.abid


def test_webhook_edit_enable_disable_rotate_delete(
    client: Client, store: tokenstore.Store, receiver: Any
) -> None:
    url, _, _ = receiver
    hook = store.webhooks.create(
        "editable", tokenstore.User, url, headers={"X-Key": "v1"}, auth_token="t1"
    )
    path = f"/webhooks/{hook.abid}"
    form = {"name": "edited", "endpoint": url + "/v2", "signal": "UPDATE", "headers": ""}

    def edit(**fields: str) -> Any:
        return client.post(path, {**client.get(path).form(path), **form, **fields})

    assert edit().status == 303
    hook = store.webhooks.get(hook.abid)
    assert (hook.name, hook.endpoint, hook.signal) == ("edited", url + "/v2", "UPDATE")
    assert hook.headers == {"X-Key": "v1"} and hook.auth_token == "t1"  # empty keeps them
    assert edit(headers="X-New: v2", auth_token="t2").status == 303
    hook = store.webhooks.get(hook.abid)
    assert hook.headers == {"X-New": "v2"} and hook.auth_token == "t2"
    assert edit(clear_headers="on", clear_auth_token="on").status == 303
    hook = store.webhooks.get(hook.abid)
    assert hook.headers == {} and hook.auth_token == ""
    refused = edit(endpoint="ftp://example.com/")
    assert refused.status == 400 and store.webhooks.get(hook.abid).endpoint == url + "/v2"
    bad_header = edit(headers="no colon here")
    assert bad_header.status == 400 and "line 1" in bad_header.text

    client.post(f"{path}/disable", {"reason": "receiver <down> for maintenance"})
    page = client.get(path)
    assert not store.webhooks.get(hook.abid).enabled
    assert "receiver &lt;down&gt; for maintenance" in page.text
    assert "receiver &lt;down&gt;" in client.get("/webhooks").text
    client.post(f"{path}/enable")
    assert store.webhooks.get(hook.abid).enabled

    old = store.webhooks.get(hook.abid).secret
    assert client.post(f"{path}/rotate", client.get(path).form(f"{path}/rotate")).status == 303
    rotated = store.webhooks.get(hook.abid)
    assert rotated.secret != old and rotated.previous_secret == old
    once = client.get(path).text
    assert rotated.secret in once and old not in once and "the old one signs too" in once
    assert rotated.secret not in client.get(path).text

    ask = client.get(f"{path}/delete")
    assert "Delete webhook edited" in ask.text and store.webhooks.list()
    assert client.post(f"{path}/delete").header("Location") == "/webhooks"
    assert store.webhooks.list() == []
    assert client.get(path).status == 404


def test_enabling_an_enabled_hook_or_disabling_a_disabled_one_changes_nothing(
    client: Client, store: tokenstore.Store, receiver: Any
) -> None:
    """The button sent twice, or from a tab showing the hook's old state: no error, and
    neither the failure streak nor the reason it was disabled for is lost."""
    url, _, status = receiver
    status[0] = 500
    hook = store.webhooks.create("steady", tokenstore.User, url)
    store.webhooks.ping(hook)
    path = f"/webhooks/{hook.abid}"
    before = store.webhooks.get(hook.abid)
    assert before.enabled and before.failure_count == 1
    page = client.post(f"{path}/enable")
    assert page.status == 303 and "already enabled" in client.get(path).text
    after = store.webhooks.get(hook.abid)
    assert (after.failure_count, after.modified_at) == (1, before.modified_at)

    store.webhooks.disable(hook, "the receiver answered 410 Gone")
    before = store.webhooks.get(hook.abid)
    page = client.post(f"{path}/disable", {"reason": ""})
    assert page.status == 303 and "already disabled" in client.get(path).text
    after = store.webhooks.get(hook.abid)
    assert after.disabled_reason == "the receiver answered 410 Gone"
    assert after.modified_at == before.modified_at and not after.enabled


def test_a_hook_saved_in_another_tab_meanwhile_is_not_overwritten(
    client: Client, store: tokenstore.Store, receiver: Any
) -> None:
    """Two tabs show the edit form; the later save names the version it was shown, and is
    refused with a line saying the hook changed, instead of putting back the old values."""
    url, _, _ = receiver
    hook = store.webhooks.create("tabs", tokenstore.User, url, signal="CREATE")
    path = f"/webhooks/{hook.abid}"
    first, second = client.get(path).form(path), client.get(path).form(path)
    assert first["hook_version"] == second["hook_version"]
    time.sleep(0.01)  # the version is the hook's modified_at, in milliseconds
    fields = {"name": "tabs", "endpoint": url}
    assert client.post(path, {**first, **fields, "signal": "UPDATE"}).status == 303
    stale = client.post(path, {**second, **fields, "signal": "CREATE", "name": "renamed"})
    assert stale.status == 400 and "changed meanwhile" in stale.text
    assert (store.webhooks.get(hook.abid).signal, store.webhooks.get(hook.abid).name) == (
        "UPDATE",
        "tabs",
    )
    without = client.post(path, {**fields, "signal": "DELETE"})
    assert without.status == 400 and "hook_version" in without.text
    assert store.webhooks.get(hook.abid).signal == "UPDATE"
    fresh = client.get(path).form(path)
    assert client.post(path, {**fresh, **fields, "signal": "DELETE"}).status == 303


def test_a_rotate_form_sent_twice_rotates_once(
    client: Client, store: tokenstore.Store, receiver: Any
) -> None:
    """A double click, or the form sent again from the history: one rotation, and a line
    saying why the second did nothing. The form carries the secret's version, not the secret."""
    url, _, _ = receiver
    hook = store.webhooks.create("twice", tokenstore.User, url)
    path = f"/webhooks/{hook.abid}"
    form = client.get(path).form(f"{path}/rotate")
    assert form["secret_version"] == hook.secret_version and hook.secret not in str(form)
    assert client.post(f"{path}/rotate", form).status == 303
    rotated = store.webhooks.get(hook.abid)
    again = client.post(f"{path}/rotate", form)
    assert again.status == 400 and "rotated meanwhile" in again.text
    assert rotated.secret in again.text  # the first rotation's secret, shown once, is not lost
    assert store.webhooks.get(hook.abid).secret == rotated.secret
    assert rotated.previous_secret == hook.secret
    without = client.post(f"{path}/rotate")
    assert without.status == 400 and "secret_version" in without.text
    assert store.webhooks.get(hook.abid).secret == rotated.secret
    # A form made by hand is told about its own field, not the API's name for it (expected).
    nul = client.post(f"{path}/rotate", {**form, "secret_version": "a\x00b"})
    assert nul.status == 400 and "secret_version must not contain a NUL" in nul.text, nul.text
    assert "expected" not in nul.text and store.webhooks.get(hook.abid).secret == rotated.secret


def test_a_rotated_out_secret_past_its_grace_is_not_said_to_sign(
    ts: tokenstore.Store, clock: Any
) -> None:
    """The store keeps one rotated-out secret, erased by the next sending round once its grace
    is over; until then the page said it "signs too until" a time already past."""
    browser = signed_in(admin.make_app(ts), ts)
    hook = ts.webhooks.create("graced", tokenstore.User, "https://hooks.example/in")
    ts.webhooks.rotate_secret(hook, grace=timedelta(minutes=5))
    path = f"/webhooks/{hook.abid}"
    browser.get(path)  # the new secret, shown once
    assert "the previous one signs too until" in browser.get(path).text
    clock.advance(minutes=6)
    page = browser.get(path).text
    assert "signs too" not in page and "the previous one stopped signing at" in page


def test_hook_health_shows_failures_and_next_attempt(
    client: Client, store: tokenstore.Store, receiver: Any
) -> None:
    url, _, status = receiver
    status[0] = 503
    hook = store.webhooks.create("flaky", tokenstore.User, url)
    failed = store.webhooks.ping(hook)
    assert failed.status == "failed" and failed.next_attempt_at is not None
    page = client.get(f"/webhooks/{hook.abid}").text
    assert "1 failures in a row" in page
    assert failed.next_attempt_at.strftime("%Y-%m-%d %H:%M:%S UTC") in page
    shown = client.get(f"/deliveries/{failed.abid}").text
    assert "HTTP 503" in shown and '<dd id="response-status">503</dd>' in shown
    assert "Not kept" in shown  # keep_last_response is off


def test_deliveries_filter_and_cursor_paging(
    client: Client, store: tokenstore.Store, receiver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _, status = receiver
    one = store.webhooks.create("one", tokenstore.User, url)
    two = store.webhooks.create("two", tokenstore.User, url + "/two")
    sent = [store.webhooks.ping(one) for _ in range(3)]
    status[0] = 500
    failed = store.webhooks.ping(two)

    def newest_first(deliveries: list[tokenstore.WebhookDelivery]) -> list[str]:
        """The log's order: by (created_at, abid), so pings made in the same millisecond go
        by their ABIDs (whose last part is random), not in the order they were sent."""
        return [d.abid for d in sorted(deliveries, key=lambda d: (d.created_at, d.abid))][::-1]

    def listed(query: str) -> list[str]:
        page = client.get(f"/deliveries?{query}")
        assert page.status == 200, page.text
        return re.findall(r'<a href="/deliveries/(msg_\w+)">', page.text)

    assert listed("") == newest_first([*sent, failed])
    assert listed(f"hook={two.abid}") == [failed.abid]
    assert listed("hook=one&status=delivered") == newest_first(sent)
    assert listed("status=failed") == [failed.abid]
    assert listed("status=dead") == []
    assert client.get("/deliveries?status=lost").status == 400

    monkeypatch.setattr(_pages, "PAGE_SIZE", 2)
    first = client.get("/deliveries?hook=one").text
    assert re.findall(r'<a href="/deliveries/(msg_\w+)">', first) == newest_first(sent)[:2]
    older = re.search(r'href="(/deliveries\?[^"]+)" rel="next"', first)
    assert older, first
    second = client.get(html.unescape(older[1])).text
    assert re.findall(r'<a href="/deliveries/(msg_\w+)">', second) == newest_first(sent)[2:]
    assert 'rel="next"' not in second and "Newest" in second
    # A cursor that is no delivery's webhook-id at all says so instead of showing some page.
    for garbage, code in [("zzz", 404), ("%00", 404), ("apt_" + "0" * 26, 404), (failed.abid, 200)]:
        page = client.get(f"/deliveries?after={garbage}")
        assert page.status == code, (garbage, page.text)
    # One of a delivery pruned since is still a place in the log: here, before any delivery.
    gone = client.get("/deliveries?after=msg_" + "0" * 26)
    assert gone.status == 200 and "/deliveries/msg_" not in gone.text


# -- escaping -------------------------------------------------------------------------------


def test_everything_is_escaped(client: Client, store: tokenstore.Store, receiver: Any) -> None:
    url, _, _ = receiver
    evil = "<script>alert(1)</script>"
    hook = store.webhooks.create(evil, tokenstore.User, url, headers={"X-Q'&": "v"})
    store.tokens.create(store.users.get("root"), name='<img src=x onerror="alert(2)">')
    sent = store.webhooks.ping(hook)
    pages = ["/", "/webhooks", f"/webhooks/{hook.abid}", "/tokens", "/deliveries"]
    pages += [f"/deliveries/{sent.abid}", f"/webhooks/{hook.abid}/delete"]
    for path in pages:
        text = client.get(path).text
        assert "<script>alert" not in text and "<img src=x" not in text, path
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in client.get("/webhooks").text
    assert "&lt;img src=x onerror=&#34;alert(2)&#34;&gt;" in client.get("/tokens").text
    assert "X-Q&#39;&amp;: ••••••" in client.get(f"/webhooks/{hook.abid}").text
    error = client.post("/users", {"username": evil})
    assert error.status == 400 and "&lt;script&gt;" in error.text and evil not in error.text
    missing = client.get("/webhooks/%3Cscript%3E")
    assert missing.status == 404 and "<script>" not in missing.text


def test_text_reordering_and_control_characters_are_spelled_out(
    client: Client, store: tokenstore.Store, receiver: Any
) -> None:
    """A right-to-left override in a name would show the rest of a line reversed."""
    url, _, _ = receiver
    name = "pay\u202egnp.exe"
    hook = store.webhooks.create(name, tokenstore.User, url + "/\u2066x")
    store.webhooks.disable(hook, "bell\x07 and \u2028 break")
    pages = ["/webhooks", f"/webhooks/{hook.abid}", f"/webhooks/{hook.abid}/delete"]
    for path in pages:
        text = client.get(path).text
        for hidden in ("\u202e", "\u2066", "\x07", "\u2028"):
            assert hidden not in text.split('name="name" value=')[0], (path, hidden)
    shown = client.get(f"/webhooks/{hook.abid}")
    page = shown.text
    assert "pay\\u202egnp.exe" in page and "bell\\u0007 and \\u2028 break" in page
    # The edit form keeps the value as stored: saving it unchanged changes nothing.
    form = re.search(r'name="name" value="([^"]*)"', page)
    endpoint = re.search(r'name="endpoint" type="url" value="([^"]*)"', page)
    assert form and endpoint and html.unescape(form[1]) == name
    saved = client.post(
        f"/webhooks/{hook.abid}",
        {
            **shown.form(f"/webhooks/{hook.abid}"),
            "name": html.unescape(form[1]),
            "endpoint": html.unescape(endpoint[1]),
            "signal": hook.signal,
        },
    )
    assert saved.status == 303
    assert store.webhooks.get(hook.abid).name == name
    assert store.webhooks.get(hook.abid).endpoint == url + "/\u2066x"


# -- mounting, serving, the extra -----------------------------------------------------------


def test_mounted_under_a_prefix(app: admin.AdminApp, admin_secret: str) -> None:
    visitor = Client(app, script_name="/admin")
    form = visitor.get("/login")
    assert 'action="/admin/login"' in form.text and "Path=/admin" in (
        form.header("Set-Cookie") or ""
    )
    assert visitor.post("/login", {"token": admin_secret}).header("Location") == "/admin/"
    page = visitor.get("/")
    assert 'href="/admin/tokens"' in page.text and 'href="/admin/static/admin.css"' in page.text
    assert Client(app, script_name="/admin").get("/").header("Location") == "/admin/login"


def test_only_loopback_unless_public(store: tokenstore.Store) -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert admin.public_warning(host) is None
    assert "TLS" in (admin.public_warning("0.0.0.0") or "")
    with pytest.raises(tokenstore.ValidationError, match="--public"):
        admin.make_admin_server(store, "0.0.0.0", 0)
    with pytest.raises(tokenstore.ValidationError, match="--public"):
        admin.make_admin_server(store, "192.0.2.1", 0)
    for empty in ("", " ", "[]"):  # would listen on every address, shown as http://:PORT/
        with pytest.raises(tokenstore.ValidationError, match="--host is empty"):
            admin.make_admin_server(store, empty, 0, public=True)


@pytest.mark.parametrize(
    ("port", "shown"),
    [(65536, "65536"), (-1, "-1"), (10**5000, "bits"), ("80", "str")],
    ids=["above", "below", "huge", "text"],
)
def test_a_port_out_of_range_is_a_validation_error(
    store: tokenstore.Store, port: object, shown: str
) -> None:
    """A port of over 4,300 digits is no number str() will write: the message says its size."""
    with pytest.raises(tokenstore.ValidationError, match=f"port.*{shown}"):
        admin.make_admin_server(store, "127.0.0.1", port)  # type: ignore[arg-type]


def run_cli(db: Path, *args: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    code = f"import sys\n{prelude}\nfrom tokenstore._cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, "--db", str(db), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_refuses_a_public_address_without_public(store_file: Path) -> None:
    db_path = store_file
    result = run_cli(db_path, "serve", "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--public" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_clear_error_names_the_extra_when_jinja2_is_missing(store_file: Path) -> None:
    db_path = store_file
    blocked = "sys.modules['jinja2'] = None"
    result = run_cli(db_path, "serve", "--port", "0", prelude=blocked)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "tokenstore[admin]" in result.stderr
    code = (
        f"import sys\n{blocked}\nimport tokenstore, tokenstore.admin\n"
        "store = tokenstore.open(sys.argv[1])\n"
        "try:\n    tokenstore.admin.make_app(store)\n"
        "except tokenstore.TokenstoreError as exc:\n    print(type(exc).__name__, exc)\n"
    )
    shown = subprocess.run(
        [sys.executable, "-c", code, str(db_path)], capture_output=True, text=True, timeout=60
    )
    assert shown.stdout.startswith("AdminUnavailable ") and "tokenstore[admin]" in shown.stdout


def test_a_client_that_hangs_up_leaves_no_traceback(
    store: tokenstore.Store, capfd: pytest.CaptureFixture[str]
) -> None:
    server = admin.make_admin_server(store, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        for request in (b"GET /login HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /login HTTP/1.1\r\n"):
            sock = socket.create_connection(server.server_address[:2], timeout=10)
            sock.sendall(request)
            time.sleep(0.2)  # the server is reading the next request, or the headers
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        for garbled in (b"\x00\xff garbage\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n"):
            with socket.create_connection(server.server_address[:2], timeout=10) as sock:
                sock.sendall(garbled)
                answer = b"".join(iter(lambda: sock.recv(4096), b""))  # until it closes
                assert answer.startswith((b"HTTP/1.0 400 ", b"HTTP/1.0 505 ")), answer
                assert b"Error code: 400" in answer or b"Error code: 505" in answer
        url = f"http://127.0.0.1:{server.server_address[1]}/login"
        assert requests.get(url, timeout=10).status_code == 200
    finally:
        server.shutdown()
        server.server_close()
    assert "Traceback" not in capfd.readouterr().err


def test_the_request_log_spells_out_control_characters(
    store: tokenstore.Store, capfd: pytest.CaptureFixture[str]
) -> None:
    """An ESC in a request line must not reach the operator's terminal as one."""
    with running(store) as server:
        for request in (b"G\x1bET /login", b"GET /\x1b[2J\x07", b"GET /\xc2\x9b2J"):
            with socket.create_connection(server.server_address[:2], timeout=10) as sock:
                sock.sendall(request + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                while sock.recv(4096):  # read the whole answer, so the request is logged
                    pass
    err = capfd.readouterr().err
    assert "G\\x1bET /login" in err and "GET /\\x1b[2J\\x07" in err and "\\x9b2J" in err
    assert not any((ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0 for c in err), err


def test_serve_answers_on_loopback_and_asks_to_sign_in(tmp_path: Path) -> None:
    with serving(tmp_path / "store.sqlite3", tmp_path / "serve.log") as url:
        first = requests.get(f"{url}/deliveries", allow_redirects=False, timeout=10)
        assert first.status_code == 303
        assert first.headers["Location"] == "/login?next=%2Fdeliveries"
        form = requests.get(f"{url}/login", timeout=10)
        assert form.status_code == 200 and 'name="csrf"' in form.text
        assert "HttpOnly" in form.headers["Set-Cookie"]
    assert "GET /deliveries" in (tmp_path / "serve.log").read_text()


def test_connections_beyond_the_bound_are_closed_and_the_page_serves_again_once_free(
    store: tokenstore.Store,
) -> None:
    server = admin.make_admin_server(store, "127.0.0.1", 0)
    server.max_connections = 2
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    address = server.server_address[:2]
    try:
        idle = [socket.create_connection(address, timeout=10) for _ in range(2)]
        try:
            with socket.create_connection(address, timeout=10) as extra:
                assert extra.recv(1) == b""  # closed unanswered, at once
        finally:
            for sock in idle:
                sock.close()
        deadline = time.monotonic() + 10
        while True:  # the idle connections' threads end when they see them closed
            try:
                page = requests.get(f"http://{address[0]}:{address[1]}/login", timeout=10)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        server.shutdown()
        server.server_close()
    assert page.status_code == 200


def test_on_loopback_the_page_answers_only_to_names_of_this_machine(tmp_path: Path) -> None:
    """A page found by another site's name (DNS rebinding) is refused before anything else."""
    with serving(tmp_path / "store.sqlite3", tmp_path / "serve.log") as url:
        port = urlsplit(url).port

        def status(host: str) -> int:
            answer = requests.get(f"{url}/login", headers={"Host": host}, timeout=10)
            return answer.status_code

        for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.nip.io", "x"):
            assert status(host) == 400, host
        refused = requests.get(f"{url}/login", headers={"Host": "attacker.example"}, timeout=10)
        assert "attacker.example" in refused.text and "localhost" in refused.text
        for host in ("localhost", f"localhost:{port}", "app.localhost", f"127.0.0.1:{port}"):
            assert status(host) == 200, host
        assert status(f"[::1]:{port}") == 200


def test_public_lifts_the_host_check_for_a_proxy_in_front(store: tokenstore.Store) -> None:
    server = admin.make_admin_server(store, "127.0.0.1", 0, public=True)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/login"
        page = requests.get(url, headers={"Host": "admin.example.org"}, timeout=10)
    finally:
        server.shutdown()
        server.server_close()
    assert page.status_code == 200 and 'name="csrf"' in page.text


def test_the_new_hook_form_offers_only_models_a_hook_may_watch(
    client: Client, store: tokenstore.Store
) -> None:
    page = client.get("/webhooks")
    assert page.status == 200
    offered = re.findall(r"<option>([^<]+)</option>", page.text)
    assert "tokenstore.User" in offered and "tokenstore.APIToken" in offered
    assert "tokenstore.WebhookDelivery" not in offered  # refused as a hook's ref


def test_overview_counts_a_token_expired_by_a_microsecond_as_no_longer_live(
    ts: tokenstore.Store, clock: Any
) -> None:
    _, secret = ts.tokens.create(ts.users.create("root"), name="admin", scopes=["admin"])
    _, brief = ts.tokens.create(ts.users.create("bob"), expires=timedelta(minutes=1))
    browser = Client(admin.make_app(ts))
    assert browser.sign_in(secret).status == 303
    clock.advance(minutes=1, microseconds=1)  # past it, if by less than the stored millisecond
    with pytest.raises(tokenstore.ExpiredToken):
        ts.tokens.authenticate(brief)
    counts = dict(re.findall(r"<dt>([a-z ]+)</dt><dd>(\d+)</dd>", browser.get("/").text))
    assert counts["live tokens"] == "1"
