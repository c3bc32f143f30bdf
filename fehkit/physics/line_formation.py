"""Why the H-band Fe I lines are weak: excitation, continuum opacity, the reduced curve of growth, detectability.

A weak line's equivalent width counts the absorbers in its lower level against the continuum opacity at its
wavelength: ``EW / lambda ~ gf * N(Fe I) * 10**(-theta * chi) / kappa_c(lambda)`` with ``theta = 5040 / T``.
The H-band Fe I lines start from levels 5-6 eV above the ground (a Boltzmann factor of 10**-5.6 at 4800 K against
1 for a resonance line), and they sit near the minimum of the H- continuum opacity (where the bound-free cross
section ends, 1.64 micron), which helps them a little. This module holds those pieces, each with its published
formula (``docs/hband_physics.md``): the Boltzmann factor, the H- opacity, Cayrel's detection limit, the reduced
curve of growth of the packaged lines computed from fehkit's MOOG grid, with its linear and saturated parts, one
line's profile as APOGEE sees it, and the MOOG equivalent widths of optical Fe I lines computed beside the H-band
ones on the same atmospheres (``scripts/physics/build_optical_lines.py``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

from fehkit.errors import GridRangeError, PhysicsGridError
from fehkit.lines import load_linelist
from fehkit.physics.broadening import R_LSF, gaussian_sigma, lorentz_hwhm
from fehkit.physics.cog import CurveOfGrowth
from fehkit.profiles import voigt
from fehkit.spectra import APSTAR_CDELT1

#: theta = THETA_K / T: log10(e) / k_B in K per eV, so that a Boltzmann factor is 10**(-theta * chi[eV]).
THETA_K = 5039.77

#: h c in eV Angstrom: the photon energy of wavelength lambda is EV_ANGSTROM / lambda.
EV_ANGSTROM = 12398.42

#: Binding energy of the H- ion (eV; Gray 2005, sec. 8): photons of longer wavelength cannot detach its electron.
HMINUS_BINDING_EV = 0.754

#: The H- bound-free threshold, EV_ANGSTROM / HMINUS_BINDING_EV: ~16,443 A, inside the APOGEE band.
HMINUS_THRESHOLD_A = EV_ANGSTROM / HMINUS_BINDING_EV

#: Coefficients a0..a6 of Gray's (2005, eq. 8.11) fit of the H- bound-free cross section, in 1e-18 cm2, lambda in A.
_HMINUS_BF = (1.99654, -1.18267e-5, 2.64243e-6, -4.40524e-10, 3.23992e-14, -1.39568e-18, 2.78701e-23)

#: Coefficients of Gray's (2005, eq. 8.13) fit of the H- free-free absorption: f0, f1 (cubic) and f2 (quartic) in
#: log10 lambda (A); log10 kappa_ff = -26 + f0 + f1 log10 theta + f2 (log10 theta)**2.
_HMINUS_FF = ((-2.2763, -1.6850, 0.76661, -0.053346),
              (15.2827, -9.2846, 1.99381, -0.142631),
              (-197.789, 190.266, -67.9775, 10.6913, -0.625151))

#: Cayrel's (1988) factor in sigma_EW = factor * sqrt(FWHM * pixel) / (S/N).
CAYREL_FACTOR = 1.5

#: fehkit's convention for the parts of the curve of growth, on its slope d log EW / d [Fe/H]: linear where the
#: slope is at least LINEAR_SLOPE (EW still ~proportional to the number of absorbers), saturated (flat) where it is
#: at most SATURATED_SLOPE (doubling the iron adds less than 41% to the EW).
LINEAR_SLOPE = 0.9
SATURATED_SLOPE = 0.5

#: [Fe/H] of the curves drawn by :func:`reduced_curve_of_growth`: the grid's range, extended 1 dex below on the
#: linear part (as :meth:`CurveOfGrowth.ew` does).
TRACK_FEH = np.round(np.arange(-6.0, -0.5 + 1e-9, 0.05), 2)

OPTICAL_FILE = "optical_fe1.npz"


def theta(teff: Any) -> Any:
    """Return theta = 5040 / T (per eV), the inverse temperature of the Boltzmann and Saha factors.

    Examples
    --------
    >>> round(float(theta(4800.0)), 3)
    1.05
    """
    return THETA_K / np.asarray(teff, float)


def boltzmann_factor(chi: Any, teff: Any) -> Any:
    """Return 10**(-theta chi): atoms in a level chi eV above the ground level, per ground-level atom and unit g.

    The population of a level of excitation chi and statistical weight g is ``N g 10**(-theta chi) / U(T)``; the
    partition function U is the same for every line of one species, so between two Fe I lines only this factor
    (and g, which log gf carries) differs.

    Examples
    --------
    >>> f = boltzmann_factor([0.0, 2.938, 5.304], 4800.0)  # Fe I 3859.9, 5232.9 and 15294.6 (air)
    >>> [f"{v:.1e}" for v in f]
    ['1.0e+00', '8.2e-04', '2.7e-06']
    """
    return 10.0 ** (-theta(teff) * np.asarray(chi, float))


def hminus_bf_cross_section(wave: Any) -> np.ndarray:
    """Bound-free cross section of the H- ion (cm2 per H- ion) at wavelength ``wave`` (A); 0 beyond its threshold.

    Gray (2005, eq. 8.11), a polynomial fit to Wishart (1979) for 2250 A < lambda; it reaches zero at ~16,300 A,
    just short of the threshold (:data:`HMINUS_THRESHOLD_A`), and is set to 0 from there on.

    Examples
    --------
    >>> s = hminus_bf_cross_section([5000.0, 8500.0, 15500.0, 17000.0])
    >>> (s * 1e18).round(2).tolist()
    [29.26, 39.98, 4.11, 0.0]
    """
    lam = np.asarray(wave, float)
    if np.any(lam < 2250.0):
        raise GridRangeError(f"wave: the H- bound-free fit holds above 2250 A; found {float(lam.min()):g} A")
    poly = sum(c * lam**i for i, c in enumerate(_HMINUS_BF))
    return np.where(lam < HMINUS_THRESHOLD_A, np.clip(poly, 0.0, None), 0.0) * 1e-18


def hminus_opacity(wave: Any, teff: float, electron_pressure: float = 1.0) -> dict[str, np.ndarray]:
    """H- continuum absorption per neutral hydrogen atom (cm2): bound-free, free-free and their sum.

    Bound-free: Gray (2005, eq. 8.12), ``4.158e-10 alpha_bf Pe theta**2.5 10**(0.754 theta)`` (the Saha
    equation for H- / H), times ``1 - 10**(-theta chi_lambda)`` for stimulated emission (chi_lambda = h c /
    lambda); free-free: Gray's (eq. 8.13) fit to Bell & Berrington (1987), stimulated emission included. Both grow
    with the electron pressure ``Pe`` (dyn/cm2) in the same way, so their ratio at two wavelengths, and the
    wavelength of least opacity, depend on the temperature alone: ``electron_pressure`` only scales the result.
    H- dominates the continuum of stars of 4000-6500 K in the optical and infrared (Gray 2005, sec. 8).

    Parameters
    ----------
    wave : (n,) float
        Wavelengths (A), 2250 A or longer.
    teff : float
        Temperature (K) of the layer (Teff for a rough picture).
    electron_pressure : float
        Electron pressure (dyn/cm2).

    Returns
    -------
    dict
        ``"bf"``, ``"ff"`` and ``"total"``, each (n,) float, cm2 per neutral H atom.

    Examples
    --------
    >>> k = hminus_opacity([5000.0, 16000.0], 4800.0)
    >>> round(float(k["total"][0] / k["total"][1]), 2)  # optical over H band: the H band sees deeper
    4.19
    """
    lam = np.asarray(wave, float)
    th = float(theta(teff))
    stimulated = 1.0 - 10.0 ** (-th * EV_ANGSTROM / lam)
    bf = (4.158e-10 * hminus_bf_cross_section(lam) * electron_pressure * th**2.5 * 10.0 ** (0.754 * th)
          * stimulated)
    logl = np.log10(lam)
    f0, f1, f2 = (sum(c * logl**i for i, c in enumerate(coef)) for coef in _HMINUS_FF)
    log_th = math.log10(th)
    ff = 10.0 ** (-26.0 + f0 + f1 * log_th + f2 * log_th**2) * electron_pressure
    return {"bf": bf, "ff": ff, "total": bf + ff}


def cayrel_sigma_ew(wave: Any, snr: Any, resolution: float = R_LSF, pixel_dex: float = APSTAR_CDELT1) -> Any:
    """1-sigma EW error (mA) of a line at ``wave`` (A) on a spectrum of S/N ``snr`` per pixel: Cayrel (1988).

    ``sigma_EW = 1.5 sqrt(FWHM x pixel) / (S/N)`` with FWHM = lambda / R and the apStar pixel lambda ln(10) 6e-6.
    Both widths grow with lambda, so ``sigma_EW / lambda`` is the same for every line.

    Examples
    --------
    >>> round(float(cayrel_sigma_ew(15800.0, 100.0)), 2)
    5.87
    """
    wave, snr = np.asarray(wave, float), np.asarray(snr, float)
    if np.any(~(snr > 0)):
        raise GridRangeError(f"snr: expected positive values, found {snr[~(snr > 0)].ravel()[:3].tolist()}")
    return CAYREL_FACTOR * np.sqrt(wave / resolution * wave * math.log(10.0) * pixel_dex) / snr * 1e3


@dataclass(repr=False)
class ReducedCurveOfGrowth:
    """The packaged Fe I lines of one star on the reduced curve of growth: log10(EW / lambda) vs log gf - theta chi.

    Attributes
    ----------
    teff, logg, feh, vmic, alpha_fe, snr : float
        The star and the S/N per pixel.
    wave_vac, chi, loggf : (n_lines,) float
        The lines (vacuum A, eV, dex).
    x : (n_lines,) float
        ``log gf - theta chi`` (dex), theta = 5040 / Teff: each line's strength at a given abundance.
    ew_mA, y : (n_lines,) float
        The MOOG grid's EW (mA) at this star, and ``log10(EW / lambda)``.
    sigma_ew_mA : (n_lines,) float
        Cayrel's 1-sigma EW error at ``snr``.
    slope : (n_lines,) float
        d log EW / d [Fe/H] at this star: 1 on the linear part, towards 0 on the saturated part.
    regime : (n_lines,) str
        ``"linear"``, ``"transition"`` or ``"saturated"`` by :data:`LINEAR_SLOPE` and :data:`SATURATED_SLOPE`.
    track_feh : (n_track,) float
        [Fe/H] of the curves.
    track_x, track_y : (n_lines, n_track) float
        Each line's curve of growth over ``track_feh``, placed on the same axes: x shifted by (track [Fe/H] -
        ``feh``), the shift of log gf that gives the same number of absorbers.
    track_slope : (n_lines, n_track) float
        d log EW / d [Fe/H] along each curve.
    linear_end, saturated_start : float
        x (dex) where the curves' slope falls below :data:`LINEAR_SLOPE` and :data:`SATURATED_SLOPE` (median over
        the lines; NaN where no curve gets there within the grid).
    limit_y : float
        ``log10(3 sigma_EW / lambda)``: the 3-sigma detection limit of one line, the same for every line.
    """

    teff: float
    logg: float
    feh: float
    vmic: float
    alpha_fe: float
    snr: float
    wave_vac: np.ndarray
    chi: np.ndarray
    loggf: np.ndarray
    x: np.ndarray
    ew_mA: np.ndarray
    y: np.ndarray
    sigma_ew_mA: np.ndarray
    slope: np.ndarray
    regime: np.ndarray
    track_feh: np.ndarray
    track_x: np.ndarray
    track_y: np.ndarray
    track_slope: np.ndarray
    linear_end: float
    saturated_start: float
    limit_y: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def detected(self) -> np.ndarray:
        """(n_lines,) bool: lines whose EW reaches 3 sigma on their own."""
        return self.ew_mA >= 3.0 * self.sigma_ew_mA

    @property
    def joint_sigma(self) -> float:
        """Significance of all lines together, sqrt(sum (EW / sigma_EW)**2): the expected signal over "no iron".

        For lines whose EWs scale together (one abundance), the best weighted sum of the measured EWs has this
        signal-to-noise; it is what fehkit's joint likelihood can reach for noise-free EWs.
        """
        return float(np.sqrt(np.sum((self.ew_mA / self.sigma_ew_mA) ** 2)))

    def table(self) -> pd.DataFrame:
        """One row per line: wave_vac, chi, loggf, x, ew_mA, sigma_ew_mA, ew_over_sigma, slope, regime, detected."""
        return pd.DataFrame({"wave_vac": self.wave_vac, "chi": self.chi, "loggf": self.loggf, "x": self.x,
                             "ew_mA": self.ew_mA, "sigma_ew_mA": self.sigma_ew_mA,
                             "ew_over_sigma": self.ew_mA / self.sigma_ew_mA, "slope": self.slope,
                             "regime": self.regime, "detected": self.detected})

    def __repr__(self) -> str:
        return (f"ReducedCurveOfGrowth(Teff {self.teff:g} K, log g {self.logg:g}, [Fe/H] {self.feh:+.2f}, vmic "
                f"{self.vmic:g} km/s, S/N {self.snr:g}: {int(self.detected.sum())} of {self.wave_vac.size} lines "
                f"above 3 sigma, joint {self.joint_sigma:.1f} sigma)")


def reduced_curve_of_growth(
    teff: float,
    logg: float,
    feh: float,
    vmic: float,
    snr: float,
    alpha_fe: float = 0.4,
    cog: CurveOfGrowth | None = None,
    lines: pd.DataFrame | None = None,
) -> ReducedCurveOfGrowth:
    """Place the packaged Fe I lines of a star on the reduced curve of growth, with their detectability at ``snr``.

    The EWs come from fehkit's MOOG grid (:meth:`CurveOfGrowth.ew`); x is ``log gf - theta chi`` of the line list
    at theta = 5040 / Teff. Below the grid's [Fe/H] = -5 the curves continue on their linear part.

    Parameters
    ----------
    teff, logg, feh, vmic : float
        The star (K, dex, dex, km/s), inside the grid (Teff 3900-6600, log g 0-5, vmic 0.5-3.5; [Fe/H] <= -0.5).
    snr : float
        S/N per pixel, for the detection limit.
    alpha_fe : float
        [alpha/Fe] (dex).
    cog : CurveOfGrowth, optional
        The grid (default: the packaged MOOG grid).
    lines : pandas.DataFrame, optional
        The line list (default: the packaged list); its lines must be in the grid.

    Returns
    -------
    ReducedCurveOfGrowth

    Examples
    --------
    >>> r = reduced_curve_of_growth(4800, 1.5, -3.0, 2.0, snr=100)
    >>> int(r.detected.sum()), round(r.joint_sigma, 1)
    (1, 5.0)
    >>> r.table().regime.value_counts().to_dict()  # at [Fe/H] = -3 every line is on the linear part
    {'linear': 30}
    >>> reduced_curve_of_growth(4800, 1.5, -1.0, 2.0, snr=100).table().regime.value_counts().to_dict()
    {'transition': 20, 'saturated': 10}
    """
    if not (np.isfinite(feh) and feh <= TRACK_FEH[-1] + 1e-9):
        raise GridRangeError(f"feh: expected a finite value <= {TRACK_FEH[-1]:g} (the grid's top), found {feh}")
    cog = CurveOfGrowth.load() if cog is None else cog
    lines = load_linelist() if lines is None else lines
    idx = cog.line_index(lines["wave_vac"].to_numpy(float))
    wave = cog.wave_vac[idx]
    chi, loggf = lines["chi"].to_numpy(float), lines["loggf"].to_numpy(float)
    x = loggf - float(theta(teff)) * chi
    feh_all = np.append(TRACK_FEH, feh)
    ew_all = cog.ew(teff, logg, feh_all, vmic, alpha_fe, lines=idx)  # (n_track + 1, n_lines)
    ew, track_ew = ew_all[-1], ew_all[:-1].T
    track_y = np.log10(track_ew * 1e-3 / wave[:, None])
    track_slope = np.gradient(np.log10(track_ew), TRACK_FEH, axis=1)
    slope = np.array([np.interp(feh, TRACK_FEH, s) for s in track_slope])
    regime = np.where(slope >= LINEAR_SLOPE, "linear", np.where(slope <= SATURATED_SLOPE, "saturated", "transition"))
    track_x = x[:, None] + (TRACK_FEH[None, :] - feh)
    sigma = cayrel_sigma_ew(wave, snr)
    return ReducedCurveOfGrowth(
        teff=float(teff), logg=float(logg), feh=float(feh), vmic=float(vmic), alpha_fe=float(alpha_fe),
        snr=float(snr), wave_vac=wave, chi=chi, loggf=loggf, x=x, ew_mA=ew, y=np.log10(ew * 1e-3 / wave),
        sigma_ew_mA=sigma, slope=slope, regime=regime.astype(object), track_feh=TRACK_FEH.copy(), track_x=track_x,
        track_y=track_y, track_slope=track_slope, linear_end=_crossing(track_x, track_slope, LINEAR_SLOPE),
        saturated_start=_crossing(track_x, track_slope, SATURATED_SLOPE),
        limit_y=float(np.log10(3.0 * sigma[0] * 1e-3 / wave[0])))


def detection_snr(
    teff: float, logg: float, feh: float, vmic: float, alpha_fe: float = 0.4, n_sigma: float = 3.0,
    joint: bool = True, cog: CurveOfGrowth | None = None,
) -> float:
    """S/N per pixel at which a star's Fe I lines reach ``n_sigma``: all lines together, or the strongest alone.

    The significance grows in proportion to the S/N (Cayrel's error falls as 1 / (S/N)), so the answer is
    ``n_sigma x S/N / significance`` at any S/N.

    Examples
    --------
    >>> round(detection_snr(4800, 1.5, -3.0, 2.0))
    60
    >>> round(detection_snr(4800, 1.5, -3.0, 2.0, joint=False))
    89
    """
    r = reduced_curve_of_growth(teff, logg, feh, vmic, 100.0, alpha_fe, cog)
    significance = r.joint_sigma if joint else float(np.max(r.ew_mA / r.sigma_ew_mA))
    return n_sigma * 100.0 / significance


def line_profile(
    wave_vac: float,
    ew_mA: float,
    teff: float,
    logg: float,
    feh: float,
    vmic: float,
    snr: float,
    seed: int = 0,
    resolution: float = R_LSF,
    half_width_pix: int = 20,
) -> dict[str, np.ndarray]:
    """One Fe I line as APOGEE records it: the Voigt profile of ``ew_mA``, on a fine grid and on apStar pixels.

    The profile is the one fehkit's synthetic spectra draw (:mod:`fehkit.synth`): ``1 - EW x Voigt(sigma, gamma)``
    with the Gaussian width of :func:`~fehkit.physics.broadening.gaussian_sigma` (the line-spread function at R
    dominates) and the damping of :func:`~fehkit.physics.broadening.lorentz_hwhm`, the depth capped at 0.999. The
    pixels carry Gaussian noise of 1 / ``snr``, drawn with ``seed`` (the same draw at every S/N, only scaled).

    Returns
    -------
    dict
        ``offset`` (n_fine,) A from the line centre and ``flux`` there; ``pixel_offset`` and ``pixel_flux``
        (2 half_width_pix + 1,) the noisy apStar pixels; ``noise`` (1 / snr); ``sigma``, ``gamma`` (A).

    Examples
    --------
    >>> p = line_profile(15298.74, 19.2, 4800, 1.5, -3.0, 2.0, snr=100)
    >>> round(float(1 - p["flux"].min()), 3), p["pixel_flux"].size
    (0.025, 41)
    """
    if not (snr > 0):
        raise GridRangeError(f"snr: expected a positive value, found {snr}")
    sigma = float(gaussian_sigma(wave_vac, teff, vmic, resolution))
    gamma = float(lorentz_hwhm(wave_vac, teff, logg, feh))
    pixel_offset = wave_vac * (10.0 ** (APSTAR_CDELT1 * np.arange(-half_width_pix, half_width_pix + 1)) - 1.0)
    offset = np.linspace(pixel_offset[0], pixel_offset[-1], 8 * pixel_offset.size)

    def flux(dx: np.ndarray) -> np.ndarray:
        depth = max(float(ew_mA), 0.0) * 1e-3 * voigt(dx, sigma, gamma)
        return 1.0 - np.minimum(depth, 0.999)

    noise = np.random.default_rng(seed).standard_normal(pixel_offset.size) / float(snr)
    return {"offset": offset, "flux": flux(offset), "pixel_offset": pixel_offset,
            "pixel_flux": flux(pixel_offset) + noise, "noise": np.float64(1.0 / snr), "sigma": np.float64(sigma),
            "gamma": np.float64(gamma)}


def one_layer_fit(wave: Any, chi: Any, loggf: Any, ew_mA: Any) -> dict[str, float]:
    """Fit the one-layer weak-line law to lines of one species: log EW - log gf - 2 log lambda = c - theta chi.

    A weak line's EW is ``EW ~ lambda**2 gf 10**(-theta chi) N / kappa_c`` (the line's absorption per atom grows
    as lambda**2 gf in wavelength units); for lines close in wavelength ``kappa_c`` is one number, so a straight
    line in chi gives the excitation temperature ``5040 / theta`` at which one layer would make these EWs. Use lines
    on the linear part of the curve of growth only.

    Returns
    -------
    dict
        ``theta``, ``t_exc`` (K), ``const`` (c), ``rms`` (dex, of the fit), ``ref_wave`` (median wavelength, A).

    Examples
    --------
    >>> t = load_optical_comparison()
    >>> h = t[(t.star == "giant") & (t.feh == -4.5) & (t.band == "H")]
    >>> fit = one_layer_fit(h.wave_air, h.chi, h.loggf, h.ew_mA)
    >>> round(fit["t_exc"]), round(fit["rms"], 3)
    (4828, 0.016)
    """
    wave, chi, loggf, ew = (np.asarray(a, float) for a in (wave, chi, loggf, ew_mA))
    if wave.size < 3 or np.any(~(ew > 0)):
        raise GridRangeError(f"ew_mA: expected at least 3 lines with positive EWs, found {wave.size} lines, "
                             f"{int(np.sum(~(ew > 0)))} not positive")
    y = np.log10(ew) - loggf - 2.0 * np.log10(wave)
    design = np.c_[np.ones_like(chi), -chi]
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    return {"theta": float(coef[1]), "t_exc": float(THETA_K / coef[1]), "const": float(coef[0]),
            "rms": float(np.std(y - design @ coef)), "ref_wave": float(np.median(wave))}


def one_layer_ew(fit: dict[str, float], wave: Any, chi: Any, loggf: Any) -> np.ndarray:
    """EW (mA) the one-layer law of :func:`one_layer_fit` predicts for other weak lines of the species.

    The H- continuum opacity (:func:`hminus_opacity` at the fit's excitation temperature) carries the law from the
    fitted lines' wavelength (``fit["ref_wave"]``) to ``wave``: ``log EW = c - theta chi + log gf + 2 log lambda -
    log(kappa(lambda) / kappa(ref_wave))``.
    """
    wave, chi, loggf = (np.asarray(a, float) for a in (wave, chi, loggf))
    kappa = hminus_opacity(np.append(wave, fit["ref_wave"]), fit["t_exc"])["total"]
    log_ew = fit["const"] - fit["theta"] * chi + loggf + 2.0 * np.log10(wave) - np.log10(kappa[:-1] / kappa[-1])
    return 10.0**log_ew


def load_optical_comparison() -> pd.DataFrame:
    """MOOG EWs of four optical Fe I lines and the 30 H-band lines, computed on the same atmospheres.

    From ``fehkit/physics/data/optical_fe1.npz`` (``scripts/physics/build_optical_lines.py``): MOOG ``ewfind`` on
    atmosnet atmospheres, as for the packaged grid (whose H-band values this file reproduces), line data from
    linemake, for a metal-poor giant (4800 K, log g 1.5, vmic 2 km/s) and a turn-off dwarf (6300 K, 4.0, 1.5 km/s),
    both at [alpha/Fe] = +0.4, at [Fe/H] -5.0..-0.5 in steps of 0.25.

    Returns
    -------
    pandas.DataFrame
        One row per (star, [Fe/H], line): star, teff, logg, vmic, alpha_fe, feh, band (``"optical"`` or ``"H"``),
        wave_air, wave_vac, chi, loggf, ew_mA.

    Examples
    --------
    >>> t = load_optical_comparison()
    >>> row = t[(t.star == "giant") & (t.feh == -3.0) & (t.wave_air == 5232.94)]
    >>> round(float(row.ew_mA.iloc[0]), 1)
    70.2
    """
    path = resources.files("fehkit.physics") / "data" / OPTICAL_FILE
    with resources.as_file(path) as p:
        try:
            with np.load(p, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
        except OSError as exc:
            raise PhysicsGridError(f"{p}: cannot read the optical line table ({exc}); expected the packaged file "
                                   "written by scripts/physics/build_optical_lines.py") from exc
    n_star, n_feh, n_line = d["log10_ew"].shape
    s, f, ln = np.meshgrid(np.arange(n_star), np.arange(n_feh), np.arange(n_line), indexing="ij")
    s, f, ln = s.ravel(), f.ravel(), ln.ravel()
    table = pd.DataFrame({"star": d["star"][s], "teff": d["teff"][s], "logg": d["logg"][s], "vmic": d["vmic"][s],
                          "alpha_fe": d["alpha_fe"][s], "feh": d["feh"][f], "band": d["band"][ln],
                          "wave_air": d["wave_air"][ln], "wave_vac": d["wave_vac"][ln], "chi": d["chi"][ln],
                          "loggf": d["loggf"][ln], "ew_mA": 10.0 ** d["log10_ew"].astype(float).ravel()})
    table.attrs["meta"] = json.loads(str(d["meta"]))
    return table


def _crossing(track_x: np.ndarray, track_slope: np.ndarray, level: float) -> float:
    """Median over the curves of the x where the slope first falls below ``level`` (NaN where none does)."""
    xs = []
    for xrow, srow in zip(track_x, track_slope, strict=True):
        below = np.flatnonzero(srow < level)
        if below.size and below[0] > 0:
            k = below[0]
            # linear interpolation between the last node above and the first below
            t = (srow[k - 1] - level) / (srow[k - 1] - srow[k])
            xs.append(xrow[k - 1] + t * (xrow[k] - xrow[k - 1]))
    return float(np.median(xs)) if xs else math.nan
