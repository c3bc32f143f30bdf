"""Compiled kernels of the classical method: grid interpolation, inversion and the joint likelihood, star by star.

:mod:`fehkit.physics.joint` evaluates -2 ln L for blocks of stars with NumPy; :func:`joint_stars` does it one star
at a time with numba, used whenever numba imports (the NumPy code stays as the reference and the fallback). Both
find the same thing, the minimum of -2 ln L over the whole [Fe/H] grid and where it crosses +1 and +9, evaluating
only the points that bounds on the curve of growth cannot exclude. -2 ln L at a grid point is the same formula from
the same PCHIP coefficients (bit for bit), added up in another order, with 10**x as exp(x ln 10) and one logarithm
of the product of the variances: the values differ from NumPy's by ~1e-15 relative, so the same grid points come
out unless two of them differ by less than that. The search is a branch and bound: every ``first_stride``-th grid
point first, then always halve the interval whose lower bound is lowest, until every interval left is bounded above
the best value; the crossings are then found by walking outwards, halving the intervals whose upper bound does not
stay under the level.

:func:`interpolate4` is :class:`scipy.interpolate.RegularGridInterpolator` (linear) for the curve-of-growth grid,
with the same weights and the same order of the sum over the 16 corners; :func:`invert` is the bisection of
:meth:`fehkit.physics.cog.CurveOfGrowth.abundance`, step for step. Both give NumPy's numbers to the bit.

Importing this module imports numba (~0.5 s): :mod:`fehkit.physics.joint` and :mod:`fehkit.physics.cog` import it
only when first needed. Without numba it imports all the same (plain Python functions, far too slow to use) and
``numba`` is None here.
"""

from __future__ import annotations

import numpy as np

try:
    import numba
except ImportError:  # no numba: fehkit.physics runs its NumPy and scipy paths
    numba = None

#: The decorator of the kernels: ``numba.njit`` (cached on disk, no Python division checks); none without numba.
_njit = (lambda func: func) if numba is None else numba.njit(cache=True, error_model="numpy", nogil=True)

#: ln 10: 10**x is computed as exp(x * LN10), a few times faster.
LN10 = np.log(10.0)


@_njit
def interpolate4(ax0: np.ndarray, ax1: np.ndarray, ax2: np.ndarray, ax3: np.ndarray, values: np.ndarray,
                 points: np.ndarray) -> np.ndarray:
    """Multilinear interpolation on a 4-d grid with linear extrapolation: (n, T) from ``values`` (n0, n1, n2, n3, T).

    The same numbers as ``RegularGridInterpolator(axes, values, fill_value=None)(points)``.
    """
    n, t = points.shape[0], values.shape[4]
    out = np.empty((n, t))
    idx = np.empty(4, np.int64)
    frac = np.empty(4)
    c = np.empty(4, np.int64)
    axes = (ax0, ax1, ax2, ax3)
    for i in range(n):
        for d in range(4):
            ax = axes[d]
            x = points[i, d]
            j = np.searchsorted(ax, x, side="right") - 1
            j = min(max(j, 0), ax.size - 2)
            idx[d] = j
            frac[d] = (x - ax[j]) / (ax[j + 1] - ax[j])
        row = out[i]
        row[:] = 0.0
        for corner in range(16):  # itertools.product order: the first axis varies slowest
            weight = 1.0
            for d in range(4):
                upper = (corner >> (3 - d)) & 1
                c[d] = idx[d] + upper
                weight = weight * (frac[d] if upper else 1.0 - frac[d])
            node = values[c[0], c[1], c[2], c[3]]
            for q in range(t):
                row[q] = row[q] + node[q] * weight
    return out


@_njit
def pchip(x: np.ndarray, y: np.ndarray, coef: np.ndarray) -> None:
    """PCHIP coefficients of one star's curves ``y`` (F, L) along ``x`` (F,) into ``coef`` (4, F - 1, L).

    The formulas of :func:`fehkit.physics.cog.pchip_coefficients`, in the same order (bit for bit).
    """
    for j in range(x.size - 1):
        pchip_piece(x, y, j, coef)


