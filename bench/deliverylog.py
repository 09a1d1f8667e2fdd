"""The delivery log at a million rows: reading pages of it, its size on disk, pruning it.

Run: ``.venv/bin/python bench/deliverylog.py [--rows 1000000]``

Builds a store whose log holds ``--rows`` deliveries to eight hooks (one
busy, a few rare), spread over 100 days, about 300-byte payloads, nearly
all delivered, some dead, a few recent ones failed or pending. The rows are
written with raw ``executemany`` into the tokenstore schema, in time order
with random ids, as a live store writes them (its indexes are grown row by
row, not built once over sorted data).

Then, on a store opened on that file:

- ``store.webhooks.deliveries(limit=20)``: all hooks, one busy hook, one
  rare hook, each from the newest and from a ``before=`` cursor 80% deep;
  also by status (reported, not part of the goal). Each against the same
  SELECT written by hand on a plain ``sqlite3`` connection (the baseline).
  Goal: at most 5 ms.
- Bytes per delivery: the file's size after a checkpoint, over the rows,
  and how the table and its indexes share it (``dbstat``), against the
  same rows in a file of schema version 1 (``tests/schema-v1.sql``), which
  had one index on ``hook_id`` instead of the two for order and cursor.
- ``store.webhooks.prune(older_than=10 days)``: the time it takes and, while
  it runs, the longest write-lock hold of one batch (BEGIN to COMMIT, from
  the connection's statement trace) and the longest a writer in another
  process waited for its own small write.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import tokenstore
from tokenstore._abid import abid_from_values
from tokenstore._times import format_time

HOOK_WEIGHTS = (40, 20, 12, 10, 8, 5, 3, 2)  # the busiest hook first, the rarest last
SPAN = timedelta(days=100)
RECENT = timedelta(days=2)  # failed and pending deliveries are only this recent
PRUNE_OLDER_THAN = timedelta(days=10)
CHUNK = 50_000
CALLS = 30
GOAL_MS = 5.0
# The schema before the log had its indexes for order and cursor: the size baseline.
SCHEMA_V1 = Path(__file__).resolve().parent.parent / "tests" / "schema-v1.sql"

INSERT = (
    "INSERT INTO tokenstore_webhook_delivery (id, abid, created_at, modified_at, "
    "created_by_id, hook_id, event_id, event_type, payload, status, attempts, "
    "next_attempt_at, last_attempt_at, last_status_code, last_error, duration_ms, "
    "delivered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
COLUMNS = (
    "id, abid, created_at, modified_at, created_by_id, hook_id, event_id, event_type, "
    "payload, status, attempts, next_attempt_at, last_attempt_at, last_status_code, "
    "last_error, duration_ms, delivered_at"
)
PAGE = f"SELECT {COLUMNS} FROM tokenstore_webhook_delivery"
ORDER = " ORDER BY created_at DESC, abid DESC LIMIT 20"


# -- building the file ----------------------------------------------------------------


def payload(event_id: int, abid: str, when: str) -> str:
    """A body like the ones tokenstore sends for a created record (about 300 bytes)."""
    return json.dumps(
        {
            "type": "snapshot.created",
            "timestamp": when,
            "data": {
                "model": "snapshot",
                "pk": uuid.UUID(int=event_id * 7919).hex,
                "abid": "snp_" + abid[4:],
                "fields": {
                    "url": f"https://example.com/articles/{event_id}",
                    "title": f"Article number {event_id}",
                    "status": "queued",
                },
            },
        },
        separators=(",", ":"),
    )


def rows(
    count: int, hooks: list[uuid.UUID], user_id: int, now: datetime
) -> Iterator[tuple[Any, ...]]:
    """``count`` deliveries, oldest first, as the columns of INSERT."""
    rng = random.Random(9)
    picks = rng.choices(hooks, weights=HOOK_WEIGHTS, k=count)
    start = now - SPAN
    step = SPAN / count
    recent = now - RECENT
    for i, hook_id in enumerate(picks):
        created = start + step * i
        when = format_time(created)
        row_id = uuid.uuid4()
        abid = str(abid_from_values("msg_", created, hook_id.hex, "snapshot.created", row_id))
        roll = rng.random()
        status = "delivered"
        if created >= recent and roll < 0.015:
            status = "failed" if roll < 0.01 else "pending"
        elif roll > 0.98:
            status = "dead"
        delivered = status == "delivered"
        yield (
            row_id.hex,
            abid,
            when,
            when,
            user_id,
            hook_id.hex,
            i + 1,
            "snapshot.created",
            payload(i + 1, abid, when),
            status,
            {"delivered": 1, "dead": 8, "failed": 2, "pending": 0}[status],
            format_time(now + timedelta(minutes=5)) if status in ("failed", "pending") else None,
            None if status == "pending" else when,
            None if status == "pending" else 200 if delivered else 500,
            "" if delivered or status == "pending" else "HTTP 500: Internal Server Error",
            None if status == "pending" else 35 + i % 40,
            when if delivered else None,
        )


def insert(path: Path, deliveries: Iterator[tuple[Any, ...]]) -> None:
    """Write the deliveries in one transaction, ``CHUNK`` rows per executemany."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA cache_size = -262144")  # speed only: the pages come out the same
    conn.execute("BEGIN IMMEDIATE")
    batch = []
    for row in deliveries:
        batch.append(row)
        if len(batch) == CHUNK:
            conn.executemany(INSERT, batch)
            batch = []
    conn.executemany(INSERT, batch)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def build(path: Path, count: int) -> tuple[list[uuid.UUID], int]:
    """The file with ``count`` deliveries; the hooks' ids, busiest first, and their owner."""
    store = tokenstore.open(path, webhook_allow=["127.0.0.1/32"])
    hooks = [
        store.webhooks.create(f"hook {i}", tokenstore.User, f"http://127.0.0.1:9/hook/{i}").id
        for i in range(len(HOOK_WEIGHTS))
    ]
    user_id = store.db.system_user_id
    store.close()
    insert(path, rows(count, hooks, user_id, datetime.now(UTC)))
    return hooks, user_id


