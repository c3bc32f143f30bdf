"""The compiled (numba) kernels of the EW engine give the numbers of its numpy path (SYNTHETIC spectra and fits).

The kernels compute in float64 throughout; the numpy path runs its first fits in float32. So they are compared with
the numpy path in float64 (``ArrayBackend.float64``) to rounding, and with the default numpy path to a small fraction
of the EW errors, with the same flags.
"""

from __future__ import annotations

import importlib
import os
import sys

import numpy as np
import pytest

from fehkit.continuum import normalize
from fehkit.ew import kernels, measure_ew, solver
from fehkit.ew import measure as ew_measure
from fehkit.ew.solver import EW, GAM, SIG, ArrayBackend
from fehkit.lines import packaged_linelist
from fehkit.synth import make_benchmark
from tests.test_ew_solver import _fits

needs_numba = pytest.mark.skipif(kernels.numba is None, reason="numba is not installed")

COMPILED = ArrayBackend("numpy", None, compiled=True) if kernels.numba is not None else None


@pytest.fixture(scope="module")
def batch():
    """Six normalized SYNTHETIC benchmark spectra (EMP giants and dwarfs with tellurics, masks and blends)."""
    return normalize(make_benchmark(6, seed=3).batch).batch


@pytest.fixture
def float64_numpy(monkeypatch):
    """The numpy path in float64 throughout: what the kernels compute."""
    monkeypatch.setattr(ArrayBackend, "float64", True)
    return ArrayBackend("numpy", None)


def _measure(batch, compiled: bool, monkeypatch, **kw):
    with monkeypatch.context() as m:
        m.setattr(kernels, "ENABLED", compiled)
        table = measure_ew(batch, **kw)
    assert table.info["compiled"] is compiled
    return table


def _assert_same_flags(a, b) -> None:
    assert np.array_equal(a.flag_code, b.flag_code)
    assert np.array_equal(np.isnan(a.ew_mA), np.isnan(b.ew_mA))


@needs_numba
@pytest.mark.parametrize("damping", ["shared", "free"])
def test_measure_ew_compiled_equals_the_float64_numpy_path(batch, monkeypatch, damping):
    new = _measure(batch, True, monkeypatch, damping=damping, mc_draws=0)
    monkeypatch.setattr(ArrayBackend, "float64", True)
    ref = _measure(batch, False, monkeypatch, damping=damping, mc_draws=0)
    _assert_same_flags(new, ref)
    assert np.array_equal(new.reason_bits, ref.reason_bits)
    ok = np.isfinite(ref.ew_mA)
    # the same fits up to float rounding (and the float32 rounding of the table)
    assert np.all(np.abs(new.ew_mA - ref.ew_mA)[ok] <= 1e-6 * np.abs(ref.ew_mA[ok]) + 1e-5 * ref.ew_err_mA[ok])
    assert np.allclose(new.ew_err_mA[ok], ref.ew_err_mA[ok], rtol=1e-6, atol=0)


@needs_numba
def test_measure_ew_compiled_agrees_with_the_default_numpy_path(batch, monkeypatch):
    new = _measure(batch, True, monkeypatch, mc_draws=5)
    ref = _measure(batch, False, monkeypatch, mc_draws=5)
    _assert_same_flags(new, ref)
    ok = np.isfinite(ref.ew_mA)
    # the numpy path's float32 fits round at ~1e-7: well below 1% of an error
    assert np.all(np.abs(new.ew_mA - ref.ew_mA)[ok] <= 0.01 * ref.ew_err_mA[ok])
    assert np.allclose(new.ew_err_mA[ok], ref.ew_err_mA[ok], rtol=1e-3)
    # the Monte Carlo errors draw the same noise; free-shape refits converge to the same point within their scatter
    assert np.allclose(new.ew_err_mc_mA[ok], ref.ew_err_mc_mA[ok], rtol=0.05)


def test_without_numba_the_numpy_path_runs(batch, monkeypatch):
    two = batch.select(np.arange(2))
    ref = _measure(two, False, monkeypatch, mc_draws=0)
    try:
        with monkeypatch.context() as m:
            m.setitem(sys.modules, "numba", None)             # import numba raises ImportError
            importlib.reload(kernels)
            assert kernels.numba is None and not kernels.ENABLED
            with pytest.raises(ValueError, match="numba"):
                ArrayBackend("numpy", None, compiled=True)
            table = measure_ew(two, mc_draws=0)
            assert table.info["compiled"] is False
            assert np.array_equal(table.ew_mA, ref.ew_mA, equal_nan=True)
            assert np.array_equal(table.flag_code, ref.flag_code)
        with monkeypatch.context() as m:
            m.setenv("FEHKIT_NUMBA", "0")                      # numba there or not, switched off
            importlib.reload(kernels)
            assert not kernels.ENABLED
    finally:
        importlib.reload(kernels)
    assert kernels.ENABLED == (kernels.numba is not None and os.environ.get("FEHKIT_NUMBA", "1") != "0")