@_njit
def pchip_piece(x: np.ndarray, y: np.ndarray, j: int, coef: np.ndarray) -> None:
    """PCHIP coefficients of piece ``j`` (from x[j] to x[j + 1]) of every line: ``coef[:, j, :]``.

    The same numbers as :func:`_piece`, a line at a time; here each step runs over all lines (SIMD).
    """
    n_lines = y.shape[1]
    d0, d1 = np.empty(n_lines), np.empty(n_lines)
    _node_slopes(x, y, j, d0)
    _node_slopes(x, y, j + 1, d1)
    h = x[j + 1] - x[j]
    for line in range(n_lines):
        m = (y[j + 1, line] - y[j, line]) / h
        t = (d0[line] + d1[line] - 2 * m) / h
        coef[0, j, line] = t / h
        coef[1, j, line] = (m - d0[line]) / h - t
        coef[2, j, line] = d0[line]
        coef[3, j, line] = y[j, line]


@_njit
def _node_slopes(x: np.ndarray, y: np.ndarray, i: int, out: np.ndarray) -> None:
    """:func:`_node_slope` of every line at node ``i``, into ``out``."""
    f = x.size
    if f == 2 or i == 0 or i == f - 1:
        for line in range(y.shape[1]):
            out[line] = _node_slope(x, y, i, line)
        return
    h0, h1 = x[i] - x[i - 1], x[i + 1] - x[i]
    w1, w2 = 2 * h1 + h0, h1 + 2 * h0
    for line in range(y.shape[1]):
        m0 = (y[i, line] - y[i - 1, line]) / h0
        m1 = (y[i + 1, line] - y[i, line]) / h1
        flat = (np.sign(m1) != np.sign(m0)) | (m1 == 0) | (m0 == 0)
        mean = 1.0 / ((w1 / m0 + w2 / m1) / (w1 + w2))
        out[line] = 0.0 if flat else mean


@_njit
def _piece(x: np.ndarray, y: np.ndarray, j: int, line: int) -> tuple:
    """Return the four PCHIP coefficients of piece ``j`` of one line (highest power first)."""
    h = x[j + 1] - x[j]
    m = (y[j + 1, line] - y[j, line]) / h
    d0, d1 = _node_slope(x, y, j, line), _node_slope(x, y, j + 1, line)
    t = (d0 + d1 - 2 * m) / h
    return t / h, (m - d0) / h - t, d0, y[j, line]


@_njit
def _node_slope(x: np.ndarray, y: np.ndarray, i: int, line: int) -> float:
    """PCHIP derivative at node ``i``: the weighted harmonic mean of the slopes around it (0 at an extremum)."""
    f = x.size
    if f == 2:
        return (y[1, line] - y[0, line]) / (x[1] - x[0])
    if i == 0 or i == f - 1:
        a, b = (0, 1) if i == 0 else (f - 2, f - 3)  # the end piece and the one next to it
        h0, h1 = x[a + 1] - x[a], x[b + 1] - x[b]
        m0 = (y[a + 1, line] - y[a, line]) / h0
        m1 = (y[b + 1, line] - y[b, line]) / h1
        return _pchip_end(h0, h1, m0, m1)
    h0, h1 = x[i] - x[i - 1], x[i + 1] - x[i]
    m0 = (y[i, line] - y[i - 1, line]) / h0
    m1 = (y[i + 1, line] - y[i, line]) / h1
    if np.sign(m1) != np.sign(m0) or m1 == 0 or m0 == 0:
        return 0.0
    w1, w2 = 2 * h1 + h0, h1 + 2 * h0
    return 1.0 / ((w1 / m0 + w2 / m1) / (w1 + w2))


@_njit
def _pchip_end(h0: float, h1: float, m0: float, m1: float) -> float:
    """One-sided three-point derivative at an end, kept monotone (:func:`fehkit.physics.cog._pchip_end`)."""
    d = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
    if np.sign(d) != np.sign(m0):
        return 0.0
    if np.sign(m0) != np.sign(m1) and abs(d) > 3.0 * abs(m0):
        return 3.0 * m0
    return d


