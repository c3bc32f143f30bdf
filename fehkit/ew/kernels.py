"""Compiled (numba) kernels of the EW fits: the CPU fast path of :mod:`fehkit.ew.solver` and :mod:`~fehkit.ew.measure`.

The numpy code of the solver evaluates every fit of a batch in lockstep, one array operation at a time, in float32
(the last polish in float64); on a CPU most of its time goes into temporaries and the Python loop around them. Here
each kernel loops over the fits and does all the work of one fit in one pass over its window pixels, with no array
temporaries: the Voigt profile (Weideman's approximation of :mod:`fehkit.profiles`, the same operations), its
derivatives, the residuals, the normal equations ``J^T W J`` and ``J^T W r``, the 5x5 Cholesky solves and the
Levenberg-Marquardt loop. Everything is float64, so the kernels compute what the numpy path computes with
:attr:`fehkit.ew.solver.ArrayBackend.float64` set, up to float rounding (sums taken in another order, fused
multiply-adds): the same flags, EWs and errors within ~2e-7 (the float32 rounding of the table). The default numpy
path runs its first fits in float32; against it EWs differ by < 1e-2 of their errors and the flags are the same,
except in the rare star whose shared Lorentz width float32 rounding moves (as it does between the numpy path in
float32 and in float64).

:func:`fehkit.ew.measure.measure_ew` runs them on its numpy backend when numba imports (:data:`ENABLED`; the
environment variable ``FEHKIT_NUMBA=0``, or ``ENABLED = False``, selects the numpy path); without numba the numpy
path runs. The kernels are compiled on first use and cached on disk (``cache=True``): ~10 s once per installation,
then well under a second to load.

Per pixel the Faddeeva function fills two arrays in a loop of its own: more outputs in one loop would need more
run-time aliasing checks than LLVM makes, and the loop would not vectorize. The wrappers at the end take and return
numpy arrays as the numpy functions they replace.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from fehkit.constants import SPEED_OF_LIGHT_KMS
from fehkit.physics.joint_kernels import block_sum
from fehkit.profiles import weideman_coefficients
from fehkit.threads import numba_wanted

try:
    import numba
except ImportError:                                 # no numba: the numpy path of the solver runs
    numba = None


#: Floating-point liberties of the loops over pixels: fused multiply-adds and divisions as multiplications by a
#: reciprocal (each changes a result by an ulp or so). No NaN or infinity assumptions: those keep numpy's meaning.
PIXEL_MATH = {"contract", "arcp"}
#: ... and of the loops that sum over pixels: reassociation too, so that the sums vectorize.
SUM_MATH = PIXEL_MATH | {"reassoc"}


def njit(func: Callable | None = None, **options: Any) -> Any:
    """Compile with ``numba.njit`` and the options of every kernel (cached on disk, no Python division checks).

    ``inline="always"`` (per-pixel functions) inlines a function into the loops that call it, so that they
    vectorize; ``fastmath=`` :data:`PIXEL_MATH` or :data:`SUM_MATH` lets them vectorize well. Without numba the
    function is returned as it is (and never called: :data:`ENABLED` is False).
    """
    def wrap(f: Callable) -> Any:
        if numba is None:
            return f
        return numba.njit(f, cache=True, nogil=True, error_model="numpy", **options)

    return wrap if func is None else wrap(func)


#: Whether :func:`fehkit.ew.measure.measure_ew` runs its numpy-backend fits through these kernels.
ENABLED = numba is not None and numba_wanted()

#: exp(v) = 2^k exp(r), ``r = v - k ln 2`` (ln 2 split in two, fdlibm's), ``exp(r)`` by its Taylor series to r^13
#: (|r| <= ln 2 / 2: within an ulp of libm), 2^k from a table: :func:`_exp`, a vectorizable exponential.
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_EXP_TAYLOR = np.array([1.0 / math.factorial(k) for k in range(13, -1, -1)])
_POW2 = 2.0 ** np.arange(-1022, 1024, dtype=np.float64)

_L, _COEF_T = weideman_coefficients()
_COEF = np.array(_COEF_T)
_NC = len(_COEF_T)
_SQRT_PI = math.sqrt(math.pi)
_SQRT_2 = math.sqrt(2.0)
_SQRT_2PI = math.sqrt(2.0 * math.pi)
_TWO_SQRT_PI = 2.0 / _SQRT_PI
NPAR = 5


# ---------------------------------------------------------------------------------------------------------------
# per pixel: the Voigt profile and its derivatives


@njit(inline="always")
def faddeeva(x: float, y: float) -> tuple[float, float]:
    """Faddeeva function ``w(x + iy)``, ``y >= 0``, as (real, imaginary): the operations of ``profiles._faddeeva``."""
    ar = _L - y
    br = _L + y
    xx = x * x
    den = br * br + xx
    zr = (ar * br - xx) / den
    zi = (x * br + ar * x) / den
    pr = zr * _COEF[0] + _COEF[1]
    pi = zi * _COEF[0]
    for k in range(2, _NC):
        t = pr * zi
        pr = pr * zr - pi * zi + _COEF[k]
        pi = pi * zr + t
    ur = br / den
    ui = x / den
    u2r = ur * ur - ui * ui
    u2i = 2.0 * ur * ui
    re = 2.0 * (pr * u2r - pi * u2i) + ur / _SQRT_PI
    im = 2.0 * (pr * u2i + pi * u2r) + ui / _SQRT_PI
    return re, im


@njit(fastmath=PIXEL_MATH)
def voigt_row(x: np.ndarray, dl: float, sig: float, gam: float, v: np.ndarray) -> None:
    """Fill ``v`` with the area-normalized Voigt profile at offsets ``x - dl`` (``profiles.voigt``)."""
    s2 = sig * _SQRT_2
    zi = gam / s2
    norm = sig * _SQRT_2PI
    for j in range(x.size):
        re, _ = faddeeva((x[j] - dl) / s2, zi)
        v[j] = re / norm


@njit(fastmath=PIXEL_MATH)
def faddeeva_row(x: np.ndarray, dl: float, sig: float, gam: float, wr: np.ndarray, wi: np.ndarray) -> None:
    """Fill ``wr``, ``wi`` with ``w(z)`` at ``z = (x - dl + i gam) / (sig sqrt 2)``: the profile's Faddeeva values.

    Two outputs only, so that the loop vectorizes (more would need more run-time aliasing checks than LLVM makes).
    """
    s2 = sig * _SQRT_2
    zi = gam / s2
    for j in range(x.size):
        re, im = faddeeva((x[j] - dl) / s2, zi)
        wr[j] = re
        wi[j] = im


@njit(fastmath=SUM_MATH)
def chi2_row(x: np.ndarray, y: np.ndarray, w: np.ndarray, p: np.ndarray, scratch: np.ndarray) -> float:
    """Chi-square of one fit's Voigt model at ``p``; leaves ``w(z)`` of its pixels in ``scratch[0:2]``.

    (``fastmath`` reassociation: the sum is vectorized, so its rounding differs from a sequential sum.)
    """
    faddeeva_row(x, p[2], p[3], p[4], scratch[0], scratch[1])
    c0, ew = p[0], p[1]
    norm = 1.0 / (p[3] * _SQRT_2PI)
    wr = scratch[0]
    chi2 = 0.0
    for j in range(x.size):
        r = y[j] - c0 * (1.0 - ew * (wr[j] * norm))
        chi2 += w[j] * r * r
    return chi2


@njit(fastmath=SUM_MATH, inline="always")
def _profile_scales(sig: float, gam: float) -> tuple[float, float, float, float, float]:
    """Return ``s2 = sig sqrt 2``, ``zi = gam / s2``, ``norm``, ``n_s2``, ``n_sig`` (:func:`_profile_derivatives`)."""
    s2 = sig * _SQRT_2
    norm = 1.0 / (sig * _SQRT_2PI)
    return s2, gam / s2, norm, norm / s2, norm / sig


@njit(fastmath=SUM_MATH, inline="always")
def _profile_derivatives(zr: float, zi: float, wr: float, wi: float, norm: float, n_s2: float, n_sig: float,
                         sig: float) -> tuple[float, float, float, float]:
    """Return the profile ``v`` at one pixel and its derivatives by d_lambda, sigma and gamma.

    From ``w(z) = wr + i wi`` and ``w'(z) = -2 z w(z) + 2i / sqrt(pi)`` (``profiles.voigt_and_derivatives``);
    ``norm = 1 / (sig sqrt(2 pi))``, ``n_s2 = norm / (sig sqrt 2)``, ``n_sig = norm / sig``.
    """
    dwr = -2.0 * (zr * wr - zi * wi)
    dwi = -2.0 * (zr * wi + zi * wr) + _TWO_SQRT_PI
    v = wr * norm
    return v, dwr * n_s2, -(dwr * zr - dwi * zi) * n_sig - v / sig, -dwi * n_s2


@njit(fastmath=SUM_MATH)
def jacobian_sums(x: np.ndarray, y: np.ndarray, w: np.ndarray, p: np.ndarray, fr: np.ndarray, jtj: np.ndarray,
                  jtr: np.ndarray, scratch: np.ndarray) -> None:
    """Fill ``J^T W J`` (5x5) and ``J^T W r`` (5) of one fit at ``p`` from the ``w(z)`` :func:`chi2_row` left.

    The profile and its derivatives follow from ``w`` and ``w'(z) = -2 z w(z) + 2i / sqrt(pi)``
    (``profiles.voigt_and_derivatives``); the Jacobian columns are the model's derivatives by (c0, EW, d_lambda,
    sigma, gamma), times ``fr`` (1 for a free parameter, 0 for a fixed one).
    """
    c0, ew, dl, sig, gam = p[0], p[1], p[2], p[3], p[4]
    s2, zi, norm, n_s2, n_sig = _profile_scales(sig, gam)
    a = c0 * ew
    f0, f1, f2, f3, f4 = fr[0], fr[1], fr[2], fr[3], fr[4]
    wrs, wis = scratch[0], scratch[1]
    a00 = a10 = a11 = a20 = a21 = a22 = a30 = a31 = a32 = a33 = a40 = a41 = a42 = a43 = a44 = 0.0
    b0 = b1 = b2 = b3 = b4 = 0.0
    for j in range(x.size):
        v, v_x, v_s, v_g = _profile_derivatives((x[j] - dl) / s2, zi, wrs[j], wis[j], norm, n_s2, n_sig, sig)
        r = y[j] - c0 * (1.0 - ew * v)
        j0 = (1.0 - ew * v) * f0
        j1 = -c0 * v * f1
        j2 = a * v_x * f2
        j3 = -a * v_s * f3
        j4 = -a * v_g * f4
        wj = w[j]
        w0, w1, w2, w3, w4 = wj * j0, wj * j1, wj * j2, wj * j3, wj * j4
        a00 += w0 * j0
        a10 += w1 * j0
        a11 += w1 * j1
        a20 += w2 * j0
        a21 += w2 * j1
        a22 += w2 * j2
        a30 += w3 * j0
        a31 += w3 * j1
        a32 += w3 * j2
        a33 += w3 * j3
        a40 += w4 * j0
        a41 += w4 * j1
        a42 += w4 * j2
        a43 += w4 * j3
        a44 += w4 * j4
        b0 += w0 * r
        b1 += w1 * r
        b2 += w2 * r
        b3 += w3 * r
        b4 += w4 * r
    jtj[0, 0] = a00
    jtj[1, 0] = jtj[0, 1] = a10
    jtj[1, 1] = a11
    jtj[2, 0] = jtj[0, 2] = a20
    jtj[2, 1] = jtj[1, 2] = a21
    jtj[2, 2] = a22
    jtj[3, 0] = jtj[0, 3] = a30
    jtj[3, 1] = jtj[1, 3] = a31
    jtj[3, 2] = jtj[2, 3] = a32
    jtj[3, 3] = a33
    jtj[4, 0] = jtj[0, 4] = a40
    jtj[4, 1] = jtj[1, 4] = a41
    jtj[4, 2] = jtj[2, 4] = a42
    jtj[4, 3] = jtj[3, 4] = a43
    jtj[4, 4] = a44
    jtr[0], jtr[1], jtr[2], jtr[3], jtr[4] = b0, b1, b2, b3, b4


@njit(fastmath=SUM_MATH)
def _jacobian_dot(x: np.ndarray, w: np.ndarray, p: np.ndarray, scratch: np.ndarray, u: np.ndarray, d1: np.ndarray,
                  d2: np.ndarray) -> tuple[float, float]:
    """Return ``u . J^T W d1`` and ``u . J^T W d2`` of one fit (the Jacobian of all parameters, from ``scratch``)."""
    c0, ew, dl, sig, gam = p[0], p[1], p[2], p[3], p[4]
    s2, zi, norm, n_s2, n_sig = _profile_scales(sig, gam)
    a = c0 * ew
    wrs, wis = scratch[0], scratch[1]
    t10 = t11 = t12 = t13 = t14 = t20 = t21 = t22 = t23 = t24 = 0.0
    for j in range(x.size):
        v, v_x, v_s, v_g = _profile_derivatives((x[j] - dl) / s2, zi, wrs[j], wis[j], norm, n_s2, n_sig, sig)
        wj = w[j]
        j0 = wj * (1.0 - ew * v)
        j1 = wj * (-c0 * v)
        j2 = wj * (a * v_x)
        j3 = wj * (-a * v_s)
        j4 = wj * (-a * v_g)
        t10 += j0 * d1[j]
        t11 += j1 * d1[j]
        t12 += j2 * d1[j]
        t13 += j3 * d1[j]
        t14 += j4 * d1[j]
        t20 += j0 * d2[j]
        t21 += j1 * d2[j]
        t22 += j2 * d2[j]
        t23 += j3 * d2[j]
        t24 += j4 * d2[j]
    s1 = u[0] * t10 + u[1] * t11 + u[2] * t12 + u[3] * t13 + u[4] * t14
    s2_ = u[0] * t20 + u[1] * t21 + u[2] * t22 + u[3] * t23 + u[4] * t24
    return s1, s2_


@njit
def normal_row(x: np.ndarray, y: np.ndarray, w: np.ndarray, p: np.ndarray, fr: np.ndarray, jtj: np.ndarray,
               jtr: np.ndarray, scratch: np.ndarray) -> float:
    """Chi-square of one fit at ``p``, and its ``J^T W J`` and ``J^T W r`` (``scratch``: a (2, n_window) array)."""
    chi2 = chi2_row(x, y, w, p, scratch)
    jacobian_sums(x, y, w, p, fr, jtj, jtr, scratch)
    return chi2


@njit
def _load_rows(x: np.ndarray, y: np.ndarray, w: np.ndarray, i: int, rows: np.ndarray) -> None:
    """Copy fit ``i`` of the windows (float32 or float64) into the float64 rows of ``rows`` (3, n_window).

    The per-fit functions so see float64 rows only, and are compiled once.
    """
    for j in range(x.shape[1]):
        rows[0, j] = x[i, j]
        rows[1, j] = y[i, j]
        rows[2, j] = w[i, j]


@njit
def _max0(a: float, floor: float) -> float:
    """``np.maximum(a, floor)`` for a scalar: NaN stays NaN."""
    return floor if a < floor else a


@njit
def cholesky5(a: np.ndarray, low: np.ndarray) -> None:
    """Lower Cholesky factor of a small SPD matrix (``solver.cholesky``: pivots floored at 1e-30)."""
    n = a.shape[0]
    for j in range(n):
        s = a[j, j]
        for k in range(j):
            s = s - low[j, k] * low[j, k]
        d = math.sqrt(_max0(s, 1e-30))
        low[j, j] = d
        for i in range(j + 1, n):
            s = a[i, j]
            for k in range(j):
                s = s - low[i, k] * low[j, k]
            low[i, j] = s / d


@njit
def solve_lower(low: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """Solve ``L L^T x = b`` into ``out`` with the factor of :func:`cholesky5` (``solver.solve_spd``)."""
    n = low.shape[0]
    for i in range(n):
        s = b[i]
        for k in range(i):
            s = s - low[i, k] * out[k]
        out[i] = s / low[i, i]
    for i in range(n - 1, -1, -1):
        s = out[i]
        for k in range(i + 1, n):
            s = s - low[k, i] * out[k]
        out[i] = s / low[i, i]


@njit
def inverse_lower(low: np.ndarray, inv: np.ndarray) -> None:
    """Inverse of a lower-triangular factor into ``inv`` (lower triangle; ``solver._inverse_cholesky``)."""
    n = low.shape[0]
    inv[:] = 0.0
    for j in range(n):
        inv[j, j] = 1.0 / low[j, j]
        for i in range(j + 1, n):
            s = 0.0
            for k in range(j, i):
                s = s + low[i, k] * inv[k, j]
            inv[i, j] = -s / low[i, i]


@njit
def _unit_fixed(jtj: np.ndarray, fr: np.ndarray, out: np.ndarray) -> None:
    """``jtj + diag(1 - fr)``: fixed parameters decoupled by a unit diagonal."""
    for i in range(NPAR):
        for k in range(NPAR):
            out[i, k] = jtj[i, k]
        out[i, i] = jtj[i, i] + (1.0 - fr[i])


@njit(inline="always")
def _exp(v: float) -> float:
    """``exp(v)`` for ``|v| <= 700``, within an ulp of ``math.exp``; unlike it, a loop of these vectorizes."""
    k = np.rint(v * 1.4426950408889634)
    r = (v - k * _LN2_HI) - k * _LN2_LO
    e = _EXP_TAYLOR[0]
    for i in range(1, _EXP_TAYLOR.size):
        e = e * r + _EXP_TAYLOR[i]
    return e * _POW2[min(max(int(k) + 1022, 0), _POW2.size - 1)]


# ---------------------------------------------------------------------------------------------------------------
# the fits


#: Fits a Levenberg-Marquardt kernel steps together: their 5x5 solves run side by side in SIMD lanes (one solve
#: is a chain of square roots and divisions, mostly waiting on latency).
LANES = 8


@njit
def _solve_damped_lanes(jtj: np.ndarray, jtr: np.ndarray, lam: np.ndarray, fr: np.ndarray, a: np.ndarray,
                        low: np.ndarray, out: np.ndarray) -> None:
    """Solve ``(H + lambda diag H + diag(1 - fr)) dp = J^T W r`` for :data:`LANES` fits at once.

    Arrays are (5, 5, lanes) and (5, lanes), the fits last. Each lane does the operations of :func:`cholesky5` and
    :func:`solve_lower`, in their order: the same numbers as one fit at a time.
    """
    for r in range(NPAR):
        for c in range(NPAR):
            for g in range(LANES):
                a[r, c, g] = jtj[r, c, g]
        for g in range(LANES):
            a[r, r, g] = jtj[r, r, g] + (jtj[r, r, g] * lam[g] + (1.0 - fr[r, g]))
    s = np.empty(LANES)
    for j in range(NPAR):
        for g in range(LANES):
            s[g] = a[j, j, g]
        for k in range(j):
            for g in range(LANES):
                s[g] = s[g] - low[j, k, g] * low[j, k, g]
        for g in range(LANES):
            low[j, j, g] = math.sqrt(1e-30 if s[g] < 1e-30 else s[g])
        for i in range(j + 1, NPAR):
            for g in range(LANES):
                s[g] = a[i, j, g]
            for k in range(j):
                for g in range(LANES):
                    s[g] = s[g] - low[i, k, g] * low[j, k, g]
            for g in range(LANES):
                low[i, j, g] = s[g] / low[j, j, g]
    for i in range(NPAR):
        for g in range(LANES):
            s[g] = jtr[i, g]
        for k in range(i):
            for g in range(LANES):
                s[g] = s[g] - low[i, k, g] * out[k, g]
        for g in range(LANES):
            out[i, g] = s[g] / low[i, i, g]
    for i in range(NPAR - 1, -1, -1):
        for g in range(LANES):
            s[g] = out[i, g]
        for k in range(i + 1, NPAR):
            for g in range(LANES):
                s[g] = s[g] - low[k, i, g] * out[k, g]
        for g in range(LANES):
            out[i, g] = s[g] / low[i, i, g]


@njit
def levenberg_marquardt_kernel(x: np.ndarray, y: np.ndarray, w: np.ndarray, p0: np.ndarray, lo: np.ndarray,
                               hi: np.ndarray, fr: np.ndarray, n_iter: int) -> tuple:
    """Box-bounded Levenberg-Marquardt of every fit (``solver.levenberg_marquardt``).

    Each step solves ``(H + lambda diag H) dp = J^T W r`` (fixed parameters decoupled), clips the trial into
    ``[lo, hi]``, keeps it where chi-square went down (lambda / 3, floor 1e-7), else raises lambda (x 4, cap 1e7).
    :data:`LANES` fits step together (their solves side by side); each fit's numbers are its own. Returns
    parameters, their 1-sigma errors (diagonal of the inverse Gauss-Newton matrix), chi-square and the number of
    pixels with weight.
    """
    n, nw = x.shape
    p_out = np.empty((n, NPAR))
    err = np.empty((n, NPAR))
    chi2_out = np.empty(n)
    npix = np.zeros(n, np.int64)
    scratch = np.empty((2, nw))
    rows = np.empty((LANES, 3, nw))
    # per lane (fits last): the Gauss-Newton matrix and vector, parameters, lambda, free flags, chi-square, step
    jtj = np.empty((NPAR, NPAR, LANES))
    jtr = np.empty((NPAR, LANES))
    p = np.empty((NPAR, LANES))
    lam = np.empty(LANES)
    f = np.empty((NPAR, LANES))
    chi2 = np.empty(LANES)
    step = np.empty((NPAR, LANES))
    damped = np.empty((NPAR, NPAR, LANES))
    low_l = np.empty((NPAR, NPAR, LANES))
    # one fit at a time
    jtj_1 = np.empty((NPAR, NPAR))
    jtr_1 = np.empty(NPAR)
    trial = np.empty(NPAR)
    mat = np.empty((NPAR, NPAR))
    low = np.empty((NPAR, NPAR))
    inv = np.empty((NPAR, NPAR))
    for start in range(0, n, LANES):
        m = min(LANES, n - start)
        for g in range(LANES):
            if g >= m:                                 # an idle lane: a unit matrix, never read back
                for r in range(NPAR):
                    for c in range(NPAR):
                        jtj[r, c, g] = 1.0 if r == c else 0.0
                    jtr[r, g] = 0.0
                    f[r, g] = 1.0
                lam[g] = 0.0
                continue
            i = start + g
            _load_rows(x, y, w, i, rows[g])
            chi2[g] = normal_row(rows[g, 0], rows[g, 1], rows[g, 2], p0[i], fr[i], jtj_1, jtr_1, scratch)
            for r in range(NPAR):
                for c in range(NPAR):
                    jtj[r, c, g] = jtj_1[r, c]
                jtr[r, g] = jtr_1[r]
                p[r, g] = p0[i, r]
                f[r, g] = fr[i, r]
            lam[g] = 1e-3
        for _ in range(n_iter):
            _solve_damped_lanes(jtj, jtr, lam, f, damped, low_l, step)
            for g in range(m):
                i = start + g
                for k in range(NPAR):
                    t = p[k, g] + step[k, g] * f[k, g]
                    t = lo[i, k] if t < lo[i, k] else t
                    trial[k] = hi[i, k] if t > hi[i, k] else t
                chi2_t = chi2_row(rows[g, 0], rows[g, 1], rows[g, 2], trial, scratch)
                if chi2_t < chi2[g]:
                    # the Gauss-Newton matrix is only needed where the step is kept
                    jacobian_sums(rows[g, 0], rows[g, 1], rows[g, 2], trial, fr[i], jtj_1, jtr_1, scratch)
                    for r in range(NPAR):
                        for c in range(NPAR):
                            jtj[r, c, g] = jtj_1[r, c]
                        jtr[r, g] = jtr_1[r]
                        p[r, g] = trial[r]
                    chi2[g] = chi2_t
                    lam[g] = max(lam[g] / 3.0, 1e-7)
                else:
                    lam[g] = min(lam[g] * 4.0, 1e7)
        for g in range(m):
            i = start + g
            for r in range(NPAR):
                for c in range(NPAR):
                    jtj_1[r, c] = jtj[r, c, g]
            _unit_fixed(jtj_1, fr[i], mat)
            cholesky5(mat, low)
            inverse_lower(low, inv)
            for k in range(NPAR):
                s = 0.0
                for r in range(k, NPAR):
                    s = s + inv[r, k] * inv[r, k]
                err[i, k] = math.sqrt(_max0(s, 0.0)) * fr[i, k]
                p_out[i, k] = p[k, g]
            chi2_out[i] = chi2[g]
            c = 0
            for j in range(nw):
                c += w[i, j] > 0
            npix[i] = c
    return p_out, err, chi2_out, npix


@njit
def normal_equations_kernel(x: np.ndarray, y: np.ndarray, w: np.ndarray, p: np.ndarray, fr: np.ndarray) -> tuple:
    """Chi-square, ``J^T W J`` (n, 5, 5) and ``J^T W r`` (n, 5) of every fit at ``p`` (``solver.normal_equations``)."""
    n, nw = x.shape
    chi2 = np.empty(n)
    jtj = np.empty((n, NPAR, NPAR))
    jtr = np.empty((n, NPAR))
    scratch = np.empty((2, nw))
    rows = np.empty((3, nw))
    for i in range(n):
        _load_rows(x, y, w, i, rows)
        chi2[i] = normal_row(rows[0], rows[1], rows[2], p[i], fr[i], jtj[i], jtr[i], scratch)
    return chi2, jtj, jtr


@njit
def _inverse_factor(jtj: np.ndarray, fr: np.ndarray, a: np.ndarray, low: np.ndarray, inv: np.ndarray) -> None:
    """Factor ``jtj + diag(1 - fr)`` into ``low`` (:func:`cholesky5`) and invert the factor into ``inv``."""
    _unit_fixed(jtj, fr, a)
    cholesky5(a, low)
    inverse_lower(low, inv)


@njit
def _inverse_product(inv: np.ndarray, i: int, j: int) -> float:
    """Element (i, j) of the inverse matrix from its inverse factor: the sum over rows r >= max(i, j), in order."""
    s = 0.0
    for r in range(max(i, j), NPAR):
        s = s + inv[r, i] * inv[r, j]
    return s


@njit
def gauss_newton_kernel(x: np.ndarray, y: np.ndarray, w: np.ndarray, p: np.ndarray, fr: np.ndarray,
                        pars: np.ndarray) -> tuple:
    """One unbounded Gauss-Newton step of every fit and the covariance of ``pars`` (``solver.gauss_newton_step``)."""
    _, jtj, jtr = normal_equations_kernel(x, y, w, p, fr)
    n, k = x.shape[0], pars.size
    step = np.empty((n, NPAR))
    cov = np.empty((n, k, k))
    a, low, inv = np.empty((NPAR, NPAR)), np.zeros((NPAR, NPAR)), np.empty((NPAR, NPAR))
    sol = np.empty(NPAR)
    for f in range(n):
        _inverse_factor(jtj[f], fr[f], a, low, inv)
        for i in range(k):
            for j in range(k):
                cov[f, i, j] = _inverse_product(inv, pars[i], pars[j])
        solve_lower(low, jtr[f], sol)
        for c in range(NPAR):
            step[f, c] = sol[c] * fr[f, c]
    return step, cov


@njit
def regression_slope_kernel(x: np.ndarray, y: np.ndarray, w: np.ndarray, p: np.ndarray, fr: np.ndarray, of: int,
                            on: int) -> tuple:
    """How parameter ``of`` follows ``on`` in every fit, cov / var, and var (``solver.regression_slope``)."""
    _, jtj, _ = normal_equations_kernel(x, y, w, p, fr)
    n = x.shape[0]
    slope, var = np.empty(n), np.empty(n)
    a, low, inv = np.empty((NPAR, NPAR)), np.zeros((NPAR, NPAR)), np.empty((NPAR, NPAR))
    for f in range(n):
        _inverse_factor(jtj[f], fr[f], a, low, inv)
        v = _inverse_product(inv, on, on)
        slope[f] = _inverse_product(inv, of, on) / (v if v > 0 else np.inf)
        var[f] = v
    return slope, var


@njit(fastmath=SUM_MATH)
def linear_fit_kernel(x: np.ndarray, y: np.ndarray, w: np.ndarray, dl: np.ndarray, sig: np.ndarray, gam: np.ndarray,
                      v: np.ndarray, have_v: bool) -> tuple:
    """Exact weighted least squares of ``c0 - B V`` with the profile's shape fixed (``solver.linear_fit``).

    ``v`` is the profile of every fit, filled here unless ``have_v``. Returns the model (n, n_window) and a
    (9, n) array of c0, EW, its error, chi-square, B = c0 EW, s0, s1, s2 and the determinant.
    """
    n, nw = x.shape
    model = np.empty((n, nw))
    out = np.empty((9, n))
    xr = np.empty(nw)
    inf = np.inf
    for i in range(n):
        vi = v[i]
        if not have_v:
            for j in range(nw):
                xr[j] = x[i, j]
            voigt_row(xr, dl[i], sig[i], gam[i], vi)
        s0 = s1 = s2 = ty = tv = 0.0
        for j in range(nw):
            wj = np.float64(w[i, j])                   # float64 products of float32 windows
            yj = np.float64(y[i, j])
            wv = wj * vi[j]
            s0 += wj
            s1 += wv
            s2 += wv * vi[j]
            ty += wj * yj
            tv += wv * yj
        det = s0 * s2 - s1 * s1
        det = det if det > 0 else inf
        c0 = (s2 * ty - s1 * tv) / det
        b = (s1 * ty - s0 * tv) / det
        c0_safe = c0 if c0 > 0 else inf
        ew = b / c0_safe
        var = (s0 - 2.0 * ew * s1 + ew * ew * s2) / (det * c0_safe * c0_safe)
        chi2 = 0.0
        for j in range(nw):
            m = c0 - b * vi[j]
            model[i, j] = m
            r = y[i, j] - m
            chi2 += w[i, j] * r * r
        out[0, i], out[1, i], out[2, i], out[3, i] = c0, ew, math.sqrt(_max0(var, 0.0)), chi2
        out[4, i], out[5, i], out[6, i], out[7, i], out[8, i] = b, s0, s1, s2, det
    return model, out


@njit(fastmath=PIXEL_MATH)
def voigt_model_kernel(x: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Return the model ``c0 (1 - EW V)`` of every fit at offsets ``x``, in float32 (``solver.voigt_model``)."""
    n, nw = x.shape
    out = np.empty((n, nw), np.float32)
    v = np.empty(nw)
    xr = np.empty(nw)
    for i in range(n):
        for j in range(nw):
            xr[j] = x[i, j]
        voigt_row(xr, p[i, 2], p[i, 3], p[i, 4], v)
        for j in range(nw):
            out[i, j] = p[i, 0] * (1.0 - p[i, 1] * v[j])
    return out


