"""The admin page under hostile input: what adversarial probing found, each kept as a test.

Damaged rows, odd request framing, cookies of other applications on the
same host, and Host headers a browser would never send: each gets a clear
4xx (or is served as it should be), never a 500 or a traceback.
"""

from __future__ import annotations

import io
import socket
import sqlite3
import time
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import _db
import pytest
import requests
from _admin_helpers import Client, Page, connected, running, signed_in
from _http import trickled

import tokenstore
from tokenstore import admin

#: Nothing listens there: a ping fails at once, and a delivery is recorded.
NOWHERE = "http://127.0.0.1:9/hook"


@pytest.fixture
def client(store: tokenstore.Store) -> Client:
    return signed_in(admin.make_app(store), store)


# -- damaged rows ---------------------------------------------------------------------------


@pytest.mark.sqlite_only  # PostgreSQL enforces the columns' types
def test_a_refused_change_whose_page_is_damaged_too_is_a_400(
    client: Client, store: tokenstore.Store
) -> None:
    """The change fails on a damaged row, and so does the page that would show the error."""
    hook = store.webhooks.create("broken", tokenstore.User, NOWHERE)
    sent = store.webhooks.ping(hook)
    redeliver = f"/deliveries/{sent.abid}/redeliver"
    redeliver_form = client.get(f"/deliveries/{sent.abid}").form(redeliver)  # shown before
    with _db.Raw(store) as raw:
        raw.execute(
            "UPDATE tokenstore_outbound_webhook SET last_success = 'garbage' WHERE abid = ?",
            (hook.abid,),
        )
    forms = {f"/webhooks/{hook.abid}/{action}": {} for action in ("enable", "disable", "ping")}
    forms[f"/webhooks/{hook.abid}/rotate"] = {"secret_version": hook.secret_version}
    forms[redeliver] = redeliver_form
    for path, form in forms.items():
        page = client.post(path, form)
        assert page.status == 400, (path, page.status)
        assert "column last_success" in page.text and "Traceback" not in page.text


def test_a_payload_nested_too_deep_to_indent_is_shown_as_stored(
    client: Client, store: tokenstore.Store
) -> None:
    sent = store.webhooks.ping(store.webhooks.create("deep", tokenstore.User, NOWHERE))
    nested = "[" * 100_000 + "]" * 100_000
    with _db.Raw(store) as raw:
        raw.execute(
            "UPDATE tokenstore_webhook_delivery SET payload = ? WHERE abid = ?", (nested, sent.abid)
        )
    page = client.get(f"/deliveries/{sent.abid}")
    assert page.status == 200 and nested in page.text


# -- headers the page sets ------------------------------------------------------------------


def test_a_stored_id_or_a_mount_point_cannot_add_response_headers(store: tokenstore.Store) -> None:
    """An ABID edited to hold a line break reaches Location; a mount point, Set-Cookie's Path."""
    hook = store.webhooks.create("forged", tokenstore.User, NOWHERE)
    with _db.Raw(store) as raw:
        raw.execute(
            "UPDATE tokenstore_outbound_webhook SET abid = ? WHERE abid = ?",
            ("whk_x\r\nSet-Cookie: a=b", hook.abid),
        )
    app = admin.make_app(store)
    administrator = signed_in(app, store)
    for browser in (administrator, Client(app, script_name="/admin;\r\nX-Evil: 1")):
        for page in (browser.post("/webhooks/forged/disable"), browser.get("/login")):
            for name, value in page.headers:
                assert "\r" not in value and "\n" not in value, (name, value)
            cookie = page.header("Set-Cookie")
            attributes = [part.split("=")[0] for part in (cookie or "").split("; ")[1:]]
            assert cookie is None or attributes == ["Path", "Max-Age", "HttpOnly", "SameSite"]
    location = administrator.post("/webhooks/forged/enable").header("Location")
    assert location == "/webhooks/whk_x%0D%0ASet-Cookie%3A%20a%3Db"


