"""Embedded means bounded: no receiver holds the writing thread past its deadline and budget.

Real servers on 127.0.0.1 that answer slowly, trickle, or not at all; every
wait in these tests is bounded, and every server stops when its test ends.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import peewee
import pytest
from _http import Receiver, answer, ok
from conftest import Clock

import tokenstore
from tokenstore import ABIDModel, Store, WebhookDelivery
from tokenstore import _dispatch as dispatch
from tokenstore import _retry_path as retry_path
from tokenstore._cli import main
from tokenstore._outbox import _NEXT_RETRY
from tokenstore._times import format_time

LOOPBACK = ["127.0.0.1/32"]


class Item(ABIDModel):
    abid_prefix = "itm_"
    n = peewee.IntegerField(default=0)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def open_store(path: Path | str, **options: object) -> Store:
    options.setdefault("webhook_allow", LOOPBACK)
    s = tokenstore.open(path, **options)  # type: ignore[arg-type]
    s.register(Item)
    return s


def one_save_timed(s: Store, url: str) -> tuple[float, WebhookDelivery]:
    """A hook to ``url``, then one save: how long the save took, and its delivery."""
    s.webhooks.create("slow", Item, url)
    start = time.monotonic()
    Item.create(n=1)
    elapsed = time.monotonic() - start
    (delivery,) = s.webhooks.deliveries()
    return elapsed, delivery


class Trickler:
    """A raw TCP server that reads a request, then sends a byte every ``pause`` seconds."""

    def __init__(self, payload: bytes, pause: float) -> None:
        self.payload = payload
        self.pause = pause
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                conn.recv(65536)
                for byte in self.payload:
                    if self.stop.wait(self.pause):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.mark.parametrize(
    "payload",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",  # the status line itself trickles
        b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * 200 + b"\r\n\r\n",  # a header trickles
    ],
    ids=["status-line", "headers"],
)
def test_a_trickling_receiver_costs_one_deadline(db_path: Path, payload: bytes) -> None:
    trickler = Trickler(payload, pause=0.05)  # each byte well inside the read timeout
    s = open_store(db_path, read_timeout=2, delivery_deadline=1.0)
    try:
        elapsed, delivery = one_save_timed(s, trickler.url)
    finally:
        s.close()
        trickler.close()
    assert elapsed < 1.0 + 1.0
    assert delivery.status == "failed"
    assert "deadline of 1 s" in delivery.last_error
    assert delivery.next_attempt_at is not None  # retried on the schedule


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("how", ["save", "ping"])
def test_a_silent_receiver_is_recorded_as_past_the_deadline(
    tmp_path: Path, scheme: str, how: str
) -> None:
    """The sockets' own timeouts are cut to the time left, and end the attempt at its deadline
    too: the log must say it was the deadline, not a read timeout the attempt never reached."""
    silent = Trickler(b"H", pause=30)  # accepts, reads the request, then says nothing
    s = open_store(tmp_path / "s.sqlite3", read_timeout=10, delivery_deadline=1.0)
    try:
        hook = s.webhooks.create("silent", Item, silent.url.replace("http", scheme, 1))
        start = time.monotonic()
        if how == "save":
            Item.create(n=1)
            (delivery,) = s.webhooks.deliveries()
        else:
            delivery = s.webhooks.ping(hook)
        elapsed = time.monotonic() - start
    finally:
        s.close()
        silent.close()
    assert elapsed < 1.0 + 1.0
    assert delivery.status == "failed"
    assert delivery.last_error == "timed out: the attempt ran past its deadline of 1 s"


def test_a_bulk_update_with_a_slow_hook_stays_within_the_budget(
    db_path: Path, receiver: Receiver
) -> None:
    release = threading.Event()

    def slow(handler: BaseHTTPRequestHandler) -> None:
        release.wait(3)
        ok(handler)

    s = open_store(db_path, delivery_deadline=0.5, sync_budget=1.0)
    try:
        with s.atomic():  # nobody listens yet: no deliveries
            for n in range(20):
                Item.create(n=n)
        s.webhooks.create("slow", Item, receiver.url(), signal="UPDATE")
        receiver.respond = slow
        start = time.monotonic()
        Item.update(n=Item.n + 1).execute()  # 20 changes, 20 deliveries
        elapsed = time.monotonic() - start
        assert elapsed < 1.0 + 0.5 + 0.5
        assert len(receiver.hits) == 1  # one deadline spent; the rest wait behind its retry
        statuses = [d.status for d in s.webhooks.deliveries(limit=100)]
        assert statuses.count("failed") == 1 and statuses.count("pending") == 19

        release.set()
        receiver.respond = ok
        later = datetime.now(UTC) + timedelta(minutes=1)
        assert s.webhooks.deliver_due(now=later) == 20
    finally:
        s.close()
    ids = [hit.headers["webhook-id"] for hit in receiver.hits[1:]]
    assert len(ids) == len(set(ids)) == 20  # every delivery once, the failed one again


def test_an_attempt_cut_short_by_the_sync_budget_says_so(db_path: Path, receiver: Receiver) -> None:
    """Not "ran past its deadline of 0.499873 s": the deadline is 3 s, the budget cut it."""
    release = threading.Event()

    def hang(handler: BaseHTTPRequestHandler) -> None:
        release.wait(5)
        ok(handler)

    receiver.respond = hang
    s = open_store(db_path, delivery_deadline=3.0, sync_budget=0.5)
    try:
        elapsed, delivery = one_save_timed(s, receiver.url())
    finally:
        release.set()
        s.close()
    assert elapsed < 0.5 + 1.0
    assert delivery.status == "failed"
    assert delivery.last_error == (
        "timed out: the attempt ran past the 0.5 s left of the writing thread's "
        "sync_budget, short of its deadline of 3 s"
    )


def test_one_call_of_the_retry_path_costs_one_deadline_per_hook_that_is_down(
    db_path: Path, receiver: Receiver
) -> None:
    """Two hooks whose receivers hang, five due deliveries each: two deadlines, not ten."""
    release = threading.Event()

    def hang(handler: BaseHTTPRequestHandler) -> None:
        release.wait(5)
        ok(handler)

    s = open_store(db_path, delivery_deadline=0.4, sync_budget=0)
    try:
        s.webhooks.create("a", Item, receiver.url("/a"))
        s.webhooks.create("b", Item, receiver.url("/b"))
        for n in range(5):
            Item.create(n=n)  # no budget: all ten go to the retry path
        assert receiver.hits == []
        receiver.respond = hang
        start = time.monotonic()
        attempted = s.webhooks.deliver_due(now=datetime.now(UTC) + timedelta(minutes=1))
        elapsed = time.monotonic() - start
    finally:
        release.set()
        s.close()
    assert attempted == 2
    assert sorted(hit.path for hit in receiver.hits) == ["/a", "/b"]
    assert elapsed < 2 * 0.4 + 0.5


def test_closing_the_store_waits_one_lease_in_all_for_its_retry_threads(
    db_path: Path, receiver: Receiver
) -> None:
    """Two retry threads, each in a round longer than a lease: close() waited a lease for each.

    Documented: a round in progress is waited for up to one lease (the
    delivery deadline and 5 s); the rest of it ends by itself.
    """

    def hang(handler: BaseHTTPRequestHandler) -> None:
        time.sleep(1)
        ok(handler)

    deadline = 0.2
    lease = deadline + 5
    s = open_store(db_path, delivery_deadline=deadline, sync_budget=0)
    try:
        for n in range(120):  # a round costs a deadline per hook that is down: 24 s in all
            s.webhooks.create(f"down{n}", Item, receiver.url(f"/{n}"))
        Item.create(n=1)  # no budget: every delivery is due on the retry path
        receiver.respond = hang
        for _ in range(2):
            s.webhooks.start_retry_thread(interval=0.01)
        give_up = time.monotonic() + 5
        while len(receiver.hits) < 4 and time.monotonic() < give_up:
            time.sleep(0.01)
        assert len(receiver.hits) >= 4  # both threads are well into their rounds
    finally:
        start = time.monotonic()
        s.close()
        elapsed = time.monotonic() - start
    assert lease - 1 < elapsed < lease + 1.5


def test_a_failing_endpoint_is_not_tried_from_the_write_path(
    db_path: Path, receiver: Receiver
) -> None:
    def refuse(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(500)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    receiver.respond = refuse
    s = open_store(db_path)
    try:
        s.webhooks.create("down", Item, receiver.url())
        Item.create(n=1)
        assert len(receiver.hits) == 1
        for n in range(5):
            Item.create(n=n)
        assert len(receiver.hits) == 1  # new deliveries wait behind the retry
        pending = [d for d in s.webhooks.deliveries() if d.status == "pending"]
        (failed,) = [d for d in s.webhooks.deliveries() if d.status == "failed"]
        assert len(pending) == 5
        assert {d.next_attempt_at for d in pending} == {failed.next_attempt_at}
    finally:
        s.close()


class Picky:
    """Answers ``status`` to the message of an item whose ``n`` is ``refused``, 200 to the rest."""

    def __init__(self, receiver: Receiver, refused: int, status: int = 413) -> None:
        self.receiver, self.refused, self.status = receiver, refused, status

    def __call__(self, handler: BaseHTTPRequestHandler) -> None:
        data = json.loads(self.receiver.hits[-1].body)["data"]["fields"]
        answer(handler, self.status if data["n"] == self.refused else 200)

    def items(self) -> list[int]:
        """The ``n`` of each message received, in order."""
        return [json.loads(hit.body)["data"]["fields"]["n"] for hit in self.receiver.hits]


def test_a_message_the_receiver_refuses_holds_up_none_of_its_hook_s_others(
    db_path: Path, receiver: Receiver
) -> None:
    """A 413 (or 400, 422 ...) is the receiver's verdict on one message, not a sign it is down.

    The message is retried on its schedule; the hook's newer deliveries do not
    wait behind that retry (5 s, and then up to 10 h), but go to the retry path
    at once. Once one of them is delivered, saves deliver before returning again.
    """
    receiver.respond = picky = Picky(receiver, refused=7)
    s = open_store(db_path)
    try:
        s.webhooks.create("picky", Item, receiver.url())
        Item.create(n=7)
        Item.create(n=1)  # the hook is failing: not tried from the write path
        Item.create(n=2)
        assert picky.items() == [7]
        assert s.webhooks.deliver_due() == 2  # its retry is 5 s off; these are due now
        assert sorted(picky.items()) == [1, 2, 7]  # 1 and 2 saved in one millisecond may swap
        Item.create(n=3)
        assert picky.items()[-1] == 3 and len(picky.items()) == 4  # before create() returned
        by_status = sorted((d.status, d.last_status_code) for d in s.webhooks.deliveries())
        assert by_status == [("delivered", 200)] * 3 + [("failed", 413)]
    finally:
        s.close()


def test_the_retry_path_goes_on_past_a_message_the_receiver_refuses(
    db_path: Path, receiver: Receiver
) -> None:
    """A backlog that waited out a down receiver goes out in one call, past a refused message."""
    receiver.respond = functools.partial(answer, status=503)
    s = open_store(db_path)
    try:
        s.webhooks.create("picky", Item, receiver.url())
        for n in (7, 1, 2):
            Item.create(n=n)
        assert len(receiver.hits) == 1  # the others wait behind its retry
        (first,) = [d for d in s.webhooks.deliveries() if d.status == "failed"]
        receiver.respond = picky = Picky(receiver, refused=7, status=400)
        assert s.webhooks.deliver_due(now=first.next_attempt_at) == 3
        refused, *others = picky.items()[1:]  # 1 and 2 saved in one millisecond may swap
        assert refused == 7 and sorted(others) == [1, 2]
        statuses = sorted(d.status for d in s.webhooks.deliveries())
        assert statuses == ["delivered", "delivered", "failed"]
    finally:
        s.close()


def test_a_healthy_endpoint_is_delivered_before_save_returns(
    db_path: Path, receiver: Receiver
) -> None:
    s = open_store(db_path)
    try:
        s.webhooks.create("fine", Item, receiver.url())
        for n in range(3):
            Item.create(n=n)
            assert len(receiver.hits) == n + 1
        assert {d.status for d in s.webhooks.deliveries()} == {"delivered"}
    finally:
        s.close()


WRITER = textwrap.dedent(
    """
    import sys, time
    import peewee, tokenstore
    from tokenstore import ABIDModel

    class Item(ABIDModel):
        abid_prefix = "itm_"
        n = peewee.IntegerField(default=0)

    s = tokenstore.open(sys.argv[1], webhook_allow=["127.0.0.1/32"],
                        delivery_deadline=0.5, sync_budget=1.0)
    s.register(Item)
    with s.atomic():
        for n in range(30):
            Item.create(n=n)
    start = time.monotonic()
    Item.update(n=Item.n + 1).execute()
    print(round(time.monotonic() - start, 3))
    s.close()
    """
)


def test_a_process_bulk_updating_against_a_dead_hook_returns_in_budget_and_nothing_is_lost(
    db_path: Path, tmp_path: Path, receiver: Receiver
) -> None:
    """The writer is a process of its own; after it, the receiver recovers and gets it all."""
    path = db_path
    gate = threading.Event()

    def hang(handler: BaseHTTPRequestHandler) -> None:
        gate.wait(5)
        ok(handler)

    receiver.respond = hang
    # The hook is made by the writer's own process, which knows the model.
    setup = WRITER.replace(
        "with s.atomic():",
        f"s.webhooks.create('items', Item, {receiver.url()!r}, signal='UPDATE')\nwith s.atomic():",
    )
    (tmp_path / "app.py").write_text(setup)
    result = subprocess.run(
        [sys.executable, str(tmp_path / "app.py"), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.strip()) < 1.0 + 0.5 + 0.5
    gate.set()
    receiver.respond = ok

    s = tokenstore.open(path, webhook_allow=LOOPBACK)
    try:
        later = datetime.now(UTC) + timedelta(minutes=1)
        s.webhooks.deliver_due(now=later, limit=1000)
        statuses = {d.status for d in s.webhooks.deliveries(limit=1000)}
    finally:
        s.close()
    assert statuses == {"delivered"}
    updates = [h for h in receiver.hits if b"item.updated" in h.body]
    ids = {h.headers["webhook-id"] for h in updates}
    assert len(ids) == 30  # every change arrived, once per webhook-id (the first one twice)
    assert len(updates) == 31


SLOW_IMPORT = textwrap.dedent(
    """
    import sys, time
    import peewee, tokenstore
    from tokenstore import ABIDModel

    class SlowRequests:  # the first import of requests takes a second, as on a cold disk
        def find_spec(self, name, path=None, target=None):
            if name == "requests":
                time.sleep(1.0)
                sys.meta_path.remove(self)
            return None

    class Item(ABIDModel):
        abid_prefix = "itm_"

    assert "requests" not in sys.modules
    sys.meta_path.insert(0, SlowRequests())
    s = tokenstore.open(sys.argv[1], webhook_allow=["127.0.0.1/32"], delivery_deadline=0.5)
    s.register(Item)
    s.webhooks.create("items", Item, sys.argv[2])
    Item.create()
    (d,) = s.webhooks.deliveries()
    print(d.status, d.duration_ms, d.last_error)
    s.close()
    """
)


def test_loading_the_http_library_is_not_part_of_the_first_attempt(
    tmp_path: Path, receiver: Receiver
) -> None:
    """requests is imported on the first delivery; that is the app's time, not the receiver's.

    Counted in the attempt, a slow first import (a cold disk) failed the first
    delivery of a healthy receiver against a short deadline, and recorded the
    import as the receiver's answer time.
    """
    (tmp_path / "app.py").write_text(SLOW_IMPORT)
    result = subprocess.run(
        [sys.executable, str(tmp_path / "app.py"), str(tmp_path / "s.sqlite3"), receiver.url()],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    status, duration_ms, *_ = result.stdout.split()
    assert status == "delivered", result.stdout
    assert int(duration_ms) < 500
    assert len(receiver.hits) == 1


# -- the file does not grow without bound ----------------------------------------------


def clocked(path: Path | str, clock: Clock, **options: object) -> Store:
    return open_store(path, clock=clock, **options)


def test_prune_deletes_old_finished_deliveries_but_each_hook_keeps_its_latest(
    db_path: Path, receiver: Receiver, clock: Clock
) -> None:
    s = clocked(db_path, clock)
    try:
        s.webhooks.create("a", Item, receiver.url("/a"))
        for n in range(3):
            Item.create(n=n)  # three delivered
        clock.advance(days=31)
        receiver.respond = lambda h: h.send_error(500)
        Item.create(n=3)  # failed: not finished, never pruned
        s.webhooks.create("b", Item, receiver.url("/b"), signal="DELETE")
        assert s.webhooks.prune() == 2  # a's two older ones; its latest finished one stays
        statuses = sorted(d.status for d in s.webhooks.deliveries())
        assert statuses == ["delivered", "failed"]
        assert s.webhooks.prune(timedelta(0)) == 0
        assert s.webhooks.prune(timedelta(days=400)) == 0
    finally:
        s.close()


def logged(db_path: Path, receiver: Receiver, count: int) -> Store:
    """A store whose log holds ``count`` deliveries of one hook, made in one transaction."""
    s = open_store(db_path)
    s.webhooks.create("a", Item, receiver.url())
    with s.atomic():
        for n in range(count):
            Item.create(n=n)
    return s


def test_the_delivery_log_pages_with_a_cursor(db_path: Path, receiver: Receiver) -> None:
    s = logged(db_path, receiver, 25)
    try:
        every = s.webhooks.deliveries(limit=1000)
        pages, before = [], None
        while True:
            page = s.webhooks.deliveries(limit=10, before=before)
            if not page:
                break
            pages.append(page)
            before = page[-1].abid
        assert [len(p) for p in pages] == [10, 10, 5]
        assert [d.abid for p in pages for d in p] == [d.abid for d in every]
        assert every == sorted(every, key=lambda d: (d.created_at, d.abid), reverse=True)
        with pytest.raises(tokenstore.ValidationError, match="limit"):
            s.webhooks.deliveries(limit=-1)
        assert len(s.webhooks.deliveries()) == 25  # the default page is 100
    finally:
        s.close()


def test_a_cursor_pruned_from_the_log_still_marks_its_place(
    db_path: Path, receiver: Receiver
) -> None:
    """Paging back through a log that retention prunes meanwhile: the cursor's row may be gone.

    Its ABID holds the time it was made, which is all the place it needs. An
    ABID of no delivery is NotFound only when it is no delivery's ABID at all."""
    s = logged(db_path, receiver, 6)
    try:
        every = [d.abid for d in s.webhooks.deliveries()]
        cursor = every[2]
        WebhookDelivery.delete().where(WebhookDelivery.abid == cursor).execute()
        assert [d.abid for d in s.webhooks.deliveries(before=cursor)] == every[3:]
        assert [d.abid for d in s.webhooks.deliveries(before=cursor.lower())] == every[3:]
        with pytest.raises(tokenstore.NotFound, match="apt_"):
            s.webhooks.deliveries(before="apt_" + cursor[4:])
        with pytest.raises(tokenstore.NotFound):
            s.webhooks.delivery(cursor)  # the delivery itself is gone
    finally:
        s.close()