@njit(fastmath=PIXEL_MATH)
def _second_difference(x: np.ndarray, p: np.ndarray, d: np.ndarray, h: float, m0: np.ndarray, v0: np.ndarray,
                       q: np.ndarray, v_plus: np.ndarray, v_minus: np.ndarray, out: np.ndarray) -> None:
    """Add to ``out`` the model's second difference along ``d``: ``(m(p + h d) - 2 m(p) + m(p - h d)) / h^2``.

    ``m0`` and ``v0`` are the model and the profile at ``p``; a step in (c0, EW) only keeps the profile.
    """
    shape = d[2] != 0.0 or d[3] != 0.0 or d[4] != 0.0
    for k in range(NPAR):
        q[k] = p[k] + h * d[k]
    c_plus, e_plus = q[0], q[1]
    if shape:
        voigt_row(x, q[2], q[3], q[4], v_plus)
    for k in range(NPAR):
        q[k] = p[k] - h * d[k]
    if shape:
        voigt_row(x, q[2], q[3], q[4], v_minus)
    vp = v_plus if shape else v0
    vm = v_minus if shape else v0
    hh = h * h
    for j in range(x.size):
        out[j] += (c_plus * (1.0 - e_plus * vp[j]) - 2.0 * m0[j] + q[0] * (1.0 - q[1] * vm[j])) / hh


