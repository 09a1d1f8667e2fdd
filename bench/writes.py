"""What change capture costs a write, against plain peewee on the same model and table.

Run: ``.venv/bin/python bench/writes.py``

One ABIDModel subclass is measured two ways in the same run, rebinding it
between them: registered with a tokenstore store (triggers that ask whether
anyone listens; with no receivers and no webhooks, a lone write has nothing
to claim and runs in SQLite's implicit transaction), and bound to a plain
``peewee.SqliteDatabase`` on another file with the same pragmas and no
triggers. The variants alternate round by
round and the best round of each counts, so a busy machine slows both alike
instead of whichever ran during the noise.

Goals: single saves with capture >= 0.8x plain (capture costs at most 25%);
a bulk update of 10,000 rows with capture takes at most 2x as long.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import peewee
from _timing import timed

import tokenstore._store
from tokenstore._models import ABIDModel, User

SAVES = 2_000
BULK_ROWS = 10_000
REPEATS = 9

GOAL_SAVE = 1 / 1.25  # capture costs at most 25%: rate ratio >= 0.8
GOAL_BULK = 2.0  # at most twice the time

PRAGMAS = {"journal_mode": "wal", "synchronous": "normal", "foreign_keys": 1, "busy_timeout": 10000}


class Item(ABIDModel):
    """A small application record, as an app would register it."""

    abid_prefix = "itm_"

    name = peewee.TextField()
    count = peewee.IntegerField(default=0)

    class Meta:
        table_name = "bench_item"


class PlainDatabase(peewee.SqliteDatabase):
    """A plain peewee database; ABIDModel reads the default owner from it."""

    system_user_id: int | None = None


FLOOR_LABEL = "plain + row triggers that do nothing (floor)"
LISTENED_LABEL = "tokenstore capture, a listener elsewhere"


def plain_database(path: Path) -> PlainDatabase:
    """The baseline: same pragmas, same tables, no triggers, autocommit writes."""
    db = PlainDatabase(str(path), timeout=10, pragmas=PRAGMAS)
    with db.bind_ctx([User, Item], bind_refs=False, bind_backrefs=False):
        db.create_tables([User, Item])
        db.system_user_id = User.create(username="system", is_superuser=True).id
    return db


def floor_database(path: Path) -> PlainDatabase:
    """The baseline plus triggers that never run their body: what any row trigger costs."""
    db = plain_database(path)
    for op in ("INSERT", "UPDATE", "DELETE"):
        db.execute_sql(
            f"CREATE TRIGGER bench_item_{op.lower()} AFTER {op} ON bench_item WHEN 0 "
            "BEGIN SELECT 1; END"
        )
    return db


def listened_store(path: Path) -> tokenstore._store.Store:
    """A store whose file names a listener in another (live) process: every row is recorded.

    This process has no receivers, so it leaves the events for that listener,
    as a real writer would; the cost measured is capture's whole write side.
    """
    store = tokenstore._store.open(path)
    store.register(Item)
    conn = store.db.connection()
    conn.execute(
        "INSERT INTO tokenstore_listener (claimant, since) VALUES (?, '2024-01-01T00:00:00.000Z')",
        (f"{socket.gethostname()}:{os.getppid()}:bench",),
    )
    return store


def bind(db: peewee.Database) -> None:
    Item.bind(db, bind_refs=False, bind_backrefs=False)


def saves() -> None:
    for i in range(SAVES):
        Item(name=f"item {i}", count=i).save()


def bulk_update() -> None:
    Item.update(count=Item.count + 1).execute()


def fill(db: peewee.Database) -> None:
    bind(db)
    with db.atomic():
        for start in range(0, BULK_ROWS, 500):
            for i in range(start, start + 500):
                Item(name=f"row {i}", count=i).save()


def interleaved(variants: dict[str, peewee.Database], run: Callable[[], None]) -> dict[str, float]:
    """Best time of each variant over REPEATS alternating rounds."""
    best = dict.fromkeys(variants, float("inf"))
    for db in variants.values():  # warm-up round, not counted
        bind(db)
        run()
    for _ in range(REPEATS):
        for name, db in variants.items():
            bind(db)
            best[name] = min(best[name], timed(run))
    return best


def check_capture_is_on(store: tokenstore._store.Store) -> None:
    """The measured store really has triggers on the table (and the plain one none)."""
    conn = store.db.connection()
    (triggers,) = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'bench_item'"
    ).fetchone()
    if triggers != 3:
        raise SystemExit(f"expected 3 capture triggers on bench_item, found {triggers}")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="tokenstore-bench-") as tmp:
        store = tokenstore._store.open(Path(tmp) / "capture.sqlite3")
        store.register(Item)
        check_capture_is_on(store)
        plain = plain_database(Path(tmp) / "plain.sqlite3")
        floor = floor_database(Path(tmp) / "floor.sqlite3")
        listened = listened_store(Path(tmp) / "listened.sqlite3")
        variants: dict[str, peewee.Database] = {
            "plain": plain,
            "capture": store.db,
            "floor": floor,
            "listened": listened.db,
        }

        for db in variants.values():
            fill(db)
        bulk = interleaved(variants, bulk_update)
        single = interleaved(variants, saves)

        conn = store.db.connection()
        (left,) = conn.execute("SELECT count(*) FROM tokenstore_change_event").fetchone()
        (recorded,) = (
            listened.db.connection()
            .execute("SELECT count(*) FROM tokenstore_change_event")
            .fetchone()
        )
        store.close()
        listened.close()
        plain.close()
        floor.close()

    print(f"python {sys.version.split()[0]}, best of {REPEATS} interleaved rounds")
    print(f"\nsave() of a new {Item.__name__}, {SAVES:,} per round")
    print(f"  {'variant':<44} {'saves/s':>10} {'vs plain':>9}")
    plain_rate, capture_rate = SAVES / single["plain"], SAVES / single["capture"]
    print(f"  {'plain peewee  [baseline]':<44} {plain_rate:>10,.0f} {1:>8.2f}x")
    ratio_save = capture_rate / plain_rate
    print(f"  {'tokenstore capture, no receivers':<44} {capture_rate:>10,.0f} {ratio_save:>8.2f}x")
    for name, label in (("floor", FLOOR_LABEL), ("listened", LISTENED_LABEL)):
        rate = SAVES / single[name]
        print(f"  {label:<44} {rate:>10,.0f} {rate / plain_rate:>8.2f}x")

    print(f"\nItem.update(count=count + 1) of {BULK_ROWS:,} rows")
    print(f"  {'variant':<44} {'ms':>10} {'vs plain':>9}")
    ratio_bulk = bulk["capture"] / bulk["plain"]
    print(f"  {'plain peewee  [baseline]':<44} {bulk['plain'] * 1000:>10.1f} {1:>8.2f}x")
    print(
        f"  {'tokenstore capture, no receivers':<44} {bulk['capture'] * 1000:>10.1f}"
        f" {ratio_bulk:>8.2f}x"
    )
    for name, label in (("floor", FLOOR_LABEL), ("listened", LISTENED_LABEL)):
        print(f"  {label:<44} {bulk[name] * 1000:>10.1f} {bulk[name] / bulk['plain']:>8.2f}x")
    print(f"\nevents left in the capture file afterwards: {left}")
    print(f"events recorded for the listener elsewhere: {recorded:,}")

    ok_save = ratio_save >= GOAL_SAVE
    ok_bulk = ratio_bulk <= GOAL_BULK
    print("\ngoals")
    print(
        f"  single save: capture costs <= 25% (rate >= {GOAL_SAVE:.2f}x plain): "
        f"costs {1 / ratio_save - 1:.0%} ({ratio_save:.2f}x)  {'met' if ok_save else 'NOT met'}"
    )
    print(
        f"  bulk update: <= {GOAL_BULK:.1f}x plain's time: {ratio_bulk:.2f}x"
        f"  {'met' if ok_bulk else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
