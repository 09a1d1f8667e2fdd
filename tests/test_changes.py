"""Change capture in SQL and dispatch after commit, on real files and real processes.

Receivers are connected with ``weak=False`` (mostly through the ``listen``
fixture) and always disconnected, in a fixture or a ``finally``: blinker
signals are module globals and would otherwise leak into later tests.
Subprocesses run ``tests/_writer.py``, which also defines the ``Memo`` model.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import _db
import peewee
import pytest
from _writer import Memo
from blinker import ANY, Signal

import tokenstore
import tokenstore._store
from tokenstore import ChangeEvent, Store, signals
from tokenstore import _dispatch as dispatch
from tokenstore._capture import EVENT_TABLE
from tokenstore._errors import StoreError, ValidationError
from tokenstore._models import User
from tokenstore._times import utcnow

WRITER = str(Path(__file__).with_name("_writer.py"))

Calls = list[dict[str, Any]]
Listen = Callable[..., Calls]


@pytest.fixture
def listen() -> Iterator[Listen]:
    """``listen(signal, sender=ANY)`` records each call as a dict of sender and arguments."""
    connected: list[tuple[Signal, Callable[..., None]]] = []

    def connect(sig: Signal, sender: Any = ANY) -> Calls:
        calls: Calls = []

        def receiver(sender: Any, **kwargs: Any) -> None:
            calls.append({"sender": sender, **kwargs})

        sig.connect(receiver, sender=sender, weak=False)
        connected.append((sig, receiver))
        return calls

    try:
        yield connect
    finally:
        for sig, receiver in connected:
            sig.disconnect(receiver)


@pytest.fixture
def memos(store: Store) -> Store:
    store.register(Memo)
    return store


def events_left(path: Path) -> list[tuple[Any, ...]]:
    """The event table as another connection sees it: what is committed."""
    return _db.rows(path, f"SELECT id, table_name, op, claimed_by FROM {EVENT_TABLE} ORDER BY id")


def committed_names(path: Path) -> list[str]:
    return [
        name for (name,) in _db.rows(path, "SELECT name FROM test_changes_memo ORDER BY n, name")
    ]


def memo_events(calls: Calls) -> list[tuple[str, str | None]]:
    return [(c["event"].op, c["event"].row.get("name")) for c in calls if c["sender"] is Memo]


# -- signal arguments ---------------------------------------------------------------------


def test_post_save_gets_the_model_a_fresh_instance_created_and_the_event(
    memos: Store, listen: Listen, db_path: Path
) -> None:
    saved = listen(signals.post_save, Memo)
    seen_committed: list[list[str]] = []

    def look(sender: Any, **kwargs: Any) -> None:
        seen_committed.append(committed_names(db_path))

    signals.post_save.connect(look, sender=Memo, weak=False)
    try:
        memo = Memo(name="first", n=1, secret="s3cret")
        memo.save()
        memo.name = "renamed"
        memo.save()
    finally:
        signals.post_save.disconnect(look)

    assert [c["created"] for c in saved] == [True, False]
    for call in saved:
        assert call["sender"] is Memo
        assert isinstance(call["instance"], Memo)
        assert call["instance"] is not memo
        assert call["instance"].id == memo.id
        assert call["instance"].abid == memo.abid
        assert call["instance"].created_by_id == memo.created_by_id
        assert isinstance(call["event"], ChangeEvent)
        assert call["event"].table == Memo._meta.table_name
        assert call["event"].pk == memo.id.hex
        assert "secret" not in call["event"].row
        assert call["instance"].secret is None  # private fields never leave the database
    insert, update = saved
    assert (insert["instance"].name, insert["instance"].n) == ("first", 1)
    assert insert["event"].op == "INSERT" and insert["event"].old is None
    assert update["instance"].name == "renamed"
    assert update["event"].op == "UPDATE"
    assert update["event"].old["name"] == "first"
    assert update["event"].new["name"] == "renamed"
    # Each receiver call happened after its change was committed (seen from another connection).
    assert seen_committed == [["first"], ["renamed"]]
    assert events_left(db_path) == []


def test_post_delete_gets_the_deleted_row_and_row_changed_every_event(
    memos: Store, listen: Listen, db_path: Path
) -> None:
    deleted = listen(signals.post_delete, Memo)
    changed = listen(signals.row_changed, Memo)
    memo = Memo(name="doomed", n=7)
    memo.save()
    memo.delete_instance()

    [call] = deleted
    assert call["sender"] is Memo
    assert set(call) == {"sender", "instance", "event"}
    assert isinstance(call["instance"], Memo)
    assert (call["instance"].id, call["instance"].name, call["instance"].n) == (
        memo.id,
        "doomed",
        7,
    )
    assert call["event"].op == "DELETE" and call["event"].new is None
    assert [c["event"].op for c in changed] == ["INSERT", "DELETE"]
    assert all(c["sender"] is Memo and set(c) == {"sender", "event"} for c in changed)
    assert Memo.select().count() == 0
    assert events_left(db_path) == []


def test_pre_save_and_pre_delete_fire_in_process_before_the_write(
    memos: Store, listen: Listen, db_path: Path
) -> None:
    before: list[tuple[str, bool | None, list[str]]] = []

    def pre_save(sender: Any, instance: Memo, created: bool, **kwargs: Any) -> None:
        before.append(("save", created, committed_names(db_path)))

    def pre_delete(sender: Any, instance: Memo, **kwargs: Any) -> None:
        before.append(("delete", None, committed_names(db_path)))

    signals.pre_save.connect(pre_save, sender=Memo, weak=False)
    signals.pre_delete.connect(pre_delete, sender=Memo, weak=False)
    try:
        memo = Memo(name="a")
        memo.save()
        memo.name = "b"
        memo.save()
        memo.delete_instance()
    finally:
        signals.pre_save.disconnect(pre_save)
        signals.pre_delete.disconnect(pre_delete)
    assert before == [("save", True, []), ("save", False, ["a"]), ("delete", None, ["b"])]


# -- when dispatch happens ----------------------------------------------------------------


@pytest.mark.parametrize("opener", ["store.atomic", "db.atomic", "db.transaction", "begin"])
def test_a_transaction_dispatches_once_its_outermost_commit_is_done(
    memos: Store, listen: Listen, db_path: Path, opener: str
) -> None:
    saved = listen(signals.post_save, Memo)
    db = Memo._meta.database

    # peewee's atomic() cannot nest in a transaction begun by hand; a savepoint can.
    inner = db.savepoint if opener == "begin" else memos.atomic

    def work() -> None:
        Memo(name="a", n=1).save()
        with inner():
            Memo(name="b", n=2).save()
        Memo.update(n=Memo.n + 10).where(Memo.name == "a").execute()
        assert saved == []
        assert events_left(db_path) == []  # nothing is visible outside yet

    if opener == "begin":
        db.begin()
        work()
        db.commit()
    else:
        with {
            "store.atomic": memos.atomic,
            "db.atomic": db.atomic,
            "db.transaction": db.transaction,
        }[opener]():
            work()
    assert memo_events(saved) == [("INSERT", "a"), ("INSERT", "b"), ("UPDATE", "a")]
    assert events_left(db_path) == []


def test_a_commit_inside_manual_commit_fires_when_it_commits(memos: Store, listen: Listen) -> None:
    saved = listen(signals.post_save)
    db = memos.db
    with db.manual_commit():
        db.begin()
        Memo.create(name="manual")
        db.commit()
        assert [c["instance"].name for c in saved] == ["manual"]


def test_work_committed_mid_transaction_fires_even_if_the_rest_rolls_back(
    memos: Store, listen: Listen, db_path: Path
) -> None:
    saved = listen(signals.post_save, Memo)
    db = Memo._meta.database
    with pytest.raises(RuntimeError), db.transaction() as txn:
        Memo(name="kept").save()
        txn.commit()
        Memo(name="lost").save()
        raise RuntimeError("roll back the rest")
    assert memo_events(saved) == [("INSERT", "kept")]
    assert committed_names(db_path) == ["kept"]
    assert events_left(db_path) == []


@pytest.mark.sqlite_only
def test_a_commit_run_as_sql_inside_a_transaction_is_named_when_the_next_write_is_refused(
    memos: Store, listen: Listen, db_path: Path
) -> None:
    """The message said SQLite had rolled the transaction back and nothing of it was saved."""
    saved = listen(signals.post_save, Memo)
    with (
        pytest.raises(StoreError, match=r"or a COMMIT or ROLLBACK run through execute_sql"),
        memos.atomic(),
    ):
        Memo(name="kept").save()
        memos.db.execute_sql("COMMIT")
        Memo(name="refused").save()
    assert committed_names(db_path) == ["kept"]
    memos.dispatch()
    assert memo_events(saved) == [("INSERT", "kept")]


def test_a_receiver_that_writes_has_its_events_fired_too(
    memos: Store, listen: Listen, db_path: Path
) -> None:
    changed = listen(signals.row_changed, Memo)

    def follow_up(sender: Any, instance: Memo, created: bool, **kwargs: Any) -> None:
        if instance.name == "first":
            Memo(name="second").save()

    signals.post_save.connect(follow_up, sender=Memo, weak=False)
    try:
        Memo(name="first").save()
    finally:
        signals.post_save.disconnect(follow_up)
    assert memo_events(changed) == [("INSERT", "first"), ("INSERT", "second")]
    assert events_left(db_path) == []


def test_receivers_that_keep_writing_are_stopped_not_looped_forever(
    memos: Store, listen: Listen, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A receiver that saves the model it listens to would cause changes without end."""
    changed = listen(signals.row_changed, Memo)

    def again(sender: Any, instance: Memo, created: bool, **kwargs: Any) -> None:
        Memo(name="again").save()

    signals.post_save.connect(again, sender=Memo, weak=False)
    try:
        with caplog.at_level(logging.ERROR, logger="tokenstore"):
            saving = threading.Thread(target=lambda: Memo(name="first").save(), daemon=True)
            saving.start()
            saving.join(60)  # before the fix: never
            assert not saving.is_alive()
    finally:
        signals.post_save.disconnect(again)
    rounds = dispatch.MAX_RECEIVER_ROUNDS
    assert len(memo_events(changed)) == rounds
    assert Memo.select().count() == rounds + 1  # the last round's save is kept, not fired
    assert any("kept writing" in r.getMessage() for r in caplog.records)
    assert events_left(db_path) == []
    caplog.clear()
    Memo(name="later").save()  # the next save starts afresh
    assert memo_events(changed)[-1] == ("INSERT", "later")
    assert not caplog.records