@njit(fastmath=SUM_MATH)
def shared_bias_kernel(x: np.ndarray, y: np.ndarray, w: np.ndarray, p: np.ndarray, fa: np.ndarray, fn: np.ndarray,
                       on: int, h_on: float) -> tuple:
    """Each fit's terms ``s_a``, ``s_u`` of the second-order bias of a shared parameter (``solver.shared_bias_terms``).

    ``fa`` frees the shared parameter ``on`` as well, ``fn`` does not. ``u`` is the change of all parameters with
    ``on`` (from the inverse of the ``fa`` matrix), ``d_a`` the model's second differences along the rows of the
    inverse Cholesky factor of the ``fn`` matrix (1-sigma steps), ``d_u`` along ``u`` (steps of ``h_on``); the
    terms are ``u . J^T W d`` with the Jacobian of all five parameters.
    """
    n, nw = x.shape
    s_a = np.empty(n)
    s_u = np.empty(n)
    scratch = np.empty((2, nw))
    jtj = np.empty((NPAR, NPAR))
    jtr = np.empty(NPAR)
    mat = np.empty((NPAR, NPAR))
    low = np.empty((NPAR, NPAR))
    inv = np.empty((NPAR, NPAR))
    u = np.empty(NPAR)
    d = np.empty(NPAR)
    q = np.empty(NPAR)
    m0 = np.empty(nw)
    d_a = np.empty(nw)
    d_u = np.empty(nw)
    v0 = np.empty(nw)
    v_plus = np.empty(nw)
    v_minus = np.empty(nw)
    rows = np.empty((3, nw))
    for i in range(n):
        pi = p[i]
        _load_rows(x, y, w, i, rows)
        xi, yi, wi = rows[0], rows[1], rows[2]
        chi2_row(xi, yi, wi, pi, scratch)
        # u: the inverse of the matrix with `on` free, its column `on` over its diagonal element
        jacobian_sums(xi, yi, wi, pi, fa[i], jtj, jtr, scratch)
        _unit_fixed(jtj, fa[i], mat)
        cholesky5(mat, low)
        inverse_lower(low, inv)
        c_on_on = 0.0
        for r in range(on, NPAR):
            c_on_on = c_on_on + inv[r, on] * inv[r, on]
        for k in range(NPAR):
            c = 0.0
            for r in range(max(k, on), NPAR):
                c = c + inv[r, k] * inv[r, on]
            u[k] = c / c_on_on * fa[i, k]
        # the nuisance covariance (`on` fixed): its inverse Cholesky rows are the 1-sigma directions
        jacobian_sums(xi, yi, wi, pi, fn[i], jtj, jtr, scratch)
        _unit_fixed(jtj, fn[i], mat)
        cholesky5(mat, low)
        inverse_lower(low, inv)
        voigt_row(xi, pi[2], pi[3], pi[4], v0)
        for j in range(nw):
            m0[j] = pi[0] * (1.0 - pi[1] * v0[j])
            d_a[j] = 0.0
            d_u[j] = 0.0
        for r in range(NPAR):
            nonzero = False
            for k in range(NPAR):
                d[k] = (inv[r, k] if k <= r else 0.0) * fn[i, k]
                nonzero = nonzero or d[k] != 0.0
            if nonzero:                            # a fixed parameter's direction adds exactly 0
                _second_difference(xi, pi, d, 1.0, m0, v0, q, v_plus, v_minus, d_a)
        _second_difference(xi, pi, u, h_on, m0, v0, q, v_plus, v_minus, d_u)
        # u . J^T W d_a and u . J^T W d_u, with the Jacobian of all five parameters at p
        sa, su = _jacobian_dot(xi, wi, pi, scratch, u, d_a, d_u)
        s_a[i] = sa
        s_u[i] = su
    return s_a, s_u


