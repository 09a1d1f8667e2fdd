"""The model the change-capture tests write, and the subprocess that writes it.

Run as ``python tests/_writer.py MODE PATH ...`` by tests/test_changes.py; each
mode is a separate process touching the same store file:

- ``crash PATH memo|user NAME``: saves one Memo (or tokenstore User) and
  SIGKILLs itself in its first post_save receiver, i.e. after the COMMIT and
  before the event is finished.
- ``write PATH OUT COUNT BARRIER [dispatch]``: waits for BARRIER to exist,
  saves COUNT Memos one commit each, and writes the pk of every event its
  receiver got to OUT, one a line; with ``dispatch`` it also calls
  ``store.dispatch()`` every 50 saves; with ``quiet`` it connects no receiver.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import peewee

import tokenstore._store
from tokenstore import signals
from tokenstore._models import ABIDModel, User


class Memo(ABIDModel):
    """A small application record: one text, one number and a secret never captured."""

    abid_prefix = "mem_"
    private_fields = ("secret",)

    name = peewee.TextField()
    n = peewee.IntegerField(default=0)
    secret = peewee.TextField(default="")

    class Meta:
        table_name = "test_changes_memo"


def crash(path: str, kind: str, name: str) -> None:
    def die(sender: Any, **kwargs: Any) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    model = Memo if kind == "memo" else User
    signals.post_save.connect(die, sender=model, weak=False)
    store = tokenstore._store.open(path)
    store.register(Memo)
    if model is Memo:
        Memo(name=name).save()
    else:
        User.create(username=name)
    raise SystemExit("still alive after SIGKILL")


def write(path: str, out: str, count: int, barrier: str, dispatch: bool, quiet: bool) -> None:
    seen: list[str] = []

    def record(sender: Any, event: Any, **kwargs: Any) -> None:
        seen.append(str(event.pk))

    if not quiet:
        signals.post_save.connect(record, sender=Memo, weak=False)
    store = tokenstore._store.open(path)
    store.register(Memo)
    Path(barrier + f".ready.{os.getpid()}").touch()
    deadline = time.monotonic() + 30
    while not os.path.exists(barrier):
        if time.monotonic() > deadline:
            raise SystemExit("barrier never opened")
        time.sleep(0.005)
    for i in range(count):
        Memo(name=f"{os.getpid()}-{i}", n=i).save()
        if dispatch and i % 50 == 0:
            store.dispatch()
    if dispatch:
        store.dispatch()
    store.close()
    Path(out).write_text("".join(pk + "\n" for pk in seen), encoding="ascii")


def main(argv: list[str]) -> None:
    mode, path, *rest = argv
    if mode == "crash":
        crash(path, rest[0], rest[1])
    elif mode == "write":
        out, count, barrier, *flags = rest
        write(path, out, int(count), barrier, "dispatch" in flags, "quiet" in flags)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    # Run as the module the tests import, so Memo's ref (``_writer.Memo``) is the same here.
    import _writer

    _writer.main(sys.argv[1:])
