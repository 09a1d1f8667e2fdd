"""Sending webhooks: requests, signatures, outcomes, retries, the address guard, crashes.

Every test talks to a real HTTP server on 127.0.0.1 (the stdlib's, or a raw
socket where HTTP itself must misbehave) and a real SQLite file. Stores use
short timeouts and an injected clock, so outcomes and the retry schedule are
checked exactly and quickly.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import _db
import peewee
import pytest
from _http import Receiver, answer, free_port, ok
from blinker import Signal
from conftest import Clock
from standardwebhooks.webhooks import Webhook

import tokenstore
from tokenstore import Store, signals
from tokenstore._errors import BlockedAddress, StoreReadOnly, ValidationError
from tokenstore._models import ABIDModel, OutboundWebhook, WebhookDelivery
from tokenstore._policy import RETRY_SCHEDULE
from tokenstore._sending import RESPONSE_LIMIT
from tokenstore._signing import verify_webhook
from tokenstore._times import to_stored_time

HERE = Path(__file__).resolve().parent
LOOPBACK = ["127.0.0.1/32", "::1/128", "localhost"]
TIMEOUT = 0.5  # connect and read timeout of the stores under test, in seconds
DEADLINE = 2 * TIMEOUT  # their delivery deadline


class Note(ABIDModel):
    """The application model the hooks watch."""

    abid_prefix = "not_"
    text = peewee.TextField(default="")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def open_store(path: Path, clock: Clock, **options: Any) -> Store:
    options.setdefault("webhook_allow", LOOPBACK)
    s = tokenstore.open(
        path,
        connect_timeout=TIMEOUT,
        read_timeout=TIMEOUT,
        delivery_deadline=DEADLINE,
        clock=clock,
        **options,
    )
    s.register(Note)
    return s


@pytest.fixture
def store(db_path: Path, clock: Clock) -> Iterator[Store]:
    """Overrides conftest's: loopback allowed, short timeouts, the injected clock, Note."""
    s = open_store(db_path, clock)
    try:
        yield s
    finally:
        s.close()


@contextmanager
def listening(sig: Signal) -> Iterator[list[dict[str, Any]]]:
    """Record a signal's calls; strong reference, always disconnected afterwards."""
    calls: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        calls.append({"sender": sender, **kwargs})

    sig.connect(receiver, weak=False)
    try:
        yield calls
    finally:
        sig.disconnect(receiver)


def timed_save(stop: threading.Event) -> float:
    """Seconds one ``Note.create()`` took; then ``stop`` ends the receiver's endless answer."""
    start = time.monotonic()
    try:
        Note.create(text="x")
        return time.monotonic() - start
    finally:
        stop.set()


def only_delivery(store: Store) -> WebhookDelivery:
    (delivery,) = store.webhooks.deliveries()
    return delivery


def reload(hook: OutboundWebhook) -> OutboundWebhook:
    fresh: OutboundWebhook = OutboundWebhook.get_by_id(hook.id)
    return fresh


# -- the request --------------------------------------------------------------------


def test_save_sends_one_signed_request_before_returning(
    store: Store, receiver: Receiver, clock: Clock
) -> None:
    hook = store.webhooks.create(
        "notes", Note, receiver.url(), headers={"X-Team": "blue"}, auth_token="Bearer s3cret"
    )
    with listening(signals.webhook_delivered) as delivered:
        note = Note.create(text="hello")
        # save() has returned: the attempt is made and recorded already.
        delivery = only_delivery(store)
        assert delivery.status == "delivered"
    (hit,) = receiver.hits
    assert (hit.method, hit.path) == ("POST", "/hook")

    payload = json.loads(hit.body)
    assert hit.body == json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    assert payload["type"] == "note.created"
    datetime.fromisoformat(payload["timestamp"])
    data = payload["data"]
    assert data["model"] == store.ref(Note)
    assert data["pk"] == str(note.id)
    assert data["abid"] == note.abid
    assert data["fields"]["text"] == "hello"

    h = hit.headers
    assert h["X-Team"] == "blue"
    assert h["Content-Type"] == "application/json"
    assert h["Authorization"] == "Bearer s3cret"
    assert h["User-Agent"] == f"tokenstore/{tokenstore.__version__}"
    assert h["webhook-id"] == delivery.abid
    assert h["webhook-timestamp"] == str(int(clock.now.timestamp()))
    assert Webhook(hook.secret).verify(hit.body, hit.header_dict()) == payload
    assert verify_webhook(hook.secret, hit.header_dict(), hit.body) == payload

    assert delivery.attempts == 1
    assert delivery.last_status_code == 200
    assert delivery.duration_ms is not None
    assert delivery.next_attempt_at is None
    hook = reload(hook)
    assert hook.last_success == delivery.delivered_at
    assert hook.last_failure is None
    assert hook.last_response == ""  # keep_last_response is off
    assert [c["delivery"].abid for c in delivered] == [delivery.abid]
    assert delivered[0]["sender"] is OutboundWebhook


def test_deliveries_are_ordinary_rows_of_their_model(
    store: Store, receiver: Receiver, clock: Clock
) -> None:
    """Deliveries are written with direct SQL on the hot path; they must read back, and
    save again, exactly like rows the model wrote itself."""
    hook = store.webhooks.create("notes", Note, receiver.url())
    Note.create(text="x")
    delivery = only_delivery(store)
    assert str(delivery.compute_abid()) == delivery.abid
    assert delivery.abid == receiver.hits[0].headers["webhook-id"]
    assert (delivery.hook_id, delivery.created_by_id) == (hook.id, store.system_user.id)
    assert delivery.created_at == to_stored_time(clock.now)
    assert delivery.event_type == "note.created"
    delivery.last_error = "annotated by hand"
    delivery.save()  # no ABID drift, no integrity error
    assert WebhookDelivery.get_by_id(delivery.id).last_error == "annotated by hand"
    row = store.db.execute_sql(
        "SELECT webhook_id, hook, status, attempts FROM tokenstore_delivery_log"
    ).fetchall()
    assert row == [(delivery.abid, "notes", "delivered", 1)]