@njit(fastmath=SUM_MATH)
def rv_gain_kernel(x: np.ndarray, y: np.ndarray, w: np.ndarray, sig: np.ndarray, lam: np.ndarray,
                   grid: np.ndarray, step: float, c_kms: float) -> np.ndarray:
    """Chi-square gain (n, n_grid) of a Gaussian line of width ``sig`` at each trial velocity (``measure._rv_gain``).

    The same recurrence over the evenly spaced grid (``P_j+1 = P_j q_j``, ``q_j+1 = q_j rho``), and the direct
    exponentials where the profile would underflow somewhere in the window.
    """
    n, nw = x.shape
    ng = grid.size
    gain = np.zeros((n, ng), np.float32)
    npad = (nw + 7) // 8 * 8                          # whole vectors: the sums along the grid then have no tail
    prof = np.zeros(npad)
    q = np.zeros(npad)
    u = np.empty(nw)
    wf = np.zeros(npad)                                # padding pixels: no weight, no profile
    wy = np.zeros(npad)
    for i in range(n):
        a = -0.5 / (sig[i] * sig[i])
        d0 = lam[i] * grid[0] / c_kms
        delta = lam[i] * step / c_kms
        s0 = ty = 0.0
        reach = 0.0
        for j in range(nw):
            wf[j] = w[i, j]
            wy[j] = wf[j] * y[i, j]                    # in float64
            s0 += wf[j]
            ty += wy[j]
            u[j] = x[i, j] - d0
            reach = max(reach, abs(u[j]), abs(u[j] - (ng - 1) * delta))
        direct = -a * reach * reach > 600.0
        if not direct:
            rho = math.exp(2.0 * a * delta * delta)
            if -a * (delta * delta + 2.0 * delta * reach) <= 700.0:   # |arguments| <= 700: the vectorized exp
                for j in range(nw):
                    prof[j] = _exp(a * u[j] * u[j])
                    q[j] = _exp(a * (delta * delta - 2.0 * u[j] * delta))
            else:
                for j in range(nw):
                    prof[j] = math.exp(a * u[j] * u[j])
                    q[j] = math.exp(a * (delta * delta - 2.0 * u[j] * delta))
        for g in range(ng):
            if direct:
                d = lam[i] * grid[g] / c_kms
                for j in range(nw):
                    off = x[i, j] - d
                    prof[j] = math.exp(off * off * a)
            s1 = s2 = tv = 0.0
            if direct or g == 0:
                for j in range(npad):
                    pj = prof[j]
                    s1 += pj * wf[j]
                    tv += pj * wy[j]
                    s2 += pj * pj * wf[j]
            else:
                for j in range(npad):
                    pj = prof[j] * q[j]
                    prof[j] = pj
                    q[j] = q[j] * rho
                    s1 += pj * wf[j]
                    tv += pj * wy[j]
                    s2 += pj * pj * wf[j]
            det = s0 * s2 - s1 * s1
            if det > 0:
                depth = (s1 * ty - s0 * tv) / det
                if depth > 0:
                    gain[i, g] = depth * depth / (s0 / det)
    return gain