# -- rollback silence ---------------------------------------------------------------------


def test_a_rolled_back_transaction_leaves_no_event_and_fires_nothing(
    memos: Store, listen: Listen, db_path: Path
) -> None:
    changed = listen(signals.row_changed)
    saved = listen(signals.post_save)
    with pytest.raises(RuntimeError), memos.atomic():
        Memo(name="ghost").save()
        Memo.update(n=5).execute()
        raise RuntimeError("roll back")
    with memos.atomic():
        Memo(name="kept").save()
        with pytest.raises(RuntimeError), memos.atomic():
            Memo(name="inner ghost").save()
            raise RuntimeError("roll back the savepoint only")
    existing = Memo.get(Memo.name == "kept")
    with pytest.raises(peewee.IntegrityError):  # a failing lone write rolls back alone
        Memo.insert(
            id=existing.id,
            abid="mem_dup",
            created_by=existing.created_by_id,
            created_at=existing.created_at,
            modified_at=existing.created_at,
            name="dup",
        ).execute()

    assert memo_events(changed) == [("INSERT", "kept")]
    assert memo_events(saved) == [("INSERT", "kept")]
    assert committed_names(db_path) == ["kept"]
    assert events_left(db_path) == []


# -- what SQL produces events -------------------------------------------------------------


def test_bulk_update_delete_and_insert_produce_one_event_per_row(
    memos: Store, listen: Listen, db_path: Path
) -> None:
    changed = listen(signals.row_changed, Memo)
    saved = listen(signals.post_save, Memo)
    deleted = listen(signals.post_delete, Memo)
    for i in range(5):
        Memo(name=f"m{i}", n=i).save()
    changed.clear()
    saved.clear()

    assert Memo.update(n=Memo.n + 100).where(Memo.n >= 2).execute() == 3
    assert sorted((c["instance"].name, c["instance"].n) for c in saved) == [
        ("m2", 102),
        ("m3", 103),
        ("m4", 104),
    ]
    assert all(c["created"] is False for c in saved)
    assert sorted(c["event"].old["n"] for c in saved) == [2, 3, 4]

    assert Memo.delete().where(Memo.n < 2).execute() == 2
    assert sorted(c["instance"].name for c in deleted) == ["m0", "m1"]

    now = utcnow()
    Memo.insert_many(
        [
            {
                "id": f"{i:032x}",
                "abid": f"mem_bulk{i}",
                "created_by": memos.system_user.id,
                "created_at": now,
                "modified_at": now,
                "name": f"bulk{i}",
            }
            for i in range(3)
        ]
    ).execute()
    assert [op for op, _ in memo_events(changed)] == ["UPDATE"] * 3 + ["DELETE"] * 2 + [
        "INSERT"
    ] * 3
    assert events_left(db_path) == []


def test_truncate_table_reports_each_row_deleted(memos: Store, listen: Listen) -> None:
    """PostgreSQL runs no row trigger for TRUNCATE: its rows went without an event or a delivery
    (SQLite has no TRUNCATE: peewee deletes the rows)."""
    for name in ("a", "b"):
        Memo(name=name).save()
    hook = memos.webhooks.create("memos", Memo, "http://127.0.0.1:9/", signal="DELETE")
    changed = listen(signals.row_changed, Memo)
    Memo.truncate_table()
    assert sorted(memo_events(changed)) == [("DELETE", "a"), ("DELETE", "b")]
    assert sorted(d.event_type for d in memos.webhooks.deliveries(hook)) == ["memo.deleted"] * 2


@pytest.mark.sqlite_only
def test_replace_over_a_row_is_one_insert_and_an_upsert_one_update(
    memos: Store, listen: Listen
) -> None:
    """As docs/delivery.md says: SQLite runs no delete trigger for REPLACE's deletion."""
    memo = Memo(name="first", n=1)
    memo.save()
    changed = listen(signals.row_changed, Memo)
    row = {
        "id": memo.id,
        "abid": memo.abid,
        "created_by": memo.created_by_id,
        "created_at": memo.created_at,
        "modified_at": memo.modified_at,
    }
    Memo.replace(**row, name="replaced", n=2).execute()
    Memo.insert(**row, name="upserted").on_conflict(
        conflict_target=[Memo.id], update={Memo.name: "upserted", Memo.n: 3}
    ).execute()
    assert memo_events(changed) == [("INSERT", "replaced"), ("UPDATE", "upserted")]


def test_an_update_that_changes_nothing_observable_produces_no_event(
    memos: Store, listen: Listen, db_path: Path
) -> None:
    memo = Memo(name="same", n=1)
    memo.save()
    changed = listen(signals.row_changed)
    assert Memo.update(name=Memo.name, n=Memo.n).execute() == 1
    memo.save()  # nothing changed but modified_at, a quiet field
    Memo.update(modified_at=Memo.created_at).execute()
    assert changed == []
    assert events_left(db_path) == []
    memo.n = 2
    memo.save()
    assert [c["event"].op for c in changed] == ["UPDATE"]


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE test_changes_memo SET n = n + 1",
        "\n    UPDATE test_changes_memo\n    SET n = n + 1\n",
        "-- a comment first\nUPDATE test_changes_memo SET n = n + 1",
        "/* a comment */ update test_changes_memo SET n = n + 1",
        "WITH t AS (SELECT id FROM test_changes_memo) "
        "UPDATE test_changes_memo SET n = n + 1 WHERE id IN (SELECT id FROM t)",
    ],
    ids=["plain", "leading-whitespace", "line-comment", "block-comment", "cte"],
)
def test_raw_sql_writes_dispatch_right_after_they_commit(
    memos: Store, listen: Listen, db_path: Path, sql: str
) -> None:
    Memo(name="raw", n=1).save()
    changed = listen(signals.row_changed, Memo)
    memos.db.execute_sql(sql)
    assert memo_events(changed) == [("UPDATE", "raw")]
    assert events_left(db_path) == []


@pytest.mark.parametrize("sql", [None, b"SELECT 1", 1])
def test_a_statement_that_is_no_text_is_refused_naming_it(memos: Store, sql: Any) -> None:
    """The drivers' own TypeError ('NoneType' object is not subscriptable) said nothing useful."""
    with pytest.raises(ValidationError, match=r"execute_sql\(\) takes an SQL statement as a str"):
        memos.db.execute_sql(sql)
    with memos.atomic(), pytest.raises(ValidationError, match="statement as a str"):
        memos.db.execute_sql(sql)


def test_a_cte_read_that_looks_like_a_write_still_returns_its_rows(memos: Store) -> None:
    """A ``WITH`` statement naming a write keyword gets a transaction, and keeps its rows."""
    Memo(name="x").save()
    cursor = memos.db.execute_sql(
        "WITH t AS (SELECT 'update' AS word) SELECT word, (SELECT count(*) FROM "
        "test_changes_memo) FROM t"
    )
    assert cursor.fetchall() == [("update", 1)]
    assert not _db.in_transaction(memos)