def test_deliveries_whose_abids_collide_get_new_ids_instead_of_failing_the_commit(
    store: Store, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deliveries of one commit share a hook, a type and a millisecond; the ABID keeps
    only 30 bits of the id. Two ids with the same low bits must not break the save."""
    store.webhooks.create("notes", Note, receiver.url())
    base = uuid.uuid4().int & ~((1 << 30) - 1)
    ids = iter(
        [uuid.UUID(int=base | 7), uuid.UUID(int=(base ^ (1 << 40)) | 7), uuid.UUID(int=base | 8)]
    )
    monkeypatch.setattr(WebhookDelivery, "new_id", classmethod(lambda cls: next(ids)))
    with store.atomic():
        Note.create(text="one")
        Note.create(text="two")
    deliveries = store.webhooks.deliveries()
    assert len({d.abid for d in deliveries}) == 2
    assert {d.status for d in deliveries} == {"delivered"}
    assert sorted(json.loads(hit.body)["data"]["fields"]["text"] for hit in receiver.hits) == [
        "one",
        "two",
    ]


def strict_json(body: bytes) -> Any:
    """``body`` parsed as RFC 8259 JSON: Python's ``NaN`` and ``Infinity`` words refused."""

    def refuse(word: str) -> Any:
        raise ValueError(f"{word} is not JSON")

    return json.loads(body, parse_constant=refuse)


def test_a_float_no_json_number_can_hold_is_sent_as_its_name(
    store: Store, receiver: Receiver
) -> None:
    """JSON has no NaN or infinity: a receiver in any language must be able to parse the body."""

    class Reading(ABIDModel):
        abid_prefix = "rdg_"
        value = peewee.FloatField(null=True)

    store.register(Reading)
    store.webhooks.create("readings", Reading, receiver.url())
    values = [float("inf"), float("-inf"), float("nan"), 1.5]
    for value in values:
        Reading.create(value=value)
    sent = [strict_json(hit.body)["data"]["fields"]["value"] for hit in receiver.hits]
    # SQLite keeps a NaN as NULL (docs/postgresql.md); PostgreSQL keeps it.
    nan = "NaN" if _db.is_postgres(store) else None
    assert sent == ["Infinity", "-Infinity", nan, 1.5]


def test_update_and_delete_are_sent_with_their_types(store: Store, receiver: Receiver) -> None:
    store.webhooks.create("notes", Note, receiver.url())
    note = Note.create(text="one")
    note.text = "two"
    note.save()
    note.delete_instance()
    bodies = [json.loads(hit.body) for hit in receiver.hits]
    assert [b["type"] for b in bodies] == ["note.created", "note.updated", "note.deleted"]
    assert [b["data"]["fields"]["text"] for b in bodies] == ["one", "two", "two"]
    assert {b["data"]["pk"] for b in bodies} == {str(note.id)}


def test_user_headers_cannot_override_the_signature_headers(
    store: Store, receiver: Receiver
) -> None:
    hook = store.webhooks.create(
        "notes",
        Note,
        receiver.url(),
        auth_token="ignored: the user's Authorization comes first",
        headers={
            "Authorization": "Basic dXNlcg==",
            "Content-Type": "application/vnd.notes+json",
            "User-Agent": "spoof/1.0",
            "webhook-id": "msg_forged",
            "Webhook-Timestamp": "1",
            "webhook-signature": "v1,Zm9yZ2Vk",
        },
    )
    Note.create(text="x")
    (hit,) = receiver.hits
    h = hit.headers
    assert h["Authorization"] == "Basic dXNlcg=="
    assert h["Content-Type"] == "application/vnd.notes+json"
    assert h.get_all("User-Agent") == [f"tokenstore/{tokenstore.__version__}"]
    assert h.get_all("webhook-id") == [only_delivery(store).abid]
    assert len(h.get_all("webhook-timestamp") or []) == 1
    assert len(h.get_all("webhook-signature") or []) == 1
    Webhook(hook.secret).verify(hit.body, hit.header_dict())


def test_user_headers_cannot_change_how_the_body_is_framed(
    store: Store, receiver: Receiver
) -> None:
    """With Transfer-Encoding beside Content-Length a receiver (or its proxy) splits the body."""
    store.webhooks.create(
        "notes",
        Note,
        receiver.url(),
        headers={"Transfer-Encoding": "chunked", "content-length": "1"},
    )
    Note.create(text="x")
    (hit,) = receiver.hits
    assert hit.headers.get_all("Transfer-Encoding") is None
    assert hit.headers.get_all("Content-Length") == [str(len(hit.body))]
    assert only_delivery(store).status == "delivered"


def test_hooks_fire_by_signal_substring_model_and_enabled(store: Store, receiver: Receiver) -> None:
    for name in ("CREATE", "UPDATE_OR_DELETE", "M2M", "CREATE_OR_M2M", "DISABLED", "TOKENS"):
        signal_name = {"DISABLED": "CREATE_UPDATE_OR_DELETE", "TOKENS": "CREATE_UPDATE_OR_DELETE"}
        store.webhooks.create(
            name,
            "tokenstore.APIToken" if name == "TOKENS" else Note,
            receiver.url(f"/{name}"),
            signal=signal_name.get(name, name),
        )
    store.webhooks.update("DISABLED", enabled=False)
    note = Note.create(text="a")
    note.text = "b"
    note.save()
    note.delete_instance()
    got = sorted((hit.path, json.loads(hit.body)["type"]) for hit in receiver.hits)
    assert got == [
        ("/CREATE", "note.created"),
        ("/CREATE_OR_M2M", "note.created"),
        ("/UPDATE_OR_DELETE", "note.deleted"),
        ("/UPDATE_OR_DELETE", "note.updated"),
    ]


def test_nothing_is_written_or_sent_when_no_enabled_hook_matches(
    store: Store, receiver: Receiver
) -> None:
    store.webhooks.create("tokens", "tokenstore.APIToken", receiver.url("/t"))
    store.webhooks.create("off", Note, receiver.url("/n"))
    store.webhooks.disable("off")
    for i in range(3):
        Note.create(text=str(i))
    assert receiver.hits == []
    assert store.webhooks.deliveries() == []


def test_no_thread_is_started_per_save_and_one_connection_is_kept_alive(
    store: Store, receiver: Receiver
) -> None:
    store.webhooks.create("notes", Note, receiver.url())
    Note.create(text="warm-up")  # the first send opens the connection

    def ours() -> set[threading.Thread]:
        # The test server starts a thread per connection; those are not ours.
        return {t for t in threading.enumerate() if "process_request" not in t.name}

    before = ours()
    for i in range(5):
        Note.create(text=str(i))
    assert ours() == before
    assert len(receiver.hits) == 6
    assert len({hit.client_port for hit in receiver.hits}) == 1


def test_rolled_back_changes_send_nothing_and_nested_ones_wait_for_the_outer_commit(
    store: Store, receiver: Receiver
) -> None:
    store.webhooks.create("notes", Note, receiver.url())
    with store.atomic() as txn:
        Note.create(text="rolled back")
        txn.rollback()
    with pytest.raises(RuntimeError), store.atomic():
        Note.create(text="raised")
        raise RuntimeError("abort")
    assert receiver.hits == []
    assert store.webhooks.deliveries() == []

    with store.atomic():
        with store.atomic():
            Note.create(text="inner")
        assert receiver.hits == []
    assert [json.loads(hit.body)["data"]["fields"]["text"] for hit in receiver.hits] == ["inner"]


def test_secrets_never_appear_in_payloads(store: Store, receiver: Receiver) -> None:
    store.webhooks.create("tokens", "tokenstore.APIToken", receiver.url("/tokens"))
    store.webhooks.create(
        "hooks", OutboundWebhook, receiver.url("/hooks"), auth_token="hook-auth-token"
    )
    token, token_secret = store.tokens.create(name="ci")
    other = store.webhooks.create(
        "other",
        Note,
        receiver.url("/other"),
        auth_token="other-auth-token",
        headers={"X-Receiver-Key": "header-held-key"},
    )
    store.webhooks.rotate_secret(other)
    other = reload(other)
    bodies = [(hit.path, hit.body.decode()) for hit in receiver.hits]
    assert {path for path, _ in bodies} == {"/tokens", "/hooks"}
    assert len(bodies) >= 3  # the token; then the "other" hook created and its secret rotated
    (token_body,) = [body for path, body in bodies if path == "/tokens"]
    token_fields = json.loads(token_body)["data"]["fields"]
    assert token_fields["token_hint"] == token.token_hint
    for _, body in bodies:
        for secret in (
            token_secret,
            token.token_digest,
            "hook-auth-token",
            "other-auth-token",
            other.secret,
            other.previous_secret,
            "header-held-key",
        ):
            assert secret not in body
    for body in (d.payload for d in store.webhooks.deliveries()):
        assert "auth-token" not in body
        assert "whsec_" not in body


# -- outcomes -----------------------------------------------------------------------


def test_receiver_down_is_a_failure_retried_after_five_seconds(store: Store, clock: Clock) -> None:
    hook = store.webhooks.create("down", Note, f"http://127.0.0.1:{free_port()}/")
    with listening(signals.webhook_failed) as failed:
        Note.create(text="x")
    delivery = only_delivery(store)
    assert delivery.status == "failed"
    assert delivery.attempts == 1
    assert delivery.last_status_code is None
    assert "ConnectionError" in delivery.last_error
    assert delivery.last_attempt_at == to_stored_time(clock.now)
    assert delivery.next_attempt_at == delivery.last_attempt_at + timedelta(seconds=5)
    hook = reload(hook)
    assert hook.last_failure is not None
    assert hook.last_success is None
    assert hook.failure_count == 1
    assert [c["error"] for c in failed] == [delivery.last_error]


def test_a_receiver_slower_than_the_read_timeout_is_a_timeout(
    store: Store, receiver: Receiver
) -> None:
    def slow(handler: BaseHTTPRequestHandler) -> None:
        time.sleep(TIMEOUT + 0.4)
        ok(handler)

    receiver.respond = slow
    store.webhooks.create("slow", Note, receiver.url())
    start = time.monotonic()
    Note.create(text="x")
    elapsed = time.monotonic() - start
    delivery = only_delivery(store)
    assert delivery.status == "failed"
    assert "timed out" in delivery.last_error
    assert elapsed < TIMEOUT + 0.35


def test_http_500_is_a_failure_and_its_body_is_kept(store: Store, receiver: Receiver) -> None:
    receiver.respond = lambda h: answer(h, 500, b"database on fire")
    hook = store.webhooks.create("notes", Note, receiver.url(), keep_last_response=True)
    Note.create(text="x")
    delivery = only_delivery(store)
    assert (delivery.status, delivery.last_status_code, delivery.last_error) == (
        "failed",
        500,
        "HTTP 500",
    )
    assert reload(hook).last_response == "database on fire"


def test_a_kept_response_that_echoes_the_hooks_credentials_keeps_them_out(
    store: Store, receiver: Receiver
) -> None:
    """Debugging receivers echo the request; the hook's secrets must not come back with it."""
    receiver.respond = lambda h: answer(h, 500, str(dict(h.headers.items())).encode())
    hook = store.webhooks.create(
        "echo",
        Note,
        receiver.url(),
        keep_last_response=True,
        auth_token="Bearer s3cret-token",
        headers={"X-Api-Key": "k3y-value-1234"},
    )
    Note.create(text="x")
    kept = reload(hook).last_response
    assert "X-Api-Key" in kept and "Authorization" in kept  # the echo itself is kept
    assert "s3cret-token" not in kept and "k3y-value-1234" not in kept
    assert hook.secret not in kept


def test_a_kept_response_cut_inside_a_credential_keeps_its_start_out(
    store: Store, receiver: Receiver
) -> None:
    """The answer is kept to its first RESPONSE_LIMIT characters: a credential the cut
    falls inside left all but its last characters, past the reach of redaction."""
    credential = "s3cret-token-0123456789"
    kept_part = "y" * (RESPONSE_LIMIT - 12)
    receiver.respond = lambda h: answer(h, 500, (kept_part + credential).encode())
    hook = store.webhooks.create(
        "echo", Note, receiver.url(), keep_last_response=True, auth_token=f"Bearer {credential}"
    )
    Note.create(text="x")
    kept = reload(hook).last_response
    assert kept.startswith(kept_part) and "s3cret" not in kept


def test_a_kept_response_that_quotes_only_the_credential_keeps_it_out(
    store: Store, receiver: Receiver
) -> None:
    """A receiver says "invalid token s3cret-token": the credential, without its scheme."""
    receiver.respond = lambda h: answer(
        h, 401, f"invalid token {h.headers['Authorization'].split()[-1]}".encode()
    )
    hook = store.webhooks.create(
        "echo", Note, receiver.url(), keep_last_response=True, auth_token="Bearer s3cret-token"
    )
    Note.create(text="x")
    kept = reload(hook).last_response
    assert kept.startswith("invalid token ") and "s3cret-token" not in kept


def test_http_410_disables_the_hook_and_gives_up_its_deliveries(
    store: Store, receiver: Receiver
) -> None:
    receiver.respond = lambda h: answer(h, 500)
    hook = store.webhooks.create("gone", Note, receiver.url())
    Note.create(text="waiting for a retry")
    receiver.respond = lambda h: answer(h, 410)
    Note.create(text="gone now")  # not tried from the write path: it waits behind the retry
    assert len(receiver.hits) == 1
    with listening(signals.webhook_disabled) as disabled:
        store.webhooks.deliver_due(now=datetime.now(UTC) + timedelta(minutes=1))
    hook = reload(hook)
    assert hook.enabled is False
    assert "410" in hook.disabled_reason
    assert [c["reason"] for c in disabled] == [hook.disabled_reason]
    assert {d.status for d in store.webhooks.deliveries()} == {"dead"}
    # the one attempted keeps the receiver's answer; the one given up says why
    answered, given_up = sorted(d.last_error for d in store.webhooks.deliveries())
    assert answered.startswith("HTTP 410")
    assert given_up == f"hook disabled: {hook.disabled_reason}"
    Note.create(text="after")
    assert len(receiver.hits) == 2
    assert len(store.webhooks.deliveries()) == 2


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [
        (429, "120", timedelta(seconds=120)),
        (503, "http-date in 90 s", timedelta(seconds=90)),
        (429, "9" * 30, timedelta(hours=10)),  # absurd: capped, not a crash
        (503, "soon", RETRY_SCHEDULE[1]),  # nonsense: the schedule applies
        (429, "\u00b2", RETRY_SCHEDULE[1]),  # a Unicode digit is not a number of seconds
        (503, "0", RETRY_SCHEDULE[1]),  # sooner than the schedule: the schedule's wait
    ],
)
def test_429_and_503_honour_retry_after(
    store: Store, receiver: Receiver, clock: Clock, status: int, retry_after: str, expected: Any
) -> None:
    if retry_after.startswith("http-date"):
        retry_after = format_datetime(clock.now + timedelta(seconds=90), usegmt=True)
    receiver.respond = lambda h: answer(h, status, headers={"Retry-After": retry_after})
    Note.create(text="warm-up")  # no hook yet; the store is ready
    store.webhooks.create("busy", Note, receiver.url())
    Note.create(text="x")
    delivery = only_delivery(store)
    assert (delivery.status, delivery.last_status_code) == ("failed", status)
    assert delivery.next_attempt_at is not None
    assert delivery.last_attempt_at is not None
    assert delivery.next_attempt_at - delivery.last_attempt_at == expected


