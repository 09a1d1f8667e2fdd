"""How long the ArchiveBox import takes, against a plain copy of the same rows.

Run: ``.venv/bin/python bench/archivebox_import.py`` (needs the ``bench`` extra, which
brings psycopg). PostgreSQL is a throwaway cluster made from the machine's binaries
(tests/_pg_server.py), or the server at ``TOKENSTORE_BENCH_PG_URL`` (its role must be
allowed to create databases). ``--sqlite-only`` leaves PostgreSQL out.

Each source is the database ArchiveBox 0.8.5rc51 made itself
(tests/data/archivebox-0.8.5rc51.sql: its users, tokens and hooks of every kind)
with more rows added the way Django writes them: 20 users, N API tokens spread
over them, and min(N, 1,000) webhooks on ``api.models.APIToken``, with ABIDs made
from their values as ArchiveBox makes them. Variants:

- **import**: ``store.import_archivebox(source)`` into a new store;
- **again**: the same import once more, into that store: every row is present;
- **plain copy** (the baseline): the same three tables SELECTed from the source
  with sqlite3 and INSERTed with ``executemany`` into a new store's tables
  (sqlite3 or psycopg, one transaction), each token hashed to its digest, the
  owners mapped by username: no checks, no conversions, no savepoints.

Each variant runs in a store of its own, new for each round; the best of
``ROUNDS`` counts. No goal: the figure to watch is the import's time per
token as the source grows, and its ratio to the plain copy.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import sys
import tempfile
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

import _pg_server  # noqa: E402
from _timing import timed  # noqa: E402
from scale import new_database  # noqa: E402

import tokenstore  # noqa: E402
from tokenstore._abid import abid_from_values  # noqa: E402
from tokenstore._archivebox_source import COLUMNS, HOOKS, TOKENS, USERS  # noqa: E402
from tokenstore._postgres import is_url  # noqa: E402

DUMP = HERE.parent / "tests" / "data" / "archivebox-0.8.5rc51.sql"
# API tokens per source, and rounds; BENCH_SIZES=1,100 BENCH_ROUNDS=1 for a quick look.
SIZES = tuple(int(n) for n in os.environ.get("BENCH_SIZES", "1,100,20000").split(","))
MOST_HOOKS = 1_000
EXTRA_USERS = 20
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
START = datetime(2024, 10, 24, 12, 0, 0)


# -- the source -----------------------------------------------------------------------------


def django_time(value: datetime) -> str:
    """How Django writes a datetime to SQLite: naive UTC, no fraction when it is 0."""
    return value.isoformat(sep=" ")


def make_source(path: Path, tokens: int) -> Path:
    """ArchiveBox's own file with ``tokens`` more API tokens, hooks and 20 more users."""
    conn = sqlite3.connect(path)
    conn.executescript(DUMP.read_text())
    (first,) = conn.execute("SELECT max(id) + 1 FROM auth_user").fetchone()
    owners = range(first, first + EXTRA_USERS)
    conn.executemany(
        "INSERT INTO auth_user (id, password, last_login, is_superuser, username, last_name,"
        " email, is_staff, is_active, date_joined, first_name)"
        " VALUES (?, 'pbkdf2_sha256$x', NULL, 0, ?, '', '', 0, 1, ?, '')",
        [(owner, f"bench{owner}", django_time(START)) for owner in owners],
    )
    conn.executemany(
        "INSERT INTO api_apitoken (token, created_at, expires, created_by_id, abid,"
        " modified_at, id) VALUES (?, ?, NULL, ?, ?, ?, ?)",
        [token_row(i, owners[i % EXTRA_USERS]) for i in range(tokens)],
    )
    conn.executemany(
        "INSERT INTO api_outboundwebhook (name, signal, ref, endpoint, headers, auth_token,"
        " enabled, keep_last_response, updated, last_response, last_success, last_failure,"
        " abid, created_by_id, id, modified_at, created_at, created)"
        " VALUES (?, 'CREATE_OR_UPDATE', 'api.models.APIToken', ?, '{\"X-Team\": \"ops\"}',"
        " '', 1, 1, ?, 'ok', ?, NULL, ?, ?, ?, ?, ?, ?)",
        [hook_row(i, owners[i % EXTRA_USERS]) for i in range(min(tokens, MOST_HOOKS))],
    )
    conn.commit()
    conn.close()
    return path


def token_row(i: int, owner: int) -> tuple[Any, ...]:
    row_id = uuid.uuid4()
    created = START + timedelta(seconds=i, microseconds=i % 1000 * 1000)
    abid = abid_from_values("apt_", created.replace(tzinfo=UTC), owner, "01", row_id)
    modified = django_time(created + timedelta(microseconds=417))
    return (secrets.token_hex(16), django_time(created), owner, str(abid), modified, row_id.hex)


def hook_row(i: int, owner: int) -> tuple[Any, ...]:
    row_id = uuid.uuid4()
    created = START + timedelta(seconds=i)
    endpoint = f"https://hooks{i}.example.com/in"
    abid = abid_from_values(
        "whk_", created.replace(tzinfo=UTC), endpoint, "api.models.APIToken", row_id
    )
    later = django_time(created + timedelta(seconds=5))
    return (
        f"hook {i}",
        endpoint,
        later,
        later,
        str(abid),
        owner,
        row_id.hex,
        later,
        django_time(created),
        django_time(created),
    )


# -- the variants ---------------------------------------------------------------------------


