"""Continuum normalization: divide each spectrum by a smooth polynomial fitted, per detector, to line-free pixels.

An equivalent width is measured against the continuum, so an error in the continuum is an error in every EW:
1% too low a continuum under a 20 mA line at FWHM 0.7 A shifts its EW by ~7 mA, more than its noise at S/N 100.
The continuum of an APOGEE apStar spectrum is the star's smooth spectral slope times the instrument response of
each of the three detectors, so fehkit fits one low-order Legendre polynomial per detector (``order=3``). The fit
must see only continuum: absorption lines pull a plain least-squares fit down. So the fit is iterated, and each
time pixels more than ``low`` sigma *below* it (absorption, at most a few noise sigma deep in an EMP star) or more
than ``high`` sigma *above* it (cosmic rays, sky residuals) are dropped; the clipping is asymmetric because lines
only absorb. Masked, NaN and zero-ivar pixels and the cores of the packaged Fe lines never enter the fit. Clipping
a Gaussian noise distribution at -low/+high sigma leaves its mean ``delta`` sigma high (0.05 sigma for 2/3), which
the fit removes; sigma is the pixel error from ``ivar`` times the robust scatter of the residuals, so a spectrum
whose ``ivar`` is off by a factor is clipped at the right depth all the same.

Everything is vectorized over the batch: each iteration solves the (order + 1)-square normal equations of every
spectrum at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.polynomial import legendre
from scipy.special import ndtr

from fehkit.display import counts, html_summary, text_summary
from fehkit.errors import FehkitError
from fehkit.lines import load_linelist
from fehkit.spectra import CHIPS, SpectrumBatch

#: Half width (A) of the Fe line cores kept out of the continuum fit: 2 FWHM of the LSF at R = 22,500.
LINE_CORE_HALF_WIDTH_A = 1.4

#: Spectra are fitted in blocks of this many (bounds the memory of the float64 work arrays).
_BLOCK = 256


class ContinuumError(FehkitError, ValueError):
    """Arguments of :func:`normalize` that cannot work (a negative order, clipping limits <= 0)."""


@dataclass
class Normalized:
    """Result of :func:`normalize`; unpacks as ``batch, continuum, diagnostics``.

    Attributes
    ----------
    batch : SpectrumBatch
        Continuum-normalized spectra (``flux_unit`` ""): flux / continuum, ivar * continuum**2, and the mask
        extended to pixels without a continuum (chip gaps, detectors that could not be fitted).
    continuum : (n_spec, n_pix) float32
        The fitted continuum in the input's flux units; NaN off the detectors and on failed detectors.
    diagnostics : pandas.DataFrame
        One row per (spectrum, detector): ``star_id``, ``chip``, ``n_pixels`` (usable), ``n_used`` (in the
        final fit), ``n_iter``, ``converged``, ``noise_scale`` (robust scatter of the residuals in units of the
        ``ivar`` error: ~1 when ``ivar`` is right), ``flag`` ("ok" or "too_few_pixels") and the Legendre
        coefficients ``coef_0 .. coef_<order>`` on the detector's wavelength range mapped to [-1, 1].
    """

    batch: SpectrumBatch
    continuum: np.ndarray
    diagnostics: pd.DataFrame

    def __iter__(self):  # noqa: ANN204 -- lets ``batch, continuum, diagnostics = normalize(...)`` work
        return iter((self.batch, self.continuum, self.diagnostics))

    def _facts(self) -> list[tuple[str, object]]:
        return [("spectra", self.batch.n_spectra), ("pixels", self.batch.n_pixels),
                ("detector fits", counts(self.diagnostics["flag"]) if "flag" in self.diagnostics else "none")]

    def __repr__(self) -> str:
        return text_summary("Normalized", self._facts())

    def _repr_html_(self) -> str:
        return html_summary("Normalized: continuum-normalized spectra", self._facts())


def normalize(
    batch: SpectrumBatch,
    order: int = 3,
    *,
    low: float = 2.0,
    high: float = 3.0,
    max_iter: int = 10,
    lines: pd.DataFrame | None = None,
    chips: Mapping[str, tuple[float, float]] = CHIPS,
    min_pixels: int = 100,
) -> Normalized:
    """Fit and divide out the continuum of every spectrum, one polynomial per detector.

    Parameters
    ----------
    batch : SpectrumBatch
        Spectra in flux units (or already normalized ones: they are fitted again, which is harmless).
    order : int
        Degree of the Legendre polynomial on each detector.
    low, high : float
        Clipping limits in noise sigma below and above the fit (asymmetric: lines only absorb).
    max_iter : int
        Most fit-and-clip iterations; the loop stops earlier once no spectrum's pixel selection changes.
    lines : DataFrame, optional
        Line list whose line cores (+-1.4 A) are kept out of the fit; default the packaged Fe I list. Pass an
        empty DataFrame to keep them in.
    chips : mapping of name -> (lo, hi)
        Wavelength range (A) of each detector; default the APOGEE detectors.
    min_pixels : int
        Fewest usable pixels a detector needs; with fewer its continuum is NaN and its pixels masked.

    Returns
    -------
    Normalized
        ``batch`` (normalized), ``continuum`` and per-detector ``diagnostics``.

    Examples
    --------
    >>> from fehkit.synth import simulate
    >>> sim = simulate({"teff": [4800], "logg": [1.5], "feh": [-2.5], "vmic": [1.8], "snr": [200]}, seed=3)
    >>> norm_batch, continuum, diag = normalize(sim.batch)
    >>> good = ~norm_batch.mask
    >>> err = abs(continuum[good] / sim.continuum[good] - 1)
    >>> bool(float(np.median(err)) < 0.002), list(diag.flag)
    (True, ['ok', 'ok', 'ok'])
    """
    if order < 0 or int(order) != order:
        raise ContinuumError(f"order: expected a non-negative integer, found {order!r}")
    if not (low > 0 and high > 0):
        raise ContinuumError(f"low/high: expected clipping limits > 0 sigma, found low={low!r}, high={high!r}")
    lines = load_linelist() if lines is None else lines
    wave = batch.wave
    n = batch.n_spectra
    core = np.zeros(wave.size, bool)
    for lam in np.asarray(lines["wave_vac"] if len(lines) else [], float):
        core |= np.abs(wave - lam) <= LINE_CORE_HALF_WIDTH_A
    # mean of a unit normal kept between -low and +high: the clipped fit sits this many sigma too high
    bias = float((_normal_pdf(low) - _normal_pdf(high)) / (ndtr(high) - ndtr(-low)))

    continuum = np.full(batch.flux.shape, np.nan, np.float32)
    rows = []
    ids = batch.meta["star_id"].astype(str).to_numpy() if "star_id" in batch.meta else np.arange(n).astype(str)
    for name, (lo, hi) in chips.items():
        sel = np.flatnonzero((wave >= lo) & (wave <= hi))
        if sel.size == 0:
            continue
        x = 2.0 * (wave[sel] - lo) / (hi - lo) - 1.0
        basis = legendre.legvander(x, order)                        # (n_sel, order+1)
        for start in range(0, n, _BLOCK):
            blk = slice(start, min(start + _BLOCK, n))
            fit = _fit_chip(batch.flux[blk, sel], batch.ivar[blk, sel], batch.mask[blk, sel], ~core[sel], basis,
                            low, high, bias, max_iter, min_pixels)
            continuum[blk, sel] = fit["continuum"]
            for i in range(fit["continuum"].shape[0]):
                row = {"star_id": ids[start + i], "chip": name, "n_pixels": int(fit["n_pixels"][i]),
                       "n_used": int(fit["n_used"][i]), "n_iter": int(fit["n_iter"][i]),
                       "converged": bool(fit["converged"][i]), "noise_scale": float(fit["scale"][i]),
                       "flag": "ok" if fit["ok"][i] else "too_few_pixels"}
                row.update({f"coef_{k}": float(c) for k, c in enumerate(fit["coef"][i])})
                rows.append((start + i, row))
    rows.sort(key=lambda r: r[0])
    diagnostics = pd.DataFrame([r for _, r in rows])

    with np.errstate(invalid="ignore", divide="ignore"):
        no_continuum = ~(continuum > 0)
        flux = np.where(no_continuum, np.nan, batch.flux / continuum).astype(np.float32)
        ivar = np.where(no_continuum, 0.0, batch.ivar * continuum * continuum).astype(np.float32)
    out = SpectrumBatch(wave, flux, ivar, batch.mask | no_continuum, batch.meta.copy(), bitmask=batch.bitmask,
                        flux_unit="", skipped=list(batch.skipped))
    return Normalized(out, continuum, diagnostics)


def _fit_chip(
    flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray, line_free: np.ndarray, basis: np.ndarray,
    low: float, high: float, bias: float, max_iter: int, min_pixels: int,
) -> dict[str, np.ndarray]:
    """Fit one detector of a block of spectra: an iteratively clipped, weighted polynomial.

    flux, ivar, mask : (n, n_sel); line_free : (n_sel,); basis : (n_sel, k). Returns the continuum (n, n_sel)
    float32 (NaN where the fit failed), and per spectrum the coefficients in units of the flux, pixel counts,
    iterations, convergence, noise scale and success.
    """
    n, k = flux.shape[0], basis.shape[1]
    usable = ~mask & np.isfinite(flux) & (ivar > 0)
    y = np.where(usable, flux, 0.0).astype(np.float64)
    w = np.where(usable, ivar, 0.0).astype(np.float64)   # float64 while scaling; float32 for the iterations
    # work in units of each spectrum's median level, so the normal equations are well scaled
    level = np.ones(n)
    for i in range(n):
        if usable[i].any():
            level[i] = np.median(y[i, usable[i]]) or 1.0
    level = np.where(level > 0, level, np.abs(level) + 1.0)
    y /= level[:, None]
    w *= level[:, None] ** 2
    y, w = y.astype(np.float32), w.astype(np.float32)
    sqrt_w = np.sqrt(w)
    sigma = np.where(w > 0, 1.0 / np.where(w > 0, sqrt_w, 1.0), 0.0)   # 0 where unusable: never kept

    ok = usable.sum(axis=1) >= max(min_pixels, 2 * k)
    keep = usable & line_free[None, :] & ok[:, None]
    scale = np.ones(n)
    converged = np.zeros(n, bool)
    n_iter = np.zeros(n, int)
    coef = np.zeros((n, k))
    model = np.zeros_like(y)
    basis_t = basis.T.astype(np.float32)
    for it in range(max_iter):
        # spectra still iterating (the others keep their final fit); a slice while all are, to avoid copies
        act = slice(None) if not converged.any() else np.flatnonzero(~converged)
        # the kept pixels of a noise-only continuum sit bias * scale * sigma above it on average
        target = y[act] - bias * scale[act, None] * sigma[act] * (it > 0)
        coef[act] = _weighted_lstsq(basis, target, w[act] * keep[act])
        model[act] = coef[act].astype(np.float32) @ basis_t
        resid = (y[act] - model[act]) * sqrt_w[act]
        # the first fit saw unclipped pixels; later ones saw pixels clipped at -low/+high scale
        lim = (low, high) if it > 0 else (np.inf, np.inf)
        scale[act] = _clipped_scale(resid, keep[act], *lim)
        new_keep = usable[act] & line_free[None, :] & ok[act, None]
        new_keep &= (resid > -low * scale[act, None]) & (resid < high * scale[act, None])
        # converged once (almost) no pixel changes side: a few noise pixels can flip at the limits forever
        changed = (new_keep != keep[act]).sum(axis=1) > 2e-3 * np.maximum(keep[act].sum(axis=1), 1)
        n_iter[act] = it + 1
        keep[act] = new_keep
        converged[np.arange(n)[act][~changed]] = True
        if converged.all():
            break
    ok &= keep.sum(axis=1) >= max(min_pixels // 2, 2 * k)
    cont = np.where(ok[:, None], model * level[:, None], np.nan).astype(np.float32)
    return {"continuum": cont, "coef": coef * level[:, None], "n_pixels": usable.sum(axis=1),
            "n_used": keep.sum(axis=1), "n_iter": n_iter, "converged": converged, "scale": scale, "ok": ok}


def _weighted_lstsq(basis: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Solve the weighted least-squares problem of every row of ``y`` at once: (n, k) coefficients."""
    n_sel, k = basis.shape
    # two plain matrix products (BLAS) build all normal equations: A_i = sum_p w_ip B_p B_p^T, b_i = sum_p w_ip y_ip B_p
    outer = (basis[:, :, None] * basis[:, None, :]).reshape(n_sel, k * k)
    a = (w.astype(np.float64) @ outer).reshape(-1, k, k)
    b = (w * y).astype(np.float64) @ basis
    a += np.eye(k) * 1e-12 * np.maximum(np.trace(a, axis1=1, axis2=2), 1e-30)[:, None, None]
    return np.linalg.solve(a, b[..., None])[..., 0]