def test_a_peewee_cte_update_dispatches(memos: Store, listen: Listen, db_path: Path) -> None:
    Memo(name="cte", n=1).save()
    changed = listen(signals.row_changed, Memo)
    ids = Memo.select(Memo.id).cte("ids")
    query = Memo.update(n=Memo.n + 1).with_cte(ids).where(Memo.id.in_(ids.select(ids.c.id)))
    query.execute()  # its row count is -1: Python 3.11's sqlite3 counts only INSERT/UPDATE/...
    assert memo_events(changed) == [("UPDATE", "cte")]
    assert Memo.get().n == 2
    assert events_left(db_path) == []


def test_a_lone_write_with_returning_commits_and_dispatches(
    memos: Store, listen: Listen, db_path: Path
) -> None:
    for i in range(3):
        Memo(name=f"r{i}", n=i).save()
    changed = listen(signals.row_changed, Memo)
    returned = list(Memo.update(n=Memo.n + 1).returning(Memo.name, Memo.n).execute())
    assert sorted((m.name, m.n) for m in returned) == [("r0", 1), ("r1", 2), ("r2", 3)]
    assert sorted(name for _, name in memo_events(changed)) == ["r0", "r1", "r2"]
    assert committed_names(db_path) == ["r0", "r1", "r2"]
    assert events_left(db_path) == []