def test_redirects_are_not_followed_and_count_as_failures(store: Store, receiver: Receiver) -> None:
    receiver.respond = lambda h: answer(h, 302, headers={"Location": receiver.url("/elsewhere")})
    store.webhooks.create("moved", Note, receiver.url())
    Note.create(text="x")
    assert [(hit.method, hit.path) for hit in receiver.hits] == [("POST", "/hook")]
    delivery = only_delivery(store)
    assert delivery.status == "failed"
    assert delivery.last_status_code == 302
    assert "/elsewhere" in delivery.last_error


def test_a_huge_redirect_location_is_cut_like_any_other_error(
    store: Store, receiver: Receiver
) -> None:
    """The receiver writes the Location: 64 kB a line, and folded over a hundred lines,
    megabytes of it went into each attempt's last_error, the command's output and signals."""
    where = "/" + "far" * 20_000
    receiver.respond = lambda h: answer(h, 302, headers={"Location": where})
    store.webhooks.create("moved", Note, receiver.url())
    Note.create(text="x")
    delivery = only_delivery(store)
    assert (delivery.status, delivery.last_status_code) == ("failed", 302)
    assert delivery.last_error.startswith("HTTP 302: redirect to /farfar")
    assert len(delivery.last_error) < 600


@pytest.mark.parametrize(
    "interim",
    [b"100 Continue", b"102 Processing", b"103 Early Hints\r\nLink: </style.css>; rel=preload"],
    ids=["100", "102", "103"],
)
def test_interim_answers_before_the_final_one_are_read_past(
    store: Store, receiver: Receiver, interim: bytes
) -> None:
    """HTTP lets a server send 1xx answers before its final one, and a client must read past
    them (RFC 9110, 15.2). A receiver that sends 103 Early Hints, then 200, has the message:
    recorded as failed, it would be sent again and, in time, its hook disabled."""

    def hints_first(handler: BaseHTTPRequestHandler) -> None:
        handler.wfile.write(b"HTTP/1.1 " + interim + b"\r\n\r\n")
        answer(handler, 200, b"thanks")

    receiver.respond = hints_first
    hook = store.webhooks.create("hints", Note, receiver.url(), keep_last_response=True)
    Note.create(text="x")
    Note.create(text="y")  # the kept-alive connection holds nothing of the first answer
    outcomes = [(d.status, d.last_status_code) for d in store.webhooks.deliveries()]
    assert outcomes == [("delivered", 200), ("delivered", 200)]
    assert reload(hook).last_response == "thanks"
    assert len({hit.client_port for hit in receiver.hits}) == 1


def test_interim_answers_without_end_are_cut_at_the_deadline(
    store: Store, receiver: Receiver
) -> None:
    stop = threading.Event()

    def hints_forever(handler: BaseHTTPRequestHandler) -> None:
        while not stop.wait(0.01):
            handler.wfile.write(b"HTTP/1.1 103 Early Hints\r\n\r\n")

    receiver.respond = hints_forever
    store.webhooks.create("hints", Note, receiver.url())
    elapsed = timed_save(stop)
    delivery = only_delivery(store)
    assert (delivery.status, delivery.last_status_code) == ("failed", None)
    assert "deadline" in delivery.last_error
    assert elapsed < DEADLINE + 1


def test_a_non_utf8_body_is_decoded_with_replacement(store: Store, receiver: Receiver) -> None:
    receiver.respond = lambda h: answer(h, 200, b"caf\xe9 \xff\xfe ok")
    hook = store.webhooks.create("latin", Note, receiver.url(), keep_last_response=True)
    Note.create(text="x")
    assert only_delivery(store).status == "delivered"
    assert reload(hook).last_response == "caf\ufffd \ufffd\ufffd ok"


def test_nul_bytes_in_an_answer_are_recorded_as_replacement_characters(
    store: Store, receiver: Receiver
) -> None:
    """PostgreSQL text cannot hold NUL: a receiver sending one must still get its outcome kept."""
    receiver.respond = lambda h: answer(h, 302, b"a\x00b", {"Location": "/x\x00y"})
    hook = store.webhooks.create("nul", Note, receiver.url(), keep_last_response=True)
    Note.create(text="x")
    delivery = only_delivery(store)
    assert (delivery.status, delivery.last_status_code) == ("failed", 302)
    assert "redirect to /x\ufffdy not followed" in delivery.last_error
    assert reload(hook).last_response == "a\ufffdb"


def test_a_10_mb_body_is_cut_to_8000_characters_without_reading_it_all(
    store: Store, receiver: Receiver
) -> None:
    big = b"x" * (10 * 1024 * 1024)
    receiver.respond = lambda h: answer(h, 200, big)
    hook = store.webhooks.create("big", Note, receiver.url(), keep_last_response=True)
    start = time.monotonic()
    Note.create(text="x")
    assert time.monotonic() - start < 1.0
    assert only_delivery(store).status == "delivered"
    assert reload(hook).last_response == "x" * RESPONSE_LIMIT
    Note.create(text="again")  # the connection left half-read is not reused
    assert [d.status for d in store.webhooks.deliveries()] == ["delivered", "delivered"]


