"""How fast ABIDs are made and parsed, against python-ulid and a naive encoder.

Run: ``.venv/bin/python bench/abid.py`` (needs the ``bench`` extra: python-ulid).

Generation is measured the way an insert does it: a fresh ``datetime.now(UTC)``
and ``uuid4()`` for every ABID, with the owner and subtype drawn from a handful
of repeating values, and the result turned into the stored string. Their cost
is inside the ABID figure, so the comparison with ``str(ULID())`` (which reads
the clock and draws randomness itself) is like for like.

Goals: generation >= 1.0x python-ulid ``str(ULID())``; parsing >= 1.5x
``ULID.from_str``.
"""

from __future__ import annotations

import gc
import os
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from ulid import ULID

from tokenstore._abid import ABID, abid_from_values

N = 200_000
REPEATS = 5
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

GOAL_GENERATE = 1.0
GOAL_PARSE = 1.5

# A small app: a few owners (user ids and one webhook URL) and two record types.
SOURCES = [
    (1, "01"),
    (2, "01"),
    (3, "01"),
    (1, "OutboundWebhook"),
    ("https://hooks.example.com/in/abc", "OutboundWebhook"),
    (7, "01"),
    (2, "OutboundWebhook"),
    (5, "01"),
]


def naive_prefixed_ulid(prefix: str) -> str:
    """A straightforward prefixed ULID: one divmod per char, as one would first write it."""
    ms = time.time_ns() // 1_000_000
    ts_chars = []
    for _ in range(10):
        ms, digit = divmod(ms, 32)
        ts_chars.append(ALPHABET[digit])
    randomness = int.from_bytes(os.urandom(10), "big")
    rand_chars = []
    for _ in range(16):
        randomness, digit = divmod(randomness, 32)
        rand_chars.append(ALPHABET[digit])
    return prefix + "".join(reversed(ts_chars)) + "".join(rand_chars)


def gen_abid(n: int) -> None:
    sources = SOURCES
    now = datetime.now
    uuid4 = uuid.uuid4
    for i in range(n):
        owner, subtype = sources[i & 7]
        str(abid_from_values("apt_", now(UTC), owner, subtype, uuid4()))


def gen_abid_inputs_ready(n: int) -> None:
    when = datetime.now(UTC)
    rands = [uuid.uuid4() for _ in range(1024)]
    sources = SOURCES
    for i in range(n):
        owner, subtype = sources[i & 7]
        str(abid_from_values("apt_", when, owner, subtype, rands[i & 1023]))


def gen_python_ulid(n: int) -> None:
    for _ in range(n):
        str(ULID())


def gen_naive(n: int) -> None:
    for _ in range(n):
        naive_prefixed_ulid("apt_")


def _samples() -> list[str]:
    return [
        str(abid_from_values("apt_", datetime.now(UTC), owner, subtype, uuid.uuid4()))
        for owner, subtype in SOURCES * 128
    ]


SAMPLES = _samples()
SUFFIXES = [text[4:] for text in SAMPLES]


def parse_abid(n: int) -> None:
    samples = SAMPLES
    parse = ABID.parse
    for i in range(n):
        parse(samples[i & 1023])


def parse_python_ulid(n: int) -> None:
    suffixes = SUFFIXES
    from_str = ULID.from_str
    for i in range(n):
        from_str(suffixes[i & 1023])


def best_rate(func: Callable[[int], None]) -> float:
    """Best of REPEATS runs, in ops/s; GC off while timing, as timeit does."""
    best = float("inf")
    func(N // 20)  # warm caches and specialisation
    for _ in range(REPEATS):
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            start = time.perf_counter()
            func(N)
            elapsed = time.perf_counter() - start
        finally:
            if gc_was_enabled:
                gc.enable()
        best = min(best, elapsed)
    return N / best


def table(title: str, rows: list[tuple[str, float]]) -> float:
    """Print rows against the first one (the baseline); return the second's ratio."""
    baseline = rows[0][1]
    print(f"\n{title}")
    print(f"  {'name':<52} {'ops/s':>12} {'vs baseline':>12}")
    for name, rate in rows:
        print(f"  {name:<52} {rate:>12,.0f} {rate / baseline:>11.2f}x")
    return rows[1][1] / baseline


def main() -> int:
    print(f"python {sys.version.split()[0]}, {N:,} ops per run, best of {REPEATS}")
    generate = table(
        "generation",
        [
            ("python-ulid str(ULID())  [baseline]", best_rate(gen_python_ulid)),
            ("str(abid_from_values(..., now(UTC), ..., uuid4()))", best_rate(gen_abid)),
            ("naive prefixed ULID (char-by-char loop)", best_rate(gen_naive)),
            ("  info: abid_from_values, ts and uuid precomputed", best_rate(gen_abid_inputs_ready)),
        ],
    )
    parse = table(
        "parsing",
        [
            ("python-ulid ULID.from_str(suffix)  [baseline]", best_rate(parse_python_ulid)),
            ("ABID.parse(abid)", best_rate(parse_abid)),
        ],
    )
    ok_generate = generate >= GOAL_GENERATE
    ok_parse = parse >= GOAL_PARSE
    print("\ngoals")
    print(
        f"  generation >= {GOAL_GENERATE:.1f}x str(ULID()):  {generate:.2f}x"
        f"  {'met' if ok_generate else 'NOT met'}"
    )
    print(
        f"  parsing    >= {GOAL_PARSE:.1f}x ULID.from_str: {parse:.2f}x"
        f"  {'met' if ok_parse else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
