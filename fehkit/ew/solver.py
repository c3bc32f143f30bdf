"""The batched fits of the EW stage: every window of every spectrum solved at once, on numpy or torch.

A fit is ``c0 * (1 - EW * V(x - d_lambda; sigma, gamma))`` over one line's window, with V the area-normalized
Voigt profile of :mod:`fehkit.profiles`. With the shape (centre and widths) fixed the model is linear in
``(c0, c0 * EW)`` and :func:`linear_fit` solves it exactly; with a free shape :func:`levenberg_marquardt` runs a
box-bounded Levenberg-Marquardt loop over all fits together (elementwise Jacobians and an elementwise 5x5
Cholesky solve per fit, much faster here than batched LAPACK). :func:`linear_monte_carlo` and
:func:`monte_carlo` repeat the fits on the flux plus its own noise for the resampled errors. The same code runs on
numpy or on torch (CPU or CUDA) through :class:`ArrayBackend`; numpy is the reference. On numpy, a backend made
with ``compiled=True`` runs the fits through the numba kernels of :mod:`fehkit.ew.kernels` instead (float64, one
pass per fit; the same results up to float rounding). For a parameter shared by
many fits (a star's Lorentz width), :func:`gauss_newton_step` gives each fit's own step and variance,
:func:`shared_bias_terms` their second-order bias and :func:`regression_slope` how an EW follows it.

Arrays are flattened to ``(n_fits, n_window)``; parameters are ordered ``(c0, EW, d_lambda, sigma, gamma)``
(:data:`C0` ... :data:`GAM`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from fehkit.ew import kernels
from fehkit.profiles import voigt, voigt_and_derivatives

# parameter order in the fits
C0, EW, DL, SIG, GAM = range(5)


NPAR = 5

#: Values (fits x window pixels) evaluated at a time on the CPU: the temporaries of the profile and the Jacobian then
#: stay in the cache, 2-3x faster than whole arrays. Every fit is computed on its own, so the results do not depend
#: on it.
CPU_BLOCK = 24_000


Backend = Literal["numpy", "torch"]


def linear_fit(xp: ArrayBackend, x: np.ndarray, y: np.ndarray, w: np.ndarray, dl: np.ndarray, sig: np.ndarray,
               gam: np.ndarray, v: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Fit ``c0 (1 - EW V)`` with the profile's centre and widths fixed: exact weighted least squares.

    With ``B = c0 EW`` the model ``c0 - B V`` is linear, so the 2x2 normal equations give c0 and B directly,
    and the error of ``EW = B / c0`` follows from their covariance (the same number as the Jacobian of the
    nonlinear fit at its solution). Returns numpy arrays: c0, ew, err, chi2, the profile ``v`` and the model.
    ``v``, the profile of an earlier fit with the same shape, saves computing it again.
    """
    if xp.compiled:
        return kernels.linear_fit(x, y, w, dl, sig, gam, v)
    blocks = row_blocks(xp, *x.shape)
    if len(blocks) > 1:
        parts = [linear_fit(xp, x[b], y[b], w[b], dl[b], sig[b], gam[b], None if v is None else v[b]) for b in blocks]
        return {k: np.concatenate([q[k] for q in parts]) for k in parts[0]}
    xt, yt, wt = xp.asarray(x), xp.asarray(y), xp.asarray(w)
    if v is None:
        v = voigt(xt - xp.asarray(dl)[:, None], xp.asarray(sig)[:, None], xp.asarray(gam)[:, None])
    else:
        v = xp.asarray(v)
    wv = wt * v
    s0, s1, s2 = wt.sum(-1), wv.sum(-1), (wv * v).sum(-1)
    ty, tv = (wt * yt).sum(-1), (wv * yt).sum(-1)
    det = s0 * s2 - s1 * s1
    det = xp.where(det > 0, det, xp.full(det.shape, math.inf))
    c0 = (s2 * ty - s1 * tv) / det
    b = (s1 * ty - s0 * tv) / det
    c0_safe = xp.where(c0 > 0, c0, xp.full(c0.shape, math.inf))
    ew = b / c0_safe
    var = (s0 - 2.0 * ew * s1 + ew * ew * s2) / (det * c0_safe * c0_safe)
    model = c0[:, None] - b[:, None] * v
    r = yt - model
    chi2 = (wt * r * r).sum(-1)
    out = {"c0": c0, "ew": ew, "err": xp.sqrt(xp.maximum(var, 0.0)), "chi2": chi2, "v": v, "model": model,
           "b": b, "s0": s0, "s1": s1, "s2": s2, "det": det}
    return {k: xp.numpy(a) for k, a in out.items()}


