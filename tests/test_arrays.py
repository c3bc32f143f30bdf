"""The shared array and table helpers give what the pandas / NumPy / astropy one-liners they replace give."""

import warnings

import numpy as np
import pandas as pd
import pytest
from astropy.stats import sigma_clipped_stats

from fehkit.arrays import float_column, nanmedian_rows, numbers, per_grid, star_ids, texts
from fehkit.physics.cog import CurveOfGrowth
from fehkit.physics.joint import _per_line_median


def test_row_median_equals_nanmedian():
    rng = np.random.default_rng(4)
    a = (rng.normal(size=(3000, 41)) * 3).astype(np.float32)
    a[rng.random(a.shape) < 0.4] = np.nan
    a[::5] = np.round(a[::5])                                      # ties
    a[::7, 1:] = np.nan                                            # a single value
    a[::7, 0] = 1.5
    a[::11] = np.nan                                               # nothing at all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)           # NumPy's all-NaN slice warning
        expected = np.nanmedian(a, axis=1)
    got = nanmedian_rows(a)
    assert got.dtype == expected.dtype and np.array_equal(got, expected, equal_nan=True)
    empty = np.empty((3, 0), np.float32)                           # no column: NaN, as NumPy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.nanmedian(empty, axis=1)
    got = nanmedian_rows(empty)
    assert got.dtype == expected.dtype and np.array_equal(got, expected, equal_nan=True)


def test_per_grid_keeps_a_value_per_key_and_grid():
    cache, made = {}, []
    grid = np.linspace(0.0, 1.0, 5)

    def make(tag):
        return lambda: made.append(tag) or tag

    assert per_grid(cache, "a", grid, make(1)) == 1 and per_grid(cache, "a", grid.copy(), make(2)) == 1
    grid[0] = -1.0                                                 # the caller changes its array: worked out again
    assert per_grid(cache, "a", grid, make(3)) == 3
    assert per_grid(cache, "b", grid, make(4), keep=2) == 4 and per_grid(cache, "a", grid, make(5), keep=2) == 3
    assert per_grid(cache, "c", grid, make(6), keep=2) == 6 and list(cache) == ["c"]   # full: the old ones go
    assert made == [1, 3, 4, 6]


@pytest.mark.parametrize("column", [
    pd.Series([1.0, np.nan, -2.5]), pd.Series([1, 2, 3]), pd.Series([True, False, True]),
    pd.Series([1, None, 3], dtype="Int64"), pd.Series([1.5, None], dtype="Float64"),
    pd.Series(["1.5", "x", None], dtype=object), pd.Series(["4800", "", "nan"]), pd.Series([], dtype=float),
])
def test_numbers_equal_to_numeric(column):
    expected = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    got = numbers(column)
    assert got.dtype == np.float64 and np.array_equal(got, expected, equal_nan=True)
    for plain in (column.to_numpy(), column.tolist()):               # an array or a list: the same numbers
        assert np.array_equal(numbers(plain), expected, equal_nan=True)
    if len(got) and column.dtype == np.float64:
        got[0] = 99.0                                              # a copy, never a view of the table
        assert column.iloc[0] != 99.0


@pytest.mark.parametrize("ids", [["a", "b"], pd.Series(["a", "2M17335483-2753043"]), [1, 2], ["a", None, np.nan],
                                 pd.Series(["a", None], dtype=str)])
def test_star_ids_equal_astype_str(ids):
    meta = pd.DataFrame({"star_id": ids})
    got, expected = star_ids(meta), meta["star_id"].astype(str).to_numpy()
    assert got.dtype == expected.dtype == object
    assert [str(v) for v in got] == [str(v) for v in expected]
    assert star_ids(pd.DataFrame({"file": ["x"]})) is None


@pytest.mark.parametrize("column", [pd.Series(["teff 3677 -> 3900", "", np.nan]), pd.Series(["a", None, 1.5],
                                                                                           dtype=object),
                                    pd.Series([np.nan, np.nan], dtype=object), pd.Series([], dtype=str)])
def test_texts_equal_fillna_astype_str(column):
    expected = column.fillna("").astype(str).to_numpy(object)
    for given in (column, column.to_numpy(dtype=object)):  # a table column, or its values as an array
        got = texts(given)
        assert got.dtype == object and got.tolist() == expected.tolist()
        assert got is not given


def test_per_line_median_equals_sigma_clipped_stats():
    """The classical per-line median: astropy's clip, then the median and std of what is left, as its stats."""
    cog = CurveOfGrowth.load()
    rng = np.random.default_rng(2)
    n = 400
    teff, logg = rng.uniform(4000, 6000, n), rng.uniform(0.5, 4.5, n)
    vmic, alpha = np.full(n, 1.5), np.full(n, 0.4)
    ew = rng.uniform(0, 200, (n, cog.n_lines)) * rng.uniform(0, 1, (n, 1))
    err = rng.uniform(1, 10, (n, cog.n_lines))
    ew[rng.random(ew.shape) < 0.05] *= 5                           # outliers to clip
    usable = rng.random(ew.shape) > 0.2
    usable[:20] = False                                            # stars without a line
    usable[20:40, 1:] = False                                      # one line
    got = _per_line_median(ew, err, usable, teff, logg, vmic, alpha, cog=cog)
    det = usable & (ew >= 3 * err)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        feh, _ = cog.abundance(np.where(det, ew, np.nan), teff, logg, vmic, alpha, ew_err=err)
        feh = np.where(det, feh, np.nan)
        _, median, std = sigma_clipped_stats(feh, axis=1, sigma=3.0, maxiters=5)
    n_ok = np.isfinite(feh).sum(axis=1)
    assert np.array_equal(got["feh_cog_median"], np.where(n_ok > 0, np.ma.filled(median, np.nan), np.nan),
                          equal_nan=True)
    expected_err = np.where(n_ok > 1, np.ma.filled(std, np.nan) / np.sqrt(np.maximum(n_ok, 1)), np.nan)
    assert np.array_equal(got["feh_cog_median_err"][n_ok != 1], expected_err[n_ok != 1], equal_nan=True)
    assert (n_ok == 0).sum() >= 20 and (n_ok > 1).sum() > 300


def test_float_column_is_broadcast_to():
    for values in (5000, [4800.0], np.array([1, 2, 3]), np.array([4.5, 4.6, 4.7])):
        ref = np.broadcast_to(np.asarray(values, float), (3,) if np.size(values) == 3 else (2,))
        got = float_column(values, ref.size)
        assert got.dtype == np.float64 and got.shape == ref.shape and (got == ref).all()
    with pytest.raises(ValueError):
        float_column([1.0, 2.0], 3)
