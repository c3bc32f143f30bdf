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


class LazyTable:
    """A dataclass field that holds a DataFrame, or its columns as arrays that become one when first read.

    Building a table costs ~0.5-1 ms even for one row, a good part of a one-spectrum request: a stage that needs a
    column or two reads the arrays (:meth:`columns`), and the table is built only for a caller that asks for it.
    The instance keeps what it was given in two attributes, ``attrs``: the table (once built) and the arrays (until
    then). :func:`dataclasses.replace` and :func:`dataclasses.fields` work as on any field.

    Parameters
    ----------
    attrs : (str, str)
        The instance's attributes that hold the table and the arrays.
    n_rows : callable
        The instance's number of rows (the length of a table built without columns).
    optional : bool
        The field's default is None (the owner makes the empty table); otherwise the field has no default.
    error : exception class
        Raised for a column that is not a 1-D array.
    """

    def __init__(self, attrs: tuple[str, str], n_rows: Callable[[Any], int], *, optional: bool = False,
                 error: type[Exception] = ValueError) -> None:
        self.attrs, self.n_rows, self.optional, self.error = attrs, n_rows, optional, error
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> pd.DataFrame | None:
        if obj is None:  # the field's default, asked for by @dataclass
            if self.optional:
                return None
            raise AttributeError(self.name)
        table_attr, arrays_attr = self.attrs
        if getattr(obj, table_attr) is None:
            arrays = getattr(obj, arrays_attr)
            setattr(obj, table_attr, pd.DataFrame(arrays, index=pd.RangeIndex(self.n_rows(obj))))
            setattr(obj, arrays_attr, None)  # from now on the table is what a caller may change
        return getattr(obj, table_attr)

    def __set__(self, obj: Any, value: pd.DataFrame | Mapping[str, np.ndarray] | None) -> None:
        table_attr, arrays_attr = self.attrs
        if value is None or isinstance(value, pd.DataFrame):
            setattr(obj, table_attr, value)
            setattr(obj, arrays_attr, None)
            return
        arrays = dict(value)
        for name, column in arrays.items():
            if not isinstance(column, np.ndarray) or column.ndim != 1:
                found = f"shape {column.shape}" if isinstance(column, np.ndarray) else type(column).__name__
                raise self.error(f"{self.name} column {name!r}: expected a 1-D numpy array, found {found}")
        setattr(obj, table_attr, None)
        setattr(obj, arrays_attr, arrays)

    def source(self, obj: Any) -> pd.DataFrame | dict[str, np.ndarray] | None:
        """Return the table if it is built, else the arrays (what a new instance of the same rows may take)."""
        table_attr, arrays_attr = self.attrs
        table = getattr(obj, table_attr)
        return table if table is not None else getattr(obj, arrays_attr)

    def columns(self, obj: Any, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Return the named columns that exist (default: all) as arrays by name, without building the table.

        The arrays given are returned as they are (no copies): read them, do not change them.
        """
        source = self.source(obj)
        if isinstance(source, pd.DataFrame):
            return {k: source[k].to_numpy() for k in (source.columns if names is None else names) if k in source}
        source = source or {}
        return {k: source[k] for k in (source if names is None else names) if k in source}

    def rows(self, obj: Any, idx: np.ndarray) -> pd.DataFrame | dict[str, np.ndarray]:
        """Return the rows ``idx`` (integers): the table's, with a new index, or the arrays'."""
        source = self.source(obj)
        if isinstance(source, pd.DataFrame):
            return source.iloc[idx].reset_index(drop=True)
        return {k: v[idx] for k, v in (source or {}).items()}


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
