"""Synthetic APOGEE spectra of metal-poor stars with known truth: the forward model and the benchmark.

Real EMP stars with trusted labels are few, so fehkit tests every stage, and trains its embedded default,
on **synthetic** spectra whose Fe line strengths come from LTE radiative transfer (the MOOG curve-of-growth
grid of :mod:`fehkit.physics`). A synthetic spectrum is built, pixel by pixel on the apStar grid, as::

    flux = continuum x background x Fe lines x telluric residual + noise

* **continuum**: the star's Planck slope across the H band times a smooth instrument response per
  detector (a random cubic each), at a random flux level;
* **background**: every other line of the H band (atoms, the Brackett series, CO/CN/... molecules), from the
  MOOG background library, interpolated to the star;
* **Fe lines**: one Voigt profile per packaged Fe I line whose area is the grid EW for the star; Gaussian
  core from thermal + microturbulent broadening and the APOGEE line-spread function (R = 22,500), Lorentz
  wings from radiative + van der Waals damping;
* **telluric residual**: a small fraction (N(0, 5%)) of a real APOGEE telluric spectrum, in the observed frame;
* a residual **RV shift** of the star (N(0, 1 km/s) by default): apStar spectra are in the rest frame, but
  to the accuracy of the pipeline's RV only;
* **noise** at the requested S/N per pixel, and **masks and chip gaps** from real DR17 apStar bitmasks
  (shifted to the star's heliocentric velocity): ~9% NaN, 12-18% flagged; SIG_TELLURIC is set where the
  star's own telluric absorption is deeper than 12% (~5% of the pixels, as in the real files).

:func:`simulate` makes spectra for given stellar parameters; :func:`make_benchmark` draws an EMP halo
population with the reference labels a user would have (survey-pipeline Teff/log g/vmic errors, an optical
[Fe/H] with 0.05 dex errors, and a second external-survey label set), split 70/15/15 by [Fe/H].
Every spectrum, file and table this module makes is labelled synthetic.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import voigt_profile

from fehkit.constants import SPEED_OF_LIGHT_KMS
from fehkit.display import counts, html_summary, text_summary
from fehkit.errors import FehkitError
from fehkit.files import atomic_folder, write_table
from fehkit.io import DEFAULT_BAD_BITS, PIXMASK_BITS, bad_bits_value, write_apstar
from fehkit.lines import load_linelist
from fehkit.physics import BackgroundLibrary, CurveOfGrowth
from fehkit.physics.broadening import R_LSF, gaussian_sigma, lorentz_hwhm  # noqa: F401 -- R_LSF, lorentz_hwhm re-exported
from fehkit.spectra import APOGEE_FLUX_UNIT, APSTAR_CDELT1, APSTAR_NPIX, CHIPS, SpectrumBatch, apstar_wavelength

#: Columns of the ``truth.csv`` that ``fehkit simulate`` writes, in order; the benchmark adds ``feh_ext``,
#: ``split``, ``population``.
TRUTH_COLUMNS = ("file", "star_id", "teff", "logg", "vmic", "feh", "alpha_fe", "snr", "rv_shift",
                 "teff_ref", "logg_ref", "vmic_ref", "feh_ref")

#: Reference-label errors of the benchmark: survey-pipeline Teff, log g, vmic and an optical
#: high-resolution [Fe/H] (the training labels a user has).
REF_ERRORS = {"teff": 100.0, "logg": 0.2, "vmic": 0.2, "feh": 0.05}

#: Telluric absorption deeper than this sets SIG_TELLURIC in a synthetic star's bitmask: 12% flags ~5% of the pixels,
#: as SIG_TELLURIC does in the real DR17 combined rows of the example files.
TELLURIC_FLAG_DEPTH = 0.12

#: The external survey's [Fe/H] (offset, scatter), like GALAH DR3 against high-resolution references.
EXTERNAL_SURVEY = {"offset": 0.015, "scatter": 0.04}

_HALF_WIDTH_PIX = 32          # each Fe line is drawn over +-32 pixels (~+-7 A)
_CHUNK = 256                  # spectra per vectorized block
_KMS_PER_PIX = SPEED_OF_LIGHT_KMS * np.log(10) * APSTAR_CDELT1  # 4.14 km/s


class SimulationError(FehkitError, ValueError):
    """Stellar parameters handed to the simulator are missing or out of range."""


@dataclass
class Simulation:
    """Synthetic spectra with their truth.

    Attributes
    ----------
    batch : SpectrumBatch
        The spectra (flux in APOGEE units, ivar, mask, bitmask), ``meta["synthetic"]`` True.
    truth : pandas.DataFrame
        One row per star: the true parameters (teff, logg, vmic, feh, alpha_fe, snr, rv_shift, vhelio), and
        for a benchmark the reference labels, ``feh_ext``, ``split`` and ``population``.
    ew : numpy.ndarray
        True EW (mA) of each line, shaped (n_stars, n_lines).
    continuum : numpy.ndarray
        True continuum (flux units) shaped like the flux: the answer for continuum normalization.
    lines : pandas.DataFrame
        The line list the Fe lines were drawn from.
    """

    batch: SpectrumBatch
    truth: pd.DataFrame
    ew: np.ndarray
    continuum: np.ndarray
    lines: pd.DataFrame

    def __len__(self) -> int:
        return self.batch.n_spectra

    def __iter__(self):  # noqa: ANN204 -- lets ``batch, truth = simulate(...)`` work
        return iter((self.batch, self.truth))

    def _facts(self) -> list[tuple[str, object]]:
        t = self.truth
        facts: list[tuple[str, object]] = [("stars", len(self)), ("lines", self.ew.shape[1])]
        if len(t):
            facts += [("[Fe/H]", f"{t['feh'].min():.2f} to {t['feh'].max():.2f}"),
                      ("S/N", f"{t['snr'].min():.0f} to {t['snr'].max():.0f}")]
        if "split" in t:
            facts.append(("split", counts(t["split"])))
        return facts

    def __repr__(self) -> str:
        return text_summary("Simulation", [*self._facts(), ("synthetic", True)])

    def _repr_html_(self) -> str:
        return html_summary("Simulation", self._facts(), note="SYNTHETIC: simulated spectra with known truth")

    def ew_table(self) -> pd.DataFrame:
        """Return the true EWs in long form: star_id, line_wave (vacuum A), ew_true_mA."""
        n, nl = self.ew.shape
        return pd.DataFrame({
            "star_id": np.repeat(self.truth["star_id"].to_numpy(), nl),
            "line_wave": np.tile(self.lines["wave_vac"].to_numpy(), n),
            "ew_true_mA": self.ew.ravel(),
        })

    def subset(self, which: Any) -> Simulation:
        """Return the stars selected by a boolean mask or an index array.

        Examples: ``sim.subset(sim.truth.split == "test")``, ``sim.subset([0, 5])``.
        """
        idx = np.flatnonzero(which) if np.asarray(which).dtype == bool else np.asarray(which)
        return Simulation(self.batch.select(idx), self.truth.iloc[idx].reset_index(drop=True), self.ew[idx],
                          self.continuum[idx], self.lines)


@dataclass(frozen=True)
class Perturbation:
    """Physics the forward model may use that the analysis does not know: the knobs of a robustness test.

    The analysis (continuum normalization, EW fits, the classical curve of growth) assumes the packaged MOOG grid,
    the line list's log gf values, a Gaussian line-spread function at R = 22,500, the damping widths of
    :mod:`fehkit.physics.broadening` and a continuum that one cubic per detector describes. Each field breaks one
    of those assumptions in the simulated spectra; the default breaks none.

    Attributes
    ----------
    loggf_scatter, loggf_offset : float
        Per-line log gf errors (dex): each line's EW is drawn as if its log gf were off by N(offset, scatter),
        one draw per line shared by every star (as a line list's error is).
    resolution : (float, float), optional
        Per-star resolving power drawn uniformly in this range instead of 22,500.
    lsf_wing_hwhm : float
        A Lorentzian wing (A, HWHM) added to every line's profile: a line-spread function with non-Gaussian wings.
    damping_scale : (float, float), optional
        Per-star factor, drawn log-uniformly in this range, on the Lorentzian (damping) widths.
    continuum_ripple : (float, float), optional
        Amplitude range (fraction of the continuum) of a sinusoidal ripple with a period of 40-200 A: a
        continuum shape outside the normalizer's per-detector polynomial family.
    cog : CurveOfGrowth, optional
        Draw the EWs from this curve-of-growth grid (e.g. another radiative-transfer code) instead of the
        default one.
    """

    loggf_scatter: float = 0.0
    loggf_offset: float = 0.0
    resolution: tuple[float, float] | None = None
    lsf_wing_hwhm: float = 0.0
    damping_scale: tuple[float, float] | None = None
    continuum_ripple: tuple[float, float] | None = None
    cog: CurveOfGrowth | None = None


# ---------------------------------------------------------------------------------------------------------------
# the forward model
# ---------------------------------------------------------------------------------------------------------------
def simulate(
    params: pd.DataFrame | Mapping[str, Any],
    seed: int | np.random.Generator | None = None,
    *,
    lines: pd.DataFrame | None = None,
    continuum: bool = True,
    background: bool = True,
    tellurics: bool = True,
    masks: bool = True,
    noise: bool = True,
    rv_sigma: float = 1.0,
    cog: CurveOfGrowth | None = None,
    library: BackgroundLibrary | None = None,
    perturb: Perturbation | None = None,
) -> Simulation:
    """Simulate APOGEE apStar spectra for the given stars (all **synthetic**).

    Parameters
    ----------
    params : DataFrame or mapping
        One row per star: ``teff`` (K), ``logg``, ``feh``, ``vmic`` (km/s); optional ``alpha_fe`` (default
        0.4), ``snr`` (per pixel, default 100), ``rv_shift`` (km/s, residual RV; drawn from N(0, rv_sigma)
        if absent), ``vhelio`` (km/s, places sky lines, tellurics and chip gaps; drawn if absent) and
        ``star_id``.
    seed : int or numpy.random.Generator, optional
        Seed of every random draw; the same seed gives the same spectra.
    lines : DataFrame, optional
        Line list (default: the packaged Fe I list); its lines must be in the curve-of-growth grid.
    continuum, background, tellurics, masks, noise : bool
        Switch each part of the model off, e.g. for noiseless checks. Without ``continuum`` the flux is
        normalized (unit continuum, ``flux_unit`` ""); without ``masks`` no pixel is flagged or NaN.
    rv_sigma : float
        Scatter (km/s) of the residual RV shift drawn for stars without ``rv_shift``.
    cog, library : optional
        Curve-of-growth grid and background library (default: the packaged ones).
    perturb : Perturbation, optional
        Physics the analysis does not know (robustness tests, :mod:`fehkit.robustness`); its random draws come
        from a stream of their own, so the unperturbed spectra of the same seed stay the same.

    Returns
    -------
    Simulation
        ``batch`` and ``truth`` (unpack with ``batch, truth = simulate(...)``), plus the true EWs and continuum.

    Examples
    --------
    >>> sim = simulate({"teff": [4800], "logg": [1.5], "feh": [-2.0], "vmic": [1.8], "snr": [100]}, seed=1)
    >>> sim.batch.n_spectra, sim.batch.n_pixels, bool(sim.batch.meta.synthetic[0])
    (1, 8575, True)
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    cog = cog or CurveOfGrowth.load()
    library = library or BackgroundLibrary.load()
    lines = load_linelist() if lines is None else lines
    truth = _check_params(params, rng, rv_sigma)
    n = len(truth)
    wave = apstar_wavelength()
    line_idx = cog.line_index(lines["wave_vac"].to_numpy(float))

    # every random quantity per star is drawn up front, so a star's spectrum does not depend on the chunking
    draws = [_star_draws(r) for r in rng.spawn(n)]
    shape = _perturbed_shape(perturb, n, lines, rng)
    if perturb is not None and perturb.cog is not None:
        cog = perturb.cog
        line_idx = cog.line_index(lines["wave_vac"].to_numpy(float))
    ew = _draw_ew(cog, truth, line_idx, shape["dloggf"])
    flux = np.empty((n, APSTAR_NPIX), np.float32)
    ivar = np.empty((n, APSTAR_NPIX), np.float32)
    bitmask = np.zeros((n, APSTAR_NPIX), np.int64)
    cont = np.empty((n, APSTAR_NPIX), np.float32)
    parts = dict(continuum=continuum, background=background, tellurics=tellurics, masks=masks, noise=noise)

    def run(start: int) -> None:
        sl = slice(start, min(start + _CHUNK, n))
        flux[sl], ivar[sl], bitmask[sl], cont[sl] = _simulate_chunk(
            wave, truth.iloc[sl], ew[sl], lines["wave_vac"].to_numpy(float), draws[sl], library, parts,
            {k: v[sl] for k, v in shape.items() if k != "dloggf"})

    # numpy and scipy release the GIL in the array work, so threads share the cores
    with ThreadPoolExecutor(max_workers=min(os.cpu_count() or 1, 4)) as pool:
        list(pool.map(run, range(0, n, _CHUNK)))

    meta = pd.DataFrame({
        "star_id": truth.star_id, "telescope": "synthetic", "field": "synthetic", "ra": np.nan, "dec": np.nan,
        "snr": truth.snr, "nvisits": 1, "vhelio": truth.vhelio, "vscatter": 0.0, "file": "",
        "kind": "apStar", "row": 0, "visit": -1, "synthetic": True,
    })
    batch = SpectrumBatch(wave, flux, ivar, np.zeros(flux.shape, bool), meta,
                          bitmask=bitmask if masks else None, flux_unit=APOGEE_FLUX_UNIT if continuum else "")
    if masks:
        batch.mask |= (bitmask & bad_bits_value(DEFAULT_BAD_BITS)) != 0
    return Simulation(batch, truth, ew, cont, lines.reset_index(drop=True))


def _simulate_chunk(
    wave: np.ndarray, t: pd.DataFrame, ew: np.ndarray, centres: np.ndarray, draws: list[dict[str, Any]],
    library: BackgroundLibrary, parts: dict[str, bool], shape: dict[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    d = {k: np.array([dr[k] for dr in draws]) for k in draws[0] if k != "noise_rng"}
    model = _fe_lines(wave, centres, ew, t, shape)
    if parts["background"]:
        model *= _shift(np.exp(-library.tau(t.teff, t.logg, t.feh, warn=False)), t.rv_shift.to_numpy())
    c = _continuum(wave, t.teff.to_numpy(), d) if parts["continuum"] else np.ones_like(model)
    if "ripple_amp" in shape:
        # a continuum shape no cubic per detector follows (the analysis does not know it is there)
        phase = 2 * np.pi * wave[None, :] / shape["ripple_period"][:, None] + shape["ripple_phase"][:, None]
        c = c * (1.0 + shape["ripple_amp"][:, None] * np.sin(phase)).astype(np.float32)
    telluric_depth = np.zeros(model.shape, np.float32)
    if parts["tellurics"]:
        tell, telluric_depth = _telluric(d, t.vhelio.to_numpy())
        model *= tell
    sigma = np.sqrt(np.maximum(model, np.float32(0.05)))
    sigma *= c
    sigma /= t.snr.to_numpy(np.float32)[:, None]
    bits = np.zeros(model.shape, np.int64)
    nan = np.zeros(model.shape, bool)
    if parts["masks"]:
        bits, nan = _masks(d, t.vhelio.to_numpy())
        # SIG_TELLURIC marks where *this* star's telluric absorption is significant (deeper than 12%), as the
        # pipeline sets it from the telluric spectrum it divided out (the real row's own bits belong to another star)
        sig_tell = 1 << PIXMASK_BITS["SIG_TELLURIC"]
        bits &= ~sig_tell
        bits |= np.where((telluric_depth > TELLURIC_FLAG_DEPTH) & ~nan, sig_tell, 0)
        bad = (bits & bad_bits_value(DEFAULT_BAD_BITS)) != 0
        sigma[bad] *= np.repeat(d["bad_inflate"].astype(np.float32), bad.sum(axis=1))
    f = model * c
    if parts["noise"]:
        for i, dr in enumerate(draws):
            f[i] += sigma[i] * dr["noise_rng"].standard_normal(APSTAR_NPIX, dtype=np.float32)
    f[nan] = np.nan
    iv = 1.0 / np.square(sigma)
    iv[nan] = 0.0
    return f, iv, bits, c


def _check_params(params: pd.DataFrame | Mapping[str, Any], rng: np.random.Generator, rv_sigma: float) -> pd.DataFrame:
    t = pd.DataFrame(params).reset_index(drop=True).copy()
    missing = [c for c in ("teff", "logg", "feh", "vmic") if c not in t]
    if missing:
        raise SimulationError(f"params: missing column(s) {missing}; expected teff, logg, feh, vmic "
                              "(optional alpha_fe, snr, rv_shift, vhelio, star_id)")
    n = len(t)
    t["alpha_fe"] = t["alpha_fe"] if "alpha_fe" in t else 0.4
    t["snr"] = t["snr"] if "snr" in t else 100.0
    if "rv_shift" not in t:
        t["rv_shift"] = rng.normal(0.0, rv_sigma, n)
    if "vhelio" not in t:
        t["vhelio"] = np.clip(rng.normal(0.0, 120.0, n), -140.0, 140.0)
    if "star_id" not in t:
        t["star_id"] = [f"SYN-{i:06d}" for i in range(n)]
    ranges = {"teff": (3900, 6600), "logg": (0.0, 5.0), "feh": (-6.0, -0.5), "vmic": (0.5, 3.5),
              "alpha_fe": (-0.2, 0.6), "snr": (1.0, 1e5), "rv_shift": (-50.0, 50.0), "vhelio": (-600.0, 600.0)}
    for col, (lo, hi) in ranges.items():
        v = pd.to_numeric(t[col], errors="coerce").to_numpy(float)
        bad = ~np.isfinite(v) | (v < lo) | (v > hi)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise SimulationError(f"params: column {col!r} row {i} is {t[col].iloc[i]!r}; expected a number in "
                                  f"{lo:g}..{hi:g} ({int(bad.sum())} bad value(s))")
        t[col] = v
    t["star_id"] = t["star_id"].astype(str)
    return t


def _star_draws(rng: np.random.Generator) -> dict[str, Any]:
    """Draw the random quantities of one star (besides its noise)."""
    return {
        "scale": 10.0 ** rng.uniform(2.0, 3.3),          # continuum level, 1e-17 erg/s/cm2/A
        "gain": rng.normal(1.0, 0.03, 3),                # per detector
        "resp": rng.normal(0.0, [0.04, 0.02, 0.01], (3, 3)),  # per detector: linear, quadratic, cubic terms
        "tell_amp": rng.normal(0.0, 0.05),
        "tell_row": rng.integers(1 << 30),
        "mask_row": rng.integers(1 << 30),
        "bad_inflate": rng.uniform(2.0, 5.0),
        "noise_rng": np.random.default_rng(rng.integers(1 << 62)),
    }


def _continuum(wave: np.ndarray, teff: np.ndarray, d: dict[str, np.ndarray]) -> np.ndarray:
    """Planck slope (normalized at 16,000 A) x per-detector cubic response x flux level."""
    h_c_over_k = 1.438777e8  # A K
    w = (wave / 16000.0).astype(np.float32)[None, :]
    x0 = (h_c_over_k / (16000.0 * teff)).astype(np.float32)[:, None]
    planck = w**-5 * (np.expm1(x0) / np.expm1(x0 / w))
    resp = np.ones_like(planck)
    for k, (lo, hi) in enumerate(CHIPS.values()):
        sel = (wave >= lo - 60) & (wave <= hi + 60)  # the response runs into the gap, like a real detector's
        x = (2 * (wave[sel] - lo) / (hi - lo) - 1)[None, :]
        r = d["resp"][:, k, :]
        resp[:, sel] = d["gain"][:, k, None] * (1 + r[:, :1] * x + r[:, 1:2] * (x**2 - 1 / 3) + r[:, 2:3] * x**3)
    resp *= planck
    resp *= d["scale"][:, None].astype(np.float32)
    return resp


def _fe_lines(wave: np.ndarray, centres: np.ndarray, ew_ma: np.ndarray, t: pd.DataFrame,
              shape: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Product of (1 - EW x Voigt) over the lines, each drawn over +-32 pixels around its shifted centre.

    ``shape`` (from :func:`_perturbed_shape`) may change the resolution, the damping widths and add an LSF wing.
    """
    shape = shape or {}
    resolution = shape.get("resolution", R_LSF)
    damping = shape.get("damping", 1.0)
    wing = shape.get("wing", 0.0)
    n = len(t)
    out = np.zeros((n, wave.size), np.float64)  # sum of ln(1 - depth)
    z = 1 + t.rv_shift.to_numpy() / SPEED_OF_LIGHT_KMS
    teff, logg, vmic, feh = (t[c].to_numpy() for c in ("teff", "logg", "vmic", "feh"))
    offsets = np.arange(-_HALF_WIDTH_PIX, _HALF_WIDTH_PIX + 1)
    for k, lam0 in enumerate(centres):
        lam = lam0 * z                                                  # (n,)
        sigma = gaussian_sigma(lam, teff, vmic, resolution)
        gamma = lorentz_hwhm(lam, teff, logg, feh) * damping + wing
        centre_pix = int(np.round(np.log10(lam0 / wave[0]) / APSTAR_CDELT1))
        idx = np.clip(centre_pix + offsets, 0, wave.size - 1)
        x = wave[idx][None, :] - lam[:, None]
        depth = ew_ma[:, k, None] * 1e-3 * voigt_profile(x, sigma[:, None], gamma[:, None])
        out[:, idx] += np.log1p(-np.minimum(depth, 0.999))
    return np.exp(out).astype(np.float32)



def _draw_ew(cog: CurveOfGrowth, truth: pd.DataFrame, line_idx: np.ndarray, dloggf: np.ndarray | None) -> np.ndarray:
    """Return the true EWs (mA), (n_stars, n_lines); a line whose log gf is off by d has the EW of [Fe/H] + d."""
    args = (truth.teff, truth.logg, truth.feh, truth.vmic, truth.alpha_fe)
    if dloggf is None:
        return cog.ew(*args, lines=line_idx)
    out = np.empty((len(truth), len(line_idx)))
    for k, (i, d) in enumerate(zip(line_idx, dloggf, strict=True)):
        out[:, k] = cog.ew(truth.teff, truth.logg, truth.feh + d, truth.vmic, truth.alpha_fe, lines=[i])[:, 0]
    return out


def _perturbed_shape(perturb: Perturbation | None, n: int, lines: pd.DataFrame,
                     rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw what a :class:`Perturbation` changes, per line and per star, from a random stream of its own."""
    out: dict[str, Any] = {"dloggf": None}
    if perturb is None:
        return out
    (r,) = rng.spawn(1)  # a separate stream: the unperturbed draws of this seed stay as they are
    if perturb.loggf_scatter or perturb.loggf_offset:
        out["dloggf"] = perturb.loggf_offset + r.normal(0.0, perturb.loggf_scatter, len(lines))
    if perturb.resolution is not None:
        out["resolution"] = r.uniform(*perturb.resolution, n)
    if perturb.damping_scale is not None:
        lo, hi = np.log(perturb.damping_scale)
        out["damping"] = np.exp(r.uniform(lo, hi, n))
    if perturb.lsf_wing_hwhm:
        out["wing"] = np.full(n, float(perturb.lsf_wing_hwhm))
    if perturb.continuum_ripple is not None:
        out["ripple_amp"] = r.uniform(*perturb.continuum_ripple, n)
        out["ripple_period"] = r.uniform(40.0, 200.0, n)
        out["ripple_phase"] = r.uniform(0.0, 2 * np.pi, n)
    return out

def _shift(model: np.ndarray, rv: np.ndarray) -> np.ndarray:
    """Shift each spectrum by its RV (km/s): a constant pixel offset on the log-linear grid (linear interp.)."""
    pix = np.arange(model.shape[1], dtype=float)
    out = np.empty_like(model)
    for i, v in enumerate(rv / _KMS_PER_PIX):
        out[i] = np.interp(pix - v, pix, model[i])
    return out


@lru_cache(maxsize=1)
def _templates() -> dict[str, np.ndarray]:
    """Telluric spectra, bitmasks, NaN patterns and VHELIO of the real DR17 example files (observed frame).

    Bitmasks and NaN patterns come from each file's combined row; telluric spectra from the visit rows (the
    combined rows hold none).
    """
    from astropy.io import fits

    from fehkit.examples import example_paths

    tell, tell_v, bits, nans, vhel = [], [], [], [], []
    for p in example_paths():
        with fits.open(p) as h:
            f, m, t = h[1].data, h[3].data, h[6].data
            v = float(h[0].header["VHELIO"])
            # the combined row: a synthetic star is one combined spectrum (12% and 17% flagged pixels)
            bits.append(m[0].astype(np.int64))
            nans.append(~np.isfinite(f[0]))
            vhel.append(v)
            for r in range(2, t.shape[0]):
                good = np.isfinite(t[r]) & (t[r] > 0)
                tell.append(np.where(good, t[r], 1.0).astype(np.float32))
                tell_v.append(v)
    return {"tell": np.array(tell), "tell_vhelio": np.array(tell_v), "bits": np.array(bits), "nan": np.array(nans),
            "vhelio": np.array(vhel)}


def _roll(arr: np.ndarray, pix: np.ndarray, fill: Any) -> np.ndarray:
    out = np.full_like(arr, fill)
    for i, s in enumerate(pix):
        if s >= 0:
            out[i, s:] = arr[i, : arr.shape[1] - s]
        else:
            out[i, :s] = arr[i, -s:]
    return out


def _telluric(d: dict[str, np.ndarray], vhelio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the residual of an imperfect telluric correction and the depth of the absorption it came from."""
    tpl = _templates()
    rows = d["tell_row"] % len(tpl["tell"])
    spec, v0 = tpl["tell"][rows], tpl["tell_vhelio"][rows]
    # observed-frame features move by -(vhelio) in the rest frame
    pix = np.round((v0 - vhelio) / _KMS_PER_PIX).astype(int)
    spec = _roll(spec, pix, 1.0)
    return (1.0 + d["tell_amp"][:, None] * (spec - 1.0)).astype(np.float32), (1.0 - spec).astype(np.float32)


def _masks(d: dict[str, np.ndarray], vhelio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tpl = _templates()
    rows = d["mask_row"] % len(tpl["bits"])
    pix = np.round((tpl["vhelio"][rows] - vhelio) / _KMS_PER_PIX).astype(int)
    bits = _roll(tpl["bits"][rows], pix, 0)
    nan = _roll(tpl["nan"][rows], pix, True)
    bits[nan] = 0
    return bits, nan


# ---------------------------------------------------------------------------------------------------------------
# the benchmark population
# ---------------------------------------------------------------------------------------------------------------
def draw_population(n: int, rng: np.random.Generator, giant_fraction: float = 0.8) -> pd.DataFrame:
    """Draw an EMP halo population: true teff, logg, vmic, feh, alpha_fe, snr and the population label.

    * [Fe/H] uniform in -4.5..-1.0 (57% below -2.5);
    * giants (``giant_fraction``): log g uniform in 0.5..3.5 on a metal-poor red giant branch,
      Teff = 4500 + 330 (log g - 1.5) + 70 (-2 - [Fe/H]) + N(0, 80) K, clipped to 4000-5500 K (a 12 Gyr
      [Fe/H] = -2 isochrone runs from ~4150 K at log g 0.5 to ~5200 K at 3.5; metal-poorer branches are
      hotter); no warm low-gravity stars;
    * the rest subgiants (Teff 5000-6300, log g 3.4-4.0) and dwarfs (Teff 5000-6500, log g 4.2-4.8);
    * vmic = 2.13 - 0.23 log g + N(0, 0.15) km/s (Kirby et al. 2009), clipped to 0.6-3.0;
    * [alpha/Fe] = N(0.4, 0.1) clipped to 0.1-0.6; S/N log-uniform 30-300.
    """
    feh = rng.uniform(-4.5, -1.0, n)
    kind = np.where(rng.uniform(size=n) < giant_fraction, "giant",
                    np.where(rng.uniform(size=n) < 0.5, "subgiant", "dwarf"))
    logg = np.empty(n)
    teff = np.empty(n)
    g = kind == "giant"
    logg[g] = rng.uniform(0.5, 3.5, g.sum())
    teff[g] = np.clip(4500 + 330 * (logg[g] - 1.5) + 70 * (-2.0 - feh[g]) + rng.normal(0, 80, g.sum()), 4000, 5500)
    s = kind == "subgiant"
    logg[s] = rng.uniform(3.4, 4.0, s.sum())
    teff[s] = rng.uniform(5000, 6300, s.sum())
    dw = kind == "dwarf"
    logg[dw] = rng.uniform(4.2, 4.8, dw.sum())
    teff[dw] = rng.uniform(5000, 6500, dw.sum())
    vmic = np.clip(2.13 - 0.23 * logg + rng.normal(0, 0.15, n), 0.6, 3.0)
    alpha = np.clip(rng.normal(0.4, 0.1, n), 0.1, 0.6)
    snr = 10.0 ** rng.uniform(np.log10(30), np.log10(300), n)
    return pd.DataFrame({"teff": teff, "logg": logg, "vmic": vmic, "feh": feh, "alpha_fe": alpha, "snr": snr,
                         "population": kind})


def reference_labels(truth: pd.DataFrame, rng: np.random.Generator,
                     errors: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Draw noisy reference labels as a user has them, with their stated errors and an external survey's.

    Columns ``{teff,logg,vmic,feh}_ref``, ``{teff,logg,vmic,feh}_ref_err`` and ``feh_ext``.
    """
    err = {**REF_ERRORS, **(errors or {})}
    out = pd.DataFrame(index=truth.index)
    for col in ("teff", "logg", "vmic", "feh"):
        out[f"{col}_ref"] = truth[col] + rng.normal(0, err[col], len(truth))
    out["vmic_ref"] = out["vmic_ref"].clip(0.5, 3.5)
    for col in ("teff", "logg", "vmic", "feh"):  # the labels' stated 1-sigma errors, as a catalogue gives them
        out[f"{col}_ref_err"] = float(err[col])
    out["feh_ext"] = truth["feh"] + EXTERNAL_SURVEY["offset"] + rng.normal(0, EXTERNAL_SURVEY["scatter"], len(truth))
    return out


def stratified_split(feh: np.ndarray, rng: np.random.Generator,
                     fractions: Sequence[float] = (0.70, 0.15, 0.15)) -> np.ndarray:
    """Assign "train"/"val"/"test" with the given fractions within each 0.5 dex [Fe/H] bin."""
    if len(fractions) != 3 or not np.isclose(sum(fractions), 1.0) or min(fractions) < 0:
        raise SimulationError(f"split fractions {tuple(fractions)}: expected three non-negative numbers summing to 1")
    bins = np.floor(np.asarray(feh) / 0.5).astype(int)
    split = np.empty(len(feh), object)
    names = np.array(["train", "val", "test"])
    labels, sizes = np.unique(bins, return_counts=True)
    # stars per (bin, part) by largest remainders, so that the totals are exact (1,500 at 0.7/0.1/0.2 gives
    # 1,050/150/300) and every bin is split as evenly as its size allows
    counts = np.zeros((len(labels), 3), int)
    for j in range(2):
        cum = np.asarray(fractions)[: j + 1].sum()
        want = cum * sizes
        k = np.floor(want).astype(int)
        short = int(round(cum * len(feh))) - k.sum()
        k[np.argsort(-(want - k), kind="stable")[:max(short, 0)]] += 1
        counts[:, j] = k
    counts[:, 2] = sizes
    for label, edges in zip(labels, counts, strict=True):
        idx = rng.permutation(np.flatnonzero(bins == label))
        split[idx] = names[np.searchsorted(edges[:2], np.arange(len(idx)), side="right")]
    return split.astype(str)


def make_benchmark(
    n: int = 1500,
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
    *,
    split: Sequence[float] = (0.70, 0.15, 0.15),
    ref_errors: Mapping[str, float] | None = None,
    overwrite: bool = False,
) -> Simulation:
    """Make the **synthetic** EMP benchmark: ``n`` stars drawn by :func:`draw_population`, simulated, labelled, split.

    Parameters
    ----------
    n, seed : int
        Number of stars and the seed of everything (population, spectra, labels, split).
    out : path, optional
        If given, also write the benchmark folder there (:func:`write_benchmark`).
    split : three floats
        Train/validation/test fractions, stratified in 0.5 dex [Fe/H] bins.
    ref_errors : mapping, optional
        Override the reference-label errors (:data:`REF_ERRORS`), e.g. ``{"teff": 30, "logg": 0.1, "vmic": 0.1}``.
    overwrite : bool
        Replace an existing ``out`` folder that fehkit wrote (:func:`write_benchmark`).

    Returns
    -------
    Simulation
        With truth columns as in ``truth.csv`` plus ``vhelio``, ``feh_ext``, ``split`` and ``population``.
    """
    if n < 1:
        raise SimulationError(f"n = {n}: expected at least one star")
    rng = np.random.default_rng(seed)
    pop = draw_population(n, rng)
    pop["star_id"] = [f"SYN{seed:04d}-{i:05d}" for i in range(n)]
    sim = simulate(pop.drop(columns="population"), rng)
    labels = reference_labels(sim.truth, rng, ref_errors)
    truth = pd.concat([sim.truth, labels], axis=1)
    truth["population"] = pop["population"].to_numpy()
    truth["split"] = stratified_split(truth["feh"].to_numpy(), rng, split)
    truth.insert(0, "file", [f"apStar-{s}.fits" for s in truth["star_id"]])
    sim.truth = truth
    sim.batch.meta["file"] = truth["file"].to_numpy()
    if out is not None:
        write_benchmark(sim, out, overwrite=overwrite)
    return sim


def write_benchmark(sim: Simulation, out: str | os.PathLike[str], overwrite: bool = False, *, html: bool = False,
                    about: Mapping[str, Any] | None = None) -> Path:
    """Write the benchmark folder: apStar-format FITS files, ``truth.csv`` and ``truth_ew.csv``, all marked synthetic.

    ``html`` adds ``simulate.html`` (simulated spectra beside the real example spectra). The folder is written
    whole (:func:`fehkit.files.atomic_folder`, kind ``"benchmark"``; ``about`` goes into its marker file): an
    interrupt leaves the old folder or the new one, never a new ``truth.csv`` beside old spectra. An existing
    folder is replaced only with ``overwrite``, and only when fehkit wrote it or it is empty.
    """
    names = list(sim.truth["file"]) if "file" in sim.truth else None
    truth = sim.truth.copy()
    if "file" not in truth:
        truth.insert(0, "file", [f"apStar-{s}.fits" for s in truth["star_id"]])
    cols = [c for c in TRUTH_COLUMNS if c in truth] + [c for c in truth if c not in TRUTH_COLUMNS]
    truth = truth[cols]
    truth.insert(len(cols), "synthetic", True)
    info = {"synthetic": True, "n_stars": len(truth), **(about or {})}
    with atomic_folder(out, kind="benchmark", overwrite=overwrite, about=info) as tmp:
        write_apstar(sim.batch, tmp, names=names)
        write_table(truth, tmp / "truth.csv", comment="SYNTHETIC benchmark made by fehkit.synth (not observations); "
                    "true parameters and reference labels")
        write_table(sim.ew_table(), tmp / "truth_ew.csv",
                    comment="SYNTHETIC: true equivalent widths (mA) of the Fe I lines drawn into each spectrum")
        if html:
            from fehkit.report.spectra import realism_page

            realism_page(sim, tmp / "simulate.html")
    return Path(out)