def _clipped_scale(resid: np.ndarray, keep: np.ndarray, low: float, high: float) -> np.ndarray:
    """Noise scale from the rms of the kept residuals, corrected for the clipping (fast: no median).

    A unit normal kept between -low and +high has rms ``sqrt(var + mean**2)`` < 1; dividing by it gives the
    scale of the noise that was clipped. Clipped to 0.3-10 so that one bad iteration cannot run away.
    """
    a, b = -low, high
    z = ndtr(b) - ndtr(a)
    tails = (a * _normal_pdf(a) if np.isfinite(a) else 0.0) - (b * _normal_pdf(b) if np.isfinite(b) else 0.0)
    second_moment = 1.0 + tails / z
    n_kept = keep.sum(axis=1)
    with np.errstate(all="ignore"):
        rms = np.sqrt(np.where(keep, resid * resid, 0.0).sum(axis=1) / n_kept)
    scale = rms / np.sqrt(second_moment)
    return np.clip(np.where(np.isfinite(scale), scale, 1.0), 0.3, 10.0)


def _normal_pdf(x: float | np.ndarray) -> float | np.ndarray:
    """Return the standard normal density (all the continuum needs of scipy.stats, which is slow to import)."""
    return np.exp(-0.5 * np.square(x)) / np.sqrt(2.0 * np.pi)
