"""Timing helpers the benchmarks share."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable


def timed(run: Callable[[], None]) -> float:
    """Seconds one run takes, GC off while timing, as timeit does."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        run()
        return time.perf_counter() - start
    finally:
        if gc_was_enabled:
            gc.enable()