@pytest.mark.parametrize("by_hook", [False, True])
def test_an_index_serves_the_delivery_log_s_order(tmp_path: Path, by_hook: bool) -> None:
    s = open_store(tmp_path / "s.sqlite3")
    try:
        hook = s.webhooks.create("a", Item, "http://127.0.0.1:9/")
        query = tokenstore.WebhookDelivery.select().order_by(
            tokenstore.WebhookDelivery.created_at.desc(), tokenstore.WebhookDelivery.abid.desc()
        )
        if by_hook:
            query = query.where(tokenstore.WebhookDelivery.hook == hook.id)
        sql, params = query.limit(20).sql()
        plan = " ".join(
            str(row) for row in s.db.connection().execute("EXPLAIN QUERY PLAN " + sql, params)
        )
    finally:
        s.close()
    assert "TEMP B-TREE" not in plan  # no sort: the rows come in index order
    wanted = "hook_id_created_at_abid" if by_hook else "delivery_created_at_abid"
    assert wanted in plan


def test_a_silent_listener_is_removed_and_its_backlog_dropped(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.sqlite3"
    s = clocked(path, clock, listener_timeout=timedelta(hours=1))
    try:
        elsewhere = "another-host:1234:cafe"  # a listener this host cannot ask about
        with s.db.write(quiet=True) as conn:
            conn.execute(
                "INSERT INTO tokenstore_listener (claimant, since, seen) VALUES (?, ?, ?)",
                (elsewhere, "2000-01-01T00:00:00.000Z", format_time(clock.now)),
            )
        Item.create(n=1)  # recorded: someone listens
        assert _count(path, "tokenstore_change_event") == 1
        clock.advance(minutes=59)
        s.dispatch()
        assert _count(path, "tokenstore_listener") == 1  # not silent for long enough yet
        clock.advance(minutes=2)
        with caplog.at_level("WARNING", logger="tokenstore.dispatch"):
            s.dispatch()
        assert _count(path, "tokenstore_listener") == 0
        assert _count(path, "tokenstore_change_event") == 0
        assert elsewhere in caplog.text
        Item.create(n=2)
        assert _count(path, "tokenstore_change_event") == 0  # nobody listens: nothing kept
    finally:
        s.close()


def test_a_listener_and_a_claim_stamped_by_a_clock_since_set_back_count_from_now(
    tmp_path: Path, clock: Clock
) -> None:
    """Judged as stamped, a year ahead, a listener or claimant that died on another host
    kept its events waiting until the clock had caught up."""
    path = tmp_path / "s.sqlite3"
    s = clocked(path, clock, listener_timeout=timedelta(hours=1))
    try:
        elsewhere = "another-host:1234:cafe"  # a process this host cannot ask about
        ahead = format_time(clock.now + timedelta(days=365))
        with s.db.write(quiet=True) as conn:
            conn.execute(
                "INSERT INTO tokenstore_listener (claimant, since, seen) VALUES (?, ?, ?)",
                (elsewhere, ahead, ahead),
            )
        Item.create(n=1)  # recorded: someone listens; then claimed by it, a year ahead
        with s.db.write(quiet=True) as conn:
            conn.execute(
                "UPDATE tokenstore_change_event SET claimed_by = ?, claimed_at = ?",
                (elsewhere, ahead),
            )
        s.dispatch()
        assert _count(path, "tokenstore_change_event") == 1  # not yet: it counts from now
        clock.advance(minutes=61)  # past listener_timeout, and claim_timeout (an hour)
        s.dispatch()
        assert _count(path, "tokenstore_listener") == 0
        assert _count(path, "tokenstore_change_event") == 0  # released, and nobody listens
    finally:
        s.close()


def test_a_hand_typed_listener_is_named_in_one_short_line(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.sqlite3"
    s = clocked(path, clock, listener_timeout=timedelta(hours=1))
    try:
        typed = "forged\nWARNING injected " + "y" * 100_000
        with s.db.write(quiet=True) as conn:
            conn.execute(
                "INSERT INTO tokenstore_listener (claimant, since, seen) VALUES (?, ?, ?)",
                (typed, "2000-01-01T00:00:00.000Z", "2000-01-01T00:00:00.000Z"),
            )
        with caplog.at_level("WARNING", logger="tokenstore.dispatch"):
            s.dispatch()
        assert _count(path, "tokenstore_listener") == 0
        (message,) = [r.getMessage() for r in caplog.records if "claimed nothing" in r.message]
        assert "\n" not in message and len(message) < 500 and "forged\\nWARNING" in message
    finally:
        s.close()


def _count(path: Path, table: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


def finished_long_ago(store: Store, clock: Clock, deliveries: int) -> None:
    """A hook's ``deliveries`` deliveries, all given up (dead, so finished) 31 days ago."""
    hook = store.webhooks.create("a", Item, "http://127.0.0.1:9/a")
    with store.atomic():
        for n in range(deliveries):
            Item.create(n=n)
    store.webhooks.disable(hook)
    clock.advance(days=31)


def test_prune_says_how_many_it_deleted_and_deletes_them_all(db_path: Path, clock: Clock) -> None:
    """More than one batch, on either backend; the count is of rows really deleted."""
    s = clocked(db_path, clock, sync_budget=0)
    try:
        finished_long_ago(s, clock, 1001)
        assert s.webhooks.prune() == 1000
        assert [d.status for d in s.webhooks.deliveries()] == ["dead"]
        assert s.webhooks.prune(timedelta(0)) == 0
    finally:
        s.close()


def test_the_retry_path_prunes_at_every_call_while_it_is_behind(
    db_path: Path, clock: Clock
) -> None:
    """Once a minute, a few batches, could not keep up with a busy log: it grew without bound."""
    s = clocked(db_path, clock, sync_budget=0)
    try:
        finished_long_ago(s, clock, 2600)
        s.webhooks.deliver_due()  # the first call's few batches: 2,000 rows
        assert len(s.webhooks.deliveries(limit=10_000)) == 600
        s.webhooks.deliver_due()  # at once, not a minute later: it was behind
        assert len(s.webhooks.deliveries(limit=10_000)) == 1  # the hook's latest is kept
    finally:
        s.close()


def test_a_delivered_receiver_that_saves_what_a_hook_hears_does_not_hold_the_save_forever(
    db_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each delivery's signal saved a row, whose delivery's signal saved one...: the first
    save never returned. The chain is cut where receivers' rounds are; nothing is lost."""
    monkeypatch.setattr(dispatch, "MAX_RECEIVER_ROUNDS", 3)
    s = open_store(db_path)
    s.webhooks.create("echo", Item, receiver.url())

    def save_another(sender: object, **kwargs: object) -> None:
        Item.create(n=len(receiver.hits))

    tokenstore.signals.webhook_delivered.connect(save_another)
    try:
        saving = threading.Thread(target=lambda: Item.create(n=0), daemon=True)
        saving.start()
        saving.join(5)  # before the fix: never
        assert not saving.is_alive()
    finally:
        tokenstore.signals.webhook_delivered.disconnect(save_another)
    try:
        assert len(receiver.hits) == 3  # one per round: the first save's is round 0
        # The cut round's is written, held for the retry path as if its writer had died.
        assert [d.status for d in s.webhooks.deliveries()] == ["pending"] + ["delivered"] * 3
        assert s.webhooks.deliver_due(now=datetime.now(UTC) + timedelta(minutes=1)) == 1
        assert len(receiver.hits) == 4
    finally:
        s.close()


def test_dispatch_watch_asked_twice_to_stop_stops_at_once_mid_send(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C waited for the round: a delivery_deadline per hook that was down (8 hooks,
    80 s). The second Ctrl-C cuts the round short; what was on the wire stays held."""
    path = tmp_path / "watch.db"
    s = open_store(path, sync_budget=0)
    silent = socket.create_server(("127.0.0.1", 0))  # takes the request, never answers
    accepted: list[socket.socket] = []
    s.webhooks.create("silent", Item, f"http://127.0.0.1:{silent.getsockname()[1]}/")
    Item.create(n=1)
    s.close()

    def interrupt_twice() -> None:
        accepted.append(silent.accept()[0])  # the watcher is sending now
        for _ in range(2):
            time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGINT)

    stopper = threading.Thread(target=interrupt_twice, daemon=True)
    stopper.start()
    try:
        start = time.monotonic()
        code = main(["--db", str(path), "dispatch", "--watch"])
        elapsed = time.monotonic() - start
    finally:
        stopper.join(5)
        for sock in (silent, *accepted):
            sock.close()
    err = capfd.readouterr().err
    assert code == 130, err
    assert elapsed < 3  # before the fix: the 10 s delivery_deadline
    assert "again: stop now" in err
    s = open_store(path)
    try:
        (delivery,) = s.webhooks.deliveries()
        assert (delivery.status, delivery.attempts) == ("pending", 0)  # held, sent again later
    finally:
        s.close()


def test_a_down_hook_s_backlog_is_moved_behind_its_retry_in_short_transactions(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One UPDATE moved it all: 300,000 deliveries held the write lock 17 s, and the
    application's saves failed with StoreLocked, whenever the retry path found it down."""
    monkeypatch.setattr(retry_path, "WAIT_BATCH", 10)
    receiver.respond = lambda h: h.send_error(500)
    s = open_store(tmp_path / "backlog.db", sync_budget=0)
    try:
        s.webhooks.create("down", Item, receiver.url())
        with s.atomic():
            for n in range(25):
                Item.create(n=n)
        statements: list[str] = []
        s.db.connection().set_trace_callback(statements.append)
        assert s.webhooks.deliver_due() == 1
        s.db.connection().set_trace_callback(None)
        retries = {d.next_attempt_at for d in s.webhooks.deliveries()}
        assert len(retries) == 1 and retries != {None}  # all 25 wait for the one retry
        # The batches of the due range (the stranded range, beyond the horizon, is empty).
        moves = [i for i, sql in enumerate(statements) if sql.startswith("UPDATE") and "<= " in sql]
        moves = [i for i in moves if "LIMIT" in statements[i]]
        assert len(moves) == 3  # 24 due behind the failed one: 10, 10, then 4
        assert all("COMMIT" in statements[a:b] for a, b in itertools.pairwise(moves))
    finally:
        s.close()


def test_a_save_behind_a_down_hook_finds_its_retry_through_the_due_index(tmp_path: Path) -> None:
    """Each save to a failing hook looked its retry up through the hook's index, all its
    log: 300,000 deliveries waiting made every save hold the write lock over a second."""
    s = open_store(tmp_path / "s.sqlite3")
    try:
        conn = s.db.connection()
        plan = " ".join(
            str(row) for row in conn.execute("EXPLAIN QUERY PLAN " + _NEXT_RETRY, ("",))
        )
    finally:
        s.close()
    assert "tokenstore_webhook_delivery_due" in plan
    assert "TEMP B-TREE" not in plan  # read in order, up to the first of the hook's


def _rows(s: Store, table: str) -> int:
    return int(s.db.execute_sql(f"SELECT count(*) FROM {table}").fetchone()[0])


def test_events_no_live_listener_claims_are_dropped_after_the_listener_timeout(
    db_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """A listener alive on another host that has no model for ``item`` (a worker hearing
    only tokenstore's own tables) kept capture on: every save of an Item recorded an
    event that no process would ever claim, and the table grew by one row a save."""
    s = clocked(db_path, clock, listener_timeout=timedelta(hours=1))
    try:
        elsewhere = "another-host:1234:cafe"  # alive: it claims (its own tables) every minute
        with s.db.write(quiet=True) as conn:
            conn.execute(
                s.db.sql(
                    "INSERT INTO tokenstore_listener (claimant, since, seen) VALUES (?, ?, ?)"
                ),
                (elsewhere, format_time(clock.now), format_time(clock.now)),
            )
        for step in range(30):  # 5 hours, a save every 10 minutes
            Item.create(n=step)
            clock.advance(minutes=10)
            with s.db.write(quiet=True) as conn:  # the listener's heartbeat, as its claims
                conn.execute(
                    s.db.sql("UPDATE tokenstore_listener SET seen = ?"), (format_time(clock.now),)
                )
            with caplog.at_level("WARNING", logger="tokenstore.dispatch"):
                s.dispatch()
        assert _rows(s, "tokenstore_listener") == 1  # the listener is alive
        waiting = _rows(s, "tokenstore_change_event")
        assert waiting <= 7, waiting  # the last hour's saves at most
        assert "'item'" in caplog.text and "no listener claimed" in caplog.text
    finally:
        s.close()


def test_a_listener_idle_past_the_listener_timeout_still_fires_its_own_tables_events(
    tmp_path: Path, clock: Clock
) -> None:
    """Dropping events no listener claimed leaves those this process claims itself."""
    path = tmp_path / "s.sqlite3"
    heard: list[int] = []

    def hear(sender: object, instance: Item, **kwargs: object) -> None:
        heard.append(instance.n)

    tokenstore.signals.post_save.connect(hear, sender=Item)
    s = clocked(path, clock, listener_timeout=timedelta(hours=1))
    try:
        Item.create(n=1)  # heard at once: it listens
        other = sqlite3.connect(path)  # another program's write, captured by the triggers
        with other:
            other.execute("UPDATE item SET n = 7")
        other.close()
        clock.advance(hours=2)
        s.dispatch()
        assert heard == [1, 7]
        assert _rows(s, "tokenstore_change_event") == 0
    finally:
        tokenstore.signals.post_save.disconnect(hear)
        s.close()


def test_events_a_hook_wants_wait_past_the_listener_timeout_for_a_process_with_their_model(
    tmp_path: Path, clock: Clock, receiver: Receiver
) -> None:
    """A row changed in the sqlite3 shell while the application is away is its hook's to
    send: a process without the model (a command, a worker), doing its housekeeping
    hours later, dropped the event, and the application back never sent it."""
    path = tmp_path / "s.sqlite3"
    app = open_store(path)
    app.webhooks.create("items", Item, receiver.url())
    Item.create(n=1)
    app.close()
    other = sqlite3.connect(path)  # another program's write, captured for the hook
    with other:
        other.execute("UPDATE item SET n = 7")
    other.close()
    clock.advance(hours=2)
    command = tokenstore.open(path, clock=clock, listener_timeout=timedelta(hours=1))
    try:
        command.users.create("someone")  # a write: its commit does the housekeeping
        command.dispatch()
        assert _rows(command, "tokenstore_change_event") == 1
    finally:
        command.close()
    back = open_store(path)
    try:
        back.dispatch()  # sends what the store kept for it
        sent = [json.loads(hit.body)["data"]["fields"]["n"] for hit in receiver.hits]
        assert sent == [1, 7]
    finally:
        back.close()


class Wide(ABIDModel):
    """Seven optional columns: inserts name them in any order and any subset."""

    abid_prefix = "wid_"
    a = peewee.IntegerField(null=True)
    b = peewee.IntegerField(null=True)
    c = peewee.IntegerField(null=True)
    d = peewee.IntegerField(null=True)
    e = peewee.IntegerField(null=True)
    f = peewee.IntegerField(null=True)
    g = peewee.IntegerField(null=True)


def test_insert_statements_kept_per_model_and_column_set_are_bounded(tmp_path: Path) -> None:
    """Each INSERT is built once per model and the columns it names, in their order, and
    kept: an application inserting rows that name their columns in changing orders
    (a dict per row from a CSV's header, say) added a statement per order, for ever."""
    from tokenstore import _models

    s = open_store(tmp_path / "s.sqlite3")
    try:
        s.register(Wide)
        orders = itertools.islice(
            itertools.permutations("abcdefg"), _models.INSERT_STATEMENTS + 100
        )
        with s.atomic():
            for order in orders:
                Wide.create(**{name: 1 for name in order})
        assert Wide.select().count() == _models.INSERT_STATEMENTS + 100
        assert len(_models._INSERT_SQL) <= _models.INSERT_STATEMENTS
    finally:
        s.close()


def test_stores_opened_used_and_closed_in_turn_leave_nothing_behind(tmp_path: Path) -> None:
    """An app that opens a store per project, in turn, must not grow per store it closed:
    no store stays alive, and the process-wide lists that name stores do not grow."""
    import gc
    import weakref

    from tokenstore import _backend, _fork

    def use(n: int) -> weakref.ref[Store]:
        s = open_store(tmp_path / f"project-{n}.sqlite3")
        _, secret = s.tokens.create()
        s.tokens.authenticate(secret)
        s.webhooks.create("h", Item, "http://127.0.0.1:9/h")
        Item.create(n=n)
        s.dispatch()
        s.close()
        return weakref.ref(s)

    use(0)
    gc.collect()
    callbacks, writers = len(_fork._callbacks), len(_backend._WRITERS.by_store)
    stores = [use(n) for n in range(1, 201)]
    gc.collect()
    assert [ref for ref in stores if ref() is not None] == []
    use(201)  # what names the collected stores is pruned as the next one opens and writes
    assert len(_fork._callbacks) <= callbacks
    assert len(_backend._WRITERS.by_store) <= writers + 1


def test_threads_that_used_a_store_and_ended_leave_nothing_behind(
    db_path: Path, receiver: Receiver
) -> None:
    """Each thread has its own connection, cursor and HTTP session: all go with it."""
    import gc

    s = open_store(db_path)
    try:
        _, secret = s.tokens.create()
        s.webhooks.create("h", Item, receiver.url("/h"))

        def work() -> None:
            s.tokens.authenticate(secret)
            Item.create(n=1)
            s.dispatch()

        def run(threads: int) -> None:
            for _ in range(threads):
                thread = threading.Thread(target=work)
                thread.start()
                thread.join(30)
                assert not thread.is_alive()

        run(5)
        gc.collect()
        before = len(gc.get_objects())
        run(100)
        assert len(receiver.hits) == 105
        receiver.hits.clear()  # what the receiver recorded is the test's, not the store's
        gc.collect()
        assert len(gc.get_objects()) - before < 100  # less than one object a thread
    finally:
        s.close()


def test_a_sender_keeps_at_most_prepared_urls_endpoints(db_path: Path) -> None:
    """A hook's URL is prepared once and kept; hooks changed to ever new URLs (a
    per-tenant path, say) must not grow the sender."""
    from tokenstore import _sending

    s = open_store(db_path)
    try:
        sender = s._outbox.sender
        for n in range(_sending._PREPARED_URLS + 50):
            outcome = sender.post(f"http://127.0.0.1:9/tenant/{n}", b"{}", {}, deadline=1)
            assert not outcome.ok
        assert 0 < len(sender._urls) <= _sending._PREPARED_URLS
    finally:
        s.close()


def test_a_thread_keeps_connections_alive_to_ten_receivers_at_most(db_path: Path) -> None:
    """A thread's HTTP session keeps a connection alive per receiver it sent to, for the
    next delivery; hooks to ever new receivers must not pile up open sockets."""
    receivers = [Receiver() for _ in range(14)]
    s = open_store(db_path)
    try:
        sender = s._outbox.sender
        for r in receivers:
            assert sender.post(r.url("/h"), b"{}", {}).ok
        pools = sender.session().get_adapter("http://").poolmanager.pools
        assert len(pools) == 10  # the ten sent to last, each holding its connection
    finally:
        s.close()
        for r in receivers:
            r.close()


def test_a_listening_connection_no_thread_waits_on_is_closed(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread that waited for changes once and then never again, while it lives, kept
    its LISTEN session: once its socket filled, the server queued every later commit's
    notification for it (1.3 million commits took 0.5% of the server's 8 GB queue, and a
    full queue makes every commit fail). A listening connection no thread has waited on
    for IDLE_LISTENING seconds is now closed; its thread's next wait says that something
    may have changed, and listens anew."""
    from tokenstore import _postgres_listen

    monkeypatch.setattr(_postgres_listen, "IDLE_LISTENING", 0.2)
    s = open_store(pg_url)
    waited, resume, answers = threading.Event(), threading.Event(), []

    def waits_once_then_idles() -> None:
        answers.append(s.wait_for_changes(0.01))
        waited.set()
        resume.wait(30)
        answers.append(s.wait_for_changes(0.01))  # its connection was closed meanwhile
        answers.append(s.wait_for_changes(0.01))  # listening again
        s.db.close()

    thread = threading.Thread(target=waits_once_then_idles)
    try:
        thread.start()
        assert waited.wait(30)
        (listening,) = s.db._changes._listening
        assert not listening.closed
        for _ in range(50):  # closed within twice IDLE_LISTENING
            if listening.closed:
                break
            time.sleep(0.1)
        assert listening.closed
        resume.set()
        thread.join(30)
        assert answers == [False, True, False]
        assert len(s.db._changes._listening) == 0  # the thread closed its own as it ended
    finally:
        resume.set()
        thread.join(30)
        s.close()