# -- measuring ------------------------------------------------------------------------


def timed_ms(call: Callable[[], Any]) -> tuple[float, float]:
    """Median and worst milliseconds of ``CALLS`` calls (after one untimed call)."""
    call()
    times = []
    for _ in range(CALLS):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), max(times)


def log_bytes(path: Path) -> list[tuple[str, int]]:
    """Bytes the delivery table and each of its indexes take, largest first (``dbstat``)."""
    conn = sqlite3.connect(path)
    parts = conn.execute(
        "SELECT s.name, sum(s.pgsize) FROM dbstat AS s JOIN sqlite_master AS m "
        "ON m.name = s.name WHERE m.tbl_name = 'tokenstore_webhook_delivery' "
        "GROUP BY s.name ORDER BY 2 DESC"
    ).fetchall()
    conn.close()
    return parts


def size_report(path: Path, count: int, v1: Path, v1_count: int) -> None:
    """Bytes per delivery here, and in a file of schema version 1 (the baseline)."""
    size = path.stat().st_size
    print(f"\nfile: {size:,} B after a checkpoint, {size / count:,.0f} B per delivery")
    ours, base = log_bytes(path), log_bytes(v1)
    for name, used in ours:
        print(f"  {name:<55} {used / count:>6,.0f} B per delivery")
    print(
        f"  the delivery table and its indexes: {sum(n for _, n in ours) / count:,.0f} B; "
        f"with schema version 1 (the same rows, {v1_count:,} of them): "
        f"{sum(n for _, n in base) / v1_count:,.0f} B"
    )
    for name, used in base:
        print(f"    v1 {name:<52} {used / v1_count:>6,.0f} B per delivery")


