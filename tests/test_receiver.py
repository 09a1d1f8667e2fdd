"""The stdlib webhook receiver, exercised over real HTTP on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn
from typing import Any

import pytest
import requests
from _http import trickled

from tokenstore._errors import ValidationError
from tokenstore._receiver import MAX_BODY_BYTES, ReceiverServer, make_receiver
from tokenstore._servers import BoundedThreads
from tokenstore._signing import new_signing_secret, sign, signature_header

TIMEOUT = 5
SECRET = new_signing_secret()


@dataclass
class Events:
    received: list[tuple[dict[str, Any], dict[str, str]]] = field(default_factory=list)
    fail: bool = False

    def __call__(self, payload: dict[str, Any], headers: Mapping[str, str]) -> None:
        if self.fail:
            raise RuntimeError("handler broke")
        self.received.append((payload, dict(headers)))


@dataclass
class Running:
    server: ReceiverServer
    events: Events

    @property
    def url(self) -> str:
        port = self.server.server_address[1]
        return f"http://127.0.0.1:{port}/hooks"


def run(server: ReceiverServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    return thread


@pytest.fixture
def receiver() -> Iterator[Running]:
    events = Events()
    server = make_receiver("127.0.0.1", 0, SECRET, events)
    thread = run(server)
    yield Running(server, events)
    server.shutdown()
    server.server_close()
    thread.join(TIMEOUT)
    assert not thread.is_alive()


def signed_headers(body: bytes, *, secret: str = SECRET, ts: int | None = None) -> dict[str, str]:
    timestamp = int(time.time()) if ts is None else ts
    return {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, "msg_1", timestamp, body),
        "content-type": "application/json",
    }


PAYLOAD = {"type": "user.created", "timestamp": "2024-01-01T00:00:00+00:00", "data": {"pk": 7}}
BODY = json.dumps(PAYLOAD).encode()


def test_binds_an_os_chosen_port(receiver: Running) -> None:
    assert receiver.server.server_address[0] == "127.0.0.1"
    assert receiver.server.server_address[1] > 0


def test_valid_webhook_is_delivered_and_answered_204(receiver: Running) -> None:
    response = requests.post(receiver.url, data=BODY, headers=signed_headers(BODY), timeout=TIMEOUT)
    assert response.status_code == 204
    assert response.content == b""
    assert len(receiver.events.received) == 1
    payload, headers = receiver.events.received[0]
    assert payload == PAYLOAD
    assert headers["webhook-id"] == "msg_1"
    assert headers["content-type"] == "application/json"


def test_rotation_header_with_two_signatures(receiver: Running) -> None:
    ts = int(time.time())
    headers = {
        "webhook-id": "msg_2",
        "webhook-timestamp": str(ts),
        "webhook-signature": signature_header([new_signing_secret(), SECRET], "msg_2", ts, BODY),
    }
    response = requests.post(receiver.url, data=BODY, headers=headers, timeout=TIMEOUT)
    assert response.status_code == 204
    assert [p for p, _ in receiver.events.received] == [PAYLOAD]


def assert_rejected(response: requests.Response, status: int, message: str) -> None:
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert message in response.json()["error"]


def test_unsigned_request_is_401(receiver: Running) -> None:
    response = requests.post(receiver.url, data=BODY, timeout=TIMEOUT)
    assert_rejected(response, 401, "missing webhook-id header")
    assert receiver.events.received == []


def test_tampered_body_is_401(receiver: Running) -> None:
    headers = signed_headers(BODY)
    tampered = BODY.replace(b"7", b"8")
    response = requests.post(receiver.url, data=tampered, headers=headers, timeout=TIMEOUT)
    assert_rejected(response, 401, "no v1 signature")
    assert receiver.events.received == []


def test_wrong_secret_is_401(receiver: Running) -> None:
    headers = signed_headers(BODY, secret=new_signing_secret())
    response = requests.post(receiver.url, data=BODY, headers=headers, timeout=TIMEOUT)
    assert_rejected(response, 401, "no v1 signature")
    assert receiver.events.received == []


def test_stale_request_is_401(receiver: Running) -> None:
    headers = signed_headers(BODY, ts=int(time.time()) - 3600)
    response = requests.post(receiver.url, data=BODY, headers=headers, timeout=TIMEOUT)
    assert_rejected(response, 401, "seconds old")
    assert receiver.events.received == []


def test_only_the_valid_one_of_a_mix_is_delivered(receiver: Running) -> None:
    good = {**PAYLOAD, "data": {"pk": 1}}
    bad = {**PAYLOAD, "data": {"pk": 2}}
    good_body, bad_body = json.dumps(good).encode(), json.dumps(bad).encode()
    with requests.Session() as session:  # one keep-alive connection for all three
        statuses = [
            session.post(receiver.url, data=bad_body, timeout=TIMEOUT).status_code,
            session.post(
                receiver.url, data=good_body, headers=signed_headers(good_body), timeout=TIMEOUT
            ).status_code,
            session.post(
                receiver.url, data=bad_body, headers=signed_headers(good_body), timeout=TIMEOUT
            ).status_code,
        ]
    assert statuses == [401, 204, 401]
    assert [p for p, _ in receiver.events.received] == [good]


def test_duplicate_signed_header_is_401(receiver: Running) -> None:
    host, port = receiver.server.server_address[:2]
    conn = http.client.HTTPConnection(str(host), int(port), timeout=TIMEOUT)
    try:
        conn.putrequest("POST", "/")
        for name, value in signed_headers(BODY).items():
            conn.putheader(name, value)
        conn.putheader("webhook-id", "msg_other")
        conn.putheader("Content-Length", str(len(BODY)))
        conn.endheaders(BODY)
        response = conn.getresponse()
        assert response.status == 401
        assert "more than once" in json.loads(response.read())["error"]
    finally:
        conn.close()
    assert receiver.events.received == []


def test_non_object_payload_is_400(receiver: Running) -> None:
    body = b"[1, 2, 3]"
    response = requests.post(receiver.url, data=body, headers=signed_headers(body), timeout=TIMEOUT)
    assert_rejected(response, 400, "JSON object")
    assert receiver.events.received == []


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_405(receiver: Running, method: str) -> None:
    response = requests.request(method, receiver.url, timeout=TIMEOUT)
    assert_rejected(response, 405, "only POST")
    assert response.headers["Allow"] == "POST"


def test_head_is_405_without_a_body(receiver: Running) -> None:
    response = requests.head(receiver.url, timeout=TIMEOUT)
    assert response.status_code == 405
    assert response.content == b""


def test_oversized_body_is_413_without_reading_it(receiver: Running) -> None:
    host, port = receiver.server.server_address[:2]
    conn = http.client.HTTPConnection(str(host), int(port), timeout=TIMEOUT)
    try:
        conn.putrequest("POST", "/")
        conn.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
        conn.endheaders()  # the body is never sent: the answer must not wait for it
        response = conn.getresponse()
        assert response.status == 413
        assert "larger than" in json.loads(response.read())["error"]
    finally:
        conn.close()
    assert receiver.events.received == []


def test_a_content_length_of_thousands_of_digits_is_413(receiver: Running) -> None:
    """int() refuses over 4300 digits; the answer must still be one, not a dropped connection."""
    host, port = receiver.server.server_address[:2]
    conn = http.client.HTTPConnection(str(host), int(port), timeout=TIMEOUT)
    try:
        conn.putrequest("POST", "/")
        conn.putheader("Content-Length", "9" * 5000)
        conn.endheaders()
        assert conn.getresponse().status == 413
    finally:
        conn.close()


def test_a_client_that_hangs_up_leaves_no_traceback(
    receiver: Running, capfd: pytest.CaptureFixture[str]
) -> None:
    host, port = receiver.server.server_address[:2]
    for _ in range(3):  # reset while the server waits for the next request on the connection
        sock = socket.create_connection((str(host), int(port)), timeout=TIMEOUT)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.recv(1024)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    requests.post(receiver.url, data=BODY, headers=signed_headers(BODY), timeout=TIMEOUT)
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize(
    ("data", "answer"),
    [
        (b"POST /hooks HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200, b""),
        (b"POST /hooks HTTP/1.1\r\nContent-Length: 200\r\n\r\n" + b"a" * 200, b"HTTP/1.1 408 "),
    ],
    ids=["head", "body"],
)
def test_a_request_trickled_in_is_cut_off_at_its_deadline_while_others_are_served(
    receiver: Running, monkeypatch: pytest.MonkeyPatch, data: bytes, answer: bytes
) -> None:
    """A byte every 20 ms never meets the per-read timeout; the whole request has a deadline."""
    handler = receiver.server.RequestHandlerClass
    monkeypatch.setattr(handler, "request_deadline", 0.3, raising=False)
    with socket.create_connection(receiver.server.server_address[:2], TIMEOUT) as slow:
        begun = data.rindex(b"\r\n") + 2  # up to the last header, or the whole head
        slow.sendall(data[:begun])  # the request has begun: its deadline runs
        assert requests.post(receiver.url, data=b"{}", timeout=TIMEOUT).status_code == 401
        got = trickled(slow, data[begun:], within=1.2)
    assert got is not None, "the receiver still waited for the trickled request"
    assert got.startswith(answer), got[:200]


def test_body_at_the_cap_is_accepted(receiver: Running) -> None:
    prefix = b'{"type": "big", "pad": "'
    body = prefix + b"x" * (MAX_BODY_BYTES - len(prefix) - 2) + b'"}'
    assert len(body) == MAX_BODY_BYTES
    response = requests.post(receiver.url, data=body, headers=signed_headers(body), timeout=TIMEOUT)
    assert response.status_code == 204
    assert receiver.events.received[0][0]["type"] == "big"


def test_missing_content_length_is_411(receiver: Running) -> None:
    def chunks() -> Iterator[bytes]:
        yield BODY

    response = requests.post(
        receiver.url, data=chunks(), headers=signed_headers(BODY), timeout=TIMEOUT
    )
    assert_rejected(response, 411, "Content-Length")
    assert receiver.events.received == []


def test_failing_handler_is_500_so_the_sender_retries(
    receiver: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    receiver.events.fail = True
    response = requests.post(receiver.url, data=BODY, headers=signed_headers(BODY), timeout=TIMEOUT)
    assert_rejected(response, 500, "failed to handle")
    # The application's own bug is not hidden: its traceback reaches stderr.
    err = ""
    deadline = time.monotonic() + TIMEOUT
    while "RuntimeError: handler broke" not in err and time.monotonic() < deadline:
        time.sleep(0.01)
        err += capsys.readouterr().err
    assert "RuntimeError: handler broke" in err


def test_quiet_logging(receiver: Running, capfd: pytest.CaptureFixture[str]) -> None:
    requests.post(receiver.url, data=BODY, headers=signed_headers(BODY), timeout=TIMEOUT)
    requests.post(receiver.url, data=BODY, timeout=TIMEOUT)
    requests.get(receiver.url, timeout=TIMEOUT)
    captured = capfd.readouterr()
    assert captured.err == ""
    assert captured.out == ""


def test_ipv6_receiver() -> None:
    events = Events()
    try:
        server = make_receiver("::1", 0, SECRET, events)
    except OSError as exc:
        pytest.skip(f"IPv6 loopback is not available: {exc}")
    assert server.address_family == socket.AF_INET6
    thread = run(server)
    try:
        port = server.server_address[1]
        response = requests.post(
            f"http://[::1]:{port}/", data=BODY, headers=signed_headers(BODY), timeout=TIMEOUT
        )
        assert response.status_code == 204
        assert [p for p, _ in events.received] == [PAYLOAD]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


def test_tolerance_is_passed_to_verification() -> None:
    events = Events()
    server = make_receiver("127.0.0.1", 0, SECRET, events, tolerance=5)
    thread = run(server)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        old = signed_headers(BODY, ts=int(time.time()) - 60)
        response = requests.post(url, data=BODY, headers=old, timeout=TIMEOUT)
        assert_rejected(response, 401, "tolerance 5 s")
        fresh = signed_headers(BODY)
        assert requests.post(url, data=BODY, headers=fresh, timeout=TIMEOUT).status_code == 204
        assert len(events.received) == 1
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


def test_bad_secret_fails_at_construction() -> None:
    with pytest.raises(ValidationError, match="whsec and an underscore, then a base64 key"):
        make_receiver("127.0.0.1", 0, "not a secret", Events())


def test_an_on_event_that_cannot_be_called_fails_at_construction() -> None:
    for on_event in (None, "print"):
        with pytest.raises(ValidationError, match="on_event"):
            make_receiver("127.0.0.1", 0, SECRET, on_event)  # type: ignore[arg-type]


def raw_post(receiver: Running, head: bytes, body: bytes) -> bytes:
    host, port = receiver.server.server_address[:2]
    with socket.create_connection((str(host), int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + head + b"\r\n" + body)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return answer


@pytest.mark.parametrize(
    "lengths", [(len(BODY), 3), (len(BODY), len(BODY))], ids=["differing", "repeated"]
)
def test_more_than_one_content_length_is_400(receiver: Running, lengths: tuple[int, int]) -> None:
    """Two lengths are how request smuggling starts: which one a proxy used is unknowable."""
    head = b"".join(b"Content-Length: %d\r\n" % n for n in lengths)
    for name, value in signed_headers(BODY).items():
        head += f"{name}: {value}\r\n".encode()
    answer = raw_post(receiver, head, BODY)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"Content-Length" in answer
    assert receiver.events.received == []


def test_an_oversized_body_is_refused_before_100_continue(receiver: Running) -> None:
    """A client that asks first must get the 413 instead of an invitation to send."""
    answer = raw_post(
        receiver, b"Expect: 100-continue\r\nContent-Length: %d\r\n" % (MAX_BODY_BYTES + 1), b""
    )
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert b"100 Continue" not in answer


def test_a_body_shorter_than_its_content_length_is_400(receiver: Running) -> None:
    host, port = receiver.server.server_address[:2]
    with socket.create_connection((str(host), int(port)), timeout=TIMEOUT) as sock:
        head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % (len(BODY) + 10)
        for name, value in signed_headers(BODY).items():
            head += f"{name}: {value}\r\n".encode()
        sock.sendall(head + b"\r\n" + BODY)
        sock.shutdown(socket.SHUT_WR)  # the client has sent all it will
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ") and b"ended after" in answer, answer
    assert receiver.events.received == []


def test_a_stalled_body_is_answered_408(
    receiver: Running, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(receiver.server.RequestHandlerClass, "timeout", 0.5)
    answer = raw_post(receiver, b"Content-Length: 100\r\n", b"{")
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize(
    ("request_line", "status"),
    [(b"BREW / HTTP/1.1", b"501"), (b"POST / HTTP/9.9", None), (b"POST /\x00 x y z", None)],
)
def test_http_server_refusals_are_json_too(
    receiver: Running, request_line: bytes, status: bytes | None
) -> None:
    """A request line it cannot read is answered as HTTP/0.9 (a body, no status line)."""
    host, port = receiver.server.server_address[:2]
    with socket.create_connection((str(host), int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(request_line + b"\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    body = answer
    if status is not None:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 " + status) and b"application/json" in head, answer
    assert json.loads(body)["error"], answer


def test_connections_beyond_the_bound_are_closed_and_served_again_once_free(
    receiver: Running,
) -> None:
    """Idle connections hold a thread each; past the bound more are not given one."""
    receiver.server.max_connections = 2
    address = receiver.server.server_address[:2]
    idle = [socket.create_connection(address, timeout=TIMEOUT) for _ in range(2)]
    try:
        with socket.create_connection(address, timeout=TIMEOUT) as extra:
            assert extra.recv(1) == b""  # closed unanswered, at once
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + TIMEOUT
    while True:  # the idle connections' threads end when they see them closed
        try:
            answer = requests.get(receiver.url, timeout=TIMEOUT)
            break
        except requests.ConnectionError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert answer.status_code == 405


class _CtrlCAsItsThreadRuns(ThreadingMixIn):
    """Ctrl-C reaching the serving thread once a connection's thread has run.

    On a busy machine ``Thread.start()`` can return after the new thread has
    answered: the signal then lands in ``process_request``.
    """

    def process_request(self, request: Any, client_address: Any) -> None:
        before = set(threading.enumerate())
        super().process_request(request, client_address)  # type: ignore[misc]
        for thread in set(threading.enumerate()) - before:
            thread.join(TIMEOUT)
        raise KeyboardInterrupt


class _Answer204(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _InterruptedServer(BoundedThreads, _CtrlCAsItsThreadRuns, HTTPServer):
    pass


def test_ctrl_c_as_a_connection_is_served_stops_the_server() -> None:
    """The connection's place is given back once: a second release was a ValueError that
    socketserver printed and swallowed, with the KeyboardInterrupt, so Ctrl-C was lost."""
    server = _InterruptedServer(("127.0.0.1", 0), _Answer204)
    try:
        with socket.create_connection(server.server_address[:2], timeout=TIMEOUT) as client:
            client.sendall(b"GET / HTTP/1.0\r\n\r\n")
            with pytest.raises(KeyboardInterrupt):
                server.handle_request()
            assert client.recv(100).startswith(b"HTTP/1.0 204")
    finally:
        server.server_close()


@pytest.mark.parametrize("host", ["", " ", "\t", "[]", " [ ] "])
def test_an_empty_host_is_refused_rather_than_listening_everywhere(host: str) -> None:
    """The socket module reads an empty host as every interface: say it, do not guess."""
    with pytest.raises(ValidationError, match=r"0\.0\.0\.0"):
        make_receiver(host, 0, SECRET, Events())


@pytest.mark.parametrize(
    ("option", "value"),
    [("port", 10**5000), ("port", -(10**5000)), ("tolerance", -(10**5000)), ("tolerance", 2**64)],
    ids=["port-huge", "port-negative-huge", "tolerance-negative-huge", "tolerance-2**64"],
)
def test_huge_integers_are_validation_errors(option: str, value: int) -> None:
    """str() refuses an int of over 4,300 digits: the message must not need it whole."""
    options: dict[str, Any] = {"port": 0, option: value}
    with pytest.raises(ValidationError, match=option):
        make_receiver("127.0.0.1", secret=SECRET, on_event=Events(), **options)
