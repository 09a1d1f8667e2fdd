"""A store opened, then the process forks: children and parent use it at once.

Each scenario runs in a process of its own (``tests/_forking_app.py``), with a
timeout: before the fix, a child on PostgreSQL spoke on the parent's session
and the parent hung waiting for an answer its child had read.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tokenstore import Store

HERE = Path(__file__).parent
CHILDREN = 4
SAVES = 10


def _run(mode: str, db_path: Path | str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, str(HERE / "_forking_app.py"), mode, str(db_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def _run_script(script: str, db_path: Path | str) -> None:
    """Run a forking script on the store in a process of its own; it must exit 0."""
    done = subprocess.run(
        [sys.executable, "-c", script, str(db_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]


@pytest.mark.parametrize("mode", ["fork", "pool"])
def test_children_forked_after_open_use_the_store_alongside_the_parent(
    store: Store, db_path: Path | str, mode: str
) -> None:
    store.close()  # the scenario's own process opens it
    result = _run(mode, db_path)
    assert result["errors"] == []
    # every save of parent and children delivered once, each delivery posted once
    expected = {f"w{w}-{n}" for w in range(CHILDREN) for n in range(SAVES)}
    expected |= {f"parent-{n}" for n in range(SAVES)} | {"parent-first", "parent-last"}
    assert result["urls"] == dict.fromkeys(expected, 1)
    assert result["posted"] == [1] * len(expected)
    assert result["rows"] == len(expected)
    # the children's close() neither ended the parent's registration nor left their own
    assert result["listeners"] == [result["claimant"]]


_DEADLINE_CHILD = """
import os, time
from tokenstore import _deadline

with _deadline.limit(5.0):  # the parent's watcher thread starts, and outlives the attempt
    pass
pid = os.fork()
if pid == 0:
    with _deadline.limit(0.2) as attempt:
        time.sleep(1.0)
    os._exit(0 if attempt.expired else 3)
os._exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def test_a_child_forked_while_the_deadline_watcher_runs_watches_its_own_attempts() -> None:
    # The watcher thread ran in the parent: the child's attempts would never expire.
    done = subprocess.run(
        [sys.executable, "-c", _DEADLINE_CHILD], capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


_IMPORTING_CHILD = """
import os, sys, threading, time
import tokenstore

class SlowRequests:  # the first import of requests is slow, as on a cold disk
    started = threading.Event()

    def find_spec(self, name, path=None, target=None):
        if name == "requests":
            sys.meta_path.remove(self)
            self.started.set()
            time.sleep(0.3)  # meanwhile the module's import lock is held
        return None

slow = SlowRequests()
sys.meta_path.insert(0, slow)
store = tokenstore.open(sys.argv[1], webhook_allow=["127.0.0.1/32"], sync_budget=0)
store.webhooks.create("users", "tokenstore.User", "http://127.0.0.1:9/")
store.users.create("alice")  # due now: the retry thread's first round sends it
thread = store.webhooks.start_retry_thread(0.01)
slow.started.wait(0.5)
pid = os.fork()
if pid == 0:
    threading.Timer(5, os._exit, (3,)).start()  # deadlocked: the lock's holder is not here
    import requests
    os._exit(0)
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
thread.stop()
store.close()
sys.exit(code)
"""


def test_a_child_forked_while_the_retry_thread_starts_can_load_the_http_library(
    tmp_path: Path,
) -> None:
    # The retry thread imported requests on its first round, holding the module's import
    # lock; a child forked meanwhile waited for that lock forever at its first send.
    _run_script(_IMPORTING_CHILD, tmp_path / "store.sqlite3")


_USES_CHILD = """
import os, sys
import tokenstore

store = tokenstore.open(sys.argv[1])
alice = store.users.create("alice")
_, first = store.tokens.create(alice, name="parent's")
_, second = store.tokens.create(alice, name="child's")
store.tokens.authenticate(first)  # noted: the parent's flush timer starts
pid = os.fork()
if pid == 0:
    store.tokens.authenticate(second)
    timer = store.tokens._flusher  # the child's uses are written within a minute, by its own
    os._exit(0 if timer is not None and timer.is_alive() else 3)
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
store.close()
sys.exit(code)
"""


def test_a_child_forked_with_uses_noted_writes_its_own_uses(
    store: Store, db_path: Path | str
) -> None:
    store.close()
    _run_script(_USES_CHILD, db_path)


_THREAD_CHILD = """
import gc, os, sys, threading
import tokenstore

store = tokenstore.open(sys.argv[1])
forked, checked, seen = threading.Event(), threading.Event(), []

def worker():  # a thread with a connection of its own, alive across the fork
    seen.append(len(store.users.list()))
    forked.wait(30)
    try:
        seen.append(len(store.users.list()))
    except Exception as exc:
        seen.append(repr(exc))
    checked.set()

thread = threading.Thread(target=worker)
thread.start()
while not seen:
    pass
pid = os.fork()
if pid == 0:  # the worker thread does not exist here: what it held is dropped with it
    store.users.create("child")
    gc.collect()
    os._exit(0)
os.waitpid(pid, 0)
forked.set()
checked.wait(30)
thread.join(30)
store.close()
print(seen)
sys.exit(0 if seen == [1, 2] else 3)
"""


def test_a_child_leaves_the_connections_of_the_parents_other_threads_alone(
    store: Store, db_path: Path | str
) -> None:
    # A connection is closed when its thread ends (close_with_thread); in the child, the
    # parent's other threads end at the fork, and closing their connections there ended
    # the parent's PostgreSQL sessions.
    store.close()
    _run_script(_THREAD_CHILD, db_path)