@_njit
def invert(curves: np.ndarray, feh_nodes: np.ndarray, y: np.ndarray, feh: np.ndarray, slope: np.ndarray) -> None:
    """Invert each curve of growth: the [Fe/H] where it reaches log EW ``y``, and the slope there (in place).

    curves : (n, F, L) log EW at ``feh_nodes``; y, feh, slope : (n, L). The bisection of
    ``CurveOfGrowth._invert`` on the same PCHIP piece, step for step (the same numbers).
    """
    n, f, n_lines = curves.shape
    for i in range(n):
        for line in range(n_lines):
            yv = y[i, line]
            k = 0
            for j in range(f):
                k += curves[i, j, line] <= yv
            k = min(max(k - 1, 0), f - 2)
            c0, c1, c2, c3 = _piece(feh_nodes, curves[i], k, line)
            lo, hi = 0.0, feh_nodes[k + 1] - feh_nodes[k]
            for _ in range(40):
                mid = 0.5 * (lo + hi)
                if ((c0 * mid + c1) * mid + c2) * mid + c3 < yv:
                    lo = mid
                else:
                    hi = mid
            d = 0.5 * (lo + hi)
            first = curves[i, 0, line]
            if np.isnan(yv) or yv > curves[i, f - 1, line]:
                feh[i, line] = np.nan
            elif yv < first:
                feh[i, line] = feh_nodes[0] + (yv - first)
            else:
                feh[i, line] = feh_nodes[k] + d
            slope[i, line] = 1.0 if yv < first else (3 * c0 * d + 2 * c1) * d + c2


@_njit
def block_sum(a: np.ndarray) -> float:
    """Sum as NumPy sums a row (``np.sum(x, axis=1)``): pairwise, 8 partial sums in blocks of up to 128 values.

    Below 8 values in order; up to 128, 8 partial sums added pairwise, then the rest in order; beyond, the two
    halves (the first a multiple of 8 long) each summed so and added.
    """
    n = a.size
    if n > 128:
        half = n // 2
        half -= half % 8
        return block_sum(a[:half]) + block_sum(a[half:])
    if n < 8:
        res = 0.0
        for i in range(n):
            res += a[i]
        return res
    r = a[:8].copy()
    i = 8
    while i < n - n % 8:
        for j in range(8):
            r[j] += a[i + j]
        i += 8
    res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    while i < n:
        res += a[i]
        i += 1
    return res


@_njit
def evaluate(q: int, grid: tuple, star: tuple, frac: float, floor2: float) -> None:
    """-2 ln L of one star at grid point ``q``; keeps each line's model EW and 1 / variance there for the bounds.

    ``grid`` and ``star`` are the tuples that :func:`joint_stars` makes. The model is the PCHIP piece of log EW
    (linear in N(Fe) below the curve-of-growth grid), as ``_Table.model``, with the piece's coefficients computed
    when first needed. -2 ln L is the sum of ``(EW - model)**2 / var + ln var`` over the usable lines; it is added
    in another order than NumPy's, 10**x is exp(x ln 10) and a / var is a * (1 / var): the same to ~1e-15
    relative.
    """
    feh, piece, offset, on_grid, feh_nodes = grid
    curves, coef, have_piece, e, err2, use, model, inv_var, log_var_sum, value = star
    p = piece[q]
    if on_grid[q] and not have_piece[p]:
        pchip_piece(feh_nodes, curves, p, coef)
        have_piece[p] = True
    sq = offset[q]
    z = sq * sq
    m, inv = model[q], inv_var[q]
    if on_grid[q]:
        c0, c1, c2, c3 = coef[0, p], coef[1, p], coef[2, p], coef[3, p]
        for line in range(e.size):
            m[line] = np.exp((c3[line] + c2[line] * sq + c1[line] * z + c0[line] * (z * sq)) * LN10)
    else:
        shift = feh[q] - feh_nodes[0]
        for line in range(e.size):
            m[line] = np.exp((curves[0, line] + shift) * LN10)
    chi2 = 0.0
    product, total_log = 1.0, 0.0  # the sum of ln var as the ln of a product: one logarithm, not one per line
    for line in range(e.size):
        v = err2[line] + (frac * m[line]) ** 2 + floor2
        inv[line] = 1.0 / v
        if use[line]:
            chi2 += (e[line] - m[line]) ** 2 * inv[line]
            product *= v
            if not 1e-100 < product < 1e100:
                total_log += np.log(product)
                product = 1.0
    log_var_sum[q] = total_log + np.log(product)
    value[q] = chi2 + log_var_sum[q]