@njit
def _median(a: np.ndarray, n: int) -> float:
    """Median of ``a[:n]`` (no NaNs) as numpy takes it: the middle value, or the mean of the middle two.

    Each value's rank is counted against all others (ties broken by position): n^2 comparisons without branches,
    faster than sorting a window's few dozen values. Returns the two middle values added (rounded in the dtype of
    ``a``) and halved; the caller stores it in that dtype.
    """
    k = n // 2
    upper = a[0]
    lower = a[0]
    for i in range(n):
        ai = a[i]
        rank = 0
        for j in range(i):
            rank += a[j] <= ai
        for j in range(i + 1, n):
            rank += a[j] < ai
        if rank == k:
            upper = ai
        if rank == k - 1:
            lower = ai
    if n % 2 == 1:
        lower = upper
    return (lower + upper) * 0.5


@njit
def clip_outliers_kernel(y: np.ndarray, w: np.ndarray, model: np.ndarray, core: np.ndarray) -> np.ndarray:
    """Return the weights with outlier pixels dropped (``measure._clip_outliers``), in numpy's arithmetic there.

    ``z = (y - model) sqrt(w)`` (in the dtype numpy would use: that of ``model``) less its median over the wing
    pixels (outside the core, with weight); pixels with ``z > 5`` go, and wing pixels with ``z < -3`` grown by one
    pixel, unless those are more than half the wing pixels.

    Most windows have no outlier, and that needs no median: where the wing values show the median to be at least
    ``max(z) - 5`` and at most ``min(z outside the core) + 3`` (counting the values below those bounds, the
    differences rounded as numpy rounds them), no pixel can go, whatever the median is exactly.
    """
    n, nw = y.shape
    out = np.empty((n, nw), np.float32)
    z = np.empty(nw, model.dtype)
    wing_z = np.empty(nw, model.dtype)
    t = np.empty(3, model.dtype)                       # scalars in the dtype of z: the bounds, the median
    for i in range(n):
        z_max = -np.inf
        z_min = np.inf
        for j in range(nw):
            zj = (y[i, j] - model[i, j]) * np.sqrt(w[i, j])
            z[j] = zj
            z_max = zj if zj > z_max else z_max
            z_min = zj if ((zj < z_min) & (not core[i, j])) else z_min
        t[0] = z_max - 5.0
        t[1] = z_min + 3.0
        t_high, t_low = t[0], t[1]
        n_wing = 0
        below_high = 0
        below_low = 0
        for j in range(nw):
            wing = (w[i, j] > 0) & ~core[i, j] & ~np.isnan(z[j])
            n_wing += wing
            below_high += wing & (z[j] < t_high)
            below_low += wing & (z[j] <= t_low)
        k = n_wing // 2
        lo = k if n_wing % 2 == 1 else k - 1
        if (n_wing > 0 and np.isfinite(t_high) and np.isfinite(t_low) and below_high <= lo and below_low >= k + 1
                and z_max - t_high <= 5.0 and z_min - t_low >= -3.0):
            for j in range(nw):                        # the median lies in [t_high, t_low]: nothing goes
                out[i, j] = w[i, j]
            continue
        n_wing = 0
        finite = False
        for j in range(nw):  # the wing values gathered, without branches
            wing = (w[i, j] > 0) & (not core[i, j]) & (not np.isnan(z[j]))
            wing_z[n_wing] = z[j]
            n_wing += wing
            finite = finite | (wing & np.isfinite(z[j]))
        t[2] = _median(wing_z, np.int64(n_wing)) if finite else 0.0
        med = t[2]
        n_low = 0
        n_usable = 0
        for j in range(nw):
            z[j] = z[j] - med
        for j in range(nw):
            low_j = ((z[j] < -3.0 and not core[i, j]) or (j > 0 and z[j - 1] < -3.0 and not core[i, j - 1])
                     or (j + 1 < nw and z[j + 1] < -3.0 and not core[i, j + 1]))
            usable = w[i, j] > 0 and not core[i, j]
            low_j = low_j and usable
            n_usable += usable
            n_low += low_j
            out[i, j] = 0.0 if (z[j] > 5.0 or low_j) else w[i, j]
        if n_low > 0.5 * n_usable:                     # crowded: no low clipping
            for j in range(nw):
                out[i, j] = 0.0 if z[j] > 5.0 else w[i, j]
    return out


