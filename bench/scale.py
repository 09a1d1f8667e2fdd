"""Saves with one webhook each from 1, 2 and 4 processes, and dispatch latency, on both backends.

Run: ``.venv/bin/python bench/scale.py`` (needs the ``bench`` extra, which
brings psycopg). PostgreSQL is a throwaway cluster made from the machine's
binaries (tests/_pg_server.py), or the server at ``TOKENSTORE_BENCH_PG_URL``
(its role must be allowed to create databases). ``--sqlite-only`` leaves
PostgreSQL out.

Throughput: P worker processes each make the same number of saves at once,
after a common start; the figure is all their saves over the time from the
first start to the last end. Variants, on each backend:

- **tokenstore**: ``Note.create()`` with one matching hook; each save
  commits, writes its delivery in the same transaction, signs and POSTs it
  and records the outcome before returning.
- **raw baseline**: the same row INSERTed and committed with the plain
  driver (psycopg, or sqlite3 with tokenstore's pragmas and ``BEGIN
  IMMEDIATE``), then ``requests.Session().post`` of a body of the same size.

- **floor** (PostgreSQL; a yardstick, not a goal's baseline): the least an
  outbox that records its deliveries must do, with the plain driver, in a
  database with tokenstore's tables but no capture triggers: the row and its
  delivery row in one transaction, the POST, then the outcome (the delivery
  row, and the hook's row once a second) in one statement. tokenstore/floor
  is tokenstore's own cost; floor/raw the cost of recording deliveries at
  all. bench/processes.py measures the same floor on SQLite.

All post to the keep-alive receiver of bench/webhooks.py. The variants'
rounds alternate and the best round of each counts.

Dispatch latency: another program (the plain driver, no tokenstore) inserts
a row and commits; ``tokenstore dispatch --watch`` (a separate process)
notices, claims the event, makes the delivery and POSTs it to a receiver
that notes when it arrives. On PostgreSQL the watcher waits on LISTEN/NOTIFY,
on SQLite it polls ``PRAGMA data_version``.

Goals: on PostgreSQL at least 0.7x its raw baseline at every process count;
total throughput rising from 1 to 4 processes; dispatch latency p50 <= 10 ms.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

import _pg_server  # noqa: E402
import requests  # noqa: E402
from _scale_models import Note  # noqa: E402
from webhooks import PRAGMAS, start_receiver  # noqa: E402

import tokenstore  # noqa: E402
from tokenstore._postgres import is_url  # noqa: E402
from tokenstore._times import format_time, utcnow  # noqa: E402

PROCESSES = (1, 2, 4)
SAVES = 300  # per process per round
ROUNDS = 3
LATENCY_SAMPLES = 200
ALLOW = ["127.0.0.1/32"]

GOAL_RAW = 0.7
GOAL_P50_MS = 10.0

RAW_TABLE = "bench_scale_raw"


# -- the workers (each a process of its own) ------------------------------------------


def raw_row(i: int) -> tuple[str, str, str, str, str]:
    row_id = uuid.uuid4().hex
    now = format_time(utcnow())
    return (row_id, "not_" + row_id[:26].upper(), now, now, f"note {i}")


class RawSaver:
    """The least any implementation must do: INSERT, commit, POST."""

    def __init__(self, location: str, url: str, body: bytes) -> None:
        self.postgres = is_url(location)
        if self.postgres:
            import psycopg

            self.conn: Any = psycopg.connect(location)
            mark = "%s"
        else:
            self.conn = sqlite3.connect(location, isolation_level=None)
            for pragma in PRAGMAS:
                self.conn.execute(pragma)
            mark = "?"
        self.insert = f"INSERT INTO {RAW_TABLE} VALUES ({mark}, {mark}, 1, {mark}, {mark}, {mark})"
        self.session = requests.Session()
        self.url, self.body = url, body

    def save(self, i: int) -> None:
        if self.postgres:
            self.conn.execute(self.insert, raw_row(i))
            self.conn.commit()
        else:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute(self.insert, raw_row(i))
            self.conn.execute("COMMIT")
        response = self.session.post(
            self.url,
            data=self.body,
            headers={"Content-Type": "application/json"},
            timeout=(3, 10),
        )
        response.raise_for_status()


class FloorSaver:
    """A durable outbox on PostgreSQL, written as directly as it can be: see the module's doc."""

    def __init__(self, location: str, url: str, body: bytes) -> None:
        import psycopg

        self.conn: Any = psycopg.connect(location, autocommit=True)
        (self.hook_id,) = self.conn.execute("SELECT id FROM tokenstore_outbound_webhook").fetchone()
        self.session = requests.Session()
        self.url, self.body, self.text = url, body, body.decode()

    def save(self, i: int) -> None:
        delivery_id = uuid.uuid4().hex
        row = raw_row(i)
        now = row[2]
        with self.conn.transaction():
            self.conn.execute(
                "INSERT INTO bench_scale_note (id, abid, created_by_id, created_at, "
                "modified_at, text) VALUES (%s, %s, 1, %s, %s, %s)",
                row,
            )
            self.conn.execute(
                "INSERT INTO tokenstore_webhook_delivery (id, abid, created_by_id, created_at, "
                "modified_at, hook_id, event_type, payload, next_attempt_at, status, attempts, "
                "last_error) VALUES (%s, %s, 1, %s, %s, %s, 'note.created', %s, %s, 'pending', "
                "0, '')",
                (delivery_id, "msg_" + delivery_id[:26].upper(), now, now, self.hook_id,
                 self.text, now),
            )  # fmt: skip
        response = self.session.post(
            self.url, data=self.body, headers={"Content-Type": "application/json"}, timeout=(3, 10)
        )
        response.raise_for_status()
        done = format_time(utcnow())
        a_second_ago = format_time(utcnow() - timedelta(seconds=1))
        self.conn.execute(
            "WITH sent AS (UPDATE tokenstore_webhook_delivery SET status = 'delivered', "
            "attempts = attempts + 1, next_attempt_at = NULL, last_attempt_at = %s, "
            "last_status_code = %s, duration_ms = 1, delivered_at = %s, modified_at = %s "
            "WHERE id = %s) "
            "UPDATE tokenstore_outbound_webhook SET last_success = %s "
            "WHERE id = %s AND (last_success IS NULL OR last_success <= %s)",
            (done, response.status_code, done, done, delivery_id, done, self.hook_id,
             a_second_ago),
        )  # fmt: skip