@_njit
def lower_bound(a: int, b: int, star: tuple) -> float:
    """Lower bound of -2 ln L between evaluated points a < b: each model EW lies between its values at a and b.

    The variance grows with the model EW: each term is at least the distance of the EW from [model_a, model_b]
    squared over var_b, plus ln var_a.
    """
    _, _, _, e, _, use, model, inv_var, log_var_sum, _ = star
    total = log_var_sum[a]
    for line in range(e.size):
        if use[line]:
            dist = max(max(model[a, line] - e[line], e[line] - model[b, line]), 0.0)
            total += dist * dist * inv_var[b, line]
    return total


@_njit
def upper_bound(a: int, b: int, star: tuple) -> float:
    """Upper bound of -2 ln L between evaluated points a < b: the farther end's distance over var_a, plus ln var_b."""
    _, _, _, e, _, use, model, inv_var, log_var_sum, _ = star
    total = log_var_sum[b]
    for line in range(e.size):
        if use[line]:
            far = max((e[line] - model[a, line]) ** 2, (e[line] - model[b, line]) ** 2)
            total += far * inv_var[a, line]
    return total


@_njit
def joint_stars(curves: np.ndarray, feh_nodes: np.ndarray, feh: np.ndarray, piece: np.ndarray, offset: np.ndarray,
                on_grid: np.ndarray, ew: np.ndarray, err: np.ndarray, use: np.ndarray, frac: float, floor: float,
                full: bool, first_stride: int, k_out: np.ndarray, near_out: np.ndarray, cross_out: np.ndarray,
                chi2_out: np.ndarray, n_eval_out: np.ndarray) -> None:
    """Minimum of -2 ln L on the grid ``feh`` for every star (with ``full`` also its crossings and chi2).

    curves : (n, F, L) log10 EW at the curve-of-growth nodes ``feh_nodes``; piece, offset, on_grid : (G,) the PCHIP
    piece of each grid point, its offset in the piece and whether it is on the curve-of-growth grid; ew, err, use :
    (n, L). Writes ``k_out`` (grid index of the minimum), ``near_out`` (n, 3) -2 ln L at k' - 1, k', k' + 1
    (k' = k clipped to 1..G-2), ``cross_out`` (n, 3) the [Fe/H] of the Delta = 1 crossings below and above the
    minimum and of the Delta = 9 crossing above (the grid's ends where none), ``chi2_out`` and the number of grid
    points evaluated, ``n_eval_out``.
    """
    n, f, n_lines = curves.shape
    g = feh.size
    grid = (feh, piece, offset, on_grid, feh_nodes)
    coef = np.empty((4, f - 1, n_lines))
    have_piece = np.zeros(f - 1, np.bool_)
    e, err2 = np.empty(n_lines), np.empty(n_lines)
    model, inv_var = np.empty((g, n_lines)), np.empty((g, n_lines))
    log_var_sum, value = np.empty(g), np.empty(g)
    links = linked_points(g)
    terms = np.empty(n_lines)
    floor2 = floor ** 2
    for i in range(n):
        u = use[i]
        for line in range(n_lines):
            e[line] = ew[i, line] if u[line] else 0.0
            err2[line] = err[i, line] ** 2
        if not u.any():  # no line: a flat profile of zeros
            k_out[i], near_out[i, :], chi2_out[i], n_eval_out[i] = 0, 0.0, 0.0, 0
            cross_out[i, 0], cross_out[i, 1], cross_out[i, 2] = feh[0], feh[g - 1], feh[g - 1]
            continue
        have_piece[:] = False
        star = (curves[i], coef, have_piece, e, err2, u, model, inv_var, log_var_sum, value)
        k, n_eval = minimum(grid, star, links, first_stride, frac, floor2)
        best = value[k]
        k_out[i] = k
        kk = min(max(k, 1), g - 2)
        near_out[i, 0], near_out[i, 1], near_out[i, 2] = value[kk - 1], value[kk], value[kk + 1]
        if full:
            slack = 1e-8 * (1.0 + abs(best))
            for j, (level, side) in enumerate(((1.0, -1), (1.0, 1), (9.0, 1))):
                p, n_more = crossing(k, side, level, best, slack, grid, star, links, frac, floor2)
                n_eval += n_more
                if p < 0 or p >= g:
                    cross_out[i, j] = feh[0] if side < 0 else feh[g - 1]
                    continue
                # linear interpolation between the crossing and the point before it, as ``_crossing``
                p_in = p - side
                d_out, d_in = value[p] - best, value[p_in] - best
                t = (level - d_in) / (d_out - d_in) if d_out > d_in else 0.0
                cross_out[i, j] = feh[p_in] + t * (feh[p] - feh[p_in])
            for line in range(n_lines):
                terms[line] = (e[line] - model[k, line]) ** 2 * inv_var[k, line] if u[line] else 0.0
            chi2_out[i] = block_sum(terms)
        n_eval_out[i] = n_eval


