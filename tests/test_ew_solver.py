"""The fast paths of the EW engine give the numbers of their plain versions (SYNTHETIC inputs, no spectra needed)."""

from __future__ import annotations

import numpy as np
import pytest

from fehkit.constants import SPEED_OF_LIGHT_KMS
from fehkit.ew import measure as ew_measure
from fehkit.ew import solver
from fehkit.ew.solver import C0, EW, GAM, SIG, ArrayBackend, levenberg_marquardt, linear_fit, normal_equations
from fehkit.profiles import voigt

NUMPY = ArrayBackend("numpy", None)


def _fits(n: int, seed: int, dtype: type = np.float32) -> tuple[np.ndarray, ...]:
    """Noisy Voigt lines in +-20 pixel windows, with starting parameters a little off and bounds around them."""
    rng = np.random.default_rng(seed)
    x = np.broadcast_to((np.arange(41) - 20) * 0.22, (n, 41)).astype(dtype)
    truth = np.stack([rng.uniform(0.97, 1.03, n), rng.uniform(0.0, 0.2, n), rng.normal(0, 0.1, n),
                      rng.uniform(0.25, 0.4, n), rng.uniform(0.0, 0.05, n)], 1)
    model = truth[:, C0, None] * (1 - truth[:, EW, None] * voigt(x - truth[:, 2, None], truth[:, SIG, None],
                                                                     truth[:, GAM, None]))
    snr = rng.uniform(30, 300, n)[:, None]
    y = (model + rng.standard_normal(model.shape) / snr).astype(dtype)
    w = np.broadcast_to(snr**2, (n, 41)).astype(dtype).copy()
    w[rng.random(w.shape) < 0.05] = 0.0
    p0 = (truth * rng.uniform(0.9, 1.1, truth.shape)).astype(dtype)
    lo = np.stack([np.full(n, 0.05), np.full(n, -1.0), np.full(n, -0.5), 0.6 * p0[:, SIG], p0[:, GAM]], 1)
    hi = np.stack([np.full(n, 20.0), np.full(n, 3.0), np.full(n, 0.5), 2.5 * p0[:, SIG], p0[:, GAM]], 1)
    free = np.ones((n, 5), bool)
    free[:, GAM] = False
    return x, y, w, p0, lo.astype(dtype), hi.astype(dtype), free


def _plain_levenberg_marquardt(xp, dx, flux, w, p0, lo, hi, free, n_iter, double=False):
    """The loop of :func:`levenberg_marquardt` written plainly: the full normal equations at every trial."""
    x, y, wt = (xp.asarray(a, double) for a in (dx, flux, w))
    p, lo_, hi_ = (xp.asarray(a, double) for a in (p0, lo, hi))
    fr = xp.asarray(free.astype(np.float32), double)
    lam = xp.full(p.shape[:-1], 1e-3, like=p)
    chi2, jtj, jtr = normal_equations(xp, x, y, wt, p, fr)
    for _ in range(n_iter):
        diag = xp.stack([jtj[..., i, i] for i in range(5)], -1)
        step = solver.solve_spd(xp, jtj + xp.diag_embed(diag * lam[..., None] + (1.0 - fr)), jtr) * fr
        trial = xp.minimum(xp.maximum(p + step, lo_), hi_)
        chi2_t, jtj_t, jtr_t = normal_equations(xp, x, y, wt, trial, fr)
        better = chi2_t < chi2
        p = xp.where(better[..., None], trial, p)
        chi2 = xp.where(better, chi2_t, chi2)
        jtj = xp.where(better[..., None, None], jtj_t, jtj)
        jtr = xp.where(better[..., None], jtr_t, jtr)
        lam = xp.where(better, xp.maximum(lam / 3.0, 1e-7), xp.minimum(lam * 4.0, 1e7))
    err = xp.sqrt(xp.maximum(solver.inverse_diagonal(xp, jtj + xp.diag_embed(1.0 - fr)), 0.0)) * fr
    return xp.numpy(p), xp.numpy(err), xp.numpy(chi2)


