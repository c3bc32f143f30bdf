"""Robustness: a trained model on test spectra made with physics the analysis does not know.

The synthetic benchmark draws its spectra from the same curve-of-growth grid, line list, line widths and continuum
form that the analysis assumes, so its accuracy cannot include an error in any of them. Each scenario here breaks
one assumption in the forward model (:class:`fehkit.synth.Perturbation`) and keeps everything else, the stars and
their noise included, as in the ``standard`` scenario:

* ``sme_physics`` -- EWs from the curve of growth computed with SME instead of MOOG (a second radiative-transfer
  code on the same atmospheres and line data);
* ``gf_errors`` -- each line's log gf off by N(+0.03, 0.05) dex (one draw per line, shared by all stars);
* ``lsf`` -- resolving power 20,000-25,000 per star and a Lorentzian LSF wing of 0.02 A HWHM;
* ``damping`` -- Lorentzian (damping) widths x0.5 to x3 per star;
* ``alpha_spread`` -- [alpha/Fe] uniform in 0.0-0.6 while the analysis assumes +0.4;
* ``continuum_shape`` -- a 0.5-2% sinusoidal continuum ripple (period 40-200 A) that no cubic per detector follows.

All spectra are **synthetic**; the numbers say how much each unknown moves the answer, not how accurate fehkit is on
real stars. What the generator and the analysis share is listed in ``docs/robustness.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fehkit.errors import FehkitError, PhysicsGridError
from fehkit.physics import CurveOfGrowth
from fehkit.synth import Perturbation, draw_population, reference_labels, simulate

#: The scenarios in report order: name -> what the test spectra do that the analysis does not know.
SCENARIOS: dict[str, str] = {
    "standard": "nothing: the benchmark's own physics (the reference row)",
    "sme_physics": "EWs from the SME curve of growth instead of MOOG's",
    "gf_errors": "per-line log gf errors N(+0.03, 0.05) dex",
    "lsf": "R 20,000-25,000 per star and a 0.02 A Lorentzian LSF wing",
    "damping": "damping widths x0.5-3 per star",
    "alpha_spread": "[alpha/Fe] uniform 0.0-0.6 (the analysis assumes +0.4)",
    "continuum_shape": "a 0.5-2% continuum ripple, period 40-200 A",
}

#: S/N at and above which a detected star counts, as in the benchmark's headline subset.
HEADLINE_SNR = 50.0


class RobustnessError(FehkitError, ValueError):
    """A robustness scenario that does not exist, or a test set too small to score."""


@dataclass
class Scenario:
    """One scenario's test stars: their truth and the perturbation of the forward model."""

    name: str
    truth: pd.DataFrame
    perturb: Perturbation | None


def make_scenario(name: str, n: int, seed: int, ref_errors: dict[str, float] | None = None) -> Scenario:
    """Draw ``n`` benchmark-like stars and the perturbation of scenario ``name`` (the same stars for every name).

    Raises :class:`~fehkit.errors.PhysicsGridError` for ``sme_physics`` when no SME grid is packaged.
    """
    if name not in SCENARIOS:
        raise RobustnessError(f"scenario {name!r}: expected one of {list(SCENARIOS)}")
    rng = np.random.default_rng(seed)
    pop = draw_population(n, rng)
    pop["star_id"] = [f"ROB{seed:04d}-{i:05d}" for i in range(n)]
    alpha_rng = np.random.default_rng([seed, 1])
    if name == "alpha_spread":
        pop["alpha_fe"] = alpha_rng.uniform(0.0, 0.6, n)
    perturb = {
        "standard": None,
        "sme_physics": Perturbation(cog=CurveOfGrowth.load("sme")) if name == "sme_physics" else None,
        "gf_errors": Perturbation(loggf_scatter=0.05, loggf_offset=0.03),
        "lsf": Perturbation(resolution=(20000.0, 25000.0), lsf_wing_hwhm=0.02),
        "damping": Perturbation(damping_scale=(0.5, 3.0)),
        "alpha_spread": None,
        "continuum_shape": Perturbation(continuum_ripple=(0.005, 0.02)),
    }[name]
    truth = pop.drop(columns="population")
    labels = reference_labels(truth, np.random.default_rng([seed, 2]), ref_errors)
    return Scenario(name, pd.concat([truth, labels], axis=1), perturb)


