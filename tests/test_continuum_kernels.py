"""The compiled continuum fit (fehkit.continuum_kernels) against the NumPy reference, and the fallback without numba."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import fehkit
import fehkit.continuum as continuum
from fehkit.continuum import normalize
from fehkit.spectra import CHIPS
from fehkit.synth import draw_population, simulate

pytest.importorskip("numba")


def _batch():
    """Twelve spectra, one with a detector masked (too few pixels), one with NaNs, one negative and one zero."""
    pop = draw_population(12, np.random.default_rng(21))
    pop["snr"] = np.linspace(30, 300, 12)
    b = simulate(pop, seed=21).batch
    lo, hi = CHIPS["green"]
    green = np.flatnonzero((b.wave >= lo) & (b.wave <= hi))
    b.mask[0, green[50:]] = True
    b.flux[1, green[:400]] = np.nan
    b.flux[2] = -b.flux[2]
    b.flux[3, green] = 0.0
    b.ivar[4, green[::3]] = 0.0
    return b


def _both(batch, monkeypatch, **kw):
    fast = normalize(batch, **kw)
    monkeypatch.setattr(continuum, "USE_NUMBA", False)
    ref = normalize(batch, **kw)
    monkeypatch.setattr(continuum, "USE_NUMBA", True)
    return fast, ref


@pytest.mark.parametrize("kw", [{}, {"max_iter": 2}, {"max_iter": 0}, {"order": 2, "low": 1.5, "high": 2.5},
                                {"order": 0, "min_pixels": 2000}])
def test_compiled_fit_equals_the_numpy_fit(monkeypatch, kw):
    fast, ref = _both(_batch(), monkeypatch, **kw)
    assert continuum._kernels() is not None
    # float rounding only: the clipping decisions are the same, so the continuum is the same to ~1e-7
    np.testing.assert_allclose(fast.continuum, ref.continuum, rtol=1e-6, atol=0)
    for col in ("star_id", "chip", "n_pixels", "n_used", "n_iter", "converged", "flag"):
        assert (fast.diagnostics[col] == ref.diagnostics[col]).all(), col
    assert (ref.diagnostics["flag"] == "too_few_pixels").sum() >= 1
    assert np.allclose(fast.diagnostics["noise_scale"], ref.diagnostics["noise_scale"], rtol=1e-9)
    coef = [c for c in ref.diagnostics if c.startswith("coef_")]
    scale = np.abs(ref.diagnostics[coef].to_numpy()).max(axis=1, keepdims=True)  # 0 for the failed detector
    assert (np.abs(fast.diagnostics[coef].to_numpy() - ref.diagnostics[coef].to_numpy()) <= 1e-6 * scale).all()
    assert np.array_equal(fast.batch.mask, ref.batch.mask)
    np.testing.assert_allclose(fast.batch.flux, ref.batch.flux, rtol=1e-6, atol=0)
    np.testing.assert_allclose(fast.batch.ivar, ref.batch.ivar, rtol=1e-6, atol=0)


def test_numpy_fallback_when_numba_cannot_be_imported(monkeypatch):
    batch = _batch()
    fast = normalize(batch)
    monkeypatch.setitem(sys.modules, "numba", None)  # "import numba" raises ImportError
    monkeypatch.delitem(sys.modules, "fehkit.continuum_kernels", raising=False)
    monkeypatch.delattr(fehkit, "continuum_kernels", raising=False)
    fehkit.threads.compiled.cache_clear()
    try:
        assert continuum._kernels() is None
        ref = normalize(batch)
    finally:
        fehkit.threads.compiled.cache_clear()
    np.testing.assert_allclose(fast.continuum, ref.continuum, rtol=1e-6, atol=0)


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 127, 128, 129, 1000, 3118, 9000])
def test_pairwise_sum_is_numpys_float32_sum(n):
    from fehkit.continuum_kernels import pairwise_sum32

    rng = np.random.default_rng(n)
    a = (rng.normal(size=n) * 10 ** rng.uniform(-3, 3, n)).astype(np.float32) ** 2
    a[rng.random(n) < 0.3] = 0.0  # clipped pixels
    assert pairwise_sum32(a, 0, n) == a.sum()
    for start in range(1, min(n, 9)):  # any part of an array, the 8 lanes read from any offset
        assert pairwise_sum32(a, start, n - start) == a[start:].sum()


def test_median_is_numpys_median():
    from fehkit.continuum_kernels import median32

    rng = np.random.default_rng(5)
    for n in (1, 2, 3, 10, 11, 64, 65, 66, 2500, 3001):
        a = rng.normal(size=n).astype(np.float32)
        a[: n // 3] = a[0]  # ties
        tails = a.copy()
        tails[:3] = [1e30, -1e30, 1e-30][: min(n, 3)]  # extreme values: the middle ranks in one narrow bin
        halves = np.where(np.arange(n) % 2, 7.0, 1.0).astype(np.float32)  # the middle two far apart
        for values in (a, tails, halves, np.full(n, 3.5, np.float32)):
            assert median32(values.copy()) == np.median(values.astype(np.float64))
