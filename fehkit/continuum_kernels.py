"""Compiled kernels of :func:`fehkit.continuum.normalize`: the same clipped fit, one spectrum at a time.

:mod:`fehkit.continuum` fits a block of spectra at once with NumPy; these numba kernels do the same arithmetic for
one spectrum and one detector in a few passes over its pixels per iteration, without the (n, n_pix) temporaries, and
are used whenever numba imports (the NumPy code stays as the reference and the fallback). The numbers are the NumPy
path's to float rounding. The float32 steps (model, residuals, clipping limits, the pairwise float32 sum of the
squared residuals) are done as NumPy and OpenBLAS (its sgemm kernel on x86-64 with FMA) do them, so the same pixels
are clipped; the float64 sums of the normal equations and the small solve differ in the order of their operations
only (~1e-16 relative, far below the float32 steps that follow).

Importing this module imports numba (~0.5 s), so :mod:`fehkit.continuum` imports it only when first needed. Without
numba it imports all the same (the functions stay plain Python, far too slow to use) and ``numba`` is None here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

try:
    import numba
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.extending import intrinsic
except ImportError:  # no numba: fehkit.continuum runs its NumPy path
    numba = None


def _compiled(**options: Any) -> Callable[[Callable], Callable]:
    """Return the decorator of the kernels: ``numba.njit`` (cached on disk, no Python division checks); or none."""
    if numba is None:
        return lambda func: func
    return numba.njit(cache=True, error_model="numpy", nogil=True, **options)


_njit = _compiled()

if numba is not None:
    @intrinsic
    def fma32(typingctx: object, a: types.Type, b: types.Type, c: types.Type) -> tuple:
        """Return a * b + c of three float32 numbers rounded once (a fused multiply-add, as BLAS kernels use)."""
        def codegen(context: object, builder: ir.IRBuilder, signature: object, args: list) -> ir.Value:
            f32 = ir.FloatType()
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32, f32, f32]),
                                                 "llvm.fma.f32")
            return builder.call(fma, args)

        return types.float32(types.float32, types.float32, types.float32), codegen

    @intrinsic
    def lane_sums8(typingctx: object, a: types.Type, start: types.Type, groups: types.Type) -> tuple | None:
        """Return the 8 float32 sums ``r_j = a[start + j] + a[start + 8 + j] + ...`` over ``groups`` (>= 1) groups.

        Each added in that order, the 8 of them side by side as one vector of 8 lanes (plain IEEE additions, lane
        by lane): NumPy's 8 partial sums of a pairwise block, to the bit, ~3 times faster than 8 scalar chains.
        ``a`` is a C-contiguous float32 array.
        """
        if not (isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" and a.dtype == types.float32):
            return None
        result = types.UniTuple(types.float32, 8)

        def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: list) -> ir.Value:
            data = context.make_array(signature.args[0])(context, builder, args[0]).data
            vector = ir.VectorType(ir.FloatType(), 8)
            first = builder.gep(data, [args[1]])
            acc = cgutils.alloca_once(builder, vector)  # promoted to a register by LLVM
            builder.store(builder.load(builder.bitcast(first, vector.as_pointer()), align=4), acc)
            one = ir.Constant(args[2].type, 1)
            with cgutils.for_range_slice(builder, one, args[2], one) as (g, _):
                group = builder.gep(first, [builder.mul(g, ir.Constant(g.type, 8))])
                values = builder.load(builder.bitcast(group, vector.as_pointer()), align=4)
                builder.store(builder.fadd(builder.load(acc), values), acc)
            sums = builder.load(acc)
            out = cgutils.get_null_value(context.get_value_type(result))
            for j in range(8):
                out = builder.insert_value(out, builder.extract_element(sums, ir.Constant(ir.IntType(32), j)), j)
            return out

        return result(a, start, groups), codegen
else:
    def fma32(a: np.float32, b: np.float32, c: np.float32) -> np.float32:
        """Return a * b + c rounded once to float32 (the product of two float32 numbers is exact in float64)."""
        return np.float32(np.float64(a) * np.float64(b) + np.float64(c))

    def lane_sums8(a: np.ndarray, start: int, groups: int) -> tuple:
        """Return the 8 float32 sums ``r_j = a[start + j] + a[start + 8 + j] + ...`` over ``groups`` groups."""
        return tuple(a[start:start + 8 * groups].reshape(groups, 8).cumsum(axis=0, dtype=np.float32)[-1])


@_njit
def fit_detector(flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray, start: int, line_free: np.ndarray,
                 basis: np.ndarray, basis_t: np.ndarray, basis32: np.ndarray, low: float, high: float, bias: float,
                 root_second_moment: float, max_iter: int, min_pixels: int, continuum: np.ndarray,
                 coef: np.ndarray, stats: np.ndarray) -> None:
    """Fit one detector (the m pixels from ``start`` on) of every spectrum; write the results in place.

    flux, ivar : (n, n_pix) float32; mask : (n, n_pix) bool; line_free : (m,) bool; basis : (m, k) float64
    Legendre basis, basis_t its transpose (k, m) and basis32 that in float32.
    ``root_second_moment`` is the rms of a unit normal clipped at -low/+high (the square root of
    :func:`fehkit.continuum._clipped_second_moment`).

    Writes ``continuum[i, start:start + m]`` (float32, NaN where the fit failed), ``coef[i]`` (k, in flux units)
    and ``stats[i]`` = (n_pixels, n_used, n_iter, converged, noise scale, ok).
    """
    n, m, k = flux.shape[0], line_free.size, basis.shape[1]
    # per-spectrum work arrays, reused
    y = np.empty(m, np.float32)
    w = np.empty(m, np.float32)
    sqrt_w = np.empty(m, np.float32)
    sigma = np.empty(m, np.float32)
    usable = np.empty(m, np.bool_)
    allowed = np.empty(m, np.bool_)
    keep = np.empty(m, np.bool_)
    new_keep = np.empty(m, np.bool_)
    model = np.empty(m, np.float32)
    resid = np.empty(m, np.float32)
    squares = np.empty(m, np.float32)
    values = np.empty(m, np.float32)
    sums = np.empty(k * k + 2 * k)
    delta = np.empty(k * k + 2 * k)
    a = np.empty((k, k))
    b = np.empty(k)
    c = np.empty(k)
    stop = start + m
    for i in range(n):
        level = prepare(flux[i, start:stop], ivar[i, start:stop], mask[i, start:stop], usable, values, y, w,
                        sqrt_w, sigma)
        n_pixels = np.count_nonzero(usable)
        ok = n_pixels >= max(min_pixels, 2 * k)
        for p in range(m):
            allowed[p] = usable[p] & line_free[p] & ok
            keep[p] = allowed[p]
        normal_sums(keep, w, y, sigma, basis, basis_t, sums)
        scale = 1.0
        n_iter = 0
        converged = False
        n_kept = np.count_nonzero(keep)
        c[:] = 0.0  # the results if max_iter is 0
        model[:] = 0.0
        for it in range(max_iter):
            solve(sums, k, bias * scale if it > 0 else 0.0, a, b, c)
            residuals(c, basis32, y, sqrt_w, keep, model, resid, squares)
            # the first fit saw unclipped pixels (no correction); later ones saw pixels clipped at -low/+high
            rms = np.sqrt(pairwise_sum32(squares, 0, m) / n_kept)
            scale = rms / (root_second_moment if it > 0 else 1.0)
            scale = min(max(scale if np.isfinite(scale) else 1.0, 0.3), 10.0)
            lo, hi = at_most32(-low * scale), at_least32(high * scale)
            n_flip, n_new = 0, 0
            for p in range(m):
                kept = allowed[p] & (resid[p] > lo) & (resid[p] < hi)
                new_keep[p] = kept
                n_flip += kept != keep[p]
                n_new += kept
            n_iter = it + 1
            # converged once (almost) no pixel changes side: a few noise pixels can flip at the limits forever
            converged = not n_flip > 2e-3 * max(n_kept, 1)
            if not converged and it < max_iter - 1:  # the pixels that entered or left go in or out of the sums
                delta[:] = 0.0
                for p in range(m):
                    if new_keep[p] != keep[p]:
                        add_pixel(delta, 1.0 if new_keep[p] else -1.0, p, w, y, sigma, basis)
                sums += delta
            keep, new_keep, n_kept = new_keep, keep, n_new
            if converged:
                break
        n_used = np.count_nonzero(keep)
        ok = ok and n_used >= max(min_pixels // 2, 2 * k)
        for p in range(m):
            continuum[i, start + p] = np.float32(model[p] * level) if ok else np.float32(np.nan)
        for j in range(k):
            coef[i, j] = c[j] * level
        stats[i, 0], stats[i, 1], stats[i, 2] = n_pixels, n_used, n_iter
        stats[i, 3], stats[i, 4], stats[i, 5] = converged, scale, ok


@_njit
def prepare(flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray, usable: np.ndarray, values: np.ndarray,
            y: np.ndarray, w: np.ndarray, sqrt_w: np.ndarray, sigma: np.ndarray) -> float:
    """Mark the usable pixels and fill y, w, sqrt(w) and sigma in units of the spectrum's median level.

    Returns the level (the median usable flux, 1 if none or zero, ``|level| + 1`` if negative), as the NumPy path.
    """
    m = flux.size
    for p in range(m):  # without branches (it vectorizes), then the usable values gathered: ~3 times faster in all
        usable[p] = (not mask[p]) & np.isfinite(flux[p]) & (ivar[p] > 0)
    n_use = 0
    for p in range(m):
        values[n_use] = flux[p]
        n_use += usable[p]
    level = median32(values[:n_use]) if n_use else 1.0
    if level == 0.0:
        level = 1.0
    if not level > 0:
        level = abs(level) + 1.0
    square = level * level
    for p in range(m):  # computed everywhere, then chosen: no branches in the loop
        yp = np.float32(np.float64(flux[p]) / level)
        wp = np.float32(np.float64(ivar[p]) * square)
        y[p] = yp if usable[p] else np.float32(0.0)
        w[p] = wp if usable[p] else np.float32(0.0)
        root = np.sqrt(w[p])
        sqrt_w[p] = root
        sigma[p] = np.float32(1.0) / root if w[p] > 0 else np.float32(0.0)
    return level


@_njit
def median32(values: np.ndarray) -> float:
    """Return the median of finite float32 ``values`` in float64 (the mean of the middle two, as ``np.median``).

    A selection by histograms: count the values in 512 bins between their min and max, keep the bin that holds the
    middle rank(s), and repeat on it until a few values are left to sort. Counting has no unpredictable branches,
    which makes it several times faster than a quickselect on spectra.
    """
    n = values.size
    r_hi = n // 2
    r_lo = r_hi if n % 2 else r_hi - 1
    counts = np.empty(_BINS, np.int64)
    buffers = (np.empty(n, np.float32), np.empty(n, np.float32))
    cur, which = values, 0
    while cur.size > 64:
        vmin, vmax = cur.min(), cur.max()
        if vmin == vmax:
            return np.float64(vmin)
        scale = _BINS / (np.float64(vmax) - np.float64(vmin))
        counts[:] = 0
        for v in cur:
            counts[min(int((np.float64(v) - vmin) * scale), _BINS - 1)] += 1
        below, b_lo, b_hi, base = 0, -1, -1, 0
        for b in range(_BINS):
            if b_lo < 0 and below + counts[b] > r_lo:
                b_lo, base = b, below
            if below + counts[b] > r_hi:
                b_hi = b
                break
            below += counts[b]
        if b_lo != b_hi:  # the middle two ranks: the largest value of one bin and the smallest of a later one
            lower, upper = -np.inf, np.inf
            for v in cur:
                b = min(int((np.float64(v) - vmin) * scale), _BINS - 1)
                if b == b_lo:
                    lower = max(lower, np.float64(v))
                elif b == b_hi:
                    upper = min(upper, np.float64(v))
            return (lower + upper) / 2
        out = buffers[which]  # the bin's values become the set to select from, in the buffer not being read
        kept = 0
        for v in cur:
            if min(int((np.float64(v) - vmin) * scale), _BINS - 1) == b_lo:
                out[kept] = v
                kept += 1
        cur, which = out[:kept], 1 - which
        r_lo, r_hi = r_lo - base, r_hi - base
    ordered = np.sort(cur)
    return (np.float64(ordered[r_lo]) + np.float64(ordered[r_hi])) / 2


#: Histogram bins of :func:`median32`.
_BINS = 512


@_njit
def normal_sums(keep: np.ndarray, w: np.ndarray, y: np.ndarray, sigma: np.ndarray, basis: np.ndarray,
                basis_t: np.ndarray, sums: np.ndarray) -> None:
    """Sum the normal equations over the kept pixels: [sum w B B^T (k*k) | sum w y B (k) | sum w sigma B (k)].

    basis (m, k) and basis_t (k, m) hold the Legendre basis. The usual cubic (k = 4) in one SIMD pass
    (:func:`_normal_sums4`), other orders a pixel at a time.
    """
    if basis_t.shape[0] == 4:
        _normal_sums4(keep, w, y, sigma, basis_t, sums)
        return
    sums[:] = 0.0
    for p in range(keep.size):
        if keep[p]:
            add_pixel(sums, 1.0, p, w, y, sigma, basis)


@_compiled(fastmath={"reassoc", "contract"})
def _normal_sums4(keep: np.ndarray, w: np.ndarray, y: np.ndarray, sigma: np.ndarray, basis_t: np.ndarray,
                  sums: np.ndarray) -> None:
    """:func:`normal_sums` for k = 4, the 18 distinct sums in one pass, added in any order (as BLAS would)."""
    b0, b1, b2, b3 = basis_t[0], basis_t[1], basis_t[2], basis_t[3]
    a00 = a01 = a02 = a03 = a11 = a12 = a13 = a22 = a23 = a33 = 0.0
    y0 = y1 = y2 = y3 = s0 = s1 = s2 = s3 = 0.0
    for p in range(keep.size):
        wp = np.float64(w[p]) if keep[p] else 0.0
        w0, w1, w2, w3 = wp * b0[p], wp * b1[p], wp * b2[p], wp * b3[p]
        a00 += w0 * b0[p]
        a01 += w0 * b1[p]
        a02 += w0 * b2[p]
        a03 += w0 * b3[p]
        a11 += w1 * b1[p]
        a12 += w1 * b2[p]
        a13 += w1 * b3[p]
        a22 += w2 * b2[p]
        a23 += w2 * b3[p]
        a33 += w3 * b3[p]
        yp, sp = np.float64(y[p]), np.float64(sigma[p])
        y0 += w0 * yp
        y1 += w1 * yp
        y2 += w2 * yp
        y3 += w3 * yp
        s0 += w0 * sp
        s1 += w1 * sp
        s2 += w2 * sp
        s3 += w3 * sp
    sums[0], sums[1], sums[2], sums[3] = a00, a01, a02, a03
    sums[4], sums[5], sums[6], sums[7] = a01, a11, a12, a13
    sums[8], sums[9], sums[10], sums[11] = a02, a12, a22, a23
    sums[12], sums[13], sums[14], sums[15] = a03, a13, a23, a33
    sums[16], sums[17], sums[18], sums[19] = y0, y1, y2, y3
    sums[20], sums[21], sums[22], sums[23] = s0, s1, s2, s3


@_njit
def add_pixel(sums: np.ndarray, sign: float, p: int, w: np.ndarray, y: np.ndarray, sigma: np.ndarray,
              basis: np.ndarray) -> None:
    """Add pixel ``p`` to the sums of the normal equations with weight ``sign * w[p]`` (sign -1 takes it out)."""
    k = basis.shape[1]
    wp = sign * np.float64(w[p])
    wy, ws = wp * np.float64(y[p]), wp * np.float64(sigma[p])
    for j in range(k):
        for c in range(k):
            sums[j * k + c] += wp * (basis[p, j] * basis[p, c])
        sums[k * k + j] += wy * basis[p, j]
        sums[k * k + k + j] += ws * basis[p, j]


@_njit
def solve(sums: np.ndarray, k: int, shift: float, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """Solve ``A c = sum w y B - shift * sum w sigma B`` (A regularized by 1e-12 of its trace), pivoting by rows."""
    trace = 0.0
    for j in range(k):
        trace += sums[j * k + j]
    eps = 1e-12 * max(trace, 1e-30)
    for j in range(k):
        for c in range(k):
            a[j, c] = sums[j * k + c] + (eps if j == c else 0.0)
        b[j] = sums[k * k + j] - shift * sums[k * k + k + j]
    for j in range(k):  # Gaussian elimination with partial pivoting
        piv = j
        for r in range(j + 1, k):
            if abs(a[r, j]) > abs(a[piv, j]):
                piv = r
        if piv != j:
            for c in range(k):
                a[j, c], a[piv, c] = a[piv, c], a[j, c]
            b[j], b[piv] = b[piv], b[j]
        for r in range(j + 1, k):
            f = a[r, j] / a[j, j]
            for c in range(j, k):
                a[r, c] -= f * a[j, c]
            b[r] -= f * b[j]
    for j in range(k - 1, -1, -1):
        s = b[j]
        for c in range(j + 1, k):
            s -= a[j, c] * out[c]
        out[j] = s / a[j, j]


@_njit
def polynomial32(coef: np.ndarray, basis32: np.ndarray, model: np.ndarray) -> None:
    """Evaluate the model in float32 as OpenBLAS's sgemm does: float32 coefficients, one fused multiply-add a term."""
    k, m = basis32.shape
    model[:] = 0.0
    for j in range(k):
        cj = np.float32(coef[j])
        for p in range(m):
            model[p] = fma32(cj, basis32[j, p], model[p])