# -- cookies --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "others",
    [
        'prefs={"theme":"dark"}; {}',  # JSON, as many a framework writes it
        "greeting=hello world; {}",  # a space
        "expires=1; {}",  # a name SimpleCookie takes for an attribute
        "name=zoë; {}",  # not ASCII
        "a@b=1; {}",  # a name SimpleCookie refuses outright
        "{}; tokenstore_admin_80=from-another-path",  # the same name, set by another mount
        'tokenstore_admin_80="unterminated; {}',
        "tokenstore_admin=an-older-version; {}",
    ],
)
def test_other_cookies_of_this_host_do_not_hide_the_session(client: Client, others: str) -> None:
    """On localhost every port shares the cookies; the browser sends the most specific first."""
    ours = f"{client.cookie_name}={client.cookie}"
    page = client.request("GET", "/", extra={"HTTP_COOKIE": others.replace("{}", ours)})
    assert page.status == 200, page.header("Location")


def test_two_admin_pages_on_one_host_keep_their_sessions_apart(store: tokenstore.Store) -> None:
    """A browser keeps one cookie jar for a host, whatever the port: the second page's session
    cookie, of the same name, replaced the first's, which was signed out."""
    _, secret = store.tokens.create(store.users.create("root"), scopes=["admin"])
    browser = requests.Session()
    with running(store) as first, running(store) as second:
        urls = [f"http://127.0.0.1:{server.server_address[1]}" for server in (first, second)]
        for url in urls:
            form = Page(200, [], browser.get(f"{url}/login", timeout=10).content)
            signed_in = browser.post(
                f"{url}/login", {"csrf": form.csrf, "token": secret}, allow_redirects=False
            )
            assert signed_in.status_code == 303
        for url in urls:
            assert browser.get(f"{url}/", allow_redirects=False, timeout=10).status_code == 200
    names = sorted(cookie.name for cookie in browser.cookies)
    assert names == sorted(f"tokenstore_admin_{url.rpartition(':')[2]}" for url in urls)


# -- request framing ------------------------------------------------------------------------


def test_a_chunked_body_is_refused_even_with_a_content_length(
    client: Client, store: tokenstore.Store
) -> None:
    """Transfer-Encoding wins over Content-Length: the bytes are chunks, not the form."""
    data = f"a=1&csrf={client.csrf}&username=bob&z=".encode()
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)
    extra = {
        "HTTP_TRANSFER_ENCODING": "chunked",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    page = client.post("/users", extra=extra)
    assert page.status == 411 and "Transfer-Encoding" in page.text
    assert "bob" not in [user.username for user in store.users.list()]


# -- the Host check -------------------------------------------------------------------------


def _host_status(store: tokenstore.Store, host: str) -> int:
    """The status the loopback server's application answers a GET /login with ``host``."""
    server = admin.make_admin_server(store, "127.0.0.1", 0)
    try:
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/login", "HTTP_HOST": host}
        setup_testing_defaults(environ)
        started: list[str] = []
        server.get_app()(environ, lambda status, headers, exc_info=None: started.append(status))
    finally:
        server.server_close()
    return int(started[0].split()[0])


@pytest.mark.parametrize(
    "host",
    [
        "attacker.example@127.0.0.1",  # user information: the name is the part before
        "user:password@localhost",
        "localhost/attacker.example",
        "localhost?attacker.example",
        "localhost#attacker.example",
        "127.0.0.1:80:80",
        "localhost:-1",
        "localhost:http",
        "127.0.0.1\t",
        ".localhost",
        "app..localhost",
        "localhost..",
        "evil.example,app.localhost",  # a list of names
    ],
)
def test_a_host_header_that_is_not_a_name_and_a_port_is_refused(
    store: tokenstore.Store, host: str
) -> None:
    assert _host_status(store, host) == 400


@pytest.mark.parametrize(
    "host", ["localhost.", "LOCALHOST:8787", "App.Localhost", "[::1]:8787", "127.0.0.1:", "[::1]"]
)
def test_names_of_this_machine_in_any_case_with_a_port_or_a_final_dot_pass(
    store: tokenstore.Store, host: str
) -> None:
    assert _host_status(store, host) == 200


def test_two_host_headers_are_refused_whichever_comes_last(store: tokenstore.Store) -> None:
    """RFC 9112 wants a 400; wsgiref joins them with a comma, which must not pass for a name."""
    for hosts in (b"evil.example", b"app.localhost"), (b"app.localhost", b"evil.example"):
        with connected(store) as sock:
            sock.sendall(b"GET /login HTTP/1.1\r\nHost: %s\r\nHost: %s\r\n\r\n" % hosts)
            answer = b"".join(iter(lambda: sock.recv(4096), b""))
        assert answer.startswith(b"HTTP/1.0 400 "), (hosts, answer[:200])


@pytest.mark.parametrize(
    ("target", "host", "status"),
    [
        (b"http://127.0.0.1/login", b"127.0.0.1", b"200"),
        (b"HTTP://localhost:8787/login?next=%2F", b"evil.example", b"200"),  # the target's wins
        (b"http://app.localhost", b"127.0.0.1", b"303"),  # no path: the root, which signs in
        (b"http://evil.example/login", b"127.0.0.1", b"400"),
        (b"http://attacker.example@127.0.0.1/login", b"127.0.0.1", b"400"),
        (b"https:///login", b"127.0.0.1", b"400"),
    ],
)
def test_a_target_in_absolute_form_is_served_as_its_path_on_its_host(
    store: tokenstore.Store, target: bytes, host: bytes, status: bytes
) -> None:
    """RFC 9112, section 3.2.2: a server takes the absolute form, and its authority stands
    for Host, so the check of this machine's names judges it rather than the header."""
    with connected(store) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, host))
        answer = b"".join(iter(lambda: sock.recv(4096), b""))
    assert answer.startswith(b"HTTP/1.0 " + status + b" "), answer[:300]
    if status == b"200":
        assert b"Sign in" in answer or b"sign in" in answer, answer[-500:]


