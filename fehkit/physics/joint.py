"""The classical method done fully: one joint likelihood over [Fe/H] from every Fe line, detected or not.

Each line's measured EW (also a weak or negative one) is compared with the curve of growth at the star's Teff,
log g and vmic for a fine grid of [Fe/H]; the Gaussian log-likelihoods of all usable lines add up. Lines too weak
to be seen alone still pull together: thirty 1-sigma lines make a 5-sigma signal. Where the summed signal over "no
iron at all" stays below 3 sigma, the spectrum holds no measurement, only an upper limit
(docs/information_limit.md), and that is what is reported.

The per-line inversion with a sigma-clipped median -- the textbook way -- is kept beside it for comparison
(:func:`per_line_median`). Both are vectorized over stars: arrays are shaped (n_stars, n_lines).

-2 ln L is not computed at all 601 [Fe/H] of the grid: a coarse-to-fine search (every 30th point, then every 6th,
then every one, where bounds on the curve of growth say the minimum or a crossing can be) finds the same grid
minimum and crossings with the same numbers from ~1/7 of the points; :func:`likelihood_profile` gives the whole curve.
Where numba imports, a compiled branch and bound (:mod:`fehkit.physics.joint_kernels`) does the same search star by
star from ~1/15 of the points, and finds the same grid points.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from astropy.stats import SigmaClip

from fehkit.arrays import float_column, nanmedian_rows, per_grid
from fehkit.errors import FehkitWarning, GridRangeError
from fehkit.physics.cog import ALPHA_RANGE, CurveOfGrowth, _kernels, pchip_coefficients
from fehkit.threads import map_parts, numba_wanted

#: [Fe/H] grid of the likelihood (dex): below the curve-of-growth grid (-5) the lines are on the linear part.
FEH_GRID = np.round(np.arange(-6.5, -0.5 + 1e-9, 0.01), 2)

#: Fractional uncertainty of the model EW (grid interpolation ~1-2%, unresolved blends, the curve's physics).
MODEL_FRACTION = 0.05

#: Additive model uncertainty (mA): weak unresolved blends inside the profile that no fit can see.
MODEL_FLOOR_MA = 1.0

#: Columns of :func:`joint_abundance`.
JOINT_COLUMNS = ("feh_cog", "feh_cog_err", "feh_cog_upper", "cog_signal_sigma", "cog_detected", "cog_n_lines",
                 "cog_chi2_red", "cog_at_grid_edge")

#: The part of them the parameter shifts and the second physics need (``_joint(..., full=False)``).
_SHORT_COLUMNS = ("feh_cog", "cog_signal_sigma", "cog_detected", "cog_n_lines")

#: Search the likelihood with the compiled kernels of :mod:`fehkit.physics.joint_kernels` when numba imports;
#: False (or ``FEHKIT_NUMBA=0`` in the environment): always the NumPy search, the reference.
USE_NUMBA = numba_wanted()

#: Stride (grid points) of the first points of the compiled search; it divides ``FEH_GRID.size - 1``. Wide is
#: fine: the bounds discard far intervals whole (150: ~38 points a star, against ~49 with 30).
FIRST_STRIDE = 150


def joint_abundance(
    ew_mA: np.ndarray,
    ew_err_mA: np.ndarray,
    usable: np.ndarray,
    teff: Any,
    logg: Any,
    vmic: Any,
    alpha_fe: Any = 0.4,
    *,
    cog: CurveOfGrowth | None = None,
    lines: np.ndarray | None = None,
    model_fraction: float = MODEL_FRACTION,
    model_floor_mA: float = MODEL_FLOOR_MA,
    detection_sigma: float = 3.0,
    chunk: int = 1024,
    device: str | None = None,
) -> pd.DataFrame:
    """Maximum-likelihood [Fe/H] from all usable lines at once, its error, significance and upper limit.

    Parameters
    ----------
    ew_mA, ew_err_mA : (n_stars, n_lines) array_like
        Measured EWs (negative and sub-threshold values included: they are measurements) and 1-sigma errors (mA).
    usable : (n_stars, n_lines) bool
        Lines that enter the likelihood (e.g. flag ok or upper_limit); NaN EWs or errors are never used.
    teff, logg, vmic, alpha_fe : array_like
        The star's parameters (one value per star, or scalars).
    cog : CurveOfGrowth, optional
        The curve-of-growth grid (default: the packaged one).
    lines : (n_lines,) int, optional
        Grid line index of each column (default: the grid's own order).
    model_fraction, model_floor_mA : float
        Model EW uncertainty added in quadrature: ``model_fraction * EW_model`` and a constant floor (mA).
    detection_sigma : float
        Joint significance below which a star counts as not detected (upper limit).
    chunk : int
        Stars evaluated together (memory: ~3 x chunk x 601 floats and a few chunk x 21 x n_lines; with a
        ``device``, ~10 x chunk x 601 x n_lines floats).
    device : str, optional
        A torch device (``"cuda"``, ``"cpu"``): evaluate -2 ln L on the whole [Fe/H] grid there, as tensor
        operations (:func:`_search_torch`; what :func:`fehkit.infer` does on a GPU). The grid minimum and crossings
        are those of the search, so the results agree to float rounding. Default: the search on the CPU.

    Returns
    -------
    pandas.DataFrame
        One row per star: ``feh_cog`` (maximum likelihood), ``feh_cog_err`` (half the Delta(-2 ln L) = 1
        interval), ``feh_cog_upper`` (where -2 ln L has risen by ``detection_sigma**2`` above the best fit: the
        one-sided upper limit), ``cog_signal_sigma`` (sqrt of -2 ln L of "no iron" minus that of the best fit),
        ``cog_detected`` (signal >= ``detection_sigma``), ``cog_n_lines``, ``cog_chi2_red`` and
        ``cog_at_grid_edge`` (best fit at the top of the grid, -0.5: the EWs are stronger than the grid reaches).

    Examples
    --------
    >>> cog = CurveOfGrowth.load()
    >>> ew = cog.ew(4800, 1.5, [-2.0, -3.0], 2.0)          # noiseless EWs of two stars
    >>> out = joint_abundance(ew, np.full(ew.shape, 3.0), np.ones(ew.shape, bool), 4800, 1.5, 2.0)
    >>> np.round(out["feh_cog"].to_numpy(), 2).tolist(), out["cog_detected"].tolist()
    ([-2.0, -3.0], [True, True])
    """
    return pd.DataFrame(_joint(ew_mA, ew_err_mA, usable, teff, logg, vmic, alpha_fe, cog=cog or CurveOfGrowth.load(),
                               lines=lines, model_fraction=model_fraction, model_floor_mA=model_floor_mA,
                               detection_sigma=detection_sigma, chunk=chunk, device=device), copy=False)


def _joint(ew_mA: Any, ew_err_mA: Any, usable: Any, teff: Any, logg: Any, vmic: Any, alpha_fe: Any, *,
           cog: CurveOfGrowth, lines: np.ndarray | None = None, model_fraction: float = MODEL_FRACTION,
           model_floor_mA: float = MODEL_FLOOR_MA, detection_sigma: float = 3.0, chunk: int = 1024,
           full: bool = True, device: str | None = None) -> dict[str, np.ndarray]:
    """Run :func:`joint_abundance`; without ``full``, only its :data:`_SHORT_COLUMNS` (a cheaper search).

    Returns the columns as arrays, by name, in the frame's order. The parameter shifts and the second physics need
    only the maximum-likelihood [Fe/H] and the detection.
    """
    ew, err, use = _inputs(ew_mA, ew_err_mA, usable, cog, lines)
    n = ew.shape[0]
    params = [float_column(a, n) for a in (teff, logg, vmic, alpha_fe)]
    if device is not None:  # the whole grid at once on the device, a chunk of stars at a time
        rows = [_joint_chunk(ew[s:s + chunk], err[s:s + chunk], use[s:s + chunk],
                             *(p[s:s + chunk] for p in params), cog, lines, model_fraction, model_floor_mA, full,
                             device=device)
                for s in range(0, n, chunk)]
    elif USE_NUMBA and _kernels() is not None:  # star by star: parts of the stars in threads, the same numbers
        rows = map_parts(lambda s: _joint_chunk(ew[s], err[s], use[s], *(p[s] for p in params), cog, lines,
                                                model_fraction, model_floor_mA, full), n, max_rows=chunk)
    else:
        rows = [_joint_chunk(ew[s:s + chunk], err[s:s + chunk], use[s:s + chunk],
                             *(p[s:s + chunk] for p in params), cog, lines, model_fraction, model_floor_mA, full)
                for s in range(0, n, chunk)]
    names = [c for c in JOINT_COLUMNS if c != "cog_detected" and (full or c in _SHORT_COLUMNS)]
    cols = {k: (np.concatenate([r[k] for r in rows]) if len(rows) > 1 else rows[0][k]) if rows else np.array([])
            for k in names}
    cols["cog_detected"] = cols["cog_signal_sigma"] >= detection_sigma
    return {k: cols[k] for k in JOINT_COLUMNS if k in cols}


def parameter_error(
    ew_mA: np.ndarray,
    ew_err_mA: np.ndarray,
    usable: np.ndarray,
    teff: Any,
    logg: Any,
    vmic: Any,
    alpha_fe: Any = 0.4,
    *,
    errors: Mapping[str, Any],
    cog: CurveOfGrowth | None = None,
    base: pd.DataFrame | None = None,
    **kwargs: Any,
) -> tuple[np.ndarray, pd.DataFrame]:
    """[Fe/H] error from the errors of Teff, log g and vmic, by moving each by its 1-sigma error.

    Returns ``(feh_err_param, derivatives)``: the quadrature sum of the three shifts, and a frame with the shift
    per parameter (``dfeh_teff``, ``dfeh_logg``, ``dfeh_vmic``, dex per 1-sigma). ``errors`` maps teff, logg,
    vmic to their 1-sigma errors (scalars or one per star). ``base`` is the unperturbed result, if known.
    """
    perr, shifts = _parameter_shifts(ew_mA, ew_err_mA, usable, teff, logg, vmic, alpha_fe, errors=errors, cog=cog,
                                     base=base, **kwargs)
    return perr, pd.DataFrame(shifts, copy=False)


def _parameter_shifts(ew_mA: Any, ew_err_mA: Any, usable: Any, teff: Any, logg: Any, vmic: Any, alpha_fe: Any, *,
                      errors: Mapping[str, Any], cog: CurveOfGrowth | None = None,
                      base: Mapping[str, Any] | pd.DataFrame | None = None,
                      **kwargs: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run :func:`parameter_error`; the shifts as arrays, by name."""
    cog = cog or CurveOfGrowth.load()
    ew = np.atleast_2d(np.asarray(ew_mA, float))
    n = ew.shape[0]
    if base is None:
        base = _joint(ew, ew_err_mA, usable, teff, logg, vmic, alpha_fe, cog=cog, full=False, **kwargs)
    names = ("teff", "logg", "vmic")
    p = [float_column(a, n) for a in (teff, logg, vmic, alpha_fe)]
    # the three shifted copies of every star in one batch: parameter j moved by its error in copy j
    moved = [np.concatenate([p[i] + (np.asarray(errors[name], float) if i == j else 0.0) * np.ones(n)
                             for j, name in enumerate(names)]) for i in range(3)]
    tiled = [np.tile(np.atleast_2d(np.asarray(a)), (3, 1)) for a in (ew, ew_err_mA, usable)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FehkitWarning)  # a shifted star may leave the grid: clipped
        res = _joint(*tiled, *moved, np.tile(p[3], 3), cog=cog, full=False, **kwargs)
    feh = res["feh_cog"].reshape(3, n) - np.asarray(base["feh_cog"], float)
    return np.sqrt((feh ** 2).sum(axis=0)), {f"dfeh_{name}": feh[j] for j, name in enumerate(names)}


def per_line_median(
    ew_mA: np.ndarray,
    ew_err_mA: np.ndarray,
    usable: np.ndarray,
    teff: Any,
    logg: Any,
    vmic: Any,
    alpha_fe: Any = 0.4,
    *,
    cog: CurveOfGrowth | None = None,
    lines: np.ndarray | None = None,
    detection_sigma: float = 3.0,
    clip_sigma: float = 3.0,
    device: str | None = None,
) -> pd.DataFrame:
    """Run the textbook classical method: invert each detected line, then a sigma-clipped median over lines.

    Only lines with EW >= ``detection_sigma`` errors are inverted (a weak line's inversion is meaningless);
    stars with none get NaN. Returns ``feh_cog_median``, ``feh_cog_median_err`` (the clipped standard deviation
    over sqrt(n), or the single line's error) and ``cog_median_n_lines``. With a torch ``device`` the inversions
    run there (:meth:`CurveOfGrowth.abundance`); the clipped median of the (n_stars, n_lines) values stays NumPy.
    """
    return pd.DataFrame(_per_line_median(ew_mA, ew_err_mA, usable, teff, logg, vmic, alpha_fe, cog=cog, lines=lines,
                                         detection_sigma=detection_sigma, clip_sigma=clip_sigma, device=device),
                        copy=False)


def _per_line_median(ew_mA: Any, ew_err_mA: Any, usable: Any, teff: Any, logg: Any, vmic: Any, alpha_fe: Any, *,
                     cog: CurveOfGrowth | None = None, lines: np.ndarray | None = None, detection_sigma: float = 3.0,
                     clip_sigma: float = 3.0, device: str | None = None) -> dict[str, np.ndarray]:
    """Run :func:`per_line_median`; the columns as arrays, by name."""
    cog = cog or CurveOfGrowth.load()
    ew = np.atleast_2d(np.asarray(ew_mA, float))
    err = np.atleast_2d(np.asarray(ew_err_mA, float))
    det = np.asarray(usable, bool) & np.isfinite(ew) & np.isfinite(err) & (ew >= detection_sigma * err)
    detected = np.where(det, ew, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FehkitWarning)
        if device is None and USE_NUMBA and _kernels() is not None and len(ew):
            # parts of the stars in threads (the compiled interpolation and inversion release the GIL), the same numbers
            params = [float_column(a, len(ew)) for a in (teff, logg, vmic, alpha_fe)]
            parts = map_parts(lambda s: cog.abundance(detected[s], *(q[s] for q in params), lines=lines,
                                                      ew_err=err[s]), len(ew))
            feh, feh_err = (np.concatenate([part[j] for part in parts]) for j in (0, 1))
        else:
            feh, feh_err = cog.abundance(detected, teff, logg, vmic, alpha_fe, lines=lines, ew_err=err,
                                         device=device)
    feh = np.where(det, feh, np.nan)
    n_ok = np.isfinite(feh).sum(axis=1)
    median, std = _clipped_stats(feh, clip_sigma)
    single = np.nanmin(np.where(np.isfinite(feh), feh_err, np.inf), axis=1)
    spread = np.where(n_ok > 1, std / np.sqrt(np.maximum(n_ok, 1)), np.where(n_ok == 1, single, np.nan))
    return {"feh_cog_median": np.where(n_ok > 0, median, np.nan), "feh_cog_median_err": spread,
            "cog_median_n_lines": n_ok}


def _clipped_stats(values: np.ndarray, sigma: float, maxiters: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Median and standard deviation of each row's values after sigma clipping (NaN where none is left).

    astropy's ``sigma_clipped_stats`` (median centre, ``maxiters`` rounds), with NumPy's median and standard
    deviation of the values it keeps. Where numba imports, :func:`fehkit.physics.joint_kernels.clipped_stats`
    gives the same numbers (~0.3 ms less for one star, whose statistics through astropy and NumPy cost ~0.4 ms).
    """
    kernels = _kernels() if USE_NUMBA else None
    if kernels is not None:
        median, std = np.empty(len(values)), np.empty(len(values))
        kernels.clipped_stats(np.ascontiguousarray(values, float), float(sigma), int(maxiters), median, std)
        return median, std
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # all-NaN rows
        clipped = SigmaClip(sigma=sigma, maxiters=maxiters)(values, axis=1, masked=False)
        return nanmedian_rows(clipped), np.nanstd(clipped, axis=1)


def likelihood_profile(
    ew_mA: np.ndarray,
    ew_err_mA: np.ndarray,
    usable: np.ndarray,
    teff: Any,
    logg: Any,
    vmic: Any,
    alpha_fe: Any = 0.4,
    *,
    cog: CurveOfGrowth | None = None,
    lines: np.ndarray | None = None,
    model_fraction: float = MODEL_FRACTION,
    model_floor_mA: float = MODEL_FLOOR_MA,
) -> dict[str, np.ndarray]:
    """Return the joint likelihood itself, for plots and teaching: -2 ln L over :data:`FEH_GRID` for each star.

    Returns a dict with ``feh_grid`` (G,), ``m2lnl`` (n_stars, G) relative to its minimum, ``m2lnl_none``
    (n_stars,) the value for "no iron" on the same scale, and ``model_ew`` (n_stars, G, n_lines) in mA.
    """
    cog = cog or CurveOfGrowth.load()
    ew, err, use = _inputs(ew_mA, ew_err_mA, usable, cog, lines)
    n = ew.shape[0]
    params = [float_column(a, n) for a in (teff, logg, vmic, alpha_fe)]
    model, m2lnl, none = _m2lnl(ew, err, use, *params, cog, lines, model_fraction, model_floor_mA)
    best = m2lnl.min(axis=1, keepdims=True)
    return {"feh_grid": FEH_GRID.copy(), "m2lnl": m2lnl - best, "m2lnl_none": none - best[:, 0],
            "model_ew": model}


# ---------------------------------------------------------------------------------------------------------------
# -2 ln L is a sum over lines of (EW - model)**2 / var + ln var, with model and var growing with [Fe/H]. It is
# evaluated where it is needed, not on all 601 grid points: first at every SEARCH_STEPS[0]-th point, then, level by
# level, at every SEARCH_STEPS[i]-th point of the intervals that may hold the minimum, and last at every point of the
# finest such intervals and where the error levels are crossed. On an interval each line's model EW lies between its
# values at the two ends (the curve of growth is monotone), which bounds every term from below and above: an
# interval whose lower bound is above the best value found cannot hold the minimum, and one whose upper bound stays
# under a level cannot hold its crossing. The values found are the very numbers the full grid gives (same formula,
# same interpolation), so the results do not depend on the search.

#: Strides (grid points) of the levels of the likelihood search, coarse to fine; each divides the one before.
SEARCH_STEPS = (30, 6, 1)

_G = FEH_GRID.size
assert (_G - 1) % SEARCH_STEPS[0] == 0 and SEARCH_STEPS[-1] == 1
assert all(a % b == 0 for a, b in zip(SEARCH_STEPS[:-1], SEARCH_STEPS[1:], strict=True))


class _Table:
    """Each star's curve of growth along :data:`FEH_GRID`: log EW at the grid's [Fe/H] nodes and PCHIP pieces.

    The model EW at any grid point is computed exactly as ``PchipInterpolator(cog.feh, curves, axis=1)`` gives it
    (same coefficients, same power sum: bit for bit), linear in the number of iron atoms below the grid.
    """

    def __init__(self, cog: CurveOfGrowth, teff: np.ndarray, logg: np.ndarray, vmic: np.ndarray, alpha: np.ndarray,
                 lines: np.ndarray | None) -> None:
        self.curves = cog.curves(teff, logg, vmic, alpha, lines)  # (n, F, L) log10 EW at the grid's nodes
        self.coef = pchip_coefficients(cog.feh, self.curves)  # (4, n, F - 1, L)
        self.feh0 = cog.feh[0]
        self.piece, self.s, self.on_grid = _grid_pieces(cog.feh)

    def model(self, rows: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Model EW (mA) of stars ``rows`` (M,) at grid points ``idx`` (M, Q): (M, Q, n_lines)."""
        p = self.piece[idx]
        s = self.s[idx][..., None]
        if rows.size == self.coef.shape[1] > 1 and (rows == np.arange(rows.size)).all() and (idx[1:] == idx[0]).all():
            # the same points for all stars (the coarse pass): a slice per piece, no gather
            c0, c1, c2, c3 = (self.coef[j][:, p[0]] for j in range(4))
        else:
            c0, c1, c2, c3 = (self.coef[j][rows[:, None], p] for j in range(4))
        z = s * s
        log_ew = c3 + c2 * s + c1 * z + c0 * (z * s)  # scipy's PPoly sum, term by term
        below = ~self.on_grid[idx]
        if below.any():
            lin = self.curves[rows, 0, :][:, None, :] + (FEH_GRID[idx] - self.feh0)[..., None]
            log_ew = np.where(below[..., None], lin, log_ew)
        return 10.0 ** log_ew


class _Profile:
    """-2 ln L of each star on :data:`FEH_GRID`, filled in where evaluated (NaN elsewhere).

    ``lower`` and ``upper`` bound the values not evaluated yet (from the ends of the finest interval around them).
    """

    def __init__(self, table: _Table, ew: np.ndarray, err: np.ndarray, use: np.ndarray, frac: float,
                 floor: float) -> None:
        self.table, self.err, self.use, self.frac, self.floor = table, err, use, frac, floor
        self.e = np.where(use, ew, 0.0)
        n = ew.shape[0]
        self.value = np.full((n, _G), np.nan)
        self.value[~use.any(axis=1)] = 0.0  # no line: a flat profile of zeros
        self.lower = np.full((n, _G), -np.inf)
        self.upper = np.full((n, _G), np.inf)
        #: per search step: True at the first point of each interval already evaluated at that step
        self.refined = {step: np.zeros((n, _G), bool) for step in SEARCH_STEPS}

    def evaluate(self, rows: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Evaluate stars ``rows`` (M,) at points ``idx`` (M, Q); return the model EW, its variance and ln var."""
        model = self.table.model(rows, idx)
        var = self.err[rows][:, None, :] ** 2 + (self.frac * model) ** 2 + self.floor ** 2
        log_var = np.log(var)
        terms = np.where(self.use[rows][:, None, :], (self.e[rows][:, None, :] - model) ** 2 / var + log_var, 0.0)
        self.value[rows[:, None], idx] = np.sum(terms, axis=2)
        return model, var, log_var

    def refine(self, rows: np.ndarray, start: np.ndarray, step: int, count: int) -> None:
        """Evaluate stars ``rows`` at ``start + step * j``, j = 0..count, and bound the points left between them.

        With ``step`` 1, the points strictly between ``start`` and ``start + count`` are evaluated (no bounds).
        """
        if not rows.size:
            return
        self.refined[step][rows, start] = True
        if step == 1:
            self.evaluate(rows, start[:, None] + np.arange(1, count))
            return
        idx = start[:, None] + step * np.arange(count + 1)
        model, var, log_var = self.evaluate(rows, idx)
        use, e = self.use[rows][:, None, :], self.e[rows][:, None, :]
        lo_m, hi_m = model[:, :-1], model[:, 1:]  # each line's model EW at the two ends (var grows with it)
        dist = np.maximum(np.maximum(lo_m - e, e - hi_m), 0.0)
        lower = np.sum(np.where(use, dist ** 2 / var[:, 1:] + log_var[:, :-1], 0.0), axis=2)
        far = np.maximum((e - lo_m) ** 2, (e - hi_m) ** 2)
        upper = np.sum(np.where(use, far / var[:, :-1] + log_var[:, 1:], 0.0), axis=2)
        inside = (idx[:, :-1, None] + np.arange(1, step)).reshape(rows.size, -1)
        r = rows[:, None]
        self.lower[r, inside] = np.repeat(lower, step - 1, axis=1)
        self.upper[r, inside] = np.repeat(upper, step - 1, axis=1)

    def ensure(self, rows: np.ndarray, idx: np.ndarray) -> None:
        """Evaluate stars ``rows`` at the points ``idx`` (M, Q) where not done yet."""
        r, q = np.nonzero(np.isnan(self.value[rows[:, None], idx]))
        if r.size:
            self.evaluate(rows[r], idx[r, q][:, None])


def _search(prof: _Profile, full: bool) -> dict[str, np.ndarray]:
    """Minimum of -2 ln L for every star (and with ``full``, its Delta = 1 and 9 crossings), exactly as on the grid.

    Returns ``k`` (grid index of the minimum), ``best`` and, with ``full``, the profile relative to the minimum
    (``delta``, with 0 where not needed: below both levels) ready for :func:`_crossing`.
    """
    n = prof.e.shape[0]
    rows = np.arange(n)
    prof.refine(rows, np.zeros(n, int), SEARCH_STEPS[0], (_G - 1) // SEARCH_STEPS[0])
    for coarse, fine in zip(SEARCH_STEPS[:-1], SEARCH_STEPS[1:], strict=True):
        best = np.nanmin(prof.value, axis=1)
        slack = 1e-8 * (1.0 + np.abs(best))  # rounding of the bounds: refine rather than miss
        start = np.arange(0, _G - 1, coarse)
        # intervals of this level that may hold a value at or below the best one, not yet evaluated finer
        maybe = (prof.lower[:, start + 1] <= (best + slack)[:, None]) & ~prof.refined[fine][:, start]
        r, j = np.nonzero(maybe)
        prof.refine(r, start[j], fine, coarse // fine)

    k = np.argmin(np.where(np.isnan(prof.value), np.inf, prof.value), axis=1)
    kk = np.clip(k, 1, _G - 2)
    prof.ensure(rows, kk[:, None] + np.array([-1, 0, 1]))  # the parabola through the minimum's neighbours
    best = prof.value[rows, k]
    out = {"k": k, "best": best}
    if not full:
        return out
    slack = 1e-8 * (1.0 + np.abs(best))
    idx = np.arange(_G)[None, :]
    for level, sides in ((1.0, (-1, 1)), (9.0, (1,))):
        act = rows  # the stars whose crossing is not settled yet
        width = SEARCH_STEPS[-2]
        while act.size:
            value = prof.value[act]
            delta = value - best[act, None]
            below = prof.upper[act] < (best[act] - slack[act] + level)[:, None]  # certainly, where not evaluated
            hit = np.where(np.isnan(delta), ~below, delta >= level)
            at = np.arange(act.size)
            again = np.zeros(act.size, bool)
            for side in sides:
                if side > 0:
                    p = np.where(hit & (idx > k[act, None]), idx, _G).min(axis=1)
                else:
                    p = np.where(hit & (idx < k[act, None]), idx, -1).max(axis=1)
                inside = (p >= 0) & (p < _G)
                pc = np.clip(p, 0, _G - 1)
                # the first point at or over the level, and the one before it, must be known exactly
                unknown = inside & np.isnan(value[at, pc])
                if unknown.any():  # evaluate onwards from it, twice as far each round: the crossing is near
                    prof.evaluate(act[unknown], np.clip(pc[unknown, None] + side * np.arange(width), 0, _G - 1))
                    again |= unknown
                inward = inside & ~unknown & np.isnan(value[at, np.clip(pc - side, 0, _G - 1)])
                if inward.any():
                    prof.evaluate(act[inward], (pc[inward] - side)[:, None])
            act, width = act[again], 2 * width
    out["delta"] = np.where(np.isnan(prof.value), 0.0, prof.value - best[:, None])
    return out


def _m2lnl(ew: np.ndarray, err: np.ndarray, use: np.ndarray, teff: np.ndarray, logg: np.ndarray, vmic: np.ndarray,
           alpha: np.ndarray, cog: CurveOfGrowth, lines: np.ndarray | None, frac: float,
           floor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model EWs (n, G, L), -2 ln L on the whole grid (n, G) and -2 ln L of "no iron" (n,)."""
    prof = _Profile(_Table(cog, teff, logg, vmic, alpha, lines), ew, err, use, frac, floor)
    n = ew.shape[0]
    model, _, _ = prof.evaluate(np.arange(n), np.broadcast_to(np.arange(_G), (n, _G)))
    return model, prof.value, _m2lnl_none(ew, err, use, floor)


def _m2lnl_none(ew: np.ndarray, err: np.ndarray, use: np.ndarray, floor: float) -> np.ndarray:
    """-2 ln L of "no iron" (every model EW zero): (n,)."""
    var0 = np.where(use, err ** 2 + floor ** 2, 1.0)
    return np.sum(np.where(use, np.where(use, ew, 0.0) ** 2 / var0 + np.log(var0), 0.0), axis=1)


def _joint_chunk(ew: np.ndarray, err: np.ndarray, use: np.ndarray, teff: np.ndarray, logg: np.ndarray,
                 vmic: np.ndarray, alpha: np.ndarray, cog: CurveOfGrowth, lines: np.ndarray | None,
                 frac: float, floor: float, full: bool = True, device: str | None = None) -> dict[str, np.ndarray]:
    """Return the columns of :func:`joint_abundance` for a chunk of stars (without ``full``: the short ones).

    The errors, the upper limit and chi2 need more of the profile than the maximum and the signal do.
    """
    if device is not None:
        found = _search_torch(ew, err, use, teff, logg, vmic, alpha, cog, lines, frac, floor, full, device)
    else:
        kernels = _kernels() if USE_NUMBA else None
        search = _search_compiled if kernels is not None else _search_numpy
        found = search(ew, err, use, teff, logg, vmic, alpha, cog, lines, frac, floor, full)
    k = found["k"]
    g = FEH_GRID.size
    # parabolic refinement between the neighbouring grid points
    kk = np.minimum(np.maximum(k, 1), g - 2)  # np.clip, without its fixed cost (~6 us) for one star
    y0, y1, y2 = found["near"].T
    best = found["best"]
    curv = y0 - 2 * y1 + y2
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.where((curv > 0) & (k == kk), 0.5 * (y0 - y2) / curv, 0.0)
    step = FEH_GRID[1] - FEH_GRID[0]
    feh = FEH_GRID[k] + np.minimum(np.maximum(off, -0.5), 0.5) * step
    n_lines = use.sum(axis=1)
    signal = np.sqrt(np.maximum(_m2lnl_none(ew, err, use, floor) - best, 0.0))
    none = n_lines == 0
    out = {
        "feh_cog": np.where(none, np.nan, feh),
        "cog_signal_sigma": np.where(none, 0.0, signal),
        "cog_n_lines": n_lines,
    }
    if not full:
        return out
    lo1, hi1, hi9 = found["lo1"], found["hi1"], found["hi9"]
    out.update({
        "feh_cog_err": np.where(none, np.nan, 0.5 * (hi1 - lo1)),
        "feh_cog_upper": np.where(none, np.nan, hi9),
        "cog_chi2_red": np.where(n_lines > 1, found["chi2"] / np.maximum(n_lines - 1, 1), np.nan),
        "cog_at_grid_edge": (k == g - 1) & ~none,
    })
    return out


def _search_numpy(ew: np.ndarray, err: np.ndarray, use: np.ndarray, teff: np.ndarray, logg: np.ndarray,
                  vmic: np.ndarray, alpha: np.ndarray, cog: CurveOfGrowth, lines: np.ndarray | None, frac: float,
                  floor: float, full: bool) -> dict[str, np.ndarray]:
    """Search the likelihood of a chunk of stars with NumPy (the reference): what :func:`_joint_chunk` needs.

    Returns ``k`` (grid index of the minimum), ``best`` (-2 ln L there), ``near`` (n, 3) -2 ln L at the minimum's
    neighbours (k clipped to 1..G-2, -1, 0, +1) and, with ``full``, the crossings ``lo1``, ``hi1``, ``hi9`` and
    ``chi2`` at the minimum.
    """
    prof = _Profile(_Table(cog, teff, logg, vmic, alpha, lines), ew, err, use, frac, floor)
    found = _search(prof, full)
    k = found["k"]
    n, g = prof.value.shape
    rows = np.arange(n)
    kk = np.clip(k, 1, g - 2)
    out = {"k": k, "best": found["best"], "near": prof.value[rows[:, None], kk[:, None] + np.array([-1, 0, 1])]}
    if full:
        delta = found["delta"]
        out["lo1"], out["hi1"] = _crossing(delta, k, 1.0)
        out["hi9"] = _crossing(delta, k, 9.0)[1]
        model, var, _ = prof.evaluate(rows, k[:, None])
        out["chi2"] = np.sum(np.where(use, (np.where(use, ew, 0.0) - model[:, 0]) ** 2 / var[:, 0], 0.0), axis=1)
    return out


def _search_compiled(ew: np.ndarray, err: np.ndarray, use: np.ndarray, teff: np.ndarray, logg: np.ndarray,
                     vmic: np.ndarray, alpha: np.ndarray, cog: CurveOfGrowth, lines: np.ndarray | None, frac: float,
                     floor: float, full: bool) -> dict[str, np.ndarray]:
    """:func:`_search_numpy` by the compiled branch and bound, star by star (the same grid points come out)."""
    curves = np.ascontiguousarray(cog.curves(teff, logg, vmic, alpha, lines))
    n = ew.shape[0]
    piece, s, on_grid = _grid_pieces(cog.feh)
    k, near, cross = np.zeros(n, np.int64), np.zeros((n, 3)), np.zeros((n, 3))
    chi2, n_eval = np.zeros(n), np.zeros(n, np.int64)
    _kernels().joint_stars(curves, cog.feh, FEH_GRID, piece, s, on_grid, np.ascontiguousarray(ew, float),
                           np.ascontiguousarray(err, float), np.ascontiguousarray(use, bool), float(frac),
                           float(floor), bool(full), FIRST_STRIDE, k, near, cross, chi2, n_eval)
    return {"k": k, "best": near[np.arange(n), k - np.minimum(np.maximum(k, 1), _G - 2) + 1],
            "near": near, "lo1": cross[:, 0], "hi1": cross[:, 1], "hi9": cross[:, 2], "chi2": chi2,
            "n_eval": n_eval}



def _search_torch(ew: np.ndarray, err: np.ndarray, use: np.ndarray, teff: np.ndarray, logg: np.ndarray,
                  vmic: np.ndarray, alpha: np.ndarray, cog: CurveOfGrowth, lines: np.ndarray | None, frac: float,
                  floor: float, full: bool, device: str) -> dict[str, np.ndarray]:
    """:func:`_search_numpy` as torch tensor operations on ``device``: -2 ln L on all of :data:`FEH_GRID` at once.

    No search: a GPU evaluates the 601 points of every star faster than it could decide which to skip. The model
    EWs are the same PCHIP pieces as :class:`_Table`'s, from each star's curve of growth interpolated in the grid's
    Teff, log g, vmic and [alpha/Fe] on the device too, in float64, so the minimum and the crossings land on the
    same grid points as the search's.
    """
    import torch

    dev = torch.device(device)
    f64 = torch.float64
    curves = cog.curves(teff, logg, vmic, alpha, lines, device=dev)       # (n, F, L) log10 EW at the nodes
    coef = pchip_coefficients(cog.feh, curves)                      # (4, n, F - 1, L)
    piece, s, on_grid = _grid_pieces(cog.feh)
    piece_t = torch.as_tensor(piece, device=dev)
    s_t = torch.as_tensor(s, dtype=f64, device=dev)[None, :, None]
    z = s_t * s_t
    log_ew = coef[3][:, piece_t] + coef[2][:, piece_t] * s_t + coef[1][:, piece_t] * z + coef[0][:, piece_t] * (z * s_t)
    below = torch.as_tensor(~on_grid, device=dev)
    if bool(below.any()):  # linear in the number of iron atoms below the grid
        lin = (curves[:, 0, :][:, None, :]
               + torch.as_tensor(FEH_GRID - cog.feh[0], dtype=f64, device=dev)[None, :, None])
        log_ew = torch.where(below[None, :, None], lin, log_ew)
    model = torch.pow(10.0, log_ew)                                        # (n, G, L)
    del log_ew
    use_t = torch.as_tensor(use, device=dev)[:, None, :]
    e = torch.as_tensor(np.where(use, ew, 0.0), dtype=f64, device=dev)[:, None, :]
    var = torch.as_tensor(err, dtype=f64, device=dev)[:, None, :] ** 2 + (frac * model) ** 2 + floor ** 2
    value = torch.where(use_t, (e - model) ** 2 / var + torch.log(var), 0.0).sum(dim=2)   # (n, G)
    n, g = value.shape
    rows = torch.arange(n, device=dev)
    k = torch.argmin(value, dim=1)
    kk = torch.clamp(k, 1, g - 2)
    near = value[rows[:, None], kk[:, None] + torch.tensor([-1, 0, 1], device=dev)]
    out = {"k": k, "best": value[rows, k], "near": near}
    if full:
        delta = value - out["best"][:, None]
        out["lo1"], out["hi1"] = _crossing(delta, k, 1.0)
        out["hi9"] = _crossing(delta, k, 9.0)[1]
        out["chi2"] = torch.where(use_t[:, 0], (e[:, 0] - model[rows, k]) ** 2 / var[rows, k], 0.0).sum(dim=1)
    return {key: v.cpu().numpy() for key, v in out.items()}


def _grid_pieces(feh: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCHIP piece of each :data:`FEH_GRID` point, its offset in the piece and whether it is on the grid, as _Table.

    Kept for the last few curve-of-growth grids' [Fe/H] nodes (the two physics' differ; shared: not changed): for
    one star it is a good part of a search.
    """
    def make() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        piece = np.clip(np.searchsorted(feh, FEH_GRID, side="right") - 1, 0, len(feh) - 2)
        return piece, FEH_GRID - feh[piece], FEH_GRID >= feh[0]

    return per_grid(_piece_cache, feh.tobytes(), feh, make, keep=4)


#: :func:`_grid_pieces` of the last few [Fe/H] node sets.
_piece_cache: dict = {}


def _inputs(ew_mA: Any, ew_err_mA: Any, usable: Any, cog: CurveOfGrowth,
            lines: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EWs, errors and the lines that enter, as (n_stars, n_lines) arrays, after checking they fit together."""
    ew = np.atleast_2d(np.asarray(ew_mA, float))
    err = np.atleast_2d(np.asarray(ew_err_mA, float))
    usable = np.atleast_2d(np.asarray(usable, bool))
    if ew.shape != err.shape or ew.shape != usable.shape:
        raise GridRangeError(f"ew_mA {ew.shape}, ew_err_mA {err.shape} and usable {usable.shape}: expected one shape "
                             "(n_stars, n_lines)")
    n_lines = cog.n_lines if lines is None else len(np.atleast_1d(lines))
    if ew.shape[1] != n_lines:
        raise GridRangeError(f"ew_mA has {ew.shape[1]} lines; expected {n_lines} (one per curve-of-growth line"
                             + (" chosen by lines)" if lines is not None else ")"))
    return ew, err, usable & np.isfinite(ew) & np.isfinite(err) & (err > 0)


def _crossing(delta: Any, k: Any, level: float) -> tuple[Any, Any]:
    """[Fe/H] below and above the minimum where ``delta`` first reaches ``level`` (grid ends if never).

    NumPy arrays, or torch tensors (the torch engine): the same steps on the tensors' device.
    """
    n, g = delta.shape
    if isinstance(delta, np.ndarray):
        xp, grid, idx, rows = np, FEH_GRID, np.arange(g)[None, :], np.arange(n)
    else:
        import torch

        xp, dev = torch, delta.device
        grid = torch.as_tensor(FEH_GRID, dtype=delta.dtype, device=dev)
        idx, rows = torch.arange(g, device=dev)[None, :], torch.arange(n, device=dev)
    above = delta >= level
    left = xp.amax(xp.where(above & (idx < k[:, None]), idx, -1), axis=1)
    right = xp.amin(xp.where(above & (idx > k[:, None]), idx, g), axis=1)

    def interp(i_out: Any, i_in: Any, edge: float) -> Any:
        ok = (i_out >= 0) & (i_out < g)
        io = xp.clip(i_out, 0, g - 1)
        d_out, d_in = delta[rows, io], delta[rows, i_in]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = xp.where(d_out > d_in, (level - d_in) / (d_out - d_in), 0.0)
        x = grid[i_in] + t * (grid[io] - grid[i_in])
        return xp.where(ok, x, edge)

    lo = interp(left, xp.clip(left + 1, 0, g - 1), float(FEH_GRID[0]))
    hi = interp(right, xp.clip(right - 1, 0, g - 1), float(FEH_GRID[-1]))
    return lo, hi


def physics_systematic(
    ew_mA: np.ndarray,
    ew_err_mA: np.ndarray,
    usable: np.ndarray,
    teff: Any,
    logg: Any,
    vmic: Any,
    alpha_fe: Any = 0.4,
    *,
    reference: CurveOfGrowth | None = None,
    alternative: CurveOfGrowth | None = None,
    base: pd.DataFrame | None = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """Return the code-to-code systematic of the classical method: |feh_cog(MOOG) - feh_cog(SME)| per star.

    The joint likelihood (:func:`joint_abundance`) is run twice on the same EWs, errors and parameters, once with
    each curve-of-growth grid. The parameters are first clipped to the alternative grid's domain (the SME grid
    covers less: Teff 4200-6600 K, log g 0.5-4.5, vmic 1-3 km/s), so that the two codes are compared at the same
    point; what was clipped is reported per star in ``feh_sys_clipped`` (``""`` when nothing was), not hidden.
    Where the alternative grid has a single [alpha/Fe] (the SME grid: +0.4), both fits are made at that value:
    the difference between the codes, not the star's abundance, is what is estimated.

    Parameters
    ----------
    ew_mA, ew_err_mA, usable, teff, logg, vmic, alpha_fe
        As for :func:`joint_abundance`.
    reference, alternative : CurveOfGrowth, optional
        The two grids (default: the packaged ``"moog"`` and ``"sme"`` grids).
    base : DataFrame, optional
        :func:`joint_abundance` with ``reference`` (and the same ``**kwargs``) at the given parameters, if known:
        reused for the stars that the clipping and the [alpha/Fe] of the alternative grid leave unchanged.
    **kwargs
        Passed to :func:`joint_abundance` (e.g. ``lines``).

    Returns
    -------
    pandas.DataFrame
        ``feh_sys`` (dex; NaN where either fit has no detection), ``feh_cog_ref`` and ``feh_cog_alt`` (the two
        maximum-likelihood values) and ``feh_sys_clipped``.

    Examples
    --------
    >>> cog = CurveOfGrowth.load("moog")
    >>> ew = cog.ew(4800, 1.5, [-2.0, -3.0], 2.0)
    >>> out = physics_systematic(ew, np.full(ew.shape, 1.0), np.ones(ew.shape, bool), 4800, 1.5, 2.0)
    >>> bool(np.all((out["feh_sys"] > 0) & (out["feh_sys"] < 0.1)))
    True
    """
    return pd.DataFrame(_physics_systematic(ew_mA, ew_err_mA, usable, teff, logg, vmic, alpha_fe, reference=reference,
                                            alternative=alternative, base=base, **kwargs), copy=False)


def _physics_systematic(ew_mA: Any, ew_err_mA: Any, usable: Any, teff: Any, logg: Any, vmic: Any, alpha_fe: Any, *,
                        reference: CurveOfGrowth | None = None, alternative: CurveOfGrowth | None = None,
                        base: Mapping[str, Any] | pd.DataFrame | None = None, **kwargs: Any) -> dict[str, np.ndarray]:
    """Run :func:`physics_systematic`; the columns as arrays, by name."""
    ref = reference or CurveOfGrowth.load("moog")
    alt = alternative or CurveOfGrowth.load("sme")
    ew = np.atleast_2d(np.asarray(ew_mA, float))
    err, use = np.atleast_2d(np.asarray(ew_err_mA, float)), np.atleast_2d(np.asarray(usable, bool))
    n = ew.shape[0]
    given = [float_column(a, n) for a in (teff, logg, vmic, alpha_fe)]
    params = [p.copy() for p in given]
    clipped = alt.clipped(*params)
    if alt.alpha_fe.size == 1:
        params[3][:] = alt.alpha_fe[0]
    for p, lo, hi in zip(params, (alt.teff[0], alt.logg[0], alt.vmic[0], ALPHA_RANGE[0]),
                         (alt.teff[-1], alt.logg[-1], alt.vmic[-1], ALPHA_RANGE[1]), strict=True):
        np.clip(p, lo, hi, out=p)
    # the reference fit: reused from base where the parameters are the given ones, the rest refitted
    redo = np.ones(n, bool) if base is None else np.any([p != q for p, q in zip(params, given, strict=True)], axis=0)
    fa = np.full(n, np.nan) if base is None else np.array(base["feh_cog"], float)
    det_a = np.zeros(n, bool) if base is None else np.array(base["cog_detected"], bool)
    if redo.any():
        a = _joint(ew[redo], err[redo], use[redo], *(p[redo] for p in params), cog=ref, full=False, **kwargs)
        fa[redo], det_a[redo] = a["feh_cog"], a["cog_detected"]
    b = _joint(ew, err, use, *params, cog=alt, full=False, **kwargs)
    both = det_a & b["cog_detected"]
    fb = b["feh_cog"]
    return {"feh_sys": np.where(both, np.abs(fa - fb), np.nan), "feh_cog_ref": fa, "feh_cog_alt": fb,
            "feh_sys_clipped": clipped}
