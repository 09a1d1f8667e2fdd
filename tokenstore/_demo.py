"""``tokenstore demo``: the whole story on a throwaway file, printed as it happens.

It is also the shortest complete example of using tokenstore from Python.
"""

from __future__ import annotations

import json
import shlex
import socket
import sqlite3
import tempfile
import threading
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import peewee

from ._errors import AuthenticationError, ValidationError
from ._inputs import check_path
from ._models import ABIDModel
from ._receiver import make_receiver
from ._store import open as open_store
from ._times import format_time


class Tag(ABIDModel):
    """A label for snapshots; ArchiveBox keeps a snapshot's tags in a join table, like this."""

    abid_prefix = "tag_"
    abid_uri_src = "name"
    name = peewee.TextField()


class Snapshot(ABIDModel):
    """An application's own record, as ArchiveBox would have: its ABID comes from its URL."""

    abid_prefix = "snp_"
    abid_uri_src = "url"
    url = peewee.TextField()
    title = peewee.TextField(default="")
    tags = peewee.ManyToManyField(Tag, backref="snapshots")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _step(text: str) -> None:
    print(f"\n== {text}")


def run_demo(directory: str | None = None) -> int:
    folder = check_path(directory or tempfile.mkdtemp(prefix="tokenstore-demo-"), "--dir")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file of that name, a folder nobody may write ...
        raise ValidationError(f"--dir {folder}: cannot make the folder: {exc.strerror}") from None
    path = folder / "demo.sqlite3"
    if path.exists():  # the story starts from nothing: a second run would meet the first's rows
        raise ValidationError(
            f"--dir {folder} holds a demo store already: delete {shlex.quote(str(path))} "
            "to start over, or give a new folder"
        )
    received: list[dict[str, Any]] = []
    arrived = threading.Condition()

    def on_event(payload: dict[str, Any], headers: Mapping[str, str]) -> None:
        with arrived:
            received.append(payload)
            arrived.notify_all()
        print(f"   receiver: {headers.get('webhook-id')} {payload['type']} (signature verified)")

    _step(f"open a store at {path}")
    store = open_store(path, webhook_allow=["127.0.0.1/32"])
    store.register(Tag)
    store.register(Snapshot)
    print("   tables, triggers and the 'system' user are in place; Tag and Snapshot are registered")

    _step("a user and an API token, shown once")
    alice = store.users.create("alice")
    token, secret = store.tokens.create(
        alice, name="backup script", expires=timedelta(days=30), scopes=("snapshots:read",)
    )
    print(f"   secret (shown once, stored only as a SHA-256 digest): {secret}")
    print(f"   the record: {token!r}, valid until {format_time(token.expires)}")
    print(f"   authenticate(secret) -> {store.tokens.authenticate(secret)!r}")
    tampered = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    try:
        store.tokens.authenticate(tampered)
    except AuthenticationError as exc:
        print(f"   a mistyped secret is refused, and its checksum says why: {exc}")

    _step("a webhook to a receiver on 127.0.0.1")
    port = _free_port()
    hook = store.webhooks.create(
        "demo receiver",
        Snapshot,
        f"http://127.0.0.1:{port}/hooks/snapshots",
        signal="CREATE_UPDATE_DELETE_OR_M2M",
    )
    server = make_receiver("127.0.0.1", port, hook.secret, on_event)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"   {hook!r}")
    print("   the receiver verifies each request with tokenstore.verify_webhook(hook.secret, ...)")

    try:
        _step("changes: each committed one is signed and delivered before save() returns")
        snap = Snapshot.create(url="https://example.com/article", title="An article")
        print(f"   created {snap.abid}")
        snap.title = "An article (edited)"
        snap.save()
        print(f"   updated {snap.abid}")
        tag = Tag.create(name="news")
        snap.tags.add(tag)
        print(f"   tagged {snap.abid} with {tag.name!r} (a row in the join table, captured too)")
        snap.tags.remove(tag)
        print("   untagged it")
        try:
            with store.atomic():
                Snapshot.create(url="https://example.com/never", title="rolled back")
                raise RuntimeError("something went wrong")
        except RuntimeError:
            print("   a transaction that created a snapshot rolled back: nothing is sent for it")
        with store.atomic():
            for n in range(2):
                Snapshot.create(url=f"https://example.com/batch/{n}")
        print("   two snapshots created in one transaction: sent when it commits")
        snap.delete_instance()
        print(f"   deleted {snap.abid}")
        with arrived:
            arrived.wait_for(lambda: len(received) >= 7, timeout=10)
    finally:
        server.shutdown()
        server.server_close()

    _step(f"the receiver got {len(received)} verified messages")
    print("   " + "\n   ".join(json.dumps(p)[:150] for p in received))
    rolled_back = any("never" in json.dumps(p) for p in received)
    print(f"   anything from the rolled-back transaction? {'YES (bug!)' if rolled_back else 'no'}")

    _step("the delivery log (store.webhooks.deliveries())")
    for d in reversed(store.webhooks.deliveries(hook)):
        print(f"   {d.abid}  {d.event_type:<22} {d.status:<9} HTTP {d.last_status_code}"
              f"  {d.duration_ms} ms")  # fmt: skip
    store.close()

    query = "SELECT webhook_id, event_type, status, last_status_code FROM tokenstore_delivery_log"
    _step("look inside with sqlite3")
    print(f"   sqlite3 {shlex.quote(str(path))} {shlex.quote(query)}")
    conn = sqlite3.connect(path)
    for row in conn.execute(query):
        print("   " + "|".join("" if v is None else str(v) for v in row))
    (digests,) = conn.execute("SELECT count(*) FROM tokenstore_api_token").fetchone()
    conn.close()
    print(f"   ({digests} token row; the file holds its digest, never the secret)")
    print(f"\nThe demo's file stays at {path}; delete the folder when you are done.")
    ok = len(received) == 7 and not rolled_back
    return 0 if ok else 1
