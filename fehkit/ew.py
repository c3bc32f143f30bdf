"""Equivalent widths of every Fe line of every spectrum at once: batched Voigt fits with honest errors and flags.

The equivalent width (EW) of a line is the area of its absorption, ``EW = int (1 - F / F_c) d lambda``; in the
weak-line regime of EMP stars it is proportional to the number of iron atoms, so it carries the abundance. Each line
is fitted, in a window of +-20 apStar pixels (~+-4.4 A), with a Voigt profile on a local continuum level::

    F(lambda) = c0 * (1 - EW * V(lambda - lambda_0 - d_lambda; sigma, gamma))

with V area-normalized (:mod:`fehkit.profiles`): the EW is a fit parameter, and its error comes straight from the
fit. All windows of all spectra form one array ``(n_spectra, n_lines, n_window)``, and one Levenberg-Marquardt loop
(elementwise Jacobians, a vectorized 5x5 Cholesky solve per fit, box bounds) solves them together, on numpy or on
torch (CPU or CUDA) with the same code.

The measurement runs in three steps, because a free centre and width chase noise in a weak line: fitted to a line
at 1-3 sigma they find the largest noise dip within the RV tolerance and bias the EW *up*, exactly where EMP stars
live.

1. **Fixed shape**: every line with the expected centre (rest frame) and Gaussian width (LSF at R = 22,500 plus
   thermal and microturbulent broadening); free c0 and EW. This gives each line's significance.
2. **Free shape** for lines detected at >= ``free_shape_snr`` sigma: centre within ``rv_tolerance`` km/s, Gaussian
   width within 0.6-2.5x the expected one, the Lorentz width tied to the damping of :mod:`fehkit.physics.broadening`
   (or free with ``damping="free"``). Pixels far off the fit are then dropped and the fit repeated: more than 5 sigma
   above it (cosmic rays, emission, sky residuals), or more than 3 sigma below it outside the line core (a
   neighbouring line dragging the local continuum down). The star's **shared line shape** -- its residual RV and
   the ratio of fitted to expected width -- is the weighted median over its detected, unblended lines.
3. **Final**: lines detected at >= ``free_shape_snr`` keep their own free-shape fit; all others are fitted with the
   star's shared shape and free c0 and EW, which is linear in the flux, so their EW is unbiased even at zero
   signal and its error is exact. The measured EW is reported whatever its significance (negative values
   included): the ensemble and the joint likelihood of the abundance stage need it unbiased.

Errors come from the fit's Jacobian (the inverse of the Gauss-Newton matrix at the solution, with the pixel errors
of ``ivar``) and, as the method does, from Monte Carlo resampling: the flux is perturbed with its own noise
``mc_draws`` times (100 by default) and every fit repeated, all draws in one batch; the two agree when ``ivar`` is
right (:meth:`EWTable.error_agreement`). Where a window holds more than noise and one line (an unresolved blend,
a telluric residual), its reduced chi-square exceeds 1 and the reported error is scaled up by its square root.
The detection limit follows Cayrel (1988):
``sigma_EW ~ 1.5 sqrt(FWHM x pixel) / SNR``, ~6 mA at S/N 100, while the strongest H-band Fe I lines of a
[Fe/H] = -3 giant are ~20 mA.

Flags (one per line, by priority): ``masked`` (too few good pixels in the line core or the window),
``fit_failed`` (no convergence, centre or width at its bound, local continuum off by >50%, a saturated or
flat-bottomed core, significantly negative flux), ``upper_limit`` (EW below ``detection_sigma`` x its error),
``blend_suspect`` (a known neighbour inside the profile, a width or RV far off the star's shared shape, or
residuals beyond the noise) and ``ok``. ``ew_mA`` is NaN exactly when the flag is masked or fit_failed.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from fehkit.continuum import normalize
from fehkit.errors import FehkitError
from fehkit.io import PIXMASK_BITS, SPEED_OF_LIGHT_KMS, atomic_output
from fehkit.lines import WINDOW_HALF_WIDTH_PIX, load_linelist
from fehkit.physics.broadening import R_LSF, gaussian_sigma, lorentz_hwhm
from fehkit.profiles import voigt, voigt_and_derivatives
from fehkit.spectra import SpectrumBatch

#: Flag names, in order of priority, and their codes in :attr:`EWTable.flag_code`.
FLAGS: tuple[str, ...] = ("ok", "upper_limit", "blend_suspect", "fit_failed", "masked")
_OK, _UPPER, _BLEND, _FAILED, _MASKED = range(5)

#: Why a line got its flag: bit i of :attr:`EWTable.reason_bits` stands for ``REASONS[i]``.
REASONS: tuple[str, ...] = (
    "too few good pixels",            # masked
    "fit did not converge or too few pixels left after clipping",
    "centre or width at its bound (or the star's lines beyond the RV tolerance)",
    "local continuum off by >50%",
    "saturated or flat-bottomed core",
    "significantly negative flux",
    "known neighbour inside the profile",  # blend_suspect from here on
    "width far above the star's shared width",
    "centre off the star's shared RV",
    "residuals beyond the noise",
    "not detected at detection_sigma",  # upper_limit
)

#: Columns of the ``fehkit ew`` table (DESIGN.md), in order; more diagnostic columns follow them.
EW_COLUMNS: tuple[str, ...] = ("star_id", "line_wave", "ew_mA", "ew_err_mA", "ew_upper_mA", "flag")

#: Stellar parameters assumed for the expected line widths and the tied damping when none are given:
#: a metal-poor red giant.
DEFAULT_PARAMS: dict[str, float] = {"teff": 4800.0, "logg": 1.5, "vmic": 1.8, "feh": -2.5}

#: Thresholds of the fit-based blend tests (see :func:`measure_ew`): a line kept its own shape and its Gaussian
#: width exceeds the star's shared width by ``width_sigma`` errors and by ``width_ratio - 1``; or its centre is off
#: the star's shared RV by ``rv_sigma`` errors and ``rv_kms``; or a detected line's reduced chi-square exceeds 1 by
#: ``chi2_sigma`` times its scatter sqrt(2 / dof).
BLEND_TESTS: dict[str, float] = {"width_sigma": 3.0, "width_ratio": 1.1, "rv_sigma": 3.0, "rv_kms": 1.5,
                                 "chi2_sigma": 3.0}

# parameter order in the fits
_C0, _EW, _DL, _SIG, _GAM = range(5)
_NPAR = 5

Backend = Literal["numpy", "torch"]


class EWError(FehkitError, ValueError):
    """Arguments of :func:`measure_ew` that cannot work (an unknown backend, a line off the wavelength grid)."""


@dataclass
class EWTable:
    """Equivalent widths of ``n_lines`` lines in ``n_spec`` spectra, with errors, limits, flags and fit details.

    Every array is shaped (n_spec, n_lines); widths and limits are in mA, wavelengths in A.

    Attributes
    ----------
    star_id : (n_spec,) str
    lines : pandas.DataFrame
        The line list (``wave_vac`` is the line's vacuum wavelength).
    ew_mA, ew_err_mA : float32
        Measured EW (also below detection, also negative) and its 1-sigma error: the fit's error scaled by
        sqrt(reduced chi-square) where that exceeds 1 (plus ``systematic_mA`` in quadrature); NaN exactly where
        the flag is masked or fit_failed.
    ew_err_fit_mA : float32
        The fit's own error, from its Jacobian (the inverse Gauss-Newton matrix with the pixel errors of ivar).
    ew_err_mc_mA : float32
        The error from Monte Carlo resampling (NaN when ``mc_draws=0``); it estimates the same as ``ew_err_fit_mA``.
    ew_upper_mA : float32
        ``max(ew_mA, 0) + detection_sigma * ew_err_mA``: the one-sided 3-sigma upper limit of the EW.
    flag_code : uint8
        Index into :data:`FLAGS`.
    reason_bits : uint16
        Why: bit i set for :data:`REASONS` [i] (several may hold; :attr:`reasons` spells them out).
    blend : bool
        Blend suspected (also for lines whose flag is upper_limit, fit_failed or masked).
    rv_kms, sigma_A, gamma_A, continuum : float32
        Fitted centre offset (km/s), Gaussian sigma and Lorentz half width (A), local continuum level.
    chi2_red : float32
        Reduced chi-square of the fit over the window.
    n_pix : int16
        Pixels used in the window.
    free_shape : bool
        True where the line kept its own free centre and width; False where the star's shared shape was used.
    shared_rv_kms, width_scale : (n_spec,) float32
        The star's shared line shape: residual RV and fitted/expected Gaussian width.
    n_shape_lines : (n_spec,) int
        Detected, unblended lines the shared shape was taken from (0: the expected shape was kept).
    detection_sigma : float
        Significance that counts as a detection.
    info : dict
        Backend, device, fit settings.
    used : (n_spec, n_lines, 2 half_width + 1) bool, optional
        Which pixels of each window (:func:`window_pixels`) the final fit used: False for masked pixels, pixels
        outside the line list's window and pixels dropped as outliers.
    """

    star_id: np.ndarray
    lines: pd.DataFrame
    ew_mA: np.ndarray
    ew_err_mA: np.ndarray
    ew_err_fit_mA: np.ndarray
    ew_err_mc_mA: np.ndarray
    ew_upper_mA: np.ndarray
    flag_code: np.ndarray
    reason_bits: np.ndarray
    blend: np.ndarray
    rv_kms: np.ndarray
    sigma_A: np.ndarray
    gamma_A: np.ndarray
    continuum: np.ndarray
    chi2_red: np.ndarray
    n_pix: np.ndarray
    free_shape: np.ndarray
    shared_rv_kms: np.ndarray
    width_scale: np.ndarray
    n_shape_lines: np.ndarray
    detection_sigma: float = 3.0
    info: dict[str, Any] = field(default_factory=dict)
    used: np.ndarray | None = None

    @property
    def n_spectra(self) -> int:
        """Number of spectra."""
        return int(self.ew_mA.shape[0])

    @property
    def n_lines(self) -> int:
        """Number of lines."""
        return int(self.ew_mA.shape[1])

    @property
    def flag(self) -> np.ndarray:
        """Flag names, (n_spec, n_lines) str."""
        return np.asarray(FLAGS, dtype=object)[self.flag_code]

    @property
    def reasons(self) -> np.ndarray:
        """The reasons behind each flag, "; "-joined, (n_spec, n_lines) str ("" for a clean line)."""
        bits = self.reason_bits.astype(np.int64)
        out = np.full(bits.shape, "", dtype=object)
        for i, text in enumerate(REASONS):
            has = (bits >> i) & 1 == 1
            out[has] = np.where(out[has] == "", text, out[has] + "; " + text)
        return out

    @property
    def detected(self) -> np.ndarray:
        """True where the EW is at least ``detection_sigma`` times its error (and the fit is usable)."""
        with np.errstate(invalid="ignore"):
            return np.isfinite(self.ew_mA) & (self.ew_mA >= self.detection_sigma * self.ew_err_mA)

    def model(self, i: int, k: int, wave: np.ndarray) -> np.ndarray:
        """Return the fitted profile of line ``k`` in spectrum ``i`` on the wavelengths ``wave`` (normalized flux).

        ``continuum * (1 - EW * V(wave - lambda_c; sigma, gamma))`` with the fitted centre, widths and local
        continuum level; NaN everywhere for a masked or failed line.
        """
        wave = np.asarray(wave, dtype=float)
        if not np.isfinite(self.ew_mA[i, k]):
            return np.full(wave.shape, np.nan)
        lam = float(self.lines["wave_vac"].iloc[k]) * (1 + float(self.rv_kms[i, k]) / SPEED_OF_LIGHT_KMS)
        v = voigt(wave - lam, float(self.sigma_A[i, k]), float(self.gamma_A[i, k]))
        return float(self.continuum[i, k]) * (1.0 - float(self.ew_mA[i, k]) * 1e-3 * v)

    def select(self, index: Any) -> EWTable:
        """Return the rows (spectra) selected by an index array or boolean mask."""
        idx = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.atleast_1d(index)
        per_line = {k: getattr(self, k)[idx] for k in _PER_LINE}
        per_star = {k: getattr(self, k)[idx] for k in ("star_id", "shared_rv_kms", "width_scale", "n_shape_lines")}
        return EWTable(lines=self.lines, detection_sigma=self.detection_sigma, info=dict(self.info), **per_line,
                       **per_star, used=None if self.used is None else self.used[idx])

    def to_frame(self) -> pd.DataFrame:
        """One row per (star, line), with the DESIGN.md columns first (:data:`EW_COLUMNS`) then the fit details."""
        n, nl = self.ew_mA.shape
        out = pd.DataFrame({
            "star_id": np.repeat(self.star_id.astype(str), nl),
            "line_wave": np.tile(self.lines["wave_vac"].to_numpy(float), n),
            "ew_mA": self.ew_mA.ravel(),
            "ew_err_mA": self.ew_err_mA.ravel(),
            "ew_upper_mA": self.ew_upper_mA.ravel(),
            "flag": self.flag.ravel(),
            "reason": self.reasons.ravel(),
            "ew_err_fit_mA": self.ew_err_fit_mA.ravel(),
            "ew_err_mc_mA": self.ew_err_mc_mA.ravel(),
            "blend_suspect": self.blend.ravel(),
            "rv_kms": self.rv_kms.ravel(),
            "sigma_A": self.sigma_A.ravel(),
            "gamma_A": self.gamma_A.ravel(),
            "continuum": self.continuum.ravel(),
            "chi2_red": self.chi2_red.ravel(),
            "n_pix": self.n_pix.ravel(),
            "free_shape": self.free_shape.ravel(),
        })
        return out

    def write_csv(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_frame` as CSV, atomically (a temporary file renamed into place)."""
        with atomic_output(path) as tmp:
            self.to_frame().to_csv(tmp, index=False, float_format="%.5g")

    def error_agreement(self) -> dict[str, float]:
        """Compare the Jacobian and Monte Carlo errors of the usable lines.

        Returns the median and the 5th/95th percentiles of ``ew_err_mc_mA / ew_err_fit_mA`` and the number of
        lines compared (NaN without Monte Carlo errors). Both estimate the same thing; a median far from 1 means
        the pixel errors or the model are off.
        """
        ok = np.isfinite(self.ew_err_fit_mA) & np.isfinite(self.ew_err_mc_mA) & (self.ew_err_fit_mA > 0)
        if not ok.any():
            return {"median_ratio": math.nan, "p05": math.nan, "p95": math.nan, "n": 0}
        r = self.ew_err_mc_mA[ok] / self.ew_err_fit_mA[ok]
        return {"median_ratio": float(np.median(r)), "p05": float(np.percentile(r, 5)),
                "p95": float(np.percentile(r, 95)), "n": int(ok.sum())}


_PER_LINE = ("ew_mA", "ew_err_mA", "ew_err_fit_mA", "ew_err_mc_mA", "ew_upper_mA", "flag_code", "reason_bits", "blend",
             "rv_kms", "sigma_A",
             "gamma_A", "continuum", "chi2_red", "n_pix", "free_shape")


# ---------------------------------------------------------------------------------------------------------------
# the public entry point
# ---------------------------------------------------------------------------------------------------------------
def measure_ew(
    batch: SpectrumBatch,
    lines: pd.DataFrame | None = None,
    *,
    backend: Backend = "numpy",
    device: str | None = None,
    params: pd.DataFrame | None = None,
    rv_tolerance: float = 10.0,
    damping: Literal["tied", "free"] = "tied",
    free_shape_snr: float = 10.0,
    detection_sigma: float = 3.0,
    mc_draws: int = 100,
    systematic_mA: float = 0.0,
    telluric_sigma: float = 0.01,
    seed: int | None = 0,
    resolution: float = R_LSF,
    half_width: int = WINDOW_HALF_WIDTH_PIX,
    chunk: int = 256,
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
    params : DataFrame, optional
        Per spectrum ``teff``, ``logg``, ``vmic``, ``feh`` (any subset), for the expected widths and the tied
        damping; missing ones take :data:`DEFAULT_PARAMS`. The expected width only starts the fits and serves
        lines too weak to fit their own; it matters little.
    rv_tolerance : float
        Largest offset (km/s) of a line centre from the rest frame (apStar spectra are already shifted).
    damping : {"tied", "free"}
        Lorentz width tied to the damping estimate of the star, or fitted (bounded to 0-0.5 A).
    free_shape_snr : float
        Significance above which a line keeps its own centre and width in the final fit.
    detection_sigma : float
        Significance of a detection; fainter lines are flagged upper_limit.
    mc_draws : int
        Monte Carlo draws for the resampled errors (0: skip them).
    systematic_mA : float
        A systematic error (mA) added in quadrature to every line's error, for what no fit of one line can see
        (a blend inside the profile, a telluric residual under it). 0 by default; on the synthetic benchmark's
        blends and telluric residuals ~1.5-2 mA brings the pulls at S/N >= 100 to unit scatter
        (``docs/ew_engine.md``).
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
    if damping not in ("tied", "free"):
        raise EWError(f"damping: expected 'tied' or 'free', found {damping!r}")
    if not rv_tolerance > 0:
        raise EWError(f"rv_tolerance: expected a positive velocity in km/s, found {rv_tolerance!r}")
    if mc_draws < 0:
        raise EWError(f"mc_draws: expected 0 or more, found {mc_draws!r}")
    lines = (load_linelist() if lines is None else lines).reset_index(drop=True)
    if batch.flux_unit != "":
        batch = normalize(batch, lines=lines).batch
    n = batch.n_spectra
    xp = _Backend(backend, device)
    idx, in_window = window_pixels(batch.wave, lines, half_width)
    lam0 = lines["wave_vac"].to_numpy(float)
    dx = (batch.wave[idx] - lam0[:, None]).astype(np.float32)                       # (L, W)
    core = np.abs(dx) <= 2.5 * 0.3                                                  # +-2.5 LSF sigma
    sig_exp, gam = _expected_widths(lam0, params, n, resolution)                    # (n, L)
    static_blend = static_blends(lines)
    rng = np.random.default_rng(seed)

    parts = []
    for start in range(0, n, chunk):
        sl = slice(start, min(start + chunk, n))
        flux = batch.flux[sl][:, idx]                                               # (m, L, W)
        ivar = batch.ivar[sl][:, idx]
        if telluric_sigma > 0 and batch.bitmask is not None:
            # a telluric correction leaves residuals where the telluric absorption was deep: count them as noise
            tell = (batch.bitmask[sl][:, idx] >> PIXMASK_BITS["SIG_TELLURIC"]) & 1 == 1
            ivar = np.where(tell & (ivar > 0), 1.0 / (1.0 / np.where(ivar > 0, ivar, 1.0) + telluric_sigma**2), ivar)
        good = ~batch.mask[sl][:, idx] & in_window[None] & np.isfinite(flux) & (ivar > 0)
        flux = np.where(good, flux, 0.0).astype(np.float32)
        w = np.where(good, ivar, 0.0).astype(np.float32)
        # degenerate windows (no pixels, no line) divide by zero on the way to their flag: no warnings for them
        with np.errstate(all="ignore"):
            parts.append(_measure_block(
                xp, dx, core, flux, w, good, lam0, sig_exp[sl], gam[sl], static_blend, rv_tolerance, damping,
                free_shape_snr, detection_sigma, mc_draws, rng, systematic_mA))
    res = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    star_id = (batch.meta["star_id"].astype(str).to_numpy() if "star_id" in batch.meta
               else np.array([f"spectrum-{i}" for i in range(n)]))
    info = {"backend": backend, "device": xp.device_name, "rv_tolerance_kms": rv_tolerance, "damping": damping,
            "telluric_sigma": telluric_sigma, "systematic_mA": systematic_mA,
            "free_shape_snr": free_shape_snr, "mc_draws": mc_draws, "half_width_pix": half_width,
            "resolution": resolution}
    return EWTable(star_id=star_id, lines=lines, detection_sigma=detection_sigma, info=info, **res)


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


# ---------------------------------------------------------------------------------------------------------------
# one block of spectra: every (spectrum, line) window is one fit, flattened to (n_fits, n_window)
# ---------------------------------------------------------------------------------------------------------------
def _measure_block(
    xp: _Backend, dx: np.ndarray, core: np.ndarray, flux: np.ndarray, w: np.ndarray, good: np.ndarray,
    lam0: np.ndarray, sig_exp: np.ndarray, gam: np.ndarray, static_blend: np.ndarray, rv_tol: float, damping: str,
    free_snr: float, det_sigma: float, mc_draws: int, rng: np.random.Generator, systematic: float,
) -> dict[str, np.ndarray]:
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
    offset_beyond = _rv_scan(x, y, w0, s_exp, lam, star_of, m, rv_tol)

    # 1. every line with the expected shape: a linear fit in (c0, EW)
    zero = np.zeros(n_fit, np.float32)
    # a deep neighbour drags the first fit's level down; clip against it, refit, clip again from scratch
    lin = _linear_fit(xp, x, y, w0, zero, s_exp, g)
    for _ in range(2):
        wt = _clip_outliers(x, y, w0, lin["model"], in_core)
        lin = _linear_fit(xp, x, y, wt, zero, s_exp, g)
    snr0 = _ratio(lin["ew"], lin["err"])

    # 2. the clearly detected lines get their own centre and width, then their own outlier clipping
    strong = (snr0 >= free_snr) & ~masked
    s_idx = np.flatnonzero(strong)
    p = np.stack([lin["c0"], lin["ew"], zero, s_exp, g], axis=1)[s_idx]
    lo = np.stack([np.full(n_fit, 0.05), np.full(n_fit, -1.0), -dl_max, 0.6 * s_exp,
                   np.zeros(n_fit) if damping == "free" else g], axis=1)[s_idx].astype(np.float32)
    hi = np.stack([np.full(n_fit, 20.0), np.full(n_fit, 3.0), dl_max, 2.5 * s_exp,
                   g + 0.5 if damping == "free" else g], axis=1)[s_idx].astype(np.float32)
    free = np.zeros((s_idx.size, _NPAR), bool)
    free[:, [_C0, _EW, _DL, _SIG]] = True
    free[:, _GAM] = damping == "free"
    xs, ys = x[s_idx], y[s_idx]
    p, _, _, _ = _fit(xp, xs, ys, w0[s_idx], p, lo, hi, free, 10)
    wt[s_idx] = _clip_outliers(xs, ys, w0[s_idx], _model(xs, p), in_core[s_idx])
    # refit from the expected shape: an outlier can have led the first fit astray
    restart = _linear_fit(xp, xs, ys, wt[s_idx], zero[s_idx], s_exp[s_idx], g[s_idx])
    p[:, _C0], p[:, _EW], p[:, _DL], p[:, _SIG] = restart["c0"], restart["ew"], zero[s_idx], s_exp[s_idx]
    p = np.clip(p, lo, hi)
    # the last polish in float64: ill-conditioned fits (errors of tens of mA) then end at the same point on every
    # backend instead of wherever float32 rounding stops them
    p, _, _, _ = _fit(xp, xs, ys, wt[s_idx], p, lo, hi, free, 10)
    p, perr, chi2_s, _ = _fit(xp, xs, ys, wt[s_idx], p, lo, hi, free, 10, double=True)
    p, perr, chi2_s = p.astype(np.float32), perr.astype(np.float32), chi2_s.astype(np.float32)

    at_bound = ((np.abs(p[:, _DL]) >= 0.98 * dl_max[s_idx]) | (p[:, _SIG] <= 1.01 * lo[:, _SIG])
                | (p[:, _SIG] >= 0.99 * hi[:, _SIG]))
    use = (_ratio(p[:, _EW], perr[:, _EW]) >= free_snr) & ~at_bound & ~blend_static[s_idx]
    shared_rv, width_scale, n_shape = _shared_shape(
        m, star_of[s_idx], p[:, _DL] / lam[s_idx] * SPEED_OF_LIGHT_KMS, perr[:, _DL] / lam[s_idx] * SPEED_OF_LIGHT_KMS,
        p[:, _SIG] / s_exp[s_idx], perr[:, _SIG] / s_exp[s_idx], use)

    # 3. all other lines with the star's shared shape: linear again, so unbiased at any signal
    w_idx = np.flatnonzero(~strong)
    dl_shared = (shared_rv[star_of] * lam / SPEED_OF_LIGHT_KMS).astype(np.float32)
    s_shared = np.clip(width_scale[star_of] * s_exp, 0.6 * s_exp, 2.5 * s_exp).astype(np.float32)
    fin = _linear_fit(xp, x[w_idx], y[w_idx], wt[w_idx], dl_shared[w_idx], s_shared[w_idx], g[w_idx])

    # gather the final parameters of every fit
    c0 = np.empty(n_fit, np.float32)
    ew = np.empty(n_fit, np.float32)
    err = np.empty(n_fit, np.float32)
    chi2 = np.empty(n_fit, np.float32)
    dl, sig = dl_shared.copy(), s_shared.copy()
    gamma = g.copy()
    model = np.empty_like(y)
    c0[w_idx], ew[w_idx], err[w_idx], chi2[w_idx], model[w_idx] = (fin[k] for k in ("c0", "ew", "err", "chi2",
                                                                                      "model"))
    c0[s_idx], ew[s_idx], err[s_idx], chi2[s_idx] = p[:, _C0], p[:, _EW], perr[:, _EW], chi2_s
    dl[s_idx], sig[s_idx], gamma[s_idx] = p[:, _DL], p[:, _SIG], p[:, _GAM]
    model[s_idx] = _model(xs, p)
    npix = (wt > 0).sum(axis=1)

    mc_err = np.full(n_fit, np.nan, np.float32)
    if mc_draws:
        mc_err[w_idx] = _linear_monte_carlo(xp, fin["v"], wt[w_idx], mc_draws, rng, fin)
        mc_err[s_idx] = _monte_carlo(xp, xs, wt[s_idx], p, lo, hi, free, mc_draws, rng)

    # the reported error: the fit's, scaled up by sqrt(reduced chi-square) where the window holds more than noise
    # (unresolved blends, telluric residuals), plus an optional systematic floor
    dof = np.maximum(npix - np.where(strong, int(free[0].sum()) if free.size else 4, 2), 1)
    chi2_red = chi2 / dof
    err_stat = err
    err = np.hypot(err * np.sqrt(np.maximum(chi2_red, 1.0)), systematic * 1e-3).astype(np.float32)

    # flags
    good_f = w0 > 0
    negative = ((y < -3.0 * np.where(good_f, 1.0 / np.sqrt(np.where(good_f, w0, 1.0)), np.inf)) & good_f).any(axis=1)
    c0_safe = np.maximum(c0, 1e-6)
    depth = 1.0 - np.where(wt > 0, model, np.inf).min(axis=1) / c0_safe
    floor = np.where((wt > 0) & in_core, y, np.inf).min(axis=1) / c0_safe
    detected = ew >= det_sigma * err
    saturated = (depth > 0.9) | ((floor < 0.05) & detected)
    n_core_fit = ((wt > 0) & in_core).sum(axis=1)
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
    rv_err[s_idx] = perr[:, _DL]
    sig_err = np.zeros(n_fit, np.float32)
    sig_err[s_idx] = perr[:, _SIG]
    # an unresolved neighbour widens a line and shifts it; both are measured against the star's shared shape
    width_off = strong & (n_shape[star_of] > 0) & (
        sig - s_shared > np.maximum(BLEND_TESTS["width_sigma"] * sig_err, (BLEND_TESTS["width_ratio"] - 1) * s_shared))
    rv_off = strong & (np.abs(dl - dl_shared) > np.maximum(BLEND_TESTS["rv_sigma"] * rv_err,
                                                           lam * BLEND_TESTS["rv_kms"] / SPEED_OF_LIGHT_KMS))
    ragged = detected & (chi2_red > 1.0 + BLEND_TESTS["chi2_sigma"] * np.sqrt(2.0 / dof))
    blend = blend_static | width_off | rv_off | ragged
    for bit, cond in enumerate((width_off, rv_off, ragged, ~detected & ~masked & ~failed), start=7):
        why |= np.where(cond, 1 << bit, 0).astype(np.uint16)
    code = np.full(n_fit, _OK, np.uint8)
    code[blend] = _BLEND
    code[~detected] = _UPPER
    code[failed] = _FAILED
    code[masked] = _MASKED
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
        "used": (wt > 0).reshape(m, nl, nw),
    }


def _rv_scan(x: np.ndarray, y: np.ndarray, w: np.ndarray, sig: np.ndarray, lam: np.ndarray, star_of: np.ndarray,
             m: int, rv_tol: float) -> np.ndarray:
    """Find stars whose lines all sit beyond the RV tolerance: the spectrum is not in the rest frame it claims.

    Each window gets, at trial velocities out to 3x ``rv_tol``, a linear fit of a Gaussian absorption line (free
    level and depth), and the velocity where that fit gains most chi-square is the line's own RV. A blend puts a
    single line's peak somewhere off; a wrong rest frame puts *all* detected lines at the same offset. So a star is
    flagged where at least 3 lines peak at >= 5 sigma beyond the tolerance, within 4 km/s of each other, and
    they are at least half of its lines that peak at >= 5 sigma anywhere.
    """
    step = 2.0
    grid = np.arange(-3 * rv_tol, 3 * rv_tol + 0.5 * step, step)
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
    peak_rv = grid[np.argmax(gain, axis=1)]
    significant = gain.max(axis=1) >= 25.0
    out = significant & (np.abs(peak_rv) > rv_tol + 1e-6)
    n_sig = np.bincount(star_of, significant, minlength=m)
    beyond = np.zeros(m, bool)
    for i in np.flatnonzero(np.bincount(star_of, out, minlength=m) >= 3):
        v = peak_rv[out & (star_of == i)]
        n_cluster = (np.abs(v - np.median(v)) <= 4.0).sum()
        beyond[i] = n_cluster >= 3 and n_cluster >= 0.5 * n_sig[i]
    return beyond


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.where(np.isfinite(a) & (b > 0), a / np.where(b > 0, b, 1.0), 0.0)


def _linear_fit(xp: _Backend, x: np.ndarray, y: np.ndarray, w: np.ndarray, dl: np.ndarray, sig: np.ndarray,
                gam: np.ndarray) -> dict[str, np.ndarray]:
    """Fit ``c0 (1 - EW V)`` with the profile's centre and widths fixed: exact weighted least squares.

    With ``B = c0 EW`` the model ``c0 - B V`` is linear, so the 2x2 normal equations give c0 and B directly,
    and the error of ``EW = B / c0`` follows from their covariance (the same number as the Jacobian of the
    nonlinear fit at its solution). Returns numpy arrays: c0, ew, err, chi2, the profile ``v`` and the model.
    """
    xt, yt, wt = xp.asarray(x), xp.asarray(y), xp.asarray(w)
    v = voigt(xt - xp.asarray(dl)[:, None], xp.asarray(sig)[:, None], xp.asarray(gam)[:, None])
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


def _linear_monte_carlo(xp: _Backend, v: np.ndarray, w: np.ndarray, draws: int, rng: np.random.Generator,
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


def _shared_shape(
    m: int, star: np.ndarray, rv: np.ndarray, rv_err: np.ndarray, ratio: np.ndarray, ratio_err: np.ndarray,
    use: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per star: weighted medians of the line RVs (km/s) and fitted/expected widths over >= 3 good lines."""
    shared_rv = np.zeros(m, np.float32)
    scale = np.ones(m, np.float32)
    n_use = np.bincount(star[use], minlength=m)
    for i in np.flatnonzero(n_use >= 3):
        sel = use & (star == i)
        shared_rv[i] = _weighted_median(rv[sel], 1.0 / np.maximum(rv_err[sel], 1e-3) ** 2)
        scale[i] = _weighted_median(ratio[sel], 1.0 / np.maximum(ratio_err[sel], 1e-4) ** 2)
    return shared_rv, scale, np.where(n_use >= 3, n_use, 0)


def _weighted_median(x: np.ndarray, w: np.ndarray) -> float:
    order = np.argsort(x)
    cum = np.cumsum(w[order])
    return float(x[order][np.searchsorted(cum, 0.5 * cum[-1])])


def _clip_outliers(x: np.ndarray, y: np.ndarray, w: np.ndarray, model: np.ndarray, core: np.ndarray) -> np.ndarray:
    """Drop pixels > 5 sigma above the fit, and pixels > 3 sigma below it outside the core (grown by 1 pixel).

    Both measured from the median residual of the pixels outside the core.

    Where more than half of the usable pixels outside the core would go, the window is crowded with lines (a
    metal-rich star) and there is no continuum to protect: the low clipping is then skipped, and the fit's
    residuals flag the line as a suspected blend.
    """
    z = (y - model) * np.sqrt(w)
    # residuals are measured from their median in the wings, so that a fit whose level a deep neighbour dragged
    # down does not see the whole continuum as "high"
    wing_z = np.where((w > 0) & ~core, z, np.nan)
    all_nan = ~np.isfinite(wing_z).any(axis=1)
    wing_z[all_nan] = 0.0
    z = z - np.nanmedian(wing_z, axis=1)[:, None]
    high = z > 5.0
    low = (z < -3.0) & ~core
    low[:, 1:] |= low[:, :-1].copy()
    low[:, :-1] |= low[:, 1:].copy()
    low &= ~core & (w > 0)
    wing = ((w > 0) & ~core).sum(axis=1)
    crowded = low.sum(axis=1) > 0.5 * wing
    low[crowded] = False
    return np.where(high | low, 0.0, w).astype(np.float32)


def _model(x: np.ndarray, p: np.ndarray) -> np.ndarray:
    v = voigt(x - p[:, _DL, None], p[:, _SIG, None], p[:, _GAM, None])
    return (p[:, _C0, None] * (1.0 - p[:, _EW, None] * v)).astype(np.float32)


def _monte_carlo(xp: _Backend, x: np.ndarray, w: np.ndarray, p: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                 free: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """EW scatter over ``draws`` free-shape refits of the best-fit model plus the flux's own noise."""
    n = x.shape[0]
    if n == 0:
        return np.zeros(0, np.float32)
    sigma = np.where(w > 0, 1.0 / np.sqrt(np.where(w > 0, w, 1.0)), 0.0).astype(np.float32)
    model = _model(x, p)
    ew = np.empty((draws, n), np.float32)
    per = max(1, (1 << 21) // (n * x.shape[1]))
    for d0 in range(0, draws, per):
        k = min(per, draws - d0)
        noisy = model[None] + sigma[None] * rng.standard_normal((k, *model.shape), dtype=np.float32)

        def tile(a: np.ndarray, k: int = k) -> np.ndarray:
            return np.broadcast_to(a, (k, *a.shape)).reshape(k * n, *a.shape[1:])

        q, _, _, _ = _fit(xp, tile(x), noisy.reshape(k * n, -1), tile(w), tile(p), tile(lo), tile(hi), tile(free), 6)
        ew[d0:d0 + k] = q[:, _EW].reshape(k, n)
    return ew.std(axis=0, ddof=1)


# ---------------------------------------------------------------------------------------------------------------
# the batched Levenberg-Marquardt solver (numpy or torch)
# ---------------------------------------------------------------------------------------------------------------
def _fit(
    xp: _Backend, dx: np.ndarray, flux: np.ndarray, w: np.ndarray, p0: np.ndarray, lo: np.ndarray, hi: np.ndarray,
    free: np.ndarray, n_iter: int, double: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fit every window at once; returns parameters, their 1-sigma errors, chi-square and pixel counts (numpy).

    Box-bounded Levenberg-Marquardt: each step solves ``(H + lambda diag H) dp = J^T W r`` for all fits at once,
    clips the new parameters into their bounds, and keeps the step only where chi-square went down (lambda / 3),
    otherwise raises lambda (x 4). Parameters not in ``free`` stay put.
    """
    def t(a: np.ndarray) -> Any:
        return xp.asarray(a, double)

    x, y, wt = t(dx), t(flux), t(w)
    p, lo_, hi_ = t(p0), t(lo), t(hi)
    fr = t(free.astype(np.float32))
    lam = xp.full(p.shape[:-1], 1e-3, like=p)
    chi2, jtj, jtr = _normal_equations(xp, x, y, wt, p, fr)
    for _ in range(n_iter):
        diag = xp.stack([jtj[..., i, i] for i in range(_NPAR)], -1)
        damped = jtj + xp.diag_embed(diag * lam[..., None] + (1.0 - fr))
        step = _solve_spd(xp, damped, jtr) * fr
        trial = xp.minimum(xp.maximum(p + step, lo_), hi_)
        chi2_t, jtj_t, jtr_t = _normal_equations(xp, x, y, wt, trial, fr)
        better = chi2_t < chi2
        b = better[..., None]
        p = xp.where(b, trial, p)
        chi2 = xp.where(better, chi2_t, chi2)
        jtj = xp.where(b[..., None], jtj_t, jtj)
        jtr = xp.where(b, jtr_t, jtr)
        lam = xp.where(better, xp.maximum(lam / 3.0, 1e-7), xp.minimum(lam * 4.0, 1e7))
    # errors: the diagonal of the inverse Gauss-Newton matrix (fixed parameters decoupled by the unit diagonal)
    cov_diag = _inverse_diagonal(xp, jtj + xp.diag_embed(1.0 - fr))
    err = xp.sqrt(xp.maximum(cov_diag, 0.0)) * fr
    npix = (wt > 0).sum(-1)
    return xp.numpy(p), xp.numpy(err), xp.numpy(chi2), xp.numpy(npix)


def _normal_equations(xp: _Backend, x: Any, y: Any, w: Any, p: Any, free: Any) -> tuple[Any, Any, Any]:
    """Chi-square, J^T W J (..., 5, 5) and J^T W r (..., 5) of the Voigt model at ``p``."""
    c0, ew, dl, sig, gam = (p[..., i:i + 1] for i in range(_NPAR))
    v, v_x, v_s, v_g = voigt_and_derivatives(x - dl, sig, gam)
    model = c0 * (1.0 - ew * v)
    r = y - model
    chi2 = (w * r * r).sum(-1)
    a = c0 * ew
    jac = [1.0 - ew * v, -c0 * v, a * v_x, -a * v_s, -a * v_g]   # d model / d (c0, EW, d_lambda, sigma, gamma)
    jac = [j * free[..., i:i + 1] for i, j in enumerate(jac)]
    wj = [w * j for j in jac]
    rows = []
    for i in range(_NPAR):
        rows.append(xp.stack([(wj[i] * jac[k]).sum(-1) for k in range(_NPAR)], -1))
    jtj = xp.stack(rows, -2)
    jtr = xp.stack([(wj[i] * r).sum(-1) for i in range(_NPAR)], -1)
    return chi2, jtj, jtr


def _cholesky(xp: _Backend, a: Any) -> list[list[Any]]:
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


def _solve_spd(xp: _Backend, a: Any, b: Any) -> Any:
    """Solve ``a x = b`` for a batch of small SPD matrices, elementwise (much faster than batched LAPACK here)."""
    n = a.shape[-1]
    low = _cholesky(xp, a)
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


def _inverse_diagonal(xp: _Backend, a: Any) -> Any:
    """Diagonal of the inverse of a batch of small SPD matrices (via the inverse Cholesky factor)."""
    n = a.shape[-1]
    low = _cholesky(xp, a)
    # inv(A) = inv(L)^T inv(L); diag = column sums of squares of inv(L)
    inv: list[list[Any]] = [[None] * n for _ in range(n)]
    for j in range(n):
        inv[j][j] = 1.0 / low[j][j]
        for i in range(j + 1, n):
            s = 0.0
            for k in range(j, i):
                s = s + low[i][k] * inv[k][j]
            inv[i][j] = -s / low[i][i]
    return xp.stack([sum(inv[i][j] * inv[i][j] for i in range(j, n)) for j in range(n)], -1)


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
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


def _expected_widths(lam0: np.ndarray, params: pd.DataFrame | None, n: int,
                     resolution: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the expected Gaussian sigma and the tied Lorentz half width (A), (n, L) float32."""
    vals = {}
    for k, default in DEFAULT_PARAMS.items():
        col = None if params is None or k not in params else pd.to_numeric(params[k], errors="coerce").to_numpy(float)
        if col is not None and len(col) != n:
            raise EWError(f"params: expected {n} rows (one per spectrum), found {len(col)}")
        vals[k] = np.where(np.isfinite(col), col, default) if col is not None else np.full(n, default)
    sig = gaussian_sigma(lam0[None], vals["teff"][:, None], vals["vmic"][:, None], resolution)
    gam = lorentz_hwhm(lam0[None], vals["teff"][:, None], vals["logg"][:, None], vals["feh"][:, None])
    return sig.astype(np.float32), np.broadcast_to(gam, sig.shape).astype(np.float32)


class _Backend:
    """The few array operations the solver needs, on numpy or on torch (any device)."""

    def __init__(self, name: str, device: str | None) -> None:
        self.name = name
        if name == "torch":
            import torch

            self._t = torch
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            self.device_name = str(self.device)
        else:
            self.device_name = "cpu"

    def asarray(self, a: np.ndarray, double: bool = False) -> Any:
        if self.name == "torch":
            dtype = self._t.float64 if double else self._t.float32
            return self._t.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=self.device)
        return np.asarray(a, dtype=np.float64 if double else np.float32)

    def numpy(self, a: Any) -> np.ndarray:
        return a.detach().cpu().numpy() if self.name == "torch" else np.asarray(a)

    def full(self, shape: tuple[int, ...], value: float, like: Any = None) -> Any:
        if self.name == "torch":
            dtype = like.dtype if like is not None else self._t.float32
            return self._t.full(shape, value, dtype=dtype, device=self.device)
        return np.full(shape, value, like.dtype if like is not None else np.float32)

    def stack(self, arrays: list[Any], axis: int) -> Any:
        return self._t.stack(arrays, axis) if self.name == "torch" else np.stack(arrays, axis)

    def diag_embed(self, d: Any) -> Any:
        if self.name == "torch":
            return self._t.diag_embed(d)
        out = np.zeros((*d.shape, d.shape[-1]), d.dtype)
        i = np.arange(d.shape[-1])
        out[..., i, i] = d
        return out

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        return self._t.where(cond, a, b) if self.name == "torch" else np.where(cond, a, b)

    def maximum(self, a: Any, b: Any) -> Any:
        if self.name == "torch":
            return self._t.clamp(a, min=b) if not self._t.is_tensor(b) else self._t.maximum(a, b)
        return np.maximum(a, b)

    def minimum(self, a: Any, b: Any) -> Any:
        if self.name == "torch":
            return self._t.clamp(a, max=b) if not self._t.is_tensor(b) else self._t.minimum(a, b)
        return np.minimum(a, b)

    def sqrt(self, a: Any) -> Any:
        return self._t.sqrt(a) if self.name == "torch" else np.sqrt(a)


# ---------------------------------------------------------------------------------------------------------------
# the naive baseline, kept for comparison
# ---------------------------------------------------------------------------------------------------------------
def curve_fit_baseline(
    batch: SpectrumBatch,
    lines: pd.DataFrame | None = None,
    *,
    rv_tolerance: float = 10.0,
    detection_sigma: float = 3.0,
    resolution: float = R_LSF,
    half_width: int = WINDOW_HALF_WIDTH_PIX,
) -> EWTable:
    """Measure EWs the naive way: one bounded ``scipy.optimize.curve_fit`` per line, in a Python loop.

    The same Voigt model on a local continuum level (free c0, EW, centre within ``rv_tolerance``, Gaussian
    width within 0.6-2.5x the expected one; damping tied), with ``scipy.special.voigt_profile`` and errors
    from the covariance curve_fit returns (``absolute_sigma=True``). No shared line shape, no outlier clipping,
    no blend tests: flags are only masked, fit_failed, upper_limit and ok. It is here to be compared with
    :func:`measure_ew` (``scripts/bench_ew.py``), not to be used.
    """
    from scipy.optimize import curve_fit
    from scipy.special import voigt_profile

    lines = (load_linelist() if lines is None else lines).reset_index(drop=True)
    if batch.flux_unit != "":
        batch = normalize(batch, lines=lines).batch
    n, nl = batch.n_spectra, len(lines)
    idx, in_window = window_pixels(batch.wave, lines, half_width)
    lam0 = lines["wave_vac"].to_numpy(float)
    sig_exp, gam = _expected_widths(lam0, None, n, resolution)
    out = {k: np.full((n, nl), np.nan, np.float32) for k in ("ew_mA", "ew_err_mA", "rv_kms", "sigma_A", "continuum",
                                                             "chi2_red", "ew_err_fit_mA")}
    code = np.full((n, nl), _MASKED, np.uint8)
    n_pix = np.zeros((n, nl), np.int16)
    for i in range(n):
        for k in range(nl):
            sel = idx[k][in_window[k] & ~batch.mask[i, idx[k]]]
            n_pix[i, k] = sel.size
            if sel.size < 12:
                continue
            x = batch.wave[sel] - lam0[k]
            y = batch.flux[i, sel].astype(float)
            err = 1.0 / np.sqrt(batch.ivar[i, sel].astype(float))
            g, s0, dl_max = float(gam[i, k]), float(sig_exp[i, k]), lam0[k] * rv_tolerance / SPEED_OF_LIGHT_KMS

            def model(x: np.ndarray, c0: float, ew: float, dl: float, sig: float, g: float = g) -> np.ndarray:
                return c0 * (1.0 - ew * voigt_profile(x - dl, sig, g))

            try:
                p, cov = curve_fit(model, x, y, p0=(1.0, 0.02, 0.0, s0), sigma=err, absolute_sigma=True,
                                   bounds=([0.05, -1.0, -dl_max, 0.6 * s0], [20.0, 3.0, dl_max, 2.5 * s0]))
            except (RuntimeError, ValueError):
                code[i, k] = _FAILED
                continue
            e = float(np.sqrt(cov[1, 1])) if np.isfinite(cov[1, 1]) and cov[1, 1] > 0 else np.nan
            out["ew_mA"][i, k], out["ew_err_mA"][i, k], out["ew_err_fit_mA"][i, k] = p[1] * 1e3, e * 1e3, e * 1e3
            out["rv_kms"][i, k] = p[2] / lam0[k] * SPEED_OF_LIGHT_KMS
            out["sigma_A"][i, k], out["continuum"][i, k] = p[3], p[0]
            out["chi2_red"][i, k] = np.sum(((y - model(x, *p)) / err) ** 2) / max(sel.size - 4, 1)
            code[i, k] = _FAILED if not np.isfinite(e) else (_OK if p[1] >= detection_sigma * e else _UPPER)
    failed = code >= _FAILED
    for key in ("ew_mA", "ew_err_mA", "ew_err_fit_mA"):
        out[key][failed] = np.nan
    star_id = (batch.meta["star_id"].astype(str).to_numpy() if "star_id" in batch.meta
               else np.array([f"spectrum-{i}" for i in range(n)]))
    return EWTable(
        star_id=star_id, lines=lines, ew_err_mc_mA=np.full((n, nl), np.nan, np.float32),
        ew_upper_mA=np.maximum(out["ew_mA"], 0) + detection_sigma * out["ew_err_mA"], flag_code=code,
        reason_bits=np.where(code == _MASKED, 1, np.where(code == _FAILED, 2, 0)).astype(np.uint16),
        blend=np.zeros((n, nl), bool), gamma_A=gam, n_pix=n_pix, free_shape=np.ones((n, nl), bool),
        shared_rv_kms=np.zeros(n, np.float32), width_scale=np.ones(n, np.float32), n_shape_lines=np.zeros(n, int),
        detection_sigma=detection_sigma, info={"backend": "scipy curve_fit loop"}, **out)
