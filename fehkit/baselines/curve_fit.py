"""The naive way to measure EWs, kept as the speed and accuracy baseline of ``fehkit bench``.

One bounded ``scipy.optimize.curve_fit`` per line and spectrum, in Python loops: what a first script does, and
what the batched engine (:func:`fehkit.ew.measure_ew`) is measured against.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fehkit.constants import SPEED_OF_LIGHT_KMS
from fehkit.continuum import normalize
from fehkit.ew import EWTable, window_pixels
from fehkit.ew.measure import expected_widths
from fehkit.ew.table import FLAG_FAILED as _FAILED
from fehkit.ew.table import FLAG_MASKED as _MASKED
from fehkit.ew.table import FLAG_OK as _OK
from fehkit.ew.table import FLAG_UPPER as _UPPER
from fehkit.lines import WINDOW_HALF_WIDTH_PIX, load_linelist
from fehkit.physics.broadening import R_LSF
from fehkit.spectra import SpectrumBatch

__all__ = ["curve_fit_baseline"]


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
    :func:`fehkit.ew.measure_ew`, not to be used.
    """
    from scipy.optimize import curve_fit
    from scipy.special import voigt_profile

    lines = (load_linelist() if lines is None else lines).reset_index(drop=True)
    if batch.flux_unit != "":
        batch = normalize(batch, lines=lines).batch
    n, nl = batch.n_spectra, len(lines)
    idx, in_window = window_pixels(batch.wave, lines, half_width)
    lam0 = lines["wave_vac"].to_numpy(float)
    sig_exp, gam = expected_widths(lam0, None, n, resolution)
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