def test_a_body_trickled_slowly_does_not_hold_the_writer_for_long(
    store: Store, receiver: Receiver
) -> None:
    stop = threading.Event()

    def trickle(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        for _ in range(100):  # 10 s at most, each piece well inside the read timeout
            if stop.wait(0.1):
                return
            handler.wfile.write(b"." * 10)
            handler.wfile.flush()

    receiver.respond = trickle
    hook = store.webhooks.create("drip", Note, receiver.url(), keep_last_response=True)
    elapsed = timed_save(stop)
    assert elapsed < 3 * TIMEOUT
    assert only_delivery(store).status == "delivered"
    assert reload(hook).last_response.startswith("..........")


def test_a_2xx_whose_body_stalls_past_the_deadline_is_delivered(
    db_path: Path, clock: Clock, receiver: Receiver
) -> None:
    """The receiver accepted the message: as with a body trickled past the deadline, or
    cut by a reset, it is delivered, not sent again (by a race with the deadline's reaper)."""
    stop = threading.Event()

    def stall(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "100")
        handler.end_headers()
        handler.wfile.write(b"ok ")
        handler.wfile.flush()
        stop.wait(2)

    receiver.respond = stall
    s = open_store(db_path, clock, sync_budget=0.3)  # the writer's budget: under read_timeout
    try:
        s.webhooks.create("stall", Note, receiver.url())
        assert timed_save(stop) < 2 * TIMEOUT
        delivery = only_delivery(s)
        assert (delivery.status, delivery.last_status_code) == ("delivered", 200)
    finally:
        s.close()


def test_a_connection_reset_is_a_failure(store: Store) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def reset_each() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    threading.Thread(target=reset_each, daemon=True).start()
    try:
        store.webhooks.create("reset", Note, f"http://127.0.0.1:{listener.getsockname()[1]}/")
        Note.create(text="x")
    finally:
        listener.close()
    delivery = only_delivery(store)
    assert delivery.status == "failed"
    assert delivery.last_status_code is None
    # Linux reports the RST as a reset or as a close, depending on timing.
    assert delivery.last_error.startswith("ConnectionError: ('Connection aborted.'")
    assert delivery.next_attempt_at is not None


def test_a_healthy_hooks_row_is_written_at_most_once_a_second(
    store: Store, receiver: Receiver, clock: Clock
) -> None:
    hook = store.webhooks.create("steady", Note, receiver.url())
    first = clock.now
    Note.create(text="a")
    clock.advance(seconds=0.5)
    Note.create(text="b")
    assert reload(hook).last_success == first  # within the second: the row is left alone
    clock.advance(seconds=0.5)
    Note.create(text="c")
    assert reload(hook).last_success == clock.now
    # A success after a failure clears the streak at once, whatever the second.
    receiver.respond = lambda h: answer(h, 500)
    Note.create(text="d")
    assert reload(hook).failure_count == 1
    receiver.respond = ok
    store.webhooks.deliver_due(now=clock.advance(seconds=0.1) + timedelta(hours=1))
    hook = reload(hook)
    assert (hook.failure_count, hook.failing_since) == (0, None)
    assert [d.status for d in store.webhooks.deliveries()] == ["delivered"] * 4


def test_outcomes_are_recorded_per_hook(store: Store, receiver: Receiver) -> None:
    receiver.respond = lambda h: answer(h, 500 if h.path == "/bad" else 200, h.path.encode())
    good = store.webhooks.create("good", Note, receiver.url("/good"), keep_last_response=True)
    bad = store.webhooks.create("bad", Note, receiver.url("/bad"), keep_last_response=True)
    Note.create(text="x")
    good, bad = reload(good), reload(bad)
    assert (good.last_success is not None, good.last_failure, good.last_response) == (
        True,
        None,
        "/good",
    )
    assert (bad.last_success, bad.last_failure is not None, bad.last_response) == (
        None,
        True,
        "/bad",
    )
    assert (good.failure_count, bad.failure_count) == (0, 1)
    statuses = {d.hook_id: d.status for d in store.webhooks.deliveries()}
    assert statuses == {good.id: "delivered", bad.id: "failed"}


def test_a_header_the_wire_cannot_carry_is_a_recorded_failure(
    store: Store, receiver: Receiver
) -> None:
    """A hook edited in the sqlite3 shell may hold what validation would refuse."""
    hook = store.webhooks.create("notes", Note, receiver.url())
    with _db.Raw(store) as conn:
        conn.execute(
            "UPDATE tokenstore_outbound_webhook SET headers = ? WHERE id = ?",
            (json.dumps({"X-Mood": "\u2615"}), hook.id.hex),
        )
    conn.close()
    Note.create(text="x")
    delivery = only_delivery(store)
    assert delivery.status == "failed"
    assert delivery.attempts == 1
    assert delivery.last_error
    assert receiver.hits == []


def test_a_refused_secret_header_value_is_not_copied_into_the_error(
    store: Store, receiver: Receiver
) -> None:
    hook = store.webhooks.create("notes", Note, receiver.url())
    with _db.Raw(store) as conn:  # values validation would refuse
        conn.execute(
            "UPDATE tokenstore_outbound_webhook SET auth_token = ?, headers = ? WHERE id = ?",
            ("Bearer sk-live-SECRET\n", json.dumps({"X-Key": "key-\u2615-SECRET"}), hook.id.hex),
        )
    conn.close()
    with listening(signals.webhook_failed) as failed:
        Note.create(text="x")
    delivery = only_delivery(store)
    assert delivery.status == "failed" and delivery.last_error
    for text in (delivery.last_error, failed[0]["error"]):
        assert "SECRET" not in text


# -- retries ------------------------------------------------------------------------


def test_retries_follow_the_schedule_then_the_delivery_dies(
    store: Store, receiver: Receiver, clock: Clock
) -> None:
    receiver.respond = lambda h: answer(h, 500)
    store.webhooks.create("flaky", Note, receiver.url())
    Note.create(text="x")
    assert len(receiver.hits) == 1
    tick = timedelta(milliseconds=1)
    for attempt, delay in enumerate(RETRY_SCHEDULE[1:], start=2):
        clock.advance(delay - tick)
        assert store.webhooks.deliver_due() == 0, f"attempt {attempt} came early"
        clock.advance(tick)
        assert store.webhooks.deliver_due() == 1, f"attempt {attempt} did not come"
        delivery = only_delivery(store)
        assert delivery.attempts == attempt
        assert delivery.last_attempt_at == to_stored_time(clock.now)
    assert delivery.status == "dead"
    assert delivery.next_attempt_at is None
    clock.advance(timedelta(days=30))
    assert store.webhooks.deliver_due() == 0
    assert len(receiver.hits) == len(RETRY_SCHEDULE) == 8
    assert len({hit.headers["webhook-id"] for hit in receiver.hits}) == 1
    stamps = [int(hit.headers["webhook-timestamp"]) for hit in receiver.hits]
    assert stamps == sorted(stamps) and stamps[-1] - stamps[0] > 27 * 3600


def test_a_delivery_dying_on_its_last_attempt_still_holds_back_its_hooks_others(
    store: Store, receiver: Receiver, clock: Clock
) -> None:
    """One call of the retry path costs one deadline per hook that is down, also then."""
    receiver.respond = lambda h: answer(h, 500)
    store.webhooks.create("down", Note, receiver.url())
    Note.create(text="first")
    for delay in RETRY_SCHEDULE[1:-1]:
        clock.advance(delay)
        assert store.webhooks.deliver_due() == 1
    Note.create(text="second")  # waits behind the first one's last retry
    clock.advance(RETRY_SCHEDULE[-1])
    assert store.webhooks.deliver_due() == 1
    assert len(receiver.hits) == len(RETRY_SCHEDULE)
    statuses = {
        json.loads(d.payload)["data"]["fields"]["text"]: d.status
        for d in store.webhooks.deliveries()
    }
    assert statuses == {"first": "dead", "second": "pending"}
    clock.advance(RETRY_SCHEDULE[1])
    assert store.webhooks.deliver_due() == 1  # its turn comes with the hook's next retry


def test_a_retry_goes_out_as_the_hook_is_at_the_attempt_with_the_body_of_the_commit(
    store: Store, receiver: Receiver, clock: Clock
) -> None:
    """Endpoint, headers and secret are read per attempt; the body and webhook-id are fixed."""
    receiver.respond = lambda h: answer(h, 500)
    hook = store.webhooks.create("moved", Note, receiver.url("/old"))
    note = Note.create(text="before")
    Note.update(text="after").where(Note.id == note.id).execute()  # behind the first's retry
    store.webhooks.update(hook, endpoint=receiver.url("/new"), headers={"X-Team": "ops"})
    hook = store.webhooks.rotate_secret(hook, grace=timedelta(0))
    receiver.respond = ok
    clock.advance(RETRY_SCHEDULE[1])
    assert store.webhooks.deliver_due() == 2
    first, retry, second = receiver.hits
    assert [first.path, retry.path, second.path] == ["/old", "/new", "/new"]
    assert retry.headers["X-Team"] == "ops"
    assert retry.headers["webhook-id"] == first.headers["webhook-id"]
    assert retry.body == first.body
    assert Webhook(hook.secret).verify(retry.body, retry.header_dict())["type"] == "note.created"
    assert int(retry.headers["webhook-timestamp"]) == int(clock.now.timestamp())
    assert json.loads(second.body)["type"] == "note.updated"


def test_a_retry_that_succeeds_delivers_and_resets_the_failure_count(
    store: Store, receiver: Receiver, clock: Clock
) -> None:
    receiver.respond = lambda h: answer(h, 500)
    hook = store.webhooks.create("flaky", Note, receiver.url())
    Note.create(text="x")
    assert reload(hook).failure_count == 1
    receiver.respond = ok
    clock.advance(timedelta(seconds=5))
    assert store.webhooks.deliver_due() == 1
    delivery = only_delivery(store)
    assert (delivery.status, delivery.attempts) == ("delivered", 2)
    hook = reload(hook)
    assert (hook.failure_count, hook.failing_since) == (0, None)
    assert hook.last_success is not None and hook.last_failure is not None


def test_deliver_due_records_attempts_at_the_time_it_was_given(
    db_path: Path, receiver: Receiver
) -> None:
    """``deliver_due(now=...)`` acts at that time, also for the outcome and the next retry."""
    s = tokenstore.open(
        db_path,
        webhook_allow=LOOPBACK,
        connect_timeout=TIMEOUT,
        read_timeout=TIMEOUT,
        delivery_deadline=DEADLINE,
    )
    try:
        s.register(Note)
        receiver.respond = lambda h: answer(h, 500)
        s.webhooks.create("flaky", Note, receiver.url())
        Note.create(text="x")
        later = datetime.now(UTC) + timedelta(hours=3)
        assert s.webhooks.deliver_due(now=later) == 1
        delivery = only_delivery(s)
        assert delivery.last_attempt_at == to_stored_time(later)
        assert delivery.next_attempt_at == delivery.last_attempt_at + RETRY_SCHEDULE[2]
        assert receiver.hits[-1].headers["webhook-timestamp"] == str(int(later.timestamp()))
    finally:
        s.close()


def test_deliver_due_refuses_a_time_the_stores_clock_could_not_answer(
    store: Store, receiver: Receiver
) -> None:
    """A clear error, not an OverflowError from adding the lease, and nothing taken.
    Before 1970 too, as the ``clock=`` it stands for."""
    receiver.respond = lambda h: answer(h, 500)
    store.webhooks.create("h", Note, receiver.url())
    Note.create(text="x")
    end_of_time = datetime.max.replace(tzinfo=UTC)
    for at in (end_of_time, end_of_time - timedelta(days=365)):
        with pytest.raises(ValidationError, match="now must be at most 9899-"):
            store.webhooks.deliver_due(now=at)
    with pytest.raises(ValidationError, match="now must be at least 1970-01-01"):
        store.webhooks.deliver_due(now=datetime(1969, 12, 31, 23, 59, tzinfo=UTC))
    assert (only_delivery(store).status, len(receiver.hits)) == ("failed", 1)
    assert store.webhooks.deliver_due(now=end_of_time - timedelta(days=36525)) == 1


def test_deliver_due_reads_the_clock_again_for_each_delivery(
    store: Store, receiver: Receiver, clock: Clock
) -> None:
    """Each attempt is held and recorded from its own start, not from the batch's:
    a hold counted from the start would have run out while the earlier ones were sent."""
    receiver.respond = lambda h: answer(h, 500)
    store.webhooks.create("flaky", Note, receiver.url())
    with store.atomic():
        for i in range(3):
            Note.create(text=str(i))
    clock.advance(timedelta(seconds=5))
    held_while_sending: list[bool] = []

    def slow_ok(handler: BaseHTTPRequestHandler) -> None:
        with _db.Raw(store) as conn:
            (hold,) = conn.execute(
                "SELECT next_attempt_at FROM tokenstore_webhook_delivery WHERE abid = ?",
                (handler.headers["webhook-id"],),
            ).fetchone()
        conn.close()
        held_while_sending.append(datetime.fromisoformat(hold) > clock.now)
        clock.advance(timedelta(minutes=1))  # each send takes a minute, as far as the store knows
        ok(handler)

    receiver.respond = slow_ok
    start = clock.now
    assert store.webhooks.deliver_due() == 3
    assert held_while_sending == [True, True, True]
    attempted = sorted(d.last_attempt_at for d in store.webhooks.deliveries())
    assert attempted == [start + timedelta(minutes=i) for i in range(3)]


def test_a_hook_failing_for_long_enough_is_disabled(
    db_path: Path, receiver: Receiver, clock: Clock
) -> None:
    s = open_store(db_path, clock, disable_after_failures=3, disable_after=timedelta(minutes=1))
    try:
        receiver.respond = lambda h: answer(h, 500)
        hook = s.webhooks.create("flaky", Note, receiver.url())
        for i in range(3):
            Note.create(text=str(i))  # one attempt; the other two wait behind its retry
        assert len(receiver.hits) == 1
        clock.advance(timedelta(seconds=5))
        assert s.webhooks.deliver_due() == 1  # the retry fails: the others wait again
        assert reload(hook).enabled  # two failures in a row, within a minute
        clock.advance(timedelta(minutes=5))
        with listening(signals.webhook_disabled) as disabled:
            assert s.webhooks.deliver_due() == 1  # disabling gives up the other two
        hook = reload(hook)
        assert hook.enabled is False
        assert "failed attempts in a row" in hook.disabled_reason
        assert "HTTP 500" in hook.disabled_reason
        assert [c["hook"].id for c in disabled] == [hook.id]
        assert {d.status for d in s.webhooks.deliveries()} == {"dead"}
        hits = len(receiver.hits)
        clock.advance(timedelta(hours=1))
        Note.create(text="after")
        assert s.webhooks.deliver_due() == 0
        assert len(receiver.hits) == hits
    finally:
        s.close()


def test_an_enable_after_the_failure_that_disables_a_hook_is_not_undone(
    db_path: Path, receiver: Receiver, clock: Clock
) -> None:
    """The failure was counted in one transaction and the hook disabled in the next: an
    admin's enable() committed in between (on PostgreSQL) was overwritten by a disable
    judged on the streak it had just reset. The disable's save (its pre_save) was that
    moment; now the disable commits with the count, without a save, and the admin's
    enable() comes after it."""
    s = open_store(db_path, clock, disable_after_failures=1, disable_after=timedelta(0))
    enablers: list[threading.Thread] = []

    def enable_meanwhile(sender: Any, instance: OutboundWebhook, **kwargs: Any) -> None:
        if instance.enabled or enablers:
            return
        enabler = threading.Thread(target=lambda: (s.webhooks.enable(hook.name), s.db.close()))
        enablers.append(enabler)
        enabler.start()
        enabler.join(0.5)  # done by now, unless it waits for the disable to commit

    try:
        receiver.respond = lambda h: answer(h, 500)
        hook = s.webhooks.create("flaky", Note, receiver.url())
        signals.pre_save.connect(enable_meanwhile, sender=OutboundWebhook, weak=False)
        try:
            Note.create(text="fails, and the hook is disabled")
        finally:
            signals.pre_save.disconnect(enable_meanwhile, sender=OutboundWebhook)
        for enabler in enablers:
            enabler.join(30)
            assert not enabler.is_alive()
        if not enablers:  # no moment between the count and the disable: enabled after both
            s.webhooks.enable(hook.name)
        hook = reload(hook)
        assert (hook.enabled, hook.disabled_reason, hook.failure_count) == (True, "", 0)
        assert only_delivery(s).status == "dead"  # given up by the disable; redeliver sends it
    finally:
        s.close()


def test_failures_in_flight_together_disable_a_hook_once(
    db_path: Path, receiver: Receiver, clock: Clock
) -> None:
    """Each failure recorded after the one that disabled the hook disabled it again: one
    webhook_disabled per attempt that was under way, each overwriting the reason."""
    s = open_store(db_path, clock, disable_after_failures=1, disable_after=timedelta(0))
    try:
        receiver.respond = lambda h: (time.sleep(0.2), answer(h, 500))
        hook = s.webhooks.create("flaky", Note, receiver.url())
        start = threading.Barrier(3)

        def save(n: int) -> None:
            start.wait()
            Note.create(text=str(n))
            s.db.close()

        savers = [threading.Thread(target=save, args=(n,)) for n in range(3)]
        with listening(signals.webhook_disabled) as disabled:
            for saver in savers:
                saver.start()
            for saver in savers:
                saver.join(30)
        assert len(receiver.hits) == 3  # all three were on the wire at once
        hook = reload(hook)
        assert hook.enabled is False
        assert [c["reason"] for c in disabled] == [hook.disabled_reason]
    finally:
        s.close()


def test_a_failure_streak_begun_by_a_clock_since_set_back_is_counted_from_now(
    db_path: Path, receiver: Receiver, clock: Clock
) -> None:
    """Before, ``now - failing_since`` stayed negative, and the hook was never disabled
    until the clock had caught up with the time the streak began."""
    s = open_store(db_path, clock, disable_after_failures=3, disable_after=timedelta(hours=1))
    try:
        receiver.respond = lambda h: answer(h, 500)
        hook = s.webhooks.create("flaky", Note, receiver.url())
        clock.advance(timedelta(days=365))  # the clock runs a year ahead...
        Note.create(text="ahead")
        clock.advance(timedelta(days=-365))  # ...until NTP puts it right
        for n in range(3):
            clock.advance(timedelta(hours=1))
            Note.create(text=str(n))
            s.webhooks.deliver_due()
        hook = reload(hook)
        assert hook.failing_since is not None
        assert hook.failing_since <= to_stored_time(clock.now)
        assert hook.enabled is False
        assert "failed attempts in a row" in hook.disabled_reason
    finally:
        s.close()


def test_a_success_corrects_a_last_success_after_now(
    store: Store, receiver: Receiver, clock: Clock
) -> None:
    hook = store.webhooks.create("fine", Note, receiver.url())
    clock.advance(timedelta(days=365))
    Note.create(text="ahead")
    clock.advance(timedelta(days=-365))
    Note.create(text="now")
    assert reload(hook).last_success == to_stored_time(clock.now)


def test_two_threads_running_deliver_due_never_send_one_delivery_twice(
    store: Store, receiver: Receiver, clock: Clock
) -> None:
    receiver.respond = lambda h: answer(h, 500)
    store.webhooks.create("flaky", Note, receiver.url())
    with store.atomic():
        for i in range(20):
            Note.create(text=str(i))
    receiver.hits.clear()
    receiver.respond = ok
    clock.advance(timedelta(seconds=5))
    counts = _db.at_once(store, 2, lambda n: store.webhooks.deliver_due())
    assert sum(counts) == 20
    ids = [hit.headers["webhook-id"] for hit in receiver.hits]
    assert len(ids) == len(set(ids)) == 20


def test_senders_moving_a_failing_hook_s_backlog_at_once_do_not_deadlock(
    db_path: Path, receiver: Receiver, clock: Clock
) -> None:
    """Each locked the backlog's rows in its own order: PostgreSQL found a deadlock and
    failed one sender with StoreLocked (``dispatch --watch`` exited on it)."""
    s = open_store(db_path, clock, sync_budget=0)
    try:
        receiver.respond = lambda h: answer(h, 503)
        for name in ("a", "b"):
            s.webhooks.create(name, Note, receiver.url(f"/{name}"))
        with s.atomic():
            for n in range(2000):
                Note.create(text=str(n))
        errors: list[BaseException] = []
        for _ in range(6):
            clock.advance(timedelta(hours=11))
            sent = _db.at_once(s, 4, lambda n: s.webhooks.deliver_due())
            errors += [outcome for outcome in sent if isinstance(outcome, BaseException)]
        assert errors == []
        assert len(s.webhooks.deliveries(limit=10_000)) == 4000
    finally:
        s.close()


def test_sends_queued_behind_a_slow_one_are_taken_before_they_go(
    store: Store, receiver: Receiver, clock: Clock
) -> None:
    """After one commit the writer sends its deliveries one by one. If the first
    outlasts the hold on the others, a retry runner elsewhere may take them; the
    writer must then leave them alone rather than send them a second time."""
    # Hooks go in the order they were created, but two made in the same millisecond go in
    # the order of their ABIDs (then the hash of their URLs, whose port changes from run
    # to run): the test slows whichever the writer sends first, and expects the runner to
    # take the other. Waiting on the first hook by name failed when it went second.
    hooks = {store.webhooks.create(name, Note, receiver.url(f"/{name}")).id for name in "ab"}
    sent_first: list[str] = []
    others: list[int] = []

    def meanwhile(sender: Any, **kwargs: Any) -> None:
        if kwargs["hook"].id not in hooks or sent_first:  # the first of ours only
            return
        sent_first.append(kwargs["hook"].name)
        clock.advance(timedelta(minutes=5))  # the first send took longer than the hold

        def retry_runner() -> None:
            try:
                others.append(store.webhooks.deliver_due())
            finally:
                store.webhooks.close()
                store.db.close()

        runner = threading.Thread(target=retry_runner)
        runner.start()
        runner.join(10)

    signals.webhook_delivered.connect(meanwhile, weak=False)
    try:
        Note.create(text="x")
    finally:
        signals.webhook_delivered.disconnect(meanwhile)
    assert len(sent_first) == 1 and others == [1]
    assert sorted(hit.path for hit in receiver.hits) == ["/a", "/b"]
    assert {d.status for d in store.webhooks.deliveries()} == {"delivered"}
    assert {d.attempts for d in store.webhooks.deliveries()} == {1}


def test_ping_and_redeliver(store: Store, receiver: Receiver) -> None:
    hook = store.webhooks.create("notes", Note, receiver.url())
    ping = store.webhooks.ping(hook)
    assert ping.status == "delivered"
    body = Webhook(hook.secret).verify(receiver.hits[0].body, receiver.hits[0].header_dict())
    assert body["type"] == "webhook.ping"
    assert body["data"]["hook"] == hook.abid

    Note.create(text="x")
    (delivery,) = [d for d in store.webhooks.deliveries() if d.event_type == "note.created"]
    again = store.webhooks.redeliver(delivery.abid)
    assert again.attempts == 2
    first, second = receiver.hits[1:]
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivery.abid
    assert first.body == second.body
    Webhook(hook.secret).verify(second.body, second.header_dict())


def test_redeliver_sends_the_body_stored_whatever_the_object_given_holds(
    store: Store, receiver: Receiver
) -> None:
    """The same webhook-id must carry the same body: a copy edited in memory (never saved,
    as a delivery's body never changes) had its edited body signed and sent under it."""
    hook = store.webhooks.create("notes", Note, receiver.url())
    delivery = store.webhooks.ping(hook)
    delivery.payload = json.dumps({"type": "note.deleted", "data": {}})
    again = store.webhooks.redeliver(delivery)
    first, second = receiver.hits
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivery.abid
    assert second.body == first.body
    assert again.attempts == 2 and json.loads(again.payload)["type"] == "webhook.ping"


def test_redeliver_and_ping_refuse_a_disabled_hook_and_leave_its_log_alone(
    store: Store, receiver: Receiver
) -> None:
    """A delivered message stays delivered: it is not rewritten as dead, nor a ping logged."""
    hook = store.webhooks.create("notes", Note, receiver.url())
    Note.create(text="x")
    delivered = only_delivery(store)
    store.webhooks.disable(hook, "maintenance")
    with pytest.raises(ValidationError, match="'notes' is disabled \\(maintenance\\)"):
        store.webhooks.redeliver(delivered.abid)
    with pytest.raises(ValidationError, match="'notes' is disabled"):
        store.webhooks.ping(hook)
    kept = only_delivery(store)
    assert (kept.status, kept.attempts, kept.last_error) == ("delivered", 1, "")
    assert len(receiver.hits) == 1

    store.webhooks.enable(hook)
    assert store.webhooks.redeliver(delivered.abid).status == "delivered"
    assert receiver.hits[-1].headers["webhook-id"] == delivered.abid


def test_a_hook_turned_off_by_update_has_its_due_deliveries_marked_dead_by_the_retry_path(
    store: Store, receiver: Receiver, clock: Clock
) -> None:
    """update(enabled=False) sets the flag only; nothing more is sent (docs/delivery.md).

    Nor is what is given up unsent counted as attempted: `webhooks deliver-due` said
    "deliveries_attempted 2" for these two."""
    receiver.respond = lambda h: answer(h, 500)
    hook = store.webhooks.create("off", Note, receiver.url())
    Note.create(text="one")
    Note.create(text="two")  # behind the first's retry
    store.webhooks.update(hook, enabled=False)
    assert {d.status for d in store.webhooks.deliveries()} == {"failed", "pending"}
    clock.advance(RETRY_SCHEDULE[1])
    assert store.webhooks.deliver_due() == 0
    assert len(receiver.hits) == 1
    dead = store.webhooks.deliveries()
    assert {(d.status, d.last_error) for d in dead} == {("dead", "hook disabled: by hand")}


def test_a_rotated_secret_signs_alongside_the_old_one_for_the_grace_period(
    store: Store, receiver: Receiver, clock: Clock
) -> None:
    hook = store.webhooks.create("notes", Note, receiver.url())
    old = hook.secret
    hook = store.webhooks.rotate_secret(hook, grace=timedelta(seconds=30))
    assert hook.secret != old
    Note.create(text="during")
    clock.advance(timedelta(seconds=31))
    Note.create(text="after")
    during, after = receiver.hits
    assert len(during.headers["webhook-signature"].split()) == 2
    Webhook(old).verify(during.body, during.header_dict())
    Webhook(hook.secret).verify(during.body, during.header_dict())
    assert len(after.headers["webhook-signature"].split()) == 1
    Webhook(hook.secret).verify(after.body, after.header_dict())
    with pytest.raises(Exception, match="signature"):
        Webhook(old).verify(after.body, after.header_dict())


def failed_once(store: Store, receiver: Receiver) -> None:
    """A hook whose one delivery failed (503) and waits for its retry; the receiver is back."""
    receiver.respond = lambda h: answer(h, 503)
    store.webhooks.create("flaky", Note, receiver.url())
    Note.create(text="x")
    receiver.respond = ok


def test_the_retry_thread_sends_what_is_due(store: Store, receiver: Receiver, clock: Clock) -> None:
    failed_once(store, receiver)
    clock.advance(timedelta(seconds=5))
    with listening(signals.webhook_delivered) as delivered:
        thread = store.webhooks.start_retry_thread(interval=0.02)
        try:
            deadline = time.monotonic() + 5
            while not delivered and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            thread.stop(5)
    assert not thread.is_alive()
    assert only_delivery(store).status == "delivered"
    assert len(receiver.hits) == 2


def test_closing_the_store_stops_its_retry_threads(db_path: Path, clock: Clock) -> None:
    """Left running, each open and close cost a thread and a connection (PostgreSQL ran out)."""
    for _ in range(3):
        store = open_store(db_path, clock)
        threads = [store.webhooks.start_retry_thread(interval=0.01) for _ in range(2)]
        time.sleep(0.05)  # a few rounds, each on the thread's own connection
        store.close()
        assert not any(thread.is_alive() for thread in threads)
    assert "tokenstore-webhook-retries" not in {t.name for t in threading.enumerate()}


def test_a_read_only_store_refuses_to_start_a_retry_thread(db_path: Path) -> None:
    """A retry records each attempt, which such a store cannot: say so once, at the start.

    Started anyway, the thread would log the same error at every interval, for ever."""
    tokenstore.open(db_path).close()
    with (
        tokenstore.open(db_path, read_only=True) as reader,
        pytest.raises(StoreReadOnly, match="read-only"),
    ):
        reader.webhooks.start_retry_thread(interval=0.01)
    assert "tokenstore-webhook-retries" not in {t.name for t in threading.enumerate()}


def test_a_retry_thread_may_be_stopped_from_its_own_round(
    store: Store, receiver: Receiver, clock: Clock
) -> None:
    """A receiver of ``webhook_delivered`` runs in the thread: stopping it there must not fail."""
    failed_once(store, receiver)
    clock.advance(timedelta(seconds=5))
    errors: list[BaseException] = []

    def stop_here(sender: Any, **kwargs: Any) -> None:
        try:
            thread.stop(1)
        except BaseException as exc:
            errors.append(exc)

    signals.webhook_delivered.connect(stop_here, weak=False)
    try:
        thread = store.webhooks.start_retry_thread(interval=0.01)
        thread.join(5)
    finally:
        signals.webhook_delivered.disconnect(stop_here)
    assert not thread.is_alive()
    assert errors == []
    assert only_delivery(store).status == "delivered"


@pytest.mark.parametrize("sync_budget", [5.0, 0.0])
def test_a_clock_set_back_a_year_does_not_strand_what_it_scheduled(
    db_path: Path, receiver: Receiver, clock: Clock, sync_budget: float
) -> None:
    """A retry (or a hold) scheduled by a clock a year ahead is due once the clock is put right.

    Before, it waited for the clock to catch up: a year without a delivery.
    """
    store = open_store(db_path, clock, sync_budget=sync_budget)
    try:
        receiver.respond = lambda h: answer(h, 503)
        hook = store.webhooks.create("flaky", Note, receiver.url())
        Note.create(text="first")  # failed (retry in 5 s), or held and handed over unsent
        Note.create(text="second")  # behind the first's retry, or handed over unsent
        receiver.respond = ok
        clock.advance(timedelta(days=-365))  # an NTP step puts the clock right
        store.webhooks.deliver_due()
        assert [d.status for d in store.webhooks.deliveries(hook)] == ["delivered"] * 2
        assert sorted(
            json.loads(hit.body)["data"]["fields"]["text"] for hit in receiver.hits[-2:]
        ) == [
            "first",
            "second",
        ]
        clock.advance(timedelta(hours=11))  # nothing is sent twice
        assert store.webhooks.deliver_due() == 0
    finally:
        store.close()


def test_a_clock_set_back_less_than_any_retry_keeps_the_schedule(
    store: Store, receiver: Receiver, clock: Clock
) -> None:
    """Only what no clock could have scheduled is due at once: a retry 5 s ahead still waits."""
    failed_once(store, receiver)
    clock.advance(timedelta(hours=-1))
    assert store.webhooks.deliver_due() == 0
    # A time given is the caller's: by the schedule, a year back, nothing is due.
    assert store.webhooks.deliver_due(now=clock.now - timedelta(days=365)) == 0
    assert store.webhooks.deliver_due(now=datetime(1970, 1, 1, tzinfo=UTC)) == 0
    clock.advance(timedelta(hours=1, seconds=5))
    assert store.webhooks.deliver_due() == 1
    assert only_delivery(store).status == "delivered"


def test_a_row_edited_into_nonsense_does_not_block_later_writes(
    store: Store, receiver: Receiver
) -> None:
    """Webhook work runs inside every commit; one bad captured row must not fail them all."""
    store.webhooks.create("notes", Note, receiver.url())
    note = Note.create(text="fine")
    with _db.Raw(store) as conn:  # someone in the sqlite3 shell
        conn.execute(
            "UPDATE note SET created_at = 'yesterday-ish', text = 'edited' WHERE id = ?",
            (note.id.hex,),
        )
    conn.close()
    Note.create(text="next")
    types = [json.loads(hit.body)["type"] for hit in receiver.hits]
    assert types == ["note.created", "note.updated", "note.created"]
    edited = json.loads(receiver.hits[1].body)["data"]["fields"]
    assert (edited["text"], edited["created_at"]) == ("edited", "yesterday-ish")


# -- crash after commit -------------------------------------------------------------


def run_crash_sender(db_path: Path, receiver: Receiver) -> None:
    """A writer that commits a Note and SIGKILLs itself before its delivery is sent."""
    child = subprocess.run(
        [sys.executable, str(HERE / "_crash_sender.py"), str(db_path), receiver.url()],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr


def test_a_process_killed_after_commit_has_its_delivery_sent_by_deliver_due(
    db_path: Path, receiver: Receiver
) -> None:
    run_crash_sender(db_path, receiver)
    assert receiver.hits == []

    s = tokenstore.open(
        db_path,
        webhook_allow=LOOPBACK,
        connect_timeout=TIMEOUT,
        read_timeout=TIMEOUT,
        delivery_deadline=DEADLINE,
    )
    try:
        pending = only_delivery(s)
        assert (pending.status, pending.attempts) == ("pending", 0)
        assert s.webhooks.deliver_due() == 0  # still held by the dead writer's lease
        lease = timedelta(seconds=DEADLINE + 5)
        later = datetime.now(UTC) + lease + timedelta(seconds=1)
        assert s.webhooks.deliver_due(now=later) == 1
        assert s.webhooks.deliver_due(now=later + timedelta(days=1)) == 0
        s.dispatch()
        (hit,) = receiver.hits
        assert hit.headers["webhook-id"] == pending.abid
        assert json.loads(hit.body)["data"]["fields"]["text"] == "written before the crash"
        assert only_delivery(s).status == "delivered"
    finally:
        s.close()


# -- the address guard --------------------------------------------------------------


@pytest.fixture
def guarded(db_path: Path, clock: Clock) -> Iterator[Store]:
    """A store with the default guard: no allowlist."""
    s = open_store(db_path, clock, webhook_allow=())
    try:
        yield s
    finally:
        s.close()


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.1.2.3",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "169.254.169.254",
        "10.0.0.7",
        "192.168.1.1",
        "0.0.0.0",
        "2130706433",
    ],
)
def test_a_literal_blocked_address_is_refused_at_creation(guarded: Store, host: str) -> None:
    with pytest.raises(BlockedAddress, match="not allowed"):
        guarded.webhooks.create("internal", Note, f"http://{host}:8080/hook")
    assert guarded.webhooks.list() == []


