"""The classical method done fully: one joint likelihood over [Fe/H] from every Fe line, detected or not.

Each line's measured EW (also a weak or negative one) is compared with the curve of growth at the star's Teff,
log g and vmic for a fine grid of [Fe/H]; the Gaussian log-likelihoods of all usable lines add up. Lines too weak
to be seen alone still pull together: thirty 1-sigma lines make a 5-sigma signal. Where the summed signal over "no
iron at all" stays below 3 sigma, the spectrum holds no measurement, only an upper limit
(docs/information_limit.md), and that is what is reported.

The per-line inversion with a sigma-clipped median -- the textbook way -- is kept beside it for comparison
(:func:`per_line_median`). Both are vectorized over stars: arrays are shaped (n_stars, n_lines).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from astropy.stats import sigma_clipped_stats
from scipy.interpolate import PchipInterpolator

from fehkit.errors import FehkitWarning, GridRangeError
from fehkit.physics.cog import ALPHA_RANGE, CurveOfGrowth

#: [Fe/H] grid of the likelihood (dex): below the curve-of-growth grid (-5) the lines are on the linear part.
FEH_GRID = np.round(np.arange(-6.5, -0.5 + 1e-9, 0.01), 2)

#: Fractional uncertainty of the model EW (grid interpolation ~1-2%, unresolved blends, the curve's physics).
MODEL_FRACTION = 0.05

#: Additive model uncertainty (mA): weak unresolved blends inside the profile that no fit can see.
MODEL_FLOOR_MA = 1.0

#: Columns of :func:`joint_abundance`.
JOINT_COLUMNS = ("feh_cog", "feh_cog_err", "feh_cog_upper", "cog_signal_sigma", "cog_detected", "cog_n_lines",
                 "cog_chi2_red", "cog_at_grid_edge")


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
    chunk: int = 256,
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
        Stars evaluated together (memory: chunk x 601 x n_lines floats).

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
    cog = cog or CurveOfGrowth.load()
    ew, err, use = _inputs(ew_mA, ew_err_mA, usable, cog, lines)
    n = ew.shape[0]
    params = [np.broadcast_to(np.asarray(a, float), (n,)) for a in (teff, logg, vmic, alpha_fe)]
    rows = [_joint_chunk(ew[s:s + chunk], err[s:s + chunk], use[s:s + chunk],
                         *(p[s:s + chunk] for p in params), cog, lines, model_fraction, model_floor_mA)
            for s in range(0, n, chunk)]
    out = pd.DataFrame({k: np.concatenate([r[k] for r in rows]) if rows else np.array([])
                        for k in ("feh_cog", "feh_cog_err", "feh_cog_upper", "cog_signal_sigma", "cog_n_lines",
                                  "cog_chi2_red", "cog_at_grid_edge")})
    out.insert(4, "cog_detected", out["cog_signal_sigma"].to_numpy() >= detection_sigma)
    return out


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
    cog = cog or CurveOfGrowth.load()
    base = base if base is not None else joint_abundance(ew_mA, ew_err_mA, usable, teff, logg, vmic, alpha_fe,
                                                         cog=cog, **kwargs)
    p = {"teff": np.asarray(teff, float), "logg": np.asarray(logg, float), "vmic": np.asarray(vmic, float)}
    shifts = {}
    for name in ("teff", "logg", "vmic"):
        moved = dict(p)
        moved[name] = p[name] + np.asarray(errors[name], float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FehkitWarning)  # a shifted star may leave the grid: clipped
            res = joint_abundance(ew_mA, ew_err_mA, usable, moved["teff"], moved["logg"], moved["vmic"], alpha_fe,
                                  cog=cog, **kwargs)
        shifts[f"dfeh_{name}"] = res["feh_cog"].to_numpy() - base["feh_cog"].to_numpy()
    d = pd.DataFrame(shifts)
    return np.sqrt((d.to_numpy() ** 2).sum(axis=1)), d


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
) -> pd.DataFrame:
    """Run the textbook classical method: invert each detected line, then a sigma-clipped median over lines.

    Only lines with EW >= ``detection_sigma`` errors are inverted (a weak line's inversion is meaningless);
    stars with none get NaN. Returns ``feh_cog_median``, ``feh_cog_median_err`` (the clipped standard deviation
    over sqrt(n), or the single line's error) and ``cog_median_n_lines``.
    """
    cog = cog or CurveOfGrowth.load()
    ew = np.atleast_2d(np.asarray(ew_mA, float))
    err = np.atleast_2d(np.asarray(ew_err_mA, float))
    det = np.asarray(usable, bool) & np.isfinite(ew) & np.isfinite(err) & (ew >= detection_sigma * err)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FehkitWarning)
        feh, feh_err = cog.abundance(np.where(det, ew, np.nan), teff, logg, vmic, alpha_fe, lines=lines,
                                     ew_err=err)
    feh = np.where(det, feh, np.nan)
    n_ok = np.isfinite(feh).sum(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # all-NaN rows
        _, median, std = sigma_clipped_stats(feh, axis=1, sigma=clip_sigma, maxiters=5)
    median = np.asarray(np.ma.filled(median, np.nan), float)
    std = np.asarray(np.ma.filled(std, np.nan), float)
    single = np.nanmin(np.where(np.isfinite(feh), feh_err, np.inf), axis=1)
    spread = np.where(n_ok > 1, std / np.sqrt(np.maximum(n_ok, 1)), np.where(n_ok == 1, single, np.nan))
    return pd.DataFrame({"feh_cog_median": np.where(n_ok > 0, median, np.nan), "feh_cog_median_err": spread,
                         "cog_median_n_lines": n_ok})


# ---------------------------------------------------------------------------------------------------------------
def _model_ew(cog: CurveOfGrowth, teff: np.ndarray, logg: np.ndarray, vmic: np.ndarray, alpha: np.ndarray,
              lines: np.ndarray | None) -> np.ndarray:
    """Model EW (mA) on :data:`FEH_GRID` for each star and line: (n_stars, n_grid, n_lines)."""
    curves = cog.curves(teff, logg, vmic, alpha, lines)  # log10 EW at the grid's [Fe/H] nodes
    on_grid = FEH_GRID >= cog.feh[0]
    log_ew = np.empty((curves.shape[0], FEH_GRID.size, curves.shape[2]))
    log_ew[:, on_grid] = PchipInterpolator(cog.feh, curves, axis=1)(FEH_GRID[on_grid])
    # below the grid: the linear part of the curve of growth, EW proportional to the number of iron atoms
    log_ew[:, ~on_grid] = curves[:, :1, :] + (FEH_GRID[~on_grid] - cog.feh[0])[None, :, None]
    return 10.0 ** log_ew


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
    params = [np.broadcast_to(np.asarray(a, float), (n,)) for a in (teff, logg, vmic, alpha_fe)]
    model, m2lnl, none = _m2lnl(ew, err, use, *params, cog, lines, model_fraction, model_floor_mA)
    best = m2lnl.min(axis=1, keepdims=True)
    return {"feh_grid": FEH_GRID.copy(), "m2lnl": m2lnl - best, "m2lnl_none": none - best[:, 0],
            "model_ew": model}


def _m2lnl(ew: np.ndarray, err: np.ndarray, use: np.ndarray, teff: np.ndarray, logg: np.ndarray, vmic: np.ndarray,
           alpha: np.ndarray, cog: CurveOfGrowth, lines: np.ndarray | None, frac: float,
           floor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model EWs (n, G, L), -2 ln L on the grid (n, G) and -2 ln L of "no iron" (n,)."""
    model = _model_ew(cog, teff, logg, vmic, alpha, lines)  # (n, G, L)
    w = use[:, None, :]
    e = np.where(use, ew, 0.0)[:, None, :]
    var = err[:, None, :] ** 2 + (frac * model) ** 2 + floor ** 2
    m2lnl = np.sum(np.where(w, (e - model) ** 2 / var + np.log(var), 0.0), axis=2)  # -2 ln L: (n, G)
    var0 = np.where(use, err ** 2 + floor ** 2, 1.0)
    m2lnl_none = np.sum(np.where(use, np.where(use, ew, 0.0) ** 2 / var0 + np.log(var0), 0.0), axis=1)
    return model, m2lnl, m2lnl_none


def _joint_chunk(ew: np.ndarray, err: np.ndarray, use: np.ndarray, teff: np.ndarray, logg: np.ndarray,
                 vmic: np.ndarray, alpha: np.ndarray, cog: CurveOfGrowth, lines: np.ndarray | None,
                 frac: float, floor: float) -> dict[str, np.ndarray]:
    model, m2lnl, m2lnl_none = _m2lnl(ew, err, use, teff, logg, vmic, alpha, cog, lines, frac, floor)
    var = err[:, None, :] ** 2 + (frac * model) ** 2 + floor ** 2

    n, g = m2lnl.shape
    k = np.argmin(m2lnl, axis=1)
    rows = np.arange(n)
    best = m2lnl[rows, k]
    # parabolic refinement between the neighbouring grid points
    kk = np.clip(k, 1, g - 2)
    y0, y1, y2 = m2lnl[rows, kk - 1], m2lnl[rows, kk], m2lnl[rows, kk + 1]
    curv = y0 - 2 * y1 + y2
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.where((curv > 0) & (k == kk), 0.5 * (y0 - y2) / curv, 0.0)
    step = FEH_GRID[1] - FEH_GRID[0]
    feh = FEH_GRID[k] + np.clip(off, -0.5, 0.5) * step
    delta = m2lnl - best[:, None]
    lo1, hi1 = _crossing(delta, k, 1.0)
    _, hi9 = _crossing(delta, k, 9.0)
    n_lines = use.sum(axis=1)
    feh_err = 0.5 * (hi1 - lo1)
    chi2 = np.sum(np.where(use, (np.where(use, ew, 0.0) - _at(model, k)) ** 2 / _at(var, k), 0.0), axis=1)
    signal = np.sqrt(np.clip(m2lnl_none - best, 0.0, None))
    none = n_lines == 0
    return {
        "feh_cog": np.where(none, np.nan, feh),
        "feh_cog_err": np.where(none, np.nan, feh_err),
        "feh_cog_upper": np.where(none, np.nan, hi9),
        "cog_signal_sigma": np.where(none, 0.0, signal),
        "cog_n_lines": n_lines,
        "cog_chi2_red": np.where(n_lines > 1, chi2 / np.maximum(n_lines - 1, 1), np.nan),
        "cog_at_grid_edge": (k == g - 1) & ~none,
    }


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


def _at(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``a[i, k[i], :]`` for every star i."""
    return a[np.arange(a.shape[0]), k, :]


def _crossing(delta: np.ndarray, k: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """[Fe/H] below and above the minimum where ``delta`` first reaches ``level`` (grid ends if never)."""
    n, g = delta.shape
    idx = np.arange(g)[None, :]
    above = delta >= level
    left = np.where(above & (idx < k[:, None]), idx, -1).max(axis=1)
    right = np.where(above & (idx > k[:, None]), idx, g).min(axis=1)
    rows = np.arange(n)

    def interp(i_out: np.ndarray, i_in: np.ndarray, edge: float) -> np.ndarray:
        ok = (i_out >= 0) & (i_out < g)
        io = np.clip(i_out, 0, g - 1)
        d_out, d_in = delta[rows, io], delta[rows, i_in]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(d_out > d_in, (level - d_in) / (d_out - d_in), 0.0)
        x = FEH_GRID[i_in] + t * (FEH_GRID[io] - FEH_GRID[i_in])
        return np.where(ok, x, edge)

    lo = interp(left, np.clip(left + 1, 0, g - 1), FEH_GRID[0])
    hi = interp(right, np.clip(right - 1, 0, g - 1), FEH_GRID[-1])
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
    ref = reference or CurveOfGrowth.load("moog")
    alt = alternative or CurveOfGrowth.load("sme")
    ew = np.atleast_2d(np.asarray(ew_mA, float))
    n = ew.shape[0]
    params = [np.broadcast_to(np.asarray(a, float), (n,)).copy() for a in (teff, logg, vmic, alpha_fe)]
    clipped = alt.clipped(*params)
    if alt.alpha_fe.size == 1:
        params[3][:] = alt.alpha_fe[0]
    for p, lo, hi in zip(params, (alt.teff[0], alt.logg[0], alt.vmic[0], ALPHA_RANGE[0]),
                         (alt.teff[-1], alt.logg[-1], alt.vmic[-1], ALPHA_RANGE[1]), strict=True):
        np.clip(p, lo, hi, out=p)
    a = joint_abundance(ew, ew_err_mA, usable, *params, cog=ref, **kwargs)
    b = joint_abundance(ew, ew_err_mA, usable, *params, cog=alt, **kwargs)
    both = a["cog_detected"].to_numpy() & b["cog_detected"].to_numpy()
    fa, fb = a["feh_cog"].to_numpy(), b["feh_cog"].to_numpy()
    return pd.DataFrame({"feh_sys": np.where(both, np.abs(fa - fb), np.nan), "feh_cog_ref": fa, "feh_cog_alt": fb,
                         "feh_sys_clipped": clipped})
