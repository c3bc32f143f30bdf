"""Measure the EW of every line of every spectrum: :func:`measure_ew` and its settings.

The three steps (fixed shape for every line; free shape for the clearly detected ones, with outlier clipping and
the star's shared line shape; a final fit of the rest with the shared shape), the errors and the flags are
described in :mod:`fehkit.ew`. This module cuts the windows out of the spectra, runs the steps block by block of
spectra with the solver of :mod:`fehkit.ew.solver`, and turns the fits into an :class:`~fehkit.ew.table.EWTable`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import pandas as pd

from fehkit.arrays import nanmedian_rows, numbers, per_grid, star_ids
from fehkit.constants import SPEED_OF_LIGHT_KMS
from fehkit.continuum import normalize
from fehkit.ew import kernels
from fehkit.ew.solver import (
    C0,
    DL,
    EW,
    GAM,
    NPAR,
    SIG,
    ArrayBackend,
    Backend,
    gauss_newton_step,
    levenberg_marquardt,
    linear_fit,
    linear_monte_carlo,
    monte_carlo,
    regression_slope,
    shared_bias_terms,
    voigt_model,
)
from fehkit.ew.table import FLAG_BLEND, FLAG_FAILED, FLAG_MASKED, FLAG_OK, FLAG_UPPER, EWError, EWTable
from fehkit.io import PIXMASK_BITS
from fehkit.lines import WINDOW_HALF_WIDTH_PIX, packaged_line_waves, packaged_linelist
from fehkit.physics.broadening import R_LSF, gaussian_sigma, lorentz_hwhm
from fehkit.spectra import SpectrumBatch
from fehkit.threads import map_threads

#: Stellar parameters assumed for the expected line widths and the tied damping when none are given:
#: a metal-poor red giant.
DEFAULT_PARAMS: dict[str, float] = {"teff": 4800.0, "logg": 1.5, "vmic": 1.8, "feh": -2.5}

#: Upper bound (A) of a fitted Lorentz half width with ``damping="shared"``: damping plus line-spread-function
#: wings.
GAMMA_MAX = 0.2
#: How far below 0 (A) a strong line's own Lorentz width may go while the star's shared width is measured (the
#: Voigt profile continues analytically there; only the shared, averaged width is kept, clipped at 0).
GAMMA_NEG = 0.03
#: Gauss-Newton steps of the shared Lorentz width.
SHAPE_ITERATIONS = 2
#: Remove the second-order (Box 1971) bias of the shared Lorentz width.
BIAS_CORRECT = True
#: Crowding (the excess of a star's mean reduced chi-square over 1, see ``_crowding``) above which a star keeps
#: the tied damping with ``damping="shared"``: its wings cannot be told from its neighbours.
CROWDED = 0.05


#: Thresholds of the fit-based blend tests (see :func:`measure_ew`): a line kept its own shape and its Gaussian
#: width exceeds the star's shared width by ``width_sigma`` errors and by ``width_ratio - 1``; or its centre is off
#: the star's shared RV by ``rv_sigma`` errors and ``rv_kms``; or a detected line's reduced chi-square exceeds 1 by
#: ``chi2_sigma`` times its scatter sqrt(2 / dof).
BLEND_TESTS: dict[str, float] = {"width_sigma": 3.0, "width_ratio": 1.1, "rv_sigma": 3.0, "rv_kms": 1.5,
                                 "chi2_sigma": 3.0}


@dataclass(frozen=True)
class EWSettings:
    """How :func:`measure_ew` fits the lines; every field is a keyword of :func:`measure_ew` (see it for each).

    The fitting steps read one settings object instead of a long argument list; the fields are checked here.

    Examples
    --------
    >>> EWSettings(mc_draws=0).mc_draws
    0
    >>> EWSettings(damping="loose")
    Traceback (most recent call last):
    ...
    fehkit.ew.table.EWError: damping: expected 'tied', 'free' or 'shared', found 'loose'
    """

    rv_tolerance: float = 10.0
    damping: Literal["tied", "free", "shared"] = "shared"
    free_shape_snr: float = 10.0
    detection_sigma: float = 3.0
    mc_draws: int = 100
    systematic_mA: float = 0.0
    telluric_sigma: float = 0.01
    seed: int | None = 0
    resolution: float = R_LSF
    half_width: int = WINDOW_HALF_WIDTH_PIX
    chunk: int = 256

    def __post_init__(self) -> None:
        if self.damping not in ("tied", "free", "shared"):
            raise EWError(f"damping: expected 'tied', 'free' or 'shared', found {self.damping!r}")
        if not self.rv_tolerance > 0:
            raise EWError(f"rv_tolerance: expected a positive velocity in km/s, found {self.rv_tolerance!r}")
        if self.mc_draws < 0:
            raise EWError(f"mc_draws: expected 0 or more, found {self.mc_draws!r}")
        if int(self.half_width) < 1 or int(self.chunk) < 1:
            raise EWError(f"half_width, chunk: expected positive integers, found {self.half_width!r}, {self.chunk!r}")


def measure_ew(
    batch: SpectrumBatch,
    lines: pd.DataFrame | None = None,
    *,
    backend: Backend = "numpy",
    device: str | None = None,
    params: pd.DataFrame | Mapping[str, Any] | None = None,
    rv_tolerance: float = 10.0,
    damping: Literal["tied", "free", "shared"] = "shared",
    free_shape_snr: float = 10.0,
    detection_sigma: float = 3.0,
    mc_draws: int = 100,
    systematic_mA: float = 0.0,
    telluric_sigma: float = 0.01,
    seed: int | None = 0,
    resolution: float = R_LSF,
    half_width: int = WINDOW_HALF_WIDTH_PIX,
    chunk: int = 256,
    float64: bool = False,
) -> EWTable:
    """Measure the EW of every line in every spectrum with batched Voigt fits.

    Parameters
    ----------
    batch : SpectrumBatch
        Spectra on a rest-frame vacuum grid. A batch in flux units is first continuum-normalized with
        :func:`fehkit.continuum.normalize`; a normalized one (``flux_unit == ""``) is used as it is.
    lines : DataFrame, optional
        Line list (default: the packaged Fe I list).
    backend : {"numpy", "torch"}
        Array library of the fits; the same math runs on both (numpy is the reference).
    device : str, optional
        torch device ("cpu", "cuda", "cuda:1"); default CUDA when available. Ignored by numpy.
    params : DataFrame or mapping of name to array, optional
        Per spectrum ``teff``, ``logg``, ``vmic``, ``feh`` (any subset), for the expected widths and the tied
        damping; missing ones take :data:`DEFAULT_PARAMS`. The expected width only starts the fits and serves
        lines too weak to fit their own; it matters little.
    rv_tolerance : float
        Largest offset (km/s) of a line centre from the rest frame (apStar spectra are already shifted).
    damping : {"shared", "tied", "free"}
        Lorentz width of the lines: ``"shared"`` (the default), one width per star measured from its strong lines
        (Gauss-Newton on their summed chi-square with a second-order bias correction, -0.03 to 0.2 A: damping
        plus line-spread-function wings) and used for all its lines, its error propagated into the strong lines'
        EW errors (a star with a blend background, crowding > :data:`CROWDED`, keeps the damping estimate);
        ``"tied"`` to the damping estimate of the star; ``"free"``, fitted line by line (bounded to
        0-0.5 A). ``"shared"`` removes the EW bias of a line shape with broader wings than assumed (-2 to -5% at
        0.02-0.05 A wings with ``"tied"``, within 0.8% with ``"shared"``; ``docs/ew_shapes.md``).
    free_shape_snr : float
        Significance above which a line keeps its own centre and width in the final fit.
    detection_sigma : float
        Significance of a detection; fainter lines are flagged upper_limit.
    mc_draws : int
        Monte Carlo draws for the resampled errors (0: skip them).
    systematic_mA : float
        A systematic error (mA) added in quadrature to every line's error. 0 by default: the errors already count
        the star's blend background (see :mod:`fehkit.ew`, "Errors").
    telluric_sigma : float
        Noise (in units of the continuum) added in quadrature to pixels flagged SIG_TELLURIC in the batch's
        APOGEE bitmask: the residual of the telluric correction, ~5% of a telluric line >= 12% deep (0: off;
        without a bitmask nothing changes).
    seed : int, optional
        Seed of the Monte Carlo draws.
    resolution : float
        Resolving power of the expected line-spread function.
    half_width : int
        Fit window half width in pixels.
    chunk : int
        Spectra fitted per block (bounds memory: ~``chunk x n_lines x (2 half_width + 1) x mc_draws`` values).
    float64 : bool
        Run the numpy or torch fits in float64 throughout instead of float32 first (the compiled kernels, the
        default on the CPU, always compute in float64): the torch backend then gives the compiled kernels' EWs to
        rounding.

    Returns
    -------
    EWTable

    Examples
    --------
    >>> from fehkit.synth import simulate
    >>> sim = simulate({"teff": [4700], "logg": [1.4], "feh": [-2.0], "vmic": [1.9], "snr": [150]}, seed=2)
    >>> table = measure_ew(sim.batch, mc_draws=0)
    >>> k = 2                                    # Fe I 15298.7, one of the strongest H-band Fe lines
    >>> bool(abs(table.ew_mA[0, k] - sim.ew[0, k]) < 4 * table.ew_err_mA[0, k]), table.flag[0, k]
    (True, 'ok')
    """
    if backend not in ("numpy", "torch"):
        raise EWError(f"backend: expected 'numpy' or 'torch', found {backend!r}")
    cfg = EWSettings(rv_tolerance=rv_tolerance, damping=damping, free_shape_snr=free_shape_snr,
                     detection_sigma=detection_sigma, mc_draws=mc_draws, systematic_mA=systematic_mA,
                     telluric_sigma=telluric_sigma, seed=seed, resolution=resolution, half_width=half_width,
                     chunk=chunk)
    packaged = lines is None
    lines = (packaged_linelist() if packaged else lines).reset_index(drop=True)  # a new frame (copy on write)
    if batch.flux_unit != "":
        batch = normalize(batch, lines=lines).batch
    n = batch.n_spectra
    xp = ArrayBackend(backend, device, compiled=backend == "numpy" and kernels.ENABLED, float64=float64 or None)
    idx, in_window = _packaged_windows(batch.wave, half_width) if packaged else window_pixels(batch.wave, lines,
                                                                                              half_width)
    lam0 = packaged_line_waves() if packaged else lines["wave_vac"].to_numpy(float)
    dx = (batch.wave[idx] - lam0[:, None]).astype(np.float32)                       # (L, W)
    core = np.abs(dx) <= 2.5 * 0.3                                                  # +-2.5 LSF sigma
    sig_exp, gam = expected_widths(lam0, params, n, resolution)                    # (n, L)
    static_blend = _packaged_static_blends() if packaged else static_blends(lines)
    rng = np.random.default_rng(seed) if mc_draws else None  # only the Monte Carlo errors draw

    def block(sl: slice) -> dict[str, np.ndarray]:
        if xp.compiled and batch.flux.dtype == np.float32 and batch.ivar.dtype == np.float32:
            flux, w, good = kernels.windows(batch.flux[sl], batch.ivar[sl], batch.mask[sl],
                                            None if batch.bitmask is None else batch.bitmask[sl], idx, in_window,
                                            PIXMASK_BITS["SIG_TELLURIC"], telluric_sigma)
        else:
            flux = batch.flux[sl][:, idx]                                           # (m, L, W)
            ivar = batch.ivar[sl][:, idx]
            if telluric_sigma > 0 and batch.bitmask is not None:
                # a telluric correction leaves residuals where the telluric absorption was deep: count them as noise
                tell = (batch.bitmask[sl][:, idx] >> PIXMASK_BITS["SIG_TELLURIC"]) & 1 == 1
                ivar = np.where(tell & (ivar > 0), 1.0 / (1.0 / np.where(ivar > 0, ivar, 1.0) + telluric_sigma**2),
                                ivar)
            good = ~batch.mask[sl][:, idx] & in_window[None] & np.isfinite(flux) & (ivar > 0)
            flux = np.where(good, flux, 0.0).astype(np.float32)
            w = np.where(good, ivar, 0.0).astype(np.float32)
        # degenerate windows (no pixels, no line) divide by zero on the way to their flag: no warnings for them
        with np.errstate(all="ignore"):
            return _measure_block(xp, dx, core, flux, w, good, lam0, sig_exp[sl], gam[sl], static_blend, cfg, rng)

    # no spectra: one empty block, so an empty table
    blocks = [slice(start, min(start + chunk, n)) for start in range(0, n, chunk)] or [slice(0, 0)]
    # each spectrum is fitted on its own: with no random draw to share, the blocks in threads (the compiled kernels
    # release the GIL), the same numbers
    parts = map_threads(block, blocks) if xp.compiled and mc_draws == 0 else [block(sl) for sl in blocks]
    res = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    star_id = star_ids(batch.meta_columns(["star_id"]))
    if star_id is None:
        star_id = np.array([f"spectrum-{i}" for i in range(n)])
    info = {"backend": backend, "device": xp.device_name, "compiled": xp.compiled,
            "rv_tolerance_kms": rv_tolerance, "damping": damping,
            "telluric_sigma": telluric_sigma, "systematic_mA": systematic_mA,
            "free_shape_snr": free_shape_snr, "mc_draws": mc_draws, "half_width_pix": half_width,
            "resolution": resolution}
    return EWTable(star_id=star_id, lines=lines, detection_sigma=detection_sigma, info=info, **res)


def _packaged_windows(wave: np.ndarray, half_width: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`window_pixels` of the packaged line list on ``wave``; the last grid's are kept (shared: not changed)."""
    return per_grid(_window_cache, half_width, wave, lambda: window_pixels(wave, packaged_linelist(), half_width))