def test_a_hostname_resolving_to_loopback_is_blocked_when_sending(
    guarded: Store, receiver: Receiver
) -> None:
    hook = guarded.webhooks.create("sneaky", Note, f"http://localhost:{receiver.port}/hook")
    Note.create(text="x")
    delivery = only_delivery(guarded)
    assert delivery.status == "failed"
    assert "blocked" in delivery.last_error
    assert "loopback" in delivery.last_error
    assert receiver.hits == []
    assert reload(hook).last_failure is not None


def _point_at(store: Store, hook: OutboundWebhook, endpoint: str) -> None:
    """Change an endpoint behind validation's back, as the sqlite3 shell could."""
    with _db.Raw(store) as conn:
        conn.execute(
            "UPDATE tokenstore_outbound_webhook SET endpoint = ? WHERE id = ?",
            (endpoint, hook.id.hex),
        )
    conn.close()


def test_an_ipv4_mapped_ipv6_address_is_judged_by_the_address_it_wraps(
    guarded: Store, receiver: Receiver
) -> None:
    hook = guarded.webhooks.create("mapped", Note, "https://hooks.example.com/in")
    _point_at(guarded, hook, f"http://[::ffff:127.0.0.1]:{receiver.port}/hook")
    Note.create(text="x")
    delivery = only_delivery(guarded)
    assert delivery.status == "failed"
    assert "embeds the IPv4 address 127.0.0.1" in delivery.last_error
    assert receiver.hits == []