def run_robustness(ensemble: Any, n: int = 300, seed: int = 0, *, scenarios: Sequence[str] | None = None,
                   ref_errors: dict[str, float] | None = None, progress: bool = False) -> dict[str, dict]:
    """Score a trained ensemble on each scenario's test spectra.

    Parameters
    ----------
    ensemble : FeHEnsemble
        Trained on the standard benchmark.
    n, seed : int
        Test stars per scenario (the same stars in each) and their seed.
    scenarios : sequence of str, optional
        Which of :data:`SCENARIOS` (default all).
    ref_errors : dict, optional
        Errors of the reference Teff, log g, vmic the analysis is given (default as the benchmark's).

    Returns
    -------
    dict
        Per scenario: ``description``, ``n`` (headline stars: detected joint Fe signal, S/N >= 50), ``mae``,
        ``bias``, ``coverage_68`` of the ensemble, ``mae_cog`` and ``bias_cog`` of the classical method, and
        ``members`` ({rf, xgb, dnn: {mae, bias}}); or ``skipped`` with the reason (e.g. no SME grid packaged).
    """
    from fehkit.training import reference_params, spectra_features

    names = list(SCENARIOS) if scenarios is None else list(scenarios)
    if n < 10:
        raise RobustnessError(f"n = {n}: expected at least 10 test stars per scenario")
    out: dict[str, dict] = {}
    for name in names:
        try:
            sc = make_scenario(name, n, seed, ref_errors)
        except PhysicsGridError as err:
            out[name] = {"description": SCENARIOS[name], "skipped": f"no grid for this scenario ({err})"}
            continue
        sim = simulate(sc.truth[["star_id", "teff", "logg", "feh", "vmic", "alpha_fe", "snr"]],
                       np.random.default_rng([seed, 3]), perturb=sc.perturb)
        feats = spectra_features(sim.batch, reference_params(sc.truth))
        pred = ensemble.predict(feats)
        out[name] = {"description": SCENARIOS[name],
                     **score_scenario(pred, feats.stars, sc.truth, ensemble.detection_sigma)}
    return out


def score_scenario(pred: pd.DataFrame, stars: pd.DataFrame, truth: pd.DataFrame,
                   detection_sigma: float = 3.0) -> dict[str, Any]:
    """MAE, bias, coverage_68 of the ensemble and the classical method on the detected stars at S/N >= 50.

    ``pred`` is :meth:`FeHEnsemble.predict`'s table, ``stars`` the features' per-star table (for the joint Fe
    signal), ``truth`` the true ``feh`` and ``snr``; all in the same star order.
    """
    true = truth["feh"].to_numpy(float)
    signal = np.nan_to_num(stars["cog_signal_sigma"].to_numpy(float))
    head = (signal >= detection_sigma) & (truth["snr"].to_numpy(float) >= HEADLINE_SNR)

    def stats(column: str) -> tuple[float | None, float | None]:
        r = pred[column].to_numpy(float)[head] - true[head]
        r = r[np.isfinite(r)]
        return (float(np.mean(np.abs(r))), float(np.mean(r))) if r.size else (None, None)

    mae, bias = stats("feh")
    err = pred["feh_err"].to_numpy(float)[head]
    resid = np.abs(pred["feh"].to_numpy(float)[head] - true[head])
    ok = np.isfinite(resid) & np.isfinite(err)
    mae_cog, bias_cog = stats("feh_cog")
    members = {}
    for m in ("rf", "xgb", "dnn"):
        if f"feh_{m}" in pred and pred[f"feh_{m}"].notna().any():
            m_mae, m_bias = stats(f"feh_{m}")
            members[m] = {"mae": m_mae, "bias": m_bias}
    return {"n": int(head.sum()), "mae": mae, "bias": bias,
            "coverage_68": float(np.mean(resid[ok] <= err[ok])) if ok.any() else None,
            "mae_cog": mae_cog, "bias_cog": bias_cog, "members": members}