#: :func:`_packaged_windows` of the last grid.
_window_cache: dict = {}


@lru_cache(maxsize=1)
def _packaged_static_blends() -> np.ndarray:
    """Return :func:`static_blends` of the packaged line list, computed once per process (read-only)."""
    out = static_blends(packaged_linelist())
    out.flags.writeable = False
    return out


def static_blends(lines: pd.DataFrame, sigma: float = 0.30, threshold: float = 0.05) -> np.ndarray:
    """Lines whose known neighbours (their ``blend_note``) would add >= ``threshold`` of their EW to the profile.

    A neighbour ``d`` A away with relative strength ``s`` dex contributes ~``10**s exp(-d**2 / (4 sigma**2))`` of
    the line's own signal to a profile fit (the overlap of two Gaussian profiles of width ``sigma``); at
    R = 22,500 no fit can separate it. Notes are read in the packaged list's format,
    ``"<species> <wave> at <+-offset> A (<+-dex> dex)"``; notes without offset and strength are ignored.

    Returns
    -------
    (n_lines,) bool
    """
    out = np.zeros(len(lines), bool)
    if "blend_note" not in lines:
        return out
    pattern = re.compile(r"at ([+-]?\d+(?:\.\d+)?) A \(([+-]?\d+(?:\.\d+)?) dex\)")
    for i, note in enumerate(lines["blend_note"].fillna("").astype(str)):
        share = sum(10.0 ** float(s) * math.exp(-float(d) ** 2 / (4 * sigma**2)) for d, s in pattern.findall(note))
        out[i] = share >= threshold
    return out


