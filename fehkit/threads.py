"""The compiled kernels' switch, and threads for them: they release the GIL, so a batch's rows share the cores.

The continuum fit, the EW fits and the classical joint likelihood treat every spectrum (star) on its own, so
splitting a batch into contiguous parts and running the parts in threads gives the same numbers, only sooner. How
many threads: the environment variable ``FEHKIT_THREADS`` (e.g. ``1`` inside a process of a process pool that
already gives each core a process: ``fehkit batch`` sets it for its Dask workers), else the number of CPUs.
``FEHKIT_NUMBA=0`` turns the compiled kernels off (the NumPy code runs instead, with the same numbers).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any, TypeVar

__all__ = ["NUMBA_ENV", "THREADS_ENV", "SharedSetting", "compiled", "map_parts", "map_threads", "n_threads",
           "numba_wanted"]

#: Environment variable that sets the number of threads (default: the number of CPUs).
THREADS_ENV = "FEHKIT_THREADS"
#: Environment variable that turns the compiled (numba) kernels off when ``0``.
NUMBA_ENV = "FEHKIT_NUMBA"

T = TypeVar("T")


def n_threads() -> int:
    """Threads the kernels may use: ``FEHKIT_THREADS`` if set (at least 1), else the number of CPUs."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if raw:
        try:
            return max(1, int(raw))
        except ValueError:
            raise ValueError(f"{THREADS_ENV}={raw!r}: expected a whole number of threads, e.g. 1") from None
    return _cpu_count()


@cache
def _cpu_count() -> int:
    """Return the number of CPUs, asked once (``os.cpu_count`` reads the system each time: ~40 us a call)."""
    return os.cpu_count() or 1


def numba_wanted() -> bool:
    """Whether the compiled kernels may run: not when ``FEHKIT_NUMBA`` is ``0`` (read when a module is imported)."""
    return os.environ.get(NUMBA_ENV, "1") != "0"


@cache
def compiled(module: str) -> Any:
    """Return the kernel module ``module`` (imported, and numba with it, on first use), or None without numba."""
    kernels = importlib.import_module(module)
    return kernels if kernels.numba is not None else None


def map_threads(fn: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
    """Run ``fn`` on each of ``items`` in up to :func:`n_threads` threads; return the results in order."""
    if len(items) <= 1 or n_threads() == 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(min(len(items), n_threads())) as pool:
        return list(pool.map(fn, items))


def map_parts(fn: Callable[[slice], T], n: int, *, min_rows: int = 64, max_rows: int | None = None) -> list[T]:
    """Run ``fn`` on contiguous parts of ``range(n)`` (as slices), in threads; return the results in order.

    One part per thread, each of at least ``min_rows`` rows (fewer parts when ``n`` is small: one part runs in this
    thread) and, with ``max_rows``, at most that many.
    """
    parts = max(1, min(n_threads(), n // max(1, min_rows)))
    if max_rows:
        parts = max(parts, -(-n // max_rows))
    size = -(-n // parts) if n else 0
    return map_threads(fn, [slice(s, min(s + size, n)) for s in range(0, n, size)] if n else [])


class SharedSetting:
    """A process-wide setting changed while callers are inside ``with setting():``, as it was once they have left.

    ``change()`` makes the change and returns what undoes it (or None: nothing to undo). Calls from several threads
    at once share one change, made by the first to enter and undone by the last to leave.
    """

    def __init__(self, change: Callable[[], Callable[[], object] | None]) -> None:
        self._change = change
        self._lock = threading.Lock()
        self._users = 0
        self._undo: Callable[[], object] | None = None

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        """Hold the change inside: made on entering if no other caller holds it, undone when the last one leaves."""
        with self._lock:
            if self._users == 0:
                self._undo = self._change()
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0 and self._undo is not None:
                    self._undo()
                    self._undo = None
