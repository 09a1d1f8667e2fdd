"""The address guard: unit checks plus real connections to servers on loopback."""

from __future__ import annotations

import gc
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tokenstore._errors import BlockedAddress, ValidationError
from tokenstore._netguard import AddressGuard, _find_blocked, guarded_session

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


def test_find_blocked_digs_through_real_wrappers() -> None:
    """The unwrapping used if a future urllib3/requests wraps BlockedAddress."""
    from urllib3.exceptions import MaxRetryError, ProtocolError

    inner = BlockedAddress("refusing to connect to x: 10.0.0.1 is a private address")
    wrapped = requests.exceptions.ConnectionError(
        MaxRetryError(None, "/", reason=ProtocolError("Connection aborted.", inner))  # type: ignore[arg-type]
    )
    assert _find_blocked(wrapped) is inner
    try:
        try:
            raise inner
        except BlockedAddress as exc:
            raise requests.exceptions.ConnectionError("boom") from exc
    except requests.exceptions.ConnectionError as outer:
        assert _find_blocked(outer) is inner
    assert _find_blocked(requests.exceptions.ConnectionError("plain")) is None


def test_importing_tokenstore_does_not_import_requests() -> None:
    code = (
        "import sys, tokenstore, tokenstore._netguard, tokenstore._signing, "
        "tokenstore._credentials, tokenstore._receiver\n"
        "tokenstore._netguard.AddressGuard(['127.0.0.1']).check_endpoint('http://127.0.0.1/')\n"
        "bad = sorted(m for m in ('requests', 'urllib3') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


# --------------------------------------------------------------------------- live


@dataclass
class Recorder:
    connections: int = 0
    eofs: int = 0
    request_lines: list[bytes] = field(default_factory=list)
    lock: threading.Condition = field(default_factory=threading.Condition)

    def wait_for_connections(self, count: int) -> None:
        """Accepting is asynchronous: wait, so that stopping the server does not drop one."""
        with self.lock:
            self.lock.wait_for(lambda: self.connections >= count, timeout=TIMEOUT)


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

    def setup(self) -> None:
        super().setup()
        with self.server.recorder.lock:
            self.server.recorder.connections += 1
            self.server.recorder.lock.notify_all()

    def handle_one_request(self) -> None:
        super().handle_one_request()
        line = getattr(self, "raw_requestline", None)
        with self.server.recorder.lock:
            if line:
                self.server.recorder.request_lines.append(line)
            elif line == b"":
                self.server.recorder.eofs += 1

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
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
    host: str

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


def start_server(host: str, family: socket.AddressFamily) -> LiveServer:
    server = RecordingServer((host, 0), family)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    return LiveServer(server, thread, host)


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
    """Post, expect BlockedAddress, and check the refused socket was closed, not dropped."""
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


def assert_nothing_sent(live: LiveServer) -> None:
    live.recorder.wait_for_connections(1)
    recorder = live.stop()
    assert recorder.request_lines == []
    # The guard judges the real connection, so the server saw one; the client
    # then closed it at once (EOF, not a timeout).
    assert recorder.connections >= 1
    assert recorder.eofs == recorder.connections


def test_default_guard_blocks_loopback_ip(server4: LiveServer) -> None:
    session = guarded_session(AddressGuard())
    error = post_blocked(session, f"http://127.0.0.1:{server4.port}/hook")
    assert "127.0.0.1 is a loopback address" in str(error)
    assert_nothing_sent(server4)
    assert server4.recorder.connections == 1  # and it did not retry


def test_default_guard_blocks_https_before_the_tls_handshake(server4: LiveServer) -> None:
    session = guarded_session(AddressGuard())
    post_blocked(session, f"https://127.0.0.1:{server4.port}/hook")
    assert_nothing_sent(server4)  # not even a ClientHello arrived


def test_hostname_resolving_to_loopback_is_blocked(server4: LiveServer) -> None:
    session = guarded_session(AddressGuard())
    error = post_blocked(session, f"http://localhost:{server4.port}/")
    assert "localhost" in str(error)
    assert "loopback" in str(error)
    assert_nothing_sent(server4)


def test_ipv4_mapped_ipv6_is_blocked(server4: LiveServer) -> None:
    probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        probe.settimeout(TIMEOUT)
        probe.connect(("::ffff:127.0.0.1", server4.port))
    except OSError as exc:
        pytest.skip(f"this OS cannot connect to IPv4-mapped IPv6 addresses: {exc}")
    finally:
        probe.close()
    session = guarded_session(AddressGuard())
    error = post_blocked(session, f"http://[::ffff:127.0.0.1]:{server4.port}/")
    assert "embeds the IPv4 address 127.0.0.1" in str(error)
    server4.recorder.wait_for_connections(2)
    recorder = server4.stop()
    assert recorder.request_lines == []
    assert recorder.connections == recorder.eofs == 2  # the probe and the refused one


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


def test_explicit_proxies_are_refused(server4: LiveServer) -> None:
    session = guarded_session(AddressGuard(["127.0.0.1/32"]))
    with pytest.raises(ValidationError, match="does not use proxies"):
        session.post(
            f"http://127.0.0.1:{server4.port}/",
            proxies={"http": f"http://127.0.0.1:{server4.port}"},
            timeout=TIMEOUT,
        )
    assert server4.stop().connections == 0