def _measure_block(
    xp: ArrayBackend, dx: np.ndarray, core: np.ndarray, flux: np.ndarray, w: np.ndarray, good: np.ndarray,
    lam0: np.ndarray, sig_exp: np.ndarray, gam: np.ndarray, static_blend: np.ndarray, cfg: EWSettings,
    rng: np.random.Generator | None,
) -> dict[str, np.ndarray]:
    """Measure one block of spectra: ``flux``, ``w`` (inverse variance), ``good`` are (m, n_lines, n_window)."""
    rv_tol, damping, free_snr = cfg.rv_tolerance, cfg.damping, cfg.free_shape_snr
    det_sigma, mc_draws, systematic = cfg.detection_sigma, cfg.mc_draws, cfg.systematic_mA
    m, nl, nw = flux.shape
    n_fit = m * nl
    line = np.tile(np.arange(nl), m)                        # line and star of each fit
    star_of = np.repeat(np.arange(m), nl)
    x = dx[line]                                            # (N, W) offset from the rest wavelength (A)
    y = flux.reshape(n_fit, nw)
    in_core = core[line]
    n_core = (good.reshape(n_fit, nw) & in_core).sum(axis=1)
    masked = (n_core < 0.5 * in_core.sum(axis=1)) | (good.reshape(n_fit, nw).sum(axis=1) < 12)
    w0 = np.where(masked[:, None], 0.0, w.reshape(n_fit, nw)).astype(np.float32)
    s_exp = sig_exp.reshape(n_fit)
    g = gam.reshape(n_fit)
    lam = lam0[line]
    dl_max = (lam * rv_tol / SPEED_OF_LIGHT_KMS).astype(np.float32)
    blend_static = static_blend[line]

    # 0. are the lines where the rest frame says? (a matched filter of every line over 3x the RV tolerance)
    offset_beyond = _rv_scan(x, y, w0, s_exp, lam, star_of, m, rv_tol, xp.compiled)

    # 1. every line with the expected shape: a linear fit in (c0, EW)
    zero = np.zeros(n_fit, np.float32)
    # a deep neighbour drags the first fit's level down; clip against it, refit, clip again from scratch
    lin = linear_fit(xp, x, y, w0, zero, s_exp, g)
    for _ in range(2):
        wt = _clip_outliers(x, y, w0, lin["model"], in_core, xp.compiled)
        lin = linear_fit(xp, x, y, wt, zero, s_exp, g, v=lin["v"])       # the same shape: the same profile
    snr0 = _ratio(lin["ew"], lin["err"])

    # 2. the clearly detected lines get their own centre and width, then their own outlier clipping
    strong = (snr0 >= free_snr) & ~masked
    s_idx = np.flatnonzero(strong)
    p = np.stack([lin["c0"], lin["ew"], zero, s_exp, g], axis=1)[s_idx]
    gam_lo = np.zeros(n_fit) if damping == "free" else g
    gam_hi = g + 0.5 if damping == "free" else g
    lo = np.stack([np.full(n_fit, 0.05), np.full(n_fit, -1.0), -dl_max, 0.6 * s_exp, gam_lo],
                  axis=1)[s_idx].astype(np.float32)
    hi = np.stack([np.full(n_fit, 20.0), np.full(n_fit, 3.0), dl_max, 2.5 * s_exp, gam_hi],
                  axis=1)[s_idx].astype(np.float32)
    free = np.zeros((s_idx.size, NPAR), bool)
    free[:, [C0, EW, DL, SIG]] = True
    free[:, GAM] = damping == "free"
    xs, ys = x[s_idx], y[s_idx]
    p, _, _, _ = levenberg_marquardt(xp, xs, ys, w0[s_idx], p, lo, hi, free, 10)
    wt[s_idx] = _clip_outliers(xs, ys, w0[s_idx], voigt_model(xs, p, xp.compiled), in_core[s_idx],
                               xp.compiled)
    # refit from the expected shape: an outlier can have led the first fit astray
    restart = linear_fit(xp, xs, ys, wt[s_idx], zero[s_idx], s_exp[s_idx], g[s_idx], v=lin["v"][s_idx])
    p[:, C0], p[:, EW], p[:, DL], p[:, SIG] = restart["c0"], restart["ew"], zero[s_idx], s_exp[s_idx]
    p = np.clip(p, lo, hi)
    # the last polish in float64: ill-conditioned fits (errors of tens of mA) then end at the same point on every
    # backend instead of wherever float32 rounding stops them
    p, _, _, _ = levenberg_marquardt(xp, xs, ys, wt[s_idx], p, lo, hi, free, 10)
    p, perr, chi2_s, _ = levenberg_marquardt(xp, xs, ys, wt[s_idx], p, lo, hi, free, 10, double=True)
    p, perr, chi2_s = p.astype(np.float32), perr.astype(np.float32), chi2_s.astype(np.float32)

    at_bound = ((np.abs(p[:, DL]) >= 0.98 * dl_max[s_idx]) | (p[:, SIG] <= 1.01 * lo[:, SIG])
                | (p[:, SIG] >= 0.99 * hi[:, SIG]))
    use = (_ratio(p[:, EW], perr[:, EW]) >= free_snr) & ~at_bound & ~blend_static[s_idx]
    g_shared = g.copy()
    err_shape = np.zeros(s_idx.size, np.float32)
    if damping == "shared":
        # the star's Lorentz (wing) width, shared by its lines: Gauss-Newton on the summed chi-square of its strong
        # lines. Each line's unbounded step of the width (its other parameters re-optimized) is an estimate with
        # its own variance; their robust weighted mean moves the shared width, and the strong lines are refitted
        # with it (own centre and Gaussian width); SHAPE_ITERATIONS times, for the nonlinearity. With per-line
        # nuisance parameters the width is biased low at S/N ~100 (~0.01 A, -1% in EW): Box's second-order bias
        # of the joint fit is removed. Where the star's windows show a blend background, its neighbours fill the
        # wings: no wing width there (measured on the windows of its weaker lines, which a wrong wing width
        # cannot misfit).
        dof0 = np.maximum((wt > 0).sum(axis=1) - 2, 1)
        crowd0 = _crowding(m, star_of, lin["chi2"] / dof0, dof0, ~masked & ~strong)
        g_use = (snr0[s_idx] >= free_snr) & ~at_bound & ~blend_static[s_idx] & (crowd0[star_of[s_idx]] <= CROWDED)
        free_g = free.copy()
        free_g[:, GAM] = True
        for _ in range(SHAPE_ITERATIONS):
            step, cov = gauss_newton_step(xp, xs, ys, wt[s_idx], p, free_g, (GAM,))
            gam_star, gam_err, n_gam, kept = _shared_mean(m, star_of[s_idx], p[:, GAM] + step[:, GAM],
                                                          np.sqrt(cov[:, 0, 0]), g_use, xp.compiled)
            if BIAS_CORRECT:
                s_a, s_u = shared_bias_terms(xp, xs, ys, wt[s_idx], p, free, GAM, 0.02)
                var = np.where(n_gam > 0, gam_err, 0.0).astype(float) ** 2
                sum_a = np.bincount(star_of[s_idx][kept], s_a[kept], minlength=m)
                sum_u = np.bincount(star_of[s_idx][kept], s_u[kept], minlength=m)
                gam_star = gam_star + 0.5 * var * (sum_a + var * sum_u)
            have = n_gam > 0
            gam_star = np.where(have, np.clip(gam_star, -GAMMA_NEG, GAMMA_MAX), np.nan).astype(np.float32)
            p[:, GAM] = lo[:, GAM] = hi[:, GAM] = np.where(have[star_of[s_idx]], gam_star[star_of[s_idx]], p[:, GAM])
            p, perr, chi2_s, _ = levenberg_marquardt(xp, xs, ys, wt[s_idx], p, lo, hi, free, 8, double=True)
        g_shared = np.where(have[star_of], gam_star[star_of], g).astype(np.float32)
        # the shared width's error reaches each strong line's EW through the EW-width correlation of its fit
        slope, _ = regression_slope(xp, xs, ys, wt[s_idx], p, free_g, EW, GAM)
        err_shape = np.where(have[star_of[s_idx]], np.abs(slope) * gam_err[star_of[s_idx]], 0.0).astype(np.float32)
        p, perr, chi2_s = p.astype(np.float32), perr.astype(np.float32), chi2_s.astype(np.float32)
        at_bound = ((np.abs(p[:, DL]) >= 0.98 * dl_max[s_idx]) | (p[:, SIG] <= 1.01 * lo[:, SIG])
                    | (p[:, SIG] >= 0.99 * hi[:, SIG]))
        use = (_ratio(p[:, EW], perr[:, EW]) >= free_snr) & ~at_bound & ~blend_static[s_idx]
    shared_rv, width_scale, n_shape = _shared_shape(
        m, star_of[s_idx], p[:, DL] / lam[s_idx] * SPEED_OF_LIGHT_KMS, perr[:, DL] / lam[s_idx] * SPEED_OF_LIGHT_KMS,
        p[:, SIG] / s_exp[s_idx], perr[:, SIG] / s_exp[s_idx], use, xp.compiled)

    # 3. all other lines with the star's shared shape: linear again, so unbiased at any signal
    w_idx = np.flatnonzero(~strong)
    dl_shared = (shared_rv[star_of] * lam / SPEED_OF_LIGHT_KMS).astype(np.float32)
    s_shared = np.clip(width_scale[star_of] * s_exp, 0.6 * s_exp, 2.5 * s_exp).astype(np.float32)
    fin = linear_fit(xp, x[w_idx], y[w_idx], wt[w_idx], dl_shared[w_idx], s_shared[w_idx], g_shared[w_idx])

    # gather the final parameters of every fit
    c0 = np.empty(n_fit, np.float32)
    ew = np.empty(n_fit, np.float32)
    err = np.empty(n_fit, np.float32)
    chi2 = np.empty(n_fit, np.float32)
    dl, sig = dl_shared.copy(), s_shared.copy()
    gamma = g_shared.copy()
    model = np.empty_like(y)
    c0[w_idx], ew[w_idx], err[w_idx], chi2[w_idx], model[w_idx] = (fin[k] for k in ("c0", "ew", "err", "chi2",
                                                                                      "model"))
    c0[s_idx], ew[s_idx], err[s_idx], chi2[s_idx] = p[:, C0], p[:, EW], perr[:, EW], chi2_s
    shape_err = np.zeros(n_fit, np.float32)
    shape_err[s_idx] = err_shape
    dl[s_idx], sig[s_idx], gamma[s_idx] = p[:, DL], p[:, SIG], p[:, GAM]
    model[s_idx] = voigt_model(xs, p, xp.compiled)
    negative, model_min, core_min, n_core_fit, npix = _window_stats(y, w0, wt, model, in_core, xp.compiled)

    mc_err = np.full(n_fit, np.nan, np.float32)
    if mc_draws:
        mc_err[w_idx] = linear_monte_carlo(xp, fin["v"], wt[w_idx], mc_draws, rng, fin)
        mc_err[s_idx] = monte_carlo(xp, xs, wt[s_idx], p, lo, hi, free, mc_draws, rng)

    # the reported error: the fit's, scaled up by sqrt(reduced chi-square) where the window holds more than noise
    # (unresolved blends, telluric residuals), plus an optional systematic floor
    dof = np.maximum(npix - np.where(strong, int(free[0].sum()) if free.size else 4, 2), 1)
    chi2_red = chi2 / dof
    err_stat = err
    crowd = _crowding(m, star_of, chi2_red, dof, ~masked)
    pixel = (x[:, -1] - x[:, 0]) / max(nw - 1, 1)
    n_eff = 2.0 * math.sqrt(math.pi) * sig / np.where(pixel > 0, pixel, 1.0)
    err = np.sqrt(err * err * (np.maximum(chi2_red, 1.0) + np.maximum(n_eff - 1.0, 0.0) * crowd[star_of])
                  + shape_err**2 + (systematic * 1e-3) ** 2).astype(np.float32)

    # flags
    c0_safe = np.maximum(c0, 1e-6)
    depth = 1.0 - model_min / c0_safe
    floor = core_min / c0_safe
    detected = ew >= det_sigma * err
    saturated = (depth > 0.9) | ((floor < 0.05) & detected)
    bad_fit = ~(np.isfinite(c0) & np.isfinite(ew) & np.isfinite(err) & (err > 0) & (err < 1.0))
    bad_fit |= (npix < 12) | (n_core_fit < 0.5 * in_core.sum(axis=1))
    c0_off = (c0 < 0.5) | (c0 > 1.5)
    bound = np.zeros(n_fit, bool)
    bound[s_idx] = at_bound
    beyond = offset_beyond[star_of]
    failed = ~masked & (bad_fit | bound | c0_off | saturated | negative | beyond)
    why = np.zeros(n_fit, np.uint16)
    for bit, cond in enumerate((masked, bad_fit, bound | beyond, c0_off, saturated, negative, blend_static)):
        why |= np.where(cond, 1 << bit, 0).astype(np.uint16)
    rv_err = np.zeros(n_fit, np.float32)
    rv_err[s_idx] = perr[:, DL]
    sig_err = np.zeros(n_fit, np.float32)
    sig_err[s_idx] = perr[:, SIG]
    # an unresolved neighbour widens a line and shifts it; both are measured against the star's shared shape
    width_off = strong & (n_shape[star_of] > 0) & (
        sig - s_shared > np.maximum(BLEND_TESTS["width_sigma"] * sig_err, (BLEND_TESTS["width_ratio"] - 1) * s_shared))
    rv_off = strong & (np.abs(dl - dl_shared) > np.maximum(BLEND_TESTS["rv_sigma"] * rv_err,
                                                           lam * BLEND_TESTS["rv_kms"] / SPEED_OF_LIGHT_KMS))
    ragged = detected & (chi2_red > 1.0 + BLEND_TESTS["chi2_sigma"] * np.sqrt(2.0 / dof))
    blend = blend_static | width_off | rv_off | ragged
    for bit, cond in enumerate((width_off, rv_off, ragged, ~detected & ~masked & ~failed), start=7):
        why |= np.where(cond, 1 << bit, 0).astype(np.uint16)
    code = np.full(n_fit, FLAG_OK, np.uint8)
    code[blend] = FLAG_BLEND
    code[~detected] = FLAG_UPPER
    code[failed] = FLAG_FAILED
    code[masked] = FLAG_MASKED
    unusable = masked | failed

    ew_ma = np.where(unusable, np.nan, ew * 1e3).astype(np.float32)
    err_ma = np.where(unusable, np.nan, err * 1e3).astype(np.float32)
    shape = (m, nl)
    return {
        "ew_mA": ew_ma.reshape(shape),
        "ew_err_mA": err_ma.reshape(shape),
        "ew_err_fit_mA": np.where(unusable, np.nan, err_stat * 1e3).astype(np.float32).reshape(shape),
        "ew_err_mc_mA": np.where(unusable, np.nan, mc_err * 1e3).astype(np.float32).reshape(shape),
        "ew_upper_mA": (np.maximum(ew_ma, 0.0) + det_sigma * err_ma).astype(np.float32).reshape(shape),
        "flag_code": code.reshape(shape),
        "reason_bits": why.reshape(shape),
        "blend": blend.reshape(shape),
        "rv_kms": (dl / lam * SPEED_OF_LIGHT_KMS).astype(np.float32).reshape(shape),
        "sigma_A": sig.astype(np.float32).reshape(shape),
        "gamma_A": gamma.astype(np.float32).reshape(shape),
        "continuum": c0.reshape(shape),
        "chi2_red": chi2_red.astype(np.float32).reshape(shape),
        "n_pix": npix.astype(np.int16).reshape(shape),
        "free_shape": strong.reshape(shape),
        "shared_rv_kms": shared_rv.astype(np.float32),
        "width_scale": width_scale.astype(np.float32),
        "n_shape_lines": n_shape,
        "shared_gamma_A": g_shared.reshape(shape)[:, 0].copy(),
        "used": (wt > 0).reshape(m, nl, nw),
    }


