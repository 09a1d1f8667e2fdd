"""The model the storage-fault tests write, and a child process that writes it under a limit.

Run as ``python tests/_storage_child.py PATH OUT HOOK_URL`` by
tests/test_storage_faults.py: it opens the store at PATH with a hook on
``Entry`` posting to HOOK_URL, saves one entry, then lowers its own
RLIMIT_FSIZE to the size of the largest store file, so that every write
needing one more byte fails the way a full disk does (Python ignores
SIGXFSZ, so the write returns EFBIG). It tries several kinds of write, lifts
the limit, writes again with the same Store, and reports to OUT as JSON.
"""

from __future__ import annotations

import json
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peewee

import tokenstore
from tokenstore import ABIDModel, signals


class Entry(ABIDModel):
    """An application record with a unique key and a body big enough to need new pages."""

    abid_prefix = "ent_"
    abid_uri_src = "key"
    key = peewee.TextField(unique=True)
    body = peewee.TextField(default="")

    class Meta:
        table_name = "test_storage_entry"


def store_files(path: Path) -> list[Path]:
    return [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]


def attempt(write: Callable[[], object]) -> dict[str, Any]:
    try:
        write()
    except Exception as exc:
        return {
            "type": type(exc).__name__,
            "message": str(exc),
            "tokenstore_error": isinstance(exc, tokenstore.TokenstoreError),
        }
    return {"type": None}


def main(path: Path, out: Path, hook_url: str) -> None:
    saved: list[str] = []

    def on_save(sender: Any, instance: Entry, **extra: Any) -> None:
        saved.append(instance.key)

    signals.post_save.connect(on_save, sender=Entry, weak=False)
    store = tokenstore.open(path, webhook_allow=["127.0.0.1/32"])
    store.register(Entry)
    store.webhooks.create("entries", Entry, hook_url)
    alice = store.users.create("alice")
    Entry.create(key="before")

    def in_one_transaction() -> None:
        with store.atomic():
            Entry.create(key="a1", body="a" * 5000)
            Entry.create(key="a2", body="b" * 5000)

    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    limit = max(p.stat().st_size for p in store_files(path))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    faults = {
        "save": attempt(lambda: Entry.create(key="big", body="x" * 20000)),
        "user": attempt(lambda: store.users.create("bob")),
        "token": attempt(lambda: store.tokens.create(alice, name="ci")),
        "atomic": attempt(in_one_transaction),
    }
    in_transaction = store.db.connection().in_transaction
    readable = [e.key for e in Entry.select().order_by(Entry.key)]
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    Entry.create(key="after", body="x" * 20000)
    store.users.create("bob")
    store.close()
    report = {
        "faults": faults,
        "in_transaction": in_transaction,
        "readable": readable,
        "saved": saved,
    }
    out.write_text(json.dumps(report), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
