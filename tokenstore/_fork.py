"""Stores in a process forked after they were opened: the child starts afresh.

Servers and pools fork after the application has opened its store
(gunicorn's and uWSGI's prefork workers, ``multiprocessing``'s 'fork',
celery's prefork pool). The child inherits what belongs to the parent's
process: an SQLite connection, which SQLite says never to use across a fork;
a PostgreSQL session whose socket the parent goes on speaking on (two
processes on one session corrupt it, and closing it in the child ends the
parent's); per-thread cursors and HTTP sessions on those; the claimant id
and listener row of the parent; threads that do not exist in the child.

So each store, held weakly, is told in the child right after the fork to
drop all of it without closing anything (``os.register_at_fork``), and opens
its own on first use; the parent is untouched. What the child drops is kept
here, never used and never closed: closing it, even by a finalizer, would
act on the parent's session or file.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable

_callbacks: list[weakref.WeakMethod[Callable[[], None]]] = []

#: What children inherited from their parent: referenced so that nothing finalizes it here.
_inherited: list[object] = []


def on_fork_in_child(method: Callable[[], None]) -> None:
    """Call ``method`` (a bound method, held weakly) in every child forked from now on."""
    _callbacks[:] = [ref for ref in _callbacks if ref() is not None]
    _callbacks.append(weakref.WeakMethod(method))


def keep(*inherited: object) -> None:
    """Keep the parent's objects alive in the child, unused and unclosed (None is skipped)."""
    _inherited.extend(obj for obj in inherited if obj is not None)


def _in_child() -> None:
    for ref in list(_callbacks):
        method = ref()
        if method is not None:
            method()


os.register_at_fork(after_in_child=_in_child)