@njit
def windows_kernel(flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray, bitmask: np.ndarray, idx: np.ndarray,
                   inside: np.ndarray, bit: int, telluric_var: float, telluric: bool) -> tuple:
    """Cut the fit windows out of float32 spectra (the loop of ``measure_ew``): flux, weights and good pixels.

    A pixel is good where it is unmasked, inside its line's window, finite and has ``ivar > 0``; pixels with the
    telluric ``bit`` set (with ``telluric``) get ``1 / (1 / ivar + telluric_var)`` first, in float32 as numpy.
    Bad pixels get flux and weight 0. Returns (m, n_lines, n_window) arrays.
    """
    m = flux.shape[0]
    nl, nw = idx.shape
    f_out = np.empty((m, nl, nw), np.float32)
    w_out = np.empty((m, nl, nw), np.float32)
    good = np.empty((m, nl, nw), np.bool_)
    one = np.float32(1.0)
    t_var = np.float32(telluric_var)
    for s in range(m):
        for li in range(nl):
            for j in range(nw):
                k = idx[li, j]
                f = flux[s, k]
                iv = ivar[s, k]
                if telluric and iv > 0 and (bitmask[s, k] >> bit) & 1 == 1:
                    iv = one / (one / iv + t_var)
                ok = (not mask[s, k]) and inside[li, j] and np.isfinite(f) and iv > 0
                good[s, li, j] = ok
                f_out[s, li, j] = f if ok else 0.0
                w_out[s, li, j] = iv if ok else 0.0
    return f_out, w_out, good


