"""The information limit of the [Fe/H] method: how well the 30 Fe I lines can give [Fe/H] at all.

No spectra, no fits, no regressor: every star's 30 equivalent widths are drawn straight from fehkit's MOOG curve of
growth (``fehkit.physics.CurveOfGrowth``, the "true grid"), with Gaussian noise of Cayrel's (1988) size, and
[Fe/H] is recovered by the joint maximum likelihood of all lines (``fehkit.physics.joint.joint_abundance``) at
the Teff, log g and vmic an observer would have (off by 100 K, 0.2 dex, 0.2 km/s) and at the true ones. What
this cannot recover, nothing that works from these lines can. docs/information_limit.md explains and quotes the
result.

    python scripts/information_limit.py [--n 3000] [--seed 0] [--feh-min -4.5] [--json information-limit.json]

The stars are the giants of the synthetic benchmark's population (``fehkit.synth.draw_population``: [Fe/H]
uniform -4.5..-1, log g 0.5-3.5 on a metal-poor red giant branch, S/N log-uniform 30-300). The EW noise per line
is sigma_EW = 1.6 sqrt(FWHM x pixel) / (S/N), FWHM = lambda / 22,500 and the apStar pixel lambda ln(10) 6e-6
(Cayrel's formula has 1.5: 1.6 is the slightly more pessimistic choice). The model-uncertainty terms of the
likelihood are switched off (the grid is the truth here); a star whose lines together show iron at < 3 sigma is an
upper limit, and its maximum-likelihood value still enters the MAE (it is what a number there would be). The
likelihood is searched over [Fe/H] ``--feh-min``..-0.5 (default: the population's own lower edge, -4.5): for an
upper limit the maximum sits wherever the noise puts it, so below [Fe/H] ~ -3.5 the MAE measures these search
bounds, not the spectrum.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pandas as pd

from fehkit.physics import CurveOfGrowth, joint
from fehkit.physics.joint import joint_abundance
from fehkit.spectra import APSTAR_CDELT1
from fehkit.synth import draw_population

RESOLUTION = 22_500
#: Cayrel (1988) has 1.5 sqrt(FWHM x pixel) / (S/N); fehkit's information limit was computed with 1.6.
CAYREL_COEFFICIENT = 1.6
#: The observer's parameter errors (1 sigma): survey-pipeline quality.
PARAM_ERRORS = {"teff": 100.0, "logg": 0.2, "vmic": 0.2}
FEH_BINS = [(-4.5, -4.0), (-4.0, -3.5), (-3.5, -3.0), (-3.0, -2.5), (-2.5, -2.0), (-2.0, -1.0)]
SNR_BINS = [(30, 60), (60, 120), (120, 301)]


def sigma_ew_mA(wave: np.ndarray, snr: np.ndarray) -> np.ndarray:
    """Cayrel-type EW noise (mA): (n_stars, n_lines) for line wavelengths ``wave`` (A) and the stars' S/N."""
    fwhm = wave / RESOLUTION
    pixel = wave * np.log(10.0) * APSTAR_CDELT1
    return 1e3 * CAYREL_COEFFICIENT * np.sqrt(fwhm * pixel)[None, :] / np.asarray(snr, float)[:, None]


@contextmanager
def search_bounds(feh_min: float) -> Iterator[None]:
    """Search the joint likelihood only at [Fe/H] >= ``feh_min`` (its grid is ``fehkit.physics.joint.FEH_GRID``)."""
    full = joint.FEH_GRID
    joint.FEH_GRID = full[full >= feh_min - 1e-9]
    try:
        yield
    finally:
        joint.FEH_GRID = full


def recover(cog: CurveOfGrowth, stars: pd.DataFrame, ew: np.ndarray, err: np.ndarray, params: pd.DataFrame
            ) -> pd.DataFrame:
    """Joint maximum likelihood of all lines at the given parameters, with the grid taken as exact."""
    use = np.ones(ew.shape, bool)
    return joint_abundance(ew, err, use, params["teff"], params["logg"], params["vmic"], stars["alpha_fe"],
                           cog=cog, model_fraction=0.0, model_floor_mA=0.0)


def table(stars: pd.DataFrame, feh: dict[str, np.ndarray], detected: np.ndarray) -> list[dict]:
    rows = []
    for flo, fhi in FEH_BINS:
        for slo, shi in SNR_BINS:
            sel = ((stars["feh"] >= flo) & (stars["feh"] < fhi)
                   & (stars["snr"] >= slo) & (stars["snr"] < shi)).to_numpy()
            row = {"feh": [flo, fhi], "snr": [slo, min(shi, 300)], "n": int(sel.sum()),
                   "upper_fraction": float(np.mean(~detected[sel])) if sel.any() else None}
            for name, values in feh.items():
                resid = values[sel] - stars["feh"].to_numpy()[sel]
                row[f"mae_{name}"] = float(np.mean(np.abs(resid))) if sel.any() else None
            rows.append(row)
    return rows