def _window_stats(y: np.ndarray, w0: np.ndarray, wt: np.ndarray, model: np.ndarray, core: np.ndarray,
                  compiled: bool = False) -> tuple[np.ndarray, ...]:
    """Return the statistics of each window that its flags need.

    Significantly negative flux (below -3 sigma at a pixel with weight ``w0``), the lowest model value and the
    lowest flux in the core over the fitted pixels (``wt > 0``; inf if none), and the number of fitted pixels in the
    core and in all. ``compiled``: by the numba kernel of :mod:`fehkit.ew.kernels`.
    """
    if compiled:
        return kernels.window_stats(y, w0, wt, model, core)
    good = w0 > 0
    fitted = wt > 0
    negative = ((y < -3.0 * np.where(good, 1.0 / np.sqrt(np.where(good, w0, 1.0)), np.inf)) & good).any(axis=1)
    model_min = np.where(fitted, model, np.inf).min(axis=1)
    core_min = np.where(fitted & core, y, np.inf).min(axis=1)
    return negative, model_min, core_min, (fitted & core).sum(axis=1), fitted.sum(axis=1)


def _rv_scan(x: np.ndarray, y: np.ndarray, w: np.ndarray, sig: np.ndarray, lam: np.ndarray, star_of: np.ndarray,
             m: int, rv_tol: float, compiled: bool = False) -> np.ndarray:
    """Find stars whose lines all sit beyond the RV tolerance: the spectrum is not in the rest frame it claims.

    Each window gets, at trial velocities out to 3x ``rv_tol``, a linear fit of a Gaussian absorption line (free
    level and depth), and the velocity where that fit gains most chi-square is the line's own RV. A blend puts a
    single line's peak somewhere off; a wrong rest frame puts *all* detected lines at the same offset. So a star is
    flagged where at least 3 lines peak at >= 5 sigma beyond the tolerance, within 4 km/s of each other, and
    they are at least half of its lines that peak at >= 5 sigma anywhere. ``compiled``: the peaks from the numba
    kernel of :mod:`fehkit.ew.kernels`.
    """
    step = 2.0
    grid = np.arange(-3 * rv_tol, 3 * rv_tol + 0.5 * step, step)
    if compiled:
        peak, best = kernels.rv_peaks(x, y, w, sig, lam, grid, step)
    else:
        gain = _rv_gain(x, y, w, sig, lam, grid, step)
        peak, best = np.argmax(gain, axis=1), gain.max(axis=1)
    peak_rv = grid[peak]
    significant = best >= 25.0
    out = significant & (np.abs(peak_rv) > rv_tol + 1e-6)
    n_sig = np.bincount(star_of, significant, minlength=m)
    beyond = np.zeros(m, bool)
    out_idx = np.flatnonzero(out)
    out_star = star_of[out_idx]
    for i in np.flatnonzero(np.bincount(out_star, minlength=m) >= 3):
        v = peak_rv[out_idx[out_star == i]]
        v_sorted, h = np.sort(v), v.size // 2           # np.median, without its overhead
        med = v_sorted[h] if v.size % 2 else (v_sorted[h - 1] + v_sorted[h]) / 2.0
        n_cluster = (np.abs(v - med) <= 4.0).sum()
        beyond[i] = n_cluster >= 3 and n_cluster >= 0.5 * n_sig[i]
    return beyond


