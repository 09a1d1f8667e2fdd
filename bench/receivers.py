"""What a receiver that misbehaves costs the thread that saves, against a bare requests loop.

Run: ``.venv/bin/python bench/receivers.py``

The receiver runs in its own process (this script's ``--serve MODE``), on
loopback, in one of these modes:

- **ok**: answers ``200 ok`` at once (the reference);
- **slow**: answers ``200 ok`` after 50 ms;
- **dead**: takes the connection and the request, and never answers;
- **trickle**: sends its status line and headers one byte every 100 ms
  (about 4 s a response), so no single read ever waits past a timeout;
- **refused**: nothing listens on the port.

Two variants save the same rows, one webhook each, in turn:

- **tokenstore**: ``Note.create()`` with one matching hook, the store opened
  with a 1 s ``delivery_deadline`` (and 1 s connect and read timeouts) and
  the default ``sync_budget``;
- **baseline**: the bare loop an application writes without tokenstore,
  bench/webhooks.py's ``RawBaseline``: a raw ``sqlite3`` INSERT + COMMIT,
  then ``requests.Session().post`` with ``timeout=(1, 1)``, an error caught
  and dropped.

Reported per mode: the saves' total time, the median and slowest save, and
tokenstore's throughput as a ratio of the baseline's. A receiver that fails
costs tokenstore one deadline: the hook then waits for its retry, and the
saves meanwhile only record their deliveries. Nothing is lost: the last
column counts the deliveries left pending or failed, to go out on the retry
path. The baseline pays its timeout on every save, and the trickle as long
as it lasts. Saves per mode are few where the baseline pays seconds each.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests
from webhooks import Note, RawBaseline

import tokenstore

TIMEOUT = 1.0
SAVES = {"ok": 500, "slow": 40, "dead": 8, "trickle": 3, "refused": 200}
HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"


# -- the receiver ---------------------------------------------------------------------


async def _answer(mode: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read each request (headers, Content-Length body) and answer as ``mode`` says."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            if mode == "dead":
                await asyncio.sleep(3600)
            if mode == "slow":
                await asyncio.sleep(0.05)
            if mode == "trickle":
                for byte in HEAD:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.1)
                writer.write(b"ok")
            else:
                writer.write(HEAD + b"ok")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def serve(mode: str) -> None:
    """Run the receiver on a free loopback port; print the port, serve until killed."""

    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: _answer(mode, r, w), "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    asyncio.run(main())


def start(mode: str) -> tuple[subprocess.Popen[str] | None, str]:
    """The receiver's process (None for ``refused``) and the URL to post to."""
    if mode == "refused":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return None, f"http://127.0.0.1:{port}/hook"
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, f"http://127.0.0.1:{int(proc.stdout.readline())}/hook"


# -- the runs -------------------------------------------------------------------------


def save_times(save: Callable[[int], None], n: int) -> list[float]:
    """Seconds each of ``n`` saves took."""
    times = []
    for i in range(n):
        start = time.perf_counter()
        save(i)
        times.append(time.perf_counter() - start)
    return times


def baseline_save(raw: RawBaseline) -> Callable[[int], None]:
    def save(i: int) -> None:
        with contextlib.suppress(requests.RequestException):
            raw.save(i)

    return save


def tokenstore_save(i: int) -> None:
    Note.create(text=f"note {i}")


def run(tmp: Path, mode: str) -> tuple[list[float], list[float], int]:
    """Both variants' save times against one receiver, and tokenstore's deliveries left."""
    proc, url = start(mode)
    try:
        store = tokenstore.open(
            tmp / f"{mode}.sqlite3",
            webhook_allow=["127.0.0.1/32"],
            delivery_deadline=TIMEOUT,
            connect_timeout=TIMEOUT,
            read_timeout=TIMEOUT,
        )
        store.register(Note)
        store.webhooks.create("notes", Note, url)
        raw = RawBaseline(tmp / f"{mode}-raw.sqlite3", url, b'{"type":"note.created"}')
        raw.timeout = (TIMEOUT, TIMEOUT)
        n = SAVES[mode]
        base = save_times(baseline_save(raw), n)
        ours = save_times(tokenstore_save, n)
        left = len(store.webhooks.deliveries(status="pending", limit=10_000))
        left += len(store.webhooks.deliveries(status="failed", limit=10_000))
        store.close()
        return ours, base, left
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()


def main() -> int:
    if "--serve" in sys.argv:
        serve(sys.argv[sys.argv.index("--serve") + 1])
        return 0
    print(
        f"one webhook per save; tokenstore: delivery_deadline {TIMEOUT} s; "
        f"baseline: requests timeout=({TIMEOUT}, {TIMEOUT})\n"
    )
    print(
        f"{'receiver':<9} {'saves':>5}  {'variant':<10} {'total s':>8} {'median ms':>10} "
        f"{'slowest ms':>11} {'ratio':>7} {'left':>5}"
    )
    with tempfile.TemporaryDirectory() as folder:
        for mode in SAVES:
            ours, base, left = run(Path(folder), mode)
            ratio = sum(base) / sum(ours)
            for name, times, shown, pending in (
                ("baseline", base, "", ""),
                ("tokenstore", ours, f"{ratio:.2f}x", str(left)),
            ):
                print(
                    f"{mode if name == 'baseline' else '':<9} "
                    f"{len(times) if name == 'baseline' else '':>5}  {name:<10} "
                    f"{sum(times):>8.2f} {statistics.median(times) * 1e3:>10.1f} "
                    f"{max(times) * 1e3:>11.1f} {shown:>7} {pending:>5}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