def prepare_floor(location: str, url: str) -> None:
    """tokenstore's tables, Note's and one hook, with every capture trigger dropped."""
    with tokenstore.open(location, webhook_allow=ALLOW) as store:
        store.register(Note)
        store.webhooks.create("notes", Note, url)
        triggers = store.db.execute_sql(
            "SELECT tgname, tgrelid::regclass::text FROM pg_trigger WHERE NOT tgisinternal"
        ).fetchall()
        for name, table in triggers:
            store.db.execute_sql(f'DROP TRIGGER "{name}" ON {table}')


def worker(kind: str, location: str, url: str, count: int, barrier: str, body: str) -> None:
    if kind == "raw":
        save = RawSaver(location, url, body.encode()).save
    elif kind == "floor":
        save = FloorSaver(location, url, body.encode()).save
    else:
        store = tokenstore.open(location, webhook_allow=ALLOW)
        store.register(Note)

        def save(i: int) -> None:
            Note.create(text=f"note {i}")

    for i in range(20):  # warm: connections open, statements prepared
        save(i)
    Path(f"{barrier}.ready.{os.getpid()}").touch()
    while not os.path.exists(barrier):
        time.sleep(0.001)
    start = time.time()
    for i in range(count):
        save(i)
    print(json.dumps({"start": start, "end": time.time()}), flush=True)


# -- throughput -----------------------------------------------------------------------


def run_round(kind: str, location: str, url: str, processes: int, body: str, tmp: Path) -> float:
    """Saves per second of ``processes`` workers of one kind, started together."""
    barrier = tmp / f"go-{uuid.uuid4().hex}"
    body_file = tmp / "body.json"
    body_file.write_text(body, encoding="utf-8")
    args = [kind, url, str(SAVES), str(barrier), str(body_file)]
    env = {**os.environ, "TOKENSTORE_DB": location}  # a URL's password stays out of argv
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", *args],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(processes)
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp.glob(f"{barrier.name}.ready.*"))) < processes:
        if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
            raise SystemExit(f"{kind} workers did not start")
        time.sleep(0.01)
    barrier.touch()
    spans = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"a {kind} worker failed")
        spans.append(json.loads(out.strip().splitlines()[-1]))
    wall = max(s["end"] for s in spans) - min(s["start"] for s in spans)
    return processes * SAVES / wall