@_njit
def residuals(coef: np.ndarray, basis32: np.ndarray, y: np.ndarray, sqrt_w: np.ndarray, keep: np.ndarray,
              model: np.ndarray, resid: np.ndarray, squares: np.ndarray) -> None:
    """Model (:func:`polynomial32`), residuals in sigma ``(y - model) sqrt(w)`` and their squares where kept.

    The usual cubic (4 coefficients) in one pass over the pixels, other orders in k + 1.
    """
    k, m = basis32.shape
    if k == 4:
        c0, c1, c2, c3 = np.float32(coef[0]), np.float32(coef[1]), np.float32(coef[2]), np.float32(coef[3])
        b0, b1, b2, b3 = basis32[0], basis32[1], basis32[2], basis32[3]
        zero = np.float32(0.0)
        for p in range(m):
            acc = fma32(c3, b3[p], fma32(c2, b2[p], fma32(c1, b1[p], fma32(c0, b0[p], zero))))
            model[p] = acc
            r = (y[p] - acc) * sqrt_w[p]
            resid[p] = r
            squares[p] = (r * r) * np.float32(keep[p])
        return
    polynomial32(coef, basis32, model)
    for p in range(m):
        r = (y[p] - model[p]) * sqrt_w[p]
        resid[p] = r
        squares[p] = (r * r) * np.float32(keep[p])