def _rv_gain(x: np.ndarray, y: np.ndarray, w: np.ndarray, sig: np.ndarray, lam: np.ndarray, grid: np.ndarray,
             step: float, block: int = 256) -> np.ndarray:
    """Chi-square gain (n_fits, n_grid) of a Gaussian line of width ``sig`` at each trial velocity of ``grid``.

    The profiles of all trial velocities (an evenly spaced grid) come from one recurrence in float64: with ``u`` the
    offset from the first trial centre and ``delta`` the grid step (A), ``P_j+1 = P_j q_j`` and ``q_j+1 = q_j rho``,
    ``q_0 = exp(a (delta^2 - 2 u delta))``, ``rho = exp(2 a delta^2)``, ``a = -1 / (2 sig^2)``: two exponentials a
    pixel instead of one per trial velocity. The weighted sums are one batched matrix product. Fits whose profile
    would underflow somewhere in the window take the exponential at every trial velocity.
    """
    n, nw = x.shape
    ng = grid.size
    s0, ty = w.sum(axis=1), (w * y).sum(axis=1)
    a_all = (-0.5 / (sig.astype(np.float64) ** 2))
    gain = np.zeros((n, ng), np.float32)
    for b0 in range(0, n, block):
        sl = slice(b0, min(b0 + block, n))
        xb, wb, a = x[sl].astype(np.float64), w[sl].astype(np.float64), a_all[sl][:, None]
        d0 = (lam[sl] * grid[0] / SPEED_OF_LIGHT_KMS)[:, None]
        delta = (lam[sl] * step / SPEED_OF_LIGHT_KMS)[:, None]
        u = xb - d0
        stack = np.empty((ng, xb.shape[0], nw))                                           # (G, k, W)
        stack[0] = np.exp(a * u * u)
        q = np.exp(a * (delta * delta - 2.0 * u * delta))
        rho = np.exp(2.0 * a * delta * delta)
        for j in range(1, ng):
            np.multiply(stack[j - 1], q, out=stack[j])
            q *= rho
        prof = stack.transpose(1, 0, 2)                                                  # (k, G, W) view
        # far from the line the recurrence would start from an underflowed (or subnormal) value: compute directly
        reach = np.maximum(np.abs(u).max(axis=1), np.abs(u - (ng - 1) * delta).max(axis=1))
        direct = np.flatnonzero(-a[:, 0] * reach * reach > 600.0)
        if direct.size:
            off = xb[direct][:, None, :] - (lam[sl][direct, None] * grid[None] / SPEED_OF_LIGHT_KMS)[:, :, None]
            prof[direct] = np.exp(off * off * a[direct, :, None])
        sums = np.matmul(prof, np.stack([wb, wb * y[sl]], axis=-1))                      # (k, G, 2)
        s1, tv = sums[..., 0], sums[..., 1]
        stack *= stack
        s2 = np.matmul(prof, wb[:, :, None])[..., 0]
        s0b, tyb = s0[sl, None], ty[sl, None]
        det = s0b * s2 - s1 * s1
        ok = det > 0
        depth = np.where(ok, (s1 * tyb - s0b * tv) / np.where(ok, det, 1.0), 0.0)
        var = np.where(ok, s0b / np.where(ok, det, 1.0), np.inf)
        gain[sl] = np.where(depth > 0, depth * depth / var, 0.0)
    return gain


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.where(np.isfinite(a) & (b > 0), a / np.where(b > 0, b, 1.0), 0.0)