def prepare(location: str, raw_location: str, url: str) -> str:
    """Tables, the hook, and a delivery body of the real size for the raw baseline."""
    with tokenstore.open(location, webhook_allow=ALLOW) as store:
        store.register(Note)
        store.webhooks.create("notes", Note, url)
        Note.create(text="note 0")
        body = store.webhooks.deliveries(limit=1)[0].payload
    with tokenstore.open(raw_location) as other:
        other.db.execute_sql(
            f"CREATE TABLE {RAW_TABLE} (id TEXT NOT NULL PRIMARY KEY, abid VARCHAR(30) NOT NULL, "
            "created_by_id INTEGER NOT NULL, created_at TEXT NOT NULL, "
            "modified_at TEXT NOT NULL, text TEXT NOT NULL)"
        )
        other.db.execute_sql(f'CREATE UNIQUE INDEX "{RAW_TABLE}_abid" ON {RAW_TABLE} ("abid")')
    return body


def undelivered(location: str) -> int:
    with tokenstore.open(location, webhook_allow=ALLOW, dispatch_on_open=False) as store:
        (count,) = store.db.execute_sql(
            "SELECT count(*) FROM tokenstore_webhook_delivery WHERE status IN ('pending', 'failed')"
        ).fetchone()
        return int(count)


def throughput(
    name: str, location: str, raw_location: str, url: str, tmp: Path, floor: str | None = None
) -> dict[int, Any]:
    """Best saves/s of tokenstore and raw (and the floor, given its database) per count."""
    body = prepare(location, raw_location, url)
    if floor is not None:
        prepare_floor(floor, url)
    results: dict[int, Any] = {}
    for processes in PROCESSES:
        best = {"raw": 0.0, "ours": 0.0, "floor": 0.0}
        for _ in range(ROUNDS):
            best["raw"] = max(
                best["raw"], run_round("raw", raw_location, url, processes, body, tmp)
            )
            best["ours"] = max(best["ours"], run_round("ours", location, url, processes, body, tmp))
            if floor is not None:
                best["floor"] = max(
                    best["floor"], run_round("floor", floor, url, processes, body, tmp)
                )
        results[processes] = (best["ours"], best["raw"])
        line = (
            f"  {name:<10} {processes} process{'es' if processes > 1 else '  '}  "
            f"tokenstore {best['ours']:>7,.0f}/s   raw {best['raw']:>7,.0f}/s   "
            f"{best['ours'] / best['raw']:.2f}x"
        )
        if floor is not None:
            line += (
                f"   floor {best['floor']:>7,.0f}/s: {best['floor'] / best['raw']:.2f}x raw, "
                f"tokenstore {best['ours'] / best['floor']:.2f}x of it"
            )
        print(line, flush=True)
    left = undelivered(location)
    if left:
        raise SystemExit(f"{left} deliveries were not delivered: the figures are void")
    return results


# -- dispatch latency -----------------------------------------------------------------