def test_an_allowlist_lets_loopback_through_also_when_mapped(
    db_path: Path, clock: Clock, receiver: Receiver
) -> None:
    s = open_store(db_path, clock, webhook_allow=["127.0.0.1/32"])
    try:
        hook = s.webhooks.create("local", Note, receiver.url())
        Note.create(text="direct")
        _point_at(s, hook, f"http://[::ffff:127.0.0.1]:{receiver.port}/hook")
        Note.create(text="mapped")
        assert [d.status for d in s.webhooks.deliveries()] == ["delivered", "delivered"]
        assert len(receiver.hits) == 2
        with pytest.raises(BlockedAddress):
            s.webhooks.create("other", Note, "http://127.0.0.2/")
    finally:
        s.close()


def test_a_shell_edit_made_while_the_store_was_closed_is_sent(
    db_path: Path, clock: Clock, receiver: Receiver
) -> None:
    s = open_store(db_path, clock)
    s.webhooks.create("notes", Note, receiver.url())
    note = Note.create(text="before")
    s.close()
    with _db.Raw(db_path) as conn:
        conn.execute("UPDATE note SET text = 'from the shell' WHERE id = ?", (note.id.hex,))
    conn.close()
    s = open_store(db_path, clock)
    try:
        s.dispatch()
        clock.advance(timedelta(minutes=1))
        s.webhooks.deliver_due()
        assert [json.loads(hit.body)["type"] for hit in receiver.hits] == [
            "note.created",
            "note.updated",
        ]
    finally:
        s.close()


