"""Small array and table helpers that the stages share: numeric columns, star ids, row medians, per-grid values.

Each does what a pandas or NumPy one-liner does, with the same result, without that one-liner's fixed cost: for
one spectrum (a request to the service) those costs, ~25-300 us each, add up to much of the time.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import pandas as pd

T = TypeVar("T")


def numbers(column: pd.Series | np.ndarray | Sequence[Any]) -> np.ndarray:
    """Return a column as float64, anything that is not a number as NaN (``pd.to_numeric(errors="coerce")``).

    ``column`` is a table column or any 1-d array-like. One that is numeric already is taken as it is: pandas'
    conversion costs ~25 us a column, which adds up in a one-spectrum request.
    """
    if isinstance(column, np.ndarray) and column.dtype.kind in "fiub":
        return column.astype(float, copy=True)
    if not isinstance(column, pd.Series):
        column = pd.Series(np.asarray(column, dtype=object))
    if column.dtype.kind in "fiub":
        return column.to_numpy(dtype=float, na_value=np.nan, copy=True)
    return pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)


def float_column(values: Any, n: int) -> np.ndarray:
    """Return ``np.broadcast_to(np.asarray(values, float), (n,))``, at once when ``values`` has that shape already.

    ``broadcast_to`` costs ~6 us a call (~20 calls in one spectrum's classical method). Read the result only.
    """
    column = np.asarray(values, float)
    return column if column.shape == (n,) else np.broadcast_to(column, (n,))


def star_ids(meta: pd.DataFrame | Mapping[str, np.ndarray]) -> np.ndarray | None:
    """Return ``meta["star_id"].astype(str).to_numpy()`` (None without the column), quickly when they are str.

    ``meta`` is a table or its columns as arrays (:meth:`fehkit.spectra.SpectrumBatch.meta_columns`). pandas'
    conversion costs ~0.2 ms even for one row, a good part of a one-spectrum request's time.
    """
    if "star_id" not in meta:
        return None
    column = meta["star_id"]
    values = np.array(column, dtype=object) if isinstance(column, np.ndarray) else \
        column.to_numpy(dtype=object, copy=True)
    if all(type(v) is str for v in values):
        return values
    return pd.Series(column).astype(str).to_numpy()


def texts(column: pd.Series | np.ndarray) -> np.ndarray:
    """Return a table column or an array as an object array of str, missing values as "" (``.fillna("")``).

    The same as ``.fillna("").astype(str)`` on a column.
    """
    if not isinstance(column, pd.Series):
        values = np.array(column, dtype=object)
        if all(type(v) is str for v in values):
            return values
        column = pd.Series(values, dtype=object)
    values = column.to_numpy(dtype=object, na_value="", copy=True)
    if all(type(v) is str for v in values):
        return values
    return np.array([str(v) for v in values], dtype=object)


def nanmedian_rows(a: np.ndarray) -> np.ndarray:
    """Median of each row of ``a`` over its non-NaN values, as ``np.nanmedian(a, axis=1)`` (the same numbers)."""
    if a.shape[1] == 0:  # no values at all: NaN, as NumPy gives
        return np.full(a.shape[0], np.nan, a.dtype)
    s = np.sort(a, axis=1)                              # NaNs last
    n = (~np.isnan(a)).sum(axis=1)
    h = n // 2
    lo = np.where(n % 2 == 1, h, np.maximum(h - 1, 0))
    rows = np.arange(a.shape[0])
    return (s[rows, lo] + s[rows, np.minimum(h, a.shape[1] - 1)]) / a.dtype.type(2)


def per_grid(cache: dict, key: Hashable, grid: np.ndarray, make: Callable[[], T], keep: int = 1) -> T:
    """Return ``make()``, worked out once for ``key`` on ``grid`` (e.g. the wavelengths) and kept in ``cache``.

    What depends only on a grid (a detector's Legendre basis, the line windows, ...) would otherwise be worked out
    at every call, for one spectrum most of the cost. ``cache`` keeps the last ``keep`` keys, each with a copy of its
    grid: the same key on another grid is worked out again. The value is shared: callers must not change it.
    """
    hit = cache.get(key)
    if hit is not None and np.array_equal(hit[0], grid):
        return hit[1]
    value = make()
    if key not in cache and len(cache) >= keep:
        cache.clear()
    cache[key] = (grid.copy(), value)
    return value