def _crowding(m: int, star: np.ndarray, chi2_red: np.ndarray, dof: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Per star: how far its windows' reduced chi-square exceeds 1 on average (0 where within one error of it).

    The excess is the flux variance of lines other than the fitted one (the blend background), in units of the
    noise; averaged over all the star's windows it measures how crowded the spectrum is.
    """
    ok = ok & np.isfinite(chi2_red)
    n = np.bincount(star[ok], minlength=m)
    n_safe = np.maximum(n, 1)
    mean = np.bincount(star[ok], chi2_red[ok], minlength=m) / n_safe
    mean_dof = np.bincount(star[ok], dof[ok], minlength=m) / n_safe
    excess = mean - 1.0 - np.sqrt(2.0 / np.maximum(mean_dof * n_safe, 1.0))
    return np.where(n > 0, np.maximum(excess, 0.0), 0.0).astype(np.float32)


def _shared_mean(m: int, star: np.ndarray, value: np.ndarray, err: np.ndarray, use: np.ndarray,
                 compiled: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per star: inverse-variance weighted mean of ``value`` and its error over >= 3 ``use`` lines.

    Lines more than 3 errors from the weighted median (a blend widening one line) are left out. Stars without 3
    lines get NaN and a count of 0. The last array marks the lines used.
    """
    out = np.full(m, np.nan, np.float32)
    out_err = np.full(m, np.nan, np.float32)
    n_out = np.zeros(m, int)
    kept = np.zeros(star.size, bool)
    err = np.maximum(err, 1e-5)
    if compiled and value.dtype == err.dtype == np.float64:  # the same loop compiled, all stars in one call
        kernels.shared_means(value, 1.0 / err ** 2, 3.0 * err, *kernels.rows_by_star(m, star, use), out, out_err,
                             n_out, kept)
        return out, out_err, n_out, kept
    for i in np.flatnonzero(np.bincount(star[use], minlength=m) >= 3):
        sel = use & (star == i)
        v, wv = value[sel], 1.0 / err[sel] ** 2
        keep = np.abs(v - _weighted_median(v, wv, compiled)) <= 3.0 * err[sel]
        if keep.sum() < 3:
            continue
        out[i] = np.sum(wv[keep] * v[keep]) / wv[keep].sum()
        out_err[i] = 1.0 / math.sqrt(wv[keep].sum())
        n_out[i] = keep.sum()
        kept[np.flatnonzero(sel)[keep]] = True
    return out, out_err, n_out, kept


def _shared_shape(
    m: int, star: np.ndarray, rv: np.ndarray, rv_err: np.ndarray, ratio: np.ndarray, ratio_err: np.ndarray,
    use: np.ndarray, compiled: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per star: weighted medians of the line RVs (km/s) and fitted/expected widths over >= 3 good lines."""
    shared_rv = np.zeros(m, np.float32)
    scale = np.ones(m, np.float32)
    n_use = np.bincount(star[use], minlength=m)
    if compiled:  # the same weighted medians, all stars in one call each
        groups = kernels.rows_by_star(m, star, use)
        kernels.weighted_medians(rv, 1.0 / np.maximum(rv_err, 1e-3) ** 2, *groups, 3, shared_rv)
        kernels.weighted_medians(ratio, 1.0 / np.maximum(ratio_err, 1e-4) ** 2, *groups, 3, scale)
        return shared_rv, scale, np.where(n_use >= 3, n_use, 0)
    for i in np.flatnonzero(n_use >= 3):
        sel = use & (star == i)
        shared_rv[i] = _weighted_median(rv[sel], 1.0 / np.maximum(rv_err[sel], 1e-3) ** 2, compiled)
        scale[i] = _weighted_median(ratio[sel], 1.0 / np.maximum(ratio_err[sel], 1e-4) ** 2, compiled)
    return shared_rv, scale, np.where(n_use >= 3, n_use, 0)


def _weighted_median(x: np.ndarray, w: np.ndarray, compiled: bool = False) -> float:
    if compiled:                                    # the same numbers, without numpy's per-call overhead
        return float(kernels.weighted_median(x, w))
    order = np.argsort(x)
    cum = np.cumsum(w[order])
    return float(x[order][np.searchsorted(cum, 0.5 * cum[-1])])


def _clip_outliers(x: np.ndarray, y: np.ndarray, w: np.ndarray, model: np.ndarray, core: np.ndarray,
                   compiled: bool = False) -> np.ndarray:
    """Drop pixels > 5 sigma above the fit, and pixels > 3 sigma below it outside the core (grown by 1 pixel).

    Both measured from the median residual of the pixels outside the core.

    Where more than half of the usable pixels outside the core would go, the window is crowded with lines (a
    metal-rich star) and there is no continuum to protect: the low clipping is then skipped, and the fit's
    residuals flag the line as a suspected blend. ``compiled``: by the numba kernel of :mod:`fehkit.ew.kernels`.
    """
    if compiled:
        return kernels.clip_outliers(y, w, model, core)
    z = (y - model) * np.sqrt(w)
    # residuals are measured from their median in the wings, so that a fit whose level a deep neighbour dragged
    # down does not see the whole continuum as "high"
    wing_z = np.where((w > 0) & ~core, z, np.nan)
    all_nan = ~np.isfinite(wing_z).any(axis=1)
    wing_z[all_nan] = 0.0
    z = z - nanmedian_rows(wing_z)[:, None]
    high = z > 5.0
    low = (z < -3.0) & ~core
    low[:, 1:] |= low[:, :-1].copy()
    low[:, :-1] |= low[:, 1:].copy()
    low &= ~core & (w > 0)
    wing = ((w > 0) & ~core).sum(axis=1)
    crowded = low.sum(axis=1) > 0.5 * wing
    low[crowded] = False
    return np.where(high | low, 0.0, w).astype(np.float32)


def window_pixels(wave: np.ndarray, lines: pd.DataFrame,
                  half_width: int = WINDOW_HALF_WIDTH_PIX) -> tuple[np.ndarray, np.ndarray]:
    """Return the pixels each line is fitted on: ``half_width`` either side of the pixel nearest the line.

    Returns
    -------
    idx : (n_lines, 2 half_width + 1) int
        Pixel indices (clipped to the grid).
    inside : (n_lines, 2 half_width + 1) bool
        Which of them are on the grid and inside the line list's ``window_lo``-``window_hi``.
    """
    lam0 = lines["wave_vac"].to_numpy(float)
    off_grid = (lam0 < wave[0]) | (lam0 > wave[-1])
    if off_grid.any():
        raise EWError(f"lines: {lam0[off_grid][:3].tolist()} A lie off the spectra's wavelength grid "
                      f"({wave[0]:.1f}-{wave[-1]:.1f} A); expected lines inside it")
    centre = np.searchsorted(wave, lam0)
    centre = np.where((centre > 0) & (np.abs(wave[np.maximum(centre - 1, 0)] - lam0)
                                      < np.abs(wave[np.minimum(centre, wave.size - 1)] - lam0)), centre - 1, centre)
    raw = centre[:, None] + np.arange(-half_width, half_width + 1)[None]
    idx = np.clip(raw, 0, wave.size - 1)
    inside = (raw >= 0) & (raw < wave.size)
    if "window_lo" in lines and "window_hi" in lines:
        lo = lines["window_lo"].to_numpy(float)[:, None]
        hi = lines["window_hi"].to_numpy(float)[:, None]
        # the list's windows are +-20 pixels wide; allow half a pixel of rounding
        pad = 0.6 * np.gradient(wave)[idx]
        inside &= (wave[idx] >= lo - pad) & (wave[idx] <= hi + pad)
    return idx, inside


def expected_widths(lam0: np.ndarray, params: pd.DataFrame | Mapping[str, Any] | None, n: int,
                     resolution: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the expected Gaussian sigma and the tied Lorentz half width (A), (n, L) float32."""
    vals = {}
    for k, default in DEFAULT_PARAMS.items():
        col = None if params is None or k not in params else numbers(params[k])
        if col is not None and len(col) != n:
            raise EWError(f"params: expected {n} rows (one per spectrum), found {len(col)}")
        vals[k] = np.where(np.isfinite(col), col, default) if col is not None else np.full(n, default)
    sig = gaussian_sigma(lam0[None], vals["teff"][:, None], vals["vmic"][:, None], resolution)
    gam = lorentz_hwhm(lam0[None], vals["teff"][:, None], vals["logg"][:, None], vals["feh"][:, None])
    return sig.astype(np.float32), np.broadcast_to(gam, sig.shape).astype(np.float32)
