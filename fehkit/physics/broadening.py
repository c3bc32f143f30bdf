"""Widths of the H-band Fe I lines in an APOGEE spectrum: the Gaussian core and the Lorentzian wings.

The Gaussian part adds in quadrature the thermal motion of the iron atoms, microturbulence and APOGEE's
line-spread function (taken as a Gaussian of FWHM lambda / R, R = 22,500: ~0.30 A sigma, which dominates);
the Lorentzian part is radiative plus van der Waals damping. The synthetic spectra draw their lines with these
widths, and the EW engine starts its fits (and ties the damping) with them.
"""

from __future__ import annotations

import numpy as np

#: APOGEE's resolving power; the line-spread function is taken as a Gaussian of FWHM lambda / R.
R_LSF = 22500.0

_K_BOLTZMANN = 1.380649e-16   # erg/K
_M_FE = 55.845 * 1.66053907e-24  # g
_C_CMS = 2.99792458e10
_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def gaussian_sigma(wave: np.ndarray, teff: np.ndarray, vmic: np.ndarray, resolution: float = R_LSF) -> np.ndarray:
    """Gaussian standard deviation (A) of an Fe line: thermal + microturbulent Doppler width and the LSF.

    Parameters
    ----------
    wave : array
        Line wavelength (A).
    teff, vmic : arrays
        Effective temperature (K) and microturbulence (km/s), broadcastable with ``wave``.
    resolution : float
        Resolving power lambda / FWHM of the line-spread function.

    Examples
    --------
    >>> round(float(gaussian_sigma(15800.0, 4800.0, 2.0)), 3)
    0.311
    """
    wave, teff, vmic = (np.asarray(a, dtype=float) for a in (wave, teff, vmic))
    doppler = wave / _C_CMS * np.sqrt(_K_BOLTZMANN * teff / _M_FE + 0.5 * (vmic * 1e5) ** 2)
    return np.hypot(doppler, wave / (resolution * _FWHM_PER_SIGMA))


def lorentz_hwhm(wave: np.ndarray, teff: np.ndarray, logg: np.ndarray, feh: np.ndarray) -> np.ndarray:
    """Lorentz half width (A) of an H-band Fe I line: radiative plus van der Waals damping.

    gamma = gamma_rad + gamma_6 with gamma_rad = 1e8 /s and gamma_6 = 10**8.3 /s at Teff 4800, log g 1.5,
    [Fe/H] -2, scaled by the photospheric gas pressure (~ g**0.6 Z**-0.3 in cool metal-poor atmospheres) and
    T**0.3 (~3e9 /s for the Sun, ~1e10 /s for a metal-poor dwarf); half width
    lambda**2 gamma / (4 pi c). A rough approximation: at R = 22,500 the line-spread function dominates the
    profile, and the EW itself comes from the MOOG grid, so only the far wings depend on it.

    Examples
    --------
    >>> round(float(lorentz_hwhm(15800.0, 4800.0, 1.5, -2.0)), 4)
    0.002
    """
    g_rel = 10.0 ** (0.6 * (np.asarray(logg) - 1.5) - 0.3 * (np.asarray(feh) + 2.0))
    gamma = 1e8 + 10.0**8.3 * g_rel * (np.asarray(teff) / 4800.0) ** 0.3
    lam_cm = np.asarray(wave) * 1e-8
    return lam_cm**2 * gamma / (4 * np.pi * _C_CMS) * 1e8