@pytest.mark.parametrize("double", [False, True])
def test_levenberg_marquardt_equals_the_plain_loop_to_the_bit(double):
    x, y, w, p0, lo, hi, free = _fits(700, 1)
    p, err, chi2, _ = levenberg_marquardt(NUMPY, x, y, w, p0, lo, hi, free, 10, double=double)
    q, err_q, chi2_q = _plain_levenberg_marquardt(NUMPY, x, y, w, p0, lo, hi, free, 10, double=double)
    assert np.array_equal(p, q) and np.array_equal(err, err_q) and np.array_equal(chi2, chi2_q)


def test_levenberg_marquardt_on_torch_equals_the_plain_loop_to_the_bit():
    pytest.importorskip("torch")
    xp = ArrayBackend("torch", "cpu")
    x, y, w, p0, lo, hi, free = _fits(300, 2)
    p, err, chi2, _ = levenberg_marquardt(xp, x, y, w, p0, lo, hi, free, 10)
    q, err_q, chi2_q = _plain_levenberg_marquardt(xp, x, y, w, p0, lo, hi, free, 10)
    assert np.array_equal(p, q) and np.array_equal(err, err_q) and np.array_equal(chi2, chi2_q)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_blocks_do_not_change_a_bit(monkeypatch, dtype):
    x, y, w, p0, _, _, free = _fits(2000, 3, dtype)
    fr = free.astype(dtype)
    whole_ne = normal_equations(NUMPY, x, y, w, p0, fr)
    whole_lin = linear_fit(NUMPY, x, y, w, p0[:, 2], p0[:, SIG], p0[:, GAM])
    monkeypatch.setattr(solver, "CPU_BLOCK", 997)                 # many uneven blocks
    assert len(solver.row_blocks(NUMPY, *x.shape)) > 10
    for a, b in zip(whole_ne, normal_equations(NUMPY, x, y, w, p0, fr), strict=True):
        assert np.array_equal(a, b)
    blocked_lin = linear_fit(NUMPY, x, y, w, p0[:, 2], p0[:, SIG], p0[:, GAM])
    assert all(np.array_equal(whole_lin[k], blocked_lin[k], equal_nan=True) for k in whole_lin)
    # a profile passed in is the profile computed
    again = linear_fit(NUMPY, x, y, w, p0[:, 2], p0[:, SIG], p0[:, GAM], v=whole_lin["v"])
    assert all(np.array_equal(whole_lin[k], again[k], equal_nan=True) for k in whole_lin)


def _rv_gain_direct(x, y, w, sig, lam, grid):
    s0, ty = w.sum(axis=1), (w * y).sum(axis=1)
    gain = np.zeros((x.shape[0], grid.size), np.float32)
    inv = -0.5 / (sig * sig)[:, None]
    for j, v in enumerate(grid):
        u = x - (lam * v / SPEED_OF_LIGHT_KMS)[:, None]
        prof = np.exp(u * u * inv)
        wp = w * prof
        s1, s2, tv = wp.sum(axis=1), (wp * prof).sum(axis=1), (wp * y).sum(axis=1)
        det = s0 * s2 - s1 * s1
        ok = det > 0
        depth = np.where(ok, (s1 * ty - s0 * tv) / np.where(ok, det, 1.0), 0.0)
        var = np.where(ok, s0 / np.where(ok, det, 1.0), np.inf)
        gain[:, j] = np.where(depth > 0, depth * depth / var, 0.0)
    return gain


@pytest.mark.parametrize("sig_scale", [1.0, 0.3])                    # 0.3: narrow lines take the direct exponentials
def test_rv_scan_recurrence_equals_the_direct_profiles(sig_scale):
    rng = np.random.default_rng(5)
    n = 600
    lam = rng.uniform(15200, 16900, n)
    x, y, w, p0, _, _, _ = _fits(n, 6)
    sig = (p0[:, SIG] * sig_scale).astype(np.float32)
    grid = np.arange(-30.0, 30.5, 2.0)
    direct = _rv_gain_direct(x, y, w, sig, lam, grid)
    fast = ew_measure._rv_gain(x, y, w, sig, lam, grid, 2.0, block=128)
    assert np.allclose(fast, direct, rtol=1e-4, atol=1e-3)
    assert np.array_equal(fast.argmax(axis=1), direct.argmax(axis=1))
