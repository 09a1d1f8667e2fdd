"""Saves with one webhook each, from 1, 2 and 4 writer processes on one file, against raw.

Run: ``.venv/bin/python bench/processes.py [--seconds 2] [--rounds 3]``

Each writer is its own process (started with this script's ``--worker``),
with its own connection and its own HTTP session, all posting to the one
local receiver of ``bench/webhooks.py`` (asyncio, keep-alive, answers at
once). Two variants, at each process count:

- **tokenstore**: every process opens the same store file and runs
  ``Note.create()`` on a model with one matching hook: commit, the delivery
  written in the same transaction, signed, POSTed and recorded before the
  save returns. Processes contend for the file's write lock.
- **raw** (the baseline): every process runs a raw ``sqlite3`` INSERT +
  COMMIT (``BEGIN IMMEDIATE``, same pragmas) into one shared file, then
  ``requests.Session().post`` of the same body: ``RawBaseline.save``.

- **floor** (not a goal's baseline, a yardstick): the least any outbox that
  records its deliveries must do, in raw SQL on a file with tokenstore's
  tables and indexes but no capture triggers: the row and its delivery row
  in one write transaction, the POST, then the outcome (the delivery row,
  and the hook's row once a second) in a second one, waiting for the lock
  as tokenstore does: ``OutboxFloor.save``.
  tokenstore/floor is tokenstore's own cost; floor/raw is the cost of
  recording deliveries durably at all.

All processes of a variant start together and save for a fixed time; the
variants alternate round by round, and the best round of each counts.
Reported per count: total saves per second, the ratio tokenstore/raw, and
the 50th and 99th percentile of one save's latency (from that round), the
writers' CPU time (user + system) per save, and how much of one core the
receiver used, to show it is not the bottleneck.
Goal: tokenstore >= 0.8x raw at 4 processes.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests
from webhooks import PRAGMAS, Note, RawBaseline, start_receiver

import tokenstore
from tokenstore._times import format_time

COUNTS = (1, 2, 4)
WARM_SAVES = 50
GOAL_AT_4 = 0.8
TICKS = os.sysconf("SC_CLK_TCK")


# -- a writer process -----------------------------------------------------------------


def worker(variant: str, path: Path, url: str, body_file: Path) -> None:
    """Warm up, say ``ready``; then for each ``go SECONDS`` line, save that long and report."""
    save: Callable[[int], Any]
    if variant == "tokenstore":
        store = tokenstore.open(path, webhook_allow=["127.0.0.1/32"])
        store.register(Note)

        def save(i: int) -> Any:
            return Note.create(text=f"note {i}")
    elif variant == "floor":
        save = OutboxFloor(path, url, body_file.read_bytes()).save
    else:
        save = RawBaseline(path, url, body_file.read_bytes(), create=False).save
    for i in range(WARM_SAVES):
        save(i)
    print("ready", flush=True)
    clock = time.perf_counter
    for line in sys.stdin:
        command, _, argument = line.partition(" ")
        if command != "go":
            break
        seconds = float(argument)
        latencies = []
        start = clock()
        end = start + seconds
        i = 0
        now = start
        while now < end:
            save(i)
            i += 1
            latencies.append(clock() - now)
            now = clock()
        print(json.dumps({"saves": i, "elapsed": now - start, "latencies": latencies}), flush=True)
    if variant == "tokenstore":
        store.close()


class OutboxFloor:
    """A durable outbox written as directly as it can be: see the module's doc."""

    def __init__(self, path: Path, url: str, body: bytes) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        for pragma in PRAGMAS:
            self.conn.execute(pragma)
        (self.hook_id,) = self.conn.execute("SELECT id FROM tokenstore_outbound_webhook").fetchone()
        self.session = requests.Session()
        self.url = url
        self.body = body
        self.text = body.decode()
        self.headers = {"Content-Type": "application/json"}

    def begin(self) -> None:
        """BEGIN IMMEDIATE, waiting for the lock in tokenstore's short steps (not SQLite's)."""
        self.conn.execute("PRAGMA busy_timeout = 0")
        pause = 0.0001
        while True:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError:
                time.sleep(pause)
                pause = min(pause * 2, 0.002)
        self.conn.execute("PRAGMA busy_timeout = 10000")

    def save(self, i: int) -> None:
        execute = self.conn.execute
        row_id, delivery_id = uuid.uuid4(), uuid.uuid4()
        now = format_time(datetime.now(UTC))
        self.begin()
        execute(
            "INSERT INTO bench_note (id, abid, created_by_id, created_at, modified_at, text) "
            "VALUES (?, ?, 1, ?, ?, ?)",
            (row_id.hex, "not_" + row_id.hex[:26].upper(), now, now, f"note {i}"),
        )
        execute(
            "INSERT INTO tokenstore_webhook_delivery (id, abid, created_by_id, created_at, "
            "modified_at, hook_id, event_type, payload, next_attempt_at, status, attempts, "
            "last_error) VALUES (?, ?, 1, ?, ?, ?, 'note.created', ?, ?, 'pending', 0, '')",
            (
                delivery_id.hex,
                "msg_" + delivery_id.hex[:26].upper(),
                now,
                now,
                self.hook_id,
                self.text,
                now,
            ),
        )
        execute("COMMIT")
        response = self.session.post(
            self.url, data=self.body, headers=self.headers, timeout=(3, 10)
        )
        response.raise_for_status()
        done = format_time(datetime.now(UTC))
        a_second_ago = format_time(datetime.now(UTC) - timedelta(seconds=1))
        self.begin()
        execute(
            "UPDATE tokenstore_webhook_delivery SET status = 'delivered', "
            "attempts = attempts + 1, next_attempt_at = NULL, last_attempt_at = ?, "
            "last_status_code = ?, duration_ms = 1, delivered_at = ?, modified_at = ? "
            "WHERE id = ?",
            (done, response.status_code, done, done, delivery_id.hex),
        )
        execute(
            "UPDATE tokenstore_outbound_webhook SET last_success = ? "
            "WHERE id = ? AND (last_success IS NULL OR last_success <= ?)",
            (done, self.hook_id, a_second_ago),
        )
        execute("COMMIT")