@_njit
def linked_points(g: int) -> tuple:
    """Work arrays of a search on ``g`` grid points: ``(nxt, prv, done, lower)``.

    The evaluated points form a doubly linked list (``nxt``, ``prv``; ``done`` marks them); ``lower[a]`` is the
    lower bound of -2 ln L between point ``a`` and the next evaluated one.
    """
    return np.empty(g, np.int64), np.empty(g, np.int64), np.zeros(g, np.bool_), np.empty(g)


@_njit
def add_point(q: int, grid: tuple, star: tuple, links: tuple, frac: float, floor2: float) -> None:
    """Evaluate grid point ``q`` and link it in among the evaluated points."""
    nxt, prv, done, _ = links
    a = q - 1
    while not done[a]:  # the evaluated point before q (the grid's first point always is)
        a -= 1
    b = nxt[a]
    nxt[a], prv[q], nxt[q], prv[b] = q, a, b, q
    done[q] = True
    evaluate(q, grid, star, frac, floor2)


@_njit
def minimum(grid: tuple, star: tuple, links: tuple, first_stride: int, frac: float, floor2: float) -> tuple:
    """Grid index of the minimum of -2 ln L (the first, if several) and the number of points evaluated.

    Branch and bound: every ``first_stride``-th point first, then the interval of lowest lower bound is halved
    until every interval left has its lower bound above the best value found (+ 1e-8 relative, for rounding).
    The minimum's neighbours are evaluated too (for the parabola through them).
    """
    nxt, prv, done, lower = links
    value = star[9]
    g = done.size
    done[:] = False
    for q in range(0, g, first_stride):
        evaluate(q, grid, star, frac, floor2)
        done[q] = True
        nxt[q], prv[q] = min(q + first_stride, g - 1), max(q - first_stride, 0)
    n_eval = (g - 1) // first_stride + 1
    best = np.inf
    for q in range(0, g - 1, first_stride):
        best = min(best, value[q], value[nxt[q]])
        lower[q] = lower_bound(q, nxt[q], star)
    while True:
        slack = 1e-8 * (1.0 + abs(best))
        a, lowest = -1, np.inf
        q = 0
        while q < g - 1:
            if nxt[q] - q > 1 and lower[q] < lowest:
                a, lowest = q, lower[q]
            q = nxt[q]
        if a < 0 or lowest > best + slack:
            break
        mid = (a + nxt[a]) // 2
        add_point(mid, grid, star, links, frac, floor2)
        n_eval += 1
        best = min(best, value[mid])
        for left in (a, mid):
            if nxt[left] - left > 1:
                lower[left] = lower_bound(left, nxt[left], star)
    k, q = 0, 0
    while q < g - 1:  # the first point of the lowest value
        q = nxt[q]
        if value[q] < value[k]:
            k = q
    kk = min(max(k, 1), g - 2)
    for q in (kk - 1, kk, kk + 1):
        if not done[q]:
            add_point(q, grid, star, links, frac, floor2)
            n_eval += 1
    return k, n_eval