def new_store(make: Callable[[str], str], name: str) -> str:
    """A new, empty store (its schema made by tokenstore), by location."""
    location = make(name)
    tokenstore.open(location).close()
    return location


def run_import(location: str, source: Path, again: bool = False) -> Callable[[], None]:
    """The import into the store at ``location``, opened beforehand (untimed)."""
    store = tokenstore.open(location)

    def run() -> None:
        try:
            report = store.import_archivebox(source)
        finally:
            store.close()
        if again and any(counts.imported for counts in report.counts.values()):
            raise SystemExit("the second import imported rows: it should find them all present")

    return run


def plain_copy(location: str, source: Path) -> Callable[[], None]:
    """The rows as they are, into tokenstore's tables, with the plain driver."""

    def run() -> None:
        src = sqlite3.connect(f"{source.as_uri()}?mode=ro", uri=True)
        if is_url(location):
            import psycopg

            dst: Any = psycopg.connect(location)
            mark = "%s"
        else:
            dst = sqlite3.connect(location)
            mark = "?"
        try:
            copy_rows(src, dst, mark)
            dst.commit()
        finally:
            src.close()
            dst.close()

    return run


def copy_rows(src: sqlite3.Connection, dst: Any, mark: str) -> None:
    def select(table: str) -> list[Any]:
        columns = ", ".join(f'"{c}"' for c in COLUMNS[table])
        return src.execute(f'SELECT {columns} FROM "{table}"').fetchall()

    def insert(table: str, columns: str, rows: list[tuple[Any, ...]]) -> None:
        marks = ", ".join([mark] * (columns.count(",") + 1))
        cursor = dst.cursor()  # psycopg's connections have no executemany of their own
        cursor.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)
        cursor.close()

    users = [row for row in select(USERS) if row[1] != "system"]
    insert(
        "tokenstore_user",
        "username, is_superuser, created_at",
        [(name, bool(superuser), joined) for _, name, superuser, joined in users],
    )
    ids = dict(_fetch(dst, "SELECT username, id FROM tokenstore_user"))
    owner = {row[0]: ids[row[1]] for row in select(USERS)}
    insert(
        "tokenstore_api_token",
        "id, abid, token_digest, created_at, modified_at, expires, created_by_id, token_hint,"
        " scopes",
        [
            (i, a, hashlib.sha256(t.encode()).hexdigest(), c, m, e, owner[o], t[-4:], "[]")
            for i, a, t, c, m, e, o in select(TOKENS)
        ],
    )
    insert(
        "tokenstore_outbound_webhook",
        "id, abid, name, signal, ref, endpoint, headers, auth_token, enabled,"
        " keep_last_response, last_response, last_success, last_failure, created_at,"
        " modified_at, created_by_id, secret, failure_count, disabled_reason",
        [
            (*row[:8], bool(row[8]), bool(row[9]), *row[10:15], owner[row[16]], "whsec_x", 0, "")
            for row in select(HOOKS)
        ],
    )


def _fetch(conn: Any, sql: str) -> list[Any]:
    cursor = conn.execute(sql)
    return list(cursor.fetchall())


# -- the runs -------------------------------------------------------------------------------


def best(
    make: Callable[[str], str], name: str, prepare: Callable[[str], Callable[[], None]], rounds: int
) -> float:
    """Best time of ``rounds`` runs, each in a new store (``prepare`` runs untimed)."""
    return min(timed(prepare(new_store(make, f"{name}_{r}"))) for r in range(rounds))


def measure(backend: str, make: Callable[[str], str], tmp: Path) -> None:
    print(f"\n{backend}: seconds, best of {ROUNDS} (each in a new store)")
    print(
        f"  {'tokens':>7} {'hooks':>6} {'plain copy':>11} {'import':>9} {'vs plain':>9}"
        f" {'ms/token':>9} {'again':>8}"
    )
    for size in SIZES:
        source = tmp / f"source_{size}.sqlite3"
        if not source.exists():
            make_source(source, size)
        tag = f"{backend.lower()}_{size}"
        plain = best(make, f"{tag}_plain", partial(plain_copy, source=source), ROUNDS)
        ours = best(make, f"{tag}_import", partial(run_import, source=source), ROUNDS)
        again = best(make, f"{tag}_again", partial(imported_once, source=source), ROUNDS)
        print(
            f"  {size:>7,} {min(size, MOST_HOOKS):>6,} {plain:>11.3f} {ours:>9.3f}"
            f" {ours / plain:>8.1f}x {ours / size * 1000:>9.3f} {again:>8.3f}"
        )


def imported_once(location: str, source: Path) -> Callable[[], None]:
    """The second import of ``source``, the first done (untimed) into the store."""
    run_import(location, source)()
    return run_import(location, source, again=True)


def main() -> int:
    sqlite_only = "--sqlite-only" in sys.argv
    print(
        f"python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs"
    )
    server = None
    try:
        with tempfile.TemporaryDirectory(prefix="tokenstore-bench-") as folder:
            tmp = Path(folder)
            measure("SQLite", lambda name: str(tmp / f"{name}.sqlite3"), tmp)
            if not sqlite_only:
                admin = os.environ.get("TOKENSTORE_BENCH_PG_URL")
                if admin is None:
                    server = _pg_server.start()
                    admin = server.url
                pg_admin = admin
                prefix = f"bench_abx_{os.getpid()}"
                measure("PostgreSQL", lambda name: new_database(pg_admin, f"{prefix}_{name}"), tmp)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
