"""The address guard: unit checks, then real connections to listeners and servers on loopback."""

from __future__ import annotations

import gc
import os
import re
import select
import socket
import ssl
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from _http import free_port

import tokenstore._store
from tokenstore._errors import BlockedAddress, ValidationError
from tokenstore._netguard import AddressGuard, _find_refusal, guarded_session

TIMEOUT = 5


# --------------------------------------------------------------------------- unit


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("127.0.0.1", "127.0.0.1 is a loopback address"),
        ("127.8.9.10", "loopback"),
        ("10.0.0.1", "10.0.0.1 is a private address"),
        ("172.16.0.1", "172.16.0.1 is a private address"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "192.168.1.1 is a private address"),
        ("169.254.169.254", "link-local address (the cloud metadata service)"),
        ("169.254.1.1", "169.254.1.1 is a link-local address"),
        ("100.64.0.1", "100.64.0.1 is a carrier-grade NAT address"),
        ("100.127.255.255", "carrier-grade NAT"),
        ("224.0.0.1", "224.0.0.1 is a multicast address"),
        ("239.255.255.250", "multicast"),
        ("0.0.0.0", "0.0.0.0 is the unspecified address"),
        ("0.1.2.3", "not a public one"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "255.255.255.255 is"),
        ("192.0.2.1", "not a public one"),
        ("198.18.0.1", "not a public one"),
        ("::1", "::1 is a loopback address"),
        ("::", ":: is the unspecified address"),
        ("fe80::1", "fe80::1 is a link-local address"),
        ("fc00::1", "unique local (private)"),
        ("fd12:3456::1", "unique local (private)"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "not a public one"),
        ("::ffff:127.0.0.1", "::ffff:127.0.0.1 embeds the IPv4 address 127.0.0.1, and 127.0.0.1"),
        ("::ffff:169.254.169.254", "cloud metadata service"),
        ("::ffff:10.1.2.3", "10.1.2.3 is a private address"),
        ("64:ff9b::a00:1", "embeds the IPv4 address 10.0.0.1, and 10.0.0.1 is a private"),
        ("64:ff9b::7f00:1", "127.0.0.1 is a loopback address"),
        ("2002:7f00:1::", "embeds the IPv4 address 127.0.0.1, and 127.0.0.1 is a loopback"),
        ("2002:a9fe:a9fe::1", "cloud metadata service"),
    ],
)
def test_blocked_by_default(ip: str, expected: str) -> None:
    reason = AddressGuard().blocked_reason(ip)
    assert reason is not None
    assert expected in reason


@pytest.mark.parametrize(
    "ip",
    [
        "8.8.8.8",
        "1.1.1.1",
        "172.32.0.1",  # just past 172.16.0.0/12
        "100.128.0.1",  # just past 100.64.0.0/10
        "2606:4700::1111",
        "2a00:1450:4001:81a::200e",
        "::ffff:8.8.8.8",  # embedded addresses are judged by what they embed
        "64:ff9b::808:808",
        "2002:808:808::1",
    ],
)
def test_public_addresses_are_allowed(ip: str) -> None:
    assert AddressGuard().blocked_reason(ip) is None


def test_blocked_reason_rejects_non_addresses() -> None:
    with pytest.raises(ValidationError, match="not an IP address"):
        AddressGuard().blocked_reason("localhost")


def test_allowlist_by_cidr_and_address() -> None:
    guard = AddressGuard(["127.0.0.1/32", "::1/128", "10.0.0.0/8", "192.168.1.7"])
    assert guard.blocked_reason("127.0.0.1") is None
    assert guard.blocked_reason("::1") is None
    assert guard.blocked_reason("10.200.3.4") is None
    assert guard.blocked_reason("192.168.1.7") is None
    assert guard.blocked_reason("::ffff:127.0.0.1") is None  # same IPv4 destination
    # Only what was listed is lifted.
    assert guard.blocked_reason("127.0.0.2") is not None
    assert guard.blocked_reason("192.168.1.8") is not None
    assert guard.blocked_reason("169.254.169.254") is not None
    assert guard.blocked_reason("::2") is not None


