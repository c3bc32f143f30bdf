"""[Fe/H] validation on the SYNTHETIC benchmark: the demo's main job, repeated over seeds and reference-parameter
errors, written up as docs/feh_validation.md (+ JSON).

Two error sets: the benchmark's default (Teff 100 K, log g 0.2, vmic 0.2 km/s: survey-pipeline quality) and
30 K / 0.1 / 0.1 (what the method's 0.02-0.04 dex would need). For each, `--seeds` independent benchmarks
(1,500 stars: 1,050 train, 150 validation, 300 test). The per-bin table pools the held-out predictions of all
seeds: the test stars and the out-of-fold predictions of the training stars (each predicted by a model that did
not see it), against fehkit's information-limit table (docs/information_limit.md). Every number is about simulated
spectra.

    python scripts/validate_feh.py --seeds 11 12 13 --json docs/feh_validation.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from fehkit.benchmark import run_benchmark
from fehkit.errors import FehkitWarning
from fehkit.files import jsonable
from fehkit.flags import detected

ERROR_SETS = {"100 K / 0.2 / 0.2": None, "30 K / 0.1 / 0.1": {"teff": 30.0, "logg": 0.1, "vmic": 0.1}}
FEH_BINS = [(-4.5, -4.0), (-4.0, -3.5), (-3.5, -3.0), (-3.0, -2.5), (-2.5, -2.0), (-2.0, -1.0)]
SNR_BINS = [(30, 60), (60, 120), (120, 301)]
# The information limit (docs/information_limit.md; recomputed by scripts/information_limit.py): MAE of the joint
# likelihood on the true curve-of-growth grid with 100 K / 0.2 / 0.2 parameter errors, 3,000 giants, per S/N bin
INFORMATION_LIMIT_100K = {(-4.5, -4.0): (0.48, 0.34, 0.28), (-4.0, -3.5): (0.52, 0.38, 0.23),
                          (-3.5, -3.0): (0.39, 0.24, 0.12), (-3.0, -2.5): (0.18, 0.087, 0.055),
                          (-2.5, -2.0): (0.075, 0.061, 0.054), (-2.0, -1.0): (0.062, 0.047, 0.054)}


def held_out(run) -> pd.DataFrame:
    """Test predictions plus the out-of-fold predictions of the training stars, with truth."""
    t = run.sim.truth.reset_index(drop=True)
    test = run.predictions[["feh", "feh_err", "feh_cog", "flag", "true_feh", "snr"]].assign(set="test")
    tr = np.flatnonzero(t["split"].to_numpy() == "train")
    oof = run.ensemble.oof_predictions_
    rows = tr[oof["row"].to_numpy()]
    stars = run.features.stars.iloc[rows]
    o = pd.DataFrame({"feh": oof["feh"].to_numpy(), "feh_err": oof["feh_err"].to_numpy(),
                      "feh_cog": stars["feh_cog"].to_numpy(), "flag": "ok", "true_feh": t["feh"].to_numpy()[rows],
                      "snr": t["snr"].to_numpy()[rows], "set": "oof"})
    # training stars without a detected signal were not trained on and have no OOF value: count them as limits
    und = np.setdiff1d(tr, rows)
    u = pd.DataFrame({"feh": np.nan, "feh_err": np.nan, "feh_cog": np.nan, "flag": "upper_limit",
                      "true_feh": t["feh"].to_numpy()[und], "snr": t["snr"].to_numpy()[und], "set": "oof"})
    return pd.concat([test, o, u], ignore_index=True)


def grid(df: pd.DataFrame) -> list[dict]:
    out = []
    for flo, fhi in FEH_BINS:
        for slo, shi in SNR_BINS:
            sel = (df.true_feh >= flo) & (df.true_feh < fhi) & (df.snr >= slo) & (df.snr < shi)
            d = sel & detected(df.flag)
            r = (df.feh - df.true_feh)[d]
            rc = (df.feh_cog - df.true_feh)[d]
            out.append({"feh": [flo, fhi], "snr": [slo, shi], "n": int(sel.sum()), "n_detected": int(d.sum()),
                        "upper_fraction": float(1 - d.sum() / sel.sum()) if sel.sum() else None,
                        "mae": float(r.abs().mean()) if d.sum() else None,
                        "mae_cog": float(rc.abs().mean()) if d.sum() else None})
    return out


#: A section of the markdown that scripts/validate_calibration.py writes, kept when this script rewrites the file.
CALIBRATION_SECTION = "\n## Error calibration on fresh seeds"


def _keep_calibration(md: Path, text: str) -> str:
    old = md.read_text() if md.exists() else ""
    return text.rstrip("\n") + "\n" + old[old.index(CALIBRATION_SECTION):] if CALIBRATION_SECTION in old else text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--cannon-seed", type=int, default=11, help="run The Cannon only for this seed (it is slow)")
    ap.add_argument("--json", default="docs/feh_validation.json")
    ap.add_argument("--md", default="docs/feh_validation.md")
    ap.add_argument("--markdown-only", action="store_true", help="rewrite the markdown from the JSON, no runs")
    args = ap.parse_args()
    if args.markdown_only:
        saved = json.loads(Path(args.json).read_text())
        args.seeds, args.n = saved["seeds"], saved["n_stars"]
        Path(args.md).write_text(_keep_calibration(Path(args.md), markdown(saved["results"], args)))
        return

    results = {}
    for label, errors in ERROR_SETS.items():
        runs, pooled = [], []
        for seed in args.seeds:
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FehkitWarning)
                run = run_benchmark(args.n, seed, ref_errors=errors, cannon=seed == args.cannon_seed,
                                    ablation=seed == args.cannon_seed)
            m = run.metrics
            runs.append({"seed": seed, "seconds": round(time.perf_counter() - t0, 1), "metrics": m})
            pooled.append(held_out(run))
            e = m["models"]["ensemble"]
            print(f"{label} seed {seed}: MAE {e['mae']:.4f} bias {e['bias']:+.4f} r {e['r']:.4f} "
                  f"coverage {m['coverage_68']:.3f} ({runs[-1]['seconds']} s)", flush=True)
        results[label] = {"errors": errors or {"teff": 100.0, "logg": 0.2, "vmic": 0.2}, "runs": runs,
                          "grid": grid(pd.concat(pooled, ignore_index=True))}
    Path(args.json).write_text(json.dumps(jsonable({"synthetic": True, "n_stars": args.n, "seeds": args.seeds,
                                                     "results": results}), indent=1) + "\n")
    Path(args.md).write_text(_keep_calibration(Path(args.md), markdown(results, args)))
    print(f"wrote {args.md} and {args.json}")


def why(m: dict, t: dict, runs: list) -> str:
    """Context for a missed coverage target: how the same errors did out of fold, and how hard the test set was."""
    if not t["name"].startswith("coverage"):
        return ""
    others = ", ".join(f"{r['metrics']['models']['cog']['mae']:.3f}" for r in runs if r["metrics"] is not m)
    return (f" -- out-of-fold coverage on this seed's training stars was {m['calibration']['oof_coverage_68']:.3f}; "
            f"the classical method's MAE on its test stars is {m['models']['cog']['mae']:.3f} (other seeds: "
            f"{others})")


def cell(mm: dict, k: str) -> str:
    return f"{mm[k]['mae']:.3f}" if k in mm and mm[k].get("mae") is not None else "-"


def markdown(results: dict, args: argparse.Namespace) -> str:
    L = ["# [Fe/H] validation on the SYNTHETIC benchmark", "",
         "**Every number here is about simulated spectra** (`fehkit.synth.make_benchmark`: MOOG curves of growth, "
         "a MOOG blend background, real APOGEE masks and tellurics, noise), not about survey data. Made by "
         f"`python scripts/validate_feh.py --seeds {' '.join(map(str, args.seeds))}` (`make validate-feh`); "
         f"{args.n} stars per benchmark: 1,050 train, 150 validation, 300 test (stratified in [Fe/H]).", "",
         "The headline subset is the test stars with a detected joint Fe signal (>= 3 sigma over all 30 lines) "
         "and S/N >= 50; stars below 3 sigma are upper limits, counted and kept out of the MAE.", ""]
    for label, res in results.items():
        L += [f"## Reference parameters known to {label} (Teff / log g / vmic)", "",
              "| seed | headline n | upper limits | MAE | bias | r | MAE [Fe/H]>-2.5 | coverage_68 | rf | xgb | dnn "
              "| cog (joint) | cog (per-line median) | Cannon | targets met |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["runs"]:
            m = r["metrics"]
            mm = m["models"]
            hi = next((t["value"] for t in m["targets"] if t["name"].startswith("MAE at")), None)
            met = sum(bool(t["met"]) for t in m["targets"])
            L.append(f"| {r['seed']} | {m['n_headline']} | {m['n_upper_limits']} | {mm['ensemble']['mae']:.3f} | "
                     f"{mm['ensemble']['bias']:+.3f} | {mm['ensemble']['r']:.4f} | {hi:.3f} | "
                     f"{m['coverage_68']:.3f} | {cell(mm, 'rf')} | {cell(mm, 'xgb')} | {cell(mm, 'dnn')} | "
                     f"{cell(mm, 'cog')} | "
                     f"{m['cog_per_line_median']['mae']:.3f} | {cell(mm, 'cannon')} | {met} of {len(m['targets'])} |")
        L += ["", "Targets missed in these runs:", ""]
        missed = [(r, t) for r in res["runs"] for t in r["metrics"]["targets"] if not t["met"]]
        L += [f"- seed {r['seed']}: {t['name']}: {t['value'] if isinstance(t['value'], str) else round(t['value'], 4)} "
              f"(target {t['target']}) {t['note']}{why(r['metrics'], t, res['runs'])}" for r, t in missed] or ["- none"]
        L += ["", "Held-out MAE of the ensemble | the joint-likelihood classical method | fraction of upper limits, "
              "pooled over the seeds (test stars + out-of-fold training predictions):", "",
              "| [Fe/H] | S/N 30-60 | S/N 60-120 | S/N 120-300 |", "|---|---|---|---|"]
        for flo, fhi in FEH_BINS:
            cells = []
            for slo, shi in SNR_BINS:
                c = next(g for g in res["grid"] if g["feh"] == [flo, fhi] and g["snr"] == [slo, shi])
                if c["mae"] is None or c["n_detected"] < 10:
                    cells.append(f"- (n={c['n_detected']}) \\| {c['upper_fraction']:.2f}" if c["n"] else "-")
                else:
                    cells.append(f"{c['mae']:.3f} \\| {c['mae_cog']:.3f} \\| {c['upper_fraction']:.2f}")
            L.append(f"| {flo}..{fhi} | " + " | ".join(cells) + " |")
        L.append("")
    L += ["The information limit (docs/information_limit.md: 3,000 giants, true grid, joint likelihood, "
          "100 K / 0.2 / 0.2 errors): "
          "MAE " + "; ".join(f"{lo}..{hi}: " + "/".join(f"{v:.3g}" for v in vals)
                            for (lo, hi), vals in INFORMATION_LIMIT_100K.items()) + " (S/N 30-60/60-120/120-300).", "",
          "Where the method's 0.02-0.04 dex holds: compare the two pooled tables. With 100 K Teff errors no cell "
          "above [Fe/H] -2.5 gets below ~0.045 dex (a 100 K error alone moves [Fe/H] by ~0.045 dex: the floor). "
          "With 30 K / 0.1 / 0.1 the same cells fall to ~0.03 dex at S/N >= 60 above [Fe/H] -2 and at S/N >= 120 "
          "for -2.5..-2, i.e. inside the method's 0.02-0.04 dex; at S/N 30-60, and below [Fe/H] -2.5 at any S/N, "
          "the EW noise keeps it at or above 0.04. Below [Fe/H] ~ -3 the lines fade and most stars are upper limits "
          "whatever the parameters. The ensemble's gain over the classical method is at [Fe/H] > -2 (blends, "
          "which the members learn to remove: 0.044-0.054 vs 0.057-0.063 dex with 100 K). Where the classical "
          "method is already at its noise limit the members add a little variance: with 30 K parameters the "
          "ensemble is 5-15% worse than it at [Fe/H] -3..-2 (the misses listed above; each cell's 95% CI of the "
          "MAE ratio includes 1.10).", ""]
    return "\n".join(L)


if __name__ == "__main__":
    main()