@_njit
def pairwise_sum32(a: np.ndarray, start: int, n: int) -> np.float32:
    """Sum ``a[start:start + n]`` in float32 exactly as NumPy's pairwise summation does.

    NumPy halves a sum (at a multiple of 8) until a part has at most 128 values, sums those in 8 partial sums
    (:func:`_block_sum32`) and adds the halves back up. This walks the same tree with a stack (numba's cache does not
    keep recursive functions): a part is pushed once to be split and once more to add its two halves.
    """
    if n <= 128:
        return _block_sum32(a, start, n)
    part_start = np.empty(192, np.int64)
    part_n = np.empty(192, np.int64)
    split = np.empty(192, np.bool_)
    sums = np.empty(96, np.float32)
    top, n_sums = 0, 0
    part_start[0], part_n[0], split[0] = start, n, False
    while top >= 0:
        s, c, halves_done = part_start[top], part_n[top], split[top]
        top -= 1
        if c <= 128:
            sums[n_sums] = _block_sum32(a, s, c)
            n_sums += 1
        elif halves_done:
            n_sums -= 1
            sums[n_sums - 1] = sums[n_sums - 1] + sums[n_sums]
        else:
            c2 = c // 2
            c2 -= c2 % 8
            part_start[top + 1], part_n[top + 1], split[top + 1] = s, c, True  # add the halves, last
            part_start[top + 2], part_n[top + 2], split[top + 2] = s + c2, c - c2, False  # second half
            part_start[top + 3], part_n[top + 3], split[top + 3] = s, c2, False  # first half, first
            top += 3
    return sums[0]


