"""An application that opens its store, uses it, then forks workers that use it too.

Run as ``python tests/_forking_app.py MODE PATH`` by tests/test_fork.py, in a
process of its own (a fork of pytest itself would copy its threads and
fixtures). MODE is ``fork`` (``os.fork``, children ending with ``os._exit``)
or ``pool`` (a ``multiprocessing`` pool of 4 with the 'fork' start method).
The parent saves while its children do; it prints one line of JSON: the
children's errors, each webhook-id's and each row's deliveries, the listener
rows once the children have closed their stores, and whether the parent's
own session and store still work.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import threading
import traceback
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import peewee

import tokenstore
from tokenstore import ABIDModel, signals

CHILDREN = 4
SAVES = 10
_posted: Counter[str] = Counter()
_urls: Counter[str] = Counter()
_lock = threading.Lock()
_opened: tuple[tokenstore.Store, str]


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with _lock:
            _posted[self.headers["webhook-id"]] += 1
            _urls[body["data"]["fields"]["url"]] += 1
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Page(ABIDModel):
    abid_prefix = "pag_"
    abid_uri_src = "url"
    url = peewee.TextField()


def _on_save(sender: Any, **extra: Any) -> None:
    pass


def _work(worker: int) -> str:
    """A worker's use of the store it inherited (a pool's task is given no store)."""
    store, secret = _opened
    try:
        for n in range(SAVES):
            Page.create(url=f"w{worker}-{n}")
        store.tokens.authenticate(secret)
        store.dispatch()
        store.wait_for_changes(0.01)
        store.close()
    except Exception:
        return traceback.format_exc()
    return ""


def main(mode: str, path: str) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    store = tokenstore.open(path, webhook_allow=["127.0.0.1/32"])
    store.register(Page)
    store.webhooks.create("pages", Page, f"http://127.0.0.1:{server.server_address[1]}/")
    signals.post_save.connect(_on_save, sender=Page)  # the store listens: a listener row
    Page.create(url="parent-first")
    _, secret = store.tokens.create(store.users.create("alice"), name="app")
    store.tokens.authenticate(secret)
    global _opened
    _opened = (store, secret)
    store.wait_for_changes(0.01)  # on PostgreSQL, a listening connection too
    store.webhooks.start_retry_thread(0.5)
    session = store.db.execute_sql("SELECT 1").fetchone()  # the parent's connection is open

    errors: list[str] = []
    if mode == "fork":
        pids = []
        for worker in range(CHILDREN):
            pid = os.fork()
            if pid == 0:
                error = _work(worker)
                sys.stderr.write(error)
                sys.stderr.flush()
                os._exit(1 if error else 0)
            pids.append(pid)
        parent_errors = _parent_saves()
        for pid in pids:
            code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            if code:
                errors.append(f"child exited {code}")
    else:
        with multiprocessing.get_context("fork").Pool(4) as pool:
            result = pool.map_async(_work, range(CHILDREN))
            parent_errors = _parent_saves()
            errors = [e for e in result.get(60) if e]
    listeners = [row[0] for row in store.db.execute_sql("SELECT claimant FROM tokenstore_listener")]
    store.tokens.authenticate(secret)
    Page.create(url="parent-last")
    store.dispatch()
    print(
        json.dumps(
            {
                "errors": errors + parent_errors,
                "session": list(session),
                "listeners": listeners,
                "claimant": store._dispatcher.claimant,
                "posted": sorted(_posted.values()),
                "urls": dict(_urls),
                "rows": Page.select().count(),
            }
        )
    )
    store.close()
    server.shutdown()


def _parent_saves() -> list[str]:
    try:
        for n in range(SAVES):
            Page.create(url=f"parent-{n}")
    except Exception:
        return [traceback.format_exc()]
    return []


if __name__ == "__main__":
    main(*sys.argv[1:])
