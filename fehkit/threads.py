"""Threads for the compiled kernels: they release the GIL, so the rows of a batch can share the CPU's cores.

The continuum fit and the classical joint likelihood treat every spectrum (star) on its own, so splitting a batch
into contiguous parts and running the parts in threads gives the same numbers, only sooner. How many threads:
the environment variable ``FEHKIT_THREADS`` (e.g. ``1`` inside a process of a process pool that already gives each
core a process: ``fehkit batch`` sets it for its Dask workers), else the number of CPUs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["THREADS_ENV", "map_parts", "n_threads"]

#: Environment variable that sets the number of threads (default: the number of CPUs).
THREADS_ENV = "FEHKIT_THREADS"

T = TypeVar("T")


def n_threads() -> int:
    """Threads the kernels may use: ``FEHKIT_THREADS`` if set (at least 1), else the number of CPUs."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if raw:
        try:
            return max(1, int(raw))
        except ValueError:
            raise ValueError(f"{THREADS_ENV}={raw!r}: expected a whole number of threads, e.g. 1") from None
    return os.cpu_count() or 1


def map_parts(fn: Callable[[slice], T], n: int, *, min_rows: int = 64, max_rows: int | None = None) -> list[T]:
    """Run ``fn`` on contiguous parts of ``range(n)`` (as slices), in threads; return the results in order.

    One part per thread, each of at least ``min_rows`` rows (fewer parts when ``n`` is small: one part runs in this
    thread) and, with ``max_rows``, at most that many.
    """
    parts = max(1, min(n_threads(), n // max(1, min_rows)))
    if max_rows:
        parts = max(parts, -(-n // max_rows))
    size = -(-n // parts) if n else 0
    slices = [slice(s, min(s + size, n)) for s in range(0, n, size)] if n else []
    if len(slices) <= 1:
        return [fn(s) for s in slices]
    with ThreadPoolExecutor(min(len(slices), n_threads())) as pool:
        return list(pool.map(fn, slices))