def test_default_and_configured_timeouts(db_path: Path) -> None:
    s = tokenstore.open(db_path)
    try:
        assert (s.options.connect_timeout, s.options.read_timeout) == (3.0, 10.0)
    finally:
        s.close()
    s = tokenstore.open(db_path, connect_timeout=1.5, read_timeout=4)
    try:
        assert (s.options.connect_timeout, s.options.read_timeout) == (1.5, 4)
    finally:
        s.close()


def test_signals_carry_the_hook_class_as_sender(store: Store, receiver: Receiver) -> None:
    receiver.respond = lambda h: answer(h, 500)
    store.webhooks.create("notes", Note, receiver.url())
    with listening(signals.webhook_failed) as failed:
        Note.create(text="x")
    assert [c["sender"] for c in failed] == [OutboundWebhook]
    assert isinstance(failed[0]["hook"], OutboundWebhook)
    assert isinstance(failed[0]["delivery"], WebhookDelivery)


def test_a_process_killed_after_commit_has_its_delivery_sent_by_the_next_dispatch(
    db_path: Path, receiver: Receiver
) -> None:
    run_crash_sender(db_path, receiver)
    lease = timedelta(seconds=DEADLINE + 5)
    clock = Clock(datetime.now(UTC).replace(microsecond=0) + lease + timedelta(seconds=1))
    s = tokenstore.open(
        db_path,
        webhook_allow=LOOPBACK,
        connect_timeout=TIMEOUT,
        read_timeout=TIMEOUT,
        delivery_deadline=DEADLINE,
        clock=clock,
    )
    try:
        assert receiver.hits == []  # opening fires events but sends nothing
        s.dispatch()
        (hit,) = receiver.hits
        assert hit.headers["webhook-id"] == only_delivery(s).abid
        assert only_delivery(s).status == "delivered"
    finally:
        s.close()


def test_opening_fires_what_was_written_elsewhere_but_sends_nothing(
    db_path: Path, receiver: Receiver
) -> None:
    """The deliveries the events fired at open make wait for the retry path, due at once."""
    s = tokenstore.open(db_path, webhook_allow=LOOPBACK)
    s.users.create("alice")
    s.webhooks.create("users", "tokenstore.User", receiver.url())
    s.close()
    with _db.Raw(db_path) as raw:  # an edit no tokenstore process saw
        raw.execute("UPDATE tokenstore_user SET is_superuser = TRUE WHERE username = 'alice'")
    s = tokenstore.open(db_path)
    try:
        assert receiver.hits == []
        delivery = only_delivery(s)
        assert (delivery.event_type, delivery.status) == ("user.updated", "pending")
        assert s.webhooks.deliver_due() == 1  # not held by the opening process
        (hit,) = receiver.hits
        assert hit.headers["webhook-id"] == delivery.abid
        with _db.Raw(db_path) as raw:
            raw.execute("UPDATE tokenstore_user SET is_superuser = FALSE WHERE username = 'alice'")
        assert s.dispatch(deliver=False).events == 1  # fires, and sends nothing either
        assert len(receiver.hits) == 1
        assert s.dispatch().delivered == 1
        assert len(receiver.hits) == 2
    finally:
        s.close()


def test_two_senders_with_copies_of_one_delivery_count_both_sends(
    store: Store, receiver: Receiver
) -> None:
    """The log's attempts equal the sends: counted in SQL, not from a copy read earlier."""
    store.webhooks.create("h", Note, receiver.url())
    Note.create(text="x")
    first = only_delivery(store)
    second = store.webhooks.delivery(first.abid)  # another sender's copy, read at the same time
    store.webhooks.redeliver(first)
    store.webhooks.redeliver(second)
    assert len(receiver.hits) == 3
    assert only_delivery(store).attempts == 3


def test_deliveries_due_at_one_time_go_out_in_event_order_on_both_backends(
    db_path: Path, receiver: Receiver, clock: Clock
) -> None:
    """Ties in ``next_attempt_at`` and ``created_at`` (one commit's deliveries) go by event,
    then by ABID. SQLite returned them in insertion order; PostgreSQL in the order it found
    the rows, which updating some of them changed, and the retries and their signals with it."""
    s = open_store(db_path, clock, sync_budget=0)
    try:
        for name in ("a", "b", "c"):
            s.webhooks.create(name, Note, receiver.url(f"/{name}"))
        with s.atomic():
            for n in range(6):
                Note.create(text=str(n))
        made = s.webhooks.deliveries()
        WebhookDelivery.update(last_error="moved").where(
            WebhookDelivery.id.in_([d.id for d in made[::2]])
        ).execute()
        with listening(signals.webhook_delivered) as delivered:
            assert s.webhooks.deliver_due() == 18
        sent = [c["delivery"] for c in delivered]
        assert [(d.event_id, d.abid) for d in sent] == sorted((d.event_id, d.abid) for d in made)
        assert [json.loads(d.payload)["data"]["fields"]["text"] for d in sent[::3]] == [
            str(n) for n in range(6)
        ]
    finally:
        s.close()


class _Gated(peewee.TextField):
    """Text whose reading pauses once, at a word, until told to go on: a slow field of the
    application's, which the payload of its change reads inside the commit."""

    reached = threading.Event()
    proceed = threading.Event()

    def python_value(self, value: Any) -> Any:
        if value == "pause" and not self.reached.is_set():
            self.reached.set()
            self.proceed.wait(30)
        return value


class GatedNote(ABIDModel):
    abid_prefix = "gat_"
    text = _Gated(default="")