# -- kernel by kernel, against the numpy functions in float64 ---------------------------------------------------------
@needs_numba
def test_levenberg_marquardt_kernel_equals_numpy_in_float64(float64_numpy):
    x, y, w, p0, lo, hi, free = _fits(300, 1)
    p, err, chi2, npix = solver.levenberg_marquardt(COMPILED, x, y, w, p0, lo, hi, free, 10)
    q, err_q, chi2_q, npix_q = solver.levenberg_marquardt(float64_numpy, x, y, w, p0, lo, hi, free, 10, double=True)
    assert p.dtype == np.float64 and np.array_equal(npix, npix_q)
    # the same steps, up to the rounding of the sums: the parameters agree to 1e-6 of their errors
    assert np.all(np.abs(p - q) <= 1e-6 * err_q + 1e-12)
    assert np.allclose(err, err_q, rtol=1e-7, atol=0) and np.allclose(chi2, chi2_q, rtol=1e-12)


@needs_numba
def test_linear_fit_and_model_kernels_equal_numpy_in_float64(float64_numpy):
    x, y, w, p0, _, _, free = _fits(400, 2)
    a = solver.linear_fit(COMPILED, x, y, w, p0[:, 2], p0[:, SIG], p0[:, GAM])
    b = solver.linear_fit(float64_numpy, x, y, w, p0[:, 2], p0[:, SIG], p0[:, GAM])
    assert a.keys() == b.keys()
    for k in a:
        assert np.allclose(a[k], b[k], rtol=1e-9, atol=1e-12 * np.abs(b[k]).max()), k
    again = solver.linear_fit(COMPILED, x, y, w, p0[:, 2], p0[:, SIG], p0[:, GAM], v=a["v"])
    assert all(np.array_equal(again[k], a[k]) for k in a)
    m_a, m_b = solver.voigt_model(x, p0, compiled=True), solver.voigt_model(x, p0.astype(np.float64))
    assert m_a.dtype == np.float32 and np.abs(m_a - m_b).max() <= 1e-6


@needs_numba
def test_shared_width_kernels_equal_numpy_in_float64(float64_numpy):
    x, y, w, p0, lo, hi, free = _fits(200, 3)
    p, _, _, _ = solver.levenberg_marquardt(float64_numpy, x, y, w, p0, lo, hi, free, 10, double=True)
    free_g = free.copy()
    free_g[:, GAM] = True
    for fn in (solver.gauss_newton_step, solver.regression_slope):
        args = (free_g, (GAM,)) if fn is solver.gauss_newton_step else (free_g, EW, GAM)
        for a, b in zip(fn(COMPILED, x, y, w, p, *args), fn(float64_numpy, x, y, w, p, *args), strict=True):
            assert np.allclose(a, b, rtol=1e-7, atol=1e-12 * np.abs(b).max())
    s_a, s_u = solver.shared_bias_terms(COMPILED, x, y, w, p, free, GAM, 0.02)
    r_a, r_u = solver.shared_bias_terms(float64_numpy, x, y, w, p, free, GAM, 0.02)
    assert np.allclose(s_a, r_a, rtol=1e-6, atol=1e-9 * np.abs(r_a).max())
    assert np.allclose(s_u, r_u, rtol=1e-6, atol=1e-9 * np.abs(r_u).max())


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_outliers_kernel_equals_numpy_to_the_bit(dtype):
    rng = np.random.default_rng(4)
    n, nw = 3000, 41
    y = (1 + rng.standard_normal((n, nw)) * 0.01).astype(np.float32)
    y[rng.random((n, nw)) < 0.01] += 0.2                      # cosmic rays
    y[rng.random((n, nw)) < 0.02] -= 0.05                     # neighbouring lines
    y[:300, :10] -= 0.1                                        # crowded wings
    w = np.full((n, nw), 1e4, np.float32)
    w[rng.random((n, nw)) < 0.1] = 0.0
    w[::97] = 0.0                                              # masked windows
    model = (1 + rng.standard_normal((n, nw)) * 1e-3).astype(dtype)
    model[::89] = np.nan                                       # failed fits
    core = np.zeros((n, nw), bool)
    core[:, 16:25] = True
    a = ew_measure._clip_outliers(None, y, w, model, core, compiled=True)
    b = ew_measure._clip_outliers(None, y, w, model, core)
    assert a.dtype == b.dtype == np.float32 and np.array_equal(a, b)
    assert 0 < (a < w).mean() < 0.2