class _Arrivals(BaseHTTPRequestHandler):
    arrived: ClassVar[dict[str, float]] = {}

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        when = time.time()
        self.arrived[json.loads(body)["data"]["fields"]["text"]] = when
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def arrivals() -> Iterator[tuple[str, dict[str, float]]]:
    handler = type("Handler", (_Arrivals,), {"arrived": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler.arrived
    finally:
        server.shutdown()
        server.server_close()


def latency(name: str, location: str) -> tuple[float, float]:
    """p50 and p99 in ms, from another program's commit to the webhook's arrival."""
    with arrivals() as (url, arrived):
        with tokenstore.open(location, webhook_allow=ALLOW) as store:
            store.register(Note)
            store.webhooks.create("latency", Note, url)
        env = {**os.environ, "TOKENSTORE_DB": location, "PYTHONPATH": str(HERE)}
        command = ["--allow", "127.0.0.1/32", "--app", "_scale_models", "dispatch", "--watch"]
        watcher = subprocess.Popen(
            [sys.executable, "-m", "tokenstore", *command, "--interval", "1s"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert watcher.stderr is not None
            watcher.stderr.readline()  # "watching ...": it listens from here on
            committed = commit_rows(location)
            deadline = time.monotonic() + 30
            while len(arrived) < len(committed) and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            watcher.terminate()
            watcher.wait(timeout=30)
        missing = set(committed) - set(arrived)
        if missing:
            raise SystemExit(f"{name}: {len(missing)} webhooks never arrived")
        ms = sorted((arrived[k] - committed[k]) * 1000 for k in committed)
    p50 = statistics.median(ms)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(f"  {name:<10} p50 {p50:6.1f} ms   p99 {p99:6.1f} ms   ({len(ms)} commits)", flush=True)
    return p50, p99


def commit_rows(location: str) -> dict[str, float]:
    """INSERT rows one commit each with the plain driver; when each commit returned."""
    raw = RawSaver(location, "", b"")
    insert = raw.insert.replace(RAW_TABLE, "bench_scale_note")
    committed: dict[str, float] = {}
    for i in range(LATENCY_SAMPLES):
        row = raw_row(i)
        if raw.postgres:
            raw.conn.execute(insert, row)
            raw.conn.commit()
        else:
            raw.conn.execute("BEGIN IMMEDIATE")
            raw.conn.execute(insert, row)
            raw.conn.execute("COMMIT")
        committed[row[-1]] = time.time()
        time.sleep(0.02)  # one commit at a time: latency, not a backlog
    raw.conn.close()
    return committed


# -- the run --------------------------------------------------------------------------


def new_database(admin_url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))


def main() -> int:
    if sys.argv[1:2] == ["--worker"]:
        kind, url, count, barrier, body = sys.argv[2:7]
        location = os.environ["TOKENSTORE_DB"]
        worker(kind, location, url, int(count), barrier, Path(body).read_text(encoding="utf-8"))
        return 0
    sqlite_only = "--sqlite-only" in sys.argv
    print(
        f"python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs; "
        f"{SAVES} saves per process per round, best of {ROUNDS}"
    )
    receiver, url = start_receiver()
    server = None
    try:
        with tempfile.TemporaryDirectory() as folder:
            tmp = Path(folder)
            print("\nsaves/s with one webhook each (all processes together)")
            results = {
                "sqlite": throughput(
                    "SQLite", str(tmp / "scale.sqlite3"), str(tmp / "raw.sqlite3"), url, tmp
                )
            }
            admin = os.environ.get("TOKENSTORE_BENCH_PG_URL")
            if not sqlite_only:
                if admin is None:
                    server = _pg_server.start()
                    admin = server.url
                pg = new_database(admin, f"bench_scale_{os.getpid()}")
                floor = new_database(admin, f"bench_floor_{os.getpid()}")
                results["postgres"] = throughput("PostgreSQL", pg, pg, url, tmp, floor)
            print("\ndispatch latency: another program commits, dispatch --watch sends")
            latencies = {"sqlite": latency("SQLite", str(tmp / "latency.sqlite3"))}
            if admin is not None and not sqlite_only:
                pg = new_database(admin, f"bench_latency_{os.getpid()}")
                latencies["postgres"] = latency("PostgreSQL", pg)
    finally:
        receiver.kill()
        receiver.wait()
        if server is not None:
            server.stop()
    return report(results, latencies)


def report(results: dict[str, dict[int, Any]], latencies: dict[str, tuple[float, float]]) -> int:
    print("\ngoals")
    if "postgres" in results:
        worst = min(ours / raw for ours, raw in results["postgres"].values())
        met = "met" if worst >= GOAL_RAW else "NOT met"
        print(f"  PostgreSQL >= {GOAL_RAW}x raw at every process count: worst {worst:.2f}x  {met}")
    for backend, by_count in results.items():
        rates = [by_count[p][0] for p in PROCESSES]
        rising = all(a < b for a, b in itertools.pairwise(rates))
        trend = " -> ".join(f"{r:,.0f}" for r in rates)
        print(f"  {backend}: throughput rising 1 -> 4 processes: {trend}  "
              f"{'met' if rising else 'NOT met'}")  # fmt: skip
    for backend, (p50, _) in latencies.items():
        met = "met" if p50 <= GOAL_P50_MS else "NOT met"
        print(f"  {backend}: dispatch latency p50 <= {GOAL_P50_MS:.0f} ms: {p50:.1f} ms  {met}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