@pytest.mark.sqlite_only
def test_a_read_outside_a_transaction_takes_no_write_lock(memos: Store, db_path: Path) -> None:
    """Reads (CTE reads too) must not queue behind another process's write transaction."""
    Memo(name="read me").save()
    other = sqlite3.connect(db_path, timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        started = time.monotonic()
        assert [m.name for m in Memo.select()] == ["read me"]
        ids = Memo.select(Memo.id).cte("ids")
        query = Memo.select(Memo.name).join(ids, on=(Memo.id == ids.c.id)).with_cte(ids)
        assert [m.name for m in query] == ["read me"]
        assert time.monotonic() - started < 1
    finally:
        other.rollback()
        other.close()


def test_an_edit_in_the_sqlite3_module_of_another_process_is_dispatched(
    memos: Store, listen: Listen, db_path: Path
) -> None:
    keep, gone = Memo(name="keep", n=1), Memo(name="gone", n=2)
    keep.save()
    gone.save()
    saved = listen(signals.post_save, Memo)
    deleted = listen(signals.post_delete, Memo)
    assert memos.dispatch().events == 0  # with receivers connected, this registers as a listener
    _db.edit(
        db_path,
        "UPDATE test_changes_memo SET name = 'edited' WHERE n = 1",
        "DELETE FROM test_changes_memo WHERE n = 2",
    )
    assert [op for _, _, op, _ in events_left(db_path)] == ["UPDATE", "DELETE"]
    assert saved == [] and deleted == []
    assert memos.dispatch().events == 2
    [update] = saved
    assert (update["instance"].id, update["instance"].name, update["created"]) == (
        keep.id,
        "edited",
        False,
    )
    [delete] = deleted
    assert (delete["instance"].id, delete["instance"].name) == (gone.id, "gone")
    assert events_left(db_path) == []
    assert memos.dispatch().events == 0


# -- capture only while someone listens ---------------------------------------------------


def listeners(path: Path) -> list[str]:
    return [c for (c,) in _db.rows(path, "SELECT claimant FROM tokenstore_listener")]


def shell_edit(path: Path, sql: str) -> None:
    """Run SQL from another process with the plain driver, as a person in a shell might."""
    _db.edit(path, sql)


def test_with_nobody_listening_writes_record_no_events(memos: Store, db_path: Path) -> None:
    Memo(name="unheard", n=1).save()
    Memo.update(n=2).execute()
    shell_edit(db_path, "UPDATE test_changes_memo SET name = 'shell'")
    assert listeners(db_path) == []
    assert events_left(db_path) == []


def test_a_store_with_receivers_registers_and_close_unregisters(
    db_path: Path, listen: Listen
) -> None:
    listen(signals.row_changed)
    store = tokenstore._store.open(db_path)  # opening dispatches: registers at once
    try:
        [claimant] = listeners(db_path)
        assert claimant == store._dispatcher.claimant
    finally:
        store.close()
    assert listeners(db_path) == []


def test_two_threads_registering_as_listener_at_once_both_write(
    memos: Store, listen: Listen, db_path: Path
) -> None:
    saved = listen(signals.post_save)  # after opening: the first write registers
    holding, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def first() -> None:
        try:
            with memos.atomic():
                Memo.create(name="first")  # its transaction has added the listener row
                holding.set()
                release.wait(10)
        except BaseException as exc:
            errors.append(exc)

    def second() -> None:
        try:
            Memo.create(name="second")  # finds no committed row; PostgreSQL waits on the key
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    assert holding.wait(10)
    threads[1].start()
    time.sleep(0.3)  # the second is waiting for the first's lock
    release.set()
    for thread in threads:
        thread.join(20)
    assert errors == []
    assert sorted(c["instance"].name for c in saved) == ["first", "second"]
    assert listeners(db_path) == [memos._dispatcher.claimant]


def test_a_store_whose_last_receiver_left_stops_recording(
    memos: Store, db_path: Path, listen: Listen
) -> None:
    def receiver(sender: Any, **extra: Any) -> None:
        pass

    signals.m2m_changed.connect(receiver, weak=False)
    Memo.create(name="heard")  # the store registers itself as a listener
    signals.m2m_changed.disconnect(receiver)
    for n in range(5):
        Memo.create(name="nobody listens", n=n)
    memos.dispatch()
    assert events_left(db_path) == []
    saved = listen(signals.post_save)
    Memo.create(name="heard again")
    assert [c["instance"].name for c in saved] == ["heard again"]


def quiet_at(folder: Path) -> list[str]:
    """The rest of a quiet writer's arguments: a barrier already open, so it starts at once."""
    barrier = folder / "go"
    barrier.touch()
    return [str(barrier), "quiet"]


def test_a_listener_elsewhere_gets_the_writes_of_a_process_that_does_not_listen(
    memos: Store, listen: Listen, db_path: Path, tmp_path: Path
) -> None:
    """A writer with no receivers leaves its events for the process that listens."""
    saved = listen(signals.post_save, Memo)
    memos.dispatch()  # registers this process as a listener
    result = subprocess.run(
        [sys.executable, WRITER, "write", str(db_path), os.devnull, "3", *quiet_at(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert [op for _, _, op, _ in events_left(db_path)] == ["INSERT"] * 3
    assert memos.dispatch().events == 3
    assert sorted(c["instance"].n for c in saved) == [0, 1, 2]
    assert events_left(db_path) == []


def test_a_writer_with_a_hook_but_no_receivers_leaves_the_events_to_listeners(
    memos: Store, listen: Listen, db_path: Path, tmp_path: Path
) -> None:
    """The writer makes the webhook deliveries; the listener still hears every change."""
    memos.webhooks.create("memos", Memo, "http://127.0.0.1:9/never-answers")
    saved = listen(signals.post_save, Memo)
    memos.dispatch()  # registers this process as a listener
    result = subprocess.run(
        [sys.executable, WRITER, "write", str(db_path), os.devnull, "3", *quiet_at(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert memos.dispatch().events == 3
    assert sorted(c["instance"].n for c in saved) == [0, 1, 2]
    assert events_left(db_path) == []
    assert len(memos.webhooks.deliveries()) == 3  # made once, by the writer


def test_a_listener_that_died_is_forgotten_and_capture_stops(memos: Store, db_path: Path) -> None:
    pid = run_crashing_writer(db_path, "memo", "last words")
    assert any(c.split(":")[1] == str(pid) for c in listeners(db_path))
    assert memos.dispatch().events == 0  # nobody here listens: the dead writer's event is dropped
    assert listeners(db_path) == []
    assert events_left(db_path) == []
    shell_edit(db_path, "UPDATE test_changes_memo SET name = 'unheard'")
    assert events_left(db_path) == []


# -- receivers ----------------------------------------------------------------------------


def test_a_receiver_that_raises_is_logged_and_stops_nothing(
    memos: Store, listen: Listen, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(sender: Any, **kwargs: Any) -> None:
        raise ValueError("receiver bug")

    good = [listen(signals.post_save, Memo) for _ in range(3)]
    signals.post_save.connect(broken, sender=Memo, weak=False)
    try:
        with caplog.at_level(logging.ERROR, logger="tokenstore"), memos.atomic():
            for i in range(3):
                Memo(name=f"m{i}", n=i).save()
        Memo(name="later", n=9).save()
    finally:
        signals.post_save.disconnect(broken)
    for calls in good:
        assert [c["instance"].name for c in calls] == ["m0", "m1", "m2", "later"]
    assert committed_names(db_path) == ["m0", "m1", "m2", "later"]
    assert events_left(db_path) == []
    failures = [r for r in caplog.records if r.exc_info and r.exc_info[0] is ValueError]
    assert len(failures) == 4
    assert "broken" in failures[0].getMessage()


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, sender: Any, **kwargs: Any) -> None:
        self.calls += 1

    def method(self, sender: Any, **kwargs: Any) -> None:
        self.calls += 1


def test_a_receiver_that_closes_the_store_leaves_no_claimed_event_behind(
    memos: Store, listen: Listen, db_path: Path
) -> None:
    """The heard events were deleted on the closed connection, which failed: they stayed
    claimed by this live process, and would have been fired again once it was gone."""
    saved = listen(signals.post_save, Memo)

    def close(sender: Any, **kwargs: Any) -> None:
        memos.close()

    signals.post_save.connect(close, sender=Memo, weak=False)
    try:
        Memo(name="first").save()
        Memo(name="second").save()
    finally:
        signals.post_save.disconnect(close, sender=Memo)
    assert memo_events(saved) == [("INSERT", "first"), ("INSERT", "second")]
    assert events_left(db_path) == []


def test_weak_and_strong_receivers_behave_as_blinker_says(memos: Store) -> None:
    strong, weak, method_owner = Counter(), Counter(), Counter()
    dropped_calls = [0]

    def dropped_receiver(sender: Any, **kwargs: Any) -> None:
        dropped_calls[0] += 1

    before = set(signals.post_save.receivers)  # other tests' leftovers, if any
    signals.post_save.connect(strong, sender=Memo, weak=False)
    signals.post_save.connect(weak, sender=Memo)
    signals.post_save.connect(method_owner.method, sender=Memo)
    signals.post_save.connect(dropped_receiver, sender=Memo)
    try:
        del dropped_receiver  # weakly connected and now unreferenced: blinker forgets it
        gc.collect()
        Memo(name="one").save()
        assert (strong.calls, weak.calls, method_owner.calls, dropped_calls[0]) == (1, 1, 1, 0)
    finally:
        for receiver in (strong, weak, method_owner.method):
            signals.post_save.disconnect(receiver)
    assert set(signals.post_save.receivers) == before


def test_a_muted_signal_calls_no_receiver_as_blinker_says(memos: Store, listen: Listen) -> None:
    saved = listen(signals.post_save, Memo)
    with signals.post_save.muted():
        Memo.create(name="muted")
    Memo.create(name="heard")
    assert [c["instance"].name for c in saved] == ["heard"]


def test_a_coroutine_receiver_is_refused_with_an_error_in_the_log(
    memos: Store, listen: Listen, caplog: pytest.LogCaptureFixture
) -> None:
    """Signals are sent synchronously, as blinker's own send() does (it raises for these)."""

    async def receiver(sender: Any, **kwargs: Any) -> None:
        raise AssertionError("never awaited, so never run")

    saved = listen(signals.post_save, Memo)
    signals.post_save.connect(receiver, sender=Memo, weak=False)
    try:
        with caplog.at_level(logging.ERROR, logger="tokenstore.signals"):
            Memo.create(name="one")
    finally:
        signals.post_save.disconnect(receiver, sender=Memo)
    assert [c["instance"].name for c in saved] == ["one"]
    assert "coroutine function" in caplog.text and "receiver" in caplog.text


def test_receivers_for_another_sender_are_not_called(memos: Store, listen: Listen) -> None:
    other = listen(signals.post_save, sender=User)
    mine = listen(signals.post_save, sender=Memo)
    Memo(name="mine").save()
    assert other == [] and len(mine) == 1


# -- durability ---------------------------------------------------------------------------


def test_sigkill_between_commit_and_dispatch_is_recovered_by_dispatch_exactly_once(
    memos: Store, listen: Listen, db_path: Path
) -> None:
    crashed = run_crashing_writer(db_path, "memo", "survivor")
    assert committed_names(db_path) == ["survivor"]  # the change itself was committed
    assert crashed != os.getpid()

    saved = listen(signals.post_save, Memo)
    assert memos.dispatch().events == 1
    assert [(c["instance"].name, c["created"]) for c in saved] == [("survivor", True)]
    assert events_left(db_path) == []
    assert memos.dispatch().events == 0
    Memo(name="after").save()
    assert [c["instance"].name for c in saved] == ["survivor", "after"]


def test_sigkill_between_commit_and_dispatch_is_recovered_by_the_next_open(
    db_path: Path, listen: Listen
) -> None:
    tokenstore._store.open(db_path).close()
    run_crashing_writer(db_path, "user", "survivor")
    saved = listen(signals.post_save, User)
    with tokenstore._store.open(db_path) as reopened:
        assert [(c["instance"].username, c["created"]) for c in saved] == [("survivor", True)]
        assert events_left(db_path) == []
        assert reopened.dispatch().events == 0
    assert len(saved) == 1


def run_crashing_writer(db_path: Path, kind: str, name: str) -> int:
    """Run a writer that SIGKILLs itself after its commit; return its pid (from its claim)."""
    result = subprocess.run(
        [sys.executable, WRITER, "crash", str(db_path), kind, name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    [(_, _, op, claimed_by)] = events_left(db_path)  # claimed, never finished
    assert op == "INSERT"
    return int(claimed_by.split(":")[1])


def test_processed_events_are_deleted_so_the_table_stays_empty(
    memos: Store, listen: Listen, db_path: Path
) -> None:
    changed = listen(signals.row_changed, Memo)
    for i in range(200):
        memo = Memo(name=f"m{i}", n=i)
        memo.save()
        memo.n += 1000
        memo.save()
    Memo.delete().execute()
    assert len(changed) == 600
    assert events_left(db_path) == []


# -- concurrency --------------------------------------------------------------------------

WRITERS = 4
ROWS_EACH = 2_000


def test_four_processes_write_concurrently_and_every_event_fires_exactly_once(
    memos: Store, tmp_path: Path, db_path: Path
) -> None:
    barrier = tmp_path / "go"
    outs = [tmp_path / f"out{i}.txt" for i in range(WRITERS)]
    errs = [tmp_path / f"err{i}.txt" for i in range(WRITERS)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(WRITERS):
            args = [WRITER, "write", str(db_path), str(outs[i]), str(ROWS_EACH), str(barrier)]
            with errs[i].open("wb") as err:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, *args, *(["dispatch"] if i == 0 else [])],
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                    )
                )
        deadline = time.monotonic() + 30
        while len(list(tmp_path.glob("go.ready.*"))) < WRITERS:
            assert time.monotonic() < deadline, "writers did not start"
            assert all(p.poll() is None for p in procs), [e.read_text() for e in errs]
            time.sleep(0.01)
        barrier.touch()
        deadline = time.monotonic() + 60
        for proc in procs:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    stderr = [e.read_text() for e in errs]
    assert not any("database is locked" in text for text in stderr), stderr
    assert [p.returncode for p in procs] == [0] * WRITERS, stderr
    fired = [pk for out in outs for pk in out.read_text().split()]
    rows = {memo.id.hex for memo in Memo.select(Memo.id)}
    assert len(rows) == WRITERS * ROWS_EACH
    assert len(fired) == len(set(fired)), "some event fired twice"
    assert set(fired) == rows
    assert events_left(db_path) == []


# -- waiting for other processes' commits ----------------------------------------------


def test_wait_for_changes_wakes_for_another_programs_commit_only(
    memos: Store, db_path: Path
) -> None:
    """SQLite polls data_version; PostgreSQL waits for the capture triggers' NOTIFY."""
    memos.webhooks.create("memos", Memo, "http://127.0.0.1:9/never-answers")
    assert memos.wait_for_changes(0.05) is False  # starts watching; nothing happened
    Memo(name="mine", n=1).save()  # this thread's own commit does not count
    assert memos.wait_for_changes(0.05) is False
    started = time.monotonic()
    shell_edit(db_path, "UPDATE test_changes_memo SET name = 'theirs'")
    assert memos.wait_for_changes(10) is True
    assert time.monotonic() - started < 10
    assert memos.wait_for_changes(0.05) is False  # heard once, not again


def test_wait_for_changes_in_two_threads_hears_each_change_once_in_each(
    memos: Store, db_path: Path
) -> None:
    """Each thread waits on its own connection, whose count of commits it must compare
    with its own: against another thread's, nothing changed read as a change at once."""
    memos.webhooks.create("memos", Memo, "http://127.0.0.1:9/never-answers")
    steps = threading.Barrier(3, timeout=30)
    heard: dict[str, list[bool]] = {"first": [], "second": []}

    def watch(name: str) -> None:
        try:
            if name == "first":
                memos.wait_for_changes(0.01)  # starts watching before the edits
            steps.wait()
            steps.wait()  # edited meanwhile
            if name == "first":
                heard[name].append(memos.wait_for_changes(10))
            steps.wait()
            if name == "second":
                memos.wait_for_changes(0.01)  # starts watching after them
            heard[name] += [memos.wait_for_changes(0.05) for _ in range(5)]
        finally:
            memos.db.close()

    threads = [threading.Thread(target=watch, args=(n,), daemon=True) for n in heard]
    for thread in threads:
        thread.start()
    steps.wait()
    for n in range(3):
        shell_edit(db_path, f"UPDATE test_changes_memo SET n = {n}")
        Memo(name=f"edit {n}", n=n).save()
    steps.wait()
    steps.wait()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert heard == {"first": [True] + [False] * 5, "second": [False] * 5}


def test_opening_a_url_without_the_postgres_extra_names_it(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "sys.modules['psycopg'] = None  # as if the extra were not installed\n"
        "from tokenstore._cli import main\n"
        "sys.exit(main(['--db', 'postgresql://app@127.0.0.1:9/app', 'init']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert "pip install 'tokenstore[postgres]'" in done.stderr


def test_registering_again_on_postgres_leaves_triggers_that_match_alone(pg_url: str) -> None:
    """Every process registers its models when it starts; writers must not queue behind that."""
    with tokenstore._store.open(pg_url) as first:
        first.register(Memo)
    writer = _db.Raw(pg_url)
    try:
        writer.execute("LOCK TABLE test_changes_memo IN ROW EXCLUSIVE MODE")  # a write under way
        with tokenstore._store.open(pg_url) as second:
            second.db.execute_sql("SET lock_timeout = '2s'")  # a DROP TRIGGER would wait: fail
            second.register(Memo)
            assert second.dispatch().events == 0
    finally:
        writer.rollback()
        writer.close()


def test_events_waiting_for_dispatch_fire_once_among_four_processes(
    memos: Store, listen: Listen, db_path: Path, tmp_path: Path
) -> None:
    """Dispatchers racing for the same events each take a disjoint share (SKIP LOCKED)."""
    listen(signals.post_save, Memo)
    memos.dispatch()  # a listener is registered, so the inserts below are captured
    stamp = "2024-10-24T12:00:00.000Z"
    ids = [uuid.uuid4().hex for _ in range(300)]
    rows = ", ".join(
        f"('{row_id}', 'mem_{row_id[:26].upper()}', 1, '{stamp}', '{stamp}', 'w{i}', {i}, '')"
        for i, row_id in enumerate(ids)
    )
    _db.edit(db_path, f"INSERT INTO test_changes_memo VALUES {rows}")
    assert len(events_left(db_path)) == len(ids)
    barrier = tmp_path / "go"
    outs = [tmp_path / f"out{i}.txt" for i in range(WRITERS)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                WRITER,
                "write",
                str(db_path),
                str(out),
                "0",
                str(barrier),
                "dispatch",
            ],
            stderr=subprocess.PIPE,
        )
        for out in outs
    ]
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob("go.ready.*"))) < WRITERS and time.monotonic() < deadline:
        time.sleep(0.01)
    barrier.touch()
    errors = [proc.communicate(timeout=60)[1].decode() for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * WRITERS, errors
    fired = [pk for out in outs for pk in out.read_text().split()]
    assert sorted(fired) == sorted(ids)  # every event, none twice
    assert events_left(db_path) == []


class _Owner:
    def method(self, sender: Any, **extra: Any) -> None:
        pass


@pytest.mark.parametrize(
    "how",
    [
        "any-sender",
        "one-sender",
        "connect_via",
        "weak-gone",
        "connected_to",
        "bound-method-gone",
        "sender-gone",
    ],
)
def test_listening_follows_blinker_s_receivers_whichever_way_they_left(
    memos: Store, db_path: Path, how: str
) -> None:
    """A process stops counting as a listener once its last receiver is gone."""

    def receiver(sender: Any, **extra: Any) -> None:
        pass

    if how == "any-sender":
        signals.post_save.connect(receiver, weak=False)
        assert signals.any_event_receivers()
        signals.post_save.disconnect(receiver)
    elif how == "one-sender":
        signals.post_save.connect(receiver, sender=Memo, weak=False)
        assert signals.any_event_receivers()
        signals.post_save.disconnect(receiver, sender=Memo)
    elif how == "connect_via":
        signals.row_changed.connect_via(Memo)(receiver)
        assert signals.any_event_receivers()
        signals.row_changed.disconnect(receiver, sender=Memo)
    elif how == "weak-gone":
        signals.post_delete.connect(receiver, sender=Memo)  # weak: goes with the function
        assert signals.any_event_receivers()
        del receiver
        gc.collect()
    elif how == "connected_to":
        with signals.m2m_changed.connected_to(receiver, sender=Memo):
            Memo.create(name="heard")
            assert listeners(db_path) == [memos._dispatcher.claimant]
    elif how == "bound-method-gone":
        owner = _Owner()
        signals.row_changed.connect(owner.method)  # weak: goes with its instance
        assert signals.any_event_receivers()
        del owner
        gc.collect()
    else:
        sender = type("Throwaway", (), {})
        signals.post_save.connect(receiver, sender=sender, weak=False)
        assert signals.any_event_receivers()
        del sender
        gc.collect()  # blinker forgets a sender that is gone, and its receivers with it
    try:
        assert not signals.any_event_receivers()
        memos.dispatch()
        assert listeners(db_path) == []
        Memo.create(name="nobody hears this")
        shell_edit(db_path, "UPDATE test_changes_memo SET n = n + 1")
        assert events_left(db_path) == []  # nothing recorded: no listener, no hook
    finally:
        if how == "sender-gone":
            signals.post_save.disconnect(receiver)


def test_a_receiver_disconnected_from_one_sender_still_hears_the_others(
    memos: Store, db_path: Path
) -> None:
    """``disconnect(fn, sender=X)`` of a receiver connected for any sender leaves it connected."""
    heard: list[str] = []

    def receiver(sender: Any, instance: Any, **extra: Any) -> None:
        heard.append(instance.name)

    signals.post_save.connect(receiver, weak=False)
    try:
        signals.post_save.disconnect(receiver, sender=Memo)
        assert signals.any_event_receivers()
        Memo.create(name="still heard")
        assert listeners(db_path) == [memos._dispatcher.claimant]
        assert heard == ["still heard"]
    finally:
        signals.post_save.disconnect(receiver)


@pytest.mark.parametrize("how", ["receivers.clear()", "del receivers[id]", "receivers.pop()"])
def test_receivers_removed_from_blinker_s_mapping_stop_the_listening_too(
    memos: Store, db_path: Path, how: str
) -> None:
    """``Signal.receivers`` edited by hand leaves its ids in blinker's by-sender index."""

    def receiver(sender: Any, **extra: Any) -> None:
        raise AssertionError("removed, so never called")

    signals.post_save.connect(receiver, sender=Memo, weak=False)
    try:
        Memo.create(name="registers")
        assert listeners(db_path) == [memos._dispatcher.claimant]
        if how == "receivers.clear()":
            signals.post_save.receivers.clear()
        elif how == "del receivers[id]":
            del signals.post_save.receivers[id(receiver)]
        else:
            signals.post_save.receivers.pop(id(receiver))
        assert not signals.any_event_receivers()
        Memo.create(name="its commit leaves the listener table")
        assert listeners(db_path) == []
        shell_edit(db_path, "UPDATE test_changes_memo SET n = n + 1")
        assert events_left(db_path) == []  # another program's write is recorded for nobody
    finally:
        signals.post_save.disconnect(receiver)  # blinker's by-sender index too


def test_a_store_whose_signals_are_all_muted_stops_listening_until_unmuted(
    memos: Store, db_path: Path, listen: Listen
) -> None:
    """While muted, tokenstore would call no receiver: no capture, no claim of others' events."""
    saved = listen(signals.post_save, Memo)
    Memo.create(name="heard")
    assert listeners(db_path) == [memos._dispatcher.claimant]
    with signals.post_save.muted():
        Memo.create(name="muted")
        assert listeners(db_path) == []
        shell_edit(db_path, "UPDATE test_changes_memo SET n = n + 1")
        assert events_left(db_path) == []
    Memo.create(name="heard again")
    assert listeners(db_path) == [memos._dispatcher.claimant]
    assert [c["instance"].name for c in saved] == ["heard", "heard again"]


def test_a_deferred_foreign_key_must_be_resolved_before_its_model_is_registered(
    store: Store, listen: Listen
) -> None:
    """Unresolved, it has no type and no final column name: its table could only come out wrong."""

    class Later(peewee.Model):
        name = peewee.TextField()
        target = peewee.DeferredForeignKey("LaterTarget", null=True)

    with pytest.raises(ValidationError, match=r"Later\.target .* 'latertarget'"):
        store.register(Later)
    assert not store.db.table_exists(Later._meta.table_name)

    class LaterTarget(peewee.Model):
        name = peewee.TextField()

    store.register(LaterTarget)
    store.register(Later)
    saved = listen(signals.post_save, Later)
    target = LaterTarget.create(name="t")
    Later.create(name="l", target=target)
    assert [(c["instance"].name, c["instance"].target_id) for c in saved] == [("l", target.id)]


def test_a_model_whose_table_lacks_a_column_is_refused_and_its_writes_keep_working(
    store: Store, listen: Listen
) -> None:
    """A field added since the table was made: the triggers would name a column it lacks."""

    class Grown(peewee.Model):
        name = peewee.TextField()

    store.register(Grown)
    Grown._meta.add_field("extra", peewee.TextField(null=True))
    with pytest.raises(ValidationError, match=r"Grown: its table 'grown' has no column 'extra'"):
        store.register(Grown)  # as every process start does
    Grown._meta.remove_field("extra")
    saved = listen(signals.post_save, Grown)
    Grown.create(name="still works")
    assert [c["instance"].name for c in saved] == ["still works"]


def test_a_model_on_a_view_is_refused_naming_it(store: Store) -> None:
    """A view has no row triggers: the driver's error came out of register() as it was."""

    class Summary(peewee.Model):
        total = peewee.IntegerField()

        class Meta:
            table_name = "summary"

    store.db.execute_sql("CREATE VIEW summary AS SELECT 1 AS id, 2 AS total")
    with pytest.raises(ValidationError, match=r"Summary: 'summary' is a view"):
        store.register(Summary)
    assert Summary not in store.models.values()


def test_a_model_register_refused_is_left_unbound_and_registers_once_its_table_is_fixed(
    store: Store, listen: Listen
) -> None:
    """It stayed bound to the store: a save reached the table with a raw driver error
    ('table ... has no column named extra'), not the error of an unregistered model."""

    class Lacking(tokenstore.ABIDModel):
        abid_prefix = "lck_"
        abid_uri_src = "name"
        name = peewee.TextField()
        extra = peewee.TextField(default="")

    columns = "id TEXT PRIMARY KEY, abid TEXT UNIQUE, created_at TEXT, modified_at TEXT, "
    store.db.execute_sql(f"CREATE TABLE lacking ({columns}created_by_id INTEGER, name TEXT)")
    with pytest.raises(ValidationError, match=r"Lacking: its table 'lacking' has no column"):
        store.register(Lacking)
    with pytest.raises(StoreError, match="Lacking is not registered"):
        Lacking.create(name="refused")
    store.db.execute_sql("ALTER TABLE lacking ADD COLUMN extra TEXT")
    store.register(Lacking)
    saved = listen(signals.post_save, Lacking)
    Lacking.create(name="now")
    assert [c["instance"].name for c in saved] == ["now"]


def test_an_abid_model_on_a_view_is_refused_naming_it(store: Store) -> None:
    """Its ABID index was made first: the driver's 'views may not be indexed' (SQLite) or
    '"summary" is not a table' came out of register() instead."""

    class Summary(tokenstore.ABIDModel):
        abid_prefix = "sum_"
        name = peewee.TextField()

        class Meta:
            table_name = "abid_summary"

    store.db.execute_sql(
        "CREATE VIEW abid_summary AS SELECT 'x' AS id, 'sum_x' AS abid, '' AS created_at, "
        "'' AS modified_at, NULL AS created_by_id, 'n' AS name"
    )
    with pytest.raises(ValidationError, match=r"Summary: 'abid_summary' is a view"):
        store.register(Summary)
    assert Summary not in store.models.values()
    with pytest.raises(StoreError, match="Summary is not registered"):
        Summary.create(name="refused")


def test_a_model_registered_again_with_a_new_field_signals_and_sends_it(
    store: Store, listen: Listen
) -> None:
    """Registering again refreshes the triggers; the instances and bodies built from events too."""

    class Grown(peewee.Model):
        name = peewee.TextField()

    store.register(Grown)
    store.webhooks.create("grown", Grown, "http://127.0.0.1:9/")
    saved = listen(signals.post_save, Grown)
    Grown.create(name="before")
    Grown._meta.add_field("extra", peewee.TextField(null=True))
    try:
        store.db.execute_sql('ALTER TABLE "grown" ADD COLUMN "extra" TEXT')
        store.register(Grown)
        Grown.create(name="after", extra="new")
    finally:
        Grown._meta.remove_field("extra")
    assert [c["instance"].__data__.get("extra") for c in saved] == [None, "new"]
    sent = [json.loads(d.payload)["data"]["fields"] for d in store.webhooks.deliveries()]
    assert sorted(f.get("extra", "-") for f in sent) == ["-", "new"]


@pytest.mark.parametrize(
    "table",
    ["tokenstore_change_event", "Tokenstore_Listener", "tokenstore_delivery_log", "tokenstore_x"],
)
def test_a_model_on_one_of_tokenstore_s_tables_is_refused(store: Store, table: str) -> None:
    """Capture on the event table itself would record events about events, without end."""

    class Intruder(peewee.Model):
        op = peewee.TextField()

        class Meta:
            table_name = table

    with pytest.raises(ValidationError, match=rf"'{table}' .* tokenstore's own"):
        store.register(Intruder)
    assert Intruder not in list(store._registry)
    [(triggers,)] = _db.rows(
        store,
        "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'tokenstore_x%'"
        if store.path is not None
        else "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'tokenstore_x%'",
    )
    assert triggers == 0


@pytest.mark.parametrize(
    ("module", "name", "taken"),
    [("app.models", "Note", "note_first"), ("tokenstore", "User", "tokenstore_user")],
)
def test_a_second_model_with_a_known_ref_is_refused(
    store: Store, module: str, name: str, taken: str
) -> None:
    """Hooks name a model by module.ClassName: two classes of one name would share hooks."""

    def model(table: str) -> type[peewee.Model]:
        meta = type("Meta", (), {"table_name": table})
        return type(name, (peewee.Model,), {"__module__": module, "Meta": meta})

    if module != "tokenstore":
        store.register(model(taken))
    with pytest.raises(
        ValidationError, match=rf"{module}.{name} .* registered for table '{taken}'"
    ):
        store.register(model("note_second"))
    assert store.model_for_ref(f"{module}.{name}")._meta.table_name == taken
    assert not store.db.table_exists("note_second")


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"private_fields": "secret"}, r"Vault\.private_fields must be a tuple of field names"),
        ({"private_fields": ("secrte",)}, r"Vault\.private_fields names 'secrte', which is no"),
        ({"private_fields": ("pin_code",)}, r"names 'pin_code', which is no field .*secret"),
        ({"quiet_fields": ("seen", 3)}, r"Vault\.quiet_fields must be a tuple of field names"),
        # Every event, signal and message names its row by the key: it was sent all the same.
        ({"private_fields": ("secret", "id")}, r"Vault\.private_fields names the primary key 'id'"),
    ],
)
def test_private_and_quiet_fields_must_name_fields(
    store: Store, attributes: dict[str, Any], message: str
) -> None:
    """A misspelt private field would have its value captured, signalled and sent."""
    meta = type("Meta", (), {"table_name": "vault"})
    body = {
        "__module__": __name__,
        "Meta": meta,
        "secret": peewee.TextField(column_name="pin_code"),
    }
    model = type("Vault", (peewee.Model,), {**body, "seen": peewee.IntegerField(default=0)})
    for name, value in attributes.items():
        setattr(model, name, value)
    with pytest.raises(ValidationError, match=message):
        store.register(model)
    assert not store.db.table_exists("vault")


def test_a_join_table_in_tokenstore_s_namespace_is_refused(store: Store) -> None:
    class Left(peewee.Model):
        name = peewee.TextField()

    class Right(peewee.Model):
        name = peewee.TextField()

    class Link(peewee.Model):
        left = peewee.ForeignKeyField(Left)
        right = peewee.ForeignKeyField(Right)

        class Meta:
            table_name = "tokenstore_listener"

    Left._meta.add_field("rights", peewee.ManyToManyField(Right, through_model=Link))
    with pytest.raises(ValidationError, match=r"'tokenstore_listener' .* tokenstore's own"):
        store.register(Left)
    assert not store.db.table_exists("left")


def test_a_table_named_like_another_but_for_case_is_refused(store: Store, listen: Listen) -> None:
    """SQLite's names ignore case: "Thing" and "thing" would be one table with two models."""

    class Upper(peewee.Model):
        name = peewee.TextField()

        class Meta:
            table_name = "Thing"

    class Lower(peewee.Model):
        name = peewee.TextField()

        class Meta:
            table_name = "thing"

    store.register(Upper)
    with pytest.raises(ValidationError, match=r"'thing' .* 'Thing' .* case"):
        store.register(Lower)
    saved = listen(signals.post_save)
    Upper.create(name="u")
    assert [(c["sender"], c["instance"].name) for c in saved] == [(Upper, "u")]


def test_tables_whose_names_differ_by_a_quote_keep_their_own_capture(
    store: Store, listen: Listen
) -> None:
    """A table's triggers are named after its whole name: registering another never drops them."""

    class Quoted(peewee.Model):
        name = peewee.TextField()

        class Meta:
            table_name = 'memo "quoted"'

    class Unquoted(peewee.Model):
        name = peewee.TextField()

        class Meta:
            table_name = "memo quoted"

    store.register(Quoted)
    store.register(Quoted)  # again, as every process start does
    store.register(Unquoted)
    saved = listen(signals.post_save)
    Quoted.create(name="q")
    Unquoted.create(name="u")
    assert [(c["sender"], c["instance"].name) for c in saved] == [(Quoted, "q"), (Unquoted, "u")]


def test_a_column_whose_name_holds_a_quote_is_captured(store: Store, listen: Listen) -> None:
    class Remark(peewee.Model):
        text = peewee.TextField(column_name="it's")

    store.register(Remark)
    saved = listen(signals.post_save)
    Remark.create(text="hello")
    assert [(c["sender"], c["instance"].text) for c in saved] == [(Remark, "hello")]


def test_names_holding_dollar_quotes_are_captured(store: Store, listen: Listen) -> None:
    """PostgreSQL's trigger functions are dollar-quoted: a ``$$`` in a name ended the body."""

    class Price(peewee.Model):
        amount = peewee.TextField(column_name="in $$")

        class Meta:
            table_name = "price $$ list"

    class Shop(peewee.Model):
        prices = peewee.ManyToManyField(Price, backref="shops")

    Shop.prices.through_model._meta.table_name = "shop $$ price"
    store.register(Price)
    store.register(Shop)
    saved, changed = listen(signals.post_save), listen(signals.m2m_changed)
    price = Price.create(amount="$$5")
    Shop.create().prices.add(price)
    assert [c["instance"].amount for c in saved if c["sender"] is Price] == ["$$5"]
    assert [(c["sender"], c["action"]) for c in changed] == [(Shop, "add"), (Price, "add")]


def test_a_blob_primary_key_is_captured_as_hex(store: Store, listen: Listen) -> None:
    class Digest(peewee.Model):
        key = peewee.BlobField(primary_key=True)
        note = peewee.TextField()

    store.register(Digest)
    saved, deleted, changed = (
        listen(signals.post_save),
        listen(signals.post_delete),
        listen(signals.row_changed),
    )
    row = Digest.create(key=b"\x01\xff", note="a")
    Digest.update(note="b").execute()
    row.delete_instance()
    # SQLite's hex() writes upper case; PostgreSQL's triggers write the same.
    assert [c["event"].pk for c in changed] == ["01FF"] * 3
    assert [(c["instance"].key, c["instance"].note) for c in saved] == [
        (b"\x01\xff", "a"),
        (b"\x01\xff", "b"),
    ]
    assert [c["instance"].key for c in deleted] == [b"\x01\xff"]


def test_floating_point_values_are_captured_to_the_last_digit(store: Store, listen: Listen) -> None:
    class Reading(peewee.Model):
        value = peewee.DoubleField(null=True)
        exact = peewee.DecimalField(max_digits=20, decimal_places=6, null=True)

    store.register(Reading)
    saved, changed = listen(signals.post_save), listen(signals.row_changed)
    values = [
        123456789.12345679,
        1.0000000000000002,
        2.2250738585072014e-308,
        -2.5e300,
        float("inf"),
        None,
    ]
    for value in values:
        Reading.create(value=value, exact=Decimal("12345678.123456"))
    stored = [r.value for r in Reading.select().order_by(Reading.id)]
    assert stored == values
    assert [c["instance"].value for c in saved] == stored
    finite = [c["event"].row["value"] for c in changed][:4]  # PostgreSQL's JSON: "Infinity"
    assert finite == stored[:4]
    assert {c["instance"].exact for c in saved} == {Decimal("12345678.123456")}


def test_a_decimal_is_signalled_and_sent_as_stored(store: Store, listen: Listen) -> None:
    """PostgreSQL keeps a NUMERIC exactly; read from the event's JSON as a float, it was rounded."""

    class Ledger(peewee.Model):
        amount = peewee.DecimalField(max_digits=40, decimal_places=20, null=True)

    store.register(Ledger)
    store.webhooks.create("ledger", Ledger, "http://127.0.0.1:9/")
    saved = listen(signals.post_save, Ledger)
    for amount in ("12345678901234567890.12345678901234567890", "0.10000000000000000001"):
        Ledger.create(amount=Decimal(amount))
    Ledger.create(amount=None)
    stored = [row.amount for row in Ledger.select().order_by(Ledger.id)]
    assert [c["instance"].amount for c in saved] == stored
    sent = [json.loads(d.payload)["data"]["fields"] for d in store.webhooks.deliveries()]
    assert sorted(f["amount"] or "" for f in sent) == sorted(str(a or "") for a in stored)


def test_a_float_field_keeps_every_digit_on_both_backends(store: Store, listen: Listen) -> None:
    """peewee makes a FloatField PostgreSQL's 4-byte REAL; the store makes it SQLite's 8 bytes."""

    class Sample(peewee.Model):
        value = peewee.FloatField()

    store.register(Sample)
    saved = listen(signals.post_save)
    values = [0.1 + 0.2, 1e300, 5e-324, 123456789.12345679]
    for value in values:
        Sample.create(value=value)
    assert [s.value for s in Sample.select().order_by(Sample.id)] == values
    assert [c["instance"].value for c in saved] == values
    assert [c["event"].row["value"] for c in saved] == values


def test_a_foreign_key_to_a_floating_point_or_decimal_key_keeps_every_digit(
    store: Store, listen: Listen
) -> None:
    """The key's column holds what the key it refers to holds: recorded as a plain column,
    SQLite wrote 15 digits of the REAL and PostgreSQL's NUMERIC was read back as a float."""

    class Reading(peewee.Model):
        id = peewee.DoubleField(primary_key=True)

    class Lot(peewee.Model):
        id = peewee.DecimalField(primary_key=True, max_digits=30, decimal_places=2)

    class Note(peewee.Model):
        reading = peewee.ForeignKeyField(Reading)
        lot = peewee.ForeignKeyField(Lot)

    for model in (Reading, Lot, Note):
        store.register(model)
    saved = listen(signals.post_save, Note)
    reading = Reading.create(id=0.1 + 0.2)
    lot = Lot.create(id=Decimal("12345678901234567.89"))
    Note.create(reading=reading, lot=lot)
    stored = Note.select(Note.reading, Note.lot).tuples().get()
    assert [(c["instance"].reading_id, c["instance"].lot_id) for c in saved] == [stored]


def test_null_empty_and_bytes_in_a_blob_are_captured_as_they_are(
    store: Store, listen: Listen
) -> None:
    """SQLite's hex(NULL) is '', which read back as b'': a NULL blob must stay None."""

    class Attachment(peewee.Model):
        data = peewee.BlobField(null=True)

    store.register(Attachment)
    saved, deleted = listen(signals.post_save), listen(signals.post_delete)
    for data in (None, b"", b"\x00\xab"):
        Attachment.create(data=data)
    Attachment.delete().execute()
    assert [c["event"].row["data"] for c in saved] == [None, "", "00AB"]
    assert [c["instance"].data for c in saved] == [None, b"", b"\x00\xab"]
    assert [c["instance"].data for c in deleted] == [None, b"", b"\x00\xab"]


def test_a_foreign_key_to_a_blob_primary_key_is_captured_as_hex(
    store: Store, listen: Listen
) -> None:
    """The key's column holds the blob too: recorded raw, SQLite's JSON refused the write."""

    class Archive(peewee.Model):
        key = peewee.BlobField(primary_key=True)

    class Part(peewee.Model):
        archive = peewee.ForeignKeyField(Archive, null=True)

    class Copy(peewee.Model):  # its primary key is the foreign key
        archive = peewee.ForeignKeyField(Archive, primary_key=True)

    for model in (Archive, Part, Copy):
        store.register(model)
    saved, deleted = listen(signals.post_save), listen(signals.post_delete)
    archive = Archive.create(key=b"\x01\xff")
    Part.create(archive=archive)
    Copy.create(archive=archive)
    Part.delete().execute()
    assert [c["event"].pk for c in saved[1:]] == ["1", "01FF"]
    assert [c["event"].row["archive_id"] for c in saved[1:] + deleted] == ["01FF"] * 3
    assert [c["instance"].archive_id for c in saved[1:] + deleted] == [b"\x01\xff"] * 3


def test_a_flag_is_recorded_as_zero_or_one_on_both_backends(store: Store, listen: Listen) -> None:
    """SQLite has no booleans; PostgreSQL's true and false read as its 1 and 0."""

    class Switch(peewee.Model):
        on = peewee.BooleanField(null=True)

    store.register(Switch)
    changed = listen(signals.row_changed)
    for on in (True, False, None):
        Switch.create(on=on)
    store.users.create("root", superuser=True)
    rows = [c["event"].row for c in changed]
    assert [row["on"] for row in rows[:3]] == [1, 0, None]
    assert [type(row["on"]) for row in rows[:2]] == [int, int]
    assert (rows[3]["username"], rows[3]["is_superuser"]) == ("root", 1)


def test_a_naive_datetime_is_sent_in_the_same_iso_form_by_both_backends(store: Store) -> None:
    """SQLite keeps ``str(datetime)`` (a space), PostgreSQL's JSON a ``T``: the body is ISO."""

    class Visit(peewee.Model):
        at = peewee.DateTimeField()

    store.register(Visit)
    store.webhooks.create("visits", Visit, "http://127.0.0.1:9/")
    for at in (datetime(2020, 1, 2, 3, 4, 5, 678901), datetime(2020, 1, 2, 3, 4, 5)):
        Visit.create(at=at)
    sent = [json.loads(d.payload)["data"]["fields"]["at"] for d in store.webhooks.deliveries()]
    assert sorted(sent) == ["2020-01-02T03:04:05", "2020-01-02T03:04:05.678901"]


def test_bytes_are_sent_in_base64_as_the_readme_says(store: Store) -> None:
    """Events keep a blob as hex; the body, a key and a foreign key to one included, has base64."""

    class Scan(peewee.Model):
        key = peewee.BlobField(primary_key=True)
        data = peewee.BlobField(null=True)

    class Page(peewee.Model):
        scan = peewee.ForeignKeyField(Scan)

    store.register(Scan)
    store.register(Page)
    store.webhooks.create("scans", Scan, "http://127.0.0.1:9/scans")
    store.webhooks.create("pages", Page, "http://127.0.0.1:9/pages")
    for key, data in ((b"\x00\xab", b"\xff\x00"), (b"\x01", b""), (b"\x02", None)):
        Page.create(scan=Scan.create(key=key, data=data))
    sent = [json.loads(d.payload)["data"] for d in store.webhooks.deliveries()]
    scans = sorted(
        (d["pk"], d["fields"]["key"], d["fields"]["data"]) for d in sent if "data" in d["fields"]
    )
    assert scans == [("AKs=", "AKs=", "/wA="), ("AQ==", "AQ==", ""), ("Ag==", "Ag==", None)]
    assert sorted(d["fields"]["scan"] for d in sent if "scan" in d["fields"]) == [
        "AKs=",
        "AQ==",
        "Ag==",
    ]


def test_a_value_json_cannot_hold_is_sent_as_stored_and_the_write_goes_on(store: Store) -> None:
    """A field's Python value is converted inside the commit: one JSON refuses failed the save."""

    class CalendarField(peewee.TextField):
        """Stored as JSON text, read back keyed by date: JSON's keys are text only."""

        def db_value(self, value: Any) -> Any:
            return None if value is None else json.dumps(value)

        def python_value(self, value: Any) -> Any:
            if value is None:
                return None
            return {datetime.fromisoformat(day).date(): n for day, n in json.loads(value).items()}

    class Plan(peewee.Model):
        days = CalendarField(null=True)

    store.register(Plan)
    store.webhooks.create("plans", Plan, "http://127.0.0.1:9/")
    Plan.create(days={"2024-01-02": 3})
    assert [Plan.get().days] == [{datetime(2024, 1, 2).date(): 3}]
    [delivery] = store.webhooks.deliveries()
    assert json.loads(delivery.payload)["data"]["fields"]["days"] == '{"2024-01-02": 3}'


def test_a_refused_registration_leaves_no_table_behind(store: Store) -> None:
    """Too wide to capture on SQLite (63 columns), to be a table on PostgreSQL (1600)."""
    width = 70 if store.path is not None else 1601
    columns = {f"c{i}": peewee.IntegerField(default=0) for i in range(width)}
    Wide = type("Wide", (peewee.Model,), {"__module__": __name__, **columns})
    with pytest.raises(tokenstore.TokenstoreError, match="at most"):
        store.register(Wide)
    assert not store.db.table_exists(Wide._meta.table_name)
    assert Wide not in list(store._registry)


def test_registering_the_delivery_model_is_refused(memos: Store, listen: Listen) -> None:
    """Its changes are not captured; registered, it got triggers recording every delivery and
    every outcome as change events, in the file, for every process."""
    memos.webhooks.create("memos", Memo, "http://127.0.0.1:9/")
    with pytest.raises(ValidationError, match="WebhookDelivery cannot be registered"):
        memos.register(tokenstore.WebhookDelivery)
    changed = listen(signals.row_changed)
    Memo.create(name="one")
    memos.dispatch()
    assert [c["event"].table for c in changed] == [Memo._meta.table_name]


def test_a_field_made_private_is_left_out_of_events_recorded_before(
    store: Store, db_path: Path, listen: Listen
) -> None:
    """A rolling deploy: events recorded (with the field) by triggers of the model as it was
    are claimed by a process whose model lists it in private_fields. Their signals and
    webhook bodies carried its value: they were built from every column the event held."""

    class Vault(peewee.Model):
        name = peewee.TextField()
        secret = peewee.TextField()

    store.register(Vault)
    hook = store.webhooks.create("vaults", Vault, "http://127.0.0.1:9/")
    with _db.Raw(db_path) as raw:  # another process of the old code
        raw.execute("INSERT INTO vault (name, secret) VALUES ('v', 'kept private')")
    Vault.private_fields = ("secret",)
    store.register(Vault)
    saved = listen(signals.post_save, sender=Vault)
    store.dispatch()
    assert [c["instance"].__data__ for c in saved] == [{"id": 1, "name": "v"}]
    [delivery] = store.webhooks.deliveries(hook)
    assert json.loads(delivery.payload)["data"]["fields"] == {"id": 1, "name": "v"}


def test_register_inside_a_transaction_is_refused_and_changes_nothing(store: Store) -> None:
    """A rollback undid the table and triggers register() made in the block, while the store
    went on counting the model as captured: a hook on it was accepted and never sent."""

    class Later(peewee.Model):
        text = peewee.TextField()

    refused = pytest.raises(StoreError, match=r"register\(\) was called inside a transaction")
    with store.atomic(), refused:
        store.register(Later)
    assert Later not in list(store._registry)
    assert not store.db.table_exists(Later._meta.table_name)


def test_an_event_recorded_with_sqlites_inf_reads_as_infinity_and_strings_stay_as_written() -> None:
    """SQLite before 3.45 writes an infinite REAL as a bare ``Inf``; text saying so is text."""
    row = '{"a":Inf,"b":-Inf,"c":"x:Inf,\\"Inf\\\\","d":"\\\\","e":1.5}'
    event = ChangeEvent.from_row((1, "t", "INSERT", "1", None, row, "2026-01-01T00:00:00.000Z"))
    assert event.new == {
        "a": float("inf"),
        "b": float("-inf"),
        "c": 'x:Inf,"Inf\\',
        "d": "\\",
        "e": 1.5,
    }


@pytest.mark.parametrize("written", ["{bad", "[1, 2]", '"text"'])
def test_an_event_row_that_cannot_be_read_is_dropped_and_saves_go_on(
    memos: Store, db_path: Path, listen: Listen, caplog: pytest.LogCaptureFixture, written: str
) -> None:
    """Another program (or the sqlite3 shell) wrote an event row that is no row of JSON: it
    must not make every later save fail. It is dropped, with its id in the error log."""
    memos.webhooks.create("memos", Memo, "http://127.0.0.1:9/")
    with _db.Raw(db_path) as raw:
        raw.execute(
            f"INSERT INTO {EVENT_TABLE} (table_name, op, row_pk, old_row, new_row) "
            "VALUES (?, 'INSERT', 'x', NULL, ?)",
            (Memo._meta.table_name, written),
        )
    saved = listen(signals.post_save)
    Memo.create(name="after")
    assert memo_events(saved) == [("INSERT", "after")]
    assert events_left(db_path) == []
    assert "cannot be read" in caplog.text
    assert [d.event_type for d in memos.webhooks.deliveries()] == ["memo.created"]


@pytest.mark.sqlite_only
def test_a_consumer_added_while_another_thread_probes_is_seen_whole(store: Store) -> None:
    """Another thread commits through a store still being opened (models are bound to the
    newest store as it opens): its dispatcher gained a consumer in two steps, the list and
    then the probe's column, and a probe between the two failed that commit (zip()'s
    ValueError, seen in the several-threads test)."""
    dispatcher = store._dispatcher
    errors: list[Exception] = []
    stop = threading.Event()

    def probe() -> None:
        conn = store.db.connection()
        while not stop.is_set():
            try:
                dispatcher._listening_and_wanted(conn)
            except ValueError as exc:
                errors.append(exc)
                return

    switching = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    try:
        for _ in range(1000):  # SQLite's result rows hold at most 2000 columns
            dispatcher.add_consumer(lambda events: None, "0")
            if errors:
                break
    finally:
        stop.set()
        prober.join(10)
        sys.setswitchinterval(switching)
    assert not prober.is_alive()
    assert errors == []