@needs_numba
def test_window_kernels_equal_numpy_to_the_bit(batch):
    rng = np.random.default_rng(5)
    n, nw = 2000, 41
    y = (1 + rng.standard_normal((n, nw)) * 0.3).astype(np.float32)
    w0 = np.where(rng.random((n, nw)) < 0.1, 0, 25.0).astype(np.float32)
    wt = np.where(rng.random((n, nw)) < 0.1, 0, w0).astype(np.float32)
    model = (1 - rng.random((n, nw)) * 0.5).astype(np.float32)
    model[::50, 3] = np.nan
    core = np.zeros((n, nw), bool)
    core[:, 18:23] = True
    for a, b in zip(ew_measure._window_stats(y, w0, wt, model, core, compiled=True),
                    ew_measure._window_stats(y, w0, wt, model, core), strict=True):
        assert np.array_equal(a, b, equal_nan=True)
    # cutting the windows out of the spectra, with telluric pixels
    lines = packaged_linelist()
    idx, inside = ew_measure.window_pixels(batch.wave, lines)
    bits = batch.bitmask if batch.bitmask is not None else np.zeros(batch.flux.shape, np.int64)
    flux, w, good = kernels.windows(batch.flux, batch.ivar, batch.mask, bits, idx, inside, 3, 0.01)
    ivar = batch.ivar[:, idx]
    tell = (bits[:, idx] >> 3) & 1 == 1
    ivar = np.where(tell & (ivar > 0), 1.0 / (1.0 / np.where(ivar > 0, ivar, 1.0) + 0.01**2), ivar)
    good_np = ~batch.mask[:, idx] & inside[None] & np.isfinite(batch.flux[:, idx]) & (ivar > 0)
    assert np.array_equal(good, good_np)
    assert np.array_equal(flux, np.where(good_np, batch.flux[:, idx], 0.0).astype(np.float32))
    assert np.array_equal(w, np.where(good_np, ivar, 0.0).astype(np.float32))


@needs_numba
def test_rv_peaks_kernel_equals_numpy():
    rng = np.random.default_rng(6)
    n = 500
    x, y, w, p0, _, _, _ = _fits(n, 7)
    lam = rng.uniform(15200, 16900, n)
    grid = np.arange(-30.0, 30.5, 2.0)
    for sig in (p0[:, SIG], 0.3 * p0[:, SIG]):                 # 0.3: narrow lines take the direct exponentials
        sig = sig.astype(np.float32)
        gain = ew_measure._rv_gain(x, y, w, sig, lam, grid, 2.0)
        peak, best = kernels.rv_peaks(x, y, w, sig, lam, grid, 2.0)
        assert np.array_equal(peak, gain.argmax(axis=1))
        assert np.allclose(best, gain.max(axis=1), rtol=1e-5, atol=1e-3)
        assert np.allclose(kernels.rv_gain(x, y, w, sig, lam, grid, 2.0), gain, rtol=1e-4, atol=1e-3)


@needs_numba
def test_shared_width_and_shape_per_star_kernels_equal_numpy_to_the_bit():
    """The per-star weighted means and medians of the shared line shape, compiled, on stars in any order."""
    rng = np.random.default_rng(9)
    m = 300
    star = rng.permutation(np.repeat(np.arange(m), rng.integers(0, 31, m)))   # 0 to 30 lines a star, shuffled
    n = star.size
    value = rng.normal(0.05, 0.01, n)
    value[rng.random(n) < 0.05] += 0.2                                     # blends, far from the median
    err = rng.uniform(0.002, 0.02, n)
    err[rng.random(n) < 0.02] = 1e-7                                       # below the floor of 1e-5
    value[::13] = value[1::13][: value[::13].size]                         # ties
    use = rng.random(n) < 0.8
    a = ew_measure._shared_mean(m, star, value, err, use, compiled=True)
    b = ew_measure._shared_mean(m, star, value, err, use)
    assert all(x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b, strict=True))
    assert 0 < np.isfinite(a[0]).sum() < m and a[3].sum() > 0.5 * use.sum()
    ratio = rng.normal(1.0, 0.05, n).astype(np.float32)
    ratio_err = rng.uniform(0.0, 0.05, n).astype(np.float32)
    a = ew_measure._shared_shape(m, star, value * 300, err * 300, ratio, ratio_err, use, compiled=True)
    b = ew_measure._shared_shape(m, star, value * 300, err * 300, ratio, ratio_err, use)
    assert all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert (a[0] != 0).sum() > 0.5 * m and (a[1] != 1).sum() > 0.5 * m