@_njit
def crossing(k: int, side: int, level: float, best: float, slack: float, grid: tuple, star: tuple, links: tuple,
             frac: float, floor2: float) -> tuple:
    """First grid point beyond the minimum ``k`` on ``side`` (-1, +1) where -2 ln L - best >= ``level``.

    Returns the point (-1 or G where there is none) and the number of points evaluated. Walks outwards over the
    evaluated points; an interval between them whose upper bound is not certainly under the level is halved until
    it is or its points are all known. The point before the crossing is evaluated too (for the interpolation).
    """
    nxt, prv, done, _ = links
    value = star[9]
    g = done.size
    n_more = 0
    cur = k
    while True:
        if cur == (g - 1 if side > 0 else 0):
            return (g if side > 0 else -1), n_more
        nb = nxt[cur] if side > 0 else prv[cur]
        a, b = min(cur, nb), max(cur, nb)
        if b - a > 1 and not upper_bound(a, b, star) < best - slack + level:
            add_point((a + b) // 2, grid, star, links, frac, floor2)
            n_more += 1
            continue
        if value[nb] - best >= level:
            if not done[nb - side]:
                add_point(nb - side, grid, star, links, frac, floor2)
                n_more += 1
            return nb, n_more
        cur = nb


@_njit
def clipped_stats(values: np.ndarray, sigma: float, maxiters: int, median: np.ndarray, std: np.ndarray) -> None:
    """Sigma-clip each row and write the median and standard deviation of what is kept (in place).

    values : (n, m) float64; median, std : (n,). The same numbers, to the bit, as astropy's
    ``SigmaClip(sigma=sigma, maxiters=maxiters)(values, axis=1, masked=False)`` followed by
    :func:`fehkit.arrays.nanmedian_rows` and ``np.nanstd(axis=1)`` of the clipped rows: the bounds are astropy's C
    code step for step (:func:`_sigma_bounds`), the median a sort and the standard deviation NumPy's two pairwise
    sums over the whole row, with zeros where values were clipped (:func:`block_sum`). NaN where nothing is kept.
    """
    n, m = values.shape
    buf = np.empty(m)
    kept = np.empty(m, np.bool_)
    z = np.empty(m)
    for i in range(n):
        count = 0
        for j in range(m):
            if np.isfinite(values[i, j]):
                buf[count] = values[i, j]
                count += 1
        lower, upper = _sigma_bounds(buf, count, sigma, maxiters) if count else (np.nan, np.nan)
        k = 0
        for j in range(m):  # astropy clips what is below or above the bounds, and every non-finite value
            v = values[i, j]
            kept[j] = np.isfinite(v) and not v < lower and not v > upper
            z[j] = v if kept[j] else 0.0
            if kept[j]:
                buf[k] = v
                k += 1
        s = np.sort(buf[:k])
        h = k // 2
        median[i] = (s[h if k % 2 == 1 else h - 1] + s[h]) / 2.0 if k else np.nan
        mean = block_sum(z) / k  # NaN without a value (0 / 0), as NumPy
        for j in range(m):
            d = z[j] - mean if kept[j] else 0.0
            z[j] = d * d
        std[i] = np.sqrt(block_sum(z) / k)


@_njit
def _sigma_bounds(buf: np.ndarray, count: int, sigma: float, maxiters: int) -> tuple:
    """Return the clipping bounds of the ``count`` values in ``buf`` (reordered in place).

    astropy's C code for a median centre and a standard deviation, step for step: its median by Wirth's selection,
    then the sums in the order that leaves.
    """
    iteration = 0
    while True:
        centre = _wirth_median(buf, count)
        mean = 0.0
        for i in range(count):
            mean += buf[i]
        mean /= count
        var = 0.0
        for i in range(count):
            var += (buf[i] - mean) * (buf[i] - mean)
        spread = np.sqrt(var / count)
        lower, upper = centre - sigma * spread, centre + sigma * spread
        new_count = 0
        for i in range(count):
            if buf[i] >= lower and buf[i] <= upper:
                buf[new_count] = buf[i]
                new_count += 1
        if new_count == count or new_count == 0:
            return lower, upper
        count = new_count
        iteration += 1
        if maxiters != -1 and iteration >= maxiters:
            return lower, upper


@_njit
def _wirth_median(a: np.ndarray, n: int) -> float:
    """Median of ``a[:n]`` by Wirth's selection (reorders it), as astropy's ``wirth_median``."""
    if n % 2 == 0:
        upper = _kth_smallest(a, n, n // 2)
        return 0.5 * (upper + _kth_smallest(a, n, n // 2 - 1))
    return _kth_smallest(a, n, (n - 1) // 2)


@_njit
def _kth_smallest(a: np.ndarray, n: int, k: int) -> float:
    """Return the k-th smallest of ``a[:n]``, reordering it (N. Wirth, Algorithms + Data Structures = Programs)."""
    lo, hi = 0, n - 1
    while lo < hi:
        x = a[k]
        i, j = lo, hi
        while True:
            while a[i] < x:
                i += 1
            while x < a[j]:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
            if i > j:
                break
        if j < k:
            lo = i
        if k < i:
            hi = j
    return a[k]