# -- the parent -----------------------------------------------------------------------


class Writers:
    """``count`` worker processes of one variant, started and warmed up."""

    def __init__(self, variant: str, count: int, path: Path, url: str, body_file: Path) -> None:
        command = [sys.executable, __file__, "--worker", variant, str(path), url, str(body_file)]
        self.procs = [
            subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for _ in range(count)
        ]
        for proc in self.procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a {variant} worker failed to start")

    def round(self, seconds: float) -> tuple[float, list[float], float]:
        """All save for ``seconds`` at once: total saves/s, each save's latency, CPU per save."""
        cpu = sum(cpu_seconds(proc.pid) for proc in self.procs)
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(f"go {seconds}\n")
            proc.stdin.flush()
        rate = 0.0
        latencies: list[float] = []
        for proc in self.procs:
            assert proc.stdout is not None
            report = json.loads(proc.stdout.readline())
            rate += report["saves"] / report["elapsed"]
            latencies += report["latencies"]
        cpu = sum(cpu_seconds(proc.pid) for proc in self.procs) - cpu
        return rate, latencies, cpu / len(latencies)

    def stop(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.close()
        for proc in self.procs:
            if proc.wait(timeout=30) != 0:
                raise RuntimeError("a worker failed")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    if sys.argv[1:2] == ["--worker"]:
        variant, path, url, body_file = sys.argv[2:6]
        worker(variant, Path(path), url, Path(body_file))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    receiver, url = start_receiver()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return run(Path(tmp), url, receiver.pid, args.seconds, args.rounds)
    finally:
        receiver.kill()
        receiver.wait()


def run(tmp: Path, url: str, receiver_pid: int, seconds: float, rounds: int) -> int:
    started = time.perf_counter()
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, rounds of {seconds:g} s, "
        f"best of {rounds}"
    )
    ours_path, raw_path, body_file = tmp / "tokenstore.sqlite3", tmp / "raw.sqlite3", tmp / "body"
    store = tokenstore.open(ours_path, webhook_allow=["127.0.0.1/32"])
    store.register(Note)
    store.webhooks.create("notes", Note, url)
    Note.create(text="note 0")
    body = store.webhooks.deliveries(limit=1)[0].payload.encode()
    body_file.write_bytes(body)
    store.close()
    RawBaseline(raw_path, url, body).conn.close()
    floor_path = tmp / "floor.sqlite3"
    with tokenstore.open(floor_path, webhook_allow=["127.0.0.1/32"]) as floor:
        floor.register(Note)
        floor.webhooks.create("notes", Note, url)
        for suffix in ("insert", "update", "delete"):  # the floor records no events
            floor.db.execute_sql(f'DROP TRIGGER "bench_note_capture_{suffix}"')

    results = []
    for count in COUNTS:
        ours = Writers("tokenstore", count, ours_path, url, body_file)
        raw = Writers("raw", count, raw_path, url, body_file)
        floor_writers = Writers("floor", count, floor_path, url, body_file)
        best: dict[str, tuple[float, list[float], float, float]] = {}
        for _ in range(rounds):
            for name, writers in (("raw", raw), ("floor", floor_writers), ("tokenstore", ours)):
                cpu = cpu_seconds(receiver_pid)
                wall = time.perf_counter()
                rate, latencies, per_save = writers.round(seconds)
                load = (cpu_seconds(receiver_pid) - cpu) / (time.perf_counter() - wall)
                if name not in best or rate > best[name][0]:
                    best[name] = (rate, latencies, per_save, load)
        ours.stop()
        raw.stop()
        floor_writers.stop()
        results.append((count, best))

    store = tokenstore.open(ours_path, webhook_allow=["127.0.0.1/32"])
    undelivered = len(store.webhooks.deliveries(status="failed", limit=1000)) + len(
        store.webhooks.deliveries(status="pending", limit=1000)
    )
    store.close()
    if undelivered:
        print(f"{undelivered} deliveries were not delivered: the figures are void")
        return 1

    print(f"\nsaves/s with one webhook each ({len(body)}-byte body), all processes together")
    print(
        f"  {'processes':>9} {'variant':<11} {'saves/s':>8} {'ratio':>6} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'CPU/save':>9} {'receiver CPU':>13}"
    )
    ok = True
    for count, best in results:
        for name in ("raw", "floor", "tokenstore"):
            rate, latencies, per_save, load = best[name]
            ratio = rate / best["raw"][0]
            print(
                f"  {count:>9} {name:<11} {rate:>8,.0f} {ratio:>5.2f}x "
                f"{statistics.median(latencies) * 1000:>7.2f} "
                f"{percentile(latencies, 0.99) * 1000:>7.2f} {per_save * 1e6:>6,.0f} us "
                f"{load:>12.0%}"
            )
        print(
            f"  {'':>9} tokenstore/floor {best['tokenstore'][0] / best['floor'][0]:.2f}x, "
            f"floor/raw {best['floor'][0] / best['raw'][0]:.2f}x"
        )
        if count == 4:
            ratio = best["tokenstore"][0] / best["raw"][0]
            ok = ratio >= GOAL_AT_4
            verdict = "met" if ok else "NOT met"
            print(f"\ngoal: >= {GOAL_AT_4}x raw at 4 processes: {ratio:.2f}x, {verdict}")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