def test_a_refused_host_answers_head_without_a_body(store: tokenstore.Store) -> None:
    """The Host check answers before the page does, and HTTP allows no body after HEAD there too."""
    with connected(store) as sock:
        sock.sendall(b"HEAD /login HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        answer = b"".join(iter(lambda: sock.recv(4096), b""))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 400 ") and body == b"", answer


def test_a_body_shorter_than_its_content_length_is_answered_within_seconds(
    store: tokenstore.Store,
) -> None:
    """The head is in; a body that stops arriving gets its 408 soon, not when the idle wait ends."""
    with connected(store, timeout=60) as sock:
        started = time.monotonic()
        sock.sendall(
            b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 100\r\n\r\ncsrf=1"
        )
        answer = sock.recv(4096)
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.0 408 "), answer
    assert waited < 10, waited  # the idle wait for a request is 30 s


@pytest.mark.parametrize(
    ("request_line", "status"),
    [
        (b"GET /\r\n", b"400"),
        (b"GET  HTTP/1.1\r\n\r\n", b"400"),
        (b"GET / HTTP/9.9\r\n\r\n", b"505"),
        (b"GET / HTTP/0.9\r\n\r\n", b"400"),  # the version named: it was served headerless
    ],
)
def test_a_request_line_of_another_http_gets_a_status_line_at_once(
    store: tokenstore.Store, request_line: bytes, status: bytes
) -> None:
    """HTTP/0.9 (a line of two words) is not served: no body-only answer, no wait for headers."""
    with connected(store) as sock:
        sock.sendall(request_line)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.0 " + status + b" "), answer


# -- what an answer says --------------------------------------------------------------------


def test_an_answer_to_head_has_no_body(client: Client) -> None:
    """HEAD where only POST is served is a 405, and HTTP allows no body after HEAD."""
    page = client.request("HEAD", "/logout")
    assert page.status == 405 and page.text == ""
    assert page.header("Allow") == "POST" and int(page.header("Content-Length") or 0) > 0


def test_a_path_is_read_as_the_utf8_the_browser_sent(client: Client) -> None:
    """PEP 3333 hands the path over as bytes in Latin-1: a 404 names it as it was typed."""
    sent = "/webhooks/é\u202e".encode().decode("latin-1")  # what wsgiref puts in PATH_INFO
    page = client.request("GET", "/", extra={"PATH_INFO": sent})
    assert page.status == 404 and "no page /webhooks/é\\u202e" in page.text
    broken = client.request("GET", "/", extra={"PATH_INFO": "/\xff\xfe"})  # not UTF-8
    assert broken.status == 404 and "no page /\ufffd\ufffd" in broken.text


