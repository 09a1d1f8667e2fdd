"""What relation capture costs: 1,000 relations added in one transaction, against plain peewee.

Run: ``.venv/bin/python bench/m2m.py``

The same models (a Snapshot with a ``ManyToManyField`` to Tag) are measured
three ways in the same run, rebinding them between rounds: registered with a
tokenstore store with no one listening (the join table's triggers check
their gate on every row and record nothing); registered, with a listener in
another live process named in the file (every pair is recorded as an event,
left for that listener); and bound to a plain ``peewee.SqliteDatabase`` on
another file with the same pragmas, the same tables and no triggers. Each
round runs ``snapshot.tags.add(<1,000 tags>)`` in one transaction; the
relations (and any events) are removed between rounds, untimed. The
variants alternate round by round and the best round of each counts.

Goal: with no one listening, capture costs at most 25% (time <= 1.25x plain).
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import peewee
from _timing import timed

import tokenstore._store
from tokenstore._models import ABIDModel, User

RELATIONS = 1_000
REPEATS = 15
GOAL = 1.25  # at most 25% more time than plain peewee

PRAGMAS = {"journal_mode": "wal", "synchronous": "normal", "foreign_keys": 1, "busy_timeout": 10000}


class Tag(ABIDModel):
    abid_prefix = "tag_"
    abid_uri_src = "name"
    name = peewee.TextField()

    class Meta:
        table_name = "bench_tag"


class Snapshot(ABIDModel):
    abid_prefix = "snp_"
    abid_uri_src = "url"
    url = peewee.TextField()
    tags = peewee.ManyToManyField(Tag, backref="snapshots")

    class Meta:
        table_name = "bench_snapshot"


Through = Snapshot.tags.get_through_model()
MODELS = [Tag, Snapshot, Through]


class PlainDatabase(peewee.SqliteDatabase):
    """A plain peewee database; ABIDModel reads the default owner from it."""

    system_user_id: int | None = None


def bind(db: peewee.Database) -> None:
    for model in MODELS:
        model.bind(db, bind_refs=False, bind_backrefs=False)


def plain_database(path: Path) -> PlainDatabase:
    """The baseline: same pragmas, same tables, no triggers."""
    db = PlainDatabase(str(path), timeout=10, pragmas=PRAGMAS)
    bind(db)
    with db.bind_ctx([User], bind_refs=False, bind_backrefs=False):
        db.create_tables([User, *MODELS])
        db.system_user_id = User.create(username="system", is_superuser=True).id
    return db


def capture_store(path: Path, *, listener_elsewhere: bool) -> tokenstore._store.Store:
    """A store with both models registered; optionally a live listener in another process.

    The listener is this process's parent: alive, so no dispatch removes it,
    and not this process, so the events are left to it as a real writer would.
    """
    store = tokenstore._store.open(path)
    store.register(Tag)
    store.register(Snapshot)
    if listener_elsewhere:
        store.db.connection().execute(
            "INSERT INTO tokenstore_listener (claimant, since) "
            "VALUES (?, '2024-01-01T00:00:00.000Z')",
            (f"{socket.gethostname()}:{os.getppid()}:bench",),
        )
    return store


def fill(db: peewee.Database) -> tuple[Snapshot, list[uuid.UUID]]:
    """One snapshot and RELATIONS tags to relate it to."""
    bind(db)
    with db.atomic():
        snap = Snapshot.create(url="https://example.com/bench")
        tag_ids = [Tag.create(name=f"tag {i}").id for i in range(RELATIONS)]
    return snap, tag_ids


def count(db: peewee.Database, sql: str) -> int:
    (n,) = db.execute_sql(sql).fetchone()
    return int(n)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="tokenstore-bench-") as tmp:
        quiet = capture_store(Path(tmp) / "capture.sqlite3", listener_elsewhere=False)
        listened = capture_store(Path(tmp) / "listened.sqlite3", listener_elsewhere=True)
        plain = plain_database(Path(tmp) / "plain.sqlite3")
        variants: dict[str, peewee.Database] = {
            "plain": plain,
            "capture": quiet.db,
            "listened": listened.db,
        }
        data = {name: fill(db) for name, db in variants.items()}
        recorded: dict[str, int] = {}

        def add(name: str) -> Callable[[], None]:
            snap, tag_ids = data[name]
            db = variants[name]

            def run() -> None:
                with db.atomic():
                    snap.tags.add(tag_ids)

            return run

        def reset(name: str) -> None:
            """Untimed: remove the relations, and the events the round (and this) recorded."""
            db = variants[name]
            if db is not plain:
                recorded[name] = count(db, "SELECT count(*) FROM tokenstore_change_event")
            Through.delete().execute()
            if db is not plain:
                db.execute_sql("DELETE FROM tokenstore_change_event")

        best = dict.fromkeys(variants, float("inf"))
        for name in variants:  # warm-up round, not counted
            bind(variants[name])
            add(name)()
            reset(name)
        for _ in range(REPEATS):
            for name in variants:
                bind(variants[name])
                best[name] = min(best[name], timed(add(name)))
                reset(name)

        quiet.close()
        listened.close()
        plain.close()

    plain_ms = best["plain"] * 1000
    print(f"python {sys.version.split()[0]}, best of {REPEATS} interleaved rounds")
    print(f"\nsnapshot.tags.add(<{RELATIONS:,} tags>) in one transaction")
    print(f"  {'variant':<48} {'ms':>8} {'vs plain':>9} {'events':>7}")
    print(f"  {'plain peewee, no triggers  [baseline]':<48} {plain_ms:>8.2f} {1:>8.2f}x {'-':>7}")
    labels = {
        "capture": "tokenstore capture, no one listening",
        "listened": "tokenstore capture, a listener elsewhere",
    }
    for name, label in labels.items():
        ms = best[name] * 1000
        print(f"  {label:<48} {ms:>8.2f} {ms / plain_ms:>8.2f}x {recorded[name]:>7,}")

    ratio = best["capture"] / best["plain"]
    ok = ratio <= GOAL
    print("\ngoal")
    print(
        f"  no one listening: capture costs <= {GOAL - 1:.0%}: costs {ratio - 1:.0%} "
        f"({ratio:.2f}x)  {'met' if ok else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
