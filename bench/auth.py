"""How fast ``store.tokens.authenticate()`` is, against its baselines, in one run.

    .venv/bin/python bench/auth.py [--tokens 100000]

Builds a store of 100,000 tokens in a temporary folder, then measures
authentications per second, each including the SHA-256 of the secret:

(a) raw sqlite3: a prepared SELECT of the token row by digest on a plain
    connection. It checks nothing (no checksum, expiry, revocation, scopes)
    and builds no object: the practical ceiling.
(b) plain peewee: ``APIToken.get_or_none(APIToken.token_digest == digest)``.

The store looks like one after a quiet night: a few tokens (5%, the hot ones
among them) were used within the minute, the rest long ago (``last_used_at``
a year old, or never used). Three workloads: "hot" presents the same 100
recently used secrets over and over (a few busy clients, the usual case),
"spread" presents 20,000 different secrets drawn from the whole store, and
"stale" presents 20,000 different secrets whose rows were last used long ago:
each of those is a use to record, which the code before issue #9 wrote at
once, one transaction per authentication. Each figure is the best of several
interleaved repeats.

Also reported: how many rows changed in the file during the timed loops
(authenticate() only notes uses in memory, so it should be none), then how
many ``flush_uses()`` writes afterwards, and how long it takes.
Goals: authenticate() >= 0.7x (a) and >= 8x (b) in every workload.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import tokenstore._store
from tokenstore._abid import abid_from_values
from tokenstore._credentials import generate_token, token_digest, token_hint
from tokenstore._models import APIToken
from tokenstore._times import format_time

# The same row authenticate() reads, so (a) differs from it only in the Python around it.
RAW_SELECT = (
    "SELECT id, abid, created_by_id, created_at, modified_at, name, token_digest, "
    "token_hint, expires, revoked_at, last_used_at, scopes "
    "FROM tokenstore_api_token WHERE token_digest = ?"
)
INSERT = (
    "INSERT INTO tokenstore_api_token (id, abid, created_by_id, created_at, modified_at, "
    "name, token_digest, token_hint, expires, revoked_at, last_used_at, scopes) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?, '[]')"
)
GOAL_RAW = 0.7
GOAL_PEEWEE = 8.0


def build(path: Path, count: int, recent: int) -> tuple[tokenstore._store.Store, list[str]]:
    """A store of ``count`` tokens, inserted in one transaction, and their secrets.

    The first ``recent`` were used just now; the others alternate between
    never used and used a year ago, as most tokens of a real store are.
    """
    store = tokenstore._store.open(path)
    user_id = store.users.create("bench").id
    now = datetime.now(UTC)
    used = [format_time(now), None, format_time(now - timedelta(days=365))]
    secrets = [generate_token() for _ in range(count)]
    rows = []
    for i, secret in enumerate(secrets):
        token_id = uuid.uuid4()
        # One per millisecond, as if issued over time: the ABID's ts part keeps them apart.
        created = now - timedelta(milliseconds=i)
        abid = abid_from_values(prefix="apt_", ts=created, uri=user_id, subtype="01", rand=token_id)
        rows.append(
            (
                token_id.hex,
                str(abid),
                user_id,
                format_time(created),
                format_time(created),
                f"bench {i}",
                token_digest(secret),
                token_hint(secret),
                used[0] if i < recent else used[1 + i % 2],
            )
        )
    with store.atomic():
        store.db.connection().executemany(INSERT, rows)
    return store, secrets


def rate(fn: Callable[[str], Any], secrets: list[str]) -> float:
    """Calls per second of ``fn`` over ``secrets``."""
    start = time.perf_counter()
    for secret in secrets:
        fn(secret)
    return len(secrets) / (time.perf_counter() - start)


def last_used(raw: sqlite3.Connection) -> dict[str, str | None]:
    """Every token's ``last_used_at`` as the file holds it, by id."""
    return dict(raw.execute("SELECT id, last_used_at FROM tokenstore_api_token"))


def changed(before: dict[str, str | None], after: dict[str, str | None]) -> int:
    return sum(1 for key, value in after.items() if before[key] != value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    started = time.perf_counter()
    recent = args.tokens // 20

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.sqlite3"
        store, secrets = build(path, args.tokens, recent)
        built = time.perf_counter() - started
        print(
            f"store of {args.tokens:,} tokens built in {built:.1f} s "
            f"({path.stat().st_size:,} B); {recent:,} used within the minute, "
            f"{args.tokens - recent:,} long ago or never"
        )

        raw = sqlite3.connect(path)
        sha256 = hashlib.sha256

        def raw_select(secret: str) -> Any:
            return raw.execute(RAW_SELECT, (sha256(secret.encode()).hexdigest(),)).fetchone()

        def peewee_get(secret: str) -> Any:
            digest = sha256(secret.encode()).hexdigest()
            return APIToken.get_or_none(APIToken.token_digest == digest)

        authenticate = store.tokens.authenticate
        for secret in secrets[:3]:  # the three agree before anything is timed
            token = authenticate(secret)
            assert raw_select(secret)[1] == token.abid == peewee_get(secret).abid

        rng = random.Random(1)
        stale = secrets[recent:]
        workloads = {
            "hot": rng.sample(secrets[:recent], 100) * 200,
            "spread": rng.sample(secrets, min(20_000, len(secrets))),
            "stale": rng.sample(stale, min(20_000, len(stale))),
        }
        before = last_used(raw)
        timing = time.perf_counter()
        ok = True
        for name, load in workloads.items():
            peewee_load = load[: len(load) // 10]  # it is slow; fewer calls give the same rate
            best = {"authenticate": 0.0, "raw": 0.0, "peewee": 0.0}
            for _ in range(args.repeats):
                best["authenticate"] = max(best["authenticate"], rate(authenticate, load))
                best["raw"] = max(best["raw"], rate(raw_select, load))
                best["peewee"] = max(best["peewee"], rate(peewee_get, peewee_load))
            vs_raw = best["authenticate"] / best["raw"]
            vs_peewee = best["authenticate"] / best["peewee"]
            meets = vs_raw >= GOAL_RAW and vs_peewee >= GOAL_PEEWEE
            ok = ok and meets
            print(
                f"\n{name}: {len(load):,} authentications over {len(set(load)):,} secrets\n"
                f"  authenticate()        {best['authenticate']:>10,.0f} /s\n"
                f"  (a) raw sqlite3       {best['raw']:>10,.0f} /s   "
                f"ratio {vs_raw:.2f}x (goal >= {GOAL_RAW}x)\n"
                f"  (b) peewee get_or_none {best['peewee']:>9,.0f} /s   "
                f"ratio {vs_peewee:.1f}x (goal >= {GOAL_PEEWEE:.0f}x)\n"
                f"  {'goals met' if meets else 'GOALS MISSED'}"
            )
        timed_for = time.perf_counter() - timing
        during = last_used(raw)
        flushing = time.perf_counter()
        flushed = store.tokens.flush_uses()
        flush_time = time.perf_counter() - flushing
        after = last_used(raw)
        print(
            f"\nrows written during the timed loops ({timed_for:.0f} s): "
            f"{changed(before, during)}\n"
            f"flush_uses() afterwards: {flushed:,} uses in {flush_time * 1000:.0f} ms, "
            f"{changed(during, after):,} rows changed"
        )
        raw.close()
        store.close()
    print(f"\ntotal {time.perf_counter() - started:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