def headline(stars: pd.DataFrame, feh: np.ndarray, detected: np.ndarray) -> dict[str, float]:
    """The floor of fehkit's headline numbers: detected stars with S/N >= 50 (the subset of ``fehkit.evaluate``)."""
    truth = stars["feh"].to_numpy()
    head = detected & (stars["snr"].to_numpy() >= 50)
    d = feh[head] - truth[head]
    above = head & (truth > -2.5)
    return {"n": int(head.sum()), "mae": float(np.abs(d).mean()), "bias": float(d.mean()),
            "scatter": float(d.std(ddof=1)), "r": float(np.corrcoef(feh[head], truth[head])[0, 1]),
            "mae_above_-2.5": float(np.abs(feh[above] - truth[above]).mean())}


def detection_limit(stars: pd.DataFrame, detected: np.ndarray) -> dict[str, float | None]:
    """[Fe/H] where half the stars of each S/N bin are detected (a logistic fit)."""
    from fehkit.evaluate import _half_point

    out = {}
    for slo, shi in SNR_BINS:
        sel = ((stars["snr"] >= slo) & (stars["snr"] < shi)).to_numpy()
        out[f"{slo}-{min(shi, 300)}"] = _half_point(stars["feh"].to_numpy()[sel], detected[sel])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=3000, help="giants")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--feh-min", type=float, default=-4.5, help="lower search bound of the likelihood")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    cog = CurveOfGrowth.load()
    stars = draw_population(args.n, rng, giant_fraction=1.0).reset_index(drop=True)
    true_ew = cog.ew(stars["teff"], stars["logg"], stars["feh"], stars["vmic"], stars["alpha_fe"])
    err = sigma_ew_mA(cog.wave_vac, stars["snr"])
    ew = true_ew + rng.normal(0.0, 1.0, true_ew.shape) * err
    observed = stars[["teff", "logg", "vmic"]].copy()
    for col, sigma in PARAM_ERRORS.items():
        observed[col] = observed[col] + rng.normal(0.0, sigma, len(stars))
    observed["vmic"] = observed["vmic"].clip(0.5, 3.5)

    with search_bounds(args.feh_min):
        with_errors = recover(cog, stars, ew, err, observed)
        perfect = recover(cog, stars, ew, err, stars)
        noise_free = recover(cog, stars, true_ew, err, observed)
    detected = with_errors["cog_detected"].to_numpy()
    feh = {"param_errors": with_errors["feh_cog"].to_numpy(), "perfect": perfect["feh_cog"].to_numpy()}
    hi = (stars["feh"] > -2.5).to_numpy()
    single = {}
    for col, sigma in PARAM_ERRORS.items():  # one parameter off at a time, noise-free EWs, [Fe/H] > -2.5
        p = stars[["teff", "logg", "vmic"]].copy()
        p[col] = p[col] + rng.normal(0.0, sigma, len(stars))
        p["vmic"] = p["vmic"].clip(0.5, 3.5)
        with search_bounds(args.feh_min):
            r = recover(cog, stars, true_ew, err, p)
        single[col] = float(np.mean(np.abs(r["feh_cog"].to_numpy() - stars["feh"].to_numpy())[hi]))
    result = {
        "n": args.n, "seed": args.seed, "feh_min": args.feh_min, "param_errors": PARAM_ERRORS,
        "cayrel_coefficient": CAYREL_COEFFICIENT,
        "table": table(stars, feh, detected),
        "noise_free_mae_above_-2.5": float(np.mean(np.abs(noise_free["feh_cog"].to_numpy()
                                                          - stars["feh"].to_numpy())[hi])),
        "noise_free_mae_above_-2.5_one_parameter": single,
        "feh_50pct_detected": detection_limit(stars, detected),
        "headline": headline(stars, feh["param_errors"], detected),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(f"{args.n} giants, seed {args.seed}: MAE with {PARAM_ERRORS} | perfect parameters | upper-limit fraction")
    print("| [Fe/H] | S/N 30-60 | S/N 60-120 | S/N 120-300 |\n|---|---|---|---|")
    for flo, fhi in FEH_BINS:
        cells = [c for c in result["table"] if c["feh"] == [flo, fhi]]
        print(f"| {flo}..{fhi} | " + " | ".join(f"{c['mae_param_errors']:.3f} \\| {c['mae_perfect']:.3f} \\| "
                                                f"{c['upper_fraction']:.2f}" for c in cells) + " |")
    print(f"noise-free EWs, parameter errors only, [Fe/H] > -2.5: MAE {result['noise_free_mae_above_-2.5']:.3f} "
          f"(one at a time: " + ", ".join(f"{k} {v:.3f}" for k, v in single.items()) + ")")
    print("half the stars detected (3 sigma) at [Fe/H]: "
          + ", ".join(f"S/N {k}: {v:.2f}" if v is not None else f"S/N {k}: -" for k, v in
                      result["feh_50pct_detected"].items()))
    h = result["headline"]
    print(f"headline subset (detected, S/N >= 50; {h['n']} stars) with parameter errors: MAE {h['mae']:.3f}, "
          f"bias {h['bias']:+.3f}, scatter {h['scatter']:.3f}, r {h['r']:.4f}; MAE above [Fe/H] -2.5 "
          f"{h['mae_above_-2.5']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