@njit
def window_stats_kernel(y: np.ndarray, w0: np.ndarray, wt: np.ndarray, model: np.ndarray, core: np.ndarray) -> tuple:
    """Return the statistics of each window that its flags need (``measure._window_stats``).

    Significantly negative flux (below -3 sigma at a pixel with weight ``w0``), the lowest model value and the
    lowest flux in the core over the fitted pixels (``wt > 0``; inf if none), the fitted pixels in the core and in
    all. Float32 inputs, in float32 arithmetic as numpy's.
    """
    n, nw = y.shape
    negative = np.zeros(n, np.bool_)
    model_min = np.empty(n, np.float32)
    core_min = np.empty(n, np.float32)
    n_core = np.zeros(n, np.int64)
    n_fit = np.zeros(n, np.int64)
    one = np.float32(1.0)
    minus3 = np.float32(-3.0)
    for i in range(n):
        neg = False
        m_min = np.float32(np.inf)
        c_min = np.float32(np.inf)
        nc = 0
        nf = 0
        for j in range(nw):
            if w0[i, j] > 0:
                neg = neg or y[i, j] < minus3 * (one / np.sqrt(w0[i, j]))
            if wt[i, j] > 0:                           # minima as numpy's: a NaN wins
                nf += 1
                if model[i, j] < m_min or np.isnan(model[i, j]):
                    m_min = model[i, j] if not np.isnan(m_min) else m_min
                if core[i, j]:
                    nc += 1
                    if y[i, j] < c_min or np.isnan(y[i, j]):
                        c_min = y[i, j] if not np.isnan(c_min) else c_min
        negative[i] = neg
        model_min[i] = m_min
        core_min[i] = c_min
        n_core[i] = nc
        n_fit[i] = nf
    return negative, model_min, core_min, n_core, n_fit