def test_allowlist_by_hostname_is_case_insensitive() -> None:
    guard = AddressGuard(["LocalHost", "hooks.internal."])
    assert guard.host_allowed("localhost")
    assert guard.host_allowed("LOCALHOST.")
    assert guard.host_allowed("hooks.internal")
    assert not guard.host_allowed("evil.localhost")
    assert not guard.host_allowed("127.0.0.1")
    # A hostname entry does not lift the block on addresses.
    assert guard.blocked_reason("127.0.0.1") is not None


@pytest.mark.parametrize(
    "entry",
    [
        "10.0.0.1/8",
        "300.1.1.1",
        "10.0.0.0/33",
        "not a host",
        "http://example.com",
        "*.example.com",
        "1.2.3.4:80",
        "",
        "  ",
        "-bad.example",
        "a..b",
        "999.1.1.1",
    ],
)
def test_bad_allow_entries_are_named(entry: str) -> None:
    with pytest.raises(ValidationError) as info:
        AddressGuard([entry])
    assert repr(entry) in str(info.value)


def test_allow_must_not_be_a_single_string() -> None:
    with pytest.raises(ValidationError, match=r"not the single string '127\.0\.0\.1'"):
        AddressGuard("127.0.0.1")
    with pytest.raises(ValidationError, match="5"):
        AddressGuard([5])  # type: ignore[list-item]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://127.0.0.1:8080/hook",
        "https://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://[fe80::1%25eth0]/",
        "http://2130706433/",  # 127.0.0.1 in the resolver's legacy decimal form
        "http://0x7f.1/",
        "http://user:pw@192.168.0.1/",
    ],
)
def test_check_endpoint_refuses_blocked_literals(url: str) -> None:
    with pytest.raises(BlockedAddress, match="is not allowed"):
        AddressGuard().check_endpoint(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://x", "scheme must be http or https, not ftp"),
        ("x", "scheme must be http or https"),
        ("javascript:alert(1)", "scheme"),
        ("http:///path", "no host"),
        ("http://", "no host"),
        ("http://[::1/", "malformed"),
        ("http://example.com:99999/", "malformed"),
        ("http://exa mple.com/", "spaces or control characters"),
        ("http://example.com/\n", "control characters"),
        ("", "non-empty"),
    ],
)
def test_check_endpoint_rejects_malformed_urls(url: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AddressGuard().check_endpoint(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://u:hunter2/x@example.com/",  # a '/' in the password ends the authority there
        "http://u:hunter2?x@example.com/",
        "http://u:hunter2#x@example.com/",
        "http://u:hunter2@example.com:hunter3/",
    ],
)
def test_a_port_that_is_no_number_is_refused_without_quoting_it(url: str) -> None:
    """What a URL parser takes for the port may be a password: the message names no part of it."""
    with pytest.raises(ValidationError, match="port is not a number") as caught:
        AddressGuard().check_endpoint(url)
    assert "hunter" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:0/", "port 0"),  # urllib3 would send it to port 80
        ("http://example.com:0/", "port 0"),
        ("http://example.com\\@127.0.0.1/", "backslash"),  # requests connects to example.com
        ("http://127.0.0.1\\@example.com/", "backslash"),  # and this one to 127.0.0.1
        ("http://[::1%25eth0]:8000/", "zone"),
        ("http://[::1%eth0]:8000/", "zone"),
        ("http://user:SEKRIT@127.0.0.1:8000/", "credentials"),
        ("http://SEKRIT@example.com/", "credentials"),
        ("http://:SEKRIT@example.com/", "credentials"),
    ],
)
def test_check_endpoint_refuses_urls_that_would_not_be_sent_as_written(
    url: str, message: str
) -> None:
    """Allowed hosts included: what is refused is the URL, not where it points."""
    with pytest.raises(ValidationError, match=message) as info:
        AddressGuard(["127.0.0.1/32", "::1/128"]).check_endpoint(url)
    assert not isinstance(info.value, BlockedAddress) and "SEKRIT" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/",
        "HTTPS://Example.COM/hooks?x=1",
        "http://8.8.8.8:8080/x",
        "http://[2606:4700::1111]/",
        "http://localhost:8000/",  # hostnames are judged at connect time
    ],
)
def test_check_endpoint_accepts(url: str) -> None:
    AddressGuard().check_endpoint(url)