# -- forms ----------------------------------------------------------------------------------


def test_a_form_field_whose_escapes_are_not_utf8_is_refused(
    client: Client, store: tokenstore.Store
) -> None:
    """The body is ASCII; what its %-escapes stand for must be UTF-8 too, not turned into U+FFFD."""
    body = f"csrf={client.csrf}&user=root&name=caf%E9".encode()
    extra = {"CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}
    page = client.post("/tokens", extra=extra)
    assert page.status == 400 and "not UTF-8" in page.text
    assert [token.name for token in store.tokens.list()] == ["admin"]


def test_two_content_lengths_that_differ_are_refused(store: tokenstore.Store) -> None:
    """The page sees one (wsgiref passes the first); a proxy may have framed by the other."""
    with connected(store) as sock:
        sock.sendall(
            b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 6\r\nContent-Length: 3\r\n\r\ncsrf=1"
        )
        answer = b"".join(iter(lambda: sock.recv(4096), b""))
    assert answer.startswith(b"HTTP/1.0 400 "), answer
    assert b"Content-Length" in answer


def test_a_client_that_stops_reading_the_answer_leaves_no_traceback(
    store: tokenstore.Store, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page larger than the socket buffers, and a client that reads none of it: a hang-up."""
    from tokenstore.admin import _server

    monkeypatch.setattr(_server._QuietHandler, "body_timeout", 0.3)
    _, secret = store.tokens.create(store.users.create("root"), scopes=["admin"])
    sent = store.webhooks.ping(store.webhooks.create("big", tokenstore.User, NOWHERE))
    with _db.Raw(store) as raw:  # a payload of 8 MB: more than loopback's buffers hold
        raw.execute(
            "UPDATE tokenstore_webhook_delivery SET payload = ? WHERE abid = ?",
            ("x" * 8_000_000, sent.abid),
        )
    with running(store) as server:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        browser = requests.Session()
        form = Page(200, [], browser.get(f"{url}/login", timeout=10).content)
        browser.post(f"{url}/login", {"csrf": form.csrf, "token": secret}, timeout=10)
        cookie = browser.cookies[f"tokenstore_admin_{server.server_address[1]}"]
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(server.server_address[:2])
            sock.sendall(
                f"GET /deliveries/{sent.abid} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Cookie: tokenstore_admin_{server.server_address[1]}={cookie}\r\n\r\n".encode()
            )
            time.sleep(2)  # the server gives up writing after 0.3 s without progress
        assert requests.get(f"{url}/login", timeout=10).status_code == 200
    assert "Traceback" not in capfd.readouterr().err


# -- a request's deadline, its Host, a busy store -------------------------------------------


@pytest.mark.parametrize(
    ("data", "answer"),
    [
        (b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200, b""),
        (
            b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 200\r\n\r\n" + b"a" * 200,
            b"HTTP/1.0 408 ",
        ),
    ],
    ids=["head", "body"],
)
def test_a_request_trickled_in_is_cut_off_at_its_deadline_while_others_are_served(
    store: tokenstore.Store, monkeypatch: pytest.MonkeyPatch, data: bytes, answer: bytes
) -> None:
    """A byte every 20 ms never meets the per-read timeout; the whole request has a deadline."""
    from tokenstore.admin import _server

    monkeypatch.setattr(_server._QuietHandler, "request_deadline", 0.3, raising=False)
    with running(store) as server, socket.create_connection(server.server_address[:2], 5) as slow:
        begun = data.rindex(b"\r\n") + 2  # up to the last header, or the whole head
        slow.sendall(data[:begun])  # the request has begun: its deadline runs
        url = f"http://127.0.0.1:{server.server_address[1]}/login"
        assert requests.get(url, timeout=5).status_code == 200  # another client meanwhile
        got = trickled(slow, data[begun:], within=1.2)
    assert got is not None, "the server still waited for the trickled request"
    assert got.startswith(answer), got[:200]


def test_an_http_1_1_request_without_host_is_a_400(store: tokenstore.Store) -> None:
    """RFC 9112, section 3.2: a server must answer 400 to HTTP/1.1 without a Host header."""
    for version, status in (b"HTTP/1.1", b"400"), (b"HTTP/1.0", b"200"):
        with connected(store) as sock:
            sock.sendall(b"GET /login " + version + b"\r\n\r\n")
            got = b"".join(iter(lambda: sock.recv(4096), b""))
        assert got.startswith(b"HTTP/1.0 " + status + b" "), (version, got[:200])


@pytest.mark.sqlite_only  # another program's lock on the file
def test_a_write_while_another_program_holds_the_lock_is_a_503_to_retry(
    tmp_path: Path,
) -> None:
    with tokenstore.open(tmp_path / "busy.sqlite3", busy_timeout=5) as store:  # 5 s a page
        _a_write_meeting_the_lock_is_a_503(signed_in(admin.make_app(store), store), store)


def _a_write_meeting_the_lock_is_a_503(client: Client, store: tokenstore.Store) -> None:
    other = sqlite3.connect(str(store.path), isolation_level=None)
    try:
        form = client.get("/tokens").form("/tokens")
        other.execute("BEGIN IMMEDIATE")
        pages = [
            client.post("/users", {"username": "bob"}),
            client.post("/tokens", {**form, "user": "root", "name": "late"}),
        ]
    finally:
        other.execute("ROLLBACK")
        other.close()
    for page in pages:
        assert page.status == 503, page.text
        assert page.header("Retry-After") == "5"
        assert "busy" in page.text and "Traceback" not in page.text
    assert "bob" not in [user.username for user in store.users.list()]
    assert [token.name for token in store.tokens.list()] == ["admin"]
    assert client.get("/tokens").text.count("Secret of token") == 0  # no secret left to show
    assert client.post("/users", {"username": "bob"}).status == 303  # and once it is free
    # The token form did nothing, so it may be sent again.
    assert client.post("/tokens", {**form, "user": "root", "name": "late"}).status == 303


def test_a_method_in_another_case_is_another_method(client: Client) -> None:
    """Methods are case-sensitive (RFC 9110, section 9.1): "get" is not GET, nor "post" POST."""
    for method in ("get", "post", "Get", "head"):
        page = client.request(method, "/users")
        assert page.status == 405, method
        assert page.header("Allow") == "GET, HEAD, POST" and page.text  # not HEAD: a body


@pytest.mark.sqlite_only  # the file itself goes away
def test_a_store_that_cannot_be_opened_is_a_503_not_a_traceback(
    client: Client, store: tokenstore.Store
) -> None:
    """The app raised StoreIOError out of the WSGI call: a 500 and a traceback from the server.
    A read-only store answered a change with the form again, as if the form were wrong."""
    assert store.path is not None
    store.db.close()  # each request of the server opens its connection again
    moved = store.path.rename(store.path.with_name("elsewhere.sqlite3"))
    try:
        pages = [client.get("/"), client.get("/login"), client.post("/users", {"username": "bob"})]
    finally:
        moved.rename(store.path)
    for page in pages:
        assert page.status == 503, page.text
        assert "cannot be opened" in page.text and page.header("Retry-After") is None
    _, secret = store.tokens.create("root", scopes=["admin"])
    with tokenstore.open(store.path, read_only=True) as read_only:
        browser = Client(admin.make_app(read_only))
        assert browser.sign_in(secret).status == 303
        page = browser.post("/users", {"username": "bob"})
    assert page.status == 503 and "read-only" in page.text, page.text
    assert "bob" not in [user.username for user in store.users.list()]


def test_a_header_written_twice_in_the_form_is_refused_not_kept_once(
    client: Client, store: tokenstore.Store
) -> None:
    """The lines became a dict: the first value was dropped without a word."""
    form = {"name": "twice", "ref": "tokenstore.User", "endpoint": NOWHERE}
    page = client.post("/webhooks", {**form, "headers": "X-Key: first\nX-Key: second"})
    assert page.status == 400 and "line 2" in page.text and "named twice" in page.text
    assert store.webhooks.list() == []


@pytest.mark.parametrize(
    "separator", ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\u2028", "\r", "\x85"]
)
def test_the_headers_field_splits_lines_at_line_feeds_only(
    client: Client, store: tokenstore.Store, separator: str
) -> None:
    """str.splitlines() also breaks at these: a value holding one became a second header of
    the value's choosing. A line ends at LF (or CRLF, as browsers send a textarea); anything
    else stays in the value: the store refuses a control character, and keeps NEL (\\x85),
    which is Latin-1 text to HTTP."""
    lines = "X-One: 1\r\nX-Two: 2\n\r\nX-Three: 3\r\n"
    sent = {"ref": "tokenstore.User", "endpoint": NOWHERE, "name": "crlf", "headers": lines}
    assert client.post("/webhooks", sent).status == 303
    assert store.webhooks.get("crlf").headers == {"X-One": "1", "X-Two": "2", "X-Three": "3"}
    one = {**sent, "endpoint": f"{NOWHERE}/one", "name": "one"}
    page = client.post("/webhooks", {**one, "headers": f"X-A: a{separator}X-B: b"})
    if separator == "\x85":
        assert page.status == 303
        assert store.webhooks.get("one").headers == {"X-A": f"a{separator}X-B: b"}
    else:
        assert page.status == 400 and "X-A" in page.text, page.text
        assert [hook.name for hook in store.webhooks.list()] == ["crlf"]


def test_a_secret_typed_where_it_does_not_belong_is_not_quoted_back(
    client: Client, store: tokenstore.Store, capfd: pytest.CaptureFixture[str]
) -> None:
    """The page's own messages quote what was typed; a token pasted there is left out, as
    the API's messages leave it out. So does the request log, which shows the path."""
    _, secret = store.tokens.create("root", name="other")
    pages = [
        client.post(
            "/tokens",
            {**client.get("/tokens").form("/tokens"), "user": "root", "expires_days": secret},
        ),
        client.get(f"/users?after={secret}"),
        client.get(f"/{secret}"),
        client.get(f"/webhooks/x/{secret}."),
        client.get(f"/static/{secret}.css"),
    ]
    for page in pages:
        assert page.status in (400, 404) and "not shown" in page.text, page.text
        assert secret not in page.text
    with connected(store) as sock:
        sock.sendall(f"GET /tokens/{secret} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        while sock.recv(4096):  # the whole answer: the request is logged by then
            pass
    err = capfd.readouterr().err
    assert "GET (a path holding a secret, not shown)" in err and secret not in err, err


def test_a_refused_cursor_is_named_as_the_address_names_it(client: Client) -> None:
    """The pages' cursor is ``after``; the store's own name for it, ``before``, is in no URL."""
    for path in ("/tokens?after=zzz", "/deliveries?after=zzz", "/users?after=" + "9" * 30):
        page = client.get(path)
        assert page.status in (400, 404) and '"error">after: ' in page.text, page.text
        assert "before" not in page.text, page.text


def test_past_the_deadline_what_has_arrived_is_still_read_but_nothing_waited_for() -> None:
    """A body sent in time may be read late (the page read the store first): it is there."""
    from tokenstore._servers import _Deadline

    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(2)
        reader = _Deadline(ours, 0.05)
        theirs.sendall(b"G")
        assert reader.read(10) == b"G"  # the first byte: the deadline runs from here
        theirs.sendall(b"ET / HTTP/1.1\r\n")
        time.sleep(0.1)
        assert reader.read(100) == b"ET / HTTP/1.1\r\n"
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            reader.read(100)
        assert time.monotonic() - started < 0.5 and ours.gettimeout() == 2


def test_failed_sign_ins_over_http_get_a_429_with_retry_after(store: tokenstore.Store) -> None:
    """The server passes the client's address: a guesser on 127.0.0.1 waits."""
    from tokenstore.admin import _throttle

    with running(store) as server:
        url = f"http://127.0.0.1:{server.server_address[1]}/login"
        browser = requests.Session()
        csrf = Page(200, [], browser.get(url, timeout=10).content).csrf
        statuses = [
            browser.post(url, {"csrf": csrf, "token": "x"}, timeout=10).status_code
            for _ in range(_throttle.MAX_FAILURES + 1)
        ]
        last = browser.post(url, {"csrf": csrf, "token": "x"}, timeout=10)
    assert statuses == [401] * _throttle.MAX_FAILURES + [429], statuses
    assert last.status_code == 429 and 1 <= int(last.headers["Retry-After"]) <= 6