@njit
def _peaks(gain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise ``np.argmax`` and ``max`` (the first maximum; a NaN wins, as in numpy)."""
    n, ng = gain.shape
    peak = np.zeros(n, np.int64)
    best = np.empty(n, gain.dtype)
    for i in range(n):
        k = 0
        b = gain[i, 0]
        if not np.isnan(b):
            for g in range(1, ng):
                v = gain[i, g]
                if np.isnan(v):
                    k, b = g, v
                    break
                if v > b:
                    k, b = g, v
        peak[i] = k
        best[i] = b
    return peak, best


@njit
def weighted_median(x: np.ndarray, w: np.ndarray) -> float:
    """Return the weighted median as ``measure._weighted_median`` does.

    That is the first sorted value whose cumulative weight (summed in the dtype of ``w``) reaches half the total.
    """
    order = np.argsort(x)
    cum = np.cumsum(w[order])
    return x[order][np.searchsorted(cum, 0.5 * cum[-1])]


@njit
def rows_by_star(m: int, star: np.ndarray, use: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group the ``use`` rows by star: star i's rows, in order, are ``rows[offsets[i]:offsets[i + 1]]``.

    What ``np.flatnonzero(use & (star == i))`` gives for every star ``i < m`` at once.
    """
    offsets = np.zeros(m + 1, np.int64)
    for j in range(star.size):
        if use[j]:
            offsets[star[j] + 1] += 1
    for i in range(m):
        offsets[i + 1] += offsets[i]
    rows = np.empty(offsets[m], np.int64)
    fill = offsets[:m].copy()
    for j in range(star.size):
        if use[j]:
            rows[fill[star[j]]] = j
            fill[star[j]] += 1
    return offsets, rows


@njit
def weighted_medians(x: np.ndarray, w: np.ndarray, offsets: np.ndarray, rows: np.ndarray, min_rows: int,
                     out: np.ndarray) -> None:
    """Write each star's :func:`weighted_median` of ``x`` (weights ``w``) over its rows into ``out``.

    Stars with fewer than ``min_rows`` rows keep their value of ``out``.
    """
    for i in range(offsets.size - 1):
        sel = rows[offsets[i]:offsets[i + 1]]
        if sel.size >= min_rows:
            out[i] = weighted_median(x[sel], w[sel])


@njit
def shared_means(value: np.ndarray, wv: np.ndarray, limit: np.ndarray, offsets: np.ndarray, rows: np.ndarray,
                 out: np.ndarray, out_err: np.ndarray, n_out: np.ndarray, kept: np.ndarray) -> None:
    """Per star with >= 3 rows: the weighted mean of ``value`` over the rows within ``limit`` of the weighted median.

    ``measure._shared_mean``'s loop (weights ``wv``, limits ``limit`` = 3 errors, computed there): writes ``out``,
    ``out_err``, ``n_out`` and marks the rows used in ``kept``. The sums are NumPy's, to the bit
    (:func:`fehkit.physics.joint_kernels.block_sum`).
    """
    for i in range(offsets.size - 1):
        sel = rows[offsets[i]:offsets[i + 1]]
        if sel.size < 3:
            continue
        v, wi = value[sel], wv[sel]
        middle = weighted_median(v, wi)
        keep = np.abs(v - middle) <= limit[sel]
        n_keep = np.count_nonzero(keep)
        if n_keep < 3:
            continue
        total = block_sum(wi[keep])
        out[i] = block_sum(wi[keep] * v[keep]) / total
        out_err[i] = 1.0 / math.sqrt(total)
        n_out[i] = n_keep
        for j in sel[keep]:
            kept[j] = True


# ---------------------------------------------------------------------------------------------------------------
# wrappers: numpy in, numpy out, as the functions of fehkit.ew.solver


def _f64(a: np.ndarray) -> np.ndarray:
    """Return a small array (parameters, bounds) as contiguous float64."""
    return np.ascontiguousarray(a, dtype=np.float64)


def _px(a: np.ndarray) -> np.ndarray:
    """Return a (n_fits, n_window) array as it comes (float32 or float64, contiguous): no converted copy."""
    return np.ascontiguousarray(a) if a.dtype in (np.float32, np.float64) else _f64(a)


def linear_fit(x: np.ndarray, y: np.ndarray, w: np.ndarray, dl: np.ndarray, sig: np.ndarray, gam: np.ndarray,
               v: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """:func:`fehkit.ew.solver.linear_fit` (float64 results)."""
    have_v = v is not None
    v = np.empty(x.shape) if v is None else _f64(v)
    model, out = linear_fit_kernel(_px(x), _px(y), _px(w), _f64(dl), _f64(sig), _f64(gam), v, have_v)
    res = dict(zip(("c0", "ew", "err", "chi2", "b", "s0", "s1", "s2", "det"), out, strict=True))
    res["v"], res["model"] = v, model
    return res


def levenberg_marquardt(dx: np.ndarray, flux: np.ndarray, w: np.ndarray, p0: np.ndarray, lo: np.ndarray,
                        hi: np.ndarray, free: np.ndarray,
                        n_iter: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`fehkit.ew.solver.levenberg_marquardt` (float64 results)."""
    return levenberg_marquardt_kernel(_px(dx), _px(flux), _px(w), _f64(p0), _f64(lo), _f64(hi), _f64(free),
                                      int(n_iter))


def normal_equations(x: np.ndarray, y: np.ndarray, w: np.ndarray, p: np.ndarray,
                     free: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`fehkit.ew.solver.normal_equations` (float64 results)."""
    return normal_equations_kernel(_px(x), _px(y), _px(w), _f64(p), _f64(free))


def gauss_newton_step(dx: np.ndarray, flux: np.ndarray, w: np.ndarray, p: np.ndarray, free: np.ndarray,
                      pars: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`fehkit.ew.solver.gauss_newton_step` (float64 results)."""
    return gauss_newton_kernel(_px(dx), _px(flux), _px(w), _f64(p), _f64(free), np.asarray(pars, np.int64))


def regression_slope(dx: np.ndarray, flux: np.ndarray, w: np.ndarray, p: np.ndarray, free: np.ndarray, of: int,
                     on: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`fehkit.ew.solver.regression_slope` (float64 results)."""
    return regression_slope_kernel(_px(dx), _px(flux), _px(w), _f64(p), _f64(free), int(of), int(on))


def voigt_model(x: np.ndarray, p: np.ndarray) -> np.ndarray:
    """:func:`fehkit.ew.solver.voigt_model` (float32, as there)."""
    return voigt_model_kernel(_px(x), _f64(p))


def shared_bias_terms(dx: np.ndarray, flux: np.ndarray, w: np.ndarray, p: np.ndarray, free: np.ndarray, on: int,
                      h_on: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`fehkit.ew.solver.shared_bias_terms` (float64 results)."""
    all_free = free.copy()
    all_free[:, on] = True
    return shared_bias_kernel(_px(dx), _px(flux), _px(w), _f64(p), _f64(all_free), _f64(free), int(on),
                              float(h_on))


def rv_gain(x: np.ndarray, y: np.ndarray, w: np.ndarray, sig: np.ndarray, lam: np.ndarray, grid: np.ndarray,
            step: float) -> np.ndarray:
    """:func:`fehkit.ew.measure._rv_gain` (float32 gains, as there)."""
    return rv_gain_kernel(_px(x), _px(y), _px(w), _f64(sig), _f64(lam), _f64(grid), float(step),
                          float(SPEED_OF_LIGHT_KMS))


def rv_peaks(x: np.ndarray, y: np.ndarray, w: np.ndarray, sig: np.ndarray, lam: np.ndarray, grid: np.ndarray,
             step: float) -> tuple[np.ndarray, np.ndarray]:
    """Return each fit's trial velocity of largest gain (grid index) and that gain.

    ``argmax`` and ``max`` of :func:`rv_gain` along the grid.
    """
    return _peaks(rv_gain(x, y, w, sig, lam, grid, step))


def clip_outliers(y: np.ndarray, w: np.ndarray, model: np.ndarray, core: np.ndarray) -> np.ndarray:
    """:func:`fehkit.ew.measure._clip_outliers` (float32 weights, as there)."""
    return clip_outliers_kernel(_px(y), _px(w), _px(model), np.ascontiguousarray(core, dtype=np.bool_))


def windows(flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray, bitmask: np.ndarray | None, idx: np.ndarray,
            inside: np.ndarray, bit: int, telluric_sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the fit windows of float32 spectra: flux, weights, good pixels (as the loop of ``measure_ew``)."""
    telluric = telluric_sigma > 0 and bitmask is not None
    bits = np.ascontiguousarray(bitmask, dtype=np.int64) if telluric else np.zeros((1, 1), np.int64)
    return windows_kernel(np.ascontiguousarray(flux, dtype=np.float32), np.ascontiguousarray(ivar, dtype=np.float32),
                          np.ascontiguousarray(mask, dtype=np.bool_), bits, np.ascontiguousarray(idx, dtype=np.int64),
                          np.ascontiguousarray(inside, dtype=np.bool_), int(bit), float(telluric_sigma) ** 2,
                          telluric)


def window_stats(y: np.ndarray, w0: np.ndarray, wt: np.ndarray, model: np.ndarray,
                 core: np.ndarray) -> tuple[np.ndarray, ...]:
    """:func:`fehkit.ew.measure._window_stats` (float32 windows)."""
    return window_stats_kernel(*(np.ascontiguousarray(a, dtype=np.float32) for a in (y, w0, wt, model)),
                               np.ascontiguousarray(core, dtype=np.bool_))