def writer(path: Path, stop: Path) -> None:
    """Another process's small writes, until ``stop`` exists: how long each waited, in ms."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    waits = []
    while not stop.exists():
        start = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO bench_probe VALUES (?)", (start,))
        conn.execute("COMMIT")
        waits.append((time.perf_counter() - start) * 1000)
        time.sleep(0.002)
    print(json.dumps(waits))


def prune_report(store: Any, path: Path, folder: Path) -> None:
    """Prune with a writer elsewhere; the time, the batches' holds, the writer's waits."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE bench_probe (at REAL)")
    (before,) = conn.execute("SELECT count(*) FROM tokenstore_webhook_delivery").fetchone()
    stop = folder / "stop"
    probe = subprocess.Popen(
        [sys.executable, __file__, "--writer", str(path), str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)  # the writer is running
    trace: list[tuple[float, str]] = []
    clock = time.perf_counter

    def note(statement: str) -> None:
        if statement.startswith(("BEGIN", "COMMIT")):
            trace.append((clock(), statement[:5]))

    store.db.connection().set_trace_callback(note)
    start = clock()
    deleted = store.webhooks.prune(older_than=PRUNE_OLDER_THAN)
    took = clock() - start
    store.db.connection().set_trace_callback(None)
    stop.touch()
    out, _ = probe.communicate(timeout=60)
    waits = json.loads(out)
    holds = [
        (end - begin) * 1000
        for (begin, first), (end, second) in itertools.pairwise(trace)
        if first == "BEGIN" and second == "COMMI"
    ]
    (after,) = conn.execute("SELECT count(*) FROM tokenstore_webhook_delivery").fetchone()
    conn.close()
    print(
        f"\nprune(older_than={PRUNE_OLDER_THAN.days} days): {deleted:,} deleted "
        f"({before:,} -> {after:,} rows) in {took:.1f} s, {len(holds):,} batches, "
        f"{deleted / took:,.0f} rows/s\n"
        f"  write lock held per batch: median {statistics.median(holds):.1f} ms, "
        f"longest {max(holds):.1f} ms\n"
        f"  another process's small writes meanwhile: {len(waits):,}, "
        f"median {statistics.median(waits):.1f} ms, longest {max(waits):.1f} ms"
    )


def main() -> int:
    if sys.argv[1:2] == ["--writer"]:
        writer(Path(sys.argv[2]), Path(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--v1-rows", type=int, default=200_000, help="rows of the v1 file")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = folder / "log.sqlite3"
        hook_ids, user_id = build(path, args.rows)
        print(f"{args.rows:,} deliveries written in {time.perf_counter() - started:.0f} s")
        v1 = folder / "v1.sqlite3"
        with sqlite3.connect(v1) as conn:
            conn.executescript(SCHEMA_V1.read_text())
        insert(v1, rows(args.v1_rows, hook_ids, user_id, datetime.now(UTC)))
        size_report(path, args.rows, v1, args.v1_rows)

        store = tokenstore.open(path, webhook_allow=["127.0.0.1/32"])
        raw = sqlite3.connect(path)
        busy, rare = store.webhooks.get("hook 0"), store.webhooks.get(f"hook {len(hook_ids) - 1}")
        deep = 8 * args.rows // 10

        def cursor(hook_id: str | None) -> tuple[str, str]:
            where = "" if hook_id is None else " WHERE hook_id = ?"
            (total,) = raw.execute(
                "SELECT count(*) FROM tokenstore_webhook_delivery" + where,
                () if hook_id is None else (hook_id,),
            ).fetchone()
            return raw.execute(
                "SELECT abid, created_at FROM tokenstore_webhook_delivery"
                + where
                + " ORDER BY created_at DESC, abid DESC LIMIT 1 OFFSET ?",
                ((total * 8 // 10,) if hook_id is None else (hook_id, total * 8 // 10)),
            ).fetchone()

        every, deep_busy, deep_rare = cursor(None), cursor(busy.id.hex), cursor(rare.id.hex)
        by_hook = " WHERE hook_id = ?"
        before = " WHERE (created_at, abid) < (?, ?)"
        hook_before = " WHERE hook_id = ? AND (created_at, abid) < (?, ?)"
        # Pages by status are reported too; the goal is for the pages by hook and cursor.
        pages: list[tuple[str, Callable[[], Any], str, tuple[Any, ...]]] = [
            ("newest 20", lambda: store.webhooks.deliveries(limit=20), "", ()),
            (
                "busy hook (40%)",
                lambda: store.webhooks.deliveries(busy, limit=20),
                by_hook,
                (busy.id.hex,),
            ),
            (
                "rare hook (2%)",
                lambda: store.webhooks.deliveries(rare, limit=20),
                by_hook,
                (rare.id.hex,),
            ),
            (
                f"before= {deep:,} deep",
                lambda: store.webhooks.deliveries(limit=20, before=every[0]),
                before,
                every[::-1],
            ),
            (
                "busy hook, before= 80% deep",
                lambda: store.webhooks.deliveries(busy, limit=20, before=deep_busy[0]),
                hook_before,
                (busy.id.hex, *deep_busy[::-1]),
            ),
            (
                "rare hook, before= 80% deep",
                lambda: store.webhooks.deliveries(rare, limit=20, before=deep_rare[0]),
                hook_before,
                (rare.id.hex, *deep_rare[::-1]),
            ),
            (
                "status='failed'",
                lambda: store.webhooks.deliveries(status="failed", limit=20),
                " WHERE status = ?",
                ("failed",),
            ),
            (
                "status='dead'",
                lambda: store.webhooks.deliveries(status="dead", limit=20),
                " WHERE status = ?",
                ("dead",),
            ),
            (
                "rare hook, status='failed'",
                lambda: store.webhooks.deliveries(rare, status="failed", limit=20),
                " WHERE hook_id = ? AND status = ?",
                (rare.id.hex, "failed"),
            ),
        ]
        print(
            f"\ndeliveries(limit=20), ms: median and worst of {CALLS} "
            f"(raw: the same SELECT by hand on sqlite3)"
        )
        print(f"  {'page':<30} {'tokenstore':>17} {'raw':>17} {'ratio':>6}")
        ok = True
        for name, call, where, params in pages:
            got = call()
            expected = raw.execute(PAGE + where + ORDER, params).fetchall()
            assert [d.abid for d in got] == [row[1] for row in expected], name
            ours = timed_ms(call)
            base = timed_ms(lambda: raw.execute(PAGE + where + ORDER, params).fetchall())  # noqa: B023
            if "status" not in name:
                ok = ok and ours[0] <= GOAL_MS
            print(
                f"  {name:<30} {ours[0]:>7.2f} ({ours[1]:>6.2f}) {base[0]:>7.2f} "
                f"({base[1]:>6.2f}) {ours[0] / base[0]:>5.1f}x"
            )
        verdict = "met" if ok else "NOT met"
        print(f"  goal: median <= {GOAL_MS:g} ms for the pages by hook and cursor: {verdict}")
        raw.close()

        prune_report(store, path, folder)
        store.close()
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