def test_check_endpoint_respects_allowlist() -> None:
    AddressGuard(["127.0.0.1/32"]).check_endpoint("http://127.0.0.1:8000/")
    AddressGuard(["::1/128"]).check_endpoint("http://[::1]:8000/")
    AddressGuard(["127.0.0.1"]).check_endpoint("http://[::ffff:127.0.0.1]:8000/")
    with pytest.raises(BlockedAddress):
        AddressGuard(["127.0.0.1/32"]).check_endpoint("http://127.0.0.2:8000/")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://xn--/", "label 'xn--' is not 1-63 letters"),
        ("http://xn--abc.example/", "not a valid IDNA A-label"),
        ("http://xn--n3h.net/", "not a valid IDNA A-label"),  # a snowman: IDNA 2003 only
        ("http://a..b/", "label '' is not 1-63"),
        ("http://.example.com/", "label '' is not 1-63"),
        ("http://example.com../", "label '' is not 1-63"),
        (f"http://{'a' * 64}.example/", f"label '{'a' * 64}' is not 1-63"),
        (f"http://{'abcdefghi.' * 25}example/", "257 characters long; DNS allows 253"),
        ("http://-lead.example/", "label '-lead'"),
        ("http://ex%41mple.com/", "label 'ex%41mple'"),
        ("http://\udcff.example/", "not a valid internationalized domain name"),
        ("http://\u2603.net/", "not a valid internationalized domain name"),
        # Mapped by UTS 46, but urllib3 reads a URL's host label by label without it, and
        # refuses them before any request: every delivery failed with InvalidURL.
        ("http://\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com/", "internationalized"),
        ("http://example\u3002com/", "not a valid internationalized domain name"),
        ("http://ex\u00adample.com/", "not a valid internationalized domain name"),
        ("http://\ufb01.example/", "not a valid internationalized domain name"),
        # Blanks beyond ASCII's: the name was read stripped of them, urllib3 reads them in it.
        ("http://example.com\u2028/", "not a valid internationalized domain name"),
        ("http://\u3000example.com/", "not a valid internationalized domain name"),
        ("http://999.1.1.1/", "last label is all digits"),
        ("http://a\x00b.example/", "control characters"),
    ],
)
def test_check_endpoint_refuses_names_dns_cannot_hold(url: str, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)) as info:
        AddressGuard().check_endpoint(url)
    assert not isinstance(info.value, BlockedAddress)
    str(info.value).encode("utf-8")  # printable as it is, lone surrogates included


@pytest.mark.parametrize(
    "url", ["http://[::1]x/", "http://x[::1]/", "http://[::1]]/", "http://[v1.fe]/"]
)
def test_brackets_hold_an_ipv6_address_and_nothing_else(url: str) -> None:
    """urlsplit reads the address out of these (IPvFuture's as a host name), but urllib3
    refuses them before any request: every delivery of the hook failed with InvalidURL."""
    with pytest.raises(ValidationError, match=r"IPv6 address in brackets") as info:
        AddressGuard(["::1/128"]).check_endpoint(url)
    assert not isinstance(info.value, BlockedAddress)
    AddressGuard(["::1/128"]).check_endpoint("http://[::1]:8080/")


@pytest.mark.parametrize(
    "url",
    [
        "http://b\u00fccher.example/",
        "http://xn--bcher-kva.example/",
        "http://r3---sn-abc.googlevideo.com/",  # hyphens in places only IDNA labels forbid
        "http://_hooks.example.com/",
        "http://example.com./",
        f"http://{'a' * 63}.example/",
        f"http://{'abcdefghi.' * 24}example.co.uk/",  # 253 characters
    ],
)
def test_check_endpoint_accepts_names_dns_can_hold(url: str) -> None:
    AddressGuard().check_endpoint(url)


@pytest.mark.parametrize("host", ["xn--", "a..b", "a" * 64 + ".example", "\udcff.example"])
def test_a_hook_on_a_name_dns_cannot_hold_is_refused_at_creation(db_path: Path, host: str) -> None:
    store = tokenstore._store.open(db_path, webhook_allow=())
    try:
        with pytest.raises(ValidationError, match="is not a valid host name"):
            store.webhooks.create("bad", "tokenstore.APIToken", f"http://{host}/hook")
        assert store.webhooks.list() == []
    finally:
        store.close()