@_njit
def _block_sum32(a: np.ndarray, start: int, n: int) -> np.float32:
    """NumPy's float32 sum of at most 128 values: 8 partial sums (from 8 values on), added pairwise, then the rest."""
    if n < 8:
        res = np.float32(0.0)
        for i in range(start, start + n):
            res += a[i]
        return res
    r0, r1, r2, r3, r4, r5, r6, r7 = lane_sums8(a, start, n // 8)
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    for i in range(start + n - n % 8, start + n):
        res += a[i]
    return res


@_njit
def at_most32(t: float) -> np.float32:
    """Return the largest float32 <= t (:func:`fehkit.float32.at_most` for one value)."""
    t32 = np.float32(t)
    return np.nextafter(t32, np.float32(-np.inf)) if t32 > t else t32


@_njit
def at_least32(t: float) -> np.float32:
    """Return the smallest float32 >= t (:func:`fehkit.float32.at_least` for one value)."""
    t32 = np.float32(t)
    return np.nextafter(t32, np.float32(np.inf)) if t32 < t else t32


@_njit
def divide(flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray, continuum: np.ndarray, out_flux: np.ndarray,
           out_ivar: np.ndarray, out_mask: np.ndarray) -> None:
    """Normalize: flux / continuum, ivar * continuum**2 and the mask extended where there is no continuum (> 0).

    The mask also covers every pixel whose flux is not finite or ivar not positive after the division (as
    :class:`fehkit.spectra.SpectrumBatch` would add them), so that the batch need not work them out again.
    """
    n, m = flux.shape
    for i in range(n):
        for p in range(m):
            cont = continuum[i, p]
            fitted = cont > 0
            f = flux[i, p] / cont if fitted else np.float32(np.nan)
            v = ivar[i, p] * cont * cont if fitted else np.float32(0.0)
            out_flux[i, p] = f
            out_ivar[i, p] = v
            # | rather than or: no branches, so the loop vectorizes (~2 times faster)
            out_mask[i, p] = mask[i, p] | (not fitted) | (not np.isfinite(f)) | (not v > 0)