def linear_monte_carlo(xp: ArrayBackend, v: np.ndarray, w: np.ndarray, draws: int, rng: np.random.Generator,
                        fit: dict[str, np.ndarray]) -> np.ndarray:
    """EW scatter over ``draws`` refits of linear (fixed-shape) fits to the flux plus its own noise.

    The normal matrix does not change with the flux, so each refit only needs the noise's weighted sums.
    """
    n = v.shape[0]
    sigma = np.where(w > 0, 1.0 / np.sqrt(np.where(w > 0, w, 1.0)), 0.0).astype(np.float32)
    ws, wvs = xp.asarray(w * sigma), xp.asarray(w * sigma * v)
    s0, s1, s2, det = (xp.asarray(fit[k])[:, None] for k in ("s0", "s1", "s2", "det"))
    c0, b = xp.asarray(fit["c0"])[:, None], xp.asarray(fit["b"])[:, None]
    ews = []
    per = max(1, (1 << 22) // max(n * v.shape[1], 1))
    for d0 in range(0, draws, per):
        k = min(per, draws - d0)
        e = xp.asarray(rng.standard_normal((n, k, v.shape[1]), dtype=np.float32))
        dty = (e * ws[:, None, :]).sum(-1)
        dtv = (e * wvs[:, None, :]).sum(-1)
        dc0 = (s2 * dty - s1 * dtv) / det
        db = (s1 * dty - s0 * dtv) / det
        ews.append(xp.numpy((b + db) / (c0 + dc0)))
    return np.concatenate(ews, axis=1).std(axis=1, ddof=1).astype(np.float32)


def voigt_model(x: np.ndarray, p: np.ndarray, compiled: bool = False) -> np.ndarray:
    """Return the profile ``c0 (1 - EW V)`` of each fit at offsets ``x`` (n_fits, n_window), parameters ``p``."""
    if compiled:
        return kernels.voigt_model(x, p)
    v = voigt(x - p[:, DL, None], p[:, SIG, None], p[:, GAM, None])
    return (p[:, C0, None] * (1.0 - p[:, EW, None] * v)).astype(np.float32)


def monte_carlo(xp: ArrayBackend, x: np.ndarray, w: np.ndarray, p: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                 free: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """EW scatter over ``draws`` free-shape refits of the best-fit model plus the flux's own noise."""
    n = x.shape[0]
    if n == 0:
        return np.zeros(0, np.float32)
    sigma = np.where(w > 0, 1.0 / np.sqrt(np.where(w > 0, w, 1.0)), 0.0).astype(np.float32)
    model = voigt_model(x, p, xp.compiled)
    ew = np.empty((draws, n), np.float32)
    per = max(1, (1 << 21) // (n * x.shape[1]))
    for d0 in range(0, draws, per):
        k = min(per, draws - d0)
        noisy = model[None] + sigma[None] * rng.standard_normal((k, *model.shape), dtype=np.float32)

        def tile(a: np.ndarray, k: int = k) -> np.ndarray:
            return np.broadcast_to(a, (k, *a.shape)).reshape(k * n, *a.shape[1:])

        q, _, _, _ = levenberg_marquardt(xp, tile(x), noisy.reshape(k * n, -1), tile(w), tile(p), tile(lo), tile(hi),
                                         tile(free), 6)
        ew[d0:d0 + k] = q[:, EW].reshape(k, n)
    return ew.std(axis=0, ddof=1)


def levenberg_marquardt(
    xp: ArrayBackend, dx: np.ndarray, flux: np.ndarray, w: np.ndarray, p0: np.ndarray, lo: np.ndarray, hi: np.ndarray,
    free: np.ndarray, n_iter: int, double: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fit every window at once; returns parameters, their 1-sigma errors, chi-square and pixel counts (numpy).

    Box-bounded Levenberg-Marquardt: each step solves ``(H + lambda diag H) dp = J^T W r`` for all fits at once,
    clips the new parameters into their bounds, and keeps the step only where chi-square went down (lambda / 3),
    otherwise raises lambda (x 4). Parameters not in ``free`` stay put.
    """
    if xp.compiled:
        return kernels.levenberg_marquardt(dx, flux, w, p0, lo, hi, free, n_iter)
    def t(a: np.ndarray) -> Any:
        return xp.asarray(a, double)

    x, y, wt = t(dx), t(flux), t(w)
    p, lo_, hi_ = t(p0), t(lo), t(hi)
    fr = t(free.astype(np.float32))
    lam = xp.full(p.shape[:-1], 1e-3, like=p)
    chi2, jtj, jtr = normal_equations(xp, x, y, wt, p, fr)
    for _ in range(n_iter):
        diag = xp.stack([jtj[..., i, i] for i in range(NPAR)], -1)
        damped = jtj + xp.diag_embed(diag * lam[..., None] + (1.0 - fr))
        step = solve_spd(xp, damped, jtr) * fr
        trial = xp.minimum(xp.maximum(p + step, lo_), hi_)
        chi2_t, pieces = residuals(xp, x, y, wt, trial)
        better = chi2_t < chi2
        # the Gauss-Newton matrix is only needed where the step is kept (late in the loop, a fifth of the fits)
        kept = xp.nonzero(better)
        if len(kept):
            jtj[kept], jtr[kept] = gauss_newton_matrix(xp, wt[kept], trial[kept], fr[kept],
                                                       tuple(a[kept] for a in pieces))
        b = better[..., None]
        p = xp.where(b, trial, p)
        chi2 = xp.where(better, chi2_t, chi2)
        lam = xp.where(better, xp.maximum(lam / 3.0, 1e-7), xp.minimum(lam * 4.0, 1e7))
    # errors: the diagonal of the inverse Gauss-Newton matrix (fixed parameters decoupled by the unit diagonal)
    cov_diag = inverse_diagonal(xp, jtj + xp.diag_embed(1.0 - fr))
    err = xp.sqrt(xp.maximum(cov_diag, 0.0)) * fr
    npix = (wt > 0).sum(-1)
    return xp.numpy(p), xp.numpy(err), xp.numpy(chi2), xp.numpy(npix)


def normal_equations(xp: ArrayBackend, x: Any, y: Any, w: Any, p: Any, free: Any) -> tuple[Any, Any, Any]:
    """Chi-square, J^T W J (n_fits, 5, 5) and J^T W r (n_fits, 5) of the Voigt model at ``p``."""
    if xp.compiled:
        return kernels.normal_equations(x, y, w, p, free)
    chi2, pieces = residuals(xp, x, y, w, p)
    return (chi2, *gauss_newton_matrix(xp, w, p, free, pieces))


def residuals(xp: ArrayBackend, x: Any, y: Any, w: Any, p: Any) -> tuple[Any, tuple[Any, ...]]:
    """Chi-square of the Voigt model at ``p``, and there the profile, its derivatives and the residuals.

    The second item, ``(v, dv/dx, dv/dsigma, dv/dgamma, y - model)`` (each ``(n_fits, n_window)``), is what
    :func:`gauss_newton_matrix` needs.
    """
    blocks = row_blocks(xp, *x.shape)
    if len(blocks) > 1:
        parts = [residuals(xp, x[b], y[b], w[b], p[b]) for b in blocks]
        return (xp.concatenate([q[0] for q in parts]),
                tuple(xp.concatenate([q[1][i] for q in parts]) for i in range(len(parts[0][1]))))
    c0, ew, dl, sig, gam = (p[..., i:i + 1] for i in range(NPAR))
    v, v_x, v_s, v_g = voigt_and_derivatives(x - dl, sig, gam)
    r = y - c0 * (1.0 - ew * v)
    return (w * r * r).sum(-1), (v, v_x, v_s, v_g, r)


def gauss_newton_matrix(xp: ArrayBackend, w: Any, p: Any, free: Any, pieces: tuple[Any, ...]) -> tuple[Any, Any]:
    """J^T W J (n_fits, 5, 5) and J^T W r (n_fits, 5) from the ``pieces`` of :func:`residuals` at ``p``."""
    blocks = row_blocks(xp, *w.shape)
    if len(blocks) > 1:
        parts = [gauss_newton_matrix(xp, w[b], p[b], free[b], tuple(a[b] for a in pieces)) for b in blocks]
        return xp.concatenate([q[0] for q in parts]), xp.concatenate([q[1] for q in parts])
    jac = jacobian(p, pieces, free)
    r = pieces[-1]
    wj = [w * j for j in jac]
    # each product summed on its own along the window: a matrix product would be faster but round differently, and
    # the float32 fits follow their rounding
    jtj = xp.stack([xp.stack([(wj[i] * jac[k]).sum(-1) for k in range(NPAR)], -1) for i in range(NPAR)], -2)
    jtr = xp.stack([(wj[i] * r).sum(-1) for i in range(NPAR)], -1)
    return jtj, jtr


def row_blocks(xp: ArrayBackend, n: int, width: int) -> list[slice]:
    """Split ``n`` fits of ``width`` pixels into blocks of about :data:`CPU_BLOCK` values (numpy; torch: one block)."""
    if xp.name != "numpy" or n * width <= 1.5 * CPU_BLOCK:
        return [slice(0, n)]
    rows = math.ceil(n / math.ceil(n * width / CPU_BLOCK))
    return [slice(a, min(a + rows, n)) for a in range(0, n, rows)]


def jacobian(p: Any, pieces: tuple[Any, ...], free: Any | None) -> list[Any]:
    """Return the model's derivatives by parameter at ``p`` (times ``free``) from the pieces of :func:`residuals`."""
    c0, ew = p[..., C0:C0 + 1], p[..., EW:EW + 1]
    v, v_x, v_s, v_g = pieces[:4]
    a = c0 * ew
    jac = [1.0 - ew * v, -c0 * v, a * v_x, -a * v_s, -a * v_g]   # d model / d (c0, EW, d_lambda, sigma, gamma)
    if free is not None:
        jac = [j * free[..., i:i + 1] for i, j in enumerate(jac)]
    return jac


def regression_slope(xp: ArrayBackend, dx: np.ndarray, flux: np.ndarray, w: np.ndarray, p: np.ndarray,
                     free: np.ndarray, of: int, on: int) -> tuple[np.ndarray, np.ndarray]:
    """How parameter ``of`` follows parameter ``on`` at a fit's solution, the others refitted: cov / var, and var.

    From the inverse Gauss-Newton matrix at ``p`` (float64): the slope ``cov(of, on) / var(on)`` is the change of
    ``of`` when ``on`` is moved by one unit and every other free parameter re-optimized, so an error of ``on``
    propagates to ``of`` through it.
    """
    if xp.compiled:
        return kernels.regression_slope(dx, flux, w, p, free, of, on)
    x, y, wt, pt = (xp.asarray(a, True) for a in (dx, flux, w, p))
    fr = xp.asarray(free.astype(np.float32), True)
    _, jtj, _ = normal_equations(xp, x, y, wt, pt, fr)
    low = cholesky(xp, jtj + xp.diag_embed(1.0 - fr))
    inv = _inverse_cholesky(low)
    n = len(low)
    cov = sum(inv[i][of] * inv[i][on] for i in range(max(of, on), n))
    var = sum(inv[i][on] * inv[i][on] for i in range(on, n))
    var_np = xp.numpy(var)
    return xp.numpy(cov) / np.where(var_np > 0, var_np, np.inf), var_np


def gauss_newton_step(xp: ArrayBackend, dx: np.ndarray, flux: np.ndarray, w: np.ndarray, p: np.ndarray,
                      free: np.ndarray, pars: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """One unbounded Gauss-Newton step of every fit from ``p`` (float64), and the covariance of ``pars``.

    Used to measure parameters shared by many fits: each fit's step of them, its other parameters
    re-optimized, is its own estimate of the shift, with the covariance given (``(n_fits, k, k)`` for the ``k``
    parameters ``pars``); their information-weighted mean is the joint Gauss-Newton step.
    """
    if xp.compiled:
        return kernels.gauss_newton_step(dx, flux, w, p, free, pars)
    x, y, wt, pt = (xp.asarray(a, True) for a in (dx, flux, w, p))
    fr = xp.asarray(free.astype(np.float32), True)
    _, jtj, jtr = normal_equations(xp, x, y, wt, pt, fr)
    a = jtj + xp.diag_embed(1.0 - fr)
    low = cholesky(xp, a)
    inv = _inverse_cholesky(low)
    n = len(low)
    cov = np.stack([np.stack([xp.numpy(sum(inv[r][i] * inv[r][j] for r in range(max(i, j), n))) for j in pars], -1)
                    for i in pars], -2)
    return xp.numpy(solve_spd(xp, a, jtr) * fr), cov


def shared_bias_terms(xp: ArrayBackend, dx: np.ndarray, flux: np.ndarray, w: np.ndarray, p: np.ndarray,
                      free: np.ndarray, on: int, h_on: float) -> tuple[np.ndarray, np.ndarray]:
    """Each fit's share of the second-order (Box 1971) bias of parameter ``on`` when many fits share it.

    With the shared parameter's variance ``V``, each fit's parameter covariance is its own nuisance covariance
    ``A^-1`` (``on`` held fixed) plus ``V u u^T``, ``u`` the change of all its parameters with ``on`` (``u_on =
    1``). Box's bias ``-1/2 C J^T W d``, ``d`` per pixel the trace of ``C`` times the model's Hessian, is then for
    the shared parameter ``-1/2 V sum_fits (s_a + V s_u)``; this returns ``s_a`` and ``s_u`` (float64), the
    Hessian traces taken as second differences along the directions of ``A^-1`` (1-sigma steps) and along ``u``
    (steps of ``h_on``). ``free`` excludes ``on``.
    """
    if xp.compiled:
        return kernels.shared_bias_terms(dx, flux, w, p, free, on, h_on)
    x, y, wt, pt = (xp.asarray(a, True) for a in (dx, flux, w, p))
    all_free = free.copy()
    all_free[:, on] = True
    fa = xp.asarray(all_free.astype(np.float32), True)
    fn = xp.asarray(free.astype(np.float32), True)
    _, pieces = residuals(xp, x, y, wt, pt)               # the profile at pt serves all three matrices below
    jtj, _ = gauss_newton_matrix(xp, wt, pt, fa, pieces)
    inv = _inverse_cholesky(cholesky(xp, jtj + xp.diag_embed(1.0 - fa)))
    n = len(inv)
    c_on = [sum(inv[r][k] * inv[r][on] for r in range(max(k, on), n)) for k in range(n)]
    u = xp.stack([c / c_on[on] for c in c_on], -1) * fa
    jtj_n, _ = gauss_newton_matrix(xp, wt, pt, fn, pieces)
    inv_n = _inverse_cholesky(cholesky(xp, jtj_n + xp.diag_embed(1.0 - fn)))

    def model(q: Any) -> Any:
        c0, ew, dl, sig, gam = (q[..., i:i + 1] for i in range(NPAR))
        return c0 * (1.0 - ew * voigt(x - dl, sig, gam))

    def second(v: Any, h: float) -> Any:
        return (model(pt + h * v) - 2.0 * m0 + model(pt - h * v)) / (h * h)

    m0 = model(pt)
    d_a = 0.0
    for r in range(n):
        v = xp.stack([inv_n[r][k] if k <= r else inv_n[r][r] * 0.0 for k in range(n)], -1) * fn
        if bool((v != 0).any()):                          # a fixed parameter's direction adds exactly 0
            d_a = d_a + second(v, 1.0)
    d_u = second(u, h_on)
    jac = jacobian(pt, pieces, None)
    s_a = sum(u[..., k] * (wt * jac[k] * d_a).sum(-1) for k in range(n))
    s_u = sum(u[..., k] * (wt * jac[k] * d_u).sum(-1) for k in range(n))
    return xp.numpy(s_a), xp.numpy(s_u)


def _inverse_cholesky(low: list[list[Any]]) -> list[list[Any]]:
    """Return the inverse of a lower-triangular factor from :func:`cholesky` (lower triangle; None above)."""
    n = len(low)
    inv: list[list[Any]] = [[None] * n for _ in range(n)]
    for j in range(n):
        inv[j][j] = 1.0 / low[j][j]
        for i in range(j + 1, n):
            s = 0.0
            for k in range(j, i):
                s = s + low[i][k] * inv[k][j]
            inv[i][j] = -s / low[i][i]
    return inv


def cholesky(xp: ArrayBackend, a: Any) -> list[list[Any]]:
    """Elementwise Cholesky factor of a batch of small SPD matrices (a Python list of lower-triangle arrays)."""
    n = a.shape[-1]
    low: list[list[Any]] = [[None] * n for _ in range(n)]
    for j in range(n):
        s = a[..., j, j]
        for k in range(j):
            s = s - low[j][k] * low[j][k]
        d = xp.sqrt(xp.maximum(s, 1e-30))
        low[j][j] = d
        for i in range(j + 1, n):
            s = a[..., i, j]
            for k in range(j):
                s = s - low[i][k] * low[j][k]
            low[i][j] = s / d
    return low


def solve_spd(xp: ArrayBackend, a: Any, b: Any) -> Any:
    """Solve ``a x = b`` for a batch of small SPD matrices, elementwise (much faster than batched LAPACK here)."""
    n = a.shape[-1]
    low = cholesky(xp, a)
    z: list[Any] = []
    for i in range(n):
        s = b[..., i]
        for k in range(i):
            s = s - low[i][k] * z[k]
        z.append(s / low[i][i])
    x: list[Any] = [None] * n
    for i in reversed(range(n)):
        s = z[i]
        for k in range(i + 1, n):
            s = s - low[k][i] * x[k]
        x[i] = s / low[i][i]
    return xp.stack(x, -1)


def inverse_diagonal(xp: ArrayBackend, a: Any) -> Any:
    """Diagonal of the inverse of a batch of small SPD matrices (via the inverse Cholesky factor)."""
    n = a.shape[-1]
    # inv(A) = inv(L)^T inv(L); diag = column sums of squares of inv(L)
    inv = _inverse_cholesky(cholesky(xp, a))
    return xp.stack([sum(inv[i][j] * inv[i][j] for i in range(j, n)) for j in range(n)], -1)


class ArrayBackend:
    """The few array operations the solver needs, on numpy or on torch (any device).

    ``compiled`` (numpy only): run the fits through the numba kernels of :mod:`fehkit.ew.kernels`. ``float64``:
    compute every fit in float64 (default :attr:`float64`).
    """

    #: Compute every fit in float64 (the numpy reference for the float64 compiled kernels; for tests).
    float64 = False

    def __init__(self, name: str, device: str | None, compiled: bool = False, float64: bool | None = None) -> None:
        if compiled and (name != "numpy" or kernels.numba is None):
            raise ValueError("compiled: needs the numpy backend and numba")
        self.name = name
        self.compiled = compiled
        if float64 is not None:  # this instance's choice; otherwise the class default
            self.float64 = bool(float64)
        if name == "torch":
            import torch

            self._t = torch
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            self.device_name = str(self.device)
        else:
            self.device_name = "cpu"

    def asarray(self, a: np.ndarray, double: bool = False) -> Any:
        """Return an array of the backend (float32, or float64 with ``double``) from a numpy array."""
        if self.name == "torch":
            dtype = self._t.float64 if double or self.float64 else self._t.float32
            return self._t.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=self.device)
        return np.asarray(a, dtype=np.float64 if double or self.float64 else np.float32)

    def numpy(self, a: Any) -> np.ndarray:
        """Return a numpy array from an array of the backend."""
        return a.detach().cpu().numpy() if self.name == "torch" else np.asarray(a)

    def full(self, shape: tuple[int, ...], value: float, like: Any = None) -> Any:
        """Return an array of ``shape`` filled with ``value`` (the dtype of ``like``)."""
        if self.name == "torch":
            dtype = like.dtype if like is not None else self._t.float32
            return self._t.full(shape, value, dtype=dtype, device=self.device)
        return np.full(shape, value, like.dtype if like is not None else np.float32)

    def concatenate(self, arrays: list[Any]) -> Any:
        """Join arrays along the first axis."""
        return self._t.cat(arrays, 0) if self.name == "torch" else np.concatenate(arrays, 0)

    def nonzero(self, cond: Any) -> Any:
        """Return the indices where the 1-d ``cond`` is true."""
        return self._t.nonzero(cond).flatten() if self.name == "torch" else np.flatnonzero(cond)

    def stack(self, arrays: list[Any], axis: int) -> Any:
        """Stack arrays along ``axis``."""
        return self._t.stack(arrays, axis) if self.name == "torch" else np.stack(arrays, axis)

    def diag_embed(self, d: Any) -> Any:
        """Batched diagonal matrices from the last axis of ``d``."""
        if self.name == "torch":
            return self._t.diag_embed(d)
        out = np.zeros((*d.shape, d.shape[-1]), d.dtype)
        i = np.arange(d.shape[-1])
        out[..., i, i] = d
        return out

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        """Elementwise ``a`` where ``cond``, else ``b``."""
        return self._t.where(cond, a, b) if self.name == "torch" else np.where(cond, a, b)

    def maximum(self, a: Any, b: Any) -> Any:
        """Elementwise maximum with an array or a number."""
        if self.name == "torch":
            return self._t.clamp(a, min=b) if not self._t.is_tensor(b) else self._t.maximum(a, b)
        return np.maximum(a, b)

    def minimum(self, a: Any, b: Any) -> Any:
        """Elementwise minimum with an array or a number."""
        if self.name == "torch":
            return self._t.clamp(a, max=b) if not self._t.is_tensor(b) else self._t.minimum(a, b)
        return np.minimum(a, b)

    def sqrt(self, a: Any) -> Any:
        """Elementwise square root."""
        return self._t.sqrt(a) if self.name == "torch" else np.sqrt(a)