CLI = [sys.executable, "-m", "tokenstore"]


def test_the_command_refuses_a_name_dns_cannot_hold_in_one_line(store_file: Path) -> None:
    db_path = store_file
    env = {**os.environ, "TOKENSTORE_DB": str(db_path)}
    env.pop("TOKENSTORE_WEBHOOK_ALLOW", None)
    result = subprocess.run(
        [*CLI, "webhooks", "add", "bad", "tokenstore.APIToken", "http://a..b/hook"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "webhook URL host 'a..b' is not a valid host name" in result.stderr
    assert "Traceback" not in result.stderr


def test_allowlist_names_are_held_in_their_ascii_form() -> None:
    guard = AddressGuard(["B\u00fccher.example"])
    assert guard.host_allowed("xn--bcher-kva.example")  # the form requests connects with
    with pytest.raises(ValidationError, match="not a valid IDNA A-label"):
        AddressGuard(["xn--abc.example"])


def test_find_refusal_digs_through_real_wrappers() -> None:
    """The unwrapping used if a future urllib3/requests wraps BlockedAddress."""
    from urllib3.exceptions import MaxRetryError, ProtocolError

    inner = BlockedAddress("refusing to connect to x: 10.0.0.1 is a private address")
    wrapped = requests.exceptions.ConnectionError(
        MaxRetryError(None, "/", reason=ProtocolError("Connection aborted.", inner))  # type: ignore[arg-type]
    )
    assert _find_refusal(wrapped) is inner
    try:
        try:
            raise inner
        except BlockedAddress as exc:
            raise requests.exceptions.ConnectionError("boom") from exc
    except requests.exceptions.ConnectionError as outer:
        assert _find_refusal(outer) is inner
    assert _find_refusal(requests.exceptions.ConnectionError("plain")) is None


def test_importing_tokenstore_does_not_import_requests() -> None:
    code = (
        "import sys, tokenstore, tokenstore._netguard, tokenstore._signing, "
        "tokenstore._credentials, tokenstore._receiver\n"
        "tokenstore._netguard.AddressGuard(['127.0.0.1']).check_endpoint('http://127.0.0.1/')\n"
        "tokenstore._netguard.AddressGuard().check_endpoint('https://hooks.example.com/')\n"
        "bad = sorted(m for m in ('requests', 'urllib3', 'idna') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


# --------------------------------------------------------------------------- resolution

HOW_TO_ALLOW = (
    "to allow it, add the host or its network to the store's webhook allowlist "
    "(store.webhooks.allow(), webhook_allow= or `tokenstore webhooks allow`)"
)


@pytest.fixture
def names(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Test-only DNS names: fill the dict with name -> addresses; other names resolve as usual.

    The resolver is the one thing replaced: what the guard does with its
    answers, and every connection, is real.
    """
    table: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = str(host).lower().removesuffix(".")
        if name not in table:
            return real(host, port, *args, **kwargs)
        return [
            info for address in table[name] for info in real(address, port, type=socket.SOCK_STREAM)
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


def test_addresses_returns_what_a_public_name_resolves_to(names: dict[str, list[str]]) -> None:
    names["public.test"] = ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]
    assert AddressGuard().addresses("public.test", 443) == names["public.test"]


@pytest.mark.parametrize(
    ("resolved", "kind"),
    [
        (["10.1.2.3"], "a private address"),
        (["93.184.215.14", "10.1.2.3"], "a private address"),  # one bad apple refuses all
        (["2606:4700::1111", "::1"], "a loopback address"),
        (["169.254.169.254"], "a link-local address (the cloud metadata service)"),
        (["::ffff:127.0.0.1"], "an IPv6 address wrapping a loopback address"),
        (["64:ff9b::a01:203"], "an IPv6 address wrapping a private address"),
        (["2002:a01:203::1"], "an IPv6 address wrapping a private address"),
        (["127.0.0.1", "10.1.2.3"], "a loopback address and a private address"),
    ],
)
def test_a_name_is_refused_by_the_kind_of_address_never_the_address(
    names: dict[str, list[str]], resolved: list[str], kind: str
) -> None:
    names["tricky.test"] = resolved
    with pytest.raises(BlockedAddress) as info:
        AddressGuard().addresses("tricky.test", 80)
    assert str(info.value) == f"tricky.test resolves to {kind}; {HOW_TO_ALLOW}"
    for address in ("127.0.0.1", "10.1.2.3", "169.254", "::1", "ffff", "64:ff9b", "2002"):
        assert address not in str(info.value)


def test_an_allowlisted_name_may_resolve_anywhere(names: dict[str, list[str]]) -> None:
    names["hooks.internal"] = ["10.1.2.3", "127.0.0.1"]
    assert AddressGuard(["hooks.internal"]).addresses("HOOKS.internal.", 80) == [
        "10.1.2.3",
        "127.0.0.1",
    ]


def test_an_allowlisted_network_must_cover_every_address(names: dict[str, list[str]]) -> None:
    names["both.test"] = ["127.0.0.1", "::1"]
    with pytest.raises(BlockedAddress, match=r"both\.test resolves to a loopback address"):
        AddressGuard(["127.0.0.1/32"]).addresses("both.test", 80)
    assert AddressGuard(["127.0.0.1/32", "::1/128"]).addresses("both.test", 80) == [
        "127.0.0.1",
        "::1",
    ]


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("127.0.0.1", "127.0.0.1 is a loopback address"),
        ("[::ffff:10.0.0.1]", "::ffff:10.0.0.1 embeds the IPv4 address 10.0.0.1, and 10.0.0.1 is"),
        ("2130706433", "2130706433 is a loopback address"),
    ],
)
def test_an_address_literal_is_refused_in_its_own_words(host: str, message: str) -> None:
    with pytest.raises(BlockedAddress) as info:
        AddressGuard().addresses(host, 80)
    assert str(info.value).startswith(message)
    assert str(info.value).endswith(HOW_TO_ALLOW)


def test_a_name_that_does_not_resolve_is_the_resolvers_error() -> None:
    with pytest.raises(socket.gaierror):
        AddressGuard().addresses("no-such-host.invalid", 80)


# --------------------------------------------------------------------------- live


class Listener:
    """A raw TCP listener on 127.0.0.1 that counts the connections it accepts."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.close()

    def stop(self) -> int:
        """Stop, count what is still waiting in the backlog too, and return the count."""
        if self.sock.fileno() == -1:
            return self.accepted
        self._stop.set()
        self._thread.join(TIMEOUT)
        while select.select([self.sock], [], [], 0.2)[0]:
            conn, _ = self.sock.accept()
            self.accepted += 1
            conn.close()
        self.sock.close()
        return self.accepted


@pytest.fixture
def listener() -> Iterator[Listener]:
    live = Listener()
    yield live
    live.stop()


@dataclass
class Recorder:
    request_lines: list[bytes] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)


class RecordingServer(ThreadingHTTPServer):
    # Non-daemon handler threads, joined by server_close(), so the recorder is
    # complete when a test looks at it.
    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily) -> None:
        self.address_family = family
        self.recorder = Recorder()
        super().__init__(address, RecordingHandler)


class RecordingHandler(BaseHTTPRequestHandler):
    timeout = 3  # a connection the client forgot to close shows up as a timeout
    server: RecordingServer

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.recorder.request_lines.append(self.raw_requestline)
        self.server.recorder.hosts.append(self.headers.get("Host", ""))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class LiveServer:
    server: RecordingServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def recorder(self) -> Recorder:
        return self.server.recorder

    def stop(self) -> Recorder:
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(TIMEOUT)
        return self.recorder


def start_server(
    host: str, family: socket.AddressFamily, tls: ssl.SSLContext | None = None
) -> LiveServer:
    server = RecordingServer((host, 0), family)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    return LiveServer(server, thread)


@pytest.fixture
def server4() -> Iterator[LiveServer]:
    live = start_server("127.0.0.1", socket.AF_INET)
    yield live
    live.stop()


@pytest.fixture
def server6() -> Iterator[LiveServer]:
    try:
        live = start_server("::1", socket.AF_INET6)
    except OSError as exc:
        pytest.skip(f"IPv6 loopback is not available: {exc}")
    yield live
    live.stop()


def post_blocked(session: requests.Session, url: str) -> BlockedAddress:
    """Post, expect BlockedAddress, and check no socket was left behind."""
    gc.collect()  # what earlier tests left for the collector is not this post's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(BlockedAddress) as info:
            session.post(url, data=b'{"secret": "payload"}', timeout=TIMEOUT)
        error = info.value
        del info
        gc.collect()
    leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, [str(w.message) for w in leaks]
    return error


def test_a_blocked_address_receives_no_connection(listener: Listener) -> None:
    session = guarded_session(AddressGuard())
    error = post_blocked(session, f"http://127.0.0.1:{listener.port}/hook")
    assert str(error) == f"127.0.0.1 is a loopback address; {HOW_TO_ALLOW}"
    assert listener.stop() == 0


def test_a_blocked_https_address_receives_no_connection(listener: Listener) -> None:
    post_blocked(guarded_session(AddressGuard()), f"https://127.0.0.1:{listener.port}/hook")
    assert listener.stop() == 0  # not a SYN, let alone a ClientHello


def test_a_hostname_resolving_to_loopback_is_blocked_before_connecting(
    listener: Listener,
) -> None:
    error = post_blocked(guarded_session(AddressGuard()), f"http://localhost:{listener.port}/")
    assert str(error) == f"localhost resolves to a loopback address; {HOW_TO_ALLOW}"
    assert listener.stop() == 0


def test_a_name_with_an_allowed_and_a_private_address_gets_no_connection(
    listener: Listener, names: dict[str, list[str]]
) -> None:
    names["rebind.test"] = ["127.0.0.1", "10.1.2.3"]
    session = guarded_session(AddressGuard(["127.0.0.1/32"]))
    error = post_blocked(session, f"http://rebind.test:{listener.port}/")
    assert "rebind.test resolves to a private address" in str(error)
    assert listener.stop() == 0  # not even the allowed address was tried


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_open_and_closed_blocked_ports_read_the_same(listener: Listener, host: str) -> None:
    session = guarded_session(AddressGuard())
    open_error = post_blocked(session, f"http://{host}:{listener.port}/")
    closed_error = post_blocked(session, f"http://{host}:{free_port()}/")
    assert str(open_error) == str(closed_error)
    assert listener.stop() == 0


def test_the_delivery_log_tells_nothing_about_blocked_ports(
    db_path: Path, listener: Listener
) -> None:
    store = tokenstore._store.open(db_path, webhook_allow=())
    try:
        errors = []
        for port in (listener.port, free_port()):
            hook = store.webhooks.create(
                f"probe-{port}", "tokenstore.APIToken", f"http://localhost:{port}/"
            )
            delivery = store.webhooks.ping(hook)
            assert delivery.status == "failed"
            errors.append(delivery.last_error)
    finally:
        store.close()
    assert (
        errors[0]
        == errors[1]
        == f"blocked: localhost resolves to a loopback address; {HOW_TO_ALLOW}"
    )
    assert listener.stop() == 0


def test_literal_ipv4_mapped_ipv6_is_blocked(listener: Listener) -> None:
    session = guarded_session(AddressGuard())
    error = post_blocked(session, f"http://[::ffff:127.0.0.1]:{listener.port}/")
    assert "embeds the IPv4 address 127.0.0.1" in str(error)
    assert listener.stop() == 0


def test_allowlisted_cidr_gets_through(server4: LiveServer) -> None:
    session = guarded_session(AddressGuard(["127.0.0.1/32"]))
    for _ in range(2):  # a second request reuses the kept-alive, already vetted connection
        response = session.post(
            f"http://127.0.0.1:{server4.port}/hook", data=b"{}", timeout=TIMEOUT
        )
        assert response.status_code == 200
        assert response.text == "ok"
    session.close()
    recorder = server4.stop()
    assert [line.split()[0] for line in recorder.request_lines] == [b"POST", b"POST"]


def test_allowlisted_hostname_gets_through(server4: LiveServer) -> None:
    session = guarded_session(AddressGuard(["localhost"]))
    response = session.post(f"http://localhost:{server4.port}/", data=b"{}", timeout=TIMEOUT)
    assert response.status_code == 200
    # The name is allowed, not the address behind it.
    post_blocked(session, f"http://127.0.0.1:{server4.port}/")


def test_a_pinned_connection_is_resolved_once_and_keeps_the_host_header(
    server4: LiveServer, names: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    names["hooks.test"] = ["127.0.0.1"]
    lookups: list[str] = []
    resolve = socket.getaddrinfo

    def counting(host: Any, *args: Any, **kwargs: Any) -> Any:
        lookups.append(host)
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", counting)
    session = guarded_session(AddressGuard(["hooks.test"]))
    url = f"http://hooks.test:{server4.port}/hook"
    assert session.post(url, data=b"{}", timeout=TIMEOUT).status_code == 200
    session.close()
    # The test name exists only in the table above: the request reached the
    # server through the address the guard returned, by way of no other lookup.
    assert lookups.count("hooks.test") == 1
    assert server4.stop().hosts == [f"hooks.test:{server4.port}"]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for hooks.test, made by the openssl command."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=hooks.test",
                "-addext",
                "subjectAltName=DNS:hooks.test",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"openssl cannot make a test certificate: {exc}")
    return cert, key


def test_a_pinned_https_connection_verifies_and_names_the_host(
    certificate: tuple[Path, Path], names: dict[str, list[str]]
) -> None:
    cert, key = certificate
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    live = start_server("127.0.0.1", socket.AF_INET, tls)
    tls.sni_callback = lambda sock, name, context: live.recorder.server_names.append(name)
    names["hooks.test"] = ["127.0.0.1"]
    try:
        session = guarded_session(AddressGuard(["hooks.test", "127.0.0.1/32"]))
        session.verify = str(cert)
        response = session.post(f"https://hooks.test:{live.port}/", data=b"{}", timeout=TIMEOUT)
        assert response.status_code == 200
        # The same server by its address: the certificate does not name it.
        with pytest.raises(requests.exceptions.SSLError, match=r"127\.0\.0\.1"):
            session.post(f"https://127.0.0.1:{live.port}/", data=b"{}", timeout=TIMEOUT)
        session.close()
    finally:
        recorder = live.stop()
    assert recorder.server_names[0] == "hooks.test"
    assert recorder.hosts == [f"hooks.test:{live.port}"]


def test_allowlisted_https_reaches_the_tls_handshake(server4: LiveServer) -> None:
    session = guarded_session(AddressGuard(["127.0.0.1/32"]))
    # The test server speaks plain HTTP, so TLS fails: proof the guard let it through.
    with pytest.raises(requests.exceptions.SSLError):
        session.post(f"https://127.0.0.1:{server4.port}/", timeout=TIMEOUT)


def test_ipv6_loopback_server(server6: LiveServer) -> None:
    url = f"http://[::1]:{server6.port}/"
    error = post_blocked(guarded_session(AddressGuard()), url)
    assert "::1 is a loopback address" in str(error)
    ok = guarded_session(AddressGuard(["::1/128"])).post(url, data=b"{}", timeout=TIMEOUT)
    assert ok.status_code == 200
    recorder = server6.stop()
    assert len(recorder.request_lines) == 1


def test_an_allowed_closed_port_is_an_ordinary_connection_error() -> None:
    session = guarded_session(AddressGuard(["127.0.0.1/32"]))
    with pytest.raises(requests.exceptions.ConnectionError, match="Connection refused"):
        session.post(f"http://127.0.0.1:{free_port()}/", data=b"{}", timeout=TIMEOUT)


def test_an_unknown_name_is_an_ordinary_connection_error() -> None:
    session = guarded_session(AddressGuard())
    with pytest.raises(requests.exceptions.ConnectionError, match="Failed to resolve"):
        session.post("http://no-such-host.invalid/", data=b"{}", timeout=TIMEOUT)


def test_environment_proxies_are_ignored(
    server4: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens on the discard port
    session = guarded_session(AddressGuard(["127.0.0.1/32"]))
    assert session.trust_env is False
    response = session.post(f"http://127.0.0.1:{server4.port}/", data=b"{}", timeout=TIMEOUT)
    assert response.status_code == 200


def test_explicit_proxies_are_refused(listener: Listener) -> None:
    session = guarded_session(AddressGuard(["127.0.0.1/32"]))
    with pytest.raises(ValidationError, match="does not use proxies"):
        session.post(
            f"http://127.0.0.1:{listener.port}/",
            proxies={"http": f"http://127.0.0.1:{listener.port}"},
            timeout=TIMEOUT,
        )
    assert listener.stop() == 0
