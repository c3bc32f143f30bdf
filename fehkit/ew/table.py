"""The result of the EW stage: :class:`EWTable`, one row per spectrum and one column per line, with flags.

Every array is shaped (n_spectra, n_lines). A line's flag says what the EW can be used for (``ok``,
``upper_limit``, ``blend_suspect``, ``fit_failed``, ``masked``, in rising priority) and ``reason_bits`` why;
``ew_mA`` is NaN exactly when the flag is masked or fit_failed. :meth:`EWTable.to_frame` gives the long table of
``fehkit ew`` (one row per star and line).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fehkit.constants import SPEED_OF_LIGHT_KMS
from fehkit.display import counts, html_summary, text_summary
from fehkit.errors import FehkitError
from fehkit.files import write_table
from fehkit.profiles import voigt

#: Flag names, in order of priority, and their codes in :attr:`EWTable.flag_code`.
FLAGS: tuple[str, ...] = ("ok", "upper_limit", "blend_suspect", "fit_failed", "masked")
FLAG_OK, FLAG_UPPER, FLAG_BLEND, FLAG_FAILED, FLAG_MASKED = range(5)


#: Why a line got its flag: bit i of :attr:`EWTable.reason_bits` stands for ``REASONS[i]``. ``{sigma}`` is filled
#: in with the table's detection threshold (:attr:`EWTable.reasons`).
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
    "not detected at {sigma}σ (EW below {sigma} times its error)",  # upper_limit
)


#: Columns of the ``fehkit ew`` table (docs/cli.md), in order; more diagnostic columns follow them.
EW_COLUMNS: tuple[str, ...] = ("star_id", "line_wave", "ew_mA", "ew_err_mA", "ew_upper_mA", "flag")


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
        sqrt(reduced chi-square) where that exceeds 1, plus the star's crowding (blend background) term, the
        shared Lorentz width's error (``damping="shared"``) and ``systematic_mA`` in quadrature; NaN exactly
        where the flag is masked or fit_failed.
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
    shared_gamma_A : (n_spec,) float32, optional
        The star's shared Lorentz half width (A): fitted with ``damping="shared"`` (from its strong lines; may
        be slightly negative: wings weaker than the assumed Voigt), else the damping estimate of its first line.
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
    shared_gamma_A: np.ndarray | None = None

    @property
    def n_spectra(self) -> int:
        """Number of spectra."""
        return int(self.ew_mA.shape[0])

    @property
    def n_lines(self) -> int:
        """Number of lines."""
        return int(self.ew_mA.shape[1])

    def _facts(self) -> list[tuple[str, object]]:
        return [("spectra", self.n_spectra), ("lines", self.n_lines),
                ("flags", counts(self.flag.ravel())), ("backend", self.info.get("backend", "?"))]

    def __repr__(self) -> str:
        return text_summary("EWTable", self._facts())

    def _repr_html_(self) -> str:
        return html_summary("EWTable: equivalent widths", self._facts())

    @property
    def flag(self) -> np.ndarray:
        """Flag names, (n_spec, n_lines) str."""
        return np.asarray(FLAGS, dtype=object)[self.flag_code]

    @property
    def reasons(self) -> np.ndarray:
        """The reasons behind each flag, "; "-joined, (n_spec, n_lines) str ("" for a clean line)."""
        bits = self.reason_bits.astype(np.int64)
        out = np.full(bits.shape, "", dtype=object)
        for i, template in enumerate(REASONS):
            text = template.format(sigma=f"{self.detection_sigma:g}")
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
        per_line = {k: getattr(self, k)[idx] for k in PER_LINE_FIELDS}
        per_star = {k: getattr(self, k)[idx] for k in ("star_id", "shared_rv_kms", "width_scale", "n_shape_lines")}
        return EWTable(lines=self.lines, detection_sigma=self.detection_sigma, info=dict(self.info), **per_line,
                       **per_star, used=None if self.used is None else self.used[idx],
                       shared_gamma_A=None if self.shared_gamma_A is None else self.shared_gamma_A[idx])

    def to_frame(self) -> pd.DataFrame:
        """One row per (star, line), with the ``fehkit ew`` columns first (:data:`EW_COLUMNS`) then the fit details."""
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
        """Write :meth:`to_frame` as CSV, atomically (a temporary file renamed into place).

        ``line_wave`` is written at full precision, so that it reads back to the line list's ``wave_vac`` and can be
        joined on; EWs and the other floats get 6 significant digits (:func:`fehkit.files.write_table`).
        """
        write_table(self.to_frame(), path)

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


#: The (n_spec, n_lines) fields of :class:`EWTable`.
PER_LINE_FIELDS = ("ew_mA", "ew_err_mA", "ew_err_fit_mA", "ew_err_mc_mA", "ew_upper_mA", "flag_code", "reason_bits",
                   "blend", "rv_kms", "sigma_A", "gamma_A", "continuum", "chi2_red", "n_pix", "free_shape")
