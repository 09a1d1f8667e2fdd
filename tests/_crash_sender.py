"""Helper for test_delivery: commit a change, then die by SIGKILL before the send.

Usage: ``python _crash_sender.py STORE_PATH ENDPOINT``. The post_save receiver
runs after the commit and before the webhook is attempted, so the process dies
with the delivery written but never sent; the parent test checks that
``deliver_due()`` sends it later, once.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import peewee

import tokenstore
from tokenstore import signals
from tokenstore._models import ABIDModel


class Note(ABIDModel):
    abid_prefix = "not_"
    text = peewee.TextField(default="")


def die(sender: Any, **kwargs: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    path, endpoint = sys.argv[1:3]
    store = tokenstore.open(
        path,
        webhook_allow=["127.0.0.1/32"],
        connect_timeout=0.5,
        read_timeout=0.5,
        delivery_deadline=1.0,
    )
    store.register(Note)
    store.webhooks.create("notes", Note, endpoint)
    signals.post_save.connect(die, sender=Note, weak=False)
    Note.create(text="written before the crash")
    sys.exit("still alive: the post_save receiver did not run before the send")


if __name__ == "__main__":
    main()