def test_a_hook_deleted_while_a_save_makes_its_delivery_does_not_fail_the_save(
    db_path: Path, clock: Clock, receiver: Receiver
) -> None:
    """On PostgreSQL the delete committed between the commit's read of the hooks and its
    insert of the delivery, whose foreign key then failed the application's save with
    peewee's IntegrityError. The hooks read are now kept from deletion until it commits."""
    with open_store(db_path, clock) as store:
        store.register(GatedNote)
        hook = store.webhooks.create("gated", GatedNote, receiver.url())
        _Gated.reached.clear()
        _Gated.proceed.clear()
        saved: list[BaseException | None] = []
        deleted: list[BaseException | None] = []

        def save() -> None:
            try:
                GatedNote.create(text="pause")
                saved.append(None)
            except BaseException as exc:
                saved.append(exc)
            finally:
                store.db.close()

        def delete() -> None:
            try:
                store.webhooks.delete(hook.name)
                deleted.append(None)
            except BaseException as exc:
                deleted.append(exc)
            finally:
                store.db.close()

        saver = threading.Thread(target=save, daemon=True)
        saver.start()
        assert _Gated.reached.wait(30)  # inside the commit, the hooks read
        deleter = threading.Thread(target=delete, daemon=True)
        deleter.start()
        deleter.join(0.5)  # on PostgreSQL it has committed by now, unless it waits
        _Gated.proceed.set()
        saver.join(30)
        deleter.join(30)
        assert not saver.is_alive() and not deleter.is_alive()
        assert saved == [None] and deleted == [None]
        assert [n.text for n in GatedNote.select()] == ["pause"]
        assert OutboundWebhook.select().count() == 0
        assert WebhookDelivery.select().count() == 0  # deleted with its hook


def test_a_ping_to_a_hook_deleted_meanwhile_says_it_is_gone(
    store: Store, receiver: Receiver
) -> None:
    """The ping read the hook, then waited to write its delivery while another thread's
    transaction deleted the hook: the delivery's foreign key failed with peewee's error."""
    hook = store.webhooks.create("notes", Note, receiver.url())

    def delete(hold: Callable[[], None]) -> None:
        with store.atomic():
            store.webhooks.delete(hook.name)
            hold()  # the ping reads the hook (committed, still there) and waits to write

    pinged = _db.while_held(store, delete, lambda: store.webhooks.ping(hook.name))["second"]
    assert isinstance(pinged, tokenstore.NotFound), pinged
    assert "notes" in str(pinged)
    assert receiver.hits == [] and WebhookDelivery.select().count() == 0


def test_an_outcome_recorded_while_a_hook_is_being_disabled_does_not_deadlock(
    store: Store,
) -> None:
    """Every writer takes a hook's row before its deliveries' rows. On PostgreSQL a
    successful attempt's outcome (the delivery's row, then its hook's in one statement)
    took them the other way round, and met disable() in a deadlock."""
    answers = iter([500])
    hooked = Receiver(lambda handler: answer(handler, next(answers, 200)))
    try:
        hook = store.webhooks.create("notes", Note, hooked.url())
        Note.create(text="first attempt fails")
        (delivery,) = store.webhooks.deliveries(hook)
        assert delivery.status == "failed"

        def disable(hold: Callable[[], None]) -> None:
            with store.atomic():
                store.webhooks.rotate_secret(hook.name)  # holds the hook's row
                hold()  # the redelivery is sent, and waits for the hook's row to record it
                store.webhooks.disable(hook.name)  # and now its deliveries' rows

        outcomes = _db.while_held(store, disable, lambda: store.webhooks.redeliver(delivery.abid))
        assert outcomes["first"] is None, outcomes
        assert isinstance(outcomes["second"], WebhookDelivery), outcomes
        assert len(hooked.hits) == 2
        assert store.webhooks.get(hook.name).enabled is False
    finally:
        hooked.close()


def test_calls_that_send_are_refused_inside_a_transaction(store: Store) -> None:
    """A send waits for the receiver; inside a transaction its locks were held all the
    while (on SQLite the file's write lock, which another thread's write waited for)."""
    slow = Receiver(lambda handler: (time.sleep(1.0), ok(handler)))
    try:
        hook = store.webhooks.create("notes", Note, slow.url())
        Note.create(text="sent once, slowly")
        (delivery,) = store.webhooks.deliveries(hook)
        waited: list[float] = []

        def write_meanwhile() -> None:
            started = time.monotonic()
            try:
                store.users.create(f"meanwhile{len(waited)}")
            finally:
                waited.append(time.monotonic() - started)
                store.db.close()

        calls = {
            "webhooks.ping()": lambda: store.webhooks.ping(hook),
            "webhooks.redeliver()": lambda: store.webhooks.redeliver(delivery.abid),
            "webhooks.deliver_due()": store.webhooks.deliver_due,
            "store.dispatch()": store.dispatch,
        }
        for name, call in calls.items():
            writer = threading.Thread(target=write_meanwhile, daemon=True)
            refused = pytest.raises(tokenstore.StoreError, match=rf"{re.escape(name)} sends")
            with refused, store.atomic():
                writer.start()
                call()
            writer.join(30)
            assert not writer.is_alive()
        assert max(waited) < 0.5, waited  # nothing waited for a receiver
        assert len(slow.hits) == 1  # the change's own delivery, before the calls
        assert [d.attempts for d in store.webhooks.deliveries(hook)] == [1]
    finally:
        slow.close()


def _edit(store: Store, edit: str, name: str, elsewhere: str) -> None:
    """Change hook ``name`` as an admin would, in one of the ways ``edit`` names."""
    if edit == "deleted":
        store.webhooks.delete(name)
    elif edit == "disabled":
        store.webhooks.update(name, enabled=False)
    elif edit.startswith("given up"):
        store.webhooks.disable(name)
        if edit.endswith("enabled"):
            store.webhooks.enable(name)
    elif edit == "moved":
        store.webhooks.update(name, endpoint=elsewhere)
    else:
        store.webhooks.rotate_secret(name, grace=timedelta(0))


_EDITS = ["deleted", "disabled", "given up", "given up, then enabled", "moved", "rotated"]


@pytest.mark.parametrize("edit", _EDITS)
def test_a_hook_edited_while_a_commits_first_delivery_is_sent_governs_the_rest(
    store: Store, edit: str
) -> None:
    """The writing thread sent all of a commit's deliveries as the commit had read their
    hook: an admin's delete, disable or edit committed while the first was on the wire
    did not reach the others, which went to the old endpoint, signed with the erased
    secret, for a hook deleted or given up before they were sent."""
    sending, edited = threading.Event(), threading.Event()

    def first_waits(handler: BaseHTTPRequestHandler) -> None:
        sending.set()
        edited.wait(5)  # under the read timeout (10 s); set as soon as the edit is done
        ok(handler)

    slow, elsewhere = Receiver(first_waits), Receiver()
    try:
        hook = store.webhooks.create("notes", Note, slow.url())
        failures: list[BaseException] = []

        def meddle() -> None:
            try:
                assert sending.wait(10)
                _edit(store, edit, hook.name, elsewhere.url())
            except BaseException as exc:
                failures.append(exc)
            finally:
                edited.set()
                store.db.close()

        meddler = threading.Thread(target=meddle, daemon=True)
        meddler.start()
        with store.atomic():
            for text in ("first", "second", "third"):
                Note.create(text=text)
        meddler.join(10)
        assert not meddler.is_alive() and failures == []
        store.webhooks.deliver_due()  # the retry path finds nothing more to send either
        statuses = sorted(d.status for d in WebhookDelivery.select())
        if edit == "moved":
            assert (len(slow.hits), len(elsewhere.hits)) == (1, 2)
            assert statuses == ["delivered"] * 3
        elif edit == "rotated":
            assert (len(slow.hits), len(elsewhere.hits)) == (3, 0)
            secret = reload(hook).secret
            for hit in slow.hits[1:]:  # signed with the secret they were sent under
                verify_webhook(secret, hit.header_dict(), hit.body)
            assert statuses == ["delivered"] * 3
        else:  # the first was on the wire when the hook changed; the rest not sent
            assert (len(slow.hits), len(elsewhere.hits)) == (1, 0)
            assert statuses == ([] if edit == "deleted" else ["dead", "dead", "delivered"])
    finally:
        slow.close()
        elsewhere.close()


def test_a_hook_deleted_while_a_slow_signal_receiver_runs_is_not_sent_to(
    store: Store, receiver: Receiver
) -> None:
    """Receivers run after the commit and before its deliveries are sent; one that took
    its time left the commit's read of the hook stale, and a hook deleted meanwhile by
    another thread was still sent the change."""
    hook = store.webhooks.create("notes", Note, receiver.url())

    def slow_receiver(sender: Any, **kwargs: Any) -> None:
        deleter = threading.Thread(
            target=lambda: (store.webhooks.delete(hook.name), store.db.close())
        )
        deleter.start()
        deleter.join(10)
        time.sleep(0.2)  # past the time the commit's read of the hook serves

    signals.post_save.connect(slow_receiver, sender=Note, weak=False)
    try:
        Note.create(text="heard, not sent")
    finally:
        signals.post_save.disconnect(slow_receiver, sender=Note)
    assert receiver.hits == []
    assert OutboundWebhook.select().count() == 0 and WebhookDelivery.select().count() == 0


def test_a_delivery_given_up_while_its_attempt_fails_stays_given_up(
    store: Store, clock: Clock
) -> None:
    """disable() gives up a hook's pending deliveries, and they stay dead after enable().
    The one on the wire at the time was recorded "failed" when its receiver answered
    500, and was sent again once the hook was enabled."""
    sending, disabled = threading.Event(), threading.Event()

    def fail_after_disable(handler: BaseHTTPRequestHandler) -> None:
        sending.set()
        disabled.wait(5)  # under the read timeout (10 s); set as soon as disable() ends
        answer(handler, 500)

    failing = Receiver(fail_after_disable)
    try:
        hook = store.webhooks.create("notes", Note, failing.url())

        def disable() -> None:
            try:
                assert sending.wait(10)
                store.webhooks.disable(hook.name)
            finally:
                disabled.set()
                store.db.close()

        admin = threading.Thread(target=disable, daemon=True)
        admin.start()
        Note.create(text="on the wire when the hook was disabled")
        admin.join(10)
        assert not admin.is_alive()
        delivery = only_delivery(store)
        assert (delivery.status, delivery.attempts, delivery.next_attempt_at) == ("dead", 1, None)
        store.webhooks.enable(hook.name)
        clock.advance(timedelta(hours=1))
        assert store.webhooks.deliver_due() == 0
        assert len(failing.hits) == 1
        store.webhooks.redeliver(delivery.abid)  # as documented, redeliver sends it again
        assert len(failing.hits) == 2 and only_delivery(store).status == "failed"
    finally:
        failing.close()
